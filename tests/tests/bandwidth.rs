//! `--max-bandwidth`: a real `send`/`receive` pair whose push is capped
//! takes as long as the cap says (pushed bytes ÷ rate) and keeps every
//! byte; fault replies are not held to the cap.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::time::Duration;

use postcopy_tests::{receiver, sender};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(180);

fn json(out: &str) -> Value {
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn migrate(extra: &[&str]) -> Value {
    let (recv, addr) = receiver(&[], LIMIT).unwrap();
    let mut args = vec![];
    if !extra.contains(&"--mem") {
        args.extend_from_slice(&["--mem", "64M", "--workload", "stress"]);
    }
    args.extend_from_slice(extra);
    let (code, out, err) = sender(addr, &args, LIMIT).unwrap().finish().unwrap();
    let (rcode, _, rerr) = recv.finish().unwrap();
    assert_eq!(code, 0, "sender: {err}");
    assert_eq!(rcode, 0, "receiver: {rerr}");
    let r = json(&out);
    assert_eq!(r["integrity_ok"], true, "{out}");
    r
}

#[test]
fn a_capped_push_takes_as_long_as_the_cap_says_and_keeps_every_byte() {
    const RATE: u64 = 16 << 20;
    let capped = migrate(&["--max-bandwidth", "16M"]);
    let s = &capped["source"];
    let pushed = s["pages_pushed"].as_u64().unwrap();
    let postcopy_ms = s["postcopy_time_ms"].as_f64().unwrap();
    // The pacer lets one 64-page batch go ahead of the rate.
    let floor_ms = (pushed.saturating_sub(64) * 4096) as f64 * 1000.0 / RATE as f64;
    assert!(pushed > 1000, "too little pushed to measure: {capped}");
    assert!(
        postcopy_ms >= 0.95 * floor_ms,
        "{pushed} pages pushed in {postcopy_ms} ms, faster than 16 MiB/s allows ({floor_ms} ms)"
    );
    // Without the cap the same guest goes much faster on loopback.
    let free = migrate(&[]);
    let free_ms = free["source"]["postcopy_time_ms"].as_f64().unwrap();
    assert!(
        free_ms < postcopy_ms,
        "uncapped {free_ms} ms, capped {postcopy_ms} ms"
    );
}

#[test]
fn a_rate_below_a_page_a_second_is_refused() {
    let (code, _, err) = sender(
        "127.0.0.1:9".parse().unwrap(),
        &["--max-bandwidth", "100"],
        LIMIT,
    )
    .unwrap()
    .finish()
    .unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("4K per second"), "{err}");
}

/// `--prepage=none` on a guest that never stops faulting (random access
/// over 512 MiB: a quiet spell of `idle_flush` never comes while pages are
/// missing): the residual flush starts after `--residual-after` (here
/// 0.5 s) at the latest, so most of the memory goes as one push instead of
/// one fault at a time, and the source is released in bounded time.
#[test]
fn demand_paging_of_a_busy_guest_ends_in_bounded_time() {
    let r = migrate(&[
        "--mem",
        "512M",
        "--workload",
        "random",
        "--prepage",
        "none",
        "--residual-after",
        "0.5",
    ]);
    let s = &r["source"];
    let pushed = s["pages_pushed"].as_u64().unwrap();
    let faulted = s["pages_faulted"].as_u64().unwrap();
    let postcopy_ms = s["postcopy_time_ms"].as_f64().unwrap();
    assert!(
        pushed > faulted,
        "the residue went fault by fault ({faulted} faulted, {pushed} pushed in {postcopy_ms} ms): {r}"
    );
    assert!(
        postcopy_ms < 60_000.0,
        "post-copy took {postcopy_ms} ms: {r}"
    );
}
