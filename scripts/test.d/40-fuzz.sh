#!/usr/bin/env bash
# CI step: every fuzz target (fuzz/, cargo-fuzz + libFuzzer with
# AddressSanitizer, on the stable toolchain via RUSTC_BOOTSTRAP=1) runs
# briefly from its committed seeds, after replaying the kept crash inputs
# of fuzz/regressions/. A crash fails the step. About 4.5 minutes on
# 2 cores: cargo-fuzz install ~45 s if missing, build ~3.5 min, 11 x 5 s
# (a smoke run, 5 s and not 20: CI's whole run must stay under 45 min
# with its two testbed scenarios, and stop 29's took 45.3). Longer runs:
# scripts/fuzz SECONDS (e.g. 300 per target by hand before a release).
set -euo pipefail
. scripts/lib/common.sh

apt_install build-essential clang
if ! cargo fuzz --version >/dev/null 2>&1; then
	step "fuzz: cargo install cargo-fuzz"
	cargo install cargo-fuzz --locked
fi
scripts/fuzz "${FUZZ_CI_SECONDS:-5}"
