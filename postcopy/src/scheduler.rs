//! The source's decision of what to send next, with no I/O.
//!
//! One [`Scheduler`] per migration owns the [`SentMap`] and the pre-pager.
//! Fault requests and pushes both claim pages through it, so each owed page
//! is sent exactly once whichever path gets there first, and a requested
//! page that is still unsent is always the next page out: [`Scheduler::request`]
//! queues it ahead of anything the pre-pager would pick, and
//! [`Scheduler::next_send`] drains that queue first. The threaded source
//! ([`crate::source`]) holds it behind one mutex; the simulator drives it
//! directly.

use std::collections::VecDeque;

use crate::memory::PfnRun;
use crate::prepage::Prepager;
use crate::records::Cause;
use crate::sentmap::{SentMap, SentMapError};
use crate::Pfn;

/// What became of a fault request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The page was owed and unsent: it is now queued as urgent (and
    /// claimed, so the pre-pager will not send it too).
    Queued,
    /// The page was already sent (it is in flight or was lost in a
    /// reconnect); nothing to do here.
    AlreadySent,
    /// The page was never owed (unpopulated, or outside the guest).
    NotOwed,
}

/// Owed pages, who claimed them, and what goes next.
#[derive(Debug)]
pub struct Scheduler {
    sent: SentMap,
    owed: u64,
    /// Pages that were owed when serving began (never cleared).
    owed_map: bitvec::vec::BitVec,
    prepager: Box<dyn Prepager>,
    urgent: VecDeque<Pfn>,
}

impl Scheduler {
    /// A scheduler for a guest of `guest_pfns` pfns owing `owed`.
    pub fn new(
        guest_pfns: u64,
        owed: &[PfnRun],
        prepager: Box<dyn Prepager>,
    ) -> Result<Scheduler, SentMapError> {
        let sent = SentMap::with_owed(guest_pfns, owed)?;
        let owed_map = crate::memory::runs_to_bits(guest_pfns, owed);
        Ok(Scheduler {
            owed: sent.undone(),
            sent,
            owed_map,
            prepager,
            urgent: VecDeque::new(),
        })
    }

    /// Pages owed when serving began.
    pub fn owed(&self) -> u64 {
        self.owed
    }

    /// Owed pages not yet claimed by either path.
    pub fn unsent(&self) -> u64 {
        self.sent.undone()
    }

    /// True if `pfn` was owed when serving began.
    pub fn is_owed(&self, pfn: Pfn) -> bool {
        usize::try_from(pfn)
            .ok()
            .and_then(|i| self.owed_map.get(i).map(|b| *b))
            .unwrap_or(false)
    }

    /// True if `pfn` is owed and was claimed by either path (sent, or in
    /// flight when a link broke).
    pub fn is_claimed(&self, pfn: Pfn) -> bool {
        self.is_owed(pfn) && self.sent.is_done(pfn)
    }

    /// The guest faulted on `pfn` and the destination asked for it. Moves
    /// the pre-pager's pivot; claims and queues the page if unsent.
    pub fn request(&mut self, pfn: Pfn) -> Request {
        if !self.is_owed(pfn) {
            return Request::NotOwed;
        }
        self.prepager.on_fault(pfn);
        if self.sent.mark_done(pfn) {
            self.urgent.push_back(pfn);
            Request::Queued
        } else {
            Request::AlreadySent
        }
    }

    /// Takes the queued fault pages (already claimed).
    pub fn take_urgent(&mut self) -> Option<Pfn> {
        self.urgent.pop_front()
    }

    /// Claims the pre-pager's next page.
    pub fn next_push(&mut self) -> Option<Pfn> {
        let p = self.prepager.next_page(&mut self.sent)?;
        let fresh = self.sent.mark_done(p);
        debug_assert!(fresh, "pre-pager offered done page {p}");
        Some(p)
    }

    /// The next page to send and why: queued faults first, then a push.
    pub fn next_send(&mut self) -> Option<(Pfn, Cause)> {
        if let Some(p) = self.take_urgent() {
            return Some((p, Cause::Fault));
        }
        self.next_push().map(|p| (p, Cause::Push))
    }

    /// Claims the lowest unsent page (the residual flush of `none`).
    pub fn next_linear(&mut self) -> Option<Pfn> {
        let p = self.sent.next_undone(0)?;
        self.sent.mark_done(p);
        Some(p)
    }
}

