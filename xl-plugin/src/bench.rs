//! `xl-postcopy bench`: a matrix of local-mode migrations (sizes ×
//! workloads × strategies, plus pre-copy and hybrid baselines), each run R
//! times as separate `xl-postcopy local --json` processes, with the noise
//! shown (min/median/max) and every latency stated against a floor and
//! every total time against a plain loopback stream measured in the same
//! run — this VM's timings drift several-fold with its host's load.
//!
//! Writes `bench.json` (every run) and SVG charts under the results folder.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::Value;

/// One configuration of the matrix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    /// Guest size in pages.
    pub pages: u64,
    /// Workload name.
    pub workload: String,
    /// `postcopy:STRATEGY`, `precopy` or `hybrid:N:STRATEGY`.
    pub label: String,
    /// Extra `local` arguments.
    pub args: Vec<String>,
}

/// min / median / max of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Spread of `v` (empty → zeros).
    pub fn of(mut v: Vec<f64>) -> Spread {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
        }
    }

    fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}..{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }
}

/// One row of the result: a configuration's figures over R runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The configuration.
    pub config: Config,
    /// Successful runs.
    pub runs: usize,
    /// Failed runs (with their error text).
    pub failures: Vec<String>,
    /// Total time, ms.
    pub total_time_ms: Spread,
    /// Total time ÷ the same run's plain loopback stream of the guest bytes.
    pub total_vs_stream: Spread,
    /// Total time ÷ the same run's warm post-copy floor
    /// ([`postcopy_uffd::measure_stream_floor`], destination memory
    /// pre-touched and freed just before).
    pub total_vs_floor: Spread,
    /// Total time ÷ the same run's cold post-copy floor (fresh
    /// destination memory, every first touch a host fault).
    pub total_vs_floor_cold: Spread,
    /// Total time ÷ the same run's moved post-copy floor (a staging pool
    /// populated first, each batch received into it and installed with
    /// UFFDIO_MOVE, as the receiver does on a kernel that has it).
    pub total_vs_floor_moved: Spread,
    /// Total time ÷ the lowest of the run's warm and moved floors: the
    /// ratio the 1.5× target is judged on.
    pub total_vs_floor_best: Spread,
    /// The warm post-copy floor, ms.
    pub floor_warm_ms: Spread,
    /// The moved post-copy floor, ms (NaN without UFFDIO_MOVE).
    pub floor_moved_ms: Spread,
    /// The cold post-copy floor, ms.
    pub floor_cold_ms: Spread,
    /// The destination's post-copy phase by part, ms (`breakdown_ms` of
    /// the destination engine's report).
    pub dest_breakdown_ms: BTreeMap<String, Spread>,
    /// The source's post-copy time by part, ms.
    pub source_breakdown_ms: BTreeMap<String, Spread>,
    /// Downtime, ms.
    pub downtime_ms: Spread,
    /// Pages sent.
    pub pages_transferred: Spread,
    /// Network faults, % of guest pages.
    pub network_faults_pct: Spread,
    /// Duplicates (must be 0).
    pub pages_duplicate_max: u64,
    /// vCPU fault latency p50, µs.
    pub fault_p50_us: Spread,
    /// vCPU fault latency p99, µs.
    pub fault_p99_us: Spread,
    /// p50 ÷ floor p50 (same run).
    pub p50_vs_floor: Spread,
    /// p99 ÷ floor p99 (same run).
    pub p99_vs_floor: Spread,
    /// Workload degradation during post-copy, %.
    pub degradation_pct: Spread,
    /// All runs had integrity_ok.
    pub integrity_ok: bool,
    /// The raw reports.
    pub reports: Vec<Value>,
}

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Guest sizes in pages.
    pub sizes: Vec<u64>,
    /// Workloads.
    pub workloads: Vec<String>,
    /// Post-copy strategies.
    pub strategies: Vec<String>,
    /// Also run `--precopy` and `--postcopy-after=1`.
    pub baselines: bool,
    /// Runs per configuration.
    pub runs: usize,
    /// Results folder.
    pub out: PathBuf,
    /// Extra args to every run.
    pub extra: Vec<String>,
    /// Measure the warm and cold post-copy floors after every run.
    pub floors: bool,
}

