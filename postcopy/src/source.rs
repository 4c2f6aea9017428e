//! The source side of a migration.
//!
//! Phases (DESIGN.md §2): optional pre-copy rounds over the dirty log; stop
//! the guest; send the owed pfn list, the CPU state and TRANSITION; then
//! serve — a fault server thread answers requests on the fault channel
//! ahead of everything, while this thread pushes the pre-pager's choice on
//! the bulk channel, yielding once per batch while a fault is outstanding.
//! Both claim pages through one [`Scheduler`], so each owed page is sent
//! exactly once. The migration is complete when the destination says it
//! holds every owed page.
//!
//! Failure rule: until TRANSITION has been written the destination cannot
//! have resumed the guest, so any failure resumes it here
//! ([`GuestControl::resume`]) and memory is untouched; the same holds when
//! the destination answers TRANSITION with ABORT (it refused the stream and
//! never resumed). Otherwise, after TRANSITION the guest lives on the
//! destination and is never resumed here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, info, warn};

use crate::error::{Error, HookError};
use crate::memory::{runs_from_sorted, PfnRun, SourceMemory};
use crate::metrics::Metrics;
use crate::prepage::StrategySpec;
use crate::records::{
    BeginBody, Cause, Record, RecordReader, RecordType, RecordWriter, MAX_BATCH_PAGES,
    MAX_PFN_LIST, MAX_RUNS, STREAM_VERSION,
};
use crate::scheduler::{Request, Scheduler};
use crate::transport::SourceLinks;
use crate::{Pfn, PAGE_SIZE};

/// How memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stop at once, then post-copy.
    Postcopy,
    /// Classic pre-copy: up to `max_rounds` live rounds, stopping early when
    /// fewer than `min_dirty` pages are dirty (Xen 4.17: 5 and 50), then
    /// stop-and-copy. No post-copy phase.
    Precopy {
        /// Most live rounds (the first sends everything).
        max_rounds: u32,
        /// Stop iterating below this many dirty pages.
        min_dirty: u64,
    },
    /// `rounds` live pre-copy rounds, then post-copy.
    Hybrid {
        /// Live rounds before the switch.
        rounds: u32,
    },
}

impl Mode {
    /// Xen 4.17's pre-copy defaults (`simple_precopy_policy`).
    pub const XEN_PRECOPY: Mode = Mode::Precopy {
        max_rounds: 5,
        min_dirty: 50,
    };
}

/// Source settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Pre-paging strategy for the post-copy phase.
    pub strategy: StrategySpec,
    /// Migration mode.
    pub mode: Mode,
    /// Pages per pushed PAGE_DATA record.
    pub batch_pages: usize,
    /// With `--prepage=none`: flush the residue once no fault has arrived
    /// for this long (demand paging alone never ends for pages the guest
    /// never touches).
    pub idle_flush: Duration,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            strategy: StrategySpec::Bubble,
            mode: Mode::Postcopy,
            batch_pages: 64,
            idle_flush: Duration::from_millis(500),
        }
    }
}

/// How the engine stops and (on early failure) resumes the source guest.
pub trait GuestControl {
    /// Stops the guest's vCPUs and returns its opaque CPU/device state.
    fn stop(&mut self) -> Result<Vec<u8>, HookError>;
    /// Resumes the guest after a failure before the switch.
    fn resume(&mut self) -> Result<(), HookError>;
}

/// What the source saw.
#[derive(Debug, Clone)]
pub struct SourceOutcome {
    /// Pages owed at the switch.
    pub owed: u64,
    /// When the guest was stopped.
    pub stopped_at: Instant,
    /// True if TRANSITION was sent (the guest belongs to the destination).
    pub switched: bool,
}

/// A failed migration, with whether the switch had happened.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SourceFailure {
    /// The cause.
    #[source]
    pub error: Error,
    /// False: the source guest was resumed and is intact. True: the guest
    /// runs on the destination; its unsent pages are lost if the link
    /// cannot be restored.
    pub after_switch: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True if the page is all zero bytes (sent as a ZERO record instead).
