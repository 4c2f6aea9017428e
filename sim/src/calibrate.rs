//! Calibration: the simulator next to a measured local-mode run.
//!
//! Given the trace a local-mode run recorded (`--record-trace FILE`) and
//! the figures that run measured, [`calibrate`] replays the trace through
//! the simulator with the same strategy and mode and compares the two
//! figures that do not depend on the host's speed: the **network-fault
//! fraction** (network faults / pages transferred) and the **pages
//! transferred**. The simulator is calibrated when the fault fraction is
//! within [`FAULT_TOLERANCE`] (25%) and the pages within [`TOLERANCE`]
//! (10%) of the measurement.
//!
//! The model is fitted to the same run ([`Fitted`]): the link's rate is the
//! push's own throughput, a fault costs what a vCPU fault blocked the vCPU
//! on average, and the vCPU computes at its **post-copy** speed — its time
//! not blocked on a fault over the steps it ran then. That speed, not the
//! one measured before the migration, is what decides how many absent
//! pages it reaches before the push does: on this 2-core host the vCPU
//! shares its cores with the migration's threads and runs its random walk
//! 5–6× slower between faults than before the switch, and the fault
//! latencies have a long tail (descheduling), so the mean fault costs ~10×
//! the median. With the pre-switch speed and the floor as fault cost, the
//! simulated random workload faulted 7× as often as the real one.

use std::fmt;

use postcopy::metrics::EngineReport;
use serde::Serialize;

use crate::sim::{simulate, SimConfig, SimError, SimReport};
use crate::trace::Trace;
use crate::workload::Workload;

/// Largest relative error accepted on the pages transferred.
pub const TOLERANCE: f64 = 0.10;
/// Largest relative error accepted on the network-fault fraction (issue 20).
pub const FAULT_TOLERANCE: f64 = 0.25;

/// Fault detection on the destination (uffd read → request written), ns;
/// what a fitted fault costs beyond it and the round trip is service.
const DETECT_NS: u64 = 2_000;

/// The vCPU and fault-cost model fitted to one measured local-mode run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fitted {
    /// The vCPU's compute time per access during post-copy, ns: its time
    /// not blocked on faults over the steps it ran.
    pub ns_per_access: u64,
    /// Compute time per access before the migration, ns (for comparison).
    pub ns_per_access_before: u64,
    /// Mean time a vCPU fault kept the vCPU blocked, ns.
    pub fault_block_ns: u64,
    /// The fault floor's median round trip, ns.
    pub rtt_ns: u64,
    /// The push's throughput (bytes sent over the post-copy phase), bit/s.
    pub bandwidth_bps: f64,
}

fn ns_of(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        // Positive and far below 2^64 for any real run.
        crate::f64_to_u64(x.round())
    } else {
        0
    }
}

impl Fitted {
    /// Fits the model to a `local --json` report.
    pub fn from_report(v: &serde_json::Value) -> Result<Fitted, CalibrationError> {
        let num = |path: &'static str| {
            v.pointer(path)
                .and_then(serde_json::Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(CalibrationError::Missing(path))
        };
        let secs = num("/destination/postcopy_secs")?;
        let rate_during = num("/rate_during")?;
        let rate_before = num("/rate_before")?;
        let blocked_ms: f64 = v
            .pointer("/destination/engine/blocktime_ms")
            .and_then(serde_json::Value::as_object)
            .map(|m| m.values().filter_map(serde_json::Value::as_f64).sum())
            .unwrap_or(0.0);
        let faults = num("/fault_latency_us/count")?;
        let push_secs = num("/source/postcopy_time_ms")? / 1000.0;
        let steps = rate_during * secs;
        let running = (secs - blocked_ms / 1000.0).max(0.0);
        let rtt_ns = ns_of(num("/floor_latency_us/p50").unwrap_or(30.0) * 1000.0);
        Ok(Fitted {
            ns_per_access: if steps >= 1.0 {
                ns_of(running * 1e9 / steps).max(1)
            } else {
                ns_of(1e9 / rate_before.max(1.0))
            },
            ns_per_access_before: ns_of(1e9 / rate_before.max(1.0)),
            fault_block_ns: if faults >= 1.0 {
                ns_of(blocked_ms * 1e6 / faults)
            } else {
                rtt_ns + 2 * DETECT_NS
            },
            rtt_ns,
            bandwidth_bps: (num("/bytes_sent")? * 8.0 / push_secs.max(1e-3)).max(1e6),
        })
    }