/// How the source pushes between fault replies: one policy for the
/// engine's local mode, the Xen glue and the simulator, each configuring
/// it through its session. Fault replies always go first (the caller
/// serves queued faults before asking for a batch); a push is a batch of
/// up to `batch_pages` pre-pager picks; a demand-only pre-pager
/// (`--prepage=none`) offers nothing, so the rest is flushed in pfn order
/// once no fault has come for `idle_flush` (or, on a guest that never
/// stops faulting, once `residual_after` has passed); and COMPLETE counts every page
/// sent after the switch, resends included ([`PushPolicy::complete_count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushPolicy {
    /// Most pages per pushed PAGE_DATA record (clamped to 1..=1024).
    pub batch_pages: usize,
    /// Quiet time after the last fault before the residual flush.
    pub idle_flush: std::time::Duration,
    /// Longest the push leaves the residue to demand paging: past this
    /// much serving time the residual flush starts even while faults keep
    /// coming, so a busy guest never needs its source for ever
    /// (`--prepage=none`; the other pre-pagers never idle).
    pub residual_after: std::time::Duration,
    /// Cap on the push's bandwidth in bytes/s of page data (`None`: as
    /// fast as the link takes it). Fault replies are exempt: a vCPU
    /// waiting on a page never waits for the cap ([`Pacer`]).
    pub max_bandwidth: Option<u64>,
    /// Bound on the push's bytes in flight: forward-stream bytes written
    /// since serving began that the destination has not yet acknowledged
    /// consuming (its ACK records, asked for in BEGIN). A batch that
    /// would pass it waits (`None`: the link's buffers are the only
    /// bound). Fault replies never wait, and with replies in-band they
    /// queue behind at most this much push: their latency is bounded by
    /// the window, not by how much the pipe, the ssh or tunnel socket
    /// buffers hold ([`PushPolicy::may_push`]).
    pub window: Option<u64>,
    /// Longest the push waits for the destination's RESUMED before its
    /// first batch (`None`: it starts at once). While the guest is still
    /// paused on the destination nothing can fault, and the destination's
    /// toolstack is attaching the guest's devices (hotplug scripts,
    /// backends), which the push would compete with for dom0's CPUs: every
    /// page pushed then is paid in downtime. Pages lost at a break are
    /// resent at once all the same.
    pub hold_until_resumed: Option<std::time::Duration>,
    /// The nice value of the source's fault server, so that it runs as
    /// soon as a request arrives instead of after the push's time slice
    /// (`None`: the process's; [`crate::precedence`]).
    pub fault_nice: Option<i32>,
}

/// What the push should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStep {
    /// A batch was claimed into the caller's buffer: send it.
    Batch,
    /// Nothing to push before the idle flush, which is due in this long
    /// (demand paging: wait for faults meanwhile).
    Idle(std::time::Duration),
    /// Every owed page is claimed: send COMPLETE.
    Done,
}

/// Pages per pushed record on the Xen path ([`PushPolicy::XEN`]).
pub const XEN_BATCH: usize = 64;

/// The Xen path's push window when one is asked for
/// (`LIBXL_POSTCOPY_PUSH_WINDOW=on`): two push batches of [`XEN_BATCH`]
/// pages with their headers, so one is installed while the next is on its
/// way and a fault reply in-band waits behind at most these two.
pub const XEN_WINDOW: u64 = 2 * (XEN_BATCH as u64 * (crate::PAGE_SIZE as u64 + 8) + 16);

