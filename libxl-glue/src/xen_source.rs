//! The source-side Xen backend: the suspended (or, in hybrid mode, still
//! running) domain's memory through libxenctrl and xenforeignmemory.
//!
//! | engine need | Xen call |
//! |---|---|
//! | size | `xc_domain_maximum_gpfn` |
//! | populated pfns | `xc_get_pfn_type_batch`, 1024 pfns a call; XTAB (unpopulated, ballooned out), XALLOC and BROKEN are skipped |
//! | populated pfns, out of the downtime | [`Prescan`]: the above while the guest runs with log-dirty mode on, then at the stop only the pfns the log names |
//! | read pages | `xenforeignmemory_map` (read-only) of up to 1024 pfns a call, copy, unmap; once the domain is stopped, mappings of 512-pfn chunks kept until the end ([`XenSource::stopped`]) |
//! | dirty log | `xc_logdirty_control` (ENABLE_LOGDIRTY / CLEAN / OFF) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use postcopy::memory::{runs_from_sorted, MemResult, MemoryError, PfnRun, SourceMemory};
use postcopy::{Pfn, PAGE_SIZE};

use crate::xc::{has_content, XcError, XenOps, MAX_BATCH};

/// Maps a wrapper error to the engine's memory error.
pub fn mem_err(e: XcError) -> MemoryError {
    match e {
        XcError::NoDomain { op } => MemoryError::GuestGone(format!("{op}: the domain is gone")),
        XcError::PagingUnavailable { op, why } => MemoryError::Unsupported {
            what: op,
            why: why.to_string(),
        },
        other => MemoryError::Backend {
            errno: Some(other.errno()),
            source: Box::new(other),
        },
    }
}

/// Environment switch: `per-call` maps and unmaps the pages of every read
/// even while the domain is stopped (as before kept mappings; to compare
/// the two on one host).
pub const READ_ENV: &str = "LIBXL_POSTCOPY_READ";

/// A source domain's memory.
#[derive(Debug)]
pub struct XenSource<O: XenOps> {
    ops: Arc<O>,
    pfns: u64,
    logdirty: bool,
    /// The domain stays stopped while this reads it: reads may use kept
    /// mappings ([`XenOps::read_pages_kept`]).
    stopped: bool,
}

impl<O: XenOps> XenSource<O> {
    /// The memory of `ops`' domain; sizes it with `xc_domain_maximum_gpfn`.
    pub fn new(ops: Arc<O>) -> MemResult<XenSource<O>> {
        let max = ops.maximum_gpfn().map_err(mem_err)?;
        Ok(XenSource {
            ops,
            pfns: max + 1,
            logdirty: false,
            stopped: false,
        })
    }

    /// The memory of a domain that stays stopped (suspended or paused)
    /// for as long as this reads it: the source after its stop. Its reads
    /// keep their mappings ([`XenOps::read_pages_kept`]) unless
    /// [`READ_ENV`] is `per-call`.
    pub fn stopped(ops: Arc<O>) -> MemResult<XenSource<O>> {
        let mut mem = XenSource::new(ops)?;
        mem.stopped = !std::env::var(READ_ENV).is_ok_and(|v| v.trim() == "per-call");
        Ok(mem)
    }

    /// The wrappers.
    pub fn ops(&self) -> &Arc<O> {
        &self.ops
    }

    /// The populated pfns among `[from, to)`, sorted.
    pub fn populated_in(&self, from: Pfn, to: Pfn) -> MemResult<Vec<Pfn>> {
        self.populated_among(from..to)
    }

    /// The populated pfns among `pfns` (in their order), asked
    /// [`MAX_BATCH`] at a time.
    pub fn populated_among(&self, pfns: impl IntoIterator<Item = Pfn>) -> MemResult<Vec<Pfn>> {
        let mut out = Vec::new();
        let mut pfns = pfns.into_iter().peekable();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while pfns.peek().is_some() {
            batch.clear();
            batch.extend(pfns.by_ref().take(MAX_BATCH));
            let types = self.ops.pfn_types(&batch).map_err(mem_err)?;
            out.extend(
                batch
                    .iter()
                    .zip(&types)
                    .filter(|(_, &t)| has_content(t))
                    .map(|(&p, _)| p),
            );
        }
        Ok(out)
    }
}

/// The populated pfns found while the guest still ran, after libxenguest
/// turned log-dirty mode on (`libxl_postcopy_save_prescan`). At the stop
/// [`Prescan::at_stop`] asks again only about the pfns the dirty log names:
/// with the hypervisor's `xen-logdirty-p2m-changes` every pfn written,
/// populated or freed since log-dirty mode went on is in it, so the
/// prescan's answer for every other pfn still holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prescan {
    /// The pfns looked at: `[0, pfns)`.
    pub pfns: u64,
    /// The populated ones, sorted.
    pub populated: Vec<Pfn>,
    /// How long the scan took (the guest ran meanwhile).
    pub took: Duration,
}