    /// This machine as a link: the push's rate, the floor's round trip, a
    /// fault service time that makes a fault cost its fitted mean, and no
    /// per-page host costs (they are inside the measured rate).
    pub fn net(&self) -> crate::net::NetModel {
        let mut net = crate::net::NetModel::gigabit_lan();
        net.bandwidth_bps = self.bandwidth_bps;
        net.efficiency = 1.0;
        net.rtt_ns = self.rtt_ns;
        net.fault_detect_ns = DETECT_NS;
        net.fault_service_ns = self
            .fault_block_ns
            .saturating_sub(self.rtt_ns + DETECT_NS)
            .max(DETECT_NS);
        (
            net.source_page_ns,
            net.install_page_ns,
            net.source_batch_ns,
            net.install_batch_ns,
        ) = (0, 0, 0, 0);
        net.switch_ns = 0;
        net
    }
}

impl fmt::Display for Fitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fitted model: vCPU {:.2} µs/access during post-copy ({:.2} before), fault {:.1} µs mean block (floor round trip {:.1} µs), link {:.2} Gb/s",
            self.ns_per_access as f64 / 1000.0,
            self.ns_per_access_before as f64 / 1000.0,
            self.fault_block_ns as f64 / 1000.0,
            self.rtt_ns as f64 / 1000.0,
            self.bandwidth_bps / 1e9
        )
    }
}

/// The figures a real run measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    /// Faults that went to the network.
    pub network_faults: u64,
    /// All pages sent.
    pub pages_transferred: u64,
}

/// Measured figures that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalibrationError {
    /// Not JSON.
    #[error("measured report is not JSON: {0}")]
    Json(String),
    /// A field is missing or not a count.
    #[error("measured report has no usable field '{0}'")]
    Missing(&'static str),
}

impl Measured {
    /// From an engine report.
    pub fn from_report(r: &EngineReport) -> Measured {
        Measured {
            network_faults: r.network_faults,
            pages_transferred: r.pages_transferred,
        }
    }

    /// From the JSON of an engine report (`--json`), at the top level or
    /// under an `"engine"` key.
    pub fn from_json(json: &str) -> Result<Measured, CalibrationError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| CalibrationError::Json(e.to_string()))?;
        let field = |name: &'static str| {
            v.get(name)
                .or_else(|| v.get("engine").and_then(|e| e.get(name)))
                .and_then(serde_json::Value::as_u64)
                .ok_or(CalibrationError::Missing(name))
        };
        Ok(Measured {
            network_faults: field("network_faults")?,
            pages_transferred: field("pages_transferred")?,
        })
    }

    /// Network faults / pages transferred.
    pub fn fault_share(&self) -> f64 {
        share(self.network_faults, self.pages_transferred)
    }
}

fn share(faults: u64, pages: u64) -> f64 {
    if pages == 0 {
        0.0
    } else {
        faults as f64 / pages as f64
    }
}

/// |simulated − measured| / measured; 0 when both are 0, infinite when
/// only the measurement is 0.
pub fn relative_error(simulated: f64, measured: f64) -> f64 {
    if measured == 0.0 {
        if simulated == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (simulated - measured).abs() / measured.abs()
    }
}

/// Simulated next to measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Calibration {
    /// Measured network faults / pages transferred.
    pub measured_fault_share: f64,
    /// Simulated network faults / pages transferred.
    pub simulated_fault_share: f64,
    /// Relative error of the fault share.
    pub fault_share_error: f64,
    /// Measured pages transferred.
    pub measured_pages: u64,
    /// Simulated pages transferred.
    pub simulated_pages: u64,
    /// Relative error of the pages transferred.
    pub pages_error: f64,
    /// The fault fraction within [`FAULT_TOLERANCE`] and the pages within
    /// [`TOLERANCE`].
    pub within_tolerance: bool,
}

