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
//!   GDT and IDT (the emulator reads descriptors and instructions);
//! - for each vCPU, what delivering an exception or an event needs
//!   ([`delivery_pages`]): the TSS, the stacks it names (RSP0, RSP1,
//!   IST1-7), the handler code behind every IDT gate and the SYSCALL /
//!   SYSENTER entries, and the kernel's per-CPU area at GS base.
//!
//! Everything is computed from the HVM context
//! ([`parse_hvm_context`]) of the suspended source domain.

use std::collections::BTreeSet;

use libxl_sys as sys;
use postcopy::{Pfn, PAGE_SIZE};

use crate::pagewalk::{translate, walk_page_tables, PageReader, PagingMode};

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
    /// TR base and limit: the task-state segment (x86-64: RSP0-2, IST1-7).
    pub tr: (u64, u32),
    /// TR is loaded: the P bit (7) of its saved attributes (a zeroed or
    /// never-loaded TR names no stacks).
    pub tr_present: bool,
    /// GS base (the kernel's per-CPU area while the vCPU is in the kernel).
    pub gs_base: u64,
    /// The other GS base (`MSR_KERNEL_GS_BASE`, swapped in by SWAPGS).
    pub shadow_gs: u64,
    /// `MSR_LSTAR`: the SYSCALL entry point.
    pub lstar: u64,
    /// `MSR_SYSENTER_EIP`: the SYSENTER entry point.
    pub sysenter_eip: u64,
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
            tr: (cpu.tr_base, cpu.tr_limit),
            tr_present: cpu.tr_arbytes & SEG_ATTR_P != 0,
            gs_base: cpu.gs_base,
            shadow_gs: cpu.shadow_gs,
            lstar: cpu.msr_lstar,
            sysenter_eip: cpu.sysenter_eip,
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

/// Bytes of the task-state segment the CPU reads to deliver an event: the
/// 104-byte hardware TSS (x86-64: RSP0-2 at 4, IST1-7 at 36; 32-bit: ESP0
/// at 4). Linux's TR limit also covers its I/O bitmap, which only IN/OUT
/// at CPL 3 reads: not needed to deliver anything.
pub const TSS_HW_BYTES: u64 = TSS_HW_LEN as u64;
const TSS_HW_LEN: usize = 104;
/// Bytes kept present below RSP0 and RSP1. RSP0 is where the CPU pushes
/// the frame of an event taken at CPL 3 (Linux x86-64: its one-page entry
/// stack; 32-bit kernels: the task stack), and Linux x86-64 keeps the top
/// of the current task's 16 KiB stack in RSP1 (`cpu_current_top_of_stack`),
/// where its entry code moves the frame next.
pub const PRIV_STACK_WINDOW: u64 = 16 * 1024;
/// Bytes kept present below each non-zero IST entry: a gate with an IST
/// index makes the CPU switch to that stack whatever the CPL (Linux x86-64:
/// #DF, NMI, #DB, #MC, #VC; 8 KiB each, 16 KiB with KASAN). The stacks sit
/// between unmapped guard pages, so reaching past one costs nothing.
pub const IST_STACK_WINDOW: u64 = 16 * 1024;
/// Bytes of code kept present at each IDT gate's target and at the
/// SYSCALL/SYSENTER entry points: the first instructions the vCPU runs
/// after a delivery (Linux: the `asm_exc_*`/`asm_sysvec_*` stubs and the
/// irq entry stubs, a few pages of `.entry.text` in all).
pub const HANDLER_BYTES: u64 = 64;
/// Bytes kept present from a kernel GS base (the per-CPU area: Linux's
/// entry code reads it with SWAPGS before anything else; its first pages
/// hold the stack canary and, page-aligned, the GDT, TSS and entry stack).
/// 256 KiB covers the whole static per-CPU area of Debian's 6.1 kernel
/// (0x35000 bytes), where Linux keeps the vcpu_info (0x313c0) and the
/// runstate area (0x2f040) it registers again with Xen as it resumes:
/// with 64 KiB both were absent at every resume and each registration
/// went through the paged-out restart path (a guest died there once in
/// 81 soak migrations, testbed/README.md).
pub const PERCPU_WINDOW: u64 = 256 * 1024;
/// IDT gates looked at (the IDT has at most 256).
const MAX_GATES: usize = 256;

