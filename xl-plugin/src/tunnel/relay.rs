//! The byte relay behind a tunnel end: a local input and output (stdin and
//! stdout, or a child's pipes) joined to whichever TCP connection is
//! current.
//!
//! Every byte read from the local input stays in the *outbox* until the
//! peer acknowledges it, so a connection can break at any byte and the
//! next one resends from the offset the peer says it holds; the receiving
//! end drops what it already has by offset. The outbox is bounded
//! ([`Config::buffer`]): when the peer stops acknowledging, the local
//! writer blocks, exactly as it would on a full socket.
//!
//! Threads: the input pump (local input → outbox), the output pump (a
//! bounded channel → local output), and per connection a sender (outbox →
//! DATA, ACK, FIN, PING) and a receiver (frames → output pump). All share
//! one [`State`] behind a mutex and a condition variable.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use serde::Serialize;

use super::frame::{encode, Frame, FrameError, FrameReader, MAX_DATA};
use crate::local::link::Conn;

/// Tunables of one tunnel end.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most unacknowledged bytes held for resending.
    pub buffer: usize,
    /// A PING goes out after this long without sending anything.
    pub ping_every: Duration,
    /// A connection that brings nothing for this long is broken.
    pub silence: Duration,
    /// How long to keep trying to restore a broken link.
    pub recover_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            buffer: 64 << 20,
            ping_every: Duration::from_secs(1),
            silence: Duration::from_secs(10),
            recover_timeout: Duration::from_secs(120),
        }
    }
}

/// Counters of one tunnel session (printed at the end, and `--stats`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Bytes of the local input carried to the peer.
    pub bytes_sent: u64,
    /// Bytes of the peer's stream delivered to the local output.
    pub bytes_received: u64,
    /// TCP connections used (1 + reconnections).
    pub connections: u64,
    /// Links lost and restored.
    pub outages: u64,
    /// Time without a link, summed (ms).
    pub outage_ms_total: u64,
    /// The longest time without a link (ms).
    pub outage_ms_max: u64,
    /// Bytes sent again after a reconnection.
    pub bytes_resent: u64,
    /// Bytes received twice and dropped.
    pub bytes_duplicate: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Both streams are complete and delivered.
    Done,
    /// The connection broke; another may resume the session.
    Broken(String),
    /// The session cannot go on (protocol violation, local I/O failure).
    Fatal(String),
}

/// Everything the threads share.
#[derive(Debug, Default)]
pub struct State {
    /// Unacknowledged bytes of the local input.
    out: VecDeque<u8>,
    /// Stream offset of `out[0]`: the peer holds everything below.
    out_base: u64,
    /// The local input ended.
    in_eof: bool,
    /// Bytes of the peer's stream received so far.
    received: u64,
    /// The last ACK offset sent.
    ack_sent: u64,
    /// The peer's stream length, once it said FIN.
    peer_fin: Option<u64>,
    /// The output pump was told to close the local output.
    close_requested: bool,
    /// The local output is closed (everything written, or the reader left).
    output_closed: bool,
    /// Connection generation (threads of an older one stop).
    generation: u64,
    /// Why the current connection broke.
    broken: Option<String>,
    /// Why the session cannot go on.
    fatal: Option<String>,
    /// Highest stream offset ever sent.
    sent_hi: u64,
    stats: Stats,
}

impl State {
    fn out_end(&self) -> u64 {
        self.out_base + self.out.len() as u64
    }

    /// Everything sent is acknowledged, everything received delivered.
    fn done(&self) -> bool {
        self.in_eof
            && self.out.is_empty()
            && self.peer_fin == Some(self.received)
            && self.output_closed
            && self.ack_sent == self.received
    }

    /// The peer has nothing more to say and needs nothing more from us.
    fn peer_finished(&self) -> bool {
        self.in_eof && self.out.is_empty() && self.peer_fin == Some(self.received)
    }

