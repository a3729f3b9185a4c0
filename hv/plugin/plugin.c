/* provisor's QEMU TCG plugin: every guest syscall is recorded in the persistent ring by the
 * hypervisor itself, before the vCPU executes it (write-ahead), and its return when the task
 * goes back to user space. docs/HYPERVISORS.md describes the design; the record format is
 * docs/FORMAT.md; the syscall semantics come from the shared table (syscalls.h, generated from
 * provisor/syscalls.py); the kernel offsets from the DWARF profile (offsets.h).
 *
 * Translate time decides: an exec callback (with register access) goes before every user-mode
 * `syscall`, `sysenter` and `int 0x80` (prefixed forms included) and before every kernel-mode
 * `sysret`, `iret` and `sysexit`. Exec time does the hot work, with state per vCPU; the ring, its
 * sequence numbers and the table of open entries are shared under one lock, which is what makes
 * the order of records across vCPUs causal.
 *
 * Options (checked at install; a bad one fails QEMU's start with one line):
 *   ring=PATH      the ring image (created beforehand: `provisor ring create`)
 *   offsets=PATH   the offsets file hv/profile.py writes
 *   policy=block|drop|fail   ring-full policy (default block)
 *   envp=on|off    record execve's environment (default off)
 *   mode=trace|hook          hook: trap and read the number only, record nothing (benchmarks)
 *   stats=PATH     a JSON summary, rewritten about once a second and at exit
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <qemu-plugin.h>

#include "event.h"
#include "linux.h"
#include "offsets.h"
#include "ring.h"
#include "syscalls.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define USER_TOP 0x0000800000000000ull
#define KERNEL_BOTTOM 0xFFFF800000000000ull
#define USER32_CS 0x23
#define NR_LIMIT 1024
#define PENDING_CAP 8192 /* power of two */
#define PENDING_PROBE 64
#define KASLR_BASE 0xFFFFFFFF80000000ull
#define KASLR_ALIGN 0x200000ull
#define KASLR_SPAN (1ull << 30)

enum site { SITE_SYSCALL = 1, SITE_SYSENTER, SITE_INT80, SITE_SYSRET, SITE_IRET };

/* --------------------------------------------------------------------- options and globals */

static struct {
    char ring[4096], offsets[4096], stats[4096];
    int policy, envp, hook_only;
} opt = {.policy = PV_POLICY_BLOCK};

static struct pv_offsets off;
static struct pv_ring ring;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* ring, pending, banner check */
static volatile uint64_t path_gen; /* bumped at the exit of a call that moves names */
static int16_t by_nr64[NR_LIMIT], by_nr32[NR_LIMIT]; /* syscall number -> table row, -1 */

static int banner_state; /* 0 unchecked, 1 matched */
static uint64_t slide;

struct pending {
    uint64_t task; /* 0: free */
    uint64_t seq, start_time;
    uint64_t args[6];
    uint32_t pid;
    int16_t row;
    uint8_t compat;
    uint8_t reread; /* the entry's paths were unreadable: read them again at the exit */
};
static struct pending pend[PENDING_CAP];
static atomic_int npending;

static struct {
    uint64_t entries, exits, dropped, unmatched, stale, evicted, returns;
    uint64_t reads, failed, decode_ns, persist_ns;
    uint64_t by_row[PV_SYSCALL_COUNT]; /* entries per table row */
} st; /* updated with relaxed atomic adds */
#define ADD(field, n) __atomic_fetch_add(&st.field, (n), __ATOMIC_RELAXED)
static uint64_t last_stats_ns;

/* --------------------------------------------------------------------------- per vCPU */

struct vcpu {
    bool ready;
    uint64_t hooks; /* syscall instructions trapped on this vCPU (no shared cache line) */
    GByteArray *reg, *mem;
    struct qemu_plugin_register *rax, *rbx, *rcx, *rdx, *rsi, *rdi, *rbp, *rsp, *r8, *r9, *r10,
        *cs, *kgs;
    struct pv_linux lx;
    struct pv_event ev;
    uint8_t *payload, *path, *str;
    size_t payload_cap;
};
static struct vcpu *vcpus;
static unsigned nvcpus;

