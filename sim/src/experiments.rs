//! The named experiments behind `xl-postcopy simulate --experiment NAME`.
//!
//! Each experiment runs a sweep of simulated migrations, returns its
//! tables (the [`Display`](std::fmt::Display) of an [`ExperimentResult`]),
//! every run's full report (the JSON form), and findings computed from the
//! numbers; with an output directory it also writes `NAME.json` and SVG
//! charts shaped like the paper's figures.
//!
//! | name | what |
//! |---|---|
//! | `paper-stress` | VEE'09 §5 stress test: 2 GiB guest, diabolical writer over 8–512 MiB, GigE; pre-copy (Xen 4.17 defaults, with and without free-page elimination), demand-only, push (linear), bubble, bubble + free-page elimination |
//! | `paper-pivots` | OSR'09 pivot study: quicksort with 1–128 processes; push-only, forward bubble, bubble, multi-pivot K = 1…16 |
//! | `scale` | guests of 1–256 GiB over 1, 10 and 25 Gb/s links, pre-copy vs post-copy (bubble) |
//! | `auto-switch` | `--postcopy-after=auto` vs fixed N = 1, 3, 5 (bubble) on stress writers (pre-copy cannot converge) and on idle and slowly writing guests (it converges) |
//! | `speed` | the simulator's own cost per guest size at 10 Gb/s (linear growth) |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use postcopy::prepage::StrategySpec;
use postcopy::source::Mode;
use postcopy::switch::SwitchRule;
use serde::Serialize;

use crate::net::NetModel;
use crate::plot::{self, Chart, Series};
use crate::sim::{simulate_on, Durations, HostSched, SimConfig, SimError, SimReport};
use crate::trace::TraceError;
use crate::workload::{self, Layout, Workload};

/// A named experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExperimentInfo {
    /// Its `--experiment` name.
    pub name: &'static str,
    /// One line on what it does.
    pub about: &'static str,
}

/// Every experiment, in the order of the paper.
pub const EXPERIMENTS: &[ExperimentInfo] = &[
    ExperimentInfo {
        name: "paper-stress",
        about: "VEE'09 stress test: 2 GiB guest, writer over 8-512 MiB, GigE; pre-copy vs demand, push, bubble, bubble+DSB",
    },
    ExperimentInfo {
        name: "paper-pivots",
        about: "OSR'09 pivot study: quicksort with 1-128 processes; push-only, forward, bubble, multi-pivot K=1..16",
    },
    ExperimentInfo {
        name: "paper-apps",
        about: "VEE'09 application results re-cast as access patterns (zipf, random, sequential, quicksort): faults pre-paging avoids, pages and time vs pre-copy",
    },
    ExperimentInfo {
        name: "sensitivity",
        about: "why fault counts differ from the paper: push batch size vs network faults and vCPU blocked time (stress test, 512 MiB)",
    },
    ExperimentInfo {
        name: "scale",
        about: "guests of 1-256 GiB over 1, 10 and 25 Gb/s: pre-copy (Xen 4.17) vs post-copy bubble",
    },
    ExperimentInfo {
        name: "auto-switch",
        about: "hybrid --postcopy-after=auto vs fixed N=1,3,5 rounds on stress writers and idle/slow guests (GigE, bubble)",
    },
    ExperimentInfo {
        name: "calibrated",
        about: "the paper's headline fault and time figures again between hosts as busy as the ones `xl-postcopy calibrate` fitted: faults that wait the measured excess over the floor, a preempted vCPU, a push that pauses",
    },
    ExperimentInfo {
        name: "speed",
        about: "the simulator's cost per guest size at 10 Gb/s (it must grow linearly)",
    },
];

/// Settings shared by all experiments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentOptions {
    /// Where to write `NAME.json` and the SVG charts (created if missing);
    /// `None` writes nothing.
    pub out_dir: Option<PathBuf>,
    /// A small sweep (small guests, fewer points) for tests and smoke runs.
    pub quick: bool,
    /// Seed of the workload generators.
    pub seed: u64,
}

impl Default for ExperimentOptions {
    fn default() -> Self {
        ExperimentOptions {
            out_dir: None,
            quick: false,
            seed: 2009,
        }
    }
}

/// Why an experiment failed.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// No such experiment.
    #[error("unknown experiment '{0}': expected one of {list}", list = experiment_names().join(", "))]
    Unknown(String),
    /// A workload could not be built.
    #[error("workload: {0}")]
    Workload(#[from] TraceError),
    /// A simulation failed.
    #[error("simulation of {what}: {source}")]
    Sim {
        /// Which run.
        what: String,
        /// Why.
        #[source]
        source: SimError,
    },
    /// Writing results failed.
    #[error("writing {path}: {message}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// The names of [`EXPERIMENTS`].
pub fn experiment_names() -> Vec<&'static str> {
    EXPERIMENTS.iter().map(|e| e.name).collect()
}

/// A table of results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Table {
    /// Caption.
    pub title: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

impl fmt::Display for Table {
    /// A Markdown table with aligned columns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut width: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                if i < width.len() {
                    width[i] = width[i].max(c.chars().count());
                }
            }
        }
        writeln!(f, "{}", self.title)?;
        writeln!(f)?;
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            write!(f, "|")?;
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                if i == 0 {
                    write!(f, " {c:<w$} |")?;
                } else {
                    write!(f, " {c:>w$} |")?;
                }
            }
            writeln!(f)
        };
        line(f, &self.columns)?;
        write!(f, "|")?;
        for (i, w) in width.iter().enumerate() {
            if i == 0 {
                write!(f, "{}|", "-".repeat(w + 2))?;
            } else {
                write!(f, "{}:|", "-".repeat(w + 1))?;
            }
        }
        writeln!(f)?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

/// One simulated migration of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The line it belongs to (method, strategy...).
    pub series: String,
    /// The swept parameters (e.g. `ws_mib`, `guest_gib`, `link_gbps`).
    pub params: BTreeMap<String, f64>,
    /// What the simulator measured.
    pub report: SimReport,
}

/// What an experiment produced.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentResult {
    /// Experiment name.
    pub name: String,
    /// What it does.
    pub about: String,
    /// The model settings used, in words.
    pub setup: Vec<String>,
    /// Result tables.
    pub tables: Vec<Table>,
    /// Findings computed from the numbers.
    pub findings: Vec<String>,
    /// Every run.
    pub runs: Vec<Run>,
    /// Files written (JSON, SVG).
    pub files: Vec<PathBuf>,
}

impl ExperimentResult {
    /// The whole result as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The runs of `series`, in sweep order.
    pub fn series(&self, series: &str) -> impl Iterator<Item = &Run> + '_ {
        let s = series.to_string();
        self.runs.iter().filter(move |r| r.series == s)
    }
}

impl fmt::Display for ExperimentResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {}: {}", self.name, self.about)?;
        writeln!(f)?;
        for s in &self.setup {
            writeln!(f, "- {s}")?;
        }
        for t in &self.tables {
            writeln!(f)?;
            write!(f, "{t}")?;
        }
        if !self.findings.is_empty() {
            writeln!(f)?;
            writeln!(f, "Findings:")?;
            for s in &self.findings {
                writeln!(f, "- {s}")?;
            }
        }
        if !self.files.is_empty() {
            writeln!(f)?;
            for p in &self.files {
                writeln!(f, "wrote {}", p.display())?;
            }
        }
        Ok(())
    }
}

