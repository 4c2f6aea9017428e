//! End-to-end runs of the engine's source and destination state machines
//! on the in-memory backends, over real Unix sockets, with a simulated vCPU
//! touching pages on the destination while the migration runs. After every
//! run the destination image must equal the source image byte for byte.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use postcopy::destination::{run_destination, DestConfig, DestFailure, GuestResume};
use postcopy::error::HookError;
use postcopy::memory::{PfnRun, SourceMemory};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{RecordError, RecordWriter};
use postcopy::source::{run_source, GuestControl, Mode, SourceConfig, SourceFailure};
use postcopy::testmem::MemDestination;
use postcopy::transport::unix_pair;
use postcopy::{Error, PAGE_SIZE};
use proptest::prelude::*;

mod common;
use common::{source_image, Guest, Resume, REGS};

struct Run {
    src: Metrics,
    dst: Metrics,
    image_ok: bool,
    owed: u64,
    state_ok: bool,
    /// The destination backend's install_batch calls and their pages.
    batches: (u64, u64),
}

fn migrate(
    n: u64,
    seed: u64,
    holes: &[u64],
    spec: StrategySpec,
    mode: Mode,
    touches: Vec<u64>,
) -> Run {
    let mut src_mem = source_image(n, seed, holes);
    let expected = src_mem.image().to_vec();
    let dst_mem = Arc::new(MemDestination::new(n));
    let (src_links, dst_links) = unix_pair().unwrap();
    let src_metrics = Metrics::new();
    let dst_metrics = Metrics::new();
    let go = Arc::new(AtomicBool::new(false));
    let mut guest = Guest::default();
    let cfg = SourceConfig {
        strategy: spec,
        mode,
        batch_pages: 4,
        idle_flush: Duration::from_millis(30),
        ..SourceConfig::default()
    };
    let mut resume = Resume {
        state: None,
        go: go.clone(),
    };
    let owed = std::thread::scope(|s| {
        let vcpu = {
            let dst_mem = dst_mem.clone();
            let go = go.clone();
            s.spawn(move || {
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for p in touches {
                    dst_mem.touch(p % n);
                }
            })
        };
        let dst = s.spawn(|| {
            run_destination(
                &*dst_mem,
                dst_links,
                &DestConfig::default(),
                &mut resume,
                &dst_metrics,
            )
        });
        let out = run_source(&mut src_mem, src_links, &cfg, &mut guest, &src_metrics).unwrap();
        let d = dst.join().unwrap().unwrap();
        vcpu.join().unwrap();
        assert_eq!(d.owed, out.owed);
        out.owed
    });
    let state_ok = resume.state.as_deref() == Some(REGS);
    assert!(!guest.resumed_on_source);
    assert_eq!(dst_mem.absent(), 0, "pages still absent after completion");
    Run {
        image_ok: dst_mem.image() == expected,
        src: src_metrics,
        dst: dst_metrics,
        owed,
        state_ok,
        batches: dst_mem.batches(),
    }
}

fn strategy() -> impl Strategy<Value = StrategySpec> {
    prop_oneof![
        Just(StrategySpec::None),
        Just(StrategySpec::Linear),
        Just(StrategySpec::Bubble),
        Just(StrategySpec::BubbleForward),
        (1u32..=9).prop_map(StrategySpec::MultiPivot),
        Just(StrategySpec::History),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::Postcopy),
        (1u32..3).prop_map(|rounds| Mode::Hybrid { rounds }),
        Just(Mode::HybridAuto(postcopy::switch::SwitchRule::DEFAULT)),
        Just(Mode::XEN_PRECOPY),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Every strategy and mode, random guests with holes, random vCPU
    /// accesses: every populated page arrives exactly once and the images
    /// match byte for byte.
    #[test]
    fn every_page_arrives_exactly_once_and_images_match(
        spec in strategy(),
        mode in mode(),
        n in 1u64..300,
        seed in any::<u64>(),
        holes in proptest::collection::vec(0u64..300, 0..40),
        touches in proptest::collection::vec(0u64..300, 0..80),
    ) {
        let r = migrate(n, seed, &holes, spec, mode, touches);
        prop_assert!(r.image_ok, "destination image differs");
        prop_assert!(r.state_ok, "CPU state did not arrive intact");
        let s = r.src.snapshot();
        let d = r.dst.snapshot();
        prop_assert_eq!(s.pages_duplicate, 0);
        prop_assert_eq!(d.pages_duplicate, 0);
        let populated: u64 = (0..n).filter(|p| !holes.contains(p)).count() as u64;
        if mode == Mode::Postcopy {
            // Pure post-copy: each populated page exactly once.
            prop_assert_eq!(r.owed, populated);
            prop_assert_eq!(s.pages_pushed + s.pages_faulted + s.pages_zero, populated);
            prop_assert_eq!(d.pages_pushed + d.pages_faulted + d.pages_zero, populated);
            prop_assert_eq!(s.pages_skipped, n - populated);
        }
        if matches!(mode, Mode::Precopy { .. }) {
            prop_assert_eq!(r.owed, 0);
            prop_assert_eq!(s.pages_pushed + s.pages_faulted, 0);
        }
    }
}

