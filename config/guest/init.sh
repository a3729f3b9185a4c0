#!/bin/busybox sh
# provisor guest /init (PID 1 of the initramfs built by `provisor guest build`).
# Busybox applet symlinks are already in the archive (no per-boot --install, which would put
# hundreds of symlink syscalls into the provenance trace). Mount the pseudo filesystems, run the
# workload from /root, power off whatever it returns.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
cd /root
echo "provisor-guest: workload start"
sh /workload
echo "provisor-guest: workload exit $?"
poweroff -f
