/* The cheapest milter there can be, as a floor for benchmarks/milter_load.py's Postfix
 * figures: what Postfix's own milter client and the kernel cost per SMTP session when
 * the milter itself does (almost) nothing.
 *
 *   cc -O2 -o nullmilter benchmarks/nullmilter.c
 *   ./nullmilter PORT OPTNEG_REPLY_HEX [accept-rcpt]
 *
 * Listens on 127.0.0.1:PORT only. One epoll thread. It answers OPTNEG with the given
 * packet (the benchmark passes listgate's own, so the MTA sends exactly what it sends
 * listgate), RCPT and EOM with CONTINUE, and nothing else (MACRO, MAIL with NR_MAIL,
 * ABORT need no reply); QUIT closes. It never decides anything: every RCPT continues.
 * Like listgate, it sets TCP_NODELAY and ACKs at once (TCP_QUICKACK) a read that got no
 * reply. Packets above 64 KiB close the connection. Stops on SIGTERM.
 *
 * With "policy" as the second argument it is the cheapest Postfix policy server instead:
 * "action=DUNNO" to every request (a blank line ends one), the floor for the policy
 * front end's figures.
 *
 * With "accept-rcpt" it answers RCPT with ACCEPT instead: the MTA then skips this milter
 * for the rest of the transaction (later RCPTs unjudged, no end-of-message), which shows
 * what the stages after the first RCPT cost the MTA. Not something a list gate may do.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

struct conn {
    int fd;
    size_t len;
    unsigned char buf[BUF];
};

static volatile sig_atomic_t stop;
static unsigned char optneg[1024];
static size_t optneg_len;
static const unsigned char cont[5] = {0, 0, 0, 1, 'c'};
static const unsigned char accept_[5] = {0, 0, 0, 1, 'a'};
static const unsigned char *rcpt_reply = cont;
static int policy;

/* Policy mode: answer every whole request (ends with a blank line) with DUNNO. */
static int handle_policy(struct conn *c) {
    static const char dunno[] = "action=DUNNO\n\n";
    unsigned char out[2048];
    size_t olen = 0, off = 0;
    unsigned char *end;
    while ((end = memmem(c->buf + off, c->len - off, "\n\n", 2)) != NULL) {
        off = (size_t)(end - c->buf) + 2;
        if (olen + sizeof dunno - 1 > sizeof out) return -1;
        memcpy(out + olen, dunno, sizeof dunno - 1);
        olen += sizeof dunno - 1;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
    if (c->len == BUF) return -1;
    if (olen && write(c->fd, out, olen) != (ssize_t)olen) return -1;
    return 0;
}

static void on_term(int sig) { (void)sig; stop = 1; }

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Handle every whole packet in c->buf; 0 to keep the connection, -1 to close it. */
static int handle(struct conn *c) {
    unsigned char out[2048];
    size_t olen = 0, off = 0;
    int quit = 0;
    while (c->len - off >= 5) {
        uint32_t n = ((uint32_t)c->buf[off] << 24) | ((uint32_t)c->buf[off + 1] << 16)
                     | ((uint32_t)c->buf[off + 2] << 8) | c->buf[off + 3];
        if (n == 0 || n > BUF - 4) return -1;
        if (c->len - off < 4 + (size_t)n) break;
        unsigned char cmd = c->buf[off + 4];
        const unsigned char *reply = NULL;
        size_t rlen = 0;
        if (cmd == 'O') { reply = optneg; rlen = optneg_len; }
        else if (cmd == 'R') { reply = rcpt_reply; rlen = sizeof cont; }
        else if (cmd == 'E') { reply = cont; rlen = sizeof cont; }
        else if (cmd == 'Q') { quit = 1; }
        if (reply != NULL && olen + rlen <= sizeof out) {
            memcpy(out + olen, reply, rlen);
            olen += rlen;
        }
        off += 4 + n;
        if (quit) break;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
    if (olen) {
        if (write(c->fd, out, olen) != (ssize_t)olen) return -1;
    } else {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    return quit ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[3], "accept-rcpt") == 0) {
        rcpt_reply = accept_;
    } else if (argc == 3 && strcmp(argv[2], "policy") == 0) {
        policy = 1;
    } else if (argc != 3) {
        fprintf(stderr, "usage: %s PORT OPTNEG_REPLY_HEX [accept-rcpt] | PORT policy\n", argv[0]);
        return 2;
    }
    size_t hl = policy ? 0 : strlen(argv[2]);
    if (hl % 2 || hl / 2 > sizeof optneg) { fprintf(stderr, "bad hex\n"); return 2; }
    for (size_t i = 0; i < hl / 2; i++) {
        int hi = hexval(argv[2][2 * i]), lo = hexval(argv[2][2 * i + 1]);
        if (hi < 0 || lo < 0) { fprintf(stderr, "bad hex\n"); return 2; }
        optneg[i] = (unsigned char)(hi << 4 | lo);
    }
    optneg_len = hl / 2;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)atoi(argv[1]));
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sin, sizeof sin) || listen(ls, 1024)) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[256];
    while (!stop) {
        int k = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    if (nc == NULL) { close(fd); continue; }
                    nc->fd = fd;
                    nc->len = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                drop(ep, c);
                continue;
            }
            c->len += (size_t)r;
            if ((policy ? handle_policy(c) : handle(c)) < 0) drop(ep, c);
        }
    }
    return 0;
}
