//! The destination side of a migration.
//!
//! Phases ([`DestSession`]), driven by local mode
//! ([`run_destination_recoverable`]) and by the Xen glue alike: before the
//! switch, [`record`](DestSession::record) stores pre-copied pages and
//! collects the owed pfn list, making those pages absent; the
//! end-of-pre-switch marker ends the phase and [`ready`](DestSession::ready)
//! answers READY;
//! after TRANSITION the guest runs and [`serve`](DestSession::serve) runs
//! these threads:
//!
//! - the **bulk reader** (the caller's thread) installs pushed pages (and,
//!   with [`Replies::InBand`], fault replies);
//! - the **fault forwarder** waits for guest accesses to absent pages and
//!   sends FAULT requests (each page requested once, at most
//!   [`DestConfig::max_outstanding`] at a time; unowed pages are served
//!   locally with a zero page); it also sends RESUMED when the adapter says
//!   the guest runs, and polls the adapter's guest watch ([`ServeHooks`]);
//! - the **reply reader** installs fault replies from their own channel
//!   ([`Replies::Channel`] only).
//!
//! Both readers hand the pages of each record to the backend as one batch
//! ([`DestinationMemory::install_batch`]: on Xen one hypercall for up to
//! 256 pages, zero pages without a copy) as soon as the record is read;
//! nothing waits for a batch to fill.
//!
//! Every page is accepted through one received-map, which turns a page
//! delivered twice or a page never owed into a typed error. The migration
//! completes when every owed page is installed: the destination then sends
//! COMPLETE (on its own channel the source acknowledges it).
//!
//! Before the switch any failure is a clean abort: nothing ran on the
//! destination, and the caller discards what was built. After it, a local
//! failure (memory, the guest watch, threads) is told to the source with
//! ABORT after RESUMED, best effort, so it reports the destination's reason
//! and keeps its copy of the guest stopped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, info, warn};

use crate::error::{Error, HookError};
use crate::memory::{DestinationMemory, FaultOrigin, PageIn};
use crate::metrics::{Metrics, Part};
use crate::prepage::StrategySpec;
use crate::records::{
    BeginBody, Cause, Record, RecordError, RecordReader, RecordType, RecordWriter, Staged,
    MAX_PFN_LIST,
};
use crate::recovery::{self, Recovery, Watchdog};
use crate::status::{publish_while, Role, StatusConfig};
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

/// The guest watch ([`ServeHooks::watch`]) is polled at least this often
/// while serving.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How long a destination that holds every page waits for a source that
/// may have missed its COMPLETE.
const DONE_GRACE: Duration = Duration::from_secs(3);

/// Destination settings.
#[derive(Debug, Clone)]
pub struct DestConfig {
    /// How long the fault forwarder waits per poll (bounds shutdown time;
    /// at most [`WATCH_INTERVAL`]).
    pub fault_poll: Duration,
    /// Most fault requests in flight at once.
    pub max_outstanding: usize,
    /// How long a destination that holds every page waits for the guest
    /// to run ([`ServeHooks::resumed_at`]) before it completes, so that
    /// RESUMED precedes COMPLETE and the source measures the real paused
    /// time (zero: complete at once; RESUMED is then never sent for a
    /// guest still paused).
    pub resume_grace: Duration,
    /// Where serving's status goes, if anywhere ([`crate::status`]).
    pub status: Option<StatusConfig>,
    /// Where the owed set is kept for a replacement destination
    /// ([`crate::takeover`]): written at the end-of-pre-switch marker,
    /// before READY (a failure to write it fails the migration before the
    /// switch), removed when serving completes. `None`: not kept.
    pub owed_file: Option<std::path::PathBuf>,
    /// The nice value of the fault forwarder and the reply reader, so that
    /// a fault's request and its reply are handled as soon as they come,
    /// not after the bulk reader's time slice (`None`: the process's;
    /// [`crate::precedence`]).
    pub fault_nice: Option<i32>,
}

impl Default for DestConfig {
    fn default() -> Self {
        DestConfig {
            fault_poll: Duration::from_millis(20),
            max_outstanding: MAX_OUTSTANDING_FAULTS,
            resume_grace: Duration::ZERO,
            status: None,
            owed_file: None,
            fault_nice: Some(crate::precedence::FAULT_NICE),
        }
    }
}

/// What the adapter tells the serve phase, polled by the fault forwarder.
pub trait ServeHooks: Sync {
    /// When the guest started running here, or `None` while it is still
    /// paused. RESUMED goes to the source (carrying the time since
    /// TRANSITION) once this is `Some`, so the downtime the source measures
    /// is the real paused time. Polled every [`DestConfig::fault_poll`].
    fn resumed_at(&self) -> Option<Instant>;

