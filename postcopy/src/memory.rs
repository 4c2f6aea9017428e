//! The two traits through which the engine reaches guest memory.
//!
//! [`SourceMemory`] is the stopped (or, during pre-copy, still running)
//! guest on the source host; [`DestinationMemory`] is the new guest on the
//! destination host, whose absent pages fault. Every backend — Xen
//! (`libxl-glue`), Linux userfaultfd (the `postcopy-uffd` crate) and the
//! in-memory test double (`testmem`, feature `test-util`) — implements these and nothing else, so
//! the same state machines drive all of them.

use std::time::{Duration, Instant};

use crate::Pfn;

/// A run of consecutive pfns `[start, start + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PfnRun {
    /// First pfn of the run.
    pub start: Pfn,
    /// Number of pfns in the run (non-zero in well-formed input).
    pub count: u64,
}

impl PfnRun {
    /// One past the last pfn, or `None` if it overflows.
    pub fn end(&self) -> Option<Pfn> {
        self.start.checked_add(self.count)
    }

    /// Iterates over the pfns of the run.
    pub fn pfns(&self) -> impl Iterator<Item = Pfn> {
        self.start..self.start.saturating_add(self.count)
    }
}

/// Collapses a sorted, duplicate-free list of pfns into runs.
pub fn runs_from_sorted(pfns: impl IntoIterator<Item = Pfn>) -> Vec<PfnRun> {
    let mut runs: Vec<PfnRun> = Vec::new();
    for pfn in pfns {
        match runs.last_mut() {
            Some(run) if run.end() == Some(pfn) => run.count += 1,
            _ => runs.push(PfnRun {
                start: pfn,
                count: 1,
            }),
        }
    }
    runs
}

/// A bitmap of `n` pfns with the pfns of `runs` set (word-wise fills;
/// pfns at or past `n` are ignored).
pub fn runs_to_bits(n: u64, runs: &[PfnRun]) -> bitvec::vec::BitVec {
    let len = usize::try_from(n).unwrap_or(0);
    let mut bits = bitvec::vec::BitVec::repeat(false, len);
    for run in runs {
        let start = usize::try_from(run.start).unwrap_or(len).min(len);
        let end = usize::try_from(run.end().unwrap_or(n))
            .unwrap_or(len)
            .min(len);
        bits[start..end.max(start)].fill(true);
    }
    bits
}

/// An error raised by a memory backend. Backends map their own failures
/// (errno from an ioctl or a hypercall) to these meanings.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The pfn is outside guest memory.
    #[error("pfn {pfn:#x} is outside guest memory ({pfns} pfns)")]
    OutOfRange {
        /// The offending pfn.
        pfn: Pfn,
        /// The guest's size in pfns.
        pfns: u64,
    },
    /// The backend lacks a capability the migration mode needs.
    #[error("memory backend cannot {what}: {why}")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// Why, and how to fix it.
        why: String,
    },
    /// The guest went away (destroyed, or its address space was torn down).
    #[error("guest memory is gone: {0}")]
    GuestGone(String),
    /// A backend's own call failed; its typed error stays the source.
    #[error("memory backend call failed: {source}")]
    Backend {
        /// The errno the call reported, if any.
        errno: Option<i32>,
        /// The backend's error (e.g. the Xen glue's `XcError`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An operating system or hypervisor call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl MemoryError {
    /// Wraps an OS error with the operation that failed.
    pub fn os(op: impl Into<String>, source: std::io::Error) -> Self {
        MemoryError::Os {
            op: op.into(),
            source,
        }
    }
}

/// Result type of the memory traits.
pub type MemResult<T> = Result<T, MemoryError>;

/// The guest's memory on the source host.
///
/// Reads happen from several threads at once after the switch (the fault
/// server and the pre-pager), hence `&self` and `Sync`; the dirty log is
/// only used before the switch, from one thread.
pub trait SourceMemory: Sync {
    /// The guest's size in pfns (max pfn + 1).
    fn pfn_count(&self) -> u64;

    /// The populated pfns, as sorted runs. Ballooned-out and never
    /// populated pfns are left out: they are never sent.
    fn populated(&self) -> MemResult<Vec<PfnRun>>;

