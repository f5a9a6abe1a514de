INCLUDES = """
#include <openssl/evp.h>
"""

TYPES = """
typedef ... EVP_MD;
typedef ... EVP_PKEY;
"""

FUNCTIONS = """
const char *EVP_MD_get0_name(const EVP_MD *);
int EVP_MD_get_size(const EVP_MD *);
int EVP_MD_get_type(const EVP_MD *);
void EVP_PKEY_free(EVP_PKEY *);
"""

CUSTOMIZATIONS = ""
