INCLUDES = """
#include <openssl/opensslv.h>
#include <openssl/crypto.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "ktls_ossl needs OpenSSL 3.0 or newer (Debian: apt-get install libssl-dev from Debian 12 or later)"
#endif
"""

TYPES = """
static const long OPENSSL_VERSION_NUMBER;
static const char *const OPENSSL_VERSION_TEXT;
static const int OPENSSL_VERSION;
"""

FUNCTIONS = """
unsigned long OpenSSL_version_num(void);
const char *OpenSSL_version(int);
void OPENSSL_free(void *);
"""

CUSTOMIZATIONS = ""
