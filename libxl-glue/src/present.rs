//! The pages that must be present on the destination before the guest is
//! unpaused.
//!
//! Xen's own accesses to guest memory — hypercall buffers, software
//! page-table walks, instruction emulation — do not wait for a paged-out
//! page: they fail (`HVMTRANS_gfn_paged_out` → -EFAULT) and stall the guest
//! (`shared/reference/xen-paged-out-access.md`). So before unpausing, the
//! source sends what Xen touches on the guest's behalf:
//!
//! - the special pfns named by HVM params (xenstore, console, ioreq pages,
//!   the identity page table and VM86 TSS, the monitor/sharing rings); the
//!   paging ring is never sent: the destination replaces it;
//! - for each vCPU, every page-table page reachable from CR3 (walked by
//!   [`crate::pagewalk`] as a pure function over a page reader);
//! - the kernel stack around each vCPU's RSP, the code at RIP, and the
//!   GDT and IDT (the emulator reads descriptors and instructions).
//!
//! Everything is computed from the HVM context
//! ([`parse_hvm_context`]) of the suspended source domain.

use std::collections::BTreeSet;

use libxl_sys as sys;
use postcopy::Pfn;

use crate::pagewalk::{translate, walk_page_tables, PageReader};

/// The registers of one vCPU that locate its page tables and stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuRegs {
    /// vCPU number.
    pub vcpu: u16,
    /// CR0 (PG = bit 31).
    pub cr0: u64,
    /// CR3: the page-table root.
    pub cr3: u64,
    /// CR4 (PSE = bit 4, PAE = bit 5, LA57 = bit 12).
    pub cr4: u64,
    /// EFER (LMA = bit 10).
    pub efer: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Instruction pointer.
    pub rip: u64,
    /// GDT base and limit.
    pub gdtr: (u64, u32),
    /// IDT base and limit.
    pub idtr: (u64, u32),
}

/// A malformed HVM context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// A record runs past the end of the buffer.
    #[error("HVM context truncated at byte {0}")]
    Truncated(usize),
    /// A CPU record is shorter than `struct hvm_hw_cpu`.
    #[error("HVM CPU record of vCPU {vcpu} has {len} bytes, expected {want}")]
    ShortCpu {
        /// The vCPU.
        vcpu: u16,
        /// Its length.
        len: u32,
        /// `sizeof(struct hvm_hw_cpu)`.
        want: usize,
    },
    /// No END record.
    #[error("HVM context has no END record")]
    NoEnd,
}

const DESC: usize = size_of::<sys::hvm_save_descriptor>();
/// `HVM_SAVE_CODE(END)`.
const CODE_END: u16 = 0;
/// `HVM_SAVE_CODE(CPU)`.
const CODE_CPU: u16 = 2;

/// Extracts every vCPU's registers from an `xc_domain_hvm_getcontext`
/// buffer: a sequence of (`struct hvm_save_descriptor`, body) up to END.
pub fn parse_hvm_context(buf: &[u8]) -> Result<Vec<VcpuRegs>, ContextError> {
    Ok(hvm_cpu_records(buf)?
        .iter()
        .map(|(vcpu, cpu)| VcpuRegs::from_cpu(*vcpu, cpu))
        .collect())
}

impl VcpuRegs {
    /// The registers of vCPU `vcpu` from its CPU record.
    pub fn from_cpu(vcpu: u16, cpu: &sys::hvm_hw_cpu) -> VcpuRegs {
        VcpuRegs {
            vcpu,
            cr0: cpu.cr0,
            cr3: cpu.cr3,
            cr4: cpu.cr4,
            efer: cpu.msr_efer,
            rsp: cpu.rsp,
            rip: cpu.rip,
            gdtr: (cpu.gdtr_base, cpu.gdtr_limit),
            idtr: (cpu.idtr_base, cpu.idtr_limit),
        }
    }
}

