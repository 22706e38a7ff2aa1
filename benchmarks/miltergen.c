/* A native load generator that talks to a milter (or a Postfix policy server) the way
 * Postfix 3.7 does, cheap enough that the servers under test get the CPU they can use.
 *
 *   cc -O2 -o miltergen benchmarks/miltergen.c      (benchmarks/milter_load.py does this)
 *   ./miltergen [options] PORT
 *
 * Milter mode (the default), one TCP connection per session, as Postfix's smtpd does:
 *   OPTNEG offering version 6, actions 0x1FF, steps 0x1FFFFF; then, following the
 *   milter's answer (parsed here: its NO and NR flags and its SETSYMLIST lists), the
 *   D macro packets of every stage (sent even for skipped steps, as Postfix does), CONNECT
 *   and HELO unless skipped, MAIL, RCPT(s), and A A Q. A reply is awaited exactly where
 *   one is owed (no NR flag). Macros are the milter's SETSYMLIST lists, else Postfix's
 *   default lists, with only the macros Postfix has a value for ("i" only from the second
 *   RCPT on, after one was accepted). Everything up to the next command that owes a reply
 *   goes out in one write (as benchmarks/loadgen.py does).
 * Policy mode (--policy): CONC persistent connections, as smtpd keeps them; each asks
 *   one RCPT-state smtpd_access_policy request at a time (a "session" is one request).
 *
 * Every reply is checked: its framing, that it answers a command that owes one, and the
 * verdict (--gate: a member sender gets CONTINUE / DUNNO, a nonmember a reject for the
 * first recipient, the list; without --gate every RCPT must CONTINUE / DUNNO). Any error
 * or wrong verdict makes the exit status 1.
 *
 * Output: one line of key=value figures for the measurement window (sessions, rcpts,
 * errors, wrong, window seconds, the generator's own user and system CPU seconds from
 * getrusage, latency percentiles); with --lat FILE the raw RCPT latencies (uint32 µs,
 * native order) of the window are written to FILE. One process, one epoll thread.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 70000
#define RBUF 4096

/* ----------------------------------------------------------------- options */

static int port, conc = 10, rcpts = 1, gate, policy, population = 1000;
static double seconds = 4.0, warmup = 1.0, member_share = 0.5;
static const char *list_address = "list@example.org", *lat_path;
static unsigned long long seed = 1;

/* ----------------------------------------------------------------- byte strings */

struct buf { unsigned char *p; size_t n, cap; };

static void put(struct buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) { perror("realloc"); exit(2); }
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u32(struct buf *b, uint32_t v) {
    unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, x, 4);
}
static void put_cstr(struct buf *b, const char *s) { put(b, s, strlen(s) + 1); }

/* One packet: length, command byte, payload. */
static void packet(struct buf *out, char cmd, const struct buf *payload) {
    put_u32(out, (uint32_t)(1 + (payload ? payload->n : 0)));
    put(out, &cmd, 1);
    if (payload && payload->n) put(out, payload->p, payload->n);
}

/* ----------------------------------------------------------------- the plan */

enum { ST_CONNECT, ST_HELO, ST_ENVFROM, ST_ENVRCPT, ST_DATA, ST_EOM, ST_EOH, NSTAGES };

/* Postfix 3.7's milter_*_macros defaults. */
static const char *default_macros[NSTAGES] = {
    "j {daemon_name} {daemon_addr} v _",
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",
    "", "", "",
};

#define NOCONNECT 0x1
#define NOHELO 0x2
#define NOMAIL 0x4
#define NORCPT 0x8
#define NR_CONN 0x1000
#define NR_HELO 0x2000
#define NR_MAIL 0x4000
#define NR_RCPT 0x8000
#define OFFER_ACTIONS 0x1FF
#define OFFER_PROTOCOL 0x1FFFFF

struct kv { const char *k, *v; };

