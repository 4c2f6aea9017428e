//! Writes sample post-copy streams for the patched `verify-stream-v2`.
//!
//! Every post-copy record is encoded by the engine
//! (`postcopy::records::RecordWriter`); only the libxc/libxl framing around
//! them (image and domain headers, STATIC_DATA_END, HVM context, END, the
//! libxl header and records) is written here, as libxenguest and libxl
//! write it. The sequence is the Xen path's single forward stream (fault
//! replies interleaved with pushed pages) and its back channel:
//!
//! ```text
//! forward: IHDR DHDR STATIC_DATA_END
//!          [EARLY_PFNS... (early page-out, while the guest runs)]
//!          BEGIN [PAGE_DATA precopy] [ZERO freed] PFNS... VCPU_STATE
//!          HVM_CONTEXT HVM_PARAMS TRANSITION
//!          (libxl: POSTCOPY_TRANSITION_END)
//!          PAGE_DATA fault / PAGE_DATA push / ZERO ... COMPLETE END
//! back:    [EARLY_DONE...] [READY] RESUMED FAULT... [ACK...] COMPLETE
//!          (or, giving up before the guest resumed: FAULT... ABORT)
//! ```
//!
//! `bad-*.libxc` are well-formed records in a wrong order or with wrong
//! pages, which the verifier must reject.
//!
//! Usage: `postcopy-stream-sample OUTDIR`

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use postcopy::memory::PfnRun;
use postcopy::prepage::StrategySpec;
use postcopy::records::{BeginBody, Cause, RecordType, RecordWriter, BEGIN_ACKS, STREAM_VERSION};
use postcopy::{Pfn, PAGE_SIZE};

const GUEST_PFNS: u64 = 4096;

/// libxc record types written around the post-copy records.
const XC_END: u32 = 0x00;
const XC_HVM_CONTEXT: u32 = 0x09;
const XC_HVM_PARAMS: u32 = 0x0a;
const XC_STATIC_DATA_END: u32 = 0x10;
/// libxl record types.
const XL_END: u32 = 0x00;
const XL_LIBXC_CONTEXT: u32 = 0x01;
const XL_POSTCOPY_TRANSITION_END: u32 = 0x06;

/// What the sample gets wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// An owed page is pushed twice.
    Duplicate,
    /// An owed page is never sent before COMPLETE.
    Missing,
    /// A page that was not owed is pushed.
    NotOwed,
    /// A back-channel record in the forward stream.
    BackInForward,
    /// A pushed page before TRANSITION.
    PushBeforeTransition,
    /// EARLY_PFNS after BEGIN.
    EarlyAfterBegin,
    /// An EARLY_PFNS run covering the paging ring's pfn.
    EarlyCoversRing,
    /// EARLY_PFNS with a guest size other than BEGIN's.
    EarlyOtherSize,
}

/// The early page-out's records (issue #15), if the sample has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    No,
    /// Two EARLY_PFNS records before BEGIN, and BEGIN asks for ACKs.
    Yes,
}

/// The paging ring's pfn in the early samples.
const RING_PFN: Pfn = 0xff0;

/// The EARLY_PFNS records: the populated pfns in two records (the
/// fault-free runs leave the ring pfn out).
fn early_records(w: &mut RecordWriter<&mut impl Write>, fault: Fault) -> io::Result<()> {
    let guest = if fault == Fault::EarlyOtherSize {
        GUEST_PFNS + 1
    } else {
        GUEST_PFNS
    };
    let last = if fault == Fault::EarlyCoversRing {
        PfnRun {
            start: 0xf00,
            count: 0x100,
        }
    } else {
        PfnRun {
            start: 0xf00,
            count: RING_PFN - 0xf00,
        }
    };
    rw(w.early_pfns(
        guest,
        RING_PFN,
        &[PfnRun {
            start: 16,
            count: 400,
        }],
    ))?;
    rw(w.early_pfns(
        guest,
        RING_PFN,
        &[
            PfnRun {
                start: 2048,
                count: 128,
            },
            last,
        ],
    ))
}

/// One libxc/libxl-framed record: u32 type, u32 length, body, zero padding.
fn raw_record(out: &mut impl Write, rtype: u32, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("record too long"))?;
    out.write_all(&rtype.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&[0u8; 8][..(8 - body.len() % 8) % 8])
}

