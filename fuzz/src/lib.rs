//! The checks behind every fuzz target, one public function a target.
//!
//! Each `fuzz_targets/<name>.rs` is one line calling the function of the
//! same name here, so the same checks also run on stable under `cargo test`
//! (`tests/replay.rs` replays `corpus/<name>/` and `regressions/<name>/`).
//! A function returns normally for any input the decoder rejects; it panics
//! only when the code under test panics or breaks an invariant:
//!
//! | target | decoder | invariants beyond "never panics" |
//! |---|---|---|
//! | `records` | `RecordReader` (guest size unknown, small, huge) and `records::decode` for every type | every pfn below the guest size; PAGE_DATA data = pfns × 4096; counts within the per-type caps; lists distinct where the format says so; re-encoding a decoded record gives back exactly the bytes read |
//! | `fault_channel` | the source's reader of the destination→source channel | only FAULT/RESUMED/COMPLETE/ABORT/READY/RECOVER accepted; every FAULT pfn fed to `Scheduler::request` (each strategy): no page offered twice, only owed pages offered, and after the stream every owed page offered exactly once |
//! | `recovery` | RECOVER (reader and `decode`) and its conversion to a received set | runs inside the guest; received set ↔ canonical runs ↔ re-encoded RECOVER all agree; resend set = owed − received |
//! | `strategy` | `StrategySpec::from_str`, `from_wire`, `xl_plugin::options::parse_size_pages` | Display→FromStr and wire round trips; sizes are whole positive pages that round-trip |
//! | `trace` | `postcopy_sim::trace::decode` | a decoded trace re-encodes to the same bytes; entries valid |
//! | `link_hello` | `xl_plugin::local::link::parse_hello` | accepted exactly when well-formed (magic, channel 0/1, known flags, guest size in range); an accepted hello is the input's bytes |
//! | `owed_set` | `postcopy::takeover::OwedSet::decode` (the replacement pager's file) | re-encodes to its bytes; guest size bounded; runs ascending, disjoint, non-empty, inside the guest |

use postcopy::memory::{runs_from_sorted, PfnRun};
use postcopy::prepage::StrategySpec;
use postcopy::records::{
    self, Record, RecordError, RecordReader, RecordType, RecordWriter, MAX_ABORT, MAX_BATCH_PAGES,
    MAX_PFN_LIST, MAX_RUNS, MAX_VCPU_STATE, RECORD_TABLE, STREAM_VERSION,
};
use postcopy::scheduler::{Request, Scheduler};
use postcopy::{Pfn, PAGE_SIZE};

/// Guest size of the fault-channel and recovery models; the seed generator
/// (`examples/seeds.rs`) migrates a guest of this size.
pub const MODEL_GUEST_PFNS: u64 = 256;

