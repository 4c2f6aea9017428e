//! The integrity check: the destination's memory as the guest first saw it
//! must equal the source's memory at the stop, byte for byte.
//!
//! The destination guest keeps running (and writing) after the switch, so
//! its memory cannot simply be hashed at the end. Instead every page is
//! hashed at the moment it becomes visible to the guest — when it is
//! written before the switch, or installed after it (userfaultfd blocks any
//! access to an absent page, so nothing can have changed it before then);
//! pages never delivered are zero pages. [`HashingDestination`] does this
//! around the real backend. The source hashes its stopped image the same
//! way ([`image_digest`]); the two digests must match.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postcopy::memory::{DestinationMemory, Fault, Installed, MemResult, PfnRun};
use postcopy::{Pfn, PAGE_SIZE};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Hash of one page's content at one pfn. Never 0 (0 means "not
/// delivered" in the destination's table).
pub fn page_hash(pfn: Pfn, page: &[u8]) -> u64 {
    xxh3_64_with_seed(page, pfn) | 1
}

/// Folds per-page hashes (0 = zero page) into one digest.
pub fn fold(hashes: impl Iterator<Item = (Pfn, u64)>) -> u64 {
    let zero = [0u8; PAGE_SIZE];
    hashes
        .map(|(pfn, h)| if h == 0 { page_hash(pfn, &zero) } else { h })
        .fold(0u64, |acc, h| acc.rotate_left(5) ^ h)
}

/// Digest of a whole image read page by page through `read`.
pub fn image_digest(pages: u64, mut read: impl FnMut(Pfn, &mut [u8])) -> u64 {
    let mut buf = vec![0u8; PAGE_SIZE];
    fold((0..pages).map(|pfn| {
        read(pfn, &mut buf);
        (pfn, page_hash(pfn, &buf))
    }))
}

/// A destination backend that records each page's hash as it becomes
/// visible to the guest.
#[derive(Debug)]
pub struct HashingDestination<D> {
    inner: D,
    hashes: Vec<AtomicU64>,
    /// Time spent hashing installed pages (after the switch), in ns.
    install_hash_ns: AtomicU64,
}

impl<D: DestinationMemory> HashingDestination<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        let n = usize::try_from(inner.pfn_count()).unwrap_or(0);
        HashingDestination {
            inner,
            hashes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            install_hash_ns: AtomicU64::new(0),
        }
    }

    /// Time spent hashing pages inside `install`/`install_zero` (the
    /// engine's install timer includes it; see `Part::Hash`).
    pub fn install_hash_time(&self) -> Duration {
        Duration::from_nanos(self.install_hash_ns.load(Ordering::Relaxed))
    }

    fn timed_record(&self, f: impl FnOnce()) {
        let t0 = std::time::Instant::now();
        f();
        self.add_hash_time(t0);
    }

    fn add_hash_time(&self, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.install_hash_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn store(&self, pfn: Pfn, hash: u64) {
        if let Some(slot) = usize::try_from(pfn).ok().and_then(|i| self.hashes.get(i)) {
            slot.store(hash, Ordering::Relaxed);
        }
    }

    fn record(&self, pfn: Pfn, page: Option<&[u8]>) {
        let zero = [0u8; PAGE_SIZE];
        self.store(pfn, page_hash(pfn, page.unwrap_or(&zero)));
    }

    /// The digest of everything delivered (call after completion).
    pub fn digest(&self) -> u64 {
        fold(
            self.hashes
                .iter()
                .enumerate()
                .map(|(i, h)| (i as Pfn, h.load(Ordering::Relaxed))),
        )
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D: DestinationMemory> DestinationMemory for HashingDestination<D> {
    fn pfn_count(&self) -> u64 {
        self.inner.pfn_count()
    }

    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        self.inner.write_page(pfn, data)?;
        self.record(pfn, Some(data));
        Ok(())
    }

    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        self.inner.mark_absent(runs)?;
        for run in runs {
            for p in run.pfns() {
                if let Some(slot) = usize::try_from(p).ok().and_then(|i| self.hashes.get(i)) {
                    slot.store(0, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        let r = self.inner.install(first, pages)?;
        if r == Installed::Installed {
            self.timed_record(|| {
                for (k, page) in pages.chunks_exact(PAGE_SIZE).enumerate() {
                    self.record(first + k as u64, Some(page));
                }
            });
        }
        Ok(r)
    }

    #[allow(clippy::mut_from_ref, reason = "forwarded")]
    fn staging(&self, bytes: usize) -> Option<&mut [u8]> {
        self.inner.staging(bytes)
    }

    /// Hashes first: the backend may take the pages (UFFDIO_MOVE).
    fn install_staged(&self, first: Pfn, pages: &mut [u8]) -> MemResult<Installed> {
        let t0 = std::time::Instant::now();
        let hashes: Vec<u64> = pages
            .chunks_exact(PAGE_SIZE)
            .enumerate()
            .map(|(k, page)| page_hash(first + k as u64, page))
            .collect();
        self.add_hash_time(t0);
        let r = self.inner.install_staged(first, pages)?;
        if r == Installed::Installed {
            for (k, h) in hashes.into_iter().enumerate() {
                self.store(first + k as u64, h);
            }
        }
        Ok(r)
    }

    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        let r = self.inner.install_zero(pfn)?;
        if r == Installed::Installed {
            self.timed_record(|| self.record(pfn, None));
        }
        Ok(r)
    }

    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        self.inner.wait_fault(timeout)
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless,
    reason = "test arithmetic on small known values"
)]
mod tests {
    use super::*;
    use postcopy::testmem::MemDestination;

    #[test]
    fn digest_sees_one_changed_byte_and_treats_missing_as_zero() {
        let img: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        let read = |img: &[u8]| {
            let img = img.to_vec();
            move |p: Pfn, buf: &mut [u8]| {
                let s = p as usize * PAGE_SIZE;
                buf.copy_from_slice(&img[s..s + PAGE_SIZE]);
            }
        };
        let a = image_digest(4, read(&img));
        let mut img2 = img.clone();
        img2[3 * PAGE_SIZE + 17] ^= 1;
        assert_ne!(a, image_digest(4, read(&img2)));

        let d = HashingDestination::new(MemDestination::new(4));
        for p in 0..3u64 {
            d.write_page(
                p,
                &img[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE],
            )
            .unwrap();
        }
        let mut img3 = img.clone();
        img3[3 * PAGE_SIZE..].fill(0);
        assert_eq!(d.digest(), image_digest(4, read(&img3)));
    }
}
