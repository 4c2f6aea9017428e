//! The source side of a Xen post-copy migration, in the three phases
//! libxenguest calls (`include/libxl_postcopy.h`):
//!
//! 0. without pre-copy rounds, while the guest still runs with log-dirty
//!    mode on: a [`Prescan`] finds the populated pfns, so that the stop
//!    only asks about what the log names ([`Known`]);
//! 1. [`SaveSession::begin`] — the domain is suspended: work out the owed
//!    pfns (populated, and with pre-copy rounds: dirtied since last sent),
//!    write POSTCOPY_BEGIN and the pages that must be present before the
//!    guest runs ([`crate::present`]);
//! 2. [`SaveSession::transition`] — after libxenguest's CPU records: write
//!    POSTCOPY_PFNS (the owed runs) and POSTCOPY_TRANSITION;
//! 3. [`SaveSession::serve`] — after libxl's records: the engine's serve
//!    phase with fault replies in-band on the one stream
//!    ([`Replies::InBand`], behind at most the push window), or on a
//!    [`crate::lane`] of their own when the destination connected to it,
//!    and the Xen push policy ([`PushPolicy::XEN`]); it returns once the
//!    destination confirms with its own COMPLETE.
//!
//! The phases are the engine's [`SourceSession`]; this module adds what is
//! Xen: the owed set and the must-present pages from the suspended domain,
//! and record I/O on xl's fds ([`FdIo`]). The source's share of the
//! downtime is logged by part at the switch ([`StopParts`]).

use std::collections::{BTreeSet, HashMap};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use libxl_sys as sys;
use log::{debug, info, warn};
use postcopy::memory::{runs_from_sorted, PfnRun, SourceMemory};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{Cause, RecordReader, MAX_BATCH_PAGES};
use postcopy::recovery::Recovery;
use postcopy::scheduler::PushPolicy;
use postcopy::source::{send_pages, ServeLinks, SourceSession};
use postcopy::{Error, Pfn, PAGE_SIZE};

use crate::fdio::FdIo;
use crate::pagewalk::PageReader;
use crate::present::{delivery_pages, parse_hvm_context, special_pfns, vcpu_pages};
use crate::xc::XenOps;
use crate::xen_source::{bitmap_pfns, mem_err, Prescan, XenSource};
use crate::xtl::Progress;

/// Environment switch: `legacy` leaves the event-delivery pages
/// ([`delivery_pages`]) out of the must-present set, as before issue #21
/// (to compare the two in one soak).
pub const PRESENT_ENV: &str = "LIBXL_POSTCOPY_PRESENT";

/// Environment setting: seconds [`SaveSession::transition`] waits for the
/// destination's READY (0: for ever); default [`READY_TIMEOUT`].
pub const READY_TIMEOUT_ENV: &str = "LIBXL_POSTCOPY_READY_TIMEOUT";

/// Default bound on the wait for READY on Xen, longer than the engine's
/// default: before READY the destination pages out every owed pfn, which
/// takes seconds per 100k pfns without the range op (the emulated host's
/// 65k pfns: 5 s). Past it the switch is abandoned and libxl resumes the
/// guest here.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The bound [`READY_TIMEOUT_ENV`] asks for, or [`READY_TIMEOUT`] (with a
/// warning if the setting is not a number of seconds).
fn ready_timeout_setting() -> Duration {
    crate::env_seconds(READY_TIMEOUT_ENV, READY_TIMEOUT, "waiting for READY for")
}

/// Environment setting: a cap on the post-copy push in bytes per second
/// (K/M/G suffixes, binary: `50M` is 50 MiB/s), fault replies exempt.
/// `xl migrate --postcopy --max-bandwidth=RATE` checks RATE with
/// `libxl_postcopy_parse_rate` and sets it here in xl's own environment,
/// which the save helper inherits (libxl execs it with xl's environ).
pub const MAX_BANDWIDTH_ENV: &str = "LIBXL_POSTCOPY_MAX_BANDWIDTH";