/// The Xen path's [`PushPolicy::hold_until_resumed`] when one is asked for
/// (`LIBXL_POSTCOPY_PUSH_HOLD=on`): device attach on a busy dom0 took
/// 7–34 s on the emulated hosts, and a destination whose toolstack never
/// unpauses the guest must not keep the source for ever.
pub const XEN_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// Default [`PushPolicy::residual_after`]: a few seconds of pure demand
/// paging, then the residue goes in pfn order.
pub const DEFAULT_RESIDUAL_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl PushPolicy {
    /// Local mode (sockets): 64-page batches.
    pub const LOCAL: PushPolicy = PushPolicy {
        batch_pages: 64,
        idle_flush: std::time::Duration::from_millis(500),
        residual_after: DEFAULT_RESIDUAL_AFTER,
        max_bandwidth: None,
        window: None,
        // The destination resumes the guest at once.
        hold_until_resumed: None,
        fault_nice: Some(crate::precedence::FAULT_NICE),
    };

    /// The Xen path: 64-page records. The destination loads a record
    /// with one batch hypercall and the stopped source reads through kept
    /// mappings, so a record's cost is mostly per page; on the emulated
    /// host (`scripts/testbed batch-compare`, fault lane on, 2026-12-07)
    /// 16, 64 and 256 pages a record took 78.0 / 29.9 / 27.5 s in total,
    /// 1033 / 3865 / 5306 pages/s paged in, fault p50 7.1 / 10.6 / 16.5 ms
    /// and the guest's longest stall 5.6 / 3.8 / 5.2 s: 64 is the best
    /// stall and close to the best total. (16 was chosen when a page cost
    /// a hypercall and in-band replies waited behind whole batches.)
    pub const XEN: PushPolicy = PushPolicy {
        batch_pages: XEN_BATCH,
        idle_flush: std::time::Duration::from_millis(500),
        residual_after: DEFAULT_RESIDUAL_AFTER,
        max_bandwidth: None,
        // Off by default: measured again on the steadier testbed
        // (`lane-compare`, one emulated CPU, 2026-12-07) the window did not
        // cut the fault latency over xl's pipe (p50 9.4 ms against 9.3 ms
        // in-band) and doubled the time through the tunnel (135 s against
        // 62 s); the helper turns it on with LIBXL_POSTCOPY_PUSH_WINDOW.
        window: None,
        // Off by default: on the one-CPU emulated host with a PV disk
        // (`scripts/testbed hold-compare`, 2026-12-07) holding the push
        // until RESUMED halved the downtime (7.8 against 14.4 s: the
        // destination's device attach no longer shares dom0's CPU with the
        // push) but the migration took 122 s against 36 s, since the pages
        // then came while the guest ran and shared that CPU; without
        // devices it made no difference (the guest resumed within 0.6 s).
        // On hosts whose dom0 has CPUs to spare the push costs the attach
        // little, and pages pushed while the guest is paused are faults it
        // never takes.
        hold_until_resumed: None,
        fault_nice: Some(crate::precedence::FAULT_NICE),
    };

    /// True if a push batch of `bytes` may go now, with `in_flight` bytes
    /// written and not yet acknowledged: always without a window; with
    /// one, if the batch fits, or if nothing is in flight (a batch larger
    /// than the window still goes, alone).
    pub fn may_push(&self, in_flight: u64, bytes: u64) -> bool {
        match self.window {
            None => true,
            Some(w) => in_flight == 0 || in_flight.saturating_add(bytes) <= w,
        }
    }

    /// The batch size actually used.
    pub fn batch(&self) -> usize {
        self.batch_pages.clamp(1, crate::records::MAX_BATCH_PAGES)
    }

    /// Claims the next push batch into `out` (cleared first). `quiet` is
    /// the time since the last fault request, `served` the time since
    /// serving began.
    pub fn next_batch(
        &self,
        sched: &mut Scheduler,
        quiet: std::time::Duration,
        served: std::time::Duration,
        out: &mut Vec<Pfn>,
    ) -> PushStep {
        let batch = self.batch();
        out.clear();
        while out.len() < batch {
            match sched.next_push() {
                Some(p) => out.push(p),
                None => break,
            }
        }
        if out.is_empty() && sched.unsent() > 0 {
            if quiet < self.idle_flush && served < self.residual_after {
                return PushStep::Idle((self.idle_flush - quiet).min(self.residual_after - served));
            }
            while out.len() < batch {
                match sched.next_linear() {
                    Some(p) => out.push(p),
                    None => break,
                }
            }
        }
        if out.is_empty() {
            PushStep::Done
        } else {
            PushStep::Batch
        }
    }

    /// The count COMPLETE carries: every page sent after the switch
    /// (pushed, faulted, zero and resent).
    pub fn complete_count(m: &crate::metrics::EngineReport) -> u64 {
        m.pages_pushed + m.pages_faulted + m.pages_zero + m.pages_resent
    }
}

