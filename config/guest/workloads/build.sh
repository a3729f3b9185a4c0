#!/bin/sh
# fleet example, guest "build": two sources combined into an artifact, checksummed, archived.
mkdir -p src dist
echo "int main(void) { return 0; }" > src/main.c
echo "#define VERSION 1" > src/version.h
cat src/version.h src/main.c > dist/app.c
sort dist/app.c | uniq > dist/app.sorted
md5sum dist/app.c > dist/app.md5
tar -cf dist/release.tar dist/app.c dist/app.md5
echo "build done"
