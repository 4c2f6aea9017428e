//! The engine's phase API driven directly, as an adapter (the Xen glue)
//! drives it: the destination's serve hooks (the guest watch, the instant
//! RESUMED goes out) and the phase order.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{source_image, Guest, Limit};
use postcopy::destination::{DestConfig, DestSession, Replies, ServeHooks, ServeLinks, Step};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{Record, RecordReader, RecordWriter};
use postcopy::source::{run_source, SourceConfig, SourceFailure};
use postcopy::testmem::MemDestination;
use postcopy::transport::{unix_pair, DestLinks};
use postcopy::Error;

/// Hooks with a scripted guest: paused until `resume_after`, and dead
/// after `die_after` if set.
struct Scripted {
    start: Instant,
    resume_after: Duration,
    die_after: Option<Duration>,
    go: Arc<AtomicBool>,
}

impl ServeHooks for Scripted {
    fn resumed_at(&self) -> Option<Instant> {
        if self.start.elapsed() < self.resume_after {
            return None;
        }
        self.go.store(true, Ordering::SeqCst);
        Some(self.start + self.resume_after)
    }

    fn watch(&self) -> Result<(), Error> {
        match self.die_after {
            Some(d) if self.start.elapsed() >= d => {
                Err(Error::GuestDied("the domain crashed (watch)".into()))
            }
            _ => Ok(()),
        }
    }
}

/// The destination as an adapter drives it: records until the marker,
/// READY, TRANSITION, then serve with `hooks`.
fn destination(
    mem: &MemDestination,
    links: DestLinks,
    hooks: &dyn ServeHooks,
    metrics: &Metrics,
) -> Result<(), Error> {
    let mut bulk: RecordReader<Box<dyn Read + Send>> = RecordReader::new(links.bulk, None);
    let mut back: RecordWriter<Box<dyn Write + Send>> = RecordWriter::new(links.fault_tx);
    let Record::Begin(b) = bulk.next_record()? else {
        panic!("BEGIN first");
    };
    let mut session = DestSession::begin(mem, &b, DestConfig::default())?;
    while session.record(bulk.next_record()?, metrics)? == Step::More {}
    session.ready(&mut back)?;
    assert!(matches!(bulk.next_record()?, Record::Transition));
    session.transitioned();
    session.serve(
        ServeLinks {
            bulk,
            replies: Replies::Channel(links.fault_rx),
            back,
            closer: links.closer,
        },
        hooks,
        metrics,
        None,
    )
}

/// What one migration with scripted destination hooks gave.
struct Outcome {
    source: Result<postcopy::source::SourceOutcome, SourceFailure>,
    dest: Result<(), Error>,
    guest: Guest,
    image_ok: bool,
    src_metrics: Metrics,
}

/// Migrates a guest of `n` pages by demand paging (`--prepage=none`,
/// residue flushed after `idle_flush`), the destination serving with
/// `hooks`.
fn migrate(n: u64, idle_flush: Duration, hooks: &Scripted) -> Outcome {
    let mut src = source_image(n, 7, &[5, 6]);
    let expected = src.image().to_vec();
    let dst = MemDestination::new(n);
    let (s_links, d_links) = unix_pair().expect("socket pairs");
    let cfg = SourceConfig {
        strategy: StrategySpec::None,
        idle_flush,
        ..SourceConfig::default()
    };
    let (src_metrics, dst_m) = (Metrics::new(), Metrics::new());
    let mut guest = Guest::default();
    let (source, dest) = std::thread::scope(|sc| {
        let d = sc.spawn(|| destination(&dst, d_links, hooks, &dst_m));
        let s = run_source(&mut src, s_links, &cfg, &mut guest, &src_metrics);
        (s, d.join().expect("the destination thread panicked"))
    });
    Outcome {
        source,
        dest,
        guest,
        image_ok: dst.image() == expected,
        src_metrics,
    }
}

#[test]
fn a_guest_that_dies_after_the_switch_is_reported_to_the_source() {
    let _limit = Limit::secs(60, "a_guest_that_dies_after_the_switch");
    // A long idle flush: the migration is still going when the guest dies.
    let hooks = Scripted {
        start: Instant::now(),
        resume_after: Duration::ZERO,
        die_after: Some(Duration::from_millis(200)),
        go: Arc::new(AtomicBool::new(false)),
    };
    let out = migrate(256, Duration::from_secs(60), &hooks);
    assert!(
        matches!(out.dest, Err(Error::GuestDied(_))),
        "{:?}",
        out.dest
    );
    match out.source {
        Err(SourceFailure {
            error: Error::DestinationFailed { reason: why, cause },
            after_switch: true,
            ..
        }) => {
            assert!(why.contains("the domain crashed"), "{why}");
            // The source tells a guest death from other failures.
            assert_eq!(cause, postcopy::DestinationCause::GuestDied);
        }
        other => panic!("source: {other:?}"),
    }
    // The guest belongs to the destination: never resumed here.
    assert!(out.guest.stopped && !out.guest.resumed_on_source);
}

#[test]
fn resumed_goes_out_when_the_adapter_says_the_guest_runs() {
    let _limit = Limit::secs(60, "resumed_goes_out_when_the_adapter_says");
    // A 1 s idle flush: still migrating when the adapter lets the guest
    // run, 300 ms after the switch.
    let hooks = Scripted {
        start: Instant::now(),
        resume_after: Duration::from_millis(300),
        die_after: None,
        go: Arc::new(AtomicBool::new(false)),
    };
    let out = migrate(128, Duration::from_secs(1), &hooks);
    out.source.unwrap();
    out.dest.unwrap();
    assert!(hooks.go.load(Ordering::SeqCst));
    assert!(out.image_ok, "destination image differs");
    // The source's downtime includes the time the adapter kept the guest
    // paused after the switch.
    let down = out.src_metrics.snapshot().downtime_ms;
    assert!(down >= 250.0, "downtime {down} ms");
}

#[test]
fn phases_out_of_order_are_local_errors() {
    let n = 16;
    let dst = MemDestination::new(n);
    let begin = postcopy::records::BeginBody::new(postcopy::prepage::StrategySpec::None, n, n);
    let mut session = DestSession::begin(&dst, &begin, DestConfig::default()).unwrap();
    let mut sink = RecordWriter::new(Vec::new());
    // READY before the marker.
    let e = session.ready(&mut sink).unwrap_err();
    assert!(matches!(e, Error::WrongPhase { call: "ready", .. }), "{e}");
    assert!(!e.is_recoverable() && e.is_local());
    let mut sess = postcopy::source::SourceSession::begin(
        Box::new(Vec::new()),
        n,
        n,
        StrategySpec::Linear,
        postcopy::scheduler::PushPolicy::LOCAL,
    )
    .unwrap();
    let (links, _peer) = unix_pair().unwrap();
    let e = sess
        .serve(
            &source_image(n, 1, &[]),
            postcopy::source::ServeLinks {
                fault_rx: RecordReader::new(links.fault_rx, Some(n)),
                replies: postcopy::transport::Replies::InBand,
                closer: links.closer,
            },
            Vec::new(),
            &Metrics::new(),
            None,
        )
        .unwrap_err();
    assert!(matches!(e, Error::WrongPhase { call: "serve", .. }), "{e}");
}
