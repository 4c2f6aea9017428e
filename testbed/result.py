#!/usr/bin/env python3
"""Turns one scenario's dom0 output (meta.env, migrate.log, migrations.env,
domstates.log, guest consoles) into result.json with the local-mode
report's keys; prints one table row.

Besides the engine's figures: paused_ms (source suspended or paused →
destination unpaused, from dom0's domstates poller), guest_stall_ms (the
longest heartbeat gap on the destination console, i.e. after the guest
resumed), the stress guest's counters (stress-ng runs and failures, tmpfs
checksum checks and failures), and for the soak and guest-death scenarios
migrations, guest_deaths, per_migration and the death checks.
boot_deaths: domids of guests that died before the first migration began
(xl restarted them; not counted in guest_deaths).

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


def block(header, text=None):
    """The engine's report table after HEADER ('post-copy source done:')."""
    log_ = log if text is None else text
    i = log_.rfind(header)
    if i < 0:
        return {}
    rows = {}
    # On one host both helpers write to the same log, so a line of the
    # other side may land inside the table (even mid-row: "post-copy phase
    # 160058.6 msxc: info: ..." and then an empty line): such lines are
    # skipped, not taken as the table's end.  The table ends at its last
    # row (time by part, or the destination's install on CPU after it) or
    # at the other side's report.
    for line in log_[i:].splitlines()[1:30]:
        if line.rstrip().endswith(" done:"):
            break
        m = re.match(r"\s+([a-z][a-zA-Z0-9 ()-]+?)\s{2,}(.*)$", line)
        if not m:
            continue
        key = m.group(1).strip()
        if key in rows or ("time by part" in rows and key != "install on CPU"):
            break
        rows[key] = m.group(2).strip()
        if key == "install on CPU":
            break
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
# the engine's own downtime (source's suspend to the destination helper
# serving); downtime_ms itself is dom0's paused window, set below
r["engine_downtime_ms"] = num(src.get("downtime")) if src.get("downtime") else None


def mode_of(args):
    a = " %s " % (args or "")
    return "precopy" if " --postcopy " not in a else ("hybrid" if "--postcopy-after" in a else "postcopy")


r["mode"] = mode_of(r["migrate_args"])
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
# After a migration: the destination's console; for the soak, the console of
# the guest that ran after migration I is mig-<domain>-I.log.
inc = sorted(glob.glob(os.path.join(d, "guest-*--incoming.log"))) + sorted(glob.glob(os.path.join(d, "mig-*.log")))
for f in glob.glob(os.path.join(d, "guest-*.log")) + glob.glob(os.path.join(d, "mig-*.log")):
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
# pages the verifier found wrong (a BAD word or a failed syscall check), on
# either side of the switch: never the emulator's (CI retries on that)
r["memory_bad"] = bad + syscalls_bad
def dur_ms(text):
    """A Rust Duration's Debug text ('1.06s', '77.3ms', '950µs') in ms."""
    m = re.match(r"([0-9.]+)(s|ms|µs|us|ns)$", text or "")
    if not m:
        return None
    return round(float(m.group(1)) * {"s": 1000.0, "ms": 1.0, "µs": 0.001, "us": 0.001, "ns": 1e-6}[m.group(2)], 1)


# The destination's page-out of the owed pfns (inside the downtime).
m = re.search(r"paged out (\d+) owed pfns in ([0-9.]+)(ms|s|µs|us) \((\d+) by range, (\d+) page by page\)", log)
if m:
    scale = {"s": 1000.0, "ms": 1.0, "µs": 0.001, "us": 0.001}[m.group(3)]
    r["page_out"] = {"pfns": int(m.group(1)), "ms": round(float(m.group(2)) * scale, 1),
                     "by_range": int(m.group(4)), "by_page": int(m.group(5))}
r["evict"] = meta.get("evict")
# Issue #15's early page-out (LIBXL_POSTCOPY_EVICT_EARLY=on): the
# destination paged the prescan's pfns out before the stop; at the stop
# only the difference (owed pfns added, freed ones given back).
r["evict_early"] = meta.get("evict_early")
# The helpers' fault threads' nice value (LIBXL_POSTCOPY_FAULT_NICE).
r["fault_nice"] = meta.get("fault_nice")
m = None
for m in re.finditer(r"early page-out: (\d+) pfns in (\S+) before the stop; at the stop (\d+) kept, "
                     r"(\d+) added, (\d+) loaded \(must be present\), (\d+) given back in (\S+)", log):
    pass
r["early_page_out"] = ({"pfns": int(m.group(1)), "ms": dur_ms(m.group(2)), "kept": int(m.group(3)),
                        "added": int(m.group(4)), "loaded_present": int(m.group(5)),
                        "given_back": int(m.group(6)), "give_back_ms": dur_ms(m.group(7))}
                       if m else None)
m = None
for m in re.finditer(r"(\d+) pfns in (\d+) EARLY_PFNS records, (\d+) paged out at the destination in (\S+), "
                     r"before the stop", log):
    pass
r["early_wait_ms"] = dur_ms(m.group(4)) if m else None
# The destination's page-in of the owed pages (the post-copy phase): how
# they were loaded, and the rate over the phase as the source saw it.
m = re.search(r"loaded (\d+) owed pages in ([0-9.]+)(ms|s|µs|us) \(([0-9]+) pages/s\): (\d+) by batch "
              r"in (\d+) calls \((\d+) of them zero pages, not copied\), (\d+) page by page", log)
if m:
    scale = {"s": 1000.0, "ms": 1.0, "µs": 0.001, "us": 0.001}[m.group(3)]
    r["page_in"] = {"pages": int(m.group(1)), "ms": round(float(m.group(2)) * scale, 1),
                    "pages_per_s": int(m.group(4)), "by_batch": int(m.group(5)),
                    "batch_calls": int(m.group(6)), "zero_not_copied": int(m.group(7)),
                    "by_page": int(m.group(8))}
r["load"] = meta.get("load")
r["scan"] = meta.get("scan")


# The source's share of the downtime by part (its helper's log; the last
# migration's): scan (finding the populated pfns at the stop), walks (the
# must-present set), present (sending it), records (libxenguest's CPU
# records), ready (PFNS, the destination's page-out, READY, TRANSITION).
# Older helpers logged only the first three, in the "begin took" line.
parts = None
for m in re.finditer(r"downtime parts: scan ([0-9.]+) ms \((\d+) pfns asked\), walks ([0-9.]+) ms, "
                     r"present ([0-9.]+) ms, records ([0-9.]+) ms, ready ([0-9.]+) ms", log):
    parts = {"scan": float(m.group(1)), "walks": float(m.group(3)), "present": float(m.group(4)),
             "records": float(m.group(5)), "ready": float(m.group(6))}
    r["scan_pfns_asked"] = int(m.group(2))
