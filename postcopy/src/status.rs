//! Where a running migration stands, for the admin who asks
//! (`xl-postcopy status`): a [`Status`] snapshot with stable keys modelled
//! on QEMU's `query-migrate`, published by the engine while it serves
//! ([`publish_while`]) and once more when it ends.
//!
//! The engine owns what is measured (its [`Metrics`] and the owed-page
//! gauges); the adapter says where snapshots go ([`StatusSink`]; a
//! [`StatusFile`] for the Xen helpers and local mode) and how the
//! migration is named ([`StatusConfig`]).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::metrics::{LatencySummary, Metrics};

/// Default period between two snapshots.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// `status` while the engine serves pages after the switch.
pub const POSTCOPY_ACTIVE: &str = "postcopy-active";
/// `status` once every owed page is at the destination.
pub const COMPLETED: &str = "completed";
/// `status` of a migration that ended with an error.
pub const FAILED: &str = "failed";

/// Where snapshots go.
pub trait StatusSink: Send + Sync {
    /// Publishes one snapshot (replacing the previous one).
    fn publish(&self, status: &Status) -> io::Result<()>;
}

/// A JSON file replaced atomically (written beside, then renamed), so a
/// reader never sees half a snapshot.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
}

impl StatusFile {
    /// Snapshots go to `path`; its folder is created when missing.
    pub fn new(path: impl Into<PathBuf>) -> StatusFile {
        StatusFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StatusSink for StatusFile {
    fn publish(&self, status: &Status) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let body = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        drop(f);
        fs::rename(&tmp, &self.path)
    }
}

/// Which side of the migration publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The host the guest leaves.
    Source,
    /// The host the guest runs on after the switch.
    Destination,
}

/// What the adapter tells the engine about publishing.
#[derive(Clone)]
pub struct StatusConfig {
    /// Where snapshots go.
    pub sink: Arc<dyn StatusSink>,
    /// The guest's domain id on this host (Xen), if any.
    pub domid: Option<u32>,
    /// A name for the migration (the guest's, or local mode's region).
    pub name: Option<String>,
    /// Period between snapshots.
    pub interval: Duration,
}

impl std::fmt::Debug for StatusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusConfig")
            .field("domid", &self.domid)
            .field("name", &self.name)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Page counts and bandwidth (QEMU's `ram` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RamStatus {
    /// Pages owed at the switch.
    pub owed_pages: u64,
    /// Owed pages already at the destination (destination) or sent
    /// (source).
    pub done_pages: u64,
    /// `owed_pages - done_pages`.
    pub remaining_pages: u64,
    /// Every page sent or received so far, by any cause.
    pub transferred_pages: u64,
    /// Pages sent by the pre-pager after the switch.
    pub pushed_pages: u64,
    /// Pages sent as fault replies.
    pub faulted_pages: u64,
    /// Pages sent as ZERO records.
    pub zero_pages: u64,
    /// Pages sent before the switch.
    pub precopy_pages: u64,
    /// Pages sent again after a reconnect.
    pub resent_pages: u64,
    /// Bytes written to the peer.
    pub bytes_sent: u64,
    /// Bytes read from the peer.
    pub bytes_received: u64,
    /// Page data moved over the last period (pages with data, not zero
    /// pages, ×4 KiB), in Mbit/s.
    pub mbps: f64,
    /// Remaining pages at the current page rate, in ms (`None` before a
    /// rate is known).
    pub expected_remaining_ms: Option<u64>,
}

