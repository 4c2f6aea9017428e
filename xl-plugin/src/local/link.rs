//! Setting up local mode's two TCP connections.
//!
//! The sender opens the bulk connection, then the fault connection; each
//! starts with a 32-byte [`Hello`] naming its channel, the guest size and a
//! session id, so the receiver pairs them and sizes the guest before the
//! engine's first record. After a link breaks post-switch the sender dials
//! again with [`FLAG_RESUME`] and the same session id; the receiver, still
//! listening, accepts only that session ([`accept_until`]).
//!
//! **Authentication.** With a shared token (`--token-file`), every
//! connection runs a mutual challenge–response right after the hello:
//!
//! ```text
//! sender                                   receiver
//!   hello (FLAG_AUTH) ‖ Ns (32 random) ──►
//!                                    ◄──   status (0 = go on) ‖ Nr (32 random)
//!                                          ‖ HMAC(K, "XPC-R" ‖ hello ‖ Ns ‖ Nr)
//!   HMAC(K, "XPC-S" ‖ hello ‖ Ns ‖ Nr) ──►
//!                                    ◄──   status (1 byte, 0 = accepted)
//! ```
//!
//! HMAC-SHA-256, compared in constant time (`hmac`'s `verify_slice`); the
//! exchange itself lives in [`crate::auth`], which the tunnel shares. A
//! stray connection without the token can neither inject pages (the
//! receiver refuses it) nor read memory (the sender refuses a receiver that
//! cannot prove the token, so a fake receiver never gets to ask for pages).
//! Without a token the exchange is hello then status, and the receiver
//! only listens on loopback.
//!
//! **Encryption.** With a token the hello also carries [`FLAG_SEALED`]:
//! everything after the last status byte, both ways, is sealed with the
//! connection's keys (but for the one PREPARED byte below;
//! [`crate::seal`]: ChaCha20-Poly1305, keys from the
//! token and both nonces). A sender with a token but without the flag (an
//! older version, which sends memory in clear) is refused
//! ([`Refusal::Unsealed`]); an older receiver refuses the flag as a
//! malformed hello, which the sender reports as such ([`LinkError::PeerTooOld`]).
//!
//! **Prepared.** Once both connections are accepted the receiver populates
//! the guest's memory and then sends one more byte on the bulk connection,
//! `PREPARED` (0x50, `session::await_prepared`); the sender starts the
//! migration (and stops its guest) only after it. The byte is not sealed:
//! it carries only timing, and a changed one aborts before the switch.
//!
//! `TCP_NODELAY` on both: a fault request or reply must not wait for Nagle.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postcopy::transport::{Closer, DestLinks, SourceLinks};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::auth::{dialer_auth, listener_auth, random, Roles, Token};
use crate::seal::{Keys, SealedReader, SealedWriter};
use crate::vetting::{self, Vetting};

/// "XPCLINK1".
pub const MAGIC: [u8; 8] = *b"XPCLINK1";
/// Largest guest local mode accepts (1 TiB).
pub const MAX_GUEST_PAGES: u64 = 1 << 28;
/// Hello flag: this connection resumes a session whose links broke.
pub const FLAG_RESUME: u32 = 1;
/// Hello flag: a challenge–response follows the hello.
pub const FLAG_AUTH: u32 = 2;
/// Hello flag (with [`FLAG_AUTH`] only): everything after the handshake is
/// sealed ([`crate::seal`]).
pub const FLAG_SEALED: u32 = 4;

/// First bytes on each connection.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// 0 = bulk, 1 = fault.
    pub channel: U32,
    /// [`FLAG_RESUME`], [`FLAG_AUTH`], [`FLAG_SEALED`]; other bits must be
    /// zero.
    pub flags: U32,
    /// Guest size in pages.
    pub guest_pages: U64,
    /// Random per-migration id pairing the two connections.
    pub session: U64,
}
const _: () = assert!(size_of::<Hello>() == 32);

