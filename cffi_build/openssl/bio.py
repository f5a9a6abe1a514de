INCLUDES = """
#include <openssl/bio.h>
"""

TYPES = """
typedef ... BIO;
typedef ... BIO_METHOD;
static const int BIO_NOCLOSE;
"""

FUNCTIONS = """
const BIO_METHOD *BIO_s_mem(void);
BIO *BIO_new(const BIO_METHOD *);
BIO *BIO_new_mem_buf(const void *, int);
BIO *BIO_new_socket(int, int);
int BIO_free(BIO *);
void BIO_free_all(BIO *);
int BIO_up_ref(BIO *);
int BIO_read(BIO *, void *, int);
int BIO_write(BIO *, const void *, int);
size_t BIO_ctrl_pending(BIO *);
long BIO_set_mem_eof_return(BIO *, int);
long BIO_get_mem_data(BIO *, char **);

/* Macros over BIO_ctrl: non-zero when OpenSSL's own kTLS drives that direction. */
int BIO_get_ktls_send(BIO *);
int BIO_get_ktls_recv(BIO *);
"""

CUSTOMIZATIONS = ""
