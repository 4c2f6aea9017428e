//! `xl-postcopy`: the standalone post-copy tool — local-mode migrations of
//! a live mini-VM (`local`, `send`, `receive`), benchmarks and the
//! simulator.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use xl_plugin::local::session::{run_sender_with, GuestOpts, LinkOpts, LocalError, MigrateOpts};
use xl_plugin::local::workload::Workload;
use xl_plugin::options::{parse_size_pages, FaultNice, MigrationArgs};

#[derive(Parser, Debug)]
#[command(
    name = "xl-postcopy",
    version,
    about = "Post-copy live migration: local mode, benchmarks, simulator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Migrate a live mini-VM between two processes on this machine and
    /// print the report.
    Local(LocalArgs),
    /// Boot a mini-VM and migrate it to a waiting `receive`.
    Send {
        /// Address of the receiver.
        #[arg(long, value_name = "ADDR")]
        to: SocketAddr,
        #[command(flatten)]
        run: LocalArgs,
        #[command(flatten)]
        link: xl_plugin::local::recover::LinkArgs,
    },
    /// Wait for one migration and run the guest when it arrives.
    Receive {
        /// Address to listen on (loopback by default).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Seconds to keep the guest running after completion (measures
        /// the post-migration rate).
        #[arg(long, default_value_t = 0.3)]
        tail: f64,
        /// Seconds to wait for a sender to connect before giving up (0:
        /// wait forever).
        #[arg(long, value_name = "SECONDS",
              default_value_t = xl_plugin::local::session::DEFAULT_ACCEPT_TIMEOUT.as_secs_f64())]
        accept_timeout: f64,
        /// Nice value of the fault forwarder and reply reader (-20..=19),
        /// or `off` to leave them at this process's.
        #[arg(long, value_name = "N|off", allow_hyphen_values = true, default_value_t = FaultNice::default(),
              value_parser = xl_plugin::options::parse_fault_nice)]
        fault_nice: FaultNice,
        #[command(flatten)]
        link: xl_plugin::local::recover::LinkArgs,
    },
    /// Point a running `send` or `receive` whose link broke after the
    /// switch at a new address (through its --control socket).
    Recover(xl_plugin::local::recover::RecoverArgs),
    /// A byte pipe over TCP that survives a dropped link, to carry `xl
    /// migrate` between hosts (`connect` as the command of `xl migrate -s
    /// ''`, `listen ... -- xl migrate-receive --postcopy` on the other).
    #[command(subcommand)]
    Tunnel(xl_plugin::tunnel::cli::TunnelCmd),
    /// Run the local-mode benchmark matrix; print min/median/max per figure
    /// and write JSON, Markdown and SVG charts.
    Bench(BenchArgs),
    /// Run a simulator experiment (the seed's evaluation at any scale).
    Simulate {
        /// Experiment name (see --list).
        #[arg(long, required_unless_present = "list")]
        experiment: Option<String>,
        /// List the experiments.
        #[arg(long)]
        list: bool,
        /// A small sweep, for smoke runs.
        #[arg(long)]
        quick: bool,
        /// Folder for NAME.json and the SVG charts.
        #[arg(long, default_value = "results/sim")]
        out: std::path::PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a recorded trace in the simulator, with a link model fitted
    /// to a local-mode run, and compare network faults and pages sent.
    Calibrate {
        /// Trace written by `local --record-trace`.
        #[arg(long)]
        trace: std::path::PathBuf,
        /// The same run's `local --json` report.
        #[arg(long)]
        report: std::path::PathBuf,
    },
    /// List the pre-paging strategies.
    Strategies,
    /// Time a bare request/reply round trip (a 1-pfn FAULT, a 1-page
    /// reply) between this process and a child over a pipe pair, the
    /// transport of `xl migrate` on one host: the floor of a network
    /// fault's service time.
    Rtt {
        /// Round trips to time.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Be the other end: answer requests on stdin with replies on
        /// stdout.
        #[arg(long)]
        serve: bool,
        /// The other end is this shell command's stdin and stdout (e.g.
        /// `ssh HOST xl-postcopy rtt --serve`), as for `xl migrate`.
        #[arg(long, value_name = "CMD")]
        via: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// On the source host: make the running hybrid migration
    /// (`--postcopy-after=N|auto`) of DOMAIN switch to post-copy now; the
    /// save helper takes the request at its next pre-copy step.
    Switch {
        /// Domain name or id.
        domain: String,
        /// Folder of the Xen helpers' status files (default:
        /// $XEN_POSTCOPY_STATUS_DIR, else /run/xen-postcopy).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Where a post-copy migration stands (or how the last one ended): on
    /// a Xen host by domain name or id, on either host; in local mode by
    /// the `--status-file` of a `send` or `receive`.
    Status {
        /// Domain name or id (Xen).
        #[arg(required_unless_present = "file")]
        domain: Option<String>,
        /// Read this status file instead (local mode's --status-file).
        #[arg(long, value_name = "FILE", conflicts_with = "domain")]
        file: Option<std::path::PathBuf>,
        /// Folder of the Xen helpers' status files (default:
        /// $XEN_POSTCOPY_STATUS_DIR, else /run/xen-postcopy).
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
        /// Print the snapshot as JSON (stable keys, after QEMU's
        /// query-migrate).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Guest sizes, comma-separated.
    #[arg(long, default_value = "256M,1G", value_delimiter = ',', value_parser = parse_size_pages)]
    sizes: Vec<u64>,
    /// Workloads, comma-separated.
    #[arg(
        long,
        default_value = "stress,sequential,random",
        value_delimiter = ','
    )]
    workloads: Vec<Workload>,
    /// Post-copy strategies, comma-separated.
    #[arg(long, default_value = "none,linear,bubble,bubble-forward,multi-pivot:7,history", value_delimiter = ',',
          value_parser = xl_plugin::options::parse_strategy)]
    strategies: Vec<postcopy::prepage::StrategySpec>,
    /// Skip the pre-copy and hybrid baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Skip the post-copy floors (warm and cold, ~2 × the stream time + 3 s
    /// per run).
    #[arg(long)]
    no_floors: bool,
    /// Runs per configuration.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: u64,
    /// Results folder.
    #[arg(long, default_value = "results/bench")]
    out: std::path::PathBuf,
    /// Seconds each guest runs before its migration.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Nice value of the fault path's threads in every run (-20..=19), or
    /// `off` (see `local --fault-nice`).
    #[arg(long, value_name = "N|off", allow_hyphen_values = true, default_value_t = FaultNice::default(),
          value_parser = xl_plugin::options::parse_fault_nice)]
    fault_nice: FaultNice,
    /// Instead of the matrix: encryption's cost, a plain loopback stream
    /// of each size against the same through sealed records (what a link
    /// with a token carries), alternated --runs times.
    #[arg(long)]
    encrypt: bool,
}

