//! The latency floor: the fastest a network fault can possibly be served
//! on this host, measured in the same run as the figures compared to it.
//!
//! This machine is a small VM whose timings drift with its host's load, so
//! fault-latency targets are ratios to a floor measured alongside (issue 4):
//! a bare userfaultfd round trip served from local memory (a thread
//! touches an absent page, a *spinning* handler thread answers with
//! UFFDIO_COPY) plus a 16-byte request / 4 KiB reply over a loopback TCP
//! connection (both ends spinning on non-blocking sockets), summed per
//! sample. Spinning is the true lower bound: a blocked thread lets its vCPU
//! halt, and waking it costs a trip through the host. Every spin is bounded
//! in time (and yields after its first millisecond, so a descheduled peer
//! gets the core back), and the two parts run one after the other, so at most
//! two threads spin on the two cores.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::pool::StagingPool;
use crate::probe;
use crate::region::GuestRegion;
use crate::sys::{self, Fill};
use postcopy::PAGE_SIZE;

/// Longest any single spin waits before the measurement gives up.
const SPIN_LIMIT: Duration = Duration::from_secs(2);
/// Memory touched and freed before timing (first touches of memory the VM
/// handed back to its host are up to 10× slower).
const PREWARM_BYTES: usize = 256 << 20;

/// The floor's percentiles, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FloorReport {
    /// Samples measured (after warm-up).
    pub samples: usize,
    /// Median of uffd round trip + TCP request/reply.
    pub p50_us: f64,
    /// 99th percentile of the sum.
    pub p99_us: f64,
    /// Largest sum.
    pub max_us: f64,
    /// Median of the uffd round trip alone.
    pub uffd_p50_us: f64,
    /// 99th percentile of the uffd round trip alone.
    pub uffd_p99_us: f64,
    /// Median of the TCP request/reply alone.
    pub tcp_p50_us: f64,
    /// 99th percentile of the TCP request/reply alone.
    pub tcp_p99_us: f64,
}

/// Pure spinning lasts this long per wait — far above a round trip, so
/// the percentiles of an undisturbed run are untouched; past it the peer
/// has surely been descheduled, and each further spin also yields so it
/// can get a core back. (Yielding after 20–200 µs was tried: under load it
/// raised the TCP median from ~10 µs to 80–600 µs.)
const PURE_SPIN: Duration = Duration::from_millis(1);

/// A bounded busy-wait.
struct Spin {
    start: Instant,
}

impl Spin {
    fn new() -> Spin {
        Spin {
            start: Instant::now(),
        }
    }

