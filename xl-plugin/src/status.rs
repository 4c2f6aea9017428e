//! `xl-postcopy status`: where a post-copy migration stands, read from the
//! snapshot the engine publishes while it serves ([`postcopy::status`]):
//! on a Xen host by domain name or id (`/run/xen-postcopy/<domid>.json`,
//! written by the save and restore helpers), in local mode by the file a
//! `send` or `receive` was given with `--status-file`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postcopy::status::{Status, POSTCOPY_ACTIVE};
use thiserror::Error;

/// The status folder of a Xen host (the helpers' `XEN_POSTCOPY_STATUS_DIR`).
pub const DEFAULT_STATUS_DIR: &str = "/run/xen-postcopy";

/// Longest wait for `xl domid` (xl may block on a busy toolstack lock).
const XL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no status could be shown.
#[derive(Debug, Error)]
pub enum StatusError {
    /// No snapshot exists where it was looked for.
    #[error("no post-copy status at {path}: {why}")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// What that means.
        why: String,
    },
    /// The snapshot could not be read or parsed.
    #[error("cannot read the post-copy status {path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
    /// The switch request could not be written.
    #[error("cannot write the switch request {path}: {reason}")]
    Request {
        /// The request file.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
    /// `xl-postcopy recover` could not hand a new connection over.
    #[error("recovery through {path}: {reason}")]
    Recover {
        /// The helper's control socket.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
    /// The domain name is not known to xl.
    #[error("no domain named '{name}' on this host ({why})")]
    NoDomain {
        /// The name given.
        name: String,
        /// What xl said.
        why: String,
    },
}

/// Reads one snapshot.
pub fn read_status(path: &Path) -> Result<Status, StatusError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StatusError::Missing {
                path: path.to_path_buf(),
                why: "no post-copy migration of it has published one on this host".into(),
            }
        } else {
            StatusError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| StatusError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `xl domid NAME`, bounded by [`XL_TIMEOUT`].
fn xl_domid(name: &str) -> Result<u32, String> {
    let mut child = Command::new("xl")
        .args(["domid", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run xl: {e}"))?;
    let deadline = Instant::now() + XL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("xl domid gave no answer in {XL_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("waiting for xl: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading xl's answer: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    text.trim()
        .parse()
        .map_err(|_| format!("xl domid printed '{}'", text.trim()))
}

/// The snapshot of DOMAIN (a domid, or a name xl knows; until the switch
/// the destination's copy is `NAME--incoming`, tried too) in `dir`.
pub fn status_of_domain(domain: &str, dir: &Path) -> Result<(PathBuf, Status), StatusError> {
    let domid = domid_of(domain)?;
    let path = dir.join(format!("{domid}.json"));
    let status = read_status(&path)?;
    Ok((path, status))
}

/// `xl-postcopy switch`: asks the save helper of DOMAIN's hybrid migration
/// on this host to switch to post-copy at its next round, by creating the
/// request file it checks ([`postcopy::switch::switch_request_path`] in
/// `dir`). Returns the file.
pub fn request_switch(domain: &str, dir: &Path) -> Result<PathBuf, StatusError> {
    let domid = domid_of(domain)?;
    let path = postcopy::switch::switch_request_path(dir, domid);
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, b"switch\n"))
        .map_err(|e| StatusError::Request {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    Ok(path)
}

/// `xl-postcopy recover DOMAIN --listen|--to ADDR` on a Xen host: makes
/// one new TCP connection with the other host's `recover` (waits up to
/// `wait` for it) and hands this host's end to the helper serving
/// DOMAIN's migration, through its control socket in `dir`
/// ([`postcopy::handover`]); the engine then recovers on it. Loopback
/// addresses only: pages travel in clear (across hosts, forward a
/// loopback port through ssh). Returns the helper's answer.
pub fn recover_domain(
    domain: &str,
    dir: &Path,
    cmd: crate::local::recover::Command,
    wait: Duration,
) -> Result<String, StatusError> {
    use crate::local::recover::Command as C;
    let domid = domid_of(domain)?;
    let control = postcopy::handover::control_path(dir, domid);
    let fail = |reason: String| StatusError::Recover {
        path: control.clone(),
        reason,
    };
    let addr = match cmd {
        C::To(a) | C::Listen(a) => a,
    };
    if !addr.ip().is_loopback() {
        return Err(fail(format!(
            "{addr} is not a loopback address: guest pages would cross the network in clear; forward a loopback port through ssh (ssh -L PORT:127.0.0.1:PORT HOST)"
        )));
    }
    let deadline = Instant::now() + wait;
    // A helper answers its control socket; a dead one left the file.
    let mut started = String::new();
    if std::os::unix::net::UnixStream::connect(&control).is_err() {
        let owed = postcopy::takeover::owed_path(dir, domid);
        if !matches!(cmd, C::Listen(_)) || !owed.exists() {
            return Err(fail(format!(
                "no helper of domain {domid} takes a new connection here (no post-copy migration of it after the switch on this host, or its recovery is off)"
            )));
        }
        started = start_pager(domid, dir, &control, deadline).map_err(fail)?;
    }
    let conn = match cmd {
        C::Listen(a) => {
            let l =
                std::net::TcpListener::bind(a).map_err(|e| fail(format!("listen on {a}: {e}")))?;
            l.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
            loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(fail(format!("nobody connected to {a} within {wait:?}")));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(fail(format!("accept on {a}: {e}"))),
                }
            }
        }
        C::To(a) => loop {
            match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(fail(format!("connect to {a} within {wait:?}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        },
    };
    conn.set_nonblocking(false)
        .map_err(|e| fail(e.to_string()))?;
    let _ = conn.set_nodelay(true);
    let left = deadline.saturating_duration_since(Instant::now());
    postcopy::handover::hand_over(
        &control,
        std::os::fd::AsFd::as_fd(&conn),
        left.max(Duration::from_secs(5)),
    )
    .map(|answer| format!("{started}{answer}"))
    .map_err(|e| fail(e.to_string()))
}

/// Environment variable naming the replacement pager's binary (default:
/// `xl-postcopy-pager` beside this program, else on `PATH`).
pub const PAGER_ENV: &str = "XL_POSTCOPY_PAGER";

/// The destination's pager of `domid` is dead (its control socket does
/// not answer) but left its owed set: starts `xl-postcopy-pager` in its
/// own process group, its log in `<dir>/<domid>.pager.log`, and waits
/// (until `deadline`) for its control socket to answer. Returns what to
/// tell the admin.
fn start_pager(
    domid: u32,
    dir: &Path,
    control: &Path,
    deadline: Instant,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::var_os(PAGER_ENV)
        .map(PathBuf::from)
        .or_else(|| {
            let beside = std::env::current_exe()
                .ok()?
                .with_file_name("xl-postcopy-pager");
            beside.exists().then_some(beside)
        })
        .unwrap_or_else(|| PathBuf::from("xl-postcopy-pager"));
    let log_path = dir.join(format!("{domid}.pager.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = std::process::Command::new(&exe)
        .arg(domid.to_string())
        .arg("--dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start the replacement pager {}: {e}", exe.display()))?;
    let pid = child.id();
    let tail = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ")
    };
    loop {
        if std::os::unix::net::UnixStream::connect(control).is_ok() {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the replacement pager (pid {pid}) exited ({st}) before taking connections: {}",
                tail()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the replacement pager (pid {pid}) opened no control socket in time: {}",
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // It serves on after this command exits (reparented, not waited for).
    drop(child);
    Ok(format!(
        "no helper of domain {domid} was alive: started the replacement pager (pid {pid}, log {}); ",
        log_path.display()
    ))
}

/// DOMAIN as a domid: a number, or a name xl knows (`NAME--incoming` too).
fn domid_of(domain: &str) -> Result<u32, StatusError> {
    Ok(match domain.parse::<u32>() {
        Ok(id) => id,
        Err(_) => match xl_domid(domain) {
            Ok(id) => id,
            Err(why) => match xl_domid(&format!("{domain}--incoming")) {
                Ok(id) => id,
                Err(_) => {
                    return Err(StatusError::NoDomain {
                        name: domain.to_string(),
                        why,
                    })
                }
            },
        },
    })
}

/// Whether process `pid` still exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A one-line verdict on a snapshot's freshness: an active snapshot whose
/// publisher is gone is stale (the helper died).
pub fn staleness(s: &Status) -> Option<String> {
    (s.status == POSTCOPY_ACTIVE && s.pid != 0 && !alive(s.pid)).then(|| {
        format!(
            "stale: the publishing process {} is gone (the migration's helper died)",
            s.pid
        )
    })
}

fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    format!("{:.1} s ago", now.saturating_sub(unix_ms) as f64 / 1000.0)
}

/// The human table of a snapshot.
pub fn render(s: &Status) -> String {
    let mut who = Vec::new();
    if let Some(r) = s.role {
        who.push(format!("{r:?}").to_lowercase());
    }
    if let Some(d) = s.domid {
        who.push(format!("domid {d}"));
    }
    if let Some(n) = &s.name {
        who.push(n.clone());
    }
    who.push(format!("pid {}", s.pid));
    let r = &s.ram;
    let pct = if r.owed_pages > 0 {
        r.done_pages as f64 * 100.0 / r.owed_pages as f64
    } else {
        100.0
    };
    let eta = r.expected_remaining_ms.map_or("unknown".to_string(), |ms| {
        format!("{:.1} s", ms as f64 / 1000.0)
    });
    let l = &s.fault_latency_us;
    let mut rows = vec![
        (
            "status",
            format!(
                "{} ({}; updated {})",
                s.status,
                who.join(", "),
                ago(s.updated_unix_ms)
            ),
        ),
        ("strategy", s.strategy.clone()),
        (
            "post-copy time",
            format!("{:.1} s", s.postcopy_time_ms as f64 / 1000.0),
        ),
        ("downtime", format!("{:.1} ms", s.downtime_ms)),
        (
            "owed pages",
            format!(
                "{} done of {} ({pct:.0}%), {} remaining",
                r.done_pages, r.owed_pages, r.remaining_pages
            ),
        ),
        (
            "pages transferred",
            format!(
                "{} (pushed {}, faulted {}, zero {}, pre-copy {}, resent {})",
                r.transferred_pages,
                r.pushed_pages,
                r.faulted_pages,
                r.zero_pages,
                r.precopy_pages,
                r.resent_pages
            ),
        ),
        (
            "bandwidth",
            format!("{:.1} Mbit/s; expected remaining {eta}", r.mbps),
        ),
        (
            "network faults",
            format!(
                "{} ({} met by the push); latency p50 {} us, p99 {} us, max {} us",
                s.network_faults, s.faults_in_flight, l.p50, l.p99, l.max
            ),
        ),
        (
            "blocktime",
            if s.postcopy_vcpu_blocktime_ms.is_empty() {
                format!("{} ms", s.postcopy_blocktime_ms)
            } else {
                let per: Vec<String> = s
                    .postcopy_vcpu_blocktime_ms
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.0} ms"))
                    .collect();
                format!("{} ms ({})", s.postcopy_blocktime_ms, per.join(", "))
            },
        ),
        ("outages", s.outages.to_string()),
    ];
    if let Some(e) = &s.error {
        rows.push(("error", e.clone()));
    }
    if let Some(st) = staleness(s) {
        rows.push(("warning", st));
    }
    rows.iter().map(|(k, v)| format!("{k:<18} {v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postcopy::status::{RamStatus, COMPLETED};

    /// `recover --listen` with no helper alive: refused without the owed
    /// set; with it, the replacement pager is started, and one that dies
    /// at once is reported with its log. `--to` never starts one.
    #[test]
    fn a_dead_helper_gets_a_replacement_only_on_the_listening_side() {
        use crate::local::recover::Command as C;
        let dir = std::env::temp_dir().join(format!("xlpc-pager-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = "127.0.0.1:9".parse().unwrap();
        let wait = Duration::from_secs(5);
        let e = recover_domain("7", &dir, C::Listen(at), wait).unwrap_err();
        assert!(e.to_string().contains("no helper of domain 7"), "{e}");
        std::fs::write(postcopy::takeover::owed_path(&dir, 7), b"x").unwrap();
        let e = recover_domain("7", &dir, C::To(at), wait).unwrap_err();
        assert!(e.to_string().contains("no helper of domain 7"), "{e}");
        std::env::set_var(PAGER_ENV, "/bin/false");
        let e = recover_domain("7", &dir, C::Listen(at), wait).unwrap_err();
        std::env::remove_var(PAGER_ENV);
        assert!(
            e.to_string().contains("the replacement pager") && e.to_string().contains("exited"),
            "{e}"
        );
        assert!(dir.join("7.pager.log").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_says_so() {
        let e = read_status(Path::new("/nonexistent/xen-postcopy/9.json")).unwrap_err();
        assert!(matches!(e, StatusError::Missing { .. }), "{e}");
    }

    #[test]
    fn a_switch_request_is_the_file_the_save_helper_checks() {
        let dir = std::env::temp_dir().join(format!("xl-postcopy-switch-{}", std::process::id()));
        let path = request_switch("7", &dir).expect("request");
        assert_eq!(path, postcopy::switch::switch_request_path(&dir, 7));
        assert!(path.exists());
        let _ = std::fs::remove_dir_all(&dir);
        let e = request_switch("7", Path::new("/proc/xen-postcopy")).unwrap_err();
        assert!(matches!(e, StatusError::Request { .. }), "{e}");
    }

    #[test]
    fn an_active_snapshot_of_a_dead_process_is_stale() {
        let mut s = Status {
            status: POSTCOPY_ACTIVE.into(),
            pid: std::process::id(),
            ..Status::default()
        };
        assert!(staleness(&s).is_none());
        s.pid = u32::MAX - 1;
        assert!(staleness(&s).unwrap().contains("gone"));
        s.status = COMPLETED.into();
        assert!(staleness(&s).is_none());
    }

    #[test]
    fn the_table_names_every_figure() {
        let s = Status {
            status: POSTCOPY_ACTIVE.into(),
            pid: std::process::id(),
            domid: Some(3),
            ram: RamStatus {
                owed_pages: 200,
                done_pages: 50,
                remaining_pages: 150,
                ..RamStatus::default()
            },
            ..Status::default()
        };
        let t = render(&s);
        for k in [
            "status",
            "owed pages",
            "50 done of 200 (25%)",
            "domid 3",
            "blocktime",
        ] {
            assert!(t.contains(k), "{k} missing in\n{t}");
        }
    }
}
