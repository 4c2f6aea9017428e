//! The two processes of a local-mode migration.
//!
//! [`run_sender`] boots the mini-VM, lets it run (so its memory is dirty and
//! non-trivial), connects, and migrates it with the engine's source over a
//! [`RegionSource`]. [`run_receiver`] accepts, builds the guest on a
//! [`UffdDestination`] behind [`HashingDestination`], resumes the vCPU at
//! TRANSITION, and after completion sends its summary back on the bulk
//! connection so the sender can check integrity and print one report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};
use postcopy::destination::{run_destination_recoverable, DestConfig, DestFailure, GuestResume};
use postcopy::error::HookError;
use postcopy::memory::PfnRun;
use postcopy::metrics::{Metrics, Part};
use postcopy::prepage::StrategySpec;
use postcopy::recovery::Recovery;
use postcopy::source::{run_source_recoverable, GuestControl, Mode, SourceConfig};
use postcopy::transport::{DestLinks, Silence, SourceLinks};
use postcopy_uffd::{GuestRegion, RegionSource, StagingPool, UffdDestination};

use super::integrity::{image_digest, HashingDestination};
use super::link::{self, Conn, Dial, Expect};
use super::recover::{Command, Control};
use super::report::{DestSummary, Floor, LocalReport};
use super::vcpu::{GuestWords, Vcpu};
use super::workload::{fill_page, Regs, Workload};
use crate::auth::Token;

impl GuestWords for GuestRegion {
    fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        GuestRegion::words(self)
    }
}

/// The guest to boot on the source.
#[derive(Debug, Clone)]
pub struct GuestOpts {
    /// Size in pages.
    pub pages: u64,
    /// What it runs.
    pub workload: Workload,
    /// How long it runs before the migration starts.
    pub warmup: Duration,
    /// Seed of its memory and workload.
    pub seed: u64,
}

/// How to migrate it.
#[derive(Debug, Clone)]
pub struct MigrateOpts {
    /// Cap on the push in bytes/s (faults exempt).
    pub max_bandwidth: Option<u64>,
    /// Longest pure demand paging before the residual flush.
    pub residual_after: Duration,
    /// Post-copy, pre-copy or hybrid.
    pub mode: Mode,
    /// Pre-paging strategy.
    pub strategy: StrategySpec,
    /// Free-page elimination (the DSB analogue).
    pub balloon: bool,
    /// Pages per pushed record.
    pub batch_pages: usize,
    /// How long the destination keeps running after completion to measure
    /// the post-migration rate.
    pub tail: Duration,
    /// Measure the floor first.
    pub floor: bool,
}

/// How the two processes connect, and reconnect after a break.
#[derive(Debug, Clone)]
pub struct LinkOpts {
    /// How long one outage after the switch may last (zero: none is
    /// survived).
    pub recover_timeout: Duration,
    /// Shared secret for the challenge–response.
    pub token: Option<Token>,
    /// Unix socket on which `xl-postcopy recover` redirects this side.
    pub control: Option<PathBuf>,
    /// A peer that takes no bytes for this long is treated as a broken
    /// link (a write times out), so a stalled peer costs a reconnect, not
    /// a hang.
    pub stall_timeout: Duration,
    /// How long the sender waits, its guest stopped, for READY before
    /// aborting and resuming its guest (zero: forever).
    pub ready_timeout: Duration,
    /// Where this side publishes its status while it serves
    /// (`xl-postcopy status --file`), if anywhere.
    pub status_file: Option<PathBuf>,
    /// How long the receiver waits for a sender to connect (zero:
    /// forever).
    pub accept_timeout: Duration,
    /// The nice value of this side's fault threads (`None`: the
    /// process's own; [`postcopy::precedence`]).
    pub fault_nice: Option<i32>,
}

