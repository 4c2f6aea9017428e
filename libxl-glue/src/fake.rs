//! A fake of the [`XenOps`] wrappers for unit tests: a domain's p2m as a
//! map, mem_paging semantics (nominate/evict/load and their errnos) and the
//! hypervisor's end of the vm_event ring, written with the real C `RING_*`
//! macros (`libxl_sys::ring_oracle`). Test-only; nothing else uses it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use libxl_sys as sys;
use libxl_sys::ring_oracle as c;
use postcopy::{Pfn, PAGE_SIZE};

use crate::xc::{
    DomainInfo, PfnType, XcError, XcResult, XenOps, LOAD_BATCH_MAX, LOAD_BATCH_OP, PFINFO_XTAB,
};

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// The fake hypervisor state of one domain.
pub struct FakeState {
    /// Populated pfns and their content.
    pub pages: HashMap<Pfn, Box<[u8; PAGE_SIZE]>>,
    /// Paged-out pfns.
    pub paged: HashSet<Pfn>,
    /// Nominated (not yet evicted) pfns.
    pub nominated: HashSet<Pfn>,
    /// HVM params.
    pub params: HashMap<u32, u64>,
    /// The HVM context returned by `hvm_context`.
    pub context: Vec<u8>,
    /// The highest gpfn.
    pub max_gpfn: Pfn,
    /// errno to return from the named call.
    pub fail: HashMap<&'static str, i32>,
    /// Every call made, in order.
    pub calls: Vec<String>,
    /// Responses received from the pager.
    pub responses: Vec<sys::vm_event_response_t>,
    /// Requests the "hypervisor" could not queue (ring full).
    pub overflow: Vec<Pfn>,
    /// Log-dirty mode on, and the dirty set.
    pub logdirty: Option<BTreeSet<Pfn>>,
    /// The domain's run state (`None`: destroyed); running by default.
    pub domain: Option<DomainInfo>,
    /// Xen's console ring.
    pub console: Vec<u8>,
    /// `XENMEM_paging_op_load_batch` stops (as if preempted) after this
    /// many entries of a call.
    pub preempt_after: Option<u32>,
    /// Pages the batch op loaded as zero pages (no content passed).
    pub zero_loads: u64,
    /// Toolstack pauses (Xen's `controller_pause_count`).
    pub pauses: u32,
    /// Paged-out gfns given back with decrease_reservation (each would
    /// queue a DROP_PAGE request in Xen).
    pub dropped_paged: u64,
    paging: bool,
    ring_mapped: bool,
    evtchn_pending: bool,
    notifications: u64,
    front: Vec<u64>,
}

impl FakeState {
    /// Marks `pfn` dirty if log-dirty mode is on.
    fn mark(&mut self, pfn: Pfn) {
        if let Some(d) = self.logdirty.as_mut() {
            d.insert(pfn);
        }
    }
}

/// What a test runs when a page is loaded.
pub type LoadHook = Box<dyn Fn(&FakeXen, Pfn) + Send>;

/// The fake.
pub struct FakeXen {
    domid: u32,
    st: Mutex<FakeState>,
    /// Runs at the start of each `xc_mem_paging_load`, outside the state
    /// lock (a guest can touch the page while it is being loaded).
    on_load: Mutex<Option<LoadHook>>,
    ring: Box<Page>,
    cv: Condvar,
}

// SAFETY: the ring page is only touched under the state mutex (by the
// fake) or by the pager's BackRing, exactly as a shared page with the real
// hypervisor.
unsafe impl Send for FakeXen {}
// SAFETY: as above.
unsafe impl Sync for FakeXen {}

