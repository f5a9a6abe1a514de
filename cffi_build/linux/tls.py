"""<linux/tls.h>: kTLS constants, the crypto_info structs, and the two per-record C helpers.

The structs are declared field by field; cffi checks every offset and the total size against the
real header when the extension is compiled, so a layout mistake is a build error, not a silently
wrong key.  The helpers exist because a Python-level recvmsg with ancillary data would cost an
allocation and a parse per record; here each call is one syscall with the GIL released.
"""

INCLUDES = """
#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/tls.h>

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* Newer than the oldest <linux/tls.h> ktls_ossl builds with (Linux 5.11, the first with the
 * ChaCha20-Poly1305 struct: older than any distribution's headers that ship OpenSSL 3).
 * Option numbers and cipher ids are kernel ABI and never change, so an older header gets them
 * from here, with the value of include/uapi/linux/tls.h, and a binary built there still drives a
 * newer kernel; the running kernel says what it accepts (python -m ktls_ossl probe).
 * HAS_<name> says whether the build's header defined it. */
#ifdef TLS_TX_ZEROCOPY_RO
#define HAS_TLS_TX_ZEROCOPY_RO 1
#else
#define HAS_TLS_TX_ZEROCOPY_RO 0
#define TLS_TX_ZEROCOPY_RO 3        /* Linux 5.19 */
#endif
#ifdef TLS_RX_EXPECT_NO_PAD
#define HAS_TLS_RX_EXPECT_NO_PAD 1
#else
#define HAS_TLS_RX_EXPECT_NO_PAD 0
#define TLS_RX_EXPECT_NO_PAD 4      /* Linux 6.0 */
#endif
#ifdef TLS_CIPHER_SM4_GCM
#define HAS_TLS_CIPHER_SM4 1
#else
#define HAS_TLS_CIPHER_SM4 0
#define TLS_CIPHER_SM4_GCM 55       /* Linux 5.16 */
#define TLS_CIPHER_SM4_CCM 56
#endif
#ifdef TLS_CIPHER_ARIA_GCM_128
#define HAS_TLS_CIPHER_ARIA 1
#else
#define HAS_TLS_CIPHER_ARIA 0
#define TLS_CIPHER_ARIA_GCM_128 57  /* Linux 6.1 */
#define TLS_CIPHER_ARIA_GCM_256 58
#endif
"""

TYPES = """
static const int SOL_TLS;
static const int TCP_ULP;
static const int TLS_TX;
static const int TLS_RX;
static const int TLS_TX_ZEROCOPY_RO;
static const int TLS_RX_EXPECT_NO_PAD;
static const int TLS_SET_RECORD_TYPE;
static const int TLS_GET_RECORD_TYPE;

/* 1 where the build's <linux/tls.h> defined the name, 0 where INCLUDES supplied the uapi value.
   SM4 and ARIA are declared by cipher id only: ktls_ossl drives neither (no KernelCipher, no
   crypto_info struct declared), so nothing offers them; a struct added for them must be guarded
   by these flags and kernel.py must ask lib.HAS_TLS_CIPHER_* before offering the cipher. */
static const int HAS_TLS_TX_ZEROCOPY_RO;
static const int HAS_TLS_RX_EXPECT_NO_PAD;
static const int HAS_TLS_CIPHER_SM4;
static const int HAS_TLS_CIPHER_ARIA;

typedef int... socklen_t;

static const int TLS_1_2_VERSION;
static const int TLS_1_3_VERSION;

static const int TLS_CIPHER_AES_GCM_128;
static const int TLS_CIPHER_AES_GCM_256;
static const int TLS_CIPHER_AES_CCM_128;
static const int TLS_CIPHER_CHACHA20_POLY1305;
static const int TLS_CIPHER_SM4_GCM;
static const int TLS_CIPHER_SM4_CCM;
static const int TLS_CIPHER_ARIA_GCM_128;
static const int TLS_CIPHER_ARIA_GCM_256;

static const int MSG_EOR;
static const int MSG_CTRUNC;
static const int MSG_TRUNC;
static const int MSG_PEEK;
static const int MSG_DONTWAIT;
static const int MSG_MORE;
static const int MSG_NOSIGNAL;

struct tls_crypto_info {
    uint16_t version;
    uint16_t cipher_type;
};

struct tls12_crypto_info_aes_gcm_128 {
    struct tls_crypto_info info;
    unsigned char iv[8];
    unsigned char key[16];
    unsigned char salt[4];
    unsigned char rec_seq[8];
};

struct tls12_crypto_info_aes_gcm_256 {
    struct tls_crypto_info info;
    unsigned char iv[8];
    unsigned char key[32];
    unsigned char salt[4];
    unsigned char rec_seq[8];
};

struct tls12_crypto_info_aes_ccm_128 {
    struct tls_crypto_info info;
    unsigned char iv[8];
    unsigned char key[16];
    unsigned char salt[4];
    unsigned char rec_seq[8];
};

struct tls12_crypto_info_chacha20_poly1305 {
    struct tls_crypto_info info;
    unsigned char iv[12];
    unsigned char key[32];
    unsigned char salt[0];
    unsigned char rec_seq[8];
};
"""

