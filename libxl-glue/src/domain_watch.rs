//! Watching the destination domain while post-copy serves its memory:
//! the engine's [`ServeHooks`] of a Xen domain ([`WatchHooks`]).
//!
//! After the switch the guest runs on the destination with part of its
//! memory still on the source. If it shuts down (crash, reboot — Xen turns
//! a triple fault into a `reboot` shutdown unless the guest chose
//! otherwise —, poweroff, suspend, watchdog) or is destroyed before its
//! last page arrived, the migration has failed, whatever the page stream
//! does next. [`WatchHooks`] looks at the domain every [`WATCH_POLL`]
//! while the engine serves and, on such a death:
//!
//! - writes the post-mortem to the helper log, once ([`crate::forensics`]);
//! - fails the engine's guest watch ([`ServeHooks::watch`]) with
//!   [`Error::GuestDied`] naming the shutdown reason and the owed/absent
//!   counts ([`GuestDied`]). The engine then tells the source (RESUMED if
//!   not sent, then ABORT with that text); the source reports
//!   [`Error::DestinationFailed`] with the cause
//!   [`postcopy::DestinationCause::GuestDied`], and never resumes its copy.
//!   Both sides return `EOWNERDEAD` through the C ABI
//!   ([`crate::ffi::errno_of`]), which the libxl patches turn into
//!   `ERROR_DOMAIN_DESTROYED`.
//!
//! The same look sees libxl unpause the domain: that, not the start of the
//! serve, is when the guest resumes ([`ServeHooks::resumed_at`]), so
//! RESUMED (which ends the source's measured downtime) goes out then. A
//! serve that got every page first waits up to [`UNPAUSE_GRACE`] for the
//! unpause (the engine's `DestConfig::resume_grace`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libxl_sys as sys;
use log::{debug, error, info, warn};
use postcopy::destination::ServeHooks;
use postcopy::Error;

use crate::forensics;
use crate::xc::XenOps;
use crate::xen_dest::AbsentView;
use crate::xtl::Progress;
/// How often the domain is looked at during the serve (the issue asks for
/// at most 100 ms).
pub const WATCH_POLL: Duration = Duration::from_millis(50);

/// How long a serve that got every page waits for libxl's unpause.
pub const UNPAUSE_GRACE: Duration = Duration::from_secs(5);

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
/// Its text is the engine's [`Error::GuestDied`] text: it starts with
/// [`postcopy::GUEST_DIED`], by which the source recognises a death in the
/// ABORT reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", postcopy::GUEST_DIED, self.detail())]
pub struct GuestDied {
    /// How.
    pub death: Death,
    /// Owed pages not received yet.
    pub absent: u64,
    /// Pages owed after the switch.
    pub owed: u64,
}

impl GuestDied {
    /// How it died and the counts, after the common prefix.
    fn detail(&self) -> String {
        format!(
            "{} with {} of {} owed pages still absent",
            self.death, self.absent, self.owed
        )
    }

    /// The engine error the guest watch returns (its text is this death's).
    pub fn into_error(self) -> Error {
        Error::GuestDied(self.detail())
    }
}

/// True if `e` says the guest died on the destination (there, or as the
/// destination reported it to the source).
pub fn is_guest_death(e: &Error) -> bool {
    e.is_guest_death()
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
    /// At the look that saw the domain being destroyed: its vCPUs' run
    /// time (ns).
    dying_cpu_ns: Option<u64>,
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
            dying_cpu_ns: None,
        }
    }

    /// True only with proof that the guest never ran here and never will:
    /// no look saw the domain unpaused, and the look that saw it being
    /// destroyed read a vCPU run time of zero (libxl destroys a domain
    /// whose creation failed, e.g. a device that did not attach, before
    /// it ever unpauses it). A domain that is gone, shut down (only a
    /// running guest shuts down) or still alive proves nothing.
    pub fn never_ran(&self) -> bool {
        self.unpaused_at.is_none() && self.dying_cpu_ns == Some(0)
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
            self.dying_cpu_ns = Some(info.cpu_time_ns);
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

/// What the hooks saw of the domain so far.
#[derive(Debug)]
struct Seen<O: XenOps> {
    watch: GuestWatch<O>,
    last_look: Option<Instant>,
    died: Option<GuestDied>,
}

/// The engine's serve hooks of a Xen domain: the guest watch, the instant
/// libxl unpaused the domain, progress through xentoollog.
#[derive(Debug)]
pub struct WatchHooks<O: XenOps> {
    ops: Arc<O>,
    view: AbsentView,
    owed: u64,
    guest_pfns: u64,
    seen: Mutex<Seen<O>>,
    progress: Mutex<Progress>,
}

impl<O: XenOps> WatchHooks<O> {
    /// Hooks for `ops`' domain, `owed` pages to come of a guest of
    /// `guest_pfns` pfns; `view` counts the absent ones.
    pub fn new(ops: Arc<O>, view: AbsentView, owed: u64, guest_pfns: u64) -> WatchHooks<O> {
        info!(
            "post-copy destination: page service started; waiting for libxl to unpause the domain"
        );
        WatchHooks {
            seen: Mutex::new(Seen {
                watch: GuestWatch::new(ops.clone()),
                last_look: None,
                died: None,
            }),
            ops,
            view,
            owed,
            guest_pfns,
            progress: Mutex::new(Progress::new("Post-copy pages", owed)),
        }
    }

    /// The guest's death, if the watch saw one.
    pub fn death(&self) -> Option<GuestDied> {
        self.look().died.clone()
    }

    /// Looks at the domain if [`WATCH_POLL`] passed since the last look
    /// (the engine asks more often); a death is recorded once, with its
    /// post-mortem.
    fn look(&self) -> MutexGuard<'_, Seen<O>> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let due = seen.last_look.is_none_or(|t| t.elapsed() >= WATCH_POLL);
        if seen.died.is_some() || !due {
            return seen;
        }
        seen.last_look = Some(Instant::now());
        match seen.watch.poll() {
            Some(WatchEvent::Unpaused) => info!(
                "post-copy destination: libxl unpaused the domain {:?} after the page service started: sending RESUMED",
                seen.watch.started().elapsed()
            ),
            Some(WatchEvent::Died(death)) => {
                let d = GuestDied {
                    death,
                    absent: self.view.absent(),
                    owed: self.owed,
                };
                error!("{d}");
                forensics::post_mortem(&*self.ops, &d, self.guest_pfns, &|p| {
                    self.view.is_owed(p)
                });
                seen.died = Some(d);
            }
            None => {}
        }
        seen
    }
}