/// Most records read from one input (inputs are small; this only bounds
/// the work of an input made of many empty records).
const MAX_RECORDS: usize = 4096;

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Asserts the invariants every decoded record keeps, whatever its bytes.
/// `bound` is the guest size the decoder was given.
fn check_record(rec: &Record<'_>, bound: Option<u64>) {
    let need_bound =
        || bound.expect("a record naming pfns decoded before the guest size was known");
    match rec {
        Record::Begin(b) => {
            assert_eq!(
                b.version.get(),
                STREAM_VERSION,
                "BEGIN with a foreign version"
            );
            assert_eq!(
                b.flags.get() & !records::BEGIN_ACKS,
                0,
                "BEGIN with reserved flags set"
            );
        }
        Record::Pfns(runs) | Record::Recover(runs) => {
            let g = need_bound();
            assert!(runs.len() <= MAX_RUNS, "{} runs", runs.len());
            for r in runs {
                assert!(r.count > 0, "empty run {r:?}");
                let end = r.end().expect("run overflows");
                assert!(end <= g, "run {r:?} beyond guest of {g}");
            }
        }
        Record::PageData { pfns, data, .. } => {
            let g = need_bound();
            assert!(
                !pfns.is_empty() && pfns.len() <= MAX_BATCH_PAGES,
                "{} pages",
                pfns.len()
            );
            assert_eq!(
                data.len(),
                pfns.len() * PAGE_SIZE,
                "data length != pfns * 4096"
            );
            assert!(
                pfns.iter().all(|&p| p < g),
                "pfn beyond guest of {g}: {pfns:?}"
            );
            assert_distinct(pfns);
        }
        Record::Fault(pfns) => {
            let g = need_bound();
            assert!(pfns.len() <= MAX_PFN_LIST, "{} pfns", pfns.len());
            assert!(
                pfns.iter().all(|&p| p < g),
                "pfn beyond guest of {g}: {pfns:?}"
            );
        }
        Record::Zero(pfns) => {
            let g = need_bound();
            assert!(pfns.len() <= MAX_PFN_LIST, "{} pfns", pfns.len());
            assert!(
                pfns.iter().all(|&p| p < g),
                "pfn beyond guest of {g}: {pfns:?}"
            );
            assert_distinct(pfns);
        }
        Record::VcpuState(s) => assert!(s.len() <= MAX_VCPU_STATE, "{} bytes", s.len()),
        // Lossy UTF-8 turns one bad byte into three; a control byte
        // becomes an escape of up to six (`\u{1f}`, `records::printable`).
        Record::Abort(m) => {
            assert!(m.len() <= 6 * MAX_ABORT, "{} bytes", m.len());
            assert!(
                !m.chars().any(char::is_control),
                "control character in peer text: {m:?}"
            );
        }
        // Before BEGIN: bounded by its own guest size, not the stream's.
        Record::EarlyPfns {
            guest_pfns,
            ring_pfn,
            runs,
        } => {
            let g = *guest_pfns;
            assert!(
                g > 0 && g <= records::MAX_EARLY_GUEST_PFNS,
                "early guest of {g}"
            );
            assert!(*ring_pfn < g, "ring pfn {ring_pfn} beyond guest of {g}");
            assert!(runs.len() <= MAX_RUNS, "{} runs", runs.len());
            for r in runs {
                assert!(r.count > 0, "empty run {r:?}");
                let end = r.end().expect("run overflows");
                assert!(end <= g, "run {r:?} beyond guest of {g}");
                assert!(
                    !(r.start..end).contains(ring_pfn),
                    "ring pfn {ring_pfn} in {r:?}"
                );
            }
        }
        Record::Transition
        | Record::Ready
        | Record::Complete(_)
        | Record::Resumed(_)
        | Record::Ack(_)
        | Record::EarlyDone(_) => {}
    }
}

/// True if an ABORT body decodes to itself: valid UTF-8 that
/// `records::printable` leaves alone.
fn exact_text(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|t| records::printable(t) == t)
}

fn assert_distinct(pfns: &[Pfn]) {
    let mut s = pfns.to_vec();
    s.sort_unstable();
    assert!(
        s.windows(2).all(|w| w[0] != w[1]),
        "duplicate pfn in {pfns:?}"
    );
}

/// The bytes our own writer produces for `rec` (header, body, padding).
fn encode(rec: &Record<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = RecordWriter::new(&mut out);
    let r = match rec {
        Record::Begin(b) => w.begin(b),
        Record::Pfns(runs) => w.runs(RecordType::Pfns, runs),
        Record::Recover(runs) => w.runs(RecordType::Recover, runs),
        Record::Transition => w.empty(RecordType::Transition),
        Record::Ready => w.empty(RecordType::Ready),
        Record::PageData { cause, pfns, data } => w.page_data(*cause, pfns, data),
        Record::Fault(pfns) => w.pfn_list(RecordType::Fault, pfns),
        Record::Zero(pfns) => w.pfn_list(RecordType::Zero, pfns),
        Record::Complete(v) => w.count(RecordType::Complete, *v),
        Record::Resumed(v) => w.count(RecordType::Resumed, *v),
        Record::Ack(v) => w.count(RecordType::Ack, *v),
        Record::EarlyDone(v) => w.count(RecordType::EarlyDone, *v),
        Record::EarlyPfns {
            guest_pfns,
            ring_pfn,
            runs,
        } => w.early_pfns(*guest_pfns, *ring_pfn, runs),
        Record::VcpuState(s) => w.vcpu_state(s),
        Record::Abort(m) => w.abort(m),
    };
    r.expect("re-encoding a decoded record failed");
    out
}

