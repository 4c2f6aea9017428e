//! [`GuestRegion`]: the mini-VM's guest memory, one anonymous mapping.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::Xxh3;

use crate::sys;
use postcopy::memory::{MemResult, MemoryError, PfnRun};
use postcopy::{Pfn, PAGE_SIZE};

/// 64-bit words per page.
const WORDS: usize = PAGE_SIZE / 8;

/// Guest memory of a mini-VM: `pages` 4 KiB pages in one private anonymous
/// mapping (`MAP_NORESERVE`, transparent huge pages off so presence, dirty
/// tracking and faults are all per 4 KiB page), unmapped on drop.
///
/// Rust code touches it only through relaxed atomics ([`words`](Self::words),
/// [`read_page`](Self::read_page), [`write_page`](Self::write_page)), so the
/// workload thread, the engine's readers and the kernel (UFFDIO_COPY,
/// MADV_DONTNEED) may all act on it at once without a data race.
///
/// On a destination registered with userfaultfd, any access to an absent
/// page blocks the accessing thread until the page is installed: never
/// access it from the thread that serves faults.
#[derive(Debug)]
pub struct GuestRegion {
    base: NonNull<u8>,
    pages: u64,
}

// SAFETY: the region is plain memory owned by this value; all access from
// Rust goes through `&[AtomicU64]`, which is `Sync`, so sharing and moving
// it between threads cannot cause a data race.
unsafe impl Send for GuestRegion {}
// SAFETY: as above; `&GuestRegion` only hands out atomics.
unsafe impl Sync for GuestRegion {}

impl GuestRegion {
    /// Maps a region of `pages` pages (all absent: they read as zero and
    /// are populated on first touch).
    pub fn new(pages: u64) -> io::Result<GuestRegion> {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .filter(|&l| l > 0 && isize::try_from(l).is_ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad guest size"))?;
        let base = sys::mmap_anon(len)?;
        let region = GuestRegion { base, pages };
        // Per-page semantics everywhere: a THP would make presence and
        // dirtiness 2 MiB-granular. Advisory: ignore failure.
        let _ = sys::madvise(region.addr(), len, libc::MADV_NOHUGEPAGE);
        Ok(region)
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        // Checked to fit at construction.
        usize::try_from(self.pages).unwrap_or(0) * PAGE_SIZE
    }

    /// Start address of the mapping.
    pub fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Address of `pfn`'s first byte (no range check).
    pub(crate) fn page_addr(&self, pfn: Pfn) -> u64 {
        self.addr() + (pfn << postcopy::PAGE_SHIFT)
    }

    /// The pfn of an address inside the region.
    pub(crate) fn pfn_of(&self, addr: u64) -> Option<Pfn> {
        let off = addr.checked_sub(self.addr())?;
        let pfn = off >> postcopy::PAGE_SHIFT;
        (pfn < self.pages).then_some(pfn)
    }

    /// Checks that `[first, first + count)` lies inside the region.
    pub(crate) fn check(&self, first: Pfn, count: u64) -> MemResult<()> {
        match first.checked_add(count) {
            Some(end) if end <= self.pages => Ok(()),
            _ => Err(MemoryError::OutOfRange {
                pfn: first.max(self.pages),
                pfns: self.pages,
            }),
        }
    }

    /// The whole region as 64-bit words. The workload reads and writes
    /// guest memory only through these (relaxed ordering is enough).
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `base` is a live, page-aligned mapping of `len_bytes()`
        // bytes, readable and writable, that outlives `&self` (unmapped
        // only in Drop). AtomicU64 has the size and alignment of u64 and
        // any bit pattern is valid; all Rust accesses are atomic, and the
        // kernel's changes (fills, zaps) are atomic per page with respect
        // to them.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU64>(), self.len_bytes() / 8)
        }
    }

    fn page_words(&self, pfn: Pfn) -> MemResult<&[AtomicU64]> {
        self.check(pfn, 1)?;
        let start = usize::try_from(pfn).unwrap_or(usize::MAX) * WORDS;
        Ok(&self.words()[start..start + WORDS])
    }

    /// Copies page `pfn` into `out` (one page), word by word.
    pub fn read_page(&self, pfn: Pfn, out: &mut [u8]) -> MemResult<()> {
        let words = self.page_words(pfn)?;
        for (w, dst) in words.iter().zip(out.chunks_exact_mut(8)) {
            dst.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        Ok(())
    }

    /// Stores `data` (one page) into page `pfn`, word by word.
    pub fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        if data.len() != PAGE_SIZE {
            return Err(MemoryError::os(
                format!("write page {pfn:#x}"),
                io::Error::new(io::ErrorKind::InvalidInput, "data is not one page"),
            ));
        }
        let words = self.page_words(pfn)?;
        for (w, src) in words.iter().zip(data.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(src);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Releases `runs` back to the host (MADV_DONTNEED): the balloon
    /// analogue. Released pages read as zero and are no longer present.
    /// On a destination registered with userfaultfd they fault again.
    pub fn release(&self, runs: &[PfnRun]) -> MemResult<()> {
        for run in runs {
            self.check(run.start, run.count)?;
            if run.count == 0 {
                continue;
            }
            let len = usize::try_from(run.count).unwrap_or(0) * PAGE_SIZE;
            sys::madvise(self.page_addr(run.start), len, libc::MADV_DONTNEED).map_err(|e| {
                MemoryError::os(format!("release pfns {:#x}+{}", run.start, run.count), e)
            })?;
        }
        Ok(())
    }

    /// A hash (XXH3-64) of the whole image, absent pages reading as zero.
    ///
    /// Reads every page: on a userfaultfd destination call it only after
    /// the migration completed *and* the destination was detached
    /// ([`crate::UffdDestination::detach`]), or it blocks on (or, with
    /// nobody serving faults, hangs in) the first absent page. On the
    /// source, reading never-touched pages maps the shared zero page
    /// (no memory is allocated and they stay unpopulated for
    /// [`crate::RegionSource::populated`]).
    pub fn hash(&self) -> u64 {
        let mut h = Xxh3::new();
        let mut buf = vec![0u8; 16 * PAGE_SIZE];
        let words = self.words();
        for chunk in words.chunks(buf.len() / 8) {
            let bytes = &mut buf[..chunk.len() * 8];
            for (w, dst) in chunk.iter().zip(bytes.chunks_exact_mut(8)) {
                dst.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
            }
            h.update(bytes);
        }
        h.digest()
    }
}

impl Drop for GuestRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping came from mmap_anon with this length, and
        // `&mut self` proves no borrow of `words()` is alive.
        if let Err(e) = unsafe { sys::munmap(self.base, self.len_bytes()) } {
            log::warn!("munmap of the guest region failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_hash_sees_them() {
        let r = GuestRegion::new(8).unwrap();
        let empty = r.hash();
        assert_eq!(r.pages(), 8);
        let page: Vec<u8> = (0..PAGE_SIZE)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        r.write_page(3, &page).unwrap();
        let mut out = vec![0u8; PAGE_SIZE];
        r.read_page(3, &mut out).unwrap();
        assert_eq!(out, page);
        assert_ne!(r.hash(), empty);
        r.release(&[PfnRun { start: 3, count: 1 }]).unwrap();
        r.read_page(3, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 0));
        assert_eq!(r.hash(), empty);
        assert!(matches!(
            r.read_page(8, &mut out),
            Err(MemoryError::OutOfRange { pfn: 8, pfns: 8 })
        ));
        assert!(r.release(&[PfnRun { start: 7, count: 2 }]).is_err());
    }
}
