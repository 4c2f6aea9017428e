//! The destination side of a Xen post-copy migration, in the phases
//! libxenguest calls (`include/libxl_postcopy.h`):
//!
//! 1. [`RestoreSession::begin`] at POSTCOPY_BEGIN;
//! 2. [`RestoreSession::record`] for each post-copy record before
//!    TRANSITION: PAGE_DATA / ZERO (pages that must be present, written
//!    now), POSTCOPY_PFNS (enable mem_paging at the first one — HVM_PARAMS
//!    has set the ring pfn by then — and page every owed pfn out);
//! 3. [`RestoreSession::serve`] after libxl has unpaused the guest: send
//!    RESUMED, forward the guest's paging requests as FAULT records on the
//!    back channel (one thread), load pushed and requested pages from the
//!    stream (this thread) until the source's COMPLETE, then confirm with
//!    COMPLETE. The stream is read record by record with no read-ahead, so
//!    libxenguest reads its END record next.
//!
//! Every page is accepted through one received-map: a page sent twice or
//! never owed is a typed error, never a second load.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, info};
use postcopy::memory::DestinationMemory;
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{
    decode, Cause, Record, RecordError, RecordReader, RecordType, RecordWriter, MAX_PFN_LIST,
};
use postcopy::{Error, Pfn, PAGE_SIZE};

use crate::dest::XenDestination;
use crate::domain_watch::ServeWatch;
use crate::fdio::FdIo;
use crate::xc::XenOps;
use crate::xtl::Progress;

/// How long the fault forwarder waits for a request per poll.
const FAULT_POLL: Duration = Duration::from_millis(20);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn idx(p: Pfn) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

/// The destination side of one migration.
pub struct RestoreSession<O: XenOps> {
    mem: XenDestination<O>,
    guest_pfns: u64,
    strategy: Option<StrategySpec>,
    owed: BitVec,
    owed_count: u64,
    stream_fd: RawFd,
    back_fd: RawFd,
    last_record: Instant,
    served: bool,
    ready_sent: bool,
    abort_sent: bool,
    metrics: Metrics,
}

impl<O: XenOps> std::fmt::Debug for RestoreSession<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSession")
            .field("guest_pfns", &self.guest_pfns)
            .field("owed", &self.owed_count)
            .finish_non_exhaustive()
    }
}

/// State shared by the forwarder and the stream reader.
struct Shared<'a, O: XenOps> {
    mem: &'a XenDestination<O>,
    owed: &'a BitVec,
    received: Mutex<BitVec>,
    remaining: Mutex<u64>,
    /// Faults requested from the source: pfn → when the guest faulted.
    pending: Mutex<HashMap<Pfn, Instant>>,
    done: AtomicBool,
    metrics: &'a Metrics,
}

impl<O: XenOps> Shared<'_, O> {
    fn is_owed(&self, p: Pfn) -> bool {
        self.owed.get(idx(p)).is_some_and(|b| *b)
    }

    fn accept(
        &self,
        pfns: &[Pfn],
        data: Option<&[u8]>,
        progress: &mut Progress,
        total: u64,
    ) -> Result<(), Error> {
        {
            let mut rx = lock(&self.received);
            for &p in pfns {
                if !self.is_owed(p) {
                    return Err(Error::Protocol(format!(
                        "source sent pfn {p:#x}, which was not owed"
                    )));
                }
                if rx[idx(p)] {
                    Metrics::add(&self.metrics.pages_duplicate, 1);
                    return Err(RecordError::PageSentTwice { pfn: p }.into());
                }
                rx.set(idx(p), true);
            }
        }
        for (i, &p) in pfns.iter().enumerate() {
            match data {
                Some(d) => self
                    .mem
                    .install(p, &d[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])?,
                None => self.mem.install_zero(p)?,
            };
        }
        let now = Instant::now();
        {
            let mut pending = lock(&self.pending);
            for p in pfns {
                if let Some(at) = pending.remove(p) {
                    self.metrics.record_fault_latency(now - at);
                }
            }
        }
        let mut left = lock(&self.remaining);
        *left -= pfns.len() as u64;
        progress.update(total - *left);
        Ok(())
    }
}

