//! [`RegionSource`]: a [`GuestRegion`] as the engine's [`SourceMemory`].
//!
//! Presence comes from `PAGEMAP_SCAN` (falling back to reading
//! `/proc/self/pagemap` on kernels without the ioctl); the dirty log is
//! userfaultfd asynchronous write-protect (`UFFD_FEATURE_WP_ASYNC`): the
//! kernel clears a page's uffd-wp bit on its first write without waking
//! anybody, and one `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` both reports
//! the written pages and protects them again, atomically per page.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::probe::{self, pagemap_scan_works};
use crate::region::GuestRegion;
use crate::sys;
use postcopy::memory::{runs_from_sorted, MemResult, MemoryError, PfnRun, SourceMemory};
use postcopy::{Pfn, PAGE_SHIFT, PAGE_SIZE};

/// Regions fetched per `PAGEMAP_SCAN` call.
const SCAN_BATCH: usize = 4096;
/// Dirty-log scans remembered for [`SourceMemory::access_history`].
const HISTORY_SCANS: usize = 4;

/// The source guest's memory over a [`GuestRegion`].
#[derive(Debug)]
pub struct RegionSource {
    region: Arc<GuestRegion>,
    pagemap: File,
    scan: bool,
    /// The write-protect uffd, once the dirty log is enabled. Closing it
    /// unregisters the region.
    wp: Option<OwnedFd>,
    /// The pages of the latest dirty-log scans, most recent scan last.
    recent: VecDeque<Vec<Pfn>>,
}

fn os(op: &str) -> impl FnOnce(std::io::Error) -> MemoryError + '_ {
    move |e| MemoryError::os(op, e)
}

impl RegionSource {
    /// Wraps `region`. Opens `/proc/self/pagemap` and checks whether the
    /// `PAGEMAP_SCAN` ioctl works here.
    pub fn new(region: Arc<GuestRegion>) -> MemResult<RegionSource> {
        let pagemap = File::open("/proc/self/pagemap").map_err(os("open /proc/self/pagemap"))?;
        let scan = pagemap_scan_works(&pagemap, &region);
        Ok(RegionSource {
            region,
            pagemap,
            scan,
            wp: None,
            recent: VecDeque::new(),
        })
    }

    /// The region.
    pub fn region(&self) -> &Arc<GuestRegion> {
        &self.region
    }

    /// Stops dirty tracking (e.g. when a failed migration resumes the
    /// guest here): unregisters the region, so writes no longer take the
    /// write-protect fault. Idempotent.
    pub fn stop_dirty_log(&mut self) {
        self.wp = None;
        self.recent.clear();
    }

    /// True if presence and dirty pages come from `PAGEMAP_SCAN`.
    pub fn has_pagemap_scan(&self) -> bool {
        self.scan
    }

    fn end(&self) -> u64 {
        self.region.addr() + self.region.len_bytes() as u64
    }

    /// Runs `PAGEMAP_SCAN` over the whole region with `arg`'s filters and
    /// feeds each reported `[start, end)` pfn range, in order and without
    /// overlap, to `each`.
    ///
    /// A call whose output buffer did not fill has walked the whole range
    /// (the kernel stops early only when the buffer is full). Its
    /// `walk_end` is not trusted then: Linux 6.18 was seen returning a
    /// `walk_end` short of regions it had already reported, so a naive
    /// restart from `walk_end` reported them twice.
    fn scan(&self, arg: sys::PmScanArg, mut each: impl FnMut(Pfn, Pfn)) -> MemResult<()> {
        let mut out = vec![sys::PageRegion::default(); SCAN_BATCH];
        let base = self.region.addr();
        let end = self.end();
        let mut start = base;
        // Everything below this address has been reported.
        let mut reported = base;
        while start < end {
            let a = sys::PmScanArg { start, end, ..arg };
            let (n, walk_end) = sys::pagemap_scan(&self.pagemap, &a, &mut out).map_err(|e| {
                let op = if e.raw_os_error() == Some(libc::EPERM) {
                    "PAGEMAP_SCAN (a page lacks async write-protect)"
                } else {
                    "PAGEMAP_SCAN"
                };
                MemoryError::os(op, e)
            })?;
            for r in &out[..n] {
                let (s, e) = (r.start.max(reported), r.end.min(end));
                if e > s {
                    each((s - base) >> PAGE_SHIFT, (e - base) >> PAGE_SHIFT);
                    reported = e;
                }
            }
            if n < out.len() {
                return Ok(());
            }
            let next = walk_end.max(reported);
            if next <= start {
                return Err(MemoryError::os(
                    "PAGEMAP_SCAN",
                    std::io::Error::other("the scan made no progress"),
                ));
            }
            start = next;
        }
        Ok(())
    }

