//! Link recovery after the switch, end to end on the in-memory backends:
//! the source's links are cut at random byte offsets (mid-record included)
//! several times per migration while a simulated vCPU faults on the
//! destination; every migration must still complete with every page
//! exactly once and the image equal. A timeout that expires fails both
//! sides loudly; a cut before the switch stays a clean abort.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use postcopy::destination::{run_destination_recoverable, DestConfig};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::recovery::Recovery;
use postcopy::source::{run_source_recoverable, Mode, SourceConfig};
use postcopy::testmem::MemDestination;
use postcopy::transport::{tripwire, unix_pair, DestLinks, SourceLinks};
use postcopy::Error;

mod common;
use common::{source_image, Guest, Limit, Resume, REGS};

/// A source's reconnect hook: each attempt makes a fresh pair and sends
/// the destination's ends down `to_dest`.
fn links_to(
    to_dest: &mpsc::Sender<DestLinks>,
) -> impl FnMut(Instant) -> std::io::Result<SourceLinks> + '_ {
    move |_| {
        let (s, d) = unix_pair()?;
        to_dest
            .send(d)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(s)
    }
}

/// xorshift64*, enough for picking cut points reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Tells whether one tripwire has been cut.
type Tripped = Box<dyn Fn() -> bool + Send>;

struct Outcome {
    /// Reconnects the source asked for.
    reconnects: u64,
    /// Tripwires actually cut.
    cuts: u64,
    src: Metrics,
    dst: Metrics,
}

/// One migration of `n` pages whose links are cut at the byte offsets
/// `cut(session)` returns (None: no cut), with a vCPU touching `touches`.
fn migrate_with_cuts(
    n: u64,
    seed: u64,
    spec: StrategySpec,
    touches: Vec<u64>,
    mut cut: impl FnMut(u32) -> Option<u64> + Send,
) -> Outcome {
    let mut src_mem = source_image(n, seed, &[]);
    let expected = src_mem.image().to_vec();
    let dst_mem = Arc::new(MemDestination::new(n));
    let (src_metrics, dst_metrics) = (Metrics::new(), Metrics::new());
    let cuts = Arc::new(AtomicU64::new(0));
    let (to_dest, from_source) = mpsc::channel::<DestLinks>();
    let mut session = 0u32;
    let trips: std::sync::Mutex<Vec<Tripped>> = std::sync::Mutex::default();
    let new_links = |cut: Option<u64>| -> (SourceLinks, DestLinks) {
        let (s, d) = unix_pair().unwrap();
        match cut {
            Some(budget) => {
                let (s, flag) = tripwire(s, budget);
                trips.lock().unwrap().push(Box::new(flag));
                (s, d)
            }
            None => (s, d),
        }
    };
    let (src_links, dst_links) = new_links(cut(session));
    let go = Arc::new(AtomicBool::new(false));
    let cfg = SourceConfig {
        strategy: spec,
        mode: Mode::Postcopy,
        batch_pages: 8,
        idle_flush: Duration::from_millis(20),
        ..SourceConfig::default()
    };
    let mut guest = Guest::default();
    std::thread::scope(|s| {
        let vcpu = {
            let (dst_mem, go) = (dst_mem.clone(), go.clone());
            s.spawn(move || {
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for p in touches {
                    dst_mem.touch(p % n);
                }
            })
        };
        let dst = {
            let (dst_mem, go) = (dst_mem.clone(), go.clone());
            let dst_metrics = &dst_metrics;
            s.spawn(move || {
                let mut hook = |deadline: Instant| -> std::io::Result<DestLinks> {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    from_source
                        .recv_timeout(wait.min(Duration::from_millis(200)))
                        .map_err(|e| std::io::Error::other(e.to_string()))
                };
                let rec = Recovery {
                    timeout: Duration::from_secs(10),
                    reconnect: &mut hook,
                };
                run_destination_recoverable(
                    &*dst_mem,
                    dst_links,
                    &DestConfig::default(),
                    &mut Resume::new(go),
                    dst_metrics,
                    Some(rec),
                )
            })
        };
        let cuts2 = Arc::clone(&cuts);
        let mut hook = |_: Instant| -> std::io::Result<SourceLinks> {
            cuts2.fetch_add(1, Ordering::SeqCst);
            session += 1;
            let (s, d) = new_links(cut(session));
            to_dest
                .send(d)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(s)
        };
        let rec = Recovery {
            timeout: Duration::from_secs(10),
            reconnect: &mut hook,
        };
        let out = run_source_recoverable(
            &mut src_mem,
            src_links,
            &cfg,
            &mut guest,
            &src_metrics,
            Some(rec),
        );
        let d = dst.join().unwrap();
        if out.is_err() || d.is_err() {
            // Release the vCPU (it waits for absent pages) before failing.
            for p in 0..n {
                let _ = postcopy::memory::DestinationMemory::install_zero(&*dst_mem, p);
            }
        }
        vcpu.join().unwrap();
        let out = out.unwrap_or_else(|e| panic!("source failed (seed {seed}): {e}"));
        let d = d.unwrap_or_else(|e| panic!("destination failed (seed {seed}): {e}"));
        assert_eq!(out.owed, d.owed);
    });
    assert!(!guest.resumed_on_source);
    assert_eq!(dst_mem.absent(), 0, "seed {seed}: pages absent at the end");
    assert!(dst_mem.image() == expected, "seed {seed}: image differs");
    let src = src_metrics.snapshot();
    let dst = dst_metrics.snapshot();
    assert_eq!(src.pages_duplicate + dst.pages_duplicate, 0);
    let cut_count = trips.lock().unwrap().iter().filter(|t| t()).count() as u64;
    Outcome {
        reconnects: cuts.load(Ordering::SeqCst),
        cuts: cut_count,
        src: src_metrics,
        dst: dst_metrics,
    }
}