/// The warm, cold and moved post-copy floors of `pages` pages, in ms (NaN
/// for a floor that could not be measured, e.g. without userfaultfd or
/// UFFDIO_MOVE), in the engine's largest record size. Cold waits for freed
/// memory to go back to the host first.
pub fn post_copy_floors_ms(pages: u64) -> (f64, f64, f64) {
    let one =
        |w| match postcopy_uffd::measure_stream_floor(pages, postcopy::records::MAX_BATCH_PAGES, w)
        {
            Ok(f) => f.ms,
            Err(e) => {
                log::warn!("post-copy floor ({w:?}) not measured: {e}");
                f64::NAN
            }
        };
    let warm = one(postcopy_uffd::Warmth::Warm);
    let cold = one(postcopy_uffd::Warmth::Cold);
    let moved = one(postcopy_uffd::Warmth::Moved);
    (warm, cold, moved)
}

/// The matrix of configurations.
pub fn matrix(o: &BenchOpts) -> Vec<Config> {
    let mut out = Vec::new();
    for &pages in &o.sizes {
        for w in &o.workloads {
            let mut push = |label: String, args: Vec<String>| {
                out.push(Config {
                    pages,
                    workload: w.clone(),
                    label,
                    args,
                })
            };
            for s in &o.strategies {
                push(format!("postcopy:{s}"), vec![format!("--prepage={s}")]);
            }
            if o.baselines {
                push("precopy".into(), vec!["--precopy".into()]);
                push(
                    "hybrid:1:bubble".into(),
                    vec!["--postcopy-after=1".into(), "--prepage=bubble".into()],
                );
            }
        }
    }
    out
}

/// Time to send `bytes` over one loopback TCP connection (the baseline
/// every total time is compared with), in ms.
pub fn plain_stream_ms(bytes: u64) -> std::io::Result<f64> {
    stream_ms(bytes, false)
}

/// Like [`plain_stream_ms`], through the sealed records of a link with a
/// token ([`crate::seal`]): the cost of encryption on its own.
pub fn sealed_stream_ms(bytes: u64) -> std::io::Result<f64> {
    stream_ms(bytes, true)
}