/// Parses a push bandwidth cap: bytes per second with an optional K, M or
/// G suffix (binary: `50M` is 50 MiB/s), at least one page a second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(not_a_rate(s)),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    match num
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
    {
        Some(r) if r >= crate::PAGE_SIZE as u64 => Ok(r),
        Some(_) => Err(format!("{s:?}: at least 4K per second")),
        None => Err(not_a_rate(s)),
    }
}

fn not_a_rate(s: &str) -> String {
    format!("{s:?} is not a rate (bytes per second, with an optional K, M or G suffix)")
}

/// Paces the push to a bandwidth cap: the bytes pushed since the start
/// may not run ahead of `rate × elapsed` by more than one burst (so the
/// first batch goes at once and the average holds over any longer span).
/// The push asks [`Pacer::wait`] before claiming a batch, so pages it has
/// not claimed stay free for fault replies, which bypass the pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    burst: u64,
    start: std::time::Instant,
    sent: u64,
}

impl Pacer {
    /// A pacer at `rate` bytes/s (at least 1), allowing `burst` bytes
    /// ahead.
    pub fn new(rate: u64, burst: u64) -> Pacer {
        Pacer {
            rate: rate.max(1),
            burst,
            start: std::time::Instant::now(),
            sent: 0,
        }
    }

    /// The pacer of `policy`, if it has a cap (a burst of one batch).
    pub fn for_policy(policy: &PushPolicy) -> Option<Pacer> {
        policy
            .max_bandwidth
            .map(|r| Pacer::new(r, (policy.batch() * crate::PAGE_SIZE) as u64))
    }

    /// Counts `bytes` pushed.
    pub fn sent(&mut self, bytes: u64) {
        self.sent = self.sent.saturating_add(bytes);
    }

    /// How long to wait before pushing more, `at` this instant (zero: go).
    pub fn wait(&self, at: std::time::Instant) -> std::time::Duration {
        let allowed = self.sent.saturating_sub(self.burst);
        let due = std::time::Duration::from_secs_f64(allowed as f64 / self.rate as f64);
        let elapsed = at.saturating_duration_since(self.start);
        due.saturating_sub(elapsed)
    }
}