    /// Present or swapped pages from `/proc/self/pagemap` (no ioctl).
    fn populated_from_pagemap_file(&self) -> MemResult<Vec<PfnRun>> {
        const CHUNK: u64 = 4096;
        let mut pfns = Vec::new();
        let mut buf = vec![0u8; usize::try_from(CHUNK).unwrap_or(4096) * 8];
        let first = self.region.addr() >> PAGE_SHIFT;
        let n = self.region.pages();
        let mut p = 0;
        while p < n {
            let k = (n - p).min(CHUNK);
            let bytes = &mut buf[..usize::try_from(k).unwrap_or(0) * 8];
            self.pagemap
                .read_exact_at(bytes, (first + p) * 8)
                .map_err(os("read /proc/self/pagemap"))?;
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(e);
                let entry = u64::from_ne_bytes(b);
                // Bit 63: present; bit 62: swapped.
                if entry & (3 << 62) != 0 {
                    pfns.push(p + i as u64);
                }
            }
            p += k;
        }
        Ok(runs_from_sorted(pfns))
    }

    /// Write-protects every present or swapped page (start of a dirty-log
    /// epoch). Not UFFDIO_WRITEPROTECT: with WP_ASYNC the kernel also
    /// enables WP_UNPOPULATED, and UFFDIO_WRITEPROTECT would plant a uffd-wp
    /// marker in every empty PTE, which `PAGEMAP_SCAN` then reports as
    /// SWAPPED — released and never-touched pages would look populated.
    /// An empty PTE needs no protection anyway: the first write to it
    /// allocates a page without the uffd-wp bit, i.e. a written page.
    fn protect_present(&self) -> MemResult<()> {
        let arg = sys::PmScanArg {
            flags: sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC,
            category_anyof_mask: sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED,
            return_mask: sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED,
            ..Default::default()
        };
        self.scan(arg, |_, _| {})
    }
}

impl SourceMemory for RegionSource {
    fn pfn_count(&self) -> u64 {
        self.region.pages()
    }

    /// Present or swapped pages, excluding pages mapped to the shared zero
    /// page (read but never written): released (MADV_DONTNEED) and
    /// never-touched pages are left out.
    fn populated(&self) -> MemResult<Vec<PfnRun>> {
        if !self.scan {
            return self.populated_from_pagemap_file();
        }
        // Present or swapped pages. Pages mapping the shared zero page are
        // included (they read as zero and are sent as ZERO records, pfn
        // only): filtering them with PAGE_IS_PFNZERO makes this scan, which
        // runs inside the downtime, ~2.7x slower (65 vs 24 ms for 4 GiB).
        let arg = sys::PmScanArg {
            category_anyof_mask: sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED,
            return_mask: sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED,
            ..Default::default()
        };
        let mut runs: Vec<PfnRun> = Vec::new();
        self.scan(arg, |s, e| match runs.last_mut() {
            Some(last) if last.end() == Some(s) => last.count += e - s,
            _ => runs.push(PfnRun {
                start: s,
                count: e - s,
            }),
        })?;
        Ok(runs)
    }

    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> MemResult<()> {
        for (&pfn, dst) in pfns.iter().zip(out.chunks_exact_mut(PAGE_SIZE)) {
            self.region.read_page(pfn, dst)?;
        }
        Ok(())
    }

