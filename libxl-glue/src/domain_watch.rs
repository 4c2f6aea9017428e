//! Watching the destination domain while post-copy serves its memory.
//!
//! After the switch the guest runs on the destination with part of its
//! memory still on the source. If it shuts down (crash, reboot — Xen turns
//! a triple fault into a `reboot` shutdown unless the guest chose
//! otherwise —, poweroff, suspend, watchdog) or is destroyed before its
//! last page arrived, the migration has failed, whatever the page stream
//! does next. [`ServeWatch`] polls the domain every [`WATCH_POLL`] during
//! the serve phase and, on such a death:
//!
//! - writes the post-mortem to the helper log ([`crate::forensics`]);
//! - tells the source: POSTCOPY_ABORT with the reason on the back channel
//!   (best effort; the source turns it into [`PeerFailed`], see
//!   [`peer_failed`], and keeps its copy paused);
//! - stops the stream reader and ends the serve with [`GuestDied`]
//!   (errno `EOWNERDEAD` through the C ABI, see [`is_guest_death`]).
//!
//! The same poll sees libxl unpause the domain: that, not the start of the
//! serve, is when the guest resumes, so RESUMED (which ends the source's
//! measured downtime) is sent then.
//!
//! Hook points: today's `restore.rs` runs [`ServeWatch::run`] on a thread
//! of its serve and `save.rs` maps ABORT with [`peer_failed`]; the
//! engine's guest-watch callback can call [`GuestWatch::poll`] instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libxl_sys as sys;
use log::{debug, error, info, warn};
use postcopy::records::{RecordType, RecordWriter};
use postcopy::{Error, Pfn};

use crate::fdio::FdIo;
use crate::forensics;
use crate::xc::XenOps;

/// How often the domain is looked at during the serve (the issue asks for
/// at most 100 ms).
pub const WATCH_POLL: Duration = Duration::from_millis(50);

/// How long a serve that got every page waits for libxl's unpause.
pub const UNPAUSE_GRACE: Duration = Duration::from_secs(5);

/// How every guest-death reason starts, on both hosts: the source
/// recognises a death in the ABORT reason by it ([`PeerFailed::guest_died`]).
pub const GUEST_DIED: &str = "guest died on the destination during post-copy";

/// How the domain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Shut down with this `SHUTDOWN_*` reason.
    Shutdown(u32),
    /// Being destroyed.
    Dying,
    /// No longer exists.
    Gone,
}

/// The name of a `SHUTDOWN_*` reason, as `xl list` spells it.
pub fn shutdown_name(reason: u32) -> &'static str {
    match reason {
        sys::SHUTDOWN_poweroff => "poweroff",
        sys::SHUTDOWN_reboot => "reboot",
        sys::SHUTDOWN_suspend => "suspend",
        sys::SHUTDOWN_crash => "crash",
        sys::SHUTDOWN_watchdog => "watchdog",
        5 => "soft_reset",
        _ => "unknown",
    }
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Death::Shutdown(r) => {
                write!(f, "shutdown reason {} ({r})", shutdown_name(r))?;
                match r {
                    sys::SHUTDOWN_reboot => {
                        f.write_str(", a guest reboot or a triple fault (Xen's default action)")
                    }
                    sys::SHUTDOWN_crash => f.write_str(", crashed (triple fault?)"),
                    _ => Ok(()),
                }
            }
            Death::Dying => f.write_str("the domain is being destroyed"),
            Death::Gone => f.write_str("the domain no longer exists"),
        }
    }
}

/// The guest died on the destination before its last page arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{GUEST_DIED}: {death} with {absent} of {owed} owed pages still absent")]
pub struct GuestDied {
    /// How.
    pub death: Death,
    /// Owed pages not received yet.
    pub absent: u64,
    /// Pages owed after the switch.
    pub owed: u64,
}

impl GuestDied {
    /// The engine error the serve returns (glue-local cause inside).
    pub fn into_error(self) -> Error {
        Error::Guest {
            what: "keep the guest alive on the destination",
            source: Box::new(self),
        }
    }
}

/// The source's view: the destination failed after the switch and said
/// why (POSTCOPY_ABORT after READY).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the destination reports: {0}")]
pub struct PeerFailed(pub String);

impl PeerFailed {
    /// True if the reason is a guest death ([`GUEST_DIED`]).
    pub fn guest_died(&self) -> bool {
        self.0.starts_with(GUEST_DIED)
    }
}

/// The error the source's serve ends with when the destination sends ABORT
/// after the switch: never "aborted before resuming" (the guest ran
/// there), so the source keeps its copy paused.
pub fn peer_failed(reason: String) -> Error {
    warn!("destination failed after the switch: {reason}");
    Error::Guest {
        what: "run the guest on the destination",
        source: Box::new(PeerFailed(reason)),
    }
}

/// The destination's [`GuestDied`] inside `e`, if that is what it is.
pub fn guest_died(e: &Error) -> Option<&GuestDied> {
    match e {
        Error::Guest { source, .. } => source.downcast_ref::<GuestDied>(),
        _ => None,
    }
}

