//! Migration metrics: lock-free counters, the fault latency histogram, and
//! the report (a human table and JSON).
//!
//! Names follow QEMU's `query-migrate` where the concept matches
//! (`total_time_ms`, `downtime_ms`, `pages_transferred`...). Page counts are
//! broken down by cause; `pages_duplicate` must always be 0.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::memory::FaultOrigin;
use serde::{Deserialize, Serialize};

/// Counters shared by the threads of one side of a migration.
#[derive(Debug)]
pub struct Metrics {
    /// Pages sent by the pre-pager after the switch.
    pub pages_pushed: AtomicU64,
    /// Pages sent in reply to a fault request.
    pub pages_faulted: AtomicU64,
    /// Pages sent in pre-copy rounds (and the final stop-and-copy).
    pub pages_precopy: AtomicU64,
    /// Pages resent after a reconnect.
    pub pages_resent: AtomicU64,
    /// Pages sent as ZERO records (no data).
    pub pages_zero: AtomicU64,
    /// Populated-looking pfns skipped as unpopulated (ballooned/free).
    pub pages_skipped: AtomicU64,
    /// Pages received or sent more than once (must stay 0).
    pub pages_duplicate: AtomicU64,
    /// Guest accesses to absent owed pages (destination) / fault requests
    /// received (source).
    pub network_faults: AtomicU64,
    /// Faults on pages already pushed and in flight: the push won the race.
    pub faults_in_flight: AtomicU64,
    /// Faults on unowed pages, served locally with a zero page.
    pub faults_local_zero: AtomicU64,
    /// Bytes written to the peer, all channels, framing included.
    pub bytes_sent: AtomicU64,
    /// Bytes read from the peer, all channels, framing included.
    pub bytes_received: AtomicU64,
    /// Pre-copy rounds run.
    pub precopy_rounds: AtomicU64,
    /// Guest stopped → guest resumed, in microseconds (0 = not yet).
    pub downtime_us: AtomicU64,
    /// Start → complete, in microseconds.
    pub total_time_us: AtomicU64,
    /// Switch → complete, in microseconds.
    pub postcopy_time_us: AtomicU64,
    /// Connection outages survived.
    pub outages: AtomicU64,
    /// Time spent disconnected, in microseconds.
    pub outage_us: AtomicU64,
    /// Pages owed at the switch (a gauge for the status).
    owed_pages: AtomicU64,
    /// Owed pages sent (source) or installed (destination) so far.
    owed_done: AtomicU64,
    /// Sum of the fault service latencies, in microseconds.
    fault_block_us: AtomicU64,
    /// The same sum per origin (vCPU, foreign), in microseconds, and the
    /// number of faults it sums.
    block_by_origin: Mutex<BTreeMap<FaultOrigin, (u64, u64)>>,
    /// When the push claimed each batch, µs since serving began (the
    /// first [`PUSH_LOG`]); `None`: not recorded.
    push_log: Mutex<Option<Vec<u64>>>,
    /// Whether `push_log` records: checked before its lock, so the push's
    /// hot path takes no lock when nobody asked for the log.
    push_log_on: AtomicBool,
    fault_latency: Mutex<Histogram<u64>>,
    /// Time spent in each [`Part`], in nanoseconds.
    part_ns: [AtomicU64; Part::ALL.len()],
    /// The installing thread's CPU time inside [`Part::Install`], in
    /// nanoseconds: the rest of that part's wall time the thread waited
    /// for a CPU (other threads, other domains' vCPUs on the same CPU).
    install_cpu_ns: AtomicU64,
}

