//! Page-access traces of the mini-VM's workloads, for the simulator
//! (`xl-postcopy local --record-trace FILE`, `xl-postcopy calibrate`).
//!
//! The page workloads are deterministic given their seed: the access
//! sequence does not depend on memory contents, so the trace is recorded by
//! replaying the workload from the migrated guest's seed on a private copy
//! of memory — the same sequence the guest runs, without slowing the real
//! vCPU down with recording. `quicksort` has no page-per-step trace.

use std::sync::atomic::AtomicU64;

use postcopy_sim::trace::{Access, Trace, TraceError};

use super::workload::{step, Regs, Workload, WORDS_PER_PAGE};

/// Why no trace could be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The workload has no page-per-step trace.
    #[error("workload '{0}' has no page-access trace (use stress, sequential, random or zipf)")]
    NotTraceable(Workload),
    /// The trace was rejected.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// Records `accesses` page accesses of `workload` on a `pages`-page guest
/// booted with `seed`, skipping the first `skip` steps (the warmup the
/// guest ran before the switch). `ns_per_access` is the measured compute
/// time per step.
pub fn record(
    workload: Workload,
    pages: u64,
    seed: u64,
    skip: u64,
    accesses: usize,
    ns_per_access: u64,
) -> Result<Trace, RecordError> {
    if workload == Workload::Quicksort {
        return Err(RecordError::NotTraceable(workload));
    }
    let words = usize::try_from(pages.saturating_mul(WORDS_PER_PAGE)).unwrap_or(0);
    let mem: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
    let mut regs = Regs::boot(workload, pages, seed);
    for _ in 0..skip {
        let _ = step(&mut regs, &mem);
    }
    let mut out = Vec::with_capacity(accesses);
    while out.len() < accesses {
        match step(&mut regs, &mem) {
            Some(pfn) => out.push(Access { pfn, write: true }),
            None => return Err(RecordError::NotTraceable(workload)),
        }
    }
    Ok(Trace::new(pages, ns_per_access, true, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_workloads_own_sequence() {
        let t = record(Workload::Sequential, 16, 1, 5, 20, 50).unwrap();
        let pfns: Vec<u64> = t.iter().map(|a| a.pfn).collect();
        let want: Vec<u64> = (5..25).map(|i| i % 16).collect();
        assert_eq!(pfns, want);
        let a = record(Workload::Random, 64, 9, 0, 100, 50).unwrap();
        let b = record(Workload::Random, 64, 9, 0, 100, 50).unwrap();
        assert_eq!(a, b);
        assert!(record(Workload::Quicksort, 16, 1, 0, 10, 50).is_err());
    }
}
