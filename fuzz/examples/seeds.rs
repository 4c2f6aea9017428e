//! Writes the seed corpus `fuzz/corpus/<target>/` from real streams.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds [-- OUT_DIR]`
//!
//! Runs the engine's source and destination (`postcopy::source::run_source`,
//! `postcopy::destination::run_destination`) on the in-memory backends of
//! `postcopy::testmem` (the `test-util` feature, enabled in this crate's
//! dev-dependencies) over `postcopy::transport::unix_pair()`, as
//! `postcopy/tests/engine.rs` does, with a vCPU faulting on the destination,
//! and records all three byte streams: the bulk stream, the fault replies
//! (source → destination) and the fault channel (destination → source).
//! The streams are cut into seeds of a few records (each window after the
//! first begins with the stream's BEGIN, so a reader without a guest size
//! still gets past it). RECOVER seeds are the received set of a stream cut
//! part-way, as a reconnecting destination would send it. The other
//! targets get hand-made valid inputs (strategy names, sizes, traces from
//! the simulator's encoder, local mode's hellos).
//!
//! Inputs are named by content hash, so rerunning adds rather than
//! duplicates; the corpus is small (a few hundred KB).

#![allow(clippy::unwrap_used, reason = "a generator: fail loudly")]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postcopy::destination::{run_destination, DestConfig, GuestResume};
use postcopy::error::HookError;
use postcopy::memory::{runs_from_sorted, PfnRun};
use postcopy::metrics::Metrics;
use postcopy::prepage::StrategySpec;
use postcopy::records::{parse_header, Record, RecordReader, RecordType, RecordWriter};
use postcopy::source::{run_source, GuestControl, Mode, SourceConfig};
use postcopy::testmem::{MemDestination, MemSource};
use postcopy::transport::unix_pair;
use postcopy_sim::trace::{Access, Trace};
use xen_postcopy_fuzz::MODEL_GUEST_PFNS;

/// Bytes of one stream seed, at most (a window ends at a record boundary).
const MAX_SEED: usize = 20 * 1024;

#[derive(Clone, Default)]
struct Tap(Arc<Mutex<Vec<u8>>>);