#[derive(Args, Debug, Clone)]
struct LocalArgs {
    /// Guest memory size (K, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size_pages)]
    mem: u64,
    /// Workload: stress, quicksort, sequential, random, zipf.
    #[arg(long, default_value = "stress")]
    workload: Workload,
    /// Working set of `stress` (default: a quarter of memory).
    #[arg(long, value_parser = parse_size_pages)]
    ws: Option<u64>,
    #[command(flatten)]
    migration: MigrationArgs,
    /// Free-page elimination: release the workload's free pages while it
    /// runs and at the stop; they are never sent.
    #[arg(long)]
    balloon: bool,
    /// Seconds the guest runs before the migration.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds the guest keeps running after completion.
    #[arg(long, default_value_t = 0.3)]
    tail: f64,
    /// Seconds of pure demand paging (`--prepage none`) before the rest is
    /// pushed in pfn order even while the guest keeps faulting.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    residual_after: f64,
    /// Pages per pushed record.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    batch_pages: u64,
    /// Measure the fault-latency floor first (uffd + loopback round trip).
    #[arg(long)]
    floor: bool,
    /// Seed of the guest's memory and workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the guest's page-access trace (simulator format) here.
    #[arg(long, value_name = "FILE")]
    record_trace: Option<std::path::PathBuf>,
    /// Nice value of the fault path's threads on both sides (-20..=19),
    /// or `off` to leave them at the processes' (lowering it needs
    /// CAP_SYS_NICE; without it they keep their priority).
    #[arg(long, value_name = "N|off", allow_hyphen_values = true, default_value_t = FaultNice::default(),
          value_parser = xl_plugin::options::parse_fault_nice)]
    fault_nice: FaultNice,
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("bad --{what} {s}"))
}

