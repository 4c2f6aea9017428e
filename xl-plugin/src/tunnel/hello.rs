//! Opening and resuming a tunnel connection: a 32-byte [`Hello`] from the
//! dialing end, the optional challenge–response of local mode's links
//! ([`crate::auth`], same token file, other role labels), then the
//! listener's status byte and, when it accepts, how many bytes of the
//! dialer's stream it already holds.
//!
//! ```text
//! dialer                                     listener
//!   hello (received) [‖ Ns]              ──►
//!                                        ◄──  [status ‖ Nr ‖ HMAC(K, "XPT-L" ‖ hello ‖ Ns ‖ Nr)]
//!   [HMAC(K, "XPT-D" ‖ hello ‖ Ns ‖ Nr)] ──►
//!                                        ◄──  status (0 = accepted) ‖ received (u64 LE)
//! ```
//!
//! Each side then resends its stream from the offset the other holds.
//! With a token the hello carries [`FLAG_SEALED`] and everything after
//! this exchange is sealed ([`crate::seal`], keys from the token and both
//! nonces), as on local mode's links; a dialer with a token but without
//! the flag (an older version) is refused. The `received` offset itself
//! travels in clear: a tamperer can only make a side resend from the
//! wrong place, which the frames' offsets reveal.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::auth::{listener_auth, Roles, Token};
use crate::local::link::{read_hello, read_status, refuse, sealed_auth, Conn, LinkError, Refusal};
use crate::seal::Keys;

/// "XPCTUN01".
pub const MAGIC: [u8; 8] = *b"XPCTUN01";
/// The protocol version in every hello.
pub const VERSION: u32 = 1;
/// Hello flag: this connection resumes a session whose link broke.
pub const FLAG_RESUME: u32 = 1;
/// Hello flag: a challenge–response follows.
pub const FLAG_AUTH: u32 = 2;
/// Hello flag (with [`FLAG_AUTH`] only): everything after the handshake is
/// sealed.
pub const FLAG_SEALED: u32 = 4;

const ROLES: Roles = Roles {
    listener: b"XPT-L",
    dialer: b"XPT-D",
};

/// First bytes on each tunnel connection.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// [`FLAG_RESUME`], [`FLAG_AUTH`]; other bits must be zero.
    pub flags: U32,
    /// Random id of the session, the same on every reconnection.
    pub session: U64,
    /// Bytes of the listener's stream the dialer holds.
    pub received: U64,
}
const _: () = assert!(size_of::<Hello>() == 32);

/// Decodes and checks a hello (for the listener and the fuzzer).
pub fn parse_hello(bytes: &[u8]) -> Result<Hello, LinkError> {
    let h = Hello::read_from_bytes(bytes).map_err(|_| LinkError::BadLength(bytes.len()))?;
    if h.magic != MAGIC {
        return Err(LinkError::BadMagic);
    }
    if h.version.get() != VERSION {
        return Err(LinkError::BadVersion(h.version.get()));
    }
    let flags = h.flags.get();
    if flags & !(FLAG_RESUME | FLAG_AUTH | FLAG_SEALED) != 0
        || (flags & FLAG_SEALED != 0 && flags & FLAG_AUTH == 0)
    {
        return Err(LinkError::BadFlags(flags));
    }
    Ok(h)
}

/// Dials `addr`: returns the connection and how many bytes of our stream
/// the listener holds. Every step is bounded by `timeout`.
pub fn dial(
    addr: SocketAddr,
    session: u64,
    resume: bool,
    received: u64,
    token: Option<&Token>,
    timeout: Duration,
) -> Result<(Conn, u64), LinkError> {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut flags = if resume { FLAG_RESUME } else { 0 };
    if token.is_some() {
        flags |= FLAG_AUTH | FLAG_SEALED;
    }
    let hello = Hello {
        magic: MAGIC,
        version: VERSION.into(),
        flags: flags.into(),
        session: session.into(),
        received: received.into(),
    };
    s.write_all(hello.as_bytes())?;
    let keys = match token {
        Some(token) => Some(sealed_auth(&mut s, token, hello.as_bytes(), ROLES)?),
        None => None,
    };
    read_status(&mut s)?;
    let mut peer = [0u8; 8];
    s.read_exact(&mut peer)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((Conn { sock: s, keys }, u64::from_le_bytes(peer)))
}

/// What the listener accepts: a new session (`session` None) or a resume
/// of this one.
#[derive(Debug, Clone, Default)]
pub struct Expect<'a> {
    /// Shared secret, if required.
    pub token: Option<&'a Token>,
    /// The session being resumed, if any.
    pub session: Option<u64>,
}

/// Listener side: vets one accepted connection's hello (and proof) and
/// answers; on acceptance tells the dialer `received`, the bytes of its
/// stream held here. Bounded by `timeout`.
pub fn vet(
    s: &mut TcpStream,
    expect: &Expect<'_>,
    received: u64,
    timeout: Duration,
) -> Result<Hello, LinkError> {
    let (h, _) = vet_peer(s, expect.token, timeout)?;
    admit(s, h, expect.session, received)
}

