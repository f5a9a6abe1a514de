"""Callbacks from OpenSSL into Python (cffi ``extern "Python"``), implemented in ktls_ossl.

Each receives the SSL or SSL_CTX whose app data holds a cffi handle to the Python owner.

Record accounting is the exception that stays in C: OpenSSL reports every record header to the
message callback, and a Python call per record would cost more than the handshake's crypto. The
C callback counts records per direction since the last Finished and passes only the messages
worth an audit event (ChangeCipherSpec, alerts, handshake messages) on to Python.
"""

INCLUDES = """
/* Defined by cffi from the extern "Python+C" declaration below; used by the C callback. */
void ktls_msg_cb(int, int, int, const void *, size_t, SSL *, void *);
"""

TYPES = """
struct ktls_record_counts {
    unsigned long long records[2];
    unsigned long long since_finished[2];
};
"""

FUNCTIONS = """
extern "Python" void ktls_keylog_cb(const SSL *, const char *);
extern "Python+C" void ktls_msg_cb(int, int, int, const void *, size_t, SSL *, void *);
void ktls_count_records(SSL *, struct ktls_record_counts *);
void ktls_stop_counting(SSL *);
extern "Python" int ktls_passwd_cb(char *, int, int, void *);
extern "Python" int ktls_servername_cb(SSL *, int *, void *);
extern "Python" int ktls_alpn_select_cb(SSL *, const unsigned char **, unsigned char *,
                                        const unsigned char *, unsigned int, void *);
"""

CUSTOMIZATIONS = """
/* Index 0 is the read direction, 1 the write direction (OpenSSL's write_p). */
struct ktls_record_counts {
    unsigned long long records[2];
    unsigned long long since_finished[2];
};

static void ktls_record_counter(int write_p, int version, int content_type, const void *buf,
                                size_t len, SSL *ssl, void *arg)
{
    struct ktls_record_counts *counts = arg;
    int direction = write_p ? 1 : 0;

    if (content_type == SSL3_RT_HEADER) {
        counts->records[direction]++;
        counts->since_finished[direction]++;
        return;
    }
    if (content_type == SSL3_RT_INNER_CONTENT_TYPE)
        return;
    /* The Finished record was counted by its header, which OpenSSL reports first. */
    if (content_type == SSL3_RT_HANDSHAKE && len > 0
            && ((const unsigned char *)buf)[0] == SSL3_MT_FINISHED)
        counts->since_finished[direction] = 0;
    ktls_msg_cb(write_p, version, content_type, buf, len, ssl, arg);
}

static void ktls_count_records(SSL *ssl, struct ktls_record_counts *counts)
{
    SSL_set_msg_callback(ssl, ktls_record_counter);
    SSL_set_msg_callback_arg(ssl, counts);
}

static void ktls_stop_counting(SSL *ssl)
{
    SSL_set_msg_callback(ssl, NULL);
}
"""