static uint64_t now_ns(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t reg(struct vcpu *v, struct qemu_plugin_register *h)
{
    if (!h)
        return 0;
    g_byte_array_set_size(v->reg, 0);
    int n = qemu_plugin_read_register(h, v->reg);
    uint64_t x = 0;
    if (n > 0)
        memcpy(&x, v->reg->data, n < 8 ? (size_t)n : 8);
    return x;
}

static bool qmem(void *ctx, uint64_t va, void *buf, size_t n)
{
    struct vcpu *v = ctx;
    if (!qemu_plugin_read_memory_vaddr(va, v->mem, n))
        return false;
    memcpy(buf, v->mem->data, n);
    return true;
}

/* one "provisor: ..." line on stderr: what collect shows of a refusal or a stop */
static void say(const char *fmt, va_list ap)
{
    fputs("provisor: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    _exit(3); /* write-ahead: the guest may not run on unrecorded; what is acked stays */
}

/* ------------------------------------------------------------------ open entries per task */

static struct pending *pending_slot(uint64_t task, bool insert)
{
    uint64_t h = (task >> 6) * 0x9E3779B97F4A7C15ull;
    for (unsigned i = 0; i < PENDING_PROBE; i++) {
        struct pending *p = &pend[(h + i) & (PENDING_CAP - 1)];
        if (p->task == task || (insert && p->task == 0))
            return p;
    }
    if (!insert)
        return NULL;
    ADD(evicted, 1); /* bounded: the oldest-placed candidate gives way */
    return &pend[h & (PENDING_CAP - 1)];
}

static void pending_put(uint64_t task, const struct pending *p)
{
    struct pending *s = pending_slot(task, true);
    if (s->task == 0)
        atomic_fetch_add(&npending, 1);
    *s = *p;
    s->task = task;
}

static bool pending_take(uint64_t task, struct pending *out)
{
    struct pending *s = pending_slot(task, false);
    if (!s)
        return false;
    *out = *s;
    s->task = 0;
    atomic_fetch_sub(&npending, 1);
    return true;
}

/* ---------------------------------------------------------------------------- stats */

static uint64_t hooks_total(void)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < nvcpus; i++)
        n += __atomic_load_n(&vcpus[i].hooks, __ATOMIC_RELAXED);
    return n;
}

static void write_stats(bool final)
{
    if (!opt.stats[0])
        return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", opt.stats);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    char buf[8192], rows[4096] = "";
    size_t r = 0;
    for (int i = 0; i < PV_SYSCALL_COUNT && r < sizeof rows - 64; i++)
        if (st.by_row[i])
            r += (size_t)snprintf(rows + r, sizeof rows - r, "%s\"%s\": %" PRIu64, r ? ", " : "",
                                  pv_syscalls[i].name, st.by_row[i]);
    int n = snprintf(buf, sizeof buf,
        "{\"final\": %s, \"vcpus\": %u, \"hooks\": %" PRIu64 ", \"entries\": %" PRIu64
        ", \"exits\": %" PRIu64 ", \"returns\": %" PRIu64 ", \"dropped\": %" PRIu64
        ", \"unmatched\": %" PRIu64 ", \"stale\": %" PRIu64 ", \"evicted\": %" PRIu64
        ", \"mem_reads\": %" PRIu64 ", \"mem_failed\": %" PRIu64
        ", \"decode_ns\": %" PRIu64 ", \"persist_ns\": %" PRIu64
        ", \"records\": %" PRIu64 ", \"next_seq\": %" PRIu64 ", \"persists\": %" PRIu64
        ", \"blocked_ns\": %" PRIu64 ", \"is_pmem\": %d, \"banner\": %s, \"slide\": %" PRIu64
        ", \"ring_free\": %" PRIu64 ", \"ring_size\": %" PRIu64 ", \"pid\": %d, \"by_name\": {%s}}\n",
        final ? "true" : "false", nvcpus, hooks_total(), st.entries, st.exits, st.returns, st.dropped,
        st.unmatched, st.stale, st.evicted, st.reads, st.failed, st.decode_ns, st.persist_ns,
        ring.appended, ring.next_seq, ring.persists, ring.blocked_ns, ring.is_pmem,
        banner_state == 1 ? "true" : "false", slide,
        opt.hook_only ? 0 : pv_ring_free(&ring), ring.size, (int)getpid(), rows);
    bool ok = n > 0 && write(fd, buf, (size_t)n) == n;
    close(fd);
    if (ok)
        rename(tmp, opt.stats);
}

