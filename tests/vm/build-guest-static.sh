#!/usr/bin/env bash
# Builds a statically linked vfio-vm-guest (glibc static-pie; no musl target is needed) and
# prints its path. The test suite does not need this: it uses cargo's own (dynamic) build and
# build-initramfs.sh copies the libraries. Use it to boot the guest by hand, or pass the result
# to the test with VFIO_VM_GUEST=<path>.
#
#   build-guest-static.sh [TARGET_DIR]     (default: target/vm-guest-static)
#
# The target triple is explicit so that RUSTFLAGS reach only the guest, not build scripts.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tdir=${1:-$repo/target/vm-guest-static}
triple=x86_64-unknown-linux-gnu
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$tdir" \
    cargo build --release --target "$triple" -p netrx-tests --bin vfio-vm-guest >&2)
bin=$tdir/$triple/release/vfio-vm-guest
if ldd "$bin" 2>&1 | grep -q "=>"; then
    echo "build-guest-static: $bin is dynamically linked; is glibc's libc.a installed (libc6-dev)?" >&2
    exit 1
fi
echo "$bin"