/// At least 100 cuts at random offsets after the switch, several per
/// migration, across strategies: nothing lost, nothing sent twice.
#[test]
fn random_cuts_after_the_switch_lose_no_page() {
    let _limit = Limit::secs(60, "random_cuts_after_the_switch_lose_no_page");
    let specs = [
        StrategySpec::Bubble,
        StrategySpec::Linear,
        StrategySpec::None,
        StrategySpec::MultiPivot(3),
        StrategySpec::BubbleForward,
    ];
    let (mut cuts, mut resent, mut outage_ms) = (0u64, 0u64, 0f64);
    let started = Instant::now();
    for seed in 0..32u64 {
        let n = 256 + 32 * (seed % 5);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9) | 1);
        let touches: Vec<u64> = (0..40).map(|_| rng.below(n)).collect();
        // The whole conversation is about n pages; the pre-switch part is
        // well under 1 KiB here, so every cut falls after TRANSITION.
        let total = n * 4200;
        let mut rng2 = Rng(seed ^ 0x5555_5555_5555 | 1);
        let max_cuts = 3 + seed % 4;
        let out = migrate_with_cuts(n, seed, specs[seed as usize % specs.len()], touches, |s| {
            if u64::from(s) >= max_cuts {
                None
            } else if s == 0 {
                Some(1024 + rng2.below(total / 2))
            } else {
                Some(1 + rng2.below(total / 3))
            }
        });
        let (src, dst) = (out.src.snapshot(), out.dst.snapshot());
        // Every cut is an outage; a cut during a handshake is survived
        // within the same outage on one side (a second reconnect).
        assert!(src.outages >= 1 || out.cuts == 0, "seed {seed}");
        assert!(src.outages <= out.cuts, "seed {seed}");
        assert!(out.reconnects >= src.outages, "seed {seed}");
        assert!(dst.outages <= out.cuts, "seed {seed}");
        cuts += out.cuts;
        resent += src.pages_resent;
        outage_ms += dst.outage_ms;
    }
    eprintln!(
        "{cuts} cuts, {resent} pages resent, {outage_ms:.1} ms total outage, {:?}",
        started.elapsed()
    );
    assert!(cuts >= 100, "only {cuts} cuts");
}

