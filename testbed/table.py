#!/usr/bin/env python3
"""Prints the Markdown table of testbed/README.md from a results folder
($TB/results/*/result.json), one row per scenario in the order given (or
every scenario found).  For the soak, the time columns are the last
migration's engine report; paused ms and guest stall ms the largest over
all migrations (result.json has each one in per_migration).

Usage: table.py RESULTS_DIR [SCENARIO...]"""
import glob
import json
import os
import sys

d = sys.argv[1]
names = sys.argv[2:] or sorted(
    os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(d, "*", "result.json")))


def cell(v):
    return "–" if v is None else str(v)


print("| scenario | xl migrate args | ok | total_time_ms | downtime_ms | paused ms | guest stall ms | page-out ms | pages_transferred (pushed/faulted/zero) | pages_skipped | network_faults | fault_latency_us p50/p99 | guest max stall ms | passes verified after |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    try:
        r = json.load(open(os.path.join(d, n, "result.json")))
    except (OSError, ValueError):
        print(f"| {n} | (no result) |" + " |" * 12)
        continue
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
