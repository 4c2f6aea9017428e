//! The post-mortem of a guest that died on the destination during
//! post-copy (issue 21, item 1): written to the helper log so the cause
//! can be found afterwards.
//!
//! - every vCPU's registers from `xc_domain_hvm_getcontext` of the dead
//!   domain: RIP, RSP, RFLAGS, CR0/CR2/CR3/CR4, EFER, IDTR/GDTR, TR, FS/GS
//!   and shadow-GS bases, the pending event;
//! - the pages those registers point at (code, stack, IDT, GDT, TSS and
//!   the stacks it names, per-CPU areas), translated through the guest's
//!   page tables with [`crate::present::translate`] while the table pages
//!   are present, and which of them — tables or leaves — are owed pfns
//!   still absent;
//! - owed / received / absent counts;
//! - the lines of Xen's console ring about the domain (`xl dmesg`).
//!
//! Everything is best effort: a call that fails is logged and skipped.

use std::collections::{BTreeSet, HashMap};

use log::{error, warn};
use postcopy::{Pfn, PAGE_SIZE};

use crate::domain_watch::GuestDied;
use crate::present::{hvm_cpu_records, pending_event, translate, PageReader, VcpuRegs};
use crate::xc::{XcError, XenOps};

/// Most pages translated per register range (a bogus limit stays cheap).
const MAX_RANGE_PAGES: u64 = 16;
/// Bytes of a 64-bit TSS read for its stack pointers (RSP0-2, IST1-7).
const TSS64_LEN: usize = 0x68;
/// Most console lines copied into the log.
const MAX_CONSOLE_LINES: usize = 200;

/// The dead domain's pages through Xen: present pages are read once and
/// kept, absent (paged-out) ones are remembered.
struct DeadPages<'a, O: XenOps> {
    ops: &'a O,
    cache: HashMap<Pfn, Box<[u8; PAGE_SIZE]>>,
    absent: BTreeSet<Pfn>,
    /// Absent pfns met since the last [`check`] started.
    hits: BTreeSet<Pfn>,
    guest_pfns: u64,
}

impl<O: XenOps> DeadPages<'_, O> {
    /// Reads `pfn`: `Some(true)` present, `Some(false)` paged out, `None`
    /// unreadable for another reason.
    fn probe(&mut self, pfn: Pfn) -> Option<bool> {
        if self.cache.contains_key(&pfn) {
            return Some(true);
        }
        if self.absent.contains(&pfn) {
            self.hits.insert(pfn);
            return Some(false);
        }
        if pfn >= self.guest_pfns {
            return None;
        }
        let mut page = Box::new([0u8; PAGE_SIZE]);
        match self.ops.read_pages(&[pfn], &mut page[..]) {
            Ok(()) => {
                self.cache.insert(pfn, page);
                Some(true)
            }
            Err(XcError::PagedOut { .. }) => {
                self.absent.insert(pfn);
                self.hits.insert(pfn);
                Some(false)
            }
            Err(_) => None,
        }
    }
}

impl<O: XenOps> PageReader for DeadPages<'_, O> {
    fn read(&mut self, pfn: Pfn, buf: &mut [u8; PAGE_SIZE]) -> bool {
        if self.probe(pfn) != Some(true) {
            return false;
        }
        match self.cache.get(&pfn) {
            Some(p) => {
                buf.copy_from_slice(&p[..]);
                true
            }
            None => false,
        }
    }
}

/// One pointer-to-memory a vCPU needs to take an exception.
struct Target {
    what: String,
    va: u64,
    len: u64,
}

/// The pointers of one vCPU worth checking.
fn targets(regs: &VcpuRegs, cpu: &libxl_sys::hvm_hw_cpu) -> Vec<Target> {
    let t = |what: &str, va: u64, len: u64| Target {
        what: what.to_string(),
        va,
        len,
    };
    let mut v = vec![
        t("code at RIP", cpu.rip, 15),
        t("stack at RSP", cpu.rsp.saturating_sub(512), 1024),
        t("IDT", regs.idtr.0, u64::from(regs.idtr.1) + 1),
        t("GDT", regs.gdtr.0, u64::from(regs.gdtr.1) + 1),
        t("TSS", cpu.tr_base, TSS64_LEN as u64),
    ];
    for (name, base) in [
        ("FS base", cpu.fs_base),
        ("GS base", cpu.gs_base),
        ("shadow GS base", cpu.shadow_gs),
    ] {
        if base != 0 {
            v.push(t(name, base, 1));
        }
    }
    v
}

