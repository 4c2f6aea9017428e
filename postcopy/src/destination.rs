//! The destination side of a migration.
//!
//! Before the switch it stores pre-copied pages and collects the owed pfn
//! list; after the CPU state it makes the owed pages absent and answers
//! READY; at TRANSITION it resumes the guest.
//! After that three threads run:
//!
//! - the **bulk reader** (the caller's thread) installs pushed pages;
//! - the **fault forwarder** waits for guest accesses to absent pages and
//!   sends FAULT requests (each page requested once; unowed pages are
//!   served locally with a zero page);
//! - the **reply reader** installs fault replies from the fault channel.
//!
//! Every page is accepted through one received-map, which turns a page
//! delivered twice or a page never owed into a typed error. The migration
//! completes when every owed page is installed: the destination then sends
//! COMPLETE and waits for the source's acknowledgement.
//!
//! Before the switch any failure is a clean abort: nothing ran on the
//! destination, and the caller discards what was built.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, info, warn};

use crate::error::{Error, HookError};
use crate::memory::{DestinationMemory, PfnRun};
use crate::metrics::Metrics;
use crate::prepage::StrategySpec;
use crate::records::{
    Cause, Record, RecordError, RecordReader, RecordType, RecordWriter, MAX_PFN_LIST,
};
use crate::recovery::{self, Recovery, Watchdog};
use crate::transport::{Closer, DestLinks};
use crate::{Pfn, PAGE_SIZE};

/// How the engine resumes the guest on the destination.
pub trait GuestResume {
    /// Restores the opaque CPU/device state and starts the vCPUs.
    fn resume(&mut self, state: &[u8]) -> Result<(), HookError>;
}

/// Most fault requests in flight at once; further faults wait in the
/// backend's queue until replies arrive (bounds both sides' work).
pub const MAX_OUTSTANDING_FAULTS: usize = MAX_PFN_LIST;

/// How long a destination that holds every page waits for a source that
/// may have missed its COMPLETE.
const DONE_GRACE: Duration = Duration::from_secs(3);

/// Destination settings.
#[derive(Debug, Clone)]
pub struct DestConfig {
    /// How long the fault forwarder waits per poll (bounds shutdown time).
    pub fault_poll: Duration,
}

impl Default for DestConfig {
    fn default() -> Self {
        DestConfig {
            fault_poll: Duration::from_millis(20),
        }
    }
}

/// What the destination saw.
#[derive(Debug, Clone)]
pub struct DestOutcome {
    /// Guest size in pfns.
    pub guest_pfns: u64,
    /// Strategy the source announced.
    pub strategy: Option<StrategySpec>,
    /// Pages owed at the switch (all installed now).
    pub owed: u64,
    /// When the guest was resumed.
    pub resumed_at: Instant,
}

/// A failed migration on the destination side.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct DestFailure {
    /// The cause.
    #[source]
    pub error: Error,
    /// True if the guest had been resumed here (it is now missing pages).
    pub after_switch: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn idx(p: Pfn) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

/// The pre-switch part of the stream.
struct Switch {
    guest_pfns: u64,
    strategy: Option<StrategySpec>,
    owed: Vec<PfnRun>,
    owed_bits: BitVec,
    state: Vec<u8>,
}

/// Bookkeeping shared by the three post-switch threads.
struct Shared<'m, M: ?Sized> {
    mem: &'m M,
    owed_bits: BitVec,
    received: Mutex<BitVec>,
    remaining: Mutex<u64>,
    all_in: Condvar,
    /// Faults sent to the source and not yet satisfied: pfn → when seen.
    pending: Mutex<HashMap<Pfn, Instant>>,
    failed: AtomicBool,
    done: AtomicBool,
    metrics: &'m Metrics,
    /// The current connection's closer.
    closer: Mutex<Closer>,
}

