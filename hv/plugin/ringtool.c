/* pv-ringtool: the C ring producer (ring.c) and event encoder (event.c) driven from the command
 * line, so that tests/test_plugin_c.py can check them against the Python reference
 * (pmem/ring.py, provisor/events.py) on real files with real libpmem.
 *
 *   pv-ringtool RING POLICY N SIZE [--note TEXT] [--from K] [--vary]
 *       Open RING as its producer with POLICY (block, drop, fail); with --note, append one
 *       NOTE record holding TEXT first; then append N EVENT records (type 16), record i for
 *       i = K .. K+N-1 (K defaults to 1). Print one line per record, as soon as the append
 *       returned (so: only once it is persistent): its sequence number, or "drop" when the drop
 *       policy dropped it. Exit 0. On an error (open refused, the fail policy finding the ring
 *       full) print one line "pv-ringtool: <reason>" to stderr, after the lines of the records
 *       already appended, and exit 2.
 *
 *       The payload of record i (what tests recompute): its length is SIZE, or with --vary
 *       (i * 7919) % (SIZE + 1) (varying sizes, so wraps fall everywhere); its first
 *       min(8, length) bytes are i as a little-endian u64, byte j >= 8 is (i + 7 * j) & 0xff.
 *
 *   pv-ringtool RING hold SECONDS
 *       Open RING as producer, print "held", sleep, close: a producer-lock holder for tests.
 *
 *   pv-ringtool --event [KEY=VALUE ...]
 *       Encode one event with event.c and print its payload in lowercase hex. Without
 *       arguments, read events from stdin instead: one KEY=VALUE per line, a line "end" after
 *       each event (one hex line is printed and flushed per event: a test keeps one process as
 *       a coprocess). Keys: phase vcpu nr flags entry_seq ts_ns tgid pid ppid uid start_time
 *       cwd_mnt a0..a5 (decimal or 0x hex), ret (signed; present = the event has a return
 *       value), fd (signed 32-bit, repeatable); comm cwd path argv envp (the guest bytes in hex,
 *       path/argv/envp repeatable), file=DEV:INO:HEX (repeatable), cred=U:G:SU:SG:EU:EG:FU:FG,
 *       sock=FILE:FAMILY:TYPE:SK:PEER:LOCALHEX:REMOTEHEX (repeatable; FILE the index of a file
 *       field, as the plugin gives it), addr=FAMILY:HEX (the ADDR field; a second one is
 *       ignored, as the plugin does). Fields are put in the order
 *       given; event.c groups them by tag as events.encode does. flags is OR'ed in (so a
 *       TRUNCATED that event.c set stays, whatever the order).
 *
 *   pv-ringtool --inet
 *       Read lines "FAMILY ADDRHEX PORT" (family 2: 4 bytes, 10: 16 bytes) and print each
 *       address as linux.c's pv_inet_text writes it (an empty line for "").
 *
 *   pv-ringtool --sockaddr
 *       Read lines "VA SIZE MEMHEX": guest memory holds MEMHEX at 0x10000 (any other byte is
 *       unreadable); print what linux.c's pv_user_sockaddr gives for the argument pointer VA
 *       and size SIZE: "FAMILY TEXTHEX", "-" (nothing to record) or "!" (unreadable). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "event.h"
#include "linux.h"
#include "ring.h"

/* the one error line (after the seqs already printed); the exit status 2 */
__attribute__((format(printf, 1, 2))) static int die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "pv-ringtool: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        return -1;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    if (!*s)
        return -1;
    long long v = strtoll(s, &end, 0);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
           c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* hex text -> bytes in a malloc'd buffer (n bytes); -1 on bad hex */
static int unhex(const char *s, uint8_t **out, size_t *n)
{
    size_t h = strlen(s);
    if (h % 2)
        return -1;
    uint8_t *b = malloc(h / 2 + 1);
    if (!b)
        return -1;
    for (size_t k = 0; k < h / 2; k++) {
        int a = hexval(s[2 * k]), c = hexval(s[2 * k + 1]);
        if (a < 0 || c < 0) {
            free(b);
            return -1;
        }
        b[k] = (uint8_t)(a << 4 | c);
    }
    *out = b;
    *n = h / 2;
    return 0;
}

/* ------------------------------------------------------------------------- ring appends */

static void make_payload(uint64_t i, uint8_t *p, uint32_t len)
{
    for (uint32_t j = 0; j < len; j++)
        p[j] = j < 8 ? (uint8_t)(i >> (8 * j)) : (uint8_t)(i + 7 * j);
}