/* under lock: about once a second */
static void maybe_stats(void)
{
    uint64_t t = now_ns(CLOCK_MONOTONIC);
    if (t - last_stats_ns > 1000000000ull) {
        last_stats_ns = t;
        write_stats(false);
    }
}

/* ------------------------------------------------------------------- the kernel's identity */

/* KASLR and the profile check in one: linux_banner must be found, with the profile's bytes, at
 * the profile's link address plus one 2 MB-aligned slide. Under lock, once, before the first
 * record (so a wrong profile writes nothing). */
static void check_banner(struct vcpu *v)
{
    uint8_t buf[512];
    uint32_t n = off.banner_len;
    bool any = false;
    for (uint64_t s = 0; s < KASLR_SPAN; s += KASLR_ALIGN) {
        uint64_t va = off.linux_banner + s;
        if (va < off.linux_banner)
            break;
        if (!qmem(v, va, buf, n))
            continue;
        any = true;
        if (!memcmp(buf, off.banner, n)) {
            slide = s;
            __atomic_store_n(&banner_state, 1, __ATOMIC_RELEASE);
            return;
        }
    }
    if (!any)
        fatal("cannot read the guest kernel's memory from a syscall (kernel page-table "
              "isolation on? boot the guest with pti=off)");
    fatal("the guest kernel is not the one the profile describes (linux_banner not found at "
          "any KASLR slide): rebuild the offsets from the running kernel's profile");
}

/* ----------------------------------------------------------------------- event building */

static void put_task(struct pv_event *e, const struct pv_task *t)
{
    if (!t->ok)
        e->flags |= PV_F_TASK_UNREADABLE;
    e->tgid = t->tgid, e->pid = t->pid, e->ppid = t->ppid, e->uid = t->uid;
    e->start_time = t->start_time;
    if (t->comm_len)
        pv_event_put(e, PV_T_COMM, t->comm, t->comm_len);
    if (t->ok) /* read with the task: before the call at entry, after it at exit */
        pv_event_put_cred(e, t->cred);
}

static void put_cwd(struct vcpu *v, struct pv_event *e, const struct pv_task *t)
{
    uint32_t mnt_id = 0;
    int n = pv_cwd(&v->lx, t, v->path, &mnt_id);
    e->cwd_mnt = mnt_id;
    if (n < 0)
        e->flags |= PV_F_CWD_UNREADABLE;
    else
        pv_event_put(e, PV_T_CWD, v->path, (size_t)n);
}

/* 1 found (FILE added, and a socket's SOCK), 0 not open, -1 unreadable
 * (hv/eventbuild.add_file) */
static int put_fd_file(struct vcpu *v, struct pv_event *e, const struct pv_task *t, int64_t fd)
{
    uint64_t dev, ino, file = 0;
    uint32_t plen = 0;
    int r = pv_fd_file(&v->lx, t, fd, &dev, &ino, v->path, &plen, &file);
    if (r != 1 || !pv_event_put_file(e, dev, ino, v->path, plen))
        return r;
    size_t np = sizeof PV_SOCKET_PREFIX - 1;
    if (plen < np || memcmp(v->path, PV_SOCKET_PREFIX, np))
        return r;
    struct pv_endpoint ep;
    if (!pv_socket_of(&v->lx, file, &ep)) {
        e->flags |= PV_F_SOCK_UNREADABLE;
        return r;
    }
    pv_event_put_sock(e, (uint16_t)(e->nfiles - 1), ep.family, ep.type, ep.sk, ep.peer,
                      ep.local, ep.local_len, ep.remote, ep.remote_len);
    return r;
}