    /// The guest watch, polled at least every [`WATCH_INTERVAL`]: an error
    /// (e.g. [`Error::GuestDied`]: the guest crashed, rebooted or was shut
    /// down) ends the migration and is told to the source.
    fn watch(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Owed pages installed so far, of `owed`.
    fn progress(&self, _installed: u64, _owed: u64) {}

    /// True only with proof that the guest never ran here and never will
    /// (e.g. a Xen domain destroyed before the toolstack unpaused it, its
    /// vCPUs' run time still zero). A failure is then told to the source
    /// as ABORT without RESUMED, which makes the source resume its own
    /// copy, the guest's latest state: a destination whose toolstack gave
    /// up before running the guest (its devices failed to attach) costs
    /// the migration, not the guest. Without proof (the default) the
    /// source is told the guest may have run here, and keeps its copy
    /// stopped.
    fn never_ran(&self) -> bool {
        false
    }
}

/// What an ABORT's reason ends with when the destination proved the
/// guest never ran there ([`ServeHooks::never_ran`]).
pub const NEVER_RAN: &str = " (the guest never ran on the destination)";

/// Hooks of a guest resumed before serving began (local mode).
#[derive(Debug, Clone, Copy)]
pub struct ResumedAt(pub Instant);

impl ServeHooks for ResumedAt {
    fn resumed_at(&self) -> Option<Instant> {
        Some(self.0)
    }
}

/// Where the destination's fault replies arrive.
pub type Replies = crate::transport::Replies<Box<dyn Read + Send>>;

/// The destination's ends of one connection, for the serve phase.
pub struct ServeLinks {
    /// The forward stream, read record by record.
    pub bulk: RecordReader<Box<dyn Read + Send>>,
    /// Where fault replies arrive.
    pub replies: Replies,
    /// The back channel (FAULT, RESUMED, ABORT, COMPLETE).
    pub back: RecordWriter<Box<dyn Write + Send>>,
    /// Unblocks every blocked read and write of this connection.
    pub closer: Closer,
}

impl std::fmt::Debug for ServeLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeLinks")
            .field("replies", &self.replies)
            .finish_non_exhaustive()
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
    /// Owed pages that never arrived (zero before the switch): the guest
    /// reads them as zero if it runs on.
    pub lost_pages: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn idx(p: Pfn) -> usize {
    usize::try_from(p).unwrap_or(usize::MAX)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What [`DestSession::record`] made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More pre-switch records follow.
    More,
    /// The end-of-pre-switch marker: every owed page is absent now; the
    /// adapter answers with [`DestSession::ready`].
    Switch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestPhase {
    Receiving,
    Prepared,
    Ready,
    Serving,
    Served,
    Failed,
}

impl DestPhase {
    fn name(self) -> &'static str {
        match self {
            DestPhase::Receiving => "receiving",
            DestPhase::Prepared => "prepared",
            DestPhase::Ready => "ready",
            DestPhase::Serving => "serving",
            DestPhase::Served => "served",
            DestPhase::Failed => "failed",
        }
    }
}

/// The destination side of one migration as phases any transport and
/// backend can drive: [`begin`](Self::begin) → [`record`](Self::record)
/// for each record before the switch → [`ready`](Self::ready) →
/// (TRANSITION, the guest runs) → [`serve`](Self::serve).
pub struct DestSession<M> {
    mem: M,
    cfg: DestConfig,
    guest_pfns: u64,
    strategy: Option<StrategySpec>,
    owed_bits: BitVec,
    owed_count: u64,
    state: Vec<u8>,
    phase: DestPhase,
    switch_at: Instant,
    ready_sent: bool,
    abort_sent: bool,
    /// Owed pages not installed when [`serve`](Self::serve) ended.
    unserved: u64,
    /// The source asked for ACKs of the forward stream ([`BEGIN_ACKS`]).
    ///
    /// [`BEGIN_ACKS`]: crate::records::BEGIN_ACKS
    acks: bool,
    /// Made by [`take_over`](Self::take_over): serving starts with the
    /// recovery handshake.
    taken_over: bool,
}

impl<M> std::fmt::Debug for DestSession<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestSession")
            .field("guest_pfns", &self.guest_pfns)
            .field("owed", &self.owed_count)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl<M: DestinationMemory> DestSession<M> {
    /// Phase 1: checks BEGIN against the memory.
    pub fn begin(mem: M, begin: &BeginBody, cfg: DestConfig) -> Result<DestSession<M>, Error> {
        let guest_pfns = begin.guest_pfns.get();
        if guest_pfns != mem.pfn_count() {
            return Err(Error::Protocol(format!(
                "source guest has {guest_pfns} pfns, destination memory has {}",
                mem.pfn_count()
            )));
        }
        let strategy = StrategySpec::from_wire(begin.strategy.get(), begin.strategy_arg.get());
        Ok(DestSession {
            mem,
            cfg,
            guest_pfns,
            strategy,
            owed_bits: BitVec::repeat(false, idx(guest_pfns)),
            owed_count: 0,
            state: Vec::new(),
            phase: DestPhase::Receiving,
            switch_at: Instant::now(),
            ready_sent: false,
            abort_sent: false,
            unserved: 0,
            acks: begin.acks(),
            taken_over: false,
        })
    }

    /// A replacement for a destination that died after the switch
    /// ([`crate::takeover`]): the session of `owed`'s migration, ready to
    /// serve with [`serve_taken_over`](Self::serve_taken_over). `mem`
    /// holds the guest as the dead destination left it; nothing is made
    /// absent here (pages it installed are present, and the backend
    /// refuses them when the source resends them).
    pub fn take_over(
        mem: M,
        owed: &crate::takeover::OwedSet,
        cfg: DestConfig,
    ) -> Result<DestSession<M>, Error> {
        if owed.guest_pfns != mem.pfn_count() {
            return Err(Error::Protocol(format!(
                "the owed set is of a guest of {} pfns, the memory has {}",
                owed.guest_pfns,
                mem.pfn_count()
            )));
        }
        let mut owed_bits: BitVec = BitVec::repeat(false, idx(owed.guest_pfns));
        for run in &owed.runs {
            let (start, end) = (idx(run.start), idx(run.start.saturating_add(run.count)));
            match owed_bits.get_mut(start..end) {
                Some(slice) if slice.not_any() => slice.fill(true),
                _ => {
                    return Err(Error::Protocol(format!(
                        "owed run {:#x}+{} overlaps another or leaves the guest",
                        run.start, run.count
                    )))
                }
            }
        }
        Ok(DestSession {
            mem,
            cfg,
            guest_pfns: owed.guest_pfns,
            strategy: None,
            owed_bits,
            owed_count: owed.count(),
            state: Vec::new(),
            phase: DestPhase::Ready,
            switch_at: Instant::now(),
            ready_sent: true,
            abort_sent: false,
            unserved: 0,
            acks: owed.acks,
            taken_over: true,
        })
    }

    /// The owed set as a replacement destination needs it
    /// ([`crate::takeover`]).
    pub fn owed_set(&self) -> crate::takeover::OwedSet {
        crate::takeover::OwedSet {
            guest_pfns: self.guest_pfns,
            acks: self.acks,
            runs: recovery::runs_of(&self.owed_bits),
        }
    }

    /// Owed pages that [`serve`](Self::serve) did not install: after a
    /// failed serve, the pages the guest lost (zero before serving and
    /// after a complete one).
    pub fn unserved(&self) -> u64 {
        self.unserved
    }

    /// The memory backend.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Guest size in pfns.
    pub fn guest_pfns(&self) -> u64 {
        self.guest_pfns
    }

    /// The strategy the source announced (None if unknown here).
    pub fn strategy(&self) -> Option<StrategySpec> {
        self.strategy
    }

    /// Pages owed so far.
    pub fn owed_count(&self) -> u64 {
        self.owed_count
    }

    /// The CPU state of the end-of-pre-switch marker.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Replaces the settings (before serving).
    pub fn set_config(&mut self, cfg: DestConfig) {
        self.cfg = cfg;
    }

    /// Sets [`DestConfig::owed_file`] alone.
    pub fn set_owed_file(&mut self, path: Option<std::path::PathBuf>) {
        self.cfg.owed_file = path;
    }

    /// True once READY went to the source.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    fn require(&self, want: DestPhase, call: &'static str) -> Result<(), Error> {
        if self.phase != want {
            return Err(Error::WrongPhase {
                call,
                phase: self.phase.name(),
                expected: want.name(),
            });
        }
        Ok(())
    }