/// Why the receiver refused a connection (the status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Malformed hello.
    BadHello = 1,
    /// The receiver requires a token and the sender offered none.
    AuthRequired = 2,
    /// The sender's proof of the token was wrong.
    AuthFailed = 3,
    /// A resume for a session this receiver is not running, or a resume
    /// when none is expected.
    UnknownSession = 4,
    /// The sender offered a token and the receiver has none.
    NoToken = 5,
    /// The guest does not fit in the receiver's available memory.
    TooLarge = 6,
    /// The sender has a token but would send in clear (an older version).
    Unsealed = 7,
}

impl Refusal {
    fn from_byte(b: u8) -> Option<Refusal> {
        Some(match b {
            1 => Refusal::BadHello,
            2 => Refusal::AuthRequired,
            3 => Refusal::AuthFailed,
            4 => Refusal::UnknownSession,
            5 => Refusal::NoToken,
            6 => Refusal::TooLarge,
            7 => Refusal::Unsealed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::BadHello => "malformed hello",
            Refusal::AuthRequired => "the receiver requires a token (--token-file)",
            Refusal::AuthFailed => "token mismatch",
            Refusal::UnknownSession => "not the migration the receiver is running",
            Refusal::NoToken => "the receiver has no token but the sender offered one",
            Refusal::TooLarge => "the guest does not fit in the receiver's available memory",
            Refusal::Unsealed => {
                "the sender does not encrypt its stream (an older xl-postcopy: upgrade it)"
            }
        })
    }
}

