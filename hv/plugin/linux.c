/* See linux.h: the walks of hv/linux.py, bound for bound. */
#include "linux.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE 4096u
#define MIN3(a, b, c) ((a) < (b) ? ((a) < (c) ? (a) : (c)) : ((b) < (c) ? (b) : (c)))

bool pv_kernel_ptr(uint64_t v) { return v >= 0xFFFF800000000000ull; }
bool pv_user_ptr(uint64_t v) { return v != 0 && v < 0x0000800000000000ull; }

static bool rd(struct pv_linux *lx, uint64_t va, void *buf, size_t n)
{
    lx->mem.reads++;
    if (n == 0)
        return true;
    if (va + n < va) { /* wraps the address space */
        lx->mem.failed++;
        return false;
    }
    if (!lx->mem.read(lx->mem.ctx, va, buf, n)) {
        lx->mem.failed++;
        return false;
    }
    return true;
}

bool pv_read_u64(struct pv_linux *lx, uint64_t va, uint64_t *out) { return rd(lx, va, out, 8); }
bool pv_read_u32(struct pv_linux *lx, uint64_t va, uint32_t *out) { return rd(lx, va, out, 4); }

/* a u64 at va that must be a kernel pointer */
static bool kptr(struct pv_linux *lx, uint64_t va, uint64_t *out)
{
    return pv_kernel_ptr(va) && rd(lx, va, out, 8) && pv_kernel_ptr(*out);
}

void pv_linux_init(struct pv_linux *lx, const struct pv_offsets *o,
                   const volatile uint64_t *path_gen)
{
    memset(lx, 0, sizeof *lx);
    lx->o = o;
    lx->path_gen = path_gen;
    int64_t f[] = {o->task_pid, o->task_tgid, o->task_comm, o->task_real_parent, o->task_cred,
                   o->task_start_time, o->task_fs, o->task_files, o->task_mm};
    int64_t lo = f[0], hi = f[0];
    for (size_t i = 1; i < sizeof f / sizeof f[0]; i++) {
        lo = f[i] < lo ? f[i] : lo;
        hi = f[i] > hi ? f[i] : hi;
    }
    lx->task_lo = (uint64_t)lo;
    lx->task_len = (uint64_t)(hi + 16 - lo);
    int64_t a = o->dentry_d_parent, b = o->dentry_d_name + o->qstr_len,
            c = o->dentry_d_name + o->qstr_name;
    int64_t dlo = MIN3(a, b, c), dhi = a > b ? (a > c ? a : c) : (b > c ? b : c);
    lx->dkey_lo = (uint64_t)dlo;
    lx->dkey_len = (uint64_t)(dhi + 8 - dlo);
    int64_t cr[8] = {o->cred_uid, o->cred_gid, o->cred_suid, o->cred_sgid, o->cred_euid,
                     o->cred_egid, o->cred_fsuid, o->cred_fsgid};
    int64_t clo = cr[0], chi = cr[0];
    for (int i = 0; i < 8; i++) {
        lx->cred_off[i] = cr[i];
        clo = cr[i] < clo ? cr[i] : clo;
        chi = cr[i] > chi ? cr[i] : chi;
    }
    lx->cred_lo = clo;
    lx->cred_len = (uint64_t)(chi + 4 - clo); /* <= 0x10004: offsets are bounded */
}

void pv_linux_free(struct pv_linux *lx)
{
    for (int i = 0; i < PV_PATH_CACHE; i++)
        free(lx->cache[i].path);
    memset(lx->cache, 0, sizeof lx->cache);
}

bool pv_current_task(struct pv_linux *lx, uint64_t percpu, uint64_t *task)
{
    return pv_kernel_ptr(percpu) && kptr(lx, percpu + lx->o->current_task, task);
}

static uint64_t at64(const uint8_t *blob, int64_t off, uint64_t lo)
{
    uint64_t v;
    memcpy(&v, blob + (off - (int64_t)lo), 8);
    return v;
}

static uint32_t at32(const uint8_t *blob, int64_t off, uint64_t lo)
{
    uint32_t v;
    memcpy(&v, blob + (off - (int64_t)lo), 4);
    return v;
}

