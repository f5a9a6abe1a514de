"""Callbacks from OpenSSL into Python (cffi ``extern "Python"``), implemented in ktls_ossl.

Each receives the SSL or SSL_CTX whose app data holds a cffi handle to the Python owner.
"""

INCLUDES = ""

TYPES = ""

FUNCTIONS = """
extern "Python" void ktls_keylog_cb(const SSL *, const char *);
extern "Python" void ktls_msg_cb(int, int, int, const void *, size_t, SSL *, void *);
extern "Python" int ktls_passwd_cb(char *, int, int, void *);
extern "Python" int ktls_servername_cb(SSL *, int *, void *);
extern "Python" int ktls_alpn_select_cb(SSL *, const unsigned char **, unsigned char *,
                                        const unsigned char *, unsigned int, void *);
"""

CUSTOMIZATIONS = ""