/// A bad connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket trouble.
    #[error("connection failed: {}", postcopy::error::io_words(.0))]
    Io(#[from] io::Error),
    /// Not a local-mode sender (or tunnel end).
    #[error("peer is not an xl-postcopy sender (bad magic)")]
    BadMagic,
    /// A tunnel hello of another protocol version.
    #[error("peer speaks tunnel protocol version {0}, this is version 1")]
    BadVersion(u32),
    /// The hello has the wrong length.
    #[error("hello of {0} bytes, expected 32")]
    BadLength(usize),
    /// Channel numbering wrong or repeated.
    #[error("peer opened channel {0}, expected {1}")]
    BadChannel(u32, u32),
    /// Unknown flag bits.
    #[error("hello has unknown flags {0:#x}")]
    BadFlags(u32),
    /// The two connections disagree.
    #[error("the fault connection belongs to another migration")]
    SessionMismatch,
    /// Guest size out of range.
    #[error("guest of {0} pages is out of range (1..={MAX_GUEST_PAGES})")]
    BadSize(u64),
    /// The peer failed the challenge–response.
    #[error("peer failed authentication ({0})")]
    AuthFailed(Refusal),
    /// The receiver refused this connection.
    #[error("the receiver refused the connection: {0}")]
    Refused(Refusal),
    /// The listener refused our sealed hello as malformed: it predates
    /// encryption.
    #[error("the peer refused the encrypted hello as malformed: it is probably an older xl-postcopy that cannot encrypt (upgrade it)")]
    PeerTooOld,
    /// The receiver answered with a status byte we do not know.
    #[error("the receiver sent unknown status {0}")]
    BadStatus(u8),
    /// No acceptable connection before the deadline.
    #[error("no sender connected in time")]
    TimedOut,
    /// Nobody started a migration while the receiver waited.
    #[error("timed out: no sender connected within {0:.1} s (--accept-timeout)")]
    NoSender(f64),
    /// A sender opened one of its two connections and not the other.
    #[error("timed out: the sender opened its {0} connection but not the other within {1:.1} s")]
    Unpaired(&'static str, f64),
    /// The declared guest cannot be held on this host.
    #[error("refused: {0}")]
    TooLarge(#[source] super::hostmem::SizeError),
    /// The token file is unusable.
    #[error("token file {path}: {why}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The labels of local mode's proofs (the tunnel has its own).
const ROLES: Roles = Roles {
    listener: b"XPC-R",
    dialer: b"XPC-S",
};

/// Accepting side: bounds the connection's steps by `timeout`, reads a
/// 32-byte hello and decodes it with `parse`, refusing a malformed one.
pub(crate) fn read_hello<H>(
    s: &mut TcpStream,
    timeout: Duration,
    parse: fn(&[u8]) -> Result<H, LinkError>,
) -> Result<(H, [u8; 32]), LinkError> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut buf = [0u8; 32];
    s.read_exact(&mut buf)?;
    match parse(&buf) {
        Ok(h) => Ok((h, buf)),
        Err(e) => {
            refuse(s, Refusal::BadHello);
            Err(e)
        }
    }
}

/// Answers a refusal with its status byte (best effort) and returns it.
pub(crate) fn refuse(s: &mut TcpStream, why: Refusal) -> Refusal {
    let _ = s.write_all(&[why as u8]);
    why
}

/// A fresh random session id.
pub fn new_session() -> io::Result<u64> {
    Ok(u64::from_le_bytes(random::<8>()?))
}

/// Decodes and checks a hello (for the receiver and the fuzzer): length,
/// magic, channel 0 or 1, known flags, guest size in range.
pub fn parse_hello(bytes: &[u8]) -> Result<Hello, LinkError> {
    let h = Hello::read_from_bytes(bytes).map_err(|_| LinkError::BadLength(bytes.len()))?;
    if h.magic != MAGIC {
        return Err(LinkError::BadMagic);
    }
    if h.channel.get() > 1 {
        return Err(LinkError::BadChannel(h.channel.get(), 0));
    }
    let flags = h.flags.get();
    if flags & !(FLAG_RESUME | FLAG_AUTH | FLAG_SEALED) != 0
        || (flags & FLAG_SEALED != 0 && flags & FLAG_AUTH == 0)
    {
        return Err(LinkError::BadFlags(flags));
    }
    let pages = h.guest_pages.get();
    if pages == 0 || pages > MAX_GUEST_PAGES {
        return Err(LinkError::BadSize(pages));
    }
    Ok(h)
}

/// What the sender dials with.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Guest size in pages.
    pub guest_pages: u64,
    /// Session id (the same on every reconnect).
    pub session: u64,
    /// Shared secret, if any.
    pub token: Option<Token>,
}

impl Dial {
    /// Opens bulk then fault to `addr`; `resume` marks a reconnect. Every
    /// step is bounded by `timeout`.
    pub fn connect(
        &self,
        addr: SocketAddr,
        resume: bool,
        timeout: Duration,
    ) -> Result<(Conn, Conn), LinkError> {
        Ok((
            self.open(addr, 0, resume, timeout)?,
            self.open(addr, 1, resume, timeout)?,
        ))
    }

    fn open(
        &self,
        addr: SocketAddr,
        channel: u32,
        resume: bool,
        timeout: Duration,
    ) -> Result<Conn, LinkError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut flags = if resume { FLAG_RESUME } else { 0 };
        if self.token.is_some() {
            flags |= FLAG_AUTH | FLAG_SEALED;
        }
        let hello = Hello {
            magic: MAGIC,
            channel: channel.into(),
            flags: flags.into(),
            guest_pages: self.guest_pages.into(),
            session: self.session.into(),
        };
        s.write_all(hello.as_bytes())?;
        let keys = match &self.token {
            Some(token) => Some(sealed_auth(&mut s, token, hello.as_bytes(), ROLES)?),
            None => None,
        };
        read_status(&mut s)?;
        s.set_read_timeout(None)?;
        s.set_write_timeout(None)?;
        Ok(Conn { sock: s, keys })
    }
}

/// The dialer's challenge–response for a sealed hello: an older listener
/// refuses the sealed flag as a malformed hello, which is said as such.
pub(crate) fn sealed_auth(
    s: &mut TcpStream,
    token: &Token,
    hello: &[u8],
    roles: Roles,
) -> Result<Keys, LinkError> {
    dialer_auth(s, token, hello, roles).map_err(|e| match e {
        LinkError::Refused(Refusal::BadHello) => LinkError::PeerTooOld,
        e => e,
    })
}