struct plan {
    unsigned char *reply;  /* the OPTNEG reply packet it was made from */
    size_t reply_n;
    char *macros[NSTAGES];
    int reply_connect, reply_helo, reply_mail;
    struct buf head_connect, head_helo;
    struct buf *mail;      /* per sender: members then nonmembers */
    struct buf *rcpt;      /* per recipient index x (i known) */
};

static char **senders;     /* 2 * population: members, then nonmembers */
static char **recipients;  /* rcpts: the list, then userN@example.org */

static const char *lookup(const struct kv *kv, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(kv[i].k, name) == 0) return kv[i].v;
    static const struct kv values[] = {
        {"j", "mx.bench.test"}, {"{daemon_name}", "mx.bench.test"},
        {"{daemon_addr}", "127.0.0.1"}, {"v", "Postfix 3.7.11"},
        {"_", "unknown [127.0.0.1]"}, {"{client_addr}", "127.0.0.1"},
        {"{client_name}", "unknown"},
    };
    for (size_t i = 0; i < sizeof values / sizeof *values; i++)
        if (strcmp(values[i].k, name) == 0) return values[i].v;
    return NULL;
}

/* D packet for *stage* (command code *code*): each wanted macro that has a value. */
static void macro(struct buf *out, const struct plan *pl, char code, int stage,
                  const struct kv *kv, size_t n) {
    struct buf pay = {0};
    put(&pay, &code, 1);
    char *names = strdup(pl->macros[stage] ? pl->macros[stage] : "");
    for (char *save, *name = strtok_r(names, " ", &save); name; name = strtok_r(NULL, " ", &save)) {
        const char *v = lookup(kv, n, name);
        if (v && *v) { put_cstr(&pay, name); put_cstr(&pay, v); }
    }
    free(names);
    packet(out, 'D', &pay);
    free(pay.p);
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static struct plan *plans[8];
static int nplans;

/* The plan for an OPTNEG reply packet (cached by its bytes); NULL if it is malformed or
 * asks for more than was offered. */
static struct plan *plan_for(const unsigned char *pkt, size_t n, const char **why) {
    for (int i = 0; i < nplans; i++)
        if (plans[i]->reply_n == n && memcmp(plans[i]->reply, pkt, n) == 0) return plans[i];
    if (n < 5 + 12) { *why = "short OPTNEG reply"; return NULL; }
    uint32_t version = be32(pkt + 5), actions = be32(pkt + 9), proto = be32(pkt + 13);
    if (version < 2 || version > 6) { *why = "OPTNEG reply: bad version"; return NULL; }
    if (actions & ~OFFER_ACTIONS || proto & ~OFFER_PROTOCOL) {
        *why = "milter asked for more than was offered"; return NULL;
    }
    if (proto & (NORCPT | NR_RCPT)) { *why = "the milter does not answer RCPT"; return NULL; }
    if (nplans == 8) { *why = "too many different OPTNEG replies"; return NULL; }
    struct plan *pl = calloc(1, sizeof *pl);
    pl->reply = malloc(n);
    memcpy(pl->reply, pkt, n);
    pl->reply_n = n;
    for (int s = 0; s < NSTAGES; s++) pl->macros[s] = strdup(default_macros[s]);
    size_t pos = 17;
    while (pos < n) {  /* SETSYMLIST: stage (u32), then the names, NUL-terminated */
        if (n - pos < 5) { *why = "OPTNEG reply: truncated macro list"; return NULL; }
        uint32_t stage = be32(pkt + pos);
        const unsigned char *s = pkt + pos + 4, *nul = memchr(s, 0, n - pos - 4);
        if (!nul || stage >= NSTAGES) { *why = "OPTNEG reply: bad macro list"; return NULL; }
        free(pl->macros[stage]);
        pl->macros[stage] = strndup((const char *)s, (size_t)(nul - s));
        pos = (size_t)(nul - pkt) + 1;
    }
    pl->reply_connect = !(proto & (NOCONNECT | NR_CONN));
    pl->reply_helo = !(proto & (NOHELO | NR_HELO));
    pl->reply_mail = !(proto & (NOMAIL | NR_MAIL));
    struct buf pay = {0};
    macro(&pl->head_connect, pl, 'C', ST_CONNECT, NULL, 0);
    if (!(proto & NOCONNECT)) {
        put_cstr(&pay, "[127.0.0.1]");
        put(&pay, "4", 1);
        unsigned char portb[2] = {50000 >> 8, 50000 & 0xff};
        put(&pay, portb, 2);
        put_cstr(&pay, "127.0.0.1");
        packet(&pl->head_connect, 'C', &pay);
    }
    macro(&pl->head_helo, pl, 'H', ST_HELO, NULL, 0);
    if (!(proto & NOHELO)) {
        pay.n = 0;
        put_cstr(&pay, "client.bench.test");
        packet(&pl->head_helo, 'H', &pay);
    }
    pl->mail = calloc(2 * (size_t)population, sizeof *pl->mail);
    char tmp[300];
    for (int i = 0; i < 2 * population; i++) {
        const char *host = strchr(senders[i], '@') + 1;
        struct kv kv[] = {{"{mail_addr}", senders[i]}, {"{mail_host}", host},
                          {"{mail_mailer}", "smtp"}};
        macro(&pl->mail[i], pl, 'M', ST_ENVFROM, kv, 3);
        if (!(proto & NOMAIL)) {
            pay.n = 0;
            snprintf(tmp, sizeof tmp, "<%s>", senders[i]);
            put_cstr(&pay, tmp);
            packet(&pl->mail[i], 'M', &pay);
        }
    }
    pl->rcpt = calloc(2 * (size_t)rcpts, sizeof *pl->rcpt);
    for (int r = 0; r < rcpts; r++) {
        for (int known = 0; known < 2; known++) {
            struct kv kv[] = {{"{rcpt_addr}", recipients[r]}, {"{rcpt_host}", "relay-discarded"},
                              {"{rcpt_mailer}", "discard"}, {"i", known ? "4XyZ1q2bc3D" : ""}};
            struct buf *out = &pl->rcpt[2 * r + known];
            macro(out, pl, 'R', ST_ENVRCPT, kv, 4);
            pay.n = 0;
            snprintf(tmp, sizeof tmp, "<%s>", recipients[r]);
            put_cstr(&pay, tmp);
            packet(out, 'R', &pay);
        }
    }
    free(pay.p);
    plans[nplans++] = pl;
    return pl;
}

/* ----------------------------------------------------------------- sessions */

enum { P_CONNECTING, P_AWAIT_NEG, P_CONN, P_HELO, P_MAIL, P_RCPT, P_POLICY };

struct sess {
    int fd, phase, rcpt, accepted, member, sender;
    size_t len;
    double t_sent;
    struct plan *plan;
    unsigned char buf[RBUF];
};

static struct sess *sessions[MAXFD];
static int ep, live;
static double w0, w1;
static unsigned long long done, rcpts_done, errors, wrong;
static char first_error[200];
static uint32_t *lat;
static size_t nlat, latcap;
static struct sockaddr_in target;
static unsigned char optneg[4 + 13];
static unsigned char tail[15];  /* A A Q */
static struct buf *policy_req;  /* per sender */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned long long rng_state;
static double rnd(void) {  /* xorshift64* in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void error(const char *what, int phase) {
    errors++;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s (phase %d)", what, phase);
}

static unsigned long long ends;  /* sessions ended so far (to tell whether one just did) */

static void end(struct sess *s, int ok) {
    ends++;
    close(s->fd);  /* also removes it from the epoll set */
    sessions[s->fd] = NULL;
    live--;
    if (ok) {
        double t = now();
        if (t >= w0 && t < w1) done++;
    }
    free(s);
}

static void fail(struct sess *s, const char *what) {
    error(what, s->phase);
    end(s, 0);
}

static int send_all(struct sess *s, const void *p, size_t n) {
    ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL);
    if (w != (ssize_t)n) {  /* never short with these sizes on loopback */
        fail(s, w < 0 ? strerror(errno) : "short send");
        return 0;
    }
    return 1;
}

static void start_session(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0 || fd >= MAXFD) {
        if (fd >= 0) close(fd);
        error(strerror(errno), -1);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        error(strerror(errno), -1);
        close(fd);
        return;
    }
    struct sess *s = malloc(sizeof *s);
    s->fd = fd;
    s->phase = P_CONNECTING;
    s->rcpt = s->accepted = 0;
    s->len = 0;
    s->plan = NULL;
    s->member = rnd() < member_share;
    s->sender = (int)(rnd() * population) + (s->member ? 0 : population);
    sessions[fd] = s;
    live++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Milter: send everything up to (and including) the next command that owes a reply. */
static void advance(struct sess *s) {
    static struct buf out;
    struct plan *pl = s->plan;
    out.n = 0;
    int phase = s->phase;
    if (phase == P_AWAIT_NEG) {
        put(&out, pl->head_connect.p, pl->head_connect.n);
        if (pl->reply_connect) { s->phase = P_CONN; send_all(s, out.p, out.n); return; }
        phase = P_CONN;
    }
    if (phase == P_CONN) {
        put(&out, pl->head_helo.p, pl->head_helo.n);
        if (pl->reply_helo) { s->phase = P_HELO; send_all(s, out.p, out.n); return; }
        phase = P_HELO;
    }
    if (phase == P_HELO) {
        put(&out, pl->mail[s->sender].p, pl->mail[s->sender].n);
        if (pl->reply_mail) { s->phase = P_MAIL; send_all(s, out.p, out.n); return; }
        phase = P_MAIL;
    }
    if (phase == P_RCPT) s->rcpt++;
    if (s->rcpt >= rcpts) {
        put(&out, tail, sizeof tail);
        if (send_all(s, out.p, out.n)) end(s, 1);
        return;
    }
    struct buf *r = &pl->rcpt[2 * s->rcpt + s->accepted];
    put(&out, r->p, r->n);
    s->phase = P_RCPT;
    s->t_sent = now();
    send_all(s, out.p, out.n);
}

/* One RCPT answered at *t*, asked at *sent*: counted if inside the window. */
static void record(double t, double sent) {
    if (t >= w0 && t < w1) {
        if (nlat == latcap) {
            latcap = latcap ? 2 * latcap : 1 << 16;
            lat = realloc(lat, latcap * sizeof *lat);
            if (!lat) { perror("realloc"); exit(2); }
        }
        lat[nlat++] = (uint32_t)((t - sent) * 1e6);
        rcpts_done++;
    }
}

/* Milter: one reply packet; 0 when the session has ended. */
static int on_reply(struct sess *s, const unsigned char *pkt, size_t n) {
    unsigned char code = pkt[4];
    if (code == 'p') return 1;  /* progress: keep waiting */
    if (s->phase == P_AWAIT_NEG) {
        const char *why = "expected an OPTNEG reply";
        if (code != 'O' || !(s->plan = plan_for(pkt, n, &why))) { fail(s, why); return 0; }
        unsigned long long e = ends;
        advance(s);
        return ends == e;
    }
    if (s->phase == P_RCPT) {
        record(now(), s->t_sent);
        int reject_expected = gate && !s->member && s->rcpt == 0;
        if (code == 'c') {
            s->accepted = 1;
            if (reject_expected) wrong++;
        } else if (code == 'y' || code == 'r') {
            if (!reject_expected) wrong++;
        } else {
            wrong++;
        }
    } else if (s->phase == P_CONN || s->phase == P_HELO || s->phase == P_MAIL) {
        if (code != 'c') { fail(s, "unexpected reply"); return 0; }
    } else {
        fail(s, "a reply nobody asked for");
        return 0;
    }
    unsigned long long e = ends;
    advance(s);
    return ends == e;
}

/* Policy: one reply (action=...\n\n); 0 when the session has ended. */
static int on_policy_reply(struct sess *s, const unsigned char *p, size_t n) {
    double t = now();
    if (t >= w0 && t < w1) done++;
    record(t, s->t_sent);
    int dunno = n >= 13 && memcmp(p, "action=DUNNO\n", 13) == 0;
    int reject = n >= 11 && memcmp(p, "action=550 ", 11) == 0;
    if (n < 9 || memcmp(p, "action=", 7) != 0) { fail(s, "malformed policy reply"); return 0; }
    if (gate && !s->member ? !reject : !dunno) wrong++;
    if (t >= w1) { end(s, 0); return 0; }
    s->member = rnd() < member_share;
    s->sender = (int)(rnd() * population) + (s->member ? 0 : population);
    s->t_sent = now();
    return send_all(s, policy_req[s->sender].p, policy_req[s->sender].n);
}

static void on_event(int fd, uint32_t events) {
    struct sess *s = sessions[fd];
    if (!s) return;
    if (s->phase == P_CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
            fail(s, err ? strerror(err) : "hangup while connecting");
            return;
        }
        if (!(events & EPOLLOUT)) return;
        if (policy) {
            s->phase = P_POLICY;
            s->t_sent = now();
            if (!send_all(s, policy_req[s->sender].p, policy_req[s->sender].n)) return;
        } else {
            s->phase = P_AWAIT_NEG;
            if (!send_all(s, optneg, sizeof optneg)) return;
        }
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    for (;;) {  /* edge-triggered: a short read leaves nothing behind */
        ssize_t r = read(fd, s->buf + s->len, RBUF - s->len);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            fail(s, strerror(errno));
            return;
        }
        if (r == 0) { fail(s, "the server closed the connection"); return; }
        int full = (size_t)r == RBUF - s->len;
        s->len += (size_t)r;
        size_t off = 0;
        if (policy) {
            for (;;) {
                unsigned char *end_ = memmem(s->buf + off, s->len - off, "\n\n", 2);
                if (!end_) break;
                size_t n = (size_t)(end_ - (s->buf + off)) + 2;
                if (!on_policy_reply(s, s->buf + off, n)) return;
                off += n;
            }
        } else {
            while (s->len - off >= 5) {
                uint32_t n = be32(s->buf + off);
                if (n == 0 || n > RBUF - 4) { fail(s, "bad reply length"); return; }
                if (s->len - off < 4 + n) break;
                if (!on_reply(s, s->buf + off, 4 + n)) return;
                off += 4 + n;
            }
        }
        if (off) {
            memmove(s->buf, s->buf + off, s->len - off);
            s->len -= off;
        }
        if (s->len == RBUF) { fail(s, "reply too long"); return; }
        if (!full) return;
    }
}

