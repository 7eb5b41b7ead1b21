#!/usr/bin/env bash
# Boots the installed Debian kernel under QEMU (TCG) with an emulated Intel IOMMU and the edu
# device, using an initramfs from build-initramfs.sh, and copies the serial console to stdout.
#
#   run-vm.sh INITRAMFS [iommu|noiommu] [TIMEOUT_SECONDS]
#
# Exit status: 0 when the console printed "NETRX-VERDICT: PASS", 1 on "NETRX-VERDICT: FAIL",
# 2 when no verdict was printed (timeout, panic, QEMU error). TCG because nested KVM does not
# boot this kernel on the project's machines (shared/notes/vfio-guest-on-this-machine.md).
set -euo pipefail

die() { echo "run-vm: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: $0 INITRAMFS [iommu|noiommu] [TIMEOUT_SECONDS]"
initrd=$1
mode=${2:-iommu}
limit=${3:-120}
here=$(cd "$(dirname "$0")" && pwd)

qemu=$(command -v qemu-system-x86_64 || true)
[ -n "$qemu" ] || die "qemu-system-x86_64 not found; install it: apt-get install qemu-system-x86"
kernel=$("$here/find-kernel.sh" image) || exit 2
[ -r "$kernel" ] || die "$kernel is not readable (run as root)"
[ -r "$initrd" ] || die "initramfs $initrd not found; build it with tests/vm/build-initramfs.sh"

append="console=ttyS0 panic=-1 quiet loglevel=4 netrx.mode=$mode"
machine=(-machine q35,kernel-irqchip=split)
case "$mode" in
    # The IOMMU must come before the device it translates for.
    iommu) devices=(-device intel-iommu,intremap=on -device edu); append+=" intel_iommu=on" ;;
    # No IOMMU: edu's default 28-bit DMA mask would clamp physical addresses above 256 MiB.
    noiommu) devices=(-device edu,dma_mask=0xffffffffffffffff) ;;
    *) die "mode must be iommu or noiommu, not $mode" ;;
esac

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "run-vm: booting $kernel (mode $mode, limit ${limit}s)"
set +e
timeout -k 5 "$limit" "$qemu" -accel tcg "${machine[@]}" -m 512 -smp 1 \
    -kernel "$kernel" -initrd "$initrd" -append "$append" \
    "${devices[@]}" -display none -no-reboot -nic none -monitor none -serial stdio \
    </dev/null 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -q "^NETRX-VERDICT: PASS" "$log"; then exit 0; fi
if grep -q "^NETRX-VERDICT: FAIL" "$log"; then exit 1; fi
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "run-vm: no verdict within ${limit}s (QEMU stopped)"
else
    echo "run-vm: QEMU exited with status $status without a verdict"
fi
exit 2