/* argv/envp: a NULL-terminated array of pointers (8 or 4 bytes), bounded in count and bytes */
static void put_strv(struct vcpu *v, struct pv_event *e, int tag, uint64_t va, bool compat)
{
    if (va == 0)
        return;
    if (!pv_user_ptr(va)) {
        e->flags |= PV_F_ARGV_UNREADABLE;
        return;
    }
    unsigned psz = compat ? 4 : 8, count = 0;
    uint32_t budget = PV_MAX_ARGV_BYTES;
    for (uint64_t p = va;; p += psz) {
        uint64_t sp = 0;
        if (!v->lx.mem.read(v->lx.mem.ctx, p, &sp, psz)) {
            e->flags |= PV_F_ARGV_UNREADABLE;
            return;
        }
        if (sp == 0)
            return;
        if (count >= PV_MAX_ARGV || budget <= 1) {
            e->flags |= PV_F_TRUNCATED;
            return;
        }
        bool trunc;
        uint32_t lim = budget - 1 < PV_MAX_STR ? budget - 1 : PV_MAX_STR;
        int n = pv_user_string(&v->lx, sp, v->str, lim, &trunc);
        if (n < 0) {
            e->flags |= PV_F_ARGV_UNREADABLE;
            return;
        }
        pv_event_put(e, tag, v->str, (size_t)n);
        count++;
        budget -= (uint32_t)n + 1;
        if (trunc) {
            e->flags |= PV_F_TRUNCATED;
            return;
        }
    }
}

/* the position of a SOCKADDR the caller gives (a SIZE after it), -1: none
 * (provisor/syscalls.py Syscall.addr_arg) */
static int addr_arg(const struct pv_syscall *sc)
{
    for (int i = 0; i + 1 < sc->nargs; i++)
        if (sc->args[i] == PV_ARG_SOCKADDR && sc->args[i + 1] == PV_ARG_SIZE)
            return i;
    return -1;
}

/* the socket address argument (hv/eventbuild.read_addr); compat pointers are the 32 bits
 * on_entry kept */
static void read_addr(struct vcpu *v, int i, struct pv_event *e)
{
    uint16_t family = 0;
    int r = pv_user_sockaddr(&v->lx, e->args[i], e->args[i + 1], &family, v->str);
    if (r < 0)
        e->flags |= PV_F_ADDR_UNREADABLE;
    else if (r > 0)
        pv_event_put_addr(e, family, v->str, (size_t)(r - 1));
}

/* an exit whose entry had PV_F_PATH_UNREADABLE: its PATH arguments again (by the return the
 * kernel has read them, so their pages are mapped); not after a successful execve, whose
 * pointers were into the image it replaced (hv/eventbuild.reread_paths) */
static void reread_paths(struct vcpu *v, const struct pv_syscall *sc, struct pv_event *e)
{
    if (sc->npaths == 0 || ((sc->traits & PV_TRAIT_EXECS) && e->ret == 0))
        return;
    for (int k = 0; k < sc->npaths; k++) {
        bool trunc;
        int n = pv_user_string(&v->lx, e->args[sc->paths[k].path], v->str, PV_MAX_STR, &trunc);
        if (n < 0) {
            e->flags |= PV_F_PATH_UNREADABLE;
            n = 0;
        }
        if (trunc)
            e->flags |= PV_F_TRUNCATED;
        pv_event_put(e, PV_T_PATH, v->str, (size_t)n);
    }
}

/* what an entry's arguments point to, in argument order (hv/eventbuild.read_entry) */
static void read_entry(struct vcpu *v, const struct pv_syscall *sc, struct pv_event *e,
                       const struct pv_task *t, bool compat)
{
    int ai = addr_arg(sc);
    if (ai >= 0)
        read_addr(v, ai, e);
    for (int i = 0; i < sc->nargs; i++) {
        int kind = sc->args[i];
        if (kind == PV_ARG_PATH) {
            bool trunc;
            int n = pv_user_string(&v->lx, e->args[i], v->str, PV_MAX_STR, &trunc);
            if (n < 0) {
                e->flags |= PV_F_PATH_UNREADABLE;
                n = 0;
            }
            if (trunc)
                e->flags |= PV_F_TRUNCATED;
            pv_event_put(e, PV_T_PATH, v->str, (size_t)n);
        } else if ((kind == PV_ARG_FD || kind == PV_ARG_DIRFD) && t->ok) {
            int64_t fd = (int64_t)e->args[i];
            if (kind == PV_ARG_DIRFD && fd == PV_AT_FDCWD)
                continue;
            if (put_fd_file(v, e, t, fd) < 0)
                e->flags |= PV_F_FILE_UNREADABLE;
        } else if (kind == PV_ARG_ARGV || (kind == PV_ARG_ENVP && opt.envp)) {
            put_strv(v, e, kind == PV_ARG_ARGV ? PV_T_ARGV : PV_T_ENVP, e->args[i], compat);
        }
    }
}

