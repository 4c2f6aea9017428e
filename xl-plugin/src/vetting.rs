//! Concurrent, bounded handshakes on a listener.
//!
//! A listener that vets one connection at a time lets one silent stranger
//! hold the legitimate dialer for a whole handshake timeout, and a few of
//! them for several. [`Vetting`] runs each accepted connection's handshake
//! on its own thread (the caller's `vet` bounds it, e.g. by socket
//! timeouts), at most [`MAX_VETTING`] at once (further connections wait in
//! the kernel's backlog), and hands back results as they finish; a refused
//! stranger costs only its own connection. Local mode's receiver and the
//! tunnel listener share it.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};

/// Handshakes vetted at once.
pub const MAX_VETTING: usize = 16;

/// One finished handshake: who, the connection, and the verdict.
pub type Vetted<T, E> = (SocketAddr, TcpStream, Result<T, E>);

/// Handshakes in flight on their own threads.
#[derive(Debug)]
pub struct Vetting<T, E> {
    tx: Sender<Vetted<T, E>>,
    rx: Receiver<Vetted<T, E>>,
    in_flight: usize,
}

impl<T: Send + 'static, E: Send + 'static> Default for Vetting<T, E> {
    fn default() -> Self {
        let (tx, rx) = channel();
        Vetting {
            tx,
            rx,
            in_flight: 0,
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> Vetting<T, E> {
    /// Takes one waiting connection from `listener` (which must be
    /// non-blocking) and starts `vet` on it; true if one was taken.
    /// Nothing is taken while [`MAX_VETTING`] handshakes run.
    pub fn accept<F>(&mut self, listener: &TcpListener, vet: F) -> io::Result<bool>
    where
        F: FnOnce(&mut TcpStream) -> Result<T, E> + Send + 'static,
    {
        if self.in_flight >= MAX_VETTING {
            return Ok(false);
        }
        let (s, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        s.set_nonblocking(false)?;
        let tx = self.tx.clone();
        let spawned = std::thread::Builder::new()
            .name("xpc-handshake".into())
            .spawn(move || {
                let mut s = s;
                let r = vet(&mut s);
                // The waiter may be gone: the connection just closes.
                let _ = tx.send((peer, s, r));
            });
        match spawned {
            Ok(_) => self.in_flight += 1,
            // Dropping the connection refuses it.
            Err(e) => log::warn!("no thread for a handshake with {peer}: {e}"),
        }
        Ok(true)
    }

    /// A finished handshake, if any.
    pub fn finished(&mut self) -> Option<Vetted<T, E>> {
        let v = self.rx.try_recv().ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(v)
    }
}

/// Runs `f` with `listener` non-blocking (as [`Vetting::accept`] needs),
/// and blocking again afterwards.
pub fn nonblocking<T, E: From<io::Error>>(
    listener: &TcpListener,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    listener.set_nonblocking(true)?;
    let r = f();
    let reset = listener.set_nonblocking(false);
    let v = r?;
    reset?;
    Ok(v)
}
