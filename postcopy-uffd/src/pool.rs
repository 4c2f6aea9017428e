//! [`StagingPool`]: receive memory for zero-copy installs.
//!
//! UFFDIO_COPY allocates a fresh frame for every page it installs and
//! copies into it. On this host (a VM whose freed memory goes back to its
//! host) a fresh frame costs a host fault, so a cold 1 GiB install takes
//! seconds where a warm one takes 0.2 s (docs/performance.md). The pool
//! takes that cost off the post-copy path:
//!
//! 1. the destination maps one private anonymous area as large as the
//!    pages it is owed and **populates** it (`MADV_POPULATE_WRITE`, a
//!    thread of its own) as soon as it knows the guest's size, before the
//!    switch, as a Xen toolstack populates a domain before its memory
//!    arrives;
//! 2. the engine reads each record's page data straight from the socket
//!    into the next unused, page-aligned window of the pool
//!    ([`take`](StagingPool::take));
//! 3. the backend installs a window with **UFFDIO_MOVE**: its frames move
//!    into the guest without a copy or an allocation, and the window
//!    becomes a hole that is never handed out again.
//!
//! The guest's frames are thus the pool's frames, and the destination
//! never holds more memory than the guest's size. A window the pool cannot
//! supply (used up, or its populate thread behind) is simply not used: the
//! engine falls back to its own buffer and UFFDIO_COPY.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sys;
#[cfg(test)]
use crate::sys::Fill;
use postcopy::PAGE_SIZE;

/// Bytes populated per `madvise` call (the populate thread checks for a
/// stop between calls).
const POPULATE_STEP: usize = 16 << 20;

/// A page-aligned area handed out in disjoint windows, each once.
#[derive(Debug)]
pub struct StagingPool {
    base: NonNull<u8>,
    len: usize,
    /// Bytes handed out so far (from the start).
    taken: AtomicUsize,
    /// Bytes populated so far (from the start).
    populated: AtomicUsize,
}

// SAFETY: the pool is plain memory owned by this value; every window is
// handed out at most once (`taken` only grows, by compare-exchange), so no
// two threads ever get the same bytes, and the counters are atomics.
unsafe impl Send for StagingPool {}
// SAFETY: as above.
unsafe impl Sync for StagingPool {}

impl StagingPool {
    /// Maps `bytes` (rounded up to whole pages) of unpopulated memory,
    /// transparent huge pages off (UFFDIO_MOVE moves 4 KiB pages).
    pub fn new(bytes: usize) -> io::Result<StagingPool> {
        let len = bytes
            .checked_next_multiple_of(PAGE_SIZE)
            .filter(|&l| l > 0 && isize::try_from(l).is_ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pool size"))?;
        let base = sys::mmap_anon(len)?;
        let pool = StagingPool {
            base,
            len,
            taken: AtomicUsize::new(0),
            populated: AtomicUsize::new(0),
        };
        let _ = sys::madvise(pool.addr(), len, libc::MADV_NOHUGEPAGE);
        Ok(pool)
    }

    fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pool has no bytes (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes populated so far.
    pub fn populated(&self) -> usize {
        self.populated.load(Ordering::Acquire)
    }

    /// Bytes handed out so far.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Populates the whole pool from the start, in steps, until done or
    /// `stop()` says so (checked between steps). Run it on a thread of its
    /// own; windows become available as it goes.
    pub fn populate(&self, stop: impl Fn() -> bool) -> io::Result<()> {
        loop {
            let at = self.populated.load(Ordering::Acquire);
            if at >= self.len || stop() {
                return Ok(());
            }
            // Windows already taken are not worth populating any more.
            let from = at.max(self.taken());
            let step = POPULATE_STEP.min(self.len - at);
            let end = at + step;
            if from < end {
                sys::madvise(
                    self.addr() + from as u64,
                    end - from,
                    libc::MADV_POPULATE_WRITE,
                )?;
            }
            self.populated.store(end, Ordering::Release);
        }
    }

    /// The next unused `bytes` (whole pages) of the pool, if all of them
    /// are populated already; each byte is handed out at most once.
    #[allow(
        clippy::mut_from_ref,
        reason = "a bump allocator: `taken` makes every window disjoint"
    )]
    pub fn take(&self, bytes: usize) -> Option<&mut [u8]> {
        if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let mut at = self.taken.load(Ordering::Acquire);
        loop {
            let end = at.checked_add(bytes)?;
            if end > self.populated.load(Ordering::Acquire) {
                return None;
            }
            match self
                .taken
                .compare_exchange_weak(at, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => at = now,
            }
        }
        // SAFETY: `[at, at + bytes)` lies inside our live mapping
        // (`end <= populated <= len`), and the compare-exchange above
        // handed it to this caller alone: no other reference to it exists
        // or will be created. The borrow cannot outlive the mapping, which
        // is unmapped only on drop.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(at), bytes) })
    }

