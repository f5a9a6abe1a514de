INCLUDES = """
#include <openssl/objects.h>
"""

TYPES = """
typedef ... ASN1_OBJECT;
static const int NID_undef;
"""

FUNCTIONS = """
ASN1_OBJECT *OBJ_txt2obj(const char *, int);
int OBJ_obj2txt(char *, int, const ASN1_OBJECT *, int);
int OBJ_obj2nid(const ASN1_OBJECT *);
int OBJ_txt2nid(const char *);
int OBJ_sn2nid(const char *);
const char *OBJ_nid2ln(int);
const char *OBJ_nid2sn(int);
void ASN1_OBJECT_free(ASN1_OBJECT *);
"""

CUSTOMIZATIONS = ""