/// libxc image header (big-endian, xg_sr_stream_format.h) and an x86 HVM
/// domain header from "Xen 4.17".
fn libxc_headers(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&u64::MAX.to_be_bytes())?; // marker
    out.write_all(&0x5845_4e46u32.to_be_bytes())?; // "XENF"
    out.write_all(&3u32.to_be_bytes())?; // version
    out.write_all(&0u16.to_be_bytes())?; // options: little endian
    out.write_all(&0u16.to_be_bytes())?;
    out.write_all(&0u32.to_be_bytes())?;
    out.write_all(&2u32.to_le_bytes())?; // DHDR_TYPE_X86_HVM
    out.write_all(&12u16.to_le_bytes())?; // page shift
    out.write_all(&0u16.to_le_bytes())?;
    out.write_all(&4u32.to_le_bytes())?; // xen major
    out.write_all(&17u32.to_le_bytes()) // xen minor
}

/// Page content that is not all zero, so it travels as PAGE_DATA.
fn page(pfn: Pfn) -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (pfn as u8) ^ (i as u8) | 1;
    }
    p
}

fn pages(pfns: &[Pfn]) -> Vec<u8> {
    pfns.iter().flat_map(|&p| page(p)).collect()
}

fn rw(r: postcopy::records::RecordResult<()>) -> io::Result<()> {
    r.map_err(|e| io::Error::other(e.to_string()))
}

/// The owed set: two runs, one crossing the fault pivot.
fn owed_runs() -> Vec<PfnRun> {
    vec![
        PfnRun {
            start: 16,
            count: 240,
        },
        PfnRun {
            start: 2048,
            count: 64,
        },
    ]
}

/// Writes the forward stream; `libxl` interleaves libxl's transition end.
fn forward(out: &mut impl Write, fault: Fault, libxl: bool, early: Early) -> io::Result<u64> {
    libxc_headers(out)?;
    raw_record(out, XC_STATIC_DATA_END, &[])?;
    if early == Early::Yes && fault != Fault::EarlyAfterBegin {
        let mut w = RecordWriter::new(&mut *out);
        early_records(&mut w, fault)?;
        rw(w.flush())?;
    }

    let (strategy, strategy_arg) = StrategySpec::MultiPivot(7).wire_id();
    let begin = BeginBody {
        version: STREAM_VERSION.into(),
        flags: if early == Early::Yes { BEGIN_ACKS } else { 0 }.into(),
        strategy: strategy.into(),
        strategy_arg: strategy_arg.into(),
        guest_pfns: GUEST_PFNS.into(),
        populated_pages: 3000u64.into(),
    };
    let runs = owed_runs();
    let owed: Vec<Pfn> = runs
        .iter()
        .flat_map(|r| r.start..r.start + r.count)
        .collect();

    {
        let mut w = RecordWriter::new(&mut *out);
        rw(w.begin(&begin))?;
        if fault == Fault::EarlyAfterBegin {
            early_records(&mut w, fault)?;
        }
        // Hybrid: one pre-copy batch before the stop, then a page freed
        // since it was sent.
        let pre: Vec<Pfn> = (300..308).collect();
        rw(w.page_data(Cause::Precopy, &pre, &pages(&pre)))?;
        rw(w.pfn_list(RecordType::Zero, &[307]))?;
        if fault == Fault::PushBeforeTransition {
            rw(w.page_data(Cause::Push, &[16], &pages(&[16])))?;
        }
        rw(w.runs(RecordType::Pfns, &runs[..1]))?;
        rw(w.runs(RecordType::Pfns, &runs[1..]))?;
        rw(w.vcpu_state(b"opaque vcpu state from the engine"))?;
        rw(w.flush())?;
    }

    // end_of_checkpoint(): the CPU state, as libxenguest writes it.
    raw_record(out, XC_HVM_CONTEXT, &[0x5a; 48])?;
    let mut params = Vec::new();
    params.extend_from_slice(&1u32.to_le_bytes()); // count
    params.extend_from_slice(&0u32.to_le_bytes());
    params.extend_from_slice(&1u64.to_le_bytes()); // HVM_PARAM_STORE_PFN
    params.extend_from_slice(&0xfeffcu64.to_le_bytes());
    raw_record(out, XC_HVM_PARAMS, &params)?;

    let mut sent = 0u64;
    {
        let mut w = RecordWriter::new(&mut *out);
        rw(w.empty(RecordType::Transition))?;
        rw(w.flush())?;
    }
    if libxl {
        raw_record(out, XL_POSTCOPY_TRANSITION_END, &[])?;
    }
    {
        let mut w = RecordWriter::new(&mut *out);
        if fault == Fault::BackInForward {
            rw(w.pfn_list(RecordType::Fault, &[100]))?;
        }
        // A fault on pfn 100, answered first; then bubbles around it.
        let mut left: BTreeSet<Pfn> = owed.iter().copied().collect();
        rw(w.page_data(Cause::Fault, &[100], &pages(&[100])))?;
        left.remove(&100);
        sent += 1;
        let zero: Vec<Pfn> = (2100..2112).collect();
        for p in &zero {
            left.remove(p);
        }
        rw(w.pfn_list(RecordType::Zero, &zero))?;
        sent += zero.len() as u64;
        if fault == Fault::Missing {
            left.remove(&2060);
        }
        let push: Vec<Pfn> = left.into_iter().collect();
        for batch in push.chunks(64) {
            rw(w.page_data(Cause::Push, batch, &pages(batch)))?;
            sent += batch.len() as u64;
        }
        match fault {
            Fault::Duplicate => rw(w.page_data(Cause::Push, &[17], &pages(&[17])))?,
            Fault::NotOwed => rw(w.page_data(Cause::Push, &[3000], &pages(&[3000])))?,
            _ => {}
        }
        rw(w.count(RecordType::Complete, sent))?;
        rw(w.flush())?;
    }
    raw_record(out, XC_END, &[])?;
    Ok(sent)
}