if parts is None:
    for m in re.finditer(r"begin took \S+ \(populated scan (\S+?)(?: of (\d+) pfns)?, page-table walks (\S+), "
                         r"must-present pages (\S+)\)", log):
        parts = {"scan": dur_ms(m.group(1)), "walks": dur_ms(m.group(3)), "present": dur_ms(m.group(4))}
        if m.group(2):
            r["scan_pfns_asked"] = int(m.group(2))
# and the whole of it: from begin (domain suspended) to TRANSITION sent
m = None
for m in re.finditer(r"TRANSITION sent (\S+) after the stop", log):
    pass
if parts is not None and m:
    parts["to_transition"] = dur_ms(m.group(1))
r["source_downtime_parts_ms"] = parts
r["source_scan_ms"] = parts.get("scan") if parts else None
# Pure post-copy: the populated pfns found while the guest still ran.
m = None
for m in re.finditer(r"prescan found (\d+) populated of (\d+) pfns in (\S+) while the guest ran; "
                     r"at the stop (\d+) pfns asked again", log):
    pass
r["prescan"] = ({"populated": int(m.group(1)), "pfns": int(m.group(2)), "ms": dur_ms(m.group(3)),
                 "asked_at_stop": int(m.group(4))} if m else None)
# The fault lane (issue #15 item 2): the push window, the transport, and a
# bare FAULT / one-page reply round trip over that transport in dom0
# (`xl-postcopy rtt`): the floor of a network fault's service.
r["push_window"] = meta.get("window")
# The push's hold until RESUMED (LIBXL_POSTCOPY_PUSH_HOLD; "default": none)
# and how long it waited (the source's log line), or None.
r["push_hold"] = meta.get("push_hold")
m = re.search(r"push held ([0-9.]+)(ms|s|µs) until the destination resumed", log)
r["push_held_ms"] = (round(float(m.group(1)) * {"s": 1000, "ms": 1, "µs": 0.001}[m.group(2)])
                     if m else None)
r["fault_lane"] = "fault replies on their own lane" in log
r["transport"] = "tunnel" if meta.get("tunnel") == "1" or int(meta.get("link_drops", 0) or 0) else "pipe"
try:
    rtt = open(os.path.join(d, "rtt.txt"), errors="replace").read()
except OSError:
    rtt = ""
p50 = num(rtt, r"p50 ([0-9.]+) us")
r["bare_rtt_us"] = {"p50": p50, "p99": num(rtt, r"p99 ([0-9.]+) us")} if p50 else None
fl50 = (r.get("fault_latency_us") or {}).get("p50")
r["fault_p50_over_rtt"] = round(fl50 / p50, 1) if fl50 and p50 else None
postcopy_pages = sum(r.get("pages_" + k) or 0 for k in ("pushed", "faulted", "zero"))
r["page_in_pages_per_s"] = (
    round(postcopy_pages * 1000.0 / r["postcopy_time_ms"]) if r.get("postcopy_time_ms") else None
)
# The destination's time by part, and how much of its installs (the load
# hypercalls) its thread spent on the CPU rather than waiting for one.
r["dest_time_by_part_ms"] = {k: float(v) for k, v in re.findall(r"([a-z_]+) ([0-9.]+) ms", dst.get("time by part", ""))} or None
m = re.match(r"([0-9.]+) of ([0-9.]+) ms", dst.get("install on CPU", ""))
r["install_cpu_ms"] = {"cpu": float(m.group(1)), "wall": float(m.group(2))} if m else None
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


def env_file(path):
    """KEY=VALUE lines (shell quoting) as a dict."""
    out = {}
    try:
        for line in open(path, errors="replace"):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out[k] = " ".join(shlex.split(v)) if v else ""
    except (OSError, ValueError):
        pass
    return out


# dom0's poller: per domid, its (time, state) transitions.  Two hosts: host
# B's domains as 1000 + domid, its times on host A's clock (the offset
# measured over ssh before the guest was created; its error is half an ssh
# round trip, in clock_offset_ms).
dstates = {}
off = (meta.get("clock_offset_ms") or "").split()
for path, base, shift in ((os.path.join(d, "domstates.log"), 0, 0.0),
                          (os.path.join(d, "hostb", "domstates.log"), 1000,
                           float(off[0]) / 1000 if off else 0.0)):
    try:
        for line in open(path, errors="replace"):
            m = re.match(r"([0-9.]+) dom=(\d+) (.*)$", line.strip())
            if m and not (base and m.group(2) == "0"):
                dstates.setdefault(base + int(m.group(2)), []).append((float(m.group(1)) - shift, m.group(3)))
    except OSError:
        pass


# Domains that shut down for another reason than a migration's suspend:
# guests that died (or were killed).
DEATH = r"shutdown=(poweroff|reboot|crash|watchdog|soft_reset|other)"
died = sorted(dom for dom, ev in dstates.items() if any(re.search(DEATH, st) for _, st in ev))
# A guest that died before the first migration began (xl restarted it and
# the scenario went on with the new domain) was never touched by the
# migration code: no paging op, no helper, no stream. Under this emulator
# that is issue #21's boot-time triple fault. Such deaths are reported as
# boot_deaths, not as the scenario's guest deaths.
starts = []
try:
    for line in open(os.path.join(d, "migrations.env"), errors="replace"):
        m = re.search(r"\bstart=([0-9.]+)", line)
        if m:
            starts.append(float(m.group(1)))
except OSError:
    pass
boot_died = [dom for dom in died if starts and min(t for t, st in dstates[dom] if re.search(DEATH, st)) < min(starts)]
died = [dom for dom in died if dom not in boot_died]


def paused_window(start, src):
    """paused_ms of the migration that began at START from domid SRC: the
    source's first stop (paused=1 or shutdown=suspend) after START to the
    first paused=0 of the domain created after START (the destination)."""
    stop = next((t for t, st in dstates.get(src, []) if t >= start
                 and ("paused=1" in st or "shutdown=suspend" in st)), None)
    dst = None
    for dom, ev in dstates.items():
        if dom != src and ev and ev[0][0] >= start and (dst is None or ev[0][0] < dstates[dst][0][0]):
            dst = dom
    resume = next((t for t, st in dstates.get(dst, []) if "paused=0" in st), None) if dst is not None else None
    if stop is None or resume is None or resume < stop:
        return None, dst
    return int(round((resume - stop) * 1000)), dst


