//! The local-mode report: one migration's figures from both sides, as a
//! human table and as JSON with stable top-level keys for scripts.

use std::fmt;

use postcopy::metrics::{EngineReport, LatencySummary};
use serde::{Deserialize, Serialize};

/// What the destination sends back after completion (and prints).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DestSummary {
    /// Digest of the memory as the guest first saw it.
    pub digest: u64,
    /// The destination engine's metrics.
    pub engine: EngineReport,
    /// Destination-side downtime: TRANSITION received → vCPU running.
    pub resume_ms: f64,
    /// Workload steps/s from resume to completion.
    pub rate_during: f64,
    /// Workload steps/s in the tail after completion.
    pub rate_after: f64,
    /// Stalled steps (page faults) seen by the vCPU during post-copy.
    pub stall_us: Latency,
    /// Seconds from resume to completion.
    pub postcopy_secs: f64,
    /// The workload's step count when the destination vCPU resumed (the
    /// recorded trace starts there).
    #[serde(default)]
    pub first_step: u64,
    /// Steps the destination vCPU ran during post-copy.
    #[serde(default)]
    pub steps_during: u64,
    /// The vCPU's stalls during post-copy, one by one (the first
    /// [`super::vcpu::STALL_LOG`]); kept in the report only with
    /// `--record-trace` (`xl-postcopy calibrate` fits its vCPU to it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stall_log: Vec<super::vcpu::Stall>,
}

/// Percentiles in µs (serde-friendly mirror of [`LatencySummary`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Latency {
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

impl From<LatencySummary> for Latency {
    fn from(l: LatencySummary) -> Self {
        Latency {
            count: l.count,
            p50: l.p50,
            p90: l.p90,
            p99: l.p99,
            max: l.max,
        }
    }
}

/// The floor: a bare uffd round trip plus a loopback request/reply.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Floor {
    /// Median, µs.
    pub p50: f64,
    /// 99th percentile, µs.
    pub p99: f64,
}

/// One local-mode migration.
#[derive(Debug, Clone, Serialize)]
pub struct LocalReport {
    /// `postcopy`, `precopy` or `hybrid`.
    pub mode: String,
    /// Pre-paging strategy.
    pub prepage: String,
    /// Workload name.
    pub workload: String,
    /// Guest size in 4 KiB pages.
    pub guest_pages: u64,
    /// Stress working set in pages (0 if not stress).
    pub working_set_pages: u64,
    /// Free-page elimination on.
    pub balloon: bool,
    /// Start of migration → complete, source clock.
    pub total_time_ms: f64,
    /// Guest stopped (source) → RESUMED received (source clock; includes
    /// one back-channel trip).
    pub downtime_ms: f64,
    /// Pages sent by the source, all causes.
    pub pages_transferred: u64,
    /// Pages delivered twice (must be 0).
    pub pages_duplicate: u64,
    /// Pages never sent because free (ballooned/untouched).
    pub pages_skipped: u64,
    /// Guest accesses that needed the network.
    pub network_faults: u64,
    /// Fault latency as the faulting vCPU saw it (touch → present), µs.
    pub fault_latency_us: Latency,
    /// Fault service time inside the destination engine (fault read →
    /// page installed), µs.
    pub engine_fault_latency_us: Latency,
    /// The same-run floor, with `--floor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_latency_us: Option<Floor>,
    /// Destination image at first sight == source image at stop.
    pub integrity_ok: bool,
    /// Workload steps/s on the source before the migration.
    pub rate_before: f64,
    /// Workload steps/s on the destination during post-copy.
    pub rate_during: f64,
    /// Workload steps/s on the destination after completion.
    pub rate_after: f64,
    /// 1 − rate_during / rate_before.
    pub degradation: f64,
    /// Bytes the source wrote.
    pub bytes_sent: u64,
    /// The source engine's full report.
    pub source: EngineReport,
    /// The destination's summary.
    pub destination: DestSummary,
}

/// `name ms` per part of a breakdown, largest first.
fn parts(b: &std::collections::BTreeMap<String, f64>) -> String {
    let mut v: Vec<(&String, &f64)> = b.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    if v.is_empty() {
        return "not timed".into();
    }
    v.iter()
        .map(|(k, ms)| format!("{k} {ms:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
        + " ms"
}

impl fmt::Display for LocalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.guest_pages as f64 * 4096.0 / 1_048_576.0;
        writeln!(
            f,
            "{} migration of a {:.0} MiB mini-VM running '{}' (prepage {}{})",
            self.mode,
            mib,
            self.workload,
            self.prepage,
            if self.balloon { ", balloon" } else { "" }
        )?;
        let l = &self.fault_latency_us;
        let e = &self.engine_fault_latency_us;
        let rows: Vec<(&str, String)> = vec![
            ("total time", format!("{:.1} ms", self.total_time_ms)),
            ("downtime", format!("{:.3} ms", self.downtime_ms)),
            (
                "pages transferred",
                format!(
                    "{} (pushed {}, faulted {}, pre-copy {}, zero {})",
                    self.pages_transferred,
                    self.source.pages_pushed,
                    self.source.pages_faulted,
                    self.source.pages_precopy,
                    self.source.pages_zero
                ),
            ),
            ("pages skipped (free)", self.pages_skipped.to_string()),
            ("duplicate pages", self.pages_duplicate.to_string()),
            (
                "network faults",
                format!(
                    "{} ({:.2}% of pages)",
                    self.network_faults,
                    100.0 * self.network_faults as f64 / self.guest_pages.max(1) as f64
                ),
            ),
            (
                "fault latency (vCPU)",
                format!(
                    "p50 {} us, p90 {} us, p99 {} us, max {} us",
                    l.p50, l.p90, l.p99, l.max
                ),
            ),
            (
                "fault service (engine)",
                format!("p50 {} us, p99 {} us, max {} us", e.p50, e.p99, e.max),
            ),
            (
                "floor",
                match self.floor_latency_us {
                    Some(fl) => format!(
                        "p50 {:.1} us, p99 {:.1} us  (vCPU p50 = {:.2}x, p99 = {:.2}x)",
                        fl.p50,
                        fl.p99,
                        l.p50 as f64 / fl.p50.max(0.001),
                        l.p99 as f64 / fl.p99.max(0.001)
                    ),
                    None => "not measured (--floor)".into(),
                },
            ),
            (
                "workload rate",
                format!(
                    "before {:.0}/s, during post-copy {:.0}/s, after {:.0}/s (degradation {:.1}%)",
                    self.rate_before,
                    self.rate_during,
                    self.rate_after,
                    100.0 * self.degradation
                ),
            ),
            (
                "post-copy phase (dest)",
                format!(
                    "{:.1} ms: {}",
                    self.destination.engine.postcopy_time_ms,
                    parts(&self.destination.engine.breakdown_ms)
                ),
            ),
            ("post-copy time (source)", parts(&self.source.breakdown_ms)),
            ("bytes sent", self.bytes_sent.to_string()),
            (
                "integrity",
                if self.integrity_ok {
                    "OK: destination memory == source memory at stop".into()
                } else {
                    "MISMATCH".into()
                },
            ),
        ];
        for (k, v) in rows {
            writeln!(f, "  {k:<24} {v}")?;
        }
        Ok(())
    }
}
