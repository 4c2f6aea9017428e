//! Strangers at a waiting receiver (issue #17): real `xl-postcopy
//! receive` and `send` processes, with crafted connections in between. A
//! bad hello, a failed proof or a silent connection closes that
//! connection only; handshakes run concurrently with a short bound, so
//! the legitimate sender is never delayed by more than that bound.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use postcopy_tests::{receiver, sender};

const LIMIT: Duration = Duration::from_secs(40);

fn token_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xpc-str-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port scan (garbage), a hello with a wrong proof and a hello without
/// one, then the real sender: the migration completes.
#[test]
fn strangers_do_not_end_a_waiting_receiver() {
    let dir = token_dir("bad");
    let tok = dir.join("token");
    postcopy_tests::write_token(&tok, "correct horse battery staple 0123\n").unwrap();
    let tok_s = tok.to_str().unwrap();
    let (recv, addr) = receiver(&["--token-file", tok_s], LIMIT).unwrap();
    // Garbage, as a scanner sends.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345")
        .unwrap();
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read(&mut b);
    // A real sender with the wrong token, then one without a token.
    let wrong = dir.join("wrong");
    postcopy_tests::write_token(&wrong, "incorrect horse battery staple 99\n").unwrap();
    let (code, _, err) = sender(
        addr,
        &["--mem", "8M", "--token-file", wrong.to_str().unwrap()],
        LIMIT,
    )
    .unwrap()
    .finish()
    .unwrap();
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = sender(addr, &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 1, "{err}");
    // The receiver is still there for the real source.
    let (code, _, err) = sender(addr, &["--mem", "8M", "--token-file", tok_s], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let (recv_code, _, recv_err) = recv.finish_within(Duration::from_secs(10));
    assert_eq!(recv_code, 0, "{recv_err}");
    assert!(recv_err.contains("refused a connection"), "{recv_err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four connections that say nothing, then the real sender: it is not
/// held up behind them (each handshake runs on its own, bounded).
#[test]
fn silent_strangers_do_not_delay_the_sender() {
    let (recv, addr) = receiver(&[], LIMIT).unwrap();
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (code, _, err) = sender(addr, &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(code, 0, "{err}");
    // A whole 8 MiB migration takes about a second here; one silent
    // stranger used to hold the receiver for 30 s.
    assert!(
        took < Duration::from_secs(8),
        "the sender was held up: {took:?}"
    );
    drop(silent);
    let (recv_code, _, recv_err) = recv.finish_within(Duration::from_secs(10));
    assert_eq!(recv_code, 0, "{recv_err}");
}