/// One snapshot of a migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`POSTCOPY_ACTIVE`], [`COMPLETED`] or [`FAILED`].
    pub status: String,
    /// Which side published this.
    pub role: Option<Role>,
    /// The publishing process (a reader tells a stale file by it).
    pub pid: u32,
    /// The guest's domain id on this host, if any.
    pub domid: Option<u32>,
    /// The migration's name, if any.
    pub name: Option<String>,
    /// The pre-paging strategy.
    pub strategy: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When this snapshot was taken (ms since the Unix epoch).
    pub updated_unix_ms: u64,
    /// Time since serving began (the switch), in ms.
    pub postcopy_time_ms: u64,
    /// The guest's paused time, once known (0 before).
    pub downtime_ms: f64,
    /// Pages and bandwidth.
    pub ram: RamStatus,
    /// Guest accesses that needed the network (destination) / fault
    /// requests served (source).
    pub network_faults: u64,
    /// Faults whose page was already on its way.
    pub faults_in_flight: u64,
    /// Fault service latency so far.
    pub fault_latency_us: LatencySummary,
    /// Time the guest spent waiting on network faults, summed over faults
    /// (QEMU's `postcopy-blocktime`; destination only, 0 on the source).
    pub postcopy_blocktime_ms: u64,
    /// The same per origin (`vcpu0`, ..., `foreign`: QEMU's
    /// `postcopy-vcpu-blocktime`), in ms.
    #[serde(default)]
    pub postcopy_vcpu_blocktime_ms: std::collections::BTreeMap<String, f64>,
    /// Link outages survived.
    pub outages: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Takes snapshots of one serving phase.
struct Sampler<'a> {
    cfg: &'a StatusConfig,
    role: Role,
    strategy: String,
    metrics: &'a Metrics,
    started: Instant,
    last: Mutex<(Instant, u64, u64)>,
}

impl Sampler<'_> {
    fn snapshot(&self, status: &str, error: Option<String>) -> Status {
        let r = self.metrics.snapshot();
        let (owed, done) = self.metrics.owed_progress();
        let now = Instant::now();
        // Page data, from the live page counters (the byte counters are
        // settled only at the end).
        let bytes = (r.pages_pushed + r.pages_faulted + r.pages_precopy + r.pages_resent)
            * crate::PAGE_SIZE as u64;
        let (mbps, rate) = match self.last.lock() {
            Ok(mut last) => {
                let (at, b0, d0) = *last;
                let dt = now.duration_since(at).as_secs_f64();
                *last = (now, bytes, done);
                if dt > 0.0 {
                    let mbps = (bytes.saturating_sub(b0)) as f64 * 8.0 / dt / 1e6;
                    (mbps, done.saturating_sub(d0) as f64 / dt)
                } else {
                    (0.0, 0.0)
                }
            }
            Err(_) => (0.0, 0.0),
        };
        let remaining = owed.saturating_sub(done);
        Status {
            status: status.to_string(),
            role: Some(self.role),
            pid: std::process::id(),
            domid: self.cfg.domid,
            name: self.cfg.name.clone(),
            strategy: self.strategy.clone(),
            error,
            updated_unix_ms: unix_ms(),
            postcopy_time_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            downtime_ms: r.downtime_ms,
            ram: RamStatus {
                owed_pages: owed,
                done_pages: done,
                remaining_pages: remaining,
                transferred_pages: r.pages_transferred,
                pushed_pages: r.pages_pushed,
                faulted_pages: r.pages_faulted,
                zero_pages: r.pages_zero,
                precopy_pages: r.pages_precopy,
                resent_pages: r.pages_resent,
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                mbps,
                expected_remaining_ms: if remaining == 0 {
                    Some(0)
                } else {
                    Duration::try_from_secs_f64(remaining as f64 / rate)
                        .ok()
                        .and_then(|d| u64::try_from(d.as_millis()).ok())
                },
            },
            network_faults: r.network_faults,
            faults_in_flight: r.faults_in_flight,
            fault_latency_us: r.fault_latency_us,
            postcopy_blocktime_ms: self.metrics.blocktime_ms(),
            postcopy_vcpu_blocktime_ms: r.blocktime_ms.clone(),
            outages: r.outages,
        }
    }

    fn publish(&self, s: &Status) {
        if let Err(e) = self.cfg.sink.publish(s) {
            // Status is for the admin; the migration goes on without it.
            warn!("could not publish the migration status: {e}");
        }
    }
}