impl LinkOpts {
    /// The engine's status publishing for these options.
    fn status(&self) -> Option<postcopy::status::StatusConfig> {
        self.status_file
            .as_ref()
            .map(|p| postcopy::status::StatusConfig {
                sink: Arc::new(postcopy::status::StatusFile::new(p)),
                domid: None,
                name: Some("local".to_string()),
                interval: postcopy::status::DEFAULT_STATUS_INTERVAL,
            })
    }
}

/// Default bound on the receiver's wait for a sender: long enough to start
/// the sender by hand on another host, short enough that a receiver nobody
/// uses does not sit on its port for ever.
pub const DEFAULT_ACCEPT_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for LinkOpts {
    fn default() -> Self {
        LinkOpts {
            recover_timeout: Duration::from_secs(30),
            token: None,
            control: None,
            stall_timeout: Duration::from_secs(15),
            ready_timeout: postcopy::source::DEFAULT_READY_TIMEOUT,
            status_file: None,
            accept_timeout: DEFAULT_ACCEPT_TIMEOUT,
            fault_nice: Some(postcopy::precedence::FAULT_NICE),
        }
    }
}

/// Bounds every write on a link by the stall timeout.
/// The byte a receiver sends on the bulk connection, right after the
/// handshake, once its guest memory is prepared.
const PREPARED: u8 = 0x50;
/// Longest the receiver populates before it lets the migration begin (the
/// rest goes on while pages arrive).
const PREPARE_LIMIT: Duration = Duration::from_secs(10);
/// Longest the sender waits for [`PREPARED`].
const PREPARE_WAIT: Duration = Duration::from_secs(30);

/// The sender's side of [`prepare`]: waits (bounded) for [`PREPARED`].
fn await_prepared(bulk: &Conn) -> std::io::Result<()> {
    bulk.sock.set_read_timeout(Some(PREPARE_WAIT))?;
    let mut b = [0u8; 1];
    (&bulk.sock).read_exact(&mut b)?;
    bulk.sock.set_read_timeout(None)?;
    if b[0] != PREPARED {
        return Err(std::io::Error::other(format!(
            "unexpected byte {:#x} from the receiver",
            b[0]
        )));
    }
    Ok(())
}

/// The populate thread of a receiver's staging pool.
struct Populating {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Populating {
    /// Stops populating (pages no longer needed) and reaps the thread.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("populating guest memory: {e}"),
            Err(_) => warn!("the populate thread panicked"),
        }
    }
}

/// Before the switch, as a Xen toolstack populates a new domain: maps a
/// staging pool the size of the guest and populates it (for at most
/// [`PREPARE_LIMIT`]; the rest goes on in the background), so pages
/// arriving after the switch are received into resident memory and moved
/// into the guest without a copy or a fresh frame each
/// ([`postcopy_uffd::StagingPool`]).
fn prepare(region: &GuestRegion) -> std::io::Result<(Arc<StagingPool>, Populating)> {
    let t0 = Instant::now();
    let pool = Arc::new(StagingPool::new(region.len_bytes())?);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = {
        let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("populate".into())
            .spawn(move || {
                let r = pool.populate(|| stop.load(Ordering::Relaxed));
                let _ = tx.send(());
                r
            })?
    };
    let done = rx.recv_timeout(PREPARE_LIMIT).is_ok();
    info!(
        "guest memory: {} of {} MiB populated in {:?}{}",
        pool.populated() >> 20,
        pool.len() >> 20,
        t0.elapsed(),
        if done {
            ""
        } else {
            " (the rest in the background)"
        }
    );
    Ok((pool, Populating { stop, thread }))
}

fn bound_writes(l: &LinkOpts, conns: [&Conn; 2]) -> std::io::Result<()> {
    let t = (!l.stall_timeout.is_zero()).then_some(l.stall_timeout);
    for c in conns {
        c.sock.set_write_timeout(t)?;
    }
    Ok(())
}

impl LinkOpts {
    /// How long the receiver waits for a sender's second connection once
    /// the first passed its handshake.
    fn pair_window(&self) -> Duration {
        if self.stall_timeout.is_zero() {
            Duration::from_secs(30)
        } else {
            self.stall_timeout
        }
    }
}

