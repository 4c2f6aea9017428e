//! In-memory backends of the two memory traits, for tests of the engine.
//!
//! [`MemSource`] is a guest image in a `Vec<u8>` with a populated map and a
//! dirty log; [`MemDestination`] is an image whose absent pages block a
//! simulated vCPU ([`MemDestination::touch`]) until the engine installs
//! them, exactly as a vCPU blocks on a userfaultfd or mem_paging fault.
//! Logic tests only: real migrations run on `postcopy-uffd` or Xen.
//!
//! Not public API: compiled for this crate's tests and behind the
//! `test-util` cargo feature, which other crates enable only in their
//! dev-dependencies.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;

use crate::memory::{
    install_each, runs_from_sorted, DestinationMemory, Fault, Installed, MemResult, MemoryError,
    PageIn, PfnRun, SourceMemory,
};
use crate::{Pfn, PAGE_SIZE};

fn idx(pfn: Pfn) -> usize {
    usize::try_from(pfn).unwrap_or(usize::MAX)
}

fn range(pfn: Pfn, pfns: u64) -> MemResult<std::ops::Range<usize>> {
    if pfn >= pfns {
        return Err(MemoryError::OutOfRange { pfn, pfns });
    }
    let start = idx(pfn) * PAGE_SIZE;
    Ok(start..start + PAGE_SIZE)
}

/// A source guest held in memory.
#[derive(Debug)]
pub struct MemSource {
    pages: Vec<u8>,
    populated: BitVec,
    dirty: Option<BitVec>,
    history: Vec<Pfn>,
    /// Writes the "running guest" makes before each dirty-log read.
    between_reads: VecDeque<Vec<(Pfn, u8)>>,
}

impl MemSource {
    /// A guest of `pfns` pages, all populated, page `p` filled from `fill`.
    pub fn new(pfns: u64, mut fill: impl FnMut(Pfn, &mut [u8])) -> MemSource {
        let mut pages = vec![0u8; idx(pfns) * PAGE_SIZE];
        for (p, page) in pages.chunks_exact_mut(PAGE_SIZE).enumerate() {
            fill(p as Pfn, page);
        }
        MemSource {
            pages,
            populated: BitVec::repeat(true, idx(pfns)),
            dirty: None,
            history: Vec::new(),
            between_reads: VecDeque::new(),
        }
    }

    /// Marks `pfn` unpopulated (ballooned out); its content reads as zero.
    pub fn unpopulate(&mut self, pfn: Pfn) {
        if let Ok(r) = range(pfn, self.pfn_count()) {
            self.pages[r].fill(0);
            self.populated.set(idx(pfn), false);
            if let Some(d) = &mut self.dirty {
                d.set(idx(pfn), true);
            }
        }
    }

    /// The guest writes `byte` at the start of `pfn` (populating it).
    pub fn write(&mut self, pfn: Pfn, byte: u8) {
        if let Ok(r) = range(pfn, self.pfn_count()) {
            self.pages[r.start] = byte;
            self.populated.set(idx(pfn), true);
            if let Some(d) = &mut self.dirty {
                d.set(idx(pfn), true);
            }
        }
    }

    /// Scripts the running guest: before the k-th dirty-log read, the
    /// writes `rounds[k]` happen (as if the guest ran during that round).
    pub fn script_writes(&mut self, rounds: Vec<Vec<(Pfn, u8)>>) {
        self.between_reads = rounds.into();
    }

    /// Sets the access history the `history` pre-pager uses.
    pub fn set_history(&mut self, history: Vec<Pfn>) {
        self.history = history;
    }

    /// The whole image.
    pub fn image(&self) -> &[u8] {
        &self.pages
    }
}

impl SourceMemory for MemSource {
    fn pfn_count(&self) -> u64 {
        (self.pages.len() / PAGE_SIZE) as u64
    }

    fn populated(&self) -> MemResult<Vec<PfnRun>> {
        Ok(runs_from_sorted(
            self.populated.iter_ones().map(|p| p as Pfn),
        ))
    }

    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> MemResult<()> {
        for (pfn, dst) in pfns.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
            dst.copy_from_slice(&self.pages[range(*pfn, self.pfn_count())?]);
        }
        Ok(())
    }

    fn enable_dirty_log(&mut self) -> MemResult<()> {
        self.dirty = Some(BitVec::repeat(false, self.populated.len()));
        Ok(())
    }

    fn take_dirty(&mut self) -> MemResult<Vec<Pfn>> {
        for (pfn, byte) in self.between_reads.pop_front().unwrap_or_default() {
            self.write(pfn, byte);
        }
        let d = self.dirty.as_mut().ok_or(MemoryError::Unsupported {
            what: "read the dirty log",
            why: "dirty log not enabled".into(),
        })?;
        let out = d.iter_ones().map(|p| p as Pfn).collect();
        d.fill(false);
        Ok(out)
    }

    fn access_history(&self) -> Vec<Pfn> {
        self.history.clone()
    }
}

