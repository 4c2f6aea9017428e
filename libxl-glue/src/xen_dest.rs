//! The destination-side Xen backend: the new domain's memory with
//! mem_paging, as `tools/xenpaging` drives it, plus the fix Debian's
//! xenpaging lacks (every response carries `VM_EVENT_INTERFACE_VERSION`).
//!
//! | engine need | Xen calls |
//! |---|---|
//! | write a page before the switch | `xc_get_pfn_type_batch`, `xc_domain_populate_physmap_exact` for unpopulated pfns, `xenforeignmemory_map` (rw), copy, unmap |
//! | enable paging (once, at the first owed pfn) | `xc_hvm_param_get(PAGING_RING_PFN)`, populate it if needed, `xenforeignmemory_map` it, `xc_mem_paging_enable`, `xenevtchn_bind_interdomain`, `SHARED_RING_INIT`/`BACK_RING_INIT` ([`crate::ring`]), `xc_domain_decrease_reservation_exact` of the ring pfn |
//! | `mark_absent` | populate unpopulated owed pfns, `xc_mem_paging_nominate` + `xc_mem_paging_evict` each |
//! | `wait_fault` | drain the ring (one fault per absent page; a request flagged `VM_EVENT_FLAG_FOREIGN`, raised by a dom0 backend's grant op or the device model's mapping, is handed out before every vCPU's); if empty, `RING_FINAL_CHECK_FOR_REQUESTS` then `poll` on `xenevtchn_fd` + `xenevtchn_pending`/`unmask` |
//! | `install` / `install_zero` / `install_batch` | `XENMEM_paging_op_load_batch` (one call per [`LOAD_BATCH_MAX`] pages; zero pages flagged, not copied), or `xc_mem_paging_load` per page on a hypervisor without it; then a response per waiting request and one `xenevtchn_notify` |
//!
//! Ordering rule: a request and the load of its page race (the vCPU may
//! fault on a page the bulk channel is installing). Both sides take one
//! lock around "is it loaded / who waits", and the load sets `loaded`
//! before answering the waiters, so a request is answered either by the
//! load or, if it is read after the load, at once — never lost.

use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use libxl_sys as sys;
use log::{debug, info, warn};
use postcopy::memory::{
    DestinationMemory, Fault, FaultOrigin, Installed, MemResult, MemoryError, PageIn, PfnRun,
};
use postcopy::{Pfn, PAGE_SIZE};

use crate::ring::{paging_response, vcpu_release_response, BackRing};
use crate::xc::{has_content, XcError, XenOps, ABSENT_RANGE_MAX, LOAD_BATCH_MAX, MAX_BATCH};
use crate::xen_source::mem_err;

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

struct Ring {
    back: BackRing,
    page: NonNull<u8>,
    pfn: Pfn,
}

// SAFETY: the ring page pointer is only dereferenced through `back`, under
// the state mutex.
unsafe impl Send for Ring {}

#[derive(Default)]
struct State {
    ring: Option<Ring>,
    evicted: BitVec,
    loaded: BitVec,
    dropped: BitVec,
    /// Requests waiting for a page, by gfn.
    waiters: HashMap<Pfn, Vec<sys::vm_event_request_t>>,
    /// Faults read from the ring and not yet handed to the engine.
    faults: VecDeque<Fault>,
    /// Evicted and not yet loaded or dropped.
    absent: u64,
    /// How the owed pfns were paged out: by range, page by page, and the
    /// time it took (the destination's share of the downtime).
    by_range: u64,
    by_page: u64,
    page_out_time: Duration,
    /// False once the hypervisor turned the range op down (or
    /// `LIBXL_POSTCOPY_EVICT=per-page` asked for the old way).
    range_op: bool,
    /// False once the hypervisor turned the batch load op down (or
    /// `LIBXL_POSTCOPY_LOAD=per-page` asked for the old way).
    batch_op: bool,
    /// How the owed pages came in so far.
    loads: LoadStats,
    /// Paged out early (before the source stopped, from its prescan) and
    /// not yet claimed by the owed list, written, or given back.
    early: BitVec,
    /// What the early page-out did ([`EarlyStats`]).
    early_stats: EarlyStats,
}

/// What the early page-out (issue #15) did: before the stop, and the
/// difference at the stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlyStats {
    /// pfns paged out before the stop (EARLY_PFNS).
    pub paged_out: u64,
    /// How long that took (the source's guest still ran).
    pub took: Duration,
    /// Of them, owed at the stop: nothing more to do.
    pub kept: u64,
    /// Of them, must-present at the stop: loaded with their data.
    pub written: u64,
    /// Of them, neither (the guest freed them meanwhile): given back.
    pub given_back: u64,
    /// Owed pfns the early page-out had not covered: paged out at the
    /// stop.
    pub added: u64,
    /// Time of the stop-time difference: the given-back pfns.
    pub give_back_time: Duration,
}

