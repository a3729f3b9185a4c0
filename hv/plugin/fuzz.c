/* pv-fuzz: the decoding layer (linux.c) and the offsets parser (offsets.c) fed hostile memory.
 * Built with ASan and UBSan (Makefile); tests/test_plugin_c.py runs it for several seeds.
 *
 *   pv-fuzz SEED ITERATIONS [OFFSETS]
 *       Build a fake guest memory from SEED (below), then for ITERATIONS rounds call
 *       pv_task_read, pv_cwd, pv_fd_file, pv_exe_file, pv_path_of, pv_current_task,
 *       pv_socket_of, pv_user_string and pv_user_sockaddr on chosen and random addresses,
 *       mutating the memory between rounds.
 *       The layout is OFFSETS (a file hv.profile.plugin_offsets wrote), else a built-in copy
 *       of a Debian 6.1 kernel's; a further quarter of the rounds uses random offsets. Then
 *       mutated copies of the offsets text go through pv_offsets_parse. Checked per call: at
 *       most MAX_READS memory reads (no unbounded loop), every read of a sane size, every
 *       returned length within its buffer (paths: PV_MAX_PATH; user strings: the limit;
 *       socket address arguments: PV_MAX_ADDR, read with one read of at most PV_MAX_SOCKADDR
 *       bytes and never more than their size; the
 *       buffers are malloc'd to exactly that size, so ASan sees one byte more), and a cached
 *       path equal to a fresh walk of the same memory (renames between rounds bump the path
 *       generation, as the plugin does), an fd outside 0..PV_MAX_FDS-1 never open and never
 *       read. Prints one summary line and exits 0; on a violated bound prints "pv-fuzz: seed S round R: <what>" and exits 1 (ASan/UBSan
 *       abort on their own findings; a round stuck for 20 s exits 3).
 *
 *   pv-fuzz --check-offsets FILE
 *       Parse FILE with pv_offsets_load: print "ok" then every parsed value as "key value"
 *       (the file's own format), exit 0; or one line "pv-fuzz: <reason>" and exit 2.
 *
 * The fake memory: a sparse map of 4 KiB pages (a kernel region with some pages absent, the
 * last kernel page 0xfffffffffffff000 so that reads can wrap, user pages including the last
 * one below 0x800000000000). Pages start as random bytes; then kernel objects are laid out
 * with the layout's offsets (tasks, creds, fs_structs, files/fdtables/fd arrays, struct files,
 * inodes, super blocks, mounts, dentries with names, struct sockets, socks (inet, inet6,
 * unix, other families) with unix addresses of plausible and lying lengths, unix peers) and
 * linked mostly plausibly (a dentry
 * tree under mount roots, mounts under a top mount), with planted trouble: d_parent cycles,
 * qstr lengths of 255, 256 and 0xffffffff, unterminated comm and user strings, max_fds up to
 * 0xffffffff, pointers into absent pages, to the last page, or to the object itself. How
 * much trouble varies per world: nearly clean worlds give deep paths (up to PV_MAX_DEPTH
 * names of PV_MAX_NAME bytes), dirty ones exercise every refusal. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "linux.h"
#include "offsets.h"

#define PAGE 4096ull
#define MAX_READS 20000u     /* per call; the real worst case is a few hundred */
#define MAX_READ_LEN 0x20000u /* the largest single read: a task blob under a 64 KiB offset */
#define KBASE 0xffff888000000000ull
#define KPAGES 256
#define UBASE 0x00007f0000000000ull
#define UPAGES 32
#define KTOP 0xfffffffffffff000ull
#define UTOP 0x00007ffffffff000ull
#define NSLOTS 1024 /* hash slots for pages (power of two) */

/* ---------------------------------------------------------------------------- randomness */

static uint64_t rs;
static uint64_t rnd(void)
{
    uint64_t z = (rs += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }
static int chance(unsigned pct) { return below(100) < pct; }

/* ------------------------------------------------------------------------ sparse memory */

struct page {
    uint64_t pn;
    uint8_t *data;
};
static struct page pages[NSLOTS];
static uint64_t seam_reads, call_reads, bad_read_len, call_max_len;

static uint8_t *page_of(uint64_t va)
{
    uint64_t pn = va / PAGE;
    for (uint64_t h = (pn * 0x9E3779B97F4A7C15ull) >> 54, k = 0; k < NSLOTS; k++) {
        struct page *p = &pages[(h + k) % NSLOTS];
        if (!p->data)
            return NULL;
        if (p->pn == pn)
            return p->data;
    }
    return NULL;
}

static void map_page(uint64_t va)
{
    uint64_t pn = va / PAGE;
    for (uint64_t h = (pn * 0x9E3779B97F4A7C15ull) >> 54, k = 0; k < NSLOTS; k++) {
        struct page *p = &pages[(h + k) % NSLOTS];
        if (p->data && p->pn != pn)
            continue;
        if (!p->data) {
            p->pn = pn;
            p->data = malloc(PAGE);
            if (!p->data)
                abort();
        }
        for (uint64_t i = 0; i < PAGE; i += 8) {
            uint64_t v = rnd();
            memcpy(p->data + i, &v, 8);
        }
        return;
    }
    abort();
}

static void unmap_all(void)
{
    for (int i = 0; i < NSLOTS; i++) {
        free(pages[i].data);
        pages[i].data = NULL;
    }
}

/* the pv_mem seam: every byte must be on present pages (a read never wraps: linux.c checks) */
static bool seam_read(void *ctx, uint64_t va, void *buf, size_t n)
{
    (void)ctx;
    seam_reads++;
    call_reads++;
    if (n > MAX_READ_LEN)
        bad_read_len = n;
    if (n > call_max_len)
        call_max_len = n;
    if (va + n < va)
        return false;
    uint8_t *out = buf;
    while (n) {
        uint8_t *p = page_of(va);
        size_t in = PAGE - va % PAGE, k = n < in ? n : in;
        if (!p)
            return false;
        memcpy(out, p + va % PAGE, k);
        out += k, va += k, n -= k;
    }
    return true;
}

static void w(uint64_t va, const void *src, size_t n)
{
    const uint8_t *s = src;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = page_of(va + i);
        if (p)
            p[(va + i) % PAGE] = s[i];
    }
}
static void w64(uint64_t va, uint64_t v) { w(va, &v, 8); }
static void w32(uint64_t va, uint32_t v) { w(va, &v, 4); }