void pv_task_read(struct pv_linux *lx, uint64_t addr, struct pv_task *t)
{
    const struct pv_offsets *o = lx->o;
    memset(t, 0, sizeof *t);
    t->addr = addr;
    uint8_t stackblob[4096], *blob = stackblob;
    if (lx->task_len > sizeof stackblob) {
        blob = malloc(lx->task_len);
        if (!blob)
            return;
    }
    uint64_t lo = lx->task_lo;
    if (!pv_kernel_ptr(addr) || !rd(lx, addr + lo, blob, lx->task_len))
        goto out;
    t->pid = at32(blob, o->task_pid, lo);
    t->tgid = at32(blob, o->task_tgid, lo);
    t->start_time = at64(blob, o->task_start_time, lo);
    const uint8_t *comm = blob + (o->task_comm - (int64_t)lo);
    t->comm_len = 0;
    while (t->comm_len < 16 && comm[t->comm_len])
        t->comm_len++;
    memcpy(t->comm, comm, t->comm_len);
    t->fs = at64(blob, o->task_fs, lo);
    t->files = at64(blob, o->task_files, lo);
    t->mm = at64(blob, o->task_mm, lo);
    uint64_t parent = at64(blob, o->task_real_parent, lo), cred = at64(blob, o->task_cred, lo);
    if (!pv_kernel_ptr(parent) || !pv_read_u32(lx, parent + o->task_tgid, &t->ppid))
        goto out;
    if (!pv_kernel_ptr(cred) || !rd(lx, cred + lx->cred_lo, lx->credblob, lx->cred_len))
        goto out;
    for (int i = 0; i < 8; i++)
        memcpy(&t->cred[i], lx->credblob + (lx->cred_off[i] - lx->cred_lo), 4);
    t->uid = t->cred[0];
    t->ok = true;
out:
    if (blob != stackblob)
        free(blob);
}

/* a dentry's name: its length, or -1 */
static int qstr(struct pv_linux *lx, uint64_t dentry, uint8_t *out)
{
    const struct pv_offsets *o = lx->o;
    uint64_t q = dentry + o->dentry_d_name, name;
    uint32_t n;
    if (!pv_read_u32(lx, q + o->qstr_len, &n) || n > PV_MAX_NAME)
        return -1;
    if (n == 0)
        return 0;
    if (!kptr(lx, q + o->qstr_name, &name) || !rd(lx, name, out, n))
        return -1;
    return (int)n;
}

#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000
#define S_IFIFO_ 0010000

/* a file outside the namespace's tree, named as hv/linux.py _pseudo names it: socket:[ino] by
 * the inode's mode, a dentry name with a ':', pipe:[ino] for a FIFO, else anon:[ino] */
static int pseudo(struct pv_linux *lx, uint64_t dentry, uint8_t *out)
{
    uint64_t inode, ino = 0;
    uint16_t mode = 0;
    if (kptr(lx, dentry + lx->o->dentry_d_inode, &inode) &&
        pv_read_u64(lx, inode + lx->o->inode_i_ino, &ino)) {
        if (!rd(lx, inode + lx->o->inode_i_mode, &mode, 2))
            mode = 0;
    } else {
        ino = 0;
    }
    if ((mode & S_IFMT_) == S_IFSOCK_)
        return snprintf((char *)out, 64, "socket:[%llu]", (unsigned long long)ino);
    int n = qstr(lx, dentry, out);
    if (n > 0 && memchr(out, ':', (size_t)n))
        return n;
    return snprintf((char *)out, 64, (mode & S_IFMT_) == S_IFIFO_ ? "pipe:[%llu]" : "anon:[%llu]",
                    (unsigned long long)ino);
}