/// The cap [`MAX_BANDWIDTH_ENV`] asks for (`None`, with a warning, when
/// it is not a rate).
fn max_bandwidth_setting() -> Option<u64> {
    let v = std::env::var(MAX_BANDWIDTH_ENV).ok()?;
    postcopy::scheduler::parse_rate(&v)
        .map_err(|e| warn!("{MAX_BANDWIDTH_ENV}: {e}; the push is not capped"))
        .ok()
}

/// The push's own figures for the log: page data pushed over the serving
/// time (the span the cap's pacer holds its average over), and the cap.
fn push_rate_line(pages_pushed: u64, served: Duration, cap: Option<u64>) -> String {
    let bytes = pages_pushed.saturating_mul(PAGE_SIZE as u64);
    let rate = u128::from(bytes) * 1_000_000 / served.as_micros().max(1);
    let cap = cap.map_or_else(|| "uncapped".to_owned(), |c| format!("cap {c} bytes/s"));
    format!(
        "push {pages_pushed} pages, {bytes} bytes of page data in {:.3} s of serving: {rate} bytes/s ({cap})",
        served.as_secs_f64()
    )
}

/// What the source knows at the stop about which pfns to owe.
#[derive(Debug)]
pub enum Known<'a> {
    /// Nothing: every populated pfn is owed, found by asking the type of
    /// every pfn up to max_gpfn while the domain is stopped.
    Nothing,
    /// No pre-copy round ran; the populated pfns were found while the
    /// guest ran, and the log-dirty bitmap collected at the stop (words,
    /// length in bits) names every pfn written, populated or freed since
    /// ([`Prescan::at_stop`]).
    Prescan(Prescan, &'a [u64], u64),
    /// Pre-copy rounds ran: the log-dirty bitmap at suspend (bit n = pfn n
    /// dirtied since last sent) with its length in bits.
    Precopy(&'a [u64], u64),
}

/// The source's share of the downtime, by part, from the call of
/// [`SaveSession::begin`] (the domain is already suspended) to
/// POSTCOPY_TRANSITION.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopParts {
    /// Finding the populated pfns: every pfn's type, or after a prescan
    /// only those of the pfns the log names.
    pub scan: Duration,
    /// pfns whose type was asked during the stop.
    pub asked: u64,
    /// The HVM context, special pfns and page-table walks: the
    /// must-present set.
    pub walks: Duration,
    /// Sending the must-present pages.
    pub present: Duration,
    /// From the end of `begin` to [`SaveSession::transition`]: the CPU,
    /// TSC and HVM records libxenguest writes.
    pub records: Duration,
    /// [`SaveSession::transition`]: POSTCOPY_PFNS, the destination's page
    /// out of the owed pfns until its READY, POSTCOPY_TRANSITION.
    pub ready: Duration,
}

impl std::fmt::Display for StopParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "scan {:.1} ms ({} pfns asked), walks {:.1} ms, present {:.1} ms, records {:.1} ms, ready {:.1} ms",
            ms(self.scan),
            self.asked,
            ms(self.walks),
            ms(self.present),
            ms(self.records),
            ms(self.ready)
        )
    }
}

/// Environment setting: the push window in bytes (K/M suffixes, binary),
/// `on` ([`postcopy::scheduler::XEN_WINDOW`]) or `off` (the default,
/// [`PushPolicy::XEN`]): the most pushed bytes the destination has not yet
/// consumed ([`PushPolicy::window`]). With a window, fault replies travel
/// in-band behind at most this much push.
pub const PUSH_WINDOW_ENV: &str = "LIBXL_POSTCOPY_PUSH_WINDOW";

/// The window [`PUSH_WINDOW_ENV`] asks for: `None` for `off` or unset, the
/// Xen window for `on` or a value that is not a size (with a warning).
fn push_window_setting() -> Option<u64> {
    let v = match std::env::var(PUSH_WINDOW_ENV) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return PushPolicy::XEN.window,
    };
    match v.trim() {
        "off" | "0" | "none" => return None,
        "on" => return Some(postcopy::scheduler::XEN_WINDOW),
        _ => {}
    }
    postcopy::scheduler::parse_rate(&v)
        .map_err(|e| warn!("{PUSH_WINDOW_ENV}: {e}; the Xen window is used"))
        .ok()
        .or(Some(postcopy::scheduler::XEN_WINDOW))
}