#[test]
fn faults_are_served_and_counted() {
    // Demand only with a long idle flush: the vCPU's touches are faults.
    let touches: Vec<u64> = (0..64).map(|i| (i * 37) % 512).collect();
    let r = migrate(512, 1, &[], StrategySpec::None, Mode::Postcopy, touches);
    assert!(r.image_ok);
    let d = r.dst.snapshot();
    assert!(d.network_faults > 0, "{d}");
    assert_eq!(d.fault_latency_us.count, d.network_faults);
    assert!(r.src.snapshot().downtime_ms > 0.0);
}

#[test]
fn pages_reach_the_backend_one_batch_per_record() {
    // 4-page pushes in pfn order: each is a PAGE_DATA record and at most
    // one ZERO record, and each record is one install_batch call.
    let r = migrate(
        512,
        3,
        &[],
        StrategySpec::Linear,
        Mode::Postcopy,
        Vec::new(),
    );
    assert!(r.image_ok);
    let (batches, pages) = r.batches;
    assert_eq!(pages, r.owed, "every owed page goes through install_batch");
    assert!(
        batches <= r.owed / 2,
        "{batches} batches for {pages} pages: not batched"
    );
}

/// A corrupted stream before the switch: the destination reports the
/// record error, nothing was resumed, and the source guest resumes intact.
#[test]
fn corrupt_stream_before_switch_aborts_cleanly() {
    let (src_links, dst_links) = unix_pair().unwrap();
    let dst_mem = MemDestination::new(16);
    let metrics = Metrics::new();
    let mut bulk = src_links.bulk;
    // A valid BEGIN, then garbage where PFNS should be.
    let mut w = RecordWriter::new(&mut bulk);
    let mut src = source_image(16, 3, &[]);
    let populated: u64 = src.populated().unwrap().iter().map(|r| r.count).sum();
    w.begin(&postcopy::records::BeginBody {
        version: 1.into(),
        flags: 0.into(),
        strategy: 2.into(),
        strategy_arg: 0.into(),
        guest_pfns: 16.into(),
        populated_pages: populated.into(),
    })
    .unwrap();
    std::io::Write::write_all(
        &mut bulk,
        &[
            0x14, 0, 0, 0, 24, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 1, 0,
            0, 0, 0, 0, 0, 0,
        ],
    )
    .unwrap();
    let mut resume = Resume {
        state: None,
        go: Arc::new(AtomicBool::new(false)),
    };
    let err = run_destination(
        &dst_mem,
        dst_links,
        &DestConfig::default(),
        &mut resume,
        &metrics,
    )
    .unwrap_err();
    let DestFailure {
        error,
        after_switch,
        ..
    } = err;
    assert!(!after_switch);
    assert!(
        matches!(error, Error::Record(RecordError::PfnOutOfRange { .. })),
        "{error}"
    );
    assert!(resume.state.is_none(), "guest must not be resumed");
    // The source guest was never touched.
    let mut buf = vec![0u8; PAGE_SIZE];
    src.read_pages(&[5], &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        &source_image(16, 3, &[]).image()[5 * PAGE_SIZE..6 * PAGE_SIZE]
    );
    let _ = &mut src;
}

