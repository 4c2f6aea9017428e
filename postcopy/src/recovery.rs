//! Surviving a broken link after the switch.
//!
//! After TRANSITION the guest's memory lives on two hosts, so a lost
//! connection must not lose the guest (QEMU's `postcopy-paused` state,
//! DESIGN.md §2). When either channel breaks, each side closes both of its
//! links and keeps its state: the destination its received-map and the
//! faults it has asked for (vCPUs touching absent pages simply wait), the
//! source its [`Scheduler`](crate::scheduler::Scheduler) (sent-map and
//! pre-pager). The caller's [`Recovery::reconnect`] hook is then called,
//! with backoff, until it returns fresh links or [`Recovery::timeout`]
//! passes. On the fresh links:
//!
//! ```text
//! destination                                   source
//!   RECOVER(received runs) … RECOVER(empty) ──►   received-map
//!                                                 resend = sent ∧ ¬received
//!             ◄── PAGE_DATA(Resend)  (bulk, ahead of any push)
//!   FAULT(every still-pending pfn) ──────────►   (served first, as always)
//! ```
//!
//! A peer that breaks the protocol after the switch (a malformed or
//! unexpected record, a page never owed or sent twice, a fault flood) is
//! treated the same way: the link is dropped and recovered, at most
//! [`MAX_PEER_FAULTS`] times per migration, since bytes corrupted on their
//! way must not lose the guest.
//!
//! The runs go in records of at most [`MAX_RUNS`]; an empty RECOVER ends
//! the list. Pages sent but never received (in flight when the link broke)
//! are resent exactly once; pages never sent stay with the pre-pager. When
//! the timeout expires the migration fails loudly with the number of pages
//! the guest can no longer get ([`Error::LinkLost`]).
//!
//! Which side dials is the caller's choice: in local mode the receiver
//! keeps listening and the sender dials again; the Xen glue can do
//! whatever its channel allows.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use log::{debug, warn};

use crate::error::Error;
use crate::memory::PfnRun;
use crate::records::{Record, RecordError, RecordReader, RecordType, RecordWriter, MAX_RUNS};
use crate::transport::Closer;

/// How one side re-establishes its links after they break post-switch.
pub struct Recovery<'a, L> {
    /// Longest one outage may last before the migration fails.
    pub timeout: Duration,
    /// One attempt to get fresh links; must not block past the deadline
    /// it is given. Called again (with backoff) after an error.
    pub reconnect: &'a mut dyn FnMut(Instant) -> io::Result<L>,
}

impl<L> std::fmt::Debug for Recovery<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Most protocol errors ([`Error::is_peer_fault`]) one migration
/// recovers from: a stream corrupted on its way is worth a new connection,
/// a peer that breaks the protocol on every connection is not.
pub const MAX_PEER_FAULTS: u32 = 4;

/// First wait between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Calls the reconnect hook with exponential backoff until it succeeds or
/// the deadline passes. Returns the links, or the last error's text.
pub(crate) fn reconnect<L>(r: &mut Recovery<'_, L>, deadline: Instant) -> Result<L, String> {
    let mut wait = BACKOFF_MIN;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match (r.reconnect)(deadline) {
            Ok(l) => {
                debug!("reconnected after {attempts} attempt(s)");
                return Ok(l);
            }
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("{attempts} reconnect attempts, the last: {err}"));
        }
        if attempts == 1 || attempts.is_multiple_of(20) {
            warn!("reconnect attempt {attempts} failed: {err}; retrying");
        }
        std::thread::sleep(wait.min(deadline - now));
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

/// The set bits of `bits` as ascending runs.
pub(crate) fn runs_of(bits: &BitVec) -> Vec<PfnRun> {
    let mut runs = Vec::new();
    let mut ones = bits.iter_ones().peekable();
    while let Some(start) = ones.next() {
        let mut end = start + 1;
        while ones.peek() == Some(&end) {
            ones.next();
            end += 1;
        }
        runs.push(PfnRun {
            start: start as u64,
            count: (end - start) as u64,
        });
    }
    runs
}

/// Sends the received-map as RECOVER records, ending with an empty one.
pub(crate) fn write_received<W: Write>(
    w: &mut RecordWriter<W>,
    received: &BitVec,
) -> Result<(), Error> {
    for runs in runs_of(received).chunks(MAX_RUNS) {
        w.runs(RecordType::Recover, runs)?;
    }
    w.runs(RecordType::Recover, &[])?;
    w.flush()?;
    Ok(())
}