/// True if `e` says the guest died on the destination (there, or as
/// reported to the source).
pub fn is_guest_death(e: &Error) -> bool {
    let Error::Guest { source, .. } = e else {
        return false;
    };
    source.downcast_ref::<GuestDied>().is_some()
        || source
            .downcast_ref::<PeerFailed>()
            .is_some_and(PeerFailed::guest_died)
}

/// What one poll saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// libxl unpaused the domain (reported once).
    Unpaused,
    /// The domain died.
    Died(Death),
}

/// Polls one domain's state.
#[derive(Debug)]
pub struct GuestWatch<O: XenOps> {
    ops: Arc<O>,
    started: Instant,
    unpaused_at: Option<Instant>,
    polls: u64,
    failed_polls: u64,
}

impl<O: XenOps> GuestWatch<O> {
    /// Starts watching `ops`' domain now.
    pub fn new(ops: Arc<O>) -> GuestWatch<O> {
        GuestWatch {
            ops,
            started: Instant::now(),
            unpaused_at: None,
            polls: 0,
            failed_polls: 0,
        }
    }

    /// When the watch saw the domain unpaused, if it did.
    pub fn unpaused_at(&self) -> Option<Instant> {
        self.unpaused_at
    }

    /// When the watch started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// One look at the domain. A failing `xc_domain_getinfolist` is logged
    /// and is not a death.
    pub fn poll(&mut self) -> Option<WatchEvent> {
        self.polls += 1;
        let info = match self.ops.domain_info() {
            Ok(Some(i)) => i,
            Ok(None) => return Some(WatchEvent::Died(Death::Gone)),
            Err(e) => {
                self.failed_polls += 1;
                if self.failed_polls == 1 {
                    warn!("post-copy guest watch: cannot read the domain's state: {e}");
                }
                return None;
            }
        };
        if info.dying {
            return Some(WatchEvent::Died(Death::Dying));
        }
        if let Some(r) = info.shutdown {
            return Some(WatchEvent::Died(Death::Shutdown(r)));
        }
        if !info.paused && self.unpaused_at.is_none() {
            self.unpaused_at = Some(Instant::now());
            if self.polls == 1 {
                debug!("post-copy guest watch: the domain was already unpaused at the first look");
            }
            return Some(WatchEvent::Unpaused);
        }
        None
    }
}

/// The guest watch of one serve, on its own thread: what it needs of the
/// serve's state.
pub struct ServeWatch<'a, O: XenOps> {
    /// The destination domain.
    pub ops: Arc<O>,
    /// Set by the serve when it is over (the watch takes one last look).
    pub done: &'a AtomicBool,
    /// Set by the watch on a death: the stream reader gives up.
    pub stop: &'a AtomicBool,
    /// The back channel (RESUMED, ABORT).
    pub back: &'a Mutex<RecordWriter<FdIo>>,
    /// When TRANSITION was read: RESUMED carries the time since.
    pub transition_at: Instant,
    /// Pages owed after the switch.
    pub owed: u64,
    /// Owed pages not received yet.
    pub absent: &'a (dyn Fn() -> u64 + Sync),
    /// True for a pfn owed after the switch.
    pub is_owed: &'a (dyn Fn(Pfn) -> bool + Sync),
    /// Pfns the guest has (the source's guest size).
    pub guest_pfns: u64,
}

impl<O: XenOps> std::fmt::Debug for ServeWatch<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeWatch")
            .field("domid", &self.ops.domid())
            .field("owed", &self.owed)
            .finish_non_exhaustive()
    }
}