impl<M: DestinationMemory + ?Sized> Shared<'_, M> {
    fn is_owed(&self, pfn: Pfn) -> bool {
        self.owed_bits.get(idx(pfn)).is_some_and(|b| *b)
    }

    /// Accepts and installs `pfns` with their data (`None`: zero pages).
    fn accept(&self, pfns: &[Pfn], data: Option<&[u8]>) -> Result<(), Error> {
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
        match data {
            Some(data) => {
                // Install runs of consecutive pfns with one call each.
                let mut i = 0;
                while i < pfns.len() {
                    let mut j = i + 1;
                    while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 {
                        j += 1;
                    }
                    self.mem
                        .install(pfns[i], &data[i * PAGE_SIZE..j * PAGE_SIZE])?;
                    i = j;
                }
            }
            None => {
                for &p in pfns {
                    self.mem.install_zero(p)?;
                }
            }
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
        if *left == 0 {
            self.all_in.notify_all();
        }
        Ok(())
    }

    /// Marks the migration failed and unblocks every thread.
    fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        let closer = lock(&self.closer).clone();
        closer();
        // Take the lock so a waiter cannot miss the notification.
        let _left = lock(&self.remaining);
        self.all_in.notify_all();
    }
}

/// Runs the destination side of one migration to completion; any link
/// failure after the switch fails it (see [`run_destination_recoverable`]).
pub fn run_destination<M: DestinationMemory>(
    mem: &M,
    links: DestLinks,
    cfg: &DestConfig,
    guest: &mut dyn GuestResume,
    metrics: &Metrics,
) -> Result<DestOutcome, DestFailure> {
    run_destination_recoverable(mem, links, cfg, guest, metrics, None)
}

/// Runs the destination side of one migration to completion. With
/// `recovery`, a link that breaks after the switch leaves the guest running
/// (its accesses to absent pages wait) while the hook gets fresh links;
/// the received-map then tells the source what to resend, and pending
/// faults are asked for again ([`crate::recovery`]).
pub fn run_destination_recoverable<M: DestinationMemory>(
    mem: &M,
    links: DestLinks,
    cfg: &DestConfig,
    guest: &mut dyn GuestResume,
    metrics: &Metrics,
    recovery: Option<Recovery<'_, DestLinks>>,
) -> Result<DestOutcome, DestFailure> {
    let start = Instant::now();
    let closer = links.closer.clone();
    let mut bulk: RecordReader<Box<dyn Read + Send>> = RecordReader::new(links.bulk, None);
    let before = |error: Error| DestFailure {
        error,
        after_switch: false,
    };
    let mut fault_tx: RecordWriter<Box<dyn Write + Send>> = RecordWriter::new(links.fault_tx);
    // Tells the source we never resumed the guest, so it may (best effort:
    // the link may be what failed).
    let abort = |fault_tx: &mut RecordWriter<_>, e: Error| {
        let _ = fault_tx
            .abort(&e.to_string())
            .and_then(|()| fault_tx.flush());
        closer();
        before(e)
    };
    let mut recovery = recovery;
    let mut ready_sent = false;
    let prepared = receive_until_switch(mem, &mut bulk, metrics).and_then(|sw| {
        mem.mark_absent(&sw.owed)?;
        fault_tx.empty(RecordType::Ready)?;
        fault_tx.flush()?;
        ready_sent = true;
        match bulk.next_record()? {
            Record::Transition => Ok(sw),
            other => Err(RecordError::Unexpected {
                name: other.rtype().name(),
                state: "after POSTCOPY_READY (expected TRANSITION)",
            }
            .into()),
        }
    });
    let sw = match prepared {
        Ok(sw) => sw,
        Err(e) => {
            // After READY the source may have sent TRANSITION into the
            // break and now believe the guest is here: if it reconnects,
            // tell it the guest never resumed, so it resumes its own.
            if let (true, true, Some(rec)) = (ready_sent, e.is_recoverable(), recovery.as_mut()) {
                closer();
                refuse_recovery(rec, &e);
            }
            return Err(abort(&mut fault_tx, e));
        }
    };
    let transition_at = Instant::now();
    let owed_count: u64 = sw.owed.iter().map(|r| r.count).sum();
    if let Err(source) = guest.resume(&sw.state) {
        return Err(abort(
            &mut fault_tx,
            Error::Guest {
                what: "resume the guest",
                source,
            },
        ));
    }
    let resumed_at = Instant::now();
    Metrics::set_duration(&metrics.downtime_us, resumed_at - transition_at);
    info!("guest resumed; {owed_count} pages owed");
    let ns = u64::try_from((resumed_at - transition_at).as_nanos()).unwrap_or(u64::MAX);
    let resumed_sent = fault_tx
        .count(RecordType::Resumed, ns)
        .and_then(|()| fault_tx.flush());

    let shared = Shared {
        mem,
        owed_bits: sw.owed_bits,
        received: Mutex::new(BitVec::repeat(false, idx(sw.guest_pfns))),
        remaining: Mutex::new(owed_count),
        all_in: Condvar::new(),
        pending: Mutex::new(HashMap::new()),
        failed: AtomicBool::new(false),
        done: AtomicBool::new(false),
        metrics,
        closer: Mutex::new(closer.clone()),
    };
    let mut link = SessionLinks {
        bulk,
        fault_rx: links.fault_rx,
        fault_tx,
        closer,
    };
    let mut first_error = resumed_sent.err().map(Error::from);
    let mut sessions = 0u32;
    let result = loop {
        let error = match first_error.take() {
            Some(e) => e,
            None => {
                let r = run_session(&shared, link, cfg, sw.guest_pfns, sessions > 0);
                sessions += 1;
                match r {
                    Ok(()) => break Ok(()),
                    Err(e) => e,
                }
            }
        };
        let Some(rec) = recovery.as_mut() else {
            break Err(error);
        };
        if !error.is_recoverable() {
            break Err(error);
        }
        // Everything is in and COMPLETE went out: only the source's
        // acknowledgement can be missing, so wait briefly for a source
        // that did not see our COMPLETE, then finish.
        let saved = rec.timeout;
        if shared.done.load(Ordering::SeqCst) && *lock(&shared.remaining) == 0 {
            rec.timeout = rec.timeout.min(DONE_GRACE);
        }
        let restored = recover(&shared, rec, sw.guest_pfns, &error);
        rec.timeout = saved;
        match restored {
            Ok(l) => link = l,
            Err(e) => break Err(e),
        }
    };
    Metrics::set_duration(&metrics.total_time_us, start.elapsed());
    Metrics::set_duration(&metrics.postcopy_time_us, resumed_at.elapsed());
    let outcome = DestOutcome {
        guest_pfns: sw.guest_pfns,
        strategy: sw.strategy,
        owed: owed_count,
        resumed_at,
    };
    match result {
        Ok(()) => Ok(outcome),
        // Every page is here: only the source's acknowledgement was lost.
        Err(Error::LinkLost { .. }) if *lock(&shared.remaining) == 0 => {
            warn!("every page arrived; the source's final acknowledgement did not");
            Ok(outcome)
        }
        Err(error) => {
            (lock(&shared.closer))();
            Err(DestFailure {
                error,
                after_switch: true,
            })
        }
    }
}