/// Reads records from `data` until the first error, checking each, and
fn read_stream(data: &[u8], guest: Option<u64>) {
    let mut r = RecordReader::new(data, guest);
    let mut bound = guest;
    for _ in 0..MAX_RECORDS {
        let before = usize::try_from(r.bytes_read()).expect("offset");
        let (enc, begin) = match r.next_record() {
            Ok(rec) => {
                check_record(&rec, bound);
                let begin = match &rec {
                    Record::Begin(b) => Some(b.guest_pfns.get()),
                    _ => None,
                };
                // ABORT bodies are decoded lossily and made printable:
                // only printable UTF-8 round-trips.
                let exact = match &rec {
                    Record::Abort(_) => {
                        let len = usize::try_from(le_u32(&data[before + 4..])).expect("len");
                        exact_text(&data[before + 8..before + 8 + len])
                    }
                    _ => true,
                };
                (exact.then(|| encode(&rec)), begin)
            }
            Err(e) => {
                let _ = e.to_string();
                let after = usize::try_from(r.bytes_read()).expect("offset");
                assert!(after <= data.len(), "read past the input");
                return;
            }
        };
        let after = usize::try_from(r.bytes_read()).expect("offset");
        assert!(after <= data.len() && after > before && after % 8 == 0);
        if let Some(enc) = enc {
            assert_eq!(
                enc,
                &data[before..after],
                "decode→encode is not the identity"
            );
        }
        if let Some(g) = begin {
            bound = Some(g);
        }
    }
}

