#!/usr/bin/env bash
# CI step: the emulated Xen host.  scripts/testbed builds
# the image (Debian's Xen 4.17 source with patches/xen-4.17, the hypervisor
# with mem_paging, libxl_postcopy.so, a debootstrapped dom0, Debian's 6.1
# kernel, the guest initramfs with the memtest verifier), boots Xen + PV
# dom0 under QEMU TCG and runs the `postcopy` scenario: a PVH guest
# migrated with `xl migrate --postcopy --prepage=bubble` on localhost, its
# memory verified page by page after the switch; then `twohost-ci` (two
# emulated hosts, `xl migrate --postcopy` over ssh of a guest whose PV
# disk and NIC stay busy and verified).  The 30-migration `soak` runs
# by command (`SOAK_N=30 scripts/testbed soak`, ~1 h).  Then the same
# scenario on Xen 4.20 (Debian 13 dom0 root, TESTBED_XEN=4.20, cache folder
# TB_420, default $TB-4.20) when 30-xen-patches.sh built the 4.20 tree;
# ~10 min more from nothing (trixie debootstrap, cargo against the 4.20
# headers).  Needs root,
# ~5 GiB of RAM for QEMU and ~4 GiB of disk in $TB; times in
# scripts/testbed's header; the phase times are printed at the end.
# TESTBED_SKIP=1 skips this step (for a quick local `scripts/test`; CI
# never sets it).
set -euo pipefail
. scripts/lib/common.sh

if [ "${TESTBED_SKIP:-0}" = 1 ]; then
	step "testbed: skipped (TESTBED_SKIP=1)"
	exit 0
fi
step "testbed: postcopy scenario on the emulated Xen host"
# A guest that triple-faults fails the scenario.  On this emulated host
# (QEMU 7.2 TCG's nested SVM) that happened to guests that never had a
# page absent too, at boot and in pre-copy, right after a guest RDTSC that
# Xen intercepted (docs/issue-21-triple-fault.md): the testbed now runs its
# guests with tsc_mode="native" (TSC_MODE in scripts/testbed), as Xen's
# default mode does on hardware with an invariant TSC, and no death on an
# RDTSC was seen since (2026-12-07); QEMU's world-switch defect (the guest
# entered with Xen's own host state) remains: fresh guests at boot, and
# one post-copy migration in six in that night's soak.  A try that ends in
# the emulator's signatures is tried again, at most three more times, and
# says so loudly; any other failure (xl migrate, integrity, a verifier
# pass) fails at once.
# run_series SERIES TB [SCENARIO [TRIES]]: the scenario (postcopy) on the
# series' testbed (its own cache folder TB), with the retries above (TRIES
# in all, 4).
run_series() {
	local v=$1 TB=$2 sc=${3:-postcopy} tries=${4:-4} try=1 r deaths boots membad emu
	while ! TESTBED_XEN=$v TB=$TB scripts/testbed "$sc"; do
		r=$TB/results/$sc
		deaths=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("guest_deaths") or 0)' "$r/result.json" 2>/dev/null || echo 0)
		# a guest that died at boot just as the migration was to begin (xl
		# restarting it) fails xl migrate at once with no guest death counted
		boots=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("boot_deaths") or []))' "$r/result.json" 2>/dev/null || echo 0)
		membad=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("memory_bad") or 0)' "$r/result.json" 2>/dev/null || echo 0)
		# Xen's serial console (boot.log) holds every line of the boot; xl
		# dmesg's ring is small and the post-mortem's own lines can push the
		# triple fault out of it.  The emulator's other signature: Xen itself
		# double-faults on a user-space stack (issue #21), ending the boot.
		emu=
		if { [ "$deaths" != 0 ] || [ "$boots" != 0 ]; } &&
			grep -aq 'Triple fault' "$TB/results/boot.log" "$r/xl-dmesg.txt" 2>/dev/null; then
			emu='a guest triple fault'
		elif grep -aq 'DOUBLE FAULT -- system shutdown' "$TB/results/boot.log" 2>/dev/null &&
			grep -aq 'differs from expected' "$TB/results/boot.log"; then
			emu='a Xen double fault on a user-space stack'
		elif [ "$membad" = 0 ] &&
			grep -aqE 'soft lockup|clocksource: Long readout interval' \
				"$r/dmesg-scenario.txt" "$r/hostb/dmesg-scenario.txt" \
				"$TB/results/boot.log" "$TB/results/hostb/boot.log" 2>/dev/null; then
			# The third: an emulated CPU that stopped for tens of seconds
			# (QEMU's TCG thread starved by the other host's on 2 cores):
			# dom0's watchdog sees a soft lockup in whatever ran, its
			# clocksource watchdog a readout that took seconds, and a peer
			# times the stalled host out (twohost's first CI run: xl's ssh
			# to host B dropped mid-handshake).  The serial consoles
			# too: a scenario whose host stalled until QEMU's time limit
			# never wrote its dmesg.  Never when the guest's memory was
			# checked and found wrong.
			emu='an emulated CPU stalled for seconds (dom0 soft lockup / long clocksource readout)'
		fi
		if [ "$try" -ge "$tries" ] || [ -z "$emu" ]; then
			return 1
		fi
		echo "testbed: Xen $v: try $try ended in $emu (the emulator's, see docs/issue-21-triple-fault.md):"
		grep -ah -A4 -e 'Triple fault' -e 'DOUBLE FAULT' "$TB/results/boot.log" "$r/xl-dmesg.txt" 2>/dev/null | tr -d '\r' | head -n 10 || true
		grep -ah -e 'soft lockup' -e 'Long readout' "$r/dmesg-scenario.txt" "$r/hostb/dmesg-scenario.txt" \
			"$TB/results/boot.log" "$TB/results/hostb/boot.log" 2>/dev/null | head -n 6 || true
		try=$((try + 1))
		step "testbed: Xen $v: $sc scenario, try $try"
	done
	# guests that died before the migration began (the emulator's boot-time
	# triple fault; xl restarted them): reported, not counted against it
	python3 -c 'import json,sys; b=json.load(open(sys.argv[1])).get("boot_deaths") or []; b and print("testbed: %d guest boot(s) died before the migration began (domids %s; issue #21), the scenario went on with the restarted guest" % (len(b), b))' "$TB/results/$sc/result.json" || true
}

