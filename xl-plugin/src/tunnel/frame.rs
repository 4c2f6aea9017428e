//! The tunnel's frames on the TCP connection: a 16-byte header, then the
//! payload of a DATA frame.
//!
//! ```text
//! kind u8 | reserved [u8; 3] = 0 | len u32 LE | offset u64 LE | payload
//! ```
//!
//! Offsets count the bytes of one direction's byte stream from 0 and
//! survive reconnections, so a receiver can drop what it already has:
//! - DATA: `len` bytes starting at stream offset `offset` (1..=[`MAX_DATA`]);
//! - ACK: the sender of the frame holds every byte below `offset`;
//! - FIN: the sender's input ended; its stream is `offset` bytes long;
//! - PING: nothing (offset 0); keeps a silent peer distinguishable from a
//!   dead one.

use std::io::{self, Read, Write};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Largest DATA payload.
pub const MAX_DATA: usize = 64 * 1024;

/// The frame header.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FrameHeader {
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 3],
    /// Payload length (DATA only).
    pub len: U32,
    /// Stream offset (meaning per kind).
    pub offset: U64,
}
const _: () = assert!(size_of::<FrameHeader>() == 16);

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Stream bytes.
    Data = 1,
    /// Bytes held so far.
    Ack = 2,
    /// End of the stream.
    Fin = 3,
    /// Heartbeat.
    Ping = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Ack,
            3 => Kind::Fin,
            4 => Kind::Ping,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Stream bytes from `offset`.
    Data {
        /// Stream offset of `bytes[0]`.
        offset: u64,
        /// The payload.
        bytes: &'a [u8],
    },
    /// The peer holds every byte below this offset.
    Ack(u64),
    /// The peer's stream ended at this length.
    Fin(u64),
    /// Heartbeat.
    Ping,
}

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Socket trouble, or the connection ended mid-frame.
    #[error("tunnel connection: {0}")]
    Io(#[from] io::Error),
    /// Unknown kind byte.
    #[error("unknown tunnel frame kind {0}")]
    UnknownKind(u8),
    /// Reserved bytes (or a PING's offset) not zero.
    #[error("tunnel frame has nonzero reserved bytes")]
    Reserved,
    /// DATA with no payload or too much.
    #[error("tunnel DATA frame of {0} bytes (1..={MAX_DATA})")]
    BadLength(u32),
    /// A payload on a frame that has none.
    #[error("tunnel {kind:?} frame carries {len} payload bytes")]
    UnexpectedPayload {
        /// The frame kind.
        kind: Kind,
        /// Its length field.
        len: u32,
    },
    /// offset + len past u64.
    #[error("tunnel DATA frame at offset {0:#x} wraps the stream")]
    Overflow(u64),
}

/// Checks a header; returns the kind, payload length and offset.
pub fn parse_header(bytes: &[u8; 16]) -> Result<(Kind, usize, u64), FrameError> {
    let h = FrameHeader::read_from_bytes(bytes)
        .map_err(|_| FrameError::Io(io::ErrorKind::InvalidData.into()))?;
    let kind = Kind::from_byte(h.kind).ok_or(FrameError::UnknownKind(h.kind))?;
    if h.reserved != [0; 3] {
        return Err(FrameError::Reserved);
    }
    let len = h.len.get();
    let offset = h.offset.get();
    match kind {
        Kind::Data => {
            let n = usize::try_from(len).unwrap_or(usize::MAX);
            if n == 0 || n > MAX_DATA {
                return Err(FrameError::BadLength(len));
            }
            offset
                .checked_add(u64::from(len))
                .ok_or(FrameError::Overflow(offset))?;
            Ok((kind, n, offset))
        }
        _ if len != 0 => Err(FrameError::UnexpectedPayload { kind, len }),
        // A PING carries nothing; its offset is reserved like the rest.
        Kind::Ping if offset != 0 => Err(FrameError::Reserved),
        _ => Ok((kind, 0, offset)),
    }
}