fn is_zero_page(page: &[u8]) -> bool {
    // OR-folding fixed 64-byte chunks vectorises; the early exit per chunk
    // keeps non-zero pages cheap.
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Sends `pfns` (read from `mem`) as PAGE_DATA/ZERO records of `cause`.
fn send_pages<M: SourceMemory + ?Sized, W: std::io::Write>(
    mem: &M,
    out: &mut RecordWriter<W>,
    pfns: &[Pfn],
    cause: Cause,
    buf: &mut Vec<u8>,
    metrics: &Metrics,
) -> Result<(), Error> {
    for chunk in pfns.chunks(MAX_BATCH_PAGES) {
        buf.resize(chunk.len() * PAGE_SIZE, 0);
        mem.read_pages(chunk, buf)?;
        let mut data_pfns = Vec::with_capacity(chunk.len());
        let mut zero_pfns = Vec::new();
        let mut data = Vec::with_capacity(buf.len());
        for (pfn, page) in chunk.iter().zip(buf.chunks_exact(PAGE_SIZE)) {
            if is_zero_page(page) {
                zero_pfns.push(*pfn);
            } else {
                data_pfns.push(*pfn);
                data.extend_from_slice(page);
            }
        }
        if !data_pfns.is_empty() {
            out.page_data(cause, &data_pfns, &data)?;
        }
        if !zero_pfns.is_empty() {
            out.pfn_list(RecordType::Zero, &zero_pfns)?;
        }
        let counter = match cause {
            Cause::Push => &metrics.pages_pushed,
            Cause::Fault => &metrics.pages_faulted,
            Cause::Precopy => &metrics.pages_precopy,
            Cause::Resend => &metrics.pages_resent,
        };
        Metrics::add(counter, data_pfns.len() as u64);
        Metrics::add(&metrics.pages_zero, zero_pfns.len() as u64);
    }
    Ok(())
}

fn bits_from_runs(n: u64, runs: &[PfnRun]) -> BitVec {
    let mut bits = BitVec::repeat(false, usize::try_from(n).unwrap_or(0));
    for run in runs {
        for p in run.pfns().take_while(|&p| p < n) {
            bits.set(usize::try_from(p).unwrap_or(usize::MAX), true);
        }
    }
    bits
}

/// Runs the source side of one migration to completion.
pub fn run_source<M: SourceMemory>(
    mem: &mut M,
    links: SourceLinks,
    cfg: &SourceConfig,
    guest: &mut dyn GuestControl,
    metrics: &Metrics,
) -> Result<SourceOutcome, SourceFailure> {
    let start = Instant::now();
    let closer = links.closer.clone();
    let mut bulk = RecordWriter::new(links.bulk);
    let mut fault_rx: FaultReader = RecordReader::new(links.fault_rx, Some(mem.pfn_count()));
    let mut stopped = false;
    let pre = pre_switch(
        mem,
        &mut bulk,
        &mut fault_rx,
        cfg,
        guest,
        metrics,
        &mut stopped,
    );
    let (owed, stopped_at) = match pre {
        Ok(v) => v,
        Err(error) => {
            closer();
            if stopped {
                if let Err(e) = guest.resume() {
                    warn!("could not resume the source guest: {e}");
                }
            }
            return Err(SourceFailure {
                error,
                after_switch: false,
            });
        }
    };
    let owed_count: u64 = owed.iter().map(|r| r.count).sum();
    let result = serve(
        &*mem,
        bulk,
        (fault_rx, links.fault_tx, closer.clone()),
        &owed,
        cfg,
        metrics,
        stopped_at,
    );
    Metrics::set_duration(&metrics.total_time_us, start.elapsed());
    Metrics::set_duration(&metrics.postcopy_time_us, stopped_at.elapsed());
    match result {
        Ok(()) => Ok(SourceOutcome {
            owed: owed_count,
            stopped_at,
            switched: true,
        }),
        Err(error) => {
            closer();
            // The destination said it never resumed the guest: it is
            // still ours, and its memory here is untouched.
            let after_switch = !matches!(error, Error::PeerAborted(_));
            if !after_switch {
                if let Err(e) = guest.resume() {
                    warn!("could not resume the source guest: {e}");
                }
            }
            Err(SourceFailure {
                error,
                after_switch,
            })
        }
    }
}

/// BEGIN, pre-copy rounds, stop, owed list, state, TRANSITION. Returns
/// the owed runs and when the guest stopped.
fn pre_switch<M: SourceMemory, W: std::io::Write>(
    mem: &mut M,
    bulk: &mut RecordWriter<W>,
    fault_rx: &mut FaultReader,
    cfg: &SourceConfig,
    guest: &mut dyn GuestControl,
    metrics: &Metrics,
    stopped: &mut bool,
) -> Result<(Vec<PfnRun>, Instant), Error> {
    let n = mem.pfn_count();
    let populated = mem.populated()?;
    let populated_pages: u64 = populated.iter().map(|r| r.count).sum();
    Metrics::add(&metrics.pages_skipped, n - populated_pages.min(n));
    let (sid, sarg) = cfg.strategy.wire_id();
    bulk.begin(&BeginBody {
        version: STREAM_VERSION.into(),
        flags: 0.into(),
        strategy: sid.into(),
        strategy_arg: sarg.into(),
        guest_pfns: n.into(),
        populated_pages: populated_pages.into(),
    })?;

    let rounds = match cfg.mode {
        Mode::Postcopy => 0,
        Mode::Precopy { max_rounds, .. } => max_rounds.max(1),
        Mode::Hybrid { rounds } => rounds,
    };
    let mut buf = Vec::new();
    // Pages the destination holds a copy of (sent in some round).
    let mut dest_has = BitVec::<usize>::repeat(false, usize::try_from(n).unwrap_or(0));
    // Pages read out of the dirty log by a round that then stopped early.
    let mut unsent_dirty: Vec<Pfn> = Vec::new();
    if rounds > 0 {
        mem.enable_dirty_log()?;
        let mut to_send: Vec<Pfn> = populated.iter().flat_map(|r| r.pfns()).collect();
        for round in 0..rounds {
            debug!("pre-copy round {round}: {} pages", to_send.len());
            send_pages(&*mem, bulk, &to_send, Cause::Precopy, &mut buf, metrics)?;
            for &p in &to_send {
                dest_has.set(usize::try_from(p).unwrap_or(usize::MAX), true);
            }
            Metrics::add(&metrics.precopy_rounds, 1);
            if round + 1 == rounds {
                break;
            }
            let live = bits_from_runs(n, &mem.populated()?);
            to_send = mem
                .take_dirty()?
                .into_iter()
                .filter(|&p| {
                    live.get(usize::try_from(p).unwrap_or(usize::MAX))
                        .is_some_and(|b| *b)
                })
                .collect();
            if let Mode::Precopy { min_dirty, .. } = cfg.mode {
                if (to_send.len() as u64) < min_dirty {
                    // Taken from the log but not sent: still dirty.
                    unsent_dirty = std::mem::take(&mut to_send);
                    break;
                }
            }
        }
    }

    let state = guest.stop().map_err(|source| Error::Guest {
        what: "stop the guest",
        source,
    })?;
    *stopped = true;
    let stopped_at = Instant::now();
    info!("guest stopped; computing owed pages");

    let live_runs = mem.populated()?;
    let live = bits_from_runs(n, &live_runs);
    let (owed, zeroed): (Vec<Pfn>, Vec<Pfn>) = if rounds > 0 {
        let mut owed_bits = live.clone();
        // Sent and not dirtied since: the destination's copy is current.
        let mut stale = BitVec::<usize>::repeat(false, live.len());
        for p in mem.take_dirty()?.into_iter().chain(unsent_dirty) {
            if let Some(mut b) = stale.get_mut(usize::try_from(p).unwrap_or(usize::MAX)) {
                *b = true;
            }
        }
        for i in dest_has.iter_ones() {
            if !stale[i] {
                owed_bits.set(i, false);
            }
        }
        // Sent earlier, unpopulated now: the destination must drop its copy.
        let zeroed = dest_has
            .iter_ones()
            .filter(|&i| !live[i])
            .map(|i| i as Pfn)
            .collect();
        (owed_bits.iter_ones().map(|i| i as Pfn).collect(), zeroed)
    } else {
        (
            live_runs.iter().flat_map(|r| r.pfns()).collect(),
            Vec::new(),
        )
    };
    let skipped_now = n - (live.count_ones() as u64).min(n);
    metrics.pages_skipped.store(skipped_now, Ordering::Relaxed);

    for chunk in zeroed.chunks(MAX_PFN_LIST) {
        bulk.pfn_list(RecordType::Zero, chunk)?;
        Metrics::add(&metrics.pages_zero, chunk.len() as u64);
    }
    let owed_runs = if matches!(cfg.mode, Mode::Precopy { .. }) {
        // Stop-and-copy: everything still owed goes now, in the downtime.
        send_pages(&*mem, bulk, &owed, Cause::Precopy, &mut buf, metrics)?;
        Vec::new()
    } else {
        runs_from_sorted(owed.iter().copied())
    };
    for chunk in owed_runs.chunks(MAX_RUNS) {
        bulk.runs(RecordType::Pfns, chunk)?;
    }
    bulk.vcpu_state(&state)?;
    bulk.flush()?;
    // The destination confirms it has everything and is prepared before the
    // guest changes hands: a link or a destination lost before this point
    // leaves the guest here, never in limbo.
    match fault_rx.next_record()? {
        Record::Ready => {}
        Record::Abort(reason) => return Err(Error::PeerAborted(reason)),
        other => {
            return Err(crate::records::RecordError::Unexpected {
                name: other.rtype().name(),
                state: "while waiting for POSTCOPY_READY",
            }
            .into())
        }
    }
    bulk.empty(RecordType::Transition)?;
    bulk.flush()?;
    info!(
        "switched: {} pages owed in {} runs, {} zeroed",
        owed.len(),
        owed_runs.len(),
        zeroed.len()
    );
    Ok((owed_runs, stopped_at))
}

/// The source's end of the fault channel, read by one thread at a time.
type FaultReader = RecordReader<Box<dyn std::io::Read + Send>>;

/// State shared by the push loop and the fault server.
struct Shared {
    sched: Mutex<Scheduler>,
    /// Fault requests being served right now (the push yields to them).
    outstanding: AtomicU64,
    failed: AtomicBool,
    /// The fault server has returned.
    server_done: AtomicBool,
    /// Last fault request arrival, in ms since `epoch`.
    last_fault_ms: AtomicU64,
    epoch: Instant,
}

fn serve<M: SourceMemory + ?Sized, W: std::io::Write + Send>(
    mem: &M,
    mut bulk: RecordWriter<W>,
    fault: (
        FaultReader,
        Box<dyn std::io::Write + Send>,
        crate::transport::Closer,
    ),
    owed: &[PfnRun],
    cfg: &SourceConfig,
    metrics: &Metrics,
    stopped_at: Instant,
) -> Result<(), Error> {
    let (fault_rx, fault_tx, closer) = fault;
    let n = mem.pfn_count();
    let prepager = cfg.strategy.build(mem.access_history());
    let shared = Arc::new(Shared {
        sched: Mutex::new(Scheduler::new(n, owed, prepager)?),
        outstanding: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        server_done: AtomicBool::new(false),
        last_fault_ms: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    std::thread::scope(|scope| {
        let server = {
            let shared = Arc::clone(&shared);
            let closer = closer.clone();
            std::thread::Builder::new()
                .name("pc-fault-server".into())
                .spawn_scoped(scope, move || {
                    let r = fault_server(mem, fault_rx, fault_tx, &shared, metrics, stopped_at);
                    shared.server_done.store(true, Ordering::SeqCst);
                    if r.is_err() {
                        shared.failed.store(true, Ordering::SeqCst);
                        closer();
                    }
                    r
                })
                .map_err(|e| Error::Protocol(format!("cannot start the fault server: {e}")))?
        };
        let pushed = push_loop(mem, &mut bulk, &shared, cfg, metrics);
        if let Err(e) = &pushed {
            shared.failed.store(true, Ordering::SeqCst);
            // A dead link ends the fault server by itself, and it may still
            // have the destination's ABORT to read; anything else must
            // unblock it.
            if !e.is_disconnect() {
                closer();
            } else {
                // ...but not forever, if only the bulk link died.
                let (closer, server_done) = (closer.clone(), &shared.server_done);
                scope.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    while !server_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if !server_done.load(Ordering::SeqCst) {
                        closer();
                    }
                });
            }
        }
        let served = server
            .join()
            .map_err(|_| Error::ThreadPanicked("fault server"))?;
        shared.server_done.store(true, Ordering::SeqCst);
        match (pushed, served) {
            // The destination's word is the root cause of a broken push.
            (_, Err(e @ Error::PeerAborted(_))) => Err(e),
            (Err(Error::Aborted), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), r) => r,
        }
    })
}