static int policy_of(const char *s)
{
    return !strcmp(s, "block") ? PV_POLICY_BLOCK : !strcmp(s, "drop") ? PV_POLICY_DROP :
           !strcmp(s, "fail") ? PV_POLICY_FAIL : -1;
}

static int hold(const char *path, const char *secs)
{
    uint64_t s;
    if (parse_u64(secs, &s))
        return die("bad SECONDS %s", secs);
    struct pv_ring r;
    char err[512];
    if (pv_ring_open(&r, path, PV_POLICY_BLOCK, err, sizeof err))
        return die("%s", err);
    printf("held\n");
    fflush(stdout);
    struct timespec t = {(time_t)s, 0};
    while (nanosleep(&t, &t) && errno == EINTR)
        ;
    pv_ring_close(&r);
    return 0;
}

static int append(int argc, char **argv)
{
    const char *path = argv[1], *note = NULL;
    int policy = policy_of(argv[2]), vary = 0;
    uint64_t n, size, from = 1;
    if (policy < 0)
        return die("unknown policy %s (block, drop, fail)", argv[2]);
    if (parse_u64(argv[3], &n) || parse_u64(argv[4], &size) || size > 16u * 1024 * 1024)
        return die("bad N or SIZE (%s %s)", argv[3], argv[4]);
    for (int a = 5; a < argc; a++) {
        if (!strcmp(argv[a], "--note") && a + 1 < argc)
            note = argv[++a];
        else if (!strcmp(argv[a], "--from") && a + 1 < argc) {
            if (parse_u64(argv[++a], &from))
                return die("bad --from %s", argv[a]);
        } else if (!strcmp(argv[a], "--vary"))
            vary = 1;
        else
            return die("unknown argument %s", argv[a]);
    }
    struct pv_ring r;
    char err[512];
    if (pv_ring_open(&r, path, policy, err, sizeof err))
        return die("%s", err);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return die("out of memory");
    int rc = 0;
    if (note) {
        int64_t s = pv_ring_append(&r, PV_REC_NOTE, note, (uint32_t)strlen(note), err, sizeof err);
        if (s < 0) {
            rc = die("%s", err);
            goto out;
        }
        s ? printf("%lld\n", (long long)s) : printf("drop\n");
    }
    for (uint64_t i = from; i < from + n; i++) {
        uint32_t len = (uint32_t)(vary ? (i * 7919) % (size + 1) : size);
        make_payload(i, buf, len);
        int64_t s = pv_ring_append(&r, PV_REC_EVENT, buf, len, err, sizeof err);
        if (s < 0) {
            rc = die("%s", err);
            goto out;
        }
        s ? printf("%lld\n", (long long)s) : printf("drop\n");
    }
out:
    fflush(stdout);
    free(buf);
    pv_ring_close(&r);
    return rc;
}

/* ------------------------------------------------------------------------ event encoding */