def heartbeat_max(path):
    """The longest heartbeat gap on one console (None without heartbeats)."""
    gaps = []
    try:
        for line in open(path, errors="replace"):
            m = re.search(r"HEARTBEAT n=\d+ maxgap_ms=(\d+)", line)
            if m:
                gaps.append(int(m.group(1)))
    except OSError:
        pass
    return max(gaps) if gaps else None


def stream_bytes(i):
    """The bytes of xl's forward stream in migration I (seq scenarios: a dd
    in front of the receiver prints 'N bytes (...) copied')."""
    try:
        m = re.search(r"^(\d+) bytes", open(os.path.join(d, "stream-%s.txt" % i), errors="replace").read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


# The seed writer's work rate: "MEMTEST rate t=EPOCH secs=S dirtied=N" from
# every console of the scenario (the source's before the stop, the
# destination's after), once per line.
rate_lines = {}
for f in glob.glob(os.path.join(d, "guest-*.log")) + glob.glob(os.path.join(d, "mig-*.log")):
    for line in open(f, errors="replace"):
        m = re.search(r"MEMTEST rate t=([0-9.]+) secs=([0-9.]+) dirtied=(\d+)", line)
        if m:
            rate_lines[float(m.group(1))] = (float(m.group(2)), int(m.group(3)))


def work_rate(start, end, window=20.0):
    """The writer's pages dirtied per second before (the WINDOW s up to
    START), during (START..END) and after (END..END+WINDOW) a migration;
    lost_s: the seconds of full-speed work the migration cost the guest
    (the seed's degradation), from the before rate."""
    def rate(a, b):
        secs = sum(s for t, (s, _) in rate_lines.items() if a < t <= b)
        n = sum(n for t, (_, n) in rate_lines.items() if a < t <= b)
        return (n / secs if secs > 0 else None), secs, n
    before, _, _ = rate(start - window, start)
    # a line covers the seconds before its time: the one ending first
    # after END still belongs to the migration
    ends = sorted(t for t in rate_lines if t > end)
    end2 = ends[0] if ends else end
    during, dsecs, dn = rate(start, end2)
    after, _, _ = rate(end2, end2 + window)
    if before is None or during is None:
        return None
    return {"before_pages_per_s": round(before), "during_pages_per_s": round(during),
            "after_pages_per_s": round(after) if after is not None else None,
            "during_vs_before": round(during / before, 3) if before else None,
            "lost_s": round(dsecs - dn / before, 2) if before else None}


def median(v):
    v = sorted(x for x in v if x is not None)
    return v[len(v) // 2] if v else None


# The stress guest: stress-ng runs and the tmpfs file's checksum checks.
consoles = glob.glob(os.path.join(d, "guest-*.log")) + glob.glob(os.path.join(d, "mig-*.log"))
stress_runs = stress_fail = tmpfs_checks = tmpfs_fail = guest_ups = 0
ups_by_console = {}
for f in consoles:
    for line in open(f, errors="replace"):
        m = re.search(r"STRESS run \d+ rc=(\d+) fail_lines=(\d+)", line)
        if m:
            stress_runs += 1
            stress_fail += int(m.group(1) != "0" or m.group(2) != "0")
        m = re.search(r"TMPFS check \d+ ok=(\d)", line)
        if m:
            tmpfs_checks += 1
            tmpfs_fail += int(m.group(1) != "1")
        if "GUEST-UP" in line:
            guest_ups += 1
            ups_by_console[os.path.basename(f)] = ups_by_console.get(os.path.basename(f), 0) + 1
r["workload"] = meta.get("workload") or "memtest"
if r["workload"] == "stress":
    r["stress"] = {"runs": stress_runs, "failed": stress_fail, "tmpfs_checks": tmpfs_checks,
                   "tmpfs_failed": tmpfs_fail}
r["guest_boots"] = guest_ups
r["guest_boots_by_console"] = ups_by_console

# Per migration: xl's exit, its time, the engine's downtime, paused time
# (dom0's view) and the guest's longest stall after resume.
soak = int(meta.get("soak", 0) or 0)
migs = []
try:
    for n, line in enumerate(open(os.path.join(d, "migrations.env"), errors="replace"), 1):
        kv = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if not kv.get("start"):
            continue
        src_id = int(kv["src"]) if kv.get("src", "").isdigit() else None
        pm, dst_id = paused_window(float(kv["start"]), src_id) if src_id is not None else (None, None)
        try:
            mtext = open(os.path.join(d, "migrate-%s.log" % kv.get("i", n)), errors="replace").read()
        except OSError:
            mtext = ""
        msrc = block("post-copy source done:", mtext)
        cons = (os.path.join(d, "mig-%s-%s.log" % ("t-" + r["scenario"], kv.get("i", n))) if soak
                else (inc[0] if inc else None))
        mpt = msrc.get("pages transferred")
        sb = stream_bytes(kv.get("i", n))
        mode = kv.get("mode") or r["mode"]
        # pages libxenguest sent whole before any post-copy: all of a
        # pre-copy's stream; a hybrid's stream less the engine's bytes
        # after its switch (with the fault lane, whose replies bypass the
        # stream, this undercounts by at most the faulted pages)
        ebytes = msrc.get("bytes sent")
        precopy_pages = (sb // 4096 if mode == "precopy" else
                         max(0, sb - int(num(ebytes))) // 4096 if mode == "hybrid" and ebytes else
                         0 if mode == "postcopy" else None) if sb else None
        pages = int(num(mpt)) if mpt else None
        if mode == "precopy":
            pages = precopy_pages
        elif mode == "hybrid" and pages is not None and precopy_pages is not None:
            pages += precopy_pages
        mig = {
            "i": int(kv.get("i", n)), "mode": mode, "migrate_rc": int(kv.get("rc", -1)),
            "xl_migrate_ms": int(kv.get("ms", 0)), "total_time_ms": int(kv.get("ms", 0)),
            "src_domid": src_id, "dst_domid": dst_id,
            # honest downtime: the source's stop to the destination's
            # unpause, on dom0's one clock, for every mode
            "downtime_ms": pm,
            "engine_downtime_ms": num(msrc.get("downtime")) if msrc.get("downtime") else None,
            "paused_ms": pm,
            "guest_stall_ms": heartbeat_max(cons) if cons else None,
            "stream_bytes": sb,
            # post-copy: the engine's count; pre-copy: the stream's bytes
            # in pages (libxenguest sends every page whole); hybrid: its
            # pre-copy rounds' pages plus the engine's count
            "pages_transferred": pages,
            "precopy_pages": precopy_pages,
            "work_rate": work_rate(float(kv["start"]), float(kv.get("end") or kv["start"])) if rate_lines else None,
        }
        migs.append(mig)
except OSError:
    pass
r["paused_ms"] = max((m["paused_ms"] for m in migs if m["paused_ms"] is not None), default=None)
r["downtime_ms"] = r["paused_ms"] if r["paused_ms"] is not None else r["engine_downtime_ms"]
r["guest_stall_ms"] = max((m["guest_stall_ms"] for m in migs if m["guest_stall_ms"] is not None), default=None)
stress_ok = r["workload"] != "stress" or (stress_runs >= 1 and stress_fail == 0 and tmpfs_checks >= 1
                                           and tmpfs_fail == 0)
if r["workload"] == "stress":
    r["integrity_ok"] = bool(r["integrity_ok"] and stress_ok)
    r["ok"] = r["integrity_ok"]

if soak:
    # N migrations of one guest: every one verified, not one death.
    r["soak_planned"] = soak
    r["migrations"] = len(migs)
    r["migrations_ok"] = sum(1 for m in migs if m["migrate_rc"] == 0)
    r["guest_deaths"] = int(meta.get("guest_deaths", 0) or 0)
    r["death"] = meta.get("death") or None
    r["death_forensics"] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "death*")))
    r["paused_ms_median"] = median([m["paused_ms"] for m in migs])
    r["guest_stall_ms_median"] = median([m["guest_stall_ms"] for m in migs])
    r["downtime_ms_median"] = median([m["downtime_ms"] for m in migs])
    r["per_migration"] = migs
    if meta.get("seq"):
        r["mode"] = "seq:" + meta["seq"]
        r["seed"] = {"working_set_mib": r["memtest_mib"],
                     "dirty_mibps": num(r["guest_opts"], r"memtest_rate=([0-9.]+)")}
    r["integrity_ok"] = bool(
        meta.get("verify_rc") == "0" and bad == 0 and syscalls_bad == 0 and stress_ok and passes >= 2 * soak
        and r["migrations_ok"] == soak == len(migs))
    r["ok"] = bool(r["integrity_ok"] and max(r["guest_deaths"], len(died)) == 0 and guest_ups == 1)

