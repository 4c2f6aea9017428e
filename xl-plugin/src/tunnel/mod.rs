//! `xl-postcopy tunnel`: a byte pipe over TCP that survives a dropped
//! link, for `xl migrate`.
//!
//! `xl migrate` carries the migration stream, and for post-copy the page
//! requests coming back, over the pipes of one command (normally `ssh host
//! xl migrate-receive`). If that connection breaks after the guest resumed
//! on the destination, neither host holds all of its memory. The tunnel
//! puts a resumable transport under xl instead, without touching xl or
//! libxl:
//!
//! ```text
//! # destination (waits for one migration):
//! xl-postcopy tunnel listen 0.0.0.0:7000 --token-file K -- xl migrate-receive --postcopy
//! # source:
//! xl migrate --postcopy -s '' dom 'xl-postcopy tunnel connect dst:7000 --token-file K'
//! ```
//!
//! Each end keeps what it sent until the other acknowledges it ([`relay`]),
//! numbers both byte streams from 0 ([`frame`]), and after a break the
//! connecting end dials again with the same session id ([`hello`]); both
//! resend from the offset the other holds. xl, libxl and the post-copy
//! glue see a pause, never an error: the guest keeps running on the
//! destination, faults wait, nothing is lost or delivered twice. A peer
//! that stays silent is taken for a broken link after `silence` (PINGs
//! keep an idle link alive); a link down for longer than `recover_timeout`
//! ends the session with an error, as a broken ssh would.

pub mod cli;
pub mod frame;
pub mod hello;
pub mod relay;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::auth::Token;
use crate::local::link::{new_session, Conn, LinkError};
use crate::vetting::{self, Vetting};
use hello::{admit, dial, is_transient, vet_peer, Expect, Hello};
use relay::{Config, Ended, Relay, Stats};

