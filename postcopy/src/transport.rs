//! Byte transports: the two channels of a migration.
//!
//! The *bulk* channel carries the stream (BEGIN … pushed pages … COMPLETE)
//! from source to destination; the *fault* channel carries fault requests
//! from the destination and their replies back, so a fault never waits
//! behind queued bulk pages. Any `Read`/`Write` pair works: TCP and Unix
//! sockets here, the ssh pipe and back channel of `xl migrate` in the Xen
//! glue. A `closer` unblocks readers when one side fails (socket shutdown).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// Unblocks every blocked read and write on the links (idempotent).
pub type Closer = Arc<dyn Fn() + Send + Sync>;

/// Where fault replies travel: a setting of the session, not a second
/// implementation. `T` is the end a side holds of the reply channel (the
/// source writes replies, the destination reads them).
pub enum Replies<T> {
    /// On their own channel, so a reply never waits behind queued pushes
    /// (local mode's sockets); the source acknowledges the destination's
    /// COMPLETE on it.
    Channel(T),
    /// In-band on the forward stream, between pushed pages (xl's one
    /// pipe): the source's COMPLETE follows every reply, and the
    /// destination's COMPLETE is the last word (the stream then goes back
    /// to its caller). A reply queues behind the pushed bytes in flight,
    /// which the push window bounds
    /// ([`crate::scheduler::PushPolicy::window`]).
    InBand,
}

impl<T> std::fmt::Debug for Replies<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Replies::Channel(_) => "Replies::Channel",
            Replies::InBand => "Replies::InBand",
        })
    }
}

/// The source's ends of the two channels.
pub struct SourceLinks {
    /// Stream to the destination.
    pub bulk: Box<dyn Write + Send>,
    /// Fault requests from the destination.
    pub fault_rx: Box<dyn Read + Send>,
    /// Fault replies to the destination.
    pub fault_tx: Box<dyn Write + Send>,
    /// Shuts the links down.
    pub closer: Closer,
}

/// The destination's ends of the two channels.
pub struct DestLinks {
    /// Stream from the source.
    pub bulk: Box<dyn Read + Send>,
    /// Fault replies from the source.
    pub fault_rx: Box<dyn Read + Send>,
    /// Fault requests to the source.
    pub fault_tx: Box<dyn Write + Send>,
    /// Shuts the links down.
    pub closer: Closer,
}

impl std::fmt::Debug for SourceLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceLinks")
    }
}

impl std::fmt::Debug for DestLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DestLinks")
    }
}

/// A socket that can be cloned and shut down.
pub trait Socket: Read + Write + Send + Sized + 'static {
    /// A second handle on the same socket.
    fn try_clone_socket(&self) -> io::Result<Self>;
    /// Shuts both directions down.
    fn shutdown_both(&self);
}

