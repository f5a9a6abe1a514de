"""Callbacks from OpenSSL into Python (cffi ``extern "Python"``), implemented in ktls_ossl.

Each receives the SSL or SSL_CTX whose app data holds a cffi handle to the Python owner.

Two jobs stay in C because OpenSSL calls them many times per handshake and a Python call each time
cost more than the handshake's crypto:
- record accounting: OpenSSL reports every record header to the message callback; the C callback
  counts records per direction since the last ChangeCipherSpec record (where TLS 1.2's new keys
  start) and since the last Finished message (where TLS 1.3's application keys start), and passes
  on to Python only the messages
  worth an audit event (ChangeCipherSpec, alerts, Finished, KeyUpdate), or every message where a
  caller asked to watch them all, or everything OpenSSL reports (record headers included) where
  the context has a _msg_callback;
- secret capture: the keylog callback keeps the TLS 1.3 application traffic secrets (the only
  way OpenSSL 3.0 gives them out) in the connection's state; Python is called only where a key
  log file is configured.
The state lives in a struct owned by the Python Handshake and reached from the SSL through
ex_data, so it needs no Python object to be alive inside the callbacks.
"""

INCLUDES = """
/* Defined by cffi from the extern "Python+C" declarations below; used by the C callbacks. */
void ktls_msg_cb(int, int, int, const void *, size_t, SSL *, void *);
void ktls_keylog_cb(const SSL *, const char *);
"""

TYPES = """
#define KTLS_MAX_SECRET ...
struct ktls_handshake_state {
    unsigned long long records[2];
    unsigned long long since_finished[2];
    unsigned long long since_ccs[2];
    int forward_all_messages;
    int forward_to_application;
    unsigned char client_traffic_secret[...];
    unsigned char server_traffic_secret[...];
    size_t client_traffic_secret_len;
    size_t server_traffic_secret_len;
};
"""

FUNCTIONS = """
extern "Python+C" void ktls_keylog_cb(const SSL *, const char *);
extern "Python+C" void ktls_msg_cb(int, int, int, const void *, size_t, SSL *, void *);
int ktls_state_index_init(void);
int ktls_attach_state(SSL *, struct ktls_handshake_state *);
void ktls_stop_counting(SSL *);
void ktls_keylog_capture(const SSL *, const char *);
void ktls_keylog_capture_and_log(const SSL *, const char *);
extern "Python" int ktls_passwd_cb(char *, int, int, void *);
extern "Python" int ktls_servername_cb(SSL *, int *, void *);
extern "Python" int ktls_alpn_select_cb(SSL *, const unsigned char **, unsigned char *,
                                        const unsigned char *, unsigned int, void *);
"""