/// The receiver's links, its reads on the bulk stream bounded by the
/// stall timeout: the source streams until completion, so a silent bulk
/// stream is a stalled or vanished source (a clean abort before the
/// switch, the recovery window after it). The fault channel carries
/// replies only when the guest faults, so it has no read bound.
fn dest_links(l: &LinkOpts, bulk: &Conn, fault: &Conn) -> std::io::Result<DestLinks> {
    let bound = (!l.stall_timeout.is_zero()).then_some(l.stall_timeout);
    bulk.sock.set_read_timeout(bound)?;
    let mut links = link::dest_links(bulk, fault)?;
    if let Some(t) = bound {
        links.bulk = Box::new(Silence::new(links.bulk, "source", t));
    }
    Ok(links)
}

/// Longest single reconnect attempt (the engine retries until the
/// recovery timeout).
const ATTEMPT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Failures of a local-mode migration, by side and phase.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Setting up the guest or the uffd failed; nothing was migrated.
    #[error("setup failed: {0}")]
    Setup(String),
    /// Guest memory would cross a link nobody authenticates: refused
    /// before the guest boots.
    #[error("refusing to send guest memory to {0} without proof of who is at the other end: give --token-file (only loopback is safe unauthenticated)")]
    Unauthenticated(SocketAddr),
    /// The connection could not be set up; the guest keeps running here.
    #[error("could not connect to the destination: {0}")]
    Link(#[from] link::LinkError),
    /// The receiver accepted no migration (a sender that never finished
    /// connecting, or no sender in time); nothing ran here.
    #[error("no migration was received: {0}")]
    Accept(link::LinkError),
    /// The receiver's view of a failure before the switch: nothing ran
    /// here and what was received is discarded.
    #[error("migration aborted before the switch (destination side): {0}; nothing ran here and what was received is discarded (the source keeps its guest)")]
    ReceiverAborted(String),
    /// Failed before the switch: the source guest was resumed, intact.
    #[error("migration aborted before the switch ({side} side): {error}; the source guest is running with its memory intact")]
    BeforeSwitch {
        /// Which side failed.
        side: &'static str,
        /// Why.
        error: String,
    },
    /// Failed after the switch: the guest was running on the destination.
    #[error("migration failed after the switch ({side} side): {error}; the guest's unsent pages are lost")]
    AfterSwitch {
        /// Which side failed.
        side: &'static str,
        /// Why.
        error: String,
    },
    /// The link broke right after TRANSITION and never came back: the
    /// destination never confirmed resuming the guest.
    #[error("migration in doubt ({side} side): {error}; the destination never confirmed resuming the guest, so it may never have run there: the guest is stopped here with its memory intact and was NOT resumed (resume it only if the destination is known dead)")]
    InDoubt {
        /// Which side reports it.
        side: &'static str,
        /// Why.
        error: String,
    },
    /// The migration completed (the destination holds every page) but its
    /// summary, with the digest of its memory, did not arrive intact: no
    /// page was lost, but integrity could not be checked.
    #[error("migration complete (every page reached the destination), but its summary could not be read ({0}): the integrity of its memory was not checked")]
    Unverified(String),
    /// The destination's memory differs from the source's.
    #[error("integrity check failed: destination digest {dest_digest:#x} != source digest {source_digest:#x}")]
    Integrity {
        /// Source digest.
        source_digest: u64,
        /// Destination digest.
        dest_digest: u64,
    },
}