impl LocalArgs {
    fn guest(&self) -> Result<GuestOpts> {
        let workload = match (self.workload, self.ws) {
            (Workload::Stress { .. }, Some(ws)) => {
                if ws > self.mem {
                    bail!("--ws is larger than --mem");
                }
                Workload::Stress { ws_pages: ws }
            }
            (Workload::Stress { .. }, None) => Workload::Stress {
                ws_pages: (self.mem / 4).max(1),
            },
            (_, Some(_)) => bail!("--ws applies to --workload stress only"),
            (w, None) => w,
        };
        Ok(GuestOpts {
            pages: self.mem,
            workload,
            warmup: secs(self.warmup, "warmup")?,
            seed: self.seed,
        })
    }

    fn migrate(&self) -> Result<MigrateOpts> {
        Ok(MigrateOpts {
            mode: self.migration.mode(),
            strategy: self.migration.prepage,
            balloon: self.balloon,
            batch_pages: usize::try_from(self.batch_pages)?,
            tail: secs(self.tail, "tail")?,
            floor: self.floor,
            max_bandwidth: self.migration.max_bandwidth,
            residual_after: secs(self.residual_after, "residual-after")?,
        })
    }
}

fn print_report(r: &xl_plugin::local::report::LocalReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        print!("{r}");
    }
    Ok(())
}

fn exit_for(e: &LocalError) -> ExitCode {
    eprintln!("xl-postcopy: {e}");
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
}