    /// Copies the pages `pfns` into `out` (`pfns.len() * PAGE_SIZE` bytes,
    /// page `i` at offset `i * PAGE_SIZE`).
    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> MemResult<()>;

    /// Starts dirty tracking (pre-copy and hybrid modes).
    fn enable_dirty_log(&mut self) -> MemResult<()> {
        Err(MemoryError::Unsupported {
            what: "track dirty pages",
            why: "this backend has no dirty log; use pure post-copy".into(),
        })
    }

    /// Returns the pfns written since the last call (or since
    /// [`enable_dirty_log`](Self::enable_dirty_log)), sorted, and clears
    /// the log.
    fn take_dirty(&mut self) -> MemResult<Vec<Pfn>> {
        Err(MemoryError::Unsupported {
            what: "read the dirty log",
            why: "this backend has no dirty log".into(),
        })
    }

    /// Pages the guest touched recently, most recent first, if the backend
    /// knows (feeds the `history` pre-pager). Empty when unknown.
    fn access_history(&self) -> Vec<Pfn> {
        Vec::new()
    }
}

/// How an install ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The page was absent and is now present; waiters were woken.
    Installed,
    /// The page was already present (e.g. a racing install); waiters were
    /// woken anyway.
    AlreadyPresent,
}

/// Who touched an absent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultOrigin {
    /// One of the guest's vCPUs (by index).
    Vcpu(u32),
    /// Another domain on the guest's behalf (Xen: a dom0 backend or the
    /// device model mapping the page; `VM_EVENT_FLAG_FOREIGN`).
    Foreign,
    /// The backend cannot tell.
    Unknown,
}

impl std::fmt::Display for FaultOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultOrigin::Vcpu(v) => write!(f, "vcpu{v}"),
            FaultOrigin::Foreign => f.write_str("foreign"),
            FaultOrigin::Unknown => f.write_str("unknown"),
        }
    }
}

/// What one entry of [`DestinationMemory::install_batch`] installs at its
/// pfn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageIn<'a> {
    /// Whole pages of content for consecutive pfns from the entry's pfn
    /// (`len() / PAGE_SIZE` of them, at least one).
    Data(&'a [u8]),
    /// One zero page.
    Zero,
}

impl PageIn<'_> {
    /// The number of pages of the entry.
    pub fn pages(&self) -> usize {
        match self {
            PageIn::Data(d) => d.len() / crate::PAGE_SIZE,
            PageIn::Zero => 1,
        }
    }
}