kill = env_file(os.path.join(d, "kill.env"))
if meta.get("kill_dest") == "1":
    # guest-death: xl migrate must fail loudly (non-zero and a line naming
    # the death, written after the kill), the dead destination domain must
    # still be listed and never rebooted, the source copy must be paused.
    death = env_file(os.path.join(d, "death.env"))
    try:
        mtext = open(os.path.join(d, "migrate-1.log"), "rb").read()
        tail = mtext[int(kill.get("kill_log_offset") or 0):].decode("utf-8", "replace")
    except (OSError, ValueError):
        tail = ""
    line = next((ln.strip() for ln in tail.splitlines()
                 if re.search(r"(?i)crash|triple|died|dead|death|reboot|shut ?down|destroyed", ln)
                 and re.search(r"(?i)guest|domain|domid|vcpu|\bd\d+", ln) and '"on_' not in ln), None)
    src_state = death.get("src_state") or ""
    src_last = death.get("src_last") or ""
    r["guest_death"] = {
        "kill_rc": kill.get("kill_rc"),
        "killed_domid": kill.get("kill_dst"),
        "killed_at": kill.get("kill_progress"),
        "restore_done_before_kill": kill.get("kill_done_before"),
        "migrate_failed": r["migrate_rc"] not in (None, 0),
        "death_line": line,
        "dst_listed": death.get("dst_listed") == "1",
        "dst_state": death.get("dst_state"),
        "dst_last": death.get("dst_last"),
        "restarted_as": death.get("restarted_as") or None,
        "guest_boots": guest_ups,
        "src_listed": death.get("src_listed") == "1",
        "src_state": src_state,
        "src_last": src_last,
    }
    g = r["guest_death"]
    g["src_paused"] = bool(g["src_listed"] and ("p" in src_state or "s" in src_state)
                           and "dying=1" not in src_last)
    r["migrations"] = len(migs)
    r["guest_deaths"] = 1 if kill.get("kill_rc") == "0" else 0
    r["ok"] = bool(kill.get("kill_rc") == "0" and g["restore_done_before_kill"] == "0" and g["migrate_failed"]
                   and line and g["dst_listed"] and not g["restarted_as"] and guest_ups == 1
                   and g["src_paused"])
    r["integrity_ok"] = None
elif not soak:
    r["migrations"] = len(migs)
    # each boot death may have left one more GUEST-UP on the console
    r["guest_deaths"] = max(len(died), guest_ups - 1 - len(boot_died) if guest_ups else 0)
    if r["guest_deaths"]:
        r["ok"] = False
if soak:
    r["guest_deaths"] = max(r["guest_deaths"], len(died))
r["died_domids"] = died
r["boot_deaths"] = boot_died
r["vcpus"] = int(meta.get("vcpus", 1) or 1)
# the guests' xl tsc_mode (the testbed's default is native: see TSC_MODE in
# scripts/testbed)
r["tsc_mode"] = meta.get("tsc_mode", "default")
# time each origin waited on absent pages (destination's report):
# "vcpu0 812.3 ms, vcpu1 40.0 ms, foreign 3.1 ms"
r["blocktime_ms"] = {k: float(v) for k, v in re.findall(r"(vcpu\d+|foreign|unknown) ([0-9.]+) ms",
                                                          dst.get("blocktime", ""))}
# faults served over the network per origin: a guest vCPU or a dom0
# backend / device model (foreign): "foreign 4, vcpu0 70, vcpu1 52"
r["faults_by_origin"] = {k: int(v) for k, v in re.findall(r"(vcpu\d+|foreign|unknown) ([0-9]+)",
                                                          dst.get("faults by origin", ""))}


def status_of(i):
    """What `xl-postcopy status` showed during migration I: per role, the
    samples taken while post-copy was active, the last of them, and each
    side's final snapshot."""
    out = {}
    for role in ("source", "destination"):
        samples = []
        try:
            for line in open(os.path.join(d, "status-%s-%s.jsonl" % (i, role)), errors="replace"):
                try:
                    j = json.loads(line)
                except ValueError:
                    continue
                if j.get("role") == role:
                    samples.append(j)
        except OSError:
            pass
        active = [j for j in samples if j.get("status") == "postcopy-active"]
        try:
            final = json.load(open(os.path.join(d, "status-%s-final-%s.json" % (i, role))))
        except (OSError, ValueError):
            final = None
        last = active[-1] if active else None
        out[role] = {
            "active_samples": len(active),
            "last_active": None if last is None else {
                "done_pages": last["ram"]["done_pages"], "owed_pages": last["ram"]["owed_pages"],
                "mbps": round(last["ram"]["mbps"], 1), "network_faults": last["network_faults"],
                "expected_remaining_ms": last["ram"]["expected_remaining_ms"],
                "postcopy_blocktime_ms": last["postcopy_blocktime_ms"]},
            "final": None if final is None else {
                "status": final.get("status"), "error": final.get("error"),
                "transferred_pages": final["ram"]["transferred_pages"],
                "remaining_pages": final["ram"]["remaining_pages"]},
        }
    return out


