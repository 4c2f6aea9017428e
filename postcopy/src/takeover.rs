//! Replacing a destination that died after the switch.
//!
//! After TRANSITION the destination's process is the guest's only pager:
//! if it dies, nothing serves the guest's accesses to absent pages. Its
//! memory and the source's copy survive it, and the source waits in its
//! recovery window ([`crate::recovery`]); what dies with the process is the
//! received-map and the owed set. A replacement cannot rebuild the owed
//! set from the guest (absent pages and pages never sent look alike), so
//! the destination keeps it in a small file at the switch
//! ([`crate::destination::DestConfig::owed_file`], written before READY,
//! removed when serving completes): the guest size, whether the source
//! asked for ACKs, and the owed runs.
//!
//! A replacement starts from that file
//! ([`crate::destination::DestSession::take_over`]) and holds nothing:
//! its RECOVER handshake lists no page, so the source resends every page
//! it sent and pushes the rest. A page the dead destination had installed
//! comes again; the backend must refuse it without touching the page (on
//! Xen the load of a page that is no longer paged out fails with ENOENT:
//! [`crate::memory::Installed::AlreadyPresent`]), so what the guest wrote
//! since stays.
//!
//! File layout (little endian): the magic `XPCOWED1`, the guest size in
//! pfns (u64), flags (u64; bit 0: ACKs), the number of runs (u64), then
//! each run as start and count (u64 each): ascending, disjoint, non-empty
//! and inside the guest.

use std::io;
use std::path::{Path, PathBuf};

use crate::memory::PfnRun;

const MAGIC: &[u8; 8] = b"XPCOWED1";
const HEADER: usize = 32;
const RUN: usize = 16;
/// Flag bit: the source asked for ACKs of the forward stream.
const FLAG_ACKS: u64 = 1;
/// The largest guest a file may describe: the engine indexes pfns with
/// u32 (16 TiB of guest), as the restore side's check of BEGIN says; the
/// replacement sizes its bitmaps by it.
pub const MAX_GUEST_PFNS: u64 = u32::MAX as u64 - 1;

/// Why an owed-set file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwedSetError {
    /// Shorter than the header, or another magic.
    #[error("no owed-set header")]
    NoHeader,
    /// A guest size of 0 or past [`MAX_GUEST_PFNS`].
    #[error("a guest of {0} pfns (1..={MAX_GUEST_PFNS})")]
    GuestSize(u64),
    /// Flag bits this version does not know.
    #[error("unknown flags {0:#x}")]
    Flags(u64),
    /// The length does not match the run count.
    #[error("{bytes} bytes for {runs} runs")]
    Length {
        /// The file's length.
        bytes: usize,
        /// The runs its header claims.
        runs: u64,
    },
    /// A run empty, out of order or past the guest.
    #[error("run {index} ({start:#x}+{count}) is empty, out of order or outside a guest of {guest_pfns} pfns")]
    Run {
        /// Its index.
        index: usize,
        /// Its first pfn.
        start: u64,
        /// Its length.
        count: u64,
        /// The guest's size.
        guest_pfns: u64,
    },
}

/// What a replacement destination needs of the one it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwedSet {
    /// Guest size in pfns.
    pub guest_pfns: u64,
    /// The source asked for ACKs of the forward stream.
    pub acks: bool,
    /// The pfns owed at the switch: ascending, disjoint runs.
    pub runs: Vec<PfnRun>,
}

