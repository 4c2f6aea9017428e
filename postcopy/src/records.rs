//! Wire records: libxc stream framing and the post-copy record bodies.
//!
//! Framing is libxc's (`tools/libs/guest/xg_sr_common.c`): a [`RecordHeader`]
//! (u32 type, u32 body length), the body, then zero padding to a multiple
//! of 8 bytes; all little-endian. Post-copy records are numbered above the
//! highest type Xen 4.17 defines ([`XEN_4_17_LAST_REC_TYPE`], X86_MSR_POLICY)
//! so they interleave with libxenguest's own records; [`RECORD_TABLE`] is
//! the one list of them (the C header `libxl-glue/include/libxl_postcopy.h`
//! and the patched Python verifier mirror it, and a test checks the header).
//!
//! Bodies are `#[repr(C)]` structs of fixed-endian integers with zerocopy
//! derives and compile-time size assertions. Every decoder validates before
//! it allocates or touches guest memory: the type must be known, the length
//! within the type's bound, counts must match lengths, pfns must be below
//! the guest size, reserved fields and padding must be zero (we reject
//! rather than ignore them: in a stream we write ourselves, a non-zero
//! reserved byte means corruption). A page delivered twice is caught by the
//! destination ([`crate::destination`]), which knows what it has received.
//!
//! Sequence (pure post-copy; hybrid adds pre-copy PAGE_DATA before the stop):
//!
//! ```text
//! source                                         destination
//!   BEGIN {version, strategy, guest_pfns}  ---->
//!   [PAGE_DATA cause=precopy ...]          ---->  write_page
//!   -- guest stopped --
//!   PFNS {owed runs} ...                   ---->  collect owed set
//!   ZERO {pages freed since sent}          ---->  write zero
//!   VCPU_STATE {opaque}                    ---->  mark_absent(owed)
//!                                          <----  READY (or ABORT: source resumes)
//!   TRANSITION                             ---->  resume the guest
//!                                          <----  RESUMED (fault channel)
//!   PAGE_DATA cause=push / ZERO ...        ---->  install (bulk channel)
//!                                          <----  FAULT {pfns} (fault channel)
//!   PAGE_DATA cause=fault                  ---->  install (fault channel)
//!   COMPLETE {pages sent} (bulk)           ---->
//!                                          <----  COMPLETE {pages received}
//!   COMPLETE (fault channel, ack)          ---->
//! ```

use std::io::{self, Read, Write};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::PfnRun;
use crate::prepage::StrategySpec;
use crate::{Pfn, PAGE_SIZE};

/// Highest record type of Xen 4.17's libxc stream (REC_TYPE_X86_MSR_POLICY).
pub const XEN_4_17_LAST_REC_TYPE: u32 = 0x12;

/// Version carried in BEGIN; a receiver accepts only this one.
pub const STREAM_VERSION: u32 = 1;

/// Most pages in one PAGE_DATA record (libxc's MAX_BATCH_SIZE).
pub const MAX_BATCH_PAGES: usize = 1024;
/// Most pfns in one FAULT or ZERO record.
pub const MAX_PFN_LIST: usize = 8192;
/// Most runs in one PFNS record.
pub const MAX_RUNS: usize = 8192;
/// Largest opaque VCPU_STATE body.
pub const MAX_VCPU_STATE: usize = 1 << 20;
/// Largest ABORT body (a UTF-8 reason).
pub const MAX_ABORT: usize = 4096;
/// Largest RECOVER body.
pub const MAX_RECOVER: usize = 8 + 16 * MAX_RUNS;
/// Hard limit on any record body this module reads; checked against the
/// per-type bound before a single body byte is allocated.
pub const MAX_RECORD_LEN: usize = 8 + MAX_BATCH_PAGES * (8 + PAGE_SIZE);

/// Xen's "optional record" bit (REC_TYPE_OPTIONAL).
pub const REC_TYPE_OPTIONAL: u32 = 0x8000_0000;

/// The post-copy record types, numbered from 0x13.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// Source → destination: stream version, strategy, guest size.
    Begin = 0x13,
    /// Source → destination: runs of owed pfns (no data).
    Pfns = 0x14,
    /// Source → destination: resume the guest now.
    Transition = 0x15,
    /// Pages with data (pushed, fault reply, pre-copy or resent).
    PageData = 0x16,
    /// Destination → source (fault channel): pages the guest is waiting on.
    Fault = 0x17,
    /// End of post-copy (both directions, carries a page count).
    Complete = 0x18,
    /// Pages whose content is all zero (no data sent).
    Zero = 0x19,
    /// Source → destination: opaque CPU/device state (local mode).
    VcpuState = 0x1a,
    /// Destination → source (fault channel): the guest runs.
    Resumed = 0x1b,
    /// Destination → source after a reconnect: what it has received.
    Recover = 0x1c,
    /// Destination → source (fault channel): it gave up before resuming
    /// the guest, so the source may resume it.
    Abort = 0x1d,
    /// Destination → source (fault channel): everything before TRANSITION
    /// arrived and checked out; the owed pages are absent; send TRANSITION.
    Ready = 0x1e,
    /// Destination → source (fault channel): bytes of the forward stream
    /// consumed (read and installed) since serving began, so the source
    /// can bound the push bytes in flight ([`BEGIN_ACKS`]).
    Ack = 0x1f,
    /// Source → destination, before BEGIN, while the guest still runs:
    /// the populated pfns of the source's prescan, which the destination
    /// may page out ahead of the stop ([`EarlyHead`]); advisory, the owed
    /// set is still PFNS's.
    EarlyPfns = 0x20,
    /// Destination → source (back channel), before BEGIN: the EARLY_PFNS
    /// records were handled (the count of pfns paged out early), so the
    /// source may stop the guest.
    EarlyDone = 0x21,
}

/// One row of the record table.
#[derive(Debug, Clone, Copy)]
pub struct RecordInfo {
    /// The type.
    pub rtype: RecordType,
    /// Name as in libxc's `rec_type_to_str`.
    pub name: &'static str,
    /// Largest valid body length.
    pub max_len: usize,
}

/// Every post-copy record type, its name and its length bound.
pub const RECORD_TABLE: [RecordInfo; 15] = [
    RecordInfo {
        rtype: RecordType::Begin,
        name: "POSTCOPY_BEGIN",
        max_len: size_of::<BeginBody>(),
    },
    RecordInfo {
        rtype: RecordType::Pfns,
        name: "POSTCOPY_PFNS",
        max_len: 8 + 16 * MAX_RUNS,
    },
    RecordInfo {
        rtype: RecordType::Transition,
        name: "POSTCOPY_TRANSITION",
        max_len: 0,
    },
    RecordInfo {
        rtype: RecordType::PageData,
        name: "POSTCOPY_PAGE_DATA",
        max_len: MAX_RECORD_LEN,
    },
    RecordInfo {
        rtype: RecordType::Fault,
        name: "POSTCOPY_FAULT",
        max_len: 8 + 8 * MAX_PFN_LIST,
    },
    RecordInfo {
        rtype: RecordType::Complete,
        name: "POSTCOPY_COMPLETE",
        max_len: size_of::<CountBody>(),
    },
    RecordInfo {
        rtype: RecordType::Zero,
        name: "POSTCOPY_ZERO",
        max_len: 8 + 8 * MAX_PFN_LIST,
    },
    RecordInfo {
        rtype: RecordType::VcpuState,
        name: "POSTCOPY_VCPU_STATE",
        max_len: MAX_VCPU_STATE,
    },
    RecordInfo {
        rtype: RecordType::Resumed,
        name: "POSTCOPY_RESUMED",
        max_len: size_of::<CountBody>(),
    },
    RecordInfo {
        rtype: RecordType::Recover,
        name: "POSTCOPY_RECOVER",
        max_len: MAX_RECOVER,
    },
    RecordInfo {
        rtype: RecordType::Abort,
        name: "POSTCOPY_ABORT",
        max_len: MAX_ABORT,
    },
    RecordInfo {
        rtype: RecordType::Ready,
        name: "POSTCOPY_READY",
        max_len: 0,
    },
    RecordInfo {
        rtype: RecordType::Ack,
        name: "POSTCOPY_ACK",
        max_len: size_of::<CountBody>(),
    },
    RecordInfo {
        rtype: RecordType::EarlyPfns,
        name: "POSTCOPY_EARLY_PFNS",
        max_len: size_of::<EarlyHead>() + 8 + 16 * MAX_RUNS,
    },
    RecordInfo {
        rtype: RecordType::EarlyDone,
        name: "POSTCOPY_EARLY_DONE",
        max_len: size_of::<CountBody>(),
    },
];

