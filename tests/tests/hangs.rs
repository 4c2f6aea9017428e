//! Waits that must end: real `xl-postcopy send` and `receive` processes
//! through the fault-injecting proxy, where a peer goes away or breaks the
//! protocol while the other side waits (issue #17).
//!
//! - after the switch the receiver always ends: recovery window, then
//!   exit 2 with the count of pages lost, even with the guest's vCPU
//!   blocked on a missing page (the fault handler is detached on every
//!   path out);
//! - before the switch a silent receiver costs the sender a bounded wait
//!   for READY, then a clean abort with its guest resumed;
//! - the receiver bounds its own waits: the sender's second connection,
//!   and every read on the bulk stream (`--stall-timeout`): a clean abort
//!   before the switch, the recovery window then exit 2 after it;
//! - messages: the receiver's failures say what the receiver saw, and
//!   timeouts are said in words.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on any error")]

use std::time::{Duration, Instant};

use postcopy_tests::{rec, receiver, sender, Action, Dir, Fault, Proxy, Trigger};

/// Long enough for any bounded wait below, short enough to catch a hang.
const LIMIT: Duration = Duration::from_secs(25);

/// Runs one migration through a proxy with `plan` (given the receiver's
/// pid); returns (sender code, sender stderr, receiver code, receiver
/// stderr, how long the receiver took to end after the sender did).
fn run(plan: Vec<Fault>, send_args: &[&str], recv_args: &[&str]) -> (i32, String, i32, String) {
    let (recv, addr) = receiver(recv_args, LIMIT).unwrap();
    let proxy = Proxy::start(addr, plan).unwrap();
    let send = sender(proxy.addr, send_args, LIMIT).unwrap();
    let (code, _, err) = send.finish().unwrap();
    // A receiver that hangs is killed at its deadline and reports -9.
    let (recv_code, _, recv_err) = recv.finish_within(LIMIT);
    (code, err, recv_code, recv_err)
}

/// The receiver ended after the switch, its link not restored: exit 2,
/// with the count of pages lost.
fn assert_link_lost(recv_code: i32, recv_err: &str) {
    assert_eq!(recv_code, 2, "receiver: {recv_err}");
    assert!(recv_err.contains("after the switch"), "{recv_err}");
    assert!(
        recv_err.contains("owed pages are not confirmed"),
        "{recv_err}"
    );
}

fn bulk_up(at: Trigger, action: Action) -> Fault {
    Fault {
        channel: 0,
        nth: 0,
        dir: Dir::Up,
        at,
        action,
    }
}