static int arg_at(const struct pv_syscall *sc, int kind)
{
    for (int i = 0; i < sc->nargs; i++)
        if (sc->args[i] == kind)
            return i;
    return -1;
}

/* what a successful call made (hv/eventbuild.read_exit) */
static void read_exit(struct vcpu *v, const struct pv_syscall *sc, struct pv_event *e,
                      const struct pv_task *t)
{
    if (e->ret < 0)
        return;
    int64_t fds[2];
    int nfds = 0, pair = arg_at(sc, PV_ARG_FDPAIR), cmd = arg_at(sc, PV_ARG_FCNTL_CMD);
    bool rfd = (sc->traits & PV_TRAIT_RETURNS_FD) ||
               (cmd >= 0 && ((int64_t)e->args[cmd] == PV_F_DUPFD ||
                             (int64_t)e->args[cmd] == PV_F_DUPFD_CLOEXEC));
    if (rfd) {
        fds[nfds++] = e->ret;
    } else if (pair >= 0) {
        int32_t got[2];
        if (!pv_user_ptr(e->args[pair]) || !qmem(v, e->args[pair], got, sizeof got)) {
            e->flags |= PV_F_FILE_UNREADABLE;
            return;
        }
        for (int i = 0; i < 2; i++) {
            pv_event_put_fd(e, got[i]);
            fds[nfds++] = got[i];
        }
    } else if (sc->traits & PV_TRAIT_CHANGES_CWD) {
        put_cwd(v, e, t);
    } else if (sc->traits & PV_TRAIT_EXECS) {
        uint64_t dev, ino;
        uint32_t plen = 0;
        if (pv_exe_file(&v->lx, t, &dev, &ino, v->path, &plen) == 1)
            pv_event_put_file(e, dev, ino, v->path, plen);
    }
    for (int i = 0; i < nfds; i++)
        if (put_fd_file(v, e, t, fds[i]) != 1)
            e->flags |= PV_F_FILE_UNREADABLE; /* just returned: it must be open */
}

/* ------------------------------------------------------------------------- exec callbacks */

static int64_t append_locked(struct vcpu *v)
{
    size_t n = pv_event_encode(&v->ev, v->payload, v->payload_cap);
    char err[256];
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    int64_t seq = pv_ring_append(&ring, PV_REC_EVENT, v->payload, (uint32_t)n, err, sizeof err);
    ADD(persist_ns, now_ns(CLOCK_MONOTONIC) - t0);
    if (seq < 0)
        fatal("%s: %s", opt.ring, err);
    if (seq == 0)
        ADD(dropped, 1);
    maybe_stats();
    return seq;
}

static inline int16_t row_of(uint64_t nr, bool compat)
{
    return nr < NR_LIMIT ? (compat ? by_nr32 : by_nr64)[nr] : -1;
}