static int walk(struct pv_linux *lx, uint64_t mnt, uint64_t dentry, uint64_t root_mount,
                bool have_root, uint8_t *out, uint32_t *mnt_id)
{
    const struct pv_offsets *o = lx->o;
    *mnt_id = 0;
    if (!pv_kernel_ptr(mnt) || !pv_kernel_ptr(dentry))
        return -1;
    uint64_t mount = mnt - (uint64_t)o->mount_mnt;
    if (!pv_read_u32(lx, mount + o->mount_mnt_id, mnt_id))
        return -1;
    /* names are gathered leaf first at the end of a scratch area, then joined root first */
    static __thread uint8_t names[PV_MAX_DEPTH][PV_MAX_NAME];
    int lens[PV_MAX_DEPTH];
    uint64_t seen_d[PV_MAX_DEPTH + PV_MAX_MOUNTS + 2], seen_m[PV_MAX_DEPTH + PV_MAX_MOUNTS + 2];
    int nseen = 0, depth = 0, crossings = 0;
    uint64_t start = dentry;
    for (;;) {
        for (int i = 0; i < nseen; i++)
            if (seen_d[i] == dentry && seen_m[i] == mount)
                return -1; /* a cycle */
        if (nseen == (int)(sizeof seen_d / sizeof seen_d[0]))
            return -1;
        seen_d[nseen] = dentry, seen_m[nseen] = mount, nseen++;
        uint64_t mnt_root, parent;
        if (!kptr(lx, mount + o->mount_mnt + o->vfsmount_mnt_root, &mnt_root) ||
            !kptr(lx, dentry + o->dentry_d_parent, &parent))
            return -1;
        if (dentry == mnt_root || parent == dentry) {
            uint64_t up;
            if (!kptr(lx, mount + o->mount_mnt_parent, &up))
                return -1;
            if (up == mount) { /* the top of a mount tree */
                if (have_root && mount != root_mount - (uint64_t)o->mount_mnt)
                    return pseudo(lx, start, out);
                break;
            }
            if (++crossings > PV_MAX_MOUNTS)
                return -1;
            if (!kptr(lx, mount + o->mount_mnt_mountpoint, &dentry))
                return -1;
            mount = up;
            continue;
        }
        if (depth >= PV_MAX_DEPTH)
            return -1;
        int n = qstr(lx, dentry, names[depth]);
        if (n < 0)
            return -1;
        lens[depth++] = n;
        dentry = parent;
    }
    uint32_t len = 0;
    if (depth == 0)
        out[len++] = '/';
    for (int i = depth - 1; i >= 0; i--) {
        out[len++] = '/';
        memcpy(out + len, names[i], (size_t)lens[i]);
        len += (uint32_t)lens[i];
    }
    return (int)len;
}

static uint32_t slot_of(uint64_t mnt, uint64_t dentry, uint64_t root)
{
    uint64_t h = (mnt ^ (dentry * 0x9E3779B97F4A7C15ull) ^ (root << 7)) >> 4;
    return (uint32_t)(h ^ (h >> 17)) % PV_PATH_CACHE;
}

int pv_path_of(struct pv_linux *lx, uint64_t mnt, uint64_t dentry, uint64_t root_mount,
               bool have_root, uint8_t *out, uint32_t *mnt_id)
{
    uint64_t root = have_root ? root_mount : 1; /* 1: no root (never a mount address) */
    uint64_t gen = lx->path_gen ? *lx->path_gen : 0;
    struct pv_path_entry *e = &lx->cache[slot_of(mnt, dentry, root)];
    uint8_t key[32];
    bool have_key = lx->dkey_len <= sizeof key && pv_kernel_ptr(dentry) &&
                    rd(lx, dentry + lx->dkey_lo, key, lx->dkey_len);
    if (have_key && e->path && e->mnt == mnt && e->dentry == dentry && e->root == root &&
        e->gen == gen && e->key_len == lx->dkey_len && !memcmp(e->key, key, e->key_len)) {
        memcpy(out, e->path, e->len);
        *mnt_id = e->mnt_id;
        return (int)e->len;
    }
    int n = walk(lx, mnt, dentry, root_mount, have_root, out, mnt_id);
    /* only real paths: a pseudo name ("pipe:[ino]") comes from the inode, and a freed pipe or
     * socket dentry reused at the same address keeps its parent and empty name */
    if (n > 0 && out[0] == '/' && have_key) {
        uint8_t *copy = realloc(e->path, (size_t)n + 1);
        if (copy) {
            memcpy(copy, out, (size_t)n);
            e->path = copy;
            e->len = (uint32_t)n;
            e->mnt = mnt, e->dentry = dentry, e->root = root, e->gen = gen;
            e->mnt_id = *mnt_id;
            e->key_len = (uint32_t)lx->dkey_len;
            memcpy(e->key, key, lx->dkey_len);
        }
    }
    return n;
}