#[derive(Debug)]
struct DestState {
    pages: Vec<u8>,
    present: BitVec,
    faults: VecDeque<Fault>,
    /// Pages with a fault already queued (one event per absent page).
    faulted: BitVec,
    installs: u64,
    /// Calls of `install_batch`, and the pages they carried.
    batches: u64,
    batch_pages: u64,
}

/// A destination guest held in memory, with blocking simulated vCPUs.
#[derive(Debug)]
pub struct MemDestination {
    state: Mutex<DestState>,
    /// Signalled on every install and every new fault.
    changed: Condvar,
}

impl MemDestination {
    /// An empty (all present, all zero) guest of `pfns` pages.
    pub fn new(pfns: u64) -> MemDestination {
        MemDestination {
            state: Mutex::new(DestState {
                pages: vec![0u8; idx(pfns) * PAGE_SIZE],
                present: BitVec::repeat(true, idx(pfns)),
                faults: VecDeque::new(),
                faulted: BitVec::repeat(false, idx(pfns)),
                installs: 0,
                batches: 0,
                batch_pages: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DestState> {
        // A poisoned lock means a test thread panicked; the test fails anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A simulated vCPU reads `pfn`: blocks until the page is present
    /// (raising a fault if it is absent) and returns its first byte.
    pub fn touch(&self, pfn: Pfn) -> u8 {
        let mut s = self.lock();
        let i = idx(pfn);
        if !s.present[i] && !s.faulted[i] {
            s.faulted.set(i, true);
            s.faults.push_back(Fault {
                pfn,
                at: Instant::now(),
                origin: crate::memory::FaultOrigin::Vcpu(0),
            });
            self.changed.notify_all();
        }
        while !s.present[i] {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.pages[i * PAGE_SIZE]
    }

    /// A simulated vCPU fills `pfn` with `byte` if the page is present
    /// (true), without waiting for it.
    pub fn write_if_present(&self, pfn: Pfn, byte: u8) -> bool {
        let mut s = self.lock();
        let i = idx(pfn);
        if !s.present[i] {
            return false;
        }
        s.pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].fill(byte);
        true
    }

    /// The whole image (all pages must be present to compare it).
    pub fn image(&self) -> Vec<u8> {
        self.lock().pages.clone()
    }

    /// Calls of [`DestinationMemory::install_batch`] so far, and the
    /// pages they carried in all.
    pub fn batches(&self) -> (u64, u64) {
        let s = self.lock();
        (s.batches, s.batch_pages)
    }

    /// Number of absent pages.
    pub fn absent(&self) -> usize {
        self.lock().present.count_zeros()
    }

    fn put(&self, pfn: Pfn, data: Option<&[u8]>, overwrite: bool) -> MemResult<Installed> {
        let mut s = self.lock();
        let n = (s.pages.len() / PAGE_SIZE) as u64;
        let r = range(pfn, n)?;
        let i = idx(pfn);
        let outcome = if s.present[i] && !overwrite {
            Installed::AlreadyPresent
        } else {
            match data {
                Some(d) => s.pages[r].copy_from_slice(d),
                None => s.pages[r].fill(0),
            }
            s.present.set(i, true);
            s.faulted.set(i, false);
            s.installs += 1;
            Installed::Installed
        };
        self.changed.notify_all();
        Ok(outcome)
    }
}

impl DestinationMemory for MemDestination {
    fn pfn_count(&self) -> u64 {
        (self.lock().pages.len() / PAGE_SIZE) as u64
    }

    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        self.put(pfn, Some(data), true).map(|_| ())
    }

    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        let mut s = self.lock();
        let n = s.present.len() as u64;
        for run in runs {
            for p in run.pfns() {
                let r = range(p, n)?;
                s.pages[r].fill(0);
                s.present.set(idx(p), false);
            }
        }
        Ok(())
    }

    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        let mut outcome = Installed::Installed;
        for (k, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
            if self.put(first + k as u64, Some(page), false)? == Installed::AlreadyPresent {
                outcome = Installed::AlreadyPresent;
            }
        }
        Ok(outcome)
    }

    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        self.put(pfn, None, false)
    }

    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        {
            let mut s = self.lock();
            s.batches += 1;
            s.batch_pages += batch.iter().map(|(_, p)| p.pages() as u64).sum::<u64>();
        }
        install_each(self, batch)
    }

    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(f) = s.faults.pop_front() {
                return Ok(Some(f));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
