//! The source side of a Xen post-copy migration, in the three phases
//! libxenguest calls (`include/libxl_postcopy.h`):
//!
//! 1. [`SaveSession::begin`] — the domain is suspended: work out the owed
//!    pfns (populated, and with pre-copy rounds: dirtied since last sent),
//!    write POSTCOPY_BEGIN and the pages that must be present before the
//!    guest runs ([`crate::present`]);
//! 2. [`SaveSession::transition`] — after libxenguest's CPU records: write
//!    POSTCOPY_PFNS (the owed runs) and POSTCOPY_TRANSITION;
//! 3. [`SaveSession::serve`] — after libxl's records: answer fault requests
//!    from the back channel first, push the pre-pager's choice between
//!    them, all on the one stream; then POSTCOPY_COMPLETE, and return once
//!    the destination confirms with its own COMPLETE.
//!
//! The engine's `run_source` is one-shot (it stops the guest itself and
//! replies to faults on a separate channel), so the phases are built from
//! its public pieces: [`RecordWriter`]/[`RecordReader`], [`Scheduler`] and
//! the pre-pagers. Each owed pfn is claimed through one scheduler, so it is
//! sent exactly once whichever path gets there first.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use libxl_sys as sys;
use log::{debug, info, warn};
use postcopy::memory::{runs_from_sorted, PfnRun, SourceMemory};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{
    BeginBody, Cause, Record, RecordError, RecordReader, RecordType, RecordWriter, MAX_BATCH_PAGES,
    MAX_RUNS, STREAM_VERSION,
};
use postcopy::scheduler::{Request, Scheduler};
use postcopy::source::send_pages;
use postcopy::{Error, Pfn, PAGE_SIZE};

use crate::fdio::FdIo;
use crate::present::{delivery_pages, parse_hvm_context, special_pfns, vcpu_pages, PageReader};
use crate::source::{mem_err, XenSource};
use crate::xc::XenOps;
use crate::xtl::Progress;

/// Pages per pushed PAGE_DATA record: a faulted page waits behind at
/// most one batch (plus what the pipe holds). On the emulated Xen host the
/// destination installs ~700 pages/s, and 64-page batches gave a median
/// fault latency of 44-91 ms; 16 cuts the wait by four.
pub const PUSH_BATCH: usize = 16;
/// With `--prepage=none`: push the rest once no fault came for this long.
pub const IDLE_FLUSH: Duration = Duration::from_millis(500);

/// Environment switch: `legacy` leaves the event-delivery pages
/// ([`delivery_pages`]) out of the must-present set, as before issue #21
/// (to compare the two in one soak).
pub const PRESENT_ENV: &str = "LIBXL_POSTCOPY_PRESENT";

/// What [`SaveSession::begin`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeginSummary {
    /// Guest size in pfns.
    pub guest_pfns: u64,
    /// Populated pfns.
    pub populated: u64,
    /// Pfns owed after the switch.
    pub owed: u64,
    /// Pages sent before the switch (must be present).
    pub sent_now: u64,
    /// Of those, special pfns.
    pub special: u64,
    /// vCPUs whose page tables were walked.
    pub vcpus: usize,
    /// Pages needed to deliver an event that the page-table walk, stack
    /// window, code, GDT and IDT did not already bring in (TSS, RSP0/IST
    /// stacks, handler code, per-CPU area).
    pub delivery: u64,
}

/// The suspended guest's pages for the page-table walk: read in batches
/// (one foreign mapping per walk level) and cached, because the walks of
/// all vCPUs and the address translations after them read the same tables.
struct GuestPages<'a, M: SourceMemory> {
    mem: &'a M,
    populated: &'a BitVec,
    cache: HashMap<Pfn, Box<[u8; PAGE_SIZE]>>,
}

