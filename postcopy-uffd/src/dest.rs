//! [`UffdDestination`]: a [`GuestRegion`] as the engine's
//! [`DestinationMemory`], with absent pages served through userfaultfd.
//!
//! # Life cycle and ordering rules
//!
//! 1. [`UffdDestination::new`] probes and opens the uffd (with
//!    `UFFD_FEATURE_EVENT_REMOVE`) before anything is received, so a host
//!    without userfaultfd fails before the switch.
//! 2. Before the switch the region is **not registered**: `write_page` is a
//!    plain store of pre-copied pages.
//! 3. [`mark_absent`](DestinationMemory::mark_absent) first releases the
//!    owed runs (MADV_DONTNEED), *then* registers the whole region in
//!    MISSING mode. Releasing first means our own release raises no REMOVE
//!    event; registering the whole region means pages never written and not
//!    owed fault too, and the engine serves them with `install_zero`.
//! 4. After the switch, a guest release (its balloon) of a registered page
//!    raises a REMOVE event: the releasing thread **blocks until the event
//!    is read** (by [`wait_fault`](DestinationMemory::wait_fault), or by an
//!    install that met EAGAIN and drains the queue itself), and UFFDIO_COPY
//!    returns EAGAIN while the event is unread. Events are read in order,
//!    so a REMOVE is always seen before a later fault on the same page.
//!    A page that faults again after we installed it (released, then
//!    touched) is served here with a zero page — exactly what MADV_DONTNEED
//!    means — and never reported to the engine, which had already counted
//!    it as received.
//! 5. When the engine returns, **call [`UffdDestination::detach`]** (or
//!    drop the destination) before the guest runs on: nobody reads faults
//!    any more, and pages never touched are still registered, so a touch
//!    (or a release, or [`GuestRegion::hash`]) would block forever.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pool::StagingPool;
use crate::probe;
use crate::region::GuestRegion;
use crate::sys::{self, Fill};
use postcopy::memory::{
    DestinationMemory, Fault, FaultOrigin, Installed, MemResult, MemoryError, PfnRun,
};
use postcopy::{Pfn, PAGE_SIZE};

/// Messages read per `read(2)` of the uffd.
const MSG_BATCH: usize = 64;
/// How long an install keeps retrying EAGAIN (a REMOVE event pending)
/// before giving up.
const EAGAIN_LIMIT: Duration = Duration::from_secs(5);