    /// Registers the region with a userfaultfd in write-protect mode with
    /// `UFFD_FEATURE_WP_ASYNC` and write-protects all of it. Called again,
    /// it just starts a new epoch (everything clean).
    fn enable_dirty_log(&mut self) -> MemResult<()> {
        if self.wp.is_some() {
            return self.protect_present();
        }
        if !self.scan {
            return Err(probe::ProbeError::Missing {
                what: "the PAGEMAP_SCAN ioctl",
                consequence: "pre-copy and hybrid are unavailable (they need Linux 6.7 or \
                              newer for dirty tracking); pure post-copy still works",
            }
            .into());
        }
        let wp = probe::open_with(sys::UFFD_FEATURE_WP_ASYNC, "UFFD_FEATURE_WP_ASYNC")?;
        let ioctls = sys::register(
            &wp,
            self.region.addr(),
            self.region.len_bytes() as u64,
            sys::REGISTER_MODE_WP,
        )
        .map_err(os("register the guest for write-protect (UFFDIO_REGISTER)"))?;
        if ioctls & sys::IOCTL_BIT_WRITEPROTECT == 0 {
            return Err(MemoryError::Unsupported {
                what: "track dirty pages",
                why: "write-protect is not allowed on the guest region".into(),
            });
        }
        self.wp = Some(wp);
        self.protect_present()
    }

