//! The source-side Xen backend: the suspended (or, in hybrid mode, still
//! running) domain's memory through libxenctrl and xenforeignmemory.
//!
//! | engine need | Xen call |
//! |---|---|
//! | size | `xc_domain_maximum_gpfn` |
//! | populated pfns | `xc_get_pfn_type_batch`, 1024 pfns a call; XTAB (unpopulated, ballooned out), XALLOC and BROKEN are skipped |
//! | read pages | `xenforeignmemory_map` (read-only) of up to 1024 pfns a call, copy, unmap |
//! | dirty log | `xc_logdirty_control` (ENABLE_LOGDIRTY / CLEAN / OFF) |

use std::sync::Arc;

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

/// A source domain's memory.
#[derive(Debug)]
pub struct XenSource<O: XenOps> {
    ops: Arc<O>,
    pfns: u64,
    logdirty: bool,
}

impl<O: XenOps> XenSource<O> {
    /// The memory of `ops`' domain; sizes it with `xc_domain_maximum_gpfn`.
    pub fn new(ops: Arc<O>) -> MemResult<XenSource<O>> {
        let max = ops.maximum_gpfn().map_err(mem_err)?;
        Ok(XenSource {
            ops,
            pfns: max + 1,
            logdirty: false,
        })
    }

    /// The wrappers.
    pub fn ops(&self) -> &Arc<O> {
        &self.ops
    }

    /// The populated pfns among `[from, to)`, sorted.
    pub fn populated_in(&self, from: Pfn, to: Pfn) -> MemResult<Vec<Pfn>> {
        let mut out = Vec::new();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut p = from;
        while p < to {
            batch.clear();
            batch.extend(p..to.min(p + MAX_BATCH as u64));
            let types = self.ops.pfn_types(&batch).map_err(mem_err)?;
            out.extend(
                batch
                    .iter()
                    .zip(&types)
                    .filter(|(_, &t)| has_content(t))
                    .map(|(&p, _)| p),
            );
            p += batch.len() as u64;
        }
        Ok(out)
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
            self.ops.read_pages(chunk, buf).map_err(mem_err)?;
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