/* ---------------------------------------------------------------------------- the world */

enum { O_TASK, O_CRED, O_FS, O_FILES, O_FDT, O_FDARR, O_FILE, O_INODE, O_SB, O_MOUNT, O_DENTRY,
       O_NAME, O_MM, O_SOCKET, O_SOCK, O_UADDR, NKINDS };
static const int counts[NKINDS] = {8, 4, 4, 4, 4, 4, 24, 16, 4, 12, 160, 160, 4, 8, 12, 8};
#define MAXOBJ 160
static uint64_t objs[NKINDS][MAXOBJ];
static uint64_t bump;

static uint64_t span(const int64_t *offs, int n, uint64_t extra)
{
    int64_t hi = 0;
    for (int i = 0; i < n; i++)
        hi = offs[i] > hi ? offs[i] : hi;
    return ((uint64_t)hi + extra + 63) & ~63ull;
}

/* objects spread over the region with gaps (an absent page loses a few, not a whole kind) */
static uint64_t alloc(uint64_t size)
{
    bump += below(1536);
    if (chance(3)) /* now and then an object straddles into the next page */
        bump = ((bump | (PAGE - 1)) + 1) + PAGE - 24;
    uint64_t a = (bump + 7) & ~7ull;
    bump = a + size;
    return a;
}

/* how hostile this world is (percent, per world): clean worlds give deep, long paths, dirty
 * ones exercise every refusal */
static unsigned trouble;

/* a pointer worth planting: an object of the wanted kind, or (trouble% of the time) not */
static uint64_t ptr_to(int kind)
{
    if (!chance(trouble))
        return objs[kind][below((uint64_t)counts[kind])];
    switch (below(7)) {
    case 0: return 0;
    case 1: return KTOP + below(PAGE);                  /* the last page: offsets wrap */
    case 2: return KBASE + below(KPAGES) * PAGE + below(PAGE); /* anywhere, maybe absent */
    case 3: return 0xffff800000000000ull + below(1ull << 40); /* kernel-looking, unmapped */
    case 4: return UBASE + below(UPAGES * PAGE);        /* a user pointer */
    default: return objs[below(NKINDS)][below(MAXOBJ / 8)]; /* the wrong kind */
    }
}

static uint32_t plausible_len(void)
{
    if (!chance(trouble))
        return 1 + (uint32_t)below(24);
    switch (below(6)) {
    case 0: return 0;
    case 1: return 255;
    case 2: return 256;
    case 3: return 0xffffffffu;
    default: return (uint32_t)rnd();
    }
}