fn stream_ms(bytes: u64, sealed: bool) -> std::io::Result<f64> {
    use crate::seal::{Key, SealedReader, SealedWriter};
    let key = Key::from_bytes(crate::auth::random::<32>()?);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rkey = key.clone();
    let rx = std::thread::spawn(move || -> std::io::Result<u64> {
        let (s, _) = l.accept()?;
        let mut s: Box<dyn Read> = if sealed {
            Box::new(SealedReader::new(s, &rkey))
        } else {
            Box::new(s)
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let s = TcpStream::connect(addr)?;
    let mut s: Box<dyn Write> = if sealed {
        Box::new(SealedWriter::new(s, &key))
    } else {
        Box::new(s)
    };
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    drop(s);
    let got = rx
        .join()
        .map_err(|_| std::io::Error::other("receiver thread panicked"))??;
    if got != bytes {
        return Err(std::io::Error::other("short plain stream"));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// Encryption's cost: one row per size, plain and sealed streams of the
/// guest's bytes alternated `runs` times in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct SealRow {
    /// Bytes per stream.
    pub bytes: u64,
    /// Plain loopback TCP, MiB/s.
    pub plain_mib_s: Spread,
    /// The same through sealed records, MiB/s.
    pub sealed_mib_s: Spread,
    /// Sealed time ÷ plain time, run by run.
    pub time_ratio: Spread,
}

/// Measures [`SealRow`]s for `sizes` (pages).
pub fn seal_cost(sizes: &[u64], runs: usize) -> std::io::Result<Vec<SealRow>> {
    let mut rows = Vec::new();
    for &pages in sizes {
        let bytes = pages * 4096;
        let mib = bytes as f64 / f64::from(1u32 << 20);
        let (mut plain, mut sealed, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let p = plain_stream_ms(bytes)?;
            let s = sealed_stream_ms(bytes)?;
            plain.push(mib / (p / 1000.0));
            sealed.push(mib / (s / 1000.0));
            ratio.push(s / p);
        }
        rows.push(SealRow {
            bytes,
            plain_mib_s: Spread::of(plain),
            sealed_mib_s: Spread::of(sealed),
            time_ratio: Spread::of(ratio),
        });
    }
    Ok(rows)
}

/// The Markdown table of [`seal_cost`].
pub fn seal_table(rows: &[SealRow], runs: usize) -> String {
    let mut s = String::from(
        "| MiB | runs | plain TCP MiB/s | stream+aead MiB/s | time ×plain |
|---|---|---|---|---|
",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {runs} | {} | {} | {} |
",
            r.bytes >> 20,
            r.plain_mib_s.show(0),
            r.sealed_mib_s.show(0),
            r.time_ratio.show(2)
        ));
    }
    s.push_str("
Each cell: median [min..max]; plain and sealed streams alternate, one loopback connection each (ChaCha20-Poly1305 records of 64 KiB, one core per side).
");
    s
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return f64::NAN,
        }
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

/// Runs one configuration `runs` times.
pub fn run_config(exe: &Path, c: &Config, o: &BenchOpts) -> Row {
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    let mut ratios = Vec::new();
    let (mut floor_warm, mut floor_cold, mut floor_moved) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let out = Command::new(exe)
            .arg("local")
            .arg("--json")
            .arg("--floor")
            .arg(format!("--mem={}", c.pages * 4096))
            .arg(format!("--workload={}", c.workload))
            .args(&c.args)
            .args(&o.extra)
            .output();
        match out {
            Ok(out) if out.status.success() => match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) => {
                    // The baseline stream right after the run, same load.
                    if let Ok(ms) = plain_stream_ms(c.pages * 4096) {
                        ratios.push(num(&v, &["total_time_ms"]) / ms);
                    }
                    if o.floors {
                        let (warm, cold, moved) = post_copy_floors_ms(c.pages);
                        floor_warm.push(warm);
                        floor_cold.push(cold);
                        floor_moved.push(moved);
                    }
                    reports.push(v);
                }
                Err(e) => failures.push(format!("bad JSON: {e}")),
            },
            Ok(out) => failures.push(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let col = |p: &[&str]| Spread::of(reports.iter().map(|r| num(r, p)).collect());
    let pct = Spread::of(
        reports
            .iter()
            .map(|r| 100.0 * num(r, &["network_faults"]) / (c.pages as f64))
            .collect(),
    );
    let vs = |a: &[&str], b: &[&str]| {
        Spread::of(reports.iter().map(|r| num(r, a) / num(r, b)).collect())
    };
    let vs_floor = |floors: &[f64]| {
        Spread::of(
            reports
                .iter()
                .zip(floors)
                .map(|(r, f)| num(r, &["total_time_ms"]) / f)
                .collect(),
        )
    };
    let parts = |path: &[&str]| -> BTreeMap<String, Spread> {
        let mut keys: Vec<String> = reports
            .iter()
            .filter_map(|r| path.iter().try_fold(r, |v, p| v.get(p)))
            .filter_map(Value::as_object)
            .flat_map(|m| m.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let mut p = path.to_vec();
                p.push(&k);
                let s = col(&p);
                (k, s)
            })
            .collect()
    };
    Row {
        config: c.clone(),
        runs: reports.len(),
        failures,
        total_time_ms: col(&["total_time_ms"]),
        total_vs_stream: Spread::of(ratios),
        total_vs_floor: vs_floor(&floor_warm),
        total_vs_floor_cold: vs_floor(&floor_cold),
        total_vs_floor_moved: vs_floor(&floor_moved),
        total_vs_floor_best: vs_floor(
            &floor_warm
                .iter()
                .zip(&floor_moved)
                .map(|(w, m)| if m.is_finite() { w.min(*m) } else { *w })
                .collect::<Vec<_>>(),
        ),
        floor_warm_ms: Spread::of(floor_warm),
        floor_moved_ms: Spread::of(floor_moved),
        floor_cold_ms: Spread::of(floor_cold),
        dest_breakdown_ms: parts(&["destination", "engine", "breakdown_ms"]),
        source_breakdown_ms: parts(&["source", "breakdown_ms"]),
        downtime_ms: col(&["downtime_ms"]),
        pages_transferred: col(&["pages_transferred"]),
        network_faults_pct: pct,
        pages_duplicate_max: reports
            .iter()
            .map(|r| {
                r.get("pages_duplicate")
                    .and_then(Value::as_u64)
                    .unwrap_or(u64::MAX)
            })
            .max()
            .unwrap_or(0),
        fault_p50_us: col(&["fault_latency_us", "p50"]),
        fault_p99_us: col(&["fault_latency_us", "p99"]),
        p50_vs_floor: vs(&["fault_latency_us", "p50"], &["floor_latency_us", "p50"]),
        p99_vs_floor: vs(&["fault_latency_us", "p99"], &["floor_latency_us", "p99"]),
        degradation_pct: Spread::of(
            reports
                .iter()
                .map(|r| 100.0 * num(r, &["degradation"]))
                .collect(),
        ),
        integrity_ok: !reports.is_empty()
            && reports
                .iter()
                .all(|r| r.get("integrity_ok").and_then(Value::as_bool) == Some(true)),
        reports,
    }
}

/// Size (MiB), workload, config, runs (successful/all), with a trailing `|`.
fn config_cells(r: &Row) -> String {
    let c = &r.config;
    format!(
        "| {} | {} | {} | {}/{} |",
        c.pages / 256,
        c.workload,
        c.label,
        r.runs,
        r.runs + r.failures.len()
    )
}

/// The cells every table starts with: size, workload, config, runs, total
/// time, ×stream, ×floor warm, cold and moved, downtime (and a trailing
/// `|`).
fn lead_cells(r: &Row) -> String {
    format!(
        "{} {} | {} | {} | {} | {} | {} |",
        config_cells(r),
        r.total_time_ms.show(0),
        r.total_vs_stream.show(2),
        r.total_vs_floor.show(2),
        r.total_vs_floor_cold.show(2),
        r.total_vs_floor_moved.show(2),
        r.downtime_ms.show(2),
    )
}

/// The side-by-side table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| MiB | workload | config | runs | total ms | ×stream | ×floor warm | ×floor cold | ×floor moved | downtime ms | pages sent | net faults % | dup | fault p50 µs (×floor) | fault p99 µs (×floor) | degr. % | integrity |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!(
            "{} {} | {} | {} | {} ({}) | {} ({}) | {} | {} |\n",
            lead_cells(r),
            r.pages_transferred.show(0),
            r.network_faults_pct.show(2),
            r.pages_duplicate_max,
            r.fault_p50_us.show(0),
            r.p50_vs_floor.show(2),
            r.fault_p99_us.show(0),
            r.p99_vs_floor.show(2),
            r.degradation_pct.show(0),
            if r.integrity_ok { "ok" } else { "FAIL" },
        ));
    }
    s.push_str("\nEach cell: median [min..max] over the runs. ×stream: total time ÷ a plain loopback TCP stream of the guest's bytes measured right after each run; ×floor warm/cold: total time ÷ the post-copy floor measured right after each run (the guest's bytes streamed over loopback and installed with UFFDIO_COPY in 4 MiB batches, a vCPU thread spinning; destination memory pre-touched and freed just before = warm, fresh after a 3 s wait = cold; moved: received into a staging pool populated before timing and installed with UFFDIO_MOVE, as the receiver does); fault ×floor: vCPU fault latency ÷ the same run's fault floor (bare uffd round trip + 16 B/4 KiB loopback exchange, spinning handlers).\n");
    s.push('\n');
    s.push_str(&breakdown_table(rows));
    s
}

