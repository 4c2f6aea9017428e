//! Hostile input that must cost nothing but a clear refusal (issue #17):
//! real `xl-postcopy` processes fed crafted bytes and sizes.
//!
//! - sizes: a hello declaring a 1 TiB guest is refused in the handshake,
//!   before anything is allocated, and the receiver goes on waiting; a
//!   sender asked for a guest beyond the protocol's limit or this host's
//!   memory refuses before filling any of it;
//! - peer text: an ABORT reason with escape sequences or a forged
//!   `xl-postcopy:` line is printed escaped;
//! - messages: a complete migration whose summary arrives garbled says
//!   that no page was lost (integrity unchecked), not that pages were.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use postcopy_tests::{receiver, sender, Action, Dir, Fault, Proxy, Trigger};

const LIMIT: Duration = Duration::from_secs(30);

fn hello(channel: u32, pages: u64, session: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"XPCLINK1");
    h.extend_from_slice(&channel.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&pages.to_le_bytes());
    h.extend_from_slice(&session.to_le_bytes());
    h
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Two hellos of one session declaring a 1 TiB guest (the protocol's
/// limit, beyond this host): each is refused with its status byte in the
/// handshake, the receiver allocates nothing for them and still receives
/// the real migration that follows.
#[test]
fn a_hello_declaring_a_huge_guest_is_refused_before_any_allocation() {
    let (recv, addr) = receiver(&[], LIMIT).unwrap();
    for channel in [0, 1] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&hello(channel, 1 << 28, 0x7e57)).unwrap();
        let mut status = [0u8; 1];
        s.read_exact(&mut status).unwrap();
        assert_eq!(status[0], 6, "channel {channel}: refused as too large");
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_kib(recv.pid());
    assert!(
        rss < 200 << 10,
        "receiver resident {rss} KiB after the hellos"
    );
    let (code, _, err) = sender(addr, &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (recv_code, _, recv_err) = recv.finish_within(LIMIT);
    assert_eq!(recv_code, 0, "{recv_err}");
    assert!(recv_err.contains("MiB available"), "logged: {recv_err}");
}

/// A sender asked for a guest beyond the protocol's limit (2 TiB) or this
/// host's memory (1 TiB) refuses at once, saying which, before filling
/// any memory.
#[test]
fn a_sender_refuses_a_guest_it_cannot_hold_before_filling_it() {
    let nobody = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nobody.local_addr().unwrap();
    for (mem, says) in [("2T", "protocol's limit"), ("1T", "available")] {
        let t = Instant::now();
        let (code, _, err) = sender(addr, &["--mem", mem], LIMIT)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(code, 1, "--mem {mem}: {err}");
        assert!(err.contains(says), "--mem {mem}: {err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}

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

/// The migration completes, then the destination's summary arrives
/// garbled: the sender says every page arrived and integrity was not
/// checked (exit 3), not that pages were lost.
#[test]
fn a_garbled_summary_after_a_complete_migration_loses_no_page() {
    let (recv, addr) = receiver(&[], LIMIT).unwrap();
    // Downstream on the bulk connection: the status byte, then only the
    // summary (4-byte length, JSON): garble its first JSON byte.
    let proxy = Proxy::start(
        addr,
        vec![Fault {
            channel: 0,
            nth: 0,
            dir: Dir::Down,
            at: Trigger::Offset(5),
            action: Action::Corrupt(0xff),
        }],
    )
    .unwrap();
    let (code, _, err) = sender(proxy.addr, &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("every page reached the destination"), "{err}");
    assert!(err.contains("not checked"), "{err}");
    assert!(!err.contains("lost"), "{err}");
    let (recv_code, _, recv_err) = recv.finish_within(LIMIT);
    assert_eq!(recv_code, 0, "{recv_err}");
}
