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
//!
//! With the logs `local --record-trace` keeps — the vCPU's stalls one by
//! one (`destination.stall_log`) and when the push claimed each batch
//! (`source.push_log_us`) — the fit also takes **the hosts' schedule** from
//! the run ([`Fitted::sched`], [`crate::HostSched`]): a stall in which the
//! vCPU thread slept is a fault, and a fault keeps the simulated vCPU
//! waiting at least a draw of the measured fault waits (and until its page
//! is in); a stall in which it did not sleep is a preemption, replayed at
//! its time; the push claims its k-th batch no sooner than it did, over a
//! link at the push's fastest. The vCPU then computes at its speed while
//! it runs. What matters on the busy 2-core development VM is that the
//! schedule is bursty, not its means: fault waits of ~0.1 ms and of
//! 3–6 ms; push stalls of several ms during which the vCPU, served fault
//! by fault at ~16 µs, runs page by page ahead of the push (a stress run
//! then faults 10× more); and after a long wait the push has run ahead, so
//! a sweeping vCPU catches it less often than one whose every fault costs
//! the mean. The schedule is measured, not tuned: the fault count still
//! comes out of the engine's scheduler and pre-pager in the simulator.

use std::fmt;

use postcopy::metrics::EngineReport;
use serde::Serialize;

use crate::sim::{
    simulate_on, Durations, HostSched, SimConfig, SimError, SimReport, DURATION_BINS,
};
use crate::trace::Trace;
use crate::workload::Workload;

/// Largest relative error accepted on the pages transferred.
pub const TOLERANCE: f64 = 0.10;
/// Largest relative error accepted on the network-fault fraction (issue 20).
pub const FAULT_TOLERANCE: f64 = 0.25;

/// The vCPU logs at most this many stalls one by one (local mode's
/// `STALL_LOG`): a log this long stopped early.
pub const STALL_LOG_CAP: usize = 32_768;

/// Fault detection on the destination (uffd read → request written), ns;
/// what a fitted fault costs beyond it and the round trip is service.
const DETECT_NS: u64 = 2_000;

/// The vCPU and fault-cost model fitted to one measured local-mode run.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// The vCPU's stalls split by cause, when the report has its log.
    pub stalls: Option<StallFit>,
    /// The push's schedule, when the report has its claims.
    pub push: Option<PushFit>,
}

/// The push's schedule from when the source claimed each batch
/// (`source.push_log_us`, kept by `local --record-trace`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PushFit {
    /// Batches claimed.
    pub claims: u64,
    /// When, ns since serving began.
    #[serde(skip)]
    pub claims_ns: Vec<u64>,
    /// The gaps between two claims.
    #[serde(skip)]
    pub gap: Durations,
    /// The link at the push's fastest: a batch's bytes over the shortest
    /// bin of gaps, bit/s.
    pub fastest_bps: f64,
}

impl PushFit {
    /// Fits the claim times `claims_us` (µs since serving began,
    /// ascending) of a push that sent `bytes`; `None` with fewer than two
    /// claims.
    pub fn from_claims(claims_us: &[u64], bytes: u64) -> Option<PushFit> {
        if claims_us.len() < 2 {
            return None;
        }
        let gaps: Vec<u64> = claims_us
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]).saturating_mul(1000))
            .collect();
        let gap = Durations::of(&gaps);
        let batch_bits = bytes as f64 * 8.0 / claims_us.len() as f64;
        Some(PushFit {
            claims: claims_us.len() as u64,
            claims_ns: claims_us.iter().map(|&t| t.saturating_mul(1000)).collect(),
            gap,
            fastest_bps: batch_bits * 1e9 / gap.bin(0).max(1) as f64,
        })
    }
}

