//! End-to-end migrations of real memory: the engine's source and
//! destination state machines over Unix sockets, with [`RegionSource`] on
//! a live source region and [`UffdDestination`] serving real userfaultfd
//! faults, while a destination thread touches pages during the post-copy
//! phase. After every run the destination's memory hash must equal the
//! source's hash at the stop.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use postcopy::destination::{run_destination, DestConfig, GuestResume};
use postcopy::error::HookError;
use postcopy::memory::PfnRun;
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::source::{run_source, GuestControl, Mode, SourceConfig};
use postcopy::transport::unix_pair;
use postcopy::PAGE_SIZE;
use postcopy_uffd::{probe, GuestRegion, RegionSource, UffdDestination};

/// 32 MiB guests.
const PAGES: u64 = 8192;
const WORDS: usize = PAGE_SIZE / 8;

fn word(r: &GuestRegion, pfn: u64, w: usize) -> &AtomicU64 {
    &r.words()[pfn as usize * WORDS + w]
}

/// Fills the source like a guest that ran for a while: most pages
/// written, every 13th never touched, some all-zero (but populated), one
/// run released by the balloon.
fn fill_source(r: &GuestRegion) {
    for p in 0..PAGES {
        if p % 13 == 5 {
            continue;
        }
        let zero = p % 11 == 2;
        for w in (0..WORDS).step_by(61) {
            let v = if zero { 0 } else { p * 0x1_0001 + w as u64 + 1 };
            word(r, p, w).store(v, Ordering::Relaxed);
        }
    }
    r.release(&[PfnRun {
        start: 1000,
        count: 200,
    }])
    .unwrap();
}

/// The source guest: a writer thread that dirties pages (and balloons a
/// few out) until the engine stops it.
struct SourceGuest {
    region: Arc<GuestRegion>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<u64>>,
    rounds_written: u64,
}

impl SourceGuest {
    fn start(region: Arc<GuestRegion>, live: bool) -> SourceGuest {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = live.then(|| {
            let (region, stop) = (region.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut gen = 0u64;
                let mut x = 0x2545_F491_4F6C_DD1Du64;
                while !stop.load(Ordering::Relaxed) {
                    gen += 1;
                    for _ in 0..64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let p = x % 2048; // a 8 MiB working set
                        word(&region, p, (x >> 20) as usize % WORDS).store(gen, Ordering::Relaxed);
                    }
                    if gen.is_multiple_of(50) {
                        // Balloon: release a page, later touched again.
                        let p = 4000 + gen % 300;
                        region.release(&[PfnRun { start: p, count: 1 }]).unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                gen
            })
        });
        SourceGuest {
            region,
            stop,
            writer,
            rounds_written: 0,
        }
    }
}

impl GuestControl for SourceGuest {
    fn stop(&mut self) -> Result<Vec<u8>, HookError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            self.rounds_written = w.join().map_err(|_| "source writer panicked")?;
        }
        Ok(format!("pages={}", self.region.pages()).into_bytes())
    }
    fn resume(&mut self) -> Result<(), HookError> {
        Err("unexpected resume on the source".into())
    }
}

struct DestGuest {
    go: Arc<AtomicBool>,
}

