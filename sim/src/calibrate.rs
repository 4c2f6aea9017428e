//! Calibration: the simulator next to a measured local-mode run.
//!
//! Given the trace a local-mode run recorded (`--record-trace FILE`) and
//! the figures that run measured, [`calibrate`] replays the trace through
//! the simulator with the same strategy and mode and compares the two
//! figures that do not depend on the host's speed: the **network-fault
//! fraction** (network faults / pages transferred) and the **pages
//! transferred**. The simulator is calibrated when both are within
//! [`TOLERANCE`] (10%) of the measurement.

use std::fmt;

use postcopy::metrics::EngineReport;
use serde::Serialize;

use crate::sim::{simulate, SimConfig, SimError, SimReport};
use crate::trace::Trace;
use crate::workload::Workload;

/// Largest relative error accepted.
pub const TOLERANCE: f64 = 0.10;

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
    #[error("measured report has no integer field '{0}' (at the top level or under \"engine\")")]
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
    /// Both errors within [`TOLERANCE`].
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
        within_tolerance: fs_err <= TOLERANCE && pg_err <= TOLERANCE,
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
            "{} (tolerance {:.0}%)",
            if self.within_tolerance {
                "calibrated: within tolerance"
            } else {
                "NOT within tolerance"
            },
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
        // Fault share 20% off: out.
        let c = compare(&fake_sim(36, 1000), &m);
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
