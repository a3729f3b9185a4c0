/* ProvMark-style fidelity probe (tests/fidelity/, docs/FIDELITY.md): one subcommand per test.
 *
 *   probe <test> action|control <stagedir>
 *
 * Every run: chdir to the stage dir, create test.txt (owned by uid 1000, written by a child),
 * the test's own setup (as root), then drop to uid/gid 1000 (supplementary group 1001), then, only in an `action`
 * run, the one action under test. Nothing else differs between action and control. The
 * credential tests (ROOT) keep root: their action is the credential change itself.
 * Raw syscall(2) wherever libc would pick another call than the one under test.
 * Static (gcc -static), run by /workload in the guest; exit 0 when the run went as planned.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <stdint.h>
#include <unistd.h>

#define UID 1000
#define GID 1000
#define GID2 1001

static const char *test_name;
static int act;

#define CHECK(x)                                                                          \
    do {                                                                                  \
        if (!(x)) {                                                                       \
            fprintf(stderr, "probe %s: %s:%d: %s failed: %s\n", test_name, __FILE__,      \
                    __LINE__, #x, strerror(errno));                                       \
            _exit(99);                                                                    \
        }                                                                                 \
    } while (0)

/* the expected failure of a failed-call test */
#define FAILS(x, err)                                                                     \
    do {                                                                                  \
        long r_ = (long)(x);                                                              \
        if (r_ >= 0 || errno != (err)) {                                                  \
            fprintf(stderr, "probe %s: %s returned %ld (errno %d), expected errno %d\n",  \
                    test_name, #x, r_, errno, (err));                                     \
            _exit(98);                                                                    \
        }                                                                                 \
    } while (0)

static void own(const char *path) { CHECK(lchown(path, UID, GID) == 0); }

/* Map every page of the binary's image (text, rodata, data) into this task's page tables.
 * A path literal in a page the task has not touched yet is not mapped when the call enters,
 * and a producer reading guest memory at entry cannot read it (the open-after-fork case shows
 * it on purpose). After fork(2) a child's file-backed pages are unmapped again, so each child
 * the probe forks calls this first (through child()). madvise is not traced. */
extern char __executable_start[], edata[];
static void prefault(void)
{
    uintptr_t lo = (uintptr_t)__executable_start & ~(uintptr_t)4095;
    madvise((void *)lo, (uintptr_t)edata - lo, 22 /* MADV_POPULATE_READ */);
}

static pid_t child(void)
{
    pid_t pid = fork();
    if (pid == 0)
        prefault();
    return pid;
}

/* a stage file, written by a short-lived child: the probe process itself has then neither
 * generated nor used it, so whatever the action does to it is a new relation */
static void put(const char *path, const char *text)
{
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        CHECK(fd >= 0);
        CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
        CHECK(close(fd) == 0);
        own(path);
        _exit(0);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* root -> uid/gid 1000 with supplementary group 1001 (for chown to a second group) */
static void drop(void)
{
    gid_t groups[] = {GID2};
    CHECK(setgroups(1, groups) == 0);
    CHECK(syscall(SYS_setresgid, GID, GID, GID) == 0);
    CHECK(syscall(SYS_setresuid, UID, UID, UID) == 0);
}

static int open_ro(const char *path)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    return fd;
}

static int dirfd_stage(void)
{
    int d = open(".", O_RDONLY | O_DIRECTORY);
    CHECK(d >= 0);
    return d;
}

static void wait_child(pid_t pid)
{
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static char buf[256];

/* -- files ------------------------------------------------------------------------------ */
static void t_creat(void) { drop(); if (act) CHECK(syscall(SYS_creat, "new.txt", 0644) >= 0); }
static void t_open(void) { drop(); if (act) CHECK(syscall(SYS_open, "test.txt", O_RDONLY) >= 0); }
static void t_openat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_openat, d, "test.txt", O_RDONLY) >= 0);
}
static void t_open_trunc(void)
{
    drop();
    if (act) CHECK(syscall(SYS_openat, AT_FDCWD, "test.txt", O_WRONLY | O_TRUNC) >= 0);
}
static void t_open_append(void)
{
    drop();
    if (act) CHECK(syscall(SYS_openat, AT_FDCWD, "test.txt", O_WRONLY | O_APPEND) >= 0);
}
static void t_open_creat_existing(void)
{
    drop();
    if (act) CHECK(syscall(SYS_openat, AT_FDCWD, "test.txt", O_RDWR | O_CREAT, 0644) >= 0);
}
static void t_open_after_fork(void)
{
    drop();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) { /* the child's first call: its path literal in a page it never touched */
        if (act) CHECK(syscall(SYS_openat, AT_FDCWD, "test.txt", O_RDONLY) >= 0);
        _exit(0);
    }
    wait_child(pid);
}
static void t_close(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_close, fd) == 0);
}
static void t_read(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_read, fd, buf, sizeof buf) > 0);
}
static void t_readv(void)
{
    int fd = open_ro("test.txt");
    struct iovec iov = {buf, sizeof buf};
    drop();
    if (act) CHECK(syscall(SYS_readv, fd, &iov, 1) > 0);
}
static void t_pread(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_pread64, fd, buf, sizeof buf, 1) > 0);
}
static int open_w(void)
{
    int fd = open("test.txt", O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    return fd;
}
static void t_write(void)
{
    int fd = open_w();
    drop();
    if (act) CHECK(syscall(SYS_write, fd, "data\n", 5) == 5);
}
static void t_writev(void)
{
    int fd = open_w();
    struct iovec iov[2] = {{"da", 2}, {"ta\n", 3}};
    drop();
    if (act) CHECK(syscall(SYS_writev, fd, iov, 2) == 5);
}
static void t_pwrite(void)
{
    int fd = open("test.txt", O_WRONLY);
    CHECK(fd >= 0);
    drop();
    if (act) CHECK(syscall(SYS_pwrite64, fd, "data\n", 5, 2) == 5);
}
static void t_dup(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_dup, fd) >= 0);
}
static void t_dup2(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_dup2, fd, 10) == 10);
}
static void t_dup3(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_dup3, fd, 11, O_CLOEXEC) == 11);
}
static void t_fcntl_dupfd(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_fcntl, fd, F_DUPFD, 20) >= 20);
}
static void t_link(void) { drop(); if (act) CHECK(syscall(SYS_link, "test.txt", "link.txt") == 0); }
static void t_linkat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_linkat, d, "test.txt", d, "linkat-test.txt", 0) == 0);
}
static void t_symlink(void)
{
    drop();
    if (act) CHECK(syscall(SYS_symlink, "test.txt", "sym.txt") == 0);
}
static void t_symlinkat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_symlinkat, "test.txt", d, "sym.txt") == 0);
}
static void t_open_symlink(void)
{
    CHECK(symlink("test.txt", "sym.txt") == 0);
    own("sym.txt");
    drop();
    if (act) {
        long fd = syscall(SYS_openat, AT_FDCWD, "sym.txt", O_RDONLY);
        CHECK(fd >= 0);
        CHECK(syscall(SYS_read, fd, buf, sizeof buf) > 0);
    }
}
static void t_mknod(void)
{
    drop();
    if (act) CHECK(syscall(SYS_mknod, "fifo", S_IFIFO | 0644, 0) == 0);
}
static void t_mknodat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_mknodat, d, "fifo", S_IFIFO | 0644, 0) == 0);
}
static void t_mkfifo(void) { drop(); if (act) CHECK(mkfifo("fifo", 0644) == 0); }
static void t_fifo_data(void)
{
    CHECK(mkfifo("fifo", 0644) == 0);
    own("fifo");
    drop();
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (act) {
            int fd = open("fifo", O_WRONLY);
            CHECK(fd >= 0);
            CHECK(write(fd, "fifo\n", 5) == 5);
        }
        _exit(0);
    }
    if (act) {
        int fd = open("fifo", O_RDONLY);
        CHECK(fd >= 0);
        CHECK(read(fd, buf, sizeof buf) == 5);
    }
    wait_child(pid);
}
static void t_rename(void)
{
    drop();
    if (act) CHECK(syscall(SYS_rename, "test.txt", "renamed.txt") == 0);
}
static void t_renameat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_renameat, d, "test.txt", d, "renamed.txt") == 0);
}
static void t_renameat2(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_renameat2, d, "test.txt", d, "renamed.txt", RENAME_NOREPLACE) == 0);
}
static void t_rename_over(void)
{
    put("renamed.txt", "old\n");
    drop();
    if (act) CHECK(syscall(SYS_rename, "test.txt", "renamed.txt") == 0);
}
static void t_truncate(void)
{
    drop();
    if (act) CHECK(syscall(SYS_truncate, "test.txt", 2) == 0);
}
static void t_ftruncate(void)
{
    int fd = open("test.txt", O_WRONLY);
    CHECK(fd >= 0);
    drop();
    if (act) CHECK(syscall(SYS_ftruncate, fd, 2) == 0);
}
static void t_unlink(void) { drop(); if (act) CHECK(syscall(SYS_unlink, "test.txt") == 0); }
static void t_unlinkat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_unlinkat, d, "test.txt", 0) == 0);
}
static void t_rmdir(void)
{
    CHECK(mkdir("dir", 0755) == 0);
    own("dir");
    drop();
    if (act) CHECK(syscall(SYS_rmdir, "dir") == 0);
}
static void t_chmod(void) { drop(); if (act) CHECK(syscall(SYS_chmod, "test.txt", 0600) == 0); }
static void t_fchmod(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_fchmod, fd, 0600) == 0);
}
static void t_fchmodat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_fchmodat, d, "test.txt", 0600) == 0);
}
static void t_chown(void)
{
    drop();
    if (act) CHECK(syscall(SYS_chown, "test.txt", -1, GID2) == 0);
}
static void t_fchown(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) CHECK(syscall(SYS_fchown, fd, -1, GID2) == 0);
}
static void t_lchown(void)
{
    CHECK(symlink("test.txt", "sym.txt") == 0);
    own("sym.txt");
    drop();
    if (act) CHECK(syscall(SYS_lchown, "sym.txt", -1, GID2) == 0);
}
static void t_fchownat(void)
{
    int d = dirfd_stage();
    drop();
    if (act) CHECK(syscall(SYS_fchownat, d, "test.txt", -1, GID2, 0) == 0);
}