impl OwedSet {
    /// Pages owed.
    pub fn count(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + RUN * self.runs.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.guest_pfns.to_le_bytes());
        b.extend_from_slice(&(if self.acks { FLAG_ACKS } else { 0 }).to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.start.to_le_bytes());
            b.extend_from_slice(&r.count.to_le_bytes());
        }
        b
    }

    /// Parses and checks the file's bytes.
    pub fn decode(b: &[u8]) -> Result<OwedSet, OwedSetError> {
        let word = |at: usize| -> u64 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err(OwedSetError::NoHeader);
        }
        let guest_pfns = word(8);
        let flags = word(16);
        let n = word(24);
        if guest_pfns == 0 || guest_pfns > MAX_GUEST_PFNS {
            return Err(OwedSetError::GuestSize(guest_pfns));
        }
        if flags & !FLAG_ACKS != 0 {
            return Err(OwedSetError::Flags(flags));
        }
        let want = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(RUN))
            .and_then(|l| l.checked_add(HEADER));
        if want != Some(b.len()) {
            return Err(OwedSetError::Length {
                bytes: b.len(),
                runs: n,
            });
        }
        let mut runs = Vec::with_capacity(b.len() / RUN);
        let mut next = 0u64;
        for i in 0..b.len().saturating_sub(HEADER) / RUN {
            let (start, count) = (word(HEADER + RUN * i), word(HEADER + RUN * i + 8));
            let end = start.saturating_add(count);
            if count == 0 || start < next || end > guest_pfns {
                return Err(OwedSetError::Run {
                    index: i,
                    start,
                    count,
                    guest_pfns,
                });
            }
            next = end;
            runs.push(PfnRun { start, count });
        }
        Ok(OwedSet {
            guest_pfns,
            acks: flags & FLAG_ACKS != 0,
            runs,
        })
    }

    /// Writes the file at `path` (through a temporary file and a rename,
    /// so a reader never sees half of it), readable by this user only.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("owed.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&self.encode())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the file at `path`.
    pub fn read(path: &Path) -> io::Result<OwedSet> {
        let b = std::fs::read(path)?;
        OwedSet::decode(&b).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        })
    }
}

/// Where the destination of `domid`'s migration keeps its owed set, in
/// the status folder `dir` (beside its control socket,
/// [`crate::handover::control_path`]).
pub fn owed_path(dir: &Path, domid: u32) -> PathBuf {
    dir.join(format!("{domid}.owed"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn set() -> OwedSet {
        OwedSet {
            guest_pfns: 100,
            acks: true,
            runs: vec![
                PfnRun { start: 0, count: 3 },
                PfnRun {
                    start: 10,
                    count: 90,
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("pc-owed-{}", std::process::id()));
        let path = owed_path(&dir, 7);
        set().write(&path).unwrap();
        let back = OwedSet::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(back, set());
        assert_eq!(back.count(), 93);
        let empty = OwedSet {
            guest_pfns: 5,
            ..OwedSet::default()
        };
        assert_eq!(OwedSet::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let good = set().encode();
        // Truncated, extended, wrong magic, unknown flag.
        assert!(OwedSet::decode(&good[..good.len() - 1]).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(OwedSet::decode(&long).is_err());
        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(OwedSet::decode(&magic).is_err());
        let mut flags = good.clone();
        flags[16] |= 2;
        assert!(OwedSet::decode(&flags).is_err());
        // Runs overlapping, out of the guest, empty.
        for runs in [
            vec![PfnRun { start: 0, count: 3 }, PfnRun { start: 2, count: 1 }],
            vec![PfnRun {
                start: 99,
                count: 2,
            }],
            vec![PfnRun { start: 4, count: 0 }],
            vec![PfnRun {
                start: u64::MAX,
                count: 2,
            }],
        ] {
            let bad = OwedSet {
                guest_pfns: 100,
                acks: false,
                runs,
            };
            assert!(OwedSet::decode(&bad.encode()).is_err(), "{bad:?}");
        }
        // A guest of no pfns, or too large to size a bitmap by.
        for g in [0, MAX_GUEST_PFNS + 1, u64::MAX] {
            let mut b = good.clone();
            b[8..16].copy_from_slice(&g.to_le_bytes());
            assert_eq!(OwedSet::decode(&b), Err(OwedSetError::GuestSize(g)));
        }
        // A count that would overflow the length computation.
        let mut huge = good;
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(OwedSet::decode(&huge).is_err());
    }
}
