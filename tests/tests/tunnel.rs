//! `xl-postcopy tunnel` as real processes: a `connect` end fed from this
//! test, a `listen` end running `cat`, and the fault-injecting [`Proxy`]
//! between them. Every byte that goes in must come back out exactly once
//! and in order, whatever the link does.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postcopy_tests::{xl_postcopy, Action, Dir, Fault, Proxy, Trigger};

const MIB: u64 = 1 << 20;

/// Deterministic test bytes.
fn payload(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn wait_file(p: &Path, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            if s.ends_with('\n') {
                return s.trim().to_string();
            }
        }
        assert!(t.elapsed() < limit, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(mut c: Child, limit: Duration) -> (i32, String) {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (st.code().unwrap_or(-1), err);
        }
        if t.elapsed() > limit {
            c.kill().unwrap();
            c.wait().unwrap();
            panic!("process overstayed {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Ends {
    dir: std::path::PathBuf,
    listener: Child,
    listen_addr: String,
}

fn listen(name: &str, extra: &[&str]) -> Ends {
    let dir = std::env::temp_dir().join(format!("xpc-tunnel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let listener = Command::new(xl_postcopy().unwrap())
        .args(["tunnel", "listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .arg("--stats")
        .arg(dir.join("listen.json"))
        .args(extra)
        .args(["--", "cat"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listen_addr = wait_file(&ready, Duration::from_secs(20));
    Ends {
        dir,
        listener,
        listen_addr,
    }
}

/// Pushes `data` through `connect addr` and returns (exit code, what came
/// back, stderr).
fn echo_through(addr: &str, data: &[u8], extra: &[&str], stats: &Path) -> (i32, Vec<u8>, String) {
    let mut c = Command::new(xl_postcopy().unwrap())
        .args(["tunnel", "connect", addr, "--stats"])
        .arg(stats)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let mut stdout = c.stdout.take().unwrap();
    let back = std::thread::scope(|s| {
        s.spawn(move || {
            for chunk in data.chunks(40_000) {
                if stdin.write_all(chunk).is_err() {
                    break;
                }
            }
        });
        let r = s.spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        r.join().unwrap()
    });
    let (code, err) = wait_exit(c, Duration::from_secs(120));
    (code, back, err)
}

fn stats(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn drop_at(nth: u32, dir: Dir, at: u64) -> Fault {
    Fault {
        // The tunnel hello's version field sits where the proxy looks for
        // a local-mode channel number: 1.
        channel: 1,
        nth,
        dir,
        at: Trigger::Offset(at),
        action: Action::Drop,
    }
}

#[test]
fn every_byte_crosses_repeated_link_drops_exactly_once() {
    let ends = listen("drops", &["--silence", "3", "--recover-timeout", "30"]);
    let plan = vec![
        drop_at(0, Dir::Up, 3 * MIB),
        drop_at(1, Dir::Down, 2 * MIB),
        drop_at(2, Dir::Up, 5 * MIB),
        drop_at(3, Dir::Down, 64 * 1024 + 7),
        // Cut inside the next hello: a failed dial, not an outage.
        drop_at(4, Dir::Up, 1),
    ];
    let proxy = Proxy::start(ends.listen_addr.parse().unwrap(), plan).unwrap();
    let data = payload(24 * MIB as usize, 7);
    let cstats = ends.dir.join("connect.json");
    let (code, back, err) = echo_through(&proxy.addr.to_string(), &data, &[], &cstats);
    assert_eq!(code, 0, "connect failed: {err}");
    assert_eq!(back.len(), data.len(), "{err}");
    assert!(back == data, "bytes changed on the way");
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 0, "listen failed: {lerr}");
    let s = stats(&cstats);
    assert_eq!(s["bytes_sent"], data.len() as u64);
    assert_eq!(s["bytes_received"], data.len() as u64);
    assert_eq!(s["outages"], 4, "{s}");
    assert_eq!(s["connections"], 5, "{s}");
    assert!(s["bytes_resent"].as_u64().unwrap() > 0, "{s}");
    assert!(err.contains("4 outage(s)"), "{err}");
    let l = stats(&ends.dir.join("listen.json"));
    assert_eq!(l["outages"], 4, "{l}");
    assert_eq!(l["bytes_received"], data.len() as u64);
}

#[test]
fn a_silent_link_is_taken_for_broken_and_resumed() {
    let ends = listen("silent", &["--silence", "2", "--recover-timeout", "30"]);
    let plan = vec![Fault {
        channel: 1,
        nth: 0,
        dir: Dir::Up,
        at: Trigger::Offset(MIB),
        action: Action::Stall(Duration::from_secs(30)),
    }];
    let proxy = Proxy::start(ends.listen_addr.parse().unwrap(), plan).unwrap();
    let data = payload(4 * MIB as usize, 9);
    let cstats = ends.dir.join("connect.json");
    let t = Instant::now();
    let (code, back, err) = echo_through(&proxy.addr.to_string(), &data, &[], &cstats);
    assert_eq!(code, 0, "connect failed: {err}");
    assert!(back == data, "bytes changed on the way");
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "the stall was waited out, not detected"
    );
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 0, "{lerr}");
    assert!(lerr.contains("nothing from the peer"), "{lerr}");
    assert_eq!(stats(&cstats)["outages"], 1);
}

#[test]
fn a_link_gone_for_good_ends_both_sides_with_an_error() {
    let ends = listen("gone", &["--silence", "3", "--recover-timeout", "2"]);
    let plan = vec![Fault {
        channel: 1,
        nth: 0,
        dir: Dir::Up,
        at: Trigger::Offset(MIB),
        action: Action::DropAndClose,
    }];
    let proxy = Proxy::start(ends.listen_addr.parse().unwrap(), plan).unwrap();
    let data = payload(4 * MIB as usize, 11);
    let cstats = ends.dir.join("connect.json");
    let (code, _, err) = echo_through(
        &proxy.addr.to_string(),
        &data,
        &["--recover-timeout", "2"],
        &cstats,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no link for"), "{err}");
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 1, "{lerr}");
    assert!(lerr.contains("no link for"), "{lerr}");
}

#[test]
fn a_wrong_token_is_refused_before_any_byte_moves() {
    let dir = std::env::temp_dir().join(format!("xpc-tunnel-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ka, kb) = (dir.join("a"), dir.join("b"));
    postcopy_tests::write_token(&ka, "token-number-one-0123456789\n").unwrap();
    postcopy_tests::write_token(&kb, "token-number-two-0123456789\n").unwrap();
    let ends = listen(
        "token",
        &[
            "--token-file",
            kb.to_str().unwrap(),
            "--accept-timeout",
            "3",
        ],
    );
    let cstats = dir.join("c.json");
    let (code, back, err) = echo_through(
        &ends.listen_addr,
        b"secret guest memory",
        &["--token-file", ka.to_str().unwrap()],
        &cstats,
    );
    assert_eq!(code, 1, "{err}");
    assert!(back.is_empty());
    assert!(
        err.contains("authentication") || err.contains("token"),
        "{err}"
    );
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 1, "{lerr}");
    assert!(lerr.contains("refused a connection"), "{lerr}");
}

#[test]
fn off_loopback_both_ends_insist_on_a_token() {
    for args in [
        &["tunnel", "connect", "192.0.2.1:7000"][..],
        &["tunnel", "listen", "0.0.0.0:0", "--", "cat"][..],
    ] {
        let out = Command::new(xl_postcopy().unwrap())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("--token-file"), "{err}");
    }
}

/// Three connections that say nothing and one that sends garbage, then the
/// real `connect`: its bytes cross without waiting behind the strangers'
/// handshakes (each runs on its own, bounded), and the listener survives
/// them all.
#[test]
fn silent_strangers_do_not_delay_the_tunnel() {
    let ends = listen("strangers", &[]);
    let silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&ends.listen_addr).unwrap())
        .collect();
    let mut junk = std::net::TcpStream::connect(&ends.listen_addr).unwrap();
    junk.write_all(b"SSH-2.0-OpenSSH_9.6\r\n0123456789abcdef")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let data = payload(64 * 1024, 7);
    let t = Instant::now();
    let (code, back, err) = echo_through(&ends.listen_addr, &data, &[], &ends.dir.join("c.json"));
    let took = t.elapsed();
    assert_eq!(code, 0, "{err}");
    assert!(back == data, "the bytes came back changed");
    // One silent stranger used to hold the listener for its whole 10 s
    // hello timeout, three for 30 s.
    assert!(took < Duration::from_secs(8), "held up: {took:?}");
    drop(silent);
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 0, "{lerr}");
    assert!(lerr.contains("refused a connection"), "{lerr}");
}

/// A listener nobody dials gives up: by default after 600 s (as
/// `receive`), and after `--accept-timeout` when given, saying so.
#[test]
fn a_listener_nobody_dials_gives_up() {
    let help = Command::new(xl_postcopy().unwrap())
        .args(["tunnel", "listen", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 600]"), "{help}");
    let t = Instant::now();
    let ends = listen("nobody", &["--accept-timeout", "1"]);
    let (code, err) = wait_exit(ends.listener, Duration::from_secs(15));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("nobody connected"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&ends.dir);
}

/// With a token the tunnel is sealed: a wiretap sees none of the data, and
/// a byte flipped on the way is caught as a failed authentication (the
/// connection breaks and resumes) instead of reaching the other end.
#[test]
fn with_a_token_the_tunnel_is_sealed_and_tampering_is_caught() {
    let dir = std::env::temp_dir().join(format!("xpc-tunnel-seal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    postcopy_tests::write_token(&key, "token-sealed-tunnel-0123456789\n").unwrap();
    let k = key.to_str().unwrap();
    let ends = listen("sealed", &["--token-file", k, "--recover-timeout", "30"]);
    let tap = postcopy_tests::tap(ends.listen_addr.parse().unwrap(), Some(300_000)).unwrap();
    let data = payload(4 * MIB as usize, 11);
    let cstats = ends.dir.join("connect.json");
    let (code, back, err) =
        echo_through(&tap.addr.to_string(), &data, &["--token-file", k], &cstats);
    assert_eq!(code, 0, "connect failed: {err}");
    assert!(back == data, "bytes changed on the way");
    let (lcode, lerr) = wait_exit(ends.listener, Duration::from_secs(30));
    assert_eq!(lcode, 0, "listen failed: {lerr}");
    assert!(lerr.contains("failed authentication"), "{lerr}");
    assert!(stats(&cstats)["outages"].as_u64().unwrap() >= 1);
    let wire = tap.seen();
    assert!(wire.len() > data.len(), "only {} bytes seen", wire.len());
    let samples: std::collections::HashSet<&[u8]> = data.chunks(4096).map(|c| &c[..32]).collect();
    assert!(
        !wire.windows(32).any(|w| samples.contains(w)),
        "tunnel data in clear on the wire"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