/* one KEY=VALUE into e; 0, or -1 with the reason in err */
static int event_field(struct pv_event *e, char *tok, char *err, size_t errlen)
{
    char *eq = strchr(tok, '=');
    if (!eq) {
        snprintf(err, errlen, "want KEY=VALUE, not %.40s", tok);
        return -1;
    }
    *eq = 0;
    const char *k = tok, *v = eq + 1;
    uint64_t u = 0;
    int64_t s = 0;
    struct { const char *key; void *field; int width; } nums[] = {
        {"phase", &e->phase, 1}, {"vcpu", &e->vcpu, 2}, {"nr", &e->nr, 2},
        {"flags", &e->flags, 2}, {"entry_seq", &e->entry_seq, 8}, {"ts_ns", &e->ts_ns, 8},
        {"tgid", &e->tgid, 4}, {"pid", &e->pid, 4}, {"ppid", &e->ppid, 4}, {"uid", &e->uid, 4},
        {"start_time", &e->start_time, 8}, {"cwd_mnt", &e->cwd_mnt, 8},
        {"a0", &e->args[0], 8}, {"a1", &e->args[1], 8}, {"a2", &e->args[2], 8},
        {"a3", &e->args[3], 8}, {"a4", &e->args[4], 8}, {"a5", &e->args[5], 8},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (strcmp(k, nums[i].key))
            continue;
        if (parse_u64(v, &u) || (nums[i].width < 8 && u >> (8 * nums[i].width))) {
            snprintf(err, errlen, "bad value for %s", k);
            return -1;
        }
        if (nums[i].field == &e->flags) { /* OR: pv_event_put may have set TRUNCATED */
            e->flags |= (uint16_t)u;
            return 0;
        }
        switch (nums[i].width) {
        case 1: *(uint8_t *)nums[i].field = (uint8_t)u; break;
        case 2: *(uint16_t *)nums[i].field = (uint16_t)u; break;
        case 4: *(uint32_t *)nums[i].field = (uint32_t)u; break;
        default: *(uint64_t *)nums[i].field = u;
        }
        return 0;
    }
    if (!strcmp(k, "ret")) {
        if (parse_i64(v, &s)) {
            snprintf(err, errlen, "bad value for ret");
            return -1;
        }
        e->has_ret = 1, e->ret = s;
        return 0;
    }
    if (!strcmp(k, "cred")) {
        uint32_t c[8];
        char *p = (char *)v;
        for (int i = 0; i < 8; i++) {
            char *colon = strchr(p, ':');
            if ((colon == NULL) != (i == 7)) {
                snprintf(err, errlen, "cred wants 8 values");
                return -1;
            }
            if (colon)
                *colon = 0;
            if (parse_u64(p, &u) || u > 0xFFFFFFFFu) {
                snprintf(err, errlen, "bad cred value");
                return -1;
            }
            c[i] = (uint32_t)u;
            p = colon ? colon + 1 : p;
        }
        pv_event_put_cred(e, c);
        return 0;
    }
    if (!strcmp(k, "sock")) { /* FILE:FAMILY:TYPE:SK:PEER:LOCALHEX:REMOTEHEX */
        char *part[7], *p = (char *)v;
        uint64_t num[5];
        for (int i = 0; i < 7; i++) {
            part[i] = p;
            char *colon = strchr(p, ':');
            if ((colon == NULL) != (i == 6)) {
                snprintf(err, errlen, "sock wants 7 parts");
                return -1;
            }
            if (colon)
                *colon = 0, p = colon + 1;
        }
        for (int i = 0; i < 5; i++)
            if (parse_u64(part[i], &num[i]) || (i < 3 && num[i] > 0xFFFF)) {
                snprintf(err, errlen, "bad sock value");
                return -1;
            }
        uint8_t *l, *r;
        size_t nl, nr;
        if (unhex(part[5], &l, &nl))
            return snprintf(err, errlen, "bad sock hex"), -1;
        if (unhex(part[6], &r, &nr)) {
            free(l);
            return snprintf(err, errlen, "bad sock hex"), -1;
        }
        pv_event_put_sock(e, (uint16_t)num[0], (uint16_t)num[1], (uint16_t)num[2], num[3],
                          num[4], l, nl, r, nr);
        free(l), free(r);
        return 0;
    }
    if (!strcmp(k, "addr")) { /* FAMILY:HEX */
        char *colon = strchr(v, ':');
        uint8_t *b;
        size_t n;
        if (!colon)
            return snprintf(err, errlen, "addr wants FAMILY:HEX"), -1;
        *colon = 0;
        if (parse_u64(v, &u) || u > 0xFFFF || unhex(colon + 1, &b, &n))
            return snprintf(err, errlen, "bad addr value"), -1;
        pv_event_put_addr(e, (uint16_t)u, b, n);
        free(b);
        return 0;
    }
    if (!strcmp(k, "fd")) {
        if (parse_i64(v, &s) || s < INT32_MIN || s > INT32_MAX) {
            snprintf(err, errlen, "bad value for fd");
            return -1;
        }
        pv_event_put_fd(e, (int32_t)s);
        return 0;
    }
    static const struct { const char *key; int tag; } strs[] = {
        {"comm", PV_T_COMM}, {"cwd", PV_T_CWD}, {"path", PV_T_PATH}, {"argv", PV_T_ARGV},
        {"envp", PV_T_ENVP}, {"file", PV_T_FILE},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (strcmp(k, strs[i].key))
            continue;
        uint64_t dev = 0, ino = 0;
        if (strs[i].tag == PV_T_FILE) { /* DEV:INO:HEX */
            char *c1 = strchr(v, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (!c2) {
                snprintf(err, errlen, "file wants DEV:INO:HEX");
                return -1;
            }
            *c1 = 0, *c2 = 0;
            if (parse_u64(v, &dev) || parse_u64(c1 + 1, &ino)) {
                snprintf(err, errlen, "bad file identity");
                return -1;
            }
            v = c2 + 1;
        }
        uint8_t *b;
        size_t n;
        if (unhex(v, &b, &n)) {
            snprintf(err, errlen, "bad hex for %s", k);
            return -1;
        }
        if (strs[i].tag == PV_T_FILE)
            pv_event_put_file(e, dev, ino, b, n);
        else
            pv_event_put(e, strs[i].tag, b, n);
        free(b);
        return 0;
    }
    snprintf(err, errlen, "unknown key %.40s", k);
    return -1;
}

static void print_event(struct pv_event *e, uint8_t *out)
{
    size_t n = pv_event_encode(e, out, pv_event_max());
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        putchar(hx[out[i] >> 4]);
        putchar(hx[out[i] & 15]);
    }
    putchar('\n');
    fflush(stdout);
}