impl<O: XenOps> ServeHooks for WatchHooks<O> {
    fn resumed_at(&self) -> Option<Instant> {
        self.look().watch.unpaused_at()
    }

    fn watch(&self) -> Result<(), Error> {
        match &self.look().died {
            Some(d) => Err(d.clone().into_error()),
            None => Ok(()),
        }
    }

    fn progress(&self, installed: u64, _owed: u64) {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(installed);
    }

    fn never_ran(&self) -> bool {
        let seen = self.look();
        seen.died.is_some() && seen.watch.never_ran()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeXen;
    use crate::xen_dest::XenDestination;

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
    fn only_a_domain_destroyed_before_it_ever_ran_never_ran() {
        // A paused domain (as libxl's restore leaves it) and its watch.
        let paused = |id| {
            let x = Arc::new(FakeXen::new(id, 0xff));
            x.set_paused(true);
            (x.clone(), GuestWatch::new(x))
        };
        // Destroyed while still paused, never unpaused: proof.
        let (x, mut w) = paused(7);
        assert_eq!(w.poll(), None);
        assert!(!w.never_ran(), "alive: it may still run");
        x.destroy();
        assert_eq!(w.poll(), Some(WatchEvent::Died(Death::Dying)));
        assert!(w.never_ran());
        // Unpaused once, then destroyed: it ran.
        let (y, mut w) = paused(8);
        y.set_paused(false);
        assert_eq!(w.poll(), Some(WatchEvent::Unpaused));
        y.destroy();
        assert_eq!(w.poll(), Some(WatchEvent::Died(Death::Dying)));
        assert!(!w.never_ran());
        // Unpaused and destroyed between two looks: the run time says so
        // even though no look saw it unpaused.
        let (z, mut w) = paused(9);
        z.unpause_and_destroy();
        assert_eq!(w.poll(), Some(WatchEvent::Died(Death::Dying)));
        assert!(!w.never_ran());
        // Gone: no proof.
        let (g, mut w) = paused(10);
        g.state().domain = None;
        assert_eq!(w.poll(), Some(WatchEvent::Died(Death::Gone)));
        assert!(!w.never_ran());
    }

    #[test]
    fn the_reason_names_what_happened() {
        let d = GuestDied {
            death: Death::Shutdown(sys::SHUTDOWN_crash),
            absent: 3712,
            owed: 65551,
        };
        let s = d.to_string();
        assert!(s.starts_with(postcopy::GUEST_DIED), "{s}");
        assert!(s.contains("shutdown reason crash"), "{s}");
        assert!(
            s.contains("with 3712 of 65551 owed pages still absent"),
            "{s}"
        );
        let e = d.clone().into_error();
        assert_eq!(e.to_string(), s);
        assert!(matches!(&e, Error::GuestDied(_)), "{e}");
        assert!(is_guest_death(&e));
        // The source gets the destination error's text as the ABORT reason.
        assert!(is_guest_death(&Error::destination_failed(e.to_string())));
        assert!(!is_guest_death(&Error::destination_failed(
            "out of memory".into()
        )));
        assert!(!is_guest_death(&Error::PeerAborted(d.to_string())));
        let r = Death::Shutdown(sys::SHUTDOWN_reboot).to_string();
        assert!(r.contains("reboot") && r.contains("triple fault"), "{r}");
    }

    #[test]
    fn resumed_waits_for_the_unpause() {
        let x = Arc::new(FakeXen::new(3, 0xff));
        x.set_paused(true);
        let mem = XenDestination::new(x.clone(), 0x100).unwrap();
        let hooks = WatchHooks::new(x.clone(), mem.absent_view(), 0, 0x100);
        let started = Instant::now();
        // Paused: no resume instant, whatever the engine's pace.
        while started.elapsed() < Duration::from_millis(300) {
            assert_eq!(hooks.resumed_at(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
        let unpaused = Instant::now();
        x.set_paused(false);
        let at = loop {
            if let Some(at) = hooks.resumed_at() {
                break at;
            }
            assert!(unpaused.elapsed() < Duration::from_secs(5), "never resumed");
            std::thread::sleep(Duration::from_millis(20));
        };
        // It measures up to the unpause, not less.
        assert!(at >= unpaused, "{:?} before the unpause", unpaused - at);
        assert!(hooks.watch().is_ok());
        assert_eq!(hooks.death(), None);
    }
}