/// A duration in whole nanoseconds (saturating).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A part of the post-copy phase that a side's threads spend time in,
/// timed per record or batch (never per page) by the engine, so a report
/// shows where the time goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Destination: inside the read system calls of the record reader,
    /// i.e. waiting for bytes on the wire plus the kernel's copy out of
    /// the socket.
    Wire,
    /// Destination: parsing and checking a record once its bytes are in.
    Decode,
    /// Destination: the backend's install of a batch (UFFDIO_COPY, a
    /// hypercall), net of [`Part::Hash`].
    Install,
    /// Destination: hashing installed pages for the integrity check, done
    /// inside the install call by the adapter and reported by it.
    Hash,
    /// Destination: the received-map, pending faults and progress
    /// bookkeeping around each install.
    Bookkeeping,
    /// Source: copying pages out of guest memory.
    ReadGuest,
    /// Source: the zero-page check and building the record.
    Encode,
    /// Source: writing records to the socket (includes waiting for room).
    Send,
    /// Source: choosing the next push batch (the pre-pager, under its lock).
    Schedule,
    /// Source: the push giving way to outstanding fault replies.
    Yield,
    /// Source: the push sleeping with nothing to send (bandwidth cap,
    /// pre-pager idle).
    Idle,
    /// Source: the push waiting for the destination to consume what is in
    /// flight ([`crate::scheduler::PushPolicy::window`]).
    Window,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Part; 12] = [
        Part::Wire,
        Part::Decode,
        Part::Install,
        Part::Hash,
        Part::Bookkeeping,
        Part::ReadGuest,
        Part::Encode,
        Part::Send,
        Part::Schedule,
        Part::Yield,
        Part::Idle,
        Part::Window,
    ];

    /// The report key.
    pub fn name(self) -> &'static str {
        match self {
            Part::Wire => "wire",
            Part::Decode => "decode",
            Part::Install => "install",
            Part::Hash => "hash",
            Part::Bookkeeping => "bookkeeping",
            Part::ReadGuest => "read_guest",
            Part::Encode => "encode",
            Part::Send => "send",
            Part::Schedule => "schedule",
            Part::Yield => "yield",
            Part::Idle => "idle",
            Part::Window => "window",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Push batches logged at most (8 bytes each).
pub const PUSH_LOG: usize = 1 << 16;

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Metrics {
        Metrics {
            pages_pushed: AtomicU64::new(0),
            pages_faulted: AtomicU64::new(0),
            pages_precopy: AtomicU64::new(0),
            pages_resent: AtomicU64::new(0),
            pages_zero: AtomicU64::new(0),
            pages_skipped: AtomicU64::new(0),
            pages_duplicate: AtomicU64::new(0),
            network_faults: AtomicU64::new(0),
            faults_in_flight: AtomicU64::new(0),
            faults_local_zero: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            precopy_rounds: AtomicU64::new(0),
            downtime_us: AtomicU64::new(0),
            total_time_us: AtomicU64::new(0),
            postcopy_time_us: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            outage_us: AtomicU64::new(0),
            owed_pages: AtomicU64::new(0),
            owed_done: AtomicU64::new(0),
            fault_block_us: AtomicU64::new(0),
            block_by_origin: Mutex::new(BTreeMap::new()),
            push_log: Mutex::new(None),
            push_log_on: AtomicBool::new(false),
            // 1 µs .. 100 s at 3 significant digits; the bounds are valid
            // constants, so construction cannot fail.
            fault_latency: Mutex::new(
                Histogram::new_with_bounds(1, 100_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            ),
            part_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            install_cpu_ns: AtomicU64::new(0),
        }
    }

    /// The calling thread's CPU time so far (its thread clock, which Linux
    /// always has).
    pub fn thread_cpu_now() -> Duration {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }

    /// Adds CPU time spent inside installs ([`Metrics::install_cpu_ns`]).
    pub fn add_install_cpu(&self, d: Duration) {
        self.install_cpu_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records one fault's service latency.
    pub fn record_fault_latency(&self, d: Duration) {
        let v = us(d).clamp(1, 100_000_000);
        self.fault_block_us.fetch_add(us(d), Ordering::Relaxed);
        if let Ok(mut h) = self.fault_latency.lock() {
            // In range by the clamp above.
            let _ = h.record(v);
        }
    }

    /// From now on, records when the push claims each batch (local mode's
    /// calibration: the push's own schedule on a busy host).
    pub fn record_push_log(&self) {
        if let Ok(mut c) = self.push_log.lock() {
            c.get_or_insert_with(Vec::new);
            self.push_log_on.store(true, Ordering::Release);
        }
    }

    /// The push claimed a batch `at` after serving began (kept only when
    /// recording, the first [`PUSH_LOG`]).
    pub fn note_push(&self, at: Duration) {
        if !self.push_log_on.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut c) = self.push_log.lock() {
            if let Some(v) = c.as_mut().filter(|v| v.len() < PUSH_LOG) {
                v.push(us(at));
            }
        }
    }

    /// Sets the owed-page gauges: `done` of `owed` pages sent or installed.
    pub fn set_owed_progress(&self, owed: u64, done: u64) {
        self.owed_pages.store(owed, Ordering::Relaxed);
        self.owed_done.store(done, Ordering::Relaxed);
    }

    /// The owed-page gauges: (owed, done).
    pub fn owed_progress(&self) -> (u64, u64) {
        (
            self.owed_pages.load(Ordering::Relaxed),
            self.owed_done.load(Ordering::Relaxed),
        )
    }

    /// Adds `d` to the time `origin` waited on absent pages (one fault
    /// served over the network).
    pub fn record_block(&self, origin: FaultOrigin, d: Duration) {
        if let Ok(mut m) = self.block_by_origin.lock() {
            let e = m.entry(origin).or_insert((0, 0));
            e.0 += us(d);
            e.1 += 1;
        }
    }

    /// Faults served over the network per origin, keyed `vcpu0`, ...,
    /// `foreign` (a dom0 backend or the device model).
    pub fn faults_by_origin(&self) -> BTreeMap<String, u64> {
        self.block_by_origin
            .lock()
            .map(|m| m.iter().map(|(o, &(_, n))| (o.to_string(), n)).collect())
            .unwrap_or_default()
    }

    /// Time each origin waited on absent pages, in ms, keyed `vcpu0`,
    /// `vcpu1`, ..., `foreign` (QEMU's per-vCPU postcopy blocktime).
    pub fn blocktime_by_origin(&self) -> BTreeMap<String, f64> {
        self.block_by_origin
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(o, &(v, _))| (o.to_string(), v as f64 / 1000.0))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Time spent waiting on faults, summed over faults, in ms.
    pub fn blocktime_ms(&self) -> u64 {
        self.fault_block_us.load(Ordering::Relaxed) / 1000
    }

    /// Adds `d` to the time spent in `part`.
    pub fn add_time(&self, part: Part, d: Duration) {
        self.part_ns[part as usize].fetch_add(nanos(d), Ordering::Relaxed);
    }

    /// Runs `f`, adding its duration to `part`.
    pub fn timed<T>(&self, part: Part, f: impl FnOnce() -> T) -> T {
        let t0 = std::time::Instant::now();
        let out = f();
        self.add_time(part, t0.elapsed());
        out
    }

    /// Time per part in ms (parts never timed are left out), with
    /// `install` net of `hash` (which the adapter times inside it) and
    /// `other` = the post-copy phase minus the destination's parts (the
    /// time its threads spent outside every timed part: scheduling
    /// waits, wake-ups, the fault forwarder's polls).
    pub fn breakdown_ms(&self) -> BTreeMap<String, f64> {
        let ns = |p: Part| self.part_ns[p as usize].load(Ordering::Relaxed);
        let mut out = BTreeMap::new();
        for p in Part::ALL {
            let mut v = ns(p);
            if p == Part::Install {
                v = v.saturating_sub(ns(Part::Hash));
            }
            if v > 0 {
                out.insert(p.name().to_string(), v as f64 / 1e6);
            }
        }
        let dest: u64 = [Part::Wire, Part::Decode, Part::Install, Part::Bookkeeping]
            .iter()
            .map(|&p| ns(p))
            .sum();
        let phase_ns = self.postcopy_time_us.load(Ordering::Relaxed) * 1000;
        if dest > 0 && phase_ns > 0 {
            out.insert("other".into(), phase_ns.saturating_sub(dest) as f64 / 1e6);
        }
        out
    }

    /// Sets a duration gauge.
    pub fn set_duration(gauge: &AtomicU64, d: Duration) {
        gauge.store(us(d), Ordering::Relaxed);
    }

    /// A copy of the fault latency histogram.
    pub fn fault_histogram(&self) -> Option<Histogram<u64>> {
        self.fault_latency.lock().ok().map(|h| h.clone())
    }

    /// The engine's part of the report.
    pub fn snapshot(&self) -> EngineReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let lat = self
            .fault_histogram()
            .map(|h| LatencySummary::from_histogram(&h))
            .unwrap_or_default();
        let pushed = get(&self.pages_pushed);
        let faulted = get(&self.pages_faulted);
        let precopy = get(&self.pages_precopy);
        let resent = get(&self.pages_resent);
        let zero = get(&self.pages_zero);
        EngineReport {
            total_time_ms: get(&self.total_time_us) as f64 / 1000.0,
            downtime_ms: get(&self.downtime_us) as f64 / 1000.0,
            postcopy_time_ms: get(&self.postcopy_time_us) as f64 / 1000.0,
            pages_transferred: pushed + faulted + precopy + resent + zero,
            pages_pushed: pushed,
            pages_faulted: faulted,
            pages_precopy: precopy,
            pages_resent: resent,
            pages_zero: zero,
            pages_skipped: get(&self.pages_skipped),
            pages_duplicate: get(&self.pages_duplicate),
            network_faults: get(&self.network_faults),
            faults_in_flight: get(&self.faults_in_flight),
            faults_local_zero: get(&self.faults_local_zero),
            precopy_rounds: get(&self.precopy_rounds),
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            outages: get(&self.outages),
            outage_ms: get(&self.outage_us) as f64 / 1000.0,
            fault_latency_us: lat,
            blocktime_ms: self.blocktime_by_origin(),
            faults_by_origin: self.faults_by_origin(),
            breakdown_ms: self.breakdown_ms(),
            install_cpu_ms: self.install_cpu_ns.load(Ordering::Relaxed) as f64 / 1e6,
            push_log_us: self
                .push_log
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_default(),
        }
    }
}