/// The path to the source breaks for good right after TRANSITION, with
/// every page still owed, so the resumed vCPU blocks on its first access:
/// the receiver waits out its recovery window, then exits 2 and says how
/// many pages were lost.
#[test]
fn the_receiver_ends_when_the_source_vanishes_after_the_switch() {
    let t = Instant::now();
    let (code, err, recv_code, recv_err) = run(
        vec![bulk_up(
            Trigger::Record(rec::PAGE_DATA),
            Action::DropAndClose,
        )],
        &["--recover-timeout", "2", "--mem", "8M"],
        &["--recover-timeout", "2"],
    );
    assert_ne!(code, 0, "the sender cannot have completed: {err}");
    assert_link_lost(recv_code, &recv_err);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// The sender's `--json` report on stdout.
fn report(out: &str) -> serde_json::Value {
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Like [`run`], with the sender's stdout too.
fn run_out(
    plan: Vec<Fault>,
    send_args: &[&str],
    recv_args: &[&str],
) -> (i32, String, String, i32, String) {
    let (recv, addr) = receiver(recv_args, LIMIT).unwrap();
    let proxy = Proxy::start(addr, plan).unwrap();
    let send = sender(proxy.addr, send_args, LIMIT).unwrap();
    let (code, out, err) = send.finish().unwrap();
    let (recv_code, _, recv_err) = recv.finish_within(LIMIT);
    (code, out, err, recv_code, recv_err)
}

/// A bad frame injected on the bulk stream after the switch (garbage
/// where a record starts), with the vCPU blocked on a missing page: the
/// receiver drops the link as if it broke, the sender redials, and the
/// migration completes with the memory intact (before, the receiver gave
/// up at once and the guest was lost).
#[test]
fn garbage_from_the_source_after_the_switch_is_recovered() {
    let (out, _err, recv_err) = recovered_from(bulk_up(
        Trigger::Record(rec::PAGE_DATA),
        Action::Corrupt(0xff),
    ));
    assert_eq!(report(&out)["pages_duplicate"], 0, "{out}");
    assert!(
        recv_err.contains("the source broke the protocol after the switch"),
        "{recv_err}"
    );
}

/// Runs a small migration with one injected fault after the switch that
/// must be recovered: both sides exit 0, memory intact, exactly one
/// outage. Returns (sender stdout, sender stderr, receiver stderr).
fn recovered_from(fault: Fault) -> (String, String, String) {
    let (code, out, err, recv_code, recv_err) = run_out(
        vec![fault],
        &["--recover-timeout", "10", "--mem", "8M"],
        &["--recover-timeout", "10"],
    );
    assert_eq!(code, 0, "sender: {err}\nreceiver: {recv_err}");
    assert_eq!(recv_code, 0, "receiver: {recv_err}");
    let r = report(&out);
    assert_eq!(r["integrity_ok"], true, "{out}");
    assert_eq!(r["source"]["outages"], 1, "{err}");
    (out, err, recv_err)
}

/// A bad frame injected on the fault channel towards the source after the
/// switch: the source drops the link, the receiver reconnects, and the
/// migration completes with the memory intact (before, the sender gave
/// up at once with exit 2).
#[test]
fn garbage_from_the_destination_after_the_switch_is_recovered() {
    let (_out, err, _recv_err) = recovered_from(Fault {
        channel: 1,
        nth: 0,
        dir: Dir::Down,
        at: Trigger::Record(rec::RESUMED),
        action: Action::Corrupt(0xff),
    });
    assert!(
        err.contains("the destination broke the protocol after the switch"),
        "{err}"
    );
}

/// A bad frame after the switch and then no path back: both sides wait
/// out their recovery window and end with exit 2, naming the protocol
/// error and the count of pages not confirmed.
#[test]
fn garbage_after_the_switch_then_no_path_back_ends_both_sides_with_the_count() {
    let t = Instant::now();
    let (code, err, recv_code, recv_err) = run(
        vec![
            // Time for RESUMED to reach the source first: otherwise it
            // cannot know the guest ran there (in doubt, exit 4).
            bulk_up(
                Trigger::Record(rec::PAGE_DATA),
                Action::Stall(Duration::from_millis(500)),
            ),
            bulk_up(Trigger::Record(rec::PAGE_DATA), Action::Corrupt(0xff)),
            Fault {
                channel: 0,
                nth: 1,
                dir: Dir::Up,
                at: Trigger::Offset(0),
                action: Action::DropAndClose,
            },
        ],
        &["--recover-timeout", "2", "--mem", "8M"],
        &["--recover-timeout", "2"],
    );
    assert_link_lost(recv_code, &recv_err);
    assert!(recv_err.contains("unknown record type"), "{recv_err}");
    assert_eq!(code, 2, "sender: {err}");
    assert!(err.contains("after the switch"), "{err}");
    assert!(err.contains("owed pages are not confirmed"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// The receiver goes silent after the CPU state, before READY (its READY
/// held back by the proxy far longer than the bound): the sender gives up
/// after `--ready-timeout`, resumes its guest and exits 1 saying so in
/// words. Unbounded (`--ready-timeout 0`, as before) it waits out the
/// whole stall.
#[test]
fn a_silent_receiver_before_ready_is_a_clean_abort() {
    let t = Instant::now();
    let (code, err, _, _) = run(
        vec![Fault {
            channel: 1,
            nth: 0,
            dir: Dir::Down,
            at: Trigger::Record(rec::READY),
            action: Action::Stall(Duration::from_secs(60)),
        }],
        &["--ready-timeout", "2", "--mem", "8M"],
        &["--recover-timeout", "1"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("before the switch"), "{err}");
    assert!(err.contains("memory intact"), "{err}");
    assert!(
        err.contains("sent no READY within 2000 ms"),
        "the timeout in words: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
}

/// A "source" that sends a valid bulk hello and never opens the fault
/// channel: the receiver gives up after its stall timeout (exit 1) and
/// says why in words.
#[test]
fn a_bulk_hello_without_a_fault_channel_ends_the_receiver() {
    use std::io::Write;
    let (recv, addr) = receiver(&["--stall-timeout", "2"], LIMIT).unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(b"XPCLINK1");
    hello.extend_from_slice(&0u32.to_le_bytes()); // bulk
    hello.extend_from_slice(&0u32.to_le_bytes()); // no flags
    hello.extend_from_slice(&2048u64.to_le_bytes()); // 8 MiB guest
    hello.extend_from_slice(&0x5eed_u64.to_le_bytes()); // session
    s.write_all(&hello).unwrap();
    let t = Instant::now();
    let (code, _, err) = recv.finish_within(LIMIT);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("opened its bulk connection but not the other"),
        "{err}"
    );
    // The receiver's own failure names the receiver's view.
    assert!(err.contains("no migration was received"), "{err}");
    assert!(
        !err.contains("could not connect to the destination"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// The source stalls in the middle of a record before the switch: the
/// receiver's read on the bulk stream times out (exit 1, a clean abort,
/// the timeout in words) and the sender, told so, resumes its guest.
#[test]
fn a_source_stalled_before_the_switch_is_a_clean_abort() {
    let t = Instant::now();
    let (code, err, recv_code, recv_err) = run(
        vec![bulk_up(
            Trigger::Offset(45),
            Action::Stall(Duration::from_secs(60)),
        )],
        &["--mem", "8M", "--stall-timeout", "0"],
        &["--stall-timeout", "2", "--recover-timeout", "1"],
    );
    assert_eq!(recv_code, 1, "receiver: {recv_err}");
    assert!(recv_err.contains("before the switch"), "{recv_err}");
    assert!(
        recv_err.contains("the source sent nothing for 2.0 s"),
        "{recv_err}"
    );
    assert!(!recv_err.contains("os error"), "{recv_err}");
    // The receiver cannot vouch for the source's guest.
    assert!(!recv_err.contains("source guest is running"), "{recv_err}");
    assert!(recv_err.contains("nothing ran here"), "{recv_err}");
    assert_eq!(code, 1, "sender: {err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// The source's bulk stream stalls after the switch and the path then
/// breaks for good: the receiver's read times out, it waits out its
/// recovery window, then exits 2 with the count of pages lost (before,
/// it waited as long as the stall lasted).
#[test]
fn a_source_stalled_after_the_switch_ends_the_receiver() {
    let t = Instant::now();
    let (_, _, recv_code, recv_err) = run(
        vec![
            bulk_up(
                Trigger::Record(rec::PAGE_DATA),
                Action::Stall(Duration::from_secs(60)),
            ),
            Fault {
                channel: 0,
                nth: 1,
                dir: Dir::Up,
                at: Trigger::Offset(0),
                action: Action::DropAndClose,
            },
        ],
        &[
            "--mem",
            "8M",
            "--stall-timeout",
            "0",
            "--recover-timeout",
            "2",
        ],
        &["--stall-timeout", "2", "--recover-timeout", "2"],
    );
    assert_link_lost(recv_code, &recv_err);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// A "receiver" that takes the connection and never answers: the sender's
/// handshake times out and says so in words (not `os error 11`).
#[test]
fn a_mute_receiver_is_a_worded_timeout() {
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = mute.local_addr().unwrap();
    let t = Instant::now();
    let (code, _, err) = sender(addr, &["--mem", "8M"], LIMIT)
        .unwrap()
        .finish()
        .unwrap();
    drop(mute);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

/// Nobody ever connects to a waiting receiver: it gives up after
/// `--accept-timeout`, exits 1 and says what it waited for and how long
/// (before, it waited for ever).
#[test]
fn a_receiver_nobody_connects_to_times_out() {
    let t = Instant::now();
    let (recv, _addr) = receiver(&["--accept-timeout", "2"], LIMIT).unwrap();
    let (code, _, err) = recv.finish_within(LIMIT);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no migration was received"), "{err}");
    assert!(
        err.contains("no sender connected within 2.0 s"),
        "the timeout in words: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}
