#!/usr/bin/env bash
# guest-balloon: build the kernel module against Debian 12's kernel headers
# with W=1 and warnings as errors, run the user-space policy tests, and boot
# Debian's kernel under QEMU (TCG) to check that the module refuses to load
# off Xen.  Runs from the repository root; installs what it needs itself.
# CI's `uname -r` is not a Debian kernel: the headers are found by globbing.
set -euo pipefail
. scripts/lib/common.sh

apt_install build-essential linux-headers-amd64 kmod

kdir=""
for d in /usr/src/linux-headers-*-amd64; do
	[ -e "$d/Makefile" ] && kdir=$d
done
[ -n "$kdir" ] || die "linux-headers-amd64 installed no /usr/src/linux-headers-*-amd64"
echo "kernel headers: $kdir"

# Build in a scratch copy so that the work tree stays clean.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp guest-balloon/Kbuild guest-balloon/Makefile guest-balloon/*.[ch] "$build/"
mkdir -p "$build/tests"
cp guest-balloon/tests/*.c "$build/tests/"

echo "--- make check-build (W=1, -Werror)"
make -C "$build" KDIR="$kdir" check-build 2>&1 | tee "$build/build.log"
if grep -E 'warning:|error:' "$build/build.log"; then
	die "guest_balloon.ko: the build printed warnings"
fi
modinfo "$build/guest_balloon.ko" | grep -E '^(name|vermagic|depends):'

echo "--- user-space policy tests"
make -s -C "$build" test

echo "--- policy trace"
make -s -C "$build" trace | tail -n 5

echo "--- boot test under QEMU"
bash scripts/guest-balloon-qemu-check