/// Every CPU record (vCPU number, `struct hvm_hw_cpu`) of an
/// `xc_domain_hvm_getcontext` buffer, for callers that need more of the
/// registers than [`VcpuRegs`] (the post-mortem of a dead guest).
pub fn hvm_cpu_records(buf: &[u8]) -> Result<Vec<(u16, sys::hvm_hw_cpu)>, ContextError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(d) = buf.get(at..at + DESC) else {
            return Err(if at >= buf.len() {
                ContextError::NoEnd
            } else {
                ContextError::Truncated(at)
            });
        };
        let typecode = u16::from_le_bytes([d[0], d[1]]);
        let instance = u16::from_le_bytes([d[2], d[3]]);
        let length = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
        let body_at = at + DESC;
        let end = body_at
            .checked_add(length as usize)
            .filter(|&e| e <= buf.len())
            .ok_or(ContextError::Truncated(at))?;
        if typecode == CODE_END {
            return Ok(out);
        }
        if typecode == CODE_CPU {
            let want = size_of::<sys::hvm_hw_cpu>();
            if (length as usize) < want {
                return Err(ContextError::ShortCpu {
                    vcpu: instance,
                    len: length,
                    want,
                });
            }
            // SAFETY: body_at + want <= end <= buf.len(); hvm_hw_cpu is
            // plain integers (any bit pattern valid); read_unaligned copes
            // with the byte buffer's alignment.
            let cpu: sys::hvm_hw_cpu =
                unsafe { std::ptr::read_unaligned(buf[body_at..].as_ptr().cast()) };
            out.push((instance, cpu));
        }
        at = end;
    }
}

/// The `pending_event` word of a CPU record (vector in bits 0-7, type in
/// 8-10, error-code-valid bit 11, valid bit 31).
pub fn pending_event(cpu: &sys::hvm_hw_cpu) -> u32 {
    // SAFETY: both union members are plain integers over the same 4 bytes;
    // any bit pattern is a valid u32.
    unsafe { cpu.__bindgen_anon_1.pending_event }
}

/// Bytes of stack kept present on each side of RSP (a Linux x86-64 kernel
/// stack is 16 KiB).
pub const STACK_WINDOW: u64 = 16 * 1024;
/// Most page-table pages walked per vCPU.
pub const MAX_TABLE_PAGES: usize = 1 << 16;

/// The pages of `[va, va + len)` through the vCPU's page tables.
fn linear_range(
    regs: &VcpuRegs,
    va: u64,
    len: u64,
    guest_pfns: u64,
    reader: &mut impl PageReader,
    out: &mut BTreeSet<Pfn>,
) {
    let first = va & !0xfff;
    let last = va.saturating_add(len.max(1) - 1) & !0xfff;
    let mut page = first;
    // At most 64 pages per range: a bogus limit cannot blow this up.
    for _ in 0..64 {
        if let Some(p) = translate(regs, page, guest_pfns, reader) {
            out.insert(p);
        }
        if page >= last {
            break;
        }
        page = page.wrapping_add(0x1000);
    }
}

/// What one vCPU needs present: its page-table pages, its stack window,
/// the code at RIP, its GDT and IDT. Returns the pfns and whether the
/// table walk hit [`MAX_TABLE_PAGES`].
pub fn vcpu_pages(
    regs: &VcpuRegs,
    guest_pfns: u64,
    reader: &mut impl PageReader,
) -> (BTreeSet<Pfn>, bool) {
    let (tables, truncated) = walk_page_tables(regs, guest_pfns, MAX_TABLE_PAGES, reader);
    let mut out: BTreeSet<Pfn> = tables.into_iter().collect();
    let lo = regs.rsp.saturating_sub(STACK_WINDOW);
    linear_range(regs, lo, 2 * STACK_WINDOW, guest_pfns, reader, &mut out);
    // The longest x86 instruction is 15 bytes.
    linear_range(regs, regs.rip, 15, guest_pfns, reader, &mut out);
    linear_range(
        regs,
        regs.gdtr.0,
        u64::from(regs.gdtr.1) + 1,
        guest_pfns,
        reader,
        &mut out,
    );
    linear_range(
        regs,
        regs.idtr.0,
        u64::from(regs.idtr.1) + 1,
        guest_pfns,
        reader,
        &mut out,
    );
    (out, truncated)
}

