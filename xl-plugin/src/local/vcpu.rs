//! The mini-VM's vCPU: a thread that runs workload steps on guest memory
//! until told to stop, then hands back its registers — the same contract
//! as a real vCPU paused for migration.
//!
//! Every step is timed; a step that takes longer than [`STALL_NS`] waited
//! for its page (a fault), and its duration goes into the stall histogram:
//! the fault latency as the guest saw it (touch → page present).
//!
//! The first [`STALL_LOG`] stalls are also logged one by one ([`Stall`]):
//! which step, when, how long, and whether the thread slept (a voluntary
//! context switch: it blocked on a fault) or was preempted (an involuntary
//! one) meanwhile, from the thread's own `getrusage` counters read after
//! each stall. `xl-postcopy calibrate` fits the simulator's vCPU to it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use postcopy::metrics::LatencySummary;

use super::workload::{step, Regs};

/// A step slower than this counts as a stall (a page fault).
pub const STALL_NS: u64 = 3_000;

/// Stalls logged one by one (the rest only go into the histogram).
pub const STALL_LOG: usize = 32_768;

/// One stalled step: `[step, at_ns, ns, kind]` on the wire — the step's
/// index since the vCPU started, its start (ns since the vCPU started),
/// its duration, and [`Stall::BLOCKED`] | [`Stall::PREEMPTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stall(pub u64, pub u64, pub u64, pub u8);

impl Stall {
    /// The thread slept during the step (blocked on a fault).
    pub const BLOCKED: u8 = 1;
    /// The thread was preempted during the step.
    pub const PREEMPTED: u8 = 2;
}

/// The calling thread's (voluntary, involuntary) context switches so far.
fn context_switches() -> (i64, i64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_THREAD only reads
    // the calling thread's counters.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0, 0);
    }
    // SAFETY: getrusage succeeded and filled the struct (zeroed before).
    let ru = unsafe { ru.assume_init() };
    (ru.ru_nvcsw, ru.ru_nivcsw)
}

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
    log: Mutex<Vec<Stall>>,
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
    /// The first [`STALL_LOG`] stalls, one by one.
    pub stall_log: Vec<Stall>,
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
            log: Mutex::new(Vec::new()),
        });
        let c = Arc::clone(&ctl);
        let handle = std::thread::Builder::new()
            .name("minivm-vcpu".into())
            .spawn(move || {
                let words = mem.words();
                let mut local = new_hist();
                let mut log = Vec::new();
                let mut switches = context_switches();
                let mut n = 0u64;
                let t0 = Instant::now();
                let mut last = t0;
                while !c.stop.load(Ordering::Relaxed) {
                    let _ = step(&mut regs, words);
                    let now = Instant::now();
                    let ns = u64::try_from((now - last).as_nanos()).unwrap_or(u64::MAX);
                    if ns > STALL_NS {
                        let _ = local.record((ns / 1000).clamp(1, 100_000_000));
                        if log.len() < STALL_LOG {
                            let (v, i) = context_switches();
                            let kind = (u8::from(v > switches.0) * Stall::BLOCKED)
                                | (u8::from(i > switches.1) * Stall::PREEMPTED);
                            switches = (v, i);
                            let at = u64::try_from((last - t0).as_nanos()).unwrap_or(u64::MAX);
                            log.push(Stall(n, at, ns, kind));
                        }
                    }
                    last = now;
                    n += 1;
                    if n.is_multiple_of(4096) {
                        c.steps.store(n, Ordering::Relaxed);
                    }
                }
                c.steps.store(n, Ordering::Relaxed);
                if let Ok(mut h) = c.stalls.lock() {
                    let _ = h.add(&local);
                }
                if let Ok(mut l) = c.log.lock() {
                    *l = log;
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
        let stall_log = self
            .ctl
            .log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        Ok((
            regs,
            VcpuStats {
                steps: self.steps(),
                secs,
                stall_us,
                stall_log,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier of the stall log: a thread that sleeps switches
    /// voluntarily; one that spins does not.
    #[test]
    fn a_sleep_is_a_voluntary_switch() {
        let (v0, _) = context_switches();
        std::thread::sleep(Duration::from_millis(2));
        let (v1, _) = context_switches();
        assert!(v1 > v0, "{v0} -> {v1}");
        let spin = Instant::now();
        let (v2, _) = context_switches();
        while spin.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let (v3, _) = context_switches();
        assert_eq!(v2, v3);
    }

    /// The wire form of a stall is `[step, at_ns, ns, kind]`.
    #[test]
    fn stalls_travel_as_arrays() {
        let s = Stall(7, 100, 5_000, Stall::BLOCKED | Stall::PREEMPTED);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "[7,100,5000,3]");
        assert_eq!(serde_json::from_str::<Stall>(&json).unwrap(), s);
    }
}