impl LocalError {
    /// Process exit code: 1 setup/link/before switch, 2 after, 3
    /// integrity failed or unchecked, 4 in doubt.
    pub fn exit_code(&self) -> i32 {
        match self {
            LocalError::Setup(_)
            | LocalError::Unauthenticated(_)
            | LocalError::Link(_)
            | LocalError::Accept(_)
            | LocalError::ReceiverAborted(_)
            | LocalError::BeforeSwitch { .. } => 1,
            LocalError::AfterSwitch { .. } => 2,
            LocalError::Integrity { .. } | LocalError::Unverified(_) => 3,
            LocalError::InDoubt { .. } => 4,
        }
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> LocalError + '_ {
    move |e| LocalError::Setup(format!("{what}: {e}"))
}

/// Boots the mini-VM: memory filled, workload running. A guest beyond the
/// protocol's limit or this host's available memory is refused before
/// anything is allocated.
pub fn boot(g: &GuestOpts) -> Result<(Arc<GuestRegion>, Vcpu), LocalError> {
    super::hostmem::check_host(g.pages).map_err(setup("sizing the guest"))?;
    let region = Arc::new(GuestRegion::new(g.pages).map_err(setup("allocating guest memory"))?);
    let words = region.words();
    for pfn in 0..g.pages {
        fill_page(words, pfn, g.seed);
    }
    let regs = Regs::boot(g.workload, g.pages, g.seed);
    let vcpu = Vcpu::start(Arc::clone(&region), regs).map_err(setup("starting the vCPU"))?;
    Ok((region, vcpu))
}

/// The source's guest control: stops the vCPU, hands over its registers.
struct SourceGuest {
    region: Arc<GuestRegion>,
    vcpu: Option<Vcpu>,
    regs: Option<Regs>,
    free: Vec<PfnRun>,
    stopped_steps: u64,
}

impl GuestControl for SourceGuest {
    fn stop(&mut self) -> Result<Vec<u8>, HookError> {
        let vcpu = self.vcpu.take().ok_or("vCPU not running")?;
        let (regs, stats) = vcpu.stop()?;
        self.stopped_steps = stats.steps;
        if !self.free.is_empty() {
            // The balloon's last word before the stop.
            self.region.release(&self.free)?;
        }
        let state = serde_json::to_vec(&regs)?;
        self.regs = Some(regs);
        Ok(state)
    }

