INCLUDES = """
#include <openssl/ssl.h>

typedef STACK_OF(SSL_CIPHER) STACK_OF_SSL_CIPHER;
"""

TYPES = """
typedef ... SSL_METHOD;
typedef ... SSL_CTX;
typedef ... SSL;
typedef ... SSL_CIPHER;
typedef ... SSL_SESSION;
/* What one data call (ktls_ssl_read/ktls_ssl_write) left: the bytes moved, or SSL_get_error's code
 * and the errno of the failed call. */
struct ktls_io_result {
    size_t count;
    int code;
    int saved_errno;
};
typedef ... COMP_METHOD;
typedef ... STACK_OF_SSL_CIPHER;
typedef int... ossl_ssize_t;
typedef int... off_t;

typedef void (*SSL_CTX_keylog_cb_func)(const SSL *, const char *);
typedef int (*SSL_verify_cb)(int, X509_STORE_CTX *);

/* Versions (also the record-layer version numbers). */
static const int SSL3_VERSION;
static const int TLS1_VERSION;
static const int TLS1_1_VERSION;
static const int TLS1_2_VERSION;
static const int TLS1_3_VERSION;

/* Content types as the message callback reports them; HEADER is a record header (5 bytes). */
static const int SSL3_RT_CHANGE_CIPHER_SPEC;
static const int SSL3_RT_ALERT;
static const int SSL3_RT_HANDSHAKE;
static const int SSL3_RT_APPLICATION_DATA;
static const int SSL3_RT_HEADER;
static const int SSL3_RT_INNER_CONTENT_TYPE;
static const int SSL3_RT_HEADER_LENGTH;
static const int SSL3_RT_MAX_PLAIN_LENGTH;

static const int SSL_ERROR_NONE;
static const int SSL_ERROR_SSL;
static const int SSL_ERROR_WANT_READ;
static const int SSL_ERROR_WANT_WRITE;
static const int SSL_ERROR_WANT_X509_LOOKUP;
static const int SSL_ERROR_SYSCALL;
static const int SSL_ERROR_ZERO_RETURN;
static const int SSL_ERROR_WANT_CONNECT;
static const int SSL_ERROR_WANT_ACCEPT;

static const int SSL_VERIFY_NONE;
static const int SSL_VERIFY_PEER;
static const int SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
static const int SSL_VERIFY_CLIENT_ONCE;
static const int SSL_VERIFY_POST_HANDSHAKE;

static const int SSL_FILETYPE_PEM;
static const int SSL_FILETYPE_ASN1;

static const int SSL_SENT_SHUTDOWN;
static const int SSL_RECEIVED_SHUTDOWN;

static const int SSL_KEY_UPDATE_NONE;
static const int SSL_KEY_UPDATE_NOT_REQUESTED;
static const int SSL_KEY_UPDATE_REQUESTED;

static const int TLSEXT_NAMETYPE_host_name;
static const int SSL_TLSEXT_ERR_OK;
static const int SSL_TLSEXT_ERR_ALERT_WARNING;
static const int SSL_TLSEXT_ERR_ALERT_FATAL;
static const int SSL_TLSEXT_ERR_NOACK;

static const int SSL_AD_CLOSE_NOTIFY;
static const int SSL_AD_UNEXPECTED_MESSAGE;
static const int SSL_AD_HANDSHAKE_FAILURE;
static const int SSL_AD_INTERNAL_ERROR;
static const int SSL_AD_UNRECOGNIZED_NAME;
static const int SSL_AD_NO_RENEGOTIATION;
static const int SSL_AD_NO_APPLICATION_PROTOCOL;

static const long SSL_SESS_CACHE_OFF;
static const long SSL_SESS_CACHE_CLIENT;
static const long SSL_SESS_CACHE_SERVER;
static const long SSL_SESS_CACHE_BOTH;

static const uint64_t SSL_OP_ALL;
static const uint64_t SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS;
static const uint64_t SSL_OP_ENABLE_KTLS;
static const uint64_t SSL_OP_NO_SSLv2;
static const uint64_t SSL_OP_NO_SSLv3;
static const uint64_t SSL_OP_NO_TLSv1;
static const uint64_t SSL_OP_NO_TLSv1_1;
static const uint64_t SSL_OP_NO_TLSv1_2;
static const uint64_t SSL_OP_NO_TLSv1_3;
static const uint64_t SSL_OP_NO_TICKET;
static const uint64_t SSL_OP_NO_COMPRESSION;
static const uint64_t SSL_OP_NO_RENEGOTIATION;
static const uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE;
static const uint64_t SSL_OP_SINGLE_DH_USE;
static const uint64_t SSL_OP_SINGLE_ECDH_USE;
static const uint64_t SSL_OP_ENABLE_MIDDLEBOX_COMPAT;
static const uint64_t SSL_OP_IGNORE_UNEXPECTED_EOF;
static const uint64_t SSL_OP_NO_ENCRYPT_THEN_MAC;
static const uint64_t SSL_OP_ALLOW_CLIENT_RENEGOTIATION;
static const uint64_t SSL_OP_LEGACY_SERVER_CONNECT;

static const long SSL_MODE_ENABLE_PARTIAL_WRITE;
static const long SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
static const long SSL_MODE_AUTO_RETRY;
static const long SSL_MODE_RELEASE_BUFFERS;
"""

