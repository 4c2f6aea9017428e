//! Everything an admin types or reads: the `--postcopy` / `--prepage=` /
//! `--postcopy-after=` options (one source of truth for strategy names is
//! [`postcopy::prepage::StrategySpec`]), the help text, the metrics report,
//! and local mode — a real migration of a live mini-VM between two
//! processes over TCP with userfaultfd ([`local`]) — and the resumable
//! transport for `xl migrate` on real Xen ([`tunnel`]); both authenticate
//! their connections with the shared-token handshake of [`auth`].

pub mod auth;
pub mod bench;
pub mod local;
pub mod options;
pub mod seal;
pub mod status;
pub mod tunnel;
pub mod vetting;