/// How long one connection's hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tunnel session failed.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A connection was refused or its hello was bad.
    #[error("tunnel: {0}")]
    Link(#[from] LinkError),
    /// The link stayed down too long.
    #[error("tunnel: no link for {waited:?} (last error: {last}); giving up")]
    LinkDown {
        /// How long we tried.
        waited: Duration,
        /// The last attempt's error.
        last: String,
    },
    /// The peer broke the protocol, or local I/O failed.
    #[error("tunnel: {0}")]
    Fatal(String),
    /// Local trouble (sockets, threads, the command).
    #[error("tunnel: {0}")]
    Io(#[from] io::Error),
}

/// The connecting end's settings.
#[derive(Debug, Clone)]
pub struct DialOpts {
    /// The listening end.
    pub addr: SocketAddr,
    /// Shared secret, if any.
    pub token: Option<Token>,
    /// Relay tunables.
    pub cfg: Config,
    /// How long to try the first connection.
    pub connect_timeout: Duration,
}

/// Connecting end: relays `input` to the peer and the peer's stream to
/// `output` until both are complete, reconnecting after breaks.
pub fn run_dialer(
    opts: &DialOpts,
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
) -> Result<Stats, TunnelError> {
    let relay = Relay::start(input, output, opts.cfg.clone())?;
    let session = new_session()?;
    let mut down: Option<Instant> = None;
    loop {
        let resume = down.is_some();
        let limit = if resume {
            opts.cfg.recover_timeout
        } else {
            opts.connect_timeout
        };
        let (stream, peer) = redial(opts, session, resume, &relay, limit)?;
        if let Some(t) = down.take() {
            let d = t.elapsed();
            relay.shared().outage(d);
            info!("tunnel: link restored after {d:?}");
        } else {
            info!("tunnel: connected to {} (session {session:#x})", opts.addr);
        }
        match relay.connection(stream, peer) {
            Ended::Done => return Ok(relay.finish()),
            Ended::Broken(why) => {
                warn!(
                    "tunnel: link lost ({why}); reconnecting to {} for up to {:?}",
                    opts.addr, opts.cfg.recover_timeout
                );
                down = Some(Instant::now());
            }
            Ended::Fatal(why) => return Err(TunnelError::Fatal(why)),
        }
    }
}

fn redial(
    opts: &DialOpts,
    session: u64,
    resume: bool,
    relay: &Relay,
    limit: Duration,
) -> Result<(Conn, u64), TunnelError> {
    let start = Instant::now();
    let deadline = start + limit;
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(why) = relay.shared().fatal() {
            return Err(TunnelError::Fatal(why));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let step = left.clamp(Duration::from_millis(100), HELLO_TIMEOUT);
        let received = relay.shared().received();
        match dial(
            opts.addr,
            session,
            resume,
            received,
            opts.token.as_ref(),
            step,
        ) {
            Ok(x) => return Ok(x),
            Err(e) if is_transient(&e) => {
                if Instant::now() + backoff >= deadline {
                    return Err(TunnelError::LinkDown {
                        waited: start.elapsed(),
                        last: e.to_string(),
                    });
                }
                debug!(
                    "tunnel: dialing {} failed ({e}); again in {backoff:?}",
                    opts.addr
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The listening end's settings.
#[derive(Debug, Clone, Default)]
pub struct ListenOpts {
    /// Shared secret, if required.
    pub token: Option<Token>,
    /// Relay tunables.
    pub cfg: Config,
    /// How long to wait for the first connection (None: for ever).
    pub accept_timeout: Option<Duration>,
}

/// Listening end: waits for a session, starts `argv` with its stdin and
/// stdout joined to the tunnel (stderr inherited), relays until both
/// streams are complete, accepting the dialer's reconnections after
/// breaks; returns the counters and the command's exit status.
pub fn run_listener(
    listener: &TcpListener,
    opts: &ListenOpts,
    argv: &[String],
) -> Result<(Stats, ExitStatus), TunnelError> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| TunnelError::Fatal("no command to run".into()))?;
    let first = Expect {
        token: opts.token.as_ref(),
        session: None,
    };
    let deadline = opts.accept_timeout.map(|t| Instant::now() + t);
    let (mut stream, hello) = accept_one(listener, &first, 0, deadline)?;
    let session = hello.session.get();
    let mut peer = hello.received.get();
    info!("tunnel: session {session:#x}: starting {argv:?}");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| TunnelError::Fatal(format!("cannot start {prog}: {e}")))?;
    let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(TunnelError::Fatal("the command has no pipes".into()));
    };
    let relay = Relay::start(Box::new(cout), Box::new(cin), opts.cfg.clone())?;
    let resume = Expect {
        token: opts.token.as_ref(),
        session: Some(session),
    };
    let outcome = loop {
        match relay.connection(stream, peer) {
            Ended::Done => break Ok(()),
            Ended::Broken(why) => {
                warn!(
                    "tunnel: link lost ({why}); waiting up to {:?} for the peer to reconnect",
                    opts.cfg.recover_timeout
                );
                let t = Instant::now();
                let until = Some(t + opts.cfg.recover_timeout);
                match accept_one(listener, &resume, relay.shared().received(), until) {
                    Ok((s, h)) => {
                        relay.shared().outage(t.elapsed());
                        info!("tunnel: link restored after {:?}", t.elapsed());
                        stream = s;
                        peer = h.received.get();
                    }
                    Err(e) => break Err(e),
                }
            }
            Ended::Fatal(why) => break Err(TunnelError::Fatal(why)),
        }
    };
    // On failure dropping the relay closes the command's stdin, as a
    // broken ssh would; either way the command decides how the migration
    // ends.
    let outcome = match outcome {
        Ok(()) => Ok(relay.finish()),
        Err(e) => {
            drop(relay);
            Err(e)
        }
    };
    let status = child.wait()?;
    outcome.map(|stats| (stats, status))
}

/// Accepts connections until one passes [`vet`] or `deadline` passes;
/// strangers are refused and waiting goes on. Each handshake runs on its
/// own thread bounded by [`HELLO_TIMEOUT`] ([`Vetting`]), so silent
/// strangers never hold up the real dialer.
fn accept_one(
    listener: &TcpListener,
    expect: &Expect<'_>,
    received: u64,
    deadline: Option<Instant>,
) -> Result<(Conn, Hello), TunnelError> {
    vetting::nonblocking(listener, || {
        accept_vetted(listener, expect, received, deadline)
    })
}

fn accept_vetted(
    listener: &TcpListener,
    expect: &Expect<'_>,
    received: u64,
    deadline: Option<Instant>,
) -> Result<(Conn, Hello), TunnelError> {
    let start = Instant::now();
    let mut last = String::from("nobody connected");
    let mut vetting = Vetting::default();
    loop {
        // Hello and proof concurrently; the session decision and the
        // answer here, in order, so a dialer's redial that races with its
        // first connection is never judged against the wrong session (it
        // is dropped unanswered, a transient failure, and dials again).
        let token = expect.token.cloned();
        let took = vetting.accept(listener, move |s| {
            vet_peer(s, token.as_ref(), HELLO_TIMEOUT)
        })?;
        let mut idle = !took;
        while let Some((from, mut s, r)) = vetting.finished() {
            idle = false;
            match r
                .and_then(|(h, keys)| admit(&mut s, h, expect.session, received).map(|h| (h, keys)))
            {
                Ok((h, keys)) => return Ok((Conn { sock: s, keys }, h)),
                Err(e) => {
                    warn!("tunnel: refused a connection from {from}: {e}");
                    last = e.to_string();
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(TunnelError::LinkDown {
                waited: start.elapsed(),
                last,
            });
        }
        if idle {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One line for the log: what a session moved and how often it broke.
pub fn summary(s: &Stats) -> String {
    format!(
        "tunnel: done: sent {} B, received {} B, {} connection(s), {} outage(s) (longest {} ms, total {} ms), {} B resent, {} B duplicate dropped",
        s.bytes_sent,
        s.bytes_received,
        s.connections,
        s.outages,
        s.outage_ms_max,
        s.outage_ms_total,
        s.bytes_resent,
        s.bytes_duplicate
    )
}
