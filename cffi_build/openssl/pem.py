INCLUDES = """
#include <openssl/pem.h>
"""

TYPES = """
typedef int pem_password_cb(char *, int, int, void *);
"""

FUNCTIONS = """
X509 *PEM_read_bio_X509(BIO *, X509 **, pem_password_cb *, void *);
X509 *PEM_read_bio_X509_AUX(BIO *, X509 **, pem_password_cb *, void *);
X509_CRL *PEM_read_bio_X509_CRL(BIO *, X509_CRL **, pem_password_cb *, void *);
EVP_PKEY *PEM_read_bio_PrivateKey(BIO *, EVP_PKEY **, pem_password_cb *, void *);
EVP_PKEY *PEM_read_bio_Parameters(BIO *, EVP_PKEY **);
"""

CUSTOMIZATIONS = ""