static int event_mode(int argc, char **argv)
{
    struct pv_event e;
    char err[200];
    uint8_t *out = malloc(pv_event_max());
    if (!out || pv_event_init(&e))
        return die("out of memory");
    int rc = 0;
    if (argc > 2) {
        for (int a = 2; a < argc; a++)
            if (event_field(&e, argv[a], err, sizeof err))
                return die("%s", err);
        print_event(&e, out);
    } else {
        char *line = NULL;
        size_t cap = 0;
        ssize_t got;
        while ((got = getline(&line, &cap, stdin)) >= 0) {
            while (got && (line[got - 1] == '\n' || line[got - 1] == '\r'))
                line[--got] = 0;
            if (!got)
                continue;
            if (!strcmp(line, "end")) {
                print_event(&e, out);
                pv_event_reset(&e);
                continue;
            }
            if (event_field(&e, line, err, sizeof err)) {
                rc = die("%s", err);
                break;
            }
        }
        free(line);
    }
    pv_event_free(&e);
    free(out);
    return rc;
}

static int inet_mode(void)
{
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) >= 0) {
        char hex[64];
        unsigned fam, port;
        uint8_t *b;
        size_t n;
        if (sscanf(line, "%u %63s %u", &fam, hex, &port) != 3 || unhex(hex, &b, &n) ||
            n != (fam == 2 ? 4u : 16u))
            return die("bad --inet line");
        uint8_t out[64];
        uint32_t len = pv_inet_text((uint16_t)fam, b, (uint16_t)port, out);
        printf("%.*s\n", (int)len, (char *)out);
        free(b);
    }
    free(line);
    return 0;
}

#define SA_BASE 0x10000u
struct sa_mem {
    uint8_t *b;
    size_t n;
};

static bool sa_read(void *ctx, uint64_t va, void *buf, size_t n)
{
    struct sa_mem *m = ctx;
    if (va < SA_BASE || va - SA_BASE > m->n || n > m->n - (va - SA_BASE))
        return false;
    memcpy(buf, m->b + (va - SA_BASE), n);
    return true;
}

static int sockaddr_mode(void)
{
    static struct pv_offsets o;
    static struct pv_linux lx;
    static const volatile uint64_t gen;
    struct sa_mem m = {0};
    pv_linux_init(&lx, &o, &gen);
    lx.mem.read = sa_read, lx.mem.ctx = &m;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) >= 0) {
        char *hex = malloc(strlen(line) + 1);
        unsigned long long va, size;
        if (!hex)
            return die("out of memory");
        hex[0] = 0;
        if (sscanf(line, "%llu %llu %s", &va, &size, hex) < 2 || unhex(hex, &m.b, &m.n))
            return die("bad --sockaddr line");
        free(hex);
        uint8_t out[PV_MAX_ADDR + 64];
        uint16_t family = 0;
        int r = pv_user_sockaddr(&lx, va, size, &family, out);
        if (r <= 0) {
            puts(r < 0 ? "!" : "-");
        } else {
            printf("%u ", family);
            for (int i = 0; i < r - 1; i++)
                printf("%02x", out[i]);
            putchar('\n');
        }
        free(m.b);
        m.b = NULL;
    }
    free(line);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line per record, out as soon as it is acknowledged */
    if (argc >= 2 && !strcmp(argv[1], "--event"))
        return event_mode(argc, argv);
    if (argc == 2 && !strcmp(argv[1], "--inet"))
        return inet_mode();
    if (argc == 2 && !strcmp(argv[1], "--sockaddr"))
        return sockaddr_mode();
    if (argc == 4 && !strcmp(argv[2], "hold"))
        return hold(argv[1], argv[3]);
    if (argc >= 5 && argv[1][0] != '-')
        return append(argc, argv);
    return die("usage: pv-ringtool RING POLICY N SIZE [--note TEXT] [--from K] [--vary] | "
               "RING hold SECONDS | --event [KEY=VALUE ...] | --inet | --sockaddr");
}