impl Socket for TcpStream {
    fn try_clone_socket(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

impl Socket for UnixStream {
    fn try_clone_socket(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

fn closer_for<S: Socket + Sync>(bulk: &S, fault: &S) -> io::Result<Closer> {
    let b = bulk.try_clone_socket()?;
    let f = fault.try_clone_socket()?;
    Ok(Arc::new(move || {
        b.shutdown_both();
        f.shutdown_both();
    }))
}

impl SourceLinks {
    /// The source's links over two connected sockets.
    pub fn from_sockets<S: Socket + Sync>(bulk: S, fault: S) -> io::Result<SourceLinks> {
        Ok(SourceLinks {
            closer: closer_for(&bulk, &fault)?,
            fault_tx: Box::new(fault.try_clone_socket()?),
            fault_rx: Box::new(fault),
            bulk: Box::new(bulk),
        })
    }
}

impl DestLinks {
    /// The destination's links over two connected sockets.
    pub fn from_sockets<S: Socket + Sync>(bulk: S, fault: S) -> io::Result<DestLinks> {
        Ok(DestLinks {
            closer: closer_for(&bulk, &fault)?,
            fault_tx: Box::new(fault.try_clone_socket()?),
            fault_rx: Box::new(fault),
            bulk: Box::new(bulk),
        })
    }
}

/// Two connected pairs of Unix sockets: links for both ends, in one
/// process (tests, the simulator's calibration).
pub fn unix_pair() -> io::Result<(SourceLinks, DestLinks)> {
    let (bulk_s, bulk_d) = UnixStream::pair()?;
    let (fault_s, fault_d) = UnixStream::pair()?;
    Ok((
        SourceLinks::from_sockets(bulk_s, fault_s)?,
        DestLinks::from_sockets(bulk_d, fault_d)?,
    ))
}

/// Byte budget shared by the three wrapped ends of a [`tripwire`].
#[derive(Debug)]
struct Trip {
    left: std::sync::atomic::AtomicU64,
    tripped: std::sync::atomic::AtomicBool,
}

impl Trip {
    /// How many of `want` bytes may pass; 0 means the wire is cut (and
    /// cutting it shuts the links down).
    fn allow(&self, want: usize, closer: &Closer) -> io::Result<usize> {
        use std::sync::atomic::Ordering;
        if want == 0 {
            return Ok(0);
        }
        loop {
            let left = self.left.load(Ordering::SeqCst);
            if left == 0 || self.tripped.load(Ordering::SeqCst) {
                if !self.tripped.swap(true, Ordering::SeqCst) {
                    closer();
                }
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "link cut (fault injection)",
                ));
            }
            let n = left.min(want as u64);
            if self
                .left
                .compare_exchange(left, left - n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Ok(usize::try_from(n).unwrap_or(want));
            }
        }
    }
}

struct TripEnd<T> {
    inner: T,
    trip: Arc<Trip>,
    closer: Closer,
}

impl<R: Read> Read for TripEnd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.trip.allow(buf.len(), &self.closer)?;
        // Bytes granted but not read stay in the budget's past: a cut is
        // an offset in the whole conversation, not exact per channel.
        self.inner.read(&mut buf[..n])
    }
}

impl<W: Write> Write for TripEnd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.trip.allow(buf.len(), &self.closer)?;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fault injection: the source's links, cut (both sockets shut down, so
/// the destination sees the break too) once `budget` bytes have crossed
/// them in either direction. A cut can fall anywhere, mid-record included.
/// Returns the links and a flag that turns true at the cut.
pub fn tripwire(links: SourceLinks, budget: u64) -> (SourceLinks, impl Fn() -> bool + Send) {
    let trip = Arc::new(Trip {
        left: budget.into(),
        tripped: false.into(),
    });
    let closer = links.closer.clone();
    let end = |_: ()| (Arc::clone(&trip), closer.clone());
    let (t1, c1) = end(());
    let (t2, c2) = end(());
    let (t3, c3) = end(());
    let wrapped = SourceLinks {
        bulk: Box::new(TripEnd {
            inner: links.bulk,
            trip: t1,
            closer: c1,
        }),
        fault_rx: Box::new(TripEnd {
            inner: links.fault_rx,
            trip: t2,
            closer: c2,
        }),
        fault_tx: Box::new(TripEnd {
            inner: links.fault_tx,
            trip: t3,
            closer: c3,
        }),
        closer: links.closer,
    };
    let flag = Arc::clone(&trip);
    (wrapped, move || {
        flag.tripped.load(std::sync::atomic::Ordering::SeqCst)
    })
}

/// A reader on a socket with a read timeout that says what a timeout
/// means: the socket's `WouldBlock`/`TimedOut` becomes a `TimedOut` error
/// naming the silent peer and the bound (not `os error 11`). The engine
/// treats it like any broken link: a clean abort before the switch, the
/// recovery window after it.
#[derive(Debug)]
pub struct Silence<R> {
    inner: R,
    peer: &'static str,
    after: std::time::Duration,
}

impl<R> Silence<R> {
    /// Wraps `inner`, whose reads time out after `after`, from `peer`.
    pub fn new(inner: R, peer: &'static str, after: std::time::Duration) -> Silence<R> {
        Silence { inner, peer, after }
    }
}

impl<R: Read> Read for Silence<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "timed out: the {} sent nothing for {:.1} s",
                    self.peer,
                    self.after.as_secs_f64()
                ),
            ),
            _ => e,
        })
    }
}
