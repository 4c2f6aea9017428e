//! The back (consumer) end of a vm_event ring, in Rust.
//!
//! `xen/io/ring.h` is macros and bindgen generates none of them, so this is
//! a port of exactly the operations a pager needs — `SHARED_RING_INIT`,
//! `BACK_RING_INIT`, `RING_HAS_UNCONSUMED_REQUESTS`, `RING_GET_REQUEST`,
//! `RING_FINAL_CHECK_FOR_REQUESTS`, `RING_GET_RESPONSE` and
//! `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` — with the same barriers:
//!
//! | ring.h | here | on x86 |
//! |---|---|---|
//! | `xen_rmb()` after reading `req_prod` | `fence(Acquire)` | compiler barrier |
//! | `xen_wmb()` before publishing `rsp_prod` | `fence(Release)` | compiler barrier |
//! | `xen_mb()` between publishing and reading an event index | `fence(SeqCst)` | `mfence` |
//!
//! All accesses to the shared page are volatile: the hypervisor (the front
//! end) writes it concurrently. The tests drive this ring against the real
//! C macros (`libxl_sys::ring_oracle`).

use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, Ordering};

use libxl_sys as sys;

/// Offsets in `struct vm_event_sring` (checked against bindgen below).
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;
const RING: usize = std::mem::offset_of!(sys::vm_event_sring, ring);
const ENTRY: usize = size_of::<sys::vm_event_sring_entry>();
/// Page size of the ring.
pub const RING_PAGE: usize = 4096;

const _: () = assert!(std::mem::offset_of!(sys::vm_event_sring, req_prod) == REQ_PROD);
const _: () = assert!(std::mem::offset_of!(sys::vm_event_sring, req_event) == REQ_EVENT);
const _: () = assert!(std::mem::offset_of!(sys::vm_event_sring, rsp_prod) == RSP_PROD);
const _: () = assert!(std::mem::offset_of!(sys::vm_event_sring, rsp_event) == RSP_EVENT);
const _: () = assert!(ENTRY >= size_of::<sys::vm_event_request_t>());
const _: () = assert!(ENTRY >= size_of::<sys::vm_event_response_t>());

/// `__RING_SIZE`: entries that fit in the page, rounded down to a power of 2.
#[expect(
    clippy::cast_possible_truncation,
    reason = "at most 4096 / 8 entries fit in a page"
)]
pub const fn ring_size() -> u32 {
    let n = (RING_PAGE - RING) / ENTRY;
    let mut p = 1usize;
    while p * 2 <= n {
        p *= 2;
    }
    p as u32
}

/// The back end of a vm_event ring on one shared page.
#[derive(Debug)]
pub struct BackRing {
    page: NonNull<u8>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    nr_ents: u32,
}

// SAFETY: the ring is a plain pointer into a mapping that stays valid for
// the ring's lifetime (constructor contract); it is used from one thread at
// a time (callers hold it behind a mutex).
unsafe impl Send for BackRing {}

impl BackRing {
    /// `SHARED_RING_INIT` + `BACK_RING_INIT`: what the pager does before
    /// enabling paging (the hypervisor then attaches its front end).
    ///
    /// # Safety
    /// `page` must point to [`RING_PAGE`] writable bytes, 8-byte aligned,
    /// valid until the ring is dropped, and shared only with the front end.
    pub unsafe fn init_shared(page: NonNull<u8>) -> BackRing {
        let base = page.as_ptr();
        // SAFETY: within the page (caller contract); SHARED_RING_INIT zeroes
        // the private/padding area and sets the indices and event indices.
        unsafe {
            ptr::write_bytes(base, 0, RING);
            ptr::write_volatile(base.add(REQ_PROD).cast::<u32>(), 0);
            ptr::write_volatile(base.add(RSP_PROD).cast::<u32>(), 0);
            ptr::write_volatile(base.add(REQ_EVENT).cast::<u32>(), 1);
            ptr::write_volatile(base.add(RSP_EVENT).cast::<u32>(), 1);
        }
        BackRing {
            page,
            req_cons: 0,
            rsp_prod_pvt: 0,
            nr_ents: ring_size(),
        }
    }

    fn index(&self, off: usize) -> *mut u32 {
        // SAFETY: off is one of the four index offsets, inside the page.
        unsafe { self.page.as_ptr().add(off).cast::<u32>() }
    }

    fn slot(&self, idx: u32) -> *mut u8 {
        let i = (idx & (self.nr_ents - 1)) as usize;
        // SAFETY: i < nr_ents, so the entry lies inside the page.
        unsafe { self.page.as_ptr().add(RING + i * ENTRY) }
    }

    fn read_index(&self, off: usize) -> u32 {
        // SAFETY: an aligned u32 inside the live page.
        unsafe { ptr::read_volatile(self.index(off)) }
    }

