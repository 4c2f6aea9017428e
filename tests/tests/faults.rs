//! Fault injection between two real `xl-postcopy` processes (`send` and
//! `receive`, real userfaultfd, real TCP) through an in-process proxy.
//!
//! - after the switch: many drops at random offsets of the bulk stream
//!   (each drop cuts both connections); every migration must complete with
//!   the memory digests equal and no page sent twice (at least 100 drops;
//!   `XPC_FAULT_DROPS=1000` for a soak run);
//! - before the switch: a drop, a truncation, a corrupt record and a
//!   killed destination at every phase boundary, and a refused connection;
//!   each must be a clean abort (exit 1, "before the switch", which side
//!   and why), never a lost guest (exit 2);
//! - a stall, an outage past the timeout (exit 2, loudly, with the count of
//!   pages lost), and an admin redirect through `xl-postcopy recover`.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postcopy_tests::{rec, receiver, sender, Action, Dir, Fault, Proc, Proxy, Trigger};

const LIMIT: Duration = Duration::from_secs(15);

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn json(out: &str) -> serde_json::Value {
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {out:?}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn get(v: &serde_json::Value, path: &[&str]) -> serde_json::Value {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.clone()
}

struct Done {
    code: i32,
    out: String,
    err: String,
    recv_code: i32,
    recv_err: String,
}

fn run(
    plan: impl FnOnce(u32) -> Vec<Fault>,
    send_args: &[&str],
    recv_args: &[&str],
) -> (Done, u64) {
    let (recv, addr) = receiver(recv_args, LIMIT).unwrap();
    let proxy = Proxy::start(addr, plan(recv.pid())).unwrap();
    let send = sender(proxy.addr, send_args, LIMIT).unwrap();
    let (code, out, err) = send.finish().unwrap();
    // A receiver whose sender gave up early may still wait for a
    // connection: bounded, then killed (-9).
    let (recv_code, _, recv_err) = recv.finish_within(Duration::from_secs(8));
    let cuts = proxy.stats.cuts.load(std::sync::atomic::Ordering::SeqCst);
    (
        Done {
            code,
            out,
            err,
            recv_code,
            recv_err,
        },
        cuts,
    )
}

/// Random drops after the switch: at least 100 in total over a few
/// migrations, nothing lost.
#[test]
fn random_drops_after_the_switch_lose_no_page() {
    let t = Instant::now();
    let strategies = ["bubble", "linear", "multi-pivot:3", "none"];
    let (mut drops, mut resent, mut outage_ms, mut migrations) = (0u64, 0u64, 0f64, 0usize);
    let mut seed = 0x1234_5678u64;
    // XPC_FAULT_DROPS raises the target for long soak runs.
    let target: u64 = std::env::var("XPC_FAULT_DROPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    while drops < target {
        assert!(
            migrations < 12 + usize::try_from(target / 25).unwrap(),
            "too few drops fired: {drops}"
        );
        seed += 1;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // A 16 MiB guest streams about 16.8 MB; 32 drops of at most
        // 400 KiB each, the first well past the switch (< 1 KiB).
        let plan = |_| {
            (0..32u32)
                .map(|nth| Fault {
                    channel: 0,
                    nth,
                    dir: Dir::Up,
                    at: Trigger::Offset(if nth == 0 {
                        16 * 1024 + rng.below(1 << 20)
                    } else {
                        4096 + rng.below(400 * 1024)
                    }),
                    action: Action::Drop,
                })
                .collect()
        };
        let strategy = strategies[migrations % strategies.len()];
        let (d, cuts) = run(
            plan,
            &[
                "--recover-timeout",
                "20",
                "--prepage",
                strategy,
                "--seed",
                &seed.to_string(),
            ],
            &["--recover-timeout", "20"],
        );
        assert_eq!(
            d.code, 0,
            "migration {migrations} ({strategy}) failed after {cuts} drops:\n{}\n{}\nreceiver: {}",
            d.out, d.err, d.recv_err
        );
        assert_eq!(d.recv_code, 0, "{}", d.recv_err);
        let r = json(&d.out);
        assert_eq!(get(&r, &["integrity_ok"]), true, "{}", d.out);
        assert_eq!(get(&r, &["pages_duplicate"]), 0, "{}", d.out);
        let outages = get(&r, &["source", "outages"]).as_u64().unwrap();
        assert_eq!(outages, cuts, "every drop is one outage: {}", d.out);
        assert_eq!(get(&r, &["destination", "engine", "outages"]), cuts);
        drops += cuts;
        resent += get(&r, &["source", "pages_resent"]).as_u64().unwrap();
        outage_ms += get(&r, &["destination", "engine", "outage_ms"])
            .as_f64()
            .unwrap();
        migrations += 1;
    }
    eprintln!(
        "{drops} drops over {migrations} real-process migrations: {resent} pages resent, \
         {outage_ms:.0} ms of outages (mean {:.1} ms), {:?}",
        outage_ms / drops as f64,
        t.elapsed()
    );
}

/// Before the switch every failure is a clean abort on both sides.
#[test]
fn every_phase_boundary_before_the_switch_is_a_clean_abort() {
    let bulk = |at, action| Fault {
        channel: 0,
        nth: 0,
        dir: Dir::Up,
        at,
        action,
    };
    let back = |at, action| Fault {
        channel: 1,
        nth: 0,
        dir: Dir::Down,
        at,
        action,
    };
    type Case = (&'static str, Box<dyn Fn(u32) -> Vec<Fault>>);
    let cases: Vec<Case> = vec![
        (
            "drop before the hello",
            Box::new(move |_| vec![bulk(Trigger::Offset(0), Action::Drop)]),
        ),
        (
            "drop mid-hello",
            Box::new(move |_| vec![bulk(Trigger::Offset(16), Action::Drop)]),
        ),
        (
            "drop before BEGIN",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::BEGIN), Action::Drop)]),
        ),
        (
            "corrupt BEGIN",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::BEGIN), Action::Corrupt(0xff))]),
        ),
        (
            "truncate at PFNS",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::PFNS), Action::Truncate)]),
        ),
        (
            "corrupt PFNS",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::PFNS), Action::Corrupt(0x40))]),
        ),
        (
            "drop before VCPU_STATE",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::VCPU_STATE), Action::Drop)]),
        ),
        (
            "corrupt VCPU_STATE",
            Box::new(move |_| {
                vec![bulk(
                    Trigger::Record(rec::VCPU_STATE),
                    Action::Corrupt(0x01),
                )]
            }),
        ),
        (
            "drop READY",
            Box::new(move |_| vec![back(Trigger::Record(rec::READY), Action::Drop)]),
        ),
        (
            "corrupt READY",
            Box::new(move |_| vec![back(Trigger::Record(rec::READY), Action::Corrupt(0x80))]),
        ),
        (
            "drop TRANSITION",
            Box::new(move |_| vec![bulk(Trigger::Record(rec::TRANSITION), Action::Drop)]),
        ),
        (
            "destination dies at PFNS",
            Box::new(move |pid| vec![bulk(Trigger::Record(rec::PFNS), Action::Kill(pid))]),
        ),
    ];
    for (name, plan) in cases {
        let t = Instant::now();
        let (d, _) = run(
            plan,
            &["--recover-timeout", "3", "--mem", "8M"],
            &["--recover-timeout", "2"],
        );
        assert_eq!(
            d.code, 1,
            "{name}: want a clean abort (1), got {}:\n{}\nreceiver: {}",
            d.code, d.err, d.recv_err
        );
        assert!(
            d.err.contains("before the switch") || d.err.contains("could not connect"),
            "{name}: {}",
            d.err
        );
        assert!(
            d.err.contains("source guest is running") || d.err.contains("could not connect"),
            "{name}: {}",
            d.err
        );
        assert_ne!(d.recv_code, 0, "{name}: the receiver must not succeed");
        assert_ne!(
            d.recv_code, 2,
            "{name}: no guest may be lost: {}",
            d.recv_err
        );
        eprintln!("{name}: clean abort in {:?}: {}", t.elapsed(), d.err.trim());
    }
}