/* ----------------------------------------------------------------- main */

static void build_policy_requests(void) {
    policy_req = calloc(2 * (size_t)population, sizeof *policy_req);
    char tmp[2048];
    for (int i = 0; i < 2 * population; i++) {
        /* the attributes Postfix 3.7's smtpd sends at RCPT, in its order */
        int n = snprintf(tmp, sizeof tmp,
            "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            "helo_name=client.bench.test\nqueue_id=\nsender=%s\nrecipient=%s\n"
            "recipient_count=0\nclient_address=127.0.0.1\nclient_name=localhost\n"
            "reverse_client_name=localhost\ninstance=%x.%x.%x.0\nsasl_method=\n"
            "sasl_username=\nsasl_sender=\nsize=0\nccert_subject=\nccert_issuer=\n"
            "ccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\n"
            "encryption_cipher=\nencryption_keysize=0\netrn_domain=\nstress=\n"
            "server_address=127.0.0.1\nserver_port=25\npolicy_context=\n"
            "compatibility_level=3.6\nmail_version=3.7.11\n\n",
            senders[i], list_address, 0x5f3a + i, 0x6a1 + i, 0x12 + i);
        put(&policy_req[i], tmp, (size_t)n);
    }
}

static void usage(const char *argv0) {
    fprintf(stderr,
        "usage: %s [--conc N] [--rcpts N] [--seconds S] [--warmup S] [--members N]\n"
        "          [--member-share F] [--list ADDR] [--gate] [--policy] [--seed N]\n"
        "          [--lat FILE] PORT\n", argv0);
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--gate")) gate = 1;
        else if (!strcmp(a, "--policy")) policy = 1;
        else if (!v && a[0] == '-') usage(argv[0]);
        else if (!strcmp(a, "--conc")) conc = atoi(v), i++;
        else if (!strcmp(a, "--rcpts")) rcpts = atoi(v), i++;
        else if (!strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (!strcmp(a, "--members")) population = atoi(v), i++;
        else if (!strcmp(a, "--member-share")) member_share = atof(v), i++;
        else if (!strcmp(a, "--list")) list_address = v, i++;
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10), i++;
        else if (!strcmp(a, "--lat")) lat_path = v, i++;
        else if (a[0] != '-' && !port) port = atoi(a);
        else usage(argv[0]);
    }
    if (!port || conc < 1 || rcpts < 1 || population < 1 || conc >= MAXFD - 100) usage(argv[0]);
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)conc + 100) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)MAXFD ? rl.rlim_max : (rlim_t)MAXFD;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    senders = calloc(2 * (size_t)population, sizeof *senders);
    for (int i = 0; i < population; i++) {
        if (asprintf(&senders[i], "member%04d@senders.example", i) < 0 ||
            asprintf(&senders[population + i], "outsider%04d@elsewhere.example", i) < 0)
            return 2;
    }
    recipients = calloc((size_t)rcpts, sizeof *recipients);
    recipients[0] = strdup(list_address);
    for (int r = 1; r < rcpts; r++)
        if (asprintf(&recipients[r], "user%d@example.org", r) < 0) return 2;
    /* OPTNEG: version 6, actions 0x1FF, steps 0x1FFFFF; then A, A, Q */
    unsigned char neg[] = {0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xFF, 0, 0x1F, 0xFF, 0xFF};
    memcpy(optneg, neg, sizeof optneg);
    unsigned char t[] = {0, 0, 0, 1, 'A', 0, 0, 0, 1, 'A', 0, 0, 0, 1, 'Q'};
    memcpy(tail, t, sizeof tail);
    if (policy) build_policy_requests();

    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ep = epoll_create1(0);

    double start = now();
    w0 = start + warmup;
    w1 = w0 + seconds;
    double hard_stop = w1 + 10.0;
    struct rusage ru0 = {0}, ru1 = {0};
    int marked = 0, ended = 0;
    struct epoll_event evs[512];
    for (;;) {
        double t = now();
        if (!marked && t >= w0) { getrusage(RUSAGE_SELF, &ru0); marked = 1; }
        if (marked && !ended && t >= w1) { getrusage(RUSAGE_SELF, &ru1); ended = 1; }
        if (t < w1) {
            unsigned long long before = errors;
            while (live < conc) {
                start_session();
                if (errors > before) { usleep(10000); break; }
            }
        } else if (!live || t >= hard_stop) {
            break;
        }
        int k = epoll_wait(ep, evs, 512, 20);
        for (int i = 0; i < k; i++) on_event(evs[i].data.fd, evs[i].events);
    }
    if (!ended) getrusage(RUSAGE_SELF, &ru1);
    for (int fd = 0; fd < MAXFD; fd++)
        if (sessions[fd]) {
            if (policy) end(sessions[fd], 0);  /* persistent: closed at the end */
            else fail(sessions[fd], "unfinished at the end of the run");
        }

    double user = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec)
                  + (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) * 1e-6;
    double sys = (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec)
                 + (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1e-6;
    if (lat_path) {
        FILE *f = fopen(lat_path, "wb");
        if (!f || fwrite(lat, sizeof *lat, nlat, f) != nlat || fclose(f)) {
            perror(lat_path);
            return 2;
        }
    }
    printf("sessions=%llu rcpts=%llu errors=%llu wrong=%llu window=%.3f user=%.4f sys=%.4f "
           "first_error=%s\n", done, rcpts_done, errors, wrong, seconds, user, sys,
           first_error[0] ? first_error : "-");
    return errors || wrong ? 1 : 0;
}