const _: () = assert!(MAX_RECORD_LEN >= MAX_RECOVER && MAX_RECORD_LEN >= MAX_VCPU_STATE);

impl RecordType {
    /// Looks a wire value up in [`RECORD_TABLE`].
    pub fn from_wire(value: u32) -> Option<RecordType> {
        RECORD_TABLE
            .iter()
            .find(|info| info.rtype as u32 == value)
            .map(|info| info.rtype)
    }

    /// The table row of this type.
    pub fn info(self) -> &'static RecordInfo {
        let idx = self as usize - 0x13;
        &RECORD_TABLE[idx]
    }

    /// The libxc-style name, e.g. `POSTCOPY_PAGE_DATA`.
    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// The 8-byte header in front of every record (libxc `struct xc_sr_rhdr`).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RecordHeader {
    /// Record type.
    pub rtype: U32,
    /// Body length in bytes, excluding padding.
    pub length: U32,
}
const _: () = assert!(size_of::<RecordHeader>() == 8);

/// BEGIN body.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BeginBody {
    /// [`STREAM_VERSION`].
    pub version: U32,
    /// Requests from the source ([`BEGIN_ACKS`]); other bits reserved,
    /// zero.
    pub flags: U32,
    /// Pre-paging strategy id ([`crate::prepage::StrategySpec::wire_id`]).
    pub strategy: U32,
    /// Strategy argument (K for multi-pivot).
    pub strategy_arg: U32,
    /// Guest size in pfns.
    pub guest_pfns: U64,
    /// Populated pages the source holds (the destination's progress bar).
    pub populated_pages: U64,
}
const _: () = assert!(size_of::<BeginBody>() == 32);

impl BeginBody {
    /// The BEGIN of this stream version for a guest of `guest_pfns` pfns
    /// with `populated_pages` pages, pre-paged with `strategy`.
    pub fn new(strategy: StrategySpec, guest_pfns: u64, populated_pages: u64) -> BeginBody {
        let (sid, sarg) = strategy.wire_id();
        BeginBody {
            version: STREAM_VERSION.into(),
            flags: 0.into(),
            strategy: sid.into(),
            strategy_arg: sarg.into(),
            guest_pfns: guest_pfns.into(),
            populated_pages: populated_pages.into(),
        }
    }
}

/// BEGIN flag: the source bounds its push bytes in flight and asks the
/// destination to ACK what it consumed of the forward stream after each
/// record while serving.
pub const BEGIN_ACKS: u32 = 1;

/// Every BEGIN flag this stream version knows.
const BEGIN_KNOWN_FLAGS: u32 = BEGIN_ACKS;

impl BeginBody {
    /// This BEGIN with the ACK request ([`BEGIN_ACKS`]) set or cleared.
    pub fn with_acks(mut self, on: bool) -> BeginBody {
        let f = self.flags.get();
        self.flags = if on { f | BEGIN_ACKS } else { f & !BEGIN_ACKS }.into();
        self
    }

    /// True if the source asks for ACKs ([`BEGIN_ACKS`]).
    pub fn acks(&self) -> bool {
        self.flags.get() & BEGIN_ACKS != 0
    }
}

/// Leading 8 bytes of PFNS, FAULT, ZERO and PAGE_DATA bodies.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ListHeader {
    /// Number of entries that follow.
    pub count: U32,
    /// PAGE_DATA: the [`Cause`]; others: reserved, zero.
    pub aux: U32,
}
const _: () = assert!(size_of::<ListHeader>() == 8);

/// Leading 16 bytes of an EARLY_PFNS body, before its list of runs: it
/// comes before BEGIN, so it carries the guest size that bounds its runs,
/// and the paging ring's pfn, which the destination needs to page out
/// before the source's HVM_PARAMS arrive.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EarlyHead {
    /// Guest size in pfns (BEGIN's must match).
    pub guest_pfns: U64,
    /// The source's HVM_PARAM_PAGING_RING_PFN (never in the runs).
    pub ring_pfn: U64,
}
const _: () = assert!(size_of::<EarlyHead>() == 16);

/// The largest guest an EARLY_PFNS record may describe: the engine
/// indexes pfns with u32 (as BEGIN is checked on the destination).
pub const MAX_EARLY_GUEST_PFNS: u64 = u32::MAX as u64 - 1;

/// One run in PFNS and RECOVER bodies.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RunWire {
    /// First pfn.
    pub start: U64,
    /// Number of pfns.
    pub count: U64,
}
const _: () = assert!(size_of::<RunWire>() == 16);

/// COMPLETE and RESUMED body.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CountBody {
    /// COMPLETE: pages sent/received; RESUMED: destination-side ns from
    /// TRANSITION received to guest resumed.
    pub value: U64,
}
const _: () = assert!(size_of::<CountBody>() == 8);

/// Why a page was sent (PAGE_DATA's `aux`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Pushed by the pre-pager.
    Push = 1,
    /// Reply to a fault request.
    Fault = 2,
    /// Sent during a pre-copy round, before the stop.
    Precopy = 3,
    /// Resent after a reconnect.
    Resend = 4,
}

impl Cause {
    fn from_wire(v: u32) -> Option<Cause> {
        match v {
            1 => Some(Cause::Push),
            2 => Some(Cause::Fault),
            3 => Some(Cause::Precopy),
            4 => Some(Cause::Resend),
            _ => None,
        }
    }
}