/// A link that never comes back: both sides give up at the timeout and say
/// how much is lost; the source does not resume its (stale) guest.
#[test]
fn an_outage_past_the_timeout_fails_loudly_on_both_sides() {
    let _limit = Limit::secs(60, "an_outage_past_the_timeout_fails_loudly_on_both_sides");
    let n = 512;
    let mut src_mem = source_image(n, 7, &[]);
    let dst_mem = MemDestination::new(n);
    let (s, d) = unix_pair().unwrap();
    let (s, _flag) = tripwire(s, 2000);
    let (sm, dm) = (Metrics::new(), Metrics::new());
    let mut guest = Guest::default();
    let go = Arc::new(AtomicBool::new(false));
    let never = |_: Instant| -> std::io::Result<SourceLinks> {
        std::thread::sleep(Duration::from_millis(20));
        Err(std::io::Error::other("destination unreachable"))
    };
    let t = Instant::now();
    let (src, dst) = std::thread::scope(|sc| {
        let dst = sc.spawn(|| {
            let mut hook = |_: Instant| -> std::io::Result<DestLinks> {
                std::thread::sleep(Duration::from_millis(20));
                Err(std::io::Error::other("source unreachable"))
            };
            run_destination_recoverable(
                &dst_mem,
                d,
                &DestConfig::default(),
                &mut Resume::new(go.clone()),
                &dm,
                Some(Recovery {
                    timeout: Duration::from_millis(300),
                    reconnect: &mut hook,
                }),
            )
        });
        let mut never = never;
        let src = run_source_recoverable(
            &mut src_mem,
            s,
            &SourceConfig::default(),
            &mut guest,
            &sm,
            Some(Recovery {
                timeout: Duration::from_millis(300),
                reconnect: &mut never,
            }),
        );
        (src, dst.join().unwrap())
    });
    assert!(t.elapsed() < Duration::from_secs(5));
    let src = src.unwrap_err();
    assert!(src.after_switch);
    assert!(
        matches!(src.error, Error::LinkLost { missing, .. } if missing > 0),
        "{}",
        src.error
    );
    assert!(src.error.to_string().contains("destination unreachable"));
    let dst = dst.unwrap_err();
    assert!(dst.after_switch);
    assert!(
        matches!(dst.error, Error::LinkLost { missing, .. } if missing > 0),
        "{}",
        dst.error
    );
    assert!(!guest.resumed_on_source);
    assert_eq!(sm.snapshot().outages, 1);
}

/// A cut before the switch is never "recovered": it is a clean abort, the
/// source guest resumes, and the source never tries to reconnect.
#[test]
fn a_cut_before_the_switch_is_a_clean_abort() {
    let _limit = Limit::secs(60, "a_cut_before_the_switch_is_a_clean_abort");
    for budget in [0u64, 8, 40, 100, 103] {
        let n = 64;
        let mut src_mem = source_image(n, 3, &[]);
        let before = src_mem.image().to_vec();
        let dst_mem = MemDestination::new(n);
        let (s, d) = unix_pair().unwrap();
        let (s, _flag) = tripwire(s, budget);
        let (sm, dm) = (Metrics::new(), Metrics::new());
        let mut guest = Guest::default();
        let src_called = AtomicBool::new(false);
        let (src, dst) = std::thread::scope(|sc| {
            let dst = sc.spawn(|| {
                // Called only for a cut after READY (the destination offers
                // the source a way to learn the guest never ran here).
                let mut hook =
                    |_: Instant| -> std::io::Result<DestLinks> { Err(std::io::Error::other("no")) };
                run_destination_recoverable(
                    &dst_mem,
                    d,
                    &DestConfig::default(),
                    &mut Resume::new(Arc::new(AtomicBool::new(false))),
                    &dm,
                    Some(Recovery {
                        timeout: Duration::from_millis(200),
                        reconnect: &mut hook,
                    }),
                )
            });
            let mut hook = |_: Instant| -> std::io::Result<SourceLinks> {
                src_called.store(true, Ordering::SeqCst);
                Err(std::io::Error::other("no"))
            };
            let src = run_source_recoverable(
                &mut src_mem,
                s,
                &SourceConfig::default(),
                &mut guest,
                &sm,
                Some(Recovery {
                    timeout: Duration::from_millis(200),
                    reconnect: &mut hook,
                }),
            );
            (src, dst.join().unwrap())
        });
        let src = src.unwrap_err();
        assert!(!src.after_switch, "budget {budget}: {}", src.error);
        assert!(!dst.unwrap_err().after_switch, "budget {budget}");
        assert!(!src_called.load(Ordering::SeqCst), "budget {budget}");
        assert_eq!(src_mem.image(), &before[..]);
        // Stopped only if the cut came after BEGIN; resumed if stopped.
        let _ = guest.resumed_on_source;
    }
}