/// The stack pointers in a 64-bit TSS at `tr_base` (RSP0 and IST1-7; the
/// top of each stack is the byte below the pointer).
fn tss_stacks<O: XenOps>(
    regs: &VcpuRegs,
    tr_base: u64,
    pages: &mut DeadPages<'_, O>,
) -> Vec<Target> {
    let off = (tr_base & 0xfff) as usize;
    if off + TSS64_LEN > PAGE_SIZE {
        return Vec::new();
    }
    let Some(pfn) = translate(regs, tr_base, pages.guest_pfns, pages) else {
        return Vec::new();
    };
    let mut page = [0u8; PAGE_SIZE];
    if !pages.read(pfn, &mut page) {
        return Vec::new();
    }
    let word = |at: usize| {
        let b = &page[off + at..off + at + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    };
    let mut v = Vec::new();
    let rsp0 = word(4);
    if rsp0 != 0 {
        v.push(Target {
            what: "TSS RSP0 stack".into(),
            va: rsp0.wrapping_sub(1),
            len: 1,
        });
    }
    for i in 1..=7usize {
        let ist = word(0x24 + 8 * (i - 1));
        if ist != 0 {
            v.push(Target {
                what: format!("TSS IST{i} stack"),
                va: ist.wrapping_sub(1),
                len: 1,
            });
        }
    }
    v
}

/// Checks one target: each page's pfn and whether it is present; returns
/// the log line and the owed pfns found absent (tables and leaves).
fn check<O: XenOps>(
    regs: &VcpuRegs,
    t: &Target,
    pages: &mut DeadPages<'_, O>,
    is_owed: &dyn Fn(Pfn) -> bool,
) -> (String, BTreeSet<Pfn>) {
    pages.hits.clear();
    let first = t.va & !0xfff;
    let last = t.va.saturating_add(t.len.max(1) - 1) & !0xfff;
    let mut parts = Vec::new();
    let mut leaves = BTreeSet::new();
    let mut page = first;
    for _ in 0..MAX_RANGE_PAGES {
        let state = match translate(regs, page, pages.guest_pfns, pages) {
            Some(pfn) => {
                leaves.insert(pfn);
                match pages.probe(pfn) {
                    Some(true) => format!("pfn {pfn:#x} present"),
                    Some(false) if is_owed(pfn) => format!("pfn {pfn:#x} ABSENT (owed)"),
                    Some(false) => format!("pfn {pfn:#x} ABSENT (not owed)"),
                    None => format!("pfn {pfn:#x} unreadable"),
                }
            }
            None => "not translatable".to_string(),
        };
        parts.push(state);
        if page >= last {
            break;
        }
        page = page.wrapping_add(0x1000);
    }
    // Every pfn found absent while checking this target: the leaves, and
    // the page tables the translation could not read.
    let absent = std::mem::take(&mut pages.hits);
    let tables: Vec<String> = absent
        .iter()
        .filter(|p| !leaves.contains(p))
        .map(|p| format!("{p:#x}"))
        .collect();
    let mut line = format!("{} {:#x}: {}", t.what, t.va, parts.join(", "));
    if !tables.is_empty() {
        line.push_str(&format!(
            " (page-table pfns absent on the way: {})",
            tables.join(" ")
        ));
    }
    (line, absent.into_iter().filter(|&p| is_owed(p)).collect())
}

/// True if a console line is about domain `domid` (`d5v0 ...`, `(d5)`,
/// `d5:`, `dom5`, `domain 5`).
pub fn mentions_domain(line: &str, domid: u32) -> bool {
    let id = domid.to_string();
    let bytes = line.as_bytes();
    for prefix in ["d", "dom", "domain ", "Domain ", "domid "] {
        let pat = format!("{prefix}{id}");
        let mut from = 0;
        while let Some(i) = line[from..].find(&pat) {
            let at = from + i;
            let end = at + pat.len();
            let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
            let after_ok = end >= bytes.len() || !bytes[end].is_ascii_digit();
            if before_ok && after_ok {
                return true;
            }
            from = at + 1;
        }
    }
    false
}

/// Writes the post-mortem of the dead domain to the log (at ERROR level,
/// so it reaches xl's log whatever its verbosity) and returns its lines.
pub fn post_mortem<O: XenOps>(
    ops: &O,
    death: &GuestDied,
    guest_pfns: u64,
    is_owed: &dyn Fn(Pfn) -> bool,
) -> Vec<String> {
    let domid = ops.domid();
    let mut out = vec![format!(
        "post-mortem of domain {domid}: {}; owed {}, received {}, still absent {}",
        death.death,
        death.owed,
        death.owed.saturating_sub(death.absent),
        death.absent
    )];
    match ops.hvm_context() {
        Err(e) => out.push(format!("cannot read the HVM context: {e}")),
        Ok(ctx) => match hvm_cpu_records(&ctx) {
            Err(e) => out.push(format!("cannot parse the HVM context: {e}")),
            Ok(cpus) => {
                let mut pages = DeadPages {
                    ops,
                    cache: HashMap::new(),
                    absent: BTreeSet::new(),
                    hits: BTreeSet::new(),
                    guest_pfns,
                };
                for (vcpu, cpu) in &cpus {
                    vcpu_lines(*vcpu, cpu, &mut pages, is_owed, &mut out);
                }
            }
        },
    }
    match ops.read_console() {
        Err(e) => out.push(format!("cannot read Xen's console ring: {e}")),
        Ok(ring) => {
            let text = String::from_utf8_lossy(&ring);
            let lines: Vec<&str> = text.lines().filter(|l| mentions_domain(l, domid)).collect();
            if lines.is_empty() {
                out.push(format!("Xen's console ring has no line about d{domid}"));
            }
            let skip = lines.len().saturating_sub(MAX_CONSOLE_LINES);
            for l in &lines[skip..] {
                out.push(format!("xen console: {l}"));
            }
        }
    }
    for l in &out {
        error!("{l}");
    }
    if out.len() == 1 {
        warn!("post-mortem of domain {domid}: nothing else could be read");
    }
    out
}

fn vcpu_lines<O: XenOps>(
    vcpu: u16,
    cpu: &libxl_sys::hvm_hw_cpu,
    pages: &mut DeadPages<'_, O>,
    is_owed: &dyn Fn(Pfn) -> bool,
    out: &mut Vec<String>,
) {
    let regs = VcpuRegs::from_cpu(vcpu, cpu);
    out.push(format!(
        "vCPU {vcpu}: RIP {:#x} RSP {:#x} RFLAGS {:#x} CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
        cpu.rip, cpu.rsp, cpu.rflags, cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.msr_efer
    ));
    let ev = pending_event(cpu);
    let pending = if ev & (1 << 31) != 0 {
        format!(
            "vector {} type {}{}",
            ev & 0xff,
            (ev >> 8) & 7,
            if ev & (1 << 11) != 0 {
                format!(" error code {:#x}", cpu.error_code)
            } else {
                String::new()
            }
        )
    } else {
        "none".to_string()
    };
    out.push(format!(
        "vCPU {vcpu}: IDTR {:#x}/{:#x} GDTR {:#x}/{:#x} TR base {:#x} FS base {:#x} GS base {:#x} shadow GS {:#x}; pending event: {pending}",
        cpu.idtr_base, cpu.idtr_limit, cpu.gdtr_base, cpu.gdtr_limit, cpu.tr_base,
        cpu.fs_base, cpu.gs_base, cpu.shadow_gs
    ));
    let mut all = targets(&regs, cpu);
    all.extend(tss_stacks(&regs, cpu.tr_base, pages));
    let mut absent = BTreeSet::new();
    for t in &all {
        let (line, a) = check(&regs, t, pages, is_owed);
        out.push(format!("vCPU {vcpu}: {line}"));
        absent.extend(a);
    }
    let list: Vec<String> = absent.iter().map(|p| format!("{p:#x}")).collect();
    out.push(format!(
        "vCPU {vcpu}: owed pfns still absent among the pages its registers point at: {}",
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(" ")
        }
    ));
}