if migs:
    r["admin_status"] = {str(m["i"]): status_of(m["i"]) for m in migs}
    st = r["admin_status"][str(migs[-1]["i"])]
    fin = (st["destination"]["final"] or {})
    # the source's count, like the engine's report, includes what it sent
    # again after a recovery; the destination's is each page once
    src_fin = (st["source"]["final"] or fin)
    # a post-copy phase shorter than three sampling periods (2 s each, and
    # a sample costs dom0 more than that under load) may show no active
    # snapshot: no verdict on that part
    short = (r.get("postcopy_time_ms") or 0) < 6000
    sampled = short or st["destination"]["active_samples"] + st["source"]["active_samples"] >= 1
    # the admin's view agrees with the engine's report at the end (a plain
    # pre-copy migration has no post-copy phase to show: no verdict)
    r["admin_status_ok"] = bool(
        sampled and fin.get("status") == "completed"
        and src_fin.get("status") == "completed"
        and src_fin.get("transferred_pages") == r.get("pages_transferred")) \
        if r.get("migrate_rc") == 0 and r["mode"] != "precopy" else None
# hybrid: when and why it switched (the glue's precopy policy logs it);
# hybrid-switch must have switched on the admin's request, an auto hybrid
# by its rule.
sw_req = re.search(r"domain \d+: switch requested after pre-copy round (\d+)", log)
sw_auto = re.search(r"auto switch after pre-copy round (\d+) \(([^)]*)\): (.*)", log)
if r["mode"] == "hybrid":
    r["switch"] = {"requested_after_round": int(sw_req.group(1)) if sw_req else None,
                   "auto_after_round": int(sw_auto.group(1)) if sw_auto else None,
                   "auto_reason": sw_auto.group(3).strip() if sw_auto else None,
                   "admin_rc": None}
    try:
        m = re.search(r"switch_rc=(\d+)", open(os.path.join(d, "switch.log"), errors="replace").read())
        r["switch"]["admin_rc"] = m.group(1) if m else None
    except OSError:
        pass
    if meta.get("switch_after"):
        r["ok"] = bool(r["ok"] and sw_req and r["switch"]["admin_rc"] == "0")
    elif "--postcopy-after=auto" in (r["migrate_args"] or ""):
        r["ok"] = bool(r["ok"] and sw_auto)
# names=1: mid-post-copy the guest ran under its own name on the
# destination, the source copy was <name>--postcopy-source and `xl destroy`
# of it was refused with the reason, the copy stayed; afterwards exactly
# one domain carries the guest's name.
if meta.get("names") == "1":
    nm = env_file(os.path.join(d, "names.env"))
    after = (meta.get("names_after") or "").split()
    guest = meta.get("name") and "t-" + meta["name"]
    r["names"] = {
        "source_name": nm.get("names_src_name"),
        "guest_id_mid_postcopy": nm.get("names_guest_id"),
        "destination_id": nm.get("names_dst_running"),
        "destroy_rc": nm.get("names_destroy_rc"),
        "destroy_says_why": nm.get("names_destroy_says_why") == "1",
        "source_kept": nm.get("names_src_kept") == "1",
        "checked_mid_postcopy": nm.get("names_still_postcopy") == "1",
        "after": after,
    }
    n = r["names"]
    n["ok"] = bool(n["destination_id"] and n["guest_id_mid_postcopy"] == n["destination_id"]
                   and n["source_name"] == f"{guest}--postcopy-source"
                   and n["destroy_rc"] not in (None, "0") and n["destroy_says_why"]
                   and n["source_kept"] and after == [guest])
    r["ok"] = bool(r["ok"] and n["ok"])
# refuse=KIND: the receiver could not take a post-copy migration; xl
# migrate must fail with the one-line reason before anything was
# suspended, and the same domain go on (never paused, no copy elsewhere,
# two more verified memtest passes: verify_rc 0).
if meta.get("refuse"):
    rf = env_file(os.path.join(d, "refuse.env"))
    want = {"unpatched": "its xl must be xen-postcopy",
            "nolib": "cannot be loaded",
            "nopaging": "mem_paging"}.get(meta["refuse"], "?")
    reason = rf.get("refuse_reason") or ""
    r["refused"] = {
        "kind": meta["refuse"],
        "xl_rc": rf.get("refuse_rc"),
        "reason": reason,
        "names_the_missing_piece": want in reason,
        "nothing_suspended_said": (rf.get("refuse_nothing_suspended") or "0") != "0",
        # dom0's poller: a pause or suspend of the source after xl
        # migrate began (xl create's own pause comes before)
        "source_ever_paused": any(
            t >= min(starts) and ("paused=1" in st or "shutdown=suspend" in st)
            for t, st in dstates.get(int(rf.get("refuse_src") or -1), [])) if starts else None,
        "other_domains_created": sorted(dom for dom, ev in dstates.items()
                                        if starts and ev and ev[0][0] >= min(starts)),
        "domains_after": (rf.get("refuse_domains") or "").split(),
        "guest_went_on": meta.get("verify_rc") == "0",
    }
    f = r["refused"]
    f["ok"] = bool(f["xl_rc"] not in (None, "0") and f["names_the_missing_piece"]
                   and f["nothing_suspended_said"] and f["source_ever_paused"] is False
                   and not f["other_domains_created"]
                   and f["domains_after"] == [f"t-{meta.get('name')}/{rf.get('refuse_src')}"]
                   and f["guest_went_on"])
    r["ok"] = f["ok"]
    r["integrity_ok"] = f["guest_went_on"]