/// Reads the receiver's status byte: 0 goes on, anything else is a refusal.
pub(crate) fn read_status(s: &mut TcpStream) -> Result<(), LinkError> {
    let mut status = [0u8; 1];
    s.read_exact(&mut status).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            LinkError::Io(io::Error::new(
                e.kind(),
                "the receiver hung up during the hello",
            ))
        } else {
            LinkError::Io(e)
        }
    })?;
    match status[0] {
        0 => Ok(()),
        b => Err(Refusal::from_byte(b)
            .map(LinkError::Refused)
            .unwrap_or(LinkError::BadStatus(b))),
    }
}

/// One connection after its handshake.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub sock: TcpStream,
    /// With a token: its keys; everything from now on is sealed.
    pub keys: Option<Keys>,
}

impl Conn {
    /// A second handle on the same connection and keys. Each direction
    /// must have one reader and one writer only (the record counters).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(Conn {
            sock: self.sock.try_clone()?,
            keys: self.keys.clone(),
        })
    }

    /// This side's reading end (opening sealed records with a token).
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        let s = self.sock.try_clone()?;
        Ok(match &self.keys {
            Some(k) => Box::new(SealedReader::new(s, &k.recv)),
            None => Box::new(s),
        })
    }

    /// This side's writing end (sealing records with a token).
    pub fn writer(&self) -> io::Result<Box<dyn Write + Send>> {
        let s = self.sock.try_clone()?;
        Ok(match &self.keys {
            Some(k) => Box::new(SealedWriter::new(s, &k.send)),
            None => Box::new(s),
        })
    }
}

fn closer(bulk: &Conn, fault: &Conn) -> io::Result<Closer> {
    let (b, f) = (bulk.sock.try_clone()?, fault.sock.try_clone()?);
    Ok(Arc::new(move || {
        let _ = b.shutdown(Shutdown::Both);
        let _ = f.shutdown(Shutdown::Both);
    }))
}

/// The source's links over its two connections; the reverse direction of
/// the bulk connection stays free for the destination's summary.
pub fn source_links(bulk: &Conn, fault: &Conn) -> io::Result<SourceLinks> {
    Ok(SourceLinks {
        bulk: bulk.writer()?,
        fault_rx: fault.reader()?,
        fault_tx: fault.writer()?,
        closer: closer(bulk, fault)?,
    })
}

/// The destination's links over its two connections (the bulk
/// connection's reverse direction is left for the summary).
pub fn dest_links(bulk: &Conn, fault: &Conn) -> io::Result<DestLinks> {
    Ok(DestLinks {
        bulk: bulk.reader()?,
        fault_rx: fault.reader()?,
        fault_tx: fault.writer()?,
        closer: closer(bulk, fault)?,
    })
}

/// Two paired connections from one sender.
#[derive(Debug)]
pub struct Accepted {
    /// The bulk channel.
    pub bulk: Conn,
    /// The fault channel.
    pub fault: Conn,
    /// Guest size in pages.
    pub guest_pages: u64,
    /// The sender's session id.
    pub session: u64,
}

/// What the receiver accepts.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Shared secret, if required.
    pub token: Option<Token>,
    /// `Some`: only a resume of this session (and guest size); `None`: only
    /// a new migration.
    pub resume: Option<(u64, u64)>,
}