impl<O: XenOps> RestoreSession<O> {
    /// Phase 1: checks the POSTCOPY_BEGIN body and prepares the domain's
    /// memory. Reads the stream from `stream_fd` and writes requests to
    /// `back_fd` later (both stay owned by the caller).
    pub fn begin(
        ops: Arc<O>,
        stream_fd: RawFd,
        back_fd: RawFd,
        begin_body: &[u8],
    ) -> Result<RestoreSession<O>, Error> {
        let Record::Begin(b) = decode(RecordType::Begin, begin_body, None)? else {
            return Err(Error::Protocol(
                "POSTCOPY_BEGIN did not decode as BEGIN".into(),
            ));
        };
        let guest_pfns = b.guest_pfns.get();
        // The engine indexes pfns with u32 (16 TiB of guest); a BEGIN past
        // that is corrupt or hostile, and must not size our bitmaps.
        if guest_pfns == 0 || guest_pfns >= u64::from(u32::MAX) {
            return Err(Error::Protocol(format!(
                "POSTCOPY_BEGIN claims a guest of {guest_pfns} pfns"
            )));
        }
        let strategy = StrategySpec::from_wire(b.strategy.get(), b.strategy_arg.get());
        let mem = XenDestination::new(ops, guest_pfns)?;
        info!(
            "post-copy destination: {guest_pfns} pfns, {} populated at the source, strategy {}",
            b.populated_pages.get(),
            strategy
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
        Ok(RestoreSession {
            mem,
            guest_pfns,
            strategy,
            owed: BitVec::repeat(false, idx(guest_pfns)),
            owed_count: 0,
            stream_fd,
            back_fd,
            last_record: Instant::now(),
            served: false,
            ready_sent: false,
            abort_sent: false,
            metrics: Metrics::new(),
        })
    }

    /// The strategy the source announced (None if this side does not know it).
    pub fn strategy(&self) -> Option<StrategySpec> {
        self.strategy
    }

    /// The memory backend.
    pub fn memory(&self) -> &XenDestination<O> {
        &self.mem
    }

    /// Pages owed so far.
    pub fn owed_count(&self) -> u64 {
        self.owed_count
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn is_owed(&self, p: Pfn) -> bool {
        self.owed.get(idx(p)).is_some_and(|b| *b)
    }

    /// Phase 2: one record between BEGIN and TRANSITION.
    pub fn record(&mut self, rtype: u32, body: &[u8]) -> Result<(), Error> {
        if self.served {
            return Err(Error::Protocol("record after the page service ran".into()));
        }
        let t = RecordType::from_wire(rtype).ok_or(RecordError::UnknownType(rtype))?;
        let unexpected = |name| -> Error {
            RecordError::Unexpected {
                name,
                state: "between POSTCOPY_BEGIN and POSTCOPY_TRANSITION",
            }
            .into()
        };
        self.last_record = Instant::now();
        match decode(t, body, Some(self.guest_pfns))? {
            Record::PageData {
                cause: Cause::Precopy,
                pfns,
                data,
            } => {
                if let Some(&p) = pfns.iter().find(|&&p| self.is_owed(p)) {
                    return Err(Error::Protocol(format!(
                        "page {p:#x} sent before the switch is already owed"
                    )));
                }
                self.mem.write_pages(&pfns, data)?;
                Metrics::add(&self.metrics.pages_precopy, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                if let Some(&p) = pfns.iter().find(|&&p| self.is_owed(p)) {
                    return Err(Error::Protocol(format!(
                        "zero page {p:#x} sent before the switch is already owed"
                    )));
                }
                let zeros = vec![0u8; pfns.len() * PAGE_SIZE];
                self.mem.write_pages(&pfns, &zeros)?;
                Metrics::add(&self.metrics.pages_zero, pfns.len() as u64);
            }
            Record::Pfns(runs) => {
                for run in &runs {
                    for p in run.pfns() {
                        if self.owed[idx(p)] {
                            return Err(RecordError::DuplicatePfn {
                                name: RecordType::Pfns.name(),
                                pfn: p,
                            }
                            .into());
                        }
                        self.owed.set(idx(p), true);
                    }
                }
                self.mem.mark_absent(&runs)?;
                self.owed_count += runs.iter().map(|r| r.count).sum::<u64>();
                debug!("{} pfns owed so far", self.owed_count);
            }
            Record::VcpuState(s) => {
                // The source's end-of-pre-switch marker (Xen carries the
                // CPU state in HVM_CONTEXT, processed by now): everything
                // before the switch is in, every owed pfn is paged out.
                if self.ready_sent {
                    return Err(unexpected(RecordType::VcpuState.name()));
                }
                if self.owed_count > 0 && self.mem.ring_pfn().is_none() {
                    return Err(Error::Protocol(
                        "pages are owed but mem_paging was never enabled".into(),
                    ));
                }
                debug!(
                    "end of the pre-switch records ({}-byte marker): READY",
                    s.len()
                );
                let (by_range, by_page, took) = self.mem.page_out_stats();
                info!(
                    "paged out {} owed pfns in {took:?} ({by_range} by range, {by_page} page by page)",
                    by_range + by_page
                );
                let mut back = RecordWriter::new(FdIo::new(self.back_fd));
                back.empty(RecordType::Ready)?;
                back.flush()?;
                self.ready_sent = true;
            }
            other => return Err(unexpected(other.rtype().name())),
        }
        Ok(())
    }

    /// [`Self::record`], and on failure before READY an ABORT on the back
    /// channel (best effort), so the source knows the guest never ran here
    /// and may resume it.
    pub fn record_or_abort(&mut self, rtype: u32, body: &[u8]) -> Result<(), Error> {
        let r = self.record(rtype, body);
        if let Err(e) = &r {
            self.abort(&e.to_string());
        }
        r
    }

    /// Sends ABORT (once, and only before READY) with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if self.ready_sent || self.abort_sent || self.served {
            return;
        }
        self.abort_sent = true;
        let mut back = RecordWriter::new(FdIo::new(self.back_fd));
        match back.abort(reason).and_then(|()| back.flush()) {
            Ok(()) => info!("post-copy destination: sent ABORT ({reason})"),
            Err(e) => debug!("could not send ABORT: {e}"),
        }
    }

    /// True once READY went to the source.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// Phase 3: the guest runs; serve its faults and load every owed page.
    pub fn serve(&mut self) -> Result<(), Error> {
        if self.served {
            return Err(Error::Protocol("serve called twice".into()));
        }
        self.served = true;
        if !self.ready_sent {
            return Err(Error::Protocol(
                "TRANSITION before the end-of-pre-switch marker: READY was never sent".into(),
            ));
        }
        if self.owed_count > 0 && self.mem.ring_pfn().is_none() {
            return Err(Error::Protocol(
                "pages are owed but mem_paging was never enabled".into(),
            ));
        }
        // Guest-watch hook (domain_watch.rs): RESUMED goes out when libxl
        // unpauses the domain, not here; a death stops the stream reader.
        let transition_at = self.last_record;
        let stop = Arc::new(AtomicBool::new(false));
        let back = RecordWriter::new(FdIo::new(self.back_fd));
        let start = Instant::now();
        let shared = Shared {
            mem: &self.mem,
            owed: &self.owed,
            received: Mutex::new(BitVec::repeat(false, idx(self.guest_pfns))),
            remaining: Mutex::new(self.owed_count),
            pending: Mutex::new(HashMap::new()),
            done: AtomicBool::new(false),
            metrics: &self.metrics,
        };
        let mut stream = RecordReader::new(
            FdIo::with_stop(self.stream_fd, stop.clone()),
            Some(self.guest_pfns),
        );
        let total = self.owed_count;
        let back = Mutex::new(back);
        let guest_pfns = self.guest_pfns;
        let absent = || *lock(&shared.remaining);
        let is_owed = |p| shared.is_owed(p);
        let result = std::thread::scope(|s| -> Result<(), Error> {
            let watch = ServeWatch {
                ops: shared.mem.ops().clone(),
                done: &shared.done,
                stop: &stop,
                back: &back,
                transition_at,
                owed: total,
                absent: &absent,
                is_owed: &is_owed,
                guest_pfns,
            };
            let watch = std::thread::Builder::new()
                .name("pc-guest-watch".into())
                .spawn_scoped(s, || watch.run());
            let fwd = std::thread::Builder::new()
                .name("pc-fault-fwd".into())
                .spawn_scoped(s, || forward_faults(&shared, &back));
            let (watch, fwd) = match (watch, fwd) {
                (Ok(w), Ok(f)) => (w, f),
                (Err(e), _) | (_, Err(e)) => {
                    shared.done.store(true, Ordering::SeqCst);
                    return Err(Error::Protocol(format!("cannot start a serve thread: {e}")));
                }
            };
            let r = read_stream(&shared, &mut stream, total);
            shared.done.store(true, Ordering::SeqCst);
            let f = fwd
                .join()
                .map_err(|_| Error::ThreadPanicked("fault forwarder"))?;
            // The watch took its last look: a guest that died before the
            // last page is a failed migration whatever the stream did.
            let died = watch
                .join()
                .map_err(|_| Error::ThreadPanicked("guest watch"))?;
            if let Some(d) = died {
                return Err(d.into_error());
            }
            r?;
            f?;
            // Requests that raced with the load of their page and were not
            // read before the forwarder stopped: answer them now.
            let waiting = shared.mem.settle()?;
            if waiting != 0 {
                return Err(Error::Protocol(format!(
                    "{waiting} paging requests wait for pages that never came"
                )));
            }
            let mut back = lock(&back);
            back.count(RecordType::Complete, total)?;
            back.flush()?;
            Ok(())
        });
        Metrics::set_duration(&self.metrics.postcopy_time_us, start.elapsed());
        Metrics::add(&self.metrics.bytes_received, stream.bytes_read());
        if result.is_ok() {
            info!("post-copy destination done:\n{}", self.metrics.snapshot());
        }
        result
    }
}

fn read_stream<O: XenOps>(
    shared: &Shared<'_, O>,
    stream: &mut RecordReader<FdIo>,
    total: u64,
) -> Result<(), Error> {
    let mut progress = Progress::new("Post-copy pages", total);
    loop {
        match stream.next_record()? {
            Record::PageData {
                cause: cause @ (Cause::Push | Cause::Fault | Cause::Resend),
                pfns,
                data,
            } => {
                shared.accept(&pfns, Some(data), &mut progress, total)?;
                let c = match cause {
                    Cause::Push => &shared.metrics.pages_pushed,
                    Cause::Fault => &shared.metrics.pages_faulted,
                    _ => &shared.metrics.pages_resent,
                };
                Metrics::add(c, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                shared.accept(&pfns, None, &mut progress, total)?;
                Metrics::add(&shared.metrics.pages_zero, pfns.len() as u64);
            }
            Record::Complete(sent) => {
                let left = *lock(&shared.remaining);
                if left != 0 {
                    return Err(Error::Protocol(format!(
                        "source completed after {sent} pages with {left} owed pages missing"
                    )));
                }
                return Ok(());
            }
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "in the stream after POSTCOPY_TRANSITION",
                }
                .into())
            }
        }
    }
}

