//! The shared-token challenge–response that authenticates a connection,
//! used by local mode's links ([`crate::local::link`]) and by the `xl
//! migrate` tunnel ([`crate::tunnel`]), each with its own role labels
//! ([`Roles`]) so that no proof can be replayed to another side or
//! protocol.
//!
//! Right after the dialer's hello (sent with its auth flag), both sides
//! prove they hold the token ([`Token`]) over the hello and one fresh
//! 32-byte nonce from each side:
//!
//! ```text
//! dialer                                   listener
//!   hello ‖ Ns (32 random) ─────────────►
//!                                    ◄──   status (0 = go on) ‖ Nr (32 random)
//!                                          ‖ HMAC(K, listener ‖ hello ‖ Ns ‖ Nr)
//!   HMAC(K, dialer ‖ hello ‖ Ns ‖ Nr) ──►
//!                                    ◄──   status (1 byte, 0 = accepted)
//! ```
//!
//! HMAC-SHA-256 from the `hmac` and `sha2` crates, proofs compared in
//! constant time (`verify_slice`). The hello itself, the status byte and
//! the refusals belong to the protocol that calls this
//! ([`crate::local::link`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::local::link::{read_status, refuse, LinkError, Refusal};
use crate::seal::Keys;

/// Shortest token accepted.
pub const MIN_TOKEN: usize = 16;
/// Longest token file read.
pub const MAX_TOKEN: usize = 4096;

const NONCE: usize = 32;
const MAC: usize = 32;

/// A shared secret for the challenge–response.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from bytes (at least [`MIN_TOKEN`]).
    pub fn new(bytes: &[u8]) -> Result<Token, LinkError> {
        if bytes.len() < MIN_TOKEN {
            return Err(LinkError::Token {
                path: "(inline)".into(),
                why: format!("shorter than {MIN_TOKEN} bytes"),
            });
        }
        Ok(Token(bytes.to_vec()))
    }

    /// Reads a token file; surrounding whitespace is ignored. Like ssh
    /// with a private key, the file must be a regular file (a FIFO or a
    /// device is refused without blocking on it) that neither group nor
    /// others may read or write.
    pub fn from_file(path: &Path) -> Result<Token, LinkError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let bad = |why: String| LinkError::Token {
            path: path.display().to_string(),
            why,
        };
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| bad(e.to_string()))?;
        let meta = f.metadata().map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "permissions {:03o} let group or others at the secret (chmod 600)",
                meta.mode() & 0o777
            )));
        }
        let mut raw = Vec::new();
        f.take(MAX_TOKEN as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(|e| bad(e.to_string()))?;
        if raw.len() > MAX_TOKEN {
            return Err(bad(format!("longer than {MAX_TOKEN} bytes")));
        }
        let trimmed = raw.trim_ascii();
        if trimmed.len() < MIN_TOKEN {
            return Err(bad(format!(
                "shorter than {MIN_TOKEN} bytes (use e.g. `head -c 32 /dev/urandom | base64`)"
            )));
        }
        Ok(Token(trimmed.to_vec()))
    }

    fn mac(&self, role: &[u8; 5], hello: &[u8], ns: &[u8], nr: &[u8]) -> Hmac<Sha256> {
        // Any key length is valid for HMAC.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(role);
        m.update(hello);
        m.update(ns);
        m.update(nr);
        m
    }

    fn prove(&self, role: &[u8; 5], hello: &[u8], ns: &[u8], nr: &[u8]) -> [u8; MAC] {
        let mut out = [0u8; MAC];
        out.copy_from_slice(&self.mac(role, hello, ns, nr).finalize().into_bytes());
        out
    }

    pub(crate) fn check(
        &self,
        role: &[u8; 5],
        hello: &[u8],
        ns: &[u8],
        nr: &[u8],
        proof: &[u8],
    ) -> bool {
        self.mac(role, hello, ns, nr).verify_slice(proof).is_ok()
    }
}

/// The labels that bind a proof to its side of one protocol, so that a
/// proof can never be replayed from one side (or protocol) to another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Roles {
    /// Label of the accepting side's proof.
    pub listener: &'static [u8; 5],
    /// Label of the connecting side's proof.
    pub dialer: &'static [u8; 5],
}

/// Connecting side of the challenge–response, right after its `hello`
/// (sent with the auth flag): sends Ns, checks the listener's proof, sends
/// its own. Returns the connection's keys ([`crate::seal`]), used when the
/// hello says the stream is sealed.
pub(crate) fn dialer_auth(
    s: &mut TcpStream,
    token: &Token,
    hello: &[u8],
    roles: Roles,
) -> Result<Keys, LinkError> {
    let ns = random::<NONCE>()?;
    s.write_all(&ns)?;
    read_status(s)?;
    let mut reply = [0u8; NONCE + MAC];
    s.read_exact(&mut reply)?;
    let (nr, proof) = reply.split_at(NONCE);
    if !token.check(roles.listener, hello, &ns, nr, proof) {
        return Err(LinkError::AuthFailed(Refusal::AuthFailed));
    }
    s.write_all(&token.prove(roles.dialer, hello, &ns, nr))?;
    Ok(Keys::derive(
        &token.0,
        hello,
        &ns,
        nr,
        roles.dialer,
        roles.listener,
    ))
}

/// Accepting side, after reading `hello`: applies the token policy (a
/// token here must be proven; one offered to a side without a token is
/// refused, and so is a dialer with the token whose hello does not say
/// `sealed`: an older version that would send in clear) and runs the
/// challenge–response; refusals are answered. Returns the connection's
/// keys when a token was proven.
pub(crate) fn listener_auth(
    s: &mut TcpStream,
    token: Option<&Token>,
    offered: bool,
    sealed: bool,
    hello: &[u8],
    roles: Roles,
) -> Result<Option<Keys>, LinkError> {
    match (token, offered) {
        (Some(_), true) if !sealed => Err(LinkError::Refused(refuse(s, Refusal::Unsealed))),
        (Some(token), true) => {
            let mut ns = [0u8; NONCE];
            s.read_exact(&mut ns)?;
            s.write_all(&[0])?;
            let nr = random::<NONCE>()?;
            s.write_all(&nr)?;
            s.write_all(&token.prove(roles.listener, hello, &ns, &nr))?;
            let mut proof = [0u8; MAC];
            s.read_exact(&mut proof)?;
            if !token.check(roles.dialer, hello, &ns, &nr, &proof) {
                return Err(LinkError::AuthFailed(refuse(s, Refusal::AuthFailed)));
            }
            Ok(Some(Keys::derive(
                &token.0,
                hello,
                &ns,
                &nr,
                roles.listener,
                roles.dialer,
            )))
        }
        (Some(_), false) => Err(LinkError::Refused(refuse(s, Refusal::AuthRequired))),
        (None, true) => Err(LinkError::Refused(refuse(s, Refusal::NoToken))),
        (None, false) => Ok(None),
    }
}

/// `N` bytes from the kernel's random source (nonces, session ids).
pub(crate) fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}