/// Adds the time from its creation to its drop to a [`Part`].
#[derive(Debug)]
pub struct PartTimer<'m> {
    metrics: &'m Metrics,
    part: Part,
    start: std::time::Instant,
}

impl<'m> PartTimer<'m> {
    /// Starts timing `part`.
    pub fn new(metrics: &'m Metrics, part: Part) -> PartTimer<'m> {
        PartTimer {
            metrics,
            part,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for PartTimer<'_> {
    fn drop(&mut self) {
        self.metrics.add_time(self.part, self.start.elapsed());
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl LatencySummary {
    /// Summarises a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// The engine's metrics of one migration, as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Start of migration to complete.
    pub total_time_ms: f64,
    /// Guest stopped on the source to running on the destination.
    pub downtime_ms: f64,
    /// Switch to complete.
    pub postcopy_time_ms: f64,
    /// All pages sent: pushed + faulted + pre-copy + resent + zero.
    pub pages_transferred: u64,
    /// Pages pushed by the pre-pager.
    pub pages_pushed: u64,
    /// Pages sent as fault replies.
    pub pages_faulted: u64,
    /// Pages sent before the switch.
    pub pages_precopy: u64,
    /// Pages resent after reconnects.
    pub pages_resent: u64,
    /// Pages sent as zero (no data).
    pub pages_zero: u64,
    /// Pages never sent because unpopulated (ballooned/free).
    pub pages_skipped: u64,
    /// Pages delivered twice (must be 0).
    pub pages_duplicate: u64,
    /// Faults that needed the network.
    pub network_faults: u64,
    /// Faults whose page was already pushed and in flight.
    pub faults_in_flight: u64,
    /// Faults on unowed pages, served with a local zero page.
    pub faults_local_zero: u64,
    /// Pre-copy rounds.
    pub precopy_rounds: u64,
    /// Bytes written to the peer.
    pub bytes_sent: u64,
    /// Bytes read from the peer.
    pub bytes_received: u64,
    /// Connection outages survived.
    pub outages: u64,
    /// Time disconnected.
    pub outage_ms: f64,
    /// Fault service latency (fault seen → page installed).
    pub fault_latency_us: LatencySummary,
    /// Time spent waiting on absent pages per origin (`vcpu0`, ...,
    /// `foreign`), in ms (destination only).
    #[serde(default)]
    pub blocktime_ms: BTreeMap<String, f64>,
    /// Faults served over the network per origin (`vcpu0`, ...,
    /// `foreign`: guest vCPU vs dom0 backend) (destination only).
    #[serde(default)]
    pub faults_by_origin: BTreeMap<String, u64>,
    /// Time per [`Part`] of the post-copy phase, in ms, from the engine's
    /// own timers (see [`Metrics::breakdown_ms`]); parts never timed are
    /// absent.
    #[serde(default)]
    pub breakdown_ms: BTreeMap<String, f64>,
    /// The installing thread's CPU time inside `install` and `hash`, in ms
    /// (destination; zero when nothing was installed): inside those parts,
    /// not beside them. The rest of their wall time it waited for a CPU.
    #[serde(default)]
    pub install_cpu_ms: f64,
    /// When the push claimed each batch, µs since serving began (source,
    /// only when asked for: [`Metrics::record_push_log`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_log_us: Vec<u64>,
}

impl fmt::Display for EngineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, String); 14] = [
            (
                "total time",
                // The Xen helpers see only their share of a migration
                // (xl times the whole): unset there, not zero.
                if self.total_time_ms > 0.0 {
                    format!("{:.1} ms", self.total_time_ms)
                } else {
                    "not timed by this side".to_owned()
                },
            ),
            ("downtime", format!("{:.3} ms", self.downtime_ms)),
            (
                "post-copy phase",
                format!("{:.1} ms", self.postcopy_time_ms),
            ),
            (
                "pages transferred",
                format!(
                    "{} (pushed {}, faulted {}, pre-copy {}, resent {}, zero {})",
                    self.pages_transferred,
                    self.pages_pushed,
                    self.pages_faulted,
                    self.pages_precopy,
                    self.pages_resent,
                    self.pages_zero
                ),
            ),
            ("pages skipped (free)", self.pages_skipped.to_string()),
            ("duplicate pages", self.pages_duplicate.to_string()),
            ("network faults", self.network_faults.to_string()),
            ("faults met by push", self.faults_in_flight.to_string()),
            ("local zero faults", self.faults_local_zero.to_string()),
            ("pre-copy rounds", self.precopy_rounds.to_string()),
            (
                "fault latency",
                format!(
                    "p50 {} us, p90 {} us, p99 {} us, max {} us (n={})",
                    self.fault_latency_us.p50,
                    self.fault_latency_us.p90,
                    self.fault_latency_us.p99,
                    self.fault_latency_us.max,
                    self.fault_latency_us.count
                ),
            ),
            ("bytes sent", self.bytes_sent.to_string()),
            ("bytes received", self.bytes_received.to_string()),
            (
                "outages",
                format!("{} ({:.1} ms)", self.outages, self.outage_ms),
            ),
        ];
        for (k, v) in rows {
            writeln!(f, "  {k:<22} {v}")?;
        }
        let per_origin = [
            (
                "blocktime",
                self.blocktime_ms
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1} ms"))
                    .collect::<Vec<_>>(),
            ),
            (
                "faults by origin",
                self.faults_by_origin
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect(),
            ),
        ];
        for (k, per) in per_origin.iter().filter(|(_, per)| !per.is_empty()) {
            writeln!(f, "  {k:<22} {}", per.join(", "))?;
        }
        if !self.breakdown_ms.is_empty() {
            let per: Vec<String> = Part::ALL
                .iter()
                .map(|p| p.name())
                .chain(["other"])
                .filter_map(|k| self.breakdown_ms.get(k).map(|v| format!("{k} {v:.1} ms")))
                .collect();
            writeln!(f, "  {:<22} {}", "time by part", per.join(", "))?;
        }
        let cpu = self.install_cpu_ms;
        if let Some(install) = self
            .breakdown_ms
            .get(Part::Install.name())
            .filter(|_| cpu > 0.0)
        {
            // The CPU time covers the adapter's hashing inside the call.
            let all = install + self.breakdown_ms.get(Part::Hash.name()).unwrap_or(&0.0);
            writeln!(
                f,
                "  {:<22} {cpu:.1} of {all:.1} ms on the CPU (the rest waiting for one)",
                "install on CPU"
            )?;
        }
        Ok(())
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

    #[test]
    fn snapshot_adds_up_and_serializes() {
        let m = Metrics::new();
        Metrics::add(&m.pages_pushed, 10);
        Metrics::add(&m.pages_faulted, 3);
        Metrics::add(&m.pages_zero, 2);
        for v in [5, 10, 20, 1000] {
            m.record_fault_latency(Duration::from_micros(v));
        }
        let r = m.snapshot();
        assert_eq!(r.pages_transferred, 15);
        assert_eq!(r.fault_latency_us.count, 4);
        assert_eq!(r.fault_latency_us.max, 1000);
        assert!(r.fault_latency_us.p50 >= 10 && r.fault_latency_us.p50 <= 20);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pages_transferred"], 15);
        assert!(json["fault_latency_us"]["p99"].is_u64());
        assert!(r.to_string().contains("pushed 10, faulted 3"));
    }

    #[test]
    fn blocktime_and_faults_are_kept_per_origin() {
        let m = Metrics::new();
        m.record_block(FaultOrigin::Vcpu(1), Duration::from_millis(3));
        m.record_block(FaultOrigin::Vcpu(1), Duration::from_millis(2));
        m.record_block(FaultOrigin::Foreign, Duration::from_micros(1500));
        let r = m.snapshot();
        assert_eq!(r.blocktime_ms["vcpu1"], 5.0);
        assert_eq!(r.blocktime_ms["foreign"], 1.5);
        assert_eq!(r.faults_by_origin["vcpu1"], 2);
        assert_eq!(r.faults_by_origin["foreign"], 1);
        assert!(!r.faults_by_origin.contains_key("vcpu0"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["faults_by_origin"]["foreign"], 1);
        let text = r.to_string();
        assert!(
            text.contains("faults by origin       foreign 1, vcpu1 2"),
            "{text}"
        );
        assert!(
            text.contains("blocktime              foreign 1.5 ms, vcpu1 5.0 ms"),
            "{text}"
        );
    }

    #[test]
    fn breakdown_nets_hash_out_of_install_and_leaves_the_rest_as_other() {
        let m = Metrics::new();
        assert!(m.breakdown_ms().is_empty());
        Metrics::set_duration(&m.postcopy_time_us, Duration::from_millis(100));
        m.add_time(Part::Wire, Duration::from_millis(30));
        m.add_time(Part::Install, Duration::from_millis(50));
        m.add_time(Part::Hash, Duration::from_millis(20));
        let v = m.timed(Part::Send, || 7);
        assert_eq!(v, 7);
        let b = m.snapshot().breakdown_ms;
        assert_eq!(b["wire"], 30.0);
        assert_eq!(b["install"], 30.0);
        assert_eq!(b["hash"], 20.0);
        assert_eq!(b["other"], 20.0);
        assert!(b.contains_key("send") && !b.contains_key("decode"));
        assert!(m.snapshot().to_string().contains("time by part"));
        assert_eq!(m.snapshot().install_cpu_ms, 0.0, "no CPU time counted yet");
    }

    #[test]
    fn install_cpu_time_is_counted_apart_from_the_parts() {
        let m = Metrics::new();
        Metrics::set_duration(&m.postcopy_time_us, Duration::from_millis(100));
        m.add_time(Part::Install, Duration::from_millis(50));
        m.add_install_cpu(Duration::from_millis(12));
        let s = m.snapshot();
        assert_eq!(s.install_cpu_ms, 12.0);
        // Not a part: `other` is the phase minus the parts alone.
        assert_eq!(s.breakdown_ms["other"], 50.0);
        assert!(s.to_string().contains("12.0 of 50.0 ms on the CPU"), "{s}");
        // The thread's CPU clock moves with work done on this thread.
        let t0 = Metrics::thread_cpu_now();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(Metrics::thread_cpu_now() > t0);
    }
}