/// [`DestinationMemory::install_batch`] done entry by entry: a data run
/// with one [`install`](DestinationMemory::install), a zero page with
/// [`install_zero`](DestinationMemory::install_zero). The default of the
/// trait, for a backend that overrides it to look at its batches.
pub fn install_each<M: DestinationMemory + ?Sized>(
    mem: &M,
    batch: &[(Pfn, PageIn<'_>)],
) -> MemResult<()> {
    for &(pfn, page) in batch {
        match page {
            PageIn::Data(data) => mem.install(pfn, data)?,
            PageIn::Zero => mem.install_zero(pfn)?,
        };
    }
    Ok(())
}

/// A guest access to an absent page, as reported by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The page the guest touched.
    pub pfn: Pfn,
    /// When the backend saw it (start of the fault latency).
    pub at: Instant,
    /// Who touched it (blocktime is counted per origin).
    pub origin: FaultOrigin,
}

/// The guest's memory on the destination host.
///
/// Pages arrive on two paths at once (pushed pages on the bulk channel,
/// fault replies on the fault channel) and faults are read on a third
/// thread, hence `&self` and `Send + Sync`.
pub trait DestinationMemory: Send + Sync {
    /// The guest's size in pfns.
    fn pfn_count(&self) -> u64;

    /// Before the switch (pre-copy): stores `data` (one page) as the
    /// content of `pfn`, overwriting any earlier copy.
    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()>;

    /// Before the switch: [`write_page`](Self::write_page) for each of
    /// `pfns`, page `i` of `data` at `pfns[i]` (backends batch this).
    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> MemResult<()> {
        for (p, page) in pfns.iter().zip(data.chunks_exact(crate::PAGE_SIZE)) {
            self.write_page(*p, page)?;
        }
        Ok(())
    }

    /// At the switch, before the guest resumes: makes `runs` absent, so
    /// that a guest access to any of them raises a [`Fault`]. Pfns in no
    /// run and never written read as zero.
    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()>;

    /// After the switch: installs `pages.len() / PAGE_SIZE` consecutive
    /// pages starting at `first` and wakes every vCPU waiting on them.
    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed>;

    /// After the switch: installs a zero page at `pfn` and wakes waiters.
    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed>;

    /// After the switch: installs every entry of `batch` (the pages one
    /// record carried: runs of data and zero pages) and wakes every vCPU
    /// waiting on any of them, as [`install`](Self::install) and
    /// [`install_zero`](Self::install_zero) would one by one (the
    /// default, [`install_each`]). A backend with a cheaper way to install
    /// many pages at once (Xen: one hypercall per batch) overrides it;
    /// pages already present are skipped and their waiters woken, as by
    /// `install`.
    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        install_each(self, batch)
    }

    /// After the switch: lends `bytes` (whole pages) of memory for the
    /// engine to read a record's page data into, which
    /// [`install_staged`](Self::install_staged) then installs without a
    /// copy (local mode: pages populated before the switch, moved into the
    /// guest with UFFDIO_MOVE). Each call lends different memory. `None`
    /// (the default): the engine reads into its own buffer.
    #[allow(
        clippy::mut_from_ref,
        reason = "memory lent once per call, like an arena's allocation"
    )]
    fn staging(&self, bytes: usize) -> Option<&mut [u8]> {
        let _ = bytes;
        None
    }

    /// After the switch: [`install`](Self::install) of pages the engine
    /// read into memory from [`staging`](Self::staging); the backend may
    /// take that memory's pages (it reads as zero afterwards). The default
    /// installs a copy.
    fn install_staged(&self, first: Pfn, pages: &mut [u8]) -> MemResult<Installed> {
        self.install(first, pages)
    }

    /// Waits up to `timeout` for the next guest access to an absent page.
    /// `Ok(None)` on timeout. Called from one thread only.
    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>>;

    /// After the last owed page is installed, before COMPLETE: answers
    /// guest accesses that raced with the last installs and were not read
    /// as faults (a backend whose installs wake every waiter has nothing
    /// to do). Fails if some access still waits for an absent page.
    fn settle(&self) -> MemResult<()> {
        Ok(())
    }
}

/// A borrowed backend is a backend (the engine's phases own theirs).
impl<M: DestinationMemory + ?Sized> DestinationMemory for &M {
    fn pfn_count(&self) -> u64 {
        (**self).pfn_count()
    }
    fn write_page(&self, pfn: Pfn, data: &[u8]) -> MemResult<()> {
        (**self).write_page(pfn, data)
    }
    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> MemResult<()> {
        (**self).write_pages(pfns, data)
    }
    fn mark_absent(&self, runs: &[PfnRun]) -> MemResult<()> {
        (**self).mark_absent(runs)
    }
    fn install(&self, first: Pfn, pages: &[u8]) -> MemResult<Installed> {
        (**self).install(first, pages)
    }
    fn install_zero(&self, pfn: Pfn) -> MemResult<Installed> {
        (**self).install_zero(pfn)
    }
    fn install_batch(&self, batch: &[(Pfn, PageIn<'_>)]) -> MemResult<()> {
        (**self).install_batch(batch)
    }
    #[allow(clippy::mut_from_ref, reason = "forwarded")]
    fn staging(&self, bytes: usize) -> Option<&mut [u8]> {
        (**self).staging(bytes)
    }
    fn install_staged(&self, first: Pfn, pages: &mut [u8]) -> MemResult<Installed> {
        (**self).install_staged(first, pages)
    }
    fn wait_fault(&self, timeout: Duration) -> MemResult<Option<Fault>> {
        (**self).wait_fault(timeout)
    }
    fn settle(&self) -> MemResult<()> {
        (**self).settle()
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

    #[test]
    fn runs_collapse_consecutive_pfns() {
        let runs = runs_from_sorted([1, 2, 3, 7, 9, 10]);
        assert_eq!(
            runs,
            vec![
                PfnRun { start: 1, count: 3 },
                PfnRun { start: 7, count: 1 },
                PfnRun { start: 9, count: 2 },
            ]
        );
        assert!(runs_from_sorted([]).is_empty());
    }
}
