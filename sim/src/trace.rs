//! Page-access traces and their file format.
//!
//! A trace is what a vCPU does, page by page: the sequence of guest pfns it
//! touches (reads or writes), with the compute time spent per access. The
//! simulator replays it on the destination (blocking on absent pages) and on
//! the source during pre-copy (collecting the dirty set). The generators of
//! [`crate::workload`] make traces; local mode records them
//! (`xl-postcopy local --record-trace FILE`).
//!
//! # File format (version 1)
//!
//! All integers little-endian. A 40-byte header, then `count` entries:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PCTRACE1` (ASCII) |
//! | 8 | 4 | version = 1 |
//! | 12 | 4 | flags: bit 0 = `LOOP` (the workload repeats the trace forever); other bits 0 |
//! | 16 | 8 | `guest_pfns`: guest size in 4 KiB pages, 1 ..= 2^40 |
//! | 24 | 8 | `ns_per_access`: compute time per access in ns (0 = unknown; the replayer's default applies) |
//! | 32 | 8 | `count`: number of entries, at most [`MAX_ENTRIES`] |
//! | 40 | 8 × count | entries |
//!
//! An entry is a u64: bits 0–51 the pfn (`< guest_pfns`), bit 63 set for a
//! write, bits 52–62 zero. A recorder should collapse consecutive accesses
//! to the same page into one (the page stays present; only its first touch
//! matters), keeping the write bit if any of them wrote. The file is exactly
//! `40 + 8 × count` bytes: short or long files are errors.
//!
//! [`decode`] validates all of this and returns a typed [`TraceError`] on
//! any bad input (it never panics, whatever the bytes: it is the fuzz entry
//! point).

use std::io::Write;
use std::path::Path;

use postcopy::Pfn;

/// File magic.
pub const MAGIC: [u8; 8] = *b"PCTRACE1";
/// Format version written and accepted.
pub const VERSION: u32 = 1;
/// Header size in bytes.
pub const HEADER_BYTES: usize = 40;
/// Flag: the workload repeats the trace.
pub const FLAG_LOOP: u32 = 1;
/// Largest accepted guest (2^40 pages = 4 PiB).
pub const MAX_GUEST_PFNS: u64 = 1 << 40;
/// Most entries in one file (2^28 = 2 GiB of entries).
pub const MAX_ENTRIES: u64 = 1 << 28;
/// The write bit of an entry.
pub const WRITE_BIT: u64 = 1 << 63;
/// The pfn bits of an entry.
pub const PFN_MASK: u64 = (1 << 52) - 1;

/// A bad trace file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// Shorter than the header.
    #[error("trace is {0} bytes, shorter than its {HEADER_BYTES}-byte header")]
    TooShort(usize),
    /// Wrong magic.
    #[error("not a post-copy trace (bad magic)")]
    BadMagic,
    /// Unknown version.
    #[error("trace version {0} is not supported (expected {VERSION})")]
    BadVersion(u32),
    /// Unknown flag bits.
    #[error("trace has unknown flags {0:#x}")]
    BadFlags(u32),
    /// Guest size out of range.
    #[error("trace guest size {0} pfns is out of range 1..={MAX_GUEST_PFNS}")]
    BadGuestSize(u64),
    /// Entry count too large.
    #[error("trace claims {0} entries (limit {MAX_ENTRIES})")]
    TooManyEntries(u64),
    /// File length does not match the count.
    #[error("trace claims {count} entries ({expected} bytes) but has {actual} bytes")]
    LengthMismatch {
        /// Entries claimed.
        count: u64,
        /// Bytes that count implies.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Reserved bits set in an entry.
    #[error("trace entry {index} has reserved bits set ({raw:#018x})")]
    ReservedBits {
        /// Entry index.
        index: u64,
        /// The raw entry.
        raw: u64,
    },
    /// A pfn outside the guest.
    #[error("trace entry {index}: pfn {pfn:#x} is outside the {guest_pfns}-page guest")]
    PfnOutOfRange {
        /// Entry index.
        index: u64,
        /// The pfn.
        pfn: Pfn,
        /// Guest size.
        guest_pfns: u64,
    },
    /// A trace with no entries cannot be replayed.
    #[error("trace has no entries")]
    Empty,
    /// Reading or writing the file failed.
    #[error("trace file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

/// One access of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The page touched.
    pub pfn: Pfn,
    /// True if the access wrote the page (it becomes dirty).
    pub write: bool,
}

impl Access {
    /// Packs into an entry.
    pub fn encode(self) -> u64 {
        (self.pfn & PFN_MASK) | if self.write { WRITE_BIT } else { 0 }
    }

    /// Unpacks an entry (no validation; see [`decode`]).
    #[inline]
    pub fn decode(raw: u64) -> Access {
        Access {
            pfn: raw & PFN_MASK,
            write: raw & WRITE_BIT != 0,
        }
    }
}