    fn write_index(&self, off: usize, v: u32) {
        // SAFETY: an aligned u32 inside the live page.
        unsafe { ptr::write_volatile(self.index(off), v) }
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS`.
    pub fn unconsumed_requests(&self) -> u32 {
        let req = self.read_index(REQ_PROD).wrapping_sub(self.req_cons);
        let rsp = self
            .nr_ents
            .wrapping_sub(self.req_cons.wrapping_sub(self.rsp_prod_pvt));
        req.min(rsp)
    }

    /// Takes the next request, if any (`RING_GET_REQUEST`, `req_cons++`).
    pub fn pop_request(&mut self) -> Option<sys::vm_event_request_t> {
        if self.unconsumed_requests() == 0 {
            return None;
        }
        // xen_rmb(): read the entry only after seeing req_prod move.
        fence(Ordering::Acquire);
        // SAFETY: the slot holds a request the front end published; the
        // struct is plain data, any bit pattern is valid.
        let req = unsafe {
            ptr::read_volatile(self.slot(self.req_cons).cast::<sys::vm_event_request_t>())
        };
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(req)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: true if requests arrived; otherwise
    /// asks for an event on the next request and checks once more.
    pub fn final_check_for_requests(&mut self) -> bool {
        if self.unconsumed_requests() > 0 {
            return true;
        }
        self.write_index(REQ_EVENT, self.req_cons.wrapping_add(1));
        // xen_mb(): publish req_event before re-reading req_prod.
        fence(Ordering::SeqCst);
        self.unconsumed_requests() > 0
    }

    /// Puts a response and publishes it
    /// (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`); true if the front end
    /// must be notified. Responses never outnumber requests taken, so the
    /// slot is always free.
    pub fn push_response(&mut self, rsp: &sys::vm_event_response_t) -> bool {
        // SAFETY: the slot belongs to the back end until rsp_prod passes it.
        unsafe {
            ptr::write_volatile(
                self.slot(self.rsp_prod_pvt)
                    .cast::<sys::vm_event_response_t>(),
                *rsp,
            );
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        let old = self.read_index(RSP_PROD);
        let new = self.rsp_prod_pvt;
        // xen_wmb(): the entry before the index.
        fence(Ordering::Release);
        self.write_index(RSP_PROD, new);
        // xen_mb(): the index before reading rsp_event.
        fence(Ordering::SeqCst);
        let event = self.read_index(RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Responses produced and not yet matched by requests taken (0 when
    /// every request has been answered).
    pub fn requests_unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }
}

/// A response to a paging request, as Xen expects it: the interface
/// version (Debian's xenpaging forgets it and Xen drops the response), the
/// request's flags (`VM_EVENT_FLAG_VCPU_PAUSED` makes Xen unpause the
/// vCPU), its reason, vCPU and gfn.
pub fn paging_response(req: &sys::vm_event_request_t) -> sys::vm_event_response_t {
    // SAFETY: reading the mem_paging member of a MEM_PAGING request; the
    // union is plain data.
    let gfn = unsafe { req.u.mem_paging.gfn };
    response(req.flags, req.reason, req.vcpu_id, gfn, 0)
}

/// A response of this interface version with a mem_paging member.
fn response(
    flags: u32,
    reason: u32,
    vcpu_id: u32,
    gfn: u64,
    paging_flags: u32,
) -> sys::vm_event_response_t {
    let mut rsp = sys::vm_event_response_t {
        version: sys::VM_EVENT_INTERFACE_VERSION,
        flags,
        reason,
        vcpu_id,
        ..Default::default()
    };
    rsp.u.mem_paging = sys::vm_event_paging {
        gfn,
        p2mt: 0,
        flags: paging_flags,
    };
    rsp
}

/// A response to no request: releases the vm_event pause of vCPU `vcpu`
/// (`VM_EVENT_FLAG_VCPU_PAUSED`), as a replacement pager must for the
/// requests its dead predecessor never answered. Xen releases only a
/// pause it holds (`vm_event_resume` checks the vCPU's vm_event pause
/// count first), and `MEM_PAGING_DROP_PAGE` keeps it off the p2m.
pub fn vcpu_release_response(vcpu: u32) -> sys::vm_event_response_t {
    response(
        sys::VM_EVENT_FLAG_VCPU_PAUSED,
        sys::VM_EVENT_REASON_MEM_PAGING,
        vcpu,
        0,
        sys::MEM_PAGING_DROP_PAGE,
    )
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_lossless,
    reason = "test fixtures of known small sizes"
)]
mod tests {
    use super::*;
    use libxl_sys::ring_oracle as c;

    #[repr(C, align(4096))]
    struct Page([u8; RING_PAGE]);

    struct Front {
        mem: Vec<u64>,
    }

    impl Front {
        fn new(page: &mut Page) -> Front {
            // SAFETY: size query.
            let size = unsafe { c::libxl_sys_test_front_ring_size() };
            let mut mem = vec![0u64; size.div_ceil(8)];
            // SAFETY: mem is big enough and aligned; page is a live page.
            unsafe {
                c::libxl_sys_test_front_init(mem.as_mut_ptr().cast(), page.0.as_mut_ptr().cast())
            };
            Front { mem }
        }
        fn put(&mut self, gfn: u64, vcpu: u32) -> i32 {
            let mut req = sys::vm_event_request_t {
                version: sys::VM_EVENT_INTERFACE_VERSION,
                flags: sys::VM_EVENT_FLAG_VCPU_PAUSED,
                reason: sys::VM_EVENT_REASON_MEM_PAGING,
                vcpu_id: vcpu,
                ..Default::default()
            };
            req.u.mem_paging.gfn = gfn;
            // SAFETY: the front ring state lives in mem; req is valid.
            unsafe { c::libxl_sys_test_front_put(self.mem.as_mut_ptr().cast(), &req) }
        }
        fn get(&mut self) -> Option<sys::vm_event_response_t> {
            let mut rsp = sys::vm_event_response_t::default();
            // SAFETY: as above; rsp is a valid out-pointer.
            let got =
                unsafe { c::libxl_sys_test_front_get(self.mem.as_mut_ptr().cast(), &mut rsp) };
            (got == 1).then_some(rsp)
        }
    }

    fn setup() -> (Box<Page>, BackRing, Front) {
        let mut page = Box::new(Page([0xa5; RING_PAGE]));
        // SAFETY: the boxed page outlives the ring in each test.
        let back = unsafe { BackRing::init_shared(NonNull::from(&mut page.0).cast()) };
        let front = Front::new(&mut page);
        (page, back, front)
    }

    #[test]
    fn ring_size_matches_the_c_macro() {
        // SAFETY: reading a constant defined in consts.c.
        let c_size = unsafe { ptr::read(&libxl_sys::c_consts::libxl_sys_const_vm_event_ring_size) };
        assert_eq!(u64::from(ring_size()), c_size);
    }

    #[test]
    fn requests_and_responses_cross_the_c_front_end_with_wraparound() {
        let (_page, mut back, mut front) = setup();
        let n = ring_size();
        let mut gfn = 0x1000u64;
        let mut next_expected = gfn;
        // Many rounds: indices wrap the ring many times.
        for round in 0..50u32 {
            let burst = 1 + round % n;
            for _ in 0..burst {
                assert!(front.put(gfn, round % 4) >= 0, "ring full too early");
                gfn += 1;
            }
            assert_eq!(back.unconsumed_requests(), burst);
            let mut notify = false;
            while let Some(req) = back.pop_request() {
                // SAFETY: MEM_PAGING request.
                let g = unsafe { req.u.mem_paging.gfn };
                assert_eq!(g, next_expected);
                next_expected += 1;
                assert_eq!(req.version, sys::VM_EVENT_INTERFACE_VERSION);
                notify |= back.push_response(&paging_response(&req));
            }
            assert!(!back.final_check_for_requests());
            assert!(notify, "the front end waits for responses: must notify");
            let mut got = 0;
            while let Some(rsp) = front.get() {
                assert_eq!(rsp.version, sys::VM_EVENT_INTERFACE_VERSION);
                assert_eq!(
                    rsp.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED,
                    sys::VM_EVENT_FLAG_VCPU_PAUSED
                );
                assert_eq!(rsp.reason, sys::VM_EVENT_REASON_MEM_PAGING);
                got += 1;
            }
            assert_eq!(got, burst);
            assert_eq!(back.requests_unanswered(), 0);
        }
    }

    #[test]
    fn a_full_ring_is_detected_by_the_front_and_drained_by_the_back() {
        let (_page, mut back, mut front) = setup();
        let n = ring_size();
        for i in 0..n {
            assert!(front.put(u64::from(i), 0) >= 0);
        }
        assert_eq!(front.put(999, 0), -1, "C front end must see a full ring");
        let mut reqs = Vec::new();
        while let Some(r) = back.pop_request() {
            reqs.push(r);
        }
        assert_eq!(reqs.len() as u32, n);
        // Unanswered requests keep the front end from reusing their slots.
        assert_eq!(front.put(999, 0), -1);
        for r in &reqs {
            back.push_response(&paging_response(r));
        }
        while front.get().is_some() {}
        assert!(front.put(999, 0) >= 0);
        // The front end asked for an event at the next request: notify is 1.
        assert!(back.final_check_for_requests());
    }

    #[test]
    fn final_check_requests_an_event_for_the_next_request() {
        let (_page, mut back, mut front) = setup();
        assert!(!back.final_check_for_requests());
        // req_event = req_cons + 1: the front end's first put must notify.
        assert_eq!(front.put(7, 0), 1);
        assert!(back.final_check_for_requests());
    }

    #[test]
    fn responses_carry_the_interface_version() {
        let req = sys::vm_event_request_t {
            flags: sys::VM_EVENT_FLAG_VCPU_PAUSED,
            reason: sys::VM_EVENT_REASON_MEM_PAGING,
            vcpu_id: 3,
            ..Default::default()
        };
        let rsp = paging_response(&req);
        assert_eq!(rsp.version, 7);
        assert_eq!(rsp.vcpu_id, 3);
    }
}