    /// Whether `window` lies inside this pool.
    pub fn contains(&self, window: &[u8]) -> bool {
        let (start, end) = (self.addr(), self.addr() + self.len as u64);
        let p = window.as_ptr() as u64;
        p >= start && p + window.len() as u64 <= end
    }
}

impl Drop for StagingPool {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, and every window borrowed from it
        // borrowed `self`, so none is alive now.
        if let Err(e) = unsafe { sys::munmap(self.base, self.len) } {
            log::warn!("unmapping the staging pool: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_disjoint_populated_and_handed_out_once() {
        let pool = StagingPool::new(10 * PAGE_SIZE).unwrap();
        assert!(pool.take(PAGE_SIZE).is_none(), "nothing populated yet");
        pool.populate(|| false).unwrap();
        assert_eq!(pool.populated(), 10 * PAGE_SIZE);
        assert!(pool.take(100).is_none(), "not whole pages");
        let a = pool.take(4 * PAGE_SIZE).unwrap();
        let b = pool.take(4 * PAGE_SIZE).unwrap();
        assert!(pool.take(4 * PAGE_SIZE).is_none(), "only 2 pages left");
        a.fill(1);
        b.fill(2);
        assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
        assert!(pool.contains(a) && pool.contains(b));
        assert!(!pool.contains(&[0u8; 8]));
        assert_eq!(
            pool.take(2 * PAGE_SIZE).map(|w| w.len()),
            Some(2 * PAGE_SIZE)
        );
        assert_eq!(pool.taken(), 10 * PAGE_SIZE);
    }
}

#[cfg(test)]
mod bench {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::uffd_available;

    fn registered(bytes: usize, features: u64) -> (crate::GuestRegion, std::os::fd::OwnedFd) {
        let r = crate::GuestRegion::new((bytes / PAGE_SIZE) as u64).unwrap();
        let uffd = crate::probe::open_with(features, "test").unwrap();
        sys::register(&uffd, r.addr(), bytes as u64, sys::REGISTER_MODE_MISSING).unwrap();
        (r, uffd)
    }

    /// A measurement: `cargo test -p postcopy-uffd --release -- --ignored
    /// copy_vs_move --nocapture` (POOL_MIB, default 1024).
    #[test]
    #[ignore = "benchmark"]
    fn copy_vs_move() {
        if !uffd_available("copy_vs_move") {
            return;
        }
        let mib: usize = std::env::var("POOL_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let bytes = mib << 20;
        let chunk = 64 * PAGE_SIZE;
        for round in 0..2 {
            std::thread::sleep(Duration::from_secs(3));
            let (r, uffd) = registered(bytes, 0);
            let buf = vec![0x5au8; chunk];
            let t = Instant::now();
            for off in (0..bytes).step_by(chunk) {
                assert!(matches!(
                    sys::copy(&uffd, r.addr() + off as u64, &buf, 0),
                    Fill::Done
                ));
            }
            println!("round {round}: cold COPY {mib} MiB: {:?}", t.elapsed());
            drop((r, uffd));
            std::thread::sleep(Duration::from_secs(3));
            let (r, uffd) = registered(bytes, sys::UFFD_FEATURE_MOVE);
            let pool = StagingPool::new(bytes).unwrap();
            let t = Instant::now();
            pool.populate(|| false).unwrap();
            let pop = t.elapsed();
            let t = Instant::now();
            for off in (0..bytes).step_by(chunk) {
                let w = pool.take(chunk).unwrap();
                w[0] = 1;
                assert!(matches!(
                    sys::move_pages(&uffd, r.addr() + off as u64, w),
                    Fill::Done
                ));
            }
            println!(
                "round {round}: cold populate {mib} MiB: {pop:?}, then MOVE: {:?}",
                t.elapsed()
            );
        }
    }
}