/// Counters of the backend (the engine counts pages; these count what only
/// the backend sees).
#[derive(Debug, Default)]
pub struct UffdStats {
    /// Pages installed with UFFDIO_COPY.
    pub pages_copied: AtomicU64,
    /// Pages installed with UFFDIO_MOVE out of the staging pool.
    pub pages_moved: AtomicU64,
    /// Zero pages installed with UFFDIO_ZEROPAGE (engine or local).
    pub pages_zeroed: AtomicU64,
    /// Installs that found the page already present (EEXIST → WAKE).
    pub already_present: AtomicU64,
    /// EAGAIN retries (a REMOVE event was pending).
    pub eagain_retries: AtomicU64,
    /// Pages the guest released after the switch (REMOVE events).
    pub removed_pages: AtomicU64,
    /// Faults on pages we had installed, served locally with a zero page.
    pub local_refaults: AtomicU64,
    /// Fault events read from the uffd.
    pub fault_events: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Events {
    /// Faults for the engine.
    faults: VecDeque<Fault>,
    /// Faults on pages we installed earlier: served locally.
    local: Vec<Pfn>,
}

/// The destination guest's memory over a [`GuestRegion`] and a userfaultfd.
#[derive(Debug)]
pub struct UffdDestination {
    region: Arc<GuestRegion>,
    uffd: OwnedFd,
    /// Signalled when an installer drained fault events into the queue,
    /// so a `wait_fault` sleeping in poll(2) sees them at once.
    queued: OwnedFd,
    registered: AtomicBool,
    detached: AtomicBool,
    /// Pages installed through this backend after the switch, one bit each.
    installed: Vec<AtomicU64>,
    events: Mutex<Events>,
    /// Busy-poll this long in `wait_fault` before blocking in poll(2).
    spin: Duration,
    /// Receive memory installed with UFFDIO_MOVE (see [`StagingPool`]).
    pool: Option<Arc<StagingPool>>,
    /// UFFDIO_MOVE is enabled on `uffd` (Linux 6.8) and has not failed.
    can_move: AtomicBool,
    stats: UffdStats,
}

/// How [`UffdDestination::fill_run`] ended.
#[derive(Debug)]
enum RunEnd {
    /// Every page is in (some perhaps already present).
    Done(Installed),
    /// Stopped at byte `done` by an error other than a present page.
    Stopped {
        done: usize,
        outcome: Installed,
        error: io::Error,
    },
}

impl RunEnd {
    fn outcome(&self) -> Installed {
        match self {
            RunEnd::Done(o) | RunEnd::Stopped { outcome: o, .. } => *o,
        }
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl UffdDestination {
    /// Probes userfaultfd and opens one for `region` (not yet registered).
    pub fn new(region: Arc<GuestRegion>) -> Result<UffdDestination, probe::ProbeError> {
        probe::probe()?.require_postcopy()?;
        // UFFDIO_MOVE if the kernel has it (6.8), else COPY only.
        let (uffd, can_move) = match probe::open_with(
            sys::UFFD_FEATURE_EVENT_REMOVE | sys::UFFD_FEATURE_MOVE,
            "UFFD_FEATURE_MOVE",
        ) {
            Ok(fd) => (fd, true),
            Err(probe::ProbeError::Missing { .. }) => (
                probe::open_with(sys::UFFD_FEATURE_EVENT_REMOVE, "UFFD_FEATURE_EVENT_REMOVE")?,
                false,
            ),
            Err(e) => return Err(e),
        };
        let queued = sys::eventfd().map_err(|source| probe::ProbeError::Os {
            op: "create an eventfd",
            source,
        })?;
        let words = usize::try_from(region.pages().div_ceil(64)).unwrap_or(0);
        Ok(UffdDestination {
            region,
            uffd,
            queued,
            registered: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            installed: (0..words).map(|_| AtomicU64::new(0)).collect(),
            events: Mutex::new(Events::default()),
            spin: Duration::ZERO,
            pool: None,
            can_move: AtomicBool::new(can_move),
            stats: UffdStats::default(),
        })
    }

    /// Lends `pool`'s memory to the engine for receiving pages
    /// ([`DestinationMemory::staging`]) and installs them from there with
    /// UFFDIO_MOVE, without a copy; without UFFDIO_MOVE on this kernel the
    /// pool is not used (pages are copied as before).
    pub fn with_pool(mut self, pool: Arc<StagingPool>) -> UffdDestination {
        self.pool = Some(pool);
        self
    }

    /// Whether installs can move pages (UFFDIO_MOVE available, not failed).
    pub fn moves_pages(&self) -> bool {
        self.can_move.load(Ordering::Relaxed)
    }

    /// UFFDIO_MOVE of a pool window to `first`; returns `Ok(None)` when
    /// the move failed outright (before any page moved) for a reason other
    /// than a present page, so the caller copies instead.
    fn move_run(&self, first: Pfn, pages: &mut [u8]) -> MemResult<Option<Installed>> {
        let len = pages.len();
        let end = self.fill_run(
            first,
            len,
            "UFFDIO_MOVE",
            &self.stats.pages_moved,
            true,
            |dst, done| sys::move_pages(&self.uffd, dst, &mut pages[done..]),
        )?;
        let RunEnd::Stopped {
            done,
            outcome,
            error,
        } = end
        else {
            return Ok(Some(end.outcome()));
        };
        // E.g. a source page shared after a fork (EBUSY): copy from now on.
        log::warn!("UFFDIO_MOVE failed ({error}); installing by copy from now on");
        self.can_move.store(false, Ordering::Relaxed);
        if done == 0 {
            return Ok(None);
        }
        let rest = self.install(first + (done / PAGE_SIZE) as u64, &pages[done..])?;
        Ok(Some(if rest == Installed::AlreadyPresent {
            rest
        } else {
            outcome
        }))
    }

    /// The loop of a fill ioctl over a run of `len` bytes at `first`:
    /// `fill(dst, done)` fills from byte `done` on; a partial fill is
    /// continued, a page found present skipped (EEXIST → WAKE →
    /// `AlreadyPresent`), EAGAIN retried. Any other error ends the run:
    /// with `stop_on_error` as [`RunEnd::Stopped`], else as the error.
    fn fill_run(
        &self,
        first: Pfn,
        len: usize,
        op: &str,
        counter: &AtomicU64,
        stop_on_error: bool,
        mut fill: impl FnMut(u64, usize) -> Fill,
    ) -> MemResult<RunEnd> {
        let mut outcome = Installed::Installed;
        let mut done = 0usize;
        let mut started = Instant::now();
        while done < len {
            let pfn = first + (done / PAGE_SIZE) as u64;
            match fill(self.region.page_addr(pfn), done) {
                Fill::Done => {
                    let n = ((len - done) / PAGE_SIZE) as u64;
                    bump(counter, n);
                    self.set_installed(pfn, n);
                    done = len;
                }
                Fill::Partial(bytes) => {
                    let n = bytes / PAGE_SIZE as u64;
                    bump(counter, n);
                    self.set_installed(pfn, n);
                    done += usize::try_from(n).unwrap_or(0) * PAGE_SIZE;
                    started = Instant::now();
                }
                Fill::Failed(error)
                    if stop_on_error && !matches!(errno(&error), libc::EEXIST | libc::EAGAIN) =>
                {
                    return Ok(RunEnd::Stopped {
                        done,
                        outcome,
                        error,
                    });
                }
                Fill::Failed(e) => {
                    if self.fill_error(pfn, e, started, op)? {
                        outcome = Installed::AlreadyPresent;
                        done += PAGE_SIZE;
                        started = Instant::now();
                    }
                }
            }
        }
        Ok(RunEnd::Done(outcome))
    }

    /// Makes [`wait_fault`](DestinationMemory::wait_fault) busy-poll the
    /// uffd for up to `spin` before sleeping in poll(2): a sleeping handler
    /// costs a wake-up through the host (~50 µs here vs ~15 µs spinning).
    /// Bounded, so with 2 cores the guest and the push still run.
    pub fn with_spin(mut self, spin: Duration) -> UffdDestination {
        self.spin = spin;
        self
    }

    /// The region.
    pub fn region(&self) -> &Arc<GuestRegion> {
        &self.region
    }

    /// The backend's counters.
    pub fn stats(&self) -> &UffdStats {
        &self.stats
    }

    /// Unregisters the region: absent pages become ordinary anonymous
    /// memory again (zero on touch) and every blocked thread is woken.
    /// Call it once the engine has returned (see the module docs).
    /// Idempotent.
    pub fn detach(&self) -> MemResult<()> {
        if !self.registered.load(Ordering::SeqCst) || self.detached.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        sys::unregister(
            &self.uffd,
            self.region.addr(),
            self.region.len_bytes() as u64,
        )
        .map_err(|e| MemoryError::os("unregister the guest (UFFDIO_UNREGISTER)", e))
    }

    fn lock(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_installed(&self, first: Pfn, count: u64) {
        for p in first..first + count {
            if let (Ok(w), Some(bit)) = (usize::try_from(p / 64), 1u64.checked_shl((p % 64) as u32))
            {
                if let Some(word) = self.installed.get(w) {
                    word.fetch_or(bit, Ordering::Relaxed);
                }
            }
        }
    }

    fn is_installed(&self, p: Pfn) -> bool {
        usize::try_from(p / 64)
            .ok()
            .and_then(|w| self.installed.get(w))
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    /// Reads every queued uffd message into `ev` (non-blocking).
    fn read_events(&self, ev: &mut Events) -> MemResult<()> {
        let mut buf = [0u8; MSG_BATCH * sys::UFFD_MSG_SIZE];
        loop {
            let n = sys::read_msgs(&self.uffd, &mut buf)
                .map_err(|e| MemoryError::os("read userfaultfd events", e))?;
            if n == 0 {
                return Ok(());
            }
            if !n.is_multiple_of(sys::UFFD_MSG_SIZE) {
                return Err(MemoryError::os(
                    "read userfaultfd events",
                    io::Error::other(format!("short message ({n} bytes)")),
                ));
            }
            let at = Instant::now();
            for msg in buf[..n].chunks_exact(sys::UFFD_MSG_SIZE) {
                let word = |off: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&msg[off..off + 8]);
                    u64::from_ne_bytes(b)
                };
                match msg[0] {
                    sys::EVENT_PAGEFAULT => {
                        bump(&self.stats.fault_events, 1);
                        // arg.pagefault: flags at 8, address at 16.
                        let Some(pfn) = self.region.pfn_of(word(16)) else {
                            log::warn!("uffd fault outside the guest at {:#x}", word(16));
                            continue;
                        };
                        if self.is_installed(pfn) {
                            ev.local.push(pfn);
                        } else {
                            // The mini-VM has one vCPU thread.
                            ev.faults.push_back(Fault {
                                pfn,
                                at,
                                origin: FaultOrigin::Vcpu(0),
                            });
                        }
                    }
                    sys::EVENT_REMOVE => {
                        // arg.remove: start at 8, end at 16.
                        let (s, e) = (word(8), word(16));
                        bump(
                            &self.stats.removed_pages,
                            e.saturating_sub(s) >> postcopy::PAGE_SHIFT,
                        );
                    }
                    other => log::debug!("ignoring userfaultfd event {other:#x}"),
                }
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    /// Shared EEXIST/EAGAIN/errno handling of the fill ioctls: returns
    /// `Ok(true)` if the page at `pfn` turned out present already (and its
    /// waiters were woken), `Ok(false)` to retry after EAGAIN.
    fn fill_error(&self, pfn: Pfn, e: io::Error, started: Instant, op: &str) -> MemResult<bool> {
        match errno(&e) {
            libc::EEXIST => {
                bump(&self.stats.already_present, 1);
                self.set_installed(pfn, 1);
                sys::wake(&self.uffd, self.region.page_addr(pfn), PAGE_SIZE as u64)
                    .map_err(|e| MemoryError::os(format!("wake waiters of pfn {pfn:#x}"), e))?;
                Ok(true)
            }
            libc::EAGAIN if started.elapsed() < EAGAIN_LIMIT => {
                // A REMOVE (or other non-cooperative) event is unread: read
                // it ourselves so the kernel lets fills through again.
                bump(&self.stats.eagain_retries, 1);
                let mut ev = self.lock();
                self.read_events(&mut ev)?;
                let wake = !ev.faults.is_empty() || !ev.local.is_empty();
                drop(ev);
                if wake {
                    sys::eventfd_signal(&self.queued)
                        .map_err(|e| MemoryError::os("signal the fault waiter", e))?;
                }
                std::thread::yield_now();
                Ok(false)
            }
            libc::ESRCH => Err(MemoryError::GuestGone(format!(
                "{op} of pfn {pfn:#x}: the guest's address space is gone"
            ))),
            libc::ENOENT => Err(MemoryError::GuestGone(format!(
                "{op} of pfn {pfn:#x}: the guest region is unmapped or not registered"
            ))),
            _ => Err(MemoryError::os(format!("{op} of pfn {pfn:#x}"), e)),
        }
    }

    fn zero_one(&self, pfn: Pfn) -> MemResult<Installed> {
        let started = Instant::now();
        loop {
            match sys::zeropage(&self.uffd, self.region.page_addr(pfn), PAGE_SIZE as u64) {
                Fill::Done | Fill::Partial(_) => {
                    bump(&self.stats.pages_zeroed, 1);
                    self.set_installed(pfn, 1);
                    return Ok(Installed::Installed);
                }
                Fill::Failed(e) => {
                    if self.fill_error(pfn, e, started, "UFFDIO_ZEROPAGE")? {
                        return Ok(Installed::AlreadyPresent);
                    }
                }
            }
        }
    }

    fn check_registered(&self, what: &'static str) -> MemResult<()> {
        if self.registered.load(Ordering::SeqCst) && !self.detached.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(MemoryError::Unsupported {
                what,
                why: "the guest region is not registered with userfaultfd \
                      (before mark_absent, or after detach)"
                    .into(),
            })
        }
    }
}

impl DestinationMemory for UffdDestination {
    fn pfn_count(&self) -> u64 {
        self.region.pages()
    }

    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        if self.registered.load(Ordering::SeqCst) {
            return Err(MemoryError::Unsupported {
                what: "store a page after the switch",
                why: "the region is registered with userfaultfd; use install".into(),
            });
        }
        self.region.write_page(pfn, data)
    }

    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        for run in runs {
            self.region.check(run.start, run.count)?;
        }
        let (addr, len) = (self.region.addr(), self.region.len_bytes() as u64);
        if self.registered.swap(false, Ordering::SeqCst) {
            // Called again: release unregistered, so no REMOVE event blocks
            // us (nobody reads events yet).
            sys::unregister(&self.uffd, addr, len)
                .map_err(|e| MemoryError::os("unregister the guest (UFFDIO_UNREGISTER)", e))?;
        }
        self.region.release(runs)?;
        let ioctls = sys::register(&self.uffd, addr, len, sys::REGISTER_MODE_MISSING)
            .map_err(|e| MemoryError::os("register the guest (UFFDIO_REGISTER, missing)", e))?;
        let need = sys::IOCTL_BIT_COPY | sys::IOCTL_BIT_ZEROPAGE | sys::IOCTL_BIT_WAKE;
        if ioctls & need != need {
            let _ = sys::unregister(&self.uffd, addr, len);
            return Err(MemoryError::Unsupported {
                what: "install pages",
                why: format!("UFFDIO_COPY/ZEROPAGE/WAKE not allowed on the region ({ioctls:#x})"),
            });
        }
        self.detached.store(false, Ordering::SeqCst);
        self.registered.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// One UFFDIO_COPY for the whole run; a partial copy is continued, a
    /// page found present is skipped (EEXIST → WAKE → `AlreadyPresent`).
    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        self.check_registered("install pages")?;
        if pages.is_empty() || !pages.len().is_multiple_of(PAGE_SIZE) {
            return Err(MemoryError::os(
                format!("install at pfn {first:#x}"),
                io::Error::new(io::ErrorKind::InvalidInput, "not a whole number of pages"),
            ));
        }
        let count = (pages.len() / PAGE_SIZE) as u64;
        self.region.check(first, count)?;
        let end = self.fill_run(
            first,
            pages.len(),
            "UFFDIO_COPY",
            &self.stats.pages_copied,
            false,
            |dst, done| sys::copy(&self.uffd, dst, &pages[done..], 0),
        )?;
        Ok(end.outcome())
    }

    #[allow(clippy::mut_from_ref, reason = "the pool lends each window once")]
    fn staging(&self, bytes: usize) -> Option<&mut [u8]> {
        if !self.moves_pages() || !self.registered.load(Ordering::SeqCst) {
            return None;
        }
        self.pool.as_ref()?.take(bytes)
    }

    /// UFFDIO_MOVE for pages in the pool (no copy), else [`install`](
    /// DestinationMemory::install).
    fn install_staged(&self, first: Pfn, pages: &mut [u8]) -> MemResult<Installed> {
        let in_pool = self.pool.as_ref().is_some_and(|p| p.contains(pages));
        if !in_pool || !self.moves_pages() || pages.is_empty() {
            return self.install(first, pages);
        }
        self.check_registered("install pages")?;
        if !pages.len().is_multiple_of(PAGE_SIZE) {
            return self.install(first, pages);
        }
        self.region.check(first, (pages.len() / PAGE_SIZE) as u64)?;
        match self.move_run(first, pages)? {
            Some(done) => Ok(done),
            None => self.install(first, pages),
        }
    }

    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        self.check_registered("install a zero page")?;
        self.region.check(pfn, 1)?;
        self.zero_one(pfn)
    }

    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        let deadline = Instant::now() + timeout;
        let spin_until = Instant::now() + self.spin.min(timeout);
        loop {
            let (fault, local) = {
                let mut ev = self.lock();
                sys::eventfd_clear(&self.queued)
                    .map_err(|e| MemoryError::os("clear the fault waiter's eventfd", e))?;
                if ev.faults.is_empty() && ev.local.is_empty() {
                    self.read_events(&mut ev)?;
                }
                (ev.faults.pop_front(), std::mem::take(&mut ev.local))
            };
            for pfn in local {
                bump(&self.stats.local_refaults, 1);
                self.zero_one(pfn)?;
            }
            if fault.is_some() {
                return Ok(fault);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if now < spin_until {
                std::hint::spin_loop();
                continue;
            }
            let left = deadline - now;
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            sys::poll_in(&[&self.uffd, &self.queued], ms)
                .map_err(|e| MemoryError::os("poll the userfaultfd", e))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::uffd_available;

    /// Page content: every word is `pfn * 1000 + word index + 1`.
    fn page(pfn: Pfn) -> Vec<u8> {
        (0..PAGE_SIZE as u64 / 8)
            .flat_map(|w| (pfn * 1000 + w + 1).to_ne_bytes())
            .collect()
    }

    fn dest(pages: u64) -> UffdDestination {
        UffdDestination::new(Arc::new(GuestRegion::new(pages).unwrap())).unwrap()
    }

    fn all(pages: u64) -> Vec<PfnRun> {
        vec![PfnRun {
            start: 0,
            count: pages,
        }]
    }

    fn word(d: &UffdDestination, pfn: Pfn, w: usize) -> u64 {
        d.region().words()[usize::try_from(pfn).unwrap() * (PAGE_SIZE / 8) + w].load(Relaxed)
    }

    #[test]
    fn touching_threads_block_until_the_handler_installs() {
        if !uffd_available("touching_threads_block_until_the_handler_installs") {
            return;
        }
        const N: u64 = 64;
        let d = dest(N);
        // A pre-copied page that is not owed stays present: no fault.
        d.write_page(N - 1, &page(N - 1)).unwrap();
        d.mark_absent(&[PfnRun {
            start: 0,
            count: N - 1,
        }])
        .unwrap();
        let seen = std::thread::scope(|s| {
            let toucher = s.spawn(|| (0..N).rev().map(|p| word(&d, p, 7)).collect::<Vec<_>>());
            let mut served = 0;
            while !toucher.is_finished() {
                if let Some(f) = d.wait_fault(Duration::from_millis(20)).unwrap() {
                    assert!(f.pfn < N - 1, "fault on the present page {}", f.pfn);
                    assert_eq!(
                        d.install(f.pfn, &page(f.pfn)).unwrap(),
                        Installed::Installed
                    );
                    served += 1;
                }
            }
            assert_eq!(served, N - 1);
            toucher.join().unwrap()
        });
        let want: Vec<u64> = (0..N).rev().map(|p| p * 1000 + 8).collect();
        assert_eq!(seen, want);
        assert_eq!(d.stats().pages_copied.load(Relaxed), N - 1);
        d.detach().unwrap();
    }

    #[test]
    fn one_copy_installs_a_multi_page_run() {
        if !uffd_available("one_copy_installs_a_multi_page_run") {
            return;
        }
        let d = dest(32);
        d.mark_absent(&all(32)).unwrap();
        let run: Vec<u8> = (8..24).flat_map(page).collect();
        assert_eq!(d.install(8, &run).unwrap(), Installed::Installed);
        assert_eq!(d.stats().pages_copied.load(Relaxed), 16);
        // Present now: reading them raises no fault.
        for p in 8..24 {
            assert_eq!(word(&d, p, 511), p * 1000 + 512);
        }
        assert_eq!(d.wait_fault(Duration::ZERO).unwrap(), None);
        assert_eq!(d.stats().fault_events.load(Relaxed), 0);
        assert!(matches!(
            d.install(30, &run[..3 * PAGE_SIZE]),
            Err(MemoryError::OutOfRange { .. })
        ));
        d.detach().unwrap();
    }

    #[test]
    fn present_pages_are_skipped_and_the_rest_of_the_run_installed() {
        if !uffd_available("present_pages_are_skipped_and_the_rest_of_the_run_installed") {
            return;
        }
        let d = dest(16);
        d.mark_absent(&all(16)).unwrap();
        assert_eq!(d.install(3, &page(3)).unwrap(), Installed::Installed);
        assert_eq!(d.install_zero(5).unwrap(), Installed::Installed);
        // Run 2..8 meets present pages 3 and 5 in the middle: EEXIST there,
        // partial copies elsewhere, everything else installed.
        let run: Vec<u8> = (2..8).flat_map(|p| page(p + 100)).collect();
        assert_eq!(d.install(2, &run).unwrap(), Installed::AlreadyPresent);
        assert_eq!(d.stats().already_present.load(Relaxed), 2);
        assert_eq!(word(&d, 2, 0), 102_001);
        assert_eq!(word(&d, 3, 0), 3001, "EEXIST must not overwrite");
        assert_eq!(word(&d, 4, 0), 104_001);
        assert_eq!(word(&d, 5, 0), 0, "zero page kept");
        assert_eq!(word(&d, 7, 0), 107_001);
        assert_eq!(d.install_zero(3).unwrap(), Installed::AlreadyPresent);
        assert_eq!(d.stats().fault_events.load(Relaxed), 0);
        d.detach().unwrap();
    }

    #[test]
    fn zero_pages_read_as_zero() {
        if !uffd_available("zero_pages_read_as_zero") {
            return;
        }
        let d = dest(4);
        d.write_page(1, &page(1)).unwrap();
        d.mark_absent(&all(4)).unwrap();
        assert_eq!(d.install_zero(1).unwrap(), Installed::Installed);
        assert!(
            (0..512).all(|w| word(&d, 1, w) == 0),
            "pre-copied content dropped"
        );
        assert_eq!(d.stats().pages_zeroed.load(Relaxed), 1);
        d.detach().unwrap();
    }

    #[test]
    fn a_page_released_after_install_refaults_locally_as_zero() {
        if !uffd_available("a_page_released_after_install_refaults_locally_as_zero") {
            return;
        }
        let d = dest(8);
        d.mark_absent(&all(8)).unwrap();
        d.install(2, &page(2)).unwrap();
        std::thread::scope(|s| {
            // The release blocks until its REMOVE event is read, then the
            // touch faults; both are handled inside wait_fault.
            let guest = s.spawn(|| {
                d.region()
                    .release(&[PfnRun { start: 2, count: 1 }])
                    .unwrap();
                word(&d, 2, 0)
            });
            while !guest.is_finished() {
                assert_eq!(d.wait_fault(Duration::from_millis(10)).unwrap(), None);
            }
            assert_eq!(guest.join().unwrap(), 0);
        });
        assert_eq!(d.stats().removed_pages.load(Relaxed), 1);
        assert_eq!(d.stats().local_refaults.load(Relaxed), 1);
        d.detach().unwrap();
    }

    #[test]
    fn an_install_during_a_pending_remove_retries_and_drains_it() {
        if !uffd_available("an_install_during_a_pending_remove_retries_and_drains_it") {
            return;
        }
        let d = dest(8);
        d.mark_absent(&all(8)).unwrap();
        d.install(2, &page(2)).unwrap();
        std::thread::scope(|s| {
            // The release blocks until its REMOVE event is read; meanwhile
            // UFFDIO_COPY fails with EAGAIN. Nobody calls wait_fault: the
            // install itself must drain the event and go on.
            let guest = s.spawn(|| d.region().release(&[PfnRun { start: 2, count: 1 }]));
            // Readable once the REMOVE is queued (mmap_changing is raised
            // before that, so the copy below must meet EAGAIN).
            sys::poll_in(&[&d.uffd], 5000).unwrap();
            d.install(4, &page(4)).unwrap();
            while !guest.is_finished() {
                assert_eq!(d.wait_fault(Duration::from_millis(10)).unwrap(), None);
            }
            guest.join().unwrap().unwrap();
        });
        assert!(d.stats().eagain_retries.load(Relaxed) >= 1);
        assert_eq!(word(&d, 4, 0), 4001);
        assert_eq!(d.stats().removed_pages.load(Relaxed), 1);
        // A fault queued behind the drained event still reaches wait_fault.
        std::thread::scope(|s| {
            let guest = s.spawn(|| word(&d, 6, 0));
            let f = loop {
                if let Some(f) = d.wait_fault(Duration::from_millis(50)).unwrap() {
                    break f;
                }
            };
            assert_eq!(f.pfn, 6);
            d.install(6, &page(6)).unwrap();
            assert_eq!(guest.join().unwrap(), 6001);
        });
        d.detach().unwrap();
    }

    #[test]
    fn misuse_is_a_typed_error_and_detach_frees_absent_pages() {
        if !uffd_available("misuse_is_a_typed_error_and_detach_frees_absent_pages") {
            return;
        }
        let d = dest(4);
        assert!(matches!(
            d.install(0, &page(0)),
            Err(MemoryError::Unsupported { .. })
        ));
        d.mark_absent(&all(4)).unwrap();
        assert!(matches!(
            d.write_page(0, &page(0)),
            Err(MemoryError::Unsupported { .. })
        ));
        assert!(matches!(
            d.mark_absent(&[PfnRun { start: 3, count: 2 }]),
            Err(MemoryError::OutOfRange { .. })
        ));
        d.detach().unwrap();
        d.detach().unwrap();
        // Unregistered: absent pages are plain zero-fill memory again.
        assert_eq!(word(&d, 0, 0), 0);
        assert_eq!(d.region().hash(), GuestRegion::new(4).unwrap().hash());
    }
}

#[cfg(test)]
mod bench {
    use std::time::Instant;

    use super::*;
    use crate::uffd_available;

    /// A measurement: `cargo test -p postcopy --release -- --ignored
    /// install_rate --nocapture`.
    #[test]
    #[ignore = "benchmark: installs 1 GiB"]
    fn install_rate() {
        if !uffd_available("install_rate") {
            return;
        }
        const PAGES: u64 = 1 << 30 >> 12;
        // Pre-warm: first touches of memory the VM gave back are slow.
        drop(crate::floor::prewarm_for_bench(1 << 30));
        for batch in [1u64, 16, 64, 256] {
            let d = UffdDestination::new(Arc::new(GuestRegion::new(PAGES).unwrap())).unwrap();
            d.mark_absent(&[PfnRun {
                start: 0,
                count: PAGES,
            }])
            .unwrap();
            let data = vec![0x5au8; PAGE_SIZE * usize::try_from(batch).unwrap()];
            let t = Instant::now();
            for first in (0..PAGES).step_by(usize::try_from(batch).unwrap()) {
                d.install(first, &data).unwrap();
            }
            let dt = t.elapsed();
            #[allow(clippy::cast_precision_loss)]
            let rate = PAGES as f64 / dt.as_secs_f64();
            println!("UFFDIO_COPY {batch:>3} pages/ioctl: 1 GiB in {dt:?} = {rate:.0} pages/s");
            d.detach().unwrap();
        }
    }
}

#[cfg(test)]
mod staged {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::uffd_available;

    #[test]
    fn staged_pages_are_moved_without_a_copy() {
        if !uffd_available("staged_pages_are_moved_without_a_copy") {
            return;
        }
        let pool = Arc::new(StagingPool::new(8 * PAGE_SIZE).unwrap());
        pool.populate(|| false).unwrap();
        let d = UffdDestination::new(Arc::new(GuestRegion::new(16).unwrap()))
            .unwrap()
            .with_pool(Arc::clone(&pool));
        assert!(
            d.staging(PAGE_SIZE).is_none(),
            "nothing lent before the switch"
        );
        d.mark_absent(&[PfnRun {
            start: 0,
            count: 16,
        }])
        .unwrap();
        if !d.moves_pages() {
            eprintln!("skipped: no UFFDIO_MOVE on this kernel");
            return;
        }
        let w = d.staging(4 * PAGE_SIZE).unwrap();
        for (k, page) in w.chunks_exact_mut(PAGE_SIZE).enumerate() {
            page.fill(u8::try_from(k).unwrap() + 1);
        }
        assert_eq!(d.install_staged(3, w).unwrap(), Installed::Installed);
        assert_eq!(d.stats().pages_moved.load(Relaxed), 4);
        assert_eq!(d.stats().pages_copied.load(Relaxed), 0);
        let word = |p: u64| d.region().words()[usize::try_from(p).unwrap() * 512].load(Relaxed);
        assert_eq!(word(3), 0x0101_0101_0101_0101);
        assert_eq!(word(6), 0x0404_0404_0404_0404);
        // A present page in the run: skipped, the rest moved.
        let w = d.staging(2 * PAGE_SIZE).unwrap();
        w.fill(9);
        assert_eq!(d.install_staged(6, w).unwrap(), Installed::AlreadyPresent);
        assert_eq!(word(6), 0x0404_0404_0404_0404, "EEXIST must not overwrite");
        assert_eq!(word(7), 0x0909_0909_0909_0909);
        // Memory from elsewhere is copied.
        let mut page = vec![7u8; PAGE_SIZE];
        assert_eq!(
            d.install_staged(0, &mut page).unwrap(),
            Installed::Installed
        );
        assert_eq!(d.stats().pages_copied.load(Relaxed), 1);
        assert_eq!(page[0], 7);
        d.detach().unwrap();
    }
}
