//! The replacement pager: a destination whose pager died after the switch
//! gets a new one.
//!
//! On the destination the restore session of this library runs inside
//! libxl-save-helper (`--restore-domain`, a child of `xl
//! migrate-receive`); after the switch it is the guest's only pager. If
//! it dies (SIGKILL, a crash), libxl sees its helper exit, pauses the
//! domain and keeps it (the stream failed after the guest resumed), and
//! xl migrate-receive exits; the source sees its stream break and waits
//! in its recovery window ([`crate::recover`]). Nothing else of the
//! migration is lost: Xen still has the domain's paged-out pfns, the
//! source its copy and its sent-map, and the owed set is in
//! `<status dir>/<domid>.owed` ([`postcopy::takeover`]).
//!
//! [`serve`] is that new pager (`xl-postcopy-pager DOMID`, which
//! `xl-postcopy recover DOMAIN --listen ADDR` starts when no helper of
//! the domain answers its control socket): it opens the control socket
//! the dead one left, takes the domain's paging ring over
//! ([`XenDestination::take_over`]: pause, mem_paging disabled and enabled
//! again, the vCPU pauses of unanswered requests released), and serves
//! as the engine's replacement destination
//! ([`DestSession::serve_taken_over`]) over the connection the admin
//! hands over: its RECOVER lists nothing, the source resends what it sent
//! and pushes the rest, pages the dead pager loaded are refused by Xen.
//! The domain is unpaused (every toolstack pause released) only once a
//! source is connected; if none comes within the recovery window, or the
//! migration fails later, the domain is paused again and kept, with the
//! pages still absent counted.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use log::{error, info, warn};
use postcopy::destination::{DestConfig, DestSession};
use postcopy::metrics::Metrics;
use postcopy::recovery::Recovery;
use postcopy::takeover::{owed_path, OwedSet};
use postcopy::transport::DestLinks;

use crate::domain_watch::WatchHooks;
use crate::recover::{recover_timeout_setting, Rescue};
use crate::xc::{LibXc, XenOps};
use crate::xen_dest::{release_pauses, XenDestination};

/// Most toolstack pauses released when the guest may run again (the
/// failed migration's one or two, and the replacement's own).
const MAX_PAUSES: u32 = 16;

/// Why a replacement pager could not finish.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Nothing to take over.
    #[error("no owed set for domain {domid} at {path} ({source}); only a destination that kept one at the switch with a recovery window can be replaced")]
    NoOwedSet {
        /// The domain.
        domid: u32,
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The recovery window is 0 or the control socket cannot be made.
    #[error("domain {domid}: no control socket for the admin's connection (recovery window 0, or the socket could not be opened; see the log)")]
    NoControl {
        /// The domain.
        domid: u32,
    },
    /// Xen refused.
    #[error("domain {domid}: {source}")]
    Xen {
        /// The domain.
        domid: u32,
        /// The failure.
        #[source]
        source: postcopy::memory::MemoryError,
    },
    /// The migration failed after the takeover: the domain is paused and
    /// kept with `lost` pages absent.
    #[error(
        "domain {domid}: {error}; the domain is paused and kept, {lost} owed pages never arrived"
    )]
    Failed {
        /// The domain.
        domid: u32,
        /// The cause.
        #[source]
        error: postcopy::Error,
        /// Owed pages not installed.
        lost: u64,
    },
}

/// What a replacement that completed did.
#[derive(Debug, Clone, Copy)]
pub struct Replaced {
    /// Pages owed at the switch.
    pub owed: u64,
    /// Toolstack pauses released when the source connected.
    pub pauses_released: u32,
}

/// Replaces the dead pager of `domid`'s migration, whose status folder
/// is `dir` (control socket and owed set), until the migration completes
/// or fails ([`crate::takeover`]).
pub fn serve(domid: u32, dir: &Path) -> Result<Replaced, TakeoverError> {
    let path = owed_path(dir, domid);
    let owed = OwedSet::read(&path).map_err(|source| TakeoverError::NoOwedSet {
        domid,
        path: path.clone(),
        source,
    })?;
    let xen = |source| TakeoverError::Xen { domid, source };
    let ops = Arc::new(LibXc::open(domid).map_err(|e| xen(crate::xen_source::mem_err(e)))?);
    serve_with(ops, &owed, dir, recover_timeout_setting())
}

