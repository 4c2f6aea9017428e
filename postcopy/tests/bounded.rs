//! Hostile peers: a destination that floods fault requests is disconnected
//! with an error (not served forever), one that takes the whole push and
//! never confirms it is left after the READY bound, a recovery handshake that claims
//! pages never sent is refused, a source that breaks the protocol after
//! the switch costs a recovery (and the rejected record is not taken as
//! received), and oversized records are rejected before anything is
//! allocated for them.

#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly on any error; small known values"
)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use postcopy::error::HookError;
use postcopy::memory::PfnRun;
use postcopy::metrics::Metrics;
use postcopy::records::{Record, RecordError, RecordReader, RecordType, RecordWriter};
use postcopy::recovery::Recovery;
use postcopy::source::{run_source, run_source_recoverable, GuestControl, SourceConfig};
use postcopy::testmem::MemSource;
use postcopy::transport::{unix_pair, DestLinks, SourceLinks};
use postcopy::Error;

mod common;
use common::Limit;

struct Guest;

impl GuestControl for Guest {
    fn stop(&mut self) -> Result<Vec<u8>, HookError> {
        Ok(b"regs".to_vec())
    }
    fn resume(&mut self) -> Result<(), HookError> {
        Ok(())
    }
}

fn image(n: u64) -> MemSource {
    MemSource::new(n, |p, page| page.fill(p as u8 | 1))
}

/// Plays the destination up to the switch: READY, TRANSITION, RESUMED.
/// Returns the fault-channel writer and the closer; a thread drains
/// everything else.
fn fake_destination_switch(
    d: DestLinks,
    n: u64,
) -> (
    RecordWriter<Box<dyn Write + Send>>,
    postcopy::transport::Closer,
) {
    let DestLinks {
        bulk,
        fault_rx,
        fault_tx,
        closer,
    } = d;
    let mut tx = RecordWriter::new(fault_tx);
    let mut bulk = RecordReader::new(bulk, Some(n));
    loop {
        match bulk.next_record().unwrap() {
            Record::VcpuState(_) => break,
            _ => continue,
        }
    }
    tx.empty(RecordType::Ready).unwrap();
    tx.flush().unwrap();
    assert!(matches!(bulk.next_record().unwrap(), Record::Transition));
    tx.count(RecordType::Resumed, 1).unwrap();
    tx.flush().unwrap();
    // Drain both incoming channels so the source never blocks on us.
    std::thread::spawn(move || {
        let mut b = bulk;
        while b.next_record().is_ok() {}
    });
    std::thread::spawn(move || {
        let mut r = fault_rx;
        let mut sink = vec![0u8; 1 << 16];
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
    });
    (tx, closer)
}