/// Reads and vets one connection's hello (and proof), answering with the
/// status byte; returns the connection's keys with a token.
fn vet(
    s: &mut TcpStream,
    expect: &Expect,
    timeout: Duration,
) -> Result<(Hello, Option<Keys>), LinkError> {
    let (h, buf) = read_hello(s, timeout, parse_hello)?;
    let flags = h.flags.get();
    let keys = listener_auth(
        s,
        expect.token.as_ref(),
        flags & FLAG_AUTH != 0,
        flags & FLAG_SEALED != 0,
        &buf,
        ROLES,
    )?;
    let resume = flags & FLAG_RESUME != 0;
    let ok = match expect.resume {
        None => !resume,
        Some((session, pages)) => {
            resume && h.session.get() == session && h.guest_pages.get() == pages
        }
    };
    if !ok {
        return Err(LinkError::Refused(refuse(s, Refusal::UnknownSession)));
    }
    if expect.resume.is_none() {
        // Before anything is allocated for it (a resume's guest is here
        // already).
        if let Err(e) = super::hostmem::check_host(h.guest_pages.get()) {
            refuse(s, Refusal::TooLarge);
            return Err(LinkError::TooLarge(e));
        }
    }
    s.write_all(&[0])?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((h, keys))
}

/// Receiver side, for the unit tests: accepts bulk then fault (the TCP
/// accept itself blocks, hence test-only; the binaries use
/// [`accept_migration`] and [`accept_until`]); every step after it is
/// bounded by `timeout`.
#[cfg(test)]
fn accept(
    listener: &TcpListener,
    timeout: Duration,
    expect: &Expect,
) -> Result<Accepted, LinkError> {
    let take = |channel: u32| -> Result<(Conn, Hello), LinkError> {
        let (mut s, _) = listener.accept()?;
        let (h, keys) = vet(&mut s, expect, timeout)?;
        if h.channel.get() != channel {
            return Err(LinkError::BadChannel(h.channel.get(), channel));
        }
        Ok((Conn { sock: s, keys }, h))
    };
    let (bulk, hb) = take(0)?;
    let (fault, hf) = take(1)?;
    if hb.session.get() != hf.session.get() || hb.guest_pages.get() != hf.guest_pages.get() {
        return Err(LinkError::SessionMismatch);
    }
    Ok(Accepted {
        bulk,
        fault,
        guest_pages: hb.guest_pages.get(),
        session: hb.session.get(),
    })
}

/// Longest handshake (hello, proof, status) of one connection while
/// [`accept_until`] or [`accept_migration`] wait: a silent stranger holds
/// one of the concurrent handshakes for this long at most, never the
/// legitimate dialer.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// Receiver side, for a reconnect: accepts until a bulk and a fault
/// connection of the expected session arrive or `deadline` passes.
/// Strangers (bad hello, wrong token, other sessions) are refused and
/// waiting goes on.
pub fn accept_until(
    listener: &TcpListener,
    deadline: Instant,
    expect: &Expect,
) -> Result<Accepted, LinkError> {
    gather(
        listener,
        expect,
        Some(Until::All(deadline)),
        deadline.saturating_duration_since(Instant::now()),
    )
}

/// Receiver side, for a new migration: waits for a sender for at most
/// `wait` (`None`: for ever), then for the other connection of its
/// session for at most `pair_within` after the first one passed its
/// handshake. Strangers are refused, each on its own bounded
/// ([`HANDSHAKE`]) and concurrent handshake, and waiting goes on.
pub fn accept_migration(
    listener: &TcpListener,
    wait: Option<Duration>,
    pair_within: Duration,
    expect: &Expect,
) -> Result<Accepted, LinkError> {
    let deadline = wait.map(|w| Instant::now() + w);
    gather(listener, expect, deadline.map(Until::First), pair_within).map_err(|e| match (e, wait) {
        (LinkError::TimedOut, Some(w)) => LinkError::NoSender(w.as_secs_f64()),
        (e, _) => e,
    })
}

/// How long [`gather`] waits.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// For the first connection of a sender; once one arrived, the pair
    /// window alone bounds the wait for the other.
    First(Instant),
    /// For the whole pair.
    All(Instant),
}

fn gather(
    listener: &TcpListener,
    expect: &Expect,
    until: Option<Until>,
    pair_within: Duration,
) -> Result<Accepted, LinkError> {
    vetting::nonblocking(listener, || {
        gather_polling(listener, expect, until, pair_within)
    })
}