/// Runs `serve` (one side's serving phase) while a thread publishes a
/// snapshot every `cfg.interval`, then publishes the outcome
/// ([`COMPLETED`] or [`FAILED`] with the error). Without `cfg`, just runs
/// `serve`.
pub fn publish_while<T>(
    cfg: Option<&StatusConfig>,
    role: Role,
    strategy: &str,
    metrics: &Metrics,
    serve: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let Some(cfg) = cfg else {
        return serve();
    };
    let sampler = Sampler {
        cfg,
        role,
        strategy: strategy.to_string(),
        metrics,
        started: Instant::now(),
        last: Mutex::new((Instant::now(), 0, 0)),
    };
    let stop = (Mutex::new(false), Condvar::new());
    let result = std::thread::scope(|scope| {
        let publisher = std::thread::Builder::new()
            .name("pc-status".into())
            .spawn_scoped(scope, || {
                let (m, cv) = &stop;
                loop {
                    // Written without the lock: the end of serving never
                    // waits for a file write.
                    sampler.publish(&sampler.snapshot(POSTCOPY_ACTIVE, None));
                    let stopped = m.lock().unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        break;
                    }
                    let (stopped, _) = cv
                        .wait_timeout(stopped, cfg.interval)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stopped {
                        break;
                    }
                }
            });
        if let Err(e) = publisher {
            // Status is for the admin; the migration goes on without it.
            warn!("no status thread ({e}); only the outcome will be published");
        }
        let r = serve();
        let (m, cv) = &stop;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        r
    });
    let last = match &result {
        Ok(_) => sampler.snapshot(COMPLETED, None),
        Err(e) => sampler.snapshot(FAILED, Some(e.to_string())),
    };
    sampler.publish(&last);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Status>>);

    impl StatusSink for Recorder {
        fn publish(&self, status: &Status) -> io::Result<()> {
            self.0.lock().unwrap().push(status.clone());
            Ok(())
        }
    }

    fn cfg(sink: Arc<dyn StatusSink>) -> StatusConfig {
        StatusConfig {
            sink,
            domid: Some(7),
            name: Some("guest".into()),
            interval: Duration::from_millis(5),
        }
    }

    #[test]
    fn snapshots_follow_the_counters_and_end_with_the_outcome() {
        let rec = Arc::new(Recorder::default());
        let metrics = Metrics::new();
        metrics.set_owed_progress(100, 0);
        let r = publish_while(
            Some(&cfg(rec.clone())),
            Role::Destination,
            "bubble",
            &metrics,
            || {
                std::thread::sleep(Duration::from_millis(30));
                Metrics::add(&metrics.pages_pushed, 60);
                metrics.set_owed_progress(100, 60);
                metrics.record_fault_latency(Duration::from_millis(3));
                std::thread::sleep(Duration::from_millis(30));
                metrics.set_owed_progress(100, 100);
                Ok(42)
            },
        );
        assert_eq!(r.unwrap(), 42);
        let seen = rec.0.lock().unwrap();
        assert!(seen.len() >= 3, "{} snapshots", seen.len());
        assert!(seen[..seen.len() - 1]
            .iter()
            .all(|s| s.status == POSTCOPY_ACTIVE));
        assert!(seen.iter().any(|s| s.ram.done_pages == 60));
        let last = seen.last().unwrap();
        assert_eq!(last.status, COMPLETED);
        assert_eq!(last.ram.remaining_pages, 0);
        assert_eq!(last.ram.pushed_pages, 60);
        assert_eq!(last.domid, Some(7));
        assert_eq!(last.role, Some(Role::Destination));
        assert_eq!(last.postcopy_blocktime_ms, 3);
        assert_eq!(last.pid, std::process::id());
    }

    #[test]
    fn a_failure_is_published_with_its_reason() {
        let rec = Arc::new(Recorder::default());
        let metrics = Metrics::new();
        let r: Result<(), Error> = publish_while(
            Some(&cfg(rec.clone())),
            Role::Source,
            "bubble",
            &metrics,
            || Err(Error::Aborted),
        );
        assert!(r.is_err());
        let last = rec.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.status, FAILED);
        assert!(last.error.is_some());
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("pc-status-{}", std::process::id()));
        let f = StatusFile::new(dir.join("sub").join("s.json"));
        let s = Status {
            status: COMPLETED.into(),
            ..Status::default()
        };
        f.publish(&s).unwrap();
        let back: Status = serde_json::from_slice(&fs::read(f.path()).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(!dir.join("sub").join("s.json.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