    fn is_owed(&self, p: Pfn) -> bool {
        self.owed_bits.get(idx(p)).is_some_and(|b| *b)
    }

    /// Phase 2: one record before the switch. Pre-copied pages and zero
    /// pages are written, POSTCOPY_PFNS extend the owed set and make its
    /// pages absent, and the end-of-pre-switch marker (VCPU_STATE) ends the
    /// phase.
    pub fn record(&mut self, rec: Record<'_>, metrics: &Metrics) -> Result<Step, Error> {
        self.require(DestPhase::Receiving, "record")?;
        let r = self.record_inner(rec, metrics);
        // A rejected record leaves the session as it was (the caller
        // decides whether to abort).
        if let Ok(Step::Switch) = r {
            if let Some(path) = &self.cfg.owed_file {
                self.owed_set().write(path).map_err(|e| {
                    Error::Memory(crate::memory::MemoryError::os(
                        "keep the owed set for a replacement destination",
                        e,
                    ))
                })?;
                debug!("owed set kept in {}", path.display());
            }
            self.phase = DestPhase::Prepared;
        }
        r
    }

    fn record_inner(&mut self, rec: Record<'_>, metrics: &Metrics) -> Result<Step, Error> {
        match rec {
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
                Metrics::add(&metrics.pages_precopy, pfns.len() as u64);
            }
            Record::Zero(pfns) => {
                if let Some(&p) = pfns.iter().find(|&&p| self.is_owed(p)) {
                    return Err(Error::Protocol(format!(
                        "zero page {p:#x} sent before the switch is already owed"
                    )));
                }
                let zeros = vec![0u8; pfns.len() * PAGE_SIZE];
                self.mem.write_pages(&pfns, &zeros)?;
                Metrics::add(&metrics.pages_zero, pfns.len() as u64);
            }
            Record::Pfns(runs) => {
                for run in &runs {
                    // Runs are validated against the guest size already.
                    let (start, end) = (idx(run.start), idx(run.start + run.count));
                    let slice = &mut self.owed_bits[start..end];
                    if let Some(i) = slice.first_one() {
                        return Err(RecordError::DuplicatePfn {
                            name: RecordType::Pfns.name(),
                            pfn: run.start + i as u64,
                        }
                        .into());
                    }
                    slice.fill(true);
                }
                // Absent from now on (on Xen, paging must start while the
                // ring pfn set by HVM_PARAMS is fresh).
                self.mem.mark_absent(&runs)?;
                self.owed_count += runs.iter().map(|r| r.count).sum::<u64>();
                debug!("{} pfns owed so far", self.owed_count);
            }
            Record::VcpuState(state) => {
                // The last record before the switch.
                self.state = state.to_vec();
                if self.owed_count == 0 {
                    // Nothing owed: the backend still gets ready to serve.
                    self.mem.mark_absent(&[])?;
                }
                return Ok(Step::Switch);
            }
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "before POSTCOPY_VCPU_STATE",
                }
                .into())
            }
        }
        Ok(Step::More)
    }

    /// Answers the marker with READY on the back channel.
    pub fn ready<W: Write>(&mut self, back: &mut RecordWriter<W>) -> Result<(), Error> {
        self.require(DestPhase::Prepared, "ready")?;
        let sent = back.empty(RecordType::Ready).and_then(|()| back.flush());
        if let Err(e) = sent {
            self.phase = DestPhase::Failed;
            return Err(e.into());
        }
        self.phase = DestPhase::Ready;
        self.ready_sent = true;
        self.switch_at = Instant::now();
        Ok(())
    }

    /// TRANSITION arrived (the downtime here counts from now; without this
    /// call, from READY).
    pub fn transitioned(&mut self) {
        self.switch_at = Instant::now();
    }

    /// When TRANSITION arrived (or READY went out).
    pub fn switch_at(&self) -> Instant {
        self.switch_at
    }

    /// Before READY: tells the source, best effort and once, that the
    /// guest never ran here (it may resume its own). After READY it does
    /// nothing: only [`serve`](Self::serve) speaks then.
    pub fn abort<W: Write>(&mut self, back: &mut RecordWriter<W>, reason: &str) {
        if self.abort_sent || self.ready_sent {
            return;
        }
        self.abort_sent = true;
        self.phase = DestPhase::Failed;
        match back.abort(reason).and_then(|()| back.flush()) {
            Ok(()) => info!("post-copy destination: sent ABORT ({reason})"),
            Err(e) => debug!("could not send ABORT: {e}"),
        }
    }
}