static void on_entry(unsigned int idx, void *udata)
{
    enum site site = (enum site)(uintptr_t)udata;
    if (idx >= nvcpus || !vcpus[idx].ready)
        return;
    struct vcpu *v = &vcpus[idx];
    __atomic_store_n(&v->hooks, v->hooks + 1, __ATOMIC_RELAXED); /* only this vCPU writes */
    uint64_t nr = reg(v, v->rax);
    bool compat = site != SITE_SYSCALL || (reg(v, v->cs) & 0xFFFF) == USER32_CS;
    if (compat)
        nr &= 0xFFFFFFFFu;
    int16_t row = row_of(nr, compat);
    if (row < 0 || opt.hook_only)
        return;
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    const struct pv_syscall *sc = &pv_syscalls[row];
    uint64_t a[6];
    if (!compat) {
        a[0] = reg(v, v->rdi), a[1] = reg(v, v->rsi), a[2] = reg(v, v->rdx);
        a[3] = reg(v, v->r10), a[4] = reg(v, v->r8), a[5] = reg(v, v->r9);
    } else {
        a[0] = reg(v, v->rbx) & 0xFFFFFFFFu;
        a[1] = (site == SITE_SYSCALL ? reg(v, v->rbp) : reg(v, v->rcx)) & 0xFFFFFFFFu;
        a[2] = reg(v, v->rdx) & 0xFFFFFFFFu;
        a[3] = reg(v, v->rsi) & 0xFFFFFFFFu;
        a[4] = reg(v, v->rdi) & 0xFFFFFFFFu;
        if (site == SITE_INT80) {
            a[5] = reg(v, v->rbp) & 0xFFFFFFFFu;
        } else { /* sysenter and compat syscall: the vDSO pushed arg 6 (ebp) at [esp] */
            uint32_t x = 0;
            a[5] = qmem(v, reg(v, v->rsp) & 0xFFFFFFFFu, &x, 4) ? x : 0;
        }
    }
    for (int i = 0; i < sc->nargs && i < 6; i++) /* fds are C ints: sign-extend the low half */
        if (sc->args[i] == PV_ARG_FD || sc->args[i] == PV_ARG_DIRFD || sc->args[i] == PV_ARG_NEWFD)
            a[i] = (uint64_t)(int64_t)(int32_t)(uint32_t)a[i];

    if (__atomic_load_n(&banner_state, __ATOMIC_ACQUIRE) == 0) {
        pthread_mutex_lock(&lock);
        if (banner_state == 0)
            check_banner(v);
        pthread_mutex_unlock(&lock);
    }
    struct pv_event *e = &v->ev;
    pv_event_reset(e);
    e->phase = PV_ENTRY;
    e->vcpu = (uint16_t)idx;
    e->nr = sc->nr;
    memcpy(e->args, a, sizeof a);
    if (compat)
        e->flags |= PV_F_COMPAT;
    struct pv_task t = {0};
    uint64_t taddr = 0;
    if (pv_current_task(&v->lx, reg(v, v->kgs), &taddr))
        pv_task_read(&v->lx, taddr, &t);
    put_task(e, &t);
    if (t.ok)
        put_cwd(v, e, &t);
    read_entry(v, sc, e, &t, compat);
    ADD(decode_ns, now_ns(CLOCK_MONOTONIC) - t0);

    pthread_mutex_lock(&lock);
    e->ts_ns = now_ns(CLOCK_REALTIME);
    int64_t seq = append_locked(v);
    ADD(entries, 1);
    ADD(by_row[row], 1);
    if (seq > 0 && t.ok && !(sc->traits & PV_TRAIT_NO_RETURN)) {
        struct pending p = {.seq = (uint64_t)seq, .start_time = t.start_time, .pid = t.pid,
                            .row = row, .compat = compat,
                            .reread = (e->flags & PV_F_PATH_UNREADABLE) && sc->npaths};
        memcpy(p.args, a, sizeof a);
        pending_put(taddr, &p);
    }
    pthread_mutex_unlock(&lock);
}

static void on_return(unsigned int idx, void *udata)
{
    enum site site = (enum site)(uintptr_t)udata;
    if (atomic_load_explicit(&npending, memory_order_relaxed) == 0)
        return;
    if (idx >= nvcpus || !vcpus[idx].ready)
        return;
    struct vcpu *v = &vcpus[idx];
    if (site == SITE_IRET) { /* only a return to user mode ends a syscall */
        uint64_t cs = 0;
        if (!qmem(v, reg(v, v->rsp) + 8, &cs, 8) || (cs & 3) != 3)
            return;
    }
    uint64_t taddr;
    if (!pv_current_task(&v->lx, reg(v, v->kgs), &taddr))
        return;
    struct pending p;
    pthread_mutex_lock(&lock);
    bool found = pending_take(taddr, &p);
    pthread_mutex_unlock(&lock);
    if (!found)
        return;
    ADD(returns, 1);
    uint64_t t0 = now_ns(CLOCK_MONOTONIC);
    const struct pv_syscall *sc = &pv_syscalls[p.row];
    struct pv_task t;
    pv_task_read(&v->lx, taddr, &t);
    if (t.pid != p.pid || t.start_time != p.start_time) {
        ADD(stale, 1); /* its task died inside the call; the address is reused */
        return;
    }
    uint64_t rax = reg(v, v->rax);
    struct pv_event *e = &v->ev;
    pv_event_reset(e);
    e->phase = PV_EXIT;
    e->vcpu = (uint16_t)idx;
    e->nr = sc->nr;
    e->entry_seq = p.seq;
    memcpy(e->args, p.args, sizeof p.args);
    if (p.compat)
        e->flags |= PV_F_COMPAT;
    e->has_ret = 1;
    e->ret = p.compat ? (int64_t)(int32_t)(uint32_t)rax : (int64_t)rax;
    if (sc->traits & PV_TRAIT_MOVES_NAME)
        __atomic_add_fetch(&path_gen, 1, __ATOMIC_SEQ_CST); /* every vCPU's cached paths */
    put_task(e, &t);
    if (t.ok && p.reread)
        reread_paths(v, sc, e);
    if (t.ok)
        read_exit(v, sc, e, &t);
    ADD(decode_ns, now_ns(CLOCK_MONOTONIC) - t0);
    pthread_mutex_lock(&lock);
    e->ts_ns = now_ns(CLOCK_REALTIME);
    append_locked(v);
    ADD(exits, 1);
    pthread_mutex_unlock(&lock);
}