static void build_world(const struct pv_offsets *o)
{
    unmap_all();
    trouble = chance(25) ? (unsigned)below(3) : (unsigned)below(60);
    for (uint64_t i = 0; i < KPAGES; i++)
        if (i < 2 || !chance(trouble / 6)) /* the first pages (the first objects) always there */
            map_page(KBASE + i * PAGE);
    map_page(KTOP);
    for (uint64_t i = 0; i < UPAGES; i++)
        if (!chance(10))
            map_page(UBASE + i * PAGE);
    map_page(UTOP);
    /* user strings: NULs at varying density; the last user page and some others have none */
    for (uint64_t i = 0; i <= UPAGES; i++) {
        uint64_t base = i == UPAGES ? UTOP : UBASE + i * PAGE;
        uint8_t *p = page_of(base);
        unsigned density = i == UPAGES || chance(20) ? 0 : (unsigned)below(64);
        for (uint64_t j = 0; p && density && j < PAGE; j++)
            if (below(density + 1) == 0)
                p[j] = 0;
    }
    int64_t task[] = {o->task_pid, o->task_tgid, o->task_comm, o->task_real_parent, o->task_cred,
                      o->task_start_time, o->task_fs, o->task_files, o->task_mm};
    int64_t fs[] = {o->fs_pwd + o->path_mnt, o->fs_pwd + o->path_dentry,
                    o->fs_root + o->path_mnt, o->fs_root + o->path_dentry};
    int64_t file[] = {o->file_f_path + o->path_mnt, o->file_f_path + o->path_dentry,
                      o->file_f_inode, o->file_private_data};
    int64_t cred[] = {o->cred_uid, o->cred_gid, o->cred_suid, o->cred_sgid, o->cred_euid,
                      o->cred_egid, o->cred_fsuid, o->cred_fsgid};
    int64_t c = o->sock_sk_common;
    int64_t sock[] = {o->sock_sk_type, c + o->skc_family, c + o->skc_daddr, c + o->skc_rcv_saddr,
                      c + o->skc_dport, c + o->skc_num, c + o->skc_v6_daddr + 8,
                      c + o->skc_v6_rcv_saddr + 8, o->unix_addr, o->unix_peer};
    int64_t uaddr[] = {o->unix_address_len, o->unix_address_name + o->sun_path + 112};
    int64_t inode[] = {o->inode_i_ino, o->inode_i_sb, o->inode_i_mode};
    int64_t mount[] = {o->mount_mnt + o->vfsmount_mnt_root, o->mount_mnt_parent,
                       o->mount_mnt_mountpoint, o->mount_mnt_id};
    int64_t dentry[] = {o->dentry_d_name + o->qstr_name, o->dentry_d_name + o->qstr_len,
                        o->dentry_d_parent, o->dentry_d_inode};
    uint64_t sizes[NKINDS] = {
        span(task, 9, 16), span(cred, 8, 8), span(fs, 4, 8), span(&o->files_fdt, 1, 8),
        span((int64_t[]){o->fdt_max_fds, o->fdt_fd}, 2, 8), 64 * 8, span(file, 4, 8),
        span(inode, 3, 8), span(&o->sb_s_dev, 1, 8), span(mount, 4, 8), span(dentry, 4, 8),
        PV_MAX_NAME + 8, (o->mm_exe_file > 0 ? (uint64_t)o->mm_exe_file : 0) + 64,
        span(&o->socket_sk, 1, 8), span(sock, 10, 8), span(uaddr, 2, 8),
    };
    bump = KBASE;
    for (int k = 0; k < NKINDS; k++)
        for (int i = 0; i < MAXOBJ; i++)
            objs[k][i] = i < counts[k] ? alloc(sizes[k]) : objs[k][i % counts[k]];
    /* mounts: 0 the top (its own parent), the others below it or below each other */
    for (int i = 0; i < counts[O_MOUNT]; i++) {
        uint64_t m = objs[O_MOUNT][i];
        uint64_t parent = i == 0 || chance(5) ? m : objs[O_MOUNT][below((uint64_t)i)];
        if (chance(trouble / 8))
            parent = ptr_to(O_MOUNT); /* cycles, garbage */
        w64(m + o->mount_mnt_parent, parent);
        w64(m + o->mount_mnt + o->vfsmount_mnt_root,
            chance(trouble / 4) ? ptr_to(O_DENTRY) : objs[O_DENTRY][i]);
        w64(m + o->mount_mnt_mountpoint, ptr_to(O_DENTRY));
        w32(m + o->mount_mnt_id, (uint32_t)below(1000));
    }
    /* dentries: a tree (a parent has a lower index; a mount root is its own parent), names of
     * plausible lengths in name buffers, now and then a cycle or a lying length */
    unsigned deep = chance(20), chain = deep ? 100 : (unsigned)below(100),
             longnames = deep ? 100 : (unsigned)below(40); /* per world */
    for (int i = 0; i < counts[O_DENTRY]; i++) {
        uint64_t d = objs[O_DENTRY][i];
        /* chain% of the dentries continue a line (paths deeper than PV_MAX_DEPTH), the others
         * hang anywhere above */
        uint64_t parent = i < counts[O_MOUNT] ? d : objs[O_DENTRY][chance(chain) ?
                          (uint64_t)i - 1 : below((uint64_t)i)];
        if (chance(trouble / 4))
            parent = objs[O_DENTRY][below((uint64_t)counts[O_DENTRY])]; /* may cycle */
        if (chance(trouble / 8))
            parent = ptr_to(O_DENTRY);
        w64(d + o->dentry_d_parent, parent);
        w32(d + o->dentry_d_name + o->qstr_len, chance(longnames) ? PV_MAX_NAME - (uint32_t)below(2)
                                                                  : plausible_len());
        w64(d + o->dentry_d_name + o->qstr_name, chance(trouble / 10) ? ptr_to(O_NAME) : objs[O_NAME][i]);
        w64(d + o->dentry_d_inode, ptr_to(O_INODE));
        if (chance(5)) /* a pipe:[...] style name */
            w(objs[O_NAME][i] + below(8), ":", 1);
    }
    for (int i = 0; i < counts[O_INODE]; i++) {
        w64(objs[O_INODE][i] + o->inode_i_ino, below(3) ? below(100000) : rnd());
        w64(objs[O_INODE][i] + o->inode_i_sb, ptr_to(O_SB));
        static const uint16_t modes[] = {0140755, 0010600, 0100644, 0040755, 0};
        w(objs[O_INODE][i] + o->inode_i_mode, &modes[chance(85) ? below(2) : below(5)], 2);
    }
    for (int i = 0; i < counts[O_SB]; i++)
        w32(objs[O_SB][i] + o->sb_s_dev, (uint32_t)rnd());
    for (int i = 0; i < counts[O_FILE]; i++) {
        uint64_t f = objs[O_FILE][i], m = ptr_to(O_MOUNT);
        w64(f + o->file_f_path + o->path_mnt, m ? m + (uint64_t)o->mount_mnt : 0);
        w64(f + o->file_f_path + o->path_dentry, ptr_to(O_DENTRY));
        w64(f + o->file_f_inode, ptr_to(O_INODE));
        w64(f + o->file_private_data, ptr_to(O_SOCKET));
    }
    for (int i = 0; i < counts[O_SOCKET]; i++)
        w64(objs[O_SOCKET][i] + o->socket_sk, ptr_to(O_SOCK));
    static const uint16_t fams[] = {1, 2, 10, 16, 0, 0xffff};
    for (int i = 0; i < counts[O_SOCK]; i++) {
        uint64_t sk = objs[O_SOCK][i] + (uint64_t)o->sock_sk_common;
        w(sk + o->skc_family, &fams[chance(90) ? below(3) : below(6)], 2);
        w(objs[O_SOCK][i] + o->sock_sk_type, (uint16_t[]){(uint16_t)(1 + below(5))}, 2);
        if (chance(40)) { /* the unset address and port: "" */
            w32(sk + o->skc_daddr, 0), w32(sk + o->skc_rcv_saddr, 0);
            w32(sk + o->skc_dport, 0);
        }
        if (o->skc_v6_daddr >= 0 && chance(50)) { /* zero runs of every length */
            uint64_t z = below(16) & ~1ull, zl = below(17 - z);
            for (uint64_t b = z; b < z + zl; b++)
                w(sk + o->skc_v6_daddr + b, "", 1);
        }
        if (o->unix_addr >= 0)
            w64(objs[O_SOCK][i] + o->unix_addr, chance(30) ? 0 : ptr_to(O_UADDR));
        if (o->unix_peer >= 0)
            w64(objs[O_SOCK][i] + o->unix_peer, chance(30) ? 0 : ptr_to(O_SOCK));
    }
    static const uint32_t ulens[] = {0, 1, 2, 3, 9, 110, 111, 0xffffffffu};
    for (int i = 0; i < counts[O_UADDR] && o->unix_address_len >= 0; i++)
        w32(objs[O_UADDR][i] + o->unix_address_len,
            chance(60) ? 2 + (uint32_t)below(109) : ulens[below(8)]);
    for (int i = 0; i < counts[O_FDARR]; i++)
        for (int j = 0; j < 64; j++)
            w64(objs[O_FDARR][i] + 8 * (uint64_t)j, chance(30) ? 0 : ptr_to(O_FILE));
    static const uint32_t max_fds[] = {0, 1, 3, 64, 65, 1u << 20, (1u << 20) + 1, 0xffffffffu};
    for (int i = 0; i < counts[O_FDT]; i++) {
        w32(objs[O_FDT][i] + o->fdt_max_fds,
            chance(70) ? max_fds[below(sizeof max_fds / 4)] : (uint32_t)rnd());
        w64(objs[O_FDT][i] + o->fdt_fd, ptr_to(O_FDARR));
    }
    for (int i = 0; i < counts[O_FILES]; i++)
        w64(objs[O_FILES][i] + o->files_fdt, ptr_to(O_FDT));
    for (int i = 0; i < counts[O_FS]; i++) {
        uint64_t fsa = objs[O_FS][i], m = ptr_to(O_MOUNT), r = objs[O_MOUNT][0];
        w64(fsa + o->fs_pwd + o->path_mnt, m ? m + (uint64_t)o->mount_mnt : 0);
        w64(fsa + o->fs_pwd + o->path_dentry, ptr_to(O_DENTRY));
        w64(fsa + o->fs_root + o->path_mnt,
            chance(trouble / 4) ? ptr_to(O_MOUNT) : r + (uint64_t)o->mount_mnt);
        w64(fsa + o->fs_root + o->path_dentry, objs[O_DENTRY][0]);
    }
    for (int i = 0; i < counts[O_CRED]; i++)
        for (int k = 0; k < 8; k++)
            w32(objs[O_CRED][i] + cred[k], (uint32_t)below(2000));
    for (int i = 0; i < counts[O_MM]; i++)
        if (o->mm_exe_file >= 0)
            w64(objs[O_MM][i] + o->mm_exe_file, chance(80) ? ptr_to(O_FILE) : rnd());
    for (int i = 0; i < counts[O_TASK]; i++) {
        uint64_t t = objs[O_TASK][i];
        w32(t + o->task_pid, (uint32_t)below(40000));
        w32(t + o->task_tgid, (uint32_t)below(40000));
        if (chance(70)) /* else 16 bytes of garbage: no NUL */
            w(t + o->task_comm + below(16), "", 1);
        w64(t + o->task_real_parent, ptr_to(O_TASK));
        w64(t + o->task_cred, ptr_to(O_CRED));
        w64(t + o->task_fs, ptr_to(O_FS));
        w64(t + o->task_files, ptr_to(O_FILES));
        w64(t + o->task_mm, ptr_to(O_MM));
    }
    /* loose plants: kernel pointers at random aligned slots anywhere */
    for (unsigned i = 0; i < 50 * trouble; i++) {
        uint64_t va = KBASE + below(KPAGES * PAGE / 8) * 8;
        w64(va, chance(80) ? ptr_to((int)below(NKINDS)) : plausible_len());
    }
}

