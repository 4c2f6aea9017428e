#!/usr/bin/env bash
# Independent check of the post-copy wire format: the Rust engine's record
# encoder (postcopy::records, via patches/tests/stream-sample) writes
# sample streams, and Xen's own Python stream verifier, as patched by
# patches/xen-4.17/verify-stream-v2-postcopy.patch, decodes them.  Good
# streams must verify; each bad-*.libxc (right records, wrong pages or
# order) must be rejected with the reason named here.
#
# Usage: patches/tests/verify-streams.sh XEN_TREE
#   XEN_TREE: the source tree scripts/xen-build patched (the verifier is
#   run from its tools/python).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
tree=${1:?usage: $0 XEN_TREE}
verifier=$tree/tools/python/scripts/verify-stream-v2
grep -q postcopy-back "$verifier" ||
	{ echo "error: $verifier is not patched (run scripts/xen-build)" >&2; exit 1; }

sample=$top/patches/tests/stream-sample
out=${XEN_BUILD_DIR:-$top/build/xen}/streams
rm -rf "$out"
mkdir -p "$out"

# The sample tool is its own workspace; build it against the versions the
# main workspace has locked.
cp "$top/Cargo.lock" "$sample/Cargo.lock"
export CARGO_TARGET_DIR=$top/target/xen-stream-sample
cargo build -q --manifest-path "$sample/Cargo.toml"
"$CARGO_TARGET_DIR/debug/postcopy-stream-sample" "$out"

export PYTHONPATH=$tree/tools/python
verify() { python3 "$verifier" "$@"; }

fail=0
check_ok() {
	local what=$1
	shift
	if verify "$@" >"$out/log" 2>&1; then
		echo "ok: $what verifies"
	else
		cat "$out/log" >&2
		echo "FAIL: $what does not verify" >&2
		fail=1
	fi
}
check_bad() { # FILE REASON [VERIFIER ARGS...]
	local file=$1 reason=$2
	shift 2
	if verify "$@" -i "$out/$file" >"$out/log" 2>&1; then
		echo "FAIL: $file verified, expected: $reason" >&2
		fail=1
	elif grep -q "RecordError: .*$reason" "$out/log"; then
		echo "ok: $file rejected: $reason"
	else
		cat "$out/log" >&2
		echo "FAIL: $file rejected for another reason, expected: $reason" >&2
		fail=1
	fi
}

check_ok "libxc stream (post-copy)" -v -i "$out/forward.libxc"
check_ok "libxl stream (post-copy, transition end)" -f libxl -i "$out/forward.libxl"
check_ok "back channel" -f postcopy-back --guest-pfns 4096 -i "$out/back.stream"
check_ok "back channel, aborted" -f postcopy-back -i "$out/back-abort.stream"
check_ok "libxc stream with the early page-out (EARLY_PFNS, BEGIN asks for ACKs)" -v -i "$out/forward-early.libxc"
check_ok "back channel with EARLY_DONE, READY and ACKs" -f postcopy-back --guest-pfns 4096 -i "$out/back-early.stream"
check_bad bad-duplicate.libxc "sent twice"
check_bad bad-missing.libxc "owed pages still missing"
check_bad bad-not-owed.libxc "was not owed"
check_bad bad-back-in-forward.libxc "Back channel record in the forward stream"
check_bad bad-push-before-transition.libxc "cause push before the transition"
check_bad bad-early-after-begin.libxc "Postcopy early pfns record after Postcopy begin"
check_bad bad-early-ring.libxc "covers the ring pfn"
check_bad bad-early-size.libxc "but Postcopy early pfns said"
check_bad bad-back-ack.stream "Postcopy ack: .* bytes after" -f postcopy-back --guest-pfns 4096
exit $fail
