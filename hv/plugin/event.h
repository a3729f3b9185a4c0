/* The EVENT payload of provisor/events.py (version 1), built in place: the fixed 112-byte
 * struct, then tagged, length-prefixed fields in the order events.encode writes them (comm,
 * cwd, paths, argv, envp, files, out fds, cred, sockets, address). Guest strings are copied as the
 * guest's bytes. */
#ifndef PV_EVENT_H
#define PV_EVENT_H
#include <stddef.h>
#include <stdint.h>

#define PV_EV_FIXED 112u
#define PV_EV_MAX_FIELD 0xFFFFu

enum { PV_ENTRY = 0, PV_EXIT = 1 };

/* flags (provisor/events.py) */
#define PV_F_HAS_RET (1u << 0)
#define PV_F_CWD_UNREADABLE (1u << 1)
#define PV_F_PATH_UNREADABLE (1u << 2)
#define PV_F_ARGV_UNREADABLE (1u << 3)
#define PV_F_TASK_UNREADABLE (1u << 4)
#define PV_F_FILE_UNREADABLE (1u << 5)
#define PV_F_TRUNCATED (1u << 6)
#define PV_F_COMPAT (1u << 7)
#define PV_F_SOCK_UNREADABLE (1u << 8)
#define PV_F_ADDR_UNREADABLE (1u << 9)

enum { PV_T_COMM = 1, PV_T_CWD, PV_T_PATH, PV_T_ARGV, PV_T_ENVP, PV_T_FILE, PV_T_OUTFD,
       PV_T_CRED, PV_T_SOCK, PV_T_ADDR };
#define PV_N_SECTIONS 11 /* indexed by tag; 0 unused */
#define PV_ADDR_MAX_TEXT 108u /* an ADDR field's text (events.MAX_SOCK_ADDR) */
#define PV_SOCK_HEAD 24u /* u16 file, family, type, local length; u64 sk, peer */

/* One growable-but-bounded byte section per tag, joined at the end. */
struct pv_sect {
    uint8_t *buf;
    uint32_t len, cap;
};

struct pv_event {
    uint8_t phase;
    uint16_t vcpu, nr, flags;
    uint64_t entry_seq, ts_ns;
    uint32_t tgid, pid, ppid, uid;
    uint64_t start_time;
    int has_ret;
    int64_t ret;
    uint64_t cwd_mnt;
    uint64_t args[6];
    uint32_t nfiles; /* FILE fields kept: the index a SOCK field names */
    struct pv_sect sect[PV_N_SECTIONS];
};

/* Allocate the sections (caps in bytes, per tag); 0 or -1. */
int pv_event_init(struct pv_event *e);
void pv_event_free(struct pv_event *e);
/* Clear for a new event (keeps the buffers). */
void pv_event_reset(struct pv_event *e);
/* Add a field; a value longer than 65535 bytes is cut (PV_F_TRUNCATED), and a field that does
 * not fit its section is left out with PV_F_TRUNCATED. The FILE field is dev, ino, path. */
void pv_event_put(struct pv_event *e, int tag, const void *data, size_t n);
/* returns whether the FILE field was kept (e->nfiles counts them) */
int pv_event_put_file(struct pv_event *e, uint64_t dev, uint64_t ino, const void *path,
                      size_t n);
void pv_event_put_fd(struct pv_event *e, int32_t fd);
/* The CRED field (uid gid suid sgid euid egid fsuid fsgid); a second one is ignored. */
void pv_event_put_cred(struct pv_event *e, const uint32_t cred[8]);
/* A SOCK field describing FILE field number `file`; local and remote at most 255 bytes. */
void pv_event_put_sock(struct pv_event *e, uint16_t file, uint16_t family, uint16_t type,
                       uint64_t sk, uint64_t peer, const void *local, size_t nl,
                       const void *remote, size_t nr);
/* The ADDR field (u16 family, the address text, at most PV_ADDR_MAX_TEXT bytes: a longer one
 * is left out with PV_F_TRUNCATED); a second one is ignored. */
void pv_event_put_addr(struct pv_event *e, uint16_t family, const void *text, size_t n);
/* Encode into out (capacity cap); returns the payload length. */
size_t pv_event_encode(struct pv_event *e, uint8_t *out, size_t cap);
/* The largest payload pv_event_encode can produce. */
size_t pv_event_max(void);

#endif