    /// Pages written since the last call: `PAGEMAP_SCAN` for
    /// `PAGE_IS_WRITTEN` with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`,
    /// which re-protects each reported page in the same walk.
    fn take_dirty(&mut self) -> MemResult<Vec<Pfn>> {
        if self.wp.is_none() {
            return Err(MemoryError::Unsupported {
                what: "read the dirty log",
                why: "dirty log not enabled".into(),
            });
        }
        // Only present or swapped pages: the kernel counts an empty PTE as
        // "written", and write-protecting it would plant a uffd-wp marker
        // (see `protect_present`). Released and never-touched pages are
        // unpopulated, not dirty.
        let arg = sys::PmScanArg {
            flags: sys::PM_SCAN_WP_MATCHING | sys::PM_SCAN_CHECK_WPASYNC,
            category_mask: sys::PAGE_IS_WRITTEN,
            category_anyof_mask: sys::PAGE_IS_PRESENT | sys::PAGE_IS_SWAPPED,
            return_mask: sys::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let mut dirty = Vec::new();
        self.scan(arg, |s, e| dirty.extend(s..e))?;
        if self.recent.len() == HISTORY_SCANS {
            self.recent.pop_front();
        }
        self.recent.push_back(dirty.clone());
        Ok(dirty)
    }

    /// The pages written in the latest dirty-log scans (pre-copy and
    /// hybrid only), the most recent scan's first, each page once: the
    /// working set the guest was writing when it stopped. Empty in pure
    /// post-copy, which never reads the dirty log.
    fn access_history(&self) -> Vec<Pfn> {
        let mut seen = bitvec::vec::BitVec::<usize>::repeat(
            false,
            usize::try_from(self.region.pages()).unwrap_or(0),
        );
        let mut out = Vec::new();
        for scan in self.recent.iter().rev() {
            for &p in scan {
                let i = usize::try_from(p).unwrap_or(usize::MAX);
                if seen.get(i).is_some_and(|b| !*b) {
                    seen.set(i, true);
                    out.push(p);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Instant;

    use super::*;
    use crate::dirty_log_available;

    const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

    fn touch(r: &GuestRegion, pfn: Pfn, v: u64) {
        r.words()[usize::try_from(pfn).unwrap() * WORDS_PER_PAGE + 3].store(v, Relaxed);
    }

    fn source(pages: u64) -> RegionSource {
        RegionSource::new(Arc::new(GuestRegion::new(pages).unwrap())).unwrap()
    }

    #[test]
    fn populated_skips_released_never_touched_and_read_only_pages() {
        let mut s = source(1024);
        let r = s.region().clone();
        for p in 0..512 {
            touch(&r, p, p + 1);
        }
        r.release(&[PfnRun {
            start: 100,
            count: 100,
        }])
        .unwrap();
        let want = vec![
            PfnRun {
                start: 0,
                count: 100,
            },
            PfnRun {
                start: 200,
                count: 312,
            },
        ];
        // The /proc/self/pagemap fallback agrees (before any read-only
        // mapping of the zero page, which it cannot tell apart).
        assert_eq!(s.populated_from_pagemap_file().unwrap(), want);
        if !s.has_pagemap_scan() {
            println!("SKIP (partly) populated via PAGEMAP_SCAN: the ioctl is unavailable");
            return;
        }
        // Reading a never-touched page maps the zero page. The scan does
        // not tell it apart (asking the kernel to check PAGE_IS_PFNZERO
        // makes the scan, which runs inside the downtime, ~2.7x slower):
        // such a page counts as populated and goes out as a ZERO record.
        let mut buf = vec![0u8; PAGE_SIZE];
        r.read_page(700, &mut buf).unwrap();
        let mut with_zero_page = want.clone();
        with_zero_page.push(PfnRun {
            start: 700,
            count: 1,
        });
        assert_eq!(s.populated().unwrap(), with_zero_page);
        let mut out = vec![0u8; 2 * PAGE_SIZE];
        s.read_pages(&[5, 300], &mut out).unwrap();
        assert_eq!(out[24..32], 6u64.to_ne_bytes());
        assert_eq!(out[PAGE_SIZE + 24..PAGE_SIZE + 32], 301u64.to_ne_bytes());
        s.scan = false;
        assert_eq!(
            s.populated().unwrap().len(),
            3,
            "fallback sees the zero page"
        );
    }

    #[test]
    fn dirty_log_finds_exactly_the_written_pages_of_64_mib_and_reprotects() {
        if !dirty_log_available(
            "dirty_log_finds_exactly_the_written_pages_of_64_mib_and_reprotects",
        ) {
            return;
        }
        const PAGES: u64 = 64 << 20 >> 12;
        let mut s = source(PAGES);
        let r = s.region().clone();
        // Populate three quarters; the last quarter stays never-touched.
        for p in 0..PAGES * 3 / 4 {
            touch(&r, p, 1);
        }
        s.enable_dirty_log().unwrap();
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());

        let mut want: Vec<Pfn> = (0..PAGES).step_by(97).collect();
        want.extend(5000..5100); // a run
        want.extend([PAGES - 1, PAGES * 3 / 4 + 10]); // never-touched pages
        want.sort_unstable();
        want.dedup();
        for &p in &want {
            touch(&r, p, 2);
        }
        let t = Instant::now();
        assert_eq!(s.take_dirty().unwrap(), want);
        println!(
            "take_dirty over 64 MiB ({} dirty): {:?}",
            want.len(),
            t.elapsed()
        );
        // Re-protected: nothing is dirty until written again.
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());
        touch(&r, 42, 3);
        touch(&r, 5000, 3);
        assert_eq!(s.take_dirty().unwrap(), vec![42, 5000]);
        // A released page is unpopulated, not dirty, and stays so across
        // scans (no uffd-wp marker is planted in its empty PTE).
        r.release(&[PfnRun { start: 7, count: 1 }]).unwrap();
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());
        let unpopulated_7 = |s: &RegionSource| {
            s.populated()
                .unwrap()
                .iter()
                .all(|run| !run.pfns().any(|p| p == 7))
        };
        assert!(unpopulated_7(&s));
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());
        assert!(unpopulated_7(&s));
        // Written again: dirty and populated.
        touch(&r, 7, 5);
        assert_eq!(s.take_dirty().unwrap(), vec![7]);
        assert!(!unpopulated_7(&s));
        // History: the latest scans' pages, most recent scan first.
        // (Six scans so far; the first two, with `want`, have aged out.)
        assert_eq!(s.access_history(), vec![7, 42, 5000]);
        // Enabling again starts a new, clean epoch.
        touch(&r, 9, 4);
        s.enable_dirty_log().unwrap();
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());
        // Stopped: no log; enabled again: a fresh registration works.
        s.stop_dirty_log();
        assert!(matches!(
            s.take_dirty(),
            Err(MemoryError::Unsupported { .. })
        ));
        touch(&r, 11, 5);
        s.enable_dirty_log().unwrap();
        touch(&r, 12, 5);
        assert_eq!(s.take_dirty().unwrap(), vec![12]);
    }