impl FakeXen {
    /// A domain of `max_gpfn + 1` pfns with no memory.
    pub fn new(domid: u32, max_gpfn: Pfn) -> FakeXen {
        // SAFETY: size query.
        let front_words = unsafe { c::libxl_sys_test_front_ring_size() }.div_ceil(8);
        FakeXen {
            domid,
            on_load: Mutex::new(None),
            st: Mutex::new(FakeState {
                pages: HashMap::new(),
                paged: HashSet::new(),
                nominated: HashSet::new(),
                params: HashMap::new(),
                context: Vec::new(),
                max_gpfn,
                fail: HashMap::new(),
                calls: Vec::new(),
                responses: Vec::new(),
                overflow: Vec::new(),
                logdirty: None,
                domain: Some(DomainInfo::default()),
                console: Vec::new(),
                preempt_after: None,
                zero_loads: 0,
                pauses: 0,
                dropped_paged: 0,
                paging: false,
                ring_mapped: false,
                evtchn_pending: false,
                notifications: 0,
                front: vec![0; front_words],
            }),
            ring: Box::new(Page([0xa5; PAGE_SIZE])),
            cv: Condvar::new(),
        }
    }

    /// The state, for setup and checks.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `hook` at the start of every page load.
    pub fn on_load(&self, hook: LoadHook) {
        *self.on_load.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Populates `pfn` with a page filled by `byte`.
    pub fn fill(&self, pfn: Pfn, byte: u8) {
        self.state().pages.insert(pfn, Box::new([byte; PAGE_SIZE]));
    }

    /// The guest writes `byte` over populated `pfn`: log-dirty (if on)
    /// marks it.
    pub fn guest_write(&self, pfn: Pfn, byte: u8) {
        let mut st = self.state();
        let page = st
            .pages
            .get_mut(&pfn)
            .expect("the guest writes a populated pfn");
        page.fill(byte);
        st.mark(pfn);
    }

    /// The guest's balloon driver takes `pfn` back from Xen
    /// (XENMEM_populate_physmap) and leaves it untouched: log-dirty (if on)
    /// marks it, as `xen-logdirty-p2m-changes` makes the hypervisor do.
    pub fn guest_populate(&self, pfn: Pfn) {
        let mut st = self.state();
        assert!(
            !st.pages.contains_key(&pfn),
            "populate of live pfn {pfn:#x}"
        );
        st.pages.insert(pfn, Box::new([0; PAGE_SIZE]));
        st.mark(pfn);
    }

    /// The guest's balloon driver hands `pfn` to Xen
    /// (XENMEM_decrease_reservation): log-dirty (if on) marks it.
    pub fn guest_release(&self, pfn: Pfn) {
        let mut st = self.state();
        assert!(
            st.pages.remove(&pfn).is_some(),
            "release of a hole {pfn:#x}"
        );
        st.mark(pfn);
    }

    /// A read of `pfns` logged as `op`: ENOENT for a paged-out pfn, EINVAL
    /// for an unpopulated one, as Xen answers a foreign mapping.
    fn read_as(&self, op: &'static str, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, op)?;
        for (p, o) in pfns.iter().zip(out.chunks_mut(PAGE_SIZE)) {
            if st.paged.contains(p) {
                return Err(XcError::from_errno(op, libc::ENOENT, Some(*p)));
            }
            let Some(page) = st.pages.get(p) else {
                return Err(XcError::from_errno(op, libc::EINVAL, Some(*p)));
            };
            o.copy_from_slice(&page[..]);
        }
        Ok(())
    }

    fn call(&self, st: &mut FakeState, name: &'static str) -> XcResult<()> {
        st.calls.push(name.to_string());
        if let Some(&e) = st.fail.get(name) {
            return Err(XcError::from_errno(name, e, None));
        }
        Ok(())
    }

    /// A vCPU touches `pfn`: if it is paged out, the hypervisor pauses the
    /// vCPU and queues a paging request (with VCPU_PAUSED) and signals the
    /// event channel. Returns true if a request was queued.
    pub fn guest_touch(&self, pfn: Pfn, vcpu: u32) -> bool {
        self.request(pfn, vcpu, sys::VM_EVENT_FLAG_VCPU_PAUSED, 0)
    }

    /// A dom0 backend (or the device model) maps `pfn` for the guest:
    /// Xen queues the paging request from dom0's vCPU `vcpu`, flagged
    /// FOREIGN, without pausing any of the guest's vCPUs.
    pub fn foreign_touch(&self, pfn: Pfn, vcpu: u32) -> bool {
        self.request(pfn, vcpu, sys::VM_EVENT_FLAG_FOREIGN, 0)
    }

    /// The guest balloons out a paged-out pfn (DROP_PAGE request).
    pub fn guest_drop(&self, pfn: Pfn) -> bool {
        let queued = self.request(pfn, 0, 0, sys::MEM_PAGING_DROP_PAGE);
        if queued {
            self.state().paged.remove(&pfn);
        }
        queued
    }

    fn request(&self, pfn: Pfn, vcpu: u32, flags: u32, pflags: u32) -> bool {
        let mut st = self.state();
        if !st.paging || !st.paged.contains(&pfn) {
            return false;
        }
        let mut req = sys::vm_event_request_t {
            version: sys::VM_EVENT_INTERFACE_VERSION,
            flags,
            reason: sys::VM_EVENT_REASON_MEM_PAGING,
            vcpu_id: vcpu,
            ..Default::default()
        };
        req.u.mem_paging.gfn = pfn;
        req.u.mem_paging.flags = pflags;
        // SAFETY: front ring state lives in st.front, attached to the ring
        // page at paging_enable; req is valid.
        let rc = unsafe { c::libxl_sys_test_front_put(st.front.as_mut_ptr().cast(), &req) };
        if rc < 0 {
            st.overflow.push(pfn);
            return false;
        }
        if rc == 1 {
            st.evtchn_pending = true;
            self.cv.notify_all();
        }
        true
    }

    /// Collects the pager's responses from the ring (as Xen's
    /// vm_event_resume does on a notification).
    pub fn collect_responses(&self) -> usize {
        let mut st = self.state();
        let mut n = 0;
        loop {
            let mut rsp = sys::vm_event_response_t::default();
            // SAFETY: as in request(); rsp is a valid out-pointer.
            let got =
                unsafe { c::libxl_sys_test_front_get(st.front.as_mut_ptr().cast(), &mut rsp) };
            if got != 1 {
                break;
            }
            st.responses.push(rsp);
            n += 1;
        }
        n
    }

    /// A paused vCPU waits for the pager's response to its request on
    /// `gfn` (taking it off the list). False on timeout.
    pub fn wait_response(&self, vcpu: u32, gfn: Pfn, timeout: Duration) -> bool {
        let t = std::time::Instant::now();
        loop {
            self.collect_responses();
            {
                let mut st = self.state();
                let pos = st.responses.iter().position(|r| {
                    // SAFETY: paging responses carry the mem_paging member.
                    r.vcpu_id == vcpu && unsafe { r.u.mem_paging.gfn } == gfn
                });
                if let Some(i) = pos {
                    st.responses.remove(i);
                    return true;
                }
            }
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Notifications received from the pager.
    pub fn notifications(&self) -> u64 {
        self.state().notifications
    }

    /// The toolstack pauses (true) or unpauses the domain.
    pub fn set_paused(&self, paused: bool) {
        if let Some(d) = self.state().domain.as_mut() {
            // An unpaused guest's vCPUs run at once.
            if d.paused && !paused {
                d.cpu_time_ns += 1_000;
            }
            d.paused = paused;
        }
    }

    /// The guest runs, then the toolstack destroys the domain, with no
    /// look in between.
    pub fn unpause_and_destroy(&self) {
        if let Some(d) = self.state().domain.as_mut() {
            d.paused = false;
            d.cpu_time_ns += 1_000;
            d.dying = true;
        }
    }

    /// The toolstack destroys the domain: it is dying (Xen keeps it while
    /// the pager still maps its ring).
    pub fn destroy(&self) {
        if let Some(d) = self.state().domain.as_mut() {
            d.dying = true;
        }
    }

    /// The guest shuts down with `SHUTDOWN_*` `reason` (a triple fault is
    /// `reboot` unless the guest set HVM_PARAM_TRIPLE_FAULT_REASON), and
    /// Xen logs `line` on its console.
    pub fn guest_shutdown(&self, reason: u32, line: &str) {
        let mut st = self.state();
        if let Some(d) = st.domain.as_mut() {
            d.shutdown = Some(reason);
        }
        st.console.extend_from_slice(line.as_bytes());
        st.console.push(b'\n');
    }
}

impl XenOps for FakeXen {
    fn domid(&self) -> u32 {
        self.domid
    }

    fn maximum_gpfn(&self) -> XcResult<Pfn> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_maximum_gpfn")?;
        Ok(st.max_gpfn)
    }

    fn pfn_types(&self, pfns: &[Pfn]) -> XcResult<Vec<PfnType>> {
        let mut st = self.state();
        self.call(&mut st, "xc_get_pfn_type_batch")?;
        assert!(pfns.len() <= crate::xc::MAX_BATCH, "batch too large");
        Ok(pfns
            .iter()
            // Like getpageframeinfo3: a paged-out gfn reads as XTAB.
            .map(|p| {
                if st.pages.contains_key(p) {
                    0
                } else {
                    PFINFO_XTAB
                }
            })
            .collect())
    }

    fn read_pages(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        self.read_as("xenforeignmemory_map(read)", pfns, out)
    }

    fn read_pages_kept(&self, pfns: &[Pfn], out: &mut [u8]) -> XcResult<()> {
        self.read_as("xenforeignmemory_map(read, kept)", pfns, out)
    }

    fn write_pages(&self, pfns: &[Pfn], data: &[u8]) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xenforeignmemory_map(write)")?;
        for (p, d) in pfns.iter().zip(data.chunks(PAGE_SIZE)) {
            if st.paged.contains(p) {
                return Err(XcError::from_errno(
                    "xenforeignmemory_map(write)",
                    libc::ENOENT,
                    Some(*p),
                ));
            }
            let Some(page) = st.pages.get_mut(p) else {
                return Err(XcError::from_errno(
                    "xenforeignmemory_map(write)",
                    libc::EINVAL,
                    Some(*p),
                ));
            };
            page.copy_from_slice(d);
        }
        Ok(())
    }

    fn hvm_param(&self, param: u32) -> XcResult<u64> {
        let mut st = self.state();
        self.call(&mut st, "xc_hvm_param_get")?;
        Ok(st.params.get(&param).copied().unwrap_or(0))
    }

    fn set_hvm_param(&self, param: u32, value: u64) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_hvm_param_set")?;
        st.params.insert(param, value);
        Ok(())
    }