/* a running guest changes its memory under the walks: a rename (a dentry moves under another
 * directory, or its name changes: what the path cache must notice), and some stray writes */
static void mutate(const struct pv_offsets *o)
{
    for (uint64_t n = 1 + below(3); n; n--) {
        uint64_t i = (uint64_t)counts[O_MOUNT] +
                     below((uint64_t)(counts[O_DENTRY] - counts[O_MOUNT]));
        uint64_t d = objs[O_DENTRY][i];
        if (chance(50))
            w64(d + o->dentry_d_parent, objs[O_DENTRY][below(i)]);
        else
            w(objs[O_NAME][i] + below(8), (uint8_t[]){(uint8_t)('a' + below(26))}, 1);
    }
    for (uint64_t n = below(1 + trouble / 8); n; n--) {
        int k = (int)below(NKINDS);
        uint64_t va = objs[k][below((uint64_t)counts[k])] + below(512) * 8;
        if (chance(50))
            w64(va, ptr_to((int)below(NKINDS)));
        else
            w32(va, plausible_len());
    }
}

/* ------------------------------------------------------------------------------- checks */

static struct {
    uint64_t seed, round, calls, reads, failed, max_reads, paths, max_path, strings, sockets,
        addrs;
} st;

__attribute__((format(printf, 1, 2))) static void violation(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pv-fuzz: seed %llu round %llu: ", (unsigned long long)st.seed,
            (unsigned long long)st.round);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void begin(void) { call_reads = 0, bad_read_len = 0, call_max_len = 0; }