impl Default for PushPolicy {
    fn default() -> Self {
        PushPolicy::LOCAL
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
    use crate::prepage::StrategySpec;
    use proptest::prelude::*;

    #[test]
    fn demand_paging_gives_way_to_the_residual_flush_in_bounded_time() {
        use std::time::Duration;
        let mut s = Scheduler::new(100, &all(100), StrategySpec::None.build(Vec::new())).unwrap();
        let p = PushPolicy::LOCAL;
        let mut out = Vec::new();
        // Faults keep coming (quiet 0): wait, but never past residual_after.
        let step = p.next_batch(&mut s, Duration::ZERO, Duration::from_secs(1), &mut out);
        assert_eq!(step, PushStep::Idle(p.idle_flush));
        let step = p.next_batch(
            &mut s,
            Duration::ZERO,
            p.residual_after - Duration::from_millis(100),
            &mut out,
        );
        assert_eq!(step, PushStep::Idle(Duration::from_millis(100)));
        let step = p.next_batch(&mut s, Duration::ZERO, p.residual_after, &mut out);
        assert_eq!(step, PushStep::Batch);
        assert_eq!(out, (0..64).collect::<Vec<_>>());
        // A quiet guest flushes earlier, as before.
        let mut s = Scheduler::new(100, &all(100), StrategySpec::None.build(Vec::new())).unwrap();
        let step = p.next_batch(&mut s, p.idle_flush, Duration::ZERO, &mut out);
        assert_eq!(step, PushStep::Batch);
    }

    #[test]
    fn rates_parse_with_binary_suffixes() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("8k"), Ok(8192));
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("5X").is_err());
        assert!(parse_rate("M").is_err());
        assert!(parse_rate("99999999999999G").is_err());
    }

    #[test]
    fn the_pacer_holds_the_average_and_lets_a_burst_go() {
        let mut p = Pacer::new(1_000_000, 4096);
        let t0 = p.start;
        assert!(p.wait(t0).is_zero(), "the first batch goes at once");
        p.sent(4096);
        assert!(p.wait(t0).is_zero(), "within the burst");
        p.sent(1_000_000);
        // 1 MB over the burst at 1 MB/s: due at 1 s.
        let w = p.wait(t0);
        assert!(
            w > std::time::Duration::from_millis(990) && w <= std::time::Duration::from_secs(1),
            "{w:?}"
        );
        assert!(
            p.wait(t0 + std::time::Duration::from_millis(600))
                <= std::time::Duration::from_millis(400)
        );
        assert!(p.wait(t0 + std::time::Duration::from_secs(2)).is_zero());
        assert!(Pacer::for_policy(&PushPolicy::LOCAL).is_none());
    }

    fn all(n: u64) -> Vec<PfnRun> {
        vec![PfnRun { start: 0, count: n }]
    }

    #[test]
    fn a_requested_unsent_page_is_next_out() {
        let mut s = Scheduler::new(100, &all(100), StrategySpec::Linear.build(Vec::new())).unwrap();
        assert_eq!(s.next_send(), Some((0, Cause::Push)));
        assert_eq!(s.request(42), Request::Queued);
        assert_eq!(s.next_send(), Some((42, Cause::Fault)));
        assert_eq!(s.request(0), Request::AlreadySent);
        assert_eq!(s.request(42), Request::AlreadySent);
        assert_eq!(s.next_send(), Some((1, Cause::Push)));
    }

    #[test]
    fn unowed_pages_are_never_sent() {
        let owed = [PfnRun { start: 2, count: 2 }, PfnRun { start: 8, count: 1 }];
        let mut s = Scheduler::new(10, &owed, StrategySpec::Bubble.build(Vec::new())).unwrap();
        assert_eq!(s.owed(), 3);
        assert_eq!(s.request(5), Request::NotOwed);
        assert_eq!(s.request(1000), Request::NotOwed);
        let mut got = Vec::new();
        while let Some((p, _)) = s.next_send() {
            got.push(p);
        }
        got.sort_unstable();
        assert_eq!(got, vec![2, 3, 8]);
    }

    fn strategy() -> impl Strategy<Value = StrategySpec> {
        prop_oneof![
            Just(StrategySpec::None),
            Just(StrategySpec::Linear),
            Just(StrategySpec::Bubble),
            Just(StrategySpec::BubbleForward),
            (1u32..=16).prop_map(StrategySpec::MultiPivot),
            Just(StrategySpec::History),
        ]
    }

    proptest! {
        /// For every strategy and any interleaving of faults and pushes:
        /// every owed page goes out exactly once, nothing else goes out,
        /// and an unsent faulted page is the very next page sent.
        #[test]
        fn every_owed_page_exactly_once(
            spec in strategy(),
            n in 1u64..400,
            holes in proptest::collection::vec(0u64..400, 0..50),
            events in proptest::collection::vec((any::<bool>(), 0u64..400), 0..600),
            history in proptest::collection::vec(0u64..400, 0..30),
        ) {
            let owed_pfns: Vec<u64> = (0..n).filter(|p| !holes.contains(p)).collect();
            let owed = crate::memory::runs_from_sorted(owed_pfns.iter().copied());
            let history = history.into_iter().filter(|&p| p < n).collect();
            let mut s = Scheduler::new(n, &owed, spec.build(history)).unwrap();
            let mut seen = vec![0u32; n as usize];
            let send = |s: &mut Scheduler, seen: &mut Vec<u32>| -> Option<Pfn> {
                let (p, _) = s.next_send()?;
                seen[p as usize] += 1;
                Some(p)
            };
            for (is_fault, pfn) in events {
                if is_fault {
                    let pfn = pfn % (n + 5);
                    let was_unsent = pfn < n && s.is_owed(pfn) && seen[pfn as usize] == 0;
                    let r = s.request(pfn);
                    if was_unsent {
                        prop_assert_eq!(r, Request::Queued);
                        prop_assert_eq!(send(&mut s, &mut seen), Some(pfn));
                    } else {
                        prop_assert_ne!(r, Request::Queued);
                    }
                } else {
                    send(&mut s, &mut seen);
                }
            }
            while send(&mut s, &mut seen).is_some() {}
            while let Some(p) = s.next_linear() {
                seen[p as usize] += 1;
            }
            for p in 0..n {
                let want = u32::from(owed_pfns.contains(&p));
                prop_assert_eq!(seen[p as usize], want, "pfn {}", p);
            }
            prop_assert_eq!(s.unsent(), 0);
        }
    }
}
