//! Pointing a stuck side at a new address: `xl-postcopy recover`.
//!
//! After the switch a broken link is retried automatically (the sender
//! dials the same address again, the receiver keeps listening) for
//! `--recover-timeout` seconds. When the path itself changed — the
//! receiver's host got a new address, or a firewall now blocks the port —
//! an admin redirects a running side through its control socket
//! (`--control PATH`, a Unix socket only the user can reach):
//!
//! ```text
//! xl-postcopy recover --control /run/xpc-send.sock --to 10.0.0.7:4444
//! xl-postcopy recover --control /run/xpc-recv.sock --listen 10.0.0.7:4444
//! ```
//!
//! The next reconnect attempt uses the new address; the migration's state
//! (sent-map, received-map, waiting faults) is untouched. The protocol is
//! one line each way: `to ADDR` or `listen ADDR`, answered by `ok …` or
//! `error …`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use log::warn;

use super::link::LinkError;
use super::session::LinkOpts;
use crate::auth::Token;

/// Longest command line accepted.
const MAX_LINE: u64 = 256;

/// A redirection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sender: dial this address from now on.
    To(SocketAddr),
    /// Receiver: listen on this address from now on.
    Listen(SocketAddr),
}

impl Command {
    /// Parses `to ADDR` / `listen ADDR`.
    pub fn parse(line: &str) -> Result<Command, String> {
        let mut words = line.split_whitespace();
        let (verb, addr) = (words.next(), words.next());
        if words.next().is_some() {
            return Err("too many words".into());
        }
        let addr: SocketAddr = addr
            .ok_or("missing address")?
            .parse()
            .map_err(|e| format!("bad address: {e}"))?;
        match verb {
            Some("to") => Ok(Command::To(addr)),
            Some("listen") => Ok(Command::Listen(addr)),
            _ => Err("expected `to ADDR` or `listen ADDR`".into()),
        }
    }

    fn line(&self) -> String {
        match self {
            Command::To(a) => format!("to {a}\n"),
            Command::Listen(a) => format!("listen {a}\n"),
        }
    }
}

/// Failures of `xl-postcopy recover` and of the link options.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The control socket could not be reached.
    #[error("control socket {path}: {source}")]
    Control {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The running side refused the command.
    #[error("refused: {0}")]
    Refused(String),
    /// A bad timeout option.
    #[error("bad timeout {0} (seconds, non-negative)")]
    Timeout(f64),
    /// The token file is unusable.
    #[error(transparent)]
    Token(#[from] LinkError),
}

/// A running control socket; removed when dropped (if it is still the
/// one this created).
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    /// Device and inode of the socket this created.
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Device and inode of what is at `path` (not following a symlink), if it
/// is a socket.
fn socket_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_socket().then(|| (m.dev(), m.ino()))
}

/// Makes room for a control socket at `path`: nothing there, or a stale
/// socket (nobody answers on it), which is removed. Anything else — a
/// file, a directory, a symlink, a socket another process serves — is
/// refused and left alone.
fn clear_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let taken = |why: &str| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} {why}; refusing to replace it", path.display()),
        )
    };
    if socket_id(path).is_none() {
        let what = if meta.is_dir() {
            "is a directory"
        } else if meta.file_type().is_symlink() {
            "is a symbolic link"
        } else {
            "exists and is not a socket"
        };
        return Err(taken(what));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(taken("is a socket another process serves")),
        // Nobody listens: left behind by a process that died.
        Err(_) => std::fs::remove_file(path),
    }
}

