//! The destination side of a Xen post-copy migration, in the phases
//! libxenguest calls (`include/libxl_postcopy.h`):
//!
//! 1. [`RestoreSession::begin`] at POSTCOPY_BEGIN;
//! 2. [`RestoreSession::record`] for each post-copy record before
//!    TRANSITION: PAGE_DATA / ZERO (pages that must be present, written
//!    now), POSTCOPY_PFNS (the owed set), and the end-of-pre-switch marker,
//!    at which mem_paging is enabled (HVM_PARAMS has set the ring pfn by
//!    then), every owed pfn is paged out and READY goes to the source;
//! 3. [`RestoreSession::serve`] as libxl unpauses the guest: the engine's
//!    serve phase with fault replies in-band on the stream
//!    ([`Replies::InBand`]), or on the source's [`crate::lane`] when this
//!    side found it before READY, and the guest watch of
//!    [`crate::domain_watch`] as its [`ServeHooks`] (RESUMED at the
//!    unpause, a guest death fails the migration). The stream is read
//!    record by record with no read-ahead, so libxenguest reads its END
//!    record next.
//!
//! The phases are the engine's [`DestSession`]; this module adds what is
//! Xen: the memory backend, record I/O on xl's fds ([`FdIo`]) and the
//! serve hooks of a Xen domain.

use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};
use postcopy::destination::{DestConfig, DestSession, ServeHooks, ServeLinks, Step};
use postcopy::memory::DestinationMemory as _;
use postcopy::memory::MemoryError;
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{decode, Record, RecordError, RecordReader, RecordType, RecordWriter};
use postcopy::recovery::Recovery;
use postcopy::Error;

use crate::domain_watch::{GuestDied, WatchHooks, UNPAUSE_GRACE};
use crate::fdio::FdIo;
use crate::xc::XenOps;
use crate::xen_dest::{EarlyStats, XenDestination};

/// Environment switch (issue #15): `on` makes the source send its
/// prescan's populated pfns before it stops the guest (EARLY_PFNS) and
/// wait for the destination to page them out; `off` sends nothing. On the
/// destination `off` refuses the early page-out (EARLY_PFNS is answered,
/// nothing is paged out before the stop, and the capability line does not
/// offer it); unset or `on` honours and offers it. Unset on the source,
/// the receiver's capability line decides: on when it names
/// [`postcopy::capabilities::FEATURE_EARLY_PAGEOUT`]
/// ([`crate::capabilities::adopt_receiver_features`]).
pub const EVICT_EARLY_ENV: &str = "LIBXL_POSTCOPY_EVICT_EARLY";

/// Whether [`EVICT_EARLY_ENV`] is `on` or, when it is neither `on` nor
/// `off`, `default_on`.
pub fn evict_early_setting(default_on: bool) -> bool {
    match std::env::var(EVICT_EARLY_ENV).as_deref().map(str::trim) {
        Ok("on") => true,
        Ok("off") => false,
        _ => default_on,
    }
}

/// The memory of a guest of `guest_pfns` pfns: the early one if there is
/// one (of the same size: `record`, the record that says the size, is
/// refused otherwise), else a new one.
fn memory_for<O: XenOps>(
    early: Option<XenDestination<O>>,
    ops: Arc<O>,
    guest_pfns: u64,
    record: &str,
) -> Result<XenDestination<O>, Error> {
    match early {
        Some(m) if m.pfn_count() == guest_pfns => Ok(m),
        Some(m) => Err(Error::Protocol(format!(
            "{record} claims a guest of {guest_pfns} pfns, an earlier EARLY_PFNS one of {}",
            m.pfn_count()
        ))),
        None => Ok(XenDestination::new(ops, guest_pfns)?),
    }
}

/// An EARLY_PFNS record, before BEGIN (issue #15): pages the source's
/// prescan out of `early` (made for `ops`' domain at the first record,
/// with the record's guest size) while the source's guest still runs,
/// then answers EARLY_DONE on `back_fd` so the source may stop it.
/// [`RestoreSession::begin`] takes the memory over.
pub fn early_record<O: XenOps>(
    early: Option<XenDestination<O>>,
    ops: Arc<O>,
    back_fd: RawFd,
    body: &[u8],
) -> Result<XenDestination<O>, Error> {
    let Record::EarlyPfns {
        guest_pfns,
        ring_pfn,
        runs,
    } = decode(RecordType::EarlyPfns, body, None)?
    else {
        return Err(Error::Protocol(
            "POSTCOPY_EARLY_PFNS did not decode as such".into(),
        ));
    };
    let mem = memory_for(early, ops, guest_pfns, "POSTCOPY_EARLY_PFNS")?;
    let n = if evict_early_setting(true) {
        let n = mem.evict_early(ring_pfn, &runs)?;
        let s = mem.early_stats();
        info!(
            "post-copy destination: paged out {n} pfns early, before the source stopped ({} so far in {:?})",
            s.paged_out, s.took
        );
        n
    } else {
        info!("{EVICT_EARLY_ENV}=off: EARLY_PFNS answered, nothing paged out before the stop");
        0
    };
    let mut back = RecordWriter::new(FdIo::new(back_fd));
    back.count(RecordType::EarlyDone, n)?;
    back.flush()?;
    Ok(mem)
}

