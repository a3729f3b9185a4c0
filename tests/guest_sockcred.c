/* Credentials, socket endpoints and address arguments, for the producers' cred, endpoint and
 * address fields: TCP over 127.0.0.1 and ::1, a unix socketpair, UDP datagrams (to an address
 * and connected), unix datagrams to an abstract name and to a path, then setresgid/setresuid
 * to 1000. Every address and port is fixed, so a test knows what each event's endpoints and
 * addresses must say. First, a fork child's first call names a path in a page the child has
 * not faulted in (the producers cannot read it at entry and read it again at the exit).
 * Static (gcc -static): the initramfs has no libc. Exits 0 only if every call worked. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int fails;
#define CHECK(x) do { if ((x) < 0) { perror(#x); fails++; } } while (0)

static struct sockaddr_in v4(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static struct sockaddr_in6 v6(int port)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                             .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    return a;
}

/* a connected pair over loopback: the client bound to cport, the server listening on sport */
static void tcp(int family, int sport, int cport)
{
    int one = 1;
    char buf[8];
    struct sockaddr_in s4 = v4(sport), c4 = v4(cport);
    struct sockaddr_in6 s6 = v6(sport), c6 = v6(cport);
    struct sockaddr *sa = family == AF_INET ? (struct sockaddr *)&s4 : (struct sockaddr *)&s6;
    struct sockaddr *ca = family == AF_INET ? (struct sockaddr *)&c4 : (struct sockaddr *)&c6;
    socklen_t len = family == AF_INET ? sizeof s4 : sizeof s6;
    int ls = socket(family, SOCK_STREAM, 0), c = socket(family, SOCK_STREAM, 0);
    CHECK(ls);
    CHECK(c);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    CHECK(bind(ls, sa, len));
    CHECK(listen(ls, 1));
    CHECK(bind(c, ca, len));
    CHECK(connect(c, sa, len));
    int s = accept(ls, NULL, NULL);
    CHECK(s);
    CHECK(write(c, "ping", 4));
    CHECK(read(s, buf, 4));
    CHECK(write(s, "pong", 4));
    CHECK(read(c, buf, 4));
    close(c), close(s), close(ls);
}

/* a page of its own holding only this name: nothing but the child's unlinkat touches it */
static const char fork_name[4096] __attribute__((aligned(4096))) = "pv-fork-literal";

int main(void)
{
    char buf[8];
    /* the parent makes the file; a fork child (its file-backed pages unmapped again) unlinks
     * it as its first call, through the raw syscall (the parent touches the page first, so
     * that its own open can read the name at entry) */
    *(volatile const char *)fork_name;
    int f = open(fork_name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(f);
    close(f);
    pid_t pid = fork();
    CHECK(pid);
    if (pid == 0)
        _exit(syscall(SYS_unlinkat, AT_FDCWD, fork_name, 0) == 0 ? 0 : 1);
    int status = 1;
    CHECK(waitpid(pid, &status, 0));
    if (status != 0) {
        fprintf(stderr, "the fork child's unlinkat failed\n");
        fails++;
    }

    /* the initramfs leaves lo down: up, with 127.0.0.1 and ::1 */
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int ctl = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(ioctl(ctl, SIOCGIFFLAGS, &ifr));
    ifr.ifr_flags |= IFF_UP;
    CHECK(ioctl(ctl, SIOCSIFFLAGS, &ifr));
    close(ctl);

    tcp(AF_INET, 5000, 40001);
    tcp(AF_INET6, 6000, 40002);

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    CHECK(write(sv[0], "x", 1));
    CHECK(read(sv[1], buf, 1));
    close(sv[0]), close(sv[1]);

    struct sockaddr_in a1 = v4(5002), a2 = v4(5003);
    int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(bind(u1, (struct sockaddr *)&a1, sizeof a1));
    CHECK(bind(u2, (struct sockaddr *)&a2, sizeof a2));
    CHECK(sendto(u2, "u", 1, 0, (struct sockaddr *)&a1, sizeof a1));
    CHECK(recvfrom(u1, buf, 1, 0, NULL, NULL));
    CHECK(connect(u2, (struct sockaddr *)&a1, sizeof a1)); /* a connected datagram socket */
    CHECK(write(u2, "v", 1));
    CHECK(read(u1, buf, 1));
    CHECK(sendto(u2, "w", 1, 0, NULL, 0)); /* connected: no address argument */
    close(u1), close(u2);

    /* unix datagrams: to an abstract name (its size exactly the name's) and to a path (the
     * size the whole sockaddr_un: the path ends at its NUL), from an unbound socket */
    struct sockaddr_un ua = {.sun_family = AF_UNIX}, up = {.sun_family = AF_UNIX};
    memcpy(ua.sun_path, "\0pv-abs", 7);
    strcpy(up.sun_path, "/pv.sock");
    socklen_t ualen = offsetof(struct sockaddr_un, sun_path) + 7;
    int x1 = socket(AF_UNIX, SOCK_DGRAM, 0), x2 = socket(AF_UNIX, SOCK_DGRAM, 0),
        x3 = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind(x1, (struct sockaddr *)&ua, ualen));
    CHECK(bind(x2, (struct sockaddr *)&up, sizeof up));
    CHECK(sendto(x3, "a", 1, 0, (struct sockaddr *)&ua, ualen));
    CHECK(sendto(x3, "p", 1, 0, (struct sockaddr *)&up, sizeof up));
    CHECK(recvfrom(x1, buf, 1, 0, NULL, NULL));
    CHECK(recvfrom(x2, buf, 1, 0, NULL, NULL));
    close(x1), close(x2), close(x3);

    CHECK(setresgid(1000, 1000, 1000));
    CHECK(setresuid(1000, 1000, 1000));
    CHECK(write(1, fails ? "sockcred: failed\n" : "sockcred: ok\n", fails ? 17 : 13));
    return fails != 0;
}