    /// More regions than one `PAGEMAP_SCAN` buffer holds (every other page
    /// populated): the restart path reports each page once, in order, and
    /// the dirty log leaves the holes unpopulated.
    #[test]
    fn scans_larger_than_one_buffer_report_each_page_once() {
        let pages = 4 * SCAN_BATCH as u64;
        let mut s = source(pages);
        let r = s.region().clone();
        for p in (0..pages).step_by(2) {
            touch(&r, p, 1);
        }
        let want: Vec<PfnRun> = (0..pages)
            .step_by(2)
            .map(|start| PfnRun { start, count: 1 })
            .collect();
        assert_eq!(s.populated_from_pagemap_file().unwrap(), want);
        if !s.has_pagemap_scan() {
            println!("SKIP (partly) scans_larger_than_one_buffer: no PAGEMAP_SCAN");
            return;
        }
        assert_eq!(s.populated().unwrap(), want);
        if !dirty_log_available("scans_larger_than_one_buffer_report_each_page_once") {
            return;
        }
        s.enable_dirty_log().unwrap();
        assert_eq!(s.populated().unwrap(), want, "protecting must not populate");
        let odd: Vec<Pfn> = (1..pages).step_by(4).collect();
        let even: Vec<Pfn> = (0..pages).step_by(2).collect();
        for &p in odd.iter().chain(&even) {
            touch(&r, p, 2);
        }
        let mut all: Vec<Pfn> = odd.iter().chain(&even).copied().collect();
        all.sort_unstable();
        assert_eq!(s.take_dirty().unwrap(), all);
        assert_eq!(s.take_dirty().unwrap(), Vec::<Pfn>::new());
        let mut pop: Vec<Pfn> = s
            .populated()
            .unwrap()
            .iter()
            .flat_map(PfnRun::pfns)
            .collect();
        pop.dedup();
        assert_eq!(pop, all);
    }

    /// A measurement, not a check: `cargo test -p postcopy --release --
    /// --ignored rescan_1gib --nocapture`.
    #[test]
    #[ignore = "benchmark: touches 1 GiB"]
    fn rescan_1gib() {
        if !dirty_log_available("rescan_1gib") {
            return;
        }
        const PAGES: u64 = 1 << 30 >> 12;
        let mut s = source(PAGES);
        let r = s.region().clone();
        for p in 0..PAGES {
            touch(&r, p, 1);
        }
        s.enable_dirty_log().unwrap();
        for (label, every) in [("clean", 0u64), ("1% dirty", 100), ("all dirty", 1)] {
            if every > 0 {
                for p in (0..PAGES).step_by(usize::try_from(every).unwrap()) {
                    touch(&r, p, 2);
                }
            }
            let t = Instant::now();
            let d = s.take_dirty().unwrap();
            println!(
                "rescan 1 GiB, {label}: {:?} ({} pages)",
                t.elapsed(),
                d.len()
            );
        }
        let t = Instant::now();
        let runs = s.populated().unwrap();
        println!("populated() 1 GiB: {:?} ({} runs)", t.elapsed(), runs.len());
        let t = Instant::now();
        let _ = s.populated_from_pagemap_file().unwrap();
        println!(
            "populated() 1 GiB via /proc/self/pagemap: {:?}",
            t.elapsed()
        );
    }
}