FUNCTIONS = """
/* Plain libc: the kernel layer sets and reads kTLS options on a bare fd, no socket object needed. */
int setsockopt(int, int, int, const void *, socklen_t);
int getsockopt(int, int, int, void *, socklen_t *);

ssize_t ktls_recv_record(int, void *, size_t, int, unsigned char *, int *);
ssize_t ktls_send_record(int, const void *, size_t, unsigned char, int);
"""

CUSTOMIZATIONS = """
/* Room for exactly one record-type cmsg, aligned for struct cmsghdr. */
union record_control {
    char buf[CMSG_SPACE(sizeof(unsigned char))];
    struct cmsghdr align;
};

static void init_record_msg(struct msghdr *msg, struct iovec *iov, void *buf, size_t len,
                            union record_control *control)
{
    iov->iov_base = buf;
    iov->iov_len = len;
    memset(msg, 0, sizeof(*msg));
    memset(control, 0, sizeof(*control));
    msg->msg_iov = iov;
    msg->msg_iovlen = 1;
    msg->msg_control = control->buf;
    msg->msg_controllen = sizeof(control->buf);
}

/* One recvmsg with room for the TLS_GET_RECORD_TYPE cmsg.
 * Returns the byte count (0 may be an empty control record: look at *record_type) or -errno.
 * *record_type is 0 when no record-type cmsg came (e.g. no TLS_RX on the socket).
 * EINTR is returned, not retried, so that Python's signal handlers run between attempts. */
static ssize_t ktls_recv_record(int fd, void *buf, size_t len, int flags,
                                unsigned char *record_type, int *msg_flags)
{
    union record_control control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t n;

    init_record_msg(&msg, &iov, buf, len, &control);
    *record_type = 0;
    *msg_flags = 0;
    n = recvmsg(fd, &msg, flags);
    if (n < 0)
        return -errno;
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_TLS && cmsg->cmsg_type == TLS_GET_RECORD_TYPE
                && cmsg->cmsg_len >= CMSG_LEN(sizeof(unsigned char)))
            *record_type = *(unsigned char *)CMSG_DATA(cmsg);
    }
    *msg_flags = msg.msg_flags;
    return n;
}

/* One sendmsg whose record carries the given content type (TLS_SET_RECORD_TYPE).
 * Returns the byte count or -errno. */
static ssize_t ktls_send_record(int fd, const void *buf, size_t len,
                                unsigned char record_type, int flags)
{
    union record_control control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t n;

    init_record_msg(&msg, &iov, (void *)buf, len, &control);
    cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_TLS;
    cmsg->cmsg_type = TLS_SET_RECORD_TYPE;
    cmsg->cmsg_len = CMSG_LEN(sizeof(unsigned char));
    *(unsigned char *)CMSG_DATA(cmsg) = record_type;

    n = sendmsg(fd, &msg, flags);
    if (n < 0)
        return -errno;
    return n;
}
"""