TB=${TB:-/var/tmp/xen-postcopy-testbed}
run_series 4.17 "$TB"
# Two hosts with devices (issue #16): `xl migrate --postcopy
# --prepage=bubble t-twohost-ci hostb` over ssh between two emulated hosts,
# the memtest guest (1 vCPU, 256 MiB) with a PV disk and a PV NIC (sending
# from a memfd with sendfile) busy and verified on both sides of the
# switch, postcopy_grants.ko in the guest, backends' errors in both dom0s
# failing it; one more try on the emulator's signatures (a stalled
# emulated CPU among them: twohost's first clean-clone CI run failed
# before anything was suspended when host A's emulated CPU made no
# progress for ~80 s in xl's ssh handshake).  ~12 min here (2026-12-07:
# the hosts boot in ~1.5 min, xl migrate 270 s).  TESTBED_TWOHOST=0 skips
# it; TESTBED_TWOHOST=twohost runs the heavier stress guest with 2 vCPUs
# instead (20 min before its migration begins on this machine).
case ${TESTBED_TWOHOST:-1} in
0) echo "skip: two-host scenario (TESTBED_TWOHOST=0)" ;;
1 | twohost-ci) step "testbed: Xen 4.17: two hosts, PV disk and NIC busy (twohost-ci)"; run_series 4.17 "$TB" twohost-ci 2 ;;
*) step "testbed: Xen 4.17: two hosts ($TESTBED_TWOHOST)"; run_series 4.17 "$TB" "$TESTBED_TWOHOST" 2 ;;
esac
# Xen 4.20 (a Debian 13 dom0 root, scripts/testbed's TESTBED_XEN): when
# 30-xen-patches.sh built its tree (its source could be had, or
# XEN_SOURCE_GIT), in a cache folder of its own; else a reported skip, a
# failure when XEN_SERIES_REQUIRED names 4.20.
if [ -f build/xen-4.20/VERSION ]; then
	step "testbed: Xen 4.20: postcopy scenario (Debian 13 dom0 root)"
	run_series 4.20 "${TB_420:-$TB-4.20}"
else
	case " ${XEN_SERIES_REQUIRED:-4.17} " in *" 4.20 "*) die "testbed: no built Xen 4.20 tree (build/xen-4.20)" ;; esac
	echo "skip: testbed on Xen 4.20: no built 4.20 tree (its source could not be fetched; XEN_SOURCE_GIT builds from upstream)"
fi