/// Listener side, first half of [`vet`]: the peer's hello and proof
/// (what a stranger can stall), bounded by `timeout`. Nothing is answered
/// yet on success. Returns the connection's keys with a token.
pub fn vet_peer(
    s: &mut TcpStream,
    token: Option<&Token>,
    timeout: Duration,
) -> Result<(Hello, Option<Keys>), LinkError> {
    let (h, buf) = read_hello(s, timeout, parse_hello)?;
    let flags = h.flags.get();
    let keys = listener_auth(
        s,
        token,
        flags & FLAG_AUTH != 0,
        flags & FLAG_SEALED != 0,
        &buf,
        ROLES,
    )?;
    Ok((h, keys))
}

/// Listener side, second half of [`vet`]: accepts the new session
/// (`session` None) or a resume of `session`, and answers.
pub fn admit(
    s: &mut TcpStream,
    h: Hello,
    session: Option<u64>,
    received: u64,
) -> Result<Hello, LinkError> {
    let resume = h.flags.get() & FLAG_RESUME != 0;
    let ok = match session {
        None => !resume,
        Some(id) => resume && h.session.get() == id,
    };
    if !ok {
        return Err(LinkError::Refused(refuse(s, Refusal::UnknownSession)));
    }
    // As the dialer's end: a small record (a fault request) goes at once,
    // not after the peer's delayed ACK (Nagle).
    s.set_nodelay(true)?;
    let mut reply = [0u8; 9];
    reply[1..].copy_from_slice(&received.to_le_bytes());
    s.write_all(&reply)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(h)
}

/// True for errors of the connection itself (worth another try), false
/// for a refusal or a misconfiguration that another try cannot fix.
pub fn is_transient(e: &LinkError) -> bool {
    matches!(e, LinkError::Io(_) | LinkError::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(
        token_l: Option<Token>,
        token_d: Option<Token>,
        expect_session: Option<u64>,
        dial_session: u64,
        resume: bool,
    ) -> (Result<Hello, LinkError>, Result<(Conn, u64), LinkError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let expect = Expect {
                token: token_l.as_ref(),
                session: expect_session,
            };
            vet(&mut s, &expect, 777, Duration::from_secs(5))
        });
        let d = dial(
            addr,
            dial_session,
            resume,
            555,
            token_d.as_ref(),
            Duration::from_secs(5),
        );
        (t.join().unwrap(), d)
    }

    #[test]
    fn new_and_resumed_sessions_exchange_offsets() {
        let (l, d) = pair(None, None, None, 42, false);
        let h = l.unwrap();
        assert_eq!((h.session.get(), h.received.get()), (42, 555));
        assert_eq!(d.unwrap().1, 777);
        let (l, d) = pair(None, None, Some(42), 42, true);
        assert!(l.is_ok());
        assert_eq!(d.unwrap().1, 777);
    }

    #[test]
    fn strangers_and_wrong_tokens_are_refused() {
        let (l, d) = pair(None, None, Some(42), 43, true);
        assert!(matches!(
            l,
            Err(LinkError::Refused(Refusal::UnknownSession))
        ));
        assert!(matches!(
            d,
            Err(LinkError::Refused(Refusal::UnknownSession))
        ));
        let (l, _) = pair(None, None, None, 42, true);
        assert!(matches!(
            l,
            Err(LinkError::Refused(Refusal::UnknownSession))
        ));
        let k1 = Token::new(b"0123456789abcdef-one").unwrap();
        let k2 = Token::new(b"0123456789abcdef-two").unwrap();
        let (l, d) = pair(Some(k1.clone()), Some(k1.clone()), None, 1, false);
        assert!(l.is_ok() && d.is_ok());
        let (_, d) = pair(Some(k1.clone()), Some(k2), None, 1, false);
        assert!(matches!(d, Err(LinkError::AuthFailed(_))));
        let (l, d) = pair(Some(k1.clone()), None, None, 1, false);
        assert!(matches!(l, Err(LinkError::Refused(Refusal::AuthRequired))));
        assert!(matches!(d, Err(LinkError::Refused(Refusal::AuthRequired))));
        let (l, _) = pair(None, Some(k1), None, 1, false);
        assert!(matches!(l, Err(LinkError::Refused(Refusal::NoToken))));
    }

    #[test]
    fn malformed_hellos() {
        let good = Hello {
            magic: MAGIC,
            version: VERSION.into(),
            flags: 0.into(),
            session: 1.into(),
            received: 0.into(),
        };
        assert!(parse_hello(good.as_bytes()).is_ok());
        assert!(matches!(
            parse_hello(&good.as_bytes()[..31]),
            Err(LinkError::BadLength(31))
        ));
        let mut b = good;
        b.magic[0] ^= 1;
        assert!(matches!(
            parse_hello(b.as_bytes()),
            Err(LinkError::BadMagic)
        ));
        let mut b = good;
        b.version = 2.into();
        assert!(matches!(
            parse_hello(b.as_bytes()),
            Err(LinkError::BadVersion(2))
        ));
        let mut b = good;
        b.flags = 4.into();
        assert!(matches!(
            parse_hello(b.as_bytes()),
            Err(LinkError::BadFlags(4))
        ));
    }
}