/// The destination goes away before the switch: the source fails with a
/// disconnect, resumes its guest, and its memory is unchanged.
#[test]
fn destination_dying_before_switch_resumes_the_source() {
    struct StopWaits(mpsc::Receiver<()>, Guest);
    impl GuestControl for StopWaits {
        fn stop(&mut self) -> Result<Vec<u8>, HookError> {
            let _ = self.0.recv();
            self.1.stop()
        }
        fn resume(&mut self) -> Result<(), HookError> {
            self.1.resume()
        }
    }
    let (src_links, dst_links) = unix_pair().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut src = source_image(64, 9, &[]);
    let before = src.image().to_vec();
    let mut guest = StopWaits(rx, Guest::default());
    let killer = std::thread::spawn(move || {
        // Take BEGIN (8-byte header + 32-byte body), then die.
        let mut begin = [0u8; 40];
        let mut links = dst_links;
        std::io::Read::read_exact(&mut links.bulk, &mut begin).unwrap();
        drop(links);
        tx.send(()).unwrap();
    });
    let metrics = Metrics::new();
    let err = run_source(
        &mut src,
        src_links,
        &SourceConfig::default(),
        &mut guest,
        &metrics,
    )
    .unwrap_err();
    killer.join().unwrap();
    let SourceFailure {
        error,
        after_switch,
        ..
    } = err;
    assert!(!after_switch, "{error}");
    assert!(error.is_disconnect(), "{error}");
    assert!(guest.1.stopped && guest.1.resumed_on_source);
    assert_eq!(src.image(), &before[..]);
}

/// Owed-list runs and holes: unpopulated pages are never sent and read as
/// zero on the destination when touched.
#[test]
fn unpopulated_pages_are_skipped_and_read_zero() {
    let holes: Vec<u64> = (0..128).filter(|p| p % 3 == 0).collect();
    let r = migrate(
        128,
        5,
        &holes,
        StrategySpec::Bubble,
        Mode::Postcopy,
        holes.clone(),
    );
    assert!(r.image_ok);
    let s = r.src.snapshot();
    assert_eq!(s.pages_skipped, holes.len() as u64);
    assert_eq!(r.owed, 128 - holes.len() as u64);
    let _ = PfnRun { start: 0, count: 1 };
}

/// The destination refuses to resume (its guest start fails after
/// TRANSITION): it answers ABORT, and the source takes its guest back.
#[test]
fn destination_refusing_lets_the_source_resume() {
    struct Refuse;
    impl GuestResume for Refuse {
        fn resume(&mut self, _state: &[u8]) -> Result<(), HookError> {
            Err("no memory for the vCPU".into())
        }
    }
    let (src_links, dst_links) = unix_pair().unwrap();
    let mut src = source_image(64, 11, &[]);
    let before = src.image().to_vec();
    let dst_mem = MemDestination::new(64);
    let mut guest = Guest::default();
    let (sm, dm) = (Metrics::new(), Metrics::new());
    let (s, d) = std::thread::scope(|scope| {
        let d = scope.spawn(|| {
            run_destination(
                &dst_mem,
                dst_links,
                &DestConfig::default(),
                &mut Refuse,
                &dm,
            )
        });
        let s = run_source(
            &mut src,
            src_links,
            &SourceConfig::default(),
            &mut guest,
            &sm,
        );
        (s, d.join().unwrap())
    });
    let d = d.unwrap_err();
    assert!(!d.after_switch);
    let s = s.unwrap_err();
    assert!(!s.after_switch, "{}", s.error);
    assert!(
        matches!(&s.error, Error::PeerAborted(m) if m.contains("no memory for the vCPU")),
        "{}",
        s.error
    );
    assert!(guest.stopped && guest.resumed_on_source);
    assert_eq!(src.image(), &before[..]);
}

/// Pre-copy stopping early (fewer dirty pages than its threshold) must
/// still send the pages it read out of the dirty log in the stop-and-copy.
#[test]
fn precopy_early_stop_keeps_the_last_dirty_set() {
    let mut src = source_image(128, 21, &[]);
    // Round 1 sees 10 dirty pages (< 50): pre-copy stops iterating there.
    src.script_writes(vec![(0..10).map(|p| (p * 11, 0xab)).collect(), vec![]]);
    let dst_mem = MemDestination::new(128);
    let (src_links, dst_links) = unix_pair().unwrap();
    let (sm, dm) = (Metrics::new(), Metrics::new());
    let mut guest = Guest::default();
    let mut resume = Resume {
        state: None,
        go: Arc::new(AtomicBool::new(false)),
    };
    let cfg = SourceConfig {
        mode: Mode::XEN_PRECOPY,
        ..SourceConfig::default()
    };
    std::thread::scope(|s| {
        let d = s.spawn(|| {
            run_destination(
                &dst_mem,
                dst_links,
                &DestConfig::default(),
                &mut resume,
                &dm,
            )
        });
        run_source(&mut src, src_links, &cfg, &mut guest, &sm).unwrap();
        d.join().unwrap().unwrap();
    });
    assert_eq!(
        dst_mem.image(),
        src.image(),
        "dirty pages of the last round were lost"
    );
    let r = sm.snapshot();
    assert_eq!(r.pages_precopy + r.pages_zero, 128 + 10);
}