struct TeeWriter {
    inner: Box<dyn Write + Send>,
    tap: Tap,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tap.0.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn tee(inner: Box<dyn Write + Send>) -> (Box<dyn Write + Send>, Tap) {
    let tap = Tap::default();
    (
        Box::new(TeeWriter {
            inner,
            tap: tap.clone(),
        }),
        tap,
    )
}

struct Guest;
impl GuestControl for Guest {
    fn stop(&mut self) -> Result<Vec<u8>, HookError> {
        Ok(b"rip=0xffff8000;rsp=0x1000".to_vec())
    }
    fn resume(&mut self) -> Result<(), HookError> {
        Ok(())
    }
}

struct Resume(Arc<AtomicBool>);
impl GuestResume for Resume {
    fn resume(&mut self, _state: &[u8]) -> Result<(), HookError> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct Streams {
    bulk: Vec<u8>,
    replies: Vec<u8>,
    faults: Vec<u8>,
}

/// One real migration of a `n`-page guest whose every fifth page is a hole
/// (the fuzz models' owed set), with a vCPU touching `touches`.
fn migrate(n: u64, spec: StrategySpec, mode: Mode, touches: Vec<u64>, seed: u64) -> Streams {
    let mut src = MemSource::new(n, |p, page| {
        if (p + seed) % 9 == 2 {
            return; // all zero: sent as ZERO
        }
        let mut x = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        for chunk in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
    });
    for p in (0..n).filter(|p| p % 5 == 4) {
        src.unpopulate(p);
    }
    let dst = Arc::new(MemDestination::new(n));
    let (mut s_links, mut d_links) = unix_pair().unwrap();
    let (bulk, bulk_tap) = tee(s_links.bulk);
    s_links.bulk = bulk;
    let (replies, replies_tap) = tee(s_links.fault_tx);
    s_links.fault_tx = replies;
    let (faults, faults_tap) = tee(d_links.fault_tx);
    d_links.fault_tx = faults;
    let go = Arc::new(AtomicBool::new(false));
    let cfg = SourceConfig {
        strategy: spec,
        mode,
        batch_pages: 2,
        idle_flush: Duration::from_millis(30),
        ..SourceConfig::default()
    };
    std::thread::scope(|s| {
        let vcpu = {
            let dst = dst.clone();
            let go = go.clone();
            s.spawn(move || {
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for p in touches {
                    dst.touch(p % n);
                }
            })
        };
        let d = s.spawn(|| {
            let m = Metrics::new();
            run_destination(
                &*dst,
                d_links,
                &DestConfig::default(),
                &mut Resume(go.clone()),
                &m,
            )
        });
        let m = Metrics::new();
        run_source(&mut src, s_links, &cfg, &mut Guest, &m).unwrap();
        d.join().unwrap().unwrap();
        vcpu.join().unwrap();
    });
    let take = |t: Tap| std::mem::take(&mut *t.0.lock().unwrap());
    Streams {
        bulk: take(bulk_tap),
        replies: take(replies_tap),
        faults: take(faults_tap),
    }
}

/// Splits a stream into its records' byte ranges.
fn records_of(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= stream.len() {
        let hdr: [u8; 8] = stream[at..at + 8].try_into().unwrap();
        let (_, len) = parse_header(&hdr).unwrap();
        let end = at + 8 + len.div_ceil(8) * 8;
        out.push(&stream[at..end]);
        at = end;
    }
    assert_eq!(at, stream.len(), "stream ends inside a record");
    out
}

/// Windows of consecutive records, each at most MAX_SEED bytes, each after
/// the first prefixed by `prefix` (the stream's BEGIN).
fn windows(recs: &[&[u8]], prefix: &[u8], every: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut kept = 0;
    for (i, r) in recs.iter().enumerate() {
        if !cur.is_empty() && cur.len() + r.len() > MAX_SEED {
            if kept % every == 0 {
                out.push(std::mem::take(&mut cur));
            }
            kept += 1;
            cur.clear();
        }
        if cur.is_empty() && i > 0 {
            cur.extend_from_slice(prefix);
        }
        if cur.len() + r.len() <= MAX_SEED {
            cur.extend_from_slice(r);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The recovery handshake (RECOVER runs, then an empty RECOVER) for the
/// pages received in the first `cut` records of
/// `bulk`.
fn recover_seed(bulk: &[u8], cut: usize) -> Vec<u8> {
    let mut got = vec![false; usize::try_from(MODEL_GUEST_PFNS).unwrap()];
    let mut r = RecordReader::new(bulk, None);
    for _ in 0..cut {
        match r.next_record() {
            Ok(Record::PageData { pfns, .. } | Record::Zero(pfns)) => {
                for p in pfns {
                    got[usize::try_from(p).unwrap()] = true;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let runs = runs_from_sorted(
        got.iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| i as u64),
    );
    // The handshake: RECOVER records of the received runs, then an empty one.
    let mut out = Vec::new();
    let mut w = RecordWriter::new(&mut out);
    w.runs(RecordType::Recover, &runs).unwrap();
    w.runs(RecordType::Recover, &[]).unwrap();
    out
}

fn save(dir: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let h = fnv1a(bytes);
    std::fs::write(dir.join(format!("{h:016x}")), bytes).unwrap();
}

/// FNV-1a: a stable name for an input.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn hello(channel: u32, flags: u32, pages: u64, session: u64) -> Vec<u8> {
    let mut v = b"XPCLINK1".to_vec();
    v.extend_from_slice(&channel.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&pages.to_le_bytes());
    v.extend_from_slice(&session.to_le_bytes());
    v
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let n = MODEL_GUEST_PFNS;
    let runs: Vec<(StrategySpec, Mode, Vec<u64>)> = vec![
        (
            StrategySpec::Bubble,
            Mode::Postcopy,
            (0..40).map(|i| i * 37 % n).collect(),
        ),
        (
            StrategySpec::None,
            Mode::Postcopy,
            (0..60).map(|i| (i * 11 + 5) % n).collect(),
        ),
        (
            StrategySpec::Linear,
            Mode::Hybrid { rounds: 1 },
            vec![200, 3, 150, 77, 9],
        ),
        (
            StrategySpec::MultiPivot(3),
            Mode::Postcopy,
            (0..30).map(|i| (255 - i * 8) % n).collect(),
        ),
        (StrategySpec::History, Mode::Postcopy, (0..20).collect()),
    ];
    let mut count = 0usize;
    for (i, (spec, mode, touches)) in runs.into_iter().enumerate() {
        let s = migrate(n, spec, mode, touches, i as u64);
        let bulk = records_of(&s.bulk);
        let begin = bulk[0];
        for w in windows(&bulk, begin, 6) {
            save(&out.join("records"), &w);
            count += 1;
        }
        for w in windows(&records_of(&s.replies), &[], 4) {
            save(&out.join("records"), &w);
            count += 1;
        }
        save(&out.join("records"), &s.faults);
        save(&out.join("fault_channel"), &s.faults);
        save(&out.join("recovery"), &s.faults);
        for cut in [3, 20, 60] {
            save(&out.join("recovery"), &recover_seed(&s.bulk, cut));
        }
        count += 6;
    }
    // A whole stream of a tiny guest, BEGIN to COMPLETE, plus its channel.
    let s = migrate(
        6,
        StrategySpec::Bubble,
        Mode::Hybrid { rounds: 1 },
        vec![1, 5, 2],
        9,
    );
    save(&out.join("records"), &s.bulk);
    save(&out.join("records"), &s.replies);
    save(&out.join("fault_channel"), &s.faults);

    for s in [
        "none",
        "linear",
        "bubble",
        "bubble-forward",
        "multi-pivot",
        "multi-pivot:7",
        "multi-pivot:64",
        "history",
        "multi-pivot:0",
        "1G",
        "256m",
        "8192",
        "64K",
        "4T",
    ] {
        save(&out.join("strategy"), s.as_bytes());
    }
    for spec in StrategySpec::ALL {
        let (id, arg) = spec.wire_id();
        let mut v = id.to_le_bytes().to_vec();
        v.extend_from_slice(&arg.to_le_bytes());
        save(&out.join("strategy"), &v);
    }

    let accesses = |pfns: &[u64]| -> Vec<Access> {
        pfns.iter()
            .enumerate()
            .map(|(i, &pfn)| Access {
                pfn,
                write: i % 3 == 0,
            })
            .collect()
    };
    let seq: Vec<u64> = (0..64).collect();
    let scattered: Vec<u64> = (0..48).map(|i| i * 97 % 4096).collect();
    for (g, ns, looping, pfns) in [
        (64, 0, false, &seq[..]),
        (4096, 250, true, &scattered[..]),
        (1, 10, false, &[0u64][..]),
    ] {
        let t = Trace::new(g, ns, looping, accesses(pfns)).unwrap();
        save(&out.join("trace"), &t.encode());
    }

    let mut pair = hello(0, 0, 256, 0x1234_5678_9abc_def0);
    pair.extend_from_slice(&hello(1, 0, 256, 0x1234_5678_9abc_def0));
    save(&out.join("link_hello"), &pair);
    let mut pair = hello(0, 0, 1 << 28, 7);
    pair.extend_from_slice(&hello(1, 0, 1 << 28, 7));
    save(&out.join("link_hello"), &pair);
    save(&out.join("link_hello"), &hello(0, 0, 1, 1));
    save(
        &out.join("link_hello"),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345",
    );
    {
        use xl_plugin::tunnel::frame::{encode, Frame};
        use xl_plugin::tunnel::hello::{Hello, FLAG_RESUME, MAGIC, VERSION};
        use zerocopy::IntoBytes;
        for (flags, received) in [(0, 0), (FLAG_RESUME, 1 << 20)] {
            let h = Hello {
                magic: MAGIC,
                version: VERSION.into(),
                flags: flags.into(),
                session: 0x5eed_u64.into(),
                received: received.into(),
            };
            let mut v = h.as_bytes().to_vec();
            let page = [0xa5u8; 512];
            encode(
                &Frame::Data {
                    offset: received,
                    bytes: &page,
                },
                &mut v,
            );
            encode(&Frame::Ack(4096), &mut v);
            encode(&Frame::Ping, &mut v);
            encode(&Frame::Fin(received + 512), &mut v);
            save(&out.join("tunnel_frames"), &v);
        }
    }
    {
        // Sealed streams under the target's key: one record, a few, a
        // full-size one; the first byte picks the read size.
        use std::io::Write;
        use xl_plugin::seal::{Key, SealedWriter, MAX_RECORD};
        let key = Key::from_bytes(xen_postcopy_fuzz::SEAL_KEY);
        for parts in [vec![vec![7u8; 100]], vec![b"abc".to_vec(), vec![1; 4096], b"z".to_vec()]] {
            let mut w = SealedWriter::new(vec![3u8], &key);
            for p in &parts {
                w.write_all(p).unwrap();
            }
            save(&out.join("sealed_records"), w.get_ref());
        }
        let mut w = SealedWriter::new(vec![200u8], &key);
        w.write_all(&vec![9u8; MAX_RECORD]).unwrap();
        save(&out.join("sealed_records"), w.get_ref());
    }
    {
        // Owed-set files as a destination writes them at the switch.
        use postcopy::takeover::OwedSet;
        for (guest_pfns, acks, runs) in [
            (256, true, vec![(0, 3), (10, 90), (200, 56)]),
            (5, false, vec![]),
            (1 << 20, false, vec![(1, 1), (4096, 65536)]),
        ] {
            let set = OwedSet {
                guest_pfns,
                acks,
                runs: runs
                    .into_iter()
                    .map(|(start, count)| PfnRun { start, count })
                    .collect(),
            };
            save(&out.join("owed_set"), &set.encode());
        }
    }
    println!("{count}+ stream seeds written under {}", out.display());
}