/// HVM params naming one special pfn each.
const PFN_PARAMS: [u32; 6] = [
    sys::HVM_PARAM_STORE_PFN,
    sys::HVM_PARAM_CONSOLE_PFN,
    sys::HVM_PARAM_IOREQ_PFN,
    sys::HVM_PARAM_BUFIOREQ_PFN,
    sys::HVM_PARAM_MONITOR_RING_PFN,
    sys::HVM_PARAM_SHARING_RING_PFN,
];

/// The special pfns from HVM params, via `param` (a param that cannot be
/// read counts as unset). The paging ring pfn is left out.
pub fn special_pfns(mut param: impl FnMut(u32) -> Option<u64>) -> BTreeSet<Pfn> {
    let mut out = BTreeSet::new();
    for p in PFN_PARAMS {
        if let Some(v) = param(p).filter(|&v| v != 0) {
            out.insert(v);
        }
    }
    // IDENT_PT is an address.
    if let Some(v) = param(sys::HVM_PARAM_IDENT_PT).filter(|&v| v != 0) {
        out.insert(v >> 12);
    }
    // VM86_TSS_SIZED: address in the low 32 bits, size in the high 32.
    if let Some(v) = param(sys::HVM_PARAM_VM86_TSS_SIZED).filter(|&v| v != 0) {
        let addr = v & 0xffff_ffff;
        let size = (v >> 32).max(1);
        let mut p = addr >> 12;
        while p <= (addr + size - 1) >> 12 {
            out.insert(p);
            p += 1;
        }
    }
    // The ioreq server pages: NR pages from IOREQ_SERVER_PFN (at most 256).
    if let (Some(base), Some(nr)) = (
        param(sys::HVM_PARAM_IOREQ_SERVER_PFN).filter(|&v| v != 0),
        param(sys::HVM_PARAM_NR_IOREQ_SERVER_PAGES),
    ) {
        for p in base..base + nr.min(256) {
            out.insert(p);
        }
    }
    if let Some(ring) = param(sys::HVM_PARAM_PAGING_RING_PFN) {
        out.remove(&ring);
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_lossless,
    reason = "test fixtures of known small sizes"
)]
mod tests {
    use super::*;
    use crate::pagewalk::*;
    use postcopy::PAGE_SIZE;
    use std::collections::HashMap;

    /// A guest memory of sparse pages for the walker.
    #[derive(Default)]
    struct Mem {
        pages: HashMap<Pfn, Box<[u8; PAGE_SIZE]>>,
        reads: usize,
    }