/* -- credentials: start as root, the action is the change ------------------------------- */
static void t_setuid(void) { if (act) CHECK(syscall(SYS_setuid, UID) == 0); }
static void t_setgid(void) { if (act) CHECK(syscall(SYS_setgid, GID) == 0); }
static void t_setreuid(void) { if (act) CHECK(syscall(SYS_setreuid, UID, UID) == 0); }
static void t_setregid(void) { if (act) CHECK(syscall(SYS_setregid, GID, GID) == 0); }
static void t_setresuid(void) { if (act) CHECK(syscall(SYS_setresuid, UID, UID, UID) == 0); }
static void t_setresgid(void) { if (act) CHECK(syscall(SYS_setresgid, GID, GID, GID) == 0); }

/* -- processes -------------------------------------------------------------------------- */
static void t_fork(void)
{
    drop();
    if (act) {
        long pid = syscall(SYS_fork);
        CHECK(pid >= 0);
        if (pid == 0)
            _exit(0);
        wait_child(pid);
    }
}
static void t_vfork(void)
{
    drop();
    if (act) {
        pid_t pid = vfork(); /* glibc's vfork is the vfork syscall */
        CHECK(pid >= 0);
        if (pid == 0)
            _exit(0);
        wait_child(pid);
    }
}
static int child_fn(void *arg) { (void)arg; return 0; }
static char child_stack[65536] __attribute__((aligned(16)));
static void t_clone(void)
{
    drop();
    if (act) { /* glibc's clone() is the clone syscall (not clone3) */
        int pid = clone(child_fn, child_stack + sizeof child_stack, SIGCHLD, NULL);
        CHECK(pid >= 0);
        wait_child(pid);
    }
}
static volatile int thread_done;
static int thread_fn(void *arg)
{
    int fd = *(int *)arg;
    read(fd, buf, sizeof buf); /* the thread reads test.txt: the process used it */
    __atomic_store_n(&thread_done, 1, __ATOMIC_SEQ_CST);
    return 0; /* glibc's clone() wrapper then calls exit(2): this thread only */
}
static void t_thread(void)
{
    static int fd;
    fd = open_ro("test.txt");
    drop();
    if (act) {
        int tid = clone(thread_fn, child_stack + sizeof child_stack,
                        CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                        CLONE_SYSVSEM, &fd);
        CHECK(tid >= 0);
        while (!__atomic_load_n(&thread_done, __ATOMIC_SEQ_CST))
            sched_yield();
        usleep(20000); /* let the thread's exit(2) happen before the process exits */
    }
}
static char self_exe[256];
static void t_execve(void)
{
    drop();
    if (act) {
        char *argv[] = {"probe", "exec-target", NULL};
        char *envp[] = {NULL};
        syscall(SYS_execve, self_exe, argv, envp);
        CHECK(0);
    }
}
static void t_execveat(void)
{
    int d = open("/bin", O_RDONLY | O_DIRECTORY);
    CHECK(d >= 0);
    drop();
    if (act) {
        char *argv[] = {"probe", "exec-target", NULL};
        char *envp[] = {NULL};
        syscall(SYS_execveat, d, "probe", argv, envp, 0);
        CHECK(0);
    }
}
static void t_exit(void)
{
    drop();
    if (act) {
        fflush(NULL);
        syscall(SYS_exit, 7); /* the raw exit of the only thread, status 7 */
    }
}

