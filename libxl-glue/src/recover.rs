//! Recovery without the tunnel: the transport half of the engine's
//! [`postcopy::recovery`] for the Xen helpers.
//!
//! After the switch both helpers serve on xl's one stream (ssh or
//! whatever `xl migrate -s` runs). When it breaks, the engine keeps its
//! state (the destination's guest runs on, a vCPU touching an absent page
//! waits) and asks its reconnect hook for new links for up to
//! [`RECOVER_TIMEOUT`] (`LIBXL_POSTCOPY_RECOVER_TIMEOUT` seconds; 0: no
//! window, the first break fails the migration as before). Each helper's
//! hook takes a connected socket from its control socket in the status
//! folder, `<dir>/<domid>.recover.sock` ([`postcopy::handover`]), where
//! `xl-postcopy recover <domain> --listen|--to ADDR`, run on each host,
//! hands over the two ends of one new TCP connection. The engine then runs
//! its RECOVER handshake on it and serving goes on; nothing of the
//! protocol lives here.
//!
//! xl's stream is not used again after a break: the serve calls report
//! [`STREAM_REPLACED`] so that libxenguest, libxl and xl end the migration
//! without the records and messages that would have followed on it.
//! With the fault lane ([`crate::lane`]) there is no recovery (one new
//! connection cannot stand for two).

use std::io;
use std::time::{Duration, Instant};

use log::{info, warn};
use postcopy::handover::{control_path, Conn, ControlSocket};
use postcopy::metrics::Metrics;
use postcopy::transport::{DestLinks, Socket, SourceLinks};

/// Environment setting: seconds a broken link may stay broken after the
/// switch before the migration fails (0: no recovery).
pub const RECOVER_TIMEOUT_ENV: &str = "LIBXL_POSTCOPY_RECOVER_TIMEOUT";

/// Default recovery window.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// `LIBXL_POSTCOPY_STREAM_REPLACED`: what a serve call returns when the
/// migration completed, but over a connection that replaced xl's stream
/// after it broke (nothing more can travel on the stream).
pub const STREAM_REPLACED: i32 = 1;

/// Longest single wait of one reconnect attempt (the engine retries).
const ATTEMPT: Duration = Duration::from_millis(250);

/// The window [`RECOVER_TIMEOUT_ENV`] asks for, or [`RECOVER_TIMEOUT`].
pub fn recover_timeout_setting() -> Duration {
    crate::env_seconds(
        RECOVER_TIMEOUT_ENV,
        RECOVER_TIMEOUT,
        "the recovery window is",
    )
}

/// One helper's way back after a break: its control socket and window.
#[derive(Debug)]
pub struct Rescue {
    ctl: ControlSocket,
    timeout: Duration,
}

impl Rescue {
    /// Opens the control socket of `domid`'s migration in the folder
    /// `dir` (the status folder on Xen), with the window `timeout`.
    /// `None` (and the first break fails the migration) when the window
    /// is 0, the replies take the lane, or the socket cannot be made.
    pub fn open_in(
        dir: &std::path::Path,
        domid: u32,
        side: &str,
        on_lane: bool,
        timeout: Duration,
    ) -> Option<Rescue> {
        if timeout.is_zero() {
            info!("{RECOVER_TIMEOUT_ENV}=0: a link broken after the switch fails the migration");
            return None;
        }
        if on_lane {
            info!("fault replies on the lane: a link broken after the switch fails the migration (no recovery with the lane)");
            return None;
        }
        let path = control_path(dir, domid);
        match ControlSocket::open(&path, &format!("{side} of domain {domid}")) {
            Ok(ctl) => Some(Rescue { ctl, timeout }),
            Err(e) => {
                warn!(
                    "cannot open the recovery control socket {}: {e}; a link broken after the switch fails the migration",
                    path.display()
                );
                None
            }
        }
    }

    /// The window.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn take(&self, deadline: Instant) -> io::Result<Conn> {
        let conn = self.ctl.take_over(deadline.min(Instant::now() + ATTEMPT))?;
        info!(
            "a new connection came through {}: recovering on it",
            self.ctl.path().display()
        );
        Ok(conn)
    }

    /// The source's reconnect hook.
    pub fn source_hook(&self) -> impl FnMut(Instant) -> io::Result<SourceLinks> + '_ {
        move |deadline| {
            let c = self.take(deadline)?;
            SourceLinks::from_sockets(c.try_clone_socket()?, c)
        }
    }

    /// The destination's reconnect hook.
    pub fn dest_hook(&self) -> impl FnMut(Instant) -> io::Result<DestLinks> + '_ {
        move |deadline| {
            let c = self.take(deadline)?;
            DestLinks::from_sockets(c.try_clone_socket()?, c)
        }
    }
}

/// What a serve call that succeeded returns: 0, or [`STREAM_REPLACED`]
/// when a break was recovered (xl's stream is gone).
pub fn served(metrics: &Metrics) -> i32 {
    if metrics.outages.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        info!("the migration completed over a connection that replaced xl's stream");
        STREAM_REPLACED
    } else {
        0
    }
}