/// A malformed or unexpected record. Each case is its own variant so that
/// callers and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The type is not a post-copy record type.
    #[error("unknown record type {0:#x}")]
    UnknownType(u32),
    /// The length exceeds the type's bound.
    #[error("{name} record of {length} bytes exceeds the limit of {max}")]
    TooLong {
        /// Record name.
        name: &'static str,
        /// Claimed length.
        length: u32,
        /// The bound.
        max: usize,
    },
    /// The body is shorter than its fixed part.
    #[error("{name} record of {length} bytes is shorter than its {need}-byte header")]
    ShortBody {
        /// Record name.
        name: &'static str,
        /// Actual length.
        length: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The entry count does not match the body length.
    #[error("{name} record says {count} entries but its body is {length} bytes")]
    CountMismatch {
        /// Record name.
        name: &'static str,
        /// Claimed count.
        count: u32,
        /// Actual length.
        length: usize,
    },
    /// A pfn at or beyond the guest's size.
    #[error("{name} record names pfn {pfn:#x} but the guest has {guest_pfns} pfns")]
    PfnOutOfRange {
        /// Record name.
        name: &'static str,
        /// The pfn.
        pfn: u64,
        /// Guest size in pfns.
        guest_pfns: u64,
    },
    /// A run that is empty or overflows.
    #[error("{name} record has an invalid run {start:#x}+{count}")]
    BadRun {
        /// Record name.
        name: &'static str,
        /// Run start.
        start: u64,
        /// Run length.
        count: u64,
    },
    /// The same pfn twice where each may appear once.
    #[error("{name} record carries pfn {pfn:#x} twice")]
    DuplicatePfn {
        /// Record name.
        name: &'static str,
        /// The pfn.
        pfn: u64,
    },
    /// A page the destination already holds was sent again.
    #[error("pfn {pfn:#x} was sent twice (duplicate page)")]
    PageSentTwice {
        /// The pfn.
        pfn: u64,
    },
    /// PAGE_DATA with an unknown cause.
    #[error("POSTCOPY_PAGE_DATA record has unknown cause {0}")]
    BadCause(u32),
    /// A reserved field or the padding is not zero.
    #[error("{name} record has non-zero reserved bytes or padding")]
    NonZeroReserved {
        /// Record name.
        name: &'static str,
    },
    /// BEGIN with a version we do not speak.
    #[error("stream version {got} is not supported (this side speaks {want})")]
    BadVersion {
        /// Version received.
        got: u32,
        /// Version supported.
        want: u32,
    },
    /// A record that is valid but not allowed at this point of the protocol.
    #[error("unexpected {name} record {state}")]
    Unexpected {
        /// Record name.
        name: &'static str,
        /// Where in the protocol we were.
        state: &'static str,
    },
    /// The peer closed the stream between records.
    #[error("peer closed the stream")]
    Closed,
    /// The stream ended inside a record.
    #[error("stream ended inside a record ({got} of {want} bytes)")]
    Truncated {
        /// Bytes read.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// Reading or writing failed.
    #[error("stream I/O failed: {}", crate::error::io_words(.0))]
    Io(#[source] io::Error),
}

/// Result of record decoding.
pub type RecordResult<T> = Result<T, RecordError>;

/// A record read by [`RecordReader::next_record_staged`].
#[derive(Debug)]
pub enum Staged<'r, 's> {
    /// PAGE_DATA whose pages were read into the lent memory.
    Pages {
        /// Why the pages were sent.
        cause: Cause,
        /// The pfns (validated, distinct within the record).
        pfns: Vec<Pfn>,
        /// `pfns.len()` pages of data, in the lent memory.
        data: &'s mut [u8],
    },
    /// Any other record (and PAGE_DATA when nothing was lent), in the
    /// reader's buffer.
    Record(Record<'r>),
}

/// A decoded record, borrowing from the reader's buffer.
#[derive(Debug)]
pub enum Record<'a> {
    /// BEGIN.
    Begin(BeginBody),
    /// PFNS: owed runs, each validated against the guest size.
    Pfns(Vec<PfnRun>),
    /// TRANSITION.
    Transition,
    /// PAGE_DATA.
    PageData {
        /// Why the pages were sent.
        cause: Cause,
        /// The pfns (validated, distinct within the record).
        pfns: Vec<Pfn>,
        /// `pfns.len()` pages of data.
        data: &'a [u8],
    },
    /// FAULT: requested pfns.
    Fault(Vec<Pfn>),
    /// COMPLETE.
    Complete(u64),
    /// ZERO: pfns to zero.
    Zero(Vec<Pfn>),
    /// VCPU_STATE: opaque bytes.
    VcpuState(&'a [u8]),
    /// RESUMED: destination-side ns from TRANSITION to resume.
    Resumed(u64),
    /// RECOVER: runs the destination has received.
    Recover(Vec<PfnRun>),
    /// ABORT: why the destination gave up (invalid UTF-8 replaced).
    Abort(String),
    /// READY.
    Ready,
    /// ACK: forward-stream bytes the destination consumed while serving.
    Ack(u64),
    /// EARLY_PFNS: the prescan's populated runs (validated against
    /// `guest_pfns`, the ring pfn in none of them).
    EarlyPfns {
        /// Guest size in pfns, at most [`MAX_EARLY_GUEST_PFNS`].
        guest_pfns: u64,
        /// The paging ring's pfn, below `guest_pfns`.
        ring_pfn: Pfn,
        /// The runs.
        runs: Vec<PfnRun>,
    },
    /// EARLY_DONE: pfns the destination paged out early.
    EarlyDone(u64),
}

impl Record<'_> {
    /// The type of this record.
    pub fn rtype(&self) -> RecordType {
        match self {
            Record::Begin(_) => RecordType::Begin,
            Record::Pfns(_) => RecordType::Pfns,
            Record::Transition => RecordType::Transition,
            Record::PageData { .. } => RecordType::PageData,
            Record::Fault(_) => RecordType::Fault,
            Record::Complete(_) => RecordType::Complete,
            Record::Zero(_) => RecordType::Zero,
            Record::VcpuState(_) => RecordType::VcpuState,
            Record::Resumed(_) => RecordType::Resumed,
            Record::Recover(_) => RecordType::Recover,
            Record::Abort(_) => RecordType::Abort,
            Record::Ready => RecordType::Ready,
            Record::Ack(_) => RecordType::Ack,
            Record::EarlyPfns { .. } => RecordType::EarlyPfns,
            Record::EarlyDone(_) => RecordType::EarlyDone,
        }
    }
}

fn padding(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Splits a `ListHeader` + `count * entry` body, checking the length.
fn split_list<'b>(
    name: &'static str,
    body: &'b [u8],
    entry: usize,
    trailing_per_entry: usize,
) -> RecordResult<(ListHeader, &'b [u8])> {
    let (hdr, rest) = ListHeader::read_from_prefix(body).map_err(|_| RecordError::ShortBody {
        name,
        length: body.len(),
        need: size_of::<ListHeader>(),
    })?;
    let count = hdr.count.get();
    let want = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(entry + trailing_per_entry));
    if want != Some(rest.len()) {
        return Err(RecordError::CountMismatch {
            name,
            count,
            length: body.len(),
        });
    }
    Ok((hdr, rest))
}

/// PAGE_DATA's cause and pfns, from its list header and pfn list (the
/// caller checked that `length`, the body's, matches the count).
fn page_data_head(
    hdr: ListHeader,
    raw_pfns: &[u8],
    length: usize,
    guest_pfns: u64,
) -> RecordResult<(Cause, Vec<Pfn>)> {
    let name = RecordType::PageData.name();
    let cause = Cause::from_wire(hdr.aux.get()).ok_or(RecordError::BadCause(hdr.aux.get()))?;
    if raw_pfns.is_empty() {
        return Err(RecordError::CountMismatch {
            name,
            count: 0,
            length,
        });
    }
    Ok((cause, decode_pfn_list(name, raw_pfns, guest_pfns, true)?))
}

fn check_pfn(name: &'static str, pfn: u64, guest_pfns: u64) -> RecordResult<Pfn> {
    if pfn >= guest_pfns {
        return Err(RecordError::PfnOutOfRange {
            name,
            pfn,
            guest_pfns,
        });
    }
    Ok(pfn)
}

fn decode_pfn_list(
    name: &'static str,
    raw: &[u8],
    guest_pfns: u64,
    distinct: bool,
) -> RecordResult<Vec<Pfn>> {
    let entries = <[U64]>::ref_from_bytes(raw).map_err(|_| RecordError::ShortBody {
        name,
        length: raw.len(),
        need: 8,
    })?;
    let mut pfns = Vec::with_capacity(entries.len());
    for e in entries {
        pfns.push(check_pfn(name, e.get(), guest_pfns)?);
    }
    if distinct {
        let mut sorted = pfns.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(RecordError::DuplicatePfn { name, pfn: w[0] });
        }
    }
    Ok(pfns)
}

