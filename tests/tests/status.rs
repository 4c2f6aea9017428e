//! `xl-postcopy status`: real `send` and `receive` processes publish their
//! status while they serve (`--status-file`), a reader polling the files
//! sees the migration active and then completed with the figures of the
//! final report, and `xl-postcopy status --file` prints them.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postcopy_tests::{receiver, sender, xl_postcopy};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn read(path: &Path) -> Option<Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn json(out: &str) -> Value {
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Polls both files every 2 ms until `stop`, keeping every distinct
/// snapshot (a torn file would fail to parse and be counted).
fn poll(paths: [PathBuf; 2], stop: Arc<AtomicBool>) -> (Vec<Value>, usize) {
    let mut seen = Vec::new();
    let mut torn = 0;
    while !stop.load(Ordering::Relaxed) {
        for p in &paths {
            if p.exists() {
                match read(p) {
                    Some(v) => {
                        if seen.last() != Some(&v) {
                            seen.push(v);
                        }
                    }
                    None => torn += 1,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (seen, torn)
}

#[test]
fn both_sides_publish_where_the_migration_stands() {
    let dir = std::env::temp_dir().join(format!("pc-status-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (src_file, dst_file) = (dir.join("src.json"), dir.join("dst.json"));
    let (recv, addr) = receiver(&["--status-file", dst_file.to_str().unwrap()], LIMIT).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((Vec::new(), 0)));
    let poller = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let paths = [src_file.clone(), dst_file.clone()];
        std::thread::spawn(move || *seen.lock().unwrap() = poll(paths, stop))
    };
    let send = sender(
        addr,
        &["--mem", "128M", "--status-file", src_file.to_str().unwrap()],
        LIMIT,
    )
    .unwrap();
    let (code, out, err) = send.finish().unwrap();
    let (rcode, _, rerr) = recv.finish().unwrap();
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    assert_eq!(code, 0, "sender: {err}");
    assert_eq!(rcode, 0, "receiver: {rerr}");
    let report = json(&out);
    assert_eq!(report["integrity_ok"], true, "{out}");

    let (snapshots, torn) = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(torn, 0, "a reader saw a half-written status file");
    let active: Vec<&Value> = snapshots
        .iter()
        .filter(|s| s["status"] == "postcopy-active")
        .collect();
    assert!(
        !active.is_empty(),
        "no snapshot while serving among {}",
        snapshots.len()
    );
    for s in &active {
        let r = &s["ram"];
        assert_eq!(
            r["owed_pages"].as_u64().unwrap(),
            r["done_pages"].as_u64().unwrap() + r["remaining_pages"].as_u64().unwrap(),
            "{s}"
        );
    }

    // The last word of each side: completed, every owed page done, the
    // report's figures.
    let dst = read(&dst_file).expect("destination status");
    let src = read(&src_file).expect("source status");
    for (s, role) in [(&dst, "destination"), (&src, "source")] {
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["role"], role, "{s}");
        assert!(s["error"].is_null(), "{s}");
        let r = &s["ram"];
        assert!(r["owed_pages"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(r["remaining_pages"], 0, "{s}");
        assert_eq!(r["done_pages"], r["owed_pages"], "{s}");
    }
    assert_eq!(
        src["ram"]["transferred_pages"], report["source"]["pages_transferred"],
        "source status vs report: {src}\n{out}"
    );
    assert_eq!(
        dst["ram"]["transferred_pages"], src["ram"]["transferred_pages"],
        "{dst}\n{src}"
    );
    assert!(dst["postcopy_blocktime_ms"].is_u64(), "{dst}");
    // Local mode's one vCPU waited on every network fault it took.
    if dst["network_faults"].as_u64().unwrap() > 0 {
        assert!(dst["postcopy_vcpu_blocktime_ms"]["vcpu0"].is_f64(), "{dst}");
    }

    // The command an admin types.
    let bin = xl_postcopy().unwrap();
    let o = Command::new(&bin)
        .args(["status", "--file", dst_file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    for k in [
        "completed",
        "destination",
        "owed pages",
        "100%",
        "blocktime",
    ] {
        assert!(text.contains(k), "{k} missing in\n{text}");
    }
    let o = Command::new(&bin)
        .args(["status", "--json", "--file", src_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(json(&String::from_utf8_lossy(&o.stdout)), src);
    // No status for a domain that never migrated: a clear error.
    let o = Command::new(&bin)
        .args(["status", "--dir", dir.to_str().unwrap(), "4242"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no post-copy status"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
