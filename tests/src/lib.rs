//! Whole-system test helpers: the `xl-postcopy` binary as real processes,
//! and a fault-injecting TCP proxy to put between `send` and `receive`.
//!
//! The [`Proxy`] forwards every connection it accepts to the receiver and
//! counts bytes per direction. A [`Fault`] names a connection by its
//! channel (from the 32-byte hello: 0 bulk, 1 fault) and its ordinal among
//! that channel's connections (0 the first, 1 the first reconnect, …), a
//! direction, and a trigger — a byte offset, or the start of the first
//! record of a given type — and an [`Action`]: drop every live connection,
//! truncate this one, stall it, corrupt one byte, or kill a process and
//! drop. Everything is bounded in time: children are killed when their
//! deadline passes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `xl-postcopy` binary next to this test executable
/// (`target/<profile>/xl-postcopy`), built on demand if missing.
pub fn xl_postcopy() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash> → target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .ok_or_else(|| io::Error::other("no target directory"))?;
    let bin = dir.join("xl-postcopy");
    if !bin.exists() {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "xl-plugin", "--bin", "xl-postcopy"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status()?;
        if !status.success() || !bin.exists() {
            return Err(io::Error::other(format!(
                "building xl-postcopy failed ({status})"
            )));
        }
    }
    Ok(bin)
}

/// Writes a token file readable by its owner only (as `--token-file`
/// requires).
pub fn write_token(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Sender → receiver (bulk stream, fault replies).
    Up,
    /// Receiver → sender (READY, FAULT requests, the summary).
    Down,
}

/// When a fault fires, in one direction of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Before forwarding the byte at this offset (0: before anything).
    Offset(u64),
    /// Before forwarding the first record of this wire type (records
    /// start after the 32-byte hello upstream, after the 1-byte status
    /// downstream; not for authenticated links).
    Record(u32),
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Shut down every live connection (a network outage).
    Drop,
    /// Shut down this connection only.
    Truncate,
    /// Forward nothing in this direction for a while.
    Stall(Duration),
    /// XOR the byte at the trigger point with this value.
    Corrupt(u8),
    /// Kill the process with this pid (SIGKILL), then drop everything.
    Kill(u32),
    /// Drop everything and stop accepting: the path is gone for good.
    DropAndClose,
}

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// 0 bulk, 1 fault.
    pub channel: u32,
    /// Which of that channel's connections (0: the first).
    pub nth: u32,
    /// Direction.
    pub dir: Dir,
    /// When.
    pub at: Trigger,
    /// What.
    pub action: Action,
}

/// What the proxy saw and did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Faults that fired.
    pub fired: AtomicU64,
    /// Drop/Truncate/Kill faults that fired.
    pub cuts: AtomicU64,
    /// Bytes forwarded upstream.
    pub bytes_up: AtomicU64,
    /// Faults the proxy could not inject (a test that relied on one
    /// fails when the proxy is dropped: a fault not injected must not
    /// pass for a fault survived).
    pub not_injected: Mutex<Vec<String>>,
}

struct Live {
    conns: Vec<(TcpStream, TcpStream)>,
}

