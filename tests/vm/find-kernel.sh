#!/usr/bin/env bash
# Prints the installed Debian kernel that the VFIO guest tier boots:
#   find-kernel.sh release  -> e.g. 6.1.0-56-amd64
#   find-kernel.sh image    -> e.g. /boot/vmlinuz-6.1.0-56-amd64
# It picks the newest /boot/vmlinuz-* whose /lib/modules/<release> has vfio-pci.
set -euo pipefail
best=
for img in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V); do
    rel=${img#/boot/vmlinuz-}
    if ls /lib/modules/"$rel"/kernel/drivers/vfio/pci/vfio-pci.ko* >/dev/null 2>&1; then
        best=$rel
    fi
done
if [ -z "$best" ]; then
    echo "find-kernel: no /boot/vmlinuz-* with VFIO modules; install one: apt-get install linux-image-amd64" >&2
    exit 1
fi
case "${1:-release}" in
    release) echo "$best" ;;
    image) echo "/boot/vmlinuz-$best" ;;
    *) echo "usage: $0 release|image" >&2; exit 2 ;;
esac