fn decode_runs(name: &'static str, raw: &[u8], guest_pfns: u64) -> RecordResult<Vec<PfnRun>> {
    let entries = <[RunWire]>::ref_from_bytes(raw).map_err(|_| RecordError::ShortBody {
        name,
        length: raw.len(),
        need: 16,
    })?;
    let mut runs = Vec::with_capacity(entries.len());
    for e in entries {
        let run = PfnRun {
            start: e.start.get(),
            count: e.count.get(),
        };
        match run.end() {
            Some(end) if run.count > 0 && end <= guest_pfns => runs.push(run),
            Some(end) if run.count > 0 => {
                return Err(RecordError::PfnOutOfRange {
                    name,
                    pfn: end - 1,
                    guest_pfns,
                })
            }
            _ => {
                return Err(RecordError::BadRun {
                    name,
                    start: run.start,
                    count: run.count,
                })
            }
        }
    }
    Ok(runs)
}

/// Decodes one record body of type `rtype`.
///
/// `guest_pfns` bounds every pfn; before BEGIN has been seen pass `None`,
/// and any record naming a pfn is then rejected as unexpected. The body
/// length is checked against the type's bound here too, not only in
/// [`parse_header`]: `libxl-glue` hands over bodies framed by libxc, whose
/// own limit is far larger.
pub fn decode(rtype: RecordType, body: &[u8], guest_pfns: Option<u64>) -> RecordResult<Record<'_>> {
    let name = rtype.name();
    let max = rtype.info().max_len;
    if body.len() > max {
        return Err(RecordError::TooLong {
            name,
            length: u32::try_from(body.len()).unwrap_or(u32::MAX),
            max,
        });
    }
    let bound = || {
        guest_pfns.ok_or(RecordError::Unexpected {
            name,
            state: "before POSTCOPY_BEGIN",
        })
    };
    let exact = |need: usize| {
        if body.len() != need {
            if body.len() < need {
                return Err(RecordError::ShortBody {
                    name,
                    length: body.len(),
                    need,
                });
            }
            return Err(RecordError::CountMismatch {
                name,
                count: 1,
                length: body.len(),
            });
        }
        Ok(())
    };
    match rtype {
        RecordType::Begin => {
            exact(size_of::<BeginBody>())?;
            let b = BeginBody::read_from_bytes(body).map_err(|_| RecordError::ShortBody {
                name,
                length: body.len(),
                need: size_of::<BeginBody>(),
            })?;
            if b.version.get() != STREAM_VERSION {
                return Err(RecordError::BadVersion {
                    got: b.version.get(),
                    want: STREAM_VERSION,
                });
            }
            if b.flags.get() & !BEGIN_KNOWN_FLAGS != 0 {
                return Err(RecordError::NonZeroReserved { name });
            }
            Ok(Record::Begin(b))
        }
        RecordType::Pfns | RecordType::Recover => {
            let guest = bound()?;
            let (hdr, rest) = split_list(name, body, size_of::<RunWire>(), 0)?;
            if hdr.aux.get() != 0 {
                return Err(RecordError::NonZeroReserved { name });
            }
            let runs = decode_runs(name, rest, guest)?;
            Ok(if rtype == RecordType::Pfns {
                Record::Pfns(runs)
            } else {
                Record::Recover(runs)
            })
        }
        RecordType::Transition => {
            exact(0)?;
            Ok(Record::Transition)
        }
        RecordType::Ready => {
            exact(0)?;
            Ok(Record::Ready)
        }
        RecordType::PageData => {
            let guest = bound()?;
            let (hdr, rest) = split_list(name, body, 8, PAGE_SIZE)?;
            let count = rest.len() / (8 + PAGE_SIZE);
            let (raw_pfns, data) = rest.split_at(count * 8);
            let (cause, pfns) = page_data_head(hdr, raw_pfns, body.len(), guest)?;
            Ok(Record::PageData { cause, pfns, data })
        }
        RecordType::Fault | RecordType::Zero => {
            let guest = bound()?;
            let (hdr, rest) = split_list(name, body, 8, 0)?;
            if hdr.aux.get() != 0 {
                return Err(RecordError::NonZeroReserved { name });
            }
            let pfns = decode_pfn_list(name, rest, guest, rtype == RecordType::Zero)?;
            Ok(if rtype == RecordType::Fault {
                Record::Fault(pfns)
            } else {
                Record::Zero(pfns)
            })
        }
        RecordType::EarlyPfns => decode_early(body),
        RecordType::Complete | RecordType::Resumed | RecordType::Ack | RecordType::EarlyDone => {
            exact(size_of::<CountBody>())?;
            let c = CountBody::read_from_bytes(body).map_err(|_| RecordError::ShortBody {
                name,
                length: body.len(),
                need: 8,
            })?;
            Ok(match rtype {
                RecordType::Complete => Record::Complete(c.value.get()),
                RecordType::Ack => Record::Ack(c.value.get()),
                RecordType::EarlyDone => Record::EarlyDone(c.value.get()),
                _ => Record::Resumed(c.value.get()),
            })
        }
        RecordType::VcpuState => Ok(Record::VcpuState(body)),
        RecordType::Abort => Ok(Record::Abort(printable(&String::from_utf8_lossy(body)))),
    }
}

/// EARLY_PFNS: its head, bounded on its own (no BEGIN yet), then runs
/// within its guest size that leave the ring pfn out.
fn decode_early(body: &[u8]) -> RecordResult<Record<'_>> {
    let name = RecordType::EarlyPfns.name();
    let (head, rest) = EarlyHead::read_from_prefix(body).map_err(|_| RecordError::ShortBody {
        name,
        length: body.len(),
        need: size_of::<EarlyHead>(),
    })?;
    let guest_pfns = head.guest_pfns.get();
    let ring_pfn = head.ring_pfn.get();
    if guest_pfns == 0 || guest_pfns > MAX_EARLY_GUEST_PFNS {
        return Err(RecordError::PfnOutOfRange {
            name,
            pfn: guest_pfns,
            guest_pfns: MAX_EARLY_GUEST_PFNS,
        });
    }
    check_pfn(name, ring_pfn, guest_pfns)?;
    let (hdr, rest) = split_list(name, rest, size_of::<RunWire>(), 0)?;
    if hdr.aux.get() != 0 {
        return Err(RecordError::NonZeroReserved { name });
    }
    let runs = decode_runs(name, rest, guest_pfns)?;
    if let Some(r) = runs
        .iter()
        .find(|r| r.start <= ring_pfn && r.end().is_some_and(|e| ring_pfn < e))
    {
        return Err(RecordError::BadRun {
            name,
            start: r.start,
            count: r.count,
        });
    }
    Ok(Record::EarlyPfns {
        guest_pfns,
        ring_pfn,
        runs,
    })
}

/// Peer-supplied text made safe to print: control characters (escape
/// sequences, newlines that would start a forged line, C1 controls) and
/// the bidirectional overrides that reorder what a terminal shows are
/// written as `\u{..}` escapes; everything else is kept.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads one record at a time from a byte stream, with no read-ahead: it
/// reads exactly the header, the body and the padding, so the stream can be
/// handed back to another reader (libxl) between records.
#[derive(Debug)]
pub struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    guest_pfns: Option<u64>,
    bytes: u64,
    /// Of `bytes`, how many [`take_unreported`](Self::take_unreported)
    /// handed out.
    reported: u64,
    /// Time spent in the stream's read calls (timed per call of
    /// `read_exact_or`: twice per record, never per page).
    read_time: std::time::Duration,
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], at_start: bool) -> RecordResult<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 && at_start => return Err(RecordError::Closed),
            Ok(0) => {
                return Err(RecordError::Truncated {
                    got,
                    want: buf.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RecordError::Io(e)),
        }
    }
    Ok(())
}

impl<R: Read> RecordReader<R> {
    /// Wraps a stream. `guest_pfns` is the pfn bound if already known.
    pub fn new(inner: R, guest_pfns: Option<u64>) -> Self {
        RecordReader {
            inner,
            buf: Vec::new(),
            guest_pfns,
            bytes: 0,
            reported: 0,
            read_time: std::time::Duration::ZERO,
        }
    }