impl<M: SourceMemory> GuestPages<'_, M> {
    fn readable(&self, pfn: Pfn) -> bool {
        usize::try_from(pfn)
            .ok()
            .and_then(|i| self.populated.get(i).map(|b| *b))
            .unwrap_or(false)
    }

    fn fetch(&mut self, pfns: &[Pfn]) {
        let want: Vec<Pfn> = pfns
            .iter()
            .copied()
            .filter(|p| self.readable(*p) && !self.cache.contains_key(p))
            .collect();
        for chunk in want.chunks(MAX_BATCH_PAGES) {
            let mut buf = vec![0u8; chunk.len() * PAGE_SIZE];
            if let Err(e) = self.mem.read_pages(chunk, &mut buf) {
                // One bad page fails the batch: fall back to single reads.
                debug!("page-table walk: batch read failed ({e}); reading one by one");
                for &p in chunk {
                    let mut one = vec![0u8; PAGE_SIZE];
                    match self.mem.read_pages(&[p], &mut one) {
                        Ok(()) => self.insert(p, &one),
                        Err(e) => debug!("page-table walk: cannot read pfn {p:#x}: {e}"),
                    }
                }
                continue;
            }
            for (&p, page) in chunk.iter().zip(buf.chunks_exact(PAGE_SIZE)) {
                self.insert(p, page);
            }
        }
    }

    fn insert(&mut self, pfn: Pfn, page: &[u8]) {
        let mut b = Box::new([0u8; PAGE_SIZE]);
        b.copy_from_slice(page);
        self.cache.insert(pfn, b);
    }
}

impl<M: SourceMemory> PageReader for GuestPages<'_, M> {
    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_SIZE]) -> bool {
        if !self.cache.contains_key(&pfn) {
            self.fetch(&[pfn]);
        }
        match self.cache.get(&pfn) {
            Some(p) => {
                buf.copy_from_slice(&p[..]);
                true
            }
            None => false,
        }
    }

    fn prefetch(&mut self, pfns: &[Pfn]) {
        self.fetch(pfns);
    }
}

/// What the back channel said.
enum Back {
    Faults(Vec<Pfn>),
    Resumed(u64),
    Complete(u64),
    Failed(Error),
}

/// The source side of one migration.
pub struct SaveSession<O: XenOps> {
    mem: XenSource<O>,
    strategy: StrategySpec,
    owed: Vec<PfnRun>,
    owed_count: u64,
    /// For `--prepage=history`: the owed pages the guest wrote during the
    /// last pre-copy round (its recent working set), empty without one.
    history: Vec<Pfn>,
    stream: RecordWriter<FdIo>,
    back_fd: RawFd,
    phase: Phase,
    metrics: Metrics,
    stopped_at: Instant,
}

impl<O: XenOps> std::fmt::Debug for SaveSession<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaveSession")
            .field("strategy", &self.strategy)
            .field("owed", &self.owed_count)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Begun,
    Transitioned,
    Served,
    Failed,
}

/// Sets bits of `pfns` (below `n`).
fn bits_of(n: u64, pfns: impl IntoIterator<Item = Pfn>) -> BitVec {
    let mut b = BitVec::repeat(false, usize::try_from(n).unwrap_or(0));
    for p in pfns {
        if let Some(mut x) = usize::try_from(p).ok().and_then(|i| b.get_mut(i)) {
            *x = true;
        }
    }
    b
}