FUNCTIONS = """
/* Methods and contexts */
const SSL_METHOD *TLS_method(void);
const SSL_METHOD *TLS_client_method(void);
const SSL_METHOD *TLS_server_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *);
int OPENSSL_init_ssl(uint64_t, const void *);
#define OPENSSL_INIT_LOAD_SSL_STRINGS ...
#define OPENSSL_INIT_LOAD_CRYPTO_STRINGS ...
void SSL_CTX_free(SSL_CTX *);
int SSL_CTX_up_ref(SSL_CTX *);
int SSL_CTX_set_app_data(SSL_CTX *, void *);
void *SSL_CTX_get_app_data(const SSL_CTX *);

/* Certificates, keys, trust */
int SSL_CTX_use_certificate_chain_file(SSL_CTX *, const char *);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *, const char *, int);
int SSL_CTX_check_private_key(const SSL_CTX *);
void SSL_CTX_set_default_passwd_cb(SSL_CTX *, pem_password_cb *);
void SSL_CTX_set_default_passwd_cb_userdata(SSL_CTX *, void *);
int SSL_CTX_load_verify_locations(SSL_CTX *, const char *, const char *);
int SSL_CTX_set_default_verify_paths(SSL_CTX *);
X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *);
void SSL_CTX_set_verify(SSL_CTX *, int, SSL_verify_cb);
int SSL_CTX_get_verify_mode(const SSL_CTX *);
void SSL_CTX_set_verify_depth(SSL_CTX *, int);
X509_VERIFY_PARAM *SSL_CTX_get0_param(SSL_CTX *);
X509_VERIFY_PARAM *SSL_get0_param(SSL *);
int SSL_set1_host(SSL *, const char *);
void SSL_set_hostflags(SSL *, unsigned int);
int SSL_CTX_set0_tmp_dh_pkey(SSL_CTX *, EVP_PKEY *);
long SSL_CTX_set1_groups_list(SSL_CTX *, const char *);
long SSL_CTX_set1_groups(SSL_CTX *, int *, int);
long SSL_CTX_set_tmp_dh(SSL_CTX *, DH *);
SSL_verify_cb SSL_CTX_get_verify_callback(const SSL_CTX *);

/* Protocol versions, options, modes, ciphers */
int SSL_CTX_set_min_proto_version(SSL_CTX *, int);
int SSL_CTX_set_max_proto_version(SSL_CTX *, int);
int SSL_CTX_get_min_proto_version(SSL_CTX *);
int SSL_CTX_get_max_proto_version(SSL_CTX *);
uint64_t SSL_CTX_set_options(SSL_CTX *, uint64_t);
uint64_t SSL_CTX_clear_options(SSL_CTX *, uint64_t);
uint64_t SSL_CTX_get_options(const SSL_CTX *);
uint64_t SSL_set_options(SSL *, uint64_t);
uint64_t SSL_clear_options(SSL *, uint64_t);
uint64_t SSL_get_options(const SSL *);
long SSL_CTX_set_mode(SSL_CTX *, long);
long SSL_CTX_get_mode(SSL_CTX *);
long SSL_CTX_clear_mode(SSL_CTX *, long);
long SSL_set_mode(SSL *, long);
void SSL_CTX_set_read_ahead(SSL_CTX *, int);
void SSL_set_read_ahead(SSL *, int);
int SSL_get_read_ahead(const SSL *);
int SSL_CTX_set_cipher_list(SSL_CTX *, const char *);
int SSL_CTX_set_ciphersuites(SSL_CTX *, const char *);
STACK_OF_SSL_CIPHER *SSL_CTX_get_ciphers(const SSL_CTX *);
STACK_OF_SSL_CIPHER *SSL_get_ciphers(const SSL *);
STACK_OF_SSL_CIPHER *SSL_get_client_ciphers(const SSL *);
int sk_SSL_CIPHER_num(const STACK_OF_SSL_CIPHER *);
const SSL_CIPHER *sk_SSL_CIPHER_value(const STACK_OF_SSL_CIPHER *, int);
void SSL_CTX_set_security_level(SSL_CTX *, int);
int SSL_CTX_get_security_level(const SSL_CTX *);

/* SNI and ALPN */
long SSL_set_tlsext_host_name(SSL *, const char *);
const char *SSL_get_servername(const SSL *, const int);
long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *, int (*)(SSL *, int *, void *));
long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *, void *);
SSL_CTX *SSL_set_SSL_CTX(SSL *, SSL_CTX *);
SSL_CTX *SSL_get_SSL_CTX(const SSL *);
int SSL_CTX_set_alpn_protos(SSL_CTX *, const unsigned char *, unsigned int);
int SSL_set_alpn_protos(SSL *, const unsigned char *, unsigned int);
void SSL_CTX_set_alpn_select_cb(SSL_CTX *,
    int (*)(SSL *, const unsigned char **, unsigned char *, const unsigned char *, unsigned int, void *),
    void *);
void SSL_get0_alpn_selected(const SSL *, const unsigned char **, unsigned int *);

/* Sessions and tickets */
int SSL_CTX_set_num_tickets(SSL_CTX *, size_t);
size_t SSL_CTX_get_num_tickets(const SSL_CTX *);
long SSL_CTX_set_session_cache_mode(SSL_CTX *, long);
long SSL_CTX_get_session_cache_mode(SSL_CTX *);
int SSL_CTX_set_session_id_context(SSL_CTX *, const unsigned char *, unsigned int);
long SSL_CTX_sess_number(SSL_CTX *);
long SSL_CTX_sess_connect(SSL_CTX *);
long SSL_CTX_sess_connect_good(SSL_CTX *);
long SSL_CTX_sess_connect_renegotiate(SSL_CTX *);
long SSL_CTX_sess_accept(SSL_CTX *);
long SSL_CTX_sess_accept_good(SSL_CTX *);
long SSL_CTX_sess_accept_renegotiate(SSL_CTX *);
long SSL_CTX_sess_hits(SSL_CTX *);
long SSL_CTX_sess_misses(SSL_CTX *);
long SSL_CTX_sess_timeouts(SSL_CTX *);
long SSL_CTX_sess_cache_full(SSL_CTX *);
long SSL_CTX_sess_cb_hits(SSL_CTX *);
SSL_SESSION *SSL_get_session(const SSL *);
SSL_SESSION *SSL_get1_session(SSL *);
int SSL_set_session(SSL *, SSL_SESSION *);
int SSL_CTX_remove_session(SSL_CTX *, SSL_SESSION *);
int SSL_session_reused(const SSL *);
void SSL_SESSION_free(SSL_SESSION *);
int SSL_SESSION_up_ref(SSL_SESSION *);
const unsigned char *SSL_SESSION_get_id(const SSL_SESSION *, unsigned int *);
const unsigned char *SSL_SESSION_get0_id_context(const SSL_SESSION *, unsigned int *);
long SSL_SESSION_get_time(const SSL_SESSION *);
long SSL_SESSION_get_timeout(const SSL_SESSION *);
int SSL_SESSION_has_ticket(const SSL_SESSION *);
unsigned long SSL_SESSION_get_ticket_lifetime_hint(const SSL_SESSION *);
int SSL_SESSION_is_resumable(const SSL_SESSION *);
int SSL_SESSION_get_protocol_version(const SSL_SESSION *);
size_t SSL_SESSION_get_master_key(const SSL_SESSION *, unsigned char *, size_t);
int i2d_SSL_SESSION(const SSL_SESSION *, unsigned char **);
SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **, const unsigned char **, long);

/* Connections */
SSL *SSL_new(SSL_CTX *);
void SSL_free(SSL *);
int SSL_set_app_data(SSL *, void *);
void *SSL_get_app_data(const SSL *);
int SSL_set_fd(SSL *, int);
int SSL_get_fd(const SSL *);
void SSL_set_bio(SSL *, BIO *, BIO *);
void SSL_set0_rbio(SSL *, BIO *);
void SSL_set0_wbio(SSL *, BIO *);
BIO *SSL_get_rbio(const SSL *);
BIO *SSL_get_wbio(const SSL *);
void SSL_set_connect_state(SSL *);
void SSL_set_accept_state(SSL *);
int SSL_is_server(const SSL *);
int SSL_do_handshake(SSL *);
int SSL_is_init_finished(const SSL *);
int SSL_in_init(const SSL *);
const char *SSL_state_string_long(const SSL *);
int SSL_read_ex(SSL *, void *, size_t, size_t *);
int SSL_peek_ex(SSL *, void *, size_t, size_t *);
int SSL_write_ex(SSL *, const void *, size_t, size_t *);
int SSL_pending(const SSL *);
int SSL_has_pending(const SSL *);
int SSL_shutdown(SSL *);
int SSL_get_shutdown(const SSL *);
void SSL_set_shutdown(SSL *, int);
int SSL_get_error(const SSL *, int);
int SSL_version(const SSL *);
const char *SSL_get_version(const SSL *);
void SSL_set_verify(SSL *, int, SSL_verify_cb);
int SSL_get_verify_mode(const SSL *);
long SSL_get_verify_result(const SSL *);
X509 *SSL_get0_peer_certificate(const SSL *);
STACK_OF_X509 *SSL_get_peer_cert_chain(const SSL *);
STACK_OF_X509 *SSL_get0_verified_chain(const SSL *);
size_t SSL_get_finished(const SSL *, void *, size_t);
size_t SSL_get_peer_finished(const SSL *, void *, size_t);
const COMP_METHOD *SSL_get_current_compression(const SSL *);
const char *SSL_COMP_get_name(const COMP_METHOD *);
const char *SSL_alert_type_string_long(int);
const char *SSL_alert_desc_string_long(int);

/* Post-handshake: client authentication and key update */
void SSL_CTX_set_post_handshake_auth(SSL_CTX *, int);
void SSL_set_post_handshake_auth(SSL *, int);
int SSL_verify_client_post_handshake(SSL *);
int SSL_key_update(SSL *, int);
int SSL_get_key_update_type(const SSL *);

/* OpenSSL's own kTLS path */
ossl_ssize_t SSL_sendfile(SSL *, int, off_t, size_t, int);

/* Secrets and record accounting */
void SSL_CTX_set_keylog_callback(SSL_CTX *, SSL_CTX_keylog_cb_func);
SSL_CTX_keylog_cb_func SSL_CTX_get_keylog_callback(const SSL_CTX *);
void SSL_CTX_set_msg_callback(SSL_CTX *,
    void (*)(int, int, int, const void *, size_t, SSL *, void *));
void SSL_set_msg_callback(SSL *,
    void (*)(int, int, int, const void *, size_t, SSL *, void *));
size_t SSL_get_client_random(const SSL *, unsigned char *, size_t);
size_t SSL_get_server_random(const SSL *, unsigned char *, size_t);

/* Ciphers */
const SSL_CIPHER *SSL_get_current_cipher(const SSL *);
const char *SSL_CIPHER_get_name(const SSL_CIPHER *);
const char *SSL_CIPHER_standard_name(const SSL_CIPHER *);
const char *SSL_CIPHER_get_version(const SSL_CIPHER *);
int SSL_CIPHER_get_bits(const SSL_CIPHER *, int *);
uint32_t SSL_CIPHER_get_id(const SSL_CIPHER *);
uint16_t SSL_CIPHER_get_protocol_id(const SSL_CIPHER *);
int SSL_CIPHER_get_cipher_nid(const SSL_CIPHER *);
int SSL_CIPHER_get_digest_nid(const SSL_CIPHER *);
int SSL_CIPHER_get_kx_nid(const SSL_CIPHER *);
int SSL_CIPHER_get_auth_nid(const SSL_CIPHER *);
int SSL_CIPHER_is_aead(const SSL_CIPHER *);
const EVP_MD *SSL_CIPHER_get_handshake_digest(const SSL_CIPHER *);
char *SSL_CIPHER_description(const SSL_CIPHER *, char *, int);
int ktls_ssl_read(SSL *, char *, size_t, struct ktls_io_result *);
int ktls_ssl_write(SSL *, const char *, size_t, struct ktls_io_result *);
"""

