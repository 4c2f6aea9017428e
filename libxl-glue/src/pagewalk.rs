//! The x86 page-table walker: which guest pfns hold a vCPU's page tables
//! ([`walk_page_tables`]) and which pfn a linear address maps to
//! ([`translate`]), in every paging mode (off, 2-level with and without
//! PSE, PAE, 4- and 5-level), as pure functions over a [`PageReader`].
//! [`crate::present`] uses it to find what must be present before the
//! guest runs.

use std::collections::{HashSet, VecDeque};

use postcopy::{Pfn, PAGE_SIZE};

use crate::present::VcpuRegs;

pub(crate) const CR0_PG: u64 = 1 << 31;
pub(crate) const CR4_PSE: u64 = 1 << 4;
pub(crate) const CR4_PAE: u64 = 1 << 5;
pub(crate) const CR4_LA57: u64 = 1 << 12;
pub(crate) const EFER_LMA: u64 = 1 << 10;
pub(crate) const PTE_P: u64 = 1;
pub(crate) const PTE_PS: u64 = 1 << 7;
/// Physical address bits of a 64-bit entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The paging mode of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: linear = physical.
    Off,
    /// 32-bit paging, 2 levels of 1024 4-byte entries.
    TwoLevel {
        /// CR4.PSE: 4 MiB pages at the directory.
        pse: bool,
    },
    /// PAE: a 4-entry PDPT, then 2 levels of 512 8-byte entries.
    Pae,
    /// Long mode, 4 levels.
    FourLevel,
    /// Long mode with LA57, 5 levels.
    FiveLevel,
}

impl PagingMode {
    /// The mode set by these control registers.
    pub fn of(r: &VcpuRegs) -> PagingMode {
        if r.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if r.efer & EFER_LMA != 0 {
            if r.cr4 & CR4_LA57 != 0 {
                PagingMode::FiveLevel
            } else {
                PagingMode::FourLevel
            }
        } else if r.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::TwoLevel {
                pse: r.cr4 & CR4_PSE != 0,
            }
        }
    }
}

/// A page reader: the content of a guest pfn, `None` if it cannot be read
/// (unpopulated, or outside the guest).
pub trait PageReader {
    /// Reads `pfn` into `buf` (one page); false if it cannot.
    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_SIZE]) -> bool;

    /// The walk will read `pfns` next: a reader may fetch them in one batch
    /// (one foreign mapping instead of one per page). Default: nothing.
    fn prefetch(&mut self, pfns: &[Pfn]) {
        let _ = pfns;
    }
}

impl<F: FnMut(Pfn, &mut [u8; PAGE_SIZE]) -> bool> PageReader for F {
    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_SIZE]) -> bool {
        self(pfn, buf)
    }
}

