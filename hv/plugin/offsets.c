/* See offsets.h. The file is text: a first line "provisor-offsets 1", then "key value" lines
 * (value decimal or 0x hex; "banner" a hex string), '#' comments. Every key is required but
 * the optional ones (mm_struct.exe_file, the IPv6 and unix socket members: -1 when absent,
 * hv/profile.py PLUGIN_OPTIONAL); an unknown key, a repeated key, a bad value or a NUL byte is an error. */
#include "offsets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE (64 * 1024)

static void fail(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

#define M(key, field, req) {key, offsetof(struct pv_offsets, field), req}
static const struct {
    const char *key;
    size_t off;
    int required;
} keys[] = {
    M("task_struct.pid", task_pid, 1), M("task_struct.tgid", task_tgid, 1),
    M("task_struct.comm", task_comm, 1), M("task_struct.real_parent", task_real_parent, 1),
    M("task_struct.cred", task_cred, 1), M("task_struct.start_time", task_start_time, 1),
    M("task_struct.fs", task_fs, 1), M("task_struct.files", task_files, 1),
    M("task_struct.mm", task_mm, 1), M("cred.uid", cred_uid, 1),
    M("fs_struct.pwd", fs_pwd, 1), M("fs_struct.root", fs_root, 1),
    M("path.mnt", path_mnt, 1), M("path.dentry", path_dentry, 1),
    M("dentry.d_name", dentry_d_name, 1), M("dentry.d_parent", dentry_d_parent, 1),
    M("dentry.d_inode", dentry_d_inode, 1), M("qstr.name", qstr_name, 1),
    M("qstr.len", qstr_len, 1), M("inode.i_ino", inode_i_ino, 1),
    M("inode.i_sb", inode_i_sb, 1), M("super_block.s_dev", sb_s_dev, 1),
    M("files_struct.fdt", files_fdt, 1), M("fdtable.max_fds", fdt_max_fds, 1),
    M("fdtable.fd", fdt_fd, 1), M("file.f_path", file_f_path, 1),
    M("file.f_inode", file_f_inode, 1), M("mount.mnt", mount_mnt, 1),
    M("mount.mnt_parent", mount_mnt_parent, 1),
    M("mount.mnt_mountpoint", mount_mnt_mountpoint, 1), M("mount.mnt_id", mount_mnt_id, 1),
    M("vfsmount.mnt_root", vfsmount_mnt_root, 1), M("mm_struct.exe_file", mm_exe_file, 0),
    M("cred.gid", cred_gid, 1), M("cred.suid", cred_suid, 1), M("cred.sgid", cred_sgid, 1),
    M("cred.euid", cred_euid, 1), M("cred.egid", cred_egid, 1),
    M("cred.fsuid", cred_fsuid, 1), M("cred.fsgid", cred_fsgid, 1),
    M("inode.i_mode", inode_i_mode, 1), M("file.private_data", file_private_data, 1), M("socket.sk", socket_sk, 1),
    M("sock.__sk_common", sock_sk_common, 1), M("sock.sk_type", sock_sk_type, 1),
    M("sock_common.skc_family", skc_family, 1), M("sock_common.skc_daddr", skc_daddr, 1),
    M("sock_common.skc_rcv_saddr", skc_rcv_saddr, 1),
    M("sock_common.skc_dport", skc_dport, 1), M("sock_common.skc_num", skc_num, 1),
    M("sock_common.skc_v6_daddr", skc_v6_daddr, 0),
    M("sock_common.skc_v6_rcv_saddr", skc_v6_rcv_saddr, 0),
    M("unix_sock.addr", unix_addr, 0), M("unix_sock.peer", unix_peer, 0),
    M("unix_address.len", unix_address_len, 0), M("unix_address.name", unix_address_name, 0),
    M("sockaddr_un.sun_path", sun_path, 0),
};
#define NKEYS (sizeof keys / sizeof keys[0])
#define MAX_MEMBER_OFFSET 0x10000 /* no member we read lies further into its struct */

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
           c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* a value as hv/profile.py writes it: decimal without leading zeros, or 0x hex. strtoull's
 * base 0 alone would also take octal ("010" is 8), a sign or leading blanks. */
static int number(const char *s, unsigned long long *v)
{
    int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *d = hex ? s + 2 : s;
    if (!*d || (!hex && d[0] == '0' && d[1]))
        return -1;
    for (const char *c = d; *c; c++)
        if (hex ? hexval(*c) < 0 : (*c < '0' || *c > '9'))
            return -1;
    errno = 0;
    *v = strtoull(d, NULL, hex ? 16 : 10);
    return errno ? -1 : 0;
}

int pv_offsets_parse(struct pv_offsets *o, const char *text, size_t n, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    char seen[NKEYS] = {0};
    int have_ct = 0, have_lb = 0, have_banner = 0, lineno = 0, header = 0;
    size_t i = 0;
    if (memchr(text, 0, n)) { /* a NUL would silently end a line early */
        fail(err, errlen, "not a provisor offsets file (binary data)");
        return -1;
    }
    while (i < n) {
        char line[1200];
        size_t j = 0;
        lineno++;
        while (i < n && text[i] != '\n') {
            if (j + 1 >= sizeof line) {
                fail(err, errlen, "offsets line %d too long", lineno);
                return -1;
            }
            line[j++] = text[i++];
        }
        i++;
        line[j] = 0;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *key = strtok(line, " \t\r");
        if (!key)
            continue;
        char *val = strtok(NULL, " \t\r");
        if (!val || strtok(NULL, " \t\r")) {
            fail(err, errlen, "offsets line %d: want \"key value\"", lineno);
            return -1;
        }
        if (!header) {
            if (strcmp(key, "provisor-offsets") || strcmp(val, "1")) {
                fail(err, errlen, "not a provisor offsets file (version 1)");
                return -1;
            }
            header = 1;
            continue;
        }
        if ((!strcmp(key, "banner") && have_banner) ||
            (!strcmp(key, "current_task") && have_ct) ||
            (!strcmp(key, "linux_banner") && have_lb)) {
            fail(err, errlen, "offsets line %d: %s given twice", lineno, key);
            return -1;
        }
        if (!strcmp(key, "banner")) {
            size_t h = strlen(val);
            if (h % 2 || h / 2 > sizeof o->banner || h == 0) {
                fail(err, errlen, "offsets line %d: bad banner", lineno);
                return -1;
            }
            for (size_t k = 0; k < h / 2; k++) {
                int a = hexval(val[2 * k]), b = hexval(val[2 * k + 1]);
                if (a < 0 || b < 0) {
                    fail(err, errlen, "offsets line %d: bad banner", lineno);
                    return -1;
                }
                o->banner[k] = (uint8_t)(a << 4 | b);
            }
            o->banner_len = (uint32_t)(h / 2);
            have_banner = 1;
            continue;
        }
        unsigned long long v;
        if (number(val, &v)) {
            fail(err, errlen, "offsets line %d: bad value %.40s", lineno, val);
            return -1;
        }
        if (!strcmp(key, "current_task")) {
            o->current_task = v, have_ct = 1;
            continue;
        }
        if (!strcmp(key, "linux_banner")) {
            o->linux_banner = v, have_lb = 1;
            continue;
        }
        size_t k = 0;
        while (k < NKEYS && strcmp(keys[k].key, key))
            k++;
        if (k == NKEYS) {
            fail(err, errlen, "offsets line %d: unknown key %.60s", lineno, key);
            return -1;
        }
        if (seen[k]) {
            fail(err, errlen, "offsets line %d: %s given twice", lineno, key);
            return -1;
        }
        if (v > MAX_MEMBER_OFFSET) {
            fail(err, errlen, "offsets line %d: %s offset %llu out of range", lineno, key, v);
            return -1;
        }
        seen[k] = 1;
        *(int64_t *)((char *)o + keys[k].off) = (int64_t)v;
    }
    if (!header) {
        fail(err, errlen, "empty offsets file");
        return -1;
    }
    if (!have_ct || !have_lb || !have_banner) {
        fail(err, errlen, "offsets file lacks %s", !have_ct ? "current_task" :
             !have_lb ? "linux_banner" : "banner");
        return -1;
    }
    for (size_t k = 0; k < NKEYS; k++) {
        if (seen[k])
            continue;
        if (keys[k].required) {
            fail(err, errlen, "offsets file lacks %s", keys[k].key);
            return -1;
        }
        *(int64_t *)((char *)o + keys[k].off) = -1;
    }
    return 0;
}

int pv_offsets_load(struct pv_offsets *o, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(MAX_FILE + 1);
    ssize_t n = buf ? read(fd, buf, MAX_FILE + 1) : -1;
    close(fd);
    if (n < 0 || n > MAX_FILE) {
        fail(err, errlen, "%s: %s", path, n < 0 ? "cannot read" : "too large for an offsets file");
        free(buf);
        return -1;
    }
    int rc = pv_offsets_parse(o, buf, (size_t)n, err, errlen);
    if (rc) {
        char why[200];
        snprintf(why, sizeof why, "%s", err);
        fail(err, errlen, "%s: %s", path, why);
    }
    free(buf);
    return rc;
}
