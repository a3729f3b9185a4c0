/* The ring producer of docs/FORMAT.md in C: the plugin's write-ahead append.
 *
 * The same rules as pmem/ring.py's Producer (FORMAT.md "The rules"): records at 32-byte
 * offsets, the sequence field stored last, a zero trailer persisted with each record, orphan
 * sequence fields voided before reuse, space only up to the consumer's checkpoint (a newly
 * seen header copy persisted before its space is reused), LOSS records under `drop`. One
 * producer per ring: the open file description holds the F_OFD_SETLK byte-0 lock for as long
 * as the ring is open. Not thread-safe: the caller serializes appends (one global order). */
#ifndef PV_RING_H
#define PV_RING_H
#include <stddef.h>
#include <stdint.h>

enum pv_policy { PV_POLICY_BLOCK, PV_POLICY_DROP, PV_POLICY_FAIL };

enum pv_rectype { PV_REC_PAD = 1, PV_REC_NOTE = 2, PV_REC_LOSS = 3, PV_REC_EVENT = 16 };

#define PV_DATA_OFFSET 12288u
#define PV_REC_HDR 32u
#define PV_SEQ_LIMIT (1ull << 63)

struct pv_ring {
    int fd;
    uint8_t *base;       /* the whole image, mapped shared */
    size_t map_len;
    int is_pmem;         /* pmem_persist (DAX) or pmem_msync (emulated) */
    uint8_t uuid[16];
    uint32_t uuid_crc;   /* crc32c of the UUID: the start of every record CRC */
    uint64_t size;       /* data size */
    uint64_t tail;       /* data-area offset of the next record */
    uint64_t next_seq;
    uint64_t hdr_gen;    /* generation of the header copy last acted on */
    uint64_t head_seq, head_off; /* the checkpoint */
    uint64_t st_gen, lost_total, lost_reported;
    int policy;
    /* counters */
    uint64_t appended, dropped, persists, blocked_ns;
};

/* Open an existing ring image as its producer; 0, or -1 with a one-line reason in err. */
int pv_ring_open(struct pv_ring *r, const char *path, int policy, char *err, size_t errlen);

/* Append one record and persist it. Returns its sequence number (acknowledged: persistent),
 * 0 when the drop policy dropped it (counted; reported by a LOSS record), -1 when the fail
 * policy found the ring full or the sequence numbers are exhausted (reason in err). */
int64_t pv_ring_append(struct pv_ring *r, uint16_t type, const void *payload, uint32_t len,
                       char *err, size_t errlen);

/* Free space in bytes (for status), recomputed from the current header. */
uint64_t pv_ring_free(struct pv_ring *r);

void pv_ring_close(struct pv_ring *r);

#endif
