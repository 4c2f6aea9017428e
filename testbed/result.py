#!/usr/bin/env python3
"""Turns one scenario's dom0 output (meta.env, migrate.log, guest consoles)
into result.json with the local-mode report's keys; prints one table row.

Usage: result.py RESULT_DIR [EXTRA_JSON]"""
import glob
import json
import os
import re
import shlex
import sys

d = sys.argv[1]
extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
meta = {}
try:
    for line in open(os.path.join(d, "meta.env"), errors="replace"):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            meta[k] = " ".join(shlex.split(v)) if v else ""
except OSError:
    pass
log = ""
try:
    log = open(os.path.join(d, "migrate.log"), errors="replace").read()
except OSError:
    pass


def block(header):
    """The engine's report table after HEADER ('post-copy source done:')."""
    i = log.rfind(header)
    if i < 0:
        return {}
    rows = {}
    for line in log[i:].splitlines()[1:20]:
        m = re.match(r"\s+([a-z][a-z0-9 ()-]+?)\s{2,}(.*)$", line)
        if not m:
            break
        rows[m.group(1).strip()] = m.group(2).strip()
    return rows


def num(s, pat=r"([0-9.]+)"):
    m = re.search(pat, s or "")
    return float(m.group(1)) if m else None


src = block("post-copy source done:")
dst = block("post-copy destination done:")
r = {
    "scenario": meta.get("name", os.path.basename(d)),
    "migrate_args": meta.get("migrate_args"),
    "guest_opts": meta.get("guest_opts", "").strip(),
    "guest_mem_mib": int(meta.get("guest_mem_mib", 0) or 0),
    "memtest_mib": int(meta.get("memtest_mib", 0) or 0),
    "migrate_rc": int(meta.get("migrate_rc", -1) or -1) if meta.get("migrate_rc") else None,
    "xl_migrate_ms": int(meta["migrate_ms"]) if meta.get("migrate_ms") else None,
    "xen_version": meta.get("xen_version"),
    "dom0_kernel": meta.get("dom0_kernel"),
}
r["total_time_ms"] = num(src.get("total time")) or r["xl_migrate_ms"]
r["downtime_ms"] = num(src.get("downtime")) if src.get("downtime") else None
r["postcopy_time_ms"] = num(src.get("post-copy phase"))
pt = src.get("pages transferred")
r["pages_transferred"] = int(num(pt)) if pt else None
for k in ("pushed", "faulted", "pre-copy", "zero"):
    v = num(pt, k + r" ([0-9]+)") if pt else None
    r["pages_" + k.replace("-", "")] = int(v) if v is not None else None
r["pages_skipped"] = int(num(src.get("pages skipped (free)"))) if src.get("pages skipped (free)") else None
nf = dst.get("network faults") or src.get("network faults")
r["network_faults"] = int(num(nf)) if nf else None
fl = dst.get("fault latency")
r["fault_latency_us"] = (
    {k: int(num(fl, k + r" ([0-9]+)") or 0) for k in ("p50", "p90", "p99", "max")} if fl else None
)
# In-guest view: every page verified, the longest stall seen by the workload.
passes, bad, gaps, kernel, syscalls_bad = 0, 0, [], None, 0
inc = sorted(glob.glob(os.path.join(d, "guest-*--incoming.log")))
for f in glob.glob(os.path.join(d, "guest-*.log")):
    for line in open(f, errors="replace"):
        m = re.search(r"MEMTEST pass \d+ ok=(\d) pages=\d+ bad=(\d+).*maxgap_ms=(\d+)", line)
        if m:
            bad += int(m.group(2))
            gaps.append(int(m.group(3)))
            if f in inc:
                passes += 1
        if "MEMTEST BAD" in line:
            bad += 1
        if re.search(r"MEMTEST syscalls \d+ ok=0", line):
            syscalls_bad += 1
        m = re.search(r"GUEST-UP .*kernel=(\S+)", line)
        if m:
            kernel = m.group(1)
r["verified_passes_after_migration"] = passes
# The destination's page-out of the owed pfns (inside the downtime).
m = re.search(r"paged out (\d+) owed pfns in ([0-9.]+)(ms|s|µs|us) \((\d+) by range, (\d+) page by page\)", log)
if m:
    scale = {"s": 1000.0, "ms": 1.0, "µs": 0.001, "us": 0.001}[m.group(3)]
    r["page_out"] = {"pfns": int(m.group(1)), "ms": round(float(m.group(2)) * scale, 1),
                     "by_range": int(m.group(4)), "by_page": int(m.group(5))}
r["evict"] = meta.get("evict")
r["integrity_ok"] = bool(
    meta.get("migrate_rc") == "0" and meta.get("verify_rc") == "0" and bad == 0 and passes >= 2
    and syscalls_bad == 0
)
r["guest_max_stall_ms"] = max(gaps) if gaps else None
r["guest_kernel"] = kernel
r["ok"] = r["integrity_ok"]
# link-drop: the tunnel's counters from both ends, the cuts made.
link = {}
for end in ("connect", "listen"):
    try:
        link[end] = json.load(open(os.path.join(d, "tunnel-%s.json" % end)))
    except (OSError, ValueError):
        pass
drops = int(meta.get("link_drops", 0) or 0)
if drops:
    killed = 0
    try:
        for line in open(os.path.join(d, "drops.log")):
            killed += int(num(line, r"killed=([0-9]+)") or 0)
    except OSError:
        pass
    c = link.get("connect", {})
    r["link"] = {
        "drops_planned": drops,
        "outage_s_each": int(meta.get("link_outage_s", 0) or 0),
        "connection_ends_killed": killed,
        "outages": c.get("outages"),
        "outage_ms_max": c.get("outage_ms_max"),
        "outage_ms_total": c.get("outage_ms_total"),
        "bytes_resent": c.get("bytes_resent"),
        "connections": c.get("connections"),
        "listen_outages": link.get("listen", {}).get("outages"),
    }
    # Passes only if the link really went down during the migration and
    # the tunnel came back every time.
    r["ok"] = bool(r["integrity_ok"] and (c.get("outages") or 0) >= 1 and killed >= 1)
r.update(extra)
json.dump(r, open(os.path.join(d, "result.json"), "w"), indent=2)
print(json.dumps(r))
