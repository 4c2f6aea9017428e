//! Hostile input that must cost nothing but a clear refusal (issue #17):
//! real `xl-postcopy` processes fed crafted bytes, sizes and files.
//!
//! - sizes: a hello declaring a 1 TiB guest is refused in the handshake,
//!   before anything is allocated, and the receiver goes on waiting; a
//!   sender asked for a guest beyond the protocol's limit or this host's
//!   memory refuses before filling any of it;
//! - a sender off loopback without a token is refused before it boots;
//! - files: a FIFO or a group/world-readable `--token-file` is refused at
//!   once; `--control` never deletes a file that is not its stale socket;
//! - peer text: an ABORT reason with escape sequences or a forged
//!   `xl-postcopy:` line is printed escaped;
//! - messages: a complete migration whose summary arrives garbled says
//!   that no page was lost (integrity unchecked), not that pages were.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use postcopy_tests::{receiver, sender, write_token, Action, Dir, Fault, Proc, Proxy, Trigger};

const LIMIT: Duration = Duration::from_secs(30);

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xpc-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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

/// `send --to` an address off loopback without a token is refused before
/// the guest boots (as the tunnel and `receive` refuse): guest memory
/// never crosses a link nobody authenticated.
#[test]
fn a_sender_off_loopback_insists_on_a_token() {
    let t = Instant::now();
    // TEST-NET-1: nothing answers there.
    let (code, _, err) = sender("192.0.2.1:7000".parse().unwrap(), &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give --token-file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

fn receive(args: &[&str]) -> (i32, String) {
    let mut all: Vec<String> = [
        "receive",
        "--listen",
        "127.0.0.1:0",
        "--accept-timeout",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let (code, _, err) = Proc::spawn(&all, LIMIT).unwrap().finish_within(LIMIT);
    (code, err)
}

/// A FIFO as `--token-file` is refused at once (opening it used to wait
/// for a writer for ever); so is a token file group or others can read.
#[test]
fn a_token_file_must_be_a_private_regular_file() {
    let dir = scratch("token");
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let t = Instant::now();
    let (code, err) = receive(&["--token-file", fifo.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    let open = dir.join("open");
    std::fs::write(&open, "correct horse battery staple 0123\n").unwrap();
    let (code, err) = receive(&["--token-file", open.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    let short = dir.join("short");
    write_token(&short, "tiny\n").unwrap();
    let (code, err) = receive(&["--token-file", short.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("shorter than"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--control PATH` with a regular file at PATH: the receiver refuses to
/// start (before, it deleted the file once a sender arrived) and the file
/// is intact.
#[test]
fn control_never_deletes_what_is_not_its_stale_socket() {
    let dir = scratch("control");
    let file = dir.join("notes.txt");
    std::fs::write(&file, "precious").unwrap();
    let mut args: Vec<String> = ["receive", "--listen", "127.0.0.1:0", "--tail", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--control".into(), file.to_str().unwrap().to_string()]);
    let recv = Proc::spawn(&args, LIMIT).unwrap();
    let addr = recv.line().unwrap();
    let addr = addr.strip_prefix("LISTEN ").unwrap().parse().unwrap();
    // A sender arrives (if the receiver still waits for one).
    let send = sender(addr, &["--mem", "8M"], LIMIT).unwrap();
    let (code, _, err) = recv.finish_within(LIMIT);
    let _ = send.finish_within(LIMIT);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    let _ = std::fs::remove_dir_all(&dir);
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
    // Guest memory prepared: the sender may begin.
    bulk.write_all(&[0x50]).unwrap();
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