impl<O: XenOps> SaveSession<O> {
    /// Phase 1. `dirty` is the log-dirty bitmap at suspend (bit n = pfn n
    /// dirtied since last sent) with its length in bits, or `None` when no
    /// pre-copy round ran. Writes to `stream_fd`; fault requests will be
    /// read from `back_fd` (both stay owned by the caller).
    pub fn begin(
        ops: Arc<O>,
        stream_fd: RawFd,
        back_fd: RawFd,
        strategy: StrategySpec,
        dirty: Option<(&[u64], u64)>,
    ) -> Result<(SaveSession<O>, BeginSummary), Error> {
        let stopped_at = Instant::now();
        let metrics = Metrics::new();
        let mem = XenSource::new(ops)?;
        let n = mem.pfn_count();
        let populated = mem.populated_in(0, n)?;
        let scanned = stopped_at.elapsed();
        let pop_bits = bits_of(n, populated.iter().copied());
        let pop = |p: Pfn| {
            usize::try_from(p)
                .ok()
                .and_then(|i| pop_bits.get(i).map(|b| *b))
                .unwrap_or(false)
        };

        // What Xen touches on the guest's behalf.
        let ops = mem.ops().clone();
        let special = special_pfns(|param| ops.hvm_param(param).ok());
        let context = ops.hvm_context().map_err(mem_err)?;
        let vcpus = parse_hvm_context(&context)
            .map_err(|e| Error::Protocol(format!("cannot read the domain's HVM context: {e}")))?;
        let mut must: BTreeSet<Pfn> = special.iter().copied().filter(|&p| pop(p)).collect();
        let special_count = must.len() as u64;
        let mut reader = GuestPages {
            mem: &mem,
            populated: &pop_bits,
            cache: HashMap::new(),
        };
        let with_delivery = std::env::var(PRESENT_ENV).map_or(true, |v| v != "legacy");
        if !with_delivery {
            warn!(
                "{PRESENT_ENV}=legacy: event-delivery pages are left out of the must-present set"
            );
        }
        let mut delivery_added = 0u64;
        for regs in &vcpus {
            let (pages, cut) = vcpu_pages(regs, n, &mut reader);
            if cut {
                warn!("vCPU {}: page-table walk stopped at its limit", regs.vcpu);
            }
            must.extend(pages.into_iter().filter(|&p| pop(p)));
            if with_delivery {
                let d = delivery_pages(regs, n, &mut reader);
                let before = must.len();
                must.extend(d.all().into_iter().filter(|&p| pop(p)));
                delivery_added += (must.len() - before) as u64;
                debug!(
                    "vCPU {}: event delivery needs {} TSS, {} stack, {} handler, {} per-CPU pages",
                    regs.vcpu,
                    d.tss.len(),
                    d.stacks.len(),
                    d.handlers.len(),
                    d.percpu.len()
                );
            }
        }
        let ring = ops
            .hvm_param(sys::HVM_PARAM_PAGING_RING_PFN)
            .ok()
            .filter(|&p| p != 0);

        // Candidates: everything populated, or with pre-copy only what was
        // dirtied since it was sent.
        let dirty_bits =
            dirty.map(|(words, nbits)| crate::source::bitmap_pfns(words, nbits.min(n)));
        let candidates: Vec<Pfn> = match &dirty_bits {
            Some(d) => d.iter().copied().filter(|&p| pop(p)).collect(),
            None => populated.clone(),
        };
        let mut send_now = Vec::new();
        let mut owed = Vec::new();
        for p in candidates {
            if Some(p) == ring {
                continue;
            }
            if must.contains(&p) {
                send_now.push(p);
            } else {
                owed.push(p);
            }
        }
        let owed_count = owed.len() as u64;
        // With pre-copy, every owed page was dirtied in the last round: the
        // guest's recent working set, the best history Xen offers.
        let history = if dirty_bits.is_some() {
            owed.clone()
        } else {
            Vec::new()
        };
        let walked = stopped_at.elapsed();
        let owed = runs_from_sorted(owed);
        let (sid, sarg) = strategy.wire_id();
        let mut stream = RecordWriter::new(FdIo::new(stream_fd));
        stream.begin(&BeginBody {
            version: STREAM_VERSION.into(),
            flags: 0.into(),
            strategy: sid.into(),
            strategy_arg: sarg.into(),
            guest_pfns: n.into(),
            populated_pages: (populated.len() as u64).into(),
        })?;
        let mut buf = Vec::new();
        send_pages(
            &mem,
            &mut stream,
            &send_now,
            Cause::Precopy,
            &mut buf,
            &metrics,
        )?;
        stream.flush()?;
        Metrics::add(&metrics.pages_skipped, n - populated.len() as u64);
        let summary = BeginSummary {
            guest_pfns: n,
            populated: populated.len() as u64,
            owed: owed_count,
            sent_now: send_now.len() as u64,
            special: special_count,
            vcpus: vcpus.len(),
            delivery: delivery_added,
        };
        info!(
            "post-copy source: {} pfns, {} populated, {} owed in {} runs, {} sent before the switch ({} special, {} vCPUs walked, {} more for event delivery), strategy {strategy}",
            n, summary.populated, owed_count, owed.len(), summary.sent_now, special_count, summary.vcpus, summary.delivery
        );
        info!(
            "post-copy source: begin took {:?} (populated scan {scanned:?}, page-table walks {:?}, must-present pages {:?})",
            stopped_at.elapsed(),
            walked - scanned,
            stopped_at.elapsed() - walked
        );
        Ok((
            SaveSession {
                mem,
                strategy,
                owed,
                owed_count,
                history,
                stream,
                back_fd,
                phase: Phase::Begun,
                metrics,
                stopped_at,
            },
            summary,
        ))
    }

