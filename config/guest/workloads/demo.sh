#!/bin/sh
# provisor demo workload (runs as /workload in /root; `provisor collect` traces it).
# Known answers: b.txt and c.txt derive from a.txt, through different processes.
echo "provenance from the hypervisor" > a.txt     # the shell itself writes a.txt
sh -c 'cat a.txt > b.txt'                          # a child shell's cat copies it
mv b.txt b2.txt                                    # rename(b.txt, b2.txt)
cat a.txt | sort > c.txt                           # a pipe: cat -> sort -> c.txt
mkdir -p out && cd out && cat ../c.txt > d.txt && cd ..   # a CWD other than /root
if [ -x /bin/upcase ]; then                        # a static binary from --include
    /bin/upcase a.txt e.txt
fi
echo "demo done"
