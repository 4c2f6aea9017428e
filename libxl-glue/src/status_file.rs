//! Where the helpers publish a running migration's status on a Xen host:
//! one JSON file per domain, `<dir>/<domid>.json`, read by `xl-postcopy
//! status` (the engine's [`postcopy::status`] writes it).

use std::path::PathBuf;
use std::sync::Arc;

use postcopy::status::{StatusConfig, StatusFile, DEFAULT_STATUS_INTERVAL};

/// Environment variable naming the status folder.
pub const STATUS_DIR_ENV: &str = "XEN_POSTCOPY_STATUS_DIR";
/// The status folder when [`STATUS_DIR_ENV`] is unset.
pub const DEFAULT_STATUS_DIR: &str = "/run/xen-postcopy";

/// The status folder of this host.
pub fn status_dir() -> PathBuf {
    std::env::var_os(STATUS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATUS_DIR))
}

/// The status publishing of domain `domid` on this host.
pub fn status_config(domid: u32) -> StatusConfig {
    StatusConfig {
        sink: Arc::new(StatusFile::new(status_dir().join(format!("{domid}.json")))),
        domid: Some(domid),
        name: None,
        interval: DEFAULT_STATUS_INTERVAL,
    }
}