    fn resume(&mut self) -> Result<(), HookError> {
        let regs = self.regs.take().ok_or("no saved registers")?;
        self.vcpu = Some(Vcpu::start(Arc::clone(&self.region), regs)?);
        Ok(())
    }
}

/// Migrates a freshly booted guest to the receiver at `addr`, with the
/// default [`LinkOpts`].
pub fn run_sender(
    addr: SocketAddr,
    g: &GuestOpts,
    m: &MigrateOpts,
) -> Result<LocalReport, LocalError> {
    run_sender_with(addr, g, m, &LinkOpts::default())
}

/// Migrates a freshly booted guest to the receiver at `addr`. A link that
/// breaks after the switch is dialled again (same address, or the one an
/// admin gives through the control socket) until `l.recover_timeout`.
pub fn run_sender_with(
    addr: SocketAddr,
    g: &GuestOpts,
    m: &MigrateOpts,
    l: &LinkOpts,
) -> Result<LocalReport, LocalError> {
    if !addr.ip().is_loopback() && l.token.is_none() {
        return Err(LocalError::Unauthenticated(addr));
    }
    postcopy_uffd::probe().map_err(setup("userfaultfd"))?;
    let floor = if m.floor {
        let f = postcopy_uffd::measure_floor(2000).map_err(setup("measuring the floor"))?;
        Some(Floor {
            p50: f.p50_us,
            p99: f.p99_us,
        })
    } else {
        None
    };
    let (region, vcpu) = boot(g)?;
    let free_range = g.workload.free_range(g.pages);
    let free = if m.balloon && !free_range.is_empty() {
        vec![PfnRun {
            start: free_range.start,
            count: free_range.end - free_range.start,
        }]
    } else {
        Vec::new()
    };
    // The balloon: release free pages every second while the guest runs.
    let balloon_stop = Arc::new(AtomicBool::new(false));
    let balloon = (!free.is_empty()).then(|| {
        let (region, free, stop) = (Arc::clone(&region), free.clone(), Arc::clone(&balloon_stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = region.release(&free) {
                    warn!("balloon: {e}");
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
        })
    });
    let warm_start = vcpu.steps();
    std::thread::sleep(g.warmup);
    let rate_before = (vcpu.steps() - warm_start) as f64 / g.warmup.as_secs_f64().max(1e-3);
    info!("guest warmed up: {rate_before:.0} steps/s");

    let dial = Dial {
        guest_pages: g.pages,
        session: link::new_session().map_err(setup("choosing a session id"))?,
        token: l.token.clone(),
    };
    let target = Arc::new(Mutex::new(addr));
    let _control = match &l.control {
        Some(path) => {
            let (target, authenticated) = (Arc::clone(&target), l.token.is_some());
            Some(
                Control::serve(path, move |cmd| match cmd {
                    Command::To(a) => {
                        if !a.ip().is_loopback() && !authenticated {
                            return Err(format!(
                                "refusing to send guest memory to {a} without --token-file"
                            ));
                        }
                        *lock(&target) = a;
                        Ok(format!("the sender will dial {a}"))
                    }
                    Command::Listen(_) => Err("this is the sender: use --to".into()),
                })
                .map_err(setup("control socket"))?,
            )
        }
        None => None,
    };
    let (bulk, fault) = dial.connect(addr, false, Duration::from_secs(10))?;
    // The guest runs on while the receiver populates its memory.
    await_prepared(&bulk).map_err(setup("waiting for the receiver to prepare guest memory"))?;
    bound_writes(l, [&bulk, &fault]).map_err(setup("socket options"))?;
    let trailer = Mutex::new(bulk.try_clone().map_err(setup("cloning the socket"))?);
    let links = link::source_links(&bulk, &fault).map_err(setup("setting up links"))?;
    let mut redial = |deadline: Instant| -> std::io::Result<SourceLinks> {
        let to = *lock(&target);
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(ATTEMPT);
        let (b, f) = dial
            .connect(to, true, wait)
            .map_err(|e| std::io::Error::other(format!("{to}: {e}")))?;
        bound_writes(l, [&b, &f])?;
        *lock(&trailer) = b.try_clone()?;
        info!("reconnected to {to}");
        link::source_links(&b, &f)
    };
    let recovery = (!l.recover_timeout.is_zero()).then_some(Recovery {
        timeout: l.recover_timeout,
        reconnect: &mut redial,
    });
    let mut mem = RegionSource::new(Arc::clone(&region)).map_err(setup("source memory"))?;
    let mut guest = SourceGuest {
        region: Arc::clone(&region),
        vcpu: Some(vcpu),
        regs: None,
        free,
        stopped_steps: 0,
    };
    let cfg = SourceConfig {
        strategy: m.strategy,
        mode: m.mode,
        batch_pages: m.batch_pages,
        ready_timeout: l.ready_timeout,
        status: l.status(),
        max_bandwidth: m.max_bandwidth,
        residual_after: m.residual_after,
        fault_nice: l.fault_nice,
        ..SourceConfig::default()
    };
    let metrics = Metrics::new();
    // For `--record-trace` (calibration): when the push claimed each batch.
    metrics.record_push_log();
    let result = run_source_recoverable(&mut mem, links, &cfg, &mut guest, &metrics, recovery);
    balloon_stop.store(true, Ordering::Relaxed);
    if let Some(b) = balloon {
        let _ = b.join();
    }
    if let Err(f) = result {
        if let postcopy::Error::LinkLost { resumed: false, .. } = f.error {
            return Err(LocalError::InDoubt {
                side: "source",
                error: f.error.to_string(),
            });
        }
        return Err(if f.after_switch {
            let mut error = f.error.to_string();
            if !matches!(f.error, postcopy::Error::LinkLost { .. }) {
                // LinkLost says it already.
                error = format!(
                    "{error}; {} owed pages are not confirmed at the destination",
                    f.unconfirmed
                );
            }
            LocalError::AfterSwitch {
                side: "source",
                error,
            }
        } else {
            LocalError::BeforeSwitch {
                // The destination refused (its reason is in the message),
                // or the source failed on its own.
                side: if matches!(f.error, postcopy::Error::PeerAborted(_)) {
                    "destination"
                } else {
                    "source"
                },
                error: f.error.to_string(),
            }
        });
    }
    let summary = read_summary(&lock(&trailer))
        .map_err(|e| LocalError::Unverified(postcopy::error::io_words(&e)))?;
    let source_digest = image_digest(g.pages, |pfn, buf| {
        if region.read_page(pfn, buf).is_err() {
            buf.fill(0xee);
        }
    });
    let src = metrics.snapshot();
    let dest_engine = summary.engine.clone();
    let mode = match m.mode {
        Mode::Postcopy => "postcopy",
        Mode::Precopy { .. } => "precopy",
        Mode::Hybrid { .. } | Mode::HybridAuto(_) => "hybrid",
    };
    let report = LocalReport {
        mode: mode.into(),
        prepage: m.strategy.to_string(),
        workload: g.workload.to_string(),
        guest_pages: g.pages,
        working_set_pages: match g.workload {
            Workload::Stress { .. } => free_range.start,
            _ => 0,
        },
        balloon: m.balloon,
        total_time_ms: src.total_time_ms,
        downtime_ms: src.downtime_ms,
        pages_transferred: src.pages_transferred,
        pages_duplicate: src.pages_duplicate.max(dest_engine.pages_duplicate),
        pages_skipped: src.pages_skipped,
        network_faults: dest_engine.network_faults,
        fault_latency_us: summary.stall_us,
        engine_fault_latency_us: dest_engine.fault_latency_us.into(),
        floor_latency_us: floor,
        integrity_ok: source_digest == summary.digest,
        rate_before,
        rate_during: summary.rate_during,
        rate_after: summary.rate_after,
        degradation: if rate_before > 0.0 {
            1.0 - summary.rate_during / rate_before
        } else {
            0.0
        },
        bytes_sent: src.bytes_sent,
        source: src,
        destination: summary,
    };
    let _ = guest.stopped_steps;
    if !report.integrity_ok {
        eprint!("{report}");
        return Err(LocalError::Integrity {
            source_digest,
            dest_digest: report.destination.digest,
        });
    }
    Ok(report)
}

/// Summaries are small (the stall log at most ~1.5 MiB); anything larger
/// is a broken peer.
const MAX_SUMMARY: usize = 4 << 20;

fn read_summary(c: &Conn) -> std::io::Result<DestSummary> {
    c.sock.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut s = c.reader()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_SUMMARY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "summary too long",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the summary is not valid JSON: {e}"),
        )
    })
}