/// Reads RECOVER records up to the empty one into a fresh map of `n`
/// pfns. Runs may not overlap, and the list cannot be longer than a guest
/// of `n` pfns allows (so a peer cannot keep the source reading forever).
pub(crate) fn read_received<R: Read>(r: &mut RecordReader<R>, n: u64) -> Result<BitVec, Error> {
    let len = usize::try_from(n).unwrap_or(0);
    let mut got: BitVec = BitVec::repeat(false, len);
    // Disjoint non-empty runs: at most n of them.
    let mut budget = n;
    loop {
        let runs = match r.next_record()? {
            Record::Recover(runs) => runs,
            // The link broke between READY and TRANSITION: the guest
            // never resumed there.
            Record::Abort(reason) => return Err(Error::PeerAborted(reason)),
            other => {
                return Err(RecordError::Unexpected {
                    name: other.rtype().name(),
                    state: "during the recovery handshake (expected POSTCOPY_RECOVER)",
                }
                .into())
            }
        };
        if runs.is_empty() {
            return Ok(got);
        }
        for run in &runs {
            budget = budget.checked_sub(1).ok_or_else(|| {
                Error::Protocol(
                    "recovery handshake lists more runs than the guest has pages".into(),
                )
            })?;
            for p in run.pfns() {
                let i = usize::try_from(p).unwrap_or(usize::MAX);
                match got.get_mut(i) {
                    Some(mut b) if !*b => *b = true,
                    _ => {
                        return Err(RecordError::DuplicatePfn {
                            name: RecordType::Recover.name(),
                            pfn: p,
                        }
                        .into())
                    }
                }
            }
        }
    }
}

/// Closes the links at the deadline unless disarmed first: bounds a
/// handshake read on a peer that connects and then says nothing.
#[derive(Debug)]
pub(crate) struct Watchdog {
    armed: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn new(closer: Closer, deadline: Instant) -> Watchdog {
        let armed = Arc::new(AtomicBool::new(true));
        let fired = Arc::new(AtomicBool::new(false));
        let (flag, bit) = (Arc::clone(&armed), Arc::clone(&fired));
        let thread = std::thread::Builder::new()
            .name("pc-watchdog".into())
            .spawn(move || {
                while flag.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= deadline {
                        bit.store(true, Ordering::SeqCst);
                        closer();
                        return;
                    }
                    std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
                }
            })
            .ok();
        Watchdog {
            armed,
            fired,
            thread,
        }
    }

    /// True once the deadline passed and the links were closed.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.armed.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    reason = "tests on small known values"
)]
mod tests {
    use super::*;

    #[test]
    fn received_map_round_trips_in_many_records() {
        let n = 3 * MAX_RUNS as u64 * 2 + 10;
        let mut bits: BitVec = BitVec::repeat(false, n as usize);
        // Every other page: n/2 runs, more than one record's worth.
        for i in (0..n as usize).step_by(2) {
            bits.set(i, true);
        }
        let mut w = RecordWriter::new(Vec::new());
        write_received(&mut w, &bits).unwrap();
        let bytes = std::mem::take(w.get_mut());
        let mut r = RecordReader::new(&bytes[..], Some(n));
        assert_eq!(read_received(&mut r, n).unwrap(), bits);

        let empty: BitVec = BitVec::repeat(false, 5);
        let mut w = RecordWriter::new(Vec::new());
        write_received(&mut w, &empty).unwrap();
        let bytes = std::mem::take(w.get_mut());
        let mut r = RecordReader::new(&bytes[..], Some(5));
        assert_eq!(read_received(&mut r, 5).unwrap(), empty);
    }

    #[test]
    fn overlapping_runs_are_rejected() {
        let mut w = RecordWriter::new(Vec::new());
        w.runs(
            RecordType::Recover,
            &[PfnRun { start: 0, count: 3 }, PfnRun { start: 2, count: 1 }],
        )
        .unwrap();
        w.runs(RecordType::Recover, &[]).unwrap();
        let bytes = std::mem::take(w.get_mut());
        let mut r = RecordReader::new(&bytes[..], Some(8));
        assert!(read_received(&mut r, 8).is_err());
    }

    #[test]
    fn backoff_gives_up_at_the_deadline() {
        let mut calls = 0;
        let mut hook = |_: Instant| -> io::Result<()> {
            calls += 1;
            Err(io::Error::other("nobody home"))
        };
        let mut r = Recovery {
            timeout: Duration::from_millis(100),
            reconnect: &mut hook,
        };
        let t = Instant::now();
        let e = reconnect(&mut r, t + Duration::from_millis(100)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(e.contains("nobody home"), "{e}");
        assert!(calls >= 3, "{calls}");
    }
}
