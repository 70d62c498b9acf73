/*
 * lightning_online.c - C client of lightning_online (see lightning_online.h).
 * C99 + POSIX sockets; no MPI. The protocol is defined in lightning_online/_wire/tcp.py.
 */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#define _POSIX_C_SOURCE 200809L /* getaddrinfo, strnlen, ... under -std=c99 */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE /* SO_NOSIGPIPE */
#endif

#include "lightning_online.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define LO_MAGIC 0x314E4F4Cu
#define LO_VERSION 2
#define LO_HELLO 1
#define LO_STEP 2
#define LO_CLOSE 3
#define LO_ERROR 4
#define LO_HEADER_BYTES 32
#define LO_DESC_BYTES 128
#define LO_NAME_BYTES 48
#define LO_N_DTYPES 11
#define LO_MAX_PARTS 65536

#define ENV_ADDRESS "LIGHTNING_ONLINE_ADDRESS"
#define ENV_TOKEN "LIGHTNING_ONLINE_TOKEN"
#define ENV_PARAMETERS "LIGHTNING_ONLINE_PARAMETERS"

/* A closed connection must give -1, not kill the program with SIGPIPE. */
#if defined(MSG_NOSIGNAL)
#define LO_SEND_FLAGS MSG_NOSIGNAL
#else
#define LO_SEND_FLAGS 0
#endif

#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define LO_TLS _Thread_local
#elif defined(__GNUC__)
#define LO_TLS __thread
#else
#define LO_TLS
#endif

struct lo_client {
    int fd;
    int64_t steps;  /* steps sent: the index of the next one */
    int broken;     /* a send failed midway: the stream is out of step */
};

static const int itemsize[LO_N_DTYPES] = {4, 8, 2, 1, 2, 4, 8, 1, 1, 8, 16};

static LO_TLS char last_error[512];

static void set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

const char *lo_last_error(void) { return last_error; }

/* ---- little-endian encoding (explicit, whatever the host) ---- */

