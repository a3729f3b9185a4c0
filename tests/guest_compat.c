/* int 0x80 (the i386 ABI from a 64-bit process) and a prefixed `syscall`: a hostile program's
 * ways around a naive trap. Static, non-PIE: its data lies below 4 GiB, as int 0x80 needs. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char path32[] = "/root/compat32.txt";
static char path64[] = "/root/prefixed64.txt";
static char msg[] = "via int 0x80\n";
static struct sockaddr_in any5010, lo5011; /* below 4 GiB: an i386 caller's pointers */

static long int80(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

static long prefixed_syscall(long nr, long a, long b, long c)
{
    long ret;
    register long r10 __asm__("r10") = 0;
    __asm__ volatile(".byte 0x66, 0x2e, 0x0f, 0x05"
                     : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

int main(void)
{
    long fd = int80(5 /* i386 open */, (long)path32, 01101 /* O_WRONLY|O_CREAT|O_TRUNC */, 0644);
    long n = int80(4 /* i386 write */, fd, (long)msg, (long)strlen(msg));
    int80(6 /* i386 close */, fd, 0, 0);
    long fd2 = prefixed_syscall(2 /* open */, (long)path64, 01101, 0644);
    prefixed_syscall(3 /* close */, fd2, 0, 0);
    /* i386 socket, bind, connect: the address pointer is the register's low 32 bits (bit 40
     * set above them, which the kernel ignores and so must the producer) */
    any5010.sin_family = lo5011.sin_family = AF_INET;
    any5010.sin_port = htons(5010);
    lo5011.sin_port = htons(5011);
    lo5011.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long s = int80(359 /* i386 socket */, AF_INET, SOCK_DGRAM, 0);
    long b = int80(361 /* i386 bind */, s, (long)&any5010 | 1L << 40, sizeof any5010);
    int80(362 /* i386 connect */, s, (long)&lo5011, sizeof lo5011); /* lo is down: may fail */
    int80(6 /* i386 close */, s, 0, 0);
    printf("compat fd=%ld wrote=%ld prefixed fd=%ld socket=%ld bind=%ld\n", fd, n, fd2, s, b);
    return fd < 0 || n != (long)strlen(msg) || fd2 < 0 || s < 0 || b < 0;
}