static bool root_mount(struct pv_linux *lx, uint64_t fs, uint64_t *root)
{
    return pv_kernel_ptr(fs) && kptr(lx, fs + lx->o->fs_root + lx->o->path_mnt, root);
}

int pv_cwd(struct pv_linux *lx, const struct pv_task *t, uint8_t *out, uint32_t *mnt_id)
{
    const struct pv_offsets *o = lx->o;
    uint64_t mnt, dentry, root = 0;
    *mnt_id = 0;
    if (!pv_kernel_ptr(t->fs))
        return -1;
    uint64_t pwd = t->fs + o->fs_pwd;
    if (!kptr(lx, pwd + o->path_mnt, &mnt) || !kptr(lx, pwd + o->path_dentry, &dentry))
        return -1;
    bool have_root = root_mount(lx, t->fs, &root);
    return pv_path_of(lx, mnt, dentry, root, have_root, out, mnt_id);
}

static uint64_t encode_dev(uint32_t kdev)
{
    uint64_t major = kdev >> 20, minor = kdev & 0xFFFFF;
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFFull) << 12);
}

/* (st_dev, inode number, path) of a struct file: 1, or -1 */
static int file_id(struct pv_linux *lx, const struct pv_task *t, uint64_t f, uint64_t *dev,
                   uint64_t *ino, uint8_t *path, uint32_t *plen)
{
    const struct pv_offsets *o = lx->o;
    uint64_t inode, sb, mnt, dentry, root = 0;
    uint32_t kdev, mnt_id;
    if (!kptr(lx, f + o->file_f_inode, &inode) || !pv_read_u64(lx, inode + o->inode_i_ino, ino) ||
        !kptr(lx, inode + o->inode_i_sb, &sb) || !pv_read_u32(lx, sb + o->sb_s_dev, &kdev) ||
        !pv_read_u64(lx, f + o->file_f_path + o->path_mnt, &mnt) ||
        !pv_read_u64(lx, f + o->file_f_path + o->path_dentry, &dentry))
        return -1;
    *dev = encode_dev(kdev);
    bool have_root = root_mount(lx, t->fs, &root);
    int n = pv_path_of(lx, mnt, dentry, root, have_root, path, &mnt_id);
    *plen = n < 0 ? 0 : (uint32_t)n;
    return 1;
}

int pv_fd_file(struct pv_linux *lx, const struct pv_task *t, int64_t fd, uint64_t *dev,
               uint64_t *ino, uint8_t *path, uint32_t *plen, uint64_t *file)
{
    const struct pv_offsets *o = lx->o;
    if (fd < 0 || fd >= PV_MAX_FDS)
        return 0;
    uint64_t fdt, arr, f;
    uint32_t max_fds;
    if (!pv_kernel_ptr(t->files) || !kptr(lx, t->files + o->files_fdt, &fdt) ||
        !pv_read_u32(lx, fdt + o->fdt_max_fds, &max_fds))
        return -1;
    if ((uint64_t)fd >= max_fds)
        return 0;
    if (!kptr(lx, fdt + o->fdt_fd, &arr) || !pv_read_u64(lx, arr + 8 * (uint64_t)fd, &f))
        return -1;
    if (f == 0)
        return 0;
    if (!pv_kernel_ptr(f))
        return -1;
    *file = f;
    return file_id(lx, t, f, dev, ino, path, plen);
}

static bool rd16(struct pv_linux *lx, uint64_t va, uint16_t *out) { return rd(lx, va, out, 2); }

static const char hexd[] = "0123456789abcdef";

static uint32_t put_hex16(uint8_t *out, uint16_t v)
{
    uint32_t n = 0;
    bool lead = true;
    for (int sh = 12; sh >= 0; sh -= 4) {
        int d = (v >> sh) & 15;
        if (lead && d == 0 && sh)
            continue;
        lead = false;
        out[n++] = (uint8_t)hexd[d];
    }
    return n;
}

