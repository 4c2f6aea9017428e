//! A discrete-event simulator of post-copy live migration.
//!
//! It re-runs the evaluation of Hines & Gopalan (VEE'09) and OSR'09 at any
//! scale, driving the `postcopy` engine's own pre-pagers and scheduler
//! ([`sim`]), over a network and host cost model ([`net`]) and a vCPU
//! replaying page-access traces ([`trace`], [`workload`]). [`experiments`]
//! has the named experiments behind `xl-postcopy simulate`, [`calibrate`]
//! compares the simulator with measured local-mode runs.
//!
//! ```no_run
//! use postcopy_sim::experiments::{run_experiment, ExperimentOptions, EXPERIMENTS};
//! let opts = ExperimentOptions::default();
//! let result = run_experiment("paper-stress", &opts).unwrap();
//! println!("{result}");
//! ```

pub mod bits;
pub mod calibrate;
pub mod event;
pub mod experiments;
pub mod net;
pub mod plot;
pub mod sim;
pub mod trace;
pub mod workload;

pub use sim::{
    simulate, simulate_trace_file, HostSched, SimConfig, SimError, SimReport, TraceRunError,
};

/// A non-negative float to an integer, saturating (NaN and negatives to 0).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn f64_to_u64(x: f64) -> u64 {
    // `as` saturates at the bounds and maps NaN to 0: exactly what we want.
    x as u64
}

/// The low 64 bits of a u128 (callers pass values that fit).
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn low_u64(x: u128) -> u64 {
    x as u64
}
