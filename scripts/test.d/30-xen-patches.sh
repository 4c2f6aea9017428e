#!/usr/bin/env bash
# CI step: the Xen 4.17 patch series (patches/xen-4.17).
#  1. fetch Debian 12's Xen 4.17 source (scripts/xen-source);
#  2. apply the series and build the patched tools and the hypervisor
#     with mem_paging (scripts/xen-build --all; tools about 30-60 s,
#     hypervisor about 45-90 s on 2 cores);
#  3. the built xl lists the new `migrate` options, reports a missing
#     libxl_postcopy.so, and relays the Rust library's verdict on an
#     unknown --prepage strategy (run without Xen: the
#     patches/tests/xl-nohv.c shim stands in for libxc/xenstore handles);
#  4. Xen's Python stream verifier, patched, agrees with the Rust engine's
#     record encoder (patches/tests/verify-streams.sh).
set -euo pipefail
. scripts/lib/common.sh

step "xen: source (Debian 12, 4.17)"
scripts/xen-source

step "xen: apply patches/xen-4.17, build tools and hypervisor"
scripts/xen-build --all

build=${XEN_BUILD_DIR:-$PWD/build/xen}
tree=$build/src-$(cat "$build/VERSION")
dist=$tree/dist-postcopy

step "xen: xl help migrate lists the post-copy options"
shim=$build/xl-nohv.so
cc -shared -fPIC -O2 -Wall -Werror -o "$shim" patches/tests/xl-nohv.c
help=$(LD_PRELOAD=$shim LD_LIBRARY_PATH=$dist/usr/lib/x86_64-linux-gnu \
	"$dist/usr/sbin/xl" help migrate 2>/dev/null) ||
	die "the patched xl failed to print its help"
for opt in --postcopy --prepage=STRATEGY --postcopy-after=N; do
	grep -q -- "^$opt" <<<"$help" || die "xl help migrate does not list $opt"
done
echo "ok: xl help migrate lists --postcopy, --prepage=STRATEGY, --postcopy-after=N"
# Without libxl_postcopy.so, --postcopy must say what is missing.
if err=$(LD_PRELOAD=$shim LD_LIBRARY_PATH=$dist/usr/lib/x86_64-linux-gnu \
	LIBXL_POSTCOPY_LIBRARY=/nonexistent/libxl_postcopy.so.1 \
	"$dist/usr/sbin/xl" migrate --postcopy 0 localhost 2>&1); then
	die "xl migrate --postcopy succeeded without libxl_postcopy.so"
fi
grep -q "needs /nonexistent/libxl_postcopy.so.1" <<<"$err" ||
	die "xl migrate --postcopy without the library said: $err"
echo "ok: xl migrate --postcopy names the missing libxl_postcopy.so"
# With the Rust library, strategy names are checked by it (one source of
# truth): an unknown one gets its message, listing the valid ones.
cargo build -q --locked -p libxl-glue
if err=$(LD_PRELOAD=$shim LD_LIBRARY_PATH=$dist/usr/lib/x86_64-linux-gnu \
	LIBXL_POSTCOPY_LIBRARY=$PWD/target/debug/libxl_postcopy.so \
	"$dist/usr/sbin/xl" migrate --postcopy --prepage=nonsense 0 localhost 2>&1); then
	die "xl migrate --prepage=nonsense succeeded"
fi
grep -q "nonsense.*bubble" <<<"$err" ||
	die "xl migrate --prepage=nonsense did not relay libxl_postcopy's message: $err"
echo "ok: xl migrate --prepage=nonsense: $(grep nonsense <<<"$err")"

step "xen: stream verifier vs the Rust record encoder"
patches/tests/verify-streams.sh "$tree"