/// The destination's back channel for the same migration.
fn back(out: &mut impl Write, received: u64) -> io::Result<()> {
    let mut w = RecordWriter::new(out);
    rw(w.count(RecordType::Resumed, 41_000))?;
    rw(w.pfn_list(RecordType::Fault, &[100]))?;
    rw(w.pfn_list(RecordType::Fault, &[2050, 2051]))?;
    rw(w.count(RecordType::Complete, received))?;
    rw(w.flush())
}

/// The back channel of an early page-out migration that asked for ACKs;
/// `ack_back` makes the second ACK smaller than the first.
fn back_early(out: &mut impl Write, received: u64, ack_back: bool) -> io::Result<()> {
    let mut w = RecordWriter::new(out);
    rw(w.count(RecordType::EarlyDone, 400))?;
    rw(w.count(RecordType::EarlyDone, 128 + (RING_PFN - 0xf00)))?;
    rw(w.empty(RecordType::Ready))?;
    rw(w.count(RecordType::Resumed, 41_000))?;
    rw(w.pfn_list(RecordType::Fault, &[100]))?;
    rw(w.count(RecordType::Ack, 1 << 20))?;
    rw(w.count(RecordType::Ack, if ack_back { 1 << 19 } else { 1 << 21 }))?;
    rw(w.count(RecordType::Complete, received))?;
    rw(w.flush())
}

/// A back channel on which the destination gives up before resuming.
fn back_abort(out: &mut impl Write) -> io::Result<()> {
    let mut w = RecordWriter::new(out);
    rw(w.pfn_list(RecordType::Fault, &[100]))?;
    rw(w.abort("mem_paging could not be enabled: EXDEV (PoD is active)"))?;
    rw(w.flush())
}

fn create(dir: &Path, name: &str) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(dir.join(name))?))
}

fn main() -> io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or_else(|| io::Error::other("usage: postcopy-stream-sample OUTDIR"))?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;

    let sent = forward(
        &mut create(dir, "forward.libxc")?,
        Fault::None,
        false,
        Early::No,
    )?;
    forward(
        &mut create(dir, "forward-early.libxc")?,
        Fault::None,
        false,
        Early::Yes,
    )?;

    let mut xl = create(dir, "forward.libxl")?;
    xl.write_all(&0x4c69_6278_6c46_6d74u64.to_be_bytes())?; // "LibxlFmt"
    xl.write_all(&2u32.to_be_bytes())?;
    xl.write_all(&0u32.to_be_bytes())?;
    raw_record(&mut xl, XL_LIBXC_CONTEXT, &[])?;
    forward(&mut xl, Fault::None, true, Early::No)?;
    raw_record(&mut xl, XL_END, &[])?;
    xl.flush()?;

    back(&mut create(dir, "back.stream")?, sent)?;
    back_abort(&mut create(dir, "back-abort.stream")?)?;
    back_early(&mut create(dir, "back-early.stream")?, sent, false)?;
    back_early(&mut create(dir, "bad-back-ack.stream")?, sent, true)?;

    for (name, fault) in [
        ("bad-duplicate.libxc", Fault::Duplicate),
        ("bad-missing.libxc", Fault::Missing),
        ("bad-not-owed.libxc", Fault::NotOwed),
        ("bad-back-in-forward.libxc", Fault::BackInForward),
        (
            "bad-push-before-transition.libxc",
            Fault::PushBeforeTransition,
        ),
        ("bad-early-after-begin.libxc", Fault::EarlyAfterBegin),
        ("bad-early-ring.libxc", Fault::EarlyCoversRing),
        ("bad-early-size.libxc", Fault::EarlyOtherSize),
    ] {
        let early = if matches!(
            fault,
            Fault::EarlyAfterBegin | Fault::EarlyCoversRing | Fault::EarlyOtherSize
        ) {
            Early::Yes
        } else {
            Early::No
        };
        forward(&mut create(dir, name)?, fault, false, early)?;
    }
    Ok(())
}
