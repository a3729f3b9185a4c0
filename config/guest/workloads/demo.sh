#!/bin/sh
# provisor demo workload (runs as /workload in /root; `provisor collect` traces it).
# Known answers: b.txt and c.txt derive from a.txt, through different processes; f.txt from
# b2.txt (b.txt renamed) through a loopback TCP connection.
echo "provenance from the hypervisor" > a.txt     # the shell itself writes a.txt
sh -c 'cat a.txt > b.txt'                          # a child shell's cat copies it
mv b.txt b2.txt                                    # rename(b.txt, b2.txt)
cat a.txt | sort > c.txt                           # a pipe: cat -> sort -> c.txt
mkdir -p out && cd out && cat ../c.txt > d.txt && cd ..   # a CWD other than /root
if [ -x /bin/upcase ]; then                        # a static binary from --include
    /bin/upcase a.txt e.txt
fi
if [ -x /bin/netcopy ]; then                       # b2.txt -> f.txt over loopback TCP
    /bin/netcopy b2.txt f.txt 7070                 # (two processes, two socket endpoints)
fi
echo "demo done"