impl GuestResume for DestGuest {
    fn resume(&mut self, state: &[u8]) -> Result<(), HookError> {
        assert_eq!(state, format!("pages={PAGES}").as_bytes());
        self.go.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn uffd_usable(test: &str, mode: Mode) -> bool {
    match probe() {
        Err(e) => {
            println!("SKIP {test}: {e}");
            false
        }
        Ok(c) => match (c.require_postcopy(), mode) {
            (Err(e), _) => {
                println!("SKIP {test}: {e}");
                false
            }
            (Ok(()), Mode::Postcopy) => true,
            (Ok(()), _) => match c.require_dirty_log() {
                Ok(()) => true,
                Err(e) => {
                    println!("SKIP {test}: {e}");
                    false
                }
            },
        },
    }
}

fn migrate(mode: Mode, strategy: StrategySpec) {
    let src_region = Arc::new(GuestRegion::new(PAGES).unwrap());
    fill_source(&src_region);
    let mut src = RegionSource::new(src_region.clone()).unwrap();
    let dst_region = Arc::new(GuestRegion::new(PAGES).unwrap());
    let dst = UffdDestination::new(dst_region.clone()).unwrap();

    let (src_links, dst_links) = unix_pair().unwrap();
    let (src_metrics, dst_metrics) = (Metrics::new(), Metrics::new());
    let go = Arc::new(AtomicBool::new(false));
    let done = AtomicBool::new(false);
    let mut src_guest = SourceGuest::start(src_region.clone(), mode != Mode::Postcopy);
    let mut dst_guest = DestGuest { go: go.clone() };
    let cfg = SourceConfig {
        strategy,
        mode,
        batch_pages: 64,
        idle_flush: Duration::from_millis(50),
        ..SourceConfig::default()
    };

    let seen = std::thread::scope(|s| {
        // The destination vCPU: touches pages (blocking on absent ones)
        // while the migration runs, and remembers what it read.
        let vcpu = s.spawn(|| {
            while !go.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let mut seen = Vec::new();
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            while !done.load(Ordering::Relaxed) && seen.len() < 3000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = x % PAGES;
                seen.push((p, word(&dst_region, p, 0).load(Ordering::Relaxed)));
            }
            seen
        });
        let d = s.spawn(|| {
            let r = run_destination(
                &dst,
                dst_links,
                &DestConfig::default(),
                &mut dst_guest,
                &dst_metrics,
            );
            done.store(true, Ordering::SeqCst);
            r
        });
        let out = run_source(&mut src, src_links, &cfg, &mut src_guest, &src_metrics);
        let dout = d.join().unwrap();
        // Detach before anything else touches the destination: nobody
        // serves faults any more.
        dst.detach().unwrap();
        let seen = vcpu.join().unwrap();
        let out = out.unwrap();
        let dout = dout.unwrap();
        assert!(out.switched);
        assert_eq!(out.owed, dout.owed);
        seen
    });

    // The source was stopped and is untouched since: its hash is the hash
    // at the stop.
    assert_eq!(
        dst_region.hash(),
        src_region.hash(),
        "destination memory differs from the source at the stop"
    );
    for (p, v) in seen.iter().copied() {
        assert_eq!(
            v,
            word(&src_region, p, 0).load(Ordering::Relaxed),
            "pfn {p}"
        );
    }
    let (s, d) = (src_metrics.snapshot(), dst_metrics.snapshot());
    assert_eq!(s.pages_duplicate, 0);
    assert_eq!(d.pages_duplicate, 0);
    assert!(
        s.pages_skipped >= 200,
        "released/never-touched pages skipped"
    );
    println!(
        "{mode:?}/{strategy:?}: owed-phase pushed {} faulted {} zero {} precopy {}; \
         network faults {}, local zero faults {}, vCPU reads {}, source writer rounds {}; {:?}",
        s.pages_pushed,
        s.pages_faulted,
        s.pages_zero,
        s.pages_precopy,
        d.network_faults,
        d.faults_local_zero,
        seen.len(),
        src_guest.rounds_written,
        dst.stats(),
    );
}

#[test]
fn postcopy_over_uffd_matches_the_source() {
    if !uffd_usable("postcopy_over_uffd_matches_the_source", Mode::Postcopy) {
        return;
    }
    migrate(Mode::Postcopy, StrategySpec::Bubble);
}

#[test]
fn demand_paging_only_over_uffd_matches_the_source() {
    if !uffd_usable(
        "demand_paging_only_over_uffd_matches_the_source",
        Mode::Postcopy,
    ) {
        return;
    }
    migrate(Mode::Postcopy, StrategySpec::None);
}

#[test]
fn hybrid_over_uffd_matches_the_source() {
    let mode = Mode::Hybrid { rounds: 2 };
    if !uffd_usable("hybrid_over_uffd_matches_the_source", mode) {
        return;
    }
    migrate(mode, StrategySpec::Bubble);
}

#[test]
fn hybrid_auto_over_uffd_matches_the_source() {
    let mode = Mode::HybridAuto(postcopy::switch::SwitchRule::DEFAULT);
    if !uffd_usable("hybrid_auto_over_uffd_matches_the_source", mode) {
        return;
    }
    migrate(mode, StrategySpec::Bubble);
}

#[test]
fn precopy_with_uffd_dirty_log_matches_the_source() {
    if !uffd_usable(
        "precopy_with_uffd_dirty_log_matches_the_source",
        Mode::XEN_PRECOPY,
    ) {
        return;
    }
    migrate(Mode::XEN_PRECOPY, StrategySpec::Bubble);
}

#[test]
fn hybrid_with_history_prepaging_over_uffd_matches_the_source() {
    let mode = Mode::Hybrid { rounds: 1 };
    if !uffd_usable(
        "hybrid_with_history_prepaging_over_uffd_matches_the_source",
        mode,
    ) {
        return;
    }
    migrate(mode, StrategySpec::History);
}