# devfail=1: the destination's toolstack could not attach the guest's NIC
# after the switch and destroyed the domain before it ever ran; xl migrate
# must fail saying it resumes the guest here (not the post-copy failure
# that keeps it suspended), and the same domain go on under its own name
# (two more verified memtest passes: verify_rc 0).
if meta.get("devfail") == "1":
    df = env_file(os.path.join(d, "devfail.env"))
    guest = "t-" + (meta.get("name") or "")
    r["devfail"] = {
        "xl_rc": df.get("devfail_rc"),
        "resumed_said": (df.get("devfail_resumed_said") or "0") != "0",
        "never_ran_said": (df.get("devfail_never_ran_said") or "0") != "0",
        "postcopy_failed_said": (df.get("devfail_postcopy_failed_said") or "0") != "0",
        "domains_after": (df.get("devfail_domains") or "").split(),
        "state_after": df.get("devfail_state"),
        "guest_went_on": meta.get("verify_rc") == "0",
        "net_passes_after": int(df.get("devfail_net_after") or 0),
    }
    f = r["devfail"]
    f["ok"] = bool(f["xl_rc"] not in (None, "0") and f["resumed_said"] and f["never_ran_said"]
                   and not f["postcopy_failed_said"]
                   and f["domains_after"] == [f"{guest}/{df.get('devfail_src')}"]
                   and f["guest_went_on"] and f["net_passes_after"] >= 3)
    r["ok"] = f["ok"]
    r["integrity_ok"] = f["guest_went_on"]
# truncated=1: receivers fed broken streams (autorun.sh truncated_checks).
# Each run must fail with its exit status (not a signal: 128+N, nor
# timeout's 124), say why, and leave no domain; the running guest must not
# notice (same domid, never paused or suspended, two more memtest passes).
if meta.get("truncated") == "1":
    runs, te = [], {}
    try:
        for line in open(os.path.join(d, "truncated.env"), errors="replace"):
            line = line.strip()
            if line.startswith("run="):
                kv = dict(w.split("=", 1) for w in shlex.split(line) if "=" in w)
                rc = int(kv.get("rc", "-1"))
                run = {"run": kv.get("run"), "rc": rc, "said_why": kv.get("said_why") == "1",
                       "left": kv.get("left", "").split(), "last": kv.get("last", "")}
                run["ok"] = bool(0 < rc < 128 and rc != 124 and run["said_why"] and not run["left"])
                runs.append(run)
            elif "=" in line:
                k, v = line.split("=", 1)
                te[k] = " ".join(shlex.split(v)) if v else ""
    except (OSError, ValueError):
        pass
    t0 = float(te.get("trunc_start") or 0)
    gsrc = int(te.get("trunc_src") or -1)
    t = {
        "runs": runs,
        "crashed": [x["run"] for x in runs if x["rc"] >= 128],
        "guest_same_domid": te.get("trunc_guest_id") == str(gsrc),
        "guest_ever_paused": any(t0 <= tt and ("paused=1" in st or ("shutdown=" in st and "shutdown=none" not in st))
                                 for tt, st in dstates.get(gsrc, [])) if t0 else None,
        "guest_went_on": meta.get("verify_rc") == "0",
    }
    t["ok"] = bool(len(runs) == 10 and all(x["ok"] for x in runs) and t["guest_same_domid"]
                   and t["guest_ever_paused"] is False and t["guest_went_on"])
    r["truncated"] = t
    r["ok"] = t["ok"]
    r["integrity_ok"] = t["guest_went_on"]
# Two hosts and devices: where the guest went and how, and whether its
# disk and network kept working (checked on the destination's console,
# and never an error on any console of the scenario).
r["hosts"] = int(meta.get("hosts", 1) or 1)
r["transport"] = meta.get("transport") or "local"
r["guest"] = meta.get("guest_type") or "pvh"
# the guest's NIC: pv (netfront/netback) or e1000 (QEMU's emulated one)
r["nic"] = meta.get("nic") or None
if off:
    r["clock_offset_ms"] = {"b_minus_a": int(off[0]), "error": int(off[1]) if len(off) > 1 else None}
IOFAIL = (r"I/O error|blk_update_request|Buffer I/O|blkfront.*(error|fail)|netfront.*(error|fail)"
          r"|blocked for more than|soft lockup|rcu_sched.*stall|rcu: INFO|DISK BAD|DISK ERROR|NET BAD|NET ERROR"
          r"|Tx Unit Hang|NETDEV WATCHDOG|e1000.*(error|Reset adapter)")
io_lines = []
for f in consoles:
    for line in open(f, errors="replace"):
        if re.search(IOFAIL, line):
            io_lines.append("%s: %s" % (os.path.basename(f), line.strip()[:160]))
r["guest_io_errors"] = io_lines[:8]
# libxl's hotplug scripts it killed at its 40 s limit (LIBXL_HOTPLUG_TIMEOUT),
# on either host (xl migrate's log has the receiver's lines too): a device
# that never attached on the destination fails the domain's creation there
hp = []
try:
    for line in open(os.path.join(d, "migrate.log"), errors="replace"):
        m = re.search(r"killing execution of (\S+) (\S+) because of timeout", line)
        if m:
            hp.append("%s %s" % (os.path.basename(m.group(1)), m.group(2)))
except OSError:
    pass
r["hotplug_timeouts"] = hp


def dev_passes(word):
    """WORD pass lines (DISK, NET): after the migration, failed ones anywhere."""
    after = failed = 0
    for f in consoles:
        for line in open(f, errors="replace"):
            m = re.search(word + r" pass \d+ ok=(\d)", line)
            if m:
                failed += m.group(1) != "1"
                after += f in inc
    return after, failed


if meta.get("disk_mib"):
    a, f = dev_passes("DISK")
    r["disk"] = {"mib": int(meta["disk_mib"]), "passes_after_migration": a, "failed_passes": f}
    r["disk_ok"] = bool(a >= 2 and f == 0 and not io_lines)
else:
    r["disk_ok"] = None
if meta.get("devfail") == "1":
    # the guest's NIC after it resumed here (there is no destination's)
    r["net_ok"] = bool(r["devfail"]["net_passes_after"] >= 3 and not io_lines)
elif meta.get("net") == "1":
    a, f = dev_passes("NET")
    srv_bad = srv_rounds = 0
    # the net server: in host B's dom0, or in this one's (one host)
    srv = os.path.join(d, "hostb", "netsrv.log")
    if r["hosts"] == 1:
        srv = os.path.join(d, "netsrv.log")
    try:
        for line in open(srv, errors="replace"):
            m = re.search(r"rounds=(\d+) bad=(\d+)", line)
            if m:
                srv_rounds = max(srv_rounds, int(m.group(1)))
                srv_bad = max(srv_bad, int(m.group(2)))
            srv_bad += " BAD " in line
    except OSError:
        pass
    r["net"] = {"passes_after_migration": a, "failed_passes": f, "server_rounds": srv_rounds,
                "server_bad": srv_bad}
    r["net_ok"] = bool(a >= 3 and f == 0 and srv_bad == 0 and srv_rounds > 0 and not io_lines)
