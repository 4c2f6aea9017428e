//! The push window (issue #15): with fault replies in-band on the one
//! stream, as on the Xen path, a reply queues behind every pushed byte the
//! link's buffers hold, installed at the destination's pace. The window
//! bounds that queue by the destination's ACKs. Both runs here go over
//! real Unix sockets (buffers of a few hundred KiB, like a pipe chain or
//! an ssh window) to a destination that installs slowly; the windowed
//! run's fault latency must be a fraction of the unbounded run's, and both
//! must deliver every page intact.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{source_image, Limit};
use postcopy::destination::{DestConfig, DestSession, ResumedAt, ServeLinks, Step};
use postcopy::memory::{
    DestinationMemory, Fault, Installed, MemResult, PageIn, PfnRun, SourceMemory,
};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{Record, RecordReader, RecordWriter};
use postcopy::scheduler::PushPolicy;
use postcopy::source::{Replies as SrcReplies, SourceSession};
use postcopy::testmem::MemDestination;
use postcopy::transport::{unix_pair, Replies};
use postcopy::Pfn;

/// A destination that takes `per_call` for every install (a slow
/// hypervisor's page-in).
struct Slow<'a> {
    inner: &'a MemDestination,
    per_call: Duration,
}

impl DestinationMemory for Slow<'_> {
    fn pfn_count(&self) -> u64 {
        self.inner.pfn_count()
    }
    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        self.inner.write_page(pfn, data)
    }
    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        self.inner.mark_absent(runs)
    }
    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        std::thread::sleep(self.per_call);
        self.inner.install(first, pages)
    }
    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        self.inner.install_zero(pfn)
    }
    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        std::thread::sleep(self.per_call);
        self.inner.install_batch(batch)
    }
    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        self.inner.wait_fault(timeout)
    }
}

struct Run {
    p50_us: u64,
    faults: u64,
    image_ok: bool,
    window_ms: f64,
    /// Seen while pages were still owed: the source's bytes sent and the
    /// destination's bytes received above zero (the admin's status reads
    /// these counters live).
    live_bytes: (bool, bool),
}

/// One migration of `n` pages pushed one page per record in pfn order,
/// with a vCPU touching pages far ahead of the push; replies in-band, or
/// on their own socket (`lane`: the fault lane).
fn migrate(n: u64, window: Option<u64>, lane: bool) -> Run {
    let src = source_image(n, 11, &[]);
    let expected = src.image().to_vec();
    let dst = MemDestination::new(n);
    let slow = Slow {
        inner: &dst,
        per_call: Duration::from_millis(2),
    };
    let (s_links, d_links) = unix_pair().expect("socket pairs");
    let policy = PushPolicy {
        batch_pages: 1,
        window,
        ..PushPolicy::LOCAL
    };
    let (src_m, dst_m) = (Metrics::new(), Metrics::new());
    let done = AtomicBool::new(false);
    let (s, d, live_bytes) = std::thread::scope(|sc| {
        let dest = sc.spawn(|| -> Result<(), postcopy::Error> {
            let mut bulk: RecordReader<Box<dyn Read + Send>> =
                RecordReader::new(d_links.bulk, None);
            let mut back: RecordWriter<Box<dyn Write + Send>> = RecordWriter::new(d_links.fault_tx);
            let Record::Begin(b) = bulk.next_record()? else {
                panic!("BEGIN first");
            };
            assert_eq!(
                b.acks(),
                window.is_some(),
                "BEGIN asks for ACKs with a window"
            );
            let mut session = DestSession::begin(&slow, &b, DestConfig::default())?;
            while session.record(bulk.next_record()?, &dst_m)? == Step::More {}
            session.ready(&mut back)?;
            assert!(matches!(bulk.next_record()?, Record::Transition));
            session.transitioned();
            let r = session.serve(
                ServeLinks {
                    bulk,
                    replies: if lane {
                        Replies::Channel(d_links.fault_rx)
                    } else {
                        Replies::InBand
                    },
                    back,
                    closer: d_links.closer,
                },
                &ResumedAt(Instant::now()),
                &dst_m,
                None,
            );
            done.store(true, Ordering::SeqCst);
            r
        });
        // The admin's status: the byte counters while pages are owed.
        let sampler = sc.spawn(|| {
            let (mut src_live, mut dst_live) = (false, false);
            while !done.load(Ordering::SeqCst) {
                let (s, d) = (src_m.snapshot(), dst_m.snapshot());
                src_live |= s.bytes_sent > 0 && s.pages_pushed + s.pages_faulted + s.pages_zero < n;
                dst_live |=
                    d.bytes_received > 0 && d.pages_pushed + d.pages_faulted + d.pages_zero < n;
                std::thread::sleep(Duration::from_millis(1));
            }
            (src_live, dst_live)
        });
        // The vCPU: a page far ahead of the push every 15 ms.
        sc.spawn(|| {
            let mut p = n - 1;
            while !done.load(Ordering::SeqCst) && p > n / 2 {
                std::thread::sleep(Duration::from_millis(15));
                dst.touch(p);
                p -= 7;
            }
        });
        let source = (|| -> Result<(), postcopy::Error> {
            let mut session =
                SourceSession::begin(s_links.bulk, n, n, StrategySpec::Linear, policy)?;
            let mut back: RecordReader<Box<dyn Read + Send>> =
                RecordReader::new(s_links.fault_rx, Some(n));
            session.switch(vec![PfnRun { start: 0, count: n }], b"", &mut back, &src_m)?;
            session.serve(
                &src,
                postcopy::source::ServeLinks {
                    fault_rx: back,
                    replies: if lane {
                        SrcReplies::Channel(s_links.fault_tx)
                    } else {
                        SrcReplies::InBand
                    },
                    closer: s_links.closer,
                },
                Vec::new(),
                &src_m,
                None,
            )
        })();
        let d = dest.join().expect("destination thread panicked");
        (source, d, sampler.join().expect("sampler thread panicked"))
    });
    s.expect("source");
    d.expect("destination");
    let snap = dst_m.snapshot();
    let window_ms = src_m
        .snapshot()
        .breakdown_ms
        .get("window")
        .copied()
        .unwrap_or(0.0);
    Run {
        p50_us: snap.fault_latency_us.p50,
        faults: snap.fault_latency_us.count,
        image_ok: dst.image() == expected && src.pfn_count() == n,
        window_ms,
        live_bytes,
    }
}