const CR0_PE: u64 = 1;
/// The present bit of a saved segment's attributes (`hvm_hw_cpu.*_arbytes`:
/// type 0-3, S 4, DPL 5-6, P 7, ...).
const SEG_ATTR_P: u32 = 1 << 7;

/// The pages, besides those [`vcpu_pages`] finds, that the CPU or the
/// guest's first instructions need to deliver an exception or an interrupt
/// on one vCPU, by class.
///
/// Why they must be present before the guest resumes: while it delivers an
/// event the CPU reads the IDT gate, the GDT (the handler's code segment,
/// and the TSS descriptor), the TSS (RSP0 or an IST entry) and pushes the
/// frame on the new stack. A nested page fault on any of these is, on
/// paper, retried by Xen (SVM's EXITINTINFO / VMX's IDT-vectoring info are
/// re-injected once the page is in), but it makes every delivery that
/// touches an owed page a round trip to the source, and a fault while
/// delivering #DF is a triple fault: the guest is shut down. Post-copy
/// must not depend on the hypervisor (or an emulated CPU) getting every
/// one of those re-injections right: a post-copy guest died with a triple
/// fault on the emulated host (issue #21), so the whole delivery path is
/// made present before it resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryPages {
    /// The hardware part of the TSS ([`TSS_HW_BYTES`] from TR base).
    pub tss: BTreeSet<Pfn>,
    /// Below RSP0 and RSP1 ([`PRIV_STACK_WINDOW`]) and below each non-zero
    /// IST entry ([`IST_STACK_WINDOW`]).
    pub stacks: BTreeSet<Pfn>,
    /// Handler code at every present IDT gate (which includes the
    /// event-channel upcall vector, whatever it is) and at the
    /// SYSCALL/SYSENTER entry points ([`HANDLER_BYTES`] each).
    pub handlers: BTreeSet<Pfn>,
    /// From each kernel-half GS base ([`PERCPU_WINDOW`]): the per-CPU area.
    pub percpu: BTreeSet<Pfn>,
}

impl DeliveryPages {
    /// Every class together.
    pub fn all(&self) -> BTreeSet<Pfn> {
        let mut out = self.tss.clone();
        for class in [&self.stacks, &self.handlers, &self.percpu] {
            out.extend(class.iter().copied());
        }
        out
    }
}

/// True if `va` is canonical for the vCPU's paging mode (non-canonical
/// values in a saved register are garbage or hostile: skipped).
fn canonical(regs: &VcpuRegs, va: u64) -> bool {
    let bits = match PagingMode::of(regs) {
        PagingMode::FourLevel => 48,
        PagingMode::FiveLevel => 57,
        // Outside long mode addresses are 32 bits.
        _ => return va <= u64::from(u32::MAX),
    };
    let top = va >> (bits - 1);
    top == 0 || top == (1u64 << (65 - bits)) - 1
}