/// Waits (up to the recovery timeout) for the source to reconnect after a
/// break between READY and TRANSITION, and answers with ABORT: the guest
/// never ran here. Best effort: without a reconnect the source reports the
/// guest's state as unknown.
fn refuse_recovery(rec: &mut Recovery<'_, DestLinks>, why: &Error) {
    let deadline = Instant::now() + rec.timeout;
    warn!(
        "link lost before TRANSITION ({why}); waiting for the source to tell it to keep the guest"
    );
    match recovery::reconnect(rec, deadline) {
        Ok(links) => {
            let mut tx = RecordWriter::new(links.fault_tx);
            let said = tx
                .abort(&format!("link lost before TRANSITION: {why}"))
                .and_then(|()| tx.flush());
            if let Err(e) = said {
                warn!("could not tell the source: {e}");
            }
            // Let the ABORT reach the source before the links close.
            let mut rx = links.fault_rx;
            let _dog = Watchdog::new(
                links.closer.clone(),
                Instant::now() + Duration::from_secs(2),
            );
            let mut sink = [0u8; 64];
            let _ = rx.read(&mut sink);
            (links.closer)();
        }
        Err(last) => warn!("the source did not come back: {last}"),
    }
}

/// The destination's ends of one connection.
struct SessionLinks {
    bulk: RecordReader<Box<dyn Read + Send>>,
    fault_rx: Box<dyn Read + Send>,
    fault_tx: RecordWriter<Box<dyn Write + Send>>,
    closer: Closer,
}

