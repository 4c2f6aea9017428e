//! Reading and writing the caller's file descriptors without owning them
//! and without read-ahead: the stream fd is handed back to libxenguest (and
//! then libxl) after the post-copy records, so every read takes exactly
//! what the record reader asks for.

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How often a blocked read looks at its stop flag.
const POLL_MS: i32 = 100;

/// A borrowed fd. Reads wait with `poll` so that a stop flag can end them
/// (the fault reader of the source must not outlive a failed serve).
#[derive(Debug, Clone)]
pub struct FdIo {
    fd: RawFd,
    stop: Option<Arc<AtomicBool>>,
    deadline: Option<Instant>,
}

impl FdIo {
    /// Wraps `fd`, which the caller keeps open for as long as this is used.
    pub fn new(fd: RawFd) -> FdIo {
        FdIo {
            fd,
            stop: None,
            deadline: None,
        }
    }

    /// Same fd; reads fail with `Interrupted`-free `ConnectionAborted` once
    /// `stop` is set.
    pub fn with_stop(fd: RawFd, stop: Arc<AtomicBool>) -> FdIo {
        FdIo {
            fd,
            stop: Some(stop),
            deadline: None,
        }
    }

    /// Same fd; reads fail with `TimedOut` once `deadline` has passed.
    pub fn with_deadline(fd: RawFd, deadline: Instant) -> FdIo {
        FdIo {
            fd,
            stop: None,
            deadline: Some(deadline),
        }
    }

    fn wait_readable(&self) -> io::Result<()> {
        if self.stop.is_none() && self.deadline.is_none() {
            return Ok(());
        }
        loop {
            if self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "stopped"));
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
            }
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            if rc > 0 {
                return Ok(());
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

impl Read for FdIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait_readable()?;
        // SAFETY: buf is valid for buf.len() bytes; the fd is open (caller
        // contract of new()).
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl Write for FdIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; the fd is open.
        let n = unsafe { libc::write(self.fd, buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reads_exactly_and_stops_on_request() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = FdIo::new(a.as_raw_fd());
        w.write_all(b"hello world").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut r = FdIo::with_stop(b.as_raw_fd(), stop.clone());
        let mut five = [0u8; 5];
        r.read_exact(&mut five).unwrap();
        assert_eq!(&five, b"hello");
        let mut rest = [0u8; 6];
        r.read_exact(&mut rest).unwrap();
        stop.store(true, Ordering::SeqCst);
        let e = r.read(&mut five).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn a_silent_peer_costs_the_deadline() {
        let (_a, b) = UnixStream::pair().unwrap();
        let t = Instant::now();
        let mut r = FdIo::with_deadline(b.as_raw_fd(), t + std::time::Duration::from_millis(250));
        let e = r.read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= std::time::Duration::from_millis(250));
    }
}