fn local(args: &LocalArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating this program")?;
    let mut child = Command::new(exe)
        .args([
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--tail",
            &args.tail.to_string(),
            "--fault-nice",
            &args.fault_nice.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the receiver process")?;
    let stdout = child.stdout.take().context("receiver stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().context("receiver exited before listening")??;
    let addr: SocketAddr = first
        .strip_prefix("LISTEN ")
        .context("receiver did not announce its address")?
        .parse()
        .context("receiver announced a bad address")?;
    let result = args
        .guest()
        .and_then(|g| Ok((g, args.migrate()?)))
        .map_err(|e| LocalError::Setup(format!("{e:#}")))
        .and_then(|(g, m)| {
            let link = LinkOpts {
                fault_nice: args.fault_nice.0,
                ..LinkOpts::default()
            };
            run_sender_with(addr, &g, &m, &link)
        });
    if matches!(result, Err(LocalError::Setup(_) | LocalError::Link(_))) {
        // No migration reached the receiver (or it saw the link close):
        // it would wait for one until its accept timeout.
        let _ = child.kill();
    }
    // Drain the receiver's output so it can exit.
    for _ in lines.by_ref() {}
    let status = child.wait().context("waiting for the receiver")?;
    match result {
        Ok(mut report) => {
            if !status.success() {
                bail!("the receiver process failed ({status}) after a complete migration");
            }
            if args.record_trace.is_none() {
                // Only calibration reads the vCPU's stalls and the push's
                // claims one by one.
                report.destination.stall_log.clear();
                report.source.push_log_us.clear();
            }
            print_report(&report, args.json)?;
            if let Some(path) = &args.record_trace {
                write_trace(args, &report, path)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(exit_for(&e)),
    }
}

/// Records the migrated guest's access sequence from its seed (see
/// `xl_plugin::local::trace`): the steps it ran during post-copy, from
/// where the warmup left it.
fn write_trace(
    args: &LocalArgs,
    r: &xl_plugin::local::report::LocalReport,
    path: &std::path::Path,
) -> Result<()> {
    let g = args.guest()?;
    // From the step the destination resumed at, exactly: the stall log's
    // step indices then index the trace.
    let skip = r.destination.first_step;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive rate, clamped"
    )]
    let (accesses, ns) = (
        usize::try_from(r.destination.steps_during.clamp(100_000, 16_000_000)).unwrap_or(100_000),
        (1e9 / r.rate_before.max(1.0)).max(1.0) as u64,
    );
    let t = xl_plugin::local::trace::record(g.workload, g.pages, g.seed, skip, accesses, ns)?;
    t.write_file(path)?;
    eprintln!(
        "trace: {} accesses, {ns} ns each, written to {}",
        t.len(),
        path.display()
    );
    Ok(())
}

fn calibrate(trace: &std::path::Path, report: &std::path::Path) -> Result<ExitCode> {
    use postcopy_sim::calibrate::{calibrate, Measured};
    let json =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let v: serde_json::Value = serde_json::from_str(&json).context("the report is not JSON")?;
    let measured = Measured::from_json(&json)?;
    let mut t = postcopy_sim::trace::Trace::read_file(trace)?;
    let strategy = xl_plugin::options::parse_strategy(
        v.get("prepage")
            .and_then(|p| p.as_str())
            .unwrap_or("bubble"),
    )
    .map_err(anyhow::Error::msg)?;
    // This machine and this run as the model: the vCPU at its post-copy
    // speed (preempted and woken as its stall log shows), faults at their
    // mean cost, the link at the push's rate.
    let fitted = postcopy_sim::calibrate::Fitted::from_report(&v)?;
    print!("{fitted}");
    t.ns_per_access = fitted.ns_per_access;
    let cfg = postcopy_sim::SimConfig {
        strategy,
        net: fitted.net(),
        ..Default::default()
    };
    let balloon = v
        .get("balloon")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let pages = v
        .get("guest_pages")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(t.guest_pfns);
    let ws = v
        .get("working_set_pages")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let base = if balloon { ws } else { pages };
    let (cal, sim) = calibrate(t, base, &cfg, &fitted.sched(), &measured)?;
    println!("{sim}");
    if fitted.stalls.is_some() {
        println!(
            "(simulated network faults: the mean of {} replays, the fault waits drawn)",
            postcopy_sim::calibrate::REPLAYS
        );
    }
    print!("{cal}");
    Ok(if cal.within_tolerance {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

fn main() -> Result<ExitCode> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Local(args) => local(&args),
        Cmd::Send { to, run, link } => match xl_plugin::local::session::run_sender_with(
            to,
            &run.guest()?,
            &run.migrate()?,
            &LinkOpts {
                fault_nice: run.fault_nice.0,
                ..link.opts()?
            },
        ) {
            Ok(report) => {
                print_report(&report, run.json)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(exit_for(&e)),
        },
        Cmd::Receive {
            listen,
            tail,
            accept_timeout,
            fault_nice,
            link,
        } => {
            let link = LinkOpts {
                accept_timeout: secs(accept_timeout, "accept-timeout")?,
                fault_nice: fault_nice.0,
                ..link.opts()?
            };
            if !listen.ip().is_loopback() && link.token.is_none() {
                bail!("refusing to listen on {listen} without --token-file: only loopback is safe unauthenticated");
            }
            let listener =
                TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
            let mut out = std::io::stdout();
            writeln!(out, "LISTEN {}", listener.local_addr()?)?;
            out.flush()?;
            match xl_plugin::local::session::run_receiver_with(
                &listener,
                secs(tail, "tail")?,
                &link,
            ) {
                Ok(summary) => {
                    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(exit_for(&e)),
            }
        }
        Cmd::Bench(b) if b.encrypt => {
            let runs = usize::try_from(b.runs)?;
            let rows = xl_plugin::bench::seal_cost(&b.sizes, runs).context("streaming")?;
            std::fs::create_dir_all(&b.out)?;
            std::fs::write(
                b.out.join("encrypt.json"),
                serde_json::to_string_pretty(&rows)?,
            )?;
            print!("{}", xl_plugin::bench::seal_table(&rows, runs));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench(b) => {
            let exe = std::env::current_exe().context("locating this program")?;
            let opts = xl_plugin::bench::BenchOpts {
                sizes: b.sizes,
                workloads: b.workloads.iter().map(|w| w.to_string()).collect(),
                strategies: b.strategies.iter().map(|s| s.to_string()).collect(),
                baselines: !b.no_baselines,
                runs: usize::try_from(b.runs)?,
                out: b.out.clone(),
                extra: vec![
                    format!("--warmup={}", b.warmup),
                    format!("--fault-nice={}", b.fault_nice),
                ],
                floors: !b.no_floors,
            };
            let rows = xl_plugin::bench::run(&exe, &opts).map_err(anyhow::Error::msg)?;
            print!("{}", xl_plugin::bench::table(&rows));
            println!("\nwritten: {}/bench.json, bench.md, *.svg", b.out.display());
            let bad = rows
                .iter()
                .any(|r| !r.integrity_ok || r.pages_duplicate_max != 0);
            Ok(if bad {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Simulate {
            experiment,
            list,
            quick,
            out,
            json,
        } => {
            if list {
                for e in postcopy_sim::experiments::EXPERIMENTS {
                    println!("{:<14} {}", e.name, e.about);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let name = experiment.context("--experiment is required")?;
            let opts = postcopy_sim::experiments::ExperimentOptions {
                out_dir: Some(out),
                quick,
                ..Default::default()
            };
            let r = postcopy_sim::experiments::run_experiment(&name, &opts)?;
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tunnel(t) => Ok(ExitCode::from(t.run()?)),
        Cmd::Recover(r) => {
            println!("{}", r.run()?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Calibrate { trace, report } => calibrate(&trace, &report),
        Cmd::Status {
            domain,
            file,
            dir,
            json,
        } => {
            let (path, st) = match (domain, file) {
                (_, Some(f)) => {
                    let st = xl_plugin::status::read_status(&f)?;
                    (f, st)
                }
                (Some(d), None) => xl_plugin::status::status_of_domain(&d, &status_dir(dir))?,
                (None, None) => bail!("name a domain or --file"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", xl_plugin::status::render(&st));
                println!("{:<18} {}", "from", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Switch { domain, dir } => {
            let path = xl_plugin::status::request_switch(&domain, &status_dir(dir))?;
            println!(
                "switch requested ({}): a hybrid migration of {domain} switches to post-copy at its next pre-copy step",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rtt { serve: true, .. } => {
            xl_plugin::bench::serve_rtt(std::io::stdin().lock(), std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rtt {
            count, json, via, ..
        } => {
            let exe = std::env::current_exe().context("locating this program")?;
            let rtt = xl_plugin::bench::pipe_rtt(&exe, count.max(1), via.as_deref())
                .context("timing round trips")?;
            if json {
                println!("{}", serde_json::to_string(&rtt)?);
            } else {
                println!("{rtt}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Strategies => {
            for s in postcopy::prepage::StrategySpec::ALL {
                println!("{s}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The Xen helpers' status folder: `--dir`, else `$XEN_POSTCOPY_STATUS_DIR`,
/// else /run/xen-postcopy.
fn status_dir(dir: Option<std::path::PathBuf>) -> std::path::PathBuf {
    dir.or_else(|| std::env::var_os("XEN_POSTCOPY_STATUS_DIR").map(Into::into))
        .unwrap_or_else(|| xl_plugin::status::DEFAULT_STATUS_DIR.into())
}
