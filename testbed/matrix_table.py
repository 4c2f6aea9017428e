#!/usr/bin/env python3
"""The matrix of issue #16 as one Markdown table: one host / two hosts x
ssh / tunnel x PVH / HVM x 1 / 2 vCPUs x 256 MiB / 1 GiB, each cell the
stress guest with its disk and NIC busy.  `scripts/testbed matrix` runs
the cells (MATRIX_FILTER picks some); a session runs them in batches, so
this reads several results folders and takes each cell from the last
folder given that has it.  A cell no folder has is printed as not run;
the last line counts the cells run and passed.

Usage: matrix_table.py RESULTS_DIR [RESULTS_DIR...]
(each a copy of $TB/results after `scripts/testbed matrix`)."""
import json
import os
import sys

CELLS = [(t, g, v, z) for t in ("local", "ssh", "tunnel") for g in ("pvh", "hvm")
         for v in (1, 2) for z in (256, 1024)]


def name(t, g, v, z):
    """The scenario's name, as scripts/testbed's matrix makes it."""
    return f"m1-{g}-{v}v-{z}" if t == "local" else f"m2-{t}-{g}-{v}v-{z}"


def cell(v):
    return "–" if v is None else str(v)


def by_origin(m):
    return ", ".join(f"{k} {v}" for k, v in sorted(m.items())) if m else None


def verified(r):
    """memory / disk / net, each ok or not, with the passes after the switch."""
    mem = "ok" if r.get("integrity_ok") else "**bad**"
    disk = r.get("disk") or {}
    net = r.get("net") or {}
    d = f"{'ok' if r.get('disk_ok') else '**bad**'} ({disk.get('passes_after_migration')})"
    n = f"{'ok' if r.get('net_ok') else '**bad**'} ({net.get('passes_after_migration')})"
    return f"{mem} ({r.get('verified_passes_after_migration')}) / {d} / {n}"


def why_not(r):
    """The first reason a failed cell gives, from its result.json."""
    if r.get("ok"):
        return None
    if r.get("hotplug_timeouts"):
        return "hotplug killed at libxl's 40 s: " + ", ".join(r["hotplug_timeouts"])
    if r.get("guest_deaths"):
        return "guest died"
    if r.get("migrate_rc") not in (0, None):
        return f"xl migrate rc {r.get('migrate_rc')}"
    if r.get("backend_errors"):
        return "backend errors"
    return "verification"


def main(dirs):
    found = {}
    for d in dirs:
        for c in CELLS:
            try:
                found[c] = (d, json.load(open(os.path.join(d, name(*c), "result.json"))))
            except (OSError, ValueError):
                pass
    cols = ["scenario", "hosts", "transport", "guest (NIC)", "vCPUs", "MiB", "ok", "xl migrate s",
            "downtime ms", "pages (pushed/faulted/zero)", "faults by origin", "blocktime ms per vCPU",
            "longest stall ms", "verified after (memory / disk / net)", "backend errors", "why not", "results"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    passed = 0
    for c in CELLS:
        t, g, v, z = c
        n = name(*c)
        if c not in found:
            print(f"| {n} | {1 if t == 'local' else 2} | {t} | {g} | {v} | {z} | not run |"
                  + " |" * (len(cols) - 7))
            continue
        d, r = found[c]
        passed += bool(r.get("ok"))
        tt = r.get("total_time_ms")
        dt = r.get("downtime_ms")
        pt = r.get("pages_transferred")
        pages = f"{pt} ({r.get('pages_pushed')}/{r.get('pages_faulted')}/{r.get('pages_zero')})" if pt else None
        stall = r.get("guest_max_stall_ms")
        print("| " + " | ".join(cell(x) for x in [
            n, 1 if t == "local" else 2, t, f"{g} ({r.get('nic') or '?'})", v, z,
            "yes" if r.get("ok") else "**no**",
            round(tt / 1000, 1) if tt is not None else None, round(dt) if dt is not None else None, pages,
            by_origin(r.get("faults_by_origin")), by_origin(r.get("blocktime_ms")), stall, verified(r),
            r.get("backend_errors"), why_not(r), os.path.basename(os.path.normpath(d))]) + " |")
    print(f"\n{len(found)} of {len(CELLS)} cells run, {passed} passed.")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