static void end(const char *what)
{
    st.calls++;
    if (call_reads > st.max_reads)
        st.max_reads = call_reads;
    if (call_reads >= MAX_READS)
        violation("%s: %llu memory reads in one call", what, (unsigned long long)call_reads);
    if (bad_read_len)
        violation("%s: a read of %llu bytes", what, (unsigned long long)bad_read_len);
}

static void check_path(const char *what, int n)
{
    if (n > (int)PV_MAX_PATH)
        violation("%s: path of %d bytes (PV_MAX_PATH %d)", what, n, (int)PV_MAX_PATH);
    if (n < -1)
        violation("%s: returned %d", what, n);
    if (n > 0) {
        st.paths++;
        if ((uint64_t)n > st.max_path)
            st.max_path = (uint64_t)n;
    }
}

static void same(const char *what, int a, const uint8_t *pa, uint32_t ia, int b,
                 const uint8_t *pb, uint32_t ib)
{
    if (a != b || ia != ib || (a > 0 && memcmp(pa, pb, (size_t)a)))
        violation("%s: the cached result (%d, mnt_id %u) differs from a fresh walk (%d, %u)",
                  what, a, ia, b, ib);
}

/* --------------------------------------------------------------------------- the rounds */

static uint64_t gen, fresh_gen; /* fresh_gen is bumped before every call: its cache never hits */

static uint64_t any_addr(int kind)
{
    return chance(70) ? ptr_to(kind) : chance(50) ? rnd() : 0xffff800000000000ull | rnd();
}

static int64_t any_fd(void)
{
    switch (below(12)) {
    case 0: return -1;
    case 1: return INT64_MIN;
    case 2: return (int64_t)rnd();
    case 3: return PV_MAX_FDS - 1;
    case 4: return PV_MAX_FDS;
    case 5: return 64 + (int64_t)below(4);
    case 6: return (int64_t)below(1u << 20);
    default: return (int64_t)below(70);
    }
}

