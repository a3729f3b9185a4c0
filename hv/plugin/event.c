/* See event.h. */
#include "event.h"

#include <stdlib.h>
#include <string.h>

/* per-tag section capacities: bound the whole payload (and so every record); SOCK: 8 fields
 * of PV_SOCK_HEAD (24) bytes and two addresses of at most 255; ADDR: one, family and text (PV_ADDR_MAX_TEXT, 108) */
static const uint32_t caps[PV_N_SECTIONS] = {
    0, 3 + 16, 3 + 4096 * 4, 2 * (3 + 4096), 3 * 256 + 32 * 1024 + 64, 3 * 256 + 32 * 1024 + 64,
    8 * (3 + 16 + 4096 * 4), 2 * 7, 3 + 32, 8 * (3 + 24 + 2 * 255), 3 + 2 + 108,
};

int pv_event_init(struct pv_event *e)
{
    memset(e, 0, sizeof *e);
    for (int t = 1; t < PV_N_SECTIONS; t++) {
        e->sect[t].buf = malloc(caps[t]);
        if (!e->sect[t].buf)
            return -1;
        e->sect[t].cap = caps[t];
    }
    return 0;
}

void pv_event_free(struct pv_event *e)
{
    for (int t = 1; t < PV_N_SECTIONS; t++)
        free(e->sect[t].buf);
    memset(e, 0, sizeof *e);
}

void pv_event_reset(struct pv_event *e)
{
    struct pv_sect s[PV_N_SECTIONS];
    memcpy(s, e->sect, sizeof s);
    memset(e, 0, sizeof *e);
    for (int t = 1; t < PV_N_SECTIONS; t++) {
        e->sect[t] = s[t];
        e->sect[t].len = 0;
    }
}

static int put2(struct pv_event *e, int tag, const void *a, size_t na, const void *b, size_t nb)
{
    if (tag < 1 || tag >= PV_N_SECTIONS)
        return 0;
    struct pv_sect *s = &e->sect[tag];
    if (na + nb > PV_EV_MAX_FIELD) {
        e->flags |= PV_F_TRUNCATED;
        if (na > PV_EV_MAX_FIELD)
            na = PV_EV_MAX_FIELD, nb = 0;
        else
            nb = PV_EV_MAX_FIELD - na;
    }
    if (s->len + 3 + na + nb > s->cap) {
        e->flags |= PV_F_TRUNCATED;
        return 0;
    }
    uint8_t *p = s->buf + s->len;
    uint16_t n = (uint16_t)(na + nb);
    p[0] = (uint8_t)tag;
    memcpy(p + 1, &n, 2);
    if (na)
        memcpy(p + 3, a, na);
    if (nb && b)
        memcpy(p + 3 + na, b, nb);
    s->len += 3 + n;
    return 1;
}

void pv_event_put(struct pv_event *e, int tag, const void *data, size_t n)
{
    put2(e, tag, data, n, NULL, 0);
}

int pv_event_put_file(struct pv_event *e, uint64_t dev, uint64_t ino, const void *path, size_t n)
{
    uint8_t id[16];
    memcpy(id, &dev, 8);
    memcpy(id + 8, &ino, 8);
    int kept = put2(e, PV_T_FILE, id, 16, path, n);
    e->nfiles += (uint32_t)kept;
    return kept;
}

void pv_event_put_cred(struct pv_event *e, const uint32_t cred[8])
{
    if (e->sect[PV_T_CRED].len == 0)
        put2(e, PV_T_CRED, cred, 32, NULL, 0);
}

void pv_event_put_sock(struct pv_event *e, uint16_t file, uint16_t family, uint16_t type,
                       uint64_t sk, uint64_t peer, const void *local, size_t nl,
                       const void *remote, size_t nr)
{
    uint8_t b[PV_SOCK_HEAD + 2 * 255];
    if (nl > 255 || nr > 255) { /* beyond what a producer reads: left out, as a full section */
        e->flags |= PV_F_TRUNCATED;
        return;
    }
    uint16_t l = (uint16_t)nl;
    memcpy(b, &file, 2);
    memcpy(b + 2, &family, 2);
    memcpy(b + 4, &type, 2);
    memcpy(b + 6, &l, 2);
    memcpy(b + 8, &sk, 8);
    memcpy(b + 16, &peer, 8);
    if (nl)
        memcpy(b + PV_SOCK_HEAD, local, nl);
    if (nr)
        memcpy(b + PV_SOCK_HEAD + nl, remote, nr);
    put2(e, PV_T_SOCK, b, PV_SOCK_HEAD + nl + nr, NULL, 0);
}

void pv_event_put_addr(struct pv_event *e, uint16_t family, const void *text, size_t n)
{
    uint8_t b[2 + PV_ADDR_MAX_TEXT];
    if (e->sect[PV_T_ADDR].len)
        return;
    if (n > PV_ADDR_MAX_TEXT) {
        e->flags |= PV_F_TRUNCATED;
        return;
    }
    memcpy(b, &family, 2);
    if (n)
        memcpy(b + 2, text, n);
    put2(e, PV_T_ADDR, b, 2 + n, NULL, 0);
}

void pv_event_put_fd(struct pv_event *e, int32_t fd)
{
    put2(e, PV_T_OUTFD, &fd, 4, NULL, 0);
}

size_t pv_event_max(void)
{
    size_t n = PV_EV_FIXED;
    for (int t = 1; t < PV_N_SECTIONS; t++)
        n += caps[t];
    return n;
}

size_t pv_event_encode(struct pv_event *e, uint8_t *out, size_t cap)
{
    if (cap < pv_event_max())
        return 0;
    uint8_t *p = out;
    uint16_t flags = e->flags | (e->has_ret ? PV_F_HAS_RET : 0);
    int64_t ret = e->has_ret ? e->ret : 0;
    p[0] = 1; /* EVENT_VERSION */
    p[1] = e->phase;
    memcpy(p + 2, &e->vcpu, 2);
    memcpy(p + 4, &e->nr, 2);
    memcpy(p + 6, &flags, 2);
    memcpy(p + 8, &e->entry_seq, 8);
    memcpy(p + 16, &e->ts_ns, 8);
    memcpy(p + 24, &e->tgid, 4);
    memcpy(p + 28, &e->pid, 4);
    memcpy(p + 32, &e->ppid, 4);
    memcpy(p + 36, &e->uid, 4);
    memcpy(p + 40, &e->start_time, 8);
    memcpy(p + 48, &ret, 8);
    memcpy(p + 56, &e->cwd_mnt, 8);
    memcpy(p + 64, e->args, 48);
    size_t len = PV_EV_FIXED;
    for (int t = 1; t < PV_N_SECTIONS; t++) {
        memcpy(out + len, e->sect[t].buf, e->sect[t].len);
        len += e->sect[t].len;
    }
    return len;
}