/// Swallows every byte written after the first `keep`, then (shortly
/// after) cuts the links: TRANSITION "sent" into a dead link.
struct Blackhole {
    inner: Box<dyn std::io::Write + Send>,
    keep: usize,
    closer: postcopy::transport::Closer,
}

impl std::io::Write for Blackhole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.keep == 0 {
            let c = self.closer.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                c();
            });
            return Ok(buf.len());
        }
        let n = self.keep.min(buf.len());
        let n = self.inner.write(&buf[..n])?;
        self.keep -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The link dies between READY and TRANSITION: the source believes it
/// switched, the destination never resumed. On reconnect the destination
/// answers ABORT instead of RECOVER, and the source resumes its guest.
#[test]
fn a_cut_that_swallows_transition_hands_the_guest_back() {
    let _limit = Limit::secs(60, "a_cut_that_swallows_transition_hands_the_guest_back");
    let n = 64;
    let mut src_mem = source_image(n, 11, &[]);
    let before = src_mem.image().to_vec();
    let dst_mem = MemDestination::new(n);
    let (mut s, d) = unix_pair().unwrap();
    // BEGIN 40 + PFNS (one run) 32 + VCPU_STATE (8-byte header, REGS
    // padded to 8).
    let keep = 40 + 32 + 8 + REGS.len().next_multiple_of(8);
    s.bulk = Box::new(Blackhole {
        inner: s.bulk,
        keep,
        closer: s.closer.clone(),
    });
    let (sm, dm) = (Metrics::new(), Metrics::new());
    let mut guest = Guest::default();
    let resumed_here = Arc::new(AtomicBool::new(false));
    let (to_dest, from_source) = mpsc::channel::<DestLinks>();
    let resumed_here2 = resumed_here.clone();
    let (dst_mem, dm) = (&dst_mem, &dm);
    let (src, dst) = std::thread::scope(|sc| {
        let dst = sc.spawn(move || {
            let mut hook = |_: Instant| -> std::io::Result<DestLinks> {
                from_source
                    .recv_timeout(Duration::from_millis(200))
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            run_destination_recoverable(
                dst_mem,
                d,
                &DestConfig::default(),
                &mut Resume::new(resumed_here2),
                dm,
                Some(Recovery {
                    timeout: Duration::from_secs(5),
                    reconnect: &mut hook,
                }),
            )
        });
        let mut hook = links_to(&to_dest);
        let src = run_source_recoverable(
            &mut src_mem,
            s,
            &SourceConfig::default(),
            &mut guest,
            &sm,
            Some(Recovery {
                timeout: Duration::from_secs(5),
                reconnect: &mut hook,
            }),
        );
        (src, dst.join().unwrap())
    });
    let src = src.unwrap_err();
    assert!(!src.after_switch, "{}", src.error);
    assert!(matches!(src.error, Error::PeerAborted(_)), "{}", src.error);
    assert!(
        guest.resumed_on_source,
        "the source must take its guest back"
    );
    let dst = dst.unwrap_err();
    assert!(!dst.after_switch, "{}", dst.error);
    assert!(!resumed_here.load(Ordering::SeqCst));
    assert_eq!(src_mem.image(), &before[..]);
}

/// The destination dies after the switch (its links cut, its session
/// gone; only the guest's memory stays): a replacement made from the owed
/// set the first one kept ([`postcopy::takeover`]) holds nothing, the
/// source in its recovery window resends what it sent and pushes the
/// rest, the pages the first destination had installed are refused by the
/// memory (the guest's writes since stay), and both sides complete with
/// the image equal.
#[test]
fn a_destination_that_dies_after_the_switch_is_replaced() {
    use postcopy::destination::{DestSession, ResumedAt};
    use postcopy::takeover::{owed_path, OwedSet};
    let _limit = Limit::secs(60, "a_destination_that_dies_after_the_switch_is_replaced");
    let n = 512u64;
    let dir = std::env::temp_dir().join(format!("pc-takeover-{}", std::process::id()));
    let owed_file = owed_path(&dir, 9);
    let mut src_mem = source_image(n, 11, &[]);
    let mut expected = src_mem.image().to_vec();
    let dst_mem = Arc::new(MemDestination::new(n));
    let (sm, dm_first, dm) = (Metrics::new(), Metrics::new(), Metrics::new());
    let (s, d) = unix_pair().unwrap();
    // Well after the switch, well before the end.
    let (s, cut) = tripwire(s, 1024 + n * 4200 / 3);
    let (to_dest, from_source) = mpsc::channel::<DestLinks>();
    let go = Arc::new(AtomicBool::new(false));
    let mut guest = Guest::default();
    let cfg = DestConfig {
        owed_file: Some(owed_file.clone()),
        ..DestConfig::default()
    };
    let (first, second, written) = std::thread::scope(|sc| {
        let (dst_mem, cfg, go, owed_file) = (&dst_mem, &cfg, &go, &owed_file);
        let (dm_first, dm) = (&dm_first, &dm);
        let dst = sc.spawn(move || {
            let first = run_destination_recoverable(
                &**dst_mem,
                d,
                cfg,
                &mut Resume::new(go.clone()),
                dm_first,
                None,
            );
            assert!(cut(), "the first destination must die by the cut");
            // The guest writes a page it got before the death: the
            // replacement must not overwrite it with the source's copy.
            let written = (0..n)
                .find(|&p| dst_mem.write_if_present(p, 0x5a))
                .expect("some page arrived before the cut");
            let owed = OwedSet::read(owed_file).unwrap();
            let mut replacement = DestSession::take_over(&**dst_mem, &owed, cfg.clone()).unwrap();
            let mut hook = |deadline: Instant| -> std::io::Result<DestLinks> {
                let wait = deadline.saturating_duration_since(Instant::now());
                from_source
                    .recv_timeout(wait.min(Duration::from_millis(200)))
                    .map_err(|e| std::io::Error::other(e.to_string()))
            };
            let second = replacement.serve_taken_over(
                &ResumedAt(Instant::now()),
                dm,
                Recovery {
                    timeout: Duration::from_secs(10),
                    reconnect: &mut hook,
                },
                false,
            );
            (first, second, written)
        });
        let mut hook = links_to(&to_dest);
        let out = run_source_recoverable(
            &mut src_mem,
            s,
            &SourceConfig {
                batch_pages: 8,
                ..SourceConfig::default()
            },
            &mut guest,
            &sm,
            Some(Recovery {
                timeout: Duration::from_secs(10),
                reconnect: &mut hook,
            }),
        );
        out.unwrap_or_else(|e| panic!("source failed: {e}"));
        dst.join().unwrap()
    });
    let first = first.unwrap_err();
    assert!(first.after_switch, "{}", first.error);
    second.unwrap_or_else(|e| panic!("replacement failed: {e}"));
    assert!(!guest.resumed_on_source);
    assert_eq!(dst_mem.absent(), 0);
    let w = usize::try_from(written).unwrap() * postcopy::PAGE_SIZE;
    expected[w..w + postcopy::PAGE_SIZE].fill(0x5a);
    assert!(dst_mem.image() == expected, "image differs");
    let (src, dst) = (sm.snapshot(), dm.snapshot());
    assert!(src.pages_resent > 0, "nothing resent");
    assert_eq!(dst.pages_duplicate, 0);
    assert_eq!(src.outages, 1);
    // Completed: nothing left for another replacement.
    assert!(!owed_file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
