//! The Linux userfaultfd backend of local mode (DESIGN.md §3): the
//! [`postcopy`] engine's [`SourceMemory`](postcopy::memory::SourceMemory)
//! and [`DestinationMemory`](postcopy::memory::DestinationMemory) over a
//! mini-VM's memory in this process.
//!
//! A mini-VM's guest memory is a [`GuestRegion`]: one private anonymous
//! mapping that its workload thread reads and writes through relaxed
//! atomics. On the source, [`RegionSource`] serves the engine's reads and
//! tracks dirty pages with userfaultfd asynchronous write-protect and the
//! `PAGEMAP_SCAN` ioctl; on the destination, [`UffdDestination`] registers
//! the region with a userfaultfd in MISSING mode after the switch, so every
//! access to an absent page blocks the accessing thread and raises a fault
//! event, until the engine installs the page with `UFFDIO_COPY`
//! (`UFFDIO_ZEROPAGE` for zero pages), which wakes it.
//!
//! ```text
//!   source process                          destination process
//!  +-----------------------+               +------------------------------+
//!  | workload --atomics--> |               | workload --atomics--> region |
//!  |   GuestRegion         |               |   (absent page: blocks in    |
//!  | RegionSource          |               |    the kernel, uffd event)   |
//!  |  populated: PAGEMAP_  |   engine      | UffdDestination              |
//!  |   SCAN(PRESENT)       | ============> |  wait_fault: poll+read uffd  |
//!  |  dirty: WP_ASYNC +    |               |  install:    UFFDIO_COPY     |
//!  |   PAGEMAP_SCAN(WRIT-  |               |  install_zero: ZEROPAGE      |
//!  |   TEN, WP_MATCHING)   |               |  detach: UNREGISTER          |
//!  +-----------------------+               +------------------------------+
//! ```
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use postcopy_uffd::{probe, GuestRegion, RegionSource, UffdDestination};
//!
//! let caps = probe()?; // first: names the fix if uffd is unavailable
//! caps.require_postcopy()?;
//! let hybrid_ok = caps.dirty_log(); // WP_ASYNC + PAGEMAP_SCAN (Linux 6.7+)
//!
//! // Source process: the guest's memory and the engine's view of it.
//! let guest = Arc::new(GuestRegion::new(262_144)?); // 1 GiB
//! let mut src = RegionSource::new(guest.clone())?; // run_source(&mut src, ..)
//!
//! // Destination process: faults are served once `mark_absent` ran.
//! let region = Arc::new(GuestRegion::new(262_144)?);
//! let dst = UffdDestination::new(region.clone())?; // run_destination(&dst, ..)
//! // ... after run_destination returned (success or failure):
//! dst.detach()?;
//! let integrity = region.hash() == guest.hash();
//! # let _ = (hybrid_ok, &mut src, integrity);
//! # Ok(()) }
//! ```
//!
//! [`probe`] checks the host first and names the fix when userfaultfd is
//! unavailable; [`measure_floor`] measures the latency floor that the
//! benchmarks' fault latency targets are ratios to.
//!
//! This crate holds all of the project's local-mode `unsafe`, kept out of
//! the engine (which forbids it): all of it is in `sys` (one wrapper per
//! system call or ioctl) and in `GuestRegion`'s mapping, each block with
//! its `SAFETY` argument.

mod dest;
mod floor;
mod pool;
mod probe;
mod region;
mod source;
mod sys;

pub use dest::{UffdDestination, UffdStats};
pub use floor::{
    measure_floor, measure_stream_floor, FloorReport, StreamFloor, Warmth, HOST_RECLAIM_WAIT,
};
pub use pool::StagingPool;
pub use probe::{probe, unavailable_fix, Capabilities, Opened, ProbeError};
pub use region::GuestRegion;
pub use source::RegionSource;

/// For tests: true if userfaultfd works here; otherwise prints why the
/// calling test is skipped (tests must never pass silently).
#[cfg(test)]
pub(crate) fn uffd_available(test: &str) -> bool {
    match probe() {
        Ok(c) if c.postcopy => true,
        Ok(c) => {
            println!("SKIP {test}: userfaultfd lacks post-copy support here: {c:?}");
            false
        }
        Err(e) => {
            println!("SKIP {test}: {e}");
            false
        }
    }
}

/// For tests: true if the dirty log works here; otherwise prints why.
#[cfg(test)]
pub(crate) fn dirty_log_available(test: &str) -> bool {
    match probe() {
        Ok(c) => match c.require_dirty_log() {
            Ok(()) => true,
            Err(e) => {
                println!("SKIP {test}: {e}");
                false
            }
        },
        Err(e) => {
            println!("SKIP {test}: {e}");
            false
        }
    }
}