/// Both runs delivered every page, with enough faults to compare, and
/// `better`'s fault latency p50 is under a third of `worse`'s.
fn assert_a_third((name, better): (&str, &Run), (other, worse): (&str, &Run)) {
    eprintln!(
        "fault latency p50: {name} {} us ({} faults), {other} {} us ({} faults)",
        better.p50_us, better.faults, worse.p50_us, worse.faults
    );
    assert!(
        better.image_ok && worse.image_ok,
        "destination image differs"
    );
    assert!(
        better.faults >= 5 && worse.faults >= 5,
        "too few faults to compare"
    );
    assert!(
        better.p50_us * 3 < worse.p50_us,
        "fault latency p50: {name} {} us, {other} {} us",
        better.p50_us,
        worse.p50_us
    );
}

#[test]
fn the_window_bounds_how_long_an_in_band_reply_waits_behind_the_push() {
    let _limit = Limit::secs(120, "the_window_bounds_how_long");
    let n = 1200;
    // Two one-page records in flight at most.
    let windowed = migrate(n, Some(2 * (4096 + 8 + 16)), false);
    let open = migrate(n, None, false);
    assert!(windowed.window_ms > 0.0, "the windowed push never waited");
    assert_eq!(open.window_ms, 0.0);
    // Unbounded, a reply waits for the socket buffers' pages (tens of
    // records at 2 ms each); windowed, for about two.
    assert_a_third(("windowed", &windowed), ("unbounded", &open));
}

#[test]
fn on_the_fault_lane_a_reply_never_waits_behind_the_push() {
    let _limit = Limit::secs(120, "on_the_fault_lane_a_reply_never_waits");
    let n = 1200;
    // No window: the push fills the stream's buffers, the replies take
    // their own socket and are installed beside the pushes.
    let lane = migrate(n, None, true);
    let open = migrate(n, None, false);
    assert_a_third(("lane", &lane), ("in-band", &open));
    // The status's byte counters move while the migration runs, on both
    // ends and both ways of sending replies.
    for (name, r) in [("lane", &lane), ("in-band", &open)] {
        assert_eq!(r.live_bytes, (true, true), "{name}: live byte counters");
    }
}

#[test]
fn a_destination_that_stops_consuming_ends_a_windowed_push_in_bounded_time() {
    let _limit = Limit::secs(60, "a_destination_that_stops_consuming");
    let n = 256;
    let src = source_image(n, 3, &[]);
    let (s_links, d_links) = unix_pair().expect("socket pairs");
    let policy = PushPolicy {
        batch_pages: 1,
        window: Some(2 * (4096 + 8 + 16)),
        ..PushPolicy::LOCAL
    };
    let metrics = Metrics::new();
    // The destination: READY after the marker, then silence with its
    // sockets open (no reads, no ACKs).
    let dest = std::thread::spawn(move || {
        let mut bulk: RecordReader<Box<dyn Read + Send>> = RecordReader::new(d_links.bulk, None);
        let mut back: RecordWriter<Box<dyn Write + Send>> = RecordWriter::new(d_links.fault_tx);
        loop {
            match bulk.next_record().expect("record") {
                Record::VcpuState(_) => break,
                _ => continue,
            }
        }
        back.empty(postcopy::records::RecordType::Ready).unwrap();
        back.flush().unwrap();
        // Held open until the source gives up (its closer shuts them).
        let mut sink = [0u8; 1];
        let _ = d_links.fault_rx.take(1).read(&mut sink);
        (bulk, back)
    });
    let t = Instant::now();
    let r = (|| -> Result<(), postcopy::Error> {
        let mut session = SourceSession::begin(s_links.bulk, n, n, StrategySpec::Linear, policy)?;
        session.bound_ready(Duration::from_secs(1), s_links.closer.clone());
        let mut back: RecordReader<Box<dyn Read + Send>> =
            RecordReader::new(s_links.fault_rx, Some(n));
        session.switch(
            vec![PfnRun { start: 0, count: n }],
            b"",
            &mut back,
            &metrics,
        )?;
        session.serve(
            &src,
            postcopy::source::ServeLinks {
                fault_rx: back,
                replies: SrcReplies::InBand,
                closer: s_links.closer,
            },
            Vec::new(),
            &metrics,
            None,
        )
    })();
    let took = t.elapsed();
    assert!(
        matches!(
            r,
            Err(postcopy::Error::Timeout {
                waiting_for: "ACK of the pushed pages",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(20), "gave up after {took:?}");
    drop(dest.join());
}
