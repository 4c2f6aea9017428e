//! Workloads: a guest memory layout plus the access trace its vCPU replays.
//!
//! Every generator is deterministic for a given seed (a SplitMix64 stream),
//! so experiments are reproducible run to run and machine to machine.
//!
//! | generator | what the vCPU does |
//! |---|---|
//! | [`stress`] | the seed's "diabolical" writer: writes every page of a working set in order, forever |
//! | [`quicksort`] | P processes, each quicksorting its own region, time-sliced on the vCPU, forever (OSR'09) |
//! | [`sequential`] | reads a working set in order, forever |
//! | [`random`] | uniform random pages of a working set (a share of them writes) |
//! | [`zipf`] | Zipf-popular pages of a working set, popular pages scattered |
//!
//! A guest's memory is either *used* (kernel, daemons, page cache, the
//! workload's pages) or free. Free pages are never touched by the vCPU;
//! with free-page elimination (self-ballooning) they are unpopulated and
//! never sent.

use crate::bits::Bits;
use crate::trace::{Access, Trace, TraceError};
use postcopy::Pfn;

/// Pages per MiB.
pub const PAGES_PER_MIB: u64 = 256;

/// Default compute time per access when a trace does not say (ns).
pub const DEFAULT_NS_PER_ACCESS: u64 = 1_000;

/// A guest and what its vCPU does.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short description, e.g. `stress ws=64MiB`.
    pub name: String,
    /// The vCPU's accesses; `trace.guest_pfns` is the guest size.
    pub trace: Trace,
    /// Pages holding data: the rest is free (and, with free-page
    /// elimination, ballooned out and never sent).
    pub used: Bits,
}

impl Workload {
    /// Guest size in pages.
    pub fn guest_pfns(&self) -> u64 {
        self.trace.guest_pfns
    }

    /// A workload from a recorded trace: the used pages are the first
    /// `base_pages` (kernel and friends) plus every page the trace touches.
    pub fn from_trace(name: &str, trace: Trace, base_pages: u64) -> Workload {
        let mut used = Bits::new(trace.guest_pfns);
        used.set_range(0, base_pages);
        for a in trace.iter() {
            used.set(a.pfn);
        }
        Workload {
            name: name.to_string(),
            trace,
            used,
        }
    }
}

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        crate::low_u64((u128::from(self.next_u64()) * u128::from(n)) >> 64)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Guest and working-set sizes, in MiB, plus the pages of the guest
/// always in use (kernel, daemons, page cache).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// Guest memory in MiB.
    pub guest_mib: u64,
    /// Working set in MiB.
    pub ws_mib: u64,
    /// Memory in use besides the working set, at the bottom of the guest.
    pub base_mib: u64,
}

impl Layout {
    /// The paper's stress-test guest: 2 GiB, with 192 MiB in use by the
    /// kernel, daemons and page cache.
    pub fn paper(ws_mib: u64) -> Layout {
        Layout {
            guest_mib: 2048,
            ws_mib,
            base_mib: 192,
        }
    }

    fn check(&self) -> Result<(u64, u64, u64), TraceError> {
        let g = self.guest_mib * PAGES_PER_MIB;
        let ws = (self.ws_mib * PAGES_PER_MIB).max(1);
        let base = self.base_mib * PAGES_PER_MIB;
        if g == 0 || base.saturating_add(ws) > g {
            return Err(TraceError::BadGuestSize(g));
        }
        Ok((g, ws, base))
    }

    /// Where the working set starts: above the base, at a seeded
    /// page-aligned offset within the free part.
    fn ws_start(&self, rng: &mut Rng) -> Result<(u64, u64, u64), TraceError> {
        let (g, ws, base) = self.check()?;
        let slack = g - base - ws;
        Ok((g, base + rng.below(slack + 1), ws))
    }

    fn used(&self, g: u64, ws_start: u64, ws: u64) -> Bits {
        let mut used = Bits::new(g);
        used.set_range(0, self.base_mib * PAGES_PER_MIB);
        used.set_range(ws_start, ws);
        used
    }
}