    impl Mem {
        fn set64(&mut self, pfn: Pfn, idx: usize, v: u64) {
            let p = self
                .pages
                .entry(pfn)
                .or_insert_with(|| Box::new([0; PAGE_SIZE]));
            p[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn set32(&mut self, pfn: Pfn, idx: usize, v: u32) {
            let p = self
                .pages
                .entry(pfn)
                .or_insert_with(|| Box::new([0; PAGE_SIZE]));
            p[idx * 4..idx * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn reader(&mut self) -> impl FnMut(Pfn, &mut [u8; PAGE_SIZE]) -> bool + '_ {
            move |pfn, buf| {
                self.reads += 1;
                match self.pages.get(&pfn) {
                    Some(p) => {
                        buf.copy_from_slice(&p[..]);
                        true
                    }
                    None => false,
                }
            }
        }
    }

    fn long_mode(cr3_pfn: Pfn) -> VcpuRegs {
        VcpuRegs {
            cr0: CR0_PG | 1,
            cr3: cr3_pfn << 12,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        }
    }

    /// PML4 at 10 → PDPT 11 → PD 12 → PT 13 → page 100 (va 0x0);
    /// PD 12 entry 1 is a 2 MiB page at 0x200000; PDPT entry 1 is a 1 GiB
    /// page; PML4 entry 511 → PDPT 20 → PD 21 (kernel half).
    fn four_level() -> Mem {
        let mut m = Mem::default();
        m.set64(10, 0, (11 << 12) | 3);
        m.set64(10, 511, (20 << 12) | 3);
        m.set64(11, 0, (12 << 12) | 3);
        m.set64(11, 1, (0x40000 << 12) | PTE_PS | 3);
        m.set64(12, 0, (13 << 12) | 3);
        m.set64(12, 1, (0x200 << 12) | PTE_PS | 3);
        m.set64(12, 2, (14 << 12) | 2); // not present
        m.set64(13, 0, (100 << 12) | 3 | (1 << 63)); // NX set
        m.set64(13, 5, (101 << 12) | 3);
        m.set64(20, 510, (21 << 12) | 3);
        m.set64(21, 0, (22 << 12) | 3);
        m.set64(22, 0, (300 << 12) | 3);
        m
    }

    #[test]
    fn four_level_walk_finds_every_table_and_skips_large_and_absent() {
        let mut m = four_level();
        let regs = long_mode(10);
        let (tables, cut) = walk_page_tables(&regs, 1 << 20, 1000, &mut m.reader());
        assert!(!cut);
        assert_eq!(tables, vec![10, 11, 12, 13, 20, 21, 22]);
    }

    #[test]
    fn each_level_is_announced_once_before_it_is_read() {
        struct Counting<'a> {
            mem: &'a Mem,
            prefetched: Vec<Vec<Pfn>>,
            reads: Vec<Pfn>,
        }
        impl PageReader for Counting<'_> {
            fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_SIZE]) -> bool {
                self.reads.push(pfn);
                assert!(
                    self.prefetched.iter().any(|b| b.contains(&pfn)),
                    "read of {pfn} not announced"
                );
                self.mem
                    .pages
                    .get(&pfn)
                    .map(|p| buf.copy_from_slice(&p[..]))
                    .is_some()
            }
            fn prefetch(&mut self, pfns: &[Pfn]) {
                self.prefetched.push(pfns.to_vec());
            }
        }
        let m = four_level();
        let mut r = Counting {
            mem: &m,
            prefetched: Vec::new(),
            reads: Vec::new(),
        };
        walk_page_tables(&long_mode(10), 1 << 20, 1000, &mut r);
        // PML4; both PDPTs; both PDs. PTs (level 1) are never read.
        assert_eq!(r.prefetched, vec![vec![10], vec![11, 20], vec![12, 21]]);
        assert_eq!(r.reads, vec![10, 11, 20, 12, 21]);
    }

    #[test]
    fn four_level_translation_handles_4k_2m_1g_and_nx() {
        let mut m = four_level();
        let regs = long_mode(10);
        let n = 1 << 20;
        assert_eq!(translate(&regs, 0x0, n, &mut m.reader()), Some(100));
        assert_eq!(translate(&regs, 0x5123, n, &mut m.reader()), Some(101));
        assert_eq!(translate(&regs, 0x20_3000, n, &mut m.reader()), Some(0x203));
        assert_eq!(
            translate(&regs, 0x4000_5000, n, &mut m.reader()),
            Some(0x40005)
        );
        assert_eq!(translate(&regs, 0x40_0000, n, &mut m.reader()), None);
        // Kernel text: PML4 511, PDPT 510, PD 0, PT 0.
        let va = 0xffff_ffff_8000_0000u64;
        assert_eq!(translate(&regs, va, n, &mut m.reader()), Some(300));
        // A target beyond the guest is dropped.
        assert_eq!(translate(&regs, 0x4000_5000, 0x1000, &mut m.reader()), None);
    }

    #[test]
    fn five_level_adds_one_level() {
        let mut m = four_level();
        m.set64(9, 0, (10 << 12) | 3);
        let mut regs = long_mode(9);
        regs.cr4 |= CR4_LA57;
        let (tables, _) = walk_page_tables(&regs, 1 << 20, 1000, &mut m.reader());
        assert_eq!(tables, vec![9, 10, 11, 12, 13, 20, 21, 22]);
        assert_eq!(
            translate(&regs, 0x5000, 1 << 20, &mut m.reader()),
            Some(101)
        );
    }

    #[test]
    fn pae_walk_uses_the_pdpt_inside_cr3s_page() {
        let mut m = Mem::default();
        // PDPT at byte 0x40 of pfn 50: 4 entries at indices 8..12.
        m.set64(50, 8, (51 << 12) | 1);
        m.set64(50, 9, (52 << 12) | 1);
        m.set64(50, 0, (99 << 12) | 1); // outside the PDPT: ignored
        m.set64(51, 0, (53 << 12) | 3);
        m.set64(51, 1, (0x400 << 12) | PTE_PS | 3);
        m.set64(53, 7, (200 << 12) | 3);
        let regs = VcpuRegs {
            cr0: CR0_PG | 1,
            cr3: (50 << 12) | 0x40,
            cr4: CR4_PAE,
            ..Default::default()
        };
        assert_eq!(PagingMode::of(&regs), PagingMode::Pae);
        let (tables, _) = walk_page_tables(&regs, 1 << 20, 1000, &mut m.reader());
        assert_eq!(tables, vec![50, 51, 52, 53]);
        assert_eq!(
            translate(&regs, 0x7000, 1 << 20, &mut m.reader()),
            Some(200)
        );
        assert_eq!(
            translate(&regs, 0x20_1000, 1 << 20, &mut m.reader()),
            Some(0x401)
        );
    }

    #[test]
    fn two_level_walk_with_and_without_pse() {
        let mut m = Mem::default();
        m.set32(60, 0, (61 << 12) | 3);
        m.set32(60, 1, (0x400 << 12) | (PTE_PS as u32) | 3);
        m.set32(61, 3, (70 << 12) | 3);
        let mut regs = VcpuRegs {
            cr0: CR0_PG | 1,
            cr3: 60 << 12,
            cr4: CR4_PSE,
            ..Default::default()
        };
        let (tables, _) = walk_page_tables(&regs, 1 << 20, 1000, &mut m.reader());
        assert_eq!(tables, vec![60, 61]);
        assert_eq!(translate(&regs, 0x3000, 1 << 20, &mut m.reader()), Some(70));
        assert_eq!(
            translate(&regs, 0x40_5000, 1 << 20, &mut m.reader()),
            Some(0x405)
        );
        // Without PSE the PS bit is ignored: entry 1 is a table.
        regs.cr4 = 0;
        let (tables, _) = walk_page_tables(&regs, 1 << 20, 1000, &mut m.reader());
        assert_eq!(tables, vec![60, 61, 0x400]);
    }

    #[test]
    fn paging_off_means_identity_and_no_tables() {
        let mut m = Mem::default();
        let regs = VcpuRegs::default();
        assert_eq!(
            walk_page_tables(&regs, 100, 10, &mut m.reader()).0,
            Vec::<Pfn>::new()
        );
        assert_eq!(translate(&regs, 0x5000, 100, &mut m.reader()), Some(5));
        assert_eq!(translate(&regs, 0x500_0000, 100, &mut m.reader()), None);
    }

    #[test]
    fn cyclic_and_huge_trees_are_bounded() {
        let mut m = Mem::default();
        // A PML4 pointing to itself and to 512 PDPTs each pointing back.
        for i in 0..512 {
            m.set64(1, i, ((1000 + i as u64) << 12) | 3);
            for j in 0..512 {
                m.set64(1000 + i as u64, j, (1 << 12) | 3);
            }
        }
        let regs = long_mode(1);
        let (tables, cut) = walk_page_tables(&regs, 1 << 20, 100, &mut m.reader());
        assert!(cut);
        assert_eq!(tables.len(), 100);
        let (tables, cut) = walk_page_tables(&regs, 1 << 20, 10_000, &mut m.reader());
        assert!(!cut);
        assert_eq!(tables.len(), 513);
    }

    #[test]
    fn vcpu_pages_cover_tables_stack_code_and_descriptor_tables() {
        let mut m = four_level();
        // Map va 0x1000..0x10000 (PT 13 entries 1..16) to pfns 101.. .
        for i in 1..16u64 {
            m.set64(13, i as usize, ((100 + i) << 12) | 3);
        }
        let mut regs = long_mode(10);
        regs.rsp = 0x8800;
        regs.rip = 0x1ff8; // crosses into the next page
        regs.gdtr = (0xf000, 0x7f);
        regs.idtr = (0x0, 0xfff);
        let (pages, cut) = vcpu_pages(&regs, 1 << 20, &mut m.reader());
        assert!(!cut);
        for p in [10, 11, 12, 13, 20, 21, 22] {
            assert!(pages.contains(&p), "table {p}");
        }
        // Stack: 0x8800 - 16K .. 0x8800 + 16K → va 0x4800..0xc800.
        for va in (0x4000u64..=0xc000).step_by(0x1000) {
            assert!(pages.contains(&(100 + va / 0x1000)), "stack va {va:#x}");
        }
        assert!(pages.contains(&101) && pages.contains(&102), "code");
        assert!(pages.contains(&115), "gdt");
        assert!(pages.contains(&100), "idt");
        assert!(!pages.contains(&(100 + 0xd)), "beyond the stack window");
    }

    #[test]
    fn special_pfns_skip_unset_and_the_paging_ring() {
        let params: HashMap<u32, u64> = [
            (sys::HVM_PARAM_STORE_PFN, 0xfeffc),
            (sys::HVM_PARAM_CONSOLE_PFN, 0xfefff),
            (sys::HVM_PARAM_IOREQ_PFN, 0xfeffd),
            (sys::HVM_PARAM_BUFIOREQ_PFN, 0xfeffb),
            (sys::HVM_PARAM_IDENT_PT, 0xfeffe000),
            (sys::HVM_PARAM_VM86_TSS_SIZED, (0x180u64 << 32) | 0xfeffff00),
            (sys::HVM_PARAM_IOREQ_SERVER_PFN, 0xfeff0),
            (sys::HVM_PARAM_NR_IOREQ_SERVER_PAGES, 8),
            (sys::HVM_PARAM_PAGING_RING_PFN, 0xfeff8),
            (sys::HVM_PARAM_MONITOR_RING_PFN, 0),
        ]
        .into_iter()
        .collect();
        let got = special_pfns(|p| params.get(&p).copied());
        let want: BTreeSet<Pfn> = [
            0xfeffc, 0xfefff, 0xfeffd, 0xfeffb, 0xfeffe, 0xfefff, 0xff000, 0xfeff0, 0xfeff1,
            0xfeff2, 0xfeff3, 0xfeff4, 0xfeff5, 0xfeff6, 0xfeff7,
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        assert!(!got.contains(&0xfeff8));
    }

    fn descriptor(code: u16, inst: u16, len: u32) -> Vec<u8> {
        let mut v = code.to_le_bytes().to_vec();
        v.extend_from_slice(&inst.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    fn cpu_record(vcpu: u16, cr3: u64, rsp: u64) -> Vec<u8> {
        let cpu = sys::hvm_hw_cpu {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            msr_efer: EFER_LMA,
            rsp,
            rip: 0x1234,
            ..Default::default()
        };
        let size = size_of::<sys::hvm_hw_cpu>();
        let mut v = descriptor(CODE_CPU, vcpu, size as u32);
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&cpu as *const sys::hvm_hw_cpu).cast::<u8>(), size)
        };
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn hvm_context_yields_each_vcpu() {
        let mut buf = descriptor(1, 0, 24); // HEADER
        buf.extend_from_slice(&[0u8; 24]);
        buf.extend(cpu_record(0, 0x1000, 0xffff_c900_0000_8000));
        buf.extend(descriptor(3, 0, 4)); // some other record
        buf.extend_from_slice(&[9u8; 4]);
        buf.extend(cpu_record(1, 0x2000, 0x5000));
        buf.extend(descriptor(CODE_END, 0, 0));
        let regs = parse_hvm_context(&buf).unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[0].cr3, 0x1000);
        assert_eq!(regs[1].vcpu, 1);
        assert_eq!(regs[1].rsp, 0x5000);
        assert_eq!(regs[1].rip, 0x1234);
        assert_eq!(PagingMode::of(&regs[0]), PagingMode::FourLevel);
    }

    #[test]
    fn bad_hvm_contexts_are_errors() {
        let mut buf = descriptor(CODE_CPU, 0, 16);
        buf.extend_from_slice(&[0u8; 16]);
        buf.extend(descriptor(CODE_END, 0, 0));
        assert!(matches!(
            parse_hvm_context(&buf),
            Err(ContextError::ShortCpu { .. })
        ));
        let buf = descriptor(3, 0, 100);
        assert_eq!(parse_hvm_context(&buf), Err(ContextError::Truncated(0)));
        assert_eq!(parse_hvm_context(&[]), Err(ContextError::NoEnd));
        assert_eq!(
            parse_hvm_context(&[1, 2, 3]),
            Err(ContextError::Truncated(0))
        );
    }
}