impl<M: DestinationMemory> DestSession<M> {
    /// Publishes where serving stands through `cfg` ([`crate::status`]).
    pub fn set_status(&mut self, cfg: StatusConfig) {
        self.cfg.status = Some(cfg);
    }

    /// Phase 3, once the guest runs (or is about to: see
    /// [`ServeHooks::resumed_at`]): forwards its faults, installs every
    /// owed page, and completes. With `recovery`, a link that breaks
    /// leaves the guest running (its accesses to absent pages wait) while
    /// the hook gets fresh links; the received-map then tells the source
    /// what to resend, and pending faults are asked for again
    /// ([`crate::recovery`]).
    pub fn serve(
        &mut self,
        links: ServeLinks,
        hooks: &dyn ServeHooks,
        metrics: &Metrics,
        recovery: Option<Recovery<'_, DestLinks>>,
    ) -> Result<(), Error> {
        if self.taken_over {
            return Err(Error::WrongPhase {
                call: "serve",
                phase: "taken over",
                expected: "ready (a replacement serves with serve_taken_over)",
            });
        }
        self.serve_from(Ok(links), hooks, metrics, recovery)
    }

    /// Phase 3 of a replacement ([`take_over`](Self::take_over)): the
    /// first links come from `recovery`'s hook, and the RECOVER handshake
    /// on them lists no page, so the source resends every page it sent
    /// and pushes the rest; then serving goes on as [`serve`](Self::serve)
    /// does. `in_band`: the source sends fault replies on the bulk stream
    /// (as the dead destination had them: on Xen without the fault lane),
    /// not on their own channel. Fails with [`Error::LinkLost`] if no
    /// source comes within the recovery timeout.
    pub fn serve_taken_over(
        &mut self,
        hooks: &dyn ServeHooks,
        metrics: &Metrics,
        recovery: Recovery<'_, DestLinks>,
        in_band: bool,
    ) -> Result<(), Error> {
        if !self.taken_over {
            return Err(Error::WrongPhase {
                call: "serve_taken_over",
                phase: self.phase.name(),
                expected: "taken over",
            });
        }
        self.serve_from(Err(in_band), hooks, metrics, Some(recovery))
    }

    /// `links`: the first links, or (a replacement) whether replies
    /// come in-band on the links recovery brings.
    fn serve_from(
        &mut self,
        links: Result<ServeLinks, bool>,
        hooks: &dyn ServeHooks,
        metrics: &Metrics,
        recovery: Option<Recovery<'_, DestLinks>>,
    ) -> Result<(), Error> {
        self.require(DestPhase::Ready, "serve")?;
        self.phase = DestPhase::Serving;
        metrics.set_owed_progress(self.owed_count, 0);
        let strategy = self.strategy.map(|s| s.to_string()).unwrap_or_default();
        let mut unserved = self.owed_count;
        let status = self.cfg.status.clone();
        let result = publish_while(
            status.as_ref(),
            Role::Destination,
            &strategy,
            metrics,
            || {
                let (r, u) = self.serve_inner(links, hooks, metrics, recovery);
                unserved = u;
                r
            },
        );
        self.unserved = unserved;
        self.phase = if result.is_ok() {
            DestPhase::Served
        } else {
            DestPhase::Failed
        };
        // Every page is in: nothing is left for a replacement to take over.
        if let (Ok(()), Some(path)) = (&result, &self.cfg.owed_file) {
            if let Err(e) = std::fs::remove_file(path) {
                debug!("could not remove {}: {e}", path.display());
            }
        }
        result
    }

