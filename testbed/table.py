#!/usr/bin/env python3
"""Prints the Markdown table of testbed/README.md from a results folder
($TB/results/*/result.json), one row per scenario in the order given (or
every scenario found).  For the soak, the time columns are the last
migration's engine report; paused ms and guest stall ms the largest over
all migrations (result.json has each one in per_migration).

Usage: table.py RESULTS_DIR [SCENARIO...]

seed-MIB scenarios also get a second table: one row per migration (pre-copy,
hybrid, post-copy of the same guest) with the ratios to pre-copy.  Guests
with a disk or NIC, or on two hosts, get one more: faults and blocktime by
origin (guest vCPU or dom0 backend), devices verified, backend errors."""
import glob
import json
import os
import sys

d = sys.argv[1]
names = sys.argv[2:] or sorted(
    os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(d, "*", "result.json")))


def cell(v):
    return "–" if v is None else str(v)


def header(cols):
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))


def results(scenarios, width):
    """(name, result.json) per scenario; a row saying so where it is missing."""
    for n in scenarios:
        try:
            yield n, json.load(open(os.path.join(d, n, "result.json")))
        except (OSError, ValueError):
            print(f"| {n} | (no result) |" + " |" * (width - 2))


header(["scenario", "xl migrate args", "ok", "total_time_ms", "downtime_ms", "paused ms", "guest stall ms",
        "page-out ms", "pages_transferred (pushed/faulted/zero)", "pages_skipped", "network_faults",
        "fault_latency_us p50/p99", "guest max stall ms", "passes verified after"])
for n, r in results(names, 14):
    args = r.get("migrate_args") or "(pre-copy)"
    if r.get("link"):
        args += f", link down {r['link']['drops_planned']} × {r['link']['outage_s_each']} s ({r['link']['outages']} outages)"
    if "guest=hvm" in (r.get("guest_opts") or "") or n == "hvm":
        args += ", HVM guest"
    if r.get("evict") == "per-page":
        args += ", page-out per pfn"
    if r.get("load") == "per-page":
        args += ", page-in per page"
    if r.get("soak_planned"):
        args += f", {r.get('migrations')} migrations, {r.get('guest_deaths')} guest deaths"
    if r.get("guest_death"):
        args += ", destination crashed mid-post-copy"
    if r.get("workload") == "stress":
        args += ", stress guest"
    pt = r.get("pages_transferred")
    pages = f"{pt} ({r.get('pages_pushed')}/{r.get('pages_faulted')}/{r.get('pages_zero')})" if pt else None
    fl = r.get("fault_latency_us")
    lat = f"{fl['p50']} / {fl['p99']}" if fl else None
    dt = r.get("downtime_ms")
    po = (r.get("page_out") or {}).get("ms")
    print("| " + " | ".join(cell(x) for x in [
        n, f"`{args}`", "yes" if r.get("ok") else "**no**", r.get("total_time_ms"),
        round(dt) if dt is not None else None, r.get("paused_ms"), r.get("guest_stall_ms"), po, pages, r.get("pages_skipped"),
        r.get("network_faults"), lat, r.get("guest_max_stall_ms"),
        r.get("verified_passes_after_migration")]) + " |")

# The seed's stress test (seed-MIB scenarios): one row per migration, and
# post-copy's and hybrid's ratios to pre-copy of the same guest, same boot.
seeds = [n for n in names if n.startswith("seed-")]
if seeds:
    print()
    header(["guest", "mode", "ok", "total ms", "downtime ms (stop → unpause)", "pages sent", "stream MiB",
            "guest stall ms", "work rate during ÷ before", "work lost s", "total ÷ pre-copy", "pages ÷ pre-copy",
            "downtime ÷ pre-copy"])
for n, r in results(seeds, 13):
    migs = r.get("per_migration") or []
    pre = next((m for m in migs if m.get("mode") == "precopy"), {})
    sd = r.get("seed") or {}

    def ratio(m, k):
        a, b = m.get(k), pre.get(k)
        return round(a / b, 2) if a is not None and b else None

    for m in migs:
        w = m.get("work_rate") or {}
        sb = m.get("stream_bytes")
        print("| " + " | ".join(cell(x) for x in [
            f"{r.get('guest_mem_mib')} MiB, {sd.get('working_set_mib')} MiB dirtied at {sd.get('dirty_mibps')} MiB/s",
            m.get("mode"), "yes" if m.get("migrate_rc") == 0 and r.get("ok") else "**no**",
            m.get("total_time_ms"), m.get("downtime_ms"), m.get("pages_transferred"),
            round(sb / 1048576) if sb else None, m.get("guest_stall_ms"), w.get("during_vs_before"),
            w.get("lost_s"), ratio(m, "total_time_ms"), ratio(m, "pages_transferred"),
            ratio(m, "downtime_ms")]) + " |")

# Guests with devices, or on two hosts (issue #16): where the faults came
# from (a guest vCPU or a dom0 backend / device model, "foreign"), how long
# each waited, the devices' verification and what the backends said.
def loaded(scenarios):
    """(name, result.json) of the scenarios that have one."""
    for n in scenarios:
        try:
            yield n, json.load(open(os.path.join(d, n, "result.json")))
        except (OSError, ValueError):
            pass


devrows = [(n, r) for n, r in loaded(n for n in names if n not in seeds)
           if (r.get("hosts") or 1) > 1 or r.get("disk_ok") is not None or r.get("net_ok") is not None]
if devrows:
    print()
    header(["scenario", "hosts", "transport", "vCPUs", "ok", "total ms", "downtime ms", "faults by origin",
            "blocktime ms by origin", "guest max stall ms", "disk ok", "net ok", "backend errors",
            "dom0 panicked", "frames read before granting"])


def by_origin(m):
    return ", ".join(f"{k} {v}" for k, v in sorted(m.items())) if m else None


for n, r in devrows:
    gt = r.get("grant_touch")
    dt = r.get("downtime_ms")
    print("| " + " | ".join(cell(x) for x in [
        n, r.get("hosts"), r.get("transport"), r.get("vcpus"), "yes" if r.get("ok") else "**no**",
        r.get("total_time_ms"), round(dt) if dt is not None else None, by_origin(r.get("faults_by_origin")),
        by_origin(r.get("blocktime_ms")), r.get("guest_max_stall_ms"), r.get("disk_ok"), r.get("net_ok"),
        r.get("backend_errors"), ", ".join(r.get("dom0_panics") or []) or "no",
        gt.get("touched") if gt else "(not loaded)"]) + " |")
