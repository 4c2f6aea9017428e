//! The post-copy live migration engine, after Hines & Gopalan (VEE'09).
//!
//! Pure Rust, no Xen: this crate owns the wire records ([`records`]), the
//! pre-paging strategies ([`prepage`]), the bookkeeping of which pages are
//! still owed ([`sentmap`], [`scheduler`], with the one push policy every
//! path uses, [`scheduler::PushPolicy`]), the source and destination
//! phases ([`source::SourceSession`]: begin → switch → serve;
//! [`destination::DestSession`]: records → ready → serve) that local mode,
//! the Xen glue and the simulator all drive over any byte transport, with
//! fault replies on their own channel or in-band ([`transport::Replies`]),
//! and the metrics report ([`metrics`]).
//!
//! Backends plug in through the two traits of [`memory`]: the Xen backends
//! live in `libxl-glue`, the Linux userfaultfd backend in the crate
//! `postcopy-uffd` beside this one (it holds all the `unsafe` and `libc`
//! of local mode; this crate forbids `unsafe`), and an in-memory test
//! double in `testmem`, compiled only for tests and with the `test-util`
//! feature (other crates enable it in their dev-dependencies).
//!
//! ```text
//!   source host                                destination host
//!  +------------------+   bulk: BEGIN, PFNS,   +--------------------+
//!  | SourceMemory     |   VCPU_STATE, TRANS-   | DestinationMemory  |
//!  |  (guest stopped) |   ITION, PAGE_DATA,... |  (guest running,   |
//!  | Scheduler:       | =====================> |   absent pages     |
//!  |  SentMap +       |                        |   fault)           |
//!  |  Prepager        |   fault channel:       |                    |
//!  |                  | <--- FAULT ----------- |  fault forwarder   |
//!  |  fault server    | ---- PAGE_DATA ------> |  reply installer   |
//!  +------------------+                        +--------------------+
//! ```

#![forbid(unsafe_code)]

pub mod capabilities;
pub mod destination;
pub mod error;
pub mod handover;
pub mod memory;
pub mod metrics;
pub mod precedence;
pub mod prepage;
pub mod records;
pub mod recovery;
pub mod scheduler;
pub mod sentmap;
pub mod source;
pub mod status;
pub mod switch;
pub mod takeover;
#[cfg(any(test, feature = "test-util"))]
pub mod testmem;
pub mod transport;

pub use error::{DestinationCause, Error, GUEST_DIED};

/// A guest page frame number: the index of a 4 KiB page in guest memory.
pub type Pfn = u64;

/// log2 of the page size used on the wire.
pub const PAGE_SHIFT: u32 = 12;
/// The page size used on the wire: 4 KiB, as in Xen's migration stream.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