    /// Bytes `[from, from + n)` of the outbox.
    fn copy_out(&self, from: u64, n: usize) -> Vec<u8> {
        let start = usize::try_from(from - self.out_base).unwrap_or(usize::MAX);
        let (a, b) = self.out.as_slices();
        let mut v = Vec::with_capacity(n);
        if start < a.len() {
            v.extend_from_slice(&a[start..(start + n).min(a.len())]);
        }
        let rest = n - v.len();
        if rest > 0 {
            let bstart = (start + v.len()) - a.len();
            v.extend_from_slice(&b[bstart..bstart + rest]);
        }
        v
    }

    /// Drops acknowledged bytes below `offset`.
    fn acknowledge(&mut self, offset: u64) -> Result<(), String> {
        if offset > self.sent_hi {
            return Err(format!(
                "peer acknowledges {offset} bytes but only {} were sent",
                self.sent_hi
            ));
        }
        if offset > self.out_base {
            let n = usize::try_from(offset - self.out_base).unwrap_or(usize::MAX);
            self.out.drain(..n.min(self.out.len()));
            self.out_base = offset;
        }
        Ok(())
    }
}

/// The shared state and its condition variable.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, why: String) {
        let mut st = self.lock();
        st.fatal.get_or_insert(why);
        self.cv.notify_all();
    }

    /// Bytes of the peer's stream held here (for a hello).
    pub fn received(&self) -> u64 {
        self.lock().received
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let mut s = st.stats.clone();
        s.bytes_sent = st.sent_hi;
        s.bytes_received = st.received;
        s
    }

    /// Why the session failed, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// Records an outage of `d` (the link is back).
    pub fn outage(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut st = self.lock();
        st.stats.outages += 1;
        st.stats.outage_ms_total += ms;
        st.stats.outage_ms_max = st.stats.outage_ms_max.max(ms);
    }
}