    fn serve_inner(
        &self,
        links: Result<ServeLinks, bool>,
        hooks: &dyn ServeHooks,
        metrics: &Metrics,
        mut recovery: Option<Recovery<'_, DestLinks>>,
    ) -> (Result<(), Error>, u64) {
        let nothing: Closer = std::sync::Arc::new(|| {});
        let shared = Shared {
            mem: &self.mem,
            owed_bits: &self.owed_bits,
            owed: self.owed_count,
            received: Mutex::new(BitVec::repeat(false, idx(self.guest_pfns))),
            remaining: Mutex::new(self.owed_count),
            all_in: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            failed: AtomicBool::new(false),
            done: AtomicBool::new(false),
            resumed_sent: AtomicBool::new(false),
            told: AtomicBool::new(false),
            in_band: match &links {
                Ok(l) => matches!(l.replies, Replies::InBand),
                Err(in_band) => *in_band,
            },
            acks: self.acks,
            taken_over: self.taken_over,
            switch_at: self.switch_at,
            hooks,
            cfg: &self.cfg,
            metrics,
            closer: Mutex::new(links.as_ref().map_or(nothing, |l| l.closer.clone())),
        };
        let mut link = match links {
            Ok(links) => SessionLinks {
                bulk: links.bulk,
                replies: links.replies,
                fault_tx: links.back,
                closer: links.closer,
            },
            Err(_) => {
                let Some(rec) = recovery.as_mut() else {
                    return (
                        Err(Error::WrongPhase {
                            call: "serve",
                            phase: "taken over",
                            expected: "a recovery hook to reach the source",
                        }),
                        self.owed_count,
                    );
                };
                let died = Error::Record(RecordError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the previous destination died after the switch; a replacement took over",
                )));
                match recover(&shared, rec, self.guest_pfns, &died) {
                    Ok(l) => l,
                    Err(e) => return (Err(e), self.owed_count),
                }
            }
        };
        let mut sessions = u32::from(self.taken_over);
        let mut peer_faults = 0u32;
        let result = loop {
            let r = run_session(&shared, link, self.guest_pfns, sessions > 0);
            sessions += 1;
            let error = match r {
                Ok(()) => break Ok(()),
                Err(e) => e,
            };
            let Some(rec) = recovery.as_mut() else {
                break Err(error);
            };
            if !error.is_link_failure() {
                break Err(error);
            }
            if error.is_peer_fault() {
                peer_faults += 1;
                if peer_faults > recovery::MAX_PEER_FAULTS {
                    warn!("the source broke the protocol {peer_faults} times; giving up");
                    break Err(error);
                }
            }
            // Everything is in and COMPLETE went out: only the source's
            // acknowledgement can be missing, so wait briefly for a source
            // that did not see our COMPLETE, then finish.
            let saved = rec.timeout;
            if shared.done.load(Ordering::SeqCst) && *lock(&shared.remaining) == 0 {
                rec.timeout = rec.timeout.min(DONE_GRACE);
            }
            let restored = recover(&shared, rec, self.guest_pfns, &error);
            rec.timeout = saved;
            match restored {
                Ok(l) => link = l,
                Err(e) => break Err(e),
            }
        };
        let remaining = *lock(&shared.remaining);
        let result = match result {
            Ok(()) => Ok(()),
            // Every page is here: only the source's acknowledgement was lost.
            Err(Error::LinkLost { .. }) if remaining == 0 => {
                warn!("every page arrived; the source's final acknowledgement did not");
                Ok(())
            }
            Err(error) => {
                (lock(&shared.closer))();
                Err(error)
            }
        };
        (result, remaining)
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

