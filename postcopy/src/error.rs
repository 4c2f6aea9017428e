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
    #[error("link lost after the switch ({cause}) and not restored within {waited_ms} ms ({last}); {missing} owed pages are not confirmed at the destination, the guest cannot continue")]
    LinkLost {
        /// What broke the link: a closed or silent peer, or a peer that
        /// broke the protocol (which the link is dropped for).
        cause: String,
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
    /// The peer said nothing for longer than a wait's bound (a silent or
    /// stalled peer, or a link that drops packets without closing).
    #[error("timed out: the {peer} sent no {waiting_for} within {after_ms} ms")]
    Timeout {
        /// Which side was silent.
        peer: &'static str,
        /// What was awaited.
        waiting_for: &'static str,
        /// The bound.
        after_ms: u64,
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
    /// before its last page arrived (reported by the adapter's watch). Its
    /// text starts with [`GUEST_DIED`], which is how the source tells a
    /// death from other failures in the ABORT reason
    /// ([`DestinationCause::of_reason`]).
    #[error("{GUEST_DIED}{0}")]
    GuestDied(String),
    /// The destination failed after the switch and said why (ABORT after
    /// RESUMED): the guest belongs to it, so the source keeps its copy
    /// stopped.
    #[error("destination failed after the switch: {reason}")]
    DestinationFailed {
        /// What kind of failure the reason reports.
        cause: DestinationCause,
        /// The destination's words (its error's text).
        reason: String,
    },
}

/// How every [`Error::GuestDied`] text starts, on the wire (the ABORT
/// reason after the switch is the destination error's text) and in logs.
pub const GUEST_DIED: &str = "guest died on the destination during post-copy: ";

/// What failed at the destination after the switch, as the source learns
/// it from the ABORT reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationCause {
    /// The guest died there ([`Error::GuestDied`] at the destination).
    GuestDied,
    /// Anything else (memory, threads, protocol, ...).
    Other,
}

impl DestinationCause {
    /// The cause an ABORT reason reports: the destination sends its error's
    /// text, so a guest death starts with [`GUEST_DIED`].
    pub fn of_reason(reason: &str) -> DestinationCause {
        if reason.starts_with(GUEST_DIED) {
            DestinationCause::GuestDied
        } else {
            DestinationCause::Other
        }
    }
}

impl Error {
    /// [`Error::DestinationFailed`] with the cause its reason reports.
    pub fn destination_failed(reason: String) -> Error {
        Error::DestinationFailed {
            cause: DestinationCause::of_reason(&reason),
            reason,
        }
    }

    /// True if the guest died on the destination: there
    /// ([`Error::GuestDied`]) or as the destination reported it to the
    /// source.
    pub fn is_guest_death(&self) -> bool {
        matches!(
            self,
            Error::GuestDied(_)
                | Error::DestinationFailed {
                    cause: DestinationCause::GuestDied,
                    ..
                }
        )
    }

    /// True if a fresh connection may cure the failure (the link broke or
    /// timed out), as opposed to a peer that broke the protocol.
    pub fn is_recoverable(&self) -> bool {
        self.is_disconnect() || matches!(self, Error::Record(RecordError::Io(_)))
    }

    /// True if the peer broke the protocol: a malformed, unexpected or
    /// undeliverable record, a page sent twice or never owed, a fault
    /// flood. After the switch this is handled like a broken link (the
    /// link is dropped and recovered, [`crate::recovery`]): a stream
    /// corrupted on its way must not lose the guest.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Error::Record(r) => !matches!(
                r,
                RecordError::Io(_) | RecordError::Closed | RecordError::Truncated { .. }
            ),
            Error::Protocol(_) | Error::Flood(_) => true,
            _ => false,
        }
    }

    /// True if, after the switch, the failure is worth a new connection:
    /// the link broke or timed out ([`Self::is_recoverable`]) or the peer
    /// broke the protocol ([`Self::is_peer_fault`]).
    pub fn is_link_failure(&self) -> bool {
        self.is_recoverable() || self.is_peer_fault()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_death_is_recognised_in_the_abort_reason() {
        // The destination sends its error's text as the ABORT reason.
        let died = Error::GuestDied("domain 2: shutdown reason crash (3)".into());
        assert!(died.is_guest_death());
        let told = Error::destination_failed(died.to_string());
        assert!(matches!(
            told,
            Error::DestinationFailed {
                cause: DestinationCause::GuestDied,
                ..
            }
        ));
        assert!(told.is_guest_death());
        assert!(
            told.to_string().contains("shutdown reason crash (3)"),
            "{told}"
        );
        let other = Error::destination_failed("out of memory".into());
        assert!(matches!(
            other,
            Error::DestinationFailed {
                cause: DestinationCause::Other,
                ..
            }
        ));
        assert!(!other.is_guest_death());
        assert!(!Error::PeerAborted(died.to_string()).is_guest_death());
    }
}

/// An I/O error in words: a socket timeout (`WouldBlock`, which Linux
/// reports as `os error 11`, or `TimedOut`) says it timed out, a short
/// read says the peer closed the connection, a reset says so; anything
/// else keeps the system's text.
pub fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        // A worded timeout (transport::Silence) keeps its words.
        K::TimedOut if e.get_ref().is_some() => e.to_string(),
        K::WouldBlock | K::TimedOut => "timed out: the peer sent nothing in time".into(),
        K::UnexpectedEof => "the peer closed the connection in the middle of a message".into(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            "the peer closed the connection".into()
        }
        K::ConnectionRefused => "nothing listens there (connection refused)".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod io_words_tests {
    use super::io_words;
    use std::io::{Error, ErrorKind};

    #[test]
    fn timeouts_and_short_reads_are_worded() {
        let t = io_words(&Error::from(ErrorKind::WouldBlock));
        assert!(t.contains("timed out") && !t.contains("os error"), "{t}");
        let t = io_words(&Error::from_raw_os_error(11));
        assert!(t.contains("timed out") && !t.contains("os error"), "{t}");
        let t = io_words(&Error::from(ErrorKind::UnexpectedEof));
        assert!(
            t.contains("closed") && !t.contains("fill whole buffer"),
            "{t}"
        );
        let t = io_words(&Error::new(
            ErrorKind::TimedOut,
            "the source sent nothing for 2.0 s",
        ));
        assert_eq!(t, "the source sent nothing for 2.0 s");
    }
}