/// The two local pumps of a session; [`Relay::connection`] runs one TCP
/// connection at a time over them.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    out_tx: SyncSender<Option<Vec<u8>>>,
    cfg: Config,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts the pumps over `input` and `output`.
    pub fn start(
        input: Box<dyn Read + Send>,
        output: Box<dyn Write + Send>,
        cfg: Config,
    ) -> io::Result<Relay> {
        let shared = Arc::new(Shared::default());
        let (out_tx, out_rx) = sync_channel(16);
        let cap = cfg.buffer.max(MAX_DATA);
        let pin = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tunnel-in".into())
                .spawn(move || pump_in(&shared, input, cap))?
        };
        let pout = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tunnel-out".into())
                .spawn(move || pump_out(&shared, output, &out_rx))?
        };
        Ok(Relay {
            shared,
            out_tx,
            cfg,
            pumps: vec![pin, pout],
        })
    }

    /// The shared state (counters, offsets).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The tunables.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs one connection whose peer holds `peer_received` bytes of our
    /// stream, until the session is done or the connection breaks.
    /// With keys, both directions are sealed ([`crate::seal`]).
    pub fn connection(&self, conn: Conn, peer_received: u64) -> Ended {
        let stream = &conn.sock;
        let generation = {
            let mut st = self.shared.lock();
            if let Some(f) = &st.fatal {
                return Ended::Fatal(f.clone());
            }
            if peer_received < st.out_base {
                let why = format!(
                    "peer holds {peer_received} bytes but had acknowledged {}: it lost data",
                    st.out_base
                );
                st.fatal = Some(why.clone());
                return Ended::Fatal(why);
            }
            if let Err(why) = st.acknowledge(peer_received) {
                st.fatal = Some(why.clone());
                return Ended::Fatal(why);
            }
            if st.stats.connections > 0 {
                let resent = st.sent_hi - peer_received;
                st.stats.bytes_resent += resent;
                info!(
                    "tunnel: resuming; peer holds {peer_received} of our bytes (resending {resent}), we hold {} of its",
                    st.received
                );
            }
            st.stats.connections += 1;
            st.generation += 1;
            st.broken = None;
            st.ack_sent = st.received;
            st.generation
        };
        // Both directions are bounded by the silence timeout: a peer that
        // keeps pinging but stops reading blocks our writes, and a write
        // that takes no byte for that long breaks the connection as a
        // silent peer does.
        let ends = stream
            .set_read_timeout(Some(self.cfg.silence))
            .and_then(|()| stream.set_write_timeout(Some(self.cfg.silence)))
            .and_then(|()| Ok((conn.reader()?, conn.writer()?)));
        let (reader, mut writer) = match ends {
            Ok(r) => r,
            Err(e) => return Ended::Broken(format!("cannot set the connection up: {e}")),
        };
        std::thread::scope(|s| {
            let tx =
                s.spawn(move || self.send_loop(stream, &mut *writer, generation, peer_received));
            let rx = self.receive_loop(reader, generation);
            if rx != Ended::Done {
                let _ = stream.shutdown(Shutdown::Both);
            }
            if tx.join().is_err() {
                self.shared.fail("the tunnel sender panicked".into());
            }
        });
        let st = self.shared.lock();
        if let Some(f) = &st.fatal {
            Ended::Fatal(f.clone())
        } else if st.done() {
            Ended::Done
        } else {
            Ended::Broken(
                st.broken
                    .clone()
                    .unwrap_or_else(|| "the connection ended".into()),
            )
        }
    }

    /// Marks the current connection broken (idempotent).
    fn broken(&self, generation: u64, why: String) {
        let mut st = self.shared.lock();
        if st.generation == generation && st.broken.is_none() {
            st.broken = Some(why);
        }
        self.shared.cv.notify_all();
    }

    /// Sends DATA from the peer's offset on, ACKs, FIN and PINGs until the
    /// session is done (then half-closes) or the connection breaks.
    fn send_loop(
        &self,
        stream: &TcpStream,
        w: &mut (dyn Write + Send),
        generation: u64,
        peer_received: u64,
    ) {
        let mut next = peer_received;
        let mut fin_sent = false;
        let mut last_send = Instant::now();
        let mut frames = Vec::with_capacity(MAX_DATA + 64);
        loop {
            frames.clear();
            let done = {
                let mut st = self.shared.lock();
                loop {
                    if st.generation != generation || st.broken.is_some() || st.fatal.is_some() {
                        return;
                    }
                    next = next.max(st.out_base);
                    let idle = last_send.elapsed();
                    let want = st.received > st.ack_sent
                        || next < st.out_end()
                        || (st.in_eof && next == st.out_end() && !fin_sent)
                        || st.done()
                        || idle >= self.cfg.ping_every;
                    if want {
                        break;
                    }
                    let wait = self.cfg.ping_every.saturating_sub(idle);
                    st = self
                        .shared
                        .cv
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if st.received > st.ack_sent {
                    encode(&Frame::Ack(st.received), &mut frames);
                    st.ack_sent = st.received;
                }
                let end = st.out_end();
                if next < end {
                    let n = usize::try_from(end - next)
                        .unwrap_or(MAX_DATA)
                        .min(MAX_DATA);
                    let bytes = st.copy_out(next, n);
                    encode(
                        &Frame::Data {
                            offset: next,
                            bytes: &bytes,
                        },
                        &mut frames,
                    );
                    next += n as u64;
                    st.sent_hi = st.sent_hi.max(next);
                }
                if st.in_eof && next == st.out_end() && !fin_sent {
                    encode(&Frame::Fin(next), &mut frames);
                    fin_sent = true;
                }
                if frames.is_empty() && !st.done() {
                    encode(&Frame::Ping, &mut frames);
                }
                // The receiver may be waiting for the last ACK to go.
                self.shared.cv.notify_all();
                st.done()
            };
            if let Err(e) = w.write_all(&frames) {
                if !done {
                    let why = match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                            "the peer took no bytes for {:?} (it stopped reading)",
                            self.cfg.silence
                        ),
                        _ => format!("send failed: {}", postcopy::error::io_words(&e)),
                    };
                    self.broken(generation, why);
                    let _ = stream.shutdown(Shutdown::Both);
                }
                return;
            }
            last_send = Instant::now();
            if done {
                debug!("tunnel: every byte delivered both ways; closing");
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
        }
    }

    /// Reads frames until the peer closes after a complete session, the
    /// connection breaks, or the peer breaks the protocol.
    fn receive_loop(&self, sock: Box<dyn Read + Send>, generation: u64) -> Ended {
        let silence = self.cfg.silence;
        let mut r = FrameReader::new(sock);
        loop {
            let frame = match r.next_frame() {
                Ok(f) => f,
                Err(FrameError::Io(e)) => {
                    let mut st = self.shared.lock();
                    if e.kind() == io::ErrorKind::UnexpectedEof && st.peer_finished() {
                        // Wait for our own side (the output pump, the last
                        // ACK) to finish; the sender half-closes then.
                        while !st.done() && st.fatal.is_none() && st.broken.is_none() {
                            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        return Ended::Done;
                    }
                    drop(st);
                    let why = match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            format!("nothing from the peer for {silence:?}")
                        }
                        io::ErrorKind::UnexpectedEof => "the peer closed the connection".into(),
                        _ => e.to_string(),
                    };
                    self.broken(generation, why.clone());
                    return Ended::Broken(why);
                }
                Err(e) => {
                    let why = format!("protocol violation: {e}");
                    self.shared.fail(why.clone());
                    return Ended::Fatal(why);
                }
            };
            let step = match frame {
                Frame::Data { offset, bytes } => self.on_data(offset, bytes),
                Frame::Ack(o) => {
                    let mut st = self.shared.lock();
                    let r = st.acknowledge(o);
                    self.shared.cv.notify_all();
                    r
                }
                Frame::Fin(total) => {
                    let mut st = self.shared.lock();
                    match st.peer_fin {
                        Some(t) if t != total => {
                            Err(format!("peer said its stream ends at {t}, then at {total}"))
                        }
                        _ if total < st.received => Err(format!(
                            "peer says its stream ends at {total}, but {} bytes came",
                            st.received
                        )),
                        _ => {
                            st.peer_fin = Some(total);
                            Ok(())
                        }
                    }
                }
                Frame::Ping => Ok(()),
            };
            if let Err(why) = step.and_then(|()| self.close_output_when_complete()) {
                self.shared.fail(why.clone());
                return Ended::Fatal(why);
            }
        }
    }

    /// Delivers the part of a DATA frame not held yet.
    fn on_data(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let end = offset + bytes.len() as u64;
        let skip = {
            let mut st = self.shared.lock();
            if offset > st.received {
                return Err(format!(
                    "peer sent bytes from {offset} while {} were received: a gap",
                    st.received
                ));
            }
            if let Some(t) = st.peer_fin.filter(|&t| end > t) {
                return Err(format!("peer sent bytes up to {end} past its end {t}"));
            }
            if end <= st.received {
                st.stats.bytes_duplicate += bytes.len() as u64;
                return Ok(());
            }
            let skip = st.received - offset;
            st.stats.bytes_duplicate += skip;
            usize::try_from(skip).unwrap_or(usize::MAX)
        };
        let fresh = bytes[skip..].to_vec();
        let n = fresh.len() as u64;
        self.out_tx
            .send(Some(fresh))
            .map_err(|_| "the output pump stopped".to_string())?;
        let mut st = self.shared.lock();
        st.received += n;
        self.shared.cv.notify_all();
        Ok(())
    }

    /// After the peer's last byte, tells the output pump to close.
    fn close_output_when_complete(&self) -> Result<(), String> {
        let mut st = self.shared.lock();
        if st.peer_fin == Some(st.received) && !st.close_requested {
            st.close_requested = true;
            drop(st);
            self.out_tx
                .send(None)
                .map_err(|_| "the output pump stopped".to_string())?;
        }
        Ok(())
    }

    /// Waits for both pumps (after [`Ended::Done`]).
    pub fn finish(self) -> Stats {
        let stats = self.shared.stats();
        drop(self.out_tx);
        for p in self.pumps {
            let _ = p.join();
        }
        stats
    }
}