/// Compares a simulated run with a measured one.
pub fn compare(sim: &SimReport, measured: &Measured) -> Calibration {
    let simulated = Measured::from_report(&sim.engine);
    let fs_err = relative_error(simulated.fault_share(), measured.fault_share());
    let pg_err = relative_error(
        simulated.pages_transferred as f64,
        measured.pages_transferred as f64,
    );
    Calibration {
        measured_fault_share: measured.fault_share(),
        simulated_fault_share: simulated.fault_share(),
        fault_share_error: fs_err,
        measured_pages: measured.pages_transferred,
        simulated_pages: simulated.pages_transferred,
        pages_error: pg_err,
        within_tolerance: fs_err <= FAULT_TOLERANCE && pg_err <= TOLERANCE,
    }
}

/// Replays a recorded `trace` (the guest's first `base_pages` also in use)
/// with `cfg` and compares with `measured`.
pub fn calibrate(
    trace: Trace,
    base_pages: u64,
    cfg: &SimConfig,
    measured: &Measured,
) -> Result<(Calibration, SimReport), SimError> {
    let w = Workload::from_trace("recorded trace", trace, base_pages);
    let sim = simulate(&w, cfg)?;
    Ok((compare(&sim, measured), sim))
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| figure | measured | simulated | error |")?;
        writeln!(f, "|---|---:|---:|---:|")?;
        writeln!(
            f,
            "| network-fault fraction | {:.3}% | {:.3}% | {:.1}% |",
            self.measured_fault_share * 100.0,
            self.simulated_fault_share * 100.0,
            self.fault_share_error * 100.0
        )?;
        writeln!(
            f,
            "| pages transferred | {} | {} | {:.1}% |",
            self.measured_pages,
            self.simulated_pages,
            self.pages_error * 100.0
        )?;
        writeln!(
            f,
            "{} (tolerance {:.0}% on the fault fraction, {:.0}% on the pages)",
            if self.within_tolerance {
                "calibrated: within tolerance"
            } else {
                "NOT within tolerance"
            },
            FAULT_TOLERANCE * 100.0,
            TOLERANCE * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Access;
    use postcopy::prepage::StrategySpec;

    #[test]
    fn relative_error_arithmetic() {
        assert_eq!(relative_error(110.0, 100.0), 0.1);
        assert_eq!(relative_error(90.0, 100.0), 0.1);
        assert_eq!(relative_error(0.0, 0.0), 0.0);
        assert!(relative_error(1.0, 0.0).is_infinite());
        assert!((relative_error(0.033, 0.03) - 0.1).abs() < 1e-12);
    }

    fn fake_sim(faults: u64, pages: u64) -> SimReport {
        let w = Workload::from_trace(
            "t",
            Trace::new(
                4,
                0,
                false,
                [Access {
                    pfn: 0,
                    write: false,
                }],
            )
            .unwrap(),
            0,
        );
        let mut r = simulate(&w, &SimConfig::default()).unwrap();
        r.engine.network_faults = faults;
        r.engine.pages_transferred = pages;
        r
    }

    #[test]
    fn compare_arithmetic() {
        // Measured 3% faults of 1000 pages; simulated 32/1050.
        let m = Measured {
            network_faults: 30,
            pages_transferred: 1000,
        };
        let c = compare(&fake_sim(32, 1050), &m);
        assert!((c.measured_fault_share - 0.03).abs() < 1e-12);
        assert!((c.simulated_fault_share - 32.0 / 1050.0).abs() < 1e-12);
        assert!((c.fault_share_error - (32.0 / 1050.0 - 0.03) / 0.03).abs() < 1e-12);
        assert!((c.pages_error - 0.05).abs() < 1e-12);
        assert!(c.within_tolerance);
        // 12% more pages: out.
        let c = compare(&fake_sim(30, 1120), &m);
        assert!((c.pages_error - 0.12).abs() < 1e-12);
        assert!(!c.within_tolerance);
        // Fault share 20% off: in; 30% off: out.
        assert!(compare(&fake_sim(36, 1000), &m).within_tolerance);
        let c = compare(&fake_sim(39, 1000), &m);
        assert!(!c.within_tolerance);
        let text = c.to_string();
        assert!(text.contains("NOT within tolerance"), "{text}");
        assert!(
            text.contains("| pages transferred | 1000 | 1000 | 0.0% |"),
            "{text}"
        );
    }

    #[test]
    fn measured_from_engine_json() {
        let r = EngineReport {
            network_faults: 7,
            pages_transferred: 300,
            ..EngineReport::default()
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            Measured::from_json(&json).unwrap(),
            Measured {
                network_faults: 7,
                pages_transferred: 300
            }
        );
        let nested = format!("{{\"engine\": {json}, \"workload\": \"x\"}}");
        assert_eq!(Measured::from_json(&nested).unwrap().network_faults, 7);
        assert!(matches!(
            Measured::from_json("{"),
            Err(CalibrationError::Json(_))
        ));
        assert_eq!(
            Measured::from_json("{\"network_faults\": 1}"),
            Err(CalibrationError::Missing("pages_transferred"))
        );
        assert_eq!(
            Measured::from_json("{\"network_faults\": -1, \"pages_transferred\": 3}"),
            Err(CalibrationError::Missing("network_faults"))
        );
    }

    #[test]
    fn the_model_is_fitted_to_the_run() {
        // 2 s of post-copy, 1.5 s of it blocked on 10 000 faults, 50 000
        // steps: 10 µs per access running, 150 µs per fault.
        let v = serde_json::json!({
            "rate_before": 1_000_000.0,
            "rate_during": 25_000.0,
            "bytes_sent": 1_000_000_000u64,
            "fault_latency_us": {"count": 10_000},
            "floor_latency_us": {"p50": 10.0},
            "source": {"postcopy_time_ms": 2000.0},
            "destination": {"postcopy_secs": 2.0, "engine": {"blocktime_ms": {"vcpu0": 1500.0}}},
        });
        let f = Fitted::from_report(&v).unwrap();
        assert_eq!(f.ns_per_access, 10_000);
        assert_eq!(f.ns_per_access_before, 1_000);
        assert_eq!(f.fault_block_ns, 150_000);
        assert_eq!(f.rtt_ns, 10_000);
        assert!((f.bandwidth_bps - 4e9).abs() < 1.0);
        let net = f.net();
        assert_eq!(
            net.rtt_ns + net.fault_detect_ns + net.fault_service_ns,
            150_000
        );
        assert!(f.to_string().contains("10.00 µs/access"), "{f}");
        assert_eq!(
            Fitted::from_report(&serde_json::json!({"rate_during": 1.0})),
            Err(CalibrationError::Missing("/destination/postcopy_secs"))
        );
    }

    /// Calibrating the simulator against its own run is exact.
    #[test]
    fn self_calibration_is_exact() {
        let w = crate::workload::stress(
            crate::workload::Layout {
                guest_mib: 32,
                ws_mib: 4,
                base_mib: 2,
            },
            1,
        )
        .unwrap();
        let cfg = SimConfig {
            strategy: StrategySpec::Linear,
            ..SimConfig::default()
        };
        let base = 2 * 256;
        let reference = simulate(&Workload::from_trace("r", w.trace.clone(), base), &cfg).unwrap();
        let (c, sim) = calibrate(
            w.trace,
            base,
            &cfg,
            &Measured::from_report(&reference.engine),
        )
        .unwrap();
        assert_eq!(c.fault_share_error, 0.0);
        assert_eq!(c.pages_error, 0.0);
        assert!(c.within_tolerance);
        assert_eq!(sim.engine.pages_transferred, 32 * 256);
    }
}
