//! Helpers shared by the engine's integration tests.

#![allow(dead_code, reason = "each test crate uses only some helpers")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use postcopy::destination::GuestResume;
use postcopy::error::HookError;
use postcopy::source::GuestControl;
use postcopy::testmem::MemSource;

/// Aborts the whole test process if a test outlives its limit: a hang is
/// a failure, never a stuck CI job.
pub struct Limit(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Limit {
    /// Aborts the process unless dropped within `s` seconds.
    pub fn secs(s: u64, what: &'static str) -> Limit {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(s);
            while std::time::Instant::now() < end {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            eprintln!("{what}: still running after {s} s, aborting");
            std::process::abort();
        });
        Limit(done)
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The CPU state [`Guest`] stops with.
pub const REGS: &[u8] = b"rip=0xffff8000;rsp=0x1000";

/// The source guest: stops with [`REGS`], records a resume.
#[derive(Default)]
pub struct Guest {
    /// The engine stopped it.
    pub stopped: bool,
    /// The engine handed it back (an abort before the switch).
    pub resumed_on_source: bool,
}

impl GuestControl for Guest {
    fn stop(&mut self) -> Result<Vec<u8>, HookError> {
        self.stopped = true;
        Ok(REGS.to_vec())
    }
    fn resume(&mut self) -> Result<(), HookError> {
        self.resumed_on_source = true;
        Ok(())
    }
}

/// Starts the destination's vCPU when the engine resumes the guest.
pub struct Resume {
    /// The CPU state it was resumed with.
    pub state: Option<Vec<u8>>,
    /// Set at the resume.
    pub go: Arc<AtomicBool>,
}

impl Resume {
    /// Not resumed yet; `go` is set at the resume.
    pub fn new(go: Arc<AtomicBool>) -> Resume {
        Resume { state: None, go }
    }
}

impl GuestResume for Resume {
    fn resume(&mut self, state: &[u8]) -> Result<(), HookError> {
        self.state = Some(state.to_vec());
        self.go.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A source image of `n` pages, every page distinct, some all-zero,
/// `holes` never populated.
pub fn source_image(n: u64, seed: u64, holes: &[u64]) -> MemSource {
    let mut m = MemSource::new(n, |p, page| {
        // Every page distinct, some all-zero (sent as ZERO records).
        if (p + seed) % 7 == 3 {
            return;
        }
        let mut x = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        for chunk in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
    });
    for &h in holes {
        m.unpopulate(h);
    }
    m
}