/// How the owed pages were loaded: by the batch op, page by page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Pages loaded by `XENMEM_paging_op_load_batch`.
    pub batched: u64,
    /// Of those, zero pages (cleared by Xen, nothing copied).
    pub batched_zero: u64,
    /// Calls of the batch op.
    pub batch_calls: u64,
    /// Pages loaded with `xc_mem_paging_load`, one call each.
    pub per_page: u64,
}

/// Environment switch: `per-page` pages owed pfns out with populate +
/// nominate + evict even when the hypervisor has the range op (to compare
/// the two on one host).
pub const EVICT_ENV: &str = "LIBXL_POSTCOPY_EVICT";

/// Environment switch: `per-page` loads owed pages with one
/// `xc_mem_paging_load` each even when the hypervisor has the batch op
/// (to compare the two on one host).
pub const LOAD_ENV: &str = "LIBXL_POSTCOPY_LOAD";

fn bit(b: &BitVec, p: Pfn) -> bool {
    usize::try_from(p)
        .ok()
        .and_then(|i| b.get(i).map(|x| *x))
        .unwrap_or(false)
}

fn set(b: &mut BitVec, p: Pfn) {
    if let Some(mut x) = usize::try_from(p).ok().and_then(|i| b.get_mut(i)) {
        *x = true;
    }
}

/// The owed/absent bookkeeping of a [`XenDestination`], readable from
/// another thread while the engine serves.
#[derive(Clone)]
pub struct AbsentView {
    st: Arc<Mutex<State>>,
}

impl std::fmt::Debug for AbsentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbsentView")
            .field("absent", &self.absent())
            .finish()
    }
}

impl AbsentView {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Owed pages still absent (evicted, not loaded, not dropped).
    pub fn absent(&self) -> u64 {
        self.lock().absent
    }

    /// True for a pfn owed after the switch (paged out at READY).
    pub fn is_owed(&self, pfn: Pfn) -> bool {
        bit(&self.lock().evicted, pfn)
    }
}

/// A destination domain's memory with mem_paging.
pub struct XenDestination<O: XenOps> {
    ops: Arc<O>,
    pfns: u64,
    /// Shared with the [`AbsentView`]s of the guest watch.
    st: Arc<Mutex<State>>,
}

impl<O: XenOps> std::fmt::Debug for XenDestination<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenDestination")
            .field("domid", &self.ops.domid())
            .field("pfns", &self.pfns)
            .finish_non_exhaustive()
    }
}

