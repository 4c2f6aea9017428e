//! `xl-postcopy bench` end to end at a tiny size: the post-copy floors
//! (warm and cold), the ratios to them and the engines' time by part reach
//! `bench.json` finite and positive, beside the keys it always had, and
//! `targets.md` states each target's status.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::time::Duration;

use postcopy_tests::Proc;
use serde_json::Value;

#[test]
fn a_tiny_bench_reports_the_floors_the_ratios_and_the_time_by_part() {
    let out = std::env::temp_dir().join(format!("xpc-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let args: Vec<String> = [
        "bench",
        "--sizes",
        "16M",
        "--workloads",
        "stress",
        "--strategies",
        "bubble",
        "--no-baselines",
        "--runs",
        "1",
        "--warmup",
        "0.2",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect();
    let (code, stdout, err) = Proc::spawn(&args, Duration::from_secs(120))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 0, "{stdout}\n{err}");
    let rows: Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    let row = &rows[0];
    assert_eq!(row["runs"], 1, "{row}");
    let positive = |key: &str| {
        for k in ["min", "median", "max"] {
            let v = row[key][k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{key}.{k} = {v}");
        }
    };
    for key in [
        "total_time_ms",
        "total_vs_stream",
        "total_vs_floor",
        "total_vs_floor_cold",
        "total_vs_floor_best",
        "floor_warm_ms",
        "floor_cold_ms",
        "p50_vs_floor",
        "p99_vs_floor",
    ] {
        positive(key);
    }
    for (side, parts) in [
        ("dest_breakdown_ms", &["wire", "install", "hash"][..]),
        ("source_breakdown_ms", &["read_guest", "send"][..]),
    ] {
        for p in parts {
            let v = row[side][p]["median"].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{side}.{p} = {v}: {}", row[side]);
        }
    }
    assert_eq!(row["integrity_ok"], true);
    let targets = std::fs::read_to_string(out.join("targets.md")).unwrap();
    // A verdict per target, whichever it is on this machine's load.
    assert!(
        targets.contains("met (") || targets.contains("**not met** ("),
        "{targets}"
    );
    assert!(stdout.contains("×floor warm"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