static void put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    int i;
    for (i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void encode_header(unsigned char *p, int kind, uint32_t n_fields, int64_t step,
                          uint64_t payload)
{
    put_u32(p, LO_MAGIC);
    put_u16(p + 4, LO_VERSION);
    put_u16(p + 6, (uint16_t)kind);
    put_u32(p + 8, n_fields);
    put_u32(p + 12, 0);
    put_u64(p + 16, (uint64_t)step);
    put_u64(p + 24, payload);
}

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

/* ---- sending ---- */

/* Send every byte of iov[0..n-1], through partial writes and EINTR. Modifies iov. */
static int send_all(lo_client *c, struct iovec *iov, int n)
{
    while (n > 0) {
        struct msghdr msg;
        ssize_t sent;
        if (iov->iov_len == 0) {
            iov++;
            n--;
            continue;
        }
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = n;
        sent = sendmsg(c->fd, &msg, LO_SEND_FLAGS);
        if (sent < 0) {
            if (errno == EINTR) continue;
            c->broken = 1;
            set_error("lightning_online: sending to the training process failed: %s "
                      "(did it stop or time out?)",
                      strerror(errno));
            return -1;
        }
        while (sent > 0) {
            if ((size_t)sent >= iov->iov_len) {
                sent -= (ssize_t)iov->iov_len;
                iov++;
                n--;
            } else {
                iov->iov_base = (char *)iov->iov_base + sent;
                iov->iov_len -= (size_t)sent;
                sent = 0;
            }
        }
    }
    return 0;
}

/* A message with a small payload (HELLO, CLOSE, ERROR). */
static int send_simple(lo_client *c, int kind, int64_t step, const void *payload, size_t n)
{
    unsigned char head[LO_HEADER_BYTES];
    struct iovec iov[2];
    encode_header(head, kind, 0, step, (uint64_t)n);
    iov[0].iov_base = head;
    iov[0].iov_len = sizeof head;
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = n;
    return send_all(c, iov, 2);
}

/* HELLO: uint32 part, uint32 n_parts, then the token. */
static int send_hello(lo_client *c, uint32_t part, uint32_t n_parts, const char *token)
{
    unsigned char head[LO_HEADER_BYTES + 8];
    size_t n = strlen(token);
    struct iovec iov[2];
    encode_header(head, LO_HELLO, 0, 0, 8 + (uint64_t)n);
    put_u32(head + LO_HEADER_BYTES, part);
    put_u32(head + LO_HEADER_BYTES + 4, n_parts);
    iov[0].iov_base = head;
    iov[0].iov_len = sizeof head;
    iov[1].iov_base = (void *)token;
    iov[1].iov_len = n;
    return send_all(c, iov, 2);
}

/* ---- connecting ---- */

/* Wait for a connect() interrupted by a signal (it goes on asynchronously). */
static int finish_connect(int fd)
{
    struct pollfd p;
    int err = 0;
    socklen_t len = sizeof err;
    p.fd = fd;
    p.events = POLLOUT;
    for (;;) {
        int r = poll(&p, 1, -1);
        if (r > 0) break;
        if (r < 0 && errno != EINTR) return errno;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

lo_client *lo_connect_to_part(const char *address, const char *token, int part, int n_parts)
{
    char host[256], port[16];
    const char *colon, *h;
    size_t hlen, plen, i;
    struct addrinfo hints, *res = NULL, *ai;
    int fd = -1, rc, err = 0;
    lo_client *c;

    if (n_parts < 1 || n_parts > LO_MAX_PARTS) {
        set_error("lightning_online: n_parts = %d is out of range 1..%d", n_parts, LO_MAX_PARTS);
        return NULL;
    }
    if (part < 0 || part >= n_parts) {
        set_error("lightning_online: part = %d is out of range 0..%d (n_parts = %d)", part,
                  n_parts - 1, n_parts);
        return NULL;
    }
    if (!host_is_little_endian()) {
        set_error("lightning_online: this host is big-endian; the protocol carries "
                  "little-endian data only");
        return NULL;
    }
    if (!address || !*address) {
        set_error("lightning_online: no address to connect to (%s is not set: the program "
                  "must be started by an ExternalSolver)",
                  ENV_ADDRESS);
        return NULL;
    }
    if (!token) {
        set_error("lightning_online: no token (%s is not set: the program must be started "
                  "by an ExternalSolver)",
                  ENV_TOKEN);
        return NULL;
    }
    /* "host:port", "[v6]:port" or "v6:port": the port follows the last colon. */
    colon = strrchr(address, ':');
    if (!colon || colon == address || !colon[1]) {
        set_error("lightning_online: address \"%s\" is not host:port", address);
        return NULL;
    }
    h = address;
    hlen = (size_t)(colon - address);
    if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    plen = strlen(colon + 1);
    if (hlen == 0 || hlen >= sizeof host || plen >= sizeof port) {
        set_error("lightning_online: address \"%s\" is not host:port", address);
        return NULL;
    }
    for (i = 0; i < plen; i++) {
        if (colon[1 + i] < '0' || colon[1 + i] > '9') {
            set_error("lightning_online: address \"%s\" has a bad port", address);
            return NULL;
        }
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen + 1);

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        set_error("lightning_online: cannot resolve \"%s\": %s", host, gai_strerror(rc));
        return NULL;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        err = rc == 0 ? 0 : errno;
        if (err == EINTR) err = finish_connect(fd);
        if (err == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        set_error("lightning_online: cannot connect to %s: %s (is the training process "
                  "still waiting for this run?)",
                  address, strerror(err));
        return NULL;
    }
    {
        int one = 1;
        /* Steps go out as soon as they are written; children of the solver do not inherit
         * the connection. */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
#if !defined(MSG_NOSIGNAL)
#if defined(SO_NOSIGPIPE)
        (void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#else
        signal(SIGPIPE, SIG_IGN);
#endif
#endif
    }
    c = (lo_client *)malloc(sizeof *c);
    if (!c) {
        close(fd);
        set_error("lightning_online: out of memory");
        return NULL;
    }
    c->fd = fd;
    c->steps = 0;
    c->broken = 0;
    if (send_hello(c, (uint32_t)part, (uint32_t)n_parts, token) != 0) {
        close(fd);
        free(c);
        return NULL;
    }
    return c;
}

lo_client *lo_connect_to(const char *address, const char *token)
{
    return lo_connect_to_part(address, token, 0, 1);
}

lo_client *lo_connect_part(int part, int n_parts)
{
    return lo_connect_to_part(getenv(ENV_ADDRESS), getenv(ENV_TOKEN), part, n_parts);
}

lo_client *lo_connect(void)
{
    return lo_connect_part(0, 1);
}

/* ---- parameters ---- */

int lo_parameters(double *theta, int max)
{
    const char *s = getenv(ENV_PARAMETERS);
    const char *dot = localeconv()->decimal_point;
    int n = 0;

    if (!s) {
        set_error("lightning_online: %s is not set (the program must be started by an "
                  "ExternalSolver)",
                  ENV_PARAMETERS);
        return -1;
    }
    if (max < 0 || (max > 0 && !theta)) {
        set_error("lightning_online: lo_parameters: bad arguments (theta %p, max %d)",
                  (void *)theta, max);
        return -1;
    }
    while (*s == ' ') s++;
    if (!*s) return 0;
    for (;;) {
        char tok[64], *end;
        size_t len = strcspn(s, ",");
        double v;
        if (len == 0 || len >= sizeof tok) {
            set_error("lightning_online: %s: value %d is empty or too long in \"%s\"",
                      ENV_PARAMETERS, n + 1, getenv(ENV_PARAMETERS));
            return -1;
        }
        memcpy(tok, s, len);
        tok[len] = '\0';
        /* Python writes '.', strtod reads the C locale's decimal point. */
        if (dot && dot[0] && dot[0] != '.' && !dot[1]) {
            char *p = strchr(tok, '.');
            if (p) *p = dot[0];
        }
        errno = 0;
        v = strtod(tok, &end);
        while (*end == ' ') end++;
        if (end == tok || *end) {
            set_error("lightning_online: %s: value %d (\"%.*s\") is not a number",
                      ENV_PARAMETERS, n + 1, (int)len, s);
            return -1;
        }
        if (n >= max) {
            set_error("lightning_online: %s holds more than %d values: \"%s\"",
                      ENV_PARAMETERS, max, getenv(ENV_PARAMETERS));
            return -1;
        }
        theta[n++] = v;
        s += len;
        if (!*s) break;
        s++; /* the comma */
    }
    return n;
}

/* ---- steps ---- */

/* Strict UTF-8, as Python decodes the name (no overlongs, surrogates or values > U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k, len;
        unsigned long cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

/* Check one field; its size in bytes goes to *nbytes. */
static int check_field(const lo_field *f, int i, uint64_t *nbytes)
{
    size_t len;
    uint64_t count = 1;
    int d;

    if (!f->name) {
        set_error("lightning_online: field %d has no name (NULL)", i);
        return -1;
    }
    len = strnlen(f->name, LO_NAME_BYTES);
    if (len == 0 || len >= LO_NAME_BYTES) {
        set_error("lightning_online: field %d: the name must be 1 to %d bytes, got \"%.*s%s\"",
                  i, LO_NAME_BYTES - 1, LO_NAME_BYTES - 1, f->name, len ? "..." : "");
        return -1;
    }
    if (!valid_utf8((const unsigned char *)f->name, len)) {
        set_error("lightning_online: field %d: the name is not valid UTF-8", i);
        return -1;
    }
    if (f->dtype < 0 || f->dtype >= LO_N_DTYPES) {
        set_error("lightning_online: field \"%s\": unknown dtype code %d (use LO_FLOAT32 .. "
                  "LO_COMPLEX128, 0..%d)",
                  f->name, f->dtype, LO_N_DTYPES - 1);
        return -1;
    }
    if (f->ndim < 0 || f->ndim > LO_MAX_DIMS) {
        set_error("lightning_online: field \"%s\": ndim %d is out of range 0..%d", f->name,
                  f->ndim, LO_MAX_DIMS);
        return -1;
    }
    if (f->ndim > 0 && !f->shape) {
        set_error("lightning_online: field \"%s\": shape is NULL with ndim %d", f->name,
                  f->ndim);
        return -1;
    }
    for (d = 0; d < f->ndim; d++) {
        int64_t s = f->shape[d];
        if (s < 0) {
            set_error("lightning_online: field \"%s\": shape[%d] = %lld is negative", f->name,
                      d, (long long)s);
            return -1;
        }
        if (s > 0 && count > (uint64_t)INT64_MAX / (uint64_t)s) {
            set_error("lightning_online: field \"%s\": the shape is too large", f->name);
            return -1;
        }
        count *= (uint64_t)s;
    }
    if (count > ((uint64_t)INT64_MAX - 7) / (uint64_t)itemsize[f->dtype] ||
        count * (uint64_t)itemsize[f->dtype] > (uint64_t)SIZE_MAX) {
        set_error("lightning_online: field \"%s\": the shape is too large", f->name);
        return -1;
    }
    *nbytes = count * (uint64_t)itemsize[f->dtype];
    if (*nbytes > 0 && !f->data) {
        set_error("lightning_online: field \"%s\": data is NULL for %llu bytes", f->name,
                  (unsigned long long)*nbytes);
        return -1;
    }
    return 0;
}

int lo_send_step(lo_client *c, int n_fields, const lo_field *fields)
{
    static const unsigned char zeros[8] = {0};
    unsigned char head[LO_HEADER_BYTES + LO_MAX_FIELDS * LO_DESC_BYTES];
    struct iovec iov[1 + 2 * LO_MAX_FIELDS];
    uint64_t nbytes[LO_MAX_FIELDS], payload;
    int i, j, n_iov = 1;

    if (!c) {
        set_error("lightning_online: lo_send_step: the client is NULL (did lo_connect fail?)");
        return -1;
    }
    if (c->broken) {
        set_error("lightning_online: lo_send_step: the connection broke on an earlier send");
        return -1;
    }
    if (n_fields < 1 || n_fields > LO_MAX_FIELDS) {
        set_error("lightning_online: a step must have 1 to %d fields, got %d", LO_MAX_FIELDS,
                  n_fields);
        return -1;
    }
    if (!fields) {
        set_error("lightning_online: lo_send_step: fields is NULL");
        return -1;
    }
    payload = (uint64_t)n_fields * LO_DESC_BYTES;
    for (i = 0; i < n_fields; i++) {
        if (check_field(&fields[i], i, &nbytes[i]) != 0) return -1;
        for (j = 0; j < i; j++) {
            if (strcmp(fields[i].name, fields[j].name) == 0) {
                set_error("lightning_online: field name \"%s\" appears twice in one step "
                          "(fields %d and %d)",
                          fields[i].name, j, i);
                return -1;
            }
        }
        if (pad8(nbytes[i]) > (uint64_t)INT64_MAX - payload) {
            set_error("lightning_online: the step is too large");
            return -1;
        }
        payload += pad8(nbytes[i]);
    }

    memset(head, 0, LO_HEADER_BYTES + (size_t)n_fields * LO_DESC_BYTES);
    encode_header(head, LO_STEP, (uint32_t)n_fields, c->steps, payload);
    for (i = 0; i < n_fields; i++) {
        const lo_field *f = &fields[i];
        unsigned char *p = head + LO_HEADER_BYTES + (size_t)i * LO_DESC_BYTES;
        memcpy(p, f->name, strlen(f->name)); /* rest stays NUL */
        put_u32(p + 48, (uint32_t)f->dtype);
        put_u32(p + 52, (uint32_t)f->ndim);
        for (j = 0; j < f->ndim; j++) put_u64(p + 56 + 8 * j, (uint64_t)f->shape[j]);
        put_u64(p + 120, nbytes[i]);
        if (nbytes[i] > 0) {
            iov[n_iov].iov_base = (void *)f->data;
            iov[n_iov].iov_len = (size_t)nbytes[i];
            n_iov++;
            if (pad8(nbytes[i]) != nbytes[i]) {
                iov[n_iov].iov_base = (void *)zeros;
                iov[n_iov].iov_len = (size_t)(pad8(nbytes[i]) - nbytes[i]);
                n_iov++;
            }
        }
    }
    iov[0].iov_base = head;
    iov[0].iov_len = LO_HEADER_BYTES + (size_t)n_fields * LO_DESC_BYTES;
    if (send_all(c, iov, n_iov) != 0) return -1;
    c->steps++;
    return 0;
}

/* ---- ending ---- */

static int finish(lo_client *c, int kind, const char *message)
{
    int rc = 0;
    if (c->broken) {
        set_error("lightning_online: the connection broke on an earlier send");
        rc = -1;
    } else if (kind == LO_CLOSE) {
        rc = send_simple(c, LO_CLOSE, c->steps, NULL, 0);
    } else {
        rc = send_simple(c, LO_ERROR, 0, message, strlen(message));
    }
    if (close(c->fd) != 0 && errno != EINTR && rc == 0) {
        set_error("lightning_online: closing the connection failed: %s", strerror(errno));
        rc = -1;
    }
    free(c);
    return rc;
}

int lo_close(lo_client *c)
{
    if (!c) {
        set_error("lightning_online: lo_close: the client is NULL");
        return -1;
    }
    return finish(c, LO_CLOSE, NULL);
}

int lo_abort(lo_client *c, const char *message)
{
    if (!c) {
        set_error("lightning_online: lo_abort: the client is NULL");
        return -1;
    }
    if (!message || !*message) message = "the solver program aborted (no message)";
    return finish(c, LO_ERROR, message);
}