/// Environment setting: the most pages per pushed record (1..=1024;
/// default [`PushPolicy::XEN`]'s). Larger batches cost fewer foreign
/// mappings on the source and fewer load hypercalls on the destination per
/// page; an in-band fault reply waits behind at most one of them.
pub const PUSH_BATCH_ENV: &str = "LIBXL_POSTCOPY_PUSH_BATCH";

/// The batch [`PUSH_BATCH_ENV`] asks for (the Xen default, with a warning,
/// when it is not a count in 1..=1024).
fn push_batch_setting() -> usize {
    let default = PushPolicy::XEN.batch_pages;
    match std::env::var(PUSH_BATCH_ENV) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<usize>() {
            Ok(n) if (1..=postcopy::records::MAX_BATCH_PAGES).contains(&n) => n,
            _ => {
                warn!(
                    "{PUSH_BATCH_ENV}={v}: not a page count in 1..={}; {default} pages a record",
                    postcopy::records::MAX_BATCH_PAGES
                );
                default
            }
        },
        _ => default,
    }
}

/// Environment setting: the longest the push waits for the destination
/// to resume the guest before its first batch: seconds, `on`
/// ([`postcopy::scheduler::XEN_HOLD`]) or `off`/`0` (the default,
/// [`PushPolicy::XEN`]: the push starts at once, during the destination's
/// device attach). For a dom0 so short of CPU that the push slows the
/// attach; see [`PushPolicy::hold_until_resumed`].
pub const PUSH_HOLD_ENV: &str = "LIBXL_POSTCOPY_PUSH_HOLD";

/// The hold [`PUSH_HOLD_ENV`] asks for (`None` for off, 0 or unset).
fn push_hold_setting() -> Option<std::time::Duration> {
    match std::env::var(PUSH_HOLD_ENV).as_deref().map(str::trim) {
        Err(_) | Ok("" | "off" | "none") => return PushPolicy::XEN.hold_until_resumed,
        Ok("on") => return Some(postcopy::scheduler::XEN_HOLD),
        Ok(_) => {}
    }
    let d = crate::env_seconds(
        PUSH_HOLD_ENV,
        postcopy::scheduler::XEN_HOLD,
        "the push waits for the guest's resumption at most",
    );
    (!d.is_zero()).then_some(d)
}

/// Environment setting: seconds `--prepage=none` stays pure demand
/// paging, with no fault for that long or past it, before its residual
/// flush (both [`PushPolicy::idle_flush`] and
/// [`PushPolicy::residual_after`]; default [`PushPolicy::XEN`]'s 0.5 s of
/// quiet or 5 s). The other pre-pagers never idle. For a test that needs
/// pages to stay absent after the resume (a backend meeting one), or for
/// a guest whose source should stay needed only for its faults a while.
pub const RESIDUAL_AFTER_ENV: &str = "LIBXL_POSTCOPY_RESIDUAL_AFTER";

/// `(idle_flush, residual_after)` as [`RESIDUAL_AFTER_ENV`] asks: the
/// defaults when unset, empty or not a number of seconds (with a warning).
fn residual_setting() -> (Duration, Duration) {
    let d = PushPolicy::XEN;
    let v = match std::env::var(RESIDUAL_AFTER_ENV) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return (d.idle_flush, d.residual_after),
    };
    match crate::parse_seconds(&v) {
        Some(s) => {
            info!("post-copy source: {RESIDUAL_AFTER_ENV}={v}: --prepage=none flushes the residue after {s:?}");
            (s.max(d.idle_flush), s)
        }
        None => {
            warn!(
                "{RESIDUAL_AFTER_ENV}={v:?} is not a number of seconds; --prepage=none flushes the residue after {:?} of quiet or {:?}",
                d.idle_flush, d.residual_after
            );
            (d.idle_flush, d.residual_after)
        }
    }
}

/// Bound on the wait for the destination's EARLY_DONE before the source
/// stops its guest anyway (the early page-out then overlaps the stop).
pub const EARLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`send_early`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlySent {
    /// pfns named in EARLY_PFNS records.
    pub pfns: u64,
    /// Records sent.
    pub records: u64,
    /// pfns the destination says it paged out.
    pub paged_out: u64,
    /// From the first record to the last EARLY_DONE (or the timeout).
    pub took: Duration,
    /// False if EARLY_DONE did not come within the bound.
    pub answered: bool,
}

