/* Generated from provisor/syscalls.py by `python -m provisor.syscalls --c-header`
 * (make hv/plugin/syscalls.h). Do not edit: change the table and regenerate. */
#ifndef PROVISOR_SYSCALLS_H
#define PROVISOR_SYSCALLS_H

#include <stdint.h>

#define PV_MAX_ARGS 6
#define PV_MAX_PATHS 2
#define PV_SYSCALL_COUNT 80

/* the ABI constants a producer acts on (provisor/abi.py) */
#define PV_AT_FDCWD (-100)
#define PV_F_DUPFD 0
#define PV_F_DUPFD_CLOEXEC 1030

enum pv_arg {
    PV_ARG_NONE = 0,
    PV_ARG_FD = 1,
    PV_ARG_DIRFD = 2,
    PV_ARG_NEWFD = 3,
    PV_ARG_PATH = 4,
    PV_ARG_ARGV = 5,
    PV_ARG_ENVP = 6,
    PV_ARG_FDPAIR = 7,
    PV_ARG_FLAGS = 8,
    PV_ARG_AT_FLAGS = 9,
    PV_ARG_RENAME_FLAGS = 10,
    PV_ARG_SPLICE_FLAGS = 11,
    PV_ARG_FCNTL_CMD = 12,
    PV_ARG_CLONE_FLAGS = 13,
    PV_ARG_CLONE_ARGS = 14,
    PV_ARG_PROT = 15,
    PV_ARG_MAP_FLAGS = 16,
    PV_ARG_MODE = 17,
    PV_ARG_INT = 18,
    PV_ARG_SIZE = 19,
    PV_ARG_OFFSET = 20,
    PV_ARG_PTR = 21,
    PV_ARG_BUF = 22,
    PV_ARG_IOVEC = 23,
    PV_ARG_SOCKADDR = 24,
    PV_ARG_UID = 25,
    PV_ARG_GID = 26,
    PV_ARG_PID = 27,
    PV_ARG_SIGNAL = 28,
    PV_ARG_DEV = 29,
    PV_ARG_SOCK_FLAGS = 30,
};

enum pv_family {
    PV_FAMILY_NONE = 0,
    PV_FAMILY_DATA_READ = 1,
    PV_FAMILY_DATA_WRITE = 2,
    PV_FAMILY_OPEN = 3,
    PV_FAMILY_CLOSE = 4,
    PV_FAMILY_DUP = 5,
    PV_FAMILY_FCNTL = 6,
    PV_FAMILY_PIPE = 7,
    PV_FAMILY_FORK = 8,
    PV_FAMILY_EXEC = 9,
    PV_FAMILY_EXIT = 10,
    PV_FAMILY_EXIT_GROUP = 11,
    PV_FAMILY_MMAP = 12,
    PV_FAMILY_TRUNCATE = 13,
    PV_FAMILY_TRANSFER = 14,
    PV_FAMILY_RENAME = 15,
    PV_FAMILY_LINK = 16,
    PV_FAMILY_SYMLINK = 17,
    PV_FAMILY_UNLINK = 18,
    PV_FAMILY_CHDIR = 19,
    PV_FAMILY_SOCKET = 20,
    PV_FAMILY_CHMOD = 21,
    PV_FAMILY_CHOWN = 22,
    PV_FAMILY_MKNOD = 23,
    PV_FAMILY_CRED = 24,
    PV_FAMILY_SIGNAL = 25,
    PV_FAMILY_SOCKETPAIR = 26,
};

enum pv_trait {
    PV_TRAIT_RETURNS_FD = 0x1u,
    PV_TRAIT_NO_RETURN = 0x2u,
    PV_TRAIT_MOVES_NAME = 0x4u,
    PV_TRAIT_READS_DATA = 0x8u,
    PV_TRAIT_WRITES_DATA = 0x10u,
    PV_TRAIT_CHANGES_CWD = 0x20u,
    PV_TRAIT_EXECS = 0x40u,
};