impl Live {
    fn drop_all(&mut self) {
        for (a, b) in self.conns.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

/// A fault-injecting TCP proxy running in this process.
pub struct Proxy {
    /// Where senders should connect.
    pub addr: SocketAddr,
    /// Counters.
    pub stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Live>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish()
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` with a fault plan.
    pub fn start(upstream: SocketAddr, plan: Vec<Fault>) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Live { conns: Vec::new() }));
        let plan = Arc::new(Mutex::new(plan));
        let thread = {
            let (stats, stop, live) = (stats.clone(), stop.clone(), live.clone());
            std::thread::spawn(move || {
                let mut seen = [0u32; 2];
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        Err(_) => break,
                    };
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = handle(client, upstream, &plan, &mut seen, &stats, &live, &stop);
                }
                lock(&live).drop_all();
            })
        };
        Ok(Proxy {
            addr,
            stats,
            stop,
            live,
            thread: Some(thread),
        })
    }

    /// Cuts every live connection now.
    pub fn drop_all(&self) {
        lock(&self.live).drop_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock(&self.live).drop_all();
        let missed = lock(&self.stats.not_injected).clone();
        if !missed.is_empty() && !std::thread::panicking() {
            panic!("the proxy could not inject its faults: {missed:?}");
        }
    }
}

/// Sets one accepted connection up: reads the hello to learn its
/// channel, connects upstream, starts both pumps.
fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    plan: &Arc<Mutex<Vec<Fault>>>,
    seen: &mut [u32; 2],
    stats: &Arc<ProxyStats>,
    live: &Arc<Mutex<Live>>,
    stop: &Arc<AtomicBool>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let mut hello = [0u8; 32];
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = 0;
    let mut c = &client;
    while got < hello.len() {
        match c.read(&mut hello[got..])? {
            0 => break,
            n => got += n,
        }
    }
    client.set_read_timeout(None)?;
    let channel = if got == 32 && hello[8] <= 1 {
        u32::from(hello[8])
    } else {
        0
    };
    let nth = seen[channel as usize];
    seen[channel as usize] += 1;
    let server = TcpStream::connect(upstream)?;
    server.set_nodelay(true)?;
    let mine: Vec<Fault> = {
        let mut p = lock(plan);
        let (mine, rest): (Vec<Fault>, Vec<Fault>) = p
            .drain(..)
            .partition(|f| f.channel == channel && f.nth == nth);
        *p = rest;
        mine
    };
    let up_faults: Vec<Fault> = mine.iter().copied().filter(|f| f.dir == Dir::Up).collect();
    let down_faults: Vec<Fault> = mine
        .iter()
        .copied()
        .filter(|f| f.dir == Dir::Down)
        .collect();
    lock(live)
        .conns
        .push((client.try_clone()?, server.try_clone()?));
    let pair = (client.try_clone()?, server.try_clone()?);
    let ctx = Arc::new(PumpCtx {
        stop: stop.clone(),
        stats: stats.clone(),
        live: live.clone(),
        pair,
    });
    {
        let (from, to, ctx) = (client.try_clone()?, server.try_clone()?, ctx.clone());
        let head = hello[..got].to_vec();
        std::thread::spawn(move || pump(from, to, head, up_faults, 32, Dir::Up, &ctx));
    }
    {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            pump(server, client, Vec::new(), down_faults, 1, Dir::Down, &ctx)
        });
    }
    Ok(())
}

struct PumpCtx {
    stop: Arc<AtomicBool>,
    stats: Arc<ProxyStats>,
    live: Arc<Mutex<Live>>,
    pair: (TcpStream, TcpStream),
}

/// Finds record starts in a byte stream.
struct RecordScan {
    /// Offset of the next record header.
    next: u64,
    hdr: Vec<u8>,
}

impl RecordScan {
    /// Record starts (offset, type) whose header lies in
    /// `[pos, pos + bytes.len())`... reported once complete.
    fn feed(&mut self, pos: u64, bytes: &[u8], out: &mut Vec<(u64, u32)>) {
        let end = pos + bytes.len() as u64;
        let mut p = pos.max(self.next + self.hdr.len() as u64);
        while p < end {
            if p < self.next {
                p = self.next;
                continue;
            }
            let i = usize::try_from(p - pos).unwrap_or(usize::MAX);
            let need = 8 - self.hdr.len();
            let take = need.min(bytes.len() - i);
            self.hdr.extend_from_slice(&bytes[i..i + take]);
            p += take as u64;
            if self.hdr.len() == 8 {
                let rtype =
                    u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]]);
                let len = u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]]);
                out.push((self.next, rtype));
                let body = u64::from(len).div_ceil(8) * 8;
                self.next += 8 + body;
                self.hdr.clear();
            }
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    head: Vec<u8>,
    mut faults: Vec<Fault>,
    preamble: u64,
    dir: Dir,
    ctx: &PumpCtx,
) {
    let mut pos = 0u64;
    let mut scan = RecordScan {
        next: preamble,
        hdr: Vec::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = head;
    loop {
        let mut chunk = if pending.is_empty() {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf[..n].to_vec(),
            }
        } else {
            std::mem::take(&mut pending)
        };
        // Resolve record triggers to offsets (peek before forwarding).
        if faults.iter().any(|f| matches!(f.at, Trigger::Record(_))) {
            let mut starts = Vec::new();
            scan.feed(pos, &chunk, &mut starts);
            for f in faults.iter_mut() {
                if let Trigger::Record(t) = f.at {
                    if let Some(&(off, _)) = starts.iter().find(|&&(_, rt)| rt == t) {
                        f.at = Trigger::Offset(off);
                    }
                }
            }
        }
        let end = pos + chunk.len() as u64;
        // The earliest offset fault inside this chunk.
        let hit = faults
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f.at {
                Trigger::Offset(o) if o >= pos && o < end => Some((o, i)),
                Trigger::Offset(o) if o < pos => Some((pos, i)),
                _ => None,
            })
            .min();
        let Some((off, i)) = hit else {
            if to.write_all(&chunk).is_err() {
                break;
            }
            if dir == Dir::Up {
                ctx.stats
                    .bytes_up
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            pos = end;
            continue;
        };
        let f = faults.remove(i);
        let k = usize::try_from(off - pos).unwrap_or(0).min(chunk.len());
        ctx.stats.fired.fetch_add(1, Ordering::SeqCst);
        match f.action {
            Action::Corrupt(x) => {
                if k < chunk.len() {
                    chunk[k] ^= x;
                }
                pending = chunk;
                // Re-run the loop on the same bytes (no scan twice: the
                // scanner only moves forward).
                continue;
            }
            Action::Stall(d) => {
                let _ = to.write_all(&chunk[..k]);
                std::thread::sleep(d);
                pos += k as u64;
                pending = chunk[k..].to_vec();
                continue;
            }
            Action::Drop | Action::Truncate | Action::Kill(_) | Action::DropAndClose => {
                let _ = to.write_all(&chunk[..k]);
                let _ = to.flush();
                ctx.stats.cuts.fetch_add(1, Ordering::SeqCst);
                match f.action {
                    Action::Truncate => {
                        let _ = ctx.pair.0.shutdown(Shutdown::Both);
                        let _ = ctx.pair.1.shutdown(Shutdown::Both);
                    }
                    Action::DropAndClose => {
                        ctx.stop.store(true, Ordering::SeqCst);
                        lock(&ctx.live).drop_all();
                    }
                    Action::Kill(pid) => {
                        // A syscall, not the kill program (procps is not
                        // on every machine).
                        let sent = i32::try_from(pid)
                            .ok()
                            .and_then(rustix::process::Pid::from_raw)
                            .ok_or_else(|| format!("pid {pid} is not a process id"))
                            .and_then(|p| {
                                rustix::process::kill_process(p, rustix::process::Signal::KILL)
                                    .map_err(|e| format!("SIGKILL to {pid}: {e}"))
                            });
                        if let Err(e) = sent {
                            lock(&ctx.stats.not_injected).push(e);
                        }
                        lock(&ctx.live).drop_all();
                    }
                    _ => lock(&ctx.live).drop_all(),
                }
                break;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A child process with a deadline: killed on drop or when it overstays.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its stdout lines (read on a thread).
    pub lines: mpsc::Receiver<String>,
    /// Its stderr (drained on a thread so the pipe never fills).
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    deadline: Instant,
}

impl Proc {
    /// Spawns `xl-postcopy args…` with piped stdout and stderr captured to
    /// a string at exit.
    pub fn spawn(args: &[String], limit: Duration) -> io::Result<Proc> {
        let mut child = Command::new(xl_postcopy()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let err = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines() {
                    let Ok(l) = l else { break };
                    if std::env::var_os("XPC_TEST_VERBOSE").is_some() {
                        eprintln!("[child] {l}");
                    }
                    let mut s = lock(&stderr);
                    if s.len() < 1 << 20 {
                        s.push_str(&l);
                        s.push('\n');
                    }
                }
            })
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            stderr,
            stderr_thread: Some(stderr_thread),
            deadline: Instant::now() + limit,
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next stdout line, within the deadline.
    pub fn line(&self) -> io::Result<String> {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        self.lines
            .recv_timeout(wait)
            .map_err(|e| io::Error::other(format!("no output: {e}")))
    }

    /// Like [`Proc::finish`], but gives up (and kills it) after `within`;
    /// a killed process reports exit code -9.
    pub fn finish_within(mut self, within: Duration) -> (i32, String, String) {
        self.deadline = self.deadline.min(Instant::now() + within);
        match self.finish() {
            Ok(r) => r,
            Err(e) => (-9, String::new(), e.to_string()),
        }
    }

    /// Waits for exit within the deadline (killing it otherwise); returns
    /// (exit code, stdout rest, stderr).
    pub fn finish(mut self) -> io::Result<(i32, String, String)> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                let err = lock(&self.stderr).clone();
                let mut out = String::new();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    out.push_str(&l);
                    out.push('\n');
                }
                return Ok((status.code().unwrap_or(-1), out, err));
            }
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::other(format!(
                    "process overstayed its deadline (killed); stderr:\n{}",
                    lock(&self.stderr)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `xl-postcopy receive` on loopback with `extra` arguments and
/// returns it with its address.
pub fn receiver(extra: &[&str], limit: Duration) -> io::Result<(Proc, SocketAddr)> {
    let mut args: Vec<String> = ["receive", "--listen", "127.0.0.1:0", "--tail", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let p = Proc::spawn(&args, limit)?;
    let first = p.line()?;
    let addr = first
        .strip_prefix("LISTEN ")
        .ok_or_else(|| io::Error::other(format!("receiver said {first:?}")))?
        .parse()
        .map_err(|e| io::Error::other(format!("bad address: {e}")))?;
    Ok((p, addr))
}

/// Starts `xl-postcopy send --to addr` for a small, short guest.
pub fn sender(to: SocketAddr, extra: &[&str], limit: Duration) -> io::Result<Proc> {
    let mem = if extra.contains(&"--mem") {
        None
    } else {
        Some(["--mem", "16M"])
    };
    let mut args: Vec<String> = [
        "send",
        "--to",
        &to.to_string(),
        "--warmup",
        "0.2",
        "--tail",
        "0",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(mem.iter().flatten().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(&args, limit)
}

/// The record types of the engine's stream, for [`Trigger::Record`].
pub mod rec {
    /// POSTCOPY_BEGIN.
    pub const BEGIN: u32 = 0x13;
    /// POSTCOPY_PFNS.
    pub const PFNS: u32 = 0x14;
    /// POSTCOPY_TRANSITION.
    pub const TRANSITION: u32 = 0x15;
    /// POSTCOPY_PAGE_DATA.
    pub const PAGE_DATA: u32 = 0x16;
    /// POSTCOPY_VCPU_STATE.
    pub const VCPU_STATE: u32 = 0x1a;
    /// POSTCOPY_RESUMED.
    pub const RESUMED: u32 = 0x1b;
    /// POSTCOPY_READY.
    pub const READY: u32 = 0x1e;
}

/// A wiretap: a proxy that records every byte the sender sends (all connections, in
/// arrival order) and, if asked, flips one byte of the first bulk
/// connection at `flip` bytes in (after the handshake).
#[derive(Debug)]
pub struct Tap {
    /// Where to dial.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// What the dialer sent so far.
    pub fn seen(&self) -> Vec<u8> {
        lock(&self.seen).clone()
    }
}

pub fn tap(upstream: SocketAddr, flip: Option<usize>) -> io::Result<Tap> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(c) = c else { return };
            let Ok(s) = TcpStream::connect(upstream) else {
                return;
            };
            // The first connection is the first bulk channel.
            let flip = flip.filter(|_| n == 0);
            let (Ok(c2), Ok(s2)) = (c.try_clone(), s.try_clone()) else {
                return;
            };
            let log = Arc::clone(&log);
            std::thread::spawn(move || tap_pump(c, s, Some(log), flip));
            std::thread::spawn(move || tap_pump(s2, c2, None, None));
        }
    });
    Ok(Tap { addr, seen })
}

fn tap_pump(
    mut from: TcpStream,
    mut to: TcpStream,
    log: Option<Arc<Mutex<Vec<u8>>>>,
    flip: Option<usize>,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut at = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = flip {
            if (at..at + n).contains(&f) {
                buf[f - at] ^= 0x40;
            }
        }
        at += n;
        if let Some(l) = &log {
            lock(l).extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
