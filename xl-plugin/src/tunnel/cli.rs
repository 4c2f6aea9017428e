//! The `xl-postcopy tunnel connect|listen` command line.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use log::info;

use super::relay::{Config, Stats};
use super::{run_dialer, run_listener, summary, DialOpts, ListenOpts, TunnelError};
use crate::auth::Token;

/// `xl-postcopy tunnel …`.
#[derive(Subcommand, Debug)]
pub enum TunnelCmd {
    /// Source end: relay stdin/stdout to a listening end (use as the
    /// command of `xl migrate -s ''`; a non-loopback one needs
    /// --token-file).
    Connect {
        /// The listening end.
        addr: SocketAddr,
        /// Seconds to keep trying the first connection.
        #[arg(long, default_value_t = 30.0)]
        connect_timeout: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Destination end: wait for one session and run COMMAND with its
    /// stdin and stdout on the tunnel; exit with COMMAND's status.
    Listen {
        /// Address to listen on (a non-loopback one needs --token-file).
        addr: SocketAddr,
        /// Seconds to wait for the first connection (0: for ever).
        #[arg(long, value_name = "SECONDS",
              default_value_t = crate::local::session::DEFAULT_ACCEPT_TIMEOUT.as_secs_f64())]
        accept_timeout: f64,
        /// Write the bound address here once listening (for port 0).
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
        /// The command, e.g. `xl migrate-receive --postcopy`.
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

/// Options of both ends.
#[derive(Args, Debug)]
pub struct Common {
    /// Shared secret for the mutual challenge–response (both ends).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds a broken link may stay down before the session fails.
    #[arg(long, default_value_t = 120.0)]
    recover_timeout: f64,
    /// Seconds without a frame (PINGs come every second) before a link
    /// counts as broken.
    #[arg(long, default_value_t = 10.0)]
    silence: f64,
    /// Most unacknowledged bytes kept for resending, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    buffer_mib: u64,
    /// Write the session's counters here as JSON.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
}

fn secs(name: &str, v: f64) -> Result<Duration, TunnelError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| TunnelError::Fatal(format!("--{name}={v}: not a number of seconds")))
}

impl Common {
    fn config(&self) -> Result<Config, TunnelError> {
        let silence = secs("silence", self.silence)?;
        if silence < Duration::from_secs(2) {
            return Err(TunnelError::Fatal(
                "--silence below 2 s would break idle links between PINGs".into(),
            ));
        }
        Ok(Config {
            buffer: usize::try_from(self.buffer_mib << 20).unwrap_or(usize::MAX),
            silence,
            recover_timeout: secs("recover-timeout", self.recover_timeout)?,
            ..Config::default()
        })
    }

    /// The token; required unless `addr` is loopback (`doing` says what
    /// would happen without one).
    fn token_for(&self, addr: SocketAddr, doing: &str) -> Result<Option<Token>, TunnelError> {
        let token = self
            .token_file
            .as_deref()
            .map(Token::from_file)
            .transpose()?;
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(TunnelError::Fatal(format!(
                "{doing} {addr} without proof of who is at the other end: give --token-file"
            )));
        }
        Ok(token)
    }

    fn report(&self, stats: &Stats) -> Result<(), TunnelError> {
        eprintln!("{}", summary(stats));
        if let Some(p) = &self.stats {
            let json = serde_json::to_string_pretty(stats)
                .map_err(|e| TunnelError::Fatal(format!("cannot encode the counters: {e}")))?;
            std::fs::write(p, json + "\n")?;
        }
        Ok(())
    }
}

impl TunnelCmd {
    /// Runs this end; returns the process exit code.
    pub fn run(&self) -> Result<u8, TunnelError> {
        match self {
            TunnelCmd::Connect {
                addr,
                connect_timeout,
                common,
            } => {
                let token = common.token_for(*addr, "sending guest memory to")?;
                let opts = DialOpts {
                    addr: *addr,
                    token,
                    cfg: common.config()?,
                    connect_timeout: secs("connect-timeout", *connect_timeout)?,
                };
                let stats = run_dialer(
                    &opts,
                    Box::new(std::io::stdin()),
                    Box::new(std::io::stdout()),
                )?;
                common.report(&stats)?;
                Ok(0)
            }
            TunnelCmd::Listen {
                addr,
                accept_timeout,
                ready_file,
                common,
                command,
            } => {
                let token = common.token_for(*addr, "accepting guest memory on")?;
                let listener = TcpListener::bind(addr)?;
                let bound = listener.local_addr()?;
                info!("tunnel: listening on {bound}");
                if let Some(f) = ready_file {
                    let mut w = std::fs::File::create(f)?;
                    writeln!(w, "{bound}")?;
                }
                let opts = ListenOpts {
                    token,
                    cfg: common.config()?,
                    accept_timeout: Some(secs("accept-timeout", *accept_timeout)?)
                        .filter(|d| !d.is_zero()),
                };
                let (stats, status) = run_listener(&listener, &opts, command)?;
                common.report(&stats)?;
                let code = status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1);
                Ok(u8::try_from(code).unwrap_or(1))
            }
        }
    }
}
