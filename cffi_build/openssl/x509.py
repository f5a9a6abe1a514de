INCLUDES = """
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

typedef STACK_OF(X509) STACK_OF_X509;
typedef STACK_OF(X509_OBJECT) STACK_OF_X509_OBJECT;
"""

TYPES = """
typedef ... X509;
typedef ... X509_CRL;
typedef ... X509_STORE;
typedef ... X509_STORE_CTX;
typedef ... X509_VERIFY_PARAM;
typedef ... X509_OBJECT;
typedef ... STACK_OF_X509;
typedef ... STACK_OF_X509_OBJECT;

typedef enum { X509_LU_NONE, X509_LU_X509, X509_LU_CRL, ... } X509_LOOKUP_TYPE;

static const int X509_V_OK;
static const int X509_V_ERR_HOSTNAME_MISMATCH;
static const int X509_V_ERR_IP_ADDRESS_MISMATCH;
static const int X509_V_ERR_EMAIL_MISMATCH;

static const unsigned long X509_V_FLAG_CRL_CHECK;
static const unsigned long X509_V_FLAG_CRL_CHECK_ALL;
static const unsigned long X509_V_FLAG_X509_STRICT;
static const unsigned long X509_V_FLAG_ALLOW_PROXY_CERTS;
static const unsigned long X509_V_FLAG_TRUSTED_FIRST;
static const unsigned long X509_V_FLAG_PARTIAL_CHAIN;

static const unsigned int X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS;
static const unsigned int X509_CHECK_FLAG_NEVER_CHECK_SUBJECT;

static const int X509_R_CERT_ALREADY_IN_HASH_TABLE;
static const int ASN1_R_HEADER_TOO_LONG;
"""

FUNCTIONS = """
void X509_free(X509 *);
int X509_up_ref(X509 *);
int i2d_X509(X509 *, unsigned char **);
X509 *d2i_X509(X509 **, const unsigned char **, long);
X509 *d2i_X509_bio(BIO *, X509 **);
int X509_check_ca(X509 *);
void X509_CRL_free(X509_CRL *);

int sk_X509_num(const STACK_OF_X509 *);
X509 *sk_X509_value(const STACK_OF_X509 *, int);
int sk_X509_OBJECT_num(const STACK_OF_X509_OBJECT *);
X509_OBJECT *sk_X509_OBJECT_value(const STACK_OF_X509_OBJECT *, int);

int X509_STORE_add_cert(X509_STORE *, X509 *);
int X509_STORE_add_crl(X509_STORE *, X509_CRL *);
STACK_OF_X509_OBJECT *X509_STORE_get0_objects(const X509_STORE *);
X509_LOOKUP_TYPE X509_OBJECT_get_type(const X509_OBJECT *);
X509 *X509_OBJECT_get0_X509(const X509_OBJECT *);

int X509_VERIFY_PARAM_set_flags(X509_VERIFY_PARAM *, unsigned long);
int X509_VERIFY_PARAM_clear_flags(X509_VERIFY_PARAM *, unsigned long);
unsigned long X509_VERIFY_PARAM_get_flags(const X509_VERIFY_PARAM *);
void X509_VERIFY_PARAM_set_hostflags(X509_VERIFY_PARAM *, unsigned int);
unsigned int X509_VERIFY_PARAM_get_hostflags(const X509_VERIFY_PARAM *);
int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM *, const char *, size_t);
int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *, const char *);
void X509_VERIFY_PARAM_set_depth(X509_VERIFY_PARAM *, int);
int X509_VERIFY_PARAM_get_depth(const X509_VERIFY_PARAM *);

const char *X509_verify_cert_error_string(long);
const char *X509_get_default_cert_file(void);
const char *X509_get_default_cert_file_env(void);
const char *X509_get_default_cert_dir(void);
const char *X509_get_default_cert_dir_env(void);
"""

CUSTOMIZATIONS = ""