/// Waits for fresh links and sends the received-map on them. The guest
/// keeps running meanwhile; its accesses to absent pages wait.
fn recover<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    rec: &mut Recovery<'_, DestLinks>,
    guest_pfns: u64,
    error: &Error,
) -> Result<SessionLinks, Error> {
    (lock(&shared.closer))();
    let outage = Instant::now();
    Metrics::add(&shared.metrics.outages, 1);
    warn!(
        "link lost after the switch ({error}); the guest keeps running, waiting up to {:?} for the source",
        rec.timeout
    );
    let deadline = outage + rec.timeout;
    let lost = |last: String| Error::LinkLost {
        waited_ms: u64::try_from(outage.elapsed().as_millis()).unwrap_or(u64::MAX),
        missing: *lock(&shared.remaining),
        last,
        resumed: true,
    };
    loop {
        let links = recovery::reconnect(rec, deadline).map_err(&lost)?;
        let mut fault_tx = RecordWriter::new(links.fault_tx);
        let dog = Watchdog::new(links.closer.clone(), deadline);
        let snapshot = lock(&shared.received).clone();
        let sent = recovery::write_received(&mut fault_tx, &snapshot);
        drop(dog);
        match sent {
            Ok(()) => {
                let took = outage.elapsed();
                Metrics::add(
                    &shared.metrics.outage_us,
                    u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                );
                let (waiting, longest) = {
                    let pending = lock(&shared.pending);
                    let now = Instant::now();
                    let longest = pending.values().map(|&at| now - at).max();
                    (pending.len(), longest.unwrap_or_default())
                };
                info!(
                    "link restored after {took:?}; {} pages still owed; {waiting} vCPU faults \
                     waited through the outage (longest {longest:?}) and are asked for again",
                    *lock(&shared.remaining),
                );
                return Ok(SessionLinks {
                    bulk: RecordReader::new(links.bulk, Some(guest_pfns)),
                    fault_rx: links.fault_rx,
                    fault_tx,
                    closer: links.closer,
                });
            }
            Err(e) => {
                (links.closer)();
                if Instant::now() >= deadline {
                    return Err(lost(format!("recovery handshake: {e}")));
                }
                warn!("recovery handshake failed ({e}); retrying");
            }
        }
    }
}

/// One connection's worth of the three post-switch threads, until
/// completion or the first failure.
fn run_session<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    link: SessionLinks,
    cfg: &DestConfig,
    guest_pfns: u64,
    rerequest: bool,
) -> Result<(), Error> {
    let SessionLinks {
        mut bulk,
        fault_rx,
        fault_tx,
        closer,
    } = link;
    shared.failed.store(false, Ordering::SeqCst);
    *lock(&shared.closer) = closer;
    let fault_tx = Mutex::new(fault_tx);
    let result = std::thread::scope(|scope| -> Result<(), Error> {
        let forwarder = std::thread::Builder::new()
            .name("pc-fault-fwd".into())
            .spawn_scoped(scope, || {
                let r = if rerequest {
                    rerequest_pending(shared, &fault_tx)
                } else {
                    Ok(())
                }
                .and_then(|()| forward_faults(shared, &fault_tx, cfg));
                if r.is_err() {
                    shared.fail();
                }
                r
            })
            .map_err(|e| Error::Protocol(format!("cannot start a thread: {e}")))?;
        let replies = std::thread::Builder::new()
            .name("pc-fault-rx".into())
            .spawn_scoped(scope, move || {
                let r = read_replies(shared, fault_rx, guest_pfns);
                if r.is_err() {
                    shared.fail();
                }
                r
            })
            .map_err(|e| Error::Protocol(format!("cannot start a thread: {e}")))?;
        let bulk_result = read_bulk(shared, &mut bulk).and_then(|()| {
            // Wait for fault replies still on their way.
            let mut left = lock(&shared.remaining);
            while *left > 0 && !shared.failed.load(Ordering::SeqCst) {
                left = shared.all_in.wait(left).unwrap_or_else(|e| e.into_inner());
            }
            if *left > 0 {
                return Err(Error::Aborted);
            }
            drop(left);
            // Set before COMPLETE goes out: the acknowledgement may come
            // back before this thread runs again.
            shared.done.store(true, Ordering::SeqCst);
            let mut tx = lock(&fault_tx);
            let owed = shared.owed_bits.count_ones() as u64;
            tx.count(RecordType::Complete, owed)?;
            tx.flush()?;
            Ok(())
        });
        if bulk_result.is_err() {
            shared.fail();
        }
        let fwd = forwarder
            .join()
            .map_err(|_| Error::ThreadPanicked("fault forwarder"))?;
        let rep = replies
            .join()
            .map_err(|_| Error::ThreadPanicked("fault reply reader"))?;
        if let (Err(_), Err(e)) = (&fwd, &rep) {
            debug!("fault forwarder and reply reader both failed; reply reader: {e}");
        }
        first_real_error([bulk_result, rep, fwd])
    });
    Metrics::add(&shared.metrics.bytes_received, bulk.bytes_read());
    Metrics::add(&shared.metrics.bytes_sent, lock(&fault_tx).bytes_written());
    result
}

