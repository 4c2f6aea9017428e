//! Local mode's streams with a token are sealed (issue 17, class 10): a
//! wiretap sees no guest page, and a byte flipped on the way after the
//! handshake is caught (never silent corruption), with real `send` and
//! `receive` processes over a tapping proxy.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use postcopy_tests::{receiver, sender, tap, write_token};

const LIMIT: Duration = Duration::from_secs(120);

/// How many of the guest's initial pages (16 MiB, seed 1) appear whole in
/// `wire`, at any offset.
fn pages_seen(wire: &[u8]) -> usize {
    const PAGES: u64 = 4096;
    let mem: Vec<AtomicU64> = (0..PAGES * 512).map(|_| AtomicU64::new(0)).collect();
    let mut by_head: HashMap<[u8; 16], u64> = HashMap::new();
    for pfn in 0..PAGES {
        xl_plugin::local::workload::fill_page(&mem, pfn, 1);
    }
    let page = |pfn: u64| -> Vec<u8> {
        let at = usize::try_from(pfn * 512).unwrap();
        mem[at..at + 512]
            .iter()
            .flat_map(|w| w.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes())
            .collect()
    };
    for pfn in 0..PAGES {
        by_head.insert(page(pfn)[..16].try_into().unwrap(), pfn);
    }
    let mut found = std::collections::HashSet::new();
    for i in 0..wire.len().saturating_sub(4096) {
        if let Some(&pfn) = by_head.get(&wire[i..i + 16]) {
            if wire[i..i + 4096] == page(pfn)[..] {
                found.insert(pfn);
            }
        }
    }
    found.len()
}

/// The sender's JSON report says the memory hashes matched.
fn integrity_ok(out: &str) -> bool {
    out.contains("\"integrity_ok\": true") || out.contains("\"integrity_ok\":true")
}

fn token() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("xpc-sealed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("token");
    write_token(&tok, "sealed: correct horse battery staple\n").unwrap();
    let s = tok.to_str().unwrap().to_string();
    (dir, s)
}

fn migrate(tok: Option<&str>, flip: Option<usize>) -> (i32, String, String, Vec<u8>) {
    let extra: Vec<&str> = tok.map(|t| vec!["--token-file", t]).unwrap_or_default();
    let (r, addr) = receiver(&extra, LIMIT).unwrap();
    let t = tap(addr, flip).unwrap();
    let s = sender(t.addr, &extra, LIMIT).unwrap();
    let (code, out, err) = s.finish().unwrap();
    let (_, _, rerr) = r.finish_within(Duration::from_secs(60));
    let wire = t.seen();
    (code, out, format!("{err}\n--- receiver:\n{rerr}"), wire)
}

/// With a token no page of the guest crosses the wire in clear; without
/// one (the control: the test can fail) they do. Memory checked by hash.
#[test]
fn a_migration_with_a_token_shows_no_page_on_the_wire() {
    let (code, out, err, wire) = migrate(None, None);
    assert_eq!(code, 0, "{err}");
    assert!(integrity_ok(&out), "{out}");
    let plain = pages_seen(&wire);
    assert!(plain > 1000, "only {plain} pages seen in the clear stream");

    let (dir, tok) = token();
    let (code, out, err, wire) = migrate(Some(&tok), None);
    assert_eq!(code, 0, "{err}");
    assert!(integrity_ok(&out), "{out}");
    assert!(
        wire.len() > 16 << 20,
        "only {} bytes on the wire",
        wire.len()
    );
    assert_eq!(pages_seen(&wire), 0, "guest pages in the sealed stream");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A byte flipped in the bulk stream after the handshake is caught as a
/// failed authentication, never used: right after the handshake (before
/// the switch) a clean abort with the source guest intact; 1 MiB in (after
/// the switch) the recovery window, a new connection with fresh keys, and
/// a complete migration whose memory is checked by hash.
#[test]
fn a_flipped_byte_mid_stream_is_caught() {
    let (dir, tok) = token();
    // 96 bytes of handshake (hello, nonce, proof) come first.
    let (code, _, err, _) = migrate(Some(&tok), Some(200));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed authentication"), "{err}");
    assert!(err.contains("before the switch"), "{err}");
    assert!(err.contains("memory intact"), "{err}");

    let (code, out, err, _) = migrate(Some(&tok), Some(1 << 20));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("link lost after the switch (stream I/O failed: sealed record"),
        "{err}"
    );
    assert!(err.contains("failed authentication"), "{err}");
    assert!(integrity_ok(&out), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