/* -- signals: a child waits on a pipe; the action signals it ----------------------------- */
static void on_usr1(int sig) { (void)sig; }
static void signal_test(int use_tkill)
{
    int p[2];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: the child's read returns EINTR */
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    CHECK(pipe(p) == 0);
    drop();
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p[1]);
        while (read(p[0], buf, 1) < 0 && errno == EINTR)
            ;
        _exit(0);
    }
    close(p[0]);
    if (act)
        CHECK(syscall(use_tkill ? SYS_tkill : SYS_kill, pid, SIGUSR1) == 0);
    close(p[1]);
    wait_child(pid);
}
static void t_kill(void) { signal_test(0); }
static void t_tkill(void) { signal_test(1); }

/* -- pipes -------------------------------------------------------------------------------- */
static void t_pipe(void)
{
    int p[2];
    drop();
    if (act) CHECK(syscall(SYS_pipe, p) == 0);
}
static void t_pipe2(void)
{
    int p[2];
    drop();
    if (act) CHECK(syscall(SYS_pipe2, p, O_CLOEXEC) == 0);
}
static void t_pipe_io(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    drop();
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (act) CHECK(write(p[1], "pipe\n", 5) == 5);
        _exit(0);
    }
    wait_child(pid);
    if (act) CHECK(read(p[0], buf, sizeof buf) == 5);
}