/// After a reconnect: asks again for every page a vCPU is waiting on.
fn rerequest_pending<M: DestinationMemory + ?Sized, W: Write>(
    shared: &Shared<'_, M>,
    tx: &Mutex<RecordWriter<W>>,
) -> Result<(), Error> {
    let mut want: Vec<Pfn> = {
        let pending = lock(&shared.pending);
        let rx = lock(&shared.received);
        pending.keys().copied().filter(|&p| !rx[idx(p)]).collect()
    };
    want.sort_unstable();
    for chunk in want.chunks(MAX_PFN_LIST) {
        let mut w = lock(tx);
        w.pfn_list(RecordType::Fault, chunk)?;
        w.flush()?;
    }
    if !want.is_empty() {
        debug!("re-requested {} pending faults", want.len());
    }
    Ok(())
}

/// The first error that is not merely [`Error::Aborted`] (a consequence).
fn first_real_error<const N: usize>(results: [Result<(), Error>; N]) -> Result<(), Error> {
    let mut aborted = false;
    for r in results {
        match r {
            Ok(()) => {}
            Err(Error::Aborted) => aborted = true,
            Err(e) => return Err(e),
        }
    }
    if aborted {
        Err(Error::Aborted)
    } else {
        Ok(())
    }
}

fn receive_until_switch<M: DestinationMemory, R: Read>(
    mem: &M,
    bulk: &mut RecordReader<R>,
    metrics: &Metrics,
) -> Result<Switch, Error> {
    let begin = match bulk.next_record()? {
        Record::Begin(b) => b,
        other => {
            return Err(RecordError::Unexpected {
                name: other.rtype().name(),
                state: "before POSTCOPY_BEGIN",
            }
            .into())
        }
    };
    let guest_pfns = begin.guest_pfns.get();
    if guest_pfns != mem.pfn_count() {
        return Err(Error::Protocol(format!(
            "source guest has {guest_pfns} pfns, destination memory has {}",
            mem.pfn_count()
        )));
    }
    let strategy = StrategySpec::from_wire(begin.strategy.get(), begin.strategy_arg.get());
    let mut sw = Switch {
        guest_pfns,
        strategy,
        owed: Vec::new(),
        owed_bits: BitVec::repeat(false, idx(guest_pfns)),
        state: Vec::new(),
    };
    let zero = [0u8; PAGE_SIZE];
    loop {
        match bulk.next_record()? {
            Record::PageData {
                cause: Cause::Precopy,
                pfns,
                data,
            } => {
                for (p, page) in pfns.iter().zip(data.chunks_exact(PAGE_SIZE)) {
                    mem.write_page(*p, page)?;
                }
                Metrics::add(&metrics.pages_precopy, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                for p in &pfns {
                    mem.write_page(*p, &zero)?;
                }
                Metrics::add(&metrics.pages_zero, pfns.len() as u64);
            }
            Record::Pfns(runs) => {
                for run in &runs {
                    // Runs are validated against the guest size already.
                    let (start, end) = (idx(run.start), idx(run.start + run.count));
                    let slice = &mut sw.owed_bits[start..end];
                    if let Some(i) = slice.first_one() {
                        return Err(RecordError::DuplicatePfn {
                            name: RecordType::Pfns.name(),
                            pfn: run.start + i as u64,
                        }
                        .into());
                    }
                    slice.fill(true);
                }
                sw.owed.extend(runs);
            }
            Record::VcpuState(state) => {
                // The last record before the switch.
                sw.state = state.to_vec();
                return Ok(sw);
            }
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "before POSTCOPY_VCPU_STATE",
                }
                .into())
            }
        }
    }
}