/// The destination's post-copy phase and the source's push by part:
/// median ms over the runs, largest parts first as in the engine's order.
pub fn breakdown_table(rows: &[Row]) -> String {
    let cell = |m: &BTreeMap<String, Spread>, keys: &[&str]| -> String {
        keys.iter()
            .filter_map(|k| m.get(*k).map(|v| format!("{k} {:.0}", v.median)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = String::from(
        "| MiB | workload | config | post-copy ms | destination by part, ms | source by part, ms |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let c = &r.config;
        let phase = Spread::of(
            r.reports
                .iter()
                .map(|v| num(v, &["destination", "engine", "postcopy_time_ms"]))
                .collect(),
        );
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} |\n",
            c.pages / 256,
            c.workload,
            c.label,
            phase.median,
            cell(
                &r.dest_breakdown_ms,
                &["wire", "decode", "install", "hash", "bookkeeping", "other"]
            ),
            cell(
                &r.source_breakdown_ms,
                &["read_guest", "encode", "send", "schedule", "yield", "idle"]
            ),
        ));
    }
    s.push_str("\nMedian ms per part over the runs, from the engines' own timers (per record or batch). Destination: wire = inside the socket reads (waiting for bytes + the kernel's copy), decode = record parsing, install = UFFDIO_MOVE (pushed pages, from the staging pool) or UFFDIO_COPY, hash = the integrity hash of installed pages (local mode's check), bookkeeping = received-map and fault bookkeeping, other = the rest of the phase (its threads between timed parts). Source: read_guest = copying pages out of guest memory, encode = zero check + record building, send = socket writes (including waiting for room), schedule = the pre-pager choosing, yield = giving way to fault replies, idle = nothing to send.\n");
    s
}

