//! Authenticated encryption of everything a connection carries after its
//! handshake ([`crate::auth`]), with a shared token.
//!
//! **Choice.** ChaCha20-Poly1305 (RFC 8439, the `chacha20poly1305` crate)
//! with keys from HKDF-SHA-256 (the `hkdf` crate): the handshake already
//! gives both sides the token and two fresh nonces, so a key schedule on
//! top of it is all that is missing; a Noise handshake (`snow`) or TLS
//! (`rustls`) would replace the handshake and its tests for no gain here,
//! and ChaCha20 is fast without AES instructions.
//!
//! **Keys.** One per direction and connection:
//! `HKDF-SHA-256(salt = Ns ‖ Nr, ikm = token, info = "xl-postcopy seal v1"
//! ‖ label ‖ hello)`, `label` the sending side's role label ("XPC-S",
//! "XPC-R", "XPT-D", "XPT-L"). Fresh nonces on every connection (a
//! reconnect included) give fresh keys, so a record can never be replayed
//! into another connection or direction.
//!
//! **Records.**
//!
//! ```text
//! len (u32 LE, 1..=MAX_RECORD) ‖ ciphertext (len bytes) ‖ tag (16 bytes)
//! ```
//!
//! The length is the associated data; the nonce is the record's number in
//! its direction (`0u32 ‖ counter u64 LE`), never sent. A flipped bit, a
//! replayed, dropped or reordered record fails the tag: the reader then
//! fails every later read with [`SealError`] (an `InvalidData` I/O error),
//! which the engine treats like any broken link (a clean abort before the
//! switch, the recovery window after it). A stream cut at a record
//! boundary reads as a closed link; the protocols above end with their
//! own last records, so a cut is never taken for the end.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

/// Most plaintext bytes in one record.
pub const MAX_RECORD: usize = 64 * 1024;
/// Bytes of the length header.
pub const HEADER: usize = 4;
/// Bytes of the tag.
pub const TAG: usize = 16;

/// A broken sealed stream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// A length outside 1..=[`MAX_RECORD`].
    #[error("sealed record {record} declares {len} bytes (1..={MAX_RECORD}): the stream is corrupt or not encrypted")]
    BadLength {
        /// Its number in the stream.
        record: u64,
        /// The length read.
        len: u32,
    },
    /// The tag did not match.
    #[error("sealed record {record} failed authentication: altered, replayed, reordered or forged on the way")]
    Forged {
        /// Its number in the stream.
        record: u64,
    },
    /// 2^64 records in one direction.
    #[error("the record counter is exhausted")]
    Exhausted,
    /// A write failed mid-record earlier: the stream cannot go on.
    #[error("an earlier write failed mid-record")]
    Broken,
}

impl From<SealError> for io::Error {
    fn from(e: SealError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A direction's key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from raw bytes (tests, the fuzzer).
    pub fn from_bytes(b: [u8; 32]) -> Key {
        Key(b)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&self.0.into())
    }
}

/// The two keys of one connection, seen from one side.
#[derive(Debug, Clone)]
pub struct Keys {
    /// What this side writes.
    pub send: Key,
    /// What this side reads.
    pub recv: Key,
}

impl Keys {
    /// Derives a connection's keys (see the module doc). `ours` and
    /// `theirs` are the role labels of this side and of the peer.
    pub(crate) fn derive(
        token: &[u8],
        hello: &[u8],
        ns: &[u8],
        nr: &[u8],
        ours: &[u8; 5],
        theirs: &[u8; 5],
    ) -> Keys {
        let mut salt = Vec::with_capacity(ns.len() + nr.len());
        salt.extend_from_slice(ns);
        salt.extend_from_slice(nr);
        let hk = Hkdf::<Sha256>::new(Some(&salt), token);
        let key = |label: &[u8; 5]| {
            let mut k = [0u8; 32];
            hk.expand_multi_info(&[b"xl-postcopy seal v1", label, hello], &mut k)
                .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA-256 length"));
            Key(k)
        };
        Keys {
            send: key(ours),
            recv: key(theirs),
        }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

/// Writes each `write` (up to [`MAX_RECORD`] bytes) as one sealed record.
pub struct SealedWriter<W> {
    inner: W,
    cipher: ChaCha20Poly1305,
    counter: u64,
    wire: Vec<u8>,
    broken: bool,
}

impl<W> std::fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedWriter(record {})", self.counter)
    }
}