struct pv_path {
    int8_t dirfd; /* argument index of the directory fd, -1: relative to the cwd */
    int8_t path;  /* argument index of the path string */
};

struct pv_syscall {
    uint16_t nr;
    int16_t nr32;                        /* i386 number, -1: none */
    const char *name;
    uint8_t nargs;
    uint8_t args[PV_MAX_ARGS];           /* enum pv_arg */
    uint8_t family;                      /* enum pv_family */
    uint32_t traits;                     /* enum pv_trait bits */
    uint8_t npaths;
    struct pv_path paths[PV_MAX_PATHS];
    int8_t flags_arg;                    /* the O_* flags argument, -1: none */
    int64_t implied_flags;               /* O_* flags without one (creat), -1: none */
    int8_t xfer_in, xfer_out;            /* TRANSFER fd arguments, -1: none */
};

static const struct pv_syscall pv_syscalls[PV_SYSCALL_COUNT] = {
    {0, 3, "read", 3, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {1, 4, "write", 3, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {2, 5, "open", 3, {PV_ARG_PATH, PV_ARG_FLAGS, PV_ARG_MODE}, PV_FAMILY_OPEN, PV_TRAIT_RETURNS_FD, 1, {{-1, 0}}, 1, -1, -1, -1},
    {3, 6, "close", 1, {PV_ARG_FD}, PV_FAMILY_CLOSE, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {9, 192, "mmap", 6, {PV_ARG_PTR, PV_ARG_SIZE, PV_ARG_PROT, PV_ARG_MAP_FLAGS, PV_ARG_FD, PV_ARG_OFFSET}, PV_FAMILY_MMAP, PV_TRAIT_READS_DATA | PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {17, 180, "pread64", 4, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE, PV_ARG_OFFSET}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {18, 181, "pwrite64", 4, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE, PV_ARG_OFFSET}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {19, 145, "readv", 3, {PV_ARG_FD, PV_ARG_IOVEC, PV_ARG_INT}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {20, 146, "writev", 3, {PV_ARG_FD, PV_ARG_IOVEC, PV_ARG_INT}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {22, 42, "pipe", 1, {PV_ARG_FDPAIR}, PV_FAMILY_PIPE, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {32, 41, "dup", 1, {PV_ARG_FD}, PV_FAMILY_DUP, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, -1, -1, -1, -1},
    {33, 63, "dup2", 2, {PV_ARG_FD, PV_ARG_NEWFD}, PV_FAMILY_DUP, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, -1, -1, -1, -1},
    {40, 239, "sendfile", 4, {PV_ARG_FD, PV_ARG_FD, PV_ARG_PTR, PV_ARG_SIZE}, PV_FAMILY_TRANSFER, PV_TRAIT_READS_DATA | PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, 1, 0},
    {41, 359, "socket", 3, {PV_ARG_INT, PV_ARG_INT, PV_ARG_INT}, PV_FAMILY_SOCKET, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, -1, -1, -1, -1},
    {42, 362, "connect", 3, {PV_ARG_FD, PV_ARG_SOCKADDR, PV_ARG_SIZE}, PV_FAMILY_NONE, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {43, -1, "accept", 3, {PV_ARG_FD, PV_ARG_SOCKADDR, PV_ARG_PTR}, PV_FAMILY_SOCKET, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, -1, -1, -1, -1},
    {49, 361, "bind", 3, {PV_ARG_FD, PV_ARG_SOCKADDR, PV_ARG_SIZE}, PV_FAMILY_NONE, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {56, 120, "clone", 5, {PV_ARG_CLONE_FLAGS, PV_ARG_PTR, PV_ARG_PTR, PV_ARG_PTR, PV_ARG_PTR}, PV_FAMILY_FORK, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {57, 2, "fork", 0, {0}, PV_FAMILY_FORK, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {58, 190, "vfork", 0, {0}, PV_FAMILY_FORK, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {59, 11, "execve", 3, {PV_ARG_PATH, PV_ARG_ARGV, PV_ARG_ENVP}, PV_FAMILY_EXEC, PV_TRAIT_EXECS, 1, {{-1, 0}}, -1, -1, -1, -1},
    {60, 1, "exit", 1, {PV_ARG_INT}, PV_FAMILY_EXIT, PV_TRAIT_NO_RETURN, 0, {{-1, -1}}, -1, -1, -1, -1},
    {72, 221, "fcntl", 3, {PV_ARG_FD, PV_ARG_FCNTL_CMD, PV_ARG_INT}, PV_FAMILY_FCNTL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {76, 92, "truncate", 2, {PV_ARG_PATH, PV_ARG_SIZE}, PV_FAMILY_TRUNCATE, PV_TRAIT_WRITES_DATA, 1, {{-1, 0}}, -1, -1, -1, -1},
    {77, 93, "ftruncate", 2, {PV_ARG_FD, PV_ARG_SIZE}, PV_FAMILY_TRUNCATE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {80, 12, "chdir", 1, {PV_ARG_PATH}, PV_FAMILY_CHDIR, PV_TRAIT_CHANGES_CWD, 1, {{-1, 0}}, -1, -1, -1, -1},
    {81, 133, "fchdir", 1, {PV_ARG_FD}, PV_FAMILY_CHDIR, PV_TRAIT_CHANGES_CWD, 0, {{-1, -1}}, -1, -1, -1, -1},
    {82, 38, "rename", 2, {PV_ARG_PATH, PV_ARG_PATH}, PV_FAMILY_RENAME, PV_TRAIT_MOVES_NAME, 2, {{-1, 0}, {-1, 1}}, -1, -1, -1, -1},
    {83, 39, "mkdir", 2, {PV_ARG_PATH, PV_ARG_MODE}, PV_FAMILY_NONE, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {84, 40, "rmdir", 1, {PV_ARG_PATH}, PV_FAMILY_UNLINK, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {85, 8, "creat", 2, {PV_ARG_PATH, PV_ARG_MODE}, PV_FAMILY_OPEN, PV_TRAIT_RETURNS_FD, 1, {{-1, 0}}, -1, 577, -1, -1},
    {86, 9, "link", 2, {PV_ARG_PATH, PV_ARG_PATH}, PV_FAMILY_LINK, 0, 2, {{-1, 0}, {-1, 1}}, -1, -1, -1, -1},
    {87, 10, "unlink", 1, {PV_ARG_PATH}, PV_FAMILY_UNLINK, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {88, 83, "symlink", 2, {PV_ARG_PATH, PV_ARG_PATH}, PV_FAMILY_SYMLINK, 0, 2, {{-1, 0}, {-1, 1}}, -1, -1, -1, -1},
    {231, 252, "exit_group", 1, {PV_ARG_INT}, PV_FAMILY_EXIT_GROUP, PV_TRAIT_NO_RETURN, 0, {{-1, -1}}, -1, -1, -1, -1},
    {257, 295, "openat", 4, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_FLAGS, PV_ARG_MODE}, PV_FAMILY_OPEN, PV_TRAIT_RETURNS_FD, 1, {{0, 1}}, 2, -1, -1, -1},
    {258, 296, "mkdirat", 3, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_MODE}, PV_FAMILY_NONE, 0, 1, {{0, 1}}, -1, -1, -1, -1},
    {263, 301, "unlinkat", 3, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_AT_FLAGS}, PV_FAMILY_UNLINK, 0, 1, {{0, 1}}, -1, -1, -1, -1},
    {264, 302, "renameat", 4, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_DIRFD, PV_ARG_PATH}, PV_FAMILY_RENAME, PV_TRAIT_MOVES_NAME, 2, {{0, 1}, {2, 3}}, -1, -1, -1, -1},
    {265, 303, "linkat", 5, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_AT_FLAGS}, PV_FAMILY_LINK, 0, 2, {{0, 1}, {2, 3}}, -1, -1, -1, -1},
    {266, 304, "symlinkat", 3, {PV_ARG_PATH, PV_ARG_DIRFD, PV_ARG_PATH}, PV_FAMILY_SYMLINK, 0, 2, {{-1, 0}, {1, 2}}, -1, -1, -1, -1},
    {275, 313, "splice", 6, {PV_ARG_FD, PV_ARG_PTR, PV_ARG_FD, PV_ARG_PTR, PV_ARG_SIZE, PV_ARG_SPLICE_FLAGS}, PV_FAMILY_TRANSFER, PV_TRAIT_READS_DATA | PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, 0, 2},
    {276, 315, "tee", 4, {PV_ARG_FD, PV_ARG_FD, PV_ARG_SIZE, PV_ARG_SPLICE_FLAGS}, PV_FAMILY_TRANSFER, PV_TRAIT_READS_DATA | PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, 0, 1},
    {292, 330, "dup3", 3, {PV_ARG_FD, PV_ARG_NEWFD, PV_ARG_FLAGS}, PV_FAMILY_DUP, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, 2, -1, -1, -1},
    {293, 331, "pipe2", 2, {PV_ARG_FDPAIR, PV_ARG_FLAGS}, PV_FAMILY_PIPE, 0, 0, {{-1, -1}}, 1, -1, -1, -1},
    {316, 353, "renameat2", 5, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_RENAME_FLAGS}, PV_FAMILY_RENAME, PV_TRAIT_MOVES_NAME, 2, {{0, 1}, {2, 3}}, -1, -1, -1, -1},
    {322, 358, "execveat", 5, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_ARGV, PV_ARG_ENVP, PV_ARG_AT_FLAGS}, PV_FAMILY_EXEC, PV_TRAIT_EXECS, 1, {{0, 1}}, -1, -1, -1, -1},
    {435, 435, "clone3", 2, {PV_ARG_CLONE_ARGS, PV_ARG_SIZE}, PV_FAMILY_FORK, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {44, 369, "sendto", 6, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE, PV_ARG_SOCK_FLAGS, PV_ARG_SOCKADDR, PV_ARG_SIZE}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {45, 371, "recvfrom", 6, {PV_ARG_FD, PV_ARG_BUF, PV_ARG_SIZE, PV_ARG_SOCK_FLAGS, PV_ARG_SOCKADDR, PV_ARG_PTR}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {46, 370, "sendmsg", 3, {PV_ARG_FD, PV_ARG_PTR, PV_ARG_SOCK_FLAGS}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {47, 372, "recvmsg", 3, {PV_ARG_FD, PV_ARG_PTR, PV_ARG_SOCK_FLAGS}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {50, 363, "listen", 2, {PV_ARG_FD, PV_ARG_INT}, PV_FAMILY_NONE, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {53, 360, "socketpair", 4, {PV_ARG_INT, PV_ARG_INT, PV_ARG_INT, PV_ARG_FDPAIR}, PV_FAMILY_SOCKETPAIR, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {288, 364, "accept4", 4, {PV_ARG_FD, PV_ARG_SOCKADDR, PV_ARG_PTR, PV_ARG_FLAGS}, PV_FAMILY_SOCKET, PV_TRAIT_RETURNS_FD, 0, {{-1, -1}}, 3, -1, -1, -1},
    {295, 333, "preadv", 4, {PV_ARG_FD, PV_ARG_IOVEC, PV_ARG_INT, PV_ARG_OFFSET}, PV_FAMILY_DATA_READ, PV_TRAIT_READS_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {296, 334, "pwritev", 4, {PV_ARG_FD, PV_ARG_IOVEC, PV_ARG_INT, PV_ARG_OFFSET}, PV_FAMILY_DATA_WRITE, PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, -1, -1},
    {326, 377, "copy_file_range", 6, {PV_ARG_FD, PV_ARG_PTR, PV_ARG_FD, PV_ARG_PTR, PV_ARG_SIZE, PV_ARG_INT}, PV_FAMILY_TRANSFER, PV_TRAIT_READS_DATA | PV_TRAIT_WRITES_DATA, 0, {{-1, -1}}, -1, -1, 0, 2},
    {90, 15, "chmod", 2, {PV_ARG_PATH, PV_ARG_MODE}, PV_FAMILY_CHMOD, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {91, 94, "fchmod", 2, {PV_ARG_FD, PV_ARG_MODE}, PV_FAMILY_CHMOD, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {268, 306, "fchmodat", 3, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_MODE}, PV_FAMILY_CHMOD, 0, 1, {{0, 1}}, -1, -1, -1, -1},
    {92, 212, "chown", 3, {PV_ARG_PATH, PV_ARG_UID, PV_ARG_GID}, PV_FAMILY_CHOWN, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {93, 207, "fchown", 3, {PV_ARG_FD, PV_ARG_UID, PV_ARG_GID}, PV_FAMILY_CHOWN, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {94, 198, "lchown", 3, {PV_ARG_PATH, PV_ARG_UID, PV_ARG_GID}, PV_FAMILY_CHOWN, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {260, 298, "fchownat", 5, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_UID, PV_ARG_GID, PV_ARG_AT_FLAGS}, PV_FAMILY_CHOWN, 0, 1, {{0, 1}}, -1, -1, -1, -1},
    {133, 14, "mknod", 3, {PV_ARG_PATH, PV_ARG_MODE, PV_ARG_DEV}, PV_FAMILY_MKNOD, 0, 1, {{-1, 0}}, -1, -1, -1, -1},
    {259, 297, "mknodat", 4, {PV_ARG_DIRFD, PV_ARG_PATH, PV_ARG_MODE, PV_ARG_DEV}, PV_FAMILY_MKNOD, 0, 1, {{0, 1}}, -1, -1, -1, -1},
    {105, 213, "setuid", 1, {PV_ARG_UID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {106, 214, "setgid", 1, {PV_ARG_GID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {113, 203, "setreuid", 2, {PV_ARG_UID, PV_ARG_UID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {114, 204, "setregid", 2, {PV_ARG_GID, PV_ARG_GID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {117, 208, "setresuid", 3, {PV_ARG_UID, PV_ARG_UID, PV_ARG_UID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {119, 210, "setresgid", 3, {PV_ARG_GID, PV_ARG_GID, PV_ARG_GID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {122, 215, "setfsuid", 1, {PV_ARG_UID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {123, 216, "setfsgid", 1, {PV_ARG_GID}, PV_FAMILY_CRED, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {62, 37, "kill", 2, {PV_ARG_PID, PV_ARG_SIGNAL}, PV_FAMILY_SIGNAL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {200, 238, "tkill", 2, {PV_ARG_PID, PV_ARG_SIGNAL}, PV_FAMILY_SIGNAL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {234, 270, "tgkill", 3, {PV_ARG_PID, PV_ARG_PID, PV_ARG_SIGNAL}, PV_FAMILY_SIGNAL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {129, 178, "rt_sigqueueinfo", 3, {PV_ARG_PID, PV_ARG_SIGNAL, PV_ARG_PTR}, PV_FAMILY_SIGNAL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
    {297, 335, "rt_tgsigqueueinfo", 4, {PV_ARG_PID, PV_ARG_PID, PV_ARG_SIGNAL, PV_ARG_PTR}, PV_FAMILY_SIGNAL, 0, 0, {{-1, -1}}, -1, -1, -1, -1},
};

#endif /* PROVISOR_SYSCALLS_H */