/// Runs the experiment `name`.
pub fn run_experiment(
    name: &str,
    opts: &ExperimentOptions,
) -> Result<ExperimentResult, ExperimentError> {
    let info = EXPERIMENTS
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ExperimentError::Unknown(name.chars().take(64).collect()))?;
    let mut result = ExperimentResult {
        name: info.name.into(),
        about: info.about.into(),
        setup: Vec::new(),
        tables: Vec::new(),
        findings: Vec::new(),
        runs: Vec::new(),
        files: Vec::new(),
    };
    let charts = match info.name {
        "paper-stress" => paper_stress(opts, &mut result)?,
        "paper-pivots" => paper_pivots(opts, &mut result)?,
        "paper-apps" => paper_apps(opts, &mut result)?,
        "sensitivity" => sensitivity(opts, &mut result)?,
        "scale" => scale(opts, &mut result)?,
        "auto-switch" => auto_switch(opts, &mut result)?,
        "calibrated" => calibrated(opts, &mut result)?,
        _ => speed(opts, &mut result)?,
    };
    if let Some(dir) = &opts.out_dir {
        let out = |path: &Path, e: String| ExperimentError::Output {
            path: path.display().to_string(),
            message: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| out(dir, e.to_string()))?;
        for (file, chart) in charts {
            let path = dir.join(format!("{}-{file}.svg", info.name));
            plot::draw(&chart, &path).map_err(|e| out(&path, e))?;
            result.files.push(path);
        }
        let path = dir.join(format!("{}.json", info.name));
        result.files.push(path.clone());
        std::fs::write(&path, result.to_json()).map_err(|e| out(&path, e.to_string()))?;
    }
    Ok(result)
}

fn run(w: &Workload, cfg: &SimConfig, what: &str) -> Result<SimReport, ExperimentError> {
    run_on(w, cfg, &HostSched::default(), what)
}

fn run_on(
    w: &Workload,
    cfg: &SimConfig,
    host: &HostSched,
    what: &str,
) -> Result<SimReport, ExperimentError> {
    let r = simulate_on(w, cfg, host).map_err(|source| ExperimentError::Sim {
        what: format!("{what} on {}", w.name),
        source,
    })?;
    log::info!(
        "{what} / {}: total {:.1} ms, faults {}, {:.0} ms wall",
        w.name,
        r.engine.total_time_ms,
        r.engine.network_faults,
        r.wall_ms
    );
    Ok(r)
}