/// Downtime and pages sent per guest size and configuration (the size
/// sweep's table).
pub fn downtime_table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| guest MiB | workload | config | runs | downtime ms | total ms | pages sent |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{} {} | {} | {} |\n",
            config_cells(r),
            r.downtime_ms.show(2),
            r.total_time_ms.show(0),
            r.pages_transferred.show(0),
        ));
    }
    s
}

/// The issue-20 targets for local mode.
pub const TARGET_TOTAL_VS_FLOOR: f64 = 1.5;
/// vCPU fault latency p99 ÷ fault floor p99.
pub const TARGET_P99_VS_FLOOR: f64 = 3.0;
/// vCPU fault latency p50 ÷ fault floor p50.
pub const TARGET_P50_VS_FLOOR: f64 = 1.1;

/// `met` or `not met (median)` for a median against a bound.
fn status(v: Spread, bound: f64) -> String {
    if v.median <= 0.0 || !v.median.is_finite() {
        "not measured".into()
    } else if v.median <= bound {
        format!("met ({:.2})", v.median)
    } else {
        format!("**not met** ({:.2})", v.median)
    }
}

/// The README's per-row summary: the figures with their targets' status
/// (met or not, on the medians).
pub fn targets_table(rows: &[Row]) -> String {
    let mut s = format!(
        "| MiB | workload | config | runs | total ms | ×stream | ×floor warm | ×floor cold | ×floor moved | downtime ms | net faults % | fault p50 µs | fault p99 µs | total ≤ {TARGET_TOTAL_VS_FLOOR}× lowest floor (warm, moved) | p50 ≤ {TARGET_P50_VS_FLOOR}× fault floor | p99 ≤ {TARGET_P99_VS_FLOOR}× fault floor |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        s.push_str(&format!(
            "{} {} | {} | {} | {} | {} | {} |\n",
            lead_cells(r),
            r.network_faults_pct.show(2),
            r.fault_p50_us.show(0),
            r.fault_p99_us.show(0),
            status(r.total_vs_floor_best, TARGET_TOTAL_VS_FLOOR),
            status(r.p50_vs_floor, TARGET_P50_VS_FLOOR),
            status(r.p99_vs_floor, TARGET_P99_VS_FLOOR),
        ));
    }
    s
}