/// `records::decode(rtype, body, guest)` on its own, as `libxl-glue`'s
/// restore path calls it with bodies framed by libxc.
fn decode_direct(rtype: RecordType, body: &[u8], guest: Option<u64>) {
    match records::decode(rtype, body, guest) {
        Ok(rec) => {
            assert_eq!(rec.rtype(), rtype);
            check_record(&rec, guest);
            assert!(
                body.len() <= rtype.info().max_len,
                "{} body of {} bytes accepted, over its bound of {}",
                rtype.name(),
                body.len(),
                rtype.info().max_len
            );
            let exact = !matches!(rec, Record::Abort(_)) || exact_text(body);
            if exact {
                let enc = encode(&rec);
                assert_eq!(
                    &enc[8..8 + body.len()],
                    body,
                    "decode→encode is not the identity"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Target `records`: the whole stream reader with an unknown guest size (as
/// the destination starts), the seeds' guest size, a small one and the
/// largest one; then `decode`
/// of the input as the body of each record type.
pub fn records(data: &[u8]) {
    // A guest size the fuzzer can steer through the input length; 0 too.
    let small = (data.len() as u64 / 8) % 1024;
    read_stream(data, None);
    read_stream(data, Some(MODEL_GUEST_PFNS));
    read_stream(data, Some(small));
    read_stream(data, Some(u64::MAX));
    for info in RECORD_TABLE {
        decode_direct(info.rtype, data, None);
        decode_direct(info.rtype, data, Some(small));
    }
}

/// What the source does with one record from the fault channel (a model of
/// `source::pre_switch` waiting for READY and `source::fault_server`).
#[derive(Debug)]
enum Event {
    Ready,
    Abort,
    Resumed,
    Fault(Vec<Pfn>),
    Complete,
    Recover,
    Ack,
}

/// Decodes the destination→source channel as the source does (guest size
/// known, reader shared by the READY wait and the fault server), keeping
/// only the record types that channel carries; stops at the first error or
/// at a record of another type (the source's `Unexpected`).
fn fault_events(data: &[u8], guest: u64) -> Vec<Event> {
    let mut r = RecordReader::new(data, Some(guest));
    let mut out = Vec::new();
    for _ in 0..MAX_RECORDS {
        let Ok(rec) = r.next_record() else { break };
        check_record(&rec, Some(guest));
        out.push(match rec {
            Record::Ready => Event::Ready,
            Record::Abort(_) => Event::Abort,
            Record::Resumed(_) => Event::Resumed,
            Record::Fault(p) => Event::Fault(p),
            Record::Complete(_) => Event::Complete,
            Record::Recover(_) => Event::Recover,
            Record::Ack(_) => Event::Ack,
            _ => break,
        });
    }
    out
}

fn model_owed(p: Pfn) -> bool {
    // Every fifth page unpopulated (never owed): requests for it are NotOwed.
    p % 5 != 4
}

/// Claims one page the scheduler offers and checks it was owed and fresh.
fn offer(offered: &mut [bool], p: Pfn, how: &str) {
    let i = usize::try_from(p).expect("pfn");
    assert!(i < offered.len(), "{how}: offered pfn {p} beyond the guest");
    assert!(model_owed(p), "{how}: offered pfn {p}, which is not owed");
    assert!(!offered[i], "{how}: offered pfn {p} twice");
    offered[i] = true;
}

fn run_scheduler(events: &[Event], spec: StrategySpec, guest: u64) {
    let owed: Vec<PfnRun> = runs_from_sorted((0..guest).filter(|&p| model_owed(p)));
    let owed_count = (0..guest).filter(|&p| model_owed(p)).count();
    // A recorded history with repeats and a pfn outside the guest.
    let history = vec![7, 3, guest + 40, 7, guest - 1, 0, 4];
    let mut s = Scheduler::new(guest, &owed, spec.build(history)).expect("scheduler");
    assert_eq!(s.owed(), owed_count as u64);
    let mut offered = vec![false; usize::try_from(guest).expect("guest")];
    let mut sent = 0usize;
    let mut ready = false;
    'stream: for ev in events {
        if !ready {
            // source::pre_switch: READY or ABORT, anything else is unexpected.
            match ev {
                Event::Ready => ready = true,
                _ => break 'stream,
            }
            continue;
        }
        match ev {
            Event::Fault(pfns) => {
                for &p in pfns {
                    match s.request(p) {
                        Request::Queued => {
                            let q = s.take_urgent().expect("queued page not urgent");
                            assert_eq!(q, p, "urgent queue gave another page");
                            offer(&mut offered, q, "fault");
                            sent += 1;
                        }
                        Request::AlreadySent => {
                            let i = usize::try_from(p).expect("pfn");
                            assert!(offered[i], "pfn {p} 'already sent' but never offered");
                        }
                        Request::NotOwed => {
                            assert!(!model_owed(p), "owed pfn {p} reported as not owed");
                            // The source ends the migration with a protocol error.
                            break 'stream;
                        }
                    }
                }
                // The pusher runs between fault requests; how far is up to
                // the input.
                for _ in 0..pfns.len() % 7 {
                    if let Some((p, _)) = s.next_send() {
                        offer(&mut offered, p, "push");
                        sent += 1;
                    }
                }
            }
            Event::Complete | Event::Abort => break 'stream,
            Event::Resumed | Event::Recover | Event::Ready | Event::Ack => {}
        }
        assert_eq!(s.unsent(), (owed_count - sent) as u64);
    }
    // Drain as the source does: pushes, then the residual linear flush.
    while let Some((p, _)) = s.next_send() {
        offer(&mut offered, p, "drain push");
        sent += 1;
    }
    while let Some(p) = s.next_linear() {
        offer(&mut offered, p, "linear flush");
        sent += 1;
    }
    assert_eq!(sent, owed_count, "owed pages never offered");
    assert_eq!(s.unsent(), 0);
}

/// Target `fault_channel`: the destination→source channel as the source
/// reads it, and the FAULT pfns through the scheduler with every strategy.
pub fn fault_channel(data: &[u8]) {
    let guest = MODEL_GUEST_PFNS;
    let events = fault_events(data, guest);
    let mut specs = StrategySpec::ALL.to_vec();
    specs.push(StrategySpec::MultiPivot(1));
    specs.push(StrategySpec::MultiPivot(postcopy::prepage::MAX_PIVOTS));
    for spec in specs {
        run_scheduler(&events, spec, guest);
    }
}

/// The received set a RECOVER's runs describe (bits over the guest).
fn received_set(runs: &[PfnRun], guest: u64) -> Vec<bool> {
    let mut bits = vec![false; usize::try_from(guest).expect("guest")];
    for r in runs {
        let start = usize::try_from(r.start).expect("start");
        let end = usize::try_from(r.end().expect("run overflows")).expect("end");
        bits[start..end].fill(true);
    }
    bits
}

fn check_recover(runs: &[PfnRun], guest: u64) {
    let bits = received_set(runs, guest);
    // Canonical runs of the set, re-encoded in RECOVER records of at most
    // MAX_RUNS runs, decode back to the same set.
    let canon = runs_from_sorted(
        bits.iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i as u64),
    );
    let mut wire = Vec::new();
    let mut w = RecordWriter::new(&mut wire);
    for chunk in canon.chunks(MAX_RUNS) {
        w.runs(RecordType::Recover, chunk).expect("encode RECOVER");
    }
    w.flush().expect("flush");
    let mut again = vec![false; bits.len()];
    let mut r = RecordReader::new(&wire[..], Some(guest));
    loop {
        match r.next_record() {
            Ok(Record::Recover(runs)) => {
                for (i, b) in received_set(&runs, guest).into_iter().enumerate() {
                    again[i] |= b;
                }
            }
            Ok(other) => panic!("re-encoded RECOVER read back as {other:?}"),
            Err(RecordError::Closed) => break,
            Err(e) => panic!("re-encoded RECOVER rejected: {e}"),
        }
    }
    assert_eq!(again, bits, "received set changed through canonical runs");
    // What the source resends: owed and not received; never a received page.
    let resend: Vec<Pfn> = (0..guest)
        .filter(|&p| model_owed(p) && !bits[usize::try_from(p).expect("pfn")])
        .collect();
    let received = bits.iter().filter(|&&b| b).count() as u64;
    assert!(received <= guest);
    assert!(resend.len() as u64 + received >= (0..guest).filter(|&p| model_owed(p)).count() as u64);
}

// `postcopy`'s recovery handshake decoder (`recovery::read_received`,
// `write_received`) is crate-private; the module is compiled here from its
// own source so the fuzzer runs the real code. It names `crate::error`,
// `crate::memory`, `crate::records` and `crate::transport`, which the
// imports below provide.
#[allow(
    dead_code,
    unused_imports,
    clippy::all,
    reason = "another crate's module"
)]
#[path = "../../postcopy/src/recovery.rs"]
mod engine_recovery;
#[allow(unused_imports, reason = "names for engine_recovery")]
use postcopy::{error, memory, transport};

/// Target `recovery`: the destination's reconnect message as the source
/// reads it (`recovery::read_received`: RECOVER records up to an empty
/// one, into a received-map), and RECOVER records one by one through the
/// reader and `decode`, with their runs to a received set and back.
pub fn recovery(data: &[u8]) {
    let guest = MODEL_GUEST_PFNS;
    let mut r = RecordReader::new(data, Some(guest));
    if let Ok(got) = engine_recovery::read_received(&mut r, guest) {
        assert_eq!(got.len() as u64, guest, "received-map of the wrong size");
        let ones: Vec<u64> = got.iter_ones().map(|i| i as u64).collect();
        let runs = runs_from_sorted(ones.iter().copied());
        check_recover(&runs, guest);
        // What the source sends back must read back the same.
        let mut w = RecordWriter::new(Vec::new());
        engine_recovery::write_received(&mut w, &got).expect("write_received");
        let bytes = std::mem::take(w.get_mut());
        let mut again = RecordReader::new(&bytes[..], Some(guest));
        let back = engine_recovery::read_received(&mut again, guest).expect("own RECOVER rejected");
        assert_eq!(back, got, "received-map changed through write_received");
    }
    let mut r = RecordReader::new(data, Some(guest));
    for _ in 0..MAX_RECORDS {
        match r.next_record() {
            Ok(Record::Recover(runs)) => {
                check_record(&Record::Recover(runs.clone()), Some(guest));
                check_recover(&runs, guest);
            }
            Ok(rec) => check_record(&rec, Some(guest)),
            Err(_) => break,
        }
    }
    if let Ok(Record::Recover(runs)) = records::decode(RecordType::Recover, data, Some(guest)) {
        check_recover(&runs, guest);
    }
    decode_direct(RecordType::Recover, data, Some(guest));
}

/// Target `capabilities`: a receiver's post-copy capability line as the
/// sender reads it (`HostCapabilities::parse`, `check_receiver`): no
/// panic; a line that parses writes back to one that parses the same; a
/// refusal is one line.
pub fn capabilities(data: &[u8]) {
    use postcopy::capabilities::{check_receiver, HostCapabilities, MAX_LINE};
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(caps) = HostCapabilities::parse(line) {
        let again = caps.to_line();
        assert!(again.len() <= MAX_LINE, "to_line is over the bound");
        if again.len() < MAX_LINE {
            let back = HostCapabilities::parse(&again).expect("a written line parses");
            assert_eq!(back.abi, caps.abi, "abi does not round-trip");
            assert_eq!(back.mem_paging.is_ok(), caps.mem_paging.is_ok());
        }
    }
    for spec in StrategySpec::ALL {
        match check_receiver(line, 3, &spec) {
            Ok(peer) => assert!(!peer.to_string().contains('\n')),
            Err(why) => assert!(!why.contains('\n'), "a refusal spans lines"),
        }
    }
}

/// Target `owed_set`: the owed-set file a replacement pager reads
/// (`takeover::OwedSet::decode`): no panic; what decodes re-encodes to the
/// input's bytes, inside a guest of at most `MAX_GUEST_PFNS` pfns, its runs
/// ascending, disjoint and non-empty.
pub fn owed_set(data: &[u8]) {
    use postcopy::takeover::{OwedSet, MAX_GUEST_PFNS};
    let Ok(set) = OwedSet::decode(data) else {
        return;
    };
    assert_eq!(set.encode(), data, "an owed set does not re-encode to its bytes");
    assert!(set.guest_pfns > 0 && set.guest_pfns <= MAX_GUEST_PFNS);
    let mut next = 0;
    for r in &set.runs {
        assert!(r.count > 0 && r.start >= next, "runs not ascending: {r:?}");
        next = r.start + r.count;
        assert!(next <= set.guest_pfns, "a run past the guest: {r:?}");
    }
    assert!(set.count() <= set.guest_pfns);
}

/// Target `strategy`: the `--prepage=` parser, the wire form of a strategy
/// and `--memory`-style size parsing.
pub fn strategy(data: &[u8]) {
    if data.len() >= 8 {
        let id = le_u32(data);
        let arg = le_u32(&data[4..]);
        if let Some(spec) = StrategySpec::from_wire(id, arg) {
            assert_eq!(spec.wire_id(), (id, arg), "wire id does not round-trip");
        }
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<StrategySpec>() {
        Ok(spec) => {
            let shown = spec.to_string();
            assert_eq!(
                shown.parse::<StrategySpec>(),
                Ok(spec),
                "Display→FromStr of {s:?}"
            );
            let (id, arg) = spec.wire_id();
            assert_eq!(StrategySpec::from_wire(id, arg), Some(spec));
            assert_eq!(xl_plugin::options::parse_strategy(s), Ok(spec));
            assert!(s.len() <= "multi-pivot:064".len(), "accepted {s:?}");
        }
        Err(e) => {
            assert!(
                e.given.chars().count() <= 64,
                "error echoes {} chars",
                e.given.len()
            );
            assert!(s.starts_with(&e.given));
            let msg = e.to_string();
            assert!(xl_plugin::options::parse_strategy(s).is_err_and(|m| m == msg));
        }
    }
    match xl_plugin::options::parse_size_pages(s) {
        Ok(pages) => {
            assert!(pages >= 1);
            let bytes = pages.checked_mul(4096).expect("pages * 4096 overflows");
            assert_eq!(
                xl_plugin::options::parse_size_pages(&bytes.to_string()),
                Ok(pages)
            );
        }
        Err(m) => assert!(!m.is_empty()),
    }
}

/// Target `trace`: the simulator's trace-file decoder.
pub fn trace(data: &[u8]) {
    use postcopy_sim::trace::{self, Trace, HEADER_BYTES, PFN_MASK};
    match trace::decode(data) {
        Ok(t) => {
            assert_eq!(t.encode(), data, "decode→encode is not the identity");
            assert_eq!(t.len(), (data.len() - HEADER_BYTES) / 8);
            assert!(!t.is_empty());
            assert!(t.iter().all(|a| a.pfn < t.guest_pfns && a.pfn <= PFN_MASK));
            let again = Trace::from_entries(
                t.guest_pfns,
                t.ns_per_access,
                t.looping,
                t.entries().to_vec(),
            );
            assert_eq!(again.as_ref(), Ok(&t));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Target `link_hello`: local mode's 32-byte hello as the receiver parses
/// it (`xl_plugin::local::link::parse_hello`), on the whole input and on
/// each 32-byte piece of it (a sender's two hellos back to back).
pub fn link_hello(data: &[u8]) {
    check_hello(data);
    for piece in data.chunks(32) {
        check_hello(piece);
    }
}

fn check_hello(bytes: &[u8]) {
    use xl_plugin::local::link::{
        parse_hello, FLAG_AUTH, FLAG_RESUME, FLAG_SEALED, MAGIC, MAX_GUEST_PAGES,
    };
    // Sealed only with a token.
    let flags_ok = |f: u32| {
        f & !(FLAG_RESUME | FLAG_AUTH | FLAG_SEALED) == 0
            && (f & FLAG_SEALED == 0 || f & FLAG_AUTH != 0)
    };
    use zerocopy::IntoBytes;
    match parse_hello(bytes) {
        Ok(h) => {
            assert_eq!(h.as_bytes(), bytes, "hello does not round-trip");
            assert_eq!(h.magic, MAGIC);
            assert!(h.channel.get() <= 1, "channel {}", h.channel.get());
            assert!(flags_ok(h.flags.get()), "unknown flags");
            assert!(
                (1..=MAX_GUEST_PAGES).contains(&h.guest_pages.get()),
                "guest size"
            );
        }
        Err(e) => {
            let _ = e.to_string();
            // Every well-formed hello is accepted.
            let well_formed = bytes.len() == 32
                && bytes[..8] == MAGIC
                && le_u32(&bytes[8..]) <= 1
                && flags_ok(le_u32(&bytes[12..]))
                && (1..=MAX_GUEST_PAGES).contains(&u64::from_le_bytes(
                    bytes[16..24].try_into().expect("8 bytes"),
                ));
            assert!(!well_formed, "well-formed hello rejected: {e}");
        }
    }
}

/// Target `tunnel_frames`: `xl-postcopy tunnel`'s wire. The first 32
/// bytes go to the listener's hello check (`tunnel::hello::parse_hello`,
/// accepted exactly when well formed, round-trips); the rest is read as
/// frames until the first error: every frame decoded must re-encode to
/// exactly the bytes it came from, and DATA must be 1..=MAX_DATA bytes
/// without wrapping the stream offset.
pub fn tunnel_frames(data: &[u8]) {
    use xl_plugin::tunnel::frame::{encode, Frame, FrameReader, MAX_DATA};
    use xl_plugin::tunnel::hello::{
        parse_hello, FLAG_AUTH, FLAG_RESUME, FLAG_SEALED, MAGIC, VERSION,
    };
    use zerocopy::IntoBytes;
    let (head, rest) = data.split_at(data.len().min(32));
    if let Ok(h) = parse_hello(head) {
        assert_eq!(h.as_bytes(), head, "hello does not round-trip");
        assert_eq!(h.magic, MAGIC);
        assert_eq!(h.version.get(), VERSION);
        let f = h.flags.get();
        assert_eq!(f & !(FLAG_RESUME | FLAG_AUTH | FLAG_SEALED), 0);
        assert!(f & FLAG_SEALED == 0 || f & FLAG_AUTH != 0);
    }
    let mut cursor = std::io::Cursor::new(rest);
    let mut at = 0usize;
    loop {
        let mut r = FrameReader::new(&mut cursor);
        let Ok(frame) = r.next_frame() else { break };
        if let Frame::Data { offset, bytes } = &frame {
            assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA);
            assert!(offset.checked_add(bytes.len() as u64).is_some());
        }
        let mut again = Vec::new();
        encode(&frame, &mut again);
        let end = usize::try_from(cursor.position()).expect("position fits");
        assert_eq!(&rest[at..end], &again[..], "frame does not round-trip");
        at = end;
    }
}

/// The key of the `sealed_records` target and its seeds.
pub const SEAL_KEY: [u8; 32] = [0x42; 32];

/// Target `sealed_records`: a sealed stream ([`xl_plugin::seal`]) read with
/// a fixed key, in reads of varying sizes (the first byte picks them),
/// until the first error or its end. It must never panic; only sealed
/// records can open (so forged input almost never yields a byte), what
/// opens re-seals to exactly the bytes read, and once a read failed on a
/// bad record every later read fails too.
pub fn sealed_records(data: &[u8]) {
    use std::io::{Read, Write};
    use xl_plugin::seal::{Key, SealedReader, SealedWriter};
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let key = Key::from_bytes(SEAL_KEY);
    let mut r = SealedReader::new(wire, &key);
    let mut got = Vec::new();
    let mut buf = vec![0u8; usize::from(step) * 97 + 1];
    let failed = loop {
        match r.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                let _ = e.to_string();
                break e.kind() == std::io::ErrorKind::InvalidData;
            }
        }
    };
    if failed {
        assert!(r.read(&mut buf).is_err(), "a failed stream read on");
    }
    if !got.is_empty() {
        // Records cut at the writer's size: re-seal what opened and it
        // must be a prefix of the input.
        let mut w = SealedWriter::new(Vec::new(), &key);
        let mut again = Vec::new();
        let mut at = 0;
        let mut pos = 0usize;
        while at < got.len() {
            let len = u32::from_le_bytes(wire[pos..pos + 4].try_into().expect("4 bytes"));
            let n = usize::try_from(len).expect("fits");
            w.write_all(&got[at..at + n]).expect("to memory");
            at += n;
            pos += 4 + n + 16;
        }
        again.extend_from_slice(w.get_ref());
        assert_eq!(&wire[..again.len()], &again[..], "a record does not re-seal");
    }
}