/// Local input → outbox, blocking while the outbox is full.
fn pump_in(shared: &Shared, mut input: Box<dyn Read + Send>, cap: usize) {
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        {
            let mut st = shared.lock();
            while st.out.len() >= cap && st.fatal.is_none() {
                st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.fatal.is_some() {
                return;
            }
        }
        match input.read(&mut buf) {
            Ok(0) => {
                let mut st = shared.lock();
                st.in_eof = true;
                shared.cv.notify_all();
                debug!("tunnel: local input ended after {} bytes", st.out_end());
                return;
            }
            Ok(n) => {
                let mut st = shared.lock();
                st.out.extend(&buf[..n]);
                shared.cv.notify_all();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                shared.fail(format!("reading the local input: {e}"));
                return;
            }
        }
    }
}

/// Channel → local output; `None` (or the channel's end) closes it. A
/// local reader that went away makes the rest be dropped, not the session.
fn pump_out(shared: &Shared, mut output: Box<dyn Write + Send>, rx: &Receiver<Option<Vec<u8>>>) {
    let mut lost = false;
    while let Ok(Some(bytes)) = rx.recv() {
        if lost {
            continue;
        }
        if let Err(e) = output.write_all(&bytes).and_then(|()| output.flush()) {
            warn!("tunnel: the local output closed ({e}); dropping what follows");
            lost = true;
        }
    }
    drop(output);
    let mut st = shared.lock();
    st.output_closed = true;
    shared.cv.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that keeps pinging but never reads: our writes fill the
    /// socket and then time out, so the connection breaks within about the
    /// silence timeout instead of blocking forever.
    #[test]
    fn a_peer_that_stops_reading_breaks_the_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pinger = {
            let (mut peer, stop) = (peer.try_clone().unwrap(), stop.clone());
            std::thread::spawn(move || {
                let mut ping = Vec::new();
                encode(&Frame::Ping, &mut ping);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if peer.write_all(&ping).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let cfg = Config {
            silence: Duration::from_secs(1),
            ping_every: Duration::from_millis(200),
            ..Config::default()
        };
        let input = std::io::Cursor::new(vec![7u8; 48 << 20]);
        let relay = Relay::start(Box::new(input), Box::new(std::io::sink()), cfg).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let t = Instant::now();
            let ended = relay.connection(
                Conn {
                    sock: ours,
                    keys: None,
                },
                0,
            );
            let _ = tx.send((ended, t.elapsed()));
        });
        let got = rx.recv_timeout(Duration::from_secs(15));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = peer.shutdown(Shutdown::Both);
        let _ = pinger.join();
        let (ended, took) = got.expect("the relay blocked in a write forever");
        match ended {
            Ended::Broken(why) => assert!(why.contains("stopped reading"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(8), "{took:?}");
    }

    #[test]
    fn outbox_copies_across_the_ring_seam_and_trims_on_ack() {
        let mut st = State::default();
        st.out.extend(0u8..10);
        st.sent_hi = 10;
        st.acknowledge(4).unwrap();
        st.out.extend(10u8..20);
        assert_eq!(st.out_base, 4);
        assert_eq!(st.copy_out(6, 8), (6u8..14).collect::<Vec<_>>());
        assert_eq!(st.copy_out(4, 16), (4u8..20).collect::<Vec<_>>());
        st.acknowledge(2).unwrap();
        assert_eq!(st.out_base, 4, "a stale ACK changes nothing");
        assert!(st.acknowledge(11).is_err(), "ACK beyond what was sent");
    }

    #[test]
    fn done_needs_both_directions_and_the_last_ack() {
        let mut st = State {
            in_eof: true,
            received: 5,
            peer_fin: Some(5),
            output_closed: true,
            ..State::default()
        };
        assert!(!st.done());
        st.ack_sent = 5;
        assert!(st.done());
        st.out.push_back(1);
        assert!(!st.done());
    }
}