/// The vCPU's stall log (`[step, at_ns, ns, kind]` per stall, kind bit 0:
/// the thread slept, bit 1: it was preempted) fitted into the distribution
/// of its fault waits and a preemption rate and length.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StallFit {
    /// Steps in the window the log covers.
    pub steps: u64,
    /// Length of that window, ns.
    pub window_ns: u64,
    /// Stalls in which the thread slept (faults).
    pub faults: u64,
    /// Their mean length as the vCPU saw it, ns.
    pub fault_mean_ns: u64,
    /// Stalls without a sleep (preemptions, stolen time).
    pub preemptions: u64,
    /// Their mean length, ns.
    pub preempt_mean_ns: u64,
    /// The vCPU's compute time per step while it ran, ns.
    pub ns_per_access: u64,
    /// The fault waits' distribution.
    #[serde(skip)]
    pub fault_wait: Durations,
    /// The preemptions' lengths.
    #[serde(skip)]
    pub preempt: Durations,
    /// The preemptions one by one: (start, length), ns since the resume.
    #[serde(skip)]
    pub preempt_at: Vec<(u64, u64)>,
}

/// Bit of a stall's kind: the vCPU thread slept (blocked on a fault).
pub const STALL_BLOCKED: u64 = 1;

impl StallFit {
    /// Fits a stall log of a vCPU that ran `steps` steps in `secs`;
    /// `capped`: the log stopped at its limit (the window then ends at
    /// its last stall). `None` when there is nothing to fit.
    pub fn from_log(log: &[[u64; 4]], steps: u64, secs: f64, capped: bool) -> Option<StallFit> {
        let (steps, window_ns) = match (capped, log.last()) {
            (true, Some(&[step, at, ns, _])) => (step + 1, at.saturating_add(ns)),
            _ => (steps, ns_of(secs * 1e9)),
        };
        if steps == 0 || window_ns == 0 {
            return None;
        }
        let (waits, lost): (Vec<[u64; 4]>, Vec<[u64; 4]>) = log
            .iter()
            .partition(|&&[_, _, _, kind]| kind & STALL_BLOCKED != 0);
        let waits: Vec<u64> = waits.iter().map(|s| s[2]).collect();
        let lost: Vec<u64> = lost.iter().map(|s| s[2]).collect();
        let sum = |v: &[u64]| v.iter().fold(0u64, |a, &x| a.saturating_add(x));
        let running = window_ns.saturating_sub(sum(&waits).saturating_add(sum(&lost)));
        Some(StallFit {
            steps,
            window_ns,
            faults: waits.len() as u64,
            fault_mean_ns: sum(&waits).checked_div(waits.len() as u64).unwrap_or(0),
            preemptions: lost.len() as u64,
            preempt_mean_ns: sum(&lost).checked_div(lost.len() as u64).unwrap_or(0),
            ns_per_access: (running / steps).max(1),
            fault_wait: Durations::of(&waits),
            preempt: Durations::of(&lost),
            preempt_at: log
                .iter()
                .filter(|s| s[3] & STALL_BLOCKED == 0)
                .map(|s| (s[1], s[2]))
                .collect(),
        })
    }

