//! The engine's error type.

use crate::memory::MemoryError;
use crate::records::RecordError;
use crate::sentmap::SentMapError;

/// Boxed error from a caller-supplied hook (guest control).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Why a migration (or one side of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed, unexpected or undeliverable record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The memory backend failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest is too large to track.
    #[error(transparent)]
    Size(#[from] SentMapError),
    /// The peer broke the protocol in a way no single record shows.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Stopping, resuming or handing over the guest failed.
    #[error("guest control failed while trying to {what}: {source}")]
    Guest {
        /// What was being done.
        what: &'static str,
        /// The hook's error.
        #[source]
        source: HookError,
    },
    /// The destination gave up before resuming the guest.
    #[error("destination aborted before resuming the guest: {0}")]
    PeerAborted(String),
    /// A worker thread panicked (a bug; reported, never propagated).
    #[error("internal error: the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// The link broke after the switch and could not be restored in time:
    /// the guest cannot continue.
    #[error("link lost after the switch and not restored within {waited_ms} ms ({last}); {missing} owed pages are not confirmed at the destination, the guest cannot continue")]
    LinkLost {
        /// How long recovery was attempted.
        waited_ms: u64,
        /// Owed pages the destination does not hold (exact there; on the
        /// source, owed pages the destination never confirmed).
        missing: u64,
        /// Why the last attempt failed.
        last: String,
        /// False only on a source whose destination never confirmed
        /// resuming the guest (the link broke right after TRANSITION): the
        /// guest may never have run there, and the stopped copy here is
        /// intact — a decision for the admin, never taken automatically.
        resumed: bool,
    },
    /// The peer sent faults faster than any guest could (a flood).
    #[error("peer flooded the fault channel: {0}")]
    Flood(String),
    /// The migration was aborted because another thread failed first.
    #[error("aborted after another failure")]
    Aborted,
    /// A worker thread could not be started (a local failure).
    #[error("cannot start the {what} thread: {source}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The caller drove a session out of order (a local bug, never the
    /// peer's doing).
    #[error("{call} called in phase {phase} (expected {expected})")]
    WrongPhase {
        /// The call.
        call: &'static str,
        /// The session's phase.
        phase: &'static str,
        /// The phase the call needs.
        expected: &'static str,
    },
    /// The guest crashed, rebooted or was shut down on the destination
    /// before its last page arrived (reported by the adapter's watch).
    #[error("the guest ended on the destination before the migration completed: {0}")]
    GuestDied(String),
    /// The destination failed after the switch and said why (ABORT after
    /// RESUMED): the guest belongs to it, so the source keeps its copy
    /// stopped.
    #[error("destination failed after the switch: {0}")]
    DestinationFailed(String),
}

impl Error {
    /// True if a fresh connection may cure the failure (the link broke or
    /// timed out), as opposed to a peer that broke the protocol.
    pub fn is_recoverable(&self) -> bool {
        self.is_disconnect() || matches!(self, Error::Record(RecordError::Io(_)))
    }

    /// True if the failure happened here (memory, guest, threads, API
    /// misuse) rather than on the link or at the peer: after the switch the
    /// destination tells the source about these before giving up.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Error::Memory(_)
                | Error::Guest { .. }
                | Error::ThreadPanicked(_)
                | Error::Spawn { .. }
                | Error::WrongPhase { .. }
                | Error::GuestDied(_)
        )
    }

    /// True if the failure is the peer going away (closed or reset link),
    /// as opposed to bad data or a local failure.
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Record(RecordError::Closed) | Error::Record(RecordError::Truncated { .. }) => {
                true
            }
            Error::Record(RecordError::Io(e)) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }
}