/// The seed's stress test: writes the working set page by page, forever.
pub fn stress(layout: Layout, seed: u64) -> Result<Workload, TraceError> {
    let mut rng = Rng::new(seed);
    let (g, start, ws) = layout.ws_start(&mut rng)?;
    let trace = Trace::new(
        g,
        DEFAULT_NS_PER_ACCESS,
        true,
        (start..start + ws).map(|pfn| Access { pfn, write: true }),
    )?;
    Ok(Workload {
        name: format!("stress ws={}MiB", layout.ws_mib),
        used: layout.used(g, start, ws),
        trace,
    })
}

/// Reads the working set in order, forever.
pub fn sequential(layout: Layout, seed: u64) -> Result<Workload, TraceError> {
    let mut rng = Rng::new(seed);
    let (g, start, ws) = layout.ws_start(&mut rng)?;
    let trace = Trace::new(
        g,
        DEFAULT_NS_PER_ACCESS / 2,
        true,
        (start..start + ws).map(|pfn| Access { pfn, write: false }),
    )?;
    Ok(Workload {
        name: format!("sequential ws={}MiB", layout.ws_mib),
        used: layout.used(g, start, ws),
        trace,
    })
}

/// `len` uniform random accesses over the working set, a `write_share` of
/// them writes, repeated forever.
pub fn random(
    layout: Layout,
    len: usize,
    write_share: f64,
    seed: u64,
) -> Result<Workload, TraceError> {
    let mut rng = Rng::new(seed);
    let (g, start, ws) = layout.ws_start(&mut rng)?;
    let trace = Trace::new(
        g,
        DEFAULT_NS_PER_ACCESS,
        true,
        (0..len).map(|_| Access {
            pfn: start + rng.below(ws),
            write: rng.unit() < write_share,
        }),
    )?;
    Ok(Workload {
        name: format!("random ws={}MiB", layout.ws_mib),
        used: layout.used(g, start, ws),
        trace,
    })
}

/// The smallest multiplier >= ws/φ coprime with `ws`, for scattering ranks.
fn coprime_near_golden(ws: u64) -> u64 {
    fn gcd(mut a: u64, mut b: u64) -> u64 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    let mut a = crate::f64_to_u64(ws as f64 / 1.618_034).max(1);
    while gcd(a, ws) != 1 {
        a += 1;
    }
    a
}

/// `len` accesses over the working set with Zipf(`s`) popularity (rank r
/// has weight 1/r^s, by inverting the continuous approximation), ranks
/// scattered over the working set by a fixed affine permutation; a
/// `write_share` of accesses write. Repeated forever.
pub fn zipf(
    layout: Layout,
    s: f64,
    len: usize,
    write_share: f64,
    seed: u64,
) -> Result<Workload, TraceError> {
    let mut rng = Rng::new(seed);
    let (g, start, ws) = layout.ws_start(&mut rng)?;
    let a = coprime_near_golden(ws);
    let n = ws as f64;
    let rank = |u: f64| -> u64 {
        // Inverse CDF of the density x^-s on [1, n + 1).
        let x = if (s - 1.0).abs() < 1e-9 {
            (u * (n + 1.0).ln()).exp()
        } else {
            let e = 1.0 - s;
            (1.0 + u * ((n + 1.0).powf(e) - 1.0)).powf(1.0 / e)
        };
        crate::f64_to_u64(x.floor()).clamp(1, ws) - 1
    };
    let trace = Trace::new(
        g,
        DEFAULT_NS_PER_ACCESS,
        true,
        (0..len).map(|_| {
            let r = rank(rng.unit());
            let off = crate::low_u64((u128::from(r) * u128::from(a)) % u128::from(ws));
            Access {
                pfn: start + off,
                write: rng.unit() < write_share,
            }
        }),
    )?;
    Ok(Workload {
        name: format!("zipf s={s} ws={}MiB", layout.ws_mib),
        used: layout.used(g, start, ws),
        trace,
    })
}

/// Elements of the simulated arrays per page (the page-level pattern of a
/// quicksort does not depend on it beyond a few elements per page).
pub const QSORT_ELEMS_PER_PAGE: u64 = 16;
/// Accesses per scheduling quantum when several processes share the vCPU
/// (at 1 µs an access: a 4 ms time slice).
pub const QSORT_QUANTUM: usize = 4_000;