    fn hvm_context(&self) -> XcResult<Vec<u8>> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_hvm_getcontext")?;
        Ok(st.context.clone())
    }

    fn populate(&self, pfns: &[Pfn]) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_populate_physmap_exact")?;
        for &p in pfns {
            // Populating a paged-out or present gfn would orphan a page in
            // real Xen: the backends must never do it.
            assert!(
                !st.pages.contains_key(&p) && !st.paged.contains(&p),
                "populate of live pfn {p:#x}"
            );
            assert!(
                p <= st.max_gpfn || st.params.values().any(|&v| v == p),
                "populate beyond the guest"
            );
            st.pages.insert(p, Box::new([0; PAGE_SIZE]));
            st.mark(p);
        }
        Ok(())
    }

    fn decrease_reservation(&self, pfns: &[Pfn]) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_decrease_reservation_exact")?;
        for &p in pfns {
            // A paged-out gfn is removed too (guest_remove_page), but Xen
            // then queues a DROP_PAGE request that holds a ring slot: the
            // backends load such gfns first, and the fake counts it.
            if st.paged.remove(&p) {
                st.dropped_paged += 1;
            }
            if st.pages.remove(&p).is_some() {
                st.mark(p);
            }
        }
        Ok(())
    }

    fn paging_enable(&self) -> XcResult<u32> {
        let mut st = self.state();
        self.call(&mut st, "xc_mem_paging_enable")?;
        if st.paging {
            return Err(XcError::from_errno(
                "xc_mem_paging_enable",
                libc::EBUSY,
                None,
            ));
        }
        if !st.ring_mapped {
            return Err(XcError::from_errno(
                "xc_mem_paging_enable",
                libc::EINVAL,
                None,
            ));
        }
        st.paging = true;
        let page = self.ring.0.as_ptr().cast_mut();
        // SAFETY: Xen attaches its front end to the (mapped) ring page.
        unsafe { c::libxl_sys_test_front_init(st.front.as_mut_ptr().cast(), page.cast()) };
        Ok(5)
    }

    fn paging_disable(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_mem_paging_disable")?;
        st.paging = false;
        Ok(())
    }

    fn paging_nominate(&self, pfn: Pfn) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_mem_paging_nominate")?;
        if !st.paging {
            return Err(XcError::from_errno(
                "xc_mem_paging_nominate",
                libc::ENODEV,
                Some(pfn),
            ));
        }
        if !st.pages.contains_key(&pfn) {
            return Err(XcError::from_errno(
                "xc_mem_paging_nominate",
                libc::EINVAL,
                Some(pfn),
            ));
        }
        st.nominated.insert(pfn);
        Ok(())
    }

    fn paging_evict(&self, pfn: Pfn) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_mem_paging_evict")?;
        if !st.nominated.remove(&pfn) {
            return Err(XcError::from_errno(
                "xc_mem_paging_evict",
                libc::EBUSY,
                Some(pfn),
            ));
        }
        st.pages.remove(&pfn);
        st.paged.insert(pfn);
        Ok(())
    }

    fn paging_absent_range(&self, first: Pfn, nr: u32) -> XcResult<u32> {
        let mut st = self.state();
        self.call(&mut st, "XENMEM_paging_op_absent_range")?;
        if !st.paging {
            return Err(XcError::from_errno(
                "XENMEM_paging_op_absent_range",
                libc::ENODEV,
                Some(first),
            ));
        }
        let mut done = 0;
        for p in first..first + u64::from(nr) {
            // As Xen: a page is nominated and evicted, a hole marked; a
            // gfn already paged out is neither and stops the call.
            if st.paged.contains(&p) {
                break;
            }
            st.pages.remove(&p);
            st.nominated.remove(&p);
            st.paged.insert(p);
            done += 1;
        }
        Ok(done)
    }

    fn paging_load(&self, pfn: Pfn, page: &[u8]) -> XcResult<()> {
        if let Some(hook) = &*self.on_load.lock().unwrap_or_else(|e| e.into_inner()) {
            hook(self, pfn);
        }
        let mut st = self.state();
        self.call(&mut st, "xc_mem_paging_load")?;
        if !st.paged.remove(&pfn) {
            return Err(XcError::from_errno(
                "xc_mem_paging_load",
                libc::ENOENT,
                Some(pfn),
            ));
        }
        let mut b = Box::new([0u8; PAGE_SIZE]);
        b.copy_from_slice(page);
        st.pages.insert(pfn, b);
        Ok(())
    }

    fn paging_load_batch(&self, pages: &[(Pfn, Option<&[u8]>)]) -> XcResult<u32> {
        assert!(pages.len() <= LOAD_BATCH_MAX, "batch too large");
        {
            let mut st = self.state();
            self.call(&mut st, LOAD_BATCH_OP)?;
        }
        let mut done = 0u32;
        for &(pfn, page) in pages {
            // As Xen: a preemption check between entries, never before
            // the first.
            if done > 0 && self.state().preempt_after.is_some_and(|n| done >= n) {
                break;
            }
            if let Some(hook) = &*self.on_load.lock().unwrap_or_else(|e| e.into_inner()) {
                hook(self, pfn);
            }
            let mut st = self.state();
            if !st.paged.remove(&pfn) {
                // Stops at the failing entry; its error only if first.
                if done == 0 {
                    return Err(XcError::from_errno(LOAD_BATCH_OP, libc::ENOENT, Some(pfn)));
                }
                break;
            }
            let mut b = Box::new([0u8; PAGE_SIZE]);
            match page {
                Some(p) => b.copy_from_slice(p),
                None => st.zero_loads += 1,
            }
            st.pages.insert(pfn, b);
            done += 1;
        }
        Ok(done)
    }

    fn map_ring(&self, pfn: Pfn) -> XcResult<NonNull<u8>> {
        let mut st = self.state();
        self.call(&mut st, "xenforeignmemory_map(ring)")?;
        if !st.pages.contains_key(&pfn) {
            return Err(XcError::from_errno(
                "xenforeignmemory_map(ring)",
                libc::EINVAL,
                Some(pfn),
            ));
        }
        st.ring_mapped = true;
        Ok(NonNull::from(&self.ring.0).cast())
    }

    fn unmap_ring(&self, _page: NonNull<u8>) {
        let mut st = self.state();
        st.calls.push("xenforeignmemory_unmap(ring)".into());
        st.ring_mapped = false;
    }

    fn evtchn_bind(&self, remote_port: u32) -> XcResult<u32> {
        let mut st = self.state();
        self.call(&mut st, "xenevtchn_bind_interdomain")?;
        assert_eq!(remote_port, 5);
        Ok(42)
    }

    fn evtchn_wait(&self, timeout: Duration) -> XcResult<bool> {
        let st = self.state();
        let (mut st, _) = self
            .cv
            .wait_timeout_while(st, timeout, |s| !s.evtchn_pending)
            .unwrap_or_else(|e| e.into_inner());
        let fired = st.evtchn_pending;
        st.evtchn_pending = false;
        Ok(fired)
    }

    fn evtchn_notify(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xenevtchn_notify")?;
        st.notifications += 1;
        Ok(())
    }

    fn logdirty_enable(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_logdirty_control(ENABLE_LOGDIRTY)")?;
        st.logdirty = Some(BTreeSet::new());
        Ok(())
    }

    fn logdirty_clean(&self, bitmap: &mut [u64], pages: u64) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_logdirty_control(CLEAN)")?;
        let Some(dirty) = st.logdirty.as_mut() else {
            return Err(XcError::from_errno(
                "xc_logdirty_control(CLEAN)",
                libc::EINVAL,
                None,
            ));
        };
        bitmap.fill(0);
        for &p in dirty.iter().filter(|&&p| p < pages) {
            bitmap[(p / 64) as usize] |= 1 << (p % 64);
        }
        dirty.clear();
        Ok(())
    }

    fn logdirty_disable(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_logdirty_control(OFF)")?;
        st.logdirty = None;
        Ok(())
    }

    fn domain_info(&self) -> XcResult<Option<DomainInfo>> {
        // Not in `calls`: the watch polls it all the time.
        let mut st = self.state();
        if let Some(&e) = st.fail.get("xc_domain_getinfolist") {
            return Err(XcError::from_errno("xc_domain_getinfolist", e, None));
        }
        // An unpaused guest's vCPUs run: a millisecond between two looks.
        if let Some(d) = st.domain.as_mut().filter(|d| !d.paused && !d.dying) {
            d.cpu_time_ns += 1_000_000;
        }
        Ok(st.domain)
    }

    fn pause(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_pause")?;
        st.pauses += 1;
        if let Some(d) = st.domain.as_mut() {
            d.paused = true;
        }
        Ok(())
    }

    fn unpause(&self) -> XcResult<()> {
        let mut st = self.state();
        self.call(&mut st, "xc_domain_unpause")?;
        if st.pauses == 0 {
            return Err(XcError::from_errno("xc_domain_unpause", libc::EINVAL, None));
        }
        st.pauses -= 1;
        let left = st.pauses;
        if let Some(d) = st.domain.as_mut() {
            d.paused = left > 0;
        }
        Ok(())
    }

    fn read_console(&self) -> XcResult<Vec<u8>> {
        let mut st = self.state();
        self.call(&mut st, "xc_readconsolering")?;
        Ok(st.console.clone())
    }
}
