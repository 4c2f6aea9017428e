//! Handing a freshly connected socket to a running side: the transport
//! half of recovery for a side that does not dial or listen itself.
//!
//! On Xen the helpers run inside libxl's save/restore helper processes,
//! whose only link is xl's stream; when it breaks after the switch, the
//! engine's [`crate::recovery`] asks its reconnect hook for new links.
//! The helper answers that hook from a Unix socket in its status folder,
//! [`control_path`]: an admin's `xl-postcopy recover` connects a TCP
//! socket to the other host and passes it there ([`hand_over`], the fd
//! as `SCM_RIGHTS`); the helper takes it ([`take_over`]) and the engine
//! runs its RECOVER handshake on it. One line back says whether it was
//! taken (`ok …` or `error …`). Only the helper's own user (root) may
//! hand it a socket.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::transport::Socket;

/// The control socket of the helper serving `domid`'s migration in the
/// status folder `dir`.
pub fn control_path(dir: &Path, domid: u32) -> PathBuf {
    dir.join(format!("{domid}.recover.sock"))
}

/// What `hand_over` sends with the fd.
const HELLO: &[u8] = b"recover\n";
/// Longest answer line.
const MAX_ANSWER: u64 = 512;

/// A connected stream socket of any family (TCP from `xl-postcopy
/// recover`, a Unix socket in tests), as the engine's links want it.
#[derive(Debug)]
pub struct Conn(OwnedFd);

impl Conn {
    /// Wraps a connected stream socket.
    pub fn new(fd: OwnedFd) -> Conn {
        Conn(fd)
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(&self.0, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // MSG_NOSIGNAL: a peer gone is EPIPE, never SIGPIPE.
            match rustix::net::send(&self.0, buf, SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for Conn {
    fn try_clone_socket(&self) -> io::Result<Self> {
        Ok(Conn(self.0.try_clone()?))
    }
    fn shutdown_both(&self) {
        let _ = rustix::net::shutdown(&self.0, rustix::net::Shutdown::Both);
    }
}

/// Failures of a hand-over.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The control socket could not be reached or spoken to.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The running side refused the socket.
    #[error("refused: {0}")]
    Refused(String),
}

/// `xl-postcopy recover`'s side: passes `conn` to the side listening on
/// `control` and waits up to `wait` for its answer. Returns the answer.
pub fn hand_over(
    control: &Path,
    conn: BorrowedFd<'_>,
    wait: Duration,
) -> Result<String, HandoverError> {
    let ctl = |source| HandoverError::Control {
        path: control.to_path_buf(),
        source,
    };
    let s = UnixStream::connect(control).map_err(ctl)?;
    let fds = [conn];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(ctl(io::Error::other("no room for the descriptor")));
    }
    rustix::net::sendmsg(
        &s,
        &[io::IoSlice::new(HELLO)],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| ctl(e.into()))?;
    s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
        .map_err(ctl)?;
    let mut answer = String::new();
    (&s).take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .map_err(|e| {
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                ctl(io::Error::new(
                    e.kind(),
                    format!("no answer within {wait:?} (the helper takes a socket only while its link is broken)"),
                ))
            } else {
                ctl(e)
            }
        })?;
    let answer = answer.trim();
    match answer.strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None if answer.is_empty() => Err(HandoverError::Refused(
            "the helper closed the control socket without taking the socket (its migration ended?)"
                .into(),
        )),
        None => Err(HandoverError::Refused(
            answer.strip_prefix("error ").unwrap_or(answer).to_string(),
        )),
    }
}

/// The running side's control socket, listening until dropped (then
/// removed, if it is still the one this made).
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    what: String,
}

impl ControlSocket {
    /// Listens at `path` (a stale socket there is replaced), readable and
    /// writable by this user only. `what` names this side in answers.
    pub fn open(path: &Path, what: &str) -> io::Result<ControlSocket> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            what: what.to_string(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until `deadline` for an admin's hand-over and returns the
    /// socket it carried (answered `ok`). A caller of another user, or a
    /// message without a stream socket, is answered `error` and waited
    /// past. `TimedOut` when nobody came.
    pub fn take_over(&self, deadline: Instant) -> io::Result<Conn> {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => match self.receive(&s) {
                    Ok(fd) => {
                        answer(&s, &format!("ok {}: link handed over", self.what));
                        return Ok(Conn(fd));
                    }
                    Err(e) => {
                        log::warn!("recovery control socket: {e}");
                        answer(&s, &format!("error {}: {e}", self.what));
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no `xl-postcopy recover` yet",
                ));
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    fn receive(&self, s: &UnixStream) -> io::Result<OwnedFd> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        let cred = rustix::net::sockopt::socket_peercred(s)?;
        let me = rustix::process::geteuid();
        if cred.uid != me && !cred.uid.is_root() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("uid {} may not hand this side a link", cred.uid.as_raw()),
            ));
        }
        let mut buf = [0u8; HELLO.len()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            s,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = m {
                fd = fd.or_else(|| fds.next());
            }
        }
        let fd = fd.ok_or_else(|| io::Error::other("no socket came with the request"))?;
        if buf[..got.bytes] != *HELLO {
            return Err(io::Error::other("not a recover request"));
        }
        let ty = rustix::net::sockopt::socket_type(fd.as_fd())?;
        if ty != rustix::net::SocketType::STREAM {
            return Err(io::Error::other("what came is not a stream socket"));
        }
        Ok(fd)
    }
}

fn answer(s: &UnixStream, line: &str) {
    let _ = (&*s).write_all(format!("{line}\n").as_bytes());
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_socket_handed_over_is_the_same_connection() {
        let dir = std::env::temp_dir().join(format!("handover-{}", std::process::id()));
        let path = control_path(&dir, 7);
        let ctl = ControlSocket::open(&path, "test side").unwrap();
        let (mine, theirs) = UnixStream::pair().unwrap();
        let p = path.clone();
        let t = std::thread::spawn(move || hand_over(&p, theirs.as_fd(), Duration::from_secs(5)));
        let mut conn = ctl
            .take_over(Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(t.join().unwrap().unwrap(), "test side: link handed over");
        conn.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        (&mine).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        // Nobody: bounded.
        let t0 = Instant::now();
        let e = ctl.take_over(t0 + Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // A side not listening: refused at once.
        drop(ctl);
        assert!(!path.exists());
        let (_a, b) = UnixStream::pair().unwrap();
        assert!(matches!(
            hand_over(&path, b.as_fd(), Duration::from_secs(1)),
            Err(HandoverError::Control { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
