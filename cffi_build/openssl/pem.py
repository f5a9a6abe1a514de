INCLUDES = """
#include <openssl/pem.h>
#include <openssl/dh.h>
"""

TYPES = """
typedef int pem_password_cb(char *, int, int, void *);
typedef ... DH;
static const int PEM_R_NO_START_LINE;
"""

FUNCTIONS = """
X509 *PEM_read_bio_X509(BIO *, X509 **, pem_password_cb *, void *);
X509 *PEM_read_bio_X509_AUX(BIO *, X509 **, pem_password_cb *, void *);
X509_CRL *PEM_read_bio_X509_CRL(BIO *, X509_CRL **, pem_password_cb *, void *);
EVP_PKEY *PEM_read_bio_PrivateKey(BIO *, EVP_PKEY **, pem_password_cb *, void *);
EVP_PKEY *PEM_read_bio_Parameters(BIO *, EVP_PKEY **);
DH *PEM_read_bio_DHparams(BIO *, DH **, pem_password_cb *, void *);
void DH_free(DH *);
"""

CUSTOMIZATIONS = ""