/// A page-access trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Guest size in pages.
    pub guest_pfns: u64,
    /// Compute time per access in ns (0 = unknown).
    pub ns_per_access: u64,
    /// The workload repeats the trace.
    pub looping: bool,
    /// Packed entries (see [`Access::encode`]); validated on construction.
    entries: Vec<u64>,
}

impl Trace {
    /// A trace from accesses; validates like [`decode`].
    pub fn new(
        guest_pfns: u64,
        ns_per_access: u64,
        looping: bool,
        accesses: impl IntoIterator<Item = Access>,
    ) -> Result<Trace, TraceError> {
        let entries: Vec<u64> = accesses.into_iter().map(Access::encode).collect();
        Trace::from_entries(guest_pfns, ns_per_access, looping, entries)
    }

    /// A trace from packed entries; validates like [`decode`].
    pub fn from_entries(
        guest_pfns: u64,
        ns_per_access: u64,
        looping: bool,
        entries: Vec<u64>,
    ) -> Result<Trace, TraceError> {
        if guest_pfns == 0 || guest_pfns > MAX_GUEST_PFNS {
            return Err(TraceError::BadGuestSize(guest_pfns));
        }
        if entries.len() as u64 > MAX_ENTRIES {
            return Err(TraceError::TooManyEntries(entries.len() as u64));
        }
        if entries.is_empty() {
            return Err(TraceError::Empty);
        }
        for (i, &raw) in entries.iter().enumerate() {
            validate_entry(i as u64, raw, guest_pfns)?;
        }
        Ok(Trace {
            guest_pfns,
            ns_per_access,
            looping,
            entries,
        })
    }

    /// Number of accesses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false (an empty trace is rejected).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `i`-th access.
    #[inline]
    pub fn get(&self, i: usize) -> Access {
        Access::decode(self.entries[i])
    }

    /// The packed entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries
    }

    /// Every access in order.
    pub fn iter(&self) -> impl Iterator<Item = Access> + '_ {
        self.entries.iter().map(|&e| Access::decode(e))
    }

    /// The file bytes of this trace.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 8 * self.entries.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.looping { FLAG_LOOP } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.guest_pfns.to_le_bytes());
        out.extend_from_slice(&self.ns_per_access.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.to_le_bytes());
        }
        out
    }

    /// Writes the trace to `path`.
    pub fn write_file(&self, path: &Path) -> Result<(), TraceError> {
        let io = |e: std::io::Error| TraceError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        f.write_all(&self.encode()).map_err(io)?;
        f.flush().map_err(io)
    }

    /// Reads and validates a trace file.
    pub fn read_file(path: &Path) -> Result<Trace, TraceError> {
        let bytes = std::fs::read(path).map_err(|e| TraceError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        decode(&bytes)
    }
}

