/* The kernel offsets the plugin reads guest memory with: one struct of commented members,
 * filled from the compact offsets file hv/profile.py writes from the DWARF profile (format:
 * docs/HYPERVISORS.md, "The plugin's offsets file"). Nothing here is per kernel. */
#ifndef PV_OFFSETS_H
#define PV_OFFSETS_H
#include <stddef.h>
#include <stdint.h>

struct pv_offsets {
    uint64_t current_task;      /* per-cpu offset of the running task pointer (no slide) */
    uint64_t linux_banner;      /* link-time address of linux_banner (the slide is found) */
    uint8_t banner[512];        /* its bytes, as the profile has them */
    uint32_t banner_len;
    /* struct task_struct */
    int64_t task_pid, task_tgid, task_comm, task_real_parent, task_cred, task_start_time,
        task_fs, task_files, task_mm;
    int64_t cred_uid, cred_gid, cred_suid, cred_sgid, cred_euid, cred_egid, cred_fsuid,
        cred_fsgid;             /* struct cred: Event.cred, in this order */
    int64_t fs_pwd, fs_root;    /* struct fs_struct */
    int64_t path_mnt, path_dentry; /* struct path */
    int64_t dentry_d_name, dentry_d_parent, dentry_d_inode; /* struct dentry */
    int64_t qstr_name, qstr_len; /* struct qstr */
    int64_t inode_i_ino, inode_i_sb, inode_i_mode; /* struct inode */
    int64_t sb_s_dev;           /* struct super_block */
    int64_t files_fdt;          /* struct files_struct */
    int64_t fdt_max_fds, fdt_fd; /* struct fdtable */
    int64_t file_f_path, file_f_inode, file_private_data; /* struct file */
    int64_t mount_mnt, mount_mnt_parent, mount_mnt_mountpoint, mount_mnt_id; /* struct mount */
    int64_t vfsmount_mnt_root;  /* struct vfsmount */
    int64_t mm_exe_file;        /* struct mm_struct; -1: absent (no exe identity at execve) */
    int64_t socket_sk;          /* struct socket (a socket file's private_data) */
    int64_t sock_sk_common, sock_sk_type; /* struct sock */
    int64_t skc_family, skc_daddr, skc_rcv_saddr, skc_dport, skc_num; /* struct sock_common */
    /* optional, -1 when absent (CONFIG_IPV6, CONFIG_UNIX off): such sockets are flagged */
    int64_t skc_v6_daddr, skc_v6_rcv_saddr;
    int64_t unix_addr, unix_peer; /* struct unix_sock (its struct sock at offset 0) */
    int64_t unix_address_len, unix_address_name, sun_path; /* unix_address, sockaddr_un */
};

/* Parse the file; 0, or -1 with a one-line reason in err. */
int pv_offsets_load(struct pv_offsets *o, const char *path, char *err, size_t errlen);
/* Parse text already in memory (tests, fuzzing). */
int pv_offsets_parse(struct pv_offsets *o, const char *text, size_t n, char *err, size_t errlen);

#endif