uint32_t pv_inet_text(uint16_t family, const uint8_t *addr, uint16_t port, uint8_t *out)
{
    int alen = family == 2 ? 4 : 16;
    bool any = false;
    for (int i = 0; i < alen; i++)
        any |= addr[i] != 0;
    if (!any && port == 0)
        return 0;
    char *o = (char *)out;
    if (family == 2)
        return (uint32_t)snprintf(o, 48, "%u.%u.%u.%u:%u", addr[0], addr[1], addr[2], addr[3],
                                  port);
    uint16_t g[8];
    for (int i = 0; i < 8; i++)
        g[i] = (uint16_t)(addr[2 * i] << 8 | addr[2 * i + 1]);
    int best = -1, blen = 1;
    for (int i = 0; i < 8;) { /* the longest run of >= 2 zero groups, the first of equals */
        if (g[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !g[j])
            j++;
        if (j - i > blen)
            best = i, blen = j - i;
        i = j;
    }
    uint32_t n = 0;
    out[n++] = '[';
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            out[n++] = ':';
            out[n++] = ':';
            i += blen - 1;
            continue;
        }
        if (i && i != best + blen)
            out[n++] = ':';
        n += put_hex16(out + n, g[i]);
    }
    n += (uint32_t)snprintf(o + n, 48 - n, "]:%u", port);
    return n;
}

int pv_sockaddr_text(const uint8_t *raw, uint32_t n, uint16_t *family, uint8_t *out)
{
    if (n < 2)
        return -1;
    uint16_t fam = (uint16_t)(raw[0] | raw[1] << 8);
    uint16_t port = n >= 4 ? (uint16_t)(raw[2] << 8 | raw[3]) : 0;
    *family = fam;
    if (fam == 2 && n >= 16)
        return (int)pv_inet_text(2, raw + 4, port, out);
    if (fam == 10 && n >= 24)
        return (int)pv_inet_text(10, raw + 8, port, out);
    if (fam == 1) {
        uint32_t len = n - 2 < PV_MAX_SUN_PATH ? n - 2 : PV_MAX_SUN_PATH;
        if (len && raw[2]) { /* a path: up to its NUL; an abstract name keeps every byte */
            const uint8_t *z = memchr(raw + 2, 0, len);
            if (z)
                len = (uint32_t)(z - (raw + 2));
        }
        memcpy(out, raw + 2, len);
        return (int)len;
    }
    return -1;
}

int pv_user_sockaddr(struct pv_linux *lx, uint64_t va, uint64_t size, uint16_t *family,
                     uint8_t *out)
{
    uint32_t n = (uint32_t)size; /* a C int */
    if (va == 0 || n < 2 || n >= 1u << 31)
        return 0;
    if (n > PV_MAX_SOCKADDR)
        n = PV_MAX_SOCKADDR;
    uint8_t raw[PV_MAX_SOCKADDR];
    if (!pv_user_ptr(va) || !rd(lx, va, raw, n))
        return -1;
    int len = pv_sockaddr_text(raw, n, family, out);
    return len < 0 ? 0 : len + 1;
}

/* the bound address of a unix socket: its length in out, 0 unbound, -1 unreadable */
static int unix_addr(struct pv_linux *lx, uint64_t sk, uint8_t *out)
{
    const struct pv_offsets *o = lx->o;
    uint64_t addr;
    uint32_t n;
    if (o->unix_addr < 0 || o->unix_address_len < 0 || o->unix_address_name < 0 ||
        o->sun_path < 0)
        return -1;
    if (!pv_read_u64(lx, sk + o->unix_addr, &addr))
        return -1;
    if (addr == 0)
        return 0;
    if (!pv_kernel_ptr(addr) || !pv_read_u32(lx, addr + o->unix_address_len, &n) || n < 2 ||
        n > 2 + PV_MAX_SUN_PATH)
        return -1;
    n -= 2;
    if (!rd(lx, addr + o->unix_address_name + o->sun_path, out, n))
        return -1;
    if (n && out[0]) { /* a path: up to its NUL; an abstract name keeps every byte */
        uint8_t *z = memchr(out, 0, n);
        if (z)
            n = (uint32_t)(z - out);
    }
    return (int)n;
}