/// [`serve`] on `ops`' domain with the owed set `owed`, the status folder
/// `dir` and the recovery window `window`.
pub fn serve_with<O: XenOps + 'static>(
    ops: Arc<O>,
    owed: &OwedSet,
    dir: &Path,
    window: std::time::Duration,
) -> Result<Replaced, TakeoverError> {
    let domid = ops.domid();
    let xen = |source| TakeoverError::Xen { domid, source };
    // First, so that the admin's connection can queue while the ring is
    // taken over.
    let rescue = Rescue::open_in(dir, domid, "replacement pager", false, window)
        .ok_or(TakeoverError::NoControl { domid })?;
    let mem = XenDestination::take_over(ops.clone(), owed).map_err(xen)?;
    let hooks = WatchHooks::new(
        ops.clone(),
        mem.absent_view(),
        owed.count(),
        owed.guest_pfns,
    );
    let cfg = DestConfig {
        owed_file: Some(owed_path(dir, domid)),
        fault_nice: crate::fault_nice_setting(),
        ..DestConfig::default()
    };
    let mut session = DestSession::take_over(mem, owed, cfg).map_err(|error| {
        keep_paused(&*ops);
        TakeoverError::Failed {
            domid,
            error,
            lost: owed.count(),
        }
    })?;
    session.set_status(crate::status_file::status_config(domid));
    let metrics = Metrics::new();
    let mut inner = rescue.dest_hook();
    let mut released = None;
    let mut hook = |deadline: Instant| -> std::io::Result<DestLinks> {
        let links = inner(deadline)?;
        if released.is_none() {
            // A source is connected: the guest may run (its faults are
            // served from now on).
            let n = release_pauses(&*ops, MAX_PAUSES).map_err(std::io::Error::other)?;
            info!("domain {domid} unpaused ({n} pauses released): the replacement pager serves it");
            released = Some(n);
        }
        Ok(links)
    };
    info!(
        "replacement pager of domain {domid}: {} pages owed; waiting up to {window:?} for the source (xl-postcopy recover --to on the source host)",
        owed.count()
    );
    let start = Instant::now();
    let result = session.serve_taken_over(
        &hooks,
        &metrics,
        Recovery {
            timeout: window,
            reconnect: &mut hook,
        },
        // Recovery exists only without the fault lane: the source sends
        // its fault replies in-band.
        true,
    );
    let took = start.elapsed();
    match result {
        Ok(()) => {
            if let Err(e) = session.memory().settle() {
                warn!("answering the last paging requests: {e}");
            }
            info!(
                "replacement pager of domain {domid}: every owed page is in after {took:?}; post-copy destination done:\n{}",
                metrics.snapshot()
            );
            Ok(Replaced {
                owed: owed.count(),
                pauses_released: released.unwrap_or(0),
            })
        }
        Err(error) => {
            keep_paused(&*ops);
            let lost = session.unserved();
            let paged = ops
                .domain_info()
                .ok()
                .flatten()
                .map_or_else(|| "unknown".into(), |i| i.paged_pages.to_string());
            error!(
                "replacement pager of domain {domid} failed after {took:?}: {error}; the domain is paused and kept: {lost} owed pages did not reach this pager, {paged} are still paged out (Xen's count), the source copy has them"
            );
            Err(TakeoverError::Failed { domid, error, lost })
        }
    }
}

/// Pauses the domain (once) and says so: a guest with absent pages and
/// no pager must not run.
fn keep_paused<O: XenOps + ?Sized>(ops: &O) {
    let paused = matches!(ops.domain_info(), Ok(Some(i)) if i.paused);
    if !paused {
        if let Err(e) = ops.pause() {
            error!("could not pause domain {}: {e}", ops.domid());
        }
    }
}