/// Reads frames from a byte stream into one reused buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: Vec::with_capacity(MAX_DATA),
        }
    }

    /// The next frame; a clean end of the connection between frames is an
    /// `UnexpectedEof` I/O error like any other (the caller knows whether
    /// it expected one).
    pub fn next_frame(&mut self) -> Result<Frame<'_>, FrameError> {
        let mut hdr = [0u8; 16];
        self.inner.read_exact(&mut hdr)?;
        let (kind, len, offset) = parse_header(&hdr)?;
        Ok(match kind {
            Kind::Data => {
                self.buf.resize(len, 0);
                self.inner.read_exact(&mut self.buf)?;
                Frame::Data {
                    offset,
                    bytes: &self.buf,
                }
            }
            Kind::Ack => Frame::Ack(offset),
            Kind::Fin => Frame::Fin(offset),
            Kind::Ping => Frame::Ping,
        })
    }
}

/// Appends one encoded frame to `out` (DATA payloads longer than
/// [`MAX_DATA`] are the caller's bug and are cut to it).
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let (kind, offset, bytes): (Kind, u64, &[u8]) = match *frame {
        Frame::Data { offset, bytes } => (Kind::Data, offset, &bytes[..bytes.len().min(MAX_DATA)]),
        Frame::Ack(o) => (Kind::Ack, o, &[]),
        Frame::Fin(o) => (Kind::Fin, o, &[]),
        Frame::Ping => (Kind::Ping, 0, &[]),
    };
    let h = FrameHeader {
        kind: kind as u8,
        reserved: [0; 3],
        // At most MAX_DATA.
        len: U32::new(u32::try_from(bytes.len()).unwrap_or(u32::MAX)),
        offset: offset.into(),
    };
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(bytes);
}

/// Writes one frame.
pub fn write_frame<W: Write>(w: &mut W, frame: &Frame<'_>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(16);
    encode(frame, &mut buf);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame<'_>) {
        let mut buf = Vec::new();
        encode(&f, &mut buf);
        let mut r = FrameReader::new(&buf[..]);
        assert_eq!(r.next_frame().unwrap(), f);
        assert!(
            matches!(r.next_frame(), Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn every_kind_round_trips() {
        roundtrip(Frame::Data {
            offset: 12345,
            bytes: b"hello",
        });
        roundtrip(Frame::Data {
            offset: 0,
            bytes: &[7u8; MAX_DATA],
        });
        roundtrip(Frame::Ack(1 << 40));
        roundtrip(Frame::Fin(99));
        roundtrip(Frame::Ping);
    }

    fn header(kind: u8, reserved: u8, len: u32, offset: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0] = kind;
        h[1] = reserved;
        h[4..8].copy_from_slice(&len.to_le_bytes());
        h[8..].copy_from_slice(&offset.to_le_bytes());
        h
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        assert!(matches!(
            parse_header(&header(0, 0, 0, 0)),
            Err(FrameError::UnknownKind(0))
        ));
        assert!(matches!(
            parse_header(&header(9, 0, 0, 0)),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(
            parse_header(&header(4, 1, 0, 0)),
            Err(FrameError::Reserved)
        ));
        assert!(matches!(
            parse_header(&header(1, 0, 0, 0)),
            Err(FrameError::BadLength(0))
        ));
        assert!(matches!(
            parse_header(&header(1, 0, 64 * 1024 + 1, 0)),
            Err(FrameError::BadLength(_))
        ));
        assert!(matches!(
            parse_header(&header(1, 0, 2, u64::MAX - 1)),
            Err(FrameError::Overflow(_))
        ));
        assert!(matches!(
            parse_header(&header(2, 0, 1, 0)),
            Err(FrameError::UnexpectedPayload {
                kind: Kind::Ack,
                len: 1
            })
        ));
        assert!(parse_header(&header(1, 0, 1, u64::MAX - 1)).is_ok());
    }

    #[test]
    fn truncated_payload_is_an_io_error() {
        let mut buf = Vec::new();
        encode(
            &Frame::Data {
                offset: 0,
                bytes: b"abcdef",
            },
            &mut buf,
        );
        buf.truncate(buf.len() - 1);
        let mut r = FrameReader::new(&buf[..]);
        assert!(matches!(r.next_frame(), Err(FrameError::Io(_))));
    }
}