fn forward_faults<O: XenOps>(
    shared: &Shared<'_, O>,
    back: &Mutex<RecordWriter<FdIo>>,
) -> Result<(), Error> {
    let mut batch = Vec::new();
    while !shared.done.load(Ordering::SeqCst) {
        let mut wait = FAULT_POLL;
        batch.clear();
        while batch.len() < MAX_PFN_LIST {
            let Some(fault) = shared.mem.wait_fault(wait)? else {
                break;
            };
            wait = Duration::ZERO;
            let pfn = fault.pfn;
            if !shared.is_owed(pfn) {
                // Never ours: the backend only resumes the vCPU.
                shared.mem.install_zero(pfn)?;
                Metrics::add(&shared.metrics.faults_local_zero, 1);
                continue;
            }
            if lock(&shared.received)[idx(pfn)] {
                continue;
            }
            {
                let mut pending = lock(&shared.pending);
                if pending.contains_key(&pfn) {
                    continue;
                }
                pending.insert(pfn, fault.at);
            }
            Metrics::add(&shared.metrics.network_faults, 1);
            batch.push(pfn);
        }
        if !batch.is_empty() && !shared.done.load(Ordering::SeqCst) {
            let mut w = lock(back);
            w.pfn_list(RecordType::Fault, &batch)?;
            w.flush()?;
        }
    }
    Ok(())
}