    /// Mean steps between two preemptions (0: none).
    pub fn preempt_every_steps(&self) -> f64 {
        if self.preemptions == 0 {
            0.0
        } else {
            self.steps as f64 / self.preemptions as f64
        }
    }
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
        let log: Vec<[u64; 4]> = v
            .pointer("/destination/stall_log")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let bytes = num("/bytes_sent")?;
        let claims: Vec<u64> = v
            .pointer("/source/push_log_us")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let push = PushFit::from_claims(&claims, crate::f64_to_u64(bytes));
        let fastest = push.as_ref().map(|p| p.fastest_bps);
        let stalls = v
            .pointer("/destination/steps_during")
            .and_then(serde_json::Value::as_u64)
            .filter(|_| !log.is_empty())
            .and_then(|n| StallFit::from_log(&log, n, secs, log.len() >= STALL_LOG_CAP));
        // With the log, a fault's engine-side cost is the engine's own
        // mean (its blocked time over its faults); the rest of what the
        // vCPU saw is the wake-up.
        let network_faults = num("/network_faults").unwrap_or(0.0);
        let fault_block_ns = match &stalls {
            Some(_) if network_faults >= 1.0 => ns_of(blocked_ms * 1e6 / network_faults),
            _ if faults >= 1.0 => ns_of(blocked_ms * 1e6 / faults),
            _ => rtt_ns + 2 * DETECT_NS,
        };
        // The floor is measured beside the run and a busy host can
        // disturb it (4 ms instead of 10 µs): no floor above the fastest
        // fault the vCPU saw served.
        let rtt_ns = match &stalls {
            Some(s) if s.fault_wait.bin(0) > 0 => rtt_ns.min(s.fault_wait.bin(0)),
            _ => rtt_ns,
        };
        Ok(Fitted {
            ns_per_access: match &stalls {
                Some(s) => s.ns_per_access,
                None if steps >= 1.0 => ns_of(running * 1e9 / steps).max(1),
                None => ns_of(1e9 / rate_before.max(1.0)),
            },
            ns_per_access_before: ns_of(1e9 / rate_before.max(1.0)),
            fault_block_ns,
            rtt_ns,
            // With the push's claims, the link at its fastest and the
            // push's gaps as measured ([`Self::sched`]); without, the
            // link at the push's mean rate.
            bandwidth_bps: fastest
                .unwrap_or(bytes * 8.0 / push_secs.max(1e-3))
                .max(1e6),
            stalls,
            push,
        })
    }

    /// The hosts' schedule in this run, for replaying its trace: a fault
    /// keeps the vCPU waiting at least a draw of the measured fault waits
    /// (and until its page is in), the vCPU is off its core when it was
    /// (its measured preemptions), and the push claims its k-th batch no
    /// sooner than it did. An idle host without the logs.
    pub fn sched(&self) -> crate::HostSched {
        let mut h = crate::HostSched::default();
        if let Some(s) = &self.stalls {
            h.fault_wait = s.fault_wait;
            h.preempt_at.clone_from(&s.preempt_at);
        }
        if let Some(p) = &self.push {
            h.push_at.clone_from(&p.claims_ns);
        }
        h
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
        // With the stall log the measured waits are the vCPU's fault cost
        // ([`Self::sched`]) and the link only the floor under it (a page
        // cannot land sooner); without it, a fault costs its mean.
        net.fault_service_ns = match &self.stalls {
            Some(_) => DETECT_NS,
            None => self
                .fault_block_ns
                .saturating_sub(self.rtt_ns + DETECT_NS)
                .max(DETECT_NS),
        };
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
        )?;
        if let Some(s) = &self.stalls {
            let us = |d: &Durations, i: usize| d.bin(i) as f64 / 1000.0;
            let last = DURATION_BINS - 1;
            writeln!(
                f,
                "fitted vCPU schedule ({:.0} ms, {} steps): {} fault waits, mean {:.0} µs (median bin {:.0} µs, top 1/{DURATION_BINS} {:.0} µs); {} preemptions, one per {:.0} steps, mean {:.0} µs (median bin {:.1} µs, top 1/{DURATION_BINS} {:.0} µs)",
                s.window_ns as f64 / 1e6,
                s.steps,
                s.faults,
                s.fault_mean_ns as f64 / 1000.0,
                us(&s.fault_wait, DURATION_BINS / 2),
                us(&s.fault_wait, last),
                s.preemptions,
                s.preempt_every_steps(),
                s.preempt_mean_ns as f64 / 1000.0,
                us(&s.preempt, DURATION_BINS / 2),
                us(&s.preempt, last),
            )?;
        }
        if let Some(p) = &self.push {
            let last = DURATION_BINS - 1;
            writeln!(
                f,
                "fitted push: {} batches, gaps mean {:.0} µs (shortest bin {:.0} µs, median bin {:.0} µs, top 1/{DURATION_BINS} {:.0} µs)",
                p.claims,
                p.gap.mean() as f64 / 1000.0,
                p.gap.bin(0) as f64 / 1000.0,
                p.gap.bin(DURATION_BINS / 2) as f64 / 1000.0,
                p.gap.bin(last) as f64 / 1000.0,
            )?;
        }
        Ok(())
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

/// Replays [`calibrate`] averages over when `host` draws: one fault in 32
/// waits milliseconds, and which faults draw those moves one replay's
/// fault count by a few per cent.
pub const REPLAYS: u64 = 8;