    /// One idle iteration; `Err` after [`SPIN_LIMIT`].
    fn idle(&self, what: &str) -> io::Result<()> {
        let waited = self.start.elapsed();
        if waited > SPIN_LIMIT {
            return Err(timed_out(what));
        }
        if waited > PURE_SPIN {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("floor: {what} timed out"))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Touches and frees `bytes` of fresh memory.
fn prewarm(bytes: usize) -> io::Result<()> {
    let r = GuestRegion::new((bytes / PAGE_SIZE) as u64)?;
    for w in r.words().iter().step_by(PAGE_SIZE / 8) {
        w.store(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Pre-warms `bytes` of memory (for the crate's benchmarks).
#[cfg(test)]
pub(crate) fn prewarm_for_bench(bytes: usize) -> io::Result<()> {
    prewarm(bytes)
}

/// `n` uffd fault round trips (touch → spinning handler's COPY → resumed).
fn uffd_round_trips(n: usize) -> io::Result<Vec<u64>> {
    let region = Arc::new(GuestRegion::new(n as u64)?);
    let uffd = Arc::new(probe::open_with(0, "userfaultfd").map_err(io::Error::other)?);
    sys::register(
        &uffd,
        region.addr(),
        region.len_bytes() as u64,
        sys::REGISTER_MODE_MISSING,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler = {
        let (uffd, stop) = (uffd.clone(), stop.clone());
        std::thread::Builder::new()
            .name("floor-uffd".into())
            .spawn(move || -> io::Result<()> {
                let page = vec![0x5au8; PAGE_SIZE];
                let mut buf = [0u8; 16 * sys::UFFD_MSG_SIZE];
                let mut spin = Spin::new();
                while !stop.load(Ordering::Relaxed) {
                    let got = sys::read_msgs(&uffd, &mut buf)?;
                    if got == 0 {
                        spin.idle("uffd handler")?;
                        continue;
                    }
                    for msg in buf[..got].chunks_exact(sys::UFFD_MSG_SIZE) {
                        if msg[0] != sys::EVENT_PAGEFAULT {
                            continue;
                        }
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&msg[16..24]);
                        let addr = u64::from_ne_bytes(a) & !(PAGE_SIZE as u64 - 1);
                        if let Fill::Failed(e) = sys::copy(&uffd, addr, &page, 0) {
                            if e.raw_os_error() != Some(libc::EEXIST) {
                                return Err(e);
                            }
                        }
                    }
                    spin = Spin::new();
                }
                Ok(())
            })?
    };
    let words = region.words();
    let mut out = Vec::with_capacity(n);
    for w in words.iter().step_by(PAGE_SIZE / 8) {
        if handler.is_finished() {
            break;
        }
        let t0 = Instant::now();
        let v = w.load(Ordering::Relaxed);
        let dt = t0.elapsed();
        std::hint::black_box(v);
        out.push(nanos(dt));
    }
    stop.store(true, Ordering::Relaxed);
    handler
        .join()
        .map_err(|_| io::Error::other("floor: uffd handler panicked"))??;
    if out.len() < n {
        return Err(io::Error::other("floor: uffd handler stopped early"));
    }
    Ok(out)
}

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning.
fn read_spinning(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let spin = Spin::new();
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => spin.idle("tcp read")?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking socket, spinning.
fn write_spinning(s: &mut TcpStream, buf: &[u8]) -> io::Result<()> {
    let spin = Spin::new();
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => put += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => spin.idle("tcp write")?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `n` 16-byte request / 4 KiB reply exchanges over loopback TCP.
fn tcp_round_trips(n: usize) -> io::Result<Vec<u64>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let server =
        std::thread::Builder::new()
            .name("floor-tcp".into())
            .spawn(move || -> io::Result<()> {
                let (mut s, _) = listener.accept()?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                let reply = vec![0xa5u8; PAGE_SIZE];
                let mut req = [0u8; 16];
                for _ in 0..n {
                    read_spinning(&mut s, &mut req)?;
                    write_spinning(&mut s, &reply)?;
                }
                Ok(())
            })?;
    let run = || -> io::Result<Vec<u64>> {
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        let req = [7u8; 16];
        let mut reply = vec![0u8; PAGE_SIZE];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            write_spinning(&mut c, &req)?;
            read_spinning(&mut c, &mut reply)?;
            out.push(nanos(t0.elapsed()));
        }
        Ok(out)
    };
    let out = run();
    let served = server
        .join()
        .map_err(|_| io::Error::other("floor: tcp server panicked"))?;
    let out = out?;
    served?;
    Ok(out)
}

fn histogram(values: impl Iterator<Item = u64>) -> io::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3).map_err(io::Error::other)?;
    for v in values {
        h.record(v.max(1)).map_err(io::Error::other)?;
    }
    Ok(h)
}

fn us(ns: u64) -> f64 {
    // Nanosecond counts of latencies are far below 2^52: exact in f64.
    #[allow(clippy::cast_precision_loss)]
    let v = ns as f64 / 1000.0;
    v
}

/// Measures the floor over `samples` samples (after a warm-up of a tenth
/// as many, at least 20, which are discarded), pre-warming memory first.
pub fn measure_floor(samples: usize) -> io::Result<FloorReport> {
    if samples == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "floor: no samples",
        ));
    }
    prewarm(PREWARM_BYTES)?;
    let warm = (samples / 10).max(20);
    let uffd = uffd_round_trips(samples + warm)?;
    let tcp = tcp_round_trips(samples + warm)?;
    let (uffd, tcp) = (&uffd[warm..], &tcp[warm..]);
    let sum = histogram(uffd.iter().zip(tcp).map(|(a, b)| a + b))?;
    let hu = histogram(uffd.iter().copied())?;
    let ht = histogram(tcp.iter().copied())?;
    Ok(FloorReport {
        samples,
        p50_us: us(sum.value_at_quantile(0.5)),
        p99_us: us(sum.value_at_quantile(0.99)),
        max_us: us(sum.max()),
        uffd_p50_us: us(hu.value_at_quantile(0.5)),
        uffd_p99_us: us(hu.value_at_quantile(0.99)),
        tcp_p50_us: us(ht.value_at_quantile(0.5)),
        tcp_p99_us: us(ht.value_at_quantile(0.99)),
    })
}

/// Whether the destination's memory was touched and freed just before
/// the floor's run (`Warm`: the kernel hands the same frames back) or left
/// long enough for this VM to return freed memory to its host (`Cold`:
/// every first touch of a page costs a host fault, as for a destination
/// allocating fresh guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Warmth {
    /// Pre-touched and freed just before.
    Warm,
    /// Fresh: nothing freed in the last [`HOST_RECLAIM_WAIT`].
    Cold,
    /// As a migration's receiver does with UFFDIO_MOVE: a staging pool as
    /// large as the guest populated before timing starts (untimed, as the
    /// receiver populates before the switch), each batch read into the
    /// pool and moved into the region without a copy.
    Moved,
}