else:
    r["net_ok"] = None
if r["disk_ok"] is False or r["net_ok"] is False:
    r["ok"] = False
# grants=1: postcopy_grants.ko in the guest reads each frame before it is
# granted; its counters, last printed on the guest's console (both hosts)
gt = None
for f in consoles:
    for line in open(f, errors="replace"):
        m = re.search(r"GUEST-GRANTS insmod rc=(\d+)", line)
        if m:
            gt = gt or {"touched": 0, "skipped": 0}
            gt["loaded"] = m.group(1) == "0"
        m = re.search(r"GUEST-GRANTS touched=(\d+) skipped=(\d+)", line)
        if m and gt:
            gt["touched"] = max(gt["touched"], int(m.group(1)))
            gt["skipped"] = max(gt["skipped"], int(m.group(2)))
r["grant_touch"] = gt
if gt is not None and not gt.get("loaded"):
    r["ok"] = False
# What dom0's backends said during the scenario, on each host (the lines
# since it began): blkback, netback, the grant table driver.  Linux retries
# a grant op that Xen answers GNTST_eagain (an absent page) with growing
# sleeps and prints 'eagain grant' only when it gives up (~32 s); netback's
# guest-transmit copy runs in NAPI, where a sleep is 'scheduling while
# atomic'.  Any of the errors below fails the scenario.
BACKEND = r"xen-blkback|xen-netback|blkback|netback|vif\S* vif|gnttab|grant|eagain"
BACKEND_ERR = (r"eagain grant|scheduling while atomic|BUG:|Oops|WARNING:|Bad grant|"
               r"(blkback|netback).*(error|fail|fatal)|xenbus.*fatal|Call Trace")
# A host whose dom0 died mid-scenario (host B's panic in twohost-grants,
# 2026-12-07) wrote no dmesg-scenario.txt: its serial console (boot.log)
# is read instead, from the scenario's start on host A's uptime clock less
# CONSOLE_MARGIN_S (the hosts boot together; their clocks differ by
# seconds, the scenarios are minutes apart) to its end.
CONSOLE_MARGIN_S = 30.0


def scenario_window(top, name):
    """(start, end) of scenario `name` in host A's autorun.log, in seconds
    of uptime; end is None while it has no 'done' line."""
    start = end = None
    try:
        for line in open(os.path.join(top, "autorun.log"), errors="replace"):
            m = re.match(r"\[([0-9.]+)\] === scenario (\S+?)(:| done:)", line)
            if m and m.group(2) == name:
                if m.group(3) == ":":
                    start, end = float(m.group(1)), None
                else:
                    end = float(m.group(1))
    except OSError:
        pass
    return start, end


def console_lines(path, window):
    """The dom0 kernel lines of a serial console inside window."""
    start, end = window
    if start is None:
        return None
    try:
        text = open(path, errors="replace").read().replace("\r", "")
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        m = re.match(r"\[\s*([0-9]+\.[0-9]+)\]", line)
        if m and float(m.group(1)) >= start - CONSOLE_MARGIN_S and \
                (end is None or float(m.group(1)) <= end + CONSOLE_MARGIN_S):
            out.append(line.strip())
    return out


if r["hosts"] in (1, 2):
    be = {}
    top = os.path.dirname(os.path.abspath(d))
    window = scenario_window(top, os.path.basename(os.path.abspath(d)))
    for host, sub in (("a", ""), ("b", "hostb"))[:r["hosts"]]:
        f = os.path.join(d, sub, "dmesg-scenario.txt")
        source = "dmesg"
        if os.path.exists(f):
            lines = [x.strip() for x in open(f, errors="replace")]
        else:
            lines = console_lines(os.path.join(top, sub, "boot.log"), window)
            source = "serial console"
            if lines is None:
                continue
        be[host] = {"source": source,
                    "messages": [x[:200] for x in lines if re.search(BACKEND, x, re.I)][:24],
                    "errors": [x[:200] for x in lines if re.search(BACKEND_ERR, x)][:12]}
        if any("Kernel panic" in x for x in lines):
            be[host]["panic"] = next(x[:200] for x in lines if "Kernel panic" in x)
            r["ok"] = False
    r["backend_dmesg"] = be
    r["dom0_panics"] = sorted(h for h, v in be.items() if v.get("panic"))
    r["backend_errors"] = sum(len(v["errors"]) for v in be.values())
    if r["backend_errors"]:
        r["ok"] = False
if r["transport"] == "ping":
    pe = env_file(os.path.join(d, "ping.env"))
    r["ping"] = pe
    r["ok"] = bool(pe) and all(v == "1" for v in pe.values())
# recover-pipe: xl's stream killed mid-post-copy, `xl-postcopy recover` on
# both ends; recovered only if both recover commands were answered ok,
# both helpers completed over the new connection, both xl commands exited
# 0 and the guest's memory verified.
if meta.get("recover") == "1":
    re_ = env_file(os.path.join(d, "recover.env"))
    restored = [dur_ms(m.group(1)) for m in re.finditer(r"link restored after ([0-9.]+(?:s|ms|µs|us|ns))", log)]
    r["transport"] = "tunnel, both ends killed mid-post-copy"
    r["recover"] = {
        "break_progress": re_.get("break_progress"),
        "recover_source_rc": re_.get("recover_source_rc"),
        "recover_destination_rc": re_.get("recover_destination_rc"),
        "receive_rc": re_.get("receive_rc"),
        "helpers_restored_after_ms": restored,
        "sender_said": "completed over the connection made by 'xl-postcopy recover'" in log,
        "receiver_said": "every page arrived over the connection made by 'xl-postcopy recover'" in log,
    }
    r["outage_ms"] = int(re_["outage_ms"]) if re_.get("outage_ms", "").isdigit() else None
    r["recovered"] = bool(
        re_.get("recover_started") == "1" and re_.get("recover_source_rc") == "0"
        and re_.get("recover_destination_rc") == "0" and re_.get("receive_rc") == "0"
        and meta.get("migrate_rc") == "0" and r["recover"]["sender_said"] and r["recover"]["receiver_said"]
    )
    r["ok"] = bool(r["integrity_ok"] and r["recovered"])
