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
//! The phases are public as [`SourceSession`] (begin → switch → serve), so
//! every transport and backend drives the same code: local mode through
//! [`run_source_recoverable`], the Xen glue through its libxenguest
//! callbacks. Where fault replies travel ([`Replies`]: their own channel,
//! or in-band on the forward stream) and how pushes are batched
//! ([`PushPolicy`]) are settings of the session.
//!
//! Failure rule: until TRANSITION has been written the destination cannot
//! have resumed the guest, so any failure resumes it here
//! ([`GuestControl::resume`]) and memory is untouched; the same holds when
//! the destination answers TRANSITION with ABORT (it refused the stream and
//! never resumed). Otherwise, after TRANSITION the guest lives on the
//! destination and is never resumed here; a destination that fails after
//! RESUMED says why with ABORT ([`Error::DestinationFailed`], whose
//! [`DestinationCause`] tells a guest that died there from other failures).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, info, warn};

use crate::error::{DestinationCause, Error, HookError};
use crate::memory::{runs_from_sorted, PfnRun, SourceMemory};
use crate::metrics::{Metrics, Part, PartTimer};
use crate::prepage::StrategySpec;
use crate::records::{
    BeginBody, Cause, Record, RecordReader, RecordType, RecordWriter, MAX_BATCH_PAGES,
    MAX_PFN_LIST, MAX_RUNS,
};
use crate::recovery::{self, Recovery, Watchdog};
use crate::scheduler::{Pacer, PushPolicy, PushStep, Request, Scheduler};
use crate::status::{publish_while, Role, StatusConfig};
use crate::switch::{AutoSwitch, Decision, SwitchRule};
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
    /// Live pre-copy rounds until `rule` says switch
    /// (`--postcopy-after=auto`), then post-copy.
    HybridAuto(SwitchRule),
}

impl Mode {
    /// Xen 4.17's pre-copy defaults (`simple_precopy_policy`).
    pub const XEN_PRECOPY: Mode = Mode::Precopy {
        max_rounds: 5,
        min_dirty: 50,
    };
}

/// Default bound on the wait for READY: the destination answers in
/// milliseconds unless it is gone or stalled.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Longest wait for the destination's READY after the CPU state (zero:
    /// unbounded). Past it the links are closed and the migration aborts
    /// before the switch: the guest resumes here.
    pub ready_timeout: Duration,
    /// Where serving's status goes, if anywhere ([`crate::status`]).
    pub status: Option<StatusConfig>,
    /// Cap on the push's bandwidth in bytes/s (faults exempt).
    pub max_bandwidth: Option<u64>,
    /// Longest pure demand paging before the residual flush
    /// ([`PushPolicy::residual_after`]).
    pub residual_after: Duration,
    /// The fault server's nice value ([`PushPolicy::fault_nice`]).
    pub fault_nice: Option<i32>,
}