/// How long a cold measurement waits first: this VM returns freed memory
/// to its host (free page reporting) about 2 s after it is freed.
pub const HOST_RECLAIM_WAIT: Duration = Duration::from_millis(3000);

/// Longest a stream floor may take (per socket operation).
const STREAM_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The post-copy throughput floor: the guest's bytes streamed over loopback
/// TCP and installed with UFFDIO_COPY into a registered region, with the
/// migration's threads (a sender copying pages out of resident source
/// memory, a receiver installing them, a vCPU thread spinning) on this
/// host's cores.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StreamFloor {
    /// Pages streamed.
    pub pages: u64,
    /// Pages per send and per UFFDIO_COPY.
    pub batch_pages: usize,
    /// Warm or cold destination memory.
    pub warmth: Warmth,
    /// First byte sent → last page installed, ms.
    pub ms: f64,
    /// Of which inside UFFDIO_COPY (or UFFDIO_MOVE), ms.
    pub install_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Streams `pages` pages in `batch_pages`-page sends over loopback and
/// installs each batch with one UFFDIO_COPY, while a vCPU thread spins;
/// `warmth` says how the destination's memory is prepared. Bounded: every
/// socket operation times out after a minute.
pub fn measure_stream_floor(
    pages: u64,
    batch_pages: usize,
    warmth: Warmth,
) -> io::Result<StreamFloor> {
    let batch_pages = batch_pages.max(1);
    // The source's memory is resident, as a running guest's is.
    let src = GuestRegion::new(pages)?;
    for (i, w) in src.words().iter().step_by(PAGE_SIZE / 8).enumerate() {
        w.store(i as u64 + 1, Ordering::Relaxed);
    }
    let pool = match warmth {
        Warmth::Warm => {
            prewarm(src.len_bytes())?;
            None
        }
        Warmth::Cold => {
            std::thread::sleep(HOST_RECLAIM_WAIT);
            None
        }
        Warmth::Moved => {
            let pool = StagingPool::new(src.len_bytes())?;
            pool.populate(|| false)?;
            Some(pool)
        }
    };
    let dst = GuestRegion::new(pages)?;
    let features = if pool.is_some() {
        sys::UFFD_FEATURE_MOVE
    } else {
        0
    };
    let uffd = probe::open_with(features, "userfaultfd").map_err(io::Error::other)?;
    sys::register(
        &uffd,
        dst.addr(),
        dst.len_bytes() as u64,
        sys::REGISTER_MODE_MISSING,
    )?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let stop = AtomicBool::new(false);
    let batch_bytes = batch_pages * PAGE_SIZE;
    let total = dst.len_bytes();
    std::thread::scope(|scope| -> io::Result<StreamFloor> {
        let vcpu = std::thread::Builder::new()
            .name("floor-vcpu".into())
            .spawn_scoped(scope, || {
                let until = Instant::now() + STREAM_IO_TIMEOUT;
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    for _ in 0..1000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
            })?;
        let receiver = std::thread::Builder::new()
            .name("floor-recv".into())
            .spawn_scoped(scope, || -> io::Result<(Instant, Duration)> {
                let (mut s, _) = listener.accept()?;
                s.set_read_timeout(Some(STREAM_IO_TIMEOUT))?;
                let mut buf = vec![0u8; batch_bytes];
                let (mut done, mut install) = (0usize, Duration::ZERO);
                while done < total {
                    let n = batch_bytes.min(total - done);
                    let to = dst.addr() + done as u64;
                    let window = pool.as_ref().and_then(|p| p.take(n));
                    let filled = match window {
                        Some(w) => {
                            s.read_exact(w)?;
                            let t0 = Instant::now();
                            let moved = sys::move_pages(&uffd, to, w);
                            install += t0.elapsed();
                            moved
                        }
                        None => {
                            s.read_exact(&mut buf[..n])?;
                            let t0 = Instant::now();
                            let copied = sys::copy(&uffd, to, &buf[..n], 0);
                            install += t0.elapsed();
                            copied
                        }
                    };
                    match filled {
                        Fill::Done => {}
                        Fill::Partial(k) => {
                            return Err(io::Error::other(format!(
                                "floor: the install filled {k} of {n} bytes"
                            )))
                        }
                        Fill::Failed(e) => return Err(e),
                    }
                    done += n;
                }
                Ok((Instant::now(), install))
            })?;
        let send = || -> io::Result<Instant> {
            let mut c = TcpStream::connect(addr)?;
            c.set_write_timeout(Some(STREAM_IO_TIMEOUT))?;
            let mut buf = vec![0u8; batch_bytes];
            let start = Instant::now();
            let mut pfn = 0;
            while pfn < pages {
                let mut n = 0;
                for page in buf.chunks_exact_mut(PAGE_SIZE) {
                    if pfn == pages {
                        break;
                    }
                    src.read_page(pfn, page).map_err(io::Error::other)?;
                    (pfn, n) = (pfn + 1, n + 1);
                }
                c.write_all(&buf[..n * PAGE_SIZE])?;
            }
            Ok(start)
        };
        let started = send();
        let received = receiver.join();
        stop.store(true, Ordering::Relaxed);
        let _ = vcpu.join();
        let start = started?;
        let (end, install) =
            received.map_err(|_| io::Error::other("floor: receiver panicked"))??;
        // Every page arrived where it belongs (after the timing; all are
        // present now, so these loads cannot block on the region).
        let words = PAGE_SIZE / 8;
        if let Some((i, _)) = dst
            .words()
            .iter()
            .zip(src.words())
            .enumerate()
            .step_by(words)
            .find(|(_, (d, s))| d.load(Ordering::Relaxed) != s.load(Ordering::Relaxed))
        {
            return Err(io::Error::other(format!(
                "floor: page {} arrived corrupted",
                i / words
            )));
        }
        Ok(StreamFloor {
            pages,
            batch_pages,
            warmth,
            ms: ms(end.saturating_duration_since(start)),
            install_ms: ms(install),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uffd_available;

    #[test]
    fn stream_floor_installs_every_page_warm_and_cold() {
        if !uffd_available("stream_floor_installs_every_page_warm_and_cold") {
            return;
        }
        let moves = probe::open_with(sys::UFFD_FEATURE_MOVE, "UFFD_FEATURE_MOVE").is_ok();
        for warmth in [Warmth::Warm, Warmth::Cold, Warmth::Moved] {
            if warmth == Warmth::Moved && !moves {
                eprintln!("no UFFDIO_MOVE on this kernel: moved floor skipped");
                continue;
            }
            let f = measure_stream_floor(1000, 64, warmth).unwrap();
            println!("{}", serde_json::to_string(&f).unwrap());
            assert_eq!((f.pages, f.batch_pages, f.warmth), (1000, 64, warmth));
            assert!(f.ms > 0.0 && f.ms.is_finite());
            assert!(f.install_ms > 0.0 && f.install_ms <= f.ms);
        }
    }

    /// A measurement: `cargo test -p postcopy-uffd --release -- --ignored
    /// stream_floor_1g --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn stream_floor_1g() {
        if !uffd_available("stream_floor_1g") {
            return;
        }
        let pages = std::env::var("FLOOR_PAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 18);
        for batch in [64, postcopy::records::MAX_BATCH_PAGES] {
            for warmth in [Warmth::Warm, Warmth::Cold, Warmth::Warm] {
                let f = measure_stream_floor(pages, batch, warmth).unwrap();
                println!("{}", serde_json::to_string(&f).unwrap());
            }
        }
    }

    #[test]
    fn floor_is_measured_and_ordered() {
        if !uffd_available("floor_is_measured_and_ordered") {
            return;
        }
        let f = measure_floor(300).unwrap();
        println!("{}", serde_json::to_string(&f).unwrap());
        assert_eq!(f.samples, 300);
        assert!(f.p50_us > 0.0 && f.p50_us <= f.p99_us && f.p99_us <= f.max_us);
        assert!(f.uffd_p50_us > 0.0 && f.tcp_p50_us > 0.0);
        assert!(measure_floor(0).is_err());
    }

    /// A measurement: `cargo test -p postcopy --release -- --ignored
    /// floor_10k --nocapture`.
    #[test]
    #[ignore = "benchmark"]
    fn floor_10k() {
        if !uffd_available("floor_10k") {
            return;
        }
        for _ in 0..3 {
            let f = measure_floor(10_000).unwrap();
            println!("{}", serde_json::to_string(&f).unwrap());
        }
    }
}