/// Runs the destination side of one migration to completion: the phases
/// of [`DestSession`] over local mode's two channels. With `recovery`, a
/// link that breaks after the switch is re-established
/// ([`DestSession::serve`]).
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
        lost_pages: 0,
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
    let prepared = (|| -> Result<DestSession<&M>, Error> {
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
        let mut session = DestSession::begin(mem, &begin, cfg.clone())?;
        while session.record(bulk.next_record()?, metrics)? == Step::More {}
        session.ready(&mut fault_tx)?;
        ready_sent = true;
        match bulk.next_record()? {
            Record::Transition => session.transitioned(),
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "after POSTCOPY_READY (expected TRANSITION)",
                }
                .into())
            }
        }
        Ok(session)
    })();
    let mut session = match prepared {
        Ok(s) => s,
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
    let owed_count = session.owed_count();
    if let Err(source) = guest.resume(session.state()) {
        return Err(abort(
            &mut fault_tx,
            Error::Guest {
                what: "resume the guest",
                source,
            },
        ));
    }
    let resumed_at = Instant::now();
    info!("guest resumed; {owed_count} pages owed");
    let result = session.serve(
        ServeLinks {
            bulk,
            replies: Replies::Channel(links.fault_rx),
            back: fault_tx,
            closer,
        },
        &ResumedAt(resumed_at),
        metrics,
        recovery,
    );
    Metrics::set_duration(&metrics.total_time_us, start.elapsed());
    Metrics::set_duration(&metrics.postcopy_time_us, resumed_at.elapsed());
    match result {
        Ok(()) => Ok(DestOutcome {
            guest_pfns: session.guest_pfns(),
            strategy: session.strategy(),
            owed: owed_count,
            resumed_at,
        }),
        Err(error) => Err(DestFailure {
            error,
            after_switch: true,
            lost_pages: session.unserved(),
        }),
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

/// The pages of one accepted record.
enum Pages<'a> {
    /// In the reader's buffer.
    Data(&'a [u8]),
    /// In memory the backend lent ([`DestinationMemory::staging`]).
    Staged(&'a mut [u8]),
    /// ZERO: no data.
    Zero,
}

/// `[i, j)` index ranges of `pfns` that are runs of consecutive pfns.
fn consecutive_runs(pfns: &[Pfn]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < pfns.len() {
        let mut j = i + 1;
        while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 {
            j += 1;
        }
        runs.push((i, j));
        i = j;
    }
    runs
}

/// Bookkeeping shared by the post-switch threads.
struct Shared<'m, M: ?Sized> {
    mem: &'m M,
    owed_bits: &'m BitVec,
    owed: u64,
    received: Mutex<BitVec>,
    remaining: Mutex<u64>,
    all_in: Condvar,
    /// Faults sent to the source and not yet satisfied: pfn → when seen.
    pending: Mutex<HashMap<Pfn, (Instant, FaultOrigin)>>,
    failed: AtomicBool,
    done: AtomicBool,
    /// RESUMED went to the source (or a reconnect told it as much).
    resumed_sent: AtomicBool,
    /// A local failure was told to the source.
    told: AtomicBool,
    in_band: bool,
    /// ACK what the bulk reader consumed, after each record.
    acks: bool,
    /// A replacement ([`DestSession::take_over`]).
    taken_over: bool,
    switch_at: Instant,
    hooks: &'m dyn ServeHooks,
    cfg: &'m DestConfig,
    metrics: &'m Metrics,
    /// The current connection's closer.
    closer: Mutex<Closer>,
}

impl<M: DestinationMemory + ?Sized> Shared<'_, M> {
    fn is_owed(&self, pfn: Pfn) -> bool {
        self.owed_bits.get(idx(pfn)).is_some_and(|b| *b)
    }

    /// Accepts and installs `pfns` with their pages.
    fn accept(&self, pfns: &[Pfn], data: Pages<'_>) -> Result<(), Error> {
        let t_check = Instant::now();
        {
            let mut rx = lock(&self.received);
            // Checked in full before any is marked: a rejected record
            // leaves the received-map as it was, so that after a
            // recovery the source resends all of it.
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
            }
            // The decoder checks that the pfns are distinct; a repeat
            // all the same undoes this record's marks.
            for (i, &p) in pfns.iter().enumerate() {
                if rx[idx(p)] {
                    for &q in &pfns[..i] {
                        rx.set(idx(q), false);
                    }
                    return Err(RecordError::DuplicatePfn {
                        name: RecordType::PageData.name(),
                        pfn: p,
                    }
                    .into());
                }
                rx.set(idx(p), true);
            }
        }
        // What the record carried goes to the backend as one batch (runs
        // of consecutive pfns as one entry each), at once: a batch never
        // waits for more input, so a fault reply is installed as soon as
        // its record is read. Pages read into the backend's staging memory
        // go run by run to `install_staged` (no copy).
        let runs = consecutive_runs(pfns);
        let (installed, now) = match data {
            Pages::Data(data) => {
                let batch: Vec<(Pfn, PageIn<'_>)> = runs
                    .iter()
                    .map(|&(i, j)| (pfns[i], PageIn::Data(&data[i * PAGE_SIZE..j * PAGE_SIZE])))
                    .collect();
                self.timed_install(t_check, || self.mem.install_batch(&batch))
            }
            Pages::Zero => {
                let batch: Vec<(Pfn, PageIn<'_>)> =
                    pfns.iter().map(|&p| (p, PageIn::Zero)).collect();
                self.timed_install(t_check, || self.mem.install_batch(&batch))
            }
            Pages::Staged(data) => self.timed_install(t_check, || {
                let mut rest = data;
                for &(i, j) in &runs {
                    let (run, tail) = rest.split_at_mut((j - i) * PAGE_SIZE);
                    rest = tail;
                    self.mem.install_staged(pfns[i], run)?;
                }
                Ok(())
            }),
        };
        installed?;
        {
            let mut pending = lock(&self.pending);
            for p in pfns {
                if let Some((at, origin)) = pending.remove(p) {
                    self.metrics.record_fault_latency(now - at);
                    self.metrics.record_block(origin, now - at);
                }
            }
        }
        let mut left = lock(&self.remaining);
        *left -= pfns.len() as u64;
        self.metrics.set_owed_progress(self.owed, self.owed - *left);
        self.hooks.progress(self.owed - *left, self.owed);
        if *left == 0 {
            self.all_in.notify_all();
        }
        drop(left);
        self.metrics.add_time(Part::Bookkeeping, now.elapsed());
        Ok(())
    }

    /// Runs `install` (timed as [`Part::Install`]) after the bookkeeping
    /// begun at `t_check`; returns its result and when it ended.
    fn timed_install(
        &self,
        t_check: Instant,
        install: impl FnOnce() -> crate::memory::MemResult<()>,
    ) -> (crate::memory::MemResult<()>, Instant) {
        let t_install = Instant::now();
        self.metrics
            .add_time(Part::Bookkeeping, t_install - t_check);
        let cpu0 = Metrics::thread_cpu_now();
        let installed = install();
        let now = Instant::now();
        self.metrics.add_time(Part::Install, now - t_install);
        self.metrics
            .add_install_cpu(Metrics::thread_cpu_now().saturating_sub(cpu0));
        (installed, now)
    }

    /// Sends RESUMED once the adapter says the guest runs.
    fn send_resumed<W: Write>(&self, tx: &Mutex<RecordWriter<W>>) -> Result<(), Error> {
        if self.resumed_sent.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(at) = self.hooks.resumed_at() else {
            return Ok(());
        };
        let paused = at.saturating_duration_since(self.switch_at);
        // Checked again under the writer's lock: the bulk reader may send
        // it too, at the end.
        let mut w = lock(tx);
        if self.resumed_sent.load(Ordering::SeqCst) {
            return Ok(());
        }
        Metrics::set_duration(&self.metrics.downtime_us, paused);
        w.count(RecordType::Resumed, ns(paused))?;
        w.flush()?;
        self.resumed_sent.store(true, Ordering::SeqCst);
        debug!("RESUMED sent: the guest ran {paused:?} after the switch");
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

    /// [`Self::fail`], first telling the source about a local failure
    /// (best effort, once): RESUMED if it has not gone out yet (the guest
    /// may be running here, so the source must not resume its copy), then
    /// ABORT with the reason. When the adapter proves the guest never ran
    /// here ([`ServeHooks::never_ran`]) and RESUMED has not gone out, ABORT
    /// alone: the source resumes its copy.
    fn fail_with<W: Write>(&self, e: &Error, tx: &Mutex<RecordWriter<W>>) {
        if e.is_local() && !self.told.swap(true, Ordering::SeqCst) {
            let guard = match tx.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                // A writer is stuck on the link: nobody would hear it.
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut w) = guard {
                let mut said = Ok(());
                let mut why = e.to_string();
                if !self.resumed_sent.load(Ordering::SeqCst) && self.hooks.never_ran() {
                    why.push_str(NEVER_RAN);
                    warn!("the guest never ran here: the source may resume its copy");
                } else if !self.resumed_sent.swap(true, Ordering::SeqCst) {
                    said = w.count(RecordType::Resumed, ns(self.switch_at.elapsed()));
                }
                let said = said.and_then(|()| w.abort(&why)).and_then(|()| w.flush());
                match said {
                    Ok(()) => info!("told the source: {e}"),
                    Err(io) => debug!("could not tell the source ({e}): {io}"),
                }
            }
        }
        self.fail();
    }
}

/// The destination's ends of one connection.
struct SessionLinks {
    bulk: RecordReader<Box<dyn Read + Send>>,
    replies: Replies,
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
    let what = if shared.taken_over && shared.metrics.outages.load(Ordering::SeqCst) == 1 {
        "a replacement destination takes over"
    } else if error.is_peer_fault() {
        "the source broke the protocol after the switch; link dropped"
    } else {
        "link lost after the switch"
    };
    warn!(
        "{what} ({error}); waiting up to {:?} for the source (the guest's accesses to absent pages wait)",
        rec.timeout
    );
    let deadline = outage + rec.timeout;
    let lost = |last: String| Error::LinkLost {
        cause: error.to_string(),
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
                // The reconnect tells the source the guest runs here.
                shared.resumed_sent.store(true, Ordering::SeqCst);
                let took = outage.elapsed();
                Metrics::add(
                    &shared.metrics.outage_us,
                    u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                );
                let (waiting, longest) = {
                    let pending = lock(&shared.pending);
                    let now = Instant::now();
                    let longest = pending.values().map(|&(at, _)| now - at).max();
                    (pending.len(), longest.unwrap_or_default())
                };
                info!(
                    "link restored after {took:?}; {} pages still owed; {waiting} vCPU faults \
                     waited through the outage (longest {longest:?}) and are asked for again",
                    *lock(&shared.remaining),
                );
                return Ok(SessionLinks {
                    bulk: RecordReader::new(links.bulk, Some(guest_pfns)),
                    replies: if shared.in_band {
                        Replies::InBand
                    } else {
                        Replies::Channel(links.fault_rx)
                    },
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

/// One connection's worth of the post-switch threads, until completion or
/// the first failure.
fn run_session<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    link: SessionLinks,
    guest_pfns: u64,
    rerequest: bool,
) -> Result<(), Error> {
    let SessionLinks {
        mut bulk,
        replies,
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
                crate::precedence::fault_thread(shared.cfg.fault_nice, "fault forwarder");
                let r = if rerequest {
                    rerequest_pending(shared, &fault_tx)
                } else {
                    Ok(())
                }
                .and_then(|()| forward_faults(shared, &fault_tx));
                if let Err(e) = &r {
                    shared.fail_with(e, &fault_tx);
                }
                r
            })
            .map_err(|source| Error::Spawn {
                what: "fault forwarder",
                source,
            })?;
        let replies = match replies {
            Replies::Channel(rx) => {
                let fault_tx = &fault_tx;
                let spawned = std::thread::Builder::new()
                    .name("pc-fault-rx".into())
                    .spawn_scoped(scope, move || {
                        crate::precedence::fault_thread(
                            shared.cfg.fault_nice,
                            "fault reply reader",
                        );
                        let r = read_replies(shared, rx, guest_pfns);
                        if let Err(e) = &r {
                            shared.fail_with(e, fault_tx);
                        }
                        r
                    });
                match spawned {
                    Ok(h) => Some(h),
                    Err(source) => {
                        // The forwarder must not outlive this.
                        shared.fail();
                        return Err(Error::Spawn {
                            what: "fault reply reader",
                            source,
                        });
                    }
                }
            }
            Replies::InBand => None,
        };
        let bulk_result =
            read_bulk(shared, &mut bulk, &fault_tx).and_then(|()| finish(shared, &fault_tx));
        if let Err(e) = &bulk_result {
            shared.fail_with(e, &fault_tx);
        }
        let fwd = forwarder
            .join()
            .map_err(|_| Error::ThreadPanicked("fault forwarder"))?;
        let rep = match replies {
            Some(h) => h
                .join()
                .map_err(|_| Error::ThreadPanicked("fault reply reader"))?,
            None => Ok(()),
        };
        if let (Err(_), Err(e)) = (&fwd, &rep) {
            debug!("fault forwarder and reply reader both failed; reply reader: {e}");
        }
        first_real_error([bulk_result, rep, fwd])
    });
    Metrics::add(&shared.metrics.bytes_received, bulk.take_unreported());
    Metrics::add(
        &shared.metrics.bytes_sent,
        lock(&fault_tx).take_unreported(),
    );
    result
}

/// After the source's COMPLETE: waits for fault replies still on their
/// way (their own channel), lets the backend answer requests that raced
/// with the last installs, and sends COMPLETE.
fn finish<M: DestinationMemory + ?Sized, W: Write>(
    shared: &Shared<'_, M>,
    fault_tx: &Mutex<RecordWriter<W>>,
) -> Result<(), Error> {
    {
        let mut left = lock(&shared.remaining);
        while *left > 0 && !shared.failed.load(Ordering::SeqCst) {
            left = shared.all_in.wait(left).unwrap_or_else(|e| e.into_inner());
        }
        if *left > 0 {
            return Err(Error::Aborted);
        }
    }
    shared.mem.settle()?;
    // The watch's last look: a guest that died before this is a failed
    // migration whatever the stream did.
    shared.hooks.watch()?;
    wait_resumed(shared)?;
    // A guest that never ran still gets its RESUMED before the end.
    shared.send_resumed(fault_tx)?;
    // Set before COMPLETE goes out: the acknowledgement may come back
    // before this thread runs again.
    shared.done.store(true, Ordering::SeqCst);
    let mut tx = lock(fault_tx);
    tx.count(RecordType::Complete, shared.owed)?;
    tx.flush()?;
    Ok(())
}

/// Every page is in: waits up to [`DestConfig::resume_grace`] for the
/// guest to run, watching it meanwhile (a guest that dies while still
/// paused fails the migration all the same).
fn wait_resumed<M: DestinationMemory + ?Sized>(shared: &Shared<'_, M>) -> Result<(), Error> {
    let grace = shared.cfg.resume_grace;
    if grace.is_zero() || shared.resumed_sent.load(Ordering::SeqCst) {
        return Ok(());
    }
    let poll = shared.cfg.fault_poll.min(WATCH_INTERVAL);
    let until = Instant::now() + grace;
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        shared.hooks.watch()?;
        if shared.hooks.resumed_at().is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= until {
            info!(
                "the guest stayed paused {grace:?} after the last page; completing without RESUMED"
            );
            return Ok(());
        }
        std::thread::sleep(poll.min(until - now));
    }
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

/// The root cause among the threads' results: a local failure first (the
/// others only saw the links it closed), then the first error that is not
/// merely [`Error::Aborted`] (a consequence).
fn first_real_error<const N: usize>(results: [Result<(), Error>; N]) -> Result<(), Error> {
    let mut aborted = false;
    let mut first = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(Error::Aborted) => aborted = true,
            Err(e) if e.is_local() => return Err(e),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None if aborted => Err(Error::Aborted),
        None => Ok(()),
    }
}

fn read_bulk<M: DestinationMemory + ?Sized, R: Read, W: Write>(
    shared: &Shared<'_, M>,
    bulk: &mut RecordReader<R>,
    fault_tx: &Mutex<RecordWriter<W>>,
) -> Result<(), Error> {
    // ACKs count from here: the source counts its bytes from the start
    // of its serve phase on this connection.
    let base = bulk.bytes_read();
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        // Live for the admin's status: the last record's bytes.
        Metrics::add(&shared.metrics.bytes_received, bulk.take_unreported());
        let t0 = Instant::now();
        let (rec, wire) = bulk.next_record_staged(|n| shared.mem.staging(n));
        shared.metrics.add_time(Part::Wire, wire);
        shared
            .metrics
            .add_time(Part::Decode, t0.elapsed().saturating_sub(wire));
        let rec = match rec? {
            Staged::Pages { cause, pfns, data } => {
                accept_bulk(shared, cause, &pfns, Pages::Staged(data))?;
                continue;
            }
            Staged::Record(rec) => rec,
        };
        match rec {
            Record::PageData { cause, pfns, data } => {
                accept_bulk(shared, cause, &pfns, Pages::Data(data))?;
            }
            Record::Zero(pfns) => {
                shared.accept(&pfns, Pages::Zero)?;
                Metrics::add(&shared.metrics.pages_zero, pfns.len() as u64);
            }
            Record::Complete(sent) => {
                // In-band, every reply came before COMPLETE.
                let left = *lock(&shared.remaining);
                if shared.in_band && left != 0 {
                    return Err(Error::Protocol(format!(
                        "source completed after {sent} pages with {left} owed pages missing"
                    )));
                }
                return Ok(());
            }
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "on the bulk channel after POSTCOPY_TRANSITION",
                }
                .into())
            }
        }
        // Consumed (read and installed): the source's push window moves.
        if shared.acks {
            let mut w = lock(fault_tx);
            w.count(RecordType::Ack, bulk.bytes_read().saturating_sub(base))?;
            w.flush()?;
            Metrics::add(&shared.metrics.bytes_sent, w.take_unreported());
        }
    }
}