impl<W: Write> SealedWriter<W> {
    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Seals what is written to `inner` with `key`.
    pub fn new(inner: W, key: &Key) -> SealedWriter<W> {
        SealedWriter {
            inner,
            cipher: key.cipher(),
            counter: 0,
            wire: Vec::with_capacity(HEADER + MAX_RECORD + TAG),
            broken: false,
        }
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(SealError::Broken.into());
        }
        let n = buf.len().min(MAX_RECORD);
        if n == 0 {
            return Ok(0);
        }
        if self.counter == u64::MAX {
            return Err(SealError::Exhausted.into());
        }
        let len = u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
        self.wire.clear();
        self.wire.extend_from_slice(&len);
        self.wire.extend_from_slice(&buf[..n]);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(self.counter),
                &len,
                (&mut self.wire[HEADER..]).into(),
            )
            .map_err(|_| io::Error::other("record too long for the cipher"))?;
        self.wire.extend_from_slice(&tag);
        self.counter += 1;
        if let Err(e) = self.inner.write_all(&self.wire) {
            // Part of a record may be out: nothing sensible can follow.
            self.broken = true;
            return Err(e);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a stream of sealed records. A read that fails on the way (a
/// timeout included) keeps the partial record, so it can be retried; a
/// record that fails its check fails every later read.
pub struct SealedReader<R> {
    inner: R,
    cipher: ChaCha20Poly1305,
    counter: u64,
    /// The record being received (header, body, tag), or the plaintext
    /// being handed out (`wire[out..end]`).
    wire: Vec<u8>,
    have: usize,
    out: usize,
    end: usize,
    failed: Option<SealError>,
}

impl<R> std::fmt::Debug for SealedReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedReader(record {})", self.counter)
    }
}

impl<R: Read> SealedReader<R> {
    /// Opens what `inner` carries with `key`.
    pub fn new(inner: R, key: &Key) -> SealedReader<R> {
        SealedReader {
            inner,
            cipher: key.cipher(),
            counter: 0,
            wire: vec![0; HEADER + MAX_RECORD + TAG],
            have: 0,
            out: 0,
            end: 0,
            failed: None,
        }
    }

    fn fail(&mut self, e: SealError) -> io::Error {
        self.failed = Some(e.clone());
        e.into()
    }

    /// Receives and opens the next record into `wire[out..end]`; `false`
    /// at a clean end of stream (between records).
    fn next_record(&mut self) -> io::Result<bool> {
        loop {
            let need = if self.have < HEADER {
                HEADER
            } else {
                let len =
                    u32::from_le_bytes([self.wire[0], self.wire[1], self.wire[2], self.wire[3]]);
                let n = usize::try_from(len).unwrap_or(usize::MAX);
                if n == 0 || n > MAX_RECORD {
                    let record = self.counter;
                    return Err(self.fail(SealError::BadLength { record, len }));
                }
                HEADER + n + TAG
            };
            if self.have == need {
                break;
            }
            match self.inner.read(&mut self.wire[self.have..need]) {
                Ok(0) if self.have == 0 => return Ok(false),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the link closed in the middle of a sealed record",
                    ))
                }
                Ok(k) => self.have += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let body = self.have - HEADER - TAG;
        let (head, rest) = self.wire.split_at_mut(HEADER);
        let (msg, tag) = rest.split_at_mut(body);
        let tag = Tag::try_from(&tag[..TAG]).unwrap_or_default();
        let ok = self
            .cipher
            .decrypt_inout_detached(&nonce(self.counter), head, msg.into(), &tag)
            .is_ok();
        if !ok || self.counter == u64::MAX {
            let record = self.counter;
            return Err(self.fail(if ok {
                SealError::Exhausted
            } else {
                SealError::Forged { record }
            }));
        }
        self.counter += 1;
        self.have = 0;
        self.out = HEADER;
        self.end = HEADER + body;
        Ok(true)
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out == self.end && !self.next_record()? {
            return Ok(0);
        }
        let n = buf.len().min(self.end - self.out);
        buf[..n].copy_from_slice(&self.wire[self.out..self.out + n]);
        self.out += n;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn keys() -> (Keys, Keys) {
        let (t, h, ns, nr) = (b"0123456789abcdef", [7u8; 32], [1u8; 32], [2u8; 32]);
        (
            Keys::derive(t, &h, &ns, &nr, b"AAAAA", b"BBBBB"),
            Keys::derive(t, &h, &ns, &nr, b"BBBBB", b"AAAAA"),
        )
    }