fn write_summary(c: &Conn, summary: &DestSummary) -> std::io::Result<()> {
    let mut s = c.writer()?;
    let body = serde_json::to_vec(summary).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("summary too long"))?;
    s.write_all(&len.to_le_bytes())?;
    s.write_all(&body)?;
    s.flush()
}

/// Starts the destination vCPU from the migrated registers.
struct DestGuest {
    region: Arc<GuestRegion>,
    vcpu: Option<Vcpu>,
    resumed_at: Option<Instant>,
    first_step: u64,
}

impl GuestResume for DestGuest {
    fn resume(&mut self, state: &[u8]) -> Result<(), HookError> {
        let regs: Regs = serde_json::from_slice(state)?;
        if regs.pages != self.region.pages() {
            return Err(format!(
                "registers are for a {}-page guest, memory has {}",
                regs.pages,
                self.region.pages()
            )
            .into());
        }
        self.first_step = regs.steps;
        self.vcpu = Some(Vcpu::start(Arc::clone(&self.region), regs)?);
        self.resumed_at = Some(Instant::now());
        Ok(())
    }
}

/// The receiver's error for a failed migration, once the fault handler is
/// detached (`detached`): stops the vCPU if it ran (the guest cannot go on
/// without its lost pages) and says how many pages were lost.
fn dest_failed(
    f: DestFailure,
    detached: Result<(), postcopy::memory::MemoryError>,
    vcpu: Option<Vcpu>,
) -> LocalError {
    let side = "destination";
    let mut error = f.error.to_string();
    if let Err(e) = detached {
        // The vCPU may stay blocked on an absent page: leave its thread
        // behind rather than wait for it (the process exits next).
        warn!("detaching userfaultfd: {e}");
        std::mem::forget(vcpu);
    } else if let Some(v) = vcpu {
        if let Err(e) = v.stop() {
            warn!("stopping the vCPU: {e}");
        }
    }
    if !f.after_switch {
        // Nothing ran here: dropping the region discards what was built.
        return LocalError::ReceiverAborted(error);
    }
    if !matches!(f.error, postcopy::Error::LinkLost { .. }) {
        error = format!("{error}; {} owed pages were lost", f.lost_pages);
    }
    LocalError::AfterSwitch { side, error }
}