/// The destination side of one migration.
pub struct RestoreSession<O: XenOps> {
    session: DestSession<XenDestination<O>>,
    stream_fd: RawFd,
    back_fd: RawFd,
    metrics: Metrics,
    death: Option<GuestDied>,
    /// The source's fault lane, if this side found it ([`crate::lane`]).
    lane: Option<std::os::unix::net::UnixStream>,
    /// Where the control socket of [`crate::recover`] goes, and the
    /// recovery window (zero: none).
    recovery: (std::path::PathBuf, std::time::Duration),
    /// What the early page-out did, once READY went out.
    early: EarlyStats,
}

impl<O: XenOps> std::fmt::Debug for RestoreSession<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<O: XenOps> RestoreSession<O> {
    /// Phase 1: checks the POSTCOPY_BEGIN body and prepares the domain's
    /// memory. Reads the stream from `stream_fd` and writes requests to
    /// `back_fd` later (both stay owned by the caller).
    /// `early`: the memory EARLY_PFNS records paged out early
    /// ([`early_record`]), for the same guest size.
    pub fn begin(
        ops: Arc<O>,
        stream_fd: RawFd,
        back_fd: RawFd,
        begin_body: &[u8],
        early: Option<XenDestination<O>>,
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
        let mem = memory_for(early, ops, guest_pfns, "POSTCOPY_BEGIN")?;
        // Every page in before libxl unpaused the domain (a small guest):
        // wait a little for the unpause, so that RESUMED precedes COMPLETE
        // and the source measures the downtime.
        let cfg = DestConfig {
            resume_grace: UNPAUSE_GRACE,
            fault_nice: crate::fault_nice_setting(),
            ..DestConfig::default()
        };
        let session = DestSession::begin(mem, &b, cfg)?;
        info!(
            "post-copy destination: {guest_pfns} pfns, {} populated at the source, strategy {}",
            b.populated_pages.get(),
            session
                .strategy()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
        let mut s = RestoreSession {
            session,
            stream_fd,
            back_fd,
            metrics: Metrics::new(),
            death: None,
            lane: None,
            early: EarlyStats::default(),
            recovery: (
                crate::status_file::status_dir(),
                crate::recover::recover_timeout_setting(),
            ),
        };
        s.keep_owed_set();
        Ok(s)
    }

    /// With a recovery window, the owed set is kept at the switch beside
    /// the control socket, for a replacement pager if this one dies
    /// ([`crate::takeover`]).
    fn keep_owed_set(&mut self) {
        let (dir, window) = &self.recovery;
        let domid = self.session.memory().ops().domid();
        let path = (!window.is_zero()).then(|| postcopy::takeover::owed_path(dir, domid));
        self.session.set_owed_file(path);
    }

    /// The strategy the source announced (None if this side does not know it).
    pub fn strategy(&self) -> Option<StrategySpec> {
        self.session.strategy()
    }

    /// The memory backend.
    pub fn memory(&self) -> &XenDestination<O> {
        self.session.memory()
    }

    /// Pages owed so far.
    pub fn owed_count(&self) -> u64 {
        self.session.owed_count()
    }

    /// What the early page-out did (issue #15), once READY went out.
    pub fn early_stats(&self) -> EarlyStats {
        self.early
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets the folder of the recovery control socket and the recovery
    /// window (zero: none), whatever the environment says
    /// ([`crate::recover`]).
    pub fn set_recovery(&mut self, dir: std::path::PathBuf, timeout: std::time::Duration) {
        self.recovery = (dir, timeout);
        self.keep_owed_set();
    }

    /// Replaces the engine's settings (before serving; the owed set's
    /// file stays as [`Self::set_recovery`] made it).
    pub fn set_config(&mut self, cfg: DestConfig) {
        self.session.set_config(cfg);
        self.keep_owed_set();
    }

    fn back(&self) -> RecordWriter<FdIo> {
        RecordWriter::new(FdIo::new(self.back_fd))
    }

    /// Phase 2: one record between BEGIN and TRANSITION.
    pub fn record(&mut self, rtype: u32, body: &[u8]) -> Result<(), Error> {
        let t = RecordType::from_wire(rtype).ok_or(RecordError::UnknownType(rtype))?;
        let rec = decode(t, body, Some(self.session.guest_pfns()))?;
        if let Record::VcpuState(s) = &rec {
            debug!("end of the pre-switch records ({}-byte marker)", s.len());
        }
        if self.session.record(rec, &self.metrics)? == Step::More {
            return Ok(());
        }
        // The source's end-of-pre-switch marker (Xen carries the CPU state
        // in HVM_CONTEXT, processed by now): every owed pfn is paged out.
        let mem = self.session.memory();
        if self.session.owed_count() > 0 && mem.ring_pfn().is_none() {
            return Err(Error::Memory(MemoryError::Unsupported {
                what: "serve the owed pages",
                why: "pages are owed but mem_paging was never enabled".into(),
            }));
        }
        let early = mem.early_stats();
        let early = if early.paged_out > 0 {
            mem.finish_early()?
        } else {
            early
        };
        let (by_range, by_page, took) = mem.page_out_stats();
        info!(
            "paged out {} owed pfns in {took:?} ({by_range} by range, {by_page} page by page)",
            by_range + by_page
        );
        if early.paged_out > 0 {
            info!(
                "early page-out: {} pfns in {:?} before the stop; at the stop {} kept, {} added, {} loaded (must be present), {} given back in {:?}",
                early.paged_out,
                early.took,
                early.kept,
                early.added,
                early.written,
                early.given_back,
                early.give_back_time
            );
        }
        self.early = early;
        // Before READY: the source takes the connection once READY is in.
        self.lane = crate::lane::connect(&crate::status_file::status_dir(), self.stream_fd);
        if self.lane.is_some() {
            info!("fault replies will come on their own lane");
        }
        let mut back = self.back();
        self.session.ready(&mut back)
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
        let mut back = self.back();
        self.session.abort(&mut back, reason);
    }

    /// True once READY went to the source.
    pub fn ready_sent(&self) -> bool {
        self.session.ready_sent()
    }

    /// Phase 3: the guest runs (once libxl unpauses it); serve its faults
    /// and load every owed page, watching the domain ([`WatchHooks`]).
    /// Returns 0, or [`crate::recover::STREAM_REPLACED`] when the
    /// migration completed over a connection that replaced xl's stream
    /// after it broke ([`crate::recover`]).
    pub fn serve(&mut self) -> Result<i32, Error> {
        let hooks = self.watch_hooks();
        let r = self.serve_with(&hooks);
        self.death = hooks.death();
        r
    }

    /// The guest watch of this domain, for [`Self::serve_with`].
    pub fn watch_hooks(&self) -> WatchHooks<O> {
        let mem = self.session.memory();
        WatchHooks::new(
            mem.ops().clone(),
            mem.absent_view(),
            self.session.owed_count(),
            self.session.guest_pfns(),
        )
    }

    /// The guest's death that failed [`Self::serve`], if it died.
    pub fn guest_death(&self) -> Option<&GuestDied> {
        self.death.as_ref()
    }

    /// [`Self::serve`] with the adapter's own hooks (guest watch, the
    /// instant the domain was unpaused, progress).
    pub fn serve_with(&mut self, hooks: &dyn ServeHooks) -> Result<i32, Error> {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let domid = self.session.memory().ops().domid();
        let rescue = crate::recover::Rescue::open_in(
            &self.recovery.0,
            domid,
            "destination",
            self.lane.is_some(),
            self.recovery.1,
        );
        let (replies, lane) = crate::lane::replies(self.lane.take(), |s| {
            Box::new(s) as Box<dyn std::io::Read + Send>
        });
        let links = ServeLinks {
            bulk: RecordReader::new(
                Box::new(FdIo::with_stop(self.stream_fd, stop.clone())),
                Some(self.session.guest_pfns()),
            ),
            replies,
            back: RecordWriter::new(Box::new(FdIo::new(self.back_fd))),
            closer: crate::lane::closer(stop, lane),
        };
        self.session
            .set_status(crate::status_file::status_config(domid));
        let mut hook = rescue.as_ref().map(|r| r.dest_hook());
        let recovery = match (&rescue, hook.as_mut()) {
            (Some(r), Some(h)) => Some(Recovery {
                timeout: r.timeout(),
                reconnect: h,
            }),
            _ => None,
        };
        let result = self.session.serve(links, hooks, &self.metrics, recovery);
        let took = start.elapsed();
        Metrics::set_duration(&self.metrics.postcopy_time_us, took);
        let loads = self.session.memory().load_stats();
        let total = loads.batched + loads.per_page;
        info!(
            "loaded {total} owed pages in {took:?} ({:.0} pages/s): {} by batch in {} calls \
             ({} of them zero pages, not copied), {} page by page",
            total as f64 / took.as_secs_f64().max(1e-9),
            loads.batched,
            loads.batch_calls,
            loads.batched_zero,
            loads.per_page
        );
        if result.is_ok() {
            info!("post-copy destination done:\n{}", self.metrics.snapshot());
        }
        result.map(|()| crate::recover::served(&self.metrics))
    }
}
