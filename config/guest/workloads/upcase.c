/* A tiny static program for the demo's --include DIR (gcc -static -O2 -o DIR/bin/upcase):
 * copies argv[1] to argv[2] in upper case, with plain open/read/write/close syscalls. */
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char buf[4096];
    ssize_t n;
    int in, out;

    if (argc != 3)
        return 2;
    in = open(argv[1], O_RDONLY);
    out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0)
        return 1;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] >= 'a' && buf[i] <= 'z')
                buf[i] -= 32;
        if (write(out, buf, n) != n)
            return 1;
    }
    close(in);
    close(out);
    return 0;
}