impl<O: XenOps> ServeWatch<'_, O> {
    /// Watches until `done` (then once more, or until the unpause for up
    /// to [`UNPAUSE_GRACE`]), sending RESUMED at the unpause; returns the
    /// death, if the guest died.
    pub fn run(self) -> Option<GuestDied> {
        let mut watch = GuestWatch::new(self.ops.clone());
        info!(
            "post-copy destination: page service started; waiting for libxl to unpause the domain"
        );
        let mut done_at = None;
        loop {
            let last = self.done.load(Ordering::SeqCst);
            match watch.poll() {
                Some(WatchEvent::Unpaused) => self.resumed(&watch),
                Some(WatchEvent::Died(death)) => return Some(self.died(death)),
                None => {}
            }
            if last {
                // Every page is in before libxl unpaused the domain (a
                // small guest): wait a little for the unpause, so that
                // RESUMED precedes COMPLETE and the downtime is measured.
                let since: &mut Instant = done_at.get_or_insert_with(Instant::now);
                if watch.unpaused_at().is_some() || since.elapsed() >= UNPAUSE_GRACE {
                    break;
                }
            }
            std::thread::sleep(WATCH_POLL);
        }
        if watch.unpaused_at().is_none() {
            info!(
                "post-copy destination: the domain stayed paused for the whole page service and {UNPAUSE_GRACE:?} after (xl migrate-receive -p?); RESUMED not sent"
            );
        }
        None
    }

    fn resumed(&self, watch: &GuestWatch<O>) {
        let now = Instant::now();
        let ns = u64::try_from((now - self.transition_at).as_nanos()).unwrap_or(u64::MAX);
        info!(
            "post-copy destination: libxl unpaused the domain {:?} after the page service started ({:?} after TRANSITION): sending RESUMED",
            now - watch.started(),
            now - self.transition_at
        );
        let mut back = self.back.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = back
            .count(RecordType::Resumed, ns)
            .and_then(|()| back.flush())
        {
            // The stream's own failure will tell; RESUMED is a measurement.
            warn!("post-copy destination: cannot send RESUMED: {e}");
        }
    }

    fn died(&self, death: Death) -> GuestDied {
        self.stop.store(true, Ordering::SeqCst);
        let d = GuestDied {
            death,
            absent: (self.absent)(),
            owed: self.owed,
        };
        error!("{d}");
        forensics::post_mortem(&*self.ops, &d, self.guest_pfns, self.is_owed);
        let reason = d.to_string();
        let mut back = self.back.lock().unwrap_or_else(|e| e.into_inner());
        match back.abort(&reason).and_then(|()| back.flush()) {
            Ok(()) => info!("post-copy destination: told the source (ABORT)"),
            Err(e) => warn!("post-copy destination: cannot tell the source (ABORT): {e}"),
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use postcopy::records::{Record, RecordReader};

    use super::*;
    use crate::fake::FakeXen;

    #[test]
    fn a_shutdown_is_a_death_and_the_unpause_is_seen_once() {
        let x = Arc::new(FakeXen::new(7, 0xff));
        x.set_paused(true);
        let mut w = GuestWatch::new(x.clone());
        assert_eq!(w.poll(), None);
        x.set_paused(false);
        assert_eq!(w.poll(), Some(WatchEvent::Unpaused));
        assert!(w.unpaused_at().is_some());
        assert_eq!(w.poll(), None);
        x.guest_shutdown(sys::SHUTDOWN_reboot, "(XEN) d7v0 Triple fault");
        assert_eq!(
            w.poll(),
            Some(WatchEvent::Died(Death::Shutdown(sys::SHUTDOWN_reboot)))
        );
        x.state().domain = None;
        assert_eq!(w.poll(), Some(WatchEvent::Died(Death::Gone)));
        // A failing getinfo is not a death.
        let y = Arc::new(FakeXen::new(8, 0xff));
        y.state().fail.insert("xc_domain_getinfolist", libc::EPERM);
        assert_eq!(GuestWatch::new(y).poll(), None);
    }

    #[test]
    fn the_reason_names_what_happened() {
        let d = GuestDied {
            death: Death::Shutdown(sys::SHUTDOWN_crash),
            absent: 3712,
            owed: 65551,
        };
        let s = d.to_string();
        assert!(s.starts_with(GUEST_DIED), "{s}");
        assert!(s.contains("shutdown reason crash"), "{s}");
        assert!(
            s.contains("with 3712 of 65551 owed pages still absent"),
            "{s}"
        );
        let e = d.clone().into_error();
        assert_eq!(guest_died(&e), Some(&d));
        assert!(is_guest_death(&e));
        assert!(is_guest_death(&peer_failed(s)));
        assert!(!is_guest_death(&peer_failed("out of memory".into())));
        assert!(!is_guest_death(&Error::PeerAborted(d.to_string())));
        let r = Death::Shutdown(sys::SHUTDOWN_reboot).to_string();
        assert!(r.contains("reboot") && r.contains("triple fault"), "{r}");
    }

    #[test]
    fn resumed_waits_for_the_unpause() {
        let x = Arc::new(FakeXen::new(3, 0xff));
        x.set_paused(true);
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let back = Mutex::new(RecordWriter::new(FdIo::new(ours.as_raw_fd())));
        let done = AtomicBool::new(false);
        let stop = AtomicBool::new(false);
        let transition_at = Instant::now();
        let absent = || 0u64;
        let is_owed = |_| false;
        std::thread::scope(|s| {
            let w = s.spawn(|| {
                ServeWatch {
                    ops: x.clone(),
                    done: &done,
                    stop: &stop,
                    back: &back,
                    transition_at,
                    owed: 0,
                    absent: &absent,
                    is_owed: &is_owed,
                    guest_pfns: 0x100,
                }
                .run()
            });
            // Paused: nothing on the back channel.
            theirs
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 1];
            let e = theirs.read(&mut b).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{e}"
            );
            let unpaused = Instant::now();
            x.set_paused(false);
            theirs
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut r = RecordReader::new(&theirs, None);
            let Ok(Record::Resumed(ns)) = r.next_record() else {
                panic!("expected RESUMED");
            };
            // It measures from TRANSITION up to the unpause, not less.
            assert!(
                Duration::from_nanos(ns) >= unpaused - transition_at,
                "{ns} ns"
            );
            done.store(true, Ordering::SeqCst);
            assert_eq!(w.join().unwrap(), None);
        });
        assert!(!stop.load(Ordering::SeqCst));
    }
}