    /// Sets the pfn bound (after BEGIN).
    pub fn set_guest_pfns(&mut self, pfns: u64) {
        self.guest_pfns = Some(pfns);
    }

    /// Bytes consumed so far, headers and padding included.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Bytes consumed since the last call: what a live counter (the
    /// admin's status) has not been given yet.
    pub fn take_unreported(&mut self) -> u64 {
        let n = self.bytes - self.reported;
        self.reported = self.bytes;
        n
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// [`next_record`](Self::next_record), also returning the time this
    /// call spent inside the stream's read calls (waiting for bytes plus
    /// the copy out of the stream).
    pub fn next_record_timed(&mut self) -> (RecordResult<Record<'_>>, std::time::Duration) {
        let before = self.read_time;
        let frame = self.read_frame();
        let took = self.read_time.saturating_sub(before);
        (
            frame.and_then(|(rtype, len)| self.decode_frame(rtype, len)),
            took,
        )
    }

    /// Reads and validates the next record. A BEGIN record sets the pfn
    /// bound for the records after it.
    pub fn next_record(&mut self) -> RecordResult<Record<'_>> {
        let (rtype, len) = self.read_frame()?;
        self.decode_frame(rtype, len)
    }

    /// [`next_record_timed`](Self::next_record_timed), reading the pages
    /// of a PAGE_DATA record straight into memory `lend` supplies (called
    /// with the data's length in bytes, once per PAGE_DATA record) instead
    /// of the reader's buffer: a backend that installs such memory without
    /// a copy (UFFDIO_MOVE) then never copies a page after the socket.
    /// When `lend` gives nothing, the record is read as usual.
    pub fn next_record_staged<'s>(
        &mut self,
        lend: impl FnOnce(usize) -> Option<&'s mut [u8]>,
    ) -> (RecordResult<Staged<'_, 's>>, std::time::Duration) {
        let before = self.read_time;
        let read = self.read_staged(lend);
        let took = self.read_time.saturating_sub(before);
        let rec = read.and_then(|frame| match frame {
            Ok(pages) => Ok(pages),
            Err((rtype, len)) => self.decode_frame(rtype, len).map(Staged::Record),
        });
        (rec, took)
    }

    /// Reads one record: `Ok(Staged::Pages)` if its pages went into lent
    /// memory, else `Err((type, length))` of the record in the buffer.
    #[allow(clippy::type_complexity, reason = "private, two outcomes")]
    fn read_staged<'s>(
        &mut self,
        lend: impl FnOnce(usize) -> Option<&'s mut [u8]>,
    ) -> RecordResult<Result<Staged<'static, 's>, (RecordType, usize)>> {
        let (rtype, len) = self.read_header()?;
        // PAGE_DATA: list header, count pfns, count pages (no padding).
        let per = 8 + PAGE_SIZE;
        let count = len.saturating_sub(8) / per;
        let window = match (rtype, self.guest_pfns) {
            (RecordType::PageData, Some(guest)) if count > 0 && 8 + count * per == len => {
                lend(count * PAGE_SIZE)
                    .filter(|w| w.len() == count * PAGE_SIZE)
                    .map(|w| (w, guest))
            }
            _ => None,
        };
        let Some((window, guest)) = window else {
            self.read_body(len)?;
            return Ok(Err((rtype, len)));
        };
        let head = 8 + count * 8;
        self.buf.resize(head, 0);
        self.timed_read(head, false)?;
        let t0 = std::time::Instant::now();
        let got = read_exact_or(&mut self.inner, window, false);
        self.read_time += t0.elapsed();
        got?;
        self.bytes += 8 + len as u64;
        let (hdr, raw_pfns) = ListHeader::read_from_prefix(&self.buf[..head]).map_err(|_| {
            RecordError::ShortBody {
                name: rtype.name(),
                length: head,
                need: size_of::<ListHeader>(),
            }
        })?;
        if usize::try_from(hdr.count.get()).ok() != Some(count) {
            return Err(RecordError::CountMismatch {
                name: rtype.name(),
                count: hdr.count.get(),
                length: len,
            });
        }
        let (cause, pfns) = page_data_head(hdr, raw_pfns, len, guest)?;
        Ok(Ok(Staged::Pages {
            cause,
            pfns,
            data: window,
        }))
    }

    /// Reads `n` bytes into the buffer's start, timing the read call.
    fn timed_read(&mut self, n: usize, at_start: bool) -> RecordResult<()> {
        let t0 = std::time::Instant::now();
        let got = read_exact_or(&mut self.inner, &mut self.buf[..n], at_start);
        self.read_time += t0.elapsed();
        got
    }

    /// Reads and checks one record's header.
    fn read_header(&mut self) -> RecordResult<(RecordType, usize)> {
        self.buf.resize(self.buf.len().max(8), 0);
        self.timed_read(8, true)?;
        let mut hdr = [0u8; 8];
        hdr.copy_from_slice(&self.buf[..8]);
        parse_header(&hdr)
    }

    /// Reads a record's body and padding into the buffer.
    fn read_body(&mut self, len: usize) -> RecordResult<()> {
        let padded = len + padding(len);
        self.buf.resize(padded, 0);
        self.timed_read(padded, false)?;
        self.bytes += 8 + padded as u64;
        Ok(())
    }

    /// Reads one record's header, body and padding into the buffer,
    /// timing the read calls (twice per record, never per page).
    fn read_frame(&mut self) -> RecordResult<(RecordType, usize)> {
        let (rtype, len) = self.read_header()?;
        self.read_body(len)?;
        Ok((rtype, len))
    }

    fn decode_frame(&mut self, rtype: RecordType, len: usize) -> RecordResult<Record<'_>> {
        if self.buf[len..].iter().any(|&b| b != 0) {
            return Err(RecordError::NonZeroReserved { name: rtype.name() });
        }
        let rec = decode(rtype, &self.buf[..len], self.guest_pfns)?;
        if let Record::Begin(b) = &rec {
            self.guest_pfns = Some(b.guest_pfns.get());
        }
        Ok(rec)
    }
}

/// Validates a record header: known type, length within its bound.
pub fn parse_header(hdr: &[u8; 8]) -> RecordResult<(RecordType, usize)> {
    let (h, _) = RecordHeader::read_from_prefix(hdr)
        .map_err(|_| RecordError::Truncated { got: 0, want: 8 })?;
    let raw = h.rtype.get();
    let rtype = RecordType::from_wire(raw).ok_or(RecordError::UnknownType(raw))?;
    let length = h.length.get();
    let max = rtype.info().max_len;
    let len = usize::try_from(length).unwrap_or(usize::MAX);
    if len > max {
        return Err(RecordError::TooLong {
            name: rtype.name(),
            length,
            max,
        });
    }
    Ok((rtype, len))
}