#[test]
fn a_fault_flood_is_disconnected_with_an_error() {
    let _limit = Limit::secs(60, "a_fault_flood_is_disconnected_with_an_error");
    let n = 64;
    let mut mem = image(n);
    let (s, d) = unix_pair().unwrap();
    let flooder = std::thread::spawn(move || {
        let (mut tx, _closer) = fake_destination_switch(d, n);
        let all: Vec<u64> = (0..n).collect();
        // Every page, again and again: after the first round each request
        // is for a page already sent.
        for _ in 0..1000 {
            if tx.pfn_list(RecordType::Fault, &all).is_err() || tx.flush().is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    let cfg = SourceConfig {
        // Demand only: the pushes would otherwise race the flood.
        strategy: postcopy::prepage::StrategySpec::None,
        idle_flush: Duration::from_secs(60),
        ..SourceConfig::default()
    };
    let err = run_source(&mut mem, s, &cfg, &mut Guest, &Metrics::new()).unwrap_err();
    flooder.join().unwrap();
    assert!(err.after_switch);
    assert!(matches!(err.error, Error::Flood(_)), "{}", err.error);
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_destination_that_never_confirms_the_push_does_not_keep_the_source() {
    let _limit = Limit::secs(
        60,
        "a_destination_that_never_confirms_the_push_does_not_keep_the_source",
    );
    let n = 64;
    let mut mem = image(n);
    let (s, d) = unix_pair().unwrap();
    // Takes every page and keeps its sockets open, but never says COMPLETE.
    let silent = std::thread::spawn(move || {
        let (tx, _closer) = fake_destination_switch(d, n);
        std::thread::sleep(Duration::from_secs(12));
        drop(tx);
    });
    let t = Instant::now();
    let cfg = SourceConfig {
        ready_timeout: Duration::from_millis(500),
        ..SourceConfig::default()
    };
    let err = run_source(&mut mem, s, &cfg, &mut Guest, &Metrics::new()).unwrap_err();
    assert!(err.after_switch, "{}", err.error);
    assert!(err.error.is_recoverable(), "a closed link: {}", err.error);
    // the READY bound, not the silent destination's 12 s
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    silent.join().unwrap();
}

#[test]
fn a_handshake_claiming_unsent_pages_is_refused() {
    let _limit = Limit::secs(60, "a_handshake_claiming_unsent_pages_is_refused");
    let n = 64;
    let mut mem = image(n);
    let (s, d) = unix_pair().unwrap();
    let (to_src, from_test) = std::sync::mpsc::channel::<SourceLinks>();
    let liar = std::thread::spawn(move || {
        let (tx, closer) = fake_destination_switch(d, n);
        drop(tx);
        closer();
        // Break the link; then reconnect claiming to hold everything.
        let (s2, d2) = unix_pair().unwrap();
        to_src.send(s2).unwrap();
        let mut w = RecordWriter::new(d2.fault_tx);
        w.runs(RecordType::Recover, &[PfnRun { start: 0, count: n }])
            .unwrap();
        w.runs(RecordType::Recover, &[]).unwrap();
        w.flush().unwrap();
        // Keep the links open until the source has decided.
        std::thread::sleep(Duration::from_millis(500));
        drop(d2.bulk);
    });
    let mut hook = |_: Instant| -> std::io::Result<SourceLinks> {
        from_test
            .recv_timeout(Duration::from_secs(2))
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let cfg = SourceConfig {
        strategy: postcopy::prepage::StrategySpec::None,
        idle_flush: Duration::from_secs(60),
        ..SourceConfig::default()
    };
    let err = run_source_recoverable(
        &mut mem,
        s,
        &cfg,
        &mut Guest,
        &Metrics::new(),
        Some(Recovery {
            timeout: Duration::from_secs(5),
            reconnect: &mut hook,
        }),
    )
    .unwrap_err();
    liar.join().unwrap();
    assert!(err.after_switch);
    // A lying handshake is a failed attempt (nothing is resent on its
    // word): tried again until the recovery window closes, then the count
    // of pages not confirmed, all of them.
    assert!(
        matches!(&err.error, Error::LinkLost { missing, .. } if *missing == n),
        "{}",
        err.error
    );
    assert_eq!(err.unconfirmed, n);
}

#[test]
fn oversized_records_are_rejected_before_allocation() {
    let _limit = Limit::secs(60, "oversized_records_are_rejected_before_allocation");
    for rtype in [0x14u32, 0x16, 0x17, 0x1c] {
        let mut raw = Vec::new();
        raw.extend_from_slice(&rtype.to_le_bytes());
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = RecordReader::new(&raw[..], Some(16));
        assert!(
            matches!(r.next_record(), Err(RecordError::TooLong { .. })),
            "type {rtype:#x}"
        );
    }
}

/// A source that sends a record naming an owed page and a page never owed,
/// after the switch: the destination rejects the whole record, drops the
/// link and recovers; its RECOVER list does not claim the owed page of
/// the rejected record, so the source resends it, and the migration
/// completes with every page in place.
#[test]
fn a_bad_record_after_the_switch_is_recovered_and_nothing_of_it_kept() {
    use postcopy::destination::{run_destination_recoverable, DestConfig};
    use postcopy::records::{BeginBody, Cause, STREAM_VERSION};
    use postcopy::testmem::MemDestination;

    let _limit = Limit::secs(60, "a_bad_record_after_the_switch_is_recovered");
    let n = 16u64;
    let owed = PfnRun { start: 0, count: 4 };
    let page = |p: u64| vec![p as u8 | 0x40; postcopy::PAGE_SIZE];
    let (s, d) = unix_pair().unwrap();
    let (to_dest, from_source) = std::sync::mpsc::channel::<DestLinks>();
    let mem = MemDestination::new(n);
    let source = std::thread::spawn(move || {
        let SourceLinks {
            bulk,
            fault_rx,
            fault_tx: _keep,
            closer: _c,
        } = s;
        let mut w = RecordWriter::new(bulk);
        w.begin(&BeginBody {
            version: STREAM_VERSION.into(),
            flags: 0.into(),
            strategy: 0.into(),
            strategy_arg: 0.into(),
            guest_pfns: n.into(),
            populated_pages: n.into(),
        })
        .unwrap();
        w.runs(RecordType::Pfns, &[owed]).unwrap();
        w.vcpu_state(b"regs").unwrap();
        w.flush().unwrap();
        let mut back = RecordReader::new(fault_rx, Some(n));
        assert!(matches!(back.next_record().unwrap(), Record::Ready));
        w.empty(RecordType::Transition).unwrap();
        // pfn 1 is owed, pfn 9 is not: the record is bad as a whole.
        let data = [page(1), page(9)].concat();
        w.page_data(Cause::Push, &[1, 9], &data).unwrap();
        w.flush().unwrap();
        // The destination drops the link; the source comes back.
        let (s2, d2) = unix_pair().unwrap();
        to_dest.send(d2).unwrap();
        let SourceLinks {
            bulk,
            fault_rx,
            fault_tx,
            closer: _c2,
        } = s2;
        let mut back = RecordReader::new(fault_rx, Some(n));
        let mut held = Vec::new();
        loop {
            match back.next_record().unwrap() {
                Record::Recover(runs) if runs.is_empty() => break,
                Record::Recover(runs) => held.extend(runs),
                other => panic!("expected RECOVER, got {:?}", other.rtype()),
            }
        }
        assert!(held.is_empty(), "the rejected record was kept: {held:?}");
        let mut w = RecordWriter::new(bulk);
        let pfns: Vec<u64> = owed.pfns().collect();
        let data: Vec<u8> = pfns.iter().flat_map(|&p| page(p)).collect();
        w.page_data(Cause::Push, &pfns, &data).unwrap();
        w.count(RecordType::Complete, 4).unwrap();
        w.flush().unwrap();
        loop {
            match back.next_record().unwrap() {
                Record::Complete(got) => {
                    assert_eq!(got, 4);
                    break;
                }
                _ => continue,
            }
        }
        let mut ack = RecordWriter::new(fault_tx);
        ack.count(RecordType::Complete, 4).unwrap();
        ack.flush().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let mut hook = |deadline: Instant| -> std::io::Result<DestLinks> {
        let wait = deadline.saturating_duration_since(Instant::now());
        from_source
            .recv_timeout(wait.min(Duration::from_millis(200)))
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    struct Resume;
    impl postcopy::destination::GuestResume for Resume {
        fn resume(&mut self, _: &[u8]) -> Result<(), HookError> {
            Ok(())
        }
    }
    let metrics = Metrics::new();
    let out = run_destination_recoverable(
        &mem,
        d,
        &DestConfig::default(),
        &mut Resume,
        &metrics,
        Some(Recovery {
            timeout: Duration::from_secs(10),
            reconnect: &mut hook,
        }),
    );
    source.join().unwrap();
    let out = out.unwrap_or_else(|f| panic!("{}", f.error));
    assert_eq!(out.owed, 4);
    assert_eq!(metrics.snapshot().outages, 1);
    let image = mem.image();
    for p in 0..4u64 {
        let at = p as usize * postcopy::PAGE_SIZE;
        assert_eq!(image[at..at + postcopy::PAGE_SIZE], page(p)[..], "pfn {p}");
    }
}
