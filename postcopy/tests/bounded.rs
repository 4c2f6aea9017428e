//! Hostile peers: a destination that floods fault requests is disconnected
//! with an error (not served forever), a recovery handshake that claims
//! pages never sent is refused, and oversized records are rejected before
//! anything is allocated for them.

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
    assert!(
        matches!(&err.error, Error::Protocol(m) if m.contains("never sent")),
        "{}",
        err.error
    );
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