/// Issue #15, before the stop (after [`Prescan::run`]): sends the prescan's
/// populated pfns, less the special pfns and the paging ring (which the
/// must-present set and HVM_PARAMS handle), in EARLY_PFNS records on
/// `stream_fd`, and waits up to `timeout` for one EARLY_DONE per record on
/// `back_fd`, so that the destination's page-out happens while the guest
/// still runs. Nothing is sent for a domain without a paging ring pfn.
pub fn send_early<O: XenOps>(
    ops: &O,
    pre: &Prescan,
    stream_fd: RawFd,
    back_fd: RawFd,
    timeout: Duration,
) -> Result<EarlySent, Error> {
    let t = Instant::now();
    let ring = ops
        .hvm_param(sys::HVM_PARAM_PAGING_RING_PFN)
        .map_err(mem_err)?;
    if ring == 0 || ring >= pre.pfns {
        info!("post-copy source: no paging ring pfn ({ring:#x}): no early page-out");
        return Ok(EarlySent::default());
    }
    let special = special_pfns(|param| ops.hvm_param(param).ok());
    let pfns: Vec<Pfn> = pre
        .populated
        .iter()
        .copied()
        .filter(|&p| p != ring && !special.contains(&p))
        .collect();
    let runs = runs_from_sorted(pfns.iter().copied());
    let mut w = postcopy::records::RecordWriter::new(FdIo::new(stream_fd));
    let mut sent = EarlySent {
        pfns: pfns.len() as u64,
        ..EarlySent::default()
    };
    for chunk in runs.chunks(postcopy::records::MAX_RUNS) {
        w.early_pfns(pre.pfns, ring, chunk)?;
        sent.records += 1;
    }
    w.flush()?;
    let deadline = Instant::now() + timeout;
    let mut back = RecordReader::new(FdIo::with_deadline(back_fd, deadline), None);
    let mut answers = 0;
    let result = loop {
        if answers == sent.records {
            break Ok(());
        }
        match back.next_record() {
            Ok(postcopy::records::Record::EarlyDone(n)) => {
                sent.paged_out += n;
                answers += 1;
            }
            Ok(postcopy::records::Record::Abort(reason)) => break Err(Error::PeerAborted(reason)),
            Ok(other) => {
                break Err(postcopy::records::RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "while waiting for POSTCOPY_EARLY_DONE",
                }
                .into())
            }
            Err(_) if Instant::now() >= deadline => break Ok(()),
            Err(e) => break Err(e.into()),
        }
    };
    sent.answered = answers == sent.records;
    sent.took = t.elapsed();
    result?;
    if sent.answered {
        info!(
            "post-copy source: {} pfns in {} EARLY_PFNS records, {} paged out at the destination in {:?}, before the stop",
            sent.pfns, sent.records, sent.paged_out, sent.took
        );
    } else {
        warn!(
            "post-copy source: no EARLY_DONE within {timeout:?}: the guest stops now, the destination's early page-out goes on into the downtime"
        );
    }
    Ok(sent)
}

/// What [`SaveSession::begin`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeginSummary {
    /// Guest size in pfns.
    pub guest_pfns: u64,
    /// Populated pfns.
    pub populated: u64,
    /// pfns whose type was asked while the domain was stopped (all of
    /// them without a prescan).
    pub asked: u64,
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

/// The source side of one migration.
pub struct SaveSession<O: XenOps> {
    mem: XenSource<O>,
    session: SourceSession,
    strategy: StrategySpec,
    owed: Vec<PfnRun>,
    owed_count: u64,
    /// For `--prepage=history`: the owed pages the guest wrote during the
    /// last pre-copy round (its recent working set), empty without one.
    history: Vec<Pfn>,
    back_fd: RawFd,
    stream_fd: RawFd,
    /// The fault lane the destination connected to ([`crate::lane`]).
    lane: Option<std::os::unix::net::UnixStream>,
    /// Whether [`transition`](Self::transition) offers the lane
    /// ([`crate::lane::wanted`] unless set).
    offer_lane: bool,
    /// Bound on [`transition`](Self::transition)'s wait for READY (zero:
    /// none).
    ready_timeout: Duration,
    /// Where the control socket of [`crate::recover`] goes, and the
    /// recovery window (zero: none).
    recovery: (std::path::PathBuf, Duration),
    metrics: Metrics,
    /// The downtime by part so far, and when `begin` returned.
    parts: StopParts,
    begun: Instant,
    /// The push's cap in bytes/s ([`MAX_BANDWIDTH_ENV`]), for the report.
    max_bandwidth: Option<u64>,
}