fn read_bulk<M: DestinationMemory + ?Sized, R: Read>(
    shared: &Shared<'_, M>,
    bulk: &mut RecordReader<R>,
) -> Result<(), Error> {
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        match bulk.next_record()? {
            Record::PageData {
                cause: cause @ (Cause::Push | Cause::Resend),
                pfns,
                data,
            } => {
                let counter = if cause == Cause::Push {
                    &shared.metrics.pages_pushed
                } else {
                    &shared.metrics.pages_resent
                };
                shared.accept(&pfns, Some(data))?;
                Metrics::add(counter, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                shared.accept(&pfns, None)?;
                Metrics::add(&shared.metrics.pages_zero, pfns.len() as u64);
            }
            Record::Complete(_) => return Ok(()),
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the bulk channel after POSTCOPY_TRANSITION",
                }
                .into())
            }
        }
    }
}

fn read_replies<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    rx: Box<dyn Read + Send>,
    guest_pfns: u64,
) -> Result<(), Error> {
    let mut reader = RecordReader::new(rx, Some(guest_pfns));
    let result = loop {
        let rec = match reader.next_record() {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        match rec {
            Record::PageData {
                cause: cause @ (Cause::Fault | Cause::Resend),
                pfns,
                data,
            } => {
                if let Err(e) = shared.accept(&pfns, Some(data)) {
                    break Err(e);
                }
                let counter = if cause == Cause::Fault {
                    &shared.metrics.pages_faulted
                } else {
                    &shared.metrics.pages_resent
                };
                Metrics::add(counter, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                if let Err(e) = shared.accept(&pfns, None) {
                    break Err(e);
                }
                Metrics::add(&shared.metrics.pages_zero, pfns.len() as u64);
            }
            // The source's acknowledgement of our COMPLETE: the end.
            Record::Complete(_) if shared.done.load(Ordering::SeqCst) => break Ok(()),
            other => {
                break Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the fault channel of the destination",
                }
                .into())
            }
        }
    };
    Metrics::add(&shared.metrics.bytes_received, reader.bytes_read());
    result
}

fn forward_faults<M: DestinationMemory + ?Sized, W: Write>(
    shared: &Shared<'_, M>,
    tx: &Mutex<RecordWriter<W>>,
    cfg: &DestConfig,
) -> Result<(), Error> {
    let mut batch: Vec<Pfn> = Vec::new();
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        if shared.done.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut wait = cfg.fault_poll;
        batch.clear();
        if lock(&shared.pending).len() >= MAX_OUTSTANDING_FAULTS {
            // Enough requests in flight: let the source catch up.
            std::thread::sleep(cfg.fault_poll);
            continue;
        }
        while batch.len() < MAX_PFN_LIST {
            let Some(fault) = shared.mem.wait_fault(wait)? else {
                break;
            };
            // Drain whatever else is already queued without waiting.
            wait = Duration::ZERO;
            let pfn = fault.pfn;
            if !shared.is_owed(pfn) {
                shared.mem.install_zero(pfn)?;
                Metrics::add(&shared.metrics.faults_local_zero, 1);
                continue;
            }
            if lock(&shared.received)[idx(pfn)] {
                // Installed between the access and now; the install woke it.
                continue;
            }
            let mut pending = lock(&shared.pending);
            if pending.contains_key(&pfn) {
                continue;
            }
            pending.insert(pfn, fault.at);
            drop(pending);
            // Re-check: the page may have landed while we registered it.
            if lock(&shared.received)[idx(pfn)] {
                lock(&shared.pending).remove(&pfn);
                continue;
            }
            Metrics::add(&shared.metrics.network_faults, 1);
            batch.push(pfn);
        }
        if !batch.is_empty() {
            let mut w = lock(tx);
            w.pfn_list(RecordType::Fault, &batch)?;
            w.flush()?;
        }
    }
}