/* -- kernel-side copies ------------------------------------------------------------------- */
static void t_sendfile(void)
{
    int in = open_ro("test.txt");
    put("out.txt", "");
    int out = open("out.txt", O_WRONLY);
    CHECK(out >= 0);
    drop();
    if (act) CHECK(syscall(SYS_sendfile, out, in, NULL, 64) > 0);
}
static void t_copy_file_range(void)
{
    int in = open_ro("test.txt");
    put("out.txt", "");
    int out = open("out.txt", O_WRONLY);
    CHECK(out >= 0);
    drop();
    if (act) CHECK(syscall(SYS_copy_file_range, in, NULL, out, NULL, 64, 0) > 0);
}
static void t_splice(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    CHECK(write(p[1], "splice\n", 7) == 7);
    put("out.txt", "");
    int out = open("out.txt", O_WRONLY);
    CHECK(out >= 0);
    drop();
    if (act) CHECK(syscall(SYS_splice, p[0], NULL, out, NULL, 7, 0) == 7);
}
static void t_tee(void)
{
    int a[2], b[2];
    CHECK(pipe(a) == 0 && pipe(b) == 0);
    CHECK(write(a[1], "tee\n", 4) == 4);
    drop();
    if (act) CHECK(syscall(SYS_tee, a[0], b[1], 4, 0) == 4);
}

/* -- mmap ----------------------------------------------------------------------------------- */
static void t_mmap_read(void)
{
    int fd = open_ro("test.txt");
    drop();
    if (act) {
        char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        CHECK(m != MAP_FAILED);
        CHECK(m[0] == 'h');
    }
}
static void t_mmap_shared_write(void)
{
    int fd = open("test.txt", O_RDWR);
    CHECK(fd >= 0);
    drop();
    if (act) {
        char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHECK(m != MAP_FAILED);
        memcpy(m, "HELLO", 5);
        CHECK(msync(m, 4096, MS_SYNC) == 0);
        CHECK(pread(fd, buf, 5, 0) == 5 && memcmp(buf, "HELLO", 5) == 0); /* reached the file */
    }
}

/* -- sockets ------------------------------------------------------------------------------ */
static void t_socket(void)
{
    drop();
    if (act) CHECK(syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0) >= 0);
}
static void t_socketpair(void)
{
    int sv[2];
    drop();
    if (act) CHECK(syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, sv) == 0);
}
static void t_socketpair_io(void)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    drop();
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(sv[1]);
        if (act) {
            struct iovec iov = {"pair\n", 5};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
            CHECK(syscall(SYS_sendmsg, sv[0], &mh, 0) == 5);
        }
        _exit(0);
    }
    close(sv[0]);
    if (act) {
        struct iovec iov = {buf, sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        CHECK(syscall(SYS_recvmsg, sv[1], &mh, 0) == 5);
    }
    wait_child(pid);
}