static void round_once(struct pv_linux *lx, struct pv_linux *fresh, uint8_t *pa, uint8_t *pb)
{
    struct pv_task t;
    uint32_t ia = 0, ib = 0, la = 0, lb = 0;
    uint64_t dev, ino, dev2, ino2;

    begin();
    pv_task_read(lx, any_addr(O_TASK), &t);
    end("pv_task_read");
    if (t.comm_len > 16)
        violation("comm of %u bytes", t.comm_len);
    if (chance(30)) { /* a task whose pointers are chosen directly */
        t.fs = any_addr(O_FS), t.files = any_addr(O_FILES), t.addr = any_addr(O_TASK);
    }

    fresh_gen++;
    begin();
    int a = pv_cwd(lx, &t, pa, &ia);
    end("pv_cwd");
    check_path("pv_cwd", a);
    int b = pv_cwd(fresh, &t, pb, &ib);
    same("pv_cwd", a, pa, ia, b, pb, ib);

    for (int k = 0; k < 3; k++) {
        int64_t fd = any_fd();
        fresh_gen++;
        begin();
        uint64_t fa = 0, fb = 0;
        a = pv_fd_file(lx, &t, fd, &dev, &ino, pa, &la, &fa);
        end("pv_fd_file");
        if (a < -1 || a > 1 || (a == 1 && la > PV_MAX_PATH))
            violation("pv_fd_file(%lld): %d, path of %u bytes", (long long)fd, a, la);
        if ((fd < 0 || fd >= PV_MAX_FDS) && (a != 0 || call_reads))
            violation("pv_fd_file(%lld): %d after %llu reads (never an open fd)", (long long)fd,
                      a, (unsigned long long)call_reads);
        if (a == 1)
            check_path("pv_fd_file", (int)la);
        b = pv_fd_file(fresh, &t, fd, &dev2, &ino2, pb, &lb, &fb);
        if (a != b || (a == 1 && (dev != dev2 || ino != ino2 || fa != fb)))
            violation("pv_fd_file(%lld): cached %d, fresh %d", (long long)fd, a, b);
        if (a == 1)
            same("pv_fd_file", (int)la, pa, 0, (int)lb, pb, 0);
    }

    fresh_gen++;
    begin();
    a = pv_exe_file(lx, &t, &dev, &ino, pa, &la);
    end("pv_exe_file");
    if (a < 0 || a > 1)
        violation("pv_exe_file: %d", a);
    if (a == 1)
        check_path("pv_exe_file", (int)la);

    uint64_t m = any_addr(O_MOUNT), d = any_addr(O_DENTRY), r = any_addr(O_MOUNT);
    m += chance(80) ? (uint64_t)lx->o->mount_mnt : 0;
    r += chance(80) ? (uint64_t)lx->o->mount_mnt : 0;
    bool have_root = chance(60);
    for (int k = 0; k < 2; k++) { /* the second call can hit the cache */
        fresh_gen++;
        begin();
        a = pv_path_of(lx, m, d, r, have_root, pa, &ia);
        end("pv_path_of");
        check_path("pv_path_of", a);
        b = pv_path_of(fresh, m, d, r, have_root, pb, &ib);
        same("pv_path_of", a, pa, ia, b, pb, ib);
    }

    for (int k = 0; k < 2; k++) {
        struct pv_endpoint ep;
        uint64_t f = any_addr(O_FILE);
        begin();
        bool ok = pv_socket_of(lx, f, &ep);
        end("pv_socket_of");
        if (ok) {
            st.sockets++;
            if (ep.local_len > PV_MAX_ADDR || ep.remote_len > PV_MAX_ADDR)
                violation("pv_socket_of: addresses of %u and %u bytes", ep.local_len,
                          ep.remote_len);
            bool inet = ep.family == 2 || ep.family == 10;
            if ((inet && (ep.local_len > 47 || ep.remote_len > 47)) ||
                (!inet && ep.family != 1 && (ep.local_len || ep.remote_len || ep.peer)))
                violation("pv_socket_of: family %u with %u/%u address bytes", ep.family,
                          ep.local_len, ep.remote_len);
            if (!pv_kernel_ptr(ep.sk) || (ep.peer && !pv_kernel_ptr(ep.peer)))
                violation("pv_socket_of: sk %#llx peer %#llx", (unsigned long long)ep.sk,
                          (unsigned long long)ep.peer);
        }
    }

    begin();
    uint64_t task;
    if (pv_current_task(lx, any_addr(O_TASK), &task) && !pv_kernel_ptr(task))
        violation("pv_current_task: %#llx is no kernel pointer", (unsigned long long)task);
    end("pv_current_task");

    static const uint64_t tops[] = {UTOP, UTOP + PAGE - 1, UTOP + PAGE - 16, 0, 1,
                                    0xffffffffffffffffull, KBASE};
    uint64_t va = chance(80) ? UBASE + below((UPAGES + 1) * PAGE) : chance(50) ?
                  UTOP + below(PAGE) : tops[below(sizeof tops / 8)];
    uint32_t limit = chance(50) ? PV_MAX_STR : (uint32_t)below(PV_MAX_STR + 1);
    uint8_t *s = malloc(limit ? limit : 1); /* exactly the limit: ASan sees one byte more */
    bool trunc;
    begin();
    int n = pv_user_string(lx, va, s, limit, &trunc);
    end("pv_user_string");
    if (n < -1 || n > (int)limit || (n >= 0 && memchr(s, 0, (size_t)n)) ||
        (trunc && n != (int)limit))
        violation("pv_user_string(%#llx, %u): %d, trunc %d", (unsigned long long)va, limit, n,
                  trunc);
    if (n > 0)
        st.strings++;
    free(s);

    /* a socket address argument: often a plausible family planted at the pointer */
    va = chance(80) ? UBASE + below((UPAGES + 1) * PAGE) : chance(50) ?
         UTOP + PAGE - below(140) : tops[below(sizeof tops / 8)];
    static const uint16_t afams[] = {1, 2, 10, 0, 16, 0xffff};
    if (chance(60) && pv_user_ptr(va)) {
        uint16_t fam = afams[below(sizeof afams / 2)];
        w(va, &fam, 2);
        if (fam == 1 && chance(30)) /* an abstract name */
            w(va + 2, "", 1);
    }
    static const uint64_t sizes[] = {0, 1, 2, 3, 15, 16, 23, 24, 28, 109, 110, 111, 128, 129,
                                     0x7fffffff, 0x80000000u, 0xffffffffu, 0x100000010ull,
                                     0xffffffffffffffffull};
    uint64_t size = chance(50) ? below(140) : sizes[below(sizeof sizes / 8)];
    uint8_t *out = malloc(PV_MAX_ADDR); /* exactly PV_MAX_ADDR: ASan sees one byte more */
    uint16_t family = 0;
    begin();
    int ra = pv_user_sockaddr(lx, va, size, &family, out);
    end("pv_user_sockaddr");
    uint32_t isize = (uint32_t)size;
    if (ra < -1 || ra > (int)PV_MAX_ADDR + 1 || call_reads > 1 || call_max_len > PV_MAX_SOCKADDR ||
        (call_reads && call_max_len > isize) ||
        (ra > 0 && family != 1 && family != 2 && family != 10) ||
        (ra != 0 && (va == 0 || isize < 2 || isize >= 1u << 31)))
        violation("pv_user_sockaddr(%#llx, %#llx): %d, family %u, %llu reads of up to %llu",
                  (unsigned long long)va, (unsigned long long)size, ra, family,
                  (unsigned long long)call_reads, (unsigned long long)call_max_len);
    if (ra > 0)
        st.addrs++;
    free(out);
}

/* ------------------------------------------------------------------------------ offsets */

static const char builtin_offsets[] =
    "provisor-offsets 1\n"
    "# Debian 6.1.0-47-cloud-amd64, as hv.profile.plugin_offsets writes it\n"
    "current_task 129920\nlinux_banner 18446744071596800512\n"
    "banner 4c696e75782076657273696f6e20362e312e30\n"
    "task_struct.pid 2416\ntask_struct.tgid 2420\ntask_struct.comm 2976\n"
    "task_struct.real_parent 2432\ntask_struct.cred 2960\ntask_struct.start_time 2776\n"
    "task_struct.fs 3040\ntask_struct.files 3048\ntask_struct.mm 2272\ncred.uid 8\n"
    "fs_struct.pwd 40\nfs_struct.root 24\npath.mnt 0\npath.dentry 8\ndentry.d_name 32\n"
    "dentry.d_parent 24\ndentry.d_inode 48\nqstr.name 8\nqstr.len 4\ninode.i_ino 64\n"
    "inode.i_sb 40\nsuper_block.s_dev 16\nfiles_struct.fdt 32\nfdtable.max_fds 0\n"
    "fdtable.fd 8\nfile.f_path 16\nfile.f_inode 32\nmount.mnt 32\nmount.mnt_parent 16\n"
    "mount.mnt_mountpoint 24\nmount.mnt_id 292\nvfsmount.mnt_root 0\n"
    "mm_struct.exe_file 936\n"
    "cred.gid 12\ncred.suid 16\ncred.sgid 20\ncred.euid 24\ncred.egid 28\ncred.fsuid 32\n"
    "cred.fsgid 36\ninode.i_mode 0\nfile.private_data 200\nsocket.sk 24\nsock.__sk_common 0\n"
    "sock.sk_type 514\nsock_common.skc_family 16\nsock_common.skc_daddr 0\n"
    "sock_common.skc_rcv_saddr 4\nsock_common.skc_dport 12\nsock_common.skc_num 14\n"
    "sock_common.skc_v6_daddr 56\nsock_common.skc_v6_rcv_saddr 72\nunix_sock.addr 776\n"
    "unix_sock.peer 864\nunix_address.len 4\nunix_address.name 8\n"
    "sockaddr_un.sun_path 2\n";

