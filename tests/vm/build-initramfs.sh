#!/usr/bin/env bash
# Builds the initramfs for the VFIO guest tier (docs/testing.md, "VFIO in a guest").
#
#   build-initramfs.sh GUEST_BINARY OUT.cpio.gz [KERNEL_RELEASE]
#
# Contents: busybox-static, the VFIO modules of the installed Debian kernel (vfio,
# vfio_iommu_type1, vfio_pci, vfio_pci_core, irqbypass and whatever modules.dep says they need,
# in dependency order, decompressed if the kernel ships them compressed), our guest test binary
# (static, or dynamic with the shared libraries `ldd` names copied next to it) and tests/vm/init.
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }

[ $# -ge 2 ] || die "usage: $0 GUEST_BINARY OUT.cpio.gz [KERNEL_RELEASE]"
guest=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)

kver=${3:-$("$here/find-kernel.sh" release)}
moddir=/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die "no $moddir/modules.dep; install the kernel: apt-get install linux-image-amd64"
[ -x "$guest" ] || die "guest binary $guest is missing or not executable"
busybox=$(command -v busybox || true)
[ -n "$busybox" ] || die "busybox not found; install it: apt-get install busybox-static"
if ldd "$busybox" 2>&1 | grep -q "=>"; then
    die "$busybox is not statically linked; install busybox-static (apt-get install busybox-static)"
fi
command -v cpio >/dev/null || die "cpio not found; install it: apt-get install cpio"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}

# --- modules, dependencies first -----------------------------------------------------------
# modules.dep lines are "path: dep1 dep2 ..." where deps are listed nearest first; a depth-first
# walk that emits a module after all of its dependencies gives a valid insmod order.
declare -A path_of=() done_=()
while IFS= read -r line; do
    p=${line%%:*}
    b=$(basename "$p"); b=${b%%.ko*}; b=${b//-/_}
    path_of[$b]=$p
done <"$moddir/modules.dep"

order=()
visit() {
    local name=${1//-/_} p deps d
    [ -n "${done_[$name]:-}" ] && return 0
    p=${path_of[$name]:-}
    [ -n "$p" ] || die "module $name not in $moddir/modules.dep (built into the kernel or missing)"
    deps=$(grep -m1 "^$p:" "$moddir/modules.dep" | cut -d: -f2-)
    for d in $deps; do
        d=$(basename "$d"); visit "${d%%.ko*}"
    done
    done_[$name]=1
    order+=("$name")
}
for m in vfio vfio_iommu_type1 irqbypass vfio_pci_core vfio_pci; do visit "$m"; done

: >"$root/lib/modules/order"
for name in "${order[@]}"; do
    src=$moddir/${path_of[$name]}
    dst=$root/lib/modules/$name.ko
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" >"$dst" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
        *) die "unknown module format: $src" ;;
    esac
    echo "$name" >>"$root/lib/modules/order"
done

# --- programs ------------------------------------------------------------------------------
cp "$busybox" "$root/bin/busybox"
cp "$guest" "$root/bin/netrx-guest"
# A dynamically linked guest binary: copy the loader and libraries to the same paths.
if ldd "$guest" 2>&1 | grep -q "=>"; then
    for lib in $(ldd "$guest" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
fi
cp "$here/init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox" "$root/bin/netrx-guest"

mkdir -p "$(dirname "$out")"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$out.tmp"
mv "$out.tmp" "$out"
echo "build-initramfs: $out ($(du -h "$out" | cut -f1)), kernel $kver, modules: ${order[*]}"