    /// The owed runs.
    pub fn owed(&self) -> &[PfnRun] {
        &self.owed
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn require_phase(&self, want: Phase, what: &'static str) -> Result<(), Error> {
        if self.phase != want {
            return Err(Error::Protocol(format!(
                "{what} called in phase {:?} (expected {want:?})",
                self.phase
            )));
        }
        Ok(())
    }

    /// Phase 2: POSTCOPY_PFNS, the end-of-pre-switch marker (an empty
    /// POSTCOPY_VCPU_STATE: on Xen the CPU state travels in HVM_CONTEXT,
    /// already sent), then wait for the destination's READY on the back
    /// channel before POSTCOPY_TRANSITION. An ABORT instead is
    /// [`Error::PeerAborted`]: the guest never ran there and may be resumed
    /// here (the C ABI returns -ECANCELED).
    pub fn transition(&mut self) -> Result<(), Error> {
        self.require_phase(Phase::Begun, "transition")?;
        let r = (|| -> Result<(), Error> {
            for chunk in self.owed.chunks(MAX_RUNS) {
                self.stream.runs(RecordType::Pfns, chunk)?;
            }
            self.stream.vcpu_state(&[])?;
            self.stream.flush()?;
            let n = self.mem.pfn_count();
            let mut back = RecordReader::new(FdIo::new(self.back_fd), Some(n));
            match back.next_record()? {
                Record::Ready => info!(
                    "post-copy source: destination READY {:?} after the stop",
                    self.stopped_at.elapsed()
                ),
                Record::Abort(reason) => {
                    warn!("destination refused the switch: {reason}");
                    return Err(Error::PeerAborted(reason));
                }
                other => {
                    return Err(RecordError::Unexpected {
                        name: other.rtype().name(),
                        state: "while waiting for POSTCOPY_READY",
                    }
                    .into())
                }
            }
            self.stream.empty(RecordType::Transition)?;
            self.stream.flush()?;
            Ok(())
        })();
        self.phase = if r.is_ok() {
            Phase::Transitioned
        } else {
            Phase::Failed
        };
        r
    }

    /// Phase 3: serve until the destination holds every owed page.
    pub fn serve(&mut self) -> Result<(), Error> {
        self.require_phase(Phase::Transitioned, "serve")?;
        let stop = Arc::new(AtomicBool::new(false));
        let back = FdIo::with_stop(self.back_fd, stop.clone());
        let n = self.mem.pfn_count();
        let (tx, rx) = mpsc::channel();
        let r = std::thread::scope(|s| {
            let reader = std::thread::Builder::new()
                .name("pc-fault-rx".into())
                .spawn_scoped(s, move || read_back(back, n, &tx))
                .map_err(|e| Error::Protocol(format!("cannot start the fault reader: {e}")))?;
            let r = self.serve_loop(&rx);
            if r.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            if reader.join().is_err() {
                return Err(Error::ThreadPanicked("fault reader"));
            }
            r
        });
        Metrics::set_duration(&self.metrics.postcopy_time_us, self.stopped_at.elapsed());
        Metrics::add(&self.metrics.bytes_sent, self.stream.bytes_written());
        self.phase = if r.is_ok() {
            Phase::Served
        } else {
            Phase::Failed
        };
        if r.is_ok() {
            info!("post-copy source done:\n{}", self.metrics.snapshot());
        }
        r
    }

    fn serve_loop(&mut self, rx: &mpsc::Receiver<Back>) -> Result<(), Error> {
        let n = self.mem.pfn_count();
        let history = std::mem::take(&mut self.history);
        let mut sched = Scheduler::new(n, &self.owed, self.strategy.build(history))?;
        let mut progress = Progress::new("Post-copy pages", self.owed_count);
        let mut buf = Vec::new();
        let mut urgent = Vec::new();
        let mut batch = Vec::with_capacity(PUSH_BATCH);
        let mut last_fault = Instant::now();
        let mut complete_sent = false;
        loop {
            // Fault requests first, always.
            // The reader's last message (COMPLETE, or its failure) comes
            // before the disconnection: handle the messages first.
            let mut msgs = Vec::new();
            let mut gone = false;
            loop {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        gone = true;
                        break;
                    }
                }
            }
            if msgs.is_empty()
                && !gone
                && (complete_sent || sched.unsent() > 0 && self.idle(&sched, last_fault))
            {
                // Nothing to push right now: wait for the back channel.
                let wait = if complete_sent {
                    Duration::from_secs(1)
                } else {
                    Duration::from_millis(2)
                };
                match rx.recv_timeout(wait) {
                    Ok(m) => msgs.push(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => gone = true,
                }
            }
            for m in msgs {
                match m {
                    Back::Faults(pfns) => {
                        last_fault = Instant::now();
                        Metrics::add(&self.metrics.network_faults, pfns.len() as u64);
                        for p in pfns {
                            match sched.request(p) {
                                Request::Queued => urgent.extend(sched.take_urgent()),
                                Request::AlreadySent => {
                                    Metrics::add(&self.metrics.faults_in_flight, 1)
                                }
                                Request::NotOwed => {
                                    return Err(Error::Protocol(format!(
                                        "destination asked for pfn {p:#x}, which it is not owed"
                                    )))
                                }
                            }
                        }
                    }
                    Back::Resumed(ns) => {
                        Metrics::set_duration(&self.metrics.downtime_us, self.stopped_at.elapsed());
                        info!(
                            "destination resumed the guest {:?} after the stop ({} us after TRANSITION there)",
                            self.stopped_at.elapsed(),
                            ns / 1000
                        );
                    }
                    Back::Complete(received) => {
                        if !complete_sent || sched.unsent() != 0 || received != self.owed_count {
                            return Err(Error::Protocol(format!(
                                "destination reports {received} of {} owed pages complete with {} unsent",
                                self.owed_count,
                                sched.unsent()
                            )));
                        }
                        progress.update(self.owed_count);
                        return Ok(());
                    }
                    Back::Failed(e) => return Err(e),
                }
            }
            if gone {
                return Err(Error::Protocol("the back channel reader stopped".into()));
            }
            if !urgent.is_empty() {
                send_pages(
                    &self.mem,
                    &mut self.stream,
                    &urgent,
                    Cause::Fault,
                    &mut buf,
                    &self.metrics,
                )?;
                self.stream.flush()?;
                urgent.clear();
            }
            if complete_sent {
                continue;
            }
            batch.clear();
            while batch.len() < PUSH_BATCH {
                match sched.next_push() {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            if batch.is_empty() && sched.unsent() > 0 && last_fault.elapsed() >= IDLE_FLUSH {
                while batch.len() < PUSH_BATCH {
                    match sched.next_linear() {
                        Some(p) => batch.push(p),
                        None => break,
                    }
                }
            }
            if !batch.is_empty() {
                send_pages(
                    &self.mem,
                    &mut self.stream,
                    &batch,
                    Cause::Push,
                    &mut buf,
                    &self.metrics,
                )?;
            } else if sched.unsent() == 0 {
                let m = self.metrics.snapshot();
                self.stream.count(
                    RecordType::Complete,
                    m.pages_pushed + m.pages_faulted + m.pages_zero,
                )?;
                self.stream.flush()?;
                complete_sent = true;
                debug!("every owed page sent; waiting for the destination's COMPLETE");
            }
            progress.update(self.owed_count - sched.unsent());
        }
    }

    /// True if the pre-pager has nothing to offer now (demand-only before
    /// the idle flush).
    fn idle(&self, sched: &Scheduler, last_fault: Instant) -> bool {
        matches!(self.strategy, StrategySpec::None)
            && sched.unsent() > 0
            && last_fault.elapsed() < IDLE_FLUSH
    }
}

fn read_back(back: FdIo, n: u64, tx: &mpsc::Sender<Back>) {
    let mut reader = RecordReader::new(back, Some(n));
    loop {
        let msg = match reader.next_record() {
            Ok(Record::Fault(pfns)) => Back::Faults(pfns),
            Ok(Record::Resumed(ns)) => Back::Resumed(ns),
            // Guest-watch hook (domain_watch.rs): the destination failed
            // after the switch (its guest died): never resume here.
            Ok(Record::Abort(reason)) => Back::Failed(crate::domain_watch::peer_failed(reason)),
            Ok(Record::Complete(v)) => {
                let _ = tx.send(Back::Complete(v));
                return;
            }
            Ok(other) => Back::Failed(
                RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the back channel of the source",
                }
                .into(),
            ),
            Err(RecordError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionAborted => return,
            Err(e) => Back::Failed(e.into()),
        };
        let last = matches!(msg, Back::Failed(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}