fn gather_polling(
    listener: &TcpListener,
    expect: &Expect,
    until: Option<Until>,
    pair_within: Duration,
) -> Result<Accepted, LinkError> {
    // Set once the first half of some session arrived.
    let mut pair_by: Option<Instant> = None;
    let mut vetting = Vetting::default();
    // Vetted connections by session: (bulk, fault).
    let mut sessions: std::collections::HashMap<u64, [Option<(Conn, Hello)>; 2]> =
        std::collections::HashMap::new();
    loop {
        let now = Instant::now();
        let deadline = match (until, pair_by) {
            (Some(Until::All(d)), Some(p)) => Some(d.min(p)),
            (Some(Until::All(d)), None) | (Some(Until::First(d)), None) => Some(d),
            (_, Some(p)) => Some(p),
            (None, None) => None,
        };
        if deadline.is_some_and(|d| now >= d) {
            let half = sessions.values().find_map(|p| match p {
                [Some(_), None] => Some("bulk"),
                [None, Some(_)] => Some("fault"),
                _ => None,
            });
            return Err(match half {
                Some(which) => LinkError::Unpaired(which, pair_within.as_secs_f64()),
                None => LinkError::TimedOut,
            });
        }
        let step = deadline.map_or(HANDSHAKE, |d| (d - now).min(HANDSHAKE));
        let expect_one = expect.clone();
        let mut idle = !vetting.accept(listener, move |s| vet(s, &expect_one, step))?;
        while let Some((peer, s, r)) = vetting.finished() {
            idle = false;
            let (h, keys) = match r {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("refused a connection from {peer}: {e}");
                    continue;
                }
            };
            let pair = sessions.entry(h.session.get()).or_default();
            let ch = usize::from(h.channel.get() != 0);
            pair[ch] = Some((Conn { sock: s, keys }, h));
            if let [Some((_, hb)), Some((_, hf))] = &pair {
                if hb.guest_pages.get() != hf.guest_pages.get() {
                    log::warn!("refused a pair from {peer}: {}", LinkError::SessionMismatch);
                    pair[ch] = None;
                    continue;
                }
                if let [Some((bulk, hb)), Some((fault, _))] = std::mem::take(pair) {
                    return Ok(Accepted {
                        bulk,
                        fault,
                        guest_pages: hb.guest_pages.get(),
                        session: hb.session.get(),
                    });
                }
            }
            // The first half of a session: the other must follow soon.
            let by = Instant::now() + pair_within;
            pair_by = Some(pair_by.map_or(by, |p| p.min(by)));
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless,
    reason = "test arithmetic on small known values"
)]
mod tests {
    use super::*;

