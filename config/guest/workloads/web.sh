#!/bin/sh
# fleet example, guest "web": a page rendered from a template and a data file, then compressed.
mkdir -p www
echo "<h1>@TITLE@</h1><p>@BODY@</p>" > page.tmpl
echo "provenance from the hypervisor" > body.txt
sed -e "s/@TITLE@/provisor/" -e "s/@BODY@/$(cat body.txt)/" page.tmpl > www/index.html
gzip -c www/index.html > www/index.html.gz
wc -c www/index.html www/index.html.gz > sizes.log
echo "web done"
