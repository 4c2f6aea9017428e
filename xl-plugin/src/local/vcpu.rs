//! The mini-VM's vCPU: a thread that runs workload steps on guest memory
//! until told to stop, then hands back its registers — the same contract
//! as a real vCPU paused for migration.
//!
//! Every step is timed; a step that takes longer than [`STALL_NS`] waited
//! for its page (a fault), and its duration goes into the stall histogram:
//! the fault latency as the guest saw it (touch → page present).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use postcopy::metrics::LatencySummary;

use super::workload::{step, Regs};

/// A step slower than this counts as a stall (a page fault).
pub const STALL_NS: u64 = 3_000;

/// Guest memory as the workload sees it.
pub trait GuestWords: Send + Sync + 'static {
    /// The guest's memory as u64 words.
    fn words(&self) -> &[std::sync::atomic::AtomicU64];
}

#[derive(Debug)]
struct Ctl {
    stop: AtomicBool,
    steps: AtomicU64,
    stalls: Mutex<Histogram<u64>>,
}

/// A running vCPU.
#[derive(Debug)]
pub struct Vcpu {
    ctl: Arc<Ctl>,
    handle: Option<JoinHandle<Regs>>,
    started: Instant,
}

/// What a vCPU did while it ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VcpuStats {
    /// Steps run.
    pub steps: u64,
    /// Wall time run.
    pub secs: f64,
    /// Steps that stalled on a fault, with their durations.
    pub stall_us: LatencySummary,
}

fn new_hist() -> Histogram<u64> {
    // Valid constant bounds: 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

impl Vcpu {
    /// Starts running `regs` on `mem`.
    pub fn start<M: GuestWords>(mem: Arc<M>, mut regs: Regs) -> std::io::Result<Vcpu> {
        let ctl = Arc::new(Ctl {
            stop: AtomicBool::new(false),
            steps: AtomicU64::new(0),
            stalls: Mutex::new(new_hist()),
        });
        let c = Arc::clone(&ctl);
        let handle = std::thread::Builder::new()
            .name("minivm-vcpu".into())
            .spawn(move || {
                let words = mem.words();
                let mut local = new_hist();
                let mut n = 0u64;
                let mut last = Instant::now();
                while !c.stop.load(Ordering::Relaxed) {
                    let _ = step(&mut regs, words);
                    let now = Instant::now();
                    let ns = u64::try_from((now - last).as_nanos()).unwrap_or(u64::MAX);
                    last = now;
                    if ns > STALL_NS {
                        let _ = local.record((ns / 1000).clamp(1, 100_000_000));
                    }
                    n += 1;
                    if n.is_multiple_of(4096) {
                        c.steps.store(n, Ordering::Relaxed);
                    }
                }
                c.steps.store(n, Ordering::Relaxed);
                if let Ok(mut h) = c.stalls.lock() {
                    let _ = h.add(&local);
                }
                regs
            })?;
        Ok(Vcpu {
            ctl,
            handle: Some(handle),
            started: Instant::now(),
        })
    }

    /// Steps run so far (updated every few thousand steps).
    pub fn steps(&self) -> u64 {
        self.ctl.steps.load(Ordering::Relaxed)
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the vCPU between two steps and returns its registers.
    pub fn stop(mut self) -> Result<(Regs, VcpuStats), &'static str> {
        self.ctl.stop.store(true, Ordering::SeqCst);
        let regs = self
            .handle
            .take()
            .ok_or("vCPU already stopped")?
            .join()
            .map_err(|_| "the vCPU thread panicked")?;
        let secs = self.started.elapsed().as_secs_f64();
        let stall_us = self
            .ctl
            .stalls
            .lock()
            .map(|h| LatencySummary::from_histogram(&h))
            .unwrap_or_default();
        Ok((
            regs,
            VcpuStats {
                steps: self.steps(),
                secs,
                stall_us,
            },
        ))
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