/// Receives one migration on `listener` with the default [`LinkOpts`];
/// returns the summary it sent.
pub fn run_receiver(listener: &TcpListener, tail: Duration) -> Result<DestSummary, LocalError> {
    run_receiver_with(listener, tail, &LinkOpts::default())
}

/// Receives one migration on `listener`; returns the summary it sent. A
/// link that breaks after the switch is awaited on the same listener (or
/// on one an admin opens through the control socket) for
/// `l.recover_timeout`, while the guest keeps running.
pub fn run_receiver_with(
    listener: &TcpListener,
    tail: Duration,
    l: &LinkOpts,
) -> Result<DestSummary, LocalError> {
    postcopy_uffd::probe().map_err(setup("userfaultfd"))?;
    // The control socket comes before the wait for a sender, so a bad
    // --control path fails at once. `moved`: a listener an admin opened
    // with `xl-postcopy recover --listen`.
    let moved: Arc<Mutex<Option<TcpListener>>> = Arc::default();
    let _control = match &l.control {
        Some(path) => {
            let (moved, authenticated) = (Arc::clone(&moved), l.token.is_some());
            Some(
                Control::serve(path, move |cmd| match cmd {
                    Command::Listen(a) => {
                        if !a.ip().is_loopback() && !authenticated {
                            return Err(format!("refusing to listen on {a} without --token-file"));
                        }
                        let new = TcpListener::bind(a).map_err(|e| format!("binding {a}: {e}"))?;
                        let at = new.local_addr().map_err(|e| e.to_string())?;
                        *lock(&moved) = Some(new);
                        Ok(format!("the receiver now listens on {at}"))
                    }
                    Command::To(_) => Err("this is the receiver: use --listen".into()),
                })
                .map_err(setup("control socket"))?,
            )
        }
        None => None,
    };
    let first = link::accept_migration(
        listener,
        (!l.accept_timeout.is_zero()).then_some(l.accept_timeout),
        l.pair_window(),
        &Expect {
            token: l.token.clone(),
            resume: None,
        },
    )
    .map_err(LocalError::Accept)?;
    let pages = first.guest_pages;
    bound_writes(l, [&first.bulk, &first.fault]).map_err(setup("socket options"))?;
    let expect = Expect {
        token: l.token.clone(),
        resume: Some((first.session, pages)),
    };
    let trailer = Mutex::new(
        first
            .bulk
            .try_clone()
            .map_err(setup("cloning the socket"))?,
    );
    let links = dest_links(l, &first.bulk, &first.fault).map_err(setup("setting up links"))?;
    let mut reaccept = |deadline: Instant| -> std::io::Result<DestLinks> {
        let until = deadline.min(Instant::now() + ATTEMPT);
        let guard = lock(&moved);
        let a = match guard.as_ref() {
            Some(other) => link::accept_until(other, until, &expect),
            None => {
                drop(guard);
                link::accept_until(listener, until, &expect)
            }
        }
        .map_err(std::io::Error::other)?;
        bound_writes(l, [&a.bulk, &a.fault])?;
        *lock(&trailer) = a.bulk.try_clone()?;
        dest_links(l, &a.bulk, &a.fault)
    };
    let recovery = (!l.recover_timeout.is_zero()).then_some(Recovery {
        timeout: l.recover_timeout,
        reconnect: &mut reaccept,
    });
    let region = Arc::new(GuestRegion::new(pages).map_err(setup("allocating guest memory"))?);
    let uffd =
        UffdDestination::new(Arc::clone(&region)).map_err(setup("userfaultfd destination"))?;
    let (uffd, populating) = if uffd.moves_pages() {
        let (pool, populating) = prepare(&region).map_err(setup("preparing guest memory"))?;
        (uffd.with_pool(pool), Some(populating))
    } else {
        (uffd, None)
    };
    // The sender's guest starts its migration only now.
    (&first.bulk.sock)
        .write_all(&[PREPARED])
        .map_err(setup("telling the sender memory is prepared"))?;
    let mem = HashingDestination::new(uffd);
    let mut guest = DestGuest {
        region: Arc::clone(&region),
        vcpu: None,
        resumed_at: None,
        first_step: 0,
    };
    let metrics = Metrics::new();
    let outcome = run_destination_recoverable(
        &mem,
        links,
        &DestConfig {
            status: l.status(),
            fault_nice: l.fault_nice,
            ..DestConfig::default()
        },
        &mut guest,
        &metrics,
        recovery,
    );
    if let Some(p) = populating {
        p.finish();
    }
    let st = mem.inner().stats();
    info!(
        "installed: {} pages moved, {} copied, {} zero",
        st.pages_moved.load(Ordering::Relaxed),
        st.pages_copied.load(Ordering::Relaxed),
        st.pages_zeroed.load(Ordering::Relaxed)
    );
    // On every path out nobody serves faults any more: detaching wakes a
    // vCPU blocked on an absent page (it reads zero from now on), so it
    // can be stopped. On success every owed page is in and pages never
    // owed read as zero anyway.
    let detached = mem.inner().detach();
    let outcome = match outcome {
        Ok(o) => {
            detached.map_err(setup("detaching userfaultfd"))?;
            o
        }
        Err(f) => return Err(dest_failed(f, detached, guest.vcpu.take())),
    };
    let complete_at = Instant::now();
    let (mut rate_during, mut stall_us, mut postcopy_secs, mut rate_after) =
        (0.0, Default::default(), 0.0, 0.0);
    let (mut steps_during, mut stall_log) = (0, Vec::new());
    if let Some(vcpu) = guest.vcpu.take() {
        let (regs, stats) = vcpu.stop().map_err(|e| LocalError::AfterSwitch {
            side: "destination",
            error: e.to_string(),
        })?;
        postcopy_secs = (complete_at - outcome.resumed_at).as_secs_f64();
        rate_during = stats.steps as f64 / stats.secs.max(1e-6);
        stall_us = stats.stall_us.into();
        (steps_during, stall_log) = (stats.steps, stats.stall_log);
        if !tail.is_zero() {
            let v = Vcpu::start(Arc::clone(&region), regs).map_err(setup("restarting the vCPU"))?;
            std::thread::sleep(tail);
            if let Ok((_, after)) = v.stop() {
                rate_after = after.steps as f64 / after.secs.max(1e-6);
            }
        }
    }
    metrics.add_time(Part::Hash, mem.install_hash_time());
    let engine = metrics.snapshot();
    let summary = DestSummary {
        digest: mem.digest(),
        resume_ms: engine.downtime_ms,
        engine,
        rate_during,
        rate_after,
        stall_us,
        postcopy_secs,
        first_step: guest.first_step,
        steps_during,
        stall_log,
    };
    if let Err(e) = write_summary(&lock(&trailer), &summary) {
        warn!("could not send the summary to the source: {e}");
    }
    Ok(summary)
}
