//! Helpers shared by the engine's integration tests.

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