/// Draws one chart per workload and size: `metric` median with min/max
/// whiskers per configuration.
pub fn chart(
    rows: &[Row],
    metric: &str,
    pick: fn(&Row) -> Spread,
    path: &Path,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let ymax = rows
        .iter()
        .map(|r| pick(r).max)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let n = rows.len().max(1);
    let mut ch = ChartBuilder::on(&root)
        .caption(metric, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(90)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..ymax)
        .map_err(|e| e.to_string())?;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}M {} {}",
                r.config.pages / 256,
                r.config.workload,
                r.config.label
            )
        })
        .collect();
    ch.configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a small non-negative integral tick index"
                )]
                let i = i as usize;
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 9))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, r) in rows.iter().enumerate() {
        let s = pick(r);
        let x = i as f64;
        ch.draw_series(LineSeries::new(
            vec![(x, s.min), (x, s.max)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
        ch.draw_series(std::iter::once(Circle::new(
            (x, s.median),
            4,
            BLUE.filled(),
        )))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Chooses one figure of a row.
type Pick = fn(&Row) -> Spread;

/// Runs the bench; prints progress on stderr; returns the rows.
pub fn run(exe: &Path, o: &BenchOpts) -> Result<Vec<Row>, String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let configs = matrix(o);
    let mut rows = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        eprintln!(
            "bench [{}/{}] {} MiB {} {}",
            i + 1,
            configs.len(),
            c.pages / 256,
            c.workload,
            c.label
        );
        rows.push(run_config(exe, c, o));
    }
    let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
    std::fs::write(o.out.join("bench.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(o.out.join("bench.md"), table(&rows)).map_err(|e| e.to_string())?;
    std::fs::write(
        o.out.join("targets.md"),
        format!("{}\n{}", targets_table(&rows), breakdown_table(&rows)),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(o.out.join("downtime.md"), downtime_table(&rows)).map_err(|e| e.to_string())?;
    let charts: [(&str, &str, Pick); 4] = [
        ("total-time.svg", "total time (ms)", |r| r.total_time_ms),
        ("network-faults.svg", "network faults (% of pages)", |r| {
            r.network_faults_pct
        }),
        ("downtime.svg", "downtime (ms)", |r| r.downtime_ms),
        ("pages-transferred.svg", "pages transferred", |r| {
            r.pages_transferred
        }),
    ];
    for (file, title, pick) in charts {
        chart(&rows, title, pick, &o.out.join(file))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_matrix() {
        let s = Spread::of(vec![3.0, 1.0, f64::NAN, 2.0, 10.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 10.0));
        assert_eq!(Spread::of(vec![]), Spread::default());
        let o = BenchOpts {
            sizes: vec![1, 2],
            workloads: vec!["stress".into()],
            strategies: vec!["bubble".into(), "linear".into()],
            baselines: true,
            runs: 1,
            out: PathBuf::from("/nonexistent"),
            extra: vec![],
            floors: false,
        };
        let m = matrix(&o);
        assert_eq!(m.len(), 2 * (2 + 2));
        assert!(m.iter().any(|c| c.label == "precopy" && c.pages == 2));
    }

    #[test]
    fn target_status_is_judged_on_the_median() {
        let sp = |median| Spread {
            min: 0.5,
            median,
            max: 9.0,
        };
        assert_eq!(status(sp(1.5), 1.5), "met (1.50)");
        assert_eq!(status(sp(1.51), 1.5), "**not met** (1.51)");
        assert_eq!(status(Spread::default(), 1.5), "not measured");
        assert_eq!(status(sp(f64::NAN), 1.5), "not measured");
    }

    #[test]
    fn plain_stream_moves_the_bytes() {
        assert!(plain_stream_ms(8 << 20).unwrap() > 0.0);
        assert!(sealed_stream_ms(8 << 20).unwrap() > 0.0);
    }
}

/// A bare request/reply round trip between two processes over a pair of
/// pipes, the transport of `xl migrate` on one host: what a network fault
/// would cost with no pages queued in front of its reply and no guest
/// memory or hypervisor behind it. The request is a one-pfn FAULT record,
/// the reply a one-page PAGE_DATA record, both written and parsed by the
/// engine's record code.
#[derive(Debug, Clone, Serialize)]
pub struct Rtt {
    /// Round trips timed (after a warm-up).
    pub round_trips: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Fastest, µs.
    pub min_us: f64,
    /// The transport.
    pub via: String,
}

impl std::fmt::Display for Rtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bare rtt: p50 {:.0} us p99 {:.0} us min {:.0} us ({} round trips: a 1-pfn FAULT and a 1-page PAGE_DATA reply, {})",
            self.p50_us, self.p99_us, self.min_us, self.round_trips, self.via
        )
    }
}

/// Round trips [`pipe_rtt`] runs before it starts timing.
pub const RTT_WARMUP: usize = 20;

/// The guest size both ends of [`pipe_rtt`] assume (pfns are below it).
const RTT_PFNS: u64 = 1 << 20;

/// Times `n` round trips with `exe rtt --serve` as the other process
/// (its stdin and stdout are the pipes), or with `via`, a shell command
/// whose stdin and stdout lead to one (as `xl migrate`'s: e.g. `ssh host
/// xl-postcopy rtt --serve`, or `xl-postcopy tunnel connect ...` to a
/// `tunnel listen -- xl-postcopy rtt --serve`).
pub fn pipe_rtt(exe: &Path, n: usize, via: Option<&str>) -> std::io::Result<Rtt> {
    use postcopy::records::{Record, RecordReader, RecordType, RecordWriter};
    use std::process::{Command, Stdio};
    let mut cmd = match via {
        Some(c) => {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", c]);
            sh
        }
        None => {
            let mut own = Command::new(exe);
            own.args(["rtt", "--serve"]);
            own
        }
    };
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the child has no pipes"));
    };
    let mut w = RecordWriter::new(cin);
    let mut r = RecordReader::new(cout, Some(RTT_PFNS));
    let mut times = Vec::with_capacity(n);
    let mut run = || -> std::io::Result<()> {
        for i in 0..n + RTT_WARMUP {
            let t = Instant::now();
            w.pfn_list(RecordType::Fault, &[i as u64 % RTT_PFNS])
                .and_then(|()| w.flush())
                .map_err(std::io::Error::other)?;
            match r.next_record().map_err(std::io::Error::other)? {
                Record::PageData { .. } => {}
                other => {
                    return Err(std::io::Error::other(format!(
                        "unexpected {} from the rtt server",
                        other.rtype().name()
                    )))
                }
            }
            if i >= RTT_WARMUP {
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(())
    };
    let ran = run();
    drop(w);
    let waited = child.wait();
    ran?;
    waited?;
    if times.is_empty() {
        return Err(std::io::Error::other("no round trips"));
    }
    times.sort_by(f64::total_cmp);
    let at = |pct: usize| times[(times.len() - 1) * pct / 100];
    Ok(Rtt {
        round_trips: times.len(),
        p50_us: at(50),
        p99_us: at(99),
        min_us: times[0],
        via: via.map_or_else(
            || "over a pipe pair between two processes".into(),
            |c| format!("through `{c}`"),
        ),
    })
}

/// The other end of [`pipe_rtt`]: answers each FAULT on `input` with one
/// page on `output` until `input` ends.
pub fn serve_rtt(input: impl Read, output: impl Write) -> std::io::Result<()> {
    use postcopy::records::{Cause, Record, RecordReader, RecordWriter};
    let mut r = RecordReader::new(input, Some(RTT_PFNS));
    let mut w = RecordWriter::new(output);
    let page = vec![0xa5u8; postcopy::PAGE_SIZE];
    loop {
        let pfn = match r.next_record() {
            Ok(Record::Fault(p)) => p.first().copied().unwrap_or(0),
            Ok(other) => {
                return Err(std::io::Error::other(format!(
                    "unexpected {} in an rtt request",
                    other.rtype().name()
                )))
            }
            Err(postcopy::records::RecordError::Closed) => return Ok(()),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        w.page_data(Cause::Fault, &[pfn], &page)
            .and_then(|()| w.flush())
            .map_err(std::io::Error::other)?;
    }
}
