#!/usr/bin/env python3
"""Issue #15's targets over several runs of `scripts/testbed seed`: one
row per migration of every run (a run column before table.py's seed
columns), then each target as median [min..max] over the runs, per guest
size, with whether the median meets it.  Every ratio is taken inside one
run (one boot: pre-copy, hybrid and post-copy of the same guest), never
across runs, so the machine's drift between runs moves both sides.

Usage: seed_targets.py RESULTS_DIR [RESULTS_DIR...]
(each a copy of $TB/results after `scripts/testbed seed`: seed-256/,
seed-512/, seed-1024/ with their result.json)."""
import json
import os
import statistics
import sys

SIZES = (256, 512, 1024)


def load(run_dir, size):
    try:
        return json.load(open(os.path.join(run_dir, f"seed-{size}", "result.json")))
    except (OSError, ValueError):
        return None


def by_mode(r):
    """{mode: migration} of one seed result whose migrations all passed."""
    if not r or not r.get("ok"):
        return None
    migs = r.get("per_migration") or []
    if any(m.get("migrate_rc") != 0 for m in migs):
        return None
    return {m.get("mode"): m for m in migs}


def ratio(a, b):
    return a / b if a is not None and b else None


def spread(values):
    """'median [min..max]' of the values there are, or None."""
    v = [x for x in values if x is not None]
    if not v:
        return None, "–"
    med = statistics.median(v)
    return med, f"{med:.2f} [{min(v):.2f}..{max(v):.2f}]" + ("" if len(v) == len(values) else f" ({len(v)} of {len(values)} runs)")


def main():
    runs = sys.argv[1:]
    if not runs:
        sys.exit(__doc__)
    rows = {}
    print("| run | guest | mode | ok | total ms | downtime ms | pages sent | guest stall ms | "
          "work rate during ÷ before | total ÷ pre-copy | pages ÷ pre-copy | downtime ÷ pre-copy |")
    print("|" + "---|" * 12)
    for i, rd in enumerate(runs, 1):
        for z in SIZES:
            r = load(rd, z)
            modes = by_mode(r)
            rows[(i, z)] = modes
            if r is None:
                print(f"| {i} | {z} MiB | (no result) |" + " |" * 9)
                continue
            pre = (modes or {}).get("precopy", {})
            for m in r.get("per_migration") or []:
                w = m.get("work_rate") or {}
                cells = [i, f"{z} MiB", m.get("mode"),
                         "yes" if m.get("migrate_rc") == 0 and r.get("ok") else "**no**",
                         m.get("total_time_ms"), m.get("downtime_ms"), m.get("pages_transferred"),
                         m.get("guest_stall_ms"), w.get("during_vs_before")]
                for k in ("total_time_ms", "pages_transferred", "downtime_ms"):
                    x = ratio(m.get(k), pre.get(k))
                    cells.append(round(x, 2) if x is not None else None)
                print("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")

    print()
    print(f"#15's targets, median [min..max] over {len(runs)} runs (ratios inside each run):")
    print()
    print("| target | " + " | ".join(f"{z} MiB" for z in SIZES) + " | met (median) |")
    print("|" + "---|" * (len(SIZES) + 2))

    def target(name, f, limit):
        cols, met = [], []
        for z in SIZES:
            med, text = spread([f(rows.get((i, z))) for i in range(1, len(runs) + 1)])
            cols.append(text)
            met.append(med is not None and med <= limit)
        print(f"| {name} | " + " | ".join(cols) + f" | {'yes' if all(met) else 'no' if not any(met) else 'at ' + ', '.join(str(z) for z, ok in zip(SIZES, met) if ok) + ' MiB'} |")

    def post_over_pre(k):
        return lambda m: ratio(m["postcopy"].get(k), m["precopy"].get(k)) if m and "postcopy" in m and "precopy" in m else None

    target("post-copy total ÷ pre-copy's (≤ 0.5)", post_over_pre("total_time_ms"), 0.5)
    target("post-copy pages ÷ pre-copy's (≤ 0.5)", post_over_pre("pages_transferred"), 0.5)
    target("post-copy downtime ÷ pre-copy's (≤ 1)", post_over_pre("downtime_ms"), 1.0)
    target("post-copy's longest stall ÷ pre-copy's downtime (≤ 1)",
           lambda m: ratio(m["postcopy"].get("guest_stall_ms"), m["precopy"].get("downtime_ms"))
           if m and "postcopy" in m and "precopy" in m else None, 1.0)

    def growth(mode):
        out = []
        for i in range(1, len(runs) + 1):
            a, b = rows.get((i, SIZES[0])), rows.get((i, SIZES[-1]))
            out.append(ratio(b[mode].get("downtime_ms"), a[mode].get("downtime_ms"))
                       if a and b and mode in a and mode in b else None)
        return out

    for mode, limit in (("postcopy", 1.2), ("precopy", None)):
        med, text = spread(growth(mode))
        verdict = "–" if limit is None else ("yes" if med is not None and med <= limit else "no")
        what = ("post-copy downtime, 1 GiB ÷ 256 MiB (flat: ≤ 1.2)" if limit
                else "pre-copy downtime, 1 GiB ÷ 256 MiB (grows)")
        print(f"| {what} | {text} | | | {verdict} |")


main()