# One C call per read or write from Python instead of four (ERR_clear_error, the call, errno,
# SSL_get_error): each cffi call costs about as much as the system call under it at 100 bytes.
CUSTOMIZATIONS = r"""
#include <errno.h>
#include <openssl/err.h>

struct ktls_io_result {
    size_t count;
    int code;
    int saved_errno;
};

/* After a failed SSL_read_ex/SSL_write_ex: SSL_get_error's code and the call's errno.
 *
 * SSL_get_error reads the SSL object's rwstate, which a call from another thread may have
 * changed meanwhile: CPython's ssl lets one thread read while another writes, and each
 * SSL_read/SSL_write starts by resetting rwstate. The reader's EAGAIN then reads as
 * SSL_ERROR_SYSCALL (an EOF to the caller, though the peer sent nothing of the kind), and the
 * writer's as WANT_READ (a wait for input that may never come, while the socket is writable).
 * This thread's errno and error queue do not race: a call that failed with an empty queue and
 * errno EAGAIN was blocked on its own socket. A write then waits to write (after the handshake
 * SSL_write never needs to read: renegotiation is refused, TLS 1.3 has none); a read that OpenSSL
 * says is blocked on a write keeps that answer (answering a KeyUpdate), any other waits to read. */
static int ktls_io_failed(SSL *ssl, struct ktls_io_result *result, int writing)
{
    result->saved_errno = errno;
    result->code = SSL_get_error(ssl, 0);
    if ((result->saved_errno == EAGAIN || result->saved_errno == EWOULDBLOCK) && ERR_peek_error() == 0) {
        if (writing) {
            if (result->code == SSL_ERROR_SYSCALL || result->code == SSL_ERROR_WANT_READ)
                result->code = SSL_ERROR_WANT_WRITE;
        } else if (result->code == SSL_ERROR_SYSCALL) {
            result->code = SSL_ERROR_WANT_READ;
        }
    }
    return 0;
}

/* 1 with result->count set, or 0 with result->code and result->saved_errno (ktls_io_failed).
 * The error queue and errno are cleared first, so that what is left is this call's only. */
static int ktls_ssl_read(SSL *ssl, char *buf, size_t len, struct ktls_io_result *result)
{
    ERR_clear_error();
    errno = 0;
    if (SSL_read_ex(ssl, buf, len, &result->count) == 1)
        return 1;
    return ktls_io_failed(ssl, result, 0);
}

static int ktls_ssl_write(SSL *ssl, const char *buf, size_t len, struct ktls_io_result *result)
{
    ERR_clear_error();
    errno = 0;
    if (SSL_write_ex(ssl, buf, len, &result->count) == 1)
        return 1;
    return ktls_io_failed(ssl, result, 1);
}
"""
