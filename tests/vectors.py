"""Published test vectors.

RFC 8448 section 3 ("Simple 1-RTT Handshake", TLS_AES_128_GCM_SHA256) and the TLS 1.2 PRF
vectors posted to the IETF TLS working group list (msg03416).
"""

def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 8448 section 3
RFC8448_CLIENT_HS_TRAFFIC = h("b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21")
RFC8448_SERVER_HS_TRAFFIC = h("b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38")
RFC8448_SERVER_HS_KEY = h("3fce516009c21727d0f2e4e86ee403bc")
RFC8448_SERVER_HS_IV = h("5d313eb2671276ee13000b30")
RFC8448_CLIENT_HS_KEY = h("dbfaa693d1762c5b666af5d950258d01")
RFC8448_CLIENT_HS_IV = h("5bd3c71b836e0b76bb73265f")
RFC8448_CLIENT_AP_TRAFFIC = h("9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5")
RFC8448_SERVER_AP_TRAFFIC = h("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643")
RFC8448_CLIENT_AP_KEY = h("17422dda596ed5d9acd890e3c63f5051")
RFC8448_CLIENT_AP_IV = h("5b78923dee08579033e523d9")
RFC8448_SERVER_AP_KEY = h("9f02283b6c9c07efc26bb9f2ac92e356")
RFC8448_SERVER_AP_IV = h("cf782b88dd83549aadf1e984")

# 50 bytes 00..31, sent by each side under its application keys.
RFC8448_APP_PAYLOAD = bytes(range(0x32))
# The client's first application record (client seq 0).
RFC8448_CLIENT_APP_RECORD = h(
    "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f"
    "2b9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae6"
    "3aeebb21694915e4")
# The server's application record: seq 1, after its NewSessionTicket at seq 0.
RFC8448_SERVER_APP_RECORD = h(
    "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36"
    "e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf33254"
    "0dd032e167c2955d")
# close_notify (01 00): the client's second record (seq 1), the server's third (seq 2).
RFC8448_CLIENT_ALERT_RECORD = h("1703030013c9872760655666b74d7ff1153efd6db6d0b0e3")
RFC8448_SERVER_ALERT_RECORD = h("1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9")
RFC8448_CLOSE_NOTIFY = h("0100")

# TLS 1.2 PRF (IETF TLS WG, msg03416)
PRF_SHA256_SECRET = h("9bbe436ba940f017b17652849a71db35")
PRF_SHA256_SEED = h("a0ba9f936cda311827a6f796ffd5198c")
PRF_SHA256_OUTPUT = h(
    "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
    "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
    "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
    "87347b66")
PRF_SHA384_SECRET = h("b80b733d6ceefcdc71566ea48e5567df")
PRF_SHA384_SEED = h("cd665cf6a8447dd6ff8b27555edb7465")
# The first 96 bytes of the 148-byte output (the PRF output is a stream: a prefix is a vector too).
PRF_SHA384_OUTPUT_PREFIX = h(
    "7b0c18e9ced410ed1804f2cfa34a336a1c14dffb4900bb5fd7942107e81c83cd"
    "e9ca0faa60be9fe34f82b1233c9146a0e534cb400fed2700884f9dc236f80edd"
    "8bfa961144c9e8d792eca722a7b32fc3d416d473ebc2c5fd4abfdad05d918425")