/* every member of the struct with its key in the file: written out again here (not taken from
 * offsets.c's table) so that --check-offsets also tests which field each key lands in */
#define MEMBERS(X) X("task_struct.pid", task_pid) X("task_struct.tgid", task_tgid) \
    X("task_struct.comm", task_comm) X("task_struct.real_parent", task_real_parent) \
    X("task_struct.cred", task_cred) X("task_struct.start_time", task_start_time) \
    X("task_struct.fs", task_fs) X("task_struct.files", task_files) \
    X("task_struct.mm", task_mm) X("cred.uid", cred_uid) X("fs_struct.pwd", fs_pwd) \
    X("fs_struct.root", fs_root) X("path.mnt", path_mnt) X("path.dentry", path_dentry) \
    X("dentry.d_name", dentry_d_name) X("dentry.d_parent", dentry_d_parent) \
    X("dentry.d_inode", dentry_d_inode) X("qstr.name", qstr_name) X("qstr.len", qstr_len) \
    X("inode.i_ino", inode_i_ino) X("inode.i_sb", inode_i_sb) \
    X("super_block.s_dev", sb_s_dev) X("files_struct.fdt", files_fdt) \
    X("fdtable.max_fds", fdt_max_fds) X("fdtable.fd", fdt_fd) X("file.f_path", file_f_path) \
    X("file.f_inode", file_f_inode) X("mount.mnt", mount_mnt) \
    X("mount.mnt_parent", mount_mnt_parent) X("mount.mnt_mountpoint", mount_mnt_mountpoint) \
    X("mount.mnt_id", mount_mnt_id) X("vfsmount.mnt_root", vfsmount_mnt_root) \
    X("mm_struct.exe_file", mm_exe_file) X("cred.gid", cred_gid) X("cred.suid", cred_suid) \
    X("cred.sgid", cred_sgid) X("cred.euid", cred_euid) X("cred.egid", cred_egid) \
    X("cred.fsuid", cred_fsuid) X("cred.fsgid", cred_fsgid) \
    X("inode.i_mode", inode_i_mode) X("file.private_data", file_private_data) X("socket.sk", socket_sk) \
    X("sock.__sk_common", sock_sk_common) X("sock.sk_type", sock_sk_type) \
    X("sock_common.skc_family", skc_family) X("sock_common.skc_daddr", skc_daddr) \
    X("sock_common.skc_rcv_saddr", skc_rcv_saddr) X("sock_common.skc_dport", skc_dport) \
    X("sock_common.skc_num", skc_num) X("sock_common.skc_v6_daddr", skc_v6_daddr) \
    X("sock_common.skc_v6_rcv_saddr", skc_v6_rcv_saddr) X("unix_sock.addr", unix_addr) \
    X("unix_sock.peer", unix_peer) X("unix_address.len", unix_address_len) \
    X("unix_address.name", unix_address_name) X("sockaddr_un.sun_path", sun_path)

/* random, mostly small offsets (some near the 64 KiB bound): walks over a layout no kernel has */
static void random_offsets(struct pv_offsets *o, const struct pv_offsets *base)
{
    *o = *base;
#define RND(k, f) o->f = chance(3) ? (int64_t)below(0x10001) : (int64_t)below(512) & ~3;
    MEMBERS(RND)
#undef RND
    if (chance(30))
        o->mm_exe_file = -1;
    if (chance(30))
        o->skc_v6_daddr = o->skc_v6_rcv_saddr = -1;
    if (chance(30))
        o->unix_addr = o->unix_peer = o->unix_address_len = o->unix_address_name = -1;
}