/// The page accesses of one quicksort of `pages` pages starting at `base`:
/// Hoare partitioning with random pivots (a pointer's access is recorded
/// when it enters a new page), then a refill pass with new data (writes).
/// The migration thus starts with every process in its first partition.
fn quicksort_pages(base: Pfn, pages: u64, rng: &mut Rng, out: &mut Vec<Access>) {
    let epp = QSORT_ELEMS_PER_PAGE;
    let n = usize::try_from(pages * epp).unwrap_or(0);
    let mut keys: Vec<u32> = (0..n)
        .map(|_| u32::try_from(rng.next_u64() >> 32).unwrap_or(0))
        .collect();
    let page_of = |i: usize| base + i as u64 / epp;
    let mut stack = vec![(0usize, n)];
    while let Some((lo, hi)) = stack.pop() {
        if hi - lo < 2 {
            continue;
        }
        if page_of(lo) == page_of(hi - 1) {
            // Small partition within one page: sorted in place, one touch.
            keys[lo..hi].sort_unstable();
            out.push(Access {
                pfn: page_of(lo),
                write: true,
            });
            continue;
        }
        let pivot = keys[lo + usize::try_from(rng.below((hi - lo) as u64)).unwrap_or(0)];
        let (mut i, mut j) = (lo, hi - 1);
        let (mut pi, mut pj) = (u64::MAX, u64::MAX);
        let touch = |idx: usize, last: &mut u64, out: &mut Vec<Access>| {
            let p = page_of(idx);
            if p != *last {
                *last = p;
                out.push(Access {
                    pfn: p,
                    write: true,
                });
            }
        };
        loop {
            while keys[i] < pivot {
                i += 1;
                touch(i, &mut pi, out);
            }
            touch(i, &mut pi, out);
            while keys[j] > pivot {
                j -= 1;
                touch(j, &mut pj, out);
            }
            touch(j, &mut pj, out);
            if i >= j {
                break;
            }
            keys.swap(i, j);
            i += 1;
            j -= 1;
        }
        let mid = j + 1;
        // Larger half first on the stack: the smaller one is sorted next.
        if mid - lo > hi - mid {
            stack.push((lo, mid));
            stack.push((mid, hi));
        } else {
            stack.push((mid, hi));
            stack.push((lo, mid));
        }
    }
    // Sorted: refill with new random data, then the loop sorts again.
    for p in 0..pages {
        out.push(Access {
            pfn: base + p,
            write: true,
        });
    }
}