impl Control {
    /// Listens on `path` and hands each command to `handle`, whose answer
    /// goes back to the admin. A stale socket at `path` is replaced;
    /// anything else there is refused ([`clear_stale`]).
    pub fn serve(
        path: &Path,
        handle: impl Fn(Command) -> Result<String, String> + Send + 'static,
    ) -> io::Result<Control> {
        clear_stale(path)?;
        let listener = UnixListener::bind(path)?;
        let id = socket_id(path)
            .ok_or_else(|| io::Error::other(format!("{}: no socket after bind", path.display())))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("xpc-control".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            if let Err(e) = answer(s, &handle) {
                                warn!("control socket: {e}");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            warn!("control socket: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })?;
        Ok(Control {
            path: path.to_path_buf(),
            id,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only the socket this created: whatever replaced it stays.
        if socket_id(&self.path) == Some(self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn answer(s: UnixStream, handle: &impl Fn(Command) -> Result<String, String>) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new((&s).take(MAX_LINE)).read_line(&mut line)?;
    let reply = match Command::parse(line.trim()).and_then(handle) {
        Ok(msg) => format!("ok {msg}\n"),
        Err(msg) => format!("error {msg}\n"),
    };
    (&s).write_all(reply.as_bytes())
}

/// `xl-postcopy recover`: sends `cmd` to the side listening on `control`
/// and returns its answer.
pub fn send_command(control: &Path, cmd: Command) -> Result<String, RecoverError> {
    let ctl = |source| RecoverError::Control {
        path: control.display().to_string(),
        source,
    };
    let mut s = UnixStream::connect(control).map_err(ctl)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(ctl)?;
    s.write_all(cmd.line().as_bytes()).map_err(ctl)?;
    let mut reply = String::new();
    BufReader::new((&s).take(4096))
        .read_line(&mut reply)
        .map_err(ctl)?;
    let reply = reply.trim();
    match reply.strip_prefix("ok ") {
        Some(msg) => Ok(msg.to_string()),
        None => Err(RecoverError::Refused(
            reply.strip_prefix("error ").unwrap_or(reply).to_string(),
        )),
    }
}

/// The link options of `send` and `receive`.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// Seconds to keep restoring a link that breaks after the switch
    /// (0: the first break loses the guest).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub recover_timeout: f64,
    /// Shared secret (at least 16 bytes) for a challenge–response on every
    /// connection; required to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Unix socket on which `xl-postcopy recover` can redirect this side.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Seconds a peer may take no bytes before the link counts as broken
    /// (0: wait forever).
    #[arg(long, value_name = "SECONDS", default_value_t = 15.0)]
    pub stall_timeout: f64,
    /// Seconds the sender waits, its guest stopped, for the receiver's
    /// READY before aborting and resuming its guest (0: wait forever).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub ready_timeout: f64,
    /// Publish this side's status (JSON, replaced every 0.5 s while it
    /// serves, and at the end) to this file; `xl-postcopy status --file`
    /// reads it.
    #[arg(long, value_name = "FILE")]
    pub status_file: Option<PathBuf>,
}

impl LinkArgs {
    /// The options these arguments stand for.
    pub fn opts(&self) -> Result<LinkOpts, RecoverError> {
        let recover_timeout = Duration::try_from_secs_f64(self.recover_timeout)
            .map_err(|_| RecoverError::Timeout(self.recover_timeout))?;
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        let stall_timeout = Duration::try_from_secs_f64(self.stall_timeout)
            .map_err(|_| RecoverError::Timeout(self.stall_timeout))?;
        let ready_timeout = Duration::try_from_secs_f64(self.ready_timeout)
            .map_err(|_| RecoverError::Timeout(self.ready_timeout))?;
        Ok(LinkOpts {
            recover_timeout,
            token,
            control: self.control.clone(),
            stall_timeout,
            ready_timeout,
            status_file: self.status_file.clone(),
            accept_timeout: super::session::DEFAULT_ACCEPT_TIMEOUT,
            ..LinkOpts::default()
        })
    }
}

/// The arguments of `xl-postcopy recover`.
#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    /// Xen: the domain (name or id) whose post-copy migration lost xl's
    /// stream after the switch, on this host (the source copy is
    /// `NAME--postcopy-source`); run on both hosts, one with `--listen`,
    /// the other with `--to` the same address.
    #[arg(required_unless_present = "control", conflicts_with = "control")]
    pub domain: Option<String>,
    /// Local mode: the running side's control socket (its `--control`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Local mode: the sender dials this address from now on. Xen: connect
    /// to the other host's `recover --listen` here.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "listen",
        required_unless_present = "listen"
    )]
    pub to: Option<SocketAddr>,
    /// Local mode: the receiver listens on this address from now on. Xen:
    /// wait here for the other host's `recover --to`; on a destination
    /// whose helper died after the switch, first start the replacement
    /// pager (`xl-postcopy-pager`, or $XL_POSTCOPY_PAGER) and hand the
    /// connection to it.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Xen: folder of the helpers' status files and control sockets
    /// (default: $XEN_POSTCOPY_STATUS_DIR, else /run/xen-postcopy).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Xen: seconds to wait for the other host's end and the helper's
    /// answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub timeout: f64,
}

impl RecoverArgs {
    /// Sends the command (local mode) or hands a new connection to the
    /// domain's helper (Xen); returns the running side's answer.
    pub fn run(&self) -> Result<String, RecoverError> {
        let cmd = match (self.to, self.listen) {
            (Some(a), _) => Command::To(a),
            (None, Some(a)) => Command::Listen(a),
            (None, None) => return Err(RecoverError::Refused("give --to or --listen".into())),
        };
        match (&self.control, &self.domain) {
            (Some(c), _) => send_command(c, cmd),
            (None, Some(d)) => {
                let wait = Duration::try_from_secs_f64(self.timeout)
                    .map_err(|_| RecoverError::Timeout(self.timeout))?;
                let dir = self
                    .dir
                    .clone()
                    .or_else(|| std::env::var_os("XEN_POSTCOPY_STATUS_DIR").map(Into::into))
                    .unwrap_or_else(|| crate::status::DEFAULT_STATUS_DIR.into());
                crate::status::recover_domain(d, &dir, cmd, wait)
                    .map_err(|e| RecoverError::Refused(e.to_string()))
            }
            (None, None) => Err(RecoverError::Refused("name a domain or --control".into())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_socket() {
        let dir = std::env::temp_dir().join(format!("xpc-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let seen = Arc::new(std::sync::Mutex::new(None));
        let s2 = Arc::clone(&seen);
        let ctl = Control::serve(&path, move |c| {
            *s2.lock().unwrap() = Some(c);
            match c {
                Command::To(a) => Ok(format!("dialling {a}")),
                Command::Listen(_) => Err("not here".into()),
            }
        })
        .unwrap();
        let a: SocketAddr = "127.0.0.1:4444".parse().unwrap();
        assert_eq!(
            send_command(&path, Command::To(a)).unwrap(),
            "dialling 127.0.0.1:4444"
        );
        assert_eq!(*seen.lock().unwrap(), Some(Command::To(a)));
        assert!(matches!(
            send_command(&path, Command::Listen(a)),
            Err(RecoverError::Refused(m)) if m == "not here"
        ));
        drop(ctl);
        assert!(!path.exists());
        assert!(Command::parse("to nowhere").is_err());
        assert!(Command::parse("jump 1.2.3.4:5").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = std::env::temp_dir().join(format!("xpc-ctl-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let none = |_: Command| -> Result<String, String> { Err("no".into()) };
        // A file is never deleted.
        let file = dir.join("file");
        std::fs::write(&file, "precious").unwrap();
        let e = Control::serve(&file, none).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        // A socket another process serves is left alone.
        let path = dir.join("live.sock");
        let first = Control::serve(&path, none).unwrap();
        let e = Control::serve(&path, none).unwrap_err();
        assert!(e.to_string().contains("another process serves"), "{e}");
        drop(first);
        assert!(!path.exists());
        // A stale one (its owner died without removing it) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let ctl = Control::serve(&path, none).unwrap();
        // What replaced our socket is not ours to delete.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(ctl);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