/// Reads `out.len()` bytes of linear memory at `va` through the vCPU's
/// page tables; false if a page is unmapped or unreadable.
fn read_linear(
    regs: &VcpuRegs,
    va: u64,
    out: &mut [u8],
    guest_pfns: u64,
    reader: &mut impl PageReader,
) -> bool {
    let mut page = [0u8; PAGE_SIZE];
    let mut done = 0usize;
    while done < out.len() {
        let at = va.wrapping_add(done as u64);
        let Some(pfn) = translate(regs, at, guest_pfns, reader) else {
            return false;
        };
        if !reader.read(pfn, &mut page) {
            return false;
        }
        let off = (at & 0xfff) as usize;
        let n = (PAGE_SIZE - off).min(out.len() - done);
        out[done..done + n].copy_from_slice(&page[off..off + n]);
        done += n;
    }
    true
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// The stack pages below `top` (a stack pointer: the stack grows down, so
/// the page at `top` itself is not used when `top` is page-aligned).
fn stack_below(
    regs: &VcpuRegs,
    top: u64,
    window: u64,
    guest_pfns: u64,
    reader: &mut impl PageReader,
    out: &mut BTreeSet<Pfn>,
) {
    if top == 0 || !canonical(regs, top) {
        return;
    }
    let lo = top.saturating_sub(window);
    linear_range(regs, lo, top - lo, guest_pfns, reader, out);
}

/// What one vCPU needs present to deliver an exception or an event, from
/// its TR, IDTR, GS bases and entry-point MSRs (see [`DeliveryPages`]).
/// Flat code and stack segments are assumed outside long mode (every
/// paged 32-bit OS uses them). Bounded whatever the registers say: at most
/// 2 TSS pages, 2 x 5 + 7 x 5 stack pages, 256 gates x 2 + 2 x 2 handler
/// pages and 2 x 17 per-CPU pages.
pub fn delivery_pages(
    regs: &VcpuRegs,
    guest_pfns: u64,
    reader: &mut impl PageReader,
) -> DeliveryPages {
    let mut d = DeliveryPages::default();
    // Real mode delivers through the IVT with no TSS or stack switch; the
    // IDT pages (the IVT) are already in vcpu_pages.
    if regs.cr0 & CR0_PE == 0 {
        return d;
    }
    let long = matches!(
        PagingMode::of(regs),
        PagingMode::FourLevel | PagingMode::FiveLevel
    );

    // The TSS and the stacks it names.
    let (tr_base, tr_limit) = regs.tr;
    let tss_len = (u64::from(tr_limit) + 1).min(TSS_HW_BYTES);
    if regs.tr_present && canonical(regs, tr_base) {
        linear_range(regs, tr_base, tss_len, guest_pfns, reader, &mut d.tss);
        let mut tss = [0u8; TSS_HW_LEN];
        // Past the limit reads as zero: no stack named there.
        let got = &mut tss[..usize::try_from(tss_len).unwrap_or(TSS_HW_LEN)];
        if read_linear(regs, tr_base, got, guest_pfns, reader) {
            // (stack top, window): 64-bit RSP0 and RSP1 (RSP2 is left out:
            // Linux keeps a user RSP there as SYSCALL scratch, and no
            // 64-bit OS runs ring 2) and IST1-7; 32-bit ESP0 and ESP1.
            let mut tops: Vec<(u64, u64)> = Vec::with_capacity(9);
            if long {
                tops.extend([4, 12].map(|at| (le64(&tss, at), PRIV_STACK_WINDOW)));
                tops.extend((0..7).map(|i| (le64(&tss, 36 + 8 * i), IST_STACK_WINDOW)));
            } else {
                tops.extend([4, 12].map(|at| (le32(&tss, at), PRIV_STACK_WINDOW)));
            }
            for (top, window) in tops {
                stack_below(regs, top, window, guest_pfns, reader, &mut d.stacks);
            }
        }
    }

    // The handler behind every present interrupt or trap gate.
    let (idt_base, idt_limit) = regs.idtr;
    let gate = if long { 16usize } else { 8 };
    let gates = usize::try_from((u64::from(idt_limit) + 1) / gate as u64)
        .unwrap_or(MAX_GATES)
        .min(MAX_GATES);
    if gates > 0 && canonical(regs, idt_base) {
        let mut idt = vec![0u8; gates * gate];
        if read_linear(regs, idt_base, &mut idt, guest_pfns, reader) {
            for g in idt.chunks_exact(gate) {
                let kind = g[5] & 0x0f;
                let present = g[5] & 0x80 != 0;
                // 64-bit: 0xe interrupt, 0xf trap gate; 32-bit also the
                // 16-bit 0x6/0x7. A task gate (0x5) has no offset.
                let is_gate = matches!(kind, 0xe | 0xf) || (!long && matches!(kind, 0x6 | 0x7));
                if !present || !is_gate {
                    continue;
                }
                let mut off = u64::from(u16::from_le_bytes([g[0], g[1]]))
                    | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16;
                if long {
                    off |= le32(g, 8) << 32;
                }
                if canonical(regs, off) {
                    linear_range(
                        regs,
                        off,
                        HANDLER_BYTES,
                        guest_pfns,
                        reader,
                        &mut d.handlers,
                    );
                }
            }
        }
    }
    for entry in [regs.lstar, regs.sysenter_eip] {
        if entry != 0 && canonical(regs, entry) {
            linear_range(
                regs,
                entry,
                HANDLER_BYTES,
                guest_pfns,
                reader,
                &mut d.handlers,
            );
        }
    }

    // The per-CPU area: whichever GS base is in the kernel half (GS base
    // in the kernel, the shadow one at user level; the user's TLS base is
    // no use to a delivery).
    if long {
        for base in [regs.gs_base, regs.shadow_gs] {
            if base >> 63 == 1 && canonical(regs, base) {
                linear_range(regs, base, PERCPU_WINDOW, guest_pfns, reader, &mut d.percpu);
            }
        }
    }
    d
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
        fn put(&mut self, pfn: Pfn, off: usize, bytes: &[u8]) {
            let p = self
                .pages
                .entry(pfn)
                .or_insert_with(|| Box::new([0; PAGE_SIZE]));
            p[off..off + bytes.len()].copy_from_slice(bytes);
        }
        /// Writes `bytes` at a linear address of `delivery_fixture`'s low
        /// map (va = i * 4 KiB → pfn 1000 + i), across pages.
        fn put_va(&mut self, va: u64, bytes: &[u8]) {
            for (k, b) in bytes.iter().enumerate() {
                let a = va + k as u64;
                self.put(1000 + (a >> 12), (a & 0xfff) as usize, &[*b]);
            }
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

    /// `four_level` plus: low va i * 4 KiB (i in 16..512) → pfn 1000 + i,
    /// and kernel va 0xffff_ffff_8000_0000 + i * 4 KiB (i < 80) → pfn
    /// 300 + i.
    fn delivery_fixture() -> Mem {
        let mut m = four_level();
        for i in 16..512u64 {
            m.set64(13, i as usize, ((1000 + i) << 12) | 3);
        }
        for i in 0..80u64 {
            m.set64(22, i as usize, ((300 + i) << 12) | 3);
        }
        m
    }

    /// A 64-bit IDT gate.
    fn gate64(off: u64, kind: u8, present: bool, ist: u8) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(off as u16).to_le_bytes());
        g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        g[4] = ist;
        g[5] = kind | if present { 0x80 } else { 0 };
        g[6..8].copy_from_slice(&((off >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((off >> 32) as u32).to_le_bytes());
        g
    }

    fn range(lo: Pfn, hi: Pfn) -> BTreeSet<Pfn> {
        (lo..=hi).collect()
    }

    #[test]
    fn delivery_covers_the_tss_its_stacks_and_each_ist_stack() {
        let mut m = delivery_fixture();
        // A TSS straddling two pages (pfns 1016, 1017): IST2 is read
        // across the boundary.
        let tss = 0x10fd0u64;
        let field = |m: &mut Mem, at: u64, v: u64| m.put_va(tss + at, &v.to_le_bytes());
        field(&mut m, 4, 0x30000); // RSP0, page-aligned top
        field(&mut m, 12, 0x50008); // RSP1
        field(&mut m, 20, 0x90000); // RSP2: scratch, left out
        field(&mut m, 36, 0x70000); // IST1
        field(&mut m, 44, 0xa0000); // IST2 (straddles)
        field(&mut m, 52, 0); // IST3 unused
        field(&mut m, 60, 0x0000_8000_0000_0000); // IST4 non-canonical
        let mut regs = long_mode(10);
        regs.tr = (tss, 0x206f);
        regs.tr_present = true;
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        assert_eq!(d.tss, range(1016, 1017));
        let mut want = range(0x2c + 1000, 0x2f + 1000); // below RSP0, not its page
        want.extend(range(0x4c + 1000, 0x50 + 1000)); // RSP1 - 16 KiB ..= RSP1
        want.extend(range(0x6c + 1000, 0x6f + 1000)); // IST1
        want.extend(range(0x9c + 1000, 0x9f + 1000)); // IST2
        assert_eq!(d.stacks, want);
        assert!(d.handlers.is_empty() && d.percpu.is_empty());
        // A TSS limit below the hardware size reads past it as zero: RSP0
        // only (bytes 0..12).
        regs.tr = (tss, 11);
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        assert_eq!(d.stacks, range(0x2c + 1000, 0x2f + 1000));
        assert_eq!(d.tss, range(1016, 1016));
        // TR not loaded (P clear): it names nothing.
        regs.tr_present = false;
        assert_eq!(
            delivery_pages(&regs, 1 << 20, &mut m.reader()),
            DeliveryPages::default()
        );
    }

    #[test]
    fn delivery_covers_the_handler_of_every_present_gate_and_the_entry_msrs() {
        let mut m = delivery_fixture();
        let idt = 0x20000u64;
        let mut put_gate = |v: u64, g: [u8; 16]| m.put_va(idt + 16 * v, &g);
        put_gate(14, gate64(0x41010, 0xe, true, 0)); // #PF
        put_gate(0xf3, gate64(0x42ff0, 0xe, true, 0)); // upcall, crosses a page
        put_gate(3, gate64(0x44000, 0xe, false, 0)); // not present
        put_gate(8, gate64(0x45000, 0xf, true, 1)); // #DF, trap gate on IST1
        put_gate(5, gate64(0x46000, 0x5, true, 0)); // task gate: no offset
        put_gate(200, gate64(0x0000_9000_0000_0000, 0xe, true, 0)); // non-canonical
        let mut regs = long_mode(10);
        regs.idtr = (idt, 0xfff);
        regs.lstar = 0x47000;
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        let want: BTreeSet<Pfn> = [1065, 1066, 1067, 1069, 1071].into_iter().collect();
        assert_eq!(d.handlers, want);
        assert!(d.tss.is_empty() && d.stacks.is_empty());
        // A shorter IDT limit drops the gates beyond it (vectors 0..=8
        // left: only #DF's handler, and LSTAR's).
        regs.idtr = (idt, 16 * 9 - 1);
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        let want: BTreeSet<Pfn> = [1069, 1071].into_iter().collect();
        assert_eq!(d.handlers, want);
    }

    #[test]
    fn delivery_covers_the_kernel_per_cpu_area_whichever_gs_holds_it() {
        let mut m = delivery_fixture();
        let percpu = 0xffff_ffff_8000_0000u64;
        let user_tls = 0x7f00_0000_0000u64;
        let mut regs = long_mode(10);
        // In the kernel: GS base is the per-CPU area, the shadow the TLS.
        regs.gs_base = percpu;
        regs.shadow_gs = user_tls;
        // The window's 64 pages of the 80 mapped.
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        assert_eq!(d.percpu, range(300, 363));
        // At user level SWAPGS has not run yet: the other way round.
        regs.gs_base = user_tls;
        regs.shadow_gs = percpu;
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        assert_eq!(d.percpu, range(300, 363));
        assert_eq!(d.all(), range(300, 363));
        // Neither in the kernel half: nothing.
        regs.shadow_gs = 0;
        assert!(delivery_pages(&regs, 1 << 20, &mut m.reader())
            .percpu
            .is_empty());
    }

    #[test]
    fn delivery_in_32_bit_protected_mode_reads_a_32_bit_tss_and_8_byte_gates() {
        let mut m = Mem::default();
        // Paging off: linear = physical. TSS at 0x5000, ESP0 0x9000.
        m.put(5, 4, &0x9000u32.to_le_bytes());
        m.put(5, 12, &0u32.to_le_bytes());
        // IDT at 0x3000: #PF 32-bit interrupt gate to 0x7010, vector 32 a
        // 16-bit interrupt gate to 0xa000, #DF a task gate.
        let gate32 = |off: u32, kind: u8| {
            let mut g = [0u8; 8];
            g[0..2].copy_from_slice(&(off as u16).to_le_bytes());
            g[5] = kind | 0x80;
            g[6..8].copy_from_slice(&((off >> 16) as u16).to_le_bytes());
            g
        };
        m.put(3, 14 * 8, &gate32(0x7010, 0xe));
        m.put(3, 32 * 8, &gate32(0xa000, 0x6));
        m.put(3, 8 * 8, &gate32(0xb000, 0x5));
        let regs = VcpuRegs {
            cr0: CR0_PE,
            tr: (0x5000, 0x67),
            tr_present: true,
            idtr: (0x3000, 0x7ff),
            // Ignored outside long mode.
            gs_base: 0xffff_ffff_8000_0000,
            ..Default::default()
        };
        let d = delivery_pages(&regs, 100, &mut m.reader());
        assert_eq!(d.tss, range(5, 5));
        assert_eq!(d.stacks, range(5, 8));
        let want: BTreeSet<Pfn> = [7, 10].into_iter().collect();
        assert_eq!(d.handlers, want);
        assert!(d.percpu.is_empty());
        // Real mode: the IVT needs no TSS and no stack switch.
        let real = VcpuRegs { cr0: 0, ..regs };
        assert_eq!(
            delivery_pages(&real, 100, &mut m.reader()),
            DeliveryPages::default()
        );
    }

    #[test]
    fn delivery_is_bounded_whatever_the_registers_say() {
        let mut m = delivery_fixture();
        // 256 present gates, each to the end of a different page: every
        // handler crosses into the next page.
        let idt = 0x20000u64;
        for v in 0..256u64 {
            m.put_va(
                idt + 16 * v,
                &gate64((16 + v) * 0x1000 + 0xff0, 0xe, true, 0),
            );
        }
        let mut regs = long_mode(10);
        regs.idtr = (idt, u32::MAX);
        regs.tr = (0xffff_8000_0000_0000, u32::MAX); // canonical, unmapped
        regs.tr_present = true;
        regs.gs_base = 0x8000_0000_0000_0000; // non-canonical
        regs.shadow_gs = u64::MAX; // canonical kernel half, unmapped
        regs.lstar = 0x1234_5678_9abc_def0; // non-canonical
        regs.sysenter_eip = u64::MAX - 10; // wraps: one page at most
        let d = delivery_pages(&regs, 1 << 20, &mut m.reader());
        assert!(d.tss.is_empty() && d.stacks.is_empty() && d.percpu.is_empty());
        // Pages 16..=272 of the low map, nothing else.
        assert_eq!(d.handlers, range(1016, 1272));
        assert!(d.all().len() <= 2 * MAX_GATES + 4);
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
            tr_base: 0xfffffe00_00003000,
            tr_limit: 0x206f,
            tr_arbytes: 0x8b, // present busy 64-bit TSS
            gs_base: 0xffff_8880_0fa0_0000,
            shadow_gs: 0x7f00_0000_1000,
            msr_lstar: 0xffff_ffff_8160_0080,
            sysenter_eip: 0xffff_ffff_8160_1000,
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
        assert_eq!(regs[1].tr, (0xfffffe00_00003000, 0x206f));
        assert!(regs[1].tr_present);
        assert_eq!(regs[1].gs_base, 0xffff_8880_0fa0_0000);
        assert_eq!(regs[1].shadow_gs, 0x7f00_0000_1000);
        assert_eq!(regs[1].lstar, 0xffff_ffff_8160_0080);
        assert_eq!(regs[1].sysenter_eip, 0xffff_ffff_8160_1000);
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