static socklen_t unix_addr(struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    strcpy(a->sun_path, "sock");
    return sizeof *a;
}
static void t_unix_bind(void)
{
    struct sockaddr_un a;
    socklen_t n = unix_addr(&a);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(s >= 0);
    drop();
    if (act) CHECK(syscall(SYS_bind, s, &a, n) == 0);
}

/* a listening server and a child that connects: the action is connect+accept, or (data_is_action)
 * the data sent over the connection */
static void stream_test(int family, int data_is_action)
{
    struct sockaddr_un ua;
    struct sockaddr_in ia;
    struct sockaddr *sa;
    socklen_t n;
    int one = 1;
    if (family == AF_UNIX) {
        n = unix_addr(&ua);
        sa = (struct sockaddr *)&ua;
    } else {
        memset(&ia, 0, sizeof ia);
        ia.sin_family = AF_INET;
        ia.sin_port = htons(5001);
        ia.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa = (struct sockaddr *)&ia;
        n = sizeof ia;
    }
    drop();
    int ls = socket(family, SOCK_STREAM, 0);
    CHECK(ls >= 0);
    CHECK(setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
    CHECK(bind(ls, sa, n) == 0);
    CHECK(listen(ls, 4) == 0);
    int go = data_is_action || act; /* connect+accept: setup of a data test, else the action */
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(ls);
        if (go) {
            int c = socket(family, SOCK_STREAM, 0);
            CHECK(c >= 0);
            CHECK(syscall(SYS_connect, c, sa, n) == 0);
            if (act && data_is_action)
                CHECK(syscall(SYS_sendto, c, "stream\n", 7, 0, NULL, 0) == 7);
            shutdown(c, SHUT_WR);
            read(c, buf, 1); /* until the server closes */
        }
        _exit(0);
    }
    if (go) {
        long c = syscall(SYS_accept, ls, NULL, NULL);
        CHECK(c >= 0);
        if (act && data_is_action)
            CHECK(syscall(SYS_recvfrom, c, buf, sizeof buf, 0, NULL, NULL) == 7);
        close(c);
    }
    wait_child(pid);
}
static void t_unix_connect(void) { stream_test(AF_UNIX, 0); }
static void t_unix_io(void) { stream_test(AF_UNIX, 1); }
static void t_tcp_connect(void) { stream_test(AF_INET, 0); }
static void t_tcp_io(void) { stream_test(AF_INET, 1); }
/* a datagram from a child to the probe over loopback: to an address (sendto, unconnected),
 * or over a connected UDP socket (connect in the setup of both runs) */
static void udp_test(int connected)
{
    struct sockaddr_in ia;
    memset(&ia, 0, sizeof ia);
    ia.sin_family = AF_INET;
    ia.sin_port = htons(connected ? 5003 : 5002);
    ia.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    drop();
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(s >= 0);
    CHECK(bind(s, (struct sockaddr *)&ia, sizeof ia) == 0);
    pid_t pid = child();
    CHECK(pid >= 0);
    if (pid == 0) {
        int c = socket(AF_INET, SOCK_DGRAM, 0);
        CHECK(c >= 0);
        if (connected)
            CHECK(connect(c, (struct sockaddr *)&ia, sizeof ia) == 0);
        if (act && connected)
            CHECK(syscall(SYS_sendto, c, "udp\n", 4, 0, NULL, 0) == 4);
        else if (act)
            CHECK(syscall(SYS_sendto, c, "udp\n", 4, 0, &ia, sizeof ia) == 4);
        _exit(0);
    }
    wait_child(pid);
    if (act)
        CHECK(syscall(SYS_recvfrom, s, buf, sizeof buf, 0, NULL, NULL) == 4);
}
static void t_udp_io(void) { udp_test(0); }
static void t_udp_connected_io(void) { udp_test(1); }