/// What [`Prescan::at_stop`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtStop {
    /// The populated pfns at the stop, sorted.
    pub populated: Vec<Pfn>,
    /// How many pfns were asked again (the log's, and any beyond the
    /// prescan or the log).
    pub asked: u64,
}

impl Prescan {
    /// Scans `mem`'s domain (log-dirty mode must already be on).
    pub fn run<O: XenOps>(mem: &XenSource<O>) -> MemResult<Prescan> {
        let t = Instant::now();
        let pfns = mem.pfn_count();
        let populated = mem.populated_in(0, pfns)?;
        Ok(Prescan {
            pfns,
            populated,
            took: t.elapsed(),
        })
    }

    /// The populated pfns of the stopped domain: the prescan's, except that
    /// every pfn the log (`words`, `nbits` bits, collected at the stop)
    /// names is asked again, and so is every pfn the prescan and the log do
    /// not both cover, up to the domain's size now. A pfn of the prescan
    /// beyond that size is dropped.
    pub fn at_stop<O: XenOps>(
        &self,
        mem: &XenSource<O>,
        words: &[u64],
        nbits: u64,
    ) -> MemResult<AtStop> {
        let n = mem.pfn_count();
        let in_words = u64::try_from(words.len()).map_or(u64::MAX, |w| w.saturating_mul(64));
        let covered = self.pfns.min(nbits).min(in_words).min(n);
        let mut ask = bitmap_pfns(words, covered);
        ask.extend(covered..n);
        let now = mem.populated_among(ask.iter().copied())?;
        // The prescan's pfns below `covered` that were not asked, then the
        // answers: both sorted, `ask` too.
        let mut out = Vec::with_capacity(self.populated.len() + now.len());
        let mut j = 0;
        for &p in self.populated.iter().take_while(|&&p| p < covered) {
            while ask.get(j).is_some_and(|&a| a < p) {
                j += 1;
            }
            if ask.get(j) != Some(&p) {
                out.push(p);
            }
        }
        out.extend(now);
        out.sort_unstable();
        Ok(AtStop {
            populated: out,
            asked: ask.len() as u64,
        })
    }
}

impl<O: XenOps> SourceMemory for XenSource<O> {
    fn pfn_count(&self) -> u64 {
        self.pfns
    }

    fn populated(&self) -> MemResult<Vec<PfnRun>> {
        Ok(runs_from_sorted(self.populated_in(0, self.pfns)?))
    }

    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> MemResult<()> {
        if out.len() != pfns.len() * PAGE_SIZE {
            return Err(MemoryError::Os {
                op: format!("read {} pages into {} bytes", pfns.len(), out.len()),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        if let Some(&p) = pfns.iter().find(|&&p| p >= self.pfns) {
            return Err(MemoryError::OutOfRange {
                pfn: p,
                pfns: self.pfns,
            });
        }
        for (chunk, buf) in pfns
            .chunks(MAX_BATCH)
            .zip(out.chunks_mut(MAX_BATCH * PAGE_SIZE))
        {
            if self.stopped {
                self.ops.read_pages_kept(chunk, buf).map_err(mem_err)?;
            } else {
                self.ops.read_pages(chunk, buf).map_err(mem_err)?;
            }
        }
        Ok(())
    }

    fn enable_dirty_log(&mut self) -> MemResult<()> {
        self.ops.logdirty_enable().map_err(mem_err)?;
        self.logdirty = true;
        // Start from a clean log: CLEAN once and drop what it returns.
        self.take_dirty().map(|_| ())
    }

    fn take_dirty(&mut self) -> MemResult<Vec<Pfn>> {
        if !self.logdirty {
            return Err(MemoryError::Unsupported {
                what: "read the dirty log",
                why: "log-dirty mode is not enabled".into(),
            });
        }
        let words =
            usize::try_from(self.pfns.div_ceil(64)).map_err(|_| MemoryError::OutOfRange {
                pfn: self.pfns,
                pfns: self.pfns,
            })?;
        let mut bitmap = vec![0u64; words];
        self.ops
            .logdirty_clean(&mut bitmap, self.pfns)
            .map_err(mem_err)?;
        Ok(bitmap_pfns(&bitmap, self.pfns))
    }
}

impl<O: XenOps> Drop for XenSource<O> {
    fn drop(&mut self) {
        if self.logdirty {
            if let Err(e) = self.ops.logdirty_disable() {
                log::warn!("could not turn log-dirty mode off: {e}");
            }
        }
    }
}

/// The set bits of a bitmap of `nbits` bits, as sorted pfns.
pub fn bitmap_pfns(words: &[u64], nbits: u64) -> Vec<Pfn> {
    let mut out = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            let bit = u64::from(w.trailing_zeros());
            let pfn = i as u64 * 64 + bit;
            if pfn >= nbits {
                return out;
            }
            out.push(pfn);
            w &= w - 1;
        }
    }
    out
}
