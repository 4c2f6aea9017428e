//! Hostile input that must cost nothing but a clear refusal (issue #17):
//! real `xl-postcopy` processes fed crafted bytes.
//!
//! - peer text: an ABORT reason with escape sequences or a forged
//!   `xl-postcopy:` line is printed escaped.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use postcopy_tests::sender;

const LIMIT: Duration = Duration::from_secs(30);

/// One framed record (libxc framing: type, length, body, padding to 8).
fn record(rtype: u32, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&rtype.to_le_bytes());
    r.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    r.extend_from_slice(body);
    r.resize(r.len().div_ceil(8) * 8, 0);
    r
}

/// A fake receiver accepts both connections and answers the CPU state
/// with an ABORT whose reason carries terminal escapes and a forged
/// `xl-postcopy:` line: the sender aborts cleanly and prints the reason
/// escaped, on one line.
#[test]
fn peer_text_is_printed_escaped() {
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    let send = sender(addr, &["--mem", "8M"], LIMIT).unwrap();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = fake.accept().unwrap();
        let mut h = [0u8; 32];
        s.read_exact(&mut h).unwrap();
        s.write_all(&[0]).unwrap();
        conns.push(s);
    }
    let mut bulk = conns.remove(0);
    let mut fault = conns.remove(0);
    let drain = std::thread::spawn(move || {
        let mut sink = vec![0u8; 1 << 16];
        while matches!(bulk.read(&mut sink), Ok(n) if n > 0) {}
    });
    let reason = b"\x1b[2J\x1b[31mred\nxl-postcopy: migration complete, all is well";
    fault.write_all(&record(0x1d, reason)).unwrap();
    let (code, _, err) = send.finish().unwrap();
    drop(fault);
    drain.join().unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("before the switch"), "{err}");
    assert!(!err.contains('\x1b'), "raw escape printed: {err:?}");
    assert!(
        !err.lines()
            .any(|l| l.starts_with("xl-postcopy: migration complete")),
        "forged line printed: {err}"
    );
    assert!(err.contains("\\u{1b}[2J"), "{err}");
}
