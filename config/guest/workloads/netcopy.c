/* A tiny static program for the demo's --include DIR (gcc -static -O2 -o DIR/bin/netcopy):
 * copies argv[1] to argv[2] through a loopback TCP connection on port argv[3], between two
 * processes: the child reads the file and sends it, the parent accepts, receives and writes.
 * It brings the loopback interface up first (the initramfs leaves it down). */
#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int lo_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM, 0);

    if (s < 0)
        return -1;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_in addr;
    char buf[4096];
    ssize_t n;
    int srv, one = 1;

    if (argc != 4)
        return 2;
    lo_up();
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[3]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    srv = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (srv < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) || listen(srv, 1))
        return 1;
    pid_t child = fork();
    if (child == 0) { /* the sender */
        int in = open(argv[1], O_RDONLY), c = socket(AF_INET, SOCK_STREAM, 0);
        if (in < 0 || c < 0 || connect(c, (struct sockaddr *)&addr, sizeof addr))
            _exit(1);
        while ((n = read(in, buf, sizeof buf)) > 0)
            if (send(c, buf, n, 0) != n)
                _exit(1);
        close(c);
        _exit(0);
    }
    int conn = accept(srv, NULL, NULL);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (conn < 0 || out < 0)
        return 1;
    while ((n = recv(conn, buf, sizeof buf, 0)) > 0)
        if (write(out, buf, n) != n)
            return 1;
    close(conn);
    close(out);
    int st = 0;
    waitpid(child, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