/// OSR'09's pivot study: `processes` processes each quicksort their own
/// share of `layout.ws_mib`, time-sliced on the vCPU ([`QSORT_QUANTUM`]
/// accesses a slice), then start over. The regions lie one after another
/// above the base, separated by seeded gaps (up to a quarter region each,
/// as long as the guest has room).
pub fn quicksort(layout: Layout, processes: u32, seed: u64) -> Result<Workload, TraceError> {
    let (g, ws, base) = layout.check()?;
    let procs = u64::from(processes.max(1));
    let region = (ws / procs).max(1);
    let mut rng = Rng::new(seed);
    let slack = g - base - region * procs;
    let max_gap = (region / 4).min(slack / procs);
    let mut used = Bits::new(g);
    used.set_range(0, base);
    let mut per_proc = Vec::new();
    let mut at = base;
    for _ in 0..procs {
        at += if max_gap > 0 {
            rng.below(max_gap + 1)
        } else {
            0
        };
        used.set_range(at, region);
        let mut acc = Vec::new();
        quicksort_pages(at, region, &mut rng, &mut acc);
        per_proc.push(acc);
        at += region;
    }
    // Round-robin time slices.
    let total: usize = per_proc.iter().map(Vec::len).sum();
    let mut trace = Vec::with_capacity(total);
    let mut pos = vec![0usize; per_proc.len()];
    while trace.len() < total {
        for (p, accesses) in per_proc.iter().enumerate() {
            let end = (pos[p] + QSORT_QUANTUM).min(accesses.len());
            trace.extend_from_slice(&accesses[pos[p]..end]);
            pos[p] = end;
        }
    }
    Ok(Workload {
        name: format!("quicksort x{procs} data={}MiB", layout.ws_mib),
        trace: Trace::new(g, DEFAULT_NS_PER_ACCESS, true, trace)?,
        used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(ws: u64) -> Layout {
        Layout {
            guest_mib: 64,
            ws_mib: ws,
            base_mib: 4,
        }
    }

    #[test]
    fn generators_are_deterministic_for_a_seed() {
        let gens: Vec<Box<dyn Fn(u64) -> Workload>> = vec![
            Box::new(|s| stress(small(8), s).unwrap()),
            Box::new(|s| sequential(small(8), s).unwrap()),
            Box::new(|s| random(small(8), 5000, 0.3, s).unwrap()),
            Box::new(|s| zipf(small(8), 1.1, 5000, 0.3, s).unwrap()),
            Box::new(|s| quicksort(small(8), 4, s).unwrap()),
        ];
        for g in gens {
            let (a, b, c) = (g(1), g(1), g(2));
            assert_eq!(a.trace, b.trace, "{}", a.name);
            assert_eq!(a.used, b.used);
            assert_ne!(a.trace, c.trace, "{} ignores its seed", a.name);
        }
    }

    #[test]
    fn stress_writes_its_working_set_in_order() {
        let w = stress(small(8), 9).unwrap();
        assert_eq!(w.trace.len(), 8 * 256);
        assert!(w.trace.looping);
        let first = w.trace.get(0).pfn;
        assert!(first >= 4 * 256);
        assert!(w
            .trace
            .iter()
            .enumerate()
            .all(|(i, a)| a.write && a.pfn == first + i as u64));
        assert_eq!(w.used.count(), 12 * 256);
        assert!(w.trace.iter().all(|a| w.used.get(a.pfn)));
    }

    #[test]
    fn stress_rejects_a_working_set_larger_than_the_guest() {
        assert!(stress(small(61), 0).is_err());
        assert!(stress(small(60), 0).is_ok());
    }

    #[test]
    fn zipf_is_skewed_and_stays_in_the_working_set() {
        let w = zipf(small(8), 1.2, 50_000, 0.0, 3).unwrap();
        let mut counts = std::collections::HashMap::new();
        for a in w.trace.iter() {
            assert!(w.used.get(a.pfn));
            *counts.entry(a.pfn).or_insert(0u32) += 1;
        }
        let mut c: Vec<u32> = counts.into_values().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        // Top page gets far more than a uniform share (50000 / 2048 ≈ 24).
        assert!(c[0] > 1000, "{:?}", &c[..5]);
        assert!(w.trace.iter().all(|a| !a.write));
    }

    #[test]
    fn random_write_share_is_respected() {
        let w = random(small(8), 20_000, 0.25, 5).unwrap();
        let writes = w.trace.iter().filter(|a| a.write).count();
        assert!((4_500..5_500).contains(&writes), "{writes}");
    }

    #[test]
    fn quicksort_touches_every_region_and_sorts_in_slices() {
        let w = quicksort(small(8), 4, 11).unwrap();
        let region = 8 * 256 / 4;
        let touched: std::collections::BTreeSet<u64> = w.trace.iter().map(|a| a.pfn).collect();
        assert_eq!(touched.len() as u64, 4 * region, "every data page touched");
        assert!(touched.iter().all(|&p| w.used.get(p)));
        // The first slice belongs to one process, the next to another.
        let a = w.trace.get(0).pfn;
        let b = w.trace.get(QSORT_QUANTUM).pfn;
        assert!(b >= a + region, "{a} {b}");
        // Sorting revisits pages: several accesses a page on average.
        assert!(w.trace.len() as u64 > 4 * 4 * region);
    }

    #[test]
    fn rng_below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(42);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let x = r.below(10);
            buckets[usize::try_from(x).unwrap()] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (9_000..11_000).contains(&b)),
            "{buckets:?}"
        );
    }
}
