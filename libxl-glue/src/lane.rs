//! The fault lane: fault replies on a connection of their own beside xl's
//! stream, so a reply never queues behind pushed pages (issue #15).
//!
//! xl gives the helpers one stream and one back channel. When both ends
//! of the migration hold the *same* pipe as their stream (`xl migrate -s
//! '' dom 'xl migrate-receive'` on one host: the source's stream is the
//! write end, the destination's the read end), the pipe's inode names a
//! rendezvous both can compute without being told:
//! `<status dir>/lane-<inode>.sock`. The source listens there before it
//! sends the owed pfns; the destination connects when it has them, before
//! READY; after READY the source takes the connection (already queued, so
//! the two sides agree) and both serve with [`Replies::Channel`] over it.
//! Anything else (no such socket, another transport in between, the
//! source with `LIBXL_POSTCOPY_LANE=off`) leaves the replies in-band, where
//! the push window bounds their wait.
//!
//! [`Replies::Channel`]: postcopy::transport::Replies::Channel

use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::{debug, info, warn};

/// Environment switch: `off` keeps the source from offering a lane
/// (replies in-band, as before).
pub const LANE_ENV: &str = "LIBXL_POSTCOPY_LANE";

/// The rendezvous in `dir` (the helpers' status folder,
/// [`crate::status_file::status_dir`]) of the pipe `fd` is one end of, if
/// it is a pipe.
pub fn rendezvous(dir: &Path, fd: RawFd) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let name = link.to_str()?;
    let inode = name.strip_prefix("pipe:[")?.strip_suffix(']')?;
    let inode: u64 = inode.parse().ok()?;
    Some(dir.join(format!("lane-{inode}.sock")))
}

/// The source's offer of a lane, listening until [`Offer::take`].
#[derive(Debug)]
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
}

impl Offer {
    /// Listens at the rendezvous in `dir` of `stream_fd` (`None`: not a
    /// pipe, or the socket cannot be made); the caller asks [`wanted`].
    pub fn open(dir: &Path, stream_fd: RawFd) -> Option<Offer> {
        let path = rendezvous(dir, stream_fd)?;
        if let Err(e) = std::fs::create_dir_all(dir) {
            debug!("fault lane: cannot make {}: {e}", dir.display());
            return None;
        }
        // A socket left by a helper that died: its inode is free again.
        let _ = std::fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(listener) => {
                if let Err(e) = listener.set_nonblocking(true) {
                    warn!("fault lane: {e}; replies go in-band");
                    let _ = std::fs::remove_file(&path);
                    return None;
                }
                debug!("fault lane offered at {}", path.display());
                Some(Offer { listener, path })
            }
            Err(e) => {
                debug!("fault lane: cannot listen at {}: {e}", path.display());
                None
            }
        }
    }

    /// After READY: the destination's connection if it made one (it
    /// connects before it sends READY, so it is queued by now).
    pub fn take(self) -> Option<UnixStream> {
        match self.listener.accept() {
            Ok((s, _)) => match s.set_nonblocking(false) {
                Ok(()) => Some(s),
                Err(e) => {
                    warn!("fault lane: {e}; replies go in-band");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => {
                warn!("fault lane: accept: {e}; replies go in-band");
                None
            }
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the source offers the lane: unless `LIBXL_POSTCOPY_LANE=off`.
/// (It was opt-in while the emulated host lost guests; with one emulated
/// CPU per host every lane run passed, and `lane-compare` on 2026-12-07
/// had the guest's longest stall 7.2 s with the lane against 12.2 s
/// in-band; testbed/README.md.)
pub fn wanted() -> bool {
    let off = std::env::var(LANE_ENV).is_ok_and(|v| v.trim() == "off");
    if off {
        info!("fault replies go in-band ({LANE_ENV}=off)");
    }
    !off
}

/// The destination's side: connects to the source's offer at the
/// rendezvous in `dir` of `stream_fd`, if there is one.
pub fn connect(dir: &Path, stream_fd: RawFd) -> Option<UnixStream> {
    let path = rendezvous(dir, stream_fd)?;
    match UnixStream::connect(&path) {
        Ok(s) => Some(s),
        Err(e) => {
            debug!("fault lane: none at {} ({e})", path.display());
            None
        }
    }
}

/// A serve phase's replies: on the lane if there is one, else in-band
/// (`wrap` boxes the stream as the engine's side wants it), and a second
/// handle on the lane for [`closer`].
pub fn replies<T>(
    lane: Option<UnixStream>,
    wrap: impl FnOnce(UnixStream) -> T,
) -> (postcopy::transport::Replies<T>, Option<UnixStream>) {
    match lane {
        Some(s) => {
            let handle = s
                .try_clone()
                .map_err(|e| warn!("fault lane: {e}; it cannot be shut down early"))
                .ok();
            (postcopy::transport::Replies::Channel(wrap(s)), handle)
        }
        None => (postcopy::transport::Replies::InBand, None),
    }
}

/// A serve phase's closer: stops the stream's reads (`stop`) and shuts
/// the lane down, so every read of either ends.
pub fn closer(stop: Arc<AtomicBool>, lane: Option<UnixStream>) -> postcopy::transport::Closer {
    Arc::new(move || {
        stop.store(true, Ordering::SeqCst);
        if let Some(l) = &lane {
            let _ = l.shutdown(std::net::Shutdown::Both);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn both_ends_of_one_pipe_meet_and_other_fds_do_not() {
        let dir = std::env::temp_dir().join(format!("lane-test-{}", std::process::id()));
        let dir = dir.as_path();
        let (r, w) = std::io::pipe().expect("pipe");
        let a = rendezvous(dir, w.as_raw_fd()).expect("a pipe has a rendezvous");
        assert_eq!(Some(a.clone()), rendezvous(dir, r.as_raw_fd()));
        let offer = Offer::open(dir, w.as_raw_fd()).expect("offer");
        assert!(a.exists());
        let mut d = connect(dir, r.as_raw_fd()).expect("the destination connects");
        let mut s = offer.take().expect("the source takes it");
        assert!(!a.exists(), "the rendezvous is removed once taken");
        s.write_all(b"page").unwrap();
        let mut got = [0u8; 4];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"page");
        // Another pipe: no offer there, so no lane.
        let (r2, _w2) = std::io::pipe().expect("pipe");
        assert!(connect(dir, r2.as_raw_fd()).is_none());
        // Not a pipe: no rendezvous.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(rendezvous(dir, f.as_raw_fd()).is_none());
        // Offered but never connected: nothing taken.
        let (_r3, w3) = std::io::pipe().expect("pipe");
        assert!(Offer::open(dir, w3.as_raw_fd())
            .expect("offer")
            .take()
            .is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