fn push_loop<M: SourceMemory + ?Sized, W: std::io::Write>(
    mem: &M,
    bulk: &mut RecordWriter<W>,
    shared: &Shared,
    cfg: &SourceConfig,
    metrics: &Metrics,
) -> Result<(), Error> {
    let mut buf = Vec::new();
    let mut batch = Vec::with_capacity(cfg.batch_pages);
    let batch_pages = cfg.batch_pages.clamp(1, MAX_BATCH_PAGES);
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        if shared.outstanding.load(Ordering::Acquire) > 0 {
            std::thread::yield_now();
        }
        batch.clear();
        let unsent = {
            let mut s = lock(&shared.sched);
            while batch.len() < batch_pages {
                match s.next_push() {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            if batch.is_empty() && s.unsent() > 0 {
                let quiet_ms = ms(shared.epoch.elapsed())
                    .saturating_sub(shared.last_fault_ms.load(Ordering::Relaxed));
                if quiet_ms >= ms(cfg.idle_flush) {
                    while batch.len() < batch_pages {
                        match s.next_linear() {
                            Some(p) => batch.push(p),
                            None => break,
                        }
                    }
                }
            }
            s.unsent()
        };
        if batch.is_empty() {
            if unsent == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        send_pages(mem, bulk, &batch, Cause::Push, &mut buf, metrics)?;
    }
    let sent = {
        let r = metrics.snapshot();
        r.pages_pushed + r.pages_faulted + r.pages_zero
    };
    bulk.count(RecordType::Complete, sent)?;
    bulk.flush()?;
    Metrics::add(&metrics.bytes_sent, bulk.bytes_written());
    debug!("push complete");
    Ok(())
}

fn fault_server<M: SourceMemory + ?Sized>(
    mem: &M,
    mut reader: FaultReader,
    tx: Box<dyn std::io::Write + Send>,
    shared: &Shared,
    metrics: &Metrics,
    stopped_at: Instant,
) -> Result<(), Error> {
    let mut writer = RecordWriter::new(tx);
    let mut buf = Vec::new();
    let mut resumed = false;
    loop {
        match reader.next_record()? {
            Record::Abort(reason) if !resumed => return Err(Error::PeerAborted(reason)),
            Record::Resumed(_) if !resumed => {
                resumed = true;
                Metrics::set_duration(&metrics.downtime_us, stopped_at.elapsed());
                info!(
                    "destination resumed the guest after {:?}",
                    stopped_at.elapsed()
                );
            }
            Record::Fault(pfns) => {
                shared.outstanding.fetch_add(1, Ordering::AcqRel);
                shared
                    .last_fault_ms
                    .store(ms(shared.epoch.elapsed()), Ordering::Relaxed);
                Metrics::add(&metrics.network_faults, pfns.len() as u64);
                let mut now = Vec::with_capacity(pfns.len());
                {
                    let mut s = lock(&shared.sched);
                    for p in pfns {
                        match s.request(p) {
                            Request::Queued => {
                                // Taken back at once: the reply goes out here.
                                if let Some(q) = s.take_urgent() {
                                    now.push(q);
                                }
                            }
                            Request::AlreadySent => Metrics::add(&metrics.faults_in_flight, 1),
                            Request::NotOwed => {
                                return Err(Error::Protocol(format!(
                                    "destination asked for pfn {p:#x}, which it is not owed"
                                )))
                            }
                        }
                    }
                }
                let r = send_pages(mem, &mut writer, &now, Cause::Fault, &mut buf, metrics);
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                r?;
                writer.flush()?;
            }
            Record::Complete(received) => {
                let s = lock(&shared.sched);
                if s.unsent() != 0 || received != s.owed() {
                    return Err(Error::Protocol(format!(
                        "destination reports {received} of {} owed pages complete with {} unsent",
                        s.owed(),
                        s.unsent()
                    )));
                }
                drop(s);
                writer.count(RecordType::Complete, received)?;
                writer.flush()?;
                Metrics::add(&metrics.bytes_received, reader.bytes_read());
                Metrics::add(&metrics.bytes_sent, writer.bytes_written());
                return Ok(());
            }
            other => {
                return Err(crate::records::RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the fault channel of the source",
                }
                .into())
            }
        }
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
    }
}