/* -- failed calls: no relation ------------------------------------------------------------- */
static void t_fail_enoent(void)
{
    drop();
    if (act) FAILS(syscall(SYS_openat, AT_FDCWD, "missing.txt", O_RDONLY), ENOENT);
}
static void t_fail_ebadf(void)
{
    drop();
    if (act) FAILS(syscall(SYS_write, 99, "x", 1), EBADF);
}
static void t_fail_eacces(void)
{
    int fd = open("secret.txt", O_WRONLY | O_CREAT | O_TRUNC, 0600); /* root's, 0600 */
    CHECK(fd >= 0 && close(fd) == 0);
    drop();
    if (act) FAILS(syscall(SYS_openat, AT_FDCWD, "secret.txt", O_RDONLY), EACCES);
}

struct test {
    const char *name;
    void (*fn)(void);
};

static const struct test tests[] = {
    {"creat", t_creat}, {"open", t_open}, {"openat", t_openat}, {"open-trunc", t_open_trunc},
    {"open-append", t_open_append}, {"open-creat-existing", t_open_creat_existing},
    {"open-after-fork", t_open_after_fork}, {"close", t_close}, {"read", t_read}, {"readv", t_readv}, {"pread", t_pread},
    {"write", t_write}, {"writev", t_writev}, {"pwrite", t_pwrite}, {"dup", t_dup},
    {"dup2", t_dup2}, {"dup3", t_dup3}, {"fcntl-dupfd", t_fcntl_dupfd}, {"link", t_link},
    {"linkat", t_linkat}, {"symlink", t_symlink}, {"symlinkat", t_symlinkat},
    {"open-symlink", t_open_symlink}, {"mknod", t_mknod}, {"mknodat", t_mknodat},
    {"mkfifo", t_mkfifo}, {"fifo-data", t_fifo_data}, {"rename", t_rename},
    {"renameat", t_renameat}, {"renameat2", t_renameat2}, {"rename-over", t_rename_over},
    {"truncate", t_truncate}, {"ftruncate", t_ftruncate}, {"unlink", t_unlink},
    {"unlinkat", t_unlinkat}, {"rmdir", t_rmdir}, {"chmod", t_chmod}, {"fchmod", t_fchmod},
    {"fchmodat", t_fchmodat}, {"chown", t_chown}, {"fchown", t_fchown}, {"lchown", t_lchown},
    {"fchownat", t_fchownat}, {"setuid", t_setuid}, {"setgid", t_setgid},
    {"setreuid", t_setreuid}, {"setregid", t_setregid}, {"setresuid", t_setresuid},
    {"setresgid", t_setresgid}, {"fork", t_fork}, {"vfork", t_vfork}, {"clone", t_clone},
    {"thread", t_thread}, {"execve", t_execve}, {"execveat", t_execveat}, {"exit", t_exit},
    {"kill", t_kill}, {"tkill", t_tkill}, {"pipe", t_pipe}, {"pipe2", t_pipe2},
    {"pipe-io", t_pipe_io}, {"sendfile", t_sendfile}, {"copy_file_range", t_copy_file_range},
    {"splice", t_splice}, {"tee", t_tee}, {"mmap-read", t_mmap_read},
    {"mmap-shared-write", t_mmap_shared_write}, {"socket", t_socket},
    {"socketpair", t_socketpair}, {"socketpair-io", t_socketpair_io},
    {"unix-bind", t_unix_bind}, {"unix-connect", t_unix_connect}, {"unix-io", t_unix_io},
    {"tcp-connect", t_tcp_connect}, {"tcp-io", t_tcp_io}, {"udp-io", t_udp_io},
    {"udp-connected-io", t_udp_connected_io},
    {"fail-enoent", t_fail_enoent}, {"fail-ebadf", t_fail_ebadf},
    {"fail-eacces", t_fail_eacces},
};

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "exec-target") == 0)
        return 0; /* what the exec tests run */
    if (argc == 2 && strcmp(argv[1], "list") == 0) {
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
            puts(tests[i].name);
        return 0;
    }
    if (argc != 4 || (strcmp(argv[2], "action") && strcmp(argv[2], "control"))) {
        fprintf(stderr, "usage: probe <test> action|control <stagedir> | probe list\n");
        return 2;
    }
    test_name = argv[1];
    act = strcmp(argv[2], "action") == 0;
    prefault();
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    CHECK(n > 0);
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        if (strcmp(tests[i].name, test_name))
            continue;
        CHECK(chdir(argv[3]) == 0);
        own(".");
        put("test.txt", "hello\n");
        tests[i].fn();
        fflush(NULL);
        return 0;
    }
    fprintf(stderr, "probe: no test %s\n", test_name);
    return 2;
}
