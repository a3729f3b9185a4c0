/* The ring producer (docs/FORMAT.md); see ring.h. Mirrors pmem/ring.py's Producer rule by rule,
 * so a ring this writes reads back through pmem/layout.py unchanged. */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <libpmem.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"

#define HEADER_LEN 128u
#define HEADER_SLOT 4096u
#define PRODUCER_OFF 8192u
#define PRODUCER_SLOT 64u
#define MIN_DATA (64u * 1024u)
#define MAX_PAYLOAD (16u * 1024u * 1024u)
#define ALIGN 32u

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static uint64_t padded(uint64_t n) { return (PV_REC_HDR + n + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

static void fail(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static void persist(struct pv_ring *r, uint64_t off, uint64_t n)
{
    if (!n)
        return;
    if (r->is_pmem)
        pmem_persist(r->base + off, n);
    else
        pmem_msync(r->base + off, n);
    r->persists++;
}

/* One header copy: 1 valid (fills the out values), 0 invalid, 2 a newer format. */
static int header_copy(const uint8_t *h, uint64_t *gen, uint64_t *dsize, uint64_t *cseq,
                       uint64_t *coff)
{
    if (memcmp(h, "PROVRING", 8) != 0 || rd32(h + 12) != HEADER_LEN)
        return 0;
    if (rd32(h + 124) != pv_crc32c(0, h, 124))
        return 0;
    if (rd32(h + 8) > 1)
        return 2;
    *dsize = rd64(h + 48);
    *gen = rd64(h + 56);
    *cseq = rd64(h + 64);
    *coff = rd64(h + 72);
    if (rd32(h + 36) != ALIGN || rd64(h + 40) != PV_DATA_OFFSET || *dsize % 4096 ||
        *dsize < MIN_DATA || *coff >= *dsize || *coff % ALIGN || *cseq >= PV_SEQ_LIMIT)
        return 0;
    return 1;
}

/* The current header copy: its slot (0, 1), or -1 (none valid), -2 (newer format). */
static int current_header(const struct pv_ring *r, uint64_t *gen, uint64_t *dsize,
                          uint64_t *cseq, uint64_t *coff)
{
    int best = -1, newer = 0;
    for (int i = 0; i < 2; i++) {
        uint64_t g, d, s, o;
        int v = header_copy(r->base + i * HEADER_SLOT, &g, &d, &s, &o);
        if (v == 2)
            newer = 1;
        if (v == 1 && (best < 0 || g > *gen)) {
            best = i;
            *gen = g, *dsize = d, *cseq = s, *coff = o;
        }
    }
    return best >= 0 ? best : newer ? -2 : -1;
}

uint64_t pv_ring_free(struct pv_ring *r)
{
    if (r->next_seq - 1 == r->head_seq)
        return r->size;
    uint64_t used = (r->tail + r->size - r->head_off) % r->size;
    return used ? r->size - used : 0;
}

static void refresh_head(struct pv_ring *r)
{
    uint64_t g = 0, d, s, o;
    int slot = current_header(r, &g, &d, &s, &o);
    if (slot < 0 || d != r->size)
        return; /* a consumer never writes an invalid copy: keep what we had */
    if (g != r->hdr_gen) {
        /* the consumer may not have flushed it: durable before its space is reused */
        persist(r, (uint64_t)slot * HEADER_SLOT, HEADER_LEN);
        r->hdr_gen = g;
    }
    r->head_seq = s, r->head_off = o;
}

static uint64_t need(const struct pv_ring *r, uint64_t nbytes)
{
    uint64_t room = r->size - r->tail;
    return nbytes <= room ? nbytes : room + nbytes;
}

static int fits(struct pv_ring *r, uint64_t nbytes)
{
    if (need(r, nbytes) <= pv_ring_free(r))
        return 1;
    refresh_head(r);
    return need(r, nbytes) <= pv_ring_free(r);
}

/* The ring-full policy: 1 room now, 0 drop, -1 fail. */
static int wait_for(struct pv_ring *r, uint64_t nbytes, char *err, size_t errlen)
{
    if (nbytes > r->size / 2) {
        fail(err, errlen, "record of %llu bytes exceeds half the ring (%llu)",
             (unsigned long long)nbytes, (unsigned long long)r->size);
        return -1;
    }
    if (fits(r, nbytes))
        return 1;
    if (r->policy == PV_POLICY_FAIL) {
        fail(err, errlen, "ring full at sequence %llu (policy: fail)",
             (unsigned long long)r->next_seq);
        return -1;
    }
    if (r->policy == PV_POLICY_DROP)
        return 0;
    struct timespec t0, t1, d = {0, 50000};
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!fits(r, nbytes)) {
        nanosleep(&d, NULL);
        if (d.tv_nsec < 10000000)
            d.tv_nsec *= 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    r->blocked_ns += (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull + t1.tv_nsec - t0.tv_nsec;
    return 1;
}

static void void_orphan(struct pv_ring *r, uint64_t off, uint64_t seq)
{
    uint8_t *p = r->base + PV_DATA_OFFSET + off;
    if (rd64(p) == seq) {
        wr64(p, 0);
        persist(r, PV_DATA_OFFSET + off, 8);
    }
}

static void write_rec(struct pv_ring *r, uint64_t off, uint64_t seq, uint16_t type,
                      const void *payload, uint32_t len)
{
    uint8_t *p = r->base + PV_DATA_OFFSET + off;
    uint8_t head[28];
    wr64(head, seq);
    wr32(head + 8, len);
    wr16(head + 12, type);
    wr16(head + 14, 0);
    memset(head + 16, 0, 12);
    uint32_t crc = pv_crc32c(r->uuid_crc, head, 28);
    if (payload)
        crc = pv_crc32c(crc, payload, len);
    else { /* a PAD: zeros */
        static const uint8_t z[4096];
        for (uint32_t done = 0; done < len;) {
            uint32_t n = len - done < sizeof z ? len - done : sizeof z;
            crc = pv_crc32c(crc, z, n);
            done += n;
        }
    }
    memcpy(p + 8, head + 8, 20);
    wr32(p + 28, crc);
    if (payload)
        memcpy(p + 32, payload, len);
    else
        memset(p + 32, 0, len);
    memset(p + 32 + len, 0, padded(len) - PV_REC_HDR - len);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)p, seq, __ATOMIC_RELEASE); /* rule 2: the sequence last */
}

static uint64_t zero_trailer(struct pv_ring *r)
{
    if (r->next_seq - 1 != r->head_seq && r->tail == r->head_off)
        return 0; /* exactly full: the next slot is the unreleased head */
    if (pv_ring_free(r) < PV_REC_HDR)
        return 0;
    memset(r->base + PV_DATA_OFFSET + r->tail, 0, PV_REC_HDR);
    return PV_REC_HDR;
}

static void commit(struct pv_ring *r, uint64_t start, uint64_t total)
{
    uint64_t span = total + zero_trailer(r);
    uint64_t first = span < r->size - start ? span : r->size - start;
    persist(r, PV_DATA_OFFSET + start, first);
    if (span > first)
        persist(r, PV_DATA_OFFSET, span - first);
}

static uint64_t place(struct pv_ring *r, uint16_t type, const void *payload, uint32_t len,
                      uint64_t *start)
{
    uint64_t seq = r->next_seq, nbytes = padded(len);
    *start = r->tail;
    if (r->tail + nbytes > r->size) {
        void_orphan(r, r->tail, seq);
        write_rec(r, r->tail, seq, PV_REC_PAD, NULL, (uint32_t)(r->size - r->tail - PV_REC_HDR));
        r->tail = 0;
    }
    void_orphan(r, r->tail, seq);
    void_orphan(r, (r->tail + nbytes) % r->size, seq + 1);
    write_rec(r, r->tail, seq, type, payload, len);
    r->tail = (r->tail + nbytes) % r->size;
    r->next_seq = seq + 1;
    return seq;
}

static void save_state(struct pv_ring *r, uint64_t gen, uint64_t total, uint64_t reported)
{
    uint8_t *p = r->base + PRODUCER_OFF + (gen % 2) * PRODUCER_SLOT;
    uint8_t s[PRODUCER_SLOT] = {0};
    memcpy(s, "PROD", 4);
    wr64(s + 8, gen);
    wr64(s + 16, total);
    wr64(s + 24, reported);
    wr32(s + 60, pv_crc32c(0, s, 60));
    memcpy(p, s, PRODUCER_SLOT);
    persist(r, PRODUCER_OFF + (gen % 2) * PRODUCER_SLOT, PRODUCER_SLOT);
    r->st_gen = gen, r->lost_total = total, r->lost_reported = reported;
}

static int report_loss(struct pv_ring *r, char *err, size_t errlen)
{
    uint64_t pending = r->lost_total - r->lost_reported;
    if (!pending)
        return 0;
    uint8_t payload[16];
    wr64(payload, pending);
    wr64(payload + 8, r->lost_total);
    uint64_t nbytes = padded(16);
    int room = wait_for(r, nbytes, err, errlen);
    if (room <= 0)
        return room; /* drop: report later */
    uint64_t n = need(r, nbytes), start;
    place(r, PV_REC_LOSS, payload, 16, &start);
    commit(r, start, n);
    save_state(r, r->st_gen + 1, r->lost_total, r->lost_total);
    return 0;
}

int64_t pv_ring_append(struct pv_ring *r, uint16_t type, const void *payload, uint32_t len,
                       char *err, size_t errlen)
{
    int loss = r->lost_total != r->lost_reported;
    if (r->next_seq + 1 + loss > PV_SEQ_LIMIT) {
        fail(err, errlen, "sequence numbers exhausted: the ring is at %llu, and sequence "
             "numbers must stay below 2^63", (unsigned long long)r->next_seq);
        return -1;
    }
    if (len > MAX_PAYLOAD) {
        fail(err, errlen, "record of %u bytes exceeds the format's limit", len);
        return -1;
    }
    if (loss && report_loss(r, err, errlen) < 0)
        return -1;
    uint64_t nbytes = padded(len);
    int room = wait_for(r, nbytes, err, errlen);
    if (room < 0)
        return -1;
    if (!room || r->lost_total != r->lost_reported) {
        save_state(r, r->st_gen + 1, r->lost_total + 1, r->lost_reported);
        r->dropped++;
        return 0;
    }
    uint64_t n = need(r, nbytes), start;
    uint64_t seq = place(r, type, payload, len, &start);
    commit(r, start, n);
    r->appended++;
    return (int64_t)seq;
}

/* The end of the valid chain from the checkpoint (FORMAT.md rule 6); 1 if it ended clean. */
static int find_tail(struct pv_ring *r, uint64_t *reported)
{
    uint64_t expect = r->head_seq + 1, off = r->head_off, consumed = 0;
    const uint8_t *data = r->base + PV_DATA_OFFSET;
    int clean = 0;
    *reported = 0;
    for (;;) {
        if (expect >= PV_SEQ_LIMIT)
            break;
        const uint8_t *p = data + off;
        uint64_t seq = rd64(p);
        uint32_t len = rd32(p + 8);
        uint16_t type = rd16(p + 12);
        if (seq != expect) {
            static const uint8_t zero[PV_REC_HDR];
            clean = seq == 0 && memcmp(p, zero, PV_REC_HDR) == 0;
            break;
        }
        if (len > r->size - off - PV_REC_HDR || len > MAX_PAYLOAD)
            break;
        uint32_t crc = pv_crc32c(pv_crc32c(r->uuid_crc, p, 28), p + PV_REC_HDR, len);
        if (crc != rd32(p + 28))
            break;
        if (type == PV_REC_PAD && off + padded(len) != r->size)
            break;
        uint64_t step = type == PV_REC_PAD ? r->size - off : padded(len);
        consumed += step;
        if (consumed > r->size)
            break;
        if (type == PV_REC_LOSS && len >= 16)
            *reported = rd64(p + PV_REC_HDR + 8);
        off = (off + step) % r->size;
        if (type != PV_REC_PAD)
            expect++;
    }
    r->tail = off;
    r->next_seq = expect;
    return clean;
}

int pv_ring_open(struct pv_ring *r, const char *path, int policy, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->policy = policy;
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fail(err, errlen, "%s: %s", path, errno == ELOOP ? "is a symlink (refused)" :
             errno == ENOENT ? "no such ring image" : strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISCHR(st.st_mode))) {
        fail(err, errlen, "%s: not a regular file or devdax device", path);
        close(fd);
        return -1;
    }
    if (S_ISREG(st.st_mode) && st.st_uid != geteuid()) {
        fail(err, errlen, "%s: owned by uid %u, not by us (refused)", path, (unsigned)st.st_uid);
        close(fd);
        return -1;
    }
    struct flock lk = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &lk) != 0) {
        if (errno == EAGAIN || errno == EACCES)
            fail(err, errlen, "%s: ring producer already running; one ring producer at a time",
                 path);
        else
            fail(err, errlen, "%s: cannot lock: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    char name[64];
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    size_t mapped = 0;
    int is_pmem = 0;
    void *base = pmem_map_file(S_ISCHR(st.st_mode) ? path : name, 0, 0, 0, &mapped, &is_pmem);
    if (!base) {
        fail(err, errlen, "%s: %s", path, pmem_errormsg());
        close(fd);
        return -1;
    }
    r->fd = fd, r->base = base, r->map_len = mapped, r->is_pmem = is_pmem;
    if (mapped < PV_DATA_OFFSET + MIN_DATA) {
        fail(err, errlen, "%s: truncated ring image (%zu bytes)", path, mapped);
        pv_ring_close(r);
        return -1;
    }
    uint64_t gen = 0, dsize = 0, cseq = 0, coff = 0;
    int slot = current_header(r, &gen, &dsize, &cseq, &coff);
    if (slot < 0) {
        fail(err, errlen, "%s: %s", path, slot == -2 ? "newer ring format" :
             "not a provisor ring, or both header copies are corrupt");
        pv_ring_close(r);
        return -1;
    }
    if (PV_DATA_OFFSET + dsize > mapped) {
        fail(err, errlen, "%s: truncated ring image", path);
        pv_ring_close(r);
        return -1;
    }
    memcpy(r->uuid, r->base + slot * HEADER_SLOT + 16, 16);
    r->uuid_crc = pv_crc32c(0, r->uuid, 16);
    r->size = dsize, r->hdr_gen = gen, r->head_seq = cseq, r->head_off = coff;
    /* producer state: the valid slot with the higher generation */
    for (int i = 0; i < 2; i++) {
        const uint8_t *s = r->base + PRODUCER_OFF + i * PRODUCER_SLOT;
        if (memcmp(s, "PROD", 4) || rd32(s + 60) != pv_crc32c(0, s, 60))
            continue;
        if (rd64(s + 8) >= r->st_gen)
            r->st_gen = rd64(s + 8), r->lost_total = rd64(s + 16), r->lost_reported = rd64(s + 24);
    }
    uint64_t reported;
    int clean = find_tail(r, &reported);
    if (r->lost_reported < reported && reported <= r->lost_total)
        r->lost_reported = reported; /* the LOSS record landed, its state update did not */
    if (!clean && pv_ring_free(r) >= PV_REC_HDR) {
        /* bytes a crashed producer left beyond the tail must never become reachable */
        memset(r->base + PV_DATA_OFFSET + r->tail, 0, PV_REC_HDR);
        persist(r, PV_DATA_OFFSET + r->tail, PV_REC_HDR);
    }
    return 0;
}

void pv_ring_close(struct pv_ring *r)
{
    if (r->base)
        pmem_unmap(r->base, r->map_len);
    r->base = NULL;
    if (r->fd >= 0)
        close(r->fd); /* drops the producer lock */
    r->fd = -1;
}