/* ------------------------------------------------------------------------ translate time */

static bool prefix(uint8_t b, bool rex)
{
    switch (b) {
    case 0x26: case 0x2e: case 0x36: case 0x3e: case 0x64: case 0x65:
    case 0x66: case 0x67: case 0xf0: case 0xf2: case 0xf3:
        return true;
    default:
        return rex && (b & 0xF0) == 0x40;
    }
}

/* Which site an instruction is: its opcode after any prefixes (a hostile program may prefix
 * `syscall`; QEMU decoded the boundaries, so every byte before the opcode is a prefix). */
static enum site classify(const uint8_t *b, size_t n, uint64_t vaddr)
{
    size_t i = 0;
    while (i < n && prefix(b[i], true))
        i++;
    if (i >= n)
        return 0;
    const uint8_t *op = b + i;
    size_t m = n - i;
    if (vaddr < USER_TOP) {
        if (m == 2 && op[0] == 0x0F && op[1] == 0x05)
            return SITE_SYSCALL;
        if (m == 2 && op[0] == 0x0F && op[1] == 0x34)
            return SITE_SYSENTER;
        if (m == 2 && op[0] == 0xCD && op[1] == 0x80)
            return SITE_INT80;
        return 0;
    }
    if (vaddr >= KERNEL_BOTTOM) {
        if (m == 2 && op[0] == 0x0F && (op[1] == 0x07 || op[1] == 0x35))
            return SITE_SYSRET; /* sysret, sysexit */
        if (m == 1 && op[0] == 0xCF)
            return SITE_IRET;
    }
    return 0;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint8_t b[16];
        size_t len = qemu_plugin_insn_data(insn, b, sizeof b);
        enum site s = classify(b, len, qemu_plugin_insn_vaddr(insn));
        if (!s)
            continue;
        qemu_plugin_register_vcpu_insn_exec_cb(
            insn, s >= SITE_SYSRET ? on_return : on_entry, QEMU_PLUGIN_CB_R_REGS,
            (void *)(uintptr_t)s);
    }
}

/* ------------------------------------------------------------------------ vCPUs, exit, install */

static struct qemu_plugin_register *find_reg(GArray *regs, const char *name)
{
    for (guint i = 0; i < regs->len; i++) {
        qemu_plugin_reg_descriptor *d = &g_array_index(regs, qemu_plugin_reg_descriptor, i);
        if (!strcmp(d->name, name))
            return d->handle;
    }
    return NULL;
}

static void vcpu_init(qemu_plugin_id_t id, unsigned int idx)
{
    (void)id;
    if (idx >= nvcpus)
        fatal("vCPU %u beyond the %u this plugin was installed for", idx, nvcpus);
    struct vcpu *v = &vcpus[idx];
    v->reg = g_byte_array_new();
    v->mem = g_byte_array_new();
    GArray *regs = qemu_plugin_get_registers();
    struct { struct qemu_plugin_register **h; const char *name; } want[] = {
        {&v->rax, "rax"}, {&v->rbx, "rbx"}, {&v->rcx, "rcx"}, {&v->rdx, "rdx"},
        {&v->rsi, "rsi"}, {&v->rdi, "rdi"}, {&v->rbp, "rbp"}, {&v->rsp, "rsp"},
        {&v->r8, "r8"}, {&v->r9, "r9"}, {&v->r10, "r10"}, {&v->cs, "cs"},
        {&v->kgs, "k_gs_base"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].h = find_reg(regs, want[i].name);
        if (!*want[i].h)
            fatal("QEMU exposes no register %s (an x86-64 system guest is needed)", want[i].name);
    }
    g_array_free(regs, TRUE);
    pv_linux_init(&v->lx, &off, &path_gen);
    v->lx.mem.read = qmem;
    v->lx.mem.ctx = v;
    v->payload_cap = pv_event_max();
    v->payload = malloc(v->payload_cap);
    v->path = malloc(PV_MAX_PATH);
    v->str = malloc(PV_MAX_STR + 1);
    if (pv_event_init(&v->ev) || !v->payload || !v->path || !v->str)
        fatal("out of memory");
    v->ready = true;
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id, (void)p;
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < nvcpus; i++) {
        ADD(reads, vcpus[i].lx.mem.reads);
        ADD(failed, vcpus[i].lx.mem.failed);
    }
    st.unmatched = (uint64_t)atomic_load(&npending);
    if (opt.hook_only)
        ring.fd = -1; /* never opened */
    write_stats(true);
    pv_ring_close(&ring);
    pthread_mutex_unlock(&lock);
}

