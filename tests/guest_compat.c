/* int 0x80 (the i386 ABI from a 64-bit process) and a prefixed `syscall`: a hostile program's
 * ways around a naive trap. Static, non-PIE: its data lies below 4 GiB, as int 0x80 needs. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char path32[] = "/root/compat32.txt";
static char path64[] = "/root/prefixed64.txt";
static char msg[] = "via int 0x80\n";

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
    printf("compat fd=%ld wrote=%ld prefixed fd=%ld\n", fd, n, fd2);
    return fd < 0 || n != (long)strlen(msg) || fd2 < 0;
}