fn params(kv: &[(&str, f64)]) -> BTreeMap<String, f64> {
    kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A sweep laid out as a table: one row per x, one column per series.
fn grid(
    result: &ExperimentResult,
    title: &str,
    x_name: &str,
    x_key: &str,
    series: &[String],
    cell: impl Fn(&SimReport) -> String,
) -> Table {
    let mut xs: Vec<f64> = Vec::new();
    for r in &result.runs {
        let x = r.params.get(x_key).copied().unwrap_or(f64::NAN);
        if !xs.contains(&x) {
            xs.push(x);
        }
    }
    let mut columns = vec![x_name.to_string()];
    columns.extend(series.iter().cloned());
    let rows = xs
        .iter()
        .map(|&x| {
            let mut row = vec![fmt_num(x)];
            for s in series {
                row.push(
                    result
                        .runs
                        .iter()
                        .find(|r| &r.series == s && r.params.get(x_key) == Some(&x))
                        .map(|r| cell(&r.report))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            row
        })
        .collect();
    Table {
        title: title.into(),
        columns,
        rows,
    }
}

fn chart(
    result: &ExperimentResult,
    title: &str,
    x: (&str, &str),
    y_label: &str,
    log_y: bool,
    series: &[String],
    value: impl Fn(&SimReport) -> f64,
) -> Chart {
    Chart {
        title: title.into(),
        x_label: x.1.into(),
        y_label: y_label.into(),
        log_x: true,
        log_y,
        series: series
            .iter()
            .map(|s| Series {
                label: s.clone(),
                points: result
                    .series(s)
                    .map(|r| (r.params.get(x.0).copied().unwrap_or(0.0), value(&r.report)))
                    .collect(),
            })
            .collect(),
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

fn secs(r: &SimReport) -> String {
    format!("{:.2}", r.engine.total_time_ms / 1e3)
}

fn faults_cell(r: &SimReport) -> String {
    format!(
        "{} ({:.2}%)",
        r.engine.network_faults,
        r.network_fault_share * 100.0
    )
}

fn net_words(net: &NetModel) -> String {
    format!(
        "link {} Gb/s at {:.1}% efficiency, RTT {} µs, fault floor {:.0} µs (detect {} µs, serve {} µs, install {} µs + {} µs/batch), switch {} ms",
        net.bandwidth_bps / 1e9,
        net.efficiency * 100.0,
        net.rtt_ns / 1000,
        net.min_fault_ns() as f64 / 1e3,
        net.fault_detect_ns / 1000,
        net.fault_service_ns / 1000,
        net.install_page_ns / 1000,
        net.install_batch_ns / 1000,
        net.switch_ns / 1_000_000
    )
}

/// One line of the stress-test figures.
struct Method {
    label: &'static str,
    mode: Mode,
    strategy: StrategySpec,
    fpe: bool,
}

const STRESS_METHODS: [Method; 7] = [
    Method {
        label: "pre-copy",
        mode: Mode::XEN_PRECOPY,
        strategy: StrategySpec::None,
        fpe: false,
    },
    Method {
        label: "pre-copy+DSB",
        mode: Mode::XEN_PRECOPY,
        strategy: StrategySpec::None,
        fpe: true,
    },
    Method {
        label: "demand-only",
        mode: Mode::Postcopy,
        strategy: StrategySpec::None,
        fpe: false,
    },
    Method {
        label: "push",
        mode: Mode::Postcopy,
        strategy: StrategySpec::Linear,
        fpe: false,
    },
    Method {
        label: "bubble",
        mode: Mode::Postcopy,
        strategy: StrategySpec::Bubble,
        fpe: false,
    },
    Method {
        label: "bubble+DSB",
        mode: Mode::Postcopy,
        strategy: StrategySpec::Bubble,
        fpe: true,
    },
    Method {
        label: "hybrid+bubble",
        mode: Mode::Hybrid { rounds: 1 },
        strategy: StrategySpec::Bubble,
        fpe: false,
    },
];

type Charts = Vec<(&'static str, Chart)>;

fn paper_stress(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let (guest_mib, base_mib, sizes): (u64, u64, &[u64]) = if opts.quick {
        (512, 48, &[8, 32, 128])
    } else {
        (2048, 192, &[8, 16, 32, 64, 128, 256, 512])
    };
    let base = SimConfig::default();
    result.setup = vec![
        format!("guest {guest_mib} MiB, {base_mib} MiB in use besides the working set (kernel, daemons, page cache), free pages hold stale data"),
        format!("workload: the writer dirties its working set page by page in a loop, {} µs a page", workload::DEFAULT_NS_PER_ACCESS / 1000),
        net_words(&base.net),
        format!("push batches of {} pages; pre-copy = Xen 4.17 defaults (5 rounds, stop below 50 dirty pages); DSB = free-page elimination; hybrid = one pre-copy round, then post-copy", base.batch_pages),
    ];
    for &ws in sizes {
        let layout = Layout {
            guest_mib,
            ws_mib: ws,
            base_mib,
        };
        let w = workload::stress(layout, opts.seed)?;
        for m in &STRESS_METHODS {
            let cfg = SimConfig {
                mode: m.mode,
                strategy: m.strategy,
                free_page_elimination: m.fpe,
                ..base
            };
            let report = run(&w, &cfg, m.label)?;
            result.runs.push(Run {
                series: m.label.into(),
                params: params(&[("ws_mib", ws as f64)]),
                report,
            });
        }
    }
    let labels: Vec<String> = STRESS_METHODS.iter().map(|m| m.label.to_string()).collect();
    let post: Vec<String> = labels[2..].to_vec();
    let x = ("ws_mib", "working set (MiB)");
    let ws = "WS MiB";
    result.tables = vec![
        grid(result, "Total migration time (s)", ws, x.0, &labels, secs),
        grid(result, "Downtime (ms)", ws, x.0, &labels, |r| {
            format!("{:.0}", r.engine.downtime_ms)
        }),
        grid(result, "Pages transferred", ws, x.0, &labels, |r| {
            r.engine.pages_transferred.to_string()
        }),
        grid(
            result,
            "Network faults (share of pages transferred)",
            ws,
            x.0,
            &post,
            faults_cell,
        ),
        grid(
            result,
            "vCPU time blocked on faults after resume (s)",
            ws,
            x.0,
            &post,
            |r| format!("{:.2}", r.vcpu_blocked_ms / 1e3),
        ),
    ];
    result.findings = stress_findings(result, sizes);
    Ok(vec![
        (
            "total-time",
            chart(
                result,
                "Total time: stress test",
                x,
                "seconds",
                false,
                &labels,
                |r| r.engine.total_time_ms / 1e3,
            ),
        ),
        (
            "downtime",
            chart(
                result,
                "Downtime: stress test",
                x,
                "milliseconds",
                true,
                &labels,
                |r| r.engine.downtime_ms,
            ),
        ),
        (
            "pages",
            chart(
                result,
                "Pages transferred: stress test",
                x,
                "pages",
                false,
                &labels,
                |r| r.engine.pages_transferred as f64,
            ),
        ),
        (
            "faults",
            chart(
                result,
                "Network faults: stress test",
                x,
                "faults",
                true,
                &post,
                |r| r.engine.network_faults as f64,
            ),
        ),
    ])
}

fn stress_findings(result: &ExperimentResult, sizes: &[u64]) -> Vec<String> {
    let get = |s: &str, ws: u64| {
        result
            .series(s)
            .find(|r| r.params.get("ws_mib") == Some(&(ws as f64)))
            .map(|r| r.report.clone())
    };
    let mut out = Vec::new();
    let (Some(&lo), Some(&hi)) = (sizes.first(), sizes.last()) else {
        return out;
    };
    let span = |s: &str, f: &dyn Fn(&SimReport) -> f64| -> Option<(f64, f64)> {
        Some((f(&get(s, lo)?), f(&get(s, hi)?)))
    };
    let down = |r: &SimReport| r.engine.downtime_ms;
    if let (Some(p), Some(b)) = (span("pre-copy", &down), span("bubble", &down)) {
        out.push(format!(
            "downtime from {lo} to {hi} MiB: pre-copy {:.0} → {:.0} ms (×{:.1}); post-copy bubble {:.0} → {:.0} ms (flat)",
            p.0,
            p.1,
            p.1 / p.0.max(1e-9),
            b.0,
            b.1
        ));
    }
    let share = |r: &SimReport| r.network_fault_share * 100.0;
    if let (Some(push), Some(bub), Some(bd)) = (
        span("push", &share),
        span("bubble", &share),
        span("bubble+DSB", &share),
    ) {
        out.push(format!(
            "network faults as a share of pages transferred: push {:.2}–{:.2}%, bubble {:.2}–{:.2}%, bubble+DSB {:.2}–{:.2}% (paper: 9–15% push-only, 2–4% with pre-paging)",
            push.0, push.1, bub.0, bub.1, bd.0, bd.1
        ));
    }
    if let (Some(push), Some(bub)) = (get("push", hi), get("bubble", hi)) {
        let avoided =
            1.0 - bub.engine.network_faults as f64 / push.engine.network_faults.max(1) as f64;
        out.push(format!(
            "at {hi} MiB bubbling avoids {:.0}% of push-only's network faults ({} vs {})",
            avoided * 100.0,
            bub.engine.network_faults,
            push.engine.network_faults
        ));
    }
    if let (Some(pre), Some(bd)) = (get("pre-copy", hi), get("bubble+DSB", hi)) {
        out.push(format!(
            "at {hi} MiB bubble+DSB vs pre-copy: total time −{:.0}%, pages transferred −{:.0}% (paper: total time −50% and more, pages up to −75%)",
            (1.0 - bd.engine.total_time_ms / pre.engine.total_time_ms) * 100.0,
            (1.0 - bd.engine.pages_transferred as f64 / pre.engine.pages_transferred as f64) * 100.0
        ));
    }
    out
}

/// The K values of `paper-pivots` (OSR'09 swept 1..16 and found 7 best).
pub const PIVOT_KS: [u32; 8] = [1, 2, 4, 7, 8, 16, 32, 64];

fn paper_pivots(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let (layout, procs): (Layout, &[u32]) = if opts.quick {
        (
            Layout {
                guest_mib: 128,
                ws_mib: 32,
                base_mib: 16,
            },
            &[1, 4, 16],
        )
    } else {
        (
            Layout {
                guest_mib: 512,
                ws_mib: 256,
                base_mib: 64,
            },
            &[1, 2, 4, 8, 16, 32, 64, 128],
        )
    };
    let strategies: Vec<StrategySpec> = [
        StrategySpec::Linear,
        StrategySpec::BubbleForward,
        StrategySpec::Bubble,
    ]
    .into_iter()
    .chain(PIVOT_KS.map(StrategySpec::MultiPivot))
    .collect();
    let base = SimConfig::default();
    result.setup = vec![
        format!(
            "guest {} MiB, {} MiB in use besides the data; {} MiB of data split among P processes, each quicksorting its own region, time-sliced ({} accesses a slice, {} µs an access)",
            layout.guest_mib,
            layout.base_mib,
            layout.ws_mib,
            workload::QSORT_QUANTUM,
            workload::DEFAULT_NS_PER_ACCESS / 1000
        ),
        net_words(&base.net),
        "post-copy, no free-page elimination; 'linear' is push-only".into(),
    ];
    for &p in procs {
        let w = workload::quicksort(layout, p, opts.seed)?;
        for s in &strategies {
            let cfg = SimConfig {
                strategy: *s,
                ..base
            };
            let report = run(&w, &cfg, &s.to_string())?;
            result.runs.push(Run {
                series: s.to_string(),
                params: params(&[("processes", f64::from(p))]),
                report,
            });
        }
    }
    let labels: Vec<String> = strategies.iter().map(ToString::to_string).collect();
    let x = ("processes", "quicksort processes");
    result.tables = vec![
        grid(result, "Network faults", "procs", x.0, &labels, |r| {
            r.engine.network_faults.to_string()
        }),
        grid(
            result,
            "vCPU time blocked on faults (s)",
            "procs",
            x.0,
            &labels,
            |r| format!("{:.2}", r.vcpu_blocked_ms / 1e3),
        ),
    ];
    // Best K per process count.
    let mut findings = Vec::new();
    for &p in procs {
        let runs: Vec<&Run> = result
            .runs
            .iter()
            .filter(|r| r.params.get("processes") == Some(&f64::from(p)))
            .collect();
        let faults = |name: &str| {
            runs.iter()
                .find(|r| r.series == name)
                .map(|r| r.report.engine.network_faults)
        };
        let best = runs
            .iter()
            .filter(|r| r.series.starts_with("multi-pivot"))
            .min_by_key(|r| r.report.engine.network_faults);
        if let (Some(best), Some(lin), Some(bub), Some(fwd)) = (
            best,
            faults("linear"),
            faults("bubble"),
            faults("bubble-forward"),
        ) {
            findings.push(format!(
                "{p} processes: push-only {lin}, forward {fwd}, bubble {bub}, best multi-pivot {} with {}",
                best.series, best.report.engine.network_faults
            ));
        }
    }
    result.findings = findings;
    let by_k = Chart {
        title: "Network faults vs pivots (quicksort)".into(),
        x_label: "pivots K".into(),
        y_label: "network faults".into(),
        log_x: true,
        log_y: true,
        series: procs
            .iter()
            .map(|&p| Series {
                label: format!("{p} procs"),
                points: PIVOT_KS
                    .iter()
                    .filter_map(|&k| {
                        result
                            .runs
                            .iter()
                            .find(|r| {
                                r.series == format!("multi-pivot:{k}")
                                    && r.params.get("processes") == Some(&f64::from(p))
                            })
                            .map(|r| (f64::from(k), r.report.engine.network_faults as f64))
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(vec![
        (
            "faults",
            chart(
                result,
                "Network faults: quicksort",
                x,
                "network faults",
                true,
                &labels,
                |r| r.engine.network_faults as f64,
            ),
        ),
        ("faults-by-k", by_k),
    ])
}

/// A percentage rounded to a whole number, never "-0%".
fn pct(percent: f64) -> String {
    let v = percent.round();
    format!("{}%", if v == 0.0 { 0.0 } else { v })
}

fn paper_apps(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let (guest_mib, ws_mib, base_mib, len) = if opts.quick {
        (128, 32, 16, 100_000)
    } else {
        (512, 128, 64, 1_000_000)
    };
    let layout = Layout {
        guest_mib,
        ws_mib,
        base_mib,
    };
    let seed = opts.seed;
    let workloads = [
        workload::zipf(layout, 1.0, len, 0.3, seed)?,
        workload::random(layout, len, 0.3, seed)?,
        workload::sequential(layout, seed)?,
        workload::quicksort(layout, 4, seed)?,
    ];
    let base = SimConfig::default();
    result.setup = vec![
        format!("guest {guest_mib} MiB (the paper's default VM size), {base_mib} MiB in use besides a {ws_mib} MiB working set"),
        format!("zipf s=1.0 and random: {len} accesses a loop, 30% writes; sequential: reads in order; quicksort: 4 processes"),
        net_words(&base.net),
        "faults avoided = 1 − faults(strategy) / faults(demand-only); history = pages in order of the source's last access before the stop, then bubble; pre-copy = Xen 4.17 defaults without free-page elimination".into(),
    ];
    let methods = [
        ("pre-copy", Mode::XEN_PRECOPY, StrategySpec::None, false),
        ("demand-only", Mode::Postcopy, StrategySpec::None, false),
        ("bubble", Mode::Postcopy, StrategySpec::Bubble, false),
        ("bubble+DSB", Mode::Postcopy, StrategySpec::Bubble, true),
        ("history", Mode::Postcopy, StrategySpec::History, false),
    ];
    let mut rows = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let mut got = Vec::new();
        for (label, mode, strategy, fpe) in methods {
            let cfg = SimConfig {
                mode,
                strategy,
                free_page_elimination: fpe,
                ..base
            };
            let report = run(w, &cfg, label)?;
            got.push(report.clone());
            result.runs.push(Run {
                series: label.into(),
                params: params(&[("workload", i as f64)]),
                report,
            });
        }
        let [pre, demand, bubble, dsb, history] = [&got[0], &got[1], &got[2], &got[3], &got[4]];
        let avoided = |r: &SimReport| {
            1.0 - r.engine.network_faults as f64 / demand.engine.network_faults.max(1) as f64
        };
        rows.push(vec![
            w.name.clone(),
            demand.engine.network_faults.to_string(),
            bubble.engine.network_faults.to_string(),
            pct(avoided(bubble) * 100.0),
            pct(avoided(history) * 100.0),
            pct(
                (1.0 - dsb.engine.pages_transferred as f64 / pre.engine.pages_transferred as f64)
                    * 100.0,
            ),
            pct((1.0 - bubble.engine.total_time_ms / pre.engine.total_time_ms) * 100.0),
            pct((1.0 - dsb.engine.total_time_ms / pre.engine.total_time_ms) * 100.0),
            format!(
                "{:.0} / {:.0}",
                pre.engine.downtime_ms, bubble.engine.downtime_ms
            ),
        ]);
    }
    result.tables = vec![Table {
        title: "Pre-paging and post-copy against pre-copy, per access pattern".into(),
        columns: [
            "workload",
            "faults demand-only",
            "faults bubble",
            "faults avoided",
            "avoided by history",
            "pages saved (bubble+DSB vs pre-copy)",
            "time saved (bubble)",
            "time saved (bubble+DSB)",
            "downtime ms pre / post",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }];
    Ok(Vec::new())
}

fn sensitivity(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let layout = if opts.quick {
        Layout {
            guest_mib: 256,
            ws_mib: 64,
            base_mib: 16,
        }
    } else {
        Layout::paper(512)
    };
    let w = workload::stress(layout, opts.seed)?;
    let base = SimConfig::default();
    result.setup = vec![
        format!(
            "stress test, guest {} MiB, working set {} MiB; otherwise as paper-stress",
            layout.guest_mib, layout.ws_mib
        ),
        "a fault on a page the push already claimed waits for its batch: 'in flight'".into(),
    ];
    let batches: [u64; 6] = [1, 4, 8, 16, 64, 256];
    let mut series = Vec::new();
    for strategy in [StrategySpec::Linear, StrategySpec::Bubble] {
        for &b in &batches {
            let cfg = SimConfig {
                strategy,
                batch_pages: b,
                ..base
            };
            let report = run(&w, &cfg, &format!("{strategy} batch {b}"))?;
            let name = strategy.to_string();
            if !series.contains(&name) {
                series.push(name.clone());
            }
            result.runs.push(Run {
                series: name,
                params: params(&[("batch_pages", b as f64)]),
                report,
            });
        }
    }
    let x = ("batch_pages", "pages per pushed batch");
    result.tables = vec![
        grid(
            result,
            "Network faults (share of pages transferred)",
            "batch",
            x.0,
            &series,
            faults_cell,
        ),
        grid(
            result,
            "Faults met by a push in flight",
            "batch",
            x.0,
            &series,
            |r| r.engine.faults_in_flight.to_string(),
        ),
        grid(
            result,
            "vCPU time blocked on faults (s)",
            "batch",
            x.0,
            &series,
            |r| format!("{:.2}", r.vcpu_blocked_ms / 1e3),
        ),
        grid(
            result,
            "Total migration time (s)",
            "batch",
            x.0,
            &series,
            secs,
        ),
    ];
    Ok(vec![(
        "faults",
        chart(
            result,
            "Network faults vs push batch size",
            x,
            "network faults",
            true,
            &series,
            |r| r.engine.network_faults as f64,
        ),
    )])
}

/// The hosts' schedule `xl-postcopy calibrate` fitted to local mode on the
/// busy 2-core development VM (1 GiB, bubble, stress, sequential and
/// random, 4 runs each, 2026-12-07, load 5-7; docs/evaluation.md §7),
/// pooled: what a vCPU fault waited beyond the floor's round trip, µs, as
/// 32 equal-count bins ([`crate::sim::Durations`]; mean 109 µs) ...
pub const CALIBRATED_FAULT_EXCESS_US: [u64; 32] = [
    0, 1, 1, 1, 1, 2, 2, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 8, 9, 10, 11, 13, 15, 17, 35,
    76, 182, 3030,
];
/// ... the vCPU preempted once per this much of its running time, µs ...
pub const CALIBRATED_PREEMPT_EVERY_US: f64 = 89.4;
/// ... for this long, µs (mean 141 µs) ...
pub const CALIBRATED_PREEMPT_US: [u64; 32] = [
    3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 6, 6, 6, 7, 7, 8, 8, 10, 12, 18, 35, 65,
    164, 4093,
];
/// ... and the gaps between two of the push's batches, µs (mean 342 µs;
/// on a slower link the wire time of a batch covers the short ones).
pub const CALIBRATED_PUSH_GAP_US: [u64; 32] = [
    65, 69, 72, 74, 77, 79, 81, 84, 87, 90, 94, 101, 112, 121, 127, 131, 136, 141, 145, 149, 153,
    157, 162, 168, 175, 185, 202, 234, 281, 520, 1648, 5029,
];

/// The hosts of `net` scheduling `w`'s vCPU and the push as the fitted
/// development VM did: a fault waits the floor of `net` plus a draw of the
/// measured excess, the vCPU is preempted at the measured rate for the
/// measured lengths, the push pauses the measured gaps.
fn calibrated_host(net: &NetModel, w: &Workload) -> HostSched {
    let us = |b: [u64; 32], plus: u64| Durations(b.map(|x| x * 1000 + plus));
    let ns = if w.trace.ns_per_access == 0 {
        workload::DEFAULT_NS_PER_ACCESS
    } else {
        w.trace.ns_per_access
    };
    HostSched {
        fault_wait: us(CALIBRATED_FAULT_EXCESS_US, net.min_fault_ns()),
        preempt_every_steps: CALIBRATED_PREEMPT_EVERY_US * 1000.0 / ns as f64,
        preempt: us(CALIBRATED_PREEMPT_US, 0),
        push_gap: us(CALIBRATED_PUSH_GAP_US, 0),
        seed: 1,
        ..HostSched::default()
    }
}

fn calibrated(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let (layout, stress_layout, len) = if opts.quick {
        (
            Layout {
                guest_mib: 128,
                ws_mib: 32,
                base_mib: 16,
            },
            Layout {
                guest_mib: 512,
                ws_mib: 128,
                base_mib: 48,
            },
            100_000,
        )
    } else {
        (
            Layout {
                guest_mib: 512,
                ws_mib: 128,
                base_mib: 64,
            },
            Layout {
                guest_mib: 2048,
                ws_mib: 512,
                base_mib: 192,
            },
            1_000_000,
        )
    };
    let seed = opts.seed;
    let workloads = [
        workload::stress(stress_layout, seed)?,
        workload::zipf(layout, 1.0, len, 0.3, seed)?,
        workload::random(layout, len, 0.3, seed)?,
        workload::sequential(layout, seed)?,
    ];
    let base = SimConfig::default();
    let host = calibrated_host(&base.net, &workloads[3]);
    result.setup = vec![
        format!(
            "stress as §1 ({} MiB working set), zipf, random and sequential as §2; default model: {}",
            stress_layout.ws_mib,
            net_words(&base.net)
        ),
        format!(
            "calibrated: the same link between hosts as busy as the fitted 2-core VM — a fault waits the floor plus the measured excess (mean {:.0} µs, one in 32 ~{:.1} ms), the vCPU is preempted every {CALIBRATED_PREEMPT_EVERY_US} µs it runs (mean {:.0} µs), the push pauses between batches as measured (mean {:.0} µs, one in 32 ~{:.1} ms)",
            host.fault_wait.mean() as f64 / 1e3 - base.net.min_fault_ns() as f64 / 1e3,
            CALIBRATED_FAULT_EXCESS_US[31] as f64 / 1e3,
            host.preempt.mean() as f64 / 1e3,
            host.push_gap.mean() as f64 / 1e3,
            CALIBRATED_PUSH_GAP_US[31] as f64 / 1e3,
        ),
    ];
    let mut rows = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let mut figures = Vec::new();
        for calibrated in [false, true] {
            let host = if calibrated {
                calibrated_host(&base.net, w)
            } else {
                HostSched::default()
            };
            let mut got = Vec::new();
            for (label, strategy) in [
                ("demand-only", StrategySpec::None),
                ("push", StrategySpec::Linear),
                ("bubble", StrategySpec::Bubble),
            ] {
                let cfg = SimConfig { strategy, ..base };
                let report = run_on(w, &cfg, &host, label)?;
                result.runs.push(Run {
                    series: format!("{label}{}", if calibrated { " calibrated" } else { "" }),
                    params: params(&[("workload", i as f64)]),
                    report: report.clone(),
                });
                got.push(report);
            }
            figures.push(got);
        }
        let share = |r: &SimReport| {
            100.0 * r.engine.network_faults as f64 / r.engine.pages_transferred.max(1) as f64
        };
        let avoided = |g: &[SimReport]| {
            100.0
                * (1.0
                    - g[2].engine.network_faults as f64 / g[0].engine.network_faults.max(1) as f64)
        };
        let (d, c) = (&figures[0], &figures[1]);
        rows.push(vec![
            w.name.clone(),
            format!("{:.2}% → {:.2}%", share(&d[1]), share(&c[1])),
            format!("{:.2}% → {:.2}%", share(&d[2]), share(&c[2])),
            format!("{} → {}", pct(avoided(d)), pct(avoided(c))),
            format!(
                "{:.2} → {:.2}",
                d[2].engine.total_time_ms / 1000.0,
                c[2].engine.total_time_ms / 1000.0
            ),
            format!(
                "{:.2} → {:.2}",
                d[2].vcpu_blocked_ms / 1000.0,
                c[2].vcpu_blocked_ms / 1000.0
            ),
        ]);
    }
    result.tables = vec![Table {
        title: "Default model → calibrated model".into(),
        columns: [
            "workload",
            "net faults push (share of pages)",
            "net faults bubble (share of pages)",
            "faults avoided by bubble",
            "total s (bubble)",
            "vCPU blocked s (bubble)",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }];
    Ok(Vec::new())
}

/// The `scale` and `speed` workload: a writer over an eighth of the guest,
/// a sixteenth in use besides, at `ns` per page.
pub fn scale_workload(guest_mib: u64, ns: u64, seed: u64) -> Result<Workload, ExperimentError> {
    let mut w = workload::stress(
        Layout {
            guest_mib,
            ws_mib: (guest_mib / 8).max(1),
            base_mib: guest_mib / 16,
        },
        seed,
    )?;
    w.trace.ns_per_access = ns;
    Ok(w)
}

/// Compute time per page of the `scale` writer: it dirties 1 GB/s.
pub const SCALE_NS_PER_PAGE: u64 = 4_000;

fn scale(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let guests_mib: &[u64] = if opts.quick {
        &[256, 1024]
    } else {
        &[1024, 4096, 16384, 65536, 262144]
    };
    let links = [1.0, 10.0, 25.0];
    let proto = NetModel::datacenter(10.0);
    result.setup = vec![
        format!("guest 1–256 GiB; a writer dirties an eighth of it page by page in a loop ({} µs a page, 1 GB/s); a sixteenth more in use; free pages hold stale data", SCALE_NS_PER_PAGE / 1000),
        format!("links 1, 10, 25 Gb/s; otherwise {}", net_words(&proto)),
        "pre-copy = Xen 4.17 defaults; post-copy = bubble; neither eliminates free pages".into(),
    ];
    let methods = [
        ("pre-copy", Mode::XEN_PRECOPY),
        ("post-copy", Mode::Postcopy),
    ];
    let mut series = Vec::new();
    for &g in guests_mib {
        let w = scale_workload(g, SCALE_NS_PER_PAGE, opts.seed)?;
        for &gbps in &links {
            for (label, mode) in methods {
                let cfg = SimConfig {
                    mode,
                    strategy: StrategySpec::Bubble,
                    net: NetModel::datacenter(gbps),
                    ..SimConfig::default()
                };
                let name = format!("{label} {gbps} Gb/s");
                let report = run(&w, &cfg, &name)?;
                if !series.contains(&name) {
                    series.push(name.clone());
                }
                result.runs.push(Run {
                    series: name,
                    params: params(&[("guest_gib", g as f64 / 1024.0), ("link_gbps", gbps)]),
                    report,
                });
            }
        }
    }
    let x = ("guest_gib", "guest memory (GiB)");
    let gib = "guest GiB";
    result.tables = vec![
        grid(result, "Total migration time (s)", gib, x.0, &series, secs),
        grid(result, "Downtime (ms)", gib, x.0, &series, |r| {
            format!("{:.0}", r.engine.downtime_ms)
        }),
        grid(
            result,
            "Pages transferred per guest page",
            gib,
            x.0,
            &series,
            |r| {
                format!(
                    "{:.2}",
                    r.engine.pages_transferred as f64 / r.guest_pages as f64
                )
            },
        ),
        grid(
            result,
            "Post-copy: network faults (share) and vCPU time blocked",
            gib,
            x.0,
            &series
                .iter()
                .filter(|s| s.starts_with("post"))
                .cloned()
                .collect::<Vec<_>>(),
            |r| {
                format!(
                    "{} ({:.2}%), {:.2} s",
                    r.engine.network_faults,
                    r.network_fault_share * 100.0,
                    r.vcpu_blocked_ms / 1e3
                )
            },
        ),
        grid(result, "Simulator wall time (ms)", gib, x.0, &series, |r| {
            format!("{:.0}", r.wall_ms)
        }),
    ];
    let mut findings = Vec::new();
    for s in &series {
        let runs: Vec<&Run> = result.series(s).collect();
        if let (Some(a), Some(b)) = (runs.first(), runs.last()) {
            findings.push(format!(
                "{s}: downtime {:.0} ms at {} GiB, {:.0} ms at {} GiB",
                a.report.engine.downtime_ms,
                fmt_num(a.params["guest_gib"]),
                b.report.engine.downtime_ms,
                fmt_num(b.params["guest_gib"])
            ));
        }
    }
    if let Some(big) = result.series("post-copy 10 Gb/s").last() {
        let evict = big.report.owed_pages * crate::net::XEN_EVICT_NS_PER_PAGE;
        findings.push(format!(
            "caveat for the Xen path: evicting the {} owed pages one by one through mem_paging (≈{} µs each) would add {:.0} s to the {} GiB post-copy downtime; the destination must create owed pages absent rather than evict them",
            big.report.owed_pages,
            crate::net::XEN_EVICT_NS_PER_PAGE as f64 / 1e3,
            evict as f64 / 1e9,
            fmt_num(big.params["guest_gib"])
        ));
    }
    result.findings = findings;
    Ok(vec![
        (
            "total-time",
            chart(
                result,
                "Total time vs guest size",
                x,
                "seconds",
                true,
                &series,
                |r| r.engine.total_time_ms / 1e3,
            ),
        ),
        (
            "downtime",
            chart(
                result,
                "Downtime vs guest size",
                x,
                "milliseconds",
                true,
                &series,
                |r| r.engine.downtime_ms,
            ),
        ),
    ])
}

/// The modes `auto-switch` compares, in column order.
const AUTO_SWITCH_MODES: [(&str, Mode); 4] = [
    ("N=1", Mode::Hybrid { rounds: 1 }),
    ("N=3", Mode::Hybrid { rounds: 3 }),
    ("N=5", Mode::Hybrid { rounds: 5 }),
    ("auto", Mode::HybridAuto(SwitchRule::DEFAULT)),
];

fn auto_switch(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let (guest_mib, base_mib) = if opts.quick { (512, 48) } else { (2048, 192) };
    let layout = |ws_mib| Layout {
        guest_mib,
        ws_mib,
        base_mib,
    };
    let base = SimConfig {
        strategy: StrategySpec::Bubble,
        ..SimConfig::default()
    };
    let r = SwitchRule::DEFAULT;
    result.setup = vec![
        format!("guest {guest_mib} MiB, {base_mib} MiB in use besides the working set"),
        net_words(&base.net),
        format!(
            "auto = postcopy::switch::SwitchRule::DEFAULT: switch below {} dirty pages, when pages are dirtied as fast as sent, after {} rounds in a row not {} % below the previous, or after {} rounds",
            r.min_dirty, r.patience, r.min_drop_pct, r.max_rounds
        ),
        "stress: writes its working set page by page, 1 µs a page (never converges over GigE); idle: reads only; slow: 1 write in 1000 accesses, random over the working set (converges)".into(),
        "owed = pages still at the source when the guest resumes on the destination".into(),
    ];
    let mut cases: Vec<(String, Workload)> = Vec::new();
    for ws in [16, 64, 256] {
        cases.push((
            format!("stress {ws} MiB"),
            workload::stress(layout(ws), opts.seed)?,
        ));
    }
    cases.push((
        "idle 64 MiB".into(),
        workload::random(layout(64), 1 << 16, 0.0, opts.seed)?,
    ));
    for ws in [64, 256] {
        cases.push((
            format!("slow 1/1000 {ws} MiB"),
            workload::random(layout(ws), 1 << 16, 0.001, opts.seed)?,
        ));
    }
    for (i, (_, w)) in cases.iter().enumerate() {
        for (label, mode) in AUTO_SWITCH_MODES {
            let cfg = SimConfig { mode, ..base };
            let report = run(w, &cfg, label)?;
            result.runs.push(Run {
                series: label.into(),
                params: params(&[("case", i as f64)]),
                report,
            });
        }
    }
    let labels: Vec<String> = AUTO_SWITCH_MODES
        .iter()
        .map(|(l, _)| l.to_string())
        .collect();
    let table = |title: &str, cell: &dyn Fn(&SimReport) -> String| {
        let mut t = grid(result, title, "workload", "case", &labels, cell);
        for (row, (name, _)) in t.rows.iter_mut().zip(&cases) {
            row[0] = name.clone();
        }
        t
    };
    result.tables = vec![
        table("Total migration time (s)", &secs),
        table("Pre-copy rounds sent", &|r| {
            r.engine.precopy_rounds.to_string()
        }),
        table("Pages transferred", &|r| {
            r.engine.pages_transferred.to_string()
        }),
        table("Pages owed at the switch", &|r| r.owed_pages.to_string()),
        table("Network faults", &|r| r.engine.network_faults.to_string()),
    ];
    result.findings = auto_switch_findings(result, &cases);
    Ok(Vec::new())
}

/// For each workload: where auto stands against the best and worst fixed N.
fn auto_switch_findings(result: &ExperimentResult, cases: &[(String, Workload)]) -> Vec<String> {
    let total = |label: &str, i: usize| {
        result
            .series(label)
            .find(|r| r.params.get("case") == Some(&(i as f64)))
            .map(|r| {
                (
                    r.report.engine.total_time_ms,
                    r.report.owed_pages,
                    r.report.engine.precopy_rounds,
                )
            })
    };
    let mut out = Vec::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let Some((auto_ms, auto_owed, auto_rounds)) = total("auto", i) else {
            continue;
        };
        let fixed: Vec<(&str, f64, u64)> = AUTO_SWITCH_MODES[..3]
            .iter()
            .filter_map(|(l, _)| total(l, i).map(|(t, o, _)| (*l, t, o)))
            .collect();
        let Some(best) = fixed.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        let Some(worst) = fixed.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        out.push(format!(
            "{name}: auto switched after {auto_rounds} round{} owing {auto_owed} pages, {:.2} s; best fixed {} {:.2} s (owing {}), worst {} {:.2} s (owing {})",
            if auto_rounds == 1 { "" } else { "s" },
            auto_ms / 1e3,
            best.0,
            best.1 / 1e3,
            best.2,
            worst.0,
            worst.1 / 1e3,
            worst.2
        ));
    }
    out
}

fn speed(
    opts: &ExperimentOptions,
    result: &mut ExperimentResult,
) -> Result<Charts, ExperimentError> {
    let guests_mib: &[u64] = if opts.quick {
        &[64, 128, 256, 512]
    } else {
        &[1024, 2048, 4096, 8192, 16384, 32768, 65536]
    };
    let cfg = SimConfig {
        net: NetModel::datacenter(10.0),
        ..SimConfig::default()
    };
    result.setup = vec![
        "post-copy bubble at 10 Gb/s, the `scale` workload; wall time of this process (build with --release to measure)".into(),
    ];
    for &g in guests_mib {
        let w = scale_workload(g, SCALE_NS_PER_PAGE, opts.seed)?;
        let report = run(&w, &cfg, "speed")?;
        result.runs.push(Run {
            series: "bubble 10 Gb/s".into(),
            params: params(&[("guest_gib", g as f64 / 1024.0)]),
            report,
        });
    }
    let rows = result
        .runs
        .iter()
        .map(|r| {
            let pages = r.report.guest_pages as f64;
            vec![
                fmt_num(r.params["guest_gib"]),
                r.report.guest_pages.to_string(),
                format!("{:.0}", r.report.wall_ms),
                format!("{:.0}", r.report.wall_ms * 1e6 / pages),
                r.report.work.to_string(),
                format!("{:.3}", r.report.work as f64 / pages),
                format!("{:.1}", r.report.engine.total_time_ms / 1e3),
            ]
        })
        .collect();
    result.tables = vec![Table {
        title: "Simulator cost per guest size".into(),
        columns: [
            "guest GiB",
            "pages",
            "wall ms",
            "wall ns/page",
            "work",
            "work/page",
            "simulated s",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }];
    if let (Some(a), Some(b)) = (result.runs.first(), result.runs.last()) {
        let size = b.report.guest_pages as f64 / a.report.guest_pages as f64;
        result.findings.push(format!(
            "guest ×{size:.0}: work ×{:.1}, wall time ×{:.1}; {} GiB took {:.2} s",
            b.report.work as f64 / a.report.work as f64,
            b.report.wall_ms / a.report.wall_ms.max(1e-3),
            fmt_num(b.params["guest_gib"]),
            b.report.wall_ms / 1e3
        ));
    }
    let series = vec!["bubble 10 Gb/s".to_string()];
    Ok(vec![(
        "cost",
        chart(
            result,
            "Simulator wall time vs guest size",
            ("guest_gib", "guest memory (GiB)"),
            "wall ms",
            true,
            &series,
            |r| r.wall_ms,
        ),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> ExperimentOptions {
        ExperimentOptions {
            quick: true,
            ..ExperimentOptions::default()
        }
    }

    #[test]
    fn auto_switch_beats_late_fixed_rounds_under_stress_and_waits_for_convergence() {
        let r = run_experiment("auto-switch", &quick()).expect("auto-switch");
        let get = |series: &str, case: f64| {
            r.series(series)
                .find(|x| x.params.get("case") == Some(&case))
                .map(|x| x.report.clone())
                .expect("run")
        };
        // Cases 0-2: stress writers; 3: idle; 4-5: slow writers.
        for case in [0.0, 1.0, 2.0] {
            let (auto, n3, n5) = (get("auto", case), get("N=3", case), get("N=5", case));
            assert_eq!(
                auto.engine.precopy_rounds, 2,
                "stress: one round to see the stall"
            );
            assert!(auto.engine.total_time_ms < n3.engine.total_time_ms);
            assert!(auto.engine.pages_transferred < n5.engine.pages_transferred);
        }
        let idle = get("auto", 3.0);
        assert_eq!((idle.engine.precopy_rounds, idle.owed_pages), (1, 0));
        for case in [4.0, 5.0] {
            let (auto, n1) = (get("auto", case), get("N=1", case));
            assert!(auto.owed_pages < 50 && auto.owed_pages < n1.owed_pages);
        }
    }

    #[test]
    fn unknown_experiment_is_an_error_listing_the_names() {
        let e = run_experiment("nope", &quick()).unwrap_err();
        let text = e.to_string();
        for name in experiment_names() {
            assert!(text.contains(name), "{text}");
        }
    }

    /// The calibrated model (a slower vCPU, dearer faults) changes fault
    /// counts, never the pages sent, and bubble still beats push on the
    /// scattered patterns (zipf, random: workloads 1 and 2).
    #[test]
    fn the_calibrated_model_keeps_the_pages_and_the_ordering() {
        let r = run_experiment("calibrated", &quick()).unwrap();
        assert_eq!(r.tables[0].rows.len(), 4);
        let reports = |s: &str| -> Vec<&SimReport> { r.series(s).map(|x| &x.report).collect() };
        for (d, c) in reports("bubble").iter().zip(reports("bubble calibrated")) {
            assert_eq!(d.engine.pages_transferred, c.engine.pages_transferred);
        }
        for (p, b) in reports("push calibrated")
            .iter()
            .zip(reports("bubble calibrated"))
            .skip(1)
            .take(2)
        {
            assert!(b.engine.network_faults < p.engine.network_faults);
        }
        println!("{r}");
    }

    /// The seed's qualitative findings, from the quick sweep.
    #[test]
    fn paper_stress_reproduces_the_seed() {
        let dir = std::env::temp_dir().join(format!("pcsim-exp-{}", std::process::id()));
        let r = run_experiment(
            "paper-stress",
            &ExperimentOptions {
                out_dir: Some(dir.clone()),
                ..quick()
            },
        )
        .unwrap();
        let down =
            |s: &str| -> Vec<f64> { r.series(s).map(|x| x.report.engine.downtime_ms).collect() };
        let post = down("bubble");
        let pre = down("pre-copy");
        assert!(
            post.iter().all(|&d| (d - post[0]).abs() < 0.01 * post[0]),
            "{post:?}"
        );
        assert!(pre.windows(2).all(|w| w[1] > w[0]), "{pre:?}");
        let last = |s: &str| r.series(s).last().unwrap().report.clone();
        assert!(last("bubble").engine.network_faults * 2 < last("push").engine.network_faults);
        assert!(
            last("bubble+DSB").engine.pages_transferred < last("bubble").engine.pages_transferred
        );
        assert!(last("bubble+DSB").engine.total_time_ms < last("pre-copy").engine.total_time_ms);
        // Tables, findings and files.
        let text = r.to_string();
        assert!(text.contains("| WS MiB | pre-copy |"), "{text}");
        assert_eq!(r.tables.len(), 5);
        assert_eq!(r.tables[0].rows.len(), 3);
        assert!(r.findings.iter().any(|f| f.contains("(flat)")));
        assert_eq!(r.files.len(), 5);
        for f in &r.files {
            assert!(std::fs::metadata(f).unwrap().len() > 100, "{}", f.display());
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("paper-stress.json")).unwrap())
                .unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 21);
        assert!(json["runs"][0]["report"]["engine"]["total_time_ms"].is_f64());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paper_pivots_orders_the_strategies() {
        let r = run_experiment("paper-pivots", &quick()).unwrap();
        assert_eq!(r.runs.len(), 3 * (3 + PIVOT_KS.len()));
        for p in [1.0, 4.0, 16.0] {
            let f = |s: &str| {
                r.series(s)
                    .find(|x| x.params["processes"] == p)
                    .unwrap()
                    .report
                    .engine
                    .network_faults
            };
            // Any bubbling beats push-only; more pivots beat one.
            assert!(f("bubble") < f("linear"), "{p}");
            assert!(f("multi-pivot:7") < f("bubble"), "{p}");
            assert_eq!(f("multi-pivot:1"), f("bubble"), "K = 1 is the bubble");
        }
    }

    #[test]
    fn paper_apps_prepaging_avoids_faults_everywhere() {
        let r = run_experiment("paper-apps", &quick()).unwrap();
        assert_eq!(r.runs.len(), 4 * 5);
        assert_eq!(r.tables[0].rows.len(), 4);
        for i in 0..4 {
            let f = |s: &str| {
                r.series(s)
                    .find(|x| x.params["workload"] == f64::from(i))
                    .unwrap()
                    .report
                    .engine
                    .network_faults
            };
            assert!(f("bubble") < f("demand-only"), "workload {i}");
        }
    }

    #[test]
    fn sensitivity_bubble_faults_fall_with_batch_size() {
        let r = run_experiment("sensitivity", &quick()).unwrap();
        assert_eq!(r.runs.len(), 12);
        let faults: Vec<u64> = r
            .series("bubble")
            .map(|x| x.report.engine.network_faults)
            .collect();
        assert!(faults.windows(2).all(|w| w[1] <= w[0]), "{faults:?}");
        assert!(faults[5] * 10 < faults[0], "{faults:?}");
    }

    #[test]
    fn scale_runs_and_serializes() {
        let r = run_experiment("scale", &quick()).unwrap();
        assert_eq!(r.runs.len(), 2 * 3 * 2);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["name"], "scale");
        // Post-copy downtime does not grow with the guest; pre-copy's does
        // on the slow link.
        let down =
            |s: &str| -> Vec<f64> { r.series(s).map(|x| x.report.engine.downtime_ms).collect() };
        let post = down("post-copy 1 Gb/s");
        assert!((post[1] - post[0]).abs() < 0.05 * post[0], "{post:?}");
        let pre = down("pre-copy 1 Gb/s");
        assert!(pre[1] > 2.0 * pre[0], "{pre:?}");
    }

    /// The simulator's work (events plus accesses replayed one by one)
    /// grows linearly with guest size: work per page stays flat from 64 to
    /// 512 MiB.
    #[test]
    fn work_is_linear_in_guest_size() {
        let r = run_experiment("speed", &quick()).unwrap();
        let per_page: Vec<f64> = r
            .runs
            .iter()
            .map(|x| x.report.work as f64 / x.report.guest_pages as f64)
            .collect();
        assert_eq!(per_page.len(), 4);
        let (lo, hi) = per_page
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(hi / lo < 1.25, "work per page {per_page:?}");
        assert!(r.findings[0].contains("guest ×8"), "{}", r.findings[0]);
    }

    #[test]
    fn table_renders_as_aligned_markdown() {
        let t = Table {
            title: "T".into(),
            columns: vec!["x".into(), "long name".into()],
            rows: vec![vec!["10".into(), "1".into()], vec!["2".into()]],
        };
        assert_eq!(
            t.to_string(),
            "T\n\n| x  | long name |\n|----|----------:|\n| 10 |         1 |\n| 2  |           |\n"
        );
    }
}