bool pv_socket_of(struct pv_linux *lx, uint64_t file, struct pv_endpoint *ep)
{
    const struct pv_offsets *o = lx->o;
    uint64_t sock, sk;
    uint64_t inode;
    uint16_t mode;
    memset(ep, 0, sizeof *ep);
    if (!kptr(lx, file + o->file_f_inode, &inode) || !rd(lx, inode + o->inode_i_mode, &mode, 2) ||
        (mode & S_IFMT_) != S_IFSOCK_) /* a name that only looks like a socket's */
        return false;
    if (!kptr(lx, file + o->file_private_data, &sock) || !kptr(lx, sock + o->socket_sk, &sk))
        return false;
    uint64_t c = sk + (uint64_t)o->sock_sk_common;
    uint8_t la[16], ra[16], pb[2];
    uint16_t num;
    if (!rd16(lx, c + o->skc_family, &ep->family) || !rd16(lx, sk + o->sock_sk_type, &ep->type))
        return false;
    ep->sk = sk;
    if (ep->family == 2 || ep->family == 10) {
        bool v6 = ep->family == 10;
        if (v6 && (o->skc_v6_rcv_saddr < 0 || o->skc_v6_daddr < 0))
            return false;
        int64_t lo = v6 ? o->skc_v6_rcv_saddr : o->skc_rcv_saddr;
        int64_t ro = v6 ? o->skc_v6_daddr : o->skc_daddr;
        size_t alen = v6 ? 16 : 4;
        if (!rd(lx, c + lo, la, alen) || !rd16(lx, c + o->skc_num, &num) ||
            !rd(lx, c + ro, ra, alen) || !rd(lx, c + o->skc_dport, pb, 2))
            return false;
        ep->local_len = pv_inet_text(ep->family, la, num, ep->local);      /* host order */
        ep->remote_len = pv_inet_text(ep->family, ra, (uint16_t)(pb[0] << 8 | pb[1]),
                                      ep->remote);                          /* network order */
    } else if (ep->family == 1) {
        if (o->unix_peer < 0)
            return false;
        int n = unix_addr(lx, sk, ep->local);
        if (n < 0 || !pv_read_u64(lx, sk + o->unix_peer, &ep->peer))
            return false;
        ep->local_len = (uint32_t)n;
        if (ep->peer) {
            if (!pv_kernel_ptr(ep->peer) || (n = unix_addr(lx, ep->peer, ep->remote)) < 0)
                return false;
            ep->remote_len = (uint32_t)n;
        }
    }
    return true;
}

int pv_exe_file(struct pv_linux *lx, const struct pv_task *t, uint64_t *dev, uint64_t *ino,
                uint8_t *path, uint32_t *plen)
{
    const struct pv_offsets *o = lx->o;
    uint64_t mm, f;
    if (o->mm_exe_file < 0)
        return 0;
    if (!pv_kernel_ptr(t->addr) || !kptr(lx, t->addr + o->task_mm, &mm) ||
        !pv_read_u64(lx, mm + o->mm_exe_file, &f))
        return 0;
    if (f == 0 || !pv_kernel_ptr(f))
        return 0;
    return file_id(lx, t, f, dev, ino, path, plen) == 1 ? 1 : 0;
}

int pv_user_string(struct pv_linux *lx, uint64_t va, uint8_t *out, uint32_t limit, bool *trunc)
{
    *trunc = false;
    if (!pv_user_ptr(va))
        return -1;
    uint32_t len = 0;
    while (len < limit) {
        uint32_t chunk = PAGE - (uint32_t)(va & (PAGE - 1));
        if (chunk > limit - len)
            chunk = limit - len;
        if (!rd(lx, va, out + len, chunk))
            return -1;
        uint8_t *z = memchr(out + len, 0, chunk);
        if (z)
            return (int)(z - out);
        len += chunk;
        va += chunk;
    }
    *trunc = true;
    return (int)len;
}