/// A PAGE_DATA record of the bulk channel: pushed and resent pages, and
/// with in-band replies fault replies.
fn accept_bulk<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    cause: Cause,
    pfns: &[Pfn],
    pages: Pages<'_>,
) -> Result<(), Error> {
    let counter = match cause {
        Cause::Push => &shared.metrics.pages_pushed,
        Cause::Fault if shared.in_band => &shared.metrics.pages_faulted,
        Cause::Resend => &shared.metrics.pages_resent,
        _ => {
            return Err(RecordError::Unexpected {
                name: RecordType::PageData.name(),
                state: "on the bulk channel after POSTCOPY_TRANSITION",
            }
            .into())
        }
    };
    shared.accept(pfns, pages)?;
    Metrics::add(counter, pfns.len() as u64);
    Ok(())
}

fn read_replies<M: DestinationMemory + ?Sized>(
    shared: &Shared<'_, M>,
    rx: Box<dyn Read + Send>,
    guest_pfns: u64,
) -> Result<(), Error> {
    let mut reader = RecordReader::new(rx, Some(guest_pfns));
    let result = loop {
        // Live for the admin's status: the last reply's bytes.
        Metrics::add(&shared.metrics.bytes_received, reader.take_unreported());
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
                if let Err(e) = shared.accept(&pfns, Pages::Data(data)) {
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
                if let Err(e) = shared.accept(&pfns, Pages::Zero) {
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
    Metrics::add(&shared.metrics.bytes_received, reader.take_unreported());
    result
}

fn forward_faults<M: DestinationMemory + ?Sized, W: Write>(
    shared: &Shared<'_, M>,
    tx: &Mutex<RecordWriter<W>>,
) -> Result<(), Error> {
    let cfg = shared.cfg;
    let poll = cfg.fault_poll.min(WATCH_INTERVAL);
    let cap = cfg.max_outstanding.max(1);
    let mut batch: Vec<Pfn> = Vec::new();
    loop {
        if shared.failed.load(Ordering::SeqCst) {
            return Err(Error::Aborted);
        }
        if shared.done.load(Ordering::SeqCst) {
            return Ok(());
        }
        shared.hooks.watch()?;
        shared.send_resumed(tx)?;
        let mut wait = poll;
        batch.clear();
        let room = cap.saturating_sub(lock(&shared.pending).len());
        if room == 0 {
            // Enough requests in flight: let the source catch up.
            std::thread::sleep(poll);
            continue;
        }
        while batch.len() < room.min(MAX_PFN_LIST) {
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
            pending.insert(pfn, (fault.at, fault.origin));
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
            Metrics::add(&shared.metrics.bytes_sent, w.take_unreported());
        }
    }
}