impl SourceConfig {
    /// The push policy these settings give.
    pub fn push_policy(&self) -> PushPolicy {
        PushPolicy {
            batch_pages: self.batch_pages,
            idle_flush: self.idle_flush,
            residual_after: self.residual_after,
            max_bandwidth: self.max_bandwidth,
            // Local mode's replies have their own channel.
            window: None,
            // Local mode's destination runs the guest as it switches.
            hold_until_resumed: None,
            fault_nice: self.fault_nice,
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            strategy: StrategySpec::Bubble,
            mode: Mode::Postcopy,
            batch_pages: PushPolicy::LOCAL.batch_pages,
            idle_flush: PushPolicy::LOCAL.idle_flush,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            status: None,
            max_bandwidth: None,
            residual_after: crate::scheduler::DEFAULT_RESIDUAL_AFTER,
            fault_nice: PushPolicy::LOCAL.fault_nice,
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
    /// After the switch: owed pages the destination never confirmed
    /// holding ([`SourceSession::unconfirmed`]); zero before it.
    pub unconfirmed: u64,
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

/// Reads `pfns` from `mem` and writes them as PAGE_DATA records of
/// `cause` (all-zero pages as ZERO records, pfn only), in batches of at
/// most [`MAX_BATCH_PAGES`], counting them in `metrics`. `buf` is scratch
/// space reused across calls. Shared with the Xen glue's phased save.
pub fn send_pages<M: SourceMemory + ?Sized, W: std::io::Write>(
    mem: &M,
    out: &mut RecordWriter<W>,
    pfns: &[Pfn],
    cause: Cause,
    buf: &mut Vec<u8>,
    metrics: &Metrics,
) -> Result<(), Error> {
    // Timed by part after the switch only (per batch, not per page).
    let timed = cause != Cause::Precopy;
    let mut t = Instant::now();
    let mut lap = |part: Part| {
        if timed {
            let now = Instant::now();
            metrics.add_time(part, now - t);
            t = now;
        }
    };
    for chunk in pfns.chunks(MAX_BATCH_PAGES) {
        buf.resize(chunk.len() * PAGE_SIZE, 0);
        mem.read_pages(chunk, buf)?;
        lap(Part::ReadGuest);
        // The data pages are compacted in place at the front of `buf`: no
        // per-batch allocation (a fresh 4 MiB buffer a batch cost a page
        // fault per page, on a host that reclaims freed memory a host
        // fault too) and no copy for a batch without zero pages.
        let mut data_pfns = Vec::with_capacity(chunk.len());
        let mut zero_pfns = Vec::new();
        for (i, pfn) in chunk.iter().enumerate() {
            let at = i * PAGE_SIZE;
            if is_zero_page(&buf[at..at + PAGE_SIZE]) {
                zero_pfns.push(*pfn);
            } else {
                let to = data_pfns.len() * PAGE_SIZE;
                if to != at {
                    buf.copy_within(at..at + PAGE_SIZE, to);
                }
                data_pfns.push(*pfn);
            }
        }
        lap(Part::Encode);
        if !data_pfns.is_empty() {
            out.page_data(cause, &data_pfns, &buf[..data_pfns.len() * PAGE_SIZE])?;
        }
        if !zero_pfns.is_empty() {
            out.pfn_list(RecordType::Zero, &zero_pfns)?;
        }
        lap(Part::Send);
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

/// [`send_pages`] onto a stream other threads share: the pages are read
/// and encoded into `staged` before `bulk`'s lock is taken, so whoever
/// waits for the stream (an in-band fault reply behind the push, or the
/// push behind a reply) waits for a write, never for guest memory reads.
fn send_pages_staged<M: SourceMemory + ?Sized>(
    mem: &M,
    bulk: &Mutex<BulkWriter>,
    pfns: &[Pfn],
    cause: Cause,
    (buf, staged): (&mut Vec<u8>, &mut RecordWriter<Vec<u8>>),
    metrics: &Metrics,
) -> Result<(), Error> {
    staged.get_mut().clear();
    send_pages(mem, staged, pfns, cause, buf, metrics)?;
    let t = Instant::now();
    {
        let mut b = lock(bulk);
        b.append(staged.get_mut())?;
        Metrics::add(&metrics.bytes_sent, b.take_unreported());
    }
    if cause != Cause::Precopy {
        metrics.add_time(Part::Send, t.elapsed());
    }
    Ok(())
}

/// The source's end of the back channel (READY, faults, RESUMED, COMPLETE).
pub type FaultReader = RecordReader<Box<dyn std::io::Read + Send>>;
/// The source's forward stream.
pub type BulkWriter = RecordWriter<Box<dyn std::io::Write + Send>>;

/// Where the source's fault replies go.
pub type Replies = crate::transport::Replies<Box<dyn std::io::Write + Send>>;

/// The ends the serve phase needs besides the forward stream.
pub struct ServeLinks {
    /// The back channel.
    pub fault_rx: FaultReader,
    /// Where replies go.
    pub replies: Replies,
    /// Unblocks every blocked read and write of this connection.
    pub closer: crate::transport::Closer,
}

impl std::fmt::Debug for ServeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeLinks")
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

/// Called with (owed pages claimed so far, owed pages) as serving goes.
pub type ProgressHook = Box<dyn Fn(u64, u64) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourcePhase {
    Begun,
    Switched,
    Served,
    Failed,
}

impl SourcePhase {
    fn name(self) -> &'static str {
        match self {
            SourcePhase::Begun => "begun",
            SourcePhase::Switched => "switched",
            SourcePhase::Served => "served",
            SourcePhase::Failed => "failed",
        }
    }
}

/// The source side of one migration as phases any transport and backend
/// can drive: [`begin`](Self::begin) (BEGIN, then the caller's pre-switch
/// records on [`stream`](Self::stream)) → [`switch`](Self::switch) (the
/// owed set, the CPU state, the READY/TRANSITION handshake) →
/// [`serve`](Self::serve) (faults first, the pre-pager, resends,
/// completion). Local mode ([`run_source_recoverable`]) and the Xen glue
/// both drive these.
pub struct SourceSession {
    stream: Option<BulkWriter>,
    guest_pfns: u64,
    strategy: StrategySpec,
    policy: PushPolicy,
    owed: Vec<PfnRun>,
    stopped_at: Instant,
    phase: SourcePhase,
    progress: Option<ProgressHook>,
    status: Option<StatusConfig>,
    /// Bound on the wait for READY and how to end that wait.
    ready_bound: Option<(Duration, crate::transport::Closer)>,
    /// Owed pages the destination had not confirmed when serving failed.
    unconfirmed: u64,
}

impl std::fmt::Debug for SourceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSession")
            .field("guest_pfns", &self.guest_pfns)
            .field("strategy", &self.strategy)
            .field("policy", &self.policy)
            .field("owed_runs", &self.owed.len())
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl SourceSession {
    /// Phase 1: writes POSTCOPY_BEGIN on `stream`. The caller then writes
    /// its pre-switch records (pre-copy rounds, must-present pages) on
    /// [`stream`](Self::stream).
    pub fn begin(
        stream: Box<dyn std::io::Write + Send>,
        guest_pfns: u64,
        populated_pages: u64,
        strategy: StrategySpec,
        policy: PushPolicy,
    ) -> Result<SourceSession, Error> {
        let mut stream: BulkWriter = RecordWriter::new(stream);
        stream.begin(
            &BeginBody::new(strategy, guest_pfns, populated_pages)
                .with_acks(policy.window.is_some()),
        )?;
        Ok(SourceSession {
            stream: Some(stream),
            guest_pfns,
            strategy,
            policy,
            owed: Vec::new(),
            stopped_at: Instant::now(),
            phase: SourcePhase::Begun,
            progress: None,
            status: None,
            ready_bound: None,
            unconfirmed: 0,
        })
    }

    /// Bounds [`switch`](Self::switch)'s wait for READY by `timeout`
    /// (zero: unbounded): past it `closer` ends the blocked read and the
    /// switch fails with [`Error::Timeout`], before the switch.
    pub fn bound_ready(&mut self, timeout: Duration, closer: crate::transport::Closer) {
        self.ready_bound = (!timeout.is_zero()).then_some((timeout, closer));
    }

    /// After a failed [`serve`](Self::serve): the owed pages the
    /// destination had not confirmed holding (all of them if no recovery
    /// handshake ever told), i.e. the pages the guest may have lost. Zero
    /// otherwise.
    pub fn unconfirmed(&self) -> u64 {
        self.unconfirmed
    }

    /// Reports serving progress to `hook` (e.g. a progress bar).
    pub fn set_progress(&mut self, hook: ProgressHook) {
        self.progress = Some(hook);
    }

    /// Publishes where serving stands through `cfg` ([`crate::status`]).
    pub fn set_status(&mut self, cfg: StatusConfig) {
        self.status = Some(cfg);
    }

    /// The push policy.
    pub fn policy(&self) -> PushPolicy {
        self.policy
    }

    /// The owed runs (after [`switch`](Self::switch)).
    pub fn owed(&self) -> &[PfnRun] {
        &self.owed
    }

    /// When the guest stopped (the start of the downtime).
    pub fn stopped_at(&self) -> Instant {
        self.stopped_at
    }

    /// Records when the guest stopped (default: when the session began).
    pub fn set_stopped_at(&mut self, at: Instant) {
        self.stopped_at = at;
    }

    fn require(&self, want: SourcePhase, call: &'static str) -> Result<(), Error> {
        if self.phase != want || self.stream.is_none() {
            return Err(Error::WrongPhase {
                call,
                phase: self.phase.name(),
                expected: want.name(),
            });
        }
        Ok(())
    }

    /// The forward stream, for the caller's pre-switch records.
    pub fn stream(&mut self) -> Result<&mut BulkWriter, Error> {
        self.require(SourcePhase::Begun, "stream")?;
        // require() saw the stream.
        self.stream.as_mut().ok_or(Error::Aborted)
    }

    /// Phase 2: POSTCOPY_PFNS (`owed`), POSTCOPY_VCPU_STATE (`state`; the
    /// end-of-pre-switch marker), then the destination's READY on `back`
    /// before POSTCOPY_TRANSITION. An ABORT instead is
    /// [`Error::PeerAborted`]: the guest never ran there and may be resumed
    /// here. Sets the source's share of the downtime.
    pub fn switch(
        &mut self,
        owed: Vec<PfnRun>,
        state: &[u8],
        back: &mut FaultReader,
        metrics: &Metrics,
    ) -> Result<(), Error> {
        self.require(SourcePhase::Begun, "switch")?;
        let r = (|| -> Result<(), Error> {
            let stopped_at = self.stopped_at;
            let Some(bulk) = self.stream.as_mut() else {
                return Err(Error::Aborted);
            };
            for chunk in owed.chunks(MAX_RUNS) {
                bulk.runs(RecordType::Pfns, chunk)?;
            }
            bulk.vcpu_state(state)?;
            bulk.flush()?;
            debug!("CPU state sent {:?} after the stop", stopped_at.elapsed());
            // The destination confirms it has everything and is prepared before
            // the guest changes hands: a link or a destination lost before this
            // point leaves the guest here, never in limbo.
            let dog = self
                .ready_bound
                .as_ref()
                .map(|(t, c)| (*t, Watchdog::new(c.clone(), Instant::now() + *t)));
            // An EARLY_DONE the source stopped waiting for (Xen's early
            // page-out, issue #15) may still come first: it says nothing
            // about the switch.
            let mut early_done = true;
            let mut ready = Err(Error::Protocol(String::new()));
            while early_done {
                ready = back.next_record().map_err(|e| match &dog {
                    Some((t, d)) if d.fired() => Error::Timeout {
                        peer: "destination",
                        waiting_for: "READY",
                        after_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
                    },
                    _ => e.into(),
                });
                early_done = matches!(ready, Ok(Record::EarlyDone(_)));
                if early_done {
                    debug!("a late EARLY_DONE before READY");
                }
            }
            drop(dog);
            match ready? {
                Record::Ready => {}
                Record::Abort(reason) => {
                    warn!("destination refused the switch: {reason}");
                    return Err(Error::PeerAborted(reason));
                }
                other => {
                    return Err(crate::records::RecordError::Unexpected {
                        name: other.rtype().name(),
                        state: "while waiting for POSTCOPY_READY",
                    }
                    .into())
                }
            }
            debug!("READY received {:?} after the stop", stopped_at.elapsed());
            bulk.empty(RecordType::Transition)?;
            bulk.flush()?;
            // The source's share of the downtime; RESUMED adds the destination's.
            Metrics::set_duration(&metrics.downtime_us, stopped_at.elapsed());
            self.owed = owed;
            Ok(())
        })();
        self.phase = if r.is_ok() {
            SourcePhase::Switched
        } else {
            SourcePhase::Failed
        };
        r
    }

    /// Phase 3: serves until the destination holds every owed page. With
    /// `recovery`, a link that breaks is re-established through its hook
    /// and serving resumes where it stopped ([`crate::recovery`]).
    /// `history` feeds the `history` pre-pager.
    pub fn serve<M: SourceMemory + ?Sized>(
        &mut self,
        mem: &M,
        links: ServeLinks,
        history: Vec<Pfn>,
        metrics: &Metrics,
        recovery: Option<Recovery<'_, SourceLinks>>,
    ) -> Result<(), Error> {
        self.require(SourcePhase::Switched, "serve")?;
        let Some(bulk) = self.stream.take() else {
            return Err(Error::Aborted);
        };
        let ctx = ServeCtx {
            policy: self.policy,
            strategy: self.strategy,
            stopped_at: self.stopped_at,
            progress: self.progress.as_deref(),
            metrics,
            confirm_timeout: self.ready_bound.as_ref().map(|(t, _)| *t),
        };
        let owed: u64 = self.owed.iter().map(|r| r.count).sum();
        metrics.set_owed_progress(owed, 0);
        let strategy = self.strategy.to_string();
        let mut unconfirmed = 0;
        let r = publish_while(
            self.status.as_ref(),
            Role::Source,
            &strategy,
            metrics,
            || {
                let (r, u) = serve(mem, bulk, links, &self.owed, history, &ctx, recovery);
                unconfirmed = u;
                r
            },
        );
        self.unconfirmed = unconfirmed;
        self.phase = if r.is_ok() {
            SourcePhase::Served
        } else {
            SourcePhase::Failed
        };
        r
    }
}

/// Runs the source side of one migration to completion; any link failure
/// after the switch fails it (see [`run_source_recoverable`]).
pub fn run_source<M: SourceMemory>(
    mem: &mut M,
    links: SourceLinks,
    cfg: &SourceConfig,
    guest: &mut dyn GuestControl,
    metrics: &Metrics,
) -> Result<SourceOutcome, SourceFailure> {
    run_source_recoverable(mem, links, cfg, guest, metrics, None)
}

/// Runs the source side of one migration to completion. With `recovery`,
/// a link that breaks after the switch is re-established through its hook
/// and serving resumes where it stopped ([`crate::recovery`]); without it,
/// or when its timeout passes, the migration fails ([`Error::LinkLost`]).
pub fn run_source_recoverable<M: SourceMemory>(
    mem: &mut M,
    links: SourceLinks,
    cfg: &SourceConfig,
    guest: &mut dyn GuestControl,
    metrics: &Metrics,
    recovery: Option<Recovery<'_, SourceLinks>>,
) -> Result<SourceOutcome, SourceFailure> {
    let start = Instant::now();
    let closer = links.closer.clone();
    let mut fault_rx: FaultReader = RecordReader::new(links.fault_rx, Some(mem.pfn_count()));
    let mut stopped = false;
    let pre = pre_switch(
        mem,
        (links.bulk, &closer),
        &mut fault_rx,
        cfg,
        guest,
        metrics,
        &mut stopped,
    );
    let mut session = match pre {
        Ok(s) => s,
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
                unconfirmed: 0,
            });
        }
    };
    let owed_count: u64 = session.owed().iter().map(|r| r.count).sum();
    let stopped_at = session.stopped_at();
    let history = mem.access_history();
    if let Some(status) = &cfg.status {
        session.set_status(status.clone());
    }
    let result = session.serve(
        &*mem,
        ServeLinks {
            fault_rx,
            replies: Replies::Channel(links.fault_tx),
            closer: closer.clone(),
        },
        history,
        metrics,
        recovery,
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
                unconfirmed: if after_switch {
                    session.unconfirmed()
                } else {
                    0
                },
            })
        }
    }
}