impl<O: XenOps> std::fmt::Debug for SaveSession<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The engine session says how far the migration got.
        write!(f, "SaveSession({}, {:?})", self.strategy, self.session)
    }
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
    /// Phase 1. `known` says what is known of the owed pfns: nothing, a
    /// prescan and the log since, or the log since pre-copy last sent each
    /// page. Writes to `stream_fd`; fault requests will be read from
    /// `back_fd` (both stay owned by the caller).
    pub fn begin(
        ops: Arc<O>,
        stream_fd: RawFd,
        back_fd: RawFd,
        strategy: StrategySpec,
        known: Known<'_>,
    ) -> Result<(SaveSession<O>, BeginSummary), Error> {
        let stopped_at = Instant::now();
        let metrics = Metrics::new();
        let mem = XenSource::stopped(ops)?;
        let n = mem.pfn_count();
        let (populated, asked) = match &known {
            Known::Prescan(pre, words, nbits) => {
                let a = pre.at_stop(&mem, words, *nbits)?;
                info!(
                    "post-copy source: prescan found {} populated of {} pfns in {:?} while the guest ran; at the stop {} pfns asked again",
                    pre.populated.len(),
                    pre.pfns,
                    pre.took,
                    a.asked
                );
                (a.populated, a.asked)
            }
            Known::Nothing | Known::Precopy(..) => (mem.populated_in(0, n)?, n),
        };
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
        let vcpus = parse_hvm_context(&context).map_err(|e| {
            // Our own domain's context: a local failure, typed.
            Error::Memory(postcopy::memory::MemoryError::Backend {
                errno: None,
                source: Box::new(e),
            })
        })?;
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
        let dirty_bits = match known {
            Known::Precopy(words, nbits) => Some(bitmap_pfns(words, nbits.min(n))),
            Known::Nothing | Known::Prescan(..) => None,
        };
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
        let max_bandwidth = max_bandwidth_setting();
        let (idle_flush, residual_after) = residual_setting();
        match max_bandwidth {
            Some(r) => info!(
                "post-copy source: push capped at {r} bytes/s ({MAX_BANDWIDTH_ENV}); fault replies exempt"
            ),
            None => info!("post-copy source: push not capped"),
        }
        let mut session = SourceSession::begin(
            Box::new(FdIo::new(stream_fd)),
            n,
            populated.len() as u64,
            strategy,
            PushPolicy {
                batch_pages: push_batch_setting(),
                max_bandwidth,
                window: push_window_setting(),
                hold_until_resumed: push_hold_setting(),
                fault_nice: crate::fault_nice_setting(),
                idle_flush,
                residual_after,
            },
        )?;
        session.set_stopped_at(stopped_at);
        let stream = session.stream()?;
        let mut buf = Vec::new();
        send_pages(&mem, stream, &send_now, Cause::Precopy, &mut buf, &metrics)?;
        stream.flush()?;
        Metrics::add(&metrics.pages_skipped, n - populated.len() as u64);
        let summary = BeginSummary {
            guest_pfns: n,
            populated: populated.len() as u64,
            asked,
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
        let parts = StopParts {
            scan: scanned,
            asked,
            walks: walked - scanned,
            present: stopped_at.elapsed() - walked,
            ..StopParts::default()
        };
        info!(
            "post-copy source: begin took {:?} (populated scan {scanned:?} of {asked} pfns, page-table walks {:?}, must-present pages {:?})",
            stopped_at.elapsed(),
            parts.walks,
            parts.present
        );
        Ok((
            SaveSession {
                mem,
                session,
                strategy,
                owed,
                owed_count,
                history,
                back_fd,
                stream_fd,
                lane: None,
                offer_lane: crate::lane::wanted(),
                ready_timeout: ready_timeout_setting(),
                recovery: (
                    crate::status_file::status_dir(),
                    crate::recover::recover_timeout_setting(),
                ),
                metrics,
                parts,
                begun: Instant::now(),
                max_bandwidth,
            },
            summary,
        ))
    }

    /// True after [`transition`](Self::transition) if the destination
    /// took the fault lane ([`crate::lane`]): replies will not go in-band.
    pub fn replies_on_lane(&self) -> bool {
        self.lane.is_some()
    }

    /// The owed runs.
    pub fn owed(&self) -> &[PfnRun] {
        &self.owed
    }

    /// The source's share of the downtime by part (`records` and `ready`
    /// once [`transition`](Self::transition) returned).
    pub fn stop_parts(&self) -> StopParts {
        self.parts
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets the bound on [`transition`](Self::transition)'s wait for
    /// READY (zero: none); by default [`READY_TIMEOUT`] or what
    /// [`READY_TIMEOUT_ENV`] says.
    pub fn set_ready_timeout(&mut self, timeout: Duration) {
        self.ready_timeout = timeout;
    }

    /// Sets the folder of the recovery control socket and the recovery
    /// window (zero: none), whatever the environment says
    /// ([`crate::recover`]).
    pub fn set_recovery(&mut self, dir: std::path::PathBuf, timeout: Duration) {
        self.recovery = (dir, timeout);
    }

    /// Offers the fault lane at the switch, or not, whatever the
    /// environment says (it is read once, in [`begin`](Self::begin)).
    pub fn set_offer_lane(&mut self, on: bool) {
        self.offer_lane = on;
    }

    /// Phase 2: POSTCOPY_PFNS, the end-of-pre-switch marker (an empty
    /// POSTCOPY_VCPU_STATE: on Xen the CPU state travels in HVM_CONTEXT,
    /// already sent), then wait for the destination's READY on the back
    /// channel before POSTCOPY_TRANSITION. An ABORT instead is
    /// [`Error::PeerAborted`]: the guest never ran there and may be resumed
    /// here (the C ABI returns -ECANCELED). No READY within the ready
    /// timeout is [`Error::Timeout`], before the switch as well (the C ABI
    /// returns -ETIMEDOUT and libxl resumes the guest here).
    pub fn transition(&mut self) -> Result<(), Error> {
        let entered = Instant::now();
        self.parts.records = entered - self.begun;
        let n = self.mem.pfn_count();
        let stop = Arc::new(AtomicBool::new(false));
        let mut back = RecordReader::new(
            Box::new(FdIo::with_stop(self.back_fd, stop.clone())) as Box<dyn std::io::Read + Send>,
            Some(n),
        );
        self.session.bound_ready(
            self.ready_timeout,
            Arc::new(move || stop.store(true, Ordering::SeqCst)),
        );
        // Offered before the owed pfns go out, so the destination finds
        // it when it has them; taken after its READY.
        let offer = self
            .offer_lane
            .then(|| crate::lane::Offer::open(&crate::status_file::status_dir(), self.stream_fd))
            .flatten();
        self.session
            .switch(self.owed.clone(), &[], &mut back, &self.metrics)?;
        self.lane = offer.and_then(crate::lane::Offer::take);
        self.parts.ready = entered.elapsed();
        info!(
            "post-copy source: TRANSITION sent {:?} after the stop; fault replies {}",
            self.session.stopped_at().elapsed(),
            if self.lane.is_some() {
                "on their own lane"
            } else {
                "in-band"
            }
        );
        info!("post-copy source: downtime parts: {}", self.parts);
        Ok(())
    }

    /// Phase 3: serve until the destination holds every owed page. A
    /// link that breaks after the switch is recovered through this
    /// helper's control socket ([`crate::recover`]). Returns 0, or
    /// [`crate::recover::STREAM_REPLACED`] when the migration completed
    /// over a connection that replaced xl's stream.
    pub fn serve(&mut self) -> Result<i32, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.mem.pfn_count();
        let fault_rx = RecordReader::new(
            Box::new(FdIo::with_stop(self.back_fd, stop.clone())) as Box<dyn std::io::Read + Send>,
            Some(n),
        );
        let progress = Mutex::new(Progress::new("Post-copy pages", self.owed_count));
        self.session.set_progress(Box::new(move |done, _owed| {
            progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(done);
        }));
        let rescue = crate::recover::Rescue::open_in(
            &self.recovery.0,
            self.mem.ops().domid(),
            "source",
            self.lane.is_some(),
            self.recovery.1,
        );
        let (replies, lane) = crate::lane::replies(self.lane.take(), |s| {
            Box::new(s) as Box<dyn std::io::Write + Send>
        });
        let links = ServeLinks {
            fault_rx,
            replies,
            closer: crate::lane::closer(stop, lane),
        };
        let history = std::mem::take(&mut self.history);
        self.session
            .set_status(crate::status_file::status_config(self.mem.ops().domid()));
        let mut hook = rescue.as_ref().map(|r| r.source_hook());
        let recovery = match (&rescue, hook.as_mut()) {
            (Some(r), Some(h)) => Some(Recovery {
                timeout: r.timeout(),
                reconnect: h,
            }),
            _ => None,
        };
        let serving = Instant::now();
        let r = self
            .session
            .serve(&self.mem, links, history, &self.metrics, recovery);
        let served = serving.elapsed();
        Metrics::set_duration(
            &self.metrics.postcopy_time_us,
            self.session.stopped_at().elapsed(),
        );
        let snap = self.metrics.snapshot();
        match &r {
            Ok(()) => {
                info!("post-copy source done:\n{snap}");
                info!(
                    "post-copy source: {}",
                    push_rate_line(snap.pages_pushed, served, self.max_bandwidth)
                );
            }
            // The destination proved the guest never ran there (its
            // domain destroyed before libxl unpaused it): this copy is
            // the guest's latest state, and libxl resumes it (-ECANCELED).
            Err(e @ Error::PeerAborted(_)) => log::error!(
                "post-copy: the destination gave up before the guest ever ran there ({e}); this copy is the guest's latest state and keeps every page: libxl resumes it here"
            ),
            // After the switch: the destination may be without a pager;
            // say what this copy still holds that the guest needs.
            Err(e) => {
                let sent = snap.pages_pushed + snap.pages_faulted + snap.pages_zero;
                log::error!(
                    "post-copy source failed after the switch ({e}): {sent} of {} owed pages were sent, {} never left this host; this copy keeps every page, suspended",
                    self.owed_count,
                    self.owed_count.saturating_sub(sent)
                );
            }
        }
        r.map(|()| crate::recover::served(&self.metrics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_after_sets_both_bounds_and_refuses_nonsense() {
        // The only test that touches this variable.
        let d = PushPolicy::XEN;
        std::env::remove_var(RESIDUAL_AFTER_ENV);
        assert_eq!(residual_setting(), (d.idle_flush, d.residual_after));
        std::env::set_var(RESIDUAL_AFTER_ENV, "120");
        let s = Duration::from_secs(120);
        assert_eq!(residual_setting(), (s, s));
        std::env::set_var(RESIDUAL_AFTER_ENV, "0.1");
        assert_eq!(
            residual_setting(),
            (d.idle_flush, Duration::from_millis(100))
        );
        for bad in ["soon", "-3", "nan", " "] {
            std::env::set_var(RESIDUAL_AFTER_ENV, bad);
            assert_eq!(
                residual_setting(),
                (d.idle_flush, d.residual_after),
                "{bad}"
            );
        }
        std::env::remove_var(RESIDUAL_AFTER_ENV);
    }

    #[test]
    fn the_push_rate_is_page_data_over_the_serving_time() {
        // 512 pages of 4 KiB in 2 s: 1 MiB/s.
        let line = push_rate_line(512, Duration::from_secs(2), Some(1 << 20));
        assert!(line.contains("2097152 bytes of page data"), "{line}");
        assert!(
            line.contains(": 1048576 bytes/s (cap 1048576 bytes/s)"),
            "{line}"
        );
        let line = push_rate_line(0, Duration::ZERO, None);
        assert!(line.ends_with(": 0 bytes/s (uncapped)"), "{line}");
    }
}