/// The destination dies while TRANSITION is on its way: the source cannot
/// know whether the guest ever ran there. It keeps it stopped with its
/// memory intact, retries until the timeout, and then says so (exit 4):
/// never a silent resume (split brain), never a silent loss.
#[test]
fn a_destination_dying_at_transition_leaves_the_guest_in_doubt_not_lost() {
    let (d, _) = run(
        |pid| {
            vec![Fault {
                channel: 0,
                nth: 0,
                dir: Dir::Up,
                at: Trigger::Record(rec::TRANSITION),
                action: Action::Kill(pid),
            }]
        },
        &["--recover-timeout", "1", "--mem", "8M"],
        &[],
    );
    assert_eq!(d.code, 4, "{}", d.err);
    assert!(d.err.contains("in doubt"), "{}", d.err);
    assert!(
        d.err.contains("memory intact and was NOT resumed"),
        "{}",
        d.err
    );
}

/// A destination that requires a token refuses a sender without one; the
/// sender says so and keeps its guest.
#[test]
fn a_receiver_with_a_token_refuses_a_stranger() {
    let dir = std::env::temp_dir().join(format!("xpc-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("token");
    postcopy_tests::write_token(&tok, "correct horse battery staple 0123\n").unwrap();
    let wrong = dir.join("wrong");
    postcopy_tests::write_token(&wrong, "incorrect horse battery staple 99\n").unwrap();
    let tok_s = tok.to_str().unwrap();
    let (d, _) = run(|_| Vec::new(), &["--mem", "8M"], &["--token-file", tok_s]);
    assert_eq!(d.code, 1, "{}", d.err);
    assert!(d.err.contains("requires a token"), "{}", d.err);
    let (d, _) = run(
        |_| Vec::new(),
        &["--mem", "8M", "--token-file", wrong.to_str().unwrap()],
        &["--token-file", tok_s],
    );
    assert_eq!(d.code, 1, "{}", d.err);
    assert!(d.err.contains("authentication"), "{}", d.err);
    // With the token: a whole migration.
    let (d, _) = run(
        |_| Vec::new(),
        &["--mem", "8M", "--token-file", tok_s],
        &["--token-file", tok_s],
    );
    assert_eq!(d.code, 0, "{}\n{}", d.err, d.recv_err);
    assert_eq!(get(&json(&d.out), &["integrity_ok"]), true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A long stall after the switch is survived without a reconnect.
#[test]
fn a_stall_after_the_switch_is_survived() {
    let (d, _) = run(
        |_| {
            vec![Fault {
                channel: 0,
                nth: 0,
                dir: Dir::Up,
                at: Trigger::Offset(2 << 20),
                action: Action::Stall(Duration::from_millis(1500)),
            }]
        },
        &["--mem", "8M"],
        &[],
    );
    assert_eq!(d.code, 0, "{}\n{}", d.err, d.recv_err);
    let r = json(&d.out);
    assert_eq!(get(&r, &["integrity_ok"]), true);
    assert_eq!(get(&r, &["source", "outages"]), 0);
}

/// A stall longer than `--stall-timeout`: the sender's writes time out, it
/// treats the link as broken and reconnects; nothing is lost.
#[test]
fn a_stall_past_the_stall_timeout_costs_one_reconnect() {
    let (d, _) = run(
        |_| {
            vec![Fault {
                channel: 0,
                nth: 0,
                dir: Dir::Up,
                at: Trigger::Offset(1 << 20),
                action: Action::Stall(Duration::from_secs(5)),
            }]
        },
        &["--stall-timeout", "1", "--recover-timeout", "20"],
        &["--stall-timeout", "1", "--recover-timeout", "20"],
    );
    assert_eq!(d.code, 0, "{}\n{}", d.err, d.recv_err);
    let r = json(&d.out);
    assert_eq!(get(&r, &["integrity_ok"]), true);
    assert_eq!(get(&r, &["source", "outages"]), 1, "{}", d.err);
}

/// The destination dies after the switch: the source retries until its
/// timeout, then fails loudly with the count of pages lost (exit 2), or
/// in doubt (exit 4) if the destination never confirmed resuming.
#[test]
fn an_outage_past_the_timeout_fails_loudly() {
    let t = Instant::now();
    let (d, _) = run(
        |pid| {
            vec![Fault {
                channel: 0,
                nth: 0,
                dir: Dir::Up,
                at: Trigger::Offset(1 << 20),
                action: Action::Kill(pid),
            }]
        },
        &["--recover-timeout", "1", "--mem", "8M"],
        &[],
    );
    // Killed after it confirmed resuming the guest: exit 2, pages lost.
    // Killed between TRANSITION and that confirmation (the 1 MiB mark can
    // fall on either side on a quiet machine): exit 4, in doubt, and the
    // source keeps the guest stopped. Both are loud, with the count.
    assert!(d.code == 2 || d.code == 4, "exit {}: {}", d.code, d.err);
    if d.code == 4 {
        assert!(d.err.contains("was NOT resumed"), "{}", d.err);
    }
    assert!(d.err.contains("after the switch"), "{}", d.err);
    assert!(
        d.err.contains("not confirmed at the destination"),
        "{}",
        d.err
    );
    assert!(d.err.contains("guest cannot continue"), "{}", d.err);
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// A migration whose only path to the receiver breaks for good after
/// 1 MiB: a receiver with `recv_extra`, a sender with `--control sctl`,
/// both waiting up to 30 s for a recovery; returns once the path is gone.
fn migration_cut_for_good(recv_extra: &[&str], sctl: &std::path::Path) -> (Proc, SocketAddr, Proc) {
    let mut rargs = vec!["--recover-timeout", "30"];
    rargs.extend_from_slice(recv_extra);
    let (recv, addr) = receiver(&rargs, LIMIT).unwrap();
    let old = Proxy::start(
        addr,
        vec![Fault {
            channel: 0,
            nth: 0,
            dir: Dir::Up,
            at: Trigger::Offset(1 << 20),
            action: Action::DropAndClose,
        }],
    )
    .unwrap();
    let send = sender(
        old.addr,
        &[
            "--recover-timeout",
            "30",
            "--mem",
            "8M",
            "--control",
            sctl.to_str().unwrap(),
        ],
        LIMIT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.stats.cuts.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the drop never fired");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(old);
    (recv, addr, send)
}

/// `xl-postcopy recover ARGS`, which must succeed; its stdout.
fn admin_recover(args: &[&str]) -> String {
    let mut v = vec!["recover".to_string()];
    v.extend(args.iter().map(|s| s.to_string()));
    let (code, out, err) = Proc::spawn(&v, Duration::from_secs(20))
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// The path to the destination disappears after the switch; an admin
/// points the sender at a new one with `xl-postcopy recover`.
#[test]
fn recover_redirects_a_stuck_sender() {
    let dir = std::env::temp_dir().join(format!("xpc-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = dir.join("send.sock");
    let (recv, addr, send) = migration_cut_for_good(&[], &ctl);
    std::thread::sleep(Duration::from_millis(300));
    let new = Proxy::start(addr, Vec::new()).unwrap();
    let new_addr = new.addr.to_string();
    let out = admin_recover(&["--control", ctl.to_str().unwrap(), "--to", &new_addr]);
    assert!(out.contains(&new_addr), "{out}");
    let (code, out, err) = send.finish().unwrap();
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    assert_eq!(get(&r, &["integrity_ok"]), true);
    assert_eq!(get(&r, &["source", "outages"]), 1);
    assert!(
        new.stats
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    assert_eq!(recv.finish().unwrap().0, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy alone changes nothing.
#[test]
fn a_clean_run_through_the_proxy() {
    let (d, _) = run(|_| Vec::new(), &["--mem", "8M"], &[]);
    assert_eq!(d.code, 0, "{}\n{}", d.err, d.recv_err);
    assert_eq!(get(&json(&d.out), &["integrity_ok"]), true);
}

/// Both sides move: the receiver opens a new listener and the sender is
/// pointed at it, each through its control socket.
#[test]
fn recover_moves_both_sides_to_a_new_address() {
    let dir = std::env::temp_dir().join(format!("xpc-mv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sctl, rctl) = (dir.join("send.sock"), dir.join("recv.sock"));
    let (recv, _, send) = migration_cut_for_good(&["--control", rctl.to_str().unwrap()], &sctl);
    let said = admin_recover(&[
        "--control",
        rctl.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let new_addr = said.trim().rsplit(' ').next().unwrap().to_string();
    let said = admin_recover(&["--control", sctl.to_str().unwrap(), "--to", &new_addr]);
    assert!(said.contains(&new_addr), "{said}");
    let (code, out, err) = send.finish().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(get(&json(&out), &["integrity_ok"]), true);
    assert_eq!(recv.finish().unwrap().0, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