/// Local mode's begin and switch: BEGIN, pre-copy rounds, stop, owed
/// list, state, TRANSITION.
fn pre_switch<M: SourceMemory>(
    mem: &mut M,
    // The forward stream, and what ends a blocked wait on either channel.
    (stream, closer): (Box<dyn std::io::Write + Send>, &crate::transport::Closer),
    fault_rx: &mut FaultReader,
    cfg: &SourceConfig,
    guest: &mut dyn GuestControl,
    metrics: &Metrics,
    stopped: &mut bool,
) -> Result<SourceSession, Error> {
    let n = mem.pfn_count();
    let populated = mem.populated()?;
    let populated_pages: u64 = populated.iter().map(|r| r.count).sum();
    Metrics::add(&metrics.pages_skipped, n - populated_pages.min(n));
    let mut session =
        SourceSession::begin(stream, n, populated_pages, cfg.strategy, cfg.push_policy())?;
    session.bound_ready(cfg.ready_timeout, closer.clone());
    let bulk = session.stream()?;

    let rounds = match cfg.mode {
        Mode::Postcopy => 0,
        Mode::Precopy { max_rounds, .. } => max_rounds.max(1),
        Mode::Hybrid { rounds } => rounds,
        Mode::HybridAuto(rule) => rule.max_rounds.max(1),
    };
    let mut auto = match cfg.mode {
        Mode::HybridAuto(rule) => Some(AutoSwitch::new(rule)),
        _ => None,
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
            let (round_start, sent) = (Instant::now(), to_send.len() as u64);
            send_pages(&*mem, bulk, &to_send, Cause::Precopy, &mut buf, metrics)?;
            for &p in &to_send {
                dest_has.set(usize::try_from(p).unwrap_or(usize::MAX), true);
            }
            Metrics::add(&metrics.precopy_rounds, 1);
            if round + 1 == rounds {
                break;
            }
            let live = crate::memory::runs_to_bits(n, &mem.populated()?);
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
            if let Some(auto) = auto.as_mut() {
                let d = auto.round_done(sent, to_send.len() as u64, round_start.elapsed());
                if d != Decision::Continue {
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
    debug!(
        "populated scan done {:?} after the stop",
        stopped_at.elapsed()
    );
    let live_count: u64 = live_runs.iter().map(|r| r.count).sum();
    let (owed_runs, zeroed): (Vec<PfnRun>, Vec<Pfn>) = if rounds > 0 {
        let live = crate::memory::runs_to_bits(n, &live_runs);
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
        (
            runs_from_sorted(owed_bits.iter_ones().map(|i| i as Pfn)),
            zeroed,
        )
    } else {
        // Pure post-copy: everything populated is owed, already as runs
        // (no per-page work inside the downtime).
        (live_runs, Vec::new())
    };
    metrics
        .pages_skipped
        .store(n - live_count.min(n), Ordering::Relaxed);
    let owed_count: u64 = owed_runs.iter().map(|r| r.count).sum();

    for chunk in zeroed.chunks(MAX_PFN_LIST) {
        bulk.pfn_list(RecordType::Zero, chunk)?;
        Metrics::add(&metrics.pages_zero, chunk.len() as u64);
    }
    let owed_runs = if matches!(cfg.mode, Mode::Precopy { .. }) {
        // Stop-and-copy: everything still owed goes now, in the downtime.
        let owed: Vec<Pfn> = owed_runs.iter().flat_map(|r| r.pfns()).collect();
        send_pages(&*mem, bulk, &owed, Cause::Precopy, &mut buf, metrics)?;
        Vec::new()
    } else {
        owed_runs
    };
    session.set_stopped_at(stopped_at);
    let runs = owed_runs.len();
    session.switch(owed_runs, &state, fault_rx, metrics)?;
    info!(
        "switched: {owed_count} pages owed in {runs} runs, {} zeroed",
        zeroed.len()
    );
    Ok(session)
}

/// Pages to send again after a reconnect: sent before the break, never
/// received. Each is taken exactly once, by the push loop (bulk, ahead of
/// pushes) or by the fault server (when the guest asks for it first).
#[derive(Debug, Default)]
struct Resend {
    bits: BitVec,
    left: u64,
    cursor: usize,
}

impl Resend {
    /// Takes `pfn` if it is waiting to be resent.
    fn take(&mut self, pfn: Pfn) -> bool {
        let i = usize::try_from(pfn).unwrap_or(usize::MAX);
        match self.bits.get_mut(i) {
            Some(mut b) if *b => {
                *b = false;
                self.left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Takes up to `max` waiting pages in pfn order.
    fn take_batch(&mut self, max: usize, out: &mut Vec<Pfn>) {
        while self.left > 0 && out.len() < max {
            let Some(i) = self.bits[self.cursor..]
                .first_one()
                .map(|o| o + self.cursor)
            else {
                break;
            };
            self.bits.set(i, false);
            self.left -= 1;
            self.cursor = i + 1;
            out.push(i as Pfn);
        }
    }
}

/// State shared by the push loop and the fault server; outlives a link.
struct Shared {
    sched: Mutex<Scheduler>,
    resend: Mutex<Resend>,
    /// Fault requests being served right now (the push yields to them).
    outstanding: AtomicU64,
    /// This session failed (reset when a new one starts).
    failed: AtomicBool,
    /// This session's fault server has returned.
    server_done: AtomicBool,
    /// The destination said it resumed the guest.
    resumed: AtomicBool,
    /// Owed pages the destination said it holds at the last handshake.
    confirmed: AtomicU64,
    /// Last fault request arrival, in ms since `epoch`.
    last_fault_ms: AtomicU64,
    epoch: Instant,
    /// Forward-stream bytes the destination said it consumed on this
    /// connection (its ACKs), for the push window.
    acked: AtomicU64,
    /// Signalled when an ACK arrives (the push waits on it).
    ack_seen: std::sync::Condvar,
    ack_lock: Mutex<()>,
}

impl Shared {
    /// Owed pages the destination has not confirmed holding.
    fn unconfirmed(&self) -> u64 {
        lock(&self.sched)
            .owed()
            .saturating_sub(self.confirmed.load(Ordering::SeqCst))
    }
}

/// What every serving thread reads: the session's settings.
struct ServeCtx<'a> {
    policy: PushPolicy,
    strategy: StrategySpec,
    stopped_at: Instant,
    progress: Option<&'a (dyn Fn(u64, u64) + Send + Sync)>,
    metrics: &'a Metrics,
    /// The bound of the wait for the destination's COMPLETE once the push
    /// is complete (the READY bound, [`SourceSession::bound_ready`]): past
    /// it the links are closed, which ends in the recovery window like
    /// any broken link after the switch.
    confirm_timeout: Option<Duration>,
}

fn serve<M: SourceMemory + ?Sized>(
    mem: &M,
    bulk: BulkWriter,
    links: ServeLinks,
    owed: &[PfnRun],
    history: Vec<Pfn>,
    ctx: &ServeCtx<'_>,
    recovery: Option<Recovery<'_, SourceLinks>>,
) -> (Result<(), Error>, u64) {
    let n = mem.pfn_count();
    let prepager = ctx.strategy.build(history);
    let sched = match Scheduler::new(n, owed, prepager) {
        Ok(s) => s,
        Err(e) => return (Err(e.into()), owed.iter().map(|r| r.count).sum()),
    };
    let shared = Shared {
        sched: Mutex::new(sched),
        resend: Mutex::new(Resend::default()),
        outstanding: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        server_done: AtomicBool::new(false),
        resumed: AtomicBool::new(false),
        confirmed: AtomicU64::new(0),
        last_fault_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        acked: AtomicU64::new(0),
        ack_seen: std::sync::Condvar::new(),
        ack_lock: Mutex::new(()),
    };
    let r = serve_recovering(mem, bulk, links, &shared, ctx, recovery);
    let unconfirmed = if r.is_ok() { 0 } else { shared.unconfirmed() };
    (r, unconfirmed)
}

/// Serves on one connection after another: a link that breaks (or a
/// destination that breaks the protocol) is recovered through
/// `recovery`.
fn serve_recovering<M: SourceMemory + ?Sized>(
    mem: &M,
    bulk: BulkWriter,
    links: ServeLinks,
    shared: &Shared,
    ctx: &ServeCtx<'_>,
    mut recovery: Option<Recovery<'_, SourceLinks>>,
) -> Result<(), Error> {
    let metrics = ctx.metrics;
    let ServeLinks {
        mut fault_rx,
        replies,
        mut closer,
    } = links;
    let in_band = matches!(replies, Replies::InBand);
    let mut replies = Some(replies);
    let bulk = Mutex::new(bulk);
    let n = mem.pfn_count();
    let mut peer_faults = 0u32;
    loop {
        shared.failed.store(false, Ordering::SeqCst);
        shared.server_done.store(false, Ordering::SeqCst);
        shared.outstanding.store(0, Ordering::SeqCst);
        shared.acked.store(0, Ordering::SeqCst);
        let r = serve_session(
            mem,
            &bulk,
            (fault_rx, replies.take(), closer.clone()),
            shared,
            ctx,
        );
        Metrics::add(&metrics.bytes_sent, lock(&bulk).take_unreported());
        let error = match r {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        closer();
        let Some(rec) = recovery.as_mut() else {
            return Err(error);
        };
        if !error.is_link_failure() {
            return Err(error);
        }
        if error.is_peer_fault() {
            peer_faults += 1;
            if peer_faults > recovery::MAX_PEER_FAULTS {
                warn!("the destination broke the protocol {peer_faults} times; giving up");
                return Err(error);
            }
        }
        let outage = Instant::now();
        Metrics::add(&metrics.outages, 1);
        if error.is_peer_fault() {
            warn!(
                "the destination broke the protocol after the switch ({error}); link dropped, \
                 recovering for up to {:?}",
                rec.timeout
            );
        } else if shared.resumed.load(Ordering::SeqCst) {
            warn!(
                "link lost after the switch ({error}); recovering for up to {:?}",
                rec.timeout
            );
        } else {
            warn!(
                "link lost after TRANSITION, before the destination confirmed resuming ({error}); \
                 reconnecting for up to {:?} to learn whether it did",
                rec.timeout
            );
        }
        let deadline = outage + rec.timeout;
        let lost = |last: String| Error::LinkLost {
            cause: error.to_string(),
            waited_ms: ms(outage.elapsed()),
            missing: shared.unconfirmed(),
            last,
            resumed: shared.resumed.load(Ordering::SeqCst),
        };
        let (links, rx, received, resent) = loop {
            let links = recovery::reconnect(rec, deadline).map_err(&lost)?;
            let SourceLinks {
                bulk: b,
                fault_rx: frx,
                fault_tx: ftx,
                closer: c,
            } = links;
            let dog = Watchdog::new(c.clone(), deadline);
            let mut rx: FaultReader = RecordReader::new(frx, Some(n));
            let got = recovery::read_received(&mut rx, n)
                .and_then(|received| Ok((plan_resend(shared, n, &received)?, received)));
            drop(dog);
            match got {
                Ok((resent, received)) => break ((b, ftx, c), rx, received, resent),
                Err(e) => {
                    c();
                    if let Error::PeerAborted(why) = &e {
                        if shared.resumed.load(Ordering::SeqCst) {
                            return Err(Error::DestinationFailed {
                                cause: DestinationCause::of_reason(why),
                                reason: format!(
                                    "destination aborted after it said it resumed the guest: {why}"
                                ),
                            });
                        }
                        // The guest never ran there: run_source resumes it.
                        return Err(e);
                    }
                    // A handshake the destination garbled is tried
                    // again, within the same outage.
                    if !e.is_link_failure() {
                        return Err(e);
                    }
                    if Instant::now() >= deadline {
                        return Err(lost(format!("recovery handshake: {e}")));
                    }
                    warn!("recovery handshake failed ({e}); retrying");
                }
            }
        };
        // The destination reconnected: it had resumed the guest.
        shared.resumed.store(true, Ordering::SeqCst);
        shared
            .confirmed
            .store(received.count_ones() as u64, Ordering::SeqCst);
        let (b, ftx, c) = links;
        *lock(&bulk) = RecordWriter::new(b);
        fault_rx = rx;
        replies = Some(if in_band {
            Replies::InBand
        } else {
            Replies::Channel(ftx)
        });
        closer = c;
        let took = outage.elapsed();
        Metrics::add(
            &metrics.outage_us,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
        info!(
            "link restored after {took:?}: destination holds {} pages, {resent} to resend",
            received.count_ones()
        );
    }
}
fn plan_resend(shared: &Shared, n: u64, received: &BitVec) -> Result<u64, Error> {
    let s = lock(&shared.sched);
    let mut rs = lock(&shared.resend);
    let len = usize::try_from(n).unwrap_or(0);
    rs.bits = BitVec::repeat(false, len);
    rs.left = 0;
    rs.cursor = 0;
    for i in 0..len {
        let p = i as Pfn;
        if received[i] {
            if !s.is_claimed(p) {
                return Err(Error::Protocol(format!(
                    "destination claims to hold pfn {p:#x}, which was never sent"
                )));
            }
        } else if s.is_claimed(p) {
            rs.bits.set(i, true);
            rs.left += 1;
        }
    }
    Ok(rs.left)
}

/// The fault server's writer: its own channel, or the forward stream.
enum ReplyTx<'a> {
    Own(BulkWriter),
    InBand(&'a Mutex<BulkWriter>),
}

impl ReplyTx<'_> {
    /// Bytes written since the last call (see
    /// [`RecordWriter::take_unreported`]).
    fn take_unreported(&mut self) -> u64 {
        match self {
            ReplyTx::Own(w) => w.take_unreported(),
            // Counted with the stream's.
            ReplyTx::InBand(_) => 0,
        }
    }
}

/// One connection's worth of serving: the fault server and the push loop,
/// until completion or the first failure.
fn serve_session<M: SourceMemory + ?Sized>(
    mem: &M,
    bulk: &Mutex<BulkWriter>,
    fault: (FaultReader, Option<Replies>, crate::transport::Closer),
    shared: &Shared,
    ctx: &ServeCtx<'_>,
) -> Result<(), Error> {
    let (fault_rx, replies, closer) = fault;
    let tx = match replies {
        Some(Replies::Channel(w)) => ReplyTx::Own(RecordWriter::new(w)),
        Some(Replies::InBand) | None => ReplyTx::InBand(bulk),
    };
    let in_band = matches!(tx, ReplyTx::InBand(_));
    // The window counts this connection's bytes from here on (before any
    // reply): the destination's ACKs count what it read since it began
    // serving on this connection.
    let base = lock(bulk).bytes_written();
    std::thread::scope(|scope| {
        let server = {
            let closer = closer.clone();
            std::thread::Builder::new()
                .name("pc-fault-server".into())
                .spawn_scoped(scope, move || {
                    crate::precedence::fault_thread(ctx.policy.fault_nice, "fault server");
                    let r = fault_server(mem, fault_rx, tx, shared, ctx);
                    shared.server_done.store(true, Ordering::SeqCst);
                    if r.is_err() {
                        shared.failed.store(true, Ordering::SeqCst);
                        closer();
                    }
                    r
                })
                .map_err(|source| Error::Spawn {
                    what: "fault server",
                    source,
                })?
        };
        let pushed = push_loop(mem, bulk, shared, ctx, (in_band, base));
        if let Err(e) = &pushed {
            shared.failed.store(true, Ordering::SeqCst);
            // A dead link ends the fault server by itself, and it may still
            // have the destination's ABORT to read; anything else must
            // unblock it.
            if !e.is_disconnect() {
                closer();
            }
        }
        // The fault server's wait is bounded once the push has ended: if
        // only the bulk link died, 2 s for the destination's word on the
        // fault channel; if everything is sent, the READY bound for its
        // COMPLETE (a silent destination that keeps its sockets open
        // would keep this side forever). Disarmed when the server ends.
        let bound = match &pushed {
            Err(e) if e.is_disconnect() => Some(Duration::from_secs(2)),
            Ok(()) => ctx.confirm_timeout,
            Err(_) => None,
        };
        let dog = bound.map(|b| Watchdog::new(closer.clone(), Instant::now() + b));
        let served = server
            .join()
            .map_err(|_| Error::ThreadPanicked("fault server"))?;
        shared.server_done.store(true, Ordering::SeqCst);
        if let (Some(d), Ok(()), Some(b)) = (&dog, &pushed, bound) {
            if d.fired() {
                warn!("the destination did not confirm the last page within {b:?} after the push completed: links closed");
            }
        }
        drop(dog);
        match (pushed, served) {
            // The destination's word is the root cause of a broken push.
            (_, Err(e @ (Error::PeerAborted(_) | Error::DestinationFailed { .. }))) => Err(e),
            (Err(Error::Aborted), Err(e)) => Err(e),
            // The fault server hung up on a misbehaving peer; the push
            // only saw the closed link.
            (Err(p), Err(e))
                if p.is_recoverable() && !e.is_recoverable() && !matches!(e, Error::Aborted) =>
            {
                Err(e)
            }
            (Err(e), _) => Err(e),
            (Ok(()), r) => r,
        }
    })
}

/// Longest single sleep of a capped push (it re-checks for failure and
/// faults in between).
const PACE_STEP: Duration = Duration::from_millis(10);

/// Longest single wait of a push whose window is full (an ACK ends it
/// sooner; in between it re-checks for failure).
const WINDOW_STEP: Duration = Duration::from_millis(10);
/// How often the push's hold looks for RESUMED
/// ([`PushPolicy::hold_until_resumed`]).
const HOLD_STEP: Duration = Duration::from_millis(5);

/// How long a push waits for an in-band fault reply to take the stream
/// first (bounded: a reply is one record).
const REPLY_FIRST: Duration = Duration::from_millis(20);

fn push_loop<M: SourceMemory + ?Sized>(
    mem: &M,
    bulk: &Mutex<BulkWriter>,
    shared: &Shared,
    ctx: &ServeCtx<'_>,
    // Replies in-band; the stream's byte count when serving began.
    (in_band, base): (bool, u64),
) -> Result<(), Error> {
    let metrics = ctx.metrics;
    let mut buf = Vec::new();
    let mut staged = RecordWriter::new(Vec::new());
    let batch_pages = ctx.policy.batch();
    let mut batch = Vec::with_capacity(batch_pages);
    // Pages lost in flight at a break go first, before any push.
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        batch.clear();
        lock(&shared.resend).take_batch(batch_pages, &mut batch);
        if batch.is_empty() {
            break;
        }
        send_pages_staged(
            mem,
            bulk,
            &batch,
            Cause::Resend,
            (&mut buf, &mut staged),
            metrics,
        )?;
    }
    hold_until_resumed(shared, ctx)?;
    let owed = lock(&shared.sched).owed();
    let mut pacer = Pacer::for_policy(&ctx.policy);
    let batch_bytes = (batch_pages * (PAGE_SIZE + 8) + 16) as u64;
    // The window's wait is bounded: a destination that consumes nothing
    // for this long is stuck or gone (a full window never writes, so it
    // would never see a dead forward link).
    let stuck_after = ctx.confirm_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
    // While the window is full: the ACK count when the wait began or
    // last moved, and when.
    let mut waiting: Option<(u64, Instant)> = None;
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        // The window: wait until the destination has consumed enough that
        // a batch fits, so a fault reply never queues behind more.
        if ctx.policy.window.is_some() {
            let written = lock(bulk).bytes_written().saturating_sub(base);
            let g = lock(&shared.ack_lock);
            let acked = shared.acked.load(Ordering::Acquire);
            let in_flight = written.saturating_sub(acked);
            if !ctx.policy.may_push(in_flight, batch_bytes) {
                let since = match waiting {
                    Some((a, t)) if a == acked => t,
                    _ => waiting.insert((acked, Instant::now())).1,
                };
                if since.elapsed() >= stuck_after {
                    return Err(Error::Timeout {
                        peer: "destination",
                        waiting_for: "ACK of the pushed pages",
                        after_ms: ms(stuck_after),
                    });
                }
                // Bounded: the loop re-checks for failure and faults.
                metrics.timed(Part::Window, || {
                    let _ = shared.ack_seen.wait_timeout(g, WINDOW_STEP);
                });
                continue;
            }
            waiting = None;
        }
        // The bandwidth cap: wait before claiming, so the pages not yet
        // claimed stay free for fault replies (which bypass the cap).
        if let Some(p) = &pacer {
            let w = p.wait(Instant::now());
            if !w.is_zero() {
                metrics.timed(Part::Idle, || std::thread::sleep(w.min(PACE_STEP)));
                continue;
            }
        }
        // Faults first: a reply being written goes ahead of this batch.
        if shared.outstanding.load(Ordering::Acquire) > 0 {
            let _yield = PartTimer::new(metrics, Part::Yield);
            if in_band {
                // Sleep, never spin: on the Xen host dom0's CPUs are few.
                let until = Instant::now() + REPLY_FIRST;
                while shared.outstanding.load(Ordering::Acquire) > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_micros(100));
                }
            } else {
                std::thread::yield_now();
            }
        }
        let (step, unsent) = {
            let _schedule = PartTimer::new(metrics, Part::Schedule);
            let mut s = lock(&shared.sched);
            let quiet_ms = ms(shared.epoch.elapsed())
                .saturating_sub(shared.last_fault_ms.load(Ordering::Relaxed));
            let step = ctx.policy.next_batch(
                &mut s,
                Duration::from_millis(quiet_ms),
                shared.epoch.elapsed(),
                &mut batch,
            );
            (step, s.unsent())
        };
        match step {
            PushStep::Batch => {
                metrics.note_push(shared.epoch.elapsed());
                // In pfn order: the pre-pager's choice stays the same set,
                // but the destination installs it as a few long runs (one
                // UFFDIO_MOVE or hypercall each), not page by page (bubble
                // alternates its two edges).
                batch.sort_unstable();
                let before = metrics.pages_pushed.load(Ordering::Relaxed);
                send_pages_staged(
                    mem,
                    bulk,
                    &batch,
                    Cause::Push,
                    (&mut buf, &mut staged),
                    metrics,
                )?;
                if let Some(p) = &mut pacer {
                    // Page data pushed (a zero page is a pfn, not counted).
                    let pages = metrics
                        .pages_pushed
                        .load(Ordering::Relaxed)
                        .saturating_sub(before);
                    p.sent(pages * crate::PAGE_SIZE as u64);
                }
                metrics.set_owed_progress(owed, owed - unsent);
                if let Some(p) = ctx.progress {
                    p(owed - unsent, owed);
                }
            }
            PushStep::Idle(_) => {
                metrics.timed(Part::Idle, || std::thread::sleep(Duration::from_millis(1)));
            }
            PushStep::Done => break,
        }
    }
    // A reply claimed before the last push is still being written: it
    // goes before COMPLETE (in-band, the destination reads nothing after).
    while shared.outstanding.load(Ordering::Acquire) > 0 {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent = PushPolicy::complete_count(&metrics.snapshot());
    let mut w = lock(bulk);
    w.count(RecordType::Complete, sent)?;
    w.flush()?;
    debug!("push complete");
    Ok(())
}

/// [`PushPolicy::hold_until_resumed`]: waits, at most that long, for the
/// destination's RESUMED before the first push batch (faults are served
/// meanwhile by their own thread; a failure ends the wait).
fn hold_until_resumed(shared: &Shared, ctx: &ServeCtx<'_>) -> Result<(), Error> {
    let Some(max) = ctx.policy.hold_until_resumed else {
        return Ok(());
    };
    if shared.resumed.load(Ordering::SeqCst) {
        return Ok(());
    }
    let t = Instant::now();
    ctx.metrics.timed(Part::Idle, || {
        while !shared.resumed.load(Ordering::SeqCst)
            && !shared.failed.load(Ordering::SeqCst)
            && t.elapsed() < max
        {
            std::thread::sleep(HOLD_STEP);
        }
    });
    if shared.failed.load(Ordering::SeqCst) {
        return Err(Error::Aborted);
    }
    if shared.resumed.load(Ordering::SeqCst) {
        info!(
            "push held {:?} until the destination resumed the guest",
            t.elapsed()
        );
    } else {
        warn!(
            "the destination has not resumed the guest after {:?}: pushing anyway",
            t.elapsed()
        );
    }
    Ok(())
}

/// Requests for pages already sent, per connection, beyond which the
/// destination is flooding (a well-behaved one asks for each pfn at most
/// once per connection).
fn flood_limit(owed: u64) -> u64 {
    owed + MAX_PFN_LIST as u64
}

fn fault_server<M: SourceMemory + ?Sized>(
    mem: &M,
    mut reader: FaultReader,
    mut tx: ReplyTx<'_>,
    shared: &Shared,
    ctx: &ServeCtx<'_>,
) -> Result<(), Error> {
    let metrics = ctx.metrics;
    let mut buf = Vec::new();
    let mut staged = RecordWriter::new(Vec::new());
    let mut redundant = 0u64;
    let limit = flood_limit(lock(&shared.sched).owed());
    let result = loop {
        // The byte counters stay live for the admin's status (the last
        // record's bytes and the replies to it).
        Metrics::add(&metrics.bytes_received, reader.take_unreported());
        Metrics::add(&metrics.bytes_sent, tx.take_unreported());
        let rec = match reader.next_record() {
            Ok(r) => r,
            Err(e) => break Err(e.into()),
        };
        let resumed = shared.resumed.load(Ordering::SeqCst);
        match rec {
            Record::Abort(reason) if !resumed => break Err(Error::PeerAborted(reason)),
            // After RESUMED the guest is the destination's: its failure
            // is reported, and the copy here stays stopped.
            Record::Abort(reason) => {
                warn!("destination failed after the switch: {reason}");
                break Err(Error::destination_failed(reason));
            }
            Record::Resumed(dest_ns) if !resumed => {
                shared.resumed.store(true, Ordering::SeqCst);
                // Downtime = stop → TRANSITION sent (here) + TRANSITION
                // received → vCPUs running (the destination's clock); the
                // one-way trip of TRANSITION itself is not counted.
                Metrics::add(&metrics.downtime_us, dest_ns / 1000);
                info!(
                    "destination resumed the guest ({} µs after TRANSITION); RESUMED seen {:?} after the stop",
                    dest_ns / 1000,
                    ctx.stopped_at.elapsed()
                );
            }
            // Only ever raises the count: a stale or lying ACK can at most
            // let the push run ahead, never stall it.
            Record::Ack(consumed) => {
                let _g = lock(&shared.ack_lock);
                shared.acked.fetch_max(consumed, Ordering::AcqRel);
                shared.ack_seen.notify_all();
            }
            Record::Fault(pfns) => {
                shared.outstanding.fetch_add(1, Ordering::AcqRel);
                let r = match &mut tx {
                    ReplyTx::Own(w) => {
                        serve_fault(mem, w, &pfns, shared, metrics, &mut buf, &mut redundant)
                    }
                    // Read before the stream's lock is taken (the push
                    // may hold it for a write): see send_pages_staged.
                    ReplyTx::InBand(m) => {
                        staged.get_mut().clear();
                        serve_fault(
                            mem,
                            &mut staged,
                            &pfns,
                            shared,
                            metrics,
                            &mut buf,
                            &mut redundant,
                        )
                        .and_then(|()| {
                            let mut w = lock(m);
                            w.append(staged.get_mut())?;
                            w.flush()?;
                            Ok(())
                        })
                    }
                };
                shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                if let Err(e) = r {
                    break Err(e);
                }
                if redundant > limit {
                    break Err(Error::Flood(format!(
                        "{redundant} requests for pages already sent on one connection"
                    )));
                }
            }
            Record::Complete(received) => {
                let s = lock(&shared.sched);
                let resend_left = lock(&shared.resend).left;
                if s.unsent() != 0 || resend_left != 0 || received != s.owed() {
                    break Err(Error::Protocol(format!(
                        "destination reports {received} of {} owed pages complete with {} unsent",
                        s.owed(),
                        s.unsent() + resend_left
                    )));
                }
                drop(s);
                ctx.metrics.set_owed_progress(received, received);
                if let Some(p) = ctx.progress {
                    p(received, received);
                }
                // On its own channel the reply is acknowledged; in-band,
                // the stream after COMPLETE belongs to the caller.
                if let ReplyTx::Own(w) = &mut tx {
                    let acked = w
                        .count(RecordType::Complete, received)
                        .and_then(|()| w.flush());
                    if let Err(e) = acked {
                        break Err(e.into());
                    }
                }
                break Ok(());
            }
            other => {
                break Err(crate::records::RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the fault channel of the source",
                }
                .into())
            }
        }
        if shared.failed.load(Ordering::SeqCst) {
            break Err(Error::Aborted);
        }
    };
    Metrics::add(&metrics.bytes_received, reader.take_unreported());
    Metrics::add(&metrics.bytes_sent, tx.take_unreported());
    result
}

/// Answers one FAULT record: unsent pages and pages waiting to be resent
/// go out now on the fault channel.
fn serve_fault<M: SourceMemory + ?Sized, W: std::io::Write>(
    mem: &M,
    writer: &mut RecordWriter<W>,
    pfns: &[Pfn],
    shared: &Shared,
    metrics: &Metrics,
    buf: &mut Vec<u8>,
    redundant: &mut u64,
) -> Result<(), Error> {
    shared
        .last_fault_ms
        .store(ms(shared.epoch.elapsed()), Ordering::Relaxed);
    Metrics::add(&metrics.network_faults, pfns.len() as u64);
    let mut now = Vec::with_capacity(pfns.len());
    let mut again = Vec::new();
    {
        let mut s = lock(&shared.sched);
        for &p in pfns {
            match s.request(p) {
                Request::Queued => {
                    // Taken back at once: the reply goes out here.
                    if let Some(q) = s.take_urgent() {
                        now.push(q);
                    }
                }
                Request::AlreadySent => {
                    if lock(&shared.resend).take(p) {
                        again.push(p);
                    } else {
                        *redundant += 1;
                        Metrics::add(&metrics.faults_in_flight, 1);
                    }
                }
                Request::NotOwed => {
                    return Err(Error::Protocol(format!(
                        "destination asked for pfn {p:#x}, which it is not owed"
                    )))
                }
            }
        }
    }
    send_pages(mem, writer, &now, Cause::Fault, buf, metrics)?;
    send_pages(mem, writer, &again, Cause::Resend, buf, metrics)?;
    writer.flush()?;
    Ok(())
}