static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(fmt, ap);
    va_end(ap);
    return -1;
}

static int set_path(char *dst, size_t cap, const char *v, const char *what)
{
    if (!*v || strlen(v) >= cap)
        return bad("plugin option %s: empty or too long", what);
    strcpy(dst, v);
    return 0;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    if (!info->system_emulation || strcmp(info->target_name, "x86_64"))
        return bad("the plugin needs qemu-system-x86_64 (got %s%s)", info->target_name,
                   info->system_emulation ? "" : ", user mode");
    for (int i = 0; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            return bad("plugin option %s: want key=value", argv[i]);
        *eq = 0;
        const char *k = argv[i], *val = eq + 1;
        int rc = 0;
        if (!strcmp(k, "ring"))
            rc = set_path(opt.ring, sizeof opt.ring, val, k);
        else if (!strcmp(k, "offsets"))
            rc = set_path(opt.offsets, sizeof opt.offsets, val, k);
        else if (!strcmp(k, "stats"))
            rc = set_path(opt.stats, sizeof opt.stats, val, k);
        else if (!strcmp(k, "policy")) {
            if (!strcmp(val, "block")) opt.policy = PV_POLICY_BLOCK;
            else if (!strcmp(val, "drop")) opt.policy = PV_POLICY_DROP;
            else if (!strcmp(val, "fail")) opt.policy = PV_POLICY_FAIL;
            else rc = bad("plugin option policy=%s: want block, drop or fail", val);
        } else if (!strcmp(k, "envp") || !strcmp(k, "mode")) {
            bool on = !strcmp(k, "envp") ? !strcmp(val, "on") : !strcmp(val, "hook");
            bool known = !strcmp(k, "envp") ? on || !strcmp(val, "off")
                                            : on || !strcmp(val, "trace");
            if (!known)
                rc = bad("plugin option %s=%s: unknown value", k, val);
            else if (!strcmp(k, "envp"))
                opt.envp = on;
            else
                opt.hook_only = on;
        } else
            rc = bad("unknown plugin option %s", k);
        if (rc)
            return rc;
    }
    if (!opt.ring[0] || !opt.offsets[0])
        return bad("the plugin needs ring=PATH and offsets=PATH");
    char err[512];
    if (pv_offsets_load(&off, opt.offsets, err, sizeof err))
        return bad("%s", err);
    for (int i = 0; i < NR_LIMIT; i++)
        by_nr64[i] = by_nr32[i] = -1;
    for (int i = 0; i < PV_SYSCALL_COUNT; i++) {
        if (pv_syscalls[i].nr < NR_LIMIT)
            by_nr64[pv_syscalls[i].nr] = (int16_t)i;
        if (pv_syscalls[i].nr32 >= 0 && pv_syscalls[i].nr32 < NR_LIMIT)
            by_nr32[pv_syscalls[i].nr32] = (int16_t)i;
    }
    if (!opt.hook_only && pv_ring_open(&ring, opt.ring, opt.policy, err, sizeof err))
        return bad("%s", err);
    nvcpus = (unsigned)(info->system.max_vcpus > 0 ? info->system.max_vcpus : 1);
    vcpus = calloc(nvcpus, sizeof *vcpus);
    if (!vcpus)
        return bad("out of memory");
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    write_stats(false);
    return 0;
}