impl<O: XenOps> XenDestination<O> {
    /// The memory of `ops`' domain, `pfns` pfns (the source's guest size).
    pub fn new(ops: Arc<O>, pfns: u64) -> MemResult<XenDestination<O>> {
        let n = usize::try_from(pfns).map_err(|_| MemoryError::OutOfRange { pfn: pfns, pfns })?;
        Ok(XenDestination {
            ops,
            pfns,
            st: Arc::new(Mutex::new(State {
                evicted: BitVec::repeat(false, n),
                loaded: BitVec::repeat(false, n),
                dropped: BitVec::repeat(false, n),
                range_op: std::env::var(EVICT_ENV).map_or(true, |v| v != "per-page"),
                batch_op: std::env::var(LOAD_ENV).map_or(true, |v| v != "per-page"),
                early: BitVec::repeat(false, n),
                ..State::default()
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, pfn: Pfn) -> MemResult<()> {
        if pfn >= self.pfns {
            return Err(MemoryError::OutOfRange {
                pfn,
                pfns: self.pfns,
            });
        }
        Ok(())
    }

    /// Pages out `pfns` (none paged out yet, ascending): consecutive ones
    /// by range with one hypercall per [`ABSENT_RANGE_MAX`] (holes and
    /// pages alike); a pfn the range op stops at, or all of them without
    /// the op, with populate + nominate + evict. `early`: before the stop,
    /// into the early set rather than the owed one.
    fn page_out(&self, pfns: &[Pfn], early: bool) -> MemResult<()> {
        let mut i = 0;
        while i < pfns.len() {
            if !self.lock().range_op {
                return self.evict_each(&pfns[i..], early);
            }
            let mut j = i + 1;
            while j < pfns.len() && pfns[j] == pfns[j - 1] + 1 && j - i < ABSENT_RANGE_MAX as usize
            {
                j += 1;
            }
            let nr = u32::try_from(j - i).unwrap_or(ABSENT_RANGE_MAX);
            let done = match self.ops.paging_absent_range(pfns[i], nr) {
                Ok(d) => usize::try_from(d).unwrap_or(0).min(j - i),
                Err(e @ XcError::PagingUnavailable { .. }) => {
                    info!("paging owed pfns out page by page: {e}");
                    self.lock().range_op = false;
                    continue;
                }
                Err(e) => return Err(mem_err(e)),
            };
            Self::paged_out(&mut self.lock(), &pfns[i..i + done], early, true);
            i += done;
            if i < j {
                // Neither a hole nor a page: the old way says why.
                self.evict_each(&pfns[i..=i], early)?;
                i += 1;
            }
        }
        Ok(())
    }

    /// Records `pfns` as paged out: owed (and absent), or early.
    fn paged_out(st: &mut State, pfns: &[Pfn], early: bool, by_range: bool) {
        let n = pfns.len() as u64;
        for &p in pfns {
            set(
                if early {
                    &mut st.early
                } else {
                    &mut st.evicted
                },
                p,
            );
        }
        if early {
            st.early_stats.paged_out += n;
            return;
        }
        st.absent += n;
        if by_range {
            st.by_range += n;
        } else {
            st.by_page += n;
        }
    }

    /// Populate (where needed) + nominate + evict, page by page.
    fn evict_each(&self, pfns: &[Pfn], early: bool) -> MemResult<()> {
        self.populate_missing(pfns)?;
        for &p in pfns {
            self.ops.paging_nominate(p).map_err(mem_err)?;
            self.ops.paging_evict(p).map_err(mem_err)?;
            Self::paged_out(&mut self.lock(), &[p], early, false);
        }
        Ok(())
    }

    /// Before the source stops (issue #15): pages out the populated pfns
    /// of its prescan (`runs`, from EARLY_PFNS), so that at the stop only
    /// the difference is left ([`Self::mark_absent`] claims the owed ones,
    /// [`Self::write_pages`] loads the must-present ones,
    /// [`Self::finish_early`] gives the rest back). mem_paging needs the
    /// ring pfn, which the source's HVM_PARAMS bring only after the stop:
    /// `ring_pfn` is set now (the same value HVM_PARAMS sets again).
    /// Returns how many pfns went out.
    pub fn evict_early(&self, ring_pfn: Pfn, runs: &[PfnRun]) -> MemResult<u64> {
        let t = Instant::now();
        self.check(ring_pfn)?;
        if self.ring_pfn().is_none() {
            let now = self
                .ops
                .hvm_param(sys::HVM_PARAM_PAGING_RING_PFN)
                .map_err(mem_err)?;
            if now == 0 {
                self.ops
                    .set_hvm_param(sys::HVM_PARAM_PAGING_RING_PFN, ring_pfn)
                    .map_err(mem_err)?;
            } else if now != ring_pfn {
                return Err(MemoryError::Unsupported {
                    what: "page out early",
                    why: format!(
                        "the paging ring is at pfn {now:#x} here, the source says {ring_pfn:#x}"
                    ),
                });
            }
        }
        self.enable_paging()?;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut pfns = runs.iter().flat_map(|r| r.pfns()).peekable();
        let before = self.lock().early_stats.paged_out;
        while pfns.peek().is_some() {
            batch.clear();
            batch.extend(pfns.by_ref().take(MAX_BATCH));
            for &p in &batch {
                self.check(p)?;
            }
            {
                let st = self.lock();
                batch.retain(|&p| p != ring_pfn && !bit(&st.early, p) && !bit(&st.evicted, p));
            }
            self.page_out(&batch, true)?;
        }
        let mut st = self.lock();
        st.early_stats.took += t.elapsed();
        Ok(st.early_stats.paged_out - before)
    }

    /// Loads early pfns now needed present (`None`: a zeroed page) with
    /// the batch op, page by page without it, and takes them out of the
    /// early set.
    fn load_early(&self, pages: &[(Pfn, Option<&[u8]>)]) -> MemResult<()> {
        let mut rest = pages;
        while let Some(&(head, page)) = rest.first() {
            let n = if self.lock().batch_op {
                match self
                    .ops
                    .paging_load_batch(&rest[..rest.len().min(LOAD_BATCH_MAX)])
                {
                    Ok(n) => usize::try_from(n).unwrap_or(0).min(rest.len()),
                    Err(XcError::PagingUnavailable { .. }) => {
                        self.lock().batch_op = false;
                        continue;
                    }
                    Err(e) => return Err(mem_err(e)),
                }
            } else {
                0
            };
            let n = if n == 0 {
                self.ops
                    .paging_load(head, page.unwrap_or(&ZERO_PAGE))
                    .map_err(mem_err)?;
                1
            } else {
                n
            };
            let mut st = self.lock();
            for &(p, _) in &rest[..n] {
                if let Some(mut x) = usize::try_from(p).ok().and_then(|i| st.early.get_mut(i)) {
                    *x = false;
                }
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// At the stop, once the owed list is in: gives back the early pfns
    /// nobody claimed (the guest freed them after the prescan). Xen's
    /// guest_remove_page takes a paged-out gfn, but queues a DROP_PAGE
    /// request for it that holds a slot of the paging ring until answered
    /// (a few dozen slots): so they are loaded as zero pages (nothing
    /// copied) and then released as ordinary pages, a batch per call.
    pub fn finish_early(&self) -> MemResult<EarlyStats> {
        let t = Instant::now();
        let left: Vec<Pfn> = self.lock().early.iter_ones().map(|i| i as Pfn).collect();
        for chunk in left.chunks(MAX_BATCH) {
            let zero: Vec<(Pfn, Option<&[u8]>)> = chunk.iter().map(|&p| (p, None)).collect();
            self.load_early(&zero)?;
            self.ops.decrease_reservation(chunk).map_err(mem_err)?;
        }
        let mut st = self.lock();
        st.early_stats.given_back += left.len() as u64;
        st.early_stats.give_back_time += t.elapsed();
        Ok(st.early_stats)
    }

    /// What the early page-out did so far.
    pub fn early_stats(&self) -> EarlyStats {
        self.lock().early_stats
    }

    /// How the owed pfns went out so far: (by range, page by page, time).
    pub fn page_out_stats(&self) -> (u64, u64, Duration) {
        let st = self.lock();
        (st.by_range, st.by_page, st.page_out_time)
    }

    /// How the owed pages were loaded so far.
    pub fn load_stats(&self) -> LoadStats {
        self.lock().loads
    }

    /// The Xen calls of the domain.
    pub fn ops(&self) -> &Arc<O> {
        &self.ops
    }

    /// Owed pages still absent (evicted, not loaded, not dropped).
    pub fn absent(&self) -> u64 {
        self.lock().absent
    }

    /// A handle that reads the owed and absent pages while the engine
    /// holds the backend (the guest watch's counts and post-mortem).
    pub fn absent_view(&self) -> AbsentView {
        AbsentView {
            st: self.st.clone(),
        }
    }

    /// The paging ring pfn, once paging is enabled.
    pub fn ring_pfn(&self) -> Option<Pfn> {
        self.lock().ring.as_ref().map(|r| r.pfn)
    }

    /// Populates the unpopulated pfns of `pfns` (one type query and one
    /// populate call per batch).
    fn populate_missing(&self, pfns: &[Pfn]) -> MemResult<()> {
        for chunk in pfns.chunks(MAX_BATCH) {
            let types = self.ops.pfn_types(chunk).map_err(mem_err)?;
            let missing: Vec<Pfn> = chunk
                .iter()
                .zip(&types)
                .filter(|(_, &t)| !has_content(t))
                .map(|(&p, _)| p)
                .collect();
            self.ops.populate(&missing).map_err(mem_err)?;
        }
        Ok(())
    }

    /// Before the switch: writes consecutive-or-not pages (`data` holds
    /// `pfns.len()` pages), populating pfns as needed.
    pub fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> MemResult<()> {
        for &p in pfns {
            self.check(p)?;
        }
        {
            let st = self.lock();
            if let Some(&p) = pfns.iter().find(|&&p| bit(&st.evicted, p)) {
                return Err(MemoryError::Os {
                    op: format!("write pfn {p:#x}, which is already paged out"),
                    source: std::io::Error::from_raw_os_error(libc::EBUSY),
                });
            }
        }
        // Paged out early, must be present after all: loaded with the
        // data instead; the rest written as usual.
        let (early, rest): (Vec<_>, Vec<_>) = {
            let st = self.lock();
            pfns.iter()
                .copied()
                .zip(data.chunks(PAGE_SIZE))
                .partition(|&(p, _)| bit(&st.early, p))
        };
        if early.is_empty() {
            return self.write_present(pfns, data);
        }
        let load: Vec<(Pfn, Option<&[u8]>)> = early.iter().map(|&(p, d)| (p, Some(d))).collect();
        self.load_early(&load)?;
        self.lock().early_stats.written += early.len() as u64;
        let rest_pfns: Vec<Pfn> = rest.iter().map(|&(p, _)| p).collect();
        let rest_data: Vec<u8> = rest.iter().flat_map(|&(_, d)| d).copied().collect();
        self.write_present(&rest_pfns, &rest_data)
    }

    /// [`Self::write_pages`] of pfns not paged out.
    fn write_present(&self, pfns: &[Pfn], data: &[u8]) -> MemResult<()> {
        self.populate_missing(pfns)?;
        for (chunk, d) in pfns
            .chunks(MAX_BATCH)
            .zip(data.chunks(MAX_BATCH * PAGE_SIZE))
        {
            self.ops.write_pages(chunk, d).map_err(mem_err)?;
        }
        Ok(())
    }

    /// Enables mem_paging and sets the ring up (idempotent), as
    /// xenpaging's `xenpaging_init` does.
    pub fn enable_paging(&self) -> MemResult<()> {
        let mut st = self.lock();
        if st.ring.is_some() {
            return Ok(());
        }
        let ring_pfn = self
            .ops
            .hvm_param(sys::HVM_PARAM_PAGING_RING_PFN)
            .map_err(mem_err)?;
        if ring_pfn == 0 {
            return Err(MemoryError::Unsupported {
                what: "enable mem_paging",
                why: "HVM_PARAM_PAGING_RING_PFN is not set (HVM_PARAMS must precede POSTCOPY_PFNS)"
                    .into(),
            });
        }
        let t = self.ops.pfn_types(&[ring_pfn]).map_err(mem_err)?;
        if !t.first().copied().is_some_and(has_content) {
            self.ops.populate(&[ring_pfn]).map_err(mem_err)?;
        }
        let page = self.ops.map_ring(ring_pfn).map_err(mem_err)?;
        let setup = || -> Result<BackRing, XcError> {
            let port = self.ops.paging_enable()?;
            self.ops.evtchn_bind(port)?;
            // SAFETY: page is the mapped ring page (4096 bytes, page
            // aligned), kept mapped until Drop unmaps it after the ring.
            let back = unsafe { BackRing::init_shared(page) };
            // Take the ring out of the guest's physmap (xenpaging does):
            // the guest must not see or balloon it.
            self.ops.decrease_reservation(&[ring_pfn])?;
            info!(
                "mem_paging enabled on domain {}: ring pfn {ring_pfn:#x}, event channel {port}",
                self.ops.domid()
            );
            Ok(back)
        };
        match setup() {
            Ok(back) => {
                st.ring = Some(Ring {
                    back,
                    page,
                    pfn: ring_pfn,
                });
                Ok(())
            }
            Err(e) => {
                self.ops.unmap_ring(page);
                Err(mem_err(e))
            }
        }
    }

    /// Answers every request waiting on `pfn`; true if the front end needs
    /// a notification.
    fn answer(st: &mut State, pfn: Pfn) -> bool {
        let Some(reqs) = st.waiters.remove(&pfn) else {
            return false;
        };
        let Some(ring) = st.ring.as_mut() else {
            return false;
        };
        let mut notify = false;
        for r in &reqs {
            notify |= ring.back.push_response(&paging_response(r));
        }
        notify
    }

    fn notify(&self) -> MemResult<()> {
        self.ops.evtchn_notify().map_err(mem_err)
    }

    /// Loads one page (or answers its waiters if it needs no load).
    fn load(&self, pfn: Pfn, page: &[u8]) -> MemResult<Installed> {
        self.check(pfn)?;
        {
            let mut st = self.lock();
            let needs = bit(&st.evicted, pfn) && !bit(&st.loaded, pfn) && !bit(&st.dropped, pfn);
            if !needs {
                let notify = Self::answer(&mut st, pfn);
                drop(st);
                if notify {
                    self.notify()?;
                }
                return Ok(Installed::AlreadyPresent);
            }
        }
        let outcome = match self.ops.paging_load(pfn, page) {
            Ok(()) => Installed::Installed,
            // Dropped by the guest (balloon) between our check and the load.
            Err(XcError::NotPagedOut { .. }) => Installed::AlreadyPresent,
            Err(e) => return Err(mem_err(e)),
        };
        let mut st = self.lock();
        if outcome == Installed::Installed {
            st.loads.per_page += 1;
        }
        let notify = Self::loaded(&mut st, pfn);
        drop(st);
        if notify {
            self.notify()?;
        }
        Ok(outcome)
    }

    /// Records that `pfn` is in (loaded, or dropped by the guest before
    /// its load) and answers its waiters; true if the front end needs a
    /// notification.
    fn loaded(st: &mut State, pfn: Pfn) -> bool {
        if !bit(&st.loaded, pfn) {
            set(&mut st.loaded, pfn);
            if !bit(&st.dropped, pfn) {
                st.absent = st.absent.saturating_sub(1);
            }
        }
        Self::answer(st, pfn)
    }

    /// Loads many pages (`None`: a zero page) with the batch op, one call
    /// per [`LOAD_BATCH_MAX`], answering the waiters of each call's pages
    /// as soon as it returns; page by page where the op is missing.
    /// Pages that need no load only have their waiters answered.
    fn load_many(&self, pages: &[(Pfn, Option<&[u8]>)]) -> MemResult<Installed> {
        for &(p, _) in pages {
            self.check(p)?;
        }
        let mut todo = Vec::with_capacity(pages.len());
        let mut notify = false;
        {
            let mut st = self.lock();
            for &(pfn, page) in pages {
                if bit(&st.evicted, pfn) && !bit(&st.loaded, pfn) && !bit(&st.dropped, pfn) {
                    todo.push((pfn, page));
                } else {
                    notify |= Self::answer(&mut st, pfn);
                }
            }
        }
        if notify {
            self.notify()?;
        }
        let outcome = if todo.is_empty() {
            Installed::AlreadyPresent
        } else {
            Installed::Installed
        };
        let mut rest = &todo[..];
        while let Some(&(head, head_page)) = rest.first() {
            if !self.lock().batch_op {
                for &(pfn, page) in rest {
                    self.load(pfn, page.unwrap_or(&ZERO_PAGE))?;
                }
                break;
            }
            let chunk = &rest[..rest.len().min(LOAD_BATCH_MAX)];
            let done = match self.ops.paging_load_batch(chunk) {
                Ok(0) => {
                    // No progress reported: this one the old way.
                    self.load(head, head_page.unwrap_or(&ZERO_PAGE))?;
                    rest = &rest[1..];
                    continue;
                }
                Ok(n) => usize::try_from(n).unwrap_or(chunk.len()).min(chunk.len()),
                // Dropped by the guest (balloon) after our check: nothing
                // to load, its waiters (if any) are answered below.
                Err(XcError::NotPagedOut { .. }) => {
                    let mut st = self.lock();
                    let notify = Self::loaded(&mut st, head);
                    drop(st);
                    if notify {
                        self.notify()?;
                    }
                    rest = &rest[1..];
                    continue;
                }
                Err(e @ XcError::PagingUnavailable { .. }) => {
                    info!("loading owed pages one by one: {e}");
                    self.lock().batch_op = false;
                    continue;
                }
                Err(e) => return Err(mem_err(e)),
            };
            let mut notify = false;
            {
                let mut st = self.lock();
                st.loads.batch_calls += 1;
                st.loads.batched += done as u64;
                st.loads.batched_zero +=
                    chunk[..done].iter().filter(|(_, p)| p.is_none()).count() as u64;
                for &(pfn, _) in &chunk[..done] {
                    notify |= Self::loaded(&mut st, pfn);
                }
            }
            if notify {
                self.notify()?;
            }
            rest = &rest[done..];
        }
        Ok(outcome)
    }

    /// Reads every queued request; answers those that need no page.
    /// Returns whether the front end needs a notification.
    fn drain(&self, st: &mut State) -> bool {
        let mut notify = false;
        loop {
            let Some(ring) = st.ring.as_mut() else {
                return false;
            };
            let Some(req) = ring.back.pop_request() else {
                break;
            };
            if req.version != sys::VM_EVENT_INTERFACE_VERSION {
                warn!(
                    "vm_event request with interface version {} (expected {})",
                    req.version,
                    sys::VM_EVENT_INTERFACE_VERSION
                );
            }
            if req.reason != sys::VM_EVENT_REASON_MEM_PAGING {
                warn!(
                    "unexpected vm_event reason {} on the paging ring",
                    req.reason
                );
                notify |= ring.back.push_response(&paging_response(&req));
                continue;
            }
            // SAFETY: a MEM_PAGING request carries the mem_paging member.
            let (gfn, pflags) = unsafe { (req.u.mem_paging.gfn, req.u.mem_paging.flags) };
            if pflags & sys::MEM_PAGING_DROP_PAGE != 0 {
                // The guest ballooned an absent page out: nothing to load,
                // and Xen expects no response.
                debug!("gfn {gfn:#x} dropped by the guest");
                if bit(&st.evicted, gfn) && !bit(&st.loaded, gfn) && !bit(&st.dropped, gfn) {
                    st.absent = st.absent.saturating_sub(1);
                }
                set(&mut st.dropped, gfn);
                continue;
            }
            let absent = bit(&st.evicted, gfn) && !bit(&st.loaded, gfn) && !bit(&st.dropped, gfn);
            if !absent {
                // Loaded already (a race with the bulk channel), or never
                // ours: resume the vCPU at once.
                notify |= ring.back.push_response(&paging_response(&req));
                continue;
            }
            let w = st.waiters.entry(gfn).or_default();
            w.push(req);
            if w.len() == 1 {
                // A request raised by another domain's access (a dom0
                // backend, the device model) carries that domain's vCPU.
                let fault = Fault {
                    pfn: gfn,
                    at: Instant::now(),
                    origin: if req.flags & sys::VM_EVENT_FLAG_FOREIGN != 0 {
                        FaultOrigin::Foreign
                    } else {
                        FaultOrigin::Vcpu(req.vcpu_id)
                    },
                };
                if fault.origin == FaultOrigin::Foreign {
                    debug!(
                        "gfn {gfn:#x} absent, touched by another domain's vCPU {} (a dom0 backend or the device model): a foreign fault, served first",
                        req.vcpu_id
                    );
                }
                queue_fault(&mut st.faults, fault);
            }
        }
        notify
    }
}

/// Queues a fault for the engine. A backend's (foreign) fault goes before
/// every vCPU's, behind the backends' queued before it: a vCPU fault stops
/// one vCPU, a dom0 backend's grant copy or map of an absent page holds up
/// a whole device queue (netback's poll, blkback's request ring) and is
/// retried by Linux with growing sleeps (1, 2, 3 ... ms), so every
/// millisecond it waits behind a vCPU's page costs more than one.
fn queue_fault(faults: &mut VecDeque<Fault>, fault: Fault) {
    if fault.origin == FaultOrigin::Foreign {
        let at = faults
            .iter()
            .take_while(|f| f.origin == FaultOrigin::Foreign)
            .count();
        faults.insert(at, fault);
    } else {
        faults.push_back(fault);
    }
}

impl<O: XenOps> XenDestination<O> {
    /// A replacement pager for `ops`' domain, whose pager died after the
    /// switch ([`postcopy::takeover`]; `owed` is the set it kept). Pauses
    /// the domain (one pause of its own, released with the toolstack's
    /// by [`release_pauses`]), then takes the paging ring over: the dead
    /// pager's mapping and event channel are gone and Xen allows one
    /// ring per domain, so mem_paging is disabled and enabled again (a
    /// fresh ring; paged-out pfns stay paged out, the requests queued on
    /// the old ring are lost). The vCPUs those requests paused are
    /// released with one response each ([`vcpu_release_response`]): they
    /// fault again on the new ring once the domain runs. Every owed pfn
    /// counts as absent; the ones the dead pager loaded are refused by
    /// Xen when they come again (ENOENT) and counted in then.
    ///
    /// Each released vCPU leaves one response without a request on the
    /// ring, so Xen counts one free slot more than the ring has per vCPU
    /// from then on; a request could be overwritten only with more
    /// requests outstanding than the ring holds.
    pub fn take_over(
        ops: Arc<O>,
        owed: &postcopy::takeover::OwedSet,
    ) -> MemResult<XenDestination<O>> {
        let domid = ops.domid();
        let info = match ops.domain_info().map_err(mem_err)? {
            Some(i) if !i.dying && i.shutdown.is_none() => i,
            Some(i) => {
                return Err(MemoryError::Unsupported {
                    what: "take the domain's paging over",
                    why: format!("domain {domid} is shut down or dying ({i:?})"),
                })
            }
            None => {
                return Err(MemoryError::Unsupported {
                    what: "take the domain's paging over",
                    why: format!("domain {domid} does not exist"),
                })
            }
        };
        let d = XenDestination::new(ops, owed.guest_pfns)?;
        d.ops.pause().map_err(mem_err)?;
        info!(
            "taking over domain {domid}: paused; {} pfns owed at the switch, {} still paged out (Xen's count)",
            owed.count(),
            info.paged_pages
        );
        if let Err(e) = d.ops.paging_disable() {
            // Not enabled (the dead pager never got that far, or someone
            // disabled it): enabling below says whether we may go on.
            warn!("disabling the dead pager's mem_paging ring: {e}");
        }
        d.enable_paging()?;
        let notify = {
            let mut st = d.lock();
            for run in &owed.runs {
                for p in run.pfns() {
                    set(&mut st.evicted, p);
                }
            }
            st.absent = owed.count();
            let mut notify = false;
            if let Some(ring) = st.ring.as_mut() {
                for v in 0..=info.max_vcpu_id {
                    notify |= ring.back.push_response(&vcpu_release_response(v));
                }
            }
            notify
        };
        if notify {
            d.notify()?;
        }
        info!(
            "took over domain {domid}'s paging ring; released the paging pauses of vCPUs 0..={}",
            info.max_vcpu_id
        );
        Ok(d)
    }

    /// Reads whatever requests are still on the ring and answers those
    /// whose page is present (a request raced with the load of its page
    /// and was not read before the fault forwarder stopped: without this
    /// its vCPU would stay paused). Returns the number of requests still
    /// waiting for an absent page (0 once every owed page is loaded).
    pub fn settle(&self) -> MemResult<usize> {
        let mut st = self.lock();
        let notify = self.drain(&mut st);
        let waiting = st.waiters.values().map(Vec::len).sum();
        drop(st);
        if notify {
            self.notify()?;
        }
        Ok(waiting)
    }
}

impl<O: XenOps> DestinationMemory for XenDestination<O> {
    fn pfn_count(&self) -> u64 {
        self.pfns
    }

    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        XenDestination::write_pages(self, &[pfn], data)
    }

    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> MemResult<()> {
        XenDestination::write_pages(self, pfns, data)
    }

    fn settle(&self) -> MemResult<()> {
        match XenDestination::settle(self)? {
            0 => Ok(()),
            waiting => Err(MemoryError::os(
                "answer the paging requests left on the ring",
                std::io::Error::other(format!(
                    "{waiting} paging requests wait for pages that never came"
                )),
            )),
        }
    }

    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        if runs.is_empty() {
            // Nothing owed: mem_paging stays off.
            return Ok(());
        }
        self.enable_paging()?;
        let ring_pfn = self.ring_pfn();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let pfns = runs.iter().flat_map(|r| r.pfns());
        let mut pfns = pfns.peekable();
        while pfns.peek().is_some() {
            batch.clear();
            batch.extend(pfns.by_ref().take(MAX_BATCH));
            for &p in &batch {
                self.check(p)?;
                if Some(p) == ring_pfn {
                    return Err(MemoryError::Unsupported {
                        what: "page out the owed pfns",
                        why: format!("owed pfn {p:#x} is the paging ring"),
                    });
                }
            }
            {
                // Already paged out (a repeated run): neither populate nor
                // evict it again. Paged out early: owed now, nothing to do.
                let mut st = self.lock();
                batch.retain(|&p| !bit(&st.evicted, p));
                let before = batch.len();
                let mut kept = Vec::new();
                batch.retain(|&p| {
                    let early = bit(&st.early, p);
                    if early {
                        kept.push(p);
                    }
                    !early
                });
                for &p in &kept {
                    if let Some(mut x) = usize::try_from(p).ok().and_then(|i| st.early.get_mut(i)) {
                        *x = false;
                    }
                    set(&mut st.evicted, p);
                }
                st.absent += kept.len() as u64;
                st.early_stats.kept += kept.len() as u64;
                if st.early_stats.paged_out > 0 {
                    st.early_stats.added += (before - kept.len()) as u64;
                }
            }
            let t = Instant::now();
            self.page_out(&batch, false)?;
            self.lock().page_out_time += t.elapsed();
        }
        Ok(())
    }

    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        let batch: Vec<(Pfn, Option<&[u8]>)> = pages
            .chunks_exact(PAGE_SIZE)
            .enumerate()
            .map(|(i, page)| (first + i as u64, Some(page)))
            .collect();
        self.load_many(&batch)
    }

    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        self.load_many(&[(pfn, None)])
    }

    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        let mut pages = Vec::with_capacity(batch.iter().map(|(_, p)| p.pages()).sum());
        for &(pfn, page) in batch {
            match page {
                PageIn::Data(data) => pages.extend(
                    data.chunks_exact(PAGE_SIZE)
                        .enumerate()
                        .map(|(i, d)| (pfn + i as u64, Some(d))),
                ),
                PageIn::Zero => pages.push((pfn, None)),
            }
        }
        self.load_many(&pages).map(|_| ())
    }

    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut st = self.lock();
                if st.ring.is_none() {
                    drop(st);
                    std::thread::sleep(timeout.min(Duration::from_millis(10)));
                    return Ok(None);
                }
                let notify = self.drain(&mut st);
                let fault = st.faults.pop_front();
                let more = fault.is_none()
                    && st
                        .ring
                        .as_mut()
                        .is_some_and(|r| r.back.final_check_for_requests());
                drop(st);
                if notify {
                    self.notify()?;
                }
                if fault.is_some() {
                    return Ok(fault);
                }
                if more {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.ops.evtchn_wait(deadline - now).map_err(mem_err)?;
        }
    }
}

impl<O: XenOps> Drop for XenDestination<O> {
    fn drop(&mut self) {
        if let Err(e) = self.settle() {
            warn!("could not answer the last paging requests: {e}");
        }
        let mut st = self.lock();
        let Some(ring) = st.ring.take() else {
            return;
        };
        if st.absent == 0 {
            if let Err(e) = self.ops.paging_disable() {
                warn!("could not disable mem_paging: {e}");
            }
        } else {
            warn!(
                "{} pages of domain {} are still paged out; leaving mem_paging enabled",
                st.absent,
                self.ops.domid()
            );
        }
        // The back ring is plain state over the page: nothing to release
        // before the unmap.
        self.ops.unmap_ring(ring.page);
    }
}

/// Releases every toolstack pause of `ops`' domain (the failed
/// migration's and a replacement pager's own), at most `max` of them;
/// returns how many it released.
pub fn release_pauses<O: XenOps + ?Sized>(ops: &O, max: u32) -> MemResult<u32> {
    let mut n = 0;
    while n < max {
        match ops.domain_info().map_err(mem_err)? {
            Some(i) if i.paused => {}
            _ => break,
        }
        ops.unpause().map_err(mem_err)?;
        n += 1;
    }
    Ok(n)
}