    fn dial(pages: u64, token: Option<&[u8]>) -> Dial {
        Dial {
            guest_pages: pages,
            session: new_session().unwrap(),
            token: token.map(|t| Token::new(t).unwrap()),
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn pairs_connections_and_rejects_strangers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = dial(256, None);
        let t = std::thread::spawn(move || d.connect(addr, false, T).unwrap());
        let a = accept(&l, T, &Expect::default()).unwrap();
        assert_eq!(a.guest_pages, 256);
        t.join().unwrap();

        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345")
                .unwrap();
        });
        assert!(matches!(
            accept(&l, T, &Expect::default()),
            Err(LinkError::BadMagic)
        ));
        t.join().unwrap();
    }

    #[test]
    fn the_token_is_checked_both_ways() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let key = b"0123456789abcdef-shared";
        let expect = Expect {
            token: Some(Token::new(key).unwrap()),
            resume: None,
        };
        // Right token.
        let d = dial(8, Some(key));
        let t = std::thread::spawn(move || d.connect(addr, false, T).map(|_| ()));
        accept(&l, T, &expect).unwrap();
        t.join().unwrap().unwrap();
        // Wrong token: both sides see it (the sender checks the receiver's
        // proof first and hangs up).
        let d = dial(8, Some(b"fedcba9876543210-wrong"));
        let t = std::thread::spawn(move || d.connect(addr, false, T).map(|_| ()));
        assert!(accept(&l, T, &expect).is_err());
        assert!(matches!(t.join().unwrap(), Err(LinkError::AuthFailed(_))));
        // No token offered.
        let d = dial(8, None);
        let t = std::thread::spawn(move || d.connect(addr, false, T).map(|_| ()));
        assert!(accept(&l, T, &expect).is_err());
        assert!(matches!(
            t.join().unwrap(),
            Err(LinkError::Refused(Refusal::AuthRequired))
        ));
    }

    /// The wire change is versioned: a sender with a token that would send
    /// in clear (an older version) is refused with its own status, and an
    /// older receiver's refusal of the sealed hello is named as such.
    #[test]
    fn old_peers_get_a_clear_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let key = b"0123456789abcdef-shared";
        let old = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let hello = Hello {
                magic: MAGIC,
                channel: 0.into(),
                flags: FLAG_AUTH.into(),
                guest_pages: 8.into(),
                session: 1.into(),
            };
            s.write_all(hello.as_bytes()).unwrap();
            s.write_all(&[0; 32]).unwrap();
            read_status(&mut s)
        });
        let expect = Expect {
            token: Some(Token::new(key).unwrap()),
            resume: None,
        };
        assert!(matches!(
            accept(&l, T, &expect),
            Err(LinkError::Refused(Refusal::Unsealed))
        ));
        assert!(matches!(
            old.join().unwrap(),
            Err(LinkError::Refused(Refusal::Unsealed))
        ));
        // An older receiver: unknown flags are a malformed hello to it.
        let d = dial(8, Some(key));
        let t = std::thread::spawn(move || d.connect(addr, false, T).map(|_| ()));
        let (mut s, _) = l.accept().unwrap();
        let mut hello = [0u8; 32];
        s.read_exact(&mut hello).unwrap();
        assert_ne!(
            u32::from_le_bytes(hello[12..16].try_into().unwrap()) & FLAG_SEALED,
            0
        );
        s.write_all(&[Refusal::BadHello as u8]).unwrap();
        assert!(matches!(t.join().unwrap(), Err(LinkError::PeerTooOld)));
    }

    #[test]
    fn a_resume_needs_the_same_session() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let d = dial(16, None);
        let expect = Expect {
            token: None,
            resume: Some((d.session, 16)),
        };
        // A stranger's resume is refused, and waiting goes on.
        let other = dial(16, None);
        let t1 = std::thread::spawn(move || other.connect(addr, true, T).map(|_| ()));
        let d2 = d.clone();
        let t2 = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            d2.connect(addr, true, T).map(|_| ())
        });
        let a = accept_until(&l, Instant::now() + T, &expect).unwrap();
        assert_eq!(a.session, d.session);
        assert!(matches!(
            t1.join().unwrap(),
            Err(LinkError::Refused(Refusal::UnknownSession))
        ));
        t2.join().unwrap().unwrap();
        // Nobody comes: the deadline ends the wait.
        let t = Instant::now();
        assert!(matches!(
            accept_until(&l, t + Duration::from_millis(100), &expect),
            Err(LinkError::TimedOut)
        ));
    }

    #[test]
    fn parse_hello_rejects_bad_input() {
        let good = Hello {
            magic: MAGIC,
            channel: 1.into(),
            flags: FLAG_RESUME.into(),
            guest_pages: 9.into(),
            session: 3.into(),
        };
        assert!(parse_hello(good.as_bytes()).is_ok());
        assert!(matches!(
            parse_hello(&[0; 31]),
            Err(LinkError::BadLength(31))
        ));
        let mut b = good.as_bytes().to_vec();
        b[12] = 0x80;
        assert!(matches!(parse_hello(&b), Err(LinkError::BadFlags(_))));
        let mut b = good.as_bytes().to_vec();
        b[8] = 2;
        assert!(matches!(parse_hello(&b), Err(LinkError::BadChannel(2, _))));
        let mut b = good.as_bytes().to_vec();
        b[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(matches!(parse_hello(&b), Err(LinkError::BadSize(0))));
    }
}