/// Encodes records into a reusable buffer and writes each with one
/// `write_all`, so records from two threads on two streams never tear.
#[derive(Debug)]
pub struct RecordWriter<W> {
    inner: W,
    buf: Vec<u8>,
    bytes: u64,
    /// Of `bytes`, how many [`take_unreported`](Self::take_unreported)
    /// handed out.
    reported: u64,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        RecordWriter {
            inner,
            buf: Vec::with_capacity(64 * 1024),
            bytes: 0,
            reported: 0,
        }
    }

    /// Bytes written so far, headers and padding included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Bytes written since the last call: what a live counter (the
    /// admin's status) has not been given yet.
    pub fn take_unreported(&mut self) -> u64 {
        let n = self.bytes - self.reported;
        self.reported = self.bytes;
        n
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes records that another writer of this module encoded (staged
    /// in memory, e.g. read out of guest memory before a shared stream's
    /// lock is taken), counting their bytes.
    pub fn append(&mut self, encoded: &[u8]) -> RecordResult<()> {
        self.inner.write_all(encoded).map_err(RecordError::Io)?;
        self.bytes += encoded.len() as u64;
        Ok(())
    }

    fn start(&mut self, rtype: RecordType) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.buf[..4].copy_from_slice(&(rtype as u32).to_le_bytes());
    }

    fn finish(&mut self) -> RecordResult<()> {
        let len = self.buf.len() - 8;
        let len32 = u32::try_from(len).map_err(|_| {
            RecordError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too long",
            ))
        })?;
        self.buf[4..8].copy_from_slice(&len32.to_le_bytes());
        self.buf.resize(self.buf.len() + padding(len), 0);
        self.inner.write_all(&self.buf).map_err(RecordError::Io)?;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    fn list_header(&mut self, count: usize, aux: u32) -> RecordResult<()> {
        let count = u32::try_from(count).map_err(|_| {
            RecordError::Io(io::Error::new(io::ErrorKind::InvalidInput, "list too long"))
        })?;
        let h = ListHeader {
            count: count.into(),
            aux: aux.into(),
        };
        self.buf.extend_from_slice(h.as_bytes());
        Ok(())
    }

    /// Writes BEGIN.
    pub fn begin(&mut self, body: &BeginBody) -> RecordResult<()> {
        self.start(RecordType::Begin);
        self.buf.extend_from_slice(body.as_bytes());
        self.finish()
    }

    /// Writes PFNS or RECOVER with `runs` (at most [`MAX_RUNS`]).
    pub fn runs(&mut self, rtype: RecordType, runs: &[PfnRun]) -> RecordResult<()> {
        debug_assert!(matches!(rtype, RecordType::Pfns | RecordType::Recover));
        self.start(rtype);
        self.run_list(runs)
    }

    /// A list header and `runs`, then the end of the record.
    fn run_list(&mut self, runs: &[PfnRun]) -> RecordResult<()> {
        self.list_header(runs.len(), 0)?;
        for r in runs {
            let w = RunWire {
                start: r.start.into(),
                count: r.count.into(),
            };
            self.buf.extend_from_slice(w.as_bytes());
        }
        self.finish()
    }

    /// Writes EARLY_PFNS: the guest size, the ring pfn and `runs` (at most
    /// [`MAX_RUNS`]).
    pub fn early_pfns(
        &mut self,
        guest_pfns: u64,
        ring_pfn: Pfn,
        runs: &[PfnRun],
    ) -> RecordResult<()> {
        self.start(RecordType::EarlyPfns);
        let head = EarlyHead {
            guest_pfns: guest_pfns.into(),
            ring_pfn: ring_pfn.into(),
        };
        self.buf.extend_from_slice(head.as_bytes());
        self.run_list(runs)
    }

    /// Writes a record without a body (TRANSITION).
    pub fn empty(&mut self, rtype: RecordType) -> RecordResult<()> {
        self.start(rtype);
        self.finish()
    }

    /// Writes PAGE_DATA: `pfns.len()` pages taken from `data`.
    pub fn page_data(&mut self, cause: Cause, pfns: &[Pfn], data: &[u8]) -> RecordResult<()> {
        debug_assert_eq!(data.len(), pfns.len() * PAGE_SIZE);
        self.start(RecordType::PageData);
        self.list_header(pfns.len(), cause as u32)?;
        for &p in pfns {
            self.buf.extend_from_slice(&p.to_le_bytes());
        }
        self.buf.extend_from_slice(data);
        self.finish()
    }

    /// Writes FAULT or ZERO with `pfns`.
    pub fn pfn_list(&mut self, rtype: RecordType, pfns: &[Pfn]) -> RecordResult<()> {
        debug_assert!(matches!(rtype, RecordType::Fault | RecordType::Zero));
        self.start(rtype);
        self.list_header(pfns.len(), 0)?;
        for &p in pfns {
            self.buf.extend_from_slice(&p.to_le_bytes());
        }
        self.finish()
    }

    /// Writes COMPLETE, RESUMED, ACK or EARLY_DONE.
    pub fn count(&mut self, rtype: RecordType, value: u64) -> RecordResult<()> {
        debug_assert!(matches!(
            rtype,
            RecordType::Complete | RecordType::Resumed | RecordType::Ack | RecordType::EarlyDone
        ));
        self.start(rtype);
        let b = CountBody {
            value: value.into(),
        };
        self.buf.extend_from_slice(b.as_bytes());
        self.finish()
    }

    /// Writes VCPU_STATE.
    pub fn vcpu_state(&mut self, state: &[u8]) -> RecordResult<()> {
        if state.len() > MAX_VCPU_STATE {
            return Err(RecordError::TooLong {
                name: RecordType::VcpuState.name(),
                length: u32::try_from(state.len()).unwrap_or(u32::MAX),
                max: MAX_VCPU_STATE,
            });
        }
        self.start(RecordType::VcpuState);
        self.buf.extend_from_slice(state);
        self.finish()
    }

    /// Writes ABORT with a reason (cut to [`MAX_ABORT`] bytes).
    pub fn abort(&mut self, reason: &str) -> RecordResult<()> {
        let mut end = reason.len().min(MAX_ABORT);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.start(RecordType::Abort);
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
        self.finish()
    }

    /// Flushes the underlying stream.
    pub fn flush(&mut self) -> RecordResult<()> {
        self.inner.flush().map_err(RecordError::Io)
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

    fn encode(f: impl FnOnce(&mut RecordWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut RecordWriter::new(&mut out));
        out
    }

    fn raw(rtype: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&rtype.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v.resize(v.len() + padding(body.len()), 0);
        v
    }

    fn read_one(bytes: &[u8], guest: Option<u64>) -> RecordResult<String> {
        let mut r = RecordReader::new(bytes, guest);
        r.next_record().map(|rec| format!("{rec:?}"))
    }

    fn begin(pfns: u64) -> BeginBody {
        BeginBody::new(StrategySpec::Bubble, pfns, pfns)
    }

    #[test]
    fn table_is_dense_from_0x13_and_above_xen() {
        for (i, info) in RECORD_TABLE.iter().enumerate() {
            assert_eq!(info.rtype as u32, 0x13 + i as u32);
            assert!(info.rtype as u32 > XEN_4_17_LAST_REC_TYPE);
            assert_eq!(RecordType::from_wire(info.rtype as u32), Some(info.rtype));
            assert!(info.max_len <= MAX_RECORD_LEN);
        }
        assert_eq!(RecordType::from_wire(0x12), None);
        assert_eq!(RecordType::from_wire(0x13 | REC_TYPE_OPTIONAL), None);
    }

    #[test]
    fn every_record_round_trips_with_padding() {
        let page: Vec<u8> = (0..PAGE_SIZE * 2).map(|i| (i % 251) as u8).collect();
        let runs = [
            PfnRun { start: 3, count: 5 },
            PfnRun {
                start: 20,
                count: 1,
            },
        ];
        let bytes = encode(|w| {
            w.begin(&begin(64)).unwrap();
            w.runs(RecordType::Pfns, &runs).unwrap();
            w.vcpu_state(b"regs").unwrap();
            w.empty(RecordType::Transition).unwrap();
            w.page_data(Cause::Push, &[7, 9], &page).unwrap();
            w.pfn_list(RecordType::Fault, &[1, 1, 2]).unwrap();
            w.pfn_list(RecordType::Zero, &[4]).unwrap();
            w.count(RecordType::Complete, 42).unwrap();
            w.count(RecordType::Resumed, 7).unwrap();
            w.runs(RecordType::Recover, &runs).unwrap();
            w.abort("bad PFNS").unwrap();
            w.empty(RecordType::Ready).unwrap();
            w.count(RecordType::Ack, 1 << 40).unwrap();
            w.begin(&begin(8).with_acks(true)).unwrap();
        });
        assert_eq!(bytes.len() % 8, 0);
        let mut r = RecordReader::new(&bytes[..], None);
        assert!(matches!(r.next_record().unwrap(), Record::Begin(b) if b.guest_pfns.get() == 64));
        assert!(matches!(r.next_record().unwrap(), Record::Pfns(v) if v == runs));
        assert!(matches!(r.next_record().unwrap(), Record::VcpuState(s) if s == b"regs"));
        assert!(matches!(r.next_record().unwrap(), Record::Transition));
        match r.next_record().unwrap() {
            Record::PageData { cause, pfns, data } => {
                assert_eq!(cause, Cause::Push);
                assert_eq!(pfns, vec![7, 9]);
                assert_eq!(data, &page[..]);
            }
            other => panic!("{other:?}"),
        }
        // FAULT may repeat a pfn (two vCPUs); ZERO may not.
        assert!(matches!(r.next_record().unwrap(), Record::Fault(v) if v == [1, 1, 2]));
        assert!(matches!(r.next_record().unwrap(), Record::Zero(v) if v == [4]));
        assert!(matches!(r.next_record().unwrap(), Record::Complete(42)));
        assert!(matches!(r.next_record().unwrap(), Record::Resumed(7)));
        assert!(matches!(r.next_record().unwrap(), Record::Recover(v) if v == runs));
        assert!(matches!(r.next_record().unwrap(), Record::Abort(m) if m == "bad PFNS"));
        assert!(matches!(r.next_record().unwrap(), Record::Ready));
        assert!(matches!(r.next_record().unwrap(), Record::Ack(n) if n == 1 << 40));
        assert!(matches!(r.next_record().unwrap(), Record::Begin(b) if b.acks()));
        assert!(matches!(r.next_record(), Err(RecordError::Closed)));
        assert_eq!(r.bytes_read(), bytes.len() as u64);
    }

    #[test]
    fn early_pfns_round_trip_and_bound_themselves() {
        let runs = [PfnRun { start: 0, count: 4 }, PfnRun { start: 9, count: 3 }];
        let bytes = encode(|w| {
            w.early_pfns(16, 5, &runs).unwrap();
            w.count(RecordType::EarlyDone, 7).unwrap();
        });
        // Before BEGIN: no guest size is known, the record brings its own.
        let mut r = RecordReader::new(&bytes[..], None);
        match r.next_record().unwrap() {
            Record::EarlyPfns {
                guest_pfns,
                ring_pfn,
                runs: got,
            } => assert_eq!((guest_pfns, ring_pfn, got), (16, 5, runs.to_vec())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.next_record().unwrap(), Record::EarlyDone(7)));
        let one = |g: u64, ring: u64, runs: &[PfnRun]| {
            let b = encode(|w| w.early_pfns(g, ring, runs).unwrap());
            read_one(&b, None).map(|_| ())
        };
        // A run past its own guest size, a ring pfn in a run or past the
        // guest, an empty or huge guest: refused.
        assert!(one(11, 5, &runs).is_err());
        assert!(one(16, 10, &runs).is_err());
        assert!(one(16, 16, &runs).is_err());
        assert!(one(0, 0, &[]).is_err());
        assert!(one(MAX_EARLY_GUEST_PFNS + 1, 5, &runs).is_err());
        assert!(one(16, 5, &[]).is_ok());
        // A body cut short of its head or its runs.
        let b = encode(|w| w.early_pfns(16, 5, &runs).unwrap());
        let body = &b[8..8 + 16 + 8 + 32];
        for cut in [0, 8, 16, 23, 40] {
            assert!(decode(RecordType::EarlyPfns, &body[..cut], None).is_err());
        }
        assert!(decode(RecordType::EarlyPfns, body, None).is_ok());
    }

    #[test]
    fn unknown_type_is_rejected() {
        let e = read_one(&raw(0x99, &[]), Some(8)).unwrap_err();
        assert!(matches!(e, RecordError::UnknownType(0x99)), "{e}");
        let e = read_one(&raw(0x1, &[]), Some(8)).unwrap_err();
        assert!(matches!(e, RecordError::UnknownType(1)), "{e}");
    }

    #[test]
    fn staged_reads_put_page_data_in_lent_memory_and_the_rest_in_the_buffer() {
        let mut w = RecordWriter::new(Vec::new());
        let data: Vec<u8> = (0..3 * PAGE_SIZE)
            .map(|i| (i / PAGE_SIZE + 1) as u8)
            .collect();
        w.page_data(Cause::Push, &[4, 5, 9], &data).unwrap();
        w.pfn_list(RecordType::Zero, &[1]).unwrap();
        w.page_data(Cause::Fault, &[2], &data[..PAGE_SIZE]).unwrap();
        w.page_data(Cause::Push, &[10], &data[..PAGE_SIZE]).unwrap();
        let bytes = w.get_mut().clone();
        let mut r = RecordReader::new(&bytes[..], Some(16));
        let mut lent = vec![0u8; 4 * PAGE_SIZE];
        let (first, rest) = lent.split_at_mut(3 * PAGE_SIZE);
        let first_at = first.as_ptr();
        let mut asked = Vec::new();
        match r.next_record_staged(|n| {
            asked.push(n);
            Some(first)
        }) {
            (
                Ok(Staged::Pages {
                    cause,
                    pfns,
                    data: d,
                }),
                _,
            ) => {
                assert_eq!((cause, pfns), (Cause::Push, vec![4, 5, 9]));
                assert_eq!(d.as_ptr(), first_at, "read into the lent memory");
                assert_eq!(&d[..], &data[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(asked, [3 * PAGE_SIZE]);
        // Not PAGE_DATA: nothing is asked for.
        let (z, _) = r.next_record_staged(|_| panic!("lent for ZERO"));
        assert!(
            matches!(z, Ok(Staged::Record(Record::Zero(ref p))) if p == &[1]),
            "{z:?}"
        );
        // Nothing lent: read as usual.
        let (p, _) = r.next_record_staged(|_| None);
        assert!(
            matches!(p, Ok(Staged::Record(Record::PageData { ref pfns, .. })) if pfns == &[2]),
            "{p:?}"
        );
        // Memory of the wrong size is not used.
        let (p, _) = r.next_record_staged(|_| Some(&mut rest[..PAGE_SIZE / 2]));
        assert!(matches!(p, Ok(Staged::Record(_))), "not read as usual");
        assert_eq!(r.bytes_read(), bytes.len() as u64);
        // A pfn beyond the guest is refused, lent or not.
        let mut w = RecordWriter::new(Vec::new());
        w.page_data(Cause::Push, &[99], &data[..PAGE_SIZE]).unwrap();
        let bytes = w.get_mut().clone();
        let mut page = vec![0u8; PAGE_SIZE];
        let mut r = RecordReader::new(&bytes[..], Some(16));
        let (e, _) = r.next_record_staged(|_| Some(&mut page));
        assert!(
            matches!(e, Err(RecordError::PfnOutOfRange { pfn: 99, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn length_over_the_limit_is_rejected_before_reading() {
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&0x16u32.to_le_bytes());
        hdr.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = read_one(&hdr, Some(8)).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::TooLong {
                    length: u32::MAX,
                    ..
                }
            ),
            "{e}"
        );
        let e = read_one(&raw(0x15, &[0; 8]), Some(8)).unwrap_err();
        assert!(matches!(e, RecordError::TooLong { .. }), "{e}");
    }

    /// Found by the `records` fuzz target: `decode` called directly (as
    /// `libxl-glue`'s restore path does) accepted ABORT, VCPU_STATE, PFNS
    /// and other bodies longer than their type's bound.
    #[test]
    fn decode_itself_enforces_the_length_bound() {
        let abort = vec![b'x'; MAX_ABORT + 1];
        let e = decode(RecordType::Abort, &abort, None).unwrap_err();
        assert!(
            matches!(e, RecordError::TooLong { max: MAX_ABORT, .. }),
            "{e}"
        );
        let state = vec![0u8; MAX_VCPU_STATE + 1];
        let e = decode(RecordType::VcpuState, &state, None).unwrap_err();
        assert!(matches!(e, RecordError::TooLong { .. }), "{e}");
        // MAX_RUNS + 1 runs, each valid on its own.
        let mut body = Vec::new();
        body.extend_from_slice(&(MAX_RUNS as u32 + 1).to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for i in 0..=MAX_RUNS as u64 {
            body.extend_from_slice(&i.to_le_bytes());
            body.extend_from_slice(&1u64.to_le_bytes());
        }
        let e = decode(RecordType::Pfns, &body, Some(1 << 20)).unwrap_err();
        assert!(matches!(e, RecordError::TooLong { .. }), "{e}");
        assert!(decode(RecordType::Abort, &abort[..MAX_ABORT], None).is_ok());
        // Peer text reaches logs and terminals: no escape sequence, no
        // forged line.
        let evil = b"\x1b[2J\nxl-postcopy: done \xe2\x80\xae ok";
        match decode(RecordType::Abort, evil, None).unwrap() {
            Record::Abort(r) => {
                assert_eq!(r, "\\u{1b}[2J\\u{a}xl-postcopy: done \\u{202e} ok");
            }
            other => panic!("{:?}", other.rtype()),
        }
    }

    #[test]
    fn short_body_is_rejected() {
        let e = read_one(&raw(0x16, &[1, 0, 0]), Some(8)).unwrap_err();
        assert!(matches!(e, RecordError::ShortBody { .. }), "{e}");
        let e = read_one(&raw(0x13, &[0; 16]), None).unwrap_err();
        assert!(matches!(e, RecordError::ShortBody { .. }), "{e}");
    }

    #[test]
    fn count_and_length_must_agree() {
        // Claims 2 pages, carries 1.
        let mut body = Vec::new();
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&[0xaa; PAGE_SIZE]);
        let e = read_one(&raw(0x16, &body), Some(8)).unwrap_err();
        assert!(
            matches!(e, RecordError::CountMismatch { count: 2, .. }),
            "{e}"
        );
        // A zero-page PAGE_DATA is malformed too.
        let e = read_one(&raw(0x16, &[0, 0, 0, 0, 1, 0, 0, 0]), Some(8)).unwrap_err();
        assert!(
            matches!(e, RecordError::CountMismatch { count: 0, .. }),
            "{e}"
        );
        let e = read_one(
            &raw(0x17, &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Some(8),
        )
        .unwrap_err();
        assert!(
            matches!(e, RecordError::CountMismatch { count: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn pfn_beyond_the_guest_is_rejected() {
        let bytes = encode(|w| w.page_data(Cause::Fault, &[8], &[1; PAGE_SIZE]).unwrap());
        let e = read_one(&bytes, Some(8)).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::PfnOutOfRange {
                    pfn: 8,
                    guest_pfns: 8,
                    ..
                }
            ),
            "{e}"
        );
        let bytes = encode(|w| {
            w.runs(RecordType::Pfns, &[PfnRun { start: 6, count: 3 }])
                .unwrap()
        });
        let e = read_one(&bytes, Some(8)).unwrap_err();
        assert!(
            matches!(e, RecordError::PfnOutOfRange { pfn: 8, .. }),
            "{e}"
        );
        let bytes = encode(|w| w.pfn_list(RecordType::Fault, &[u64::MAX]).unwrap());
        assert!(matches!(
            read_one(&bytes, Some(8)),
            Err(RecordError::PfnOutOfRange { .. })
        ));
    }

    #[test]
    fn bad_runs_are_rejected() {
        for run in [
            PfnRun { start: 1, count: 0 },
            PfnRun {
                start: u64::MAX,
                count: 2,
            },
        ] {
            let bytes = encode(|w| w.runs(RecordType::Pfns, &[run]).unwrap());
            let e = read_one(&bytes, Some(8)).unwrap_err();
            assert!(matches!(e, RecordError::BadRun { .. }), "{e}");
        }
    }

    #[test]
    fn a_page_twice_in_one_record_is_rejected() {
        let bytes = encode(|w| {
            w.page_data(Cause::Push, &[3, 3], &[1; 2 * PAGE_SIZE])
                .unwrap()
        });
        let e = read_one(&bytes, Some(8)).unwrap_err();
        assert!(matches!(e, RecordError::DuplicatePfn { pfn: 3, .. }), "{e}");
        let bytes = encode(|w| w.pfn_list(RecordType::Zero, &[2, 5, 2]).unwrap());
        assert!(matches!(
            read_one(&bytes, Some(8)),
            Err(RecordError::DuplicatePfn { pfn: 2, .. })
        ));
    }

    #[test]
    fn pfns_before_begin_are_unexpected() {
        let bytes = encode(|w| w.pfn_list(RecordType::Fault, &[1]).unwrap());
        let e = read_one(&bytes, None).unwrap_err();
        assert!(matches!(e, RecordError::Unexpected { .. }), "{e}");
    }

    #[test]
    fn bad_cause_version_reserved_and_padding_are_rejected() {
        let mut body = vec![1, 0, 0, 0, 9, 0, 0, 0];
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&[0; PAGE_SIZE]);
        assert!(matches!(
            read_one(&raw(0x16, &body), Some(8)),
            Err(RecordError::BadCause(9))
        ));

        let mut b = begin(8);
        b.version = 2.into();
        let bytes = encode(|w| w.begin(&b).unwrap());
        assert!(matches!(
            read_one(&bytes, None),
            Err(RecordError::BadVersion { got: 2, want: 1 })
        ));

        let mut b = begin(8);
        b.flags = 2.into();
        let bytes = encode(|w| w.begin(&b).unwrap());
        assert!(matches!(
            read_one(&bytes, None),
            Err(RecordError::NonZeroReserved { .. })
        ));

        let bytes = raw(0x17, &[1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            read_one(&bytes, Some(8)),
            Err(RecordError::NonZeroReserved { .. })
        ));

        let mut bytes = encode(|w| w.vcpu_state(b"abc").unwrap());
        let last = bytes.len() - 1;
        bytes[last] = 1;
        assert!(matches!(
            read_one(&bytes, None),
            Err(RecordError::NonZeroReserved { .. })
        ));
    }

    #[test]
    fn truncation_and_close_are_told_apart() {
        let bytes = encode(|w| w.count(RecordType::Complete, 1).unwrap());
        assert!(matches!(read_one(&[], None), Err(RecordError::Closed)));
        for cut in [3, 8, 12] {
            let e = read_one(&bytes[..cut], None).unwrap_err();
            assert!(matches!(e, RecordError::Truncated { .. }), "{cut}: {e}");
        }
    }

    #[test]
    fn begin_sets_the_bound_for_later_records() {
        let bytes = encode(|w| {
            w.begin(&begin(4)).unwrap();
            w.pfn_list(RecordType::Fault, &[4]).unwrap();
        });
        let mut r = RecordReader::new(&bytes[..], None);
        r.next_record().unwrap();
        assert!(matches!(
            r.next_record(),
            Err(RecordError::PfnOutOfRange { pfn: 4, .. })
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the reader and never yield a pfn
        /// outside the guest.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut r = RecordReader::new(&bytes[..], Some(16));
            for _ in 0..8 {
                match r.next_record() {
                    Ok(Record::PageData { pfns, .. }) | Ok(Record::Fault(pfns)) | Ok(Record::Zero(pfns)) => {
                        proptest::prop_assert!(pfns.iter().all(|&p| p < 16));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