CUSTOMIZATIONS = r"""
#include <string.h>

/* SHA-384 is the longest TLS 1.3 hash; 64 leaves room for any future suite. */
#define KTLS_MAX_SECRET 64

/* Index 0 is the read direction, 1 the write direction (OpenSSL's write_p). */
struct ktls_handshake_state {
    unsigned long long records[2];
    unsigned long long since_finished[2];
    unsigned long long since_ccs[2];
    int forward_all_messages;
    /* The context has a _msg_callback (CPython's debug hook): every message OpenSSL reports,
       record headers included, goes to Python, and the callback stays after the handshake. */
    int forward_to_application;
    unsigned char client_traffic_secret[KTLS_MAX_SECRET];
    unsigned char server_traffic_secret[KTLS_MAX_SECRET];
    size_t client_traffic_secret_len;
    size_t server_traffic_secret_len;
};

static int ktls_state_index = -1;

/* Called once, at import, before any SSL exists (the import lock serialises it). */
static int ktls_state_index_init(void)
{
    if (ktls_state_index < 0)
        ktls_state_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    return ktls_state_index;
}

static struct ktls_handshake_state *ktls_state_of(const SSL *ssl)
{
    if (ktls_state_index < 0)
        return NULL;
    return SSL_get_ex_data(ssl, ktls_state_index);
}

static int ktls_audited_message(int content_type, const void *buf, size_t len)
{
    if (content_type == SSL3_RT_CHANGE_CIPHER_SPEC || content_type == SSL3_RT_ALERT)
        return 1;
    if (content_type == SSL3_RT_HANDSHAKE && len > 0) {
        unsigned char type = ((const unsigned char *)buf)[0];
        return type == SSL3_MT_FINISHED || type == SSL3_MT_KEY_UPDATE;
    }
    return 0;
}

static void ktls_record_counter(int write_p, int version, int content_type, const void *buf,
                                size_t len, SSL *ssl, void *arg)
{
    struct ktls_handshake_state *state = arg;
    int direction = write_p ? 1 : 0;

    if (content_type == SSL3_RT_HEADER) {
        state->records[direction]++;
        state->since_finished[direction]++;
        /* TLS 1.2's new keys start with the record after the ChangeCipherSpec record: the
           Finished, whatever number of records it is fragmented over, and any (empty) record
           before it are all counted from there. */
        if (len > 0 && ((const unsigned char *)buf)[0] == SSL3_RT_CHANGE_CIPHER_SPEC)
            state->since_ccs[direction] = 0;
        else
            state->since_ccs[direction]++;
        if (state->forward_to_application)
            ktls_msg_cb(write_p, version, content_type, buf, len, ssl, arg);
        return;
    }
    if (content_type == SSL3_RT_INNER_CONTENT_TYPE) {
        if (state->forward_to_application)
            ktls_msg_cb(write_p, version, content_type, buf, len, ssl, arg);
        return;
    }
    /* The Finished message is reported after the header of its last record: TLS 1.3's
       application keys start with the next record. */
    if (content_type == SSL3_RT_HANDSHAKE && len > 0
            && ((const unsigned char *)buf)[0] == SSL3_MT_FINISHED)
        state->since_finished[direction] = 0;
    if (state->forward_all_messages || state->forward_to_application
            || ktls_audited_message(content_type, buf, len))
        ktls_msg_cb(write_p, version, content_type, buf, len, ssl, arg);
}

static int ktls_attach_state(SSL *ssl, struct ktls_handshake_state *state)
{
    if (ktls_state_index < 0 || !SSL_set_ex_data(ssl, ktls_state_index, state))
        return 0;
    SSL_set_msg_callback(ssl, ktls_record_counter);
    SSL_set_msg_callback_arg(ssl, state);
    return 1;
}

/* The application's _msg_callback keeps the callback for what still passes OpenSSL. */
static void ktls_stop_counting(SSL *ssl)
{
    struct ktls_handshake_state *state = ktls_state_of(ssl);

    if (state == NULL || !state->forward_to_application)
        SSL_set_msg_callback(ssl, NULL);
}

static int ktls_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* "LABEL <client random hex> <secret hex>" into out; the length, or 0 if malformed or too long. */
static size_t ktls_parse_secret(const char *line, size_t label_len, unsigned char *out)
{
    const char *hex = strchr(line + label_len + 1, ' ');
    size_t length = 0;

    if (hex == NULL)
        return 0;
    for (hex++; hex[0] != '\0' && hex[0] != '\n'; hex += 2) {
        int high = ktls_hex_digit(hex[0]), low = high < 0 ? -1 : ktls_hex_digit(hex[1]);
        if (low < 0 || length == KTLS_MAX_SECRET)
            return 0;
        out[length++] = (unsigned char)(high << 4 | low);
    }
    return length;
}

static void ktls_keylog_capture(const SSL *ssl, const char *line)
{
    static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ", server[] = "SERVER_TRAFFIC_SECRET_0 ";
    struct ktls_handshake_state *state = ktls_state_of(ssl);

    if (state == NULL)
        return;
    if (strncmp(line, client, sizeof(client) - 1) == 0)
        state->client_traffic_secret_len = ktls_parse_secret(line, sizeof(client) - 2,
                                                             state->client_traffic_secret);
    else if (strncmp(line, server, sizeof(server) - 1) == 0)
        state->server_traffic_secret_len = ktls_parse_secret(line, sizeof(server) - 2,
                                                             state->server_traffic_secret);
}

/* Installed instead of ktls_keylog_capture while the context has a keylog_filename. */
static void ktls_keylog_capture_and_log(const SSL *ssl, const char *line)
{
    ktls_keylog_capture(ssl, line);
    ktls_keylog_cb(ssl, line);
}
"""