fn entry(page: &[u8; PAGE_SIZE], index: usize, wide: bool) -> u64 {
    if wide {
        let b = &page[index * 8..index * 8 + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    } else {
        let b = &page[index * 4..index * 4 + 4];
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The page-table pages of one address space, found by a breadth-first
/// walk from CR3 over `reader`, at most `limit` pages (a guard against a
/// corrupt or hostile tree); pfns at or above `guest_pfns` are ignored.
/// Returns the table pfns, sorted, and whether the limit cut the walk.
pub fn walk_page_tables(
    regs: &VcpuRegs,
    guest_pfns: u64,
    limit: usize,
    reader: &mut impl PageReader,
) -> (Vec<Pfn>, bool) {
    let mode = PagingMode::of(regs);
    // (pfn, level): level 1 tables hold leaf entries only.
    let mut queue: VecDeque<(Pfn, u32)> = VecDeque::new();
    let mut seen: HashSet<Pfn> = HashSet::new();
    let mut buf = [0u8; PAGE_SIZE];
    let (wide, entries, top) = match mode {
        PagingMode::Off => return (Vec::new(), false),
        PagingMode::TwoLevel { .. } => (false, 1024, 2),
        PagingMode::Pae => (true, 512, 3),
        PagingMode::FourLevel => (true, 512, 4),
        PagingMode::FiveLevel => (true, 512, 5),
    };
    let root = match mode {
        PagingMode::Pae => (regs.cr3 & 0xffff_ffe0) >> 12,
        PagingMode::TwoLevel { .. } => (regs.cr3 & 0xffff_f000) >> 12,
        _ => (regs.cr3 & ADDR_MASK) >> 12,
    };
    let mut truncated = false;
    if root < guest_pfns {
        seen.insert(root);
        queue.push_back((root, top));
    }
    // The breadth-first queue holds one level after the other: announce
    // each level's tables before reading them.
    let mut announced = u32::MAX;
    while let Some((pfn, level)) = queue.pop_front() {
        if level != announced && level > 1 {
            announced = level;
            let mut batch = vec![pfn];
            batch.extend(
                queue
                    .iter()
                    .take_while(|(_, l)| *l == level)
                    .map(|(p, _)| *p),
            );
            reader.prefetch(&batch);
        }
        if level <= 1 || !reader.read(pfn, &mut buf) {
            continue;
        }
        let range = match mode {
            // The PDPT is 4 entries at CR3's 32-byte-aligned offset.
            PagingMode::Pae if level == 3 => {
                let off = ((regs.cr3 & 0xfe0) / 8) as usize;
                off..off + 4
            }
            _ => 0..entries,
        };
        for i in range {
            let e = entry(&buf, i, wide);
            if e & PTE_P == 0 {
                continue;
            }
            // A large page ends the walk: at PD level (2) with PS, and at
            // PDPT level (3) in long mode (1 GiB pages).
            let large = e & PTE_PS != 0
                && match mode {
                    PagingMode::TwoLevel { pse } => level == 2 && pse,
                    PagingMode::Pae => level == 2,
                    _ => level == 2 || level == 3,
                };
            if large {
                continue;
            }
            let next = if wide {
                (e & ADDR_MASK) >> 12
            } else {
                (e & 0xffff_f000) >> 12
            };
            if next >= guest_pfns || !seen.insert(next) {
                continue;
            }
            if seen.len() > limit {
                seen.remove(&next);
                truncated = true;
                break;
            }
            queue.push_back((next, level - 1));
        }
        if truncated {
            break;
        }
    }
    let mut v: Vec<Pfn> = seen.into_iter().collect();
    v.sort_unstable();
    (v, truncated)
}

/// Translates a linear address to a guest pfn through the vCPU's page
/// tables; `None` if unmapped or unreadable.
pub fn translate(
    regs: &VcpuRegs,
    va: u64,
    guest_pfns: u64,
    reader: &mut impl PageReader,
) -> Option<Pfn> {
    let mode = PagingMode::of(regs);
    let mut buf = [0u8; PAGE_SIZE];
    let found = match mode {
        PagingMode::Off => Some(va >> 12),
        PagingMode::TwoLevel { pse } => {
            let va = va & 0xffff_ffff;
            let mut table = (regs.cr3 & 0xffff_f000) >> 12;
            let mut out = None;
            for level in [2u32, 1] {
                if table >= guest_pfns || !reader.read(table, &mut buf) {
                    break;
                }
                let idx = ((va >> (12 + 10 * (level - 1))) & 0x3ff) as usize;
                let e = entry(&buf, idx, false);
                if e & PTE_P == 0 {
                    break;
                }
                if level == 2 && pse && e & PTE_PS != 0 {
                    // 4 MiB page: bits 22..31 of the entry.
                    out = Some(((e & 0xffc0_0000) | (va & 0x003f_f000)) >> 12);
                    break;
                }
                if level == 1 {
                    out = Some((e & 0xffff_f000) >> 12);
                    break;
                }
                table = (e & 0xffff_f000) >> 12;
            }
            out
        }
        _ => {
            let (levels, mut table) = match mode {
                PagingMode::Pae => {
                    // PDPT entry selected by bits 30..31, inside CR3's page.
                    let pdpt = (regs.cr3 & 0xffff_ffe0) >> 12;
                    if pdpt >= guest_pfns || !reader.read(pdpt, &mut buf) {
                        return None;
                    }
                    let idx = ((regs.cr3 & 0xfe0) / 8) as usize + ((va >> 30) & 3) as usize;
                    let e = entry(&buf, idx, true);
                    if e & PTE_P == 0 {
                        return None;
                    }
                    (2u32, (e & ADDR_MASK) >> 12)
                }
                PagingMode::FourLevel => (4, (regs.cr3 & ADDR_MASK) >> 12),
                _ => (5, (regs.cr3 & ADDR_MASK) >> 12),
            };
            let mut out = None;
            for level in (1..=levels).rev() {
                if table >= guest_pfns || !reader.read(table, &mut buf) {
                    break;
                }
                let shift = 12 + 9 * (level - 1);
                let idx = ((va >> shift) & 0x1ff) as usize;
                let e = entry(&buf, idx, true);
                if e & PTE_P == 0 {
                    break;
                }
                let base = e & ADDR_MASK;
                if level == 1 {
                    out = Some(base >> 12);
                    break;
                }
                if e & PTE_PS != 0 && (level == 2 || (level == 3 && levels >= 4)) {
                    let size_mask = (1u64 << shift) - 1;
                    out = Some(((base & !size_mask) | (va & size_mask)) >> 12);
                    break;
                }
                table = base >> 12;
            }
            out
        }
    };
    found.filter(|&p| p < guest_pfns)
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test fixtures of known small sizes"
)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::collections::HashMap;

    /// A randomly built 4-level tree and, for each mapped 4 KiB virtual
    /// page, the pfn it must translate to (the model).
    struct Tree {
        pages: HashMap<Pfn, Box<[u8; PAGE_SIZE]>>,
        tables: BTreeSet<Pfn>,
        model: HashMap<u64, Pfn>,
    }

    fn set(t: &mut Tree, pfn: Pfn, idx: usize, v: u64) {
        let p = t
            .pages
            .entry(pfn)
            .or_insert_with(|| Box::new([0; PAGE_SIZE]));
        p[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// mappings: (pml4 idx, pdpt idx, pd idx, pt idx, kind): kind 0 = 4K,
    /// 1 = 2M, 2 = 1G. Tables get fresh pfns from 0x1000 up; data pfns
    /// are derived from the indices.
    fn build(maps: &[(usize, usize, usize, usize, u8)]) -> Tree {
        let mut t = Tree {
            pages: HashMap::new(),
            tables: BTreeSet::new(),
            model: HashMap::new(),
        };
        let mut next = 0x1001u64;
        let root = 0x1000u64;
        t.tables.insert(root);
        t.pages.insert(root, Box::new([0; PAGE_SIZE]));
        let mut child: HashMap<(Pfn, usize), Option<Pfn>> = HashMap::new();
        let mut table = |t: &mut Tree, parent: Pfn, idx: usize, leaf: Option<u64>| -> Option<Pfn> {
            if let Some(c) = child.get(&(parent, idx)) {
                return *c;
            }
            let made = match leaf {
                Some(e) => {
                    set(t, parent, idx, e);
                    None
                }
                None => {
                    let p = next;
                    next += 1;
                    t.tables.insert(p);
                    t.pages.insert(p, Box::new([0; PAGE_SIZE]));
                    set(t, parent, idx, (p << 12) | 3);
                    Some(p)
                }
            };
            child.insert((parent, idx), made);
            made
        };
        for &(a, b, c, d, kind) in maps {
            let va =
                ((a as u64) << 39) | ((b as u64) << 30) | ((c as u64) << 21) | ((d as u64) << 12);
            let Some(l3) = table(&mut t, root, a, None) else {
                continue;
            };
            if kind == 2 {
                let base = 0x4000_0000u64 * (1 + (a * 512 + b) as u64 % 8);
                if table(&mut t, l3, b, Some(base | PTE_PS | 3)).is_none() {
                    t.model
                        .insert(va, (base >> 12) + ((c as u64) << 9) + d as u64);
                }
                continue;
            }
            let Some(l2) = table(&mut t, l3, b, None) else {
                continue;
            };
            if kind == 1 {
                let base = 0x20_0000u64 * (1 + (b * 512 + c) as u64 % 64);
                if table(&mut t, l2, c, Some(base | PTE_PS | 3)).is_none() {
                    t.model.insert(va, (base >> 12) + d as u64);
                }
                continue;
            }
            let Some(l1) = table(&mut t, l2, c, None) else {
                continue;
            };
            let data = 0x10_0000 + (a * 7 + b * 5 + c * 3 + d) as u64;
            if table(&mut t, l1, d, Some((data << 12) | 3)).is_none() {
                t.model.insert(va, data);
            }
        }
        // A slot keeps what was put there first (table or large page), so
        // a later mapping that conflicts with it is simply not in the model.
        t
    }

    fn reader(t: &Tree) -> impl FnMut(Pfn, &mut [u8; PAGE_SIZE]) -> bool + '_ {
        move |p, buf| match t.pages.get(&p) {
            Some(pg) => {
                buf.copy_from_slice(&pg[..]);
                true
            }
            None => false,
        }
    }

    fn regs() -> VcpuRegs {
        VcpuRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1000 << 12,
            cr4: CR4_PAE,
            efer: EFER_LMA,
            ..Default::default()
        }
    }

    fn slot() -> impl Strategy<Value = (usize, usize, usize, usize, u8)> {
        // Few distinct indices so that paths share tables.
        (0usize..3, 0usize..3, 0usize..4, 0usize..8, 0u8..3)
    }

    proptest! {
        /// The walk finds exactly the table pages of the tree.
        #[test]
        fn walk_finds_exactly_the_tables(maps in proptest::collection::vec(slot(), 0..40)) {
            let t = build(&maps);
            let (found, cut) = walk_page_tables(&regs(), 1 << 24, 10_000, &mut reader(&t));
            prop_assert!(!cut);
            let want: Vec<Pfn> = t.tables.iter().copied().collect();
            prop_assert_eq!(found, want);
        }

        /// Every mapped address translates to the model's pfn; an address
        /// in an unmapped slot translates to nothing.
        #[test]
        fn translate_agrees_with_the_model(maps in proptest::collection::vec(slot(), 1..40), probe in slot()) {
            let t = build(&maps);
            let r = regs();
            for (&va, &pfn) in &t.model {
                prop_assert_eq!(translate(&r, va, 1 << 24, &mut reader(&t)), Some(pfn), "va {:#x}", va);
            }
            let (a, b, c, d, _) = probe;
            let va = ((a as u64) << 39) | ((b as u64) << 30) | ((c as u64) << 21) | ((d as u64) << 12);
            if !t.model.contains_key(&va) {
                let got = translate(&r, va, 1 << 24, &mut reader(&t));
                // Unmapped, or covered by a large page of another slot.
                if let Some(p) = got {
                    let large = t.model.iter().any(|(&v, _)| v >> 21 == va >> 21 || v >> 30 == va >> 30);
                    prop_assert!(large, "va {:#x} → {:#x} without a mapping", va, p);
                }
            }
        }
    }
}