/* mutated offsets texts through the parser: refused or accepted, never a crash */
static void fuzz_parser(const char *text, size_t n, uint64_t rounds)
{
    char *buf = malloc(2 * n + 4096);
    char err[256];
    struct pv_offsets o;
    for (uint64_t r = 0; r < rounds; r++) {
        size_t len = n;
        memcpy(buf, text, n);
        for (uint64_t k = 1 + below(6); k; k--) {
            size_t at = len ? below(len) : 0;
            switch (below(6)) {
            case 0: if (len) buf[at] = (char)rnd(); break;           /* a byte */
            case 1: if (len) len = at; break;                        /* truncated */
            case 2: if (len) memmove(buf + at, buf + at + 1, len - at - 1), len--; break;
            case 3: { /* a line repeated */
                size_t b = at, e = at;
                while (b && buf[b - 1] != '\n')
                    b--;
                while (e < len && buf[e++] != '\n')
                    ;
                if (len + (e - b) <= 2 * n + 4096) {
                    memmove(buf + e, buf + b, len - b);
                    len += e - b;
                }
                break;
            }
            case 4: { /* a huge or odd number */
                static const char *nums[] = {" 99999999999999999999999", " 0x", " -1", " 010",
                                             " 65537", " 1e3", "\0", " \t\r"};
                const char *s = nums[below(8)];
                size_t l = *s ? strlen(s) : 1;
                if (len + l <= 2 * n + 4096) {
                    memmove(buf + at + l, buf + at, len - at);
                    memcpy(buf + at, s, l);
                    len += l;
                }
                break;
            }
            default: /* binary garbage */
                for (size_t j = at; j < len && j < at + 64; j++)
                    buf[j] = (char)rnd();
            }
        }
        err[0] = 0;
        int rc = pv_offsets_parse(&o, buf, len, err, sizeof err);
        if (rc != 0 && (rc != -1 || !err[0] || strchr(err, '\n')))
            violation("pv_offsets_parse: returned %d, reason \"%s\"", rc, err);
        st.calls++;
    }
    free(buf);
}

static int check_offsets(const char *path)
{
    struct pv_offsets o;
    char err[512];
    if (pv_offsets_load(&o, path, err, sizeof err)) {
        fprintf(stderr, "pv-fuzz: %s\n", err);
        return 2;
    }
    printf("ok\ncurrent_task %llu\nlinux_banner %llu\nbanner ",
           (unsigned long long)o.current_task, (unsigned long long)o.linux_banner);
    for (uint32_t i = 0; i < o.banner_len; i++)
        printf("%02x", o.banner[i]);
    printf("\n");
#define PR(k, f) printf(k " %lld\n", (long long)o.f);
    MEMBERS(PR)
#undef PR
    return 0;
}

/* -------------------------------------------------------------------------------- main */

static void stuck(int sig)
{
    (void)sig;
    static const char m[] = "pv-fuzz: a round took more than 20 s (an unbounded loop?)\n";
    ssize_t rc = write(2, m, sizeof m - 1);
    (void)rc;
    _exit(3);
}

static void run(const struct pv_offsets *o, uint64_t rounds)
{
    struct pv_linux *lx = malloc(sizeof *lx), *fresh = malloc(sizeof *fresh);
    uint8_t *pa = malloc(PV_MAX_PATH), *pb = malloc(PV_MAX_PATH); /* exactly: ASan's edge */
    if (!lx || !fresh || !pa || !pb)
        abort();
    pv_linux_init(lx, o, &gen);
    pv_linux_init(fresh, o, &fresh_gen);
    lx->mem.read = fresh->mem.read = seam_read;
    build_world(o);
    for (uint64_t r = 0; r < rounds; r++, st.round++) {
        alarm(20);
        if (chance(30)) { /* memory changes; the path generation says so (a rename) */
            mutate(o);
            gen++;
        }
        round_once(lx, fresh, pa, pb);
    }
    alarm(0);
    st.reads += lx->mem.reads + fresh->mem.reads;
    st.failed += lx->mem.failed + fresh->mem.failed;
    pv_linux_free(lx);
    pv_linux_free(fresh);
    free(lx), free(fresh), free(pa), free(pb);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--check-offsets"))
        return check_offsets(argv[2]);
    char *end1, *end2;
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "pv-fuzz: usage: pv-fuzz SEED ITERATIONS [OFFSETS] | "
                "pv-fuzz --check-offsets FILE\n");
        return 2;
    }
    st.seed = strtoull(argv[1], &end1, 0);
    uint64_t rounds = strtoull(argv[2], &end2, 0);
    if (*end1 || *end2 || !*argv[1] || !*argv[2]) {
        fprintf(stderr, "pv-fuzz: bad SEED or ITERATIONS\n");
        return 2;
    }
    signal(SIGALRM, stuck);
    rs = st.seed * 0x2545F4914F6CDD1Dull + 1;
    struct pv_offsets o, ro;
    char err[512];
    const char *text = builtin_offsets;
    size_t tlen = sizeof builtin_offsets - 1;
    char *filetext = NULL;
    if (argc == 4) {
        if (pv_offsets_load(&o, argv[3], err, sizeof err)) {
            fprintf(stderr, "pv-fuzz: %s\n", err);
            return 2;
        }
        FILE *f = fopen(argv[3], "rb");
        filetext = malloc(64 * 1024);
        tlen = f && filetext ? fread(filetext, 1, 64 * 1024, f) : 0;
        if (f)
            fclose(f);
        text = filetext;
    } else if (pv_offsets_parse(&o, builtin_offsets, tlen, err, sizeof err)) {
        fprintf(stderr, "pv-fuzz: the built-in offsets: %s\n", err);
        return 2;
    }
    run(&o, rounds);
    for (int k = 0; k < 4; k++) {
        random_offsets(&ro, &o);
        run(&ro, rounds / 16 + 1);
    }
    fuzz_parser(text, tlen, rounds);
    unmap_all();
    free(filetext);
    printf("pv-fuzz: seed %llu: calls %llu, reads %llu, failed reads %llu, max reads per call "
           "%llu, paths %llu (longest %llu), strings %llu, sockets %llu, addrs %llu\n",
           (unsigned long long)st.seed, (unsigned long long)st.calls,
           (unsigned long long)st.reads, (unsigned long long)st.failed,
           (unsigned long long)st.max_reads, (unsigned long long)st.paths,
           (unsigned long long)st.max_path, (unsigned long long)st.strings,
           (unsigned long long)st.sockets, (unsigned long long)st.addrs);
    return 0;
}
