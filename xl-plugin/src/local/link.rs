//! Setting up local mode's two TCP connections.
//!
//! The sender opens the bulk connection, then the fault connection; each
//! starts with a 32-byte [`Hello`] naming its channel, the guest size and a
//! session id, so the receiver pairs them and sizes the guest before the
//! engine's first record. `TCP_NODELAY` on both: a fault request or reply
//! must not wait for Nagle.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "XPCLINK1".
pub const MAGIC: [u8; 8] = *b"XPCLINK1";
/// Largest guest local mode accepts (1 TiB).
pub const MAX_GUEST_PAGES: u64 = 1 << 28;

/// First bytes on each connection.
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// 0 = bulk, 1 = fault.
    pub channel: U32,
    /// Reserved, zero.
    pub flags: U32,
    /// Guest size in pages.
    pub guest_pages: U64,
    /// Random per-migration id pairing the two connections.
    pub session: U64,
}
const _: () = assert!(size_of::<Hello>() == 32);

/// A bad connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Socket trouble.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// Not a local-mode sender.
    #[error("peer is not an xl-postcopy sender (bad magic)")]
    BadMagic,
    /// Channel numbering wrong or repeated.
    #[error("peer opened channel {0}, expected {1}")]
    BadChannel(u32, u32),
    /// The two connections disagree.
    #[error("the fault connection belongs to another migration")]
    SessionMismatch,
    /// Guest size out of range.
    #[error("guest of {0} pages is out of range (1..={MAX_GUEST_PAGES})")]
    BadSize(u64),
}

fn hello(channel: u32, guest_pages: u64, session: u64) -> Hello {
    Hello {
        magic: MAGIC,
        channel: channel.into(),
        flags: 0.into(),
        guest_pages: guest_pages.into(),
        session: session.into(),
    }
}

/// Sender side: opens bulk then fault to `addr`.
pub fn connect(
    addr: SocketAddr,
    guest_pages: u64,
    timeout: Duration,
) -> Result<(TcpStream, TcpStream), LinkError> {
    let session = u64::from(std::process::id()) << 32
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    let open = |channel| -> Result<TcpStream, LinkError> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.write_all(hello(channel, guest_pages, session).as_bytes())?;
        Ok(s)
    };
    Ok((open(0)?, open(1)?))
}

fn read_hello(s: &mut TcpStream, channel: u32) -> Result<Hello, LinkError> {
    let mut buf = [0u8; 32];
    s.read_exact(&mut buf)?;
    let h = Hello::read_from_bytes(&buf).map_err(|_| LinkError::BadMagic)?;
    if h.magic != MAGIC {
        return Err(LinkError::BadMagic);
    }
    if h.channel.get() != channel || h.flags.get() != 0 {
        return Err(LinkError::BadChannel(h.channel.get(), channel));
    }
    let pages = h.guest_pages.get();
    if pages == 0 || pages > MAX_GUEST_PAGES {
        return Err(LinkError::BadSize(pages));
    }
    Ok(h)
}

/// Receiver side: accepts bulk then fault; returns them and the guest size.
pub fn accept(
    listener: &TcpListener,
    timeout: Duration,
) -> Result<(TcpStream, TcpStream, u64), LinkError> {
    let take = |channel| -> Result<(TcpStream, Hello), LinkError> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        let h = read_hello(&mut s, channel)?;
        s.set_read_timeout(None)?;
        Ok((s, h))
    };
    let (bulk, hb) = take(0)?;
    let (fault, hf) = take(1)?;
    if hb.session.get() != hf.session.get() || hb.guest_pages.get() != hf.guest_pages.get() {
        return Err(LinkError::SessionMismatch);
    }
    Ok((bulk, fault, hb.guest_pages.get()))
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless,
    reason = "test arithmetic on small known values"
)]
mod tests {
    use super::*;

    #[test]
    fn pairs_connections_and_rejects_strangers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || connect(addr, 256, Duration::from_secs(5)).unwrap());
        let (_b, _f, pages) = accept(&l, Duration::from_secs(5)).unwrap();
        assert_eq!(pages, 256);
        t.join().unwrap();

        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345")
                .unwrap();
        });
        assert!(matches!(
            accept(&l, Duration::from_secs(5)),
            Err(LinkError::BadMagic)
        ));
        t.join().unwrap();
    }
}