    fn seal(parts: &[&[u8]], key: &Key) -> Vec<u8> {
        let mut w = SealedWriter::new(Vec::new(), key);
        for p in parts {
            w.write_all(p).unwrap();
        }
        w.inner
    }

    fn open(wire: &[u8], key: &Key) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealedReader::new(wire, key).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_no_plaintext_on_the_wire() {
        let (a, b) = keys();
        let page = vec![0x5a; 4096];
        let big = vec![0x3c; MAX_RECORD * 2 + 17];
        let wire = seal(&[b"hello", &page, &big], &a.send);
        assert_eq!(wire.len(), 5 + 4096 + big.len() + 5 * (HEADER + TAG));
        assert!(!wire.windows(64).any(|w| w == &page[..64]));
        let got = open(&wire, &b.recv).unwrap();
        assert_eq!(got, [&b"hello"[..], &page, &big].concat());
    }

    #[test]
    fn directions_and_connections_have_their_own_keys() {
        let (a, b) = keys();
        let wire = seal(&[b"0123456789"], &a.send);
        // Reflected back to its sender, or read with another key: refused.
        assert!(open(&wire, &a.recv).is_err());
        assert!(open(&wire, &b.send).is_err());
        let other = Keys::derive(
            b"0123456789abcdef",
            &[7; 32],
            &[1; 32],
            &[3; 32],
            b"AAAAA",
            b"BBBBB",
        );
        assert!(open(&wire, &other.send).is_err());
    }

    fn kind_of(e: &io::Error) -> Option<SealError> {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<SealError>())
            .cloned()
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let (a, b) = keys();
        let wire = seal(&[b"first record", b"second record"], &a.send);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            let e = open(&bad, &b.recv).unwrap_err();
            assert!(
                matches!(
                    kind_of(&e),
                    Some(SealError::Forged { .. } | SealError::BadLength { .. })
                ) || e.kind() == io::ErrorKind::UnexpectedEof,
                "byte {i}: {e}"
            );
        }
    }

    #[test]
    fn replay_reorder_and_drop_are_refused() {
        let (a, b) = keys();
        let one = seal(&[b"AAAA"], &a.send);
        let two = seal(&[b"AAAA", b"BBBB"], &a.send);
        let r2 = &two[one.len()..];
        // Replayed first record.
        let e = open(&[&one[..], &one].concat(), &b.recv).unwrap_err();
        assert_eq!(kind_of(&e), Some(SealError::Forged { record: 1 }));
        // Second before first; first dropped.
        let e = open(&[r2, &one].concat(), &b.recv).unwrap_err();
        assert_eq!(kind_of(&e), Some(SealError::Forged { record: 0 }));
        let e = open(r2, &b.recv).unwrap_err();
        assert_eq!(kind_of(&e), Some(SealError::Forged { record: 0 }));
    }

    #[test]
    fn bad_lengths_and_cuts() {
        let (_, b) = keys();
        let e = open(&[0, 0, 0, 0], &b.recv).unwrap_err();
        assert!(matches!(
            kind_of(&e),
            Some(SealError::BadLength { len: 0, .. })
        ));
        let e = open(&u32::MAX.to_le_bytes(), &b.recv).unwrap_err();
        assert!(matches!(kind_of(&e), Some(SealError::BadLength { .. })));
        let (a, b) = keys();
        let wire = seal(&[b"some bytes"], &a.send);
        let e = open(&wire[..wire.len() - 1], &b.recv).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A failed stream stays failed.
        let mut r = SealedReader::new(&[0u8, 0, 0, 0][..], &b.recv);
        let mut buf = [0u8; 8];
        assert!(r.read(&mut buf).is_err());
        assert!(r.read(&mut buf).is_err());
    }

    /// A reader whose source times out between every byte: nothing is lost.
    struct Trickle<'a>(&'a [u8], bool);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn timeouts_mid_record_lose_nothing() {
        let (a, b) = keys();
        let wire = seal(&[b"abc", b"defgh"], &a.send);
        let mut r = SealedReader::new(Trickle(&wire, false), &b.recv);
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(got, b"abcdefgh");
    }
}
