//! The precopy policy of a hybrid migration on Xen: libxenguest's
//! `postcopy_precopy_policy()` asks [`libxl_postcopy_precopy_policy`]
//! (`include/libxl_postcopy.h`) at every step of `send_memory_live()`, and
//! the answer comes from the engine's rule ([`postcopy::switch`]) or the
//! fixed round count, and from an admin's request file
//! (`<status dir>/<domid>.switch`, written by `xl-postcopy switch`).
//!
//! libxenguest calls the policy twice per round: before sending a round
//! with the number of pages it is about to send (`dirty_count >= 0`; the
//! pages dirtied during the previous round), and after sending it with
//! `dirty_count == -1`.  A round is complete for the rule at the first kind
//! of call; a switch decided there still sends that call's pages live
//! (libxenguest always does) and stops right after.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use log::info;
use postcopy::switch::{switch_request_path, AutoSwitch, Decision, Reason, SwitchRule};

/// `LIBXL_POSTCOPY_PRECOPY_AUTO`: `--postcopy-after=auto`.
pub const PRECOPY_AUTO: u32 = 255;

/// The policy state of one hybrid migration (one save helper process).
#[derive(Debug)]
pub struct Policy {
    domid: u32,
    rounds: u32,
    auto: AutoSwitch,
    request: PathBuf,
    round_start: Instant,
    sending: u64,
}

impl Policy {
    /// A migration of `domid` with `rounds` fixed rounds or
    /// [`PRECOPY_AUTO`], whose switch request file lives in `dir`.
    pub fn new(domid: u32, rounds: u32, dir: &std::path::Path, now: Instant) -> Policy {
        let request = switch_request_path(dir, domid);
        // A request left over from an earlier migration is not for this one.
        let _ = std::fs::remove_file(&request);
        Policy {
            domid,
            rounds,
            auto: AutoSwitch::new(SwitchRule::DEFAULT),
            request,
            round_start: now,
            sending: 0,
        }
    }

    /// One call of libxenguest's policy; true: switch now.
    pub fn step(&mut self, iteration: u32, dirty_count: i64, now: Instant) -> bool {
        if std::fs::remove_file(&self.request).is_ok() {
            info!(
                "domain {}: {} after pre-copy round {iteration}",
                self.domid,
                Reason::Requested
            );
            return true;
        }
        let Ok(dirty) = u64::try_from(dirty_count) else {
            // Round `iteration` has been sent.
            return self.rounds != PRECOPY_AUTO && iteration >= self.rounds;
        };
        if iteration == 0 {
            self.round_start = now;
            self.sending = dirty;
            return false;
        }
        if self.rounds != PRECOPY_AUTO {
            return false;
        }
        let d = self
            .auto
            .round_done(self.sending, dirty, now - self.round_start);
        self.round_start = now;
        self.sending = dirty;
        matches!(d, Decision::Switch(_))
    }
}

/// The policy of the migration this process serves.
static POLICY: Mutex<Option<Policy>> = Mutex::new(None);

/// The body of [`crate::ffi::libxl_postcopy_precopy_policy`].
pub fn policy_call(domid: u32, rounds: u32, iteration: u32, dirty_count: i64) -> bool {
    // No session yet (pre-copy runs before save_begin): decisions go to
    // the helper's stderr, which libxl logs with the migration.
    crate::xtl::install();
    let now = Instant::now();
    let mut g = POLICY.lock().unwrap_or_else(|p| p.into_inner());
    let fresh = iteration == 0 && dirty_count >= 0;
    if fresh
        || g.as_ref()
            .is_none_or(|p| p.domid != domid || p.rounds != rounds)
    {
        *g = Some(Policy::new(
            domid,
            rounds,
            &crate::status_file::status_dir(),
            now,
        ));
    }
    g.as_mut()
        .is_some_and(|p| p.step(iteration, dirty_count, now))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Drives `send_memory_live()`'s call sequence with `dirty` pages
    /// dirtied per round; returns the rounds sent before the switch.
    fn drive(p: &mut Policy, p2m: i64, dirty: &[i64]) -> u32 {
        let mut t = Instant::now();
        let mut x = 0u32;
        let mut count = p2m;
        loop {
            let stop = p.step(x, count, t);
            x += 1; // the round is sent either way
            t += Duration::from_millis(100);
            if stop || p.step(x, -1, t) {
                return x;
            }
            count = dirty.get(x as usize - 1).copied().unwrap_or(0);
            if x > 200 {
                return x;
            }
        }
    }

    #[test]
    fn fixed_rounds_switch_after_exactly_n() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Policy::new(7, 3, dir.path(), Instant::now());
        assert_eq!(drive(&mut p, 1000, &[900, 900, 900, 900, 900]), 3);
    }

    #[test]
    fn auto_switches_a_stalled_guest_and_runs_a_converging_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Policy::new(7, PRECOPY_AUTO, dir.path(), Instant::now());
        // 800 dirtied of 1000 sent, then 790: stalled twice, the rule says
        // switch when round 3's count is known; that round is still sent.
        assert_eq!(drive(&mut p, 1000, &[800, 790, 785, 780, 775]), 4);
        let mut p = Policy::new(7, PRECOPY_AUTO, dir.path(), Instant::now());
        assert_eq!(drive(&mut p, 100_000, &[20_000, 4000, 800, 160, 30]), 6);
    }

    #[test]
    fn a_request_file_switches_at_once_and_is_consumed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Policy::new(7, 50, dir.path(), Instant::now());
        let t = Instant::now();
        assert!(!p.step(0, 1000, t));
        assert!(!p.step(1, -1, t));
        std::fs::write(switch_request_path(dir.path(), 7), b"").expect("write");
        assert!(p.step(1, 900, t));
        assert!(!switch_request_path(dir.path(), 7).exists());
    }

    #[test]
    fn a_stale_request_is_dropped_when_a_migration_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(switch_request_path(dir.path(), 7), b"").expect("write");
        let mut p = Policy::new(7, 2, dir.path(), Instant::now());
        assert!(!p.step(0, 1000, Instant::now()));
    }
}