/// Replays a recorded `trace` (the guest's first `base_pages` also in use)
/// with `cfg` on hosts scheduling as `host` and compares with `measured`:
/// the network faults are the mean of [`REPLAYS`] replays (seeds `seed`,
/// `seed + 1`, ...) when `host` draws anything, the report the first's.
pub fn calibrate(
    trace: Trace,
    base_pages: u64,
    cfg: &SimConfig,
    host: &HostSched,
    measured: &Measured,
) -> Result<(Calibration, SimReport), SimError> {
    let w = Workload::from_trace("recorded trace", trace, base_pages);
    let sim = simulate_on(&w, cfg, host)?;
    let draws = host.fault_wait.0.iter().any(|&x| x != host.fault_wait.0[0])
        || host.preempt_every_steps > 0.0
        || host.push_gap.0.iter().any(|&x| x != 0);
    let mut faults = sim.engine.network_faults;
    let replays = if draws { REPLAYS } else { 1 };
    for k in 1..replays {
        let h = HostSched {
            seed: host.seed.wrapping_add(k),
            ..host.clone()
        };
        faults += simulate_on(&w, cfg, &h)?.engine.network_faults;
    }
    let mut mean = sim.clone();
    mean.engine.network_faults = (faults + replays / 2) / replays;
    Ok((compare(&mean, measured), sim))
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
    use crate::sim::simulate;
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

    fn stress_4m() -> Workload {
        crate::workload::stress(
            crate::workload::Layout {
                guest_mib: 32,
                ws_mib: 4,
                base_mib: 2,
            },
            1,
        )
        .unwrap()
    }

    /// Calibrating the simulator against its own run is exact, on an idle
    /// host and on a busy one given its schedule; on the busy one's
    /// figures, the idle model is far off (a fit that can fail).
    #[test]
    fn self_calibration_is_exact() {
        let w = stress_4m();
        let cfg = SimConfig {
            strategy: StrategySpec::Linear,
            ..SimConfig::default()
        };
        let base = 2 * 256;
        let idle = HostSched::default();
        // Every fault keeps the vCPU off its core 5 ms (2 batches' time),
        // and it is preempted 20 ms every 50 ms.
        let busy = HostSched {
            fault_wait: Durations::of(&[5_000_000]),
            preempt_at: (0..100u64).map(|k| (k * 50_000_000, 20_000_000)).collect(),
            ..HostSched::default()
        };
        let replay = |host: &HostSched| {
            simulate_on(
                &Workload::from_trace("r", w.trace.clone(), base),
                &cfg,
                host,
            )
            .unwrap()
        };
        for host in [&idle, &busy] {
            let reference = replay(host);
            let (c, sim) = calibrate(
                w.trace.clone(),
                base,
                &cfg,
                host,
                &Measured::from_report(&reference.engine),
            )
            .unwrap();
            assert_eq!(c.fault_share_error, 0.0);
            assert_eq!(c.pages_error, 0.0);
            assert!(c.within_tolerance);
            assert_eq!(sim.engine.pages_transferred, 32 * 256);
        }
        let measured = Measured::from_report(&replay(&busy).engine);
        let (c, _) = calibrate(w.trace.clone(), base, &cfg, &idle, &measured).unwrap();
        assert!(c.fault_share_error > FAULT_TOLERANCE, "{c}");
    }

    #[test]
    fn stalls_split_into_fault_waits_and_preemptions() {
        // 1000 steps in 1 ms: two faults (100 and 300 µs, one of them
        // also preempted), two preemptions (50 µs at 200 µs, 150 µs).
        let log = [
            [10, 0, 100_000, 1],
            [20, 200_000, 50_000, 2],
            [30, 300_000, 300_000, 3],
            [40, 700_000, 150_000, 0],
        ];
        let s = StallFit::from_log(&log, 1000, 1e-3, false).unwrap();
        assert_eq!((s.steps, s.window_ns), (1000, 1_000_000));
        assert_eq!((s.faults, s.fault_mean_ns), (2, 200_000));
        assert_eq!((s.preemptions, s.preempt_mean_ns), (2, 100_000));
        assert_eq!(s.preempt_at, vec![(200_000, 50_000), (700_000, 150_000)]);
        // 1 ms less 600 µs stalled, over 1000 steps.
        assert_eq!(s.ns_per_access, 400);
        assert_eq!(s.fault_wait.mean(), 200_000);
        assert!((s.preempt_every_steps() - 500.0).abs() < 1e-9);
        // A capped log ends its window at its last stall.
        let c = StallFit::from_log(&log, 1_000_000, 60.0, true).unwrap();
        assert_eq!((c.steps, c.window_ns), (41, 850_000));
        assert!(StallFit::from_log(&log, 0, 1e-3, false).is_none());
        // No stalls: no waits, no preemptions.
        let quiet = StallFit::from_log(&[], 1000, 1e-3, false).unwrap();
        assert_eq!(
            (quiet.faults, quiet.preemptions, quiet.ns_per_access),
            (0, 0, 1000)
        );
    }

    #[test]
    fn push_claims_give_gaps_and_the_fastest_link() {
        assert!(PushFit::from_claims(&[5], 1 << 20).is_none());
        // 4 claims of 1 MiB in all: 100, 100 and 10 000 µs apart.
        let p = PushFit::from_claims(&[0, 100, 200, 10_200], 1 << 20).unwrap();
        assert_eq!(p.claims, 4);
        assert_eq!(p.claims_ns, vec![0, 100_000, 200_000, 10_200_000]);
        assert_eq!(p.gap.bin(0), 100_000);
        assert_eq!(p.gap.bin(DURATION_BINS - 1), 10_000_000);
        // 256 KiB in 100 µs.
        assert!((p.fastest_bps - f64::from(1 << 18) * 8.0 / 100e-6).abs() < 1.0);
    }

    /// With the logs, the fit replays the hosts' schedule, takes the
    /// link at its fastest, and a floor disturbed by the load no longer
    /// stands for the round trip.
    #[test]
    fn the_logs_give_the_hosts_schedule() {
        let v = serde_json::json!({
            "rate_before": 1_000_000.0,
            "rate_during": 500_000.0,
            "bytes_sent": 4 << 20,
            "network_faults": 2,
            "fault_latency_us": {"count": 2},
            "floor_latency_us": {"p50": 4000.0},
            "source": {"postcopy_time_ms": 10.0, "push_log_us": [0, 100, 200, 10_200]},
            "destination": {
                "postcopy_secs": 1e-3,
                "steps_during": 1000,
                "stall_log": [[10, 0, 100_000, 1], [20, 200_000, 50_000, 2], [30, 300_000, 300_000, 1]],
                "engine": {"blocktime_ms": {"vcpu0": 0.3}},
            },
        });
        let f = Fitted::from_report(&v).unwrap();
        assert_eq!(f.ns_per_access, 550);
        // The engine's own mean: 300 µs over 2 faults.
        assert_eq!(f.fault_block_ns, 150_000);
        // The floor said 4 ms; the fastest fault took 100 µs.
        assert_eq!(f.rtt_ns, 100_000);
        assert!((f.bandwidth_bps - f64::from(1 << 20) * 8.0 / 100e-6).abs() < 1.0);
        let h = f.sched();
        assert_eq!(h.fault_wait.mean(), 200_000);
        assert_eq!(h.preempt_at, vec![(200_000, 50_000)]);
        assert_eq!(h.push_at, vec![0, 100_000, 200_000, 10_200_000]);
        assert_eq!(f.net().fault_service_ns, DETECT_NS);
        let text = f.to_string();
        assert!(text.contains("2 fault waits, mean 200 µs"), "{text}");
        assert!(text.contains("fitted push: 4 batches"), "{text}");
        // Without the logs: an idle host, the link at its mean rate.
        let mut bare = v.clone();
        bare["destination"]
            .as_object_mut()
            .unwrap()
            .remove("stall_log");
        bare["source"]
            .as_object_mut()
            .unwrap()
            .remove("push_log_us");
        let b = Fitted::from_report(&bare).unwrap();
        assert_eq!(b.sched(), HostSched::default());
        assert_eq!(b.rtt_ns, 4_000_000);
        assert!((b.bandwidth_bps - f64::from(4 << 20) * 8.0 / 10e-3).abs() < 1.0);
    }
}