# pager-kill: the destination's pager killed mid-post-copy; replaced only
# if the guest was paused (not destroyed) while no pager served it, both
# recover commands were answered, the replacement pager completed, the
# source's xl exited 0 (completed over the new connection) and the memory
# verified.
if meta.get("pager_kill") == "1":
    re_ = env_file(os.path.join(d, "recover.env"))
    plog = ""
    for f in glob.glob(os.path.join(d, "*.pager.log")):
        plog += open(f, errors="replace").read()
    restored = [dur_ms(m.group(1)) for m in re.finditer(r"link restored after ([0-9.]+(?:s|ms|µs|us|ns))", log + plog)]
    resent = [int(m.group(1)) for m in re.finditer(r"resent (\d+), zero", log)]
    r["transport"] = "local pipe; the destination's pager killed mid-post-copy"
    r["pager"] = {
        "kill_progress": re_.get("kill_progress"),
        "dst_state_before_recover": re_.get("dst_state_before_recover"),
        "dst_paused_before_recover": re_.get("dst_paused_before_recover") == "1",
        "recover_source_rc": re_.get("recover_source_rc"),
        "recover_destination_rc": re_.get("recover_destination_rc"),
        "receive_rc": re_.get("receive_rc"),
        "pager_started": "started the replacement pager" in open(os.path.join(d, "recover-destination.txt"), errors="replace").read()
        if os.path.exists(os.path.join(d, "recover-destination.txt")) else False,
        "pager_completed": "migration completed by the replacement pager" in plog,
        "pages_resent": resent[-1] if resent else None,
        "helpers_restored_after_ms": restored,
        "sender_said": "completed over the connection made by 'xl-postcopy recover'" in log,
    }
    r["outage_ms"] = int(re_["outage_ms"]) if re_.get("outage_ms", "").isdigit() else None
    p_ = r["pager"]
    r["replaced"] = bool(
        re_.get("pager_killed") == "1" and p_["dst_paused_before_recover"]
        and p_["recover_source_rc"] == "0" and p_["recover_destination_rc"] == "0"
        and p_["pager_started"] and p_["pager_completed"]
        and meta.get("migrate_rc") == "0" and p_["sender_said"]
    )
    r["ok"] = bool(r["integrity_ok"] and r["replaced"])
# The push's bandwidth cap (xl migrate --max-bandwidth, issue #18 item 3):
# the cap the source helper says it uses (null: uncapped) and the push's
# own rate, page data pushed over the serving time, from its log line.
m = re.search(r"push capped at (\d+) bytes/s", log)
r["max_bandwidth"] = int(m.group(1)) if m else None
m = re.search(r"push (\d+) pages, (\d+) bytes of page data in ([0-9.]+) s of serving: (\d+) bytes/s", log)
r["push_bytes_per_s"] = int(m.group(4)) if m else None
r["push_serving_ms"] = round(float(m.group(3)) * 1000) if m else None


def rate_arg(v):
    """--max-bandwidth's value as the engine reads it (K/M/G binary)."""
    m_ = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", v or "")
    return int(m_.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m_.group(2).lower()] if m_ else None


m = re.search(r"--max-bandwidth=(\S+)", meta.get("migrate_args") or "")
if m:
    cap = rate_arg(m.group(1))
    bw = {
        "asked": m.group(1),
        "helper_used_it": cap is not None and r["max_bandwidth"] == cap,
        "push_over_cap": round(r["push_bytes_per_s"] / cap, 3) if cap and r["push_bytes_per_s"] else None,
    }
    # a 15% margin: the pacer allows one batch ahead, and the serving time
    # is the helper's own clock
    bw["within_cap"] = bool(bw["push_over_cap"] is not None and bw["push_over_cap"] <= 1.15)
    # the run without a cap in the same boot, side by side
    try:
        un = json.load(open(os.path.join(os.path.dirname(d.rstrip("/")),
                                         r["scenario"].replace("-capped", "-uncapped"), "result.json")))
    except (OSError, ValueError):
        un = {}
    side = {}
    for k, run in (("uncapped", un), ("capped", r)):
        side[k] = {"max_bandwidth": run.get("max_bandwidth"), "push_bytes_per_s": run.get("push_bytes_per_s"),
                   "pages_pushed": run.get("pages_pushed"), "postcopy_time_ms": run.get("postcopy_time_ms"),
                   "xl_migrate_ms": run.get("xl_migrate_ms"), "network_faults": run.get("network_faults"),
                   "fault_p50_us": (run.get("fault_latency_us") or {}).get("p50"),
                   "fault_p99_us": (run.get("fault_latency_us") or {}).get("p99"),
                   "ok": run.get("ok")}
    bw["runs"] = side
    u50, c50 = side["uncapped"]["fault_p50_us"], side["capped"]["fault_p50_us"]
    bw["fault_p50_capped_over_uncapped"] = round(c50 / u50, 2) if u50 and c50 else None
    r["bwcap"] = bw
    r["ok"] = bool(r["ok"] and bw["helper_used_it"] and bw["within_cap"])
# bw_malformed=RATE: xl migrate --max-bandwidth=RATE refused before
# anything was suspended: non-zero exit, one line naming the bad rate, the
# same domain running, never paused or suspended in between (dom0's
# poller), no other domain created.
if meta.get("bw_malformed"):
    be = env_file(os.path.join(d, "bwcap.env"))
    t0, t1 = float(be.get("malformed_start") or 0), float(be.get("malformed_end") or 0)
    src = int(be.get("malformed_src") or -1)
    mf = {
        "value": be.get("malformed_value"),
        "xl_rc": be.get("malformed_rc"),
        "lines": int(be.get("malformed_lines") or 0),
        "message": be.get("malformed_msg"),
        "same_domid": be.get("malformed_domid_after") == str(src),
        "state_after": be.get("malformed_state_after"),
        "paused_meanwhile": any(t0 <= t <= t1 and ("paused=1" in st or "shutdown=suspend" in st)
                                for t, st in dstates.get(src, [])) if t0 else None,
        "other_domains_created": sorted(dom for dom, ev in dstates.items()
                                        if t0 and ev and t0 <= ev[0][0] <= t1),
    }
    mf["ok"] = bool(mf["xl_rc"] not in (None, "0") and mf["lines"] == 1
                    and "--max-bandwidth" in (mf["message"] or "") and "not a rate" in (mf["message"] or "")
                    and mf["same_domid"] and "p" not in (mf["state_after"] or "p")
                    and mf["paused_meanwhile"] is False and not mf["other_domains_created"])
    r["malformed_refused"] = mf
    r["ok"] = bool(r["ok"] and mf["ok"])
# what the admin's `xl-postcopy status` showed must agree with the run
# (every scenario with a post-copy phase that completed)
if r.get("admin_status_ok") is False:
    r["ok"] = False
r.update(extra)
json.dump(r, open(os.path.join(d, "result.json"), "w"), indent=2)
print(json.dumps(r))