fn validate_entry(index: u64, raw: u64, guest_pfns: u64) -> Result<(), TraceError> {
    if raw & !(PFN_MASK | WRITE_BIT) != 0 {
        return Err(TraceError::ReservedBits { index, raw });
    }
    let pfn = raw & PFN_MASK;
    if pfn >= guest_pfns {
        return Err(TraceError::PfnOutOfRange {
            index,
            pfn,
            guest_pfns,
        });
    }
    Ok(())
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and validates trace file bytes. Never panics; the fuzz target.
pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
    if bytes.len() < HEADER_BYTES {
        return Err(TraceError::TooShort(bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err(TraceError::BadMagic);
    }
    let version = le_u32(bytes, 8);
    if version != VERSION {
        return Err(TraceError::BadVersion(version));
    }
    let flags = le_u32(bytes, 12);
    if flags & !FLAG_LOOP != 0 {
        return Err(TraceError::BadFlags(flags));
    }
    let guest_pfns = le_u64(bytes, 16);
    if guest_pfns == 0 || guest_pfns > MAX_GUEST_PFNS {
        return Err(TraceError::BadGuestSize(guest_pfns));
    }
    let ns_per_access = le_u64(bytes, 24);
    let count = le_u64(bytes, 32);
    if count > MAX_ENTRIES {
        return Err(TraceError::TooManyEntries(count));
    }
    // count <= 2^28, so this cannot overflow.
    let expected = HEADER_BYTES as u64 + 8 * count;
    if bytes.len() as u64 != expected {
        return Err(TraceError::LengthMismatch {
            count,
            expected,
            actual: bytes.len() as u64,
        });
    }
    if count == 0 {
        return Err(TraceError::Empty);
    }
    let mut entries = Vec::with_capacity(bytes.len() / 8);
    for (i, chunk) in bytes[HEADER_BYTES..].chunks_exact(8).enumerate() {
        let raw = le_u64(chunk, 0);
        validate_entry(i as u64, raw, guest_pfns)?;
        entries.push(raw);
    }
    Ok(Trace {
        guest_pfns,
        ns_per_access,
        looping: flags & FLAG_LOOP != 0,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trace {
        Trace::new(
            100,
            250,
            true,
            [(3, true), (4, false), (99, true)].map(|(pfn, write)| Access { pfn, write }),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let bytes = t.encode();
        assert_eq!(bytes.len(), HEADER_BYTES + 24);
        assert_eq!(&bytes[..8], b"PCTRACE1");
        let back = decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.get(2),
            Access {
                pfn: 99,
                write: true
            }
        );
        assert!(!back.get(1).write);
    }

    #[test]
    fn file_round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("pcsim-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.pctrace");
        sample().write_file(&p).unwrap();
        assert_eq!(Trace::read_file(&p).unwrap(), sample());
        let e = Trace::read_file(&dir.join("nope")).unwrap_err();
        assert!(matches!(e, TraceError::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn patched(f: impl FnOnce(&mut Vec<u8>)) -> TraceError {
        let mut b = sample().encode();
        f(&mut b);
        decode(&b).unwrap_err()
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(decode(&[]), Err(TraceError::TooShort(0)));
        assert_eq!(decode(&[0; 39]), Err(TraceError::TooShort(39)));
        assert_eq!(patched(|b| b[0] = b'X'), TraceError::BadMagic);
        assert_eq!(patched(|b| b[8] = 2), TraceError::BadVersion(2));
        assert_eq!(patched(|b| b[12] = 3), TraceError::BadFlags(3));
        assert_eq!(
            patched(|b| b[16..24].copy_from_slice(&0u64.to_le_bytes())),
            TraceError::BadGuestSize(0)
        );
        assert_eq!(
            patched(|b| b[16..24].copy_from_slice(&u64::MAX.to_le_bytes())),
            TraceError::BadGuestSize(u64::MAX)
        );
        assert_eq!(
            patched(|b| b[32..40].copy_from_slice(&u64::MAX.to_le_bytes())),
            TraceError::TooManyEntries(u64::MAX)
        );
        assert!(matches!(
            patched(|b| b[32] = 4),
            TraceError::LengthMismatch { count: 4, .. }
        ));
        assert!(matches!(
            patched(|b| b.push(0)),
            TraceError::LengthMismatch { actual: 65, .. }
        ));
        assert!(matches!(
            patched(|b| {
                b.truncate(HEADER_BYTES);
                b[32..40].copy_from_slice(&0u64.to_le_bytes());
            }),
            TraceError::Empty
        ));
        assert_eq!(
            patched(|b| b[HEADER_BYTES + 8 + 7] = 0x40),
            TraceError::ReservedBits {
                index: 1,
                raw: 0x4000_0000_0000_0004
            }
        );
        assert_eq!(
            patched(|b| b[HEADER_BYTES + 16] = 100),
            TraceError::PfnOutOfRange {
                index: 2,
                pfn: 100,
                guest_pfns: 100
            }
        );
        assert_eq!(
            Trace::new(
                10,
                0,
                false,
                [Access {
                    pfn: 10,
                    write: false
                }]
            )
            .unwrap_err(),
            TraceError::PfnOutOfRange {
                index: 0,
                pfn: 10,
                guest_pfns: 10
            }
        );
        assert_eq!(Trace::new(10, 0, false, []).unwrap_err(), TraceError::Empty);
    }

    /// Every truncation and every single-byte corruption of a valid file
    /// decodes to Ok or a typed error, never a panic.
    #[test]
    fn decode_never_panics_on_mutations() {
        let good = sample().encode();
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(t) = decode(&b) {
                    assert!(t.iter().all(|a| a.pfn < t.guest_pfns));
                }
            }
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn header(flags: u32, guest: u64, count: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&guest.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b
    }

    proptest! {
        /// Arbitrary bytes: a typed error or a valid trace, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(t) = decode(&bytes) {
                prop_assert!(t.iter().all(|a| a.pfn < t.guest_pfns));
            }
        }

        /// A valid header with arbitrary entries and counts: decoding
        /// accepts exactly the files whose entries are all valid, and
        /// round-trips them.
        #[test]
        fn header_with_arbitrary_entries(
            flags in 0u32..4,
            guest in 0u64..100,
            count_delta in 0u64..3,
            entries in proptest::collection::vec(any::<u64>(), 0..20),
        ) {
            // 0: one short, 1: exact, 2: one long.
            let count = (entries.len() as u64 + count_delta).saturating_sub(1);
            let mut b = header(flags, guest, count);
            for e in &entries {
                b.extend_from_slice(&e.to_le_bytes());
            }
            let valid = flags <= FLAG_LOOP
                && guest > 0
                && count == entries.len() as u64
                && count > 0
                && entries.iter().all(|&e| e & !(PFN_MASK | WRITE_BIT) == 0 && (e & PFN_MASK) < guest);
            match decode(&b) {
                Ok(t) => {
                    prop_assert!(valid);
                    prop_assert_eq!(t.entries(), &entries[..]);
                    prop_assert_eq!(t.encode(), b);
                }
                Err(_) => prop_assert!(!valid),
            }
        }
    }
}
