/* The Linux layer of the plugin: the calling task's identity, CWD, open files and user strings
 * read from guest memory, the C twin of hv/linux.py (same walks, same bounds, same results).
 *
 * Guest memory is hostile input. Every read goes through the pv_mem seam (QEMU's
 * qemu_plugin_read_memory_vaddr in the plugin, garbage in the fuzzer); a failed read is a
 * normal outcome that makes the field unreadable, never a guess. Every loop is bounded
 * (string bytes, dentry depth, mount crossings, argv count and bytes, fd numbers), every
 * pointer is checked to be a kernel or user pointer before it is followed, and path walks
 * detect cycles. */
#ifndef PV_LINUX_H
#define PV_LINUX_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "offsets.h"

#define PV_MAX_STR 4096
#define PV_MAX_DEPTH 64
#define PV_MAX_MOUNTS 16
#define PV_MAX_ARGV 256
#define PV_MAX_ARGV_BYTES (32 * 1024)
#define PV_MAX_NAME 255
#define PV_MAX_FDS (1 << 20)
#define PV_MAX_PATH (PV_MAX_DEPTH * (PV_MAX_NAME + 1) + 64)
#define PV_PATH_CACHE 512

struct pv_mem {
    /* read n bytes of guest virtual memory at va into buf: true, or false if unreadable */
    bool (*read)(void *ctx, uint64_t va, void *buf, size_t n);
    void *ctx;
    uint64_t reads, failed;
};

struct pv_task {
    uint64_t addr;
    uint32_t pid, tgid, ppid, uid;
    uint64_t start_time;
    uint8_t comm[16];
    uint32_t comm_len;
    uint64_t fs, files, mm;
    uint32_t cred[8]; /* uid gid suid sgid euid egid fsuid fsgid: valid when ok */
    bool ok;
};

#define PV_MAX_SUN_PATH 108 /* sizeof sockaddr_un.sun_path: the bound on a unix address */
#define PV_MAX_ADDR 108     /* the longest local or remote text (hv/linux.py the same) */
#define PV_MAX_SOCKADDR 128 /* sizeof struct sockaddr_storage: the most of an address read */
#define PV_SOCKET_PREFIX "socket:["

/* What a socket file is connected to (events.Endpoint but its file index). */
struct pv_endpoint {
    uint16_t family, type;
    uint64_t sk, peer;
    uint8_t local[PV_MAX_ADDR], remote[PV_MAX_ADDR];
    uint32_t local_len, remote_len;
};

struct pv_path_entry {
    uint64_t mnt, dentry, root, gen;
    uint8_t key[32];   /* the dentry's parent pointer and name, when cached */
    uint32_t key_len, len, mnt_id;
    uint8_t *path;     /* malloc'd, len bytes */
};

/* Per-vCPU state of the layer: the memory seam, scratch, the path cache. */
struct pv_linux {
    const struct pv_offsets *o;
    struct pv_mem mem;
    const volatile uint64_t *path_gen; /* bumped by whoever renames: cached paths expire */
    struct pv_path_entry cache[PV_PATH_CACHE];
    uint64_t task_lo, task_len, dkey_lo, dkey_len;
    int64_t cred_off[8], cred_lo;
    uint64_t cred_len;
    uint8_t credblob[0x10000 + 8]; /* member offsets are at most 0x10000 (offsets.c) */
    uint8_t scratch[PV_MAX_STR + 1];
};

void pv_linux_init(struct pv_linux *lx, const struct pv_offsets *o,
                   const volatile uint64_t *path_gen);
void pv_linux_free(struct pv_linux *lx);

bool pv_kernel_ptr(uint64_t v);
bool pv_user_ptr(uint64_t v);
bool pv_read_u64(struct pv_linux *lx, uint64_t va, uint64_t *out);
bool pv_read_u32(struct pv_linux *lx, uint64_t va, uint32_t *out);

/* The running task: *(percpu + current_task); false if unreadable. */
bool pv_current_task(struct pv_linux *lx, uint64_t percpu, uint64_t *task);
/* Identity of a task; t->ok false when its memory cannot be read. */
void pv_task_read(struct pv_linux *lx, uint64_t addr, struct pv_task *t);
/* Absolute path of (vfsmount, dentry) into out (cap >= PV_MAX_PATH): its length, or -1
 * (unreadable, too deep, a cycle). *mnt_id gets the mount's id. */
int pv_path_of(struct pv_linux *lx, uint64_t mnt, uint64_t dentry, uint64_t root_mount,
               bool have_root, uint8_t *out, uint32_t *mnt_id);
/* The CWD path of a task (as pv_path_of). */
int pv_cwd(struct pv_linux *lx, const struct pv_task *t, uint8_t *out, uint32_t *mnt_id);
/* The file open as fd: 1 (dev, ino, path; *file its struct file), 0 not open, -1 unreadable. */
int pv_fd_file(struct pv_linux *lx, const struct pv_task *t, int64_t fd, uint64_t *dev,
               uint64_t *ino, uint8_t *path, uint32_t *plen, uint64_t *file);
/* The endpoint of a socket's struct file (file->private_data -> sk): true, or false when
 * anything is unreadable or the offsets lack what its family needs (hv/linux.py socket_of). */
bool pv_socket_of(struct pv_linux *lx, uint64_t file, struct pv_endpoint *ep);
/* "a.b.c.d:port" / "[v6]:port" (RFC 5952, as hv/linux.py inet_text), "" for the unset
 * address and port; its length (out holds at least 48 bytes). */
uint32_t pv_inet_text(uint16_t family, const uint8_t *addr, uint16_t port, uint8_t *out);
/* The text of the n bytes of a socket address a caller passed (hv/linux.py sockaddr_text):
 * its length in out (at most PV_MAX_ADDR), *family set; -1 for no address of a known family
 * (n < 2, another family, shorter than sockaddr_in / sockaddr_in6 without scope id). */
int pv_sockaddr_text(const uint8_t *raw, uint32_t n, uint16_t *family, uint8_t *out);
/* The socket address argument at va of size bytes (a C int; at most PV_MAX_SOCKADDR read):
 * 1 + its text length in out (PV_MAX_ADDR bytes), 0 nothing to record (NULL, size below 2,
 * unknown family), -1 unreadable (hv/linux.py Linux.user_sockaddr). */
int pv_user_sockaddr(struct pv_linux *lx, uint64_t va, uint64_t size, uint16_t *family,
                     uint8_t *out);
/* The task's executable (mm->exe_file, re-read): 1, 0 (none or unknown), -1 unreadable. */
int pv_exe_file(struct pv_linux *lx, const struct pv_task *t, uint64_t *dev, uint64_t *ino,
                uint8_t *path, uint32_t *plen);
/* A NUL-terminated user string: its length (bytes in out, at most limit), or -1 if
 * unreadable; *trunc when the limit cut it. */
int pv_user_string(struct pv_linux *lx, uint64_t va, uint8_t *out, uint32_t limit, bool *trunc);

#endif
