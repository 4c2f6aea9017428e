//! The push's hold until RESUMED ([`PushPolicy::hold_until_resumed`], the
//! Xen path's default): while the destination's toolstack still attaches
//! the guest's devices, the guest is paused and nothing can fault, and a
//! push would only compete with the attach for dom0's CPUs. Over real Unix
//! sockets, a destination that resumes its guest late must see no pushed
//! page before it did (and, without the hold, does); one that never
//! resumes still gets every page once the hold's bound has passed.

mod common;

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{source_image, Limit};
use postcopy::destination::{DestConfig, DestSession, ServeHooks, ServeLinks, Step};
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

/// A destination that notes when the first page after the switch came.
struct FirstInstall<'a> {
    inner: &'a MemDestination,
    first: Mutex<Option<Instant>>,
}

impl FirstInstall<'_> {
    fn note(&self) {
        let mut f = self.first.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(Instant::now);
    }
}

impl DestinationMemory for FirstInstall<'_> {
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
        self.note();
        self.inner.install(first, pages)
    }
    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        self.note();
        self.inner.install_zero(pfn)
    }
    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        self.note();
        self.inner.install_batch(batch)
    }
    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        self.inner.wait_fault(timeout)
    }
}

/// A guest the destination's toolstack unpauses `after` serving began
/// (`None`: never).
struct PausedFor {
    start: Instant,
    after: Option<Duration>,
}

impl ServeHooks for PausedFor {
    fn resumed_at(&self) -> Option<Instant> {
        let at = self.start + self.after?;
        (Instant::now() >= at).then_some(at)
    }
}

struct Run {
    /// From serving's start to the first page installed.
    first_page: Duration,
    image_ok: bool,
}

fn migrate(n: u64, hold: Option<Duration>, resume_after: Option<Duration>) -> Run {
    let src = source_image(n, 5, &[]);
    let expected = src.image().to_vec();
    let dst = MemDestination::new(n);
    let mem = FirstInstall {
        inner: &dst,
        first: Mutex::new(None),
    };
    let (s_links, d_links) = unix_pair().expect("socket pairs");
    let policy = PushPolicy {
        hold_until_resumed: hold,
        ..PushPolicy::LOCAL
    };
    let (src_m, dst_m) = (Metrics::new(), Metrics::new());
    let start = Mutex::new(None);
    let (s, d) = std::thread::scope(|sc| {
        let dest = sc.spawn(|| -> Result<(), postcopy::Error> {
            let mut bulk: RecordReader<Box<dyn Read + Send>> =
                RecordReader::new(d_links.bulk, None);
            let mut back: RecordWriter<Box<dyn Write + Send>> = RecordWriter::new(d_links.fault_tx);
            let Record::Begin(b) = bulk.next_record()? else {
                panic!("BEGIN first");
            };
            let mut session = DestSession::begin(&mem, &b, DestConfig::default())?;
            while session.record(bulk.next_record()?, &dst_m)? == Step::More {}
            session.ready(&mut back)?;
            assert!(matches!(bulk.next_record()?, Record::Transition));
            session.transitioned();
            let t0 = Instant::now();
            *start.lock().unwrap_or_else(|p| p.into_inner()) = Some(t0);
            session.serve(
                ServeLinks {
                    bulk,
                    replies: Replies::Channel(d_links.fault_rx),
                    back,
                    closer: d_links.closer,
                },
                &PausedFor {
                    start: t0,
                    after: resume_after,
                },
                &dst_m,
                None,
            )
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
                    replies: SrcReplies::Channel(s_links.fault_tx),
                    closer: s_links.closer,
                },
                Vec::new(),
                &src_m,
                None,
            )
        })();
        (source, dest.join().expect("destination thread panicked"))
    });
    s.expect("source");
    d.expect("destination");
    let t0 = start
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .expect("serving began");
    let first = mem
        .first
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .expect("a page was installed");
    Run {
        first_page: first.saturating_duration_since(t0),
        image_ok: dst.image() == expected && src.pfn_count() == n,
    }
}

#[test]
fn with_the_hold_no_page_is_pushed_before_the_guest_resumes() {
    let _limit = Limit::secs(60, "with_the_hold_no_page_is_pushed");
    let late = Duration::from_millis(600);
    let held = migrate(512, Some(Duration::from_secs(20)), Some(late));
    let open = migrate(512, None, Some(late));
    eprintln!(
        "first page after {:?} with the hold, {:?} without; the guest resumed after {late:?}",
        held.first_page, open.first_page
    );
    assert!(held.image_ok && open.image_ok, "destination image differs");
    // RESUMED is polled every fault_poll on the destination: the first
    // page comes at or after the resumption, never before.
    assert!(
        held.first_page >= late,
        "a page came {:?} into serving, before the guest resumed at {late:?}",
        held.first_page
    );
    assert!(
        open.first_page < late,
        "without the hold the push did not start before the resumption ({:?})",
        open.first_page
    );
}

#[test]
fn a_guest_that_never_resumes_gets_its_pages_once_the_hold_is_over() {
    let _limit = Limit::secs(60, "a_guest_that_never_resumes");
    let hold = Duration::from_millis(400);
    let r = migrate(256, Some(hold), None);
    eprintln!("first page after {:?} (hold {hold:?})", r.first_page);
    assert!(r.image_ok, "destination image differs");
    // The source's hold starts as its push would, a little before the
    // destination's serving does (it waits for TRANSITION).
    assert!(
        r.first_page + Duration::from_millis(100) >= hold,
        "a page came {:?} into serving, well before the hold's end",
        r.first_page
    );
}
