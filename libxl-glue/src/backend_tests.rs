//! The Xen backends and the phased sessions against [`crate::fake`]: the
//! real backend code, with the hypervisor replaced by the fake wrappers
//! (whose vm_event front end is Xen's own C ring macros).

#![allow(
    clippy::cast_possible_truncation,
    reason = "test fixtures of known small sizes"
)]

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libxl_sys as sys;
use postcopy::memory::{
    DestinationMemory, FaultOrigin, Installed, MemoryError, PageIn, PfnRun, SourceMemory,
};
use postcopy::prepage::StrategySpec;
use postcopy::records::{Record, RecordError, RecordReader, RecordType};
use postcopy::{Pfn, PAGE_SIZE};

use crate::fake::FakeXen;
use crate::restore::RestoreSession;
use crate::save::{Known, SaveSession};
use crate::xc::XenOps;
use crate::xen_dest::XenDestination;
use crate::xen_source::{Prescan, XenSource};

const RING_PFN: Pfn = 0xfeff8;

fn page_byte(p: Pfn) -> u8 {
    (p as u8).wrapping_mul(31).wrapping_add(7) | 1
}

// ---------------------------------------------------------------- source

#[test]
fn source_lists_populated_pfns_in_batches_and_skips_holes() {
    let x = Arc::new(FakeXen::new(1, 3000));
    for p in (0..3001).filter(|p| p % 7 != 3 && !(1500..1600).contains(p)) {
        x.fill(p, page_byte(p));
    }
    let src = XenSource::new(x.clone()).unwrap();
    assert_eq!(src.pfn_count(), 3001);
    let runs = src.populated().unwrap();
    let pfns: Vec<Pfn> = runs.iter().flat_map(|r| r.pfns()).collect();
    let want: Vec<Pfn> = (0..3001)
        .filter(|p| p % 7 != 3 && !(1500..1600).contains(p))
        .collect();
    assert_eq!(pfns, want);
    let type_calls = x
        .state()
        .calls
        .iter()
        .filter(|c| *c == "xc_get_pfn_type_batch")
        .count();
    assert_eq!(type_calls, 3, "1024 pfns a call");
}

#[test]
fn a_stopped_source_reads_through_kept_mappings_a_running_one_does_not() {
    let x = Arc::new(FakeXen::new(1, 1023));
    for p in 0..1024 {
        x.fill(p, page_byte(p));
    }
    let kinds = |src: &XenSource<FakeXen>| {
        x.state().calls.clear();
        let pfns: Vec<Pfn> = (100..164).collect();
        let mut buf = vec![0u8; pfns.len() * PAGE_SIZE];
        src.read_pages(&pfns, &mut buf).unwrap();
        for (p, page) in pfns.iter().zip(buf.chunks(PAGE_SIZE)) {
            assert!(page.iter().all(|&b| b == page_byte(*p)));
        }
        let calls = x.state().calls.clone();
        calls
            .into_iter()
            .filter(|c| c.starts_with("xenforeignmemory_map"))
            .collect::<Vec<_>>()
    };
    let running = XenSource::new(x.clone()).unwrap();
    assert_eq!(kinds(&running), ["xenforeignmemory_map(read)"]);
    if std::env::var(crate::xen_source::READ_ENV).is_err() {
        let stopped = XenSource::stopped(x.clone()).unwrap();
        assert_eq!(kinds(&stopped), ["xenforeignmemory_map(read, kept)"]);
    }
    // The chunk arithmetic of the real kept mappings.
    let c = crate::xc::KEPT_CHUNK as u64;
    assert_eq!(crate::xc::kept_slot(0), (0, 0));
    assert_eq!(crate::xc::kept_slot(c - 1), (0, crate::xc::KEPT_CHUNK - 1));
    assert_eq!(crate::xc::kept_slot(c), (1, 0));
    assert_eq!(crate::xc::kept_slot(5 * c + 7), (5, 7));
}

#[test]
fn source_reads_pages_and_maps_errors() {
    let x = Arc::new(FakeXen::new(1, 2047));
    for p in 0..2048 {
        x.fill(p, page_byte(p));
    }
    let src = XenSource::new(x.clone()).unwrap();
    let pfns: Vec<Pfn> = (0..1500).collect();
    let mut buf = vec![0u8; pfns.len() * PAGE_SIZE];
    src.read_pages(&pfns, &mut buf).unwrap();
    for (p, page) in pfns.iter().zip(buf.chunks(PAGE_SIZE)) {
        assert!(page.iter().all(|&b| b == page_byte(*p)));
    }
    let maps = x
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("xenforeignmemory_map"))
        .count();
    assert_eq!(maps, 2);
    let mut one = vec![0u8; PAGE_SIZE];
    assert!(matches!(
        src.read_pages(&[5000], &mut one),
        Err(MemoryError::OutOfRange { pfn: 5000, .. })
    ));
    x.state().paged.insert(9);
    let e = src.read_pages(&[9], &mut one).unwrap_err();
    assert!(e.to_string().contains("paged out"), "{e}");
    x.state().fail.insert("xc_domain_maximum_gpfn", libc::ESRCH);
    assert!(matches!(
        XenSource::new(x.clone()),
        Err(MemoryError::GuestGone(_))
    ));
}

#[test]
fn source_dirty_log_round_trip() {
    let x = Arc::new(FakeXen::new(1, 200));
    let mut src = XenSource::new(x.clone()).unwrap();
    assert!(src.take_dirty().is_err());
    src.enable_dirty_log().unwrap();
    x.state()
        .logdirty
        .as_mut()
        .unwrap()
        .extend([3, 64, 65, 199, 200]);
    assert_eq!(src.take_dirty().unwrap(), vec![3, 64, 65, 199, 200]);
    assert_eq!(src.take_dirty().unwrap(), Vec::<Pfn>::new());
    drop(src);
    assert!(x
        .state()
        .calls
        .iter()
        .any(|c| c == "xc_logdirty_control(OFF)"));
}

// ----------------------------------------------------------- destination

fn dest_domain(n: Pfn) -> Arc<FakeXen> {
    dest_domain_with_ring(n, RING_PFN)
}

/// Destination domain 2 of `n` pfns whose paging ring is at `ring`.
fn dest_domain_with_ring(n: Pfn, ring: Pfn) -> Arc<FakeXen> {
    let x = Arc::new(FakeXen::new(2, n - 1));
    x.state()
        .params
        .insert(sys::HVM_PARAM_PAGING_RING_PFN, ring);
    x
}

#[test]
fn enabling_paging_follows_xenpaging() {
    let x = dest_domain(100);
    let d = XenDestination::new(x.clone(), 100).unwrap();
    d.enable_paging().unwrap();
    d.enable_paging().unwrap();
    let calls = x.state().calls.clone();
    let want = [
        "xc_hvm_param_get",
        "xc_get_pfn_type_batch",
        "xc_domain_populate_physmap_exact",
        "xenforeignmemory_map(ring)",
        "xc_mem_paging_enable",
        "xenevtchn_bind_interdomain",
        "xc_domain_decrease_reservation_exact",
    ];
    assert_eq!(calls, want);
    assert!(
        !x.state().pages.contains_key(&RING_PFN),
        "ring left in the physmap"
    );
    assert_eq!(d.ring_pfn(), Some(RING_PFN));
    drop(d);
    let calls = x.state().calls.clone();
    assert!(
        calls.ends_with(&[
            "xc_mem_paging_disable".into(),
            "xenforeignmemory_unmap(ring)".into()
        ]),
        "{calls:?}"
    );
}

#[test]
fn enable_failures_are_explained_and_undone() {
    let x = dest_domain(100);
    x.state().fail.insert("xc_mem_paging_enable", libc::ENOSYS);
    let d = XenDestination::new(x.clone(), 100).unwrap();
    let e = d.enable_paging().unwrap_err();
    assert!(matches!(e, MemoryError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("CONFIG_MEM_PAGING"), "{e}");
    assert_eq!(
        x.state().calls.last().map(String::as_str),
        Some("xenforeignmemory_unmap(ring)")
    );
    let x = dest_domain(100);
    x.state().params.remove(&sys::HVM_PARAM_PAGING_RING_PFN);
    let d = XenDestination::new(x, 100).unwrap();
    assert!(d
        .enable_paging()
        .unwrap_err()
        .to_string()
        .contains("PAGING_RING_PFN"));
}

#[test]
fn mark_absent_pages_out_every_owed_pfn_by_range() {
    let x = dest_domain(3000);
    for p in 0..10 {
        x.fill(p, 1); // already written (pre-copied)
    }
    let d = XenDestination::new(x.clone(), 3000).unwrap();
    let runs = [
        PfnRun {
            start: 5,
            count: 2000,
        },
        PfnRun {
            start: 2500,
            count: 3,
        },
    ];
    d.mark_absent(&runs).unwrap();
    let st = x.state();
    assert_eq!(st.paged.len(), 2003);
    assert!((5..2005).chain(2500..2503).all(|p| st.paged.contains(&p)));
    assert!((0..5).all(|p| st.pages.contains_key(&p)));
    drop(st);
    assert_eq!(d.absent(), 2003);
    // Holes and the pages of pfns 5..10 alike went by range, one call per
    // run of at most 1024 (5..1029, 1029..2005, 2500..2503).
    let (by_range, by_page, _) = d.page_out_stats();
    assert_eq!((by_range, by_page), (2003, 0));
    let calls = x.state().calls.clone();
    let count = |name: &str| calls.iter().filter(|c| *c == name).count();
    assert_eq!(count("XENMEM_paging_op_absent_range"), 3, "{calls:?}");
    // The one populate is the paging ring's (enable_paging).
    assert_eq!(count("xc_domain_populate_physmap_exact"), 1);
    assert_eq!(count("xc_mem_paging_evict"), 0);
    // Repeating a run does nothing (no double populate: the fake asserts).
    d.mark_absent(&[PfnRun {
        start: 5,
        count: 10,
    }])
    .unwrap();
    assert_eq!(d.absent(), 2003);
    // The ring pfn can never be owed.
    let e = d.mark_absent(&[PfnRun {
        start: RING_PFN,
        count: 1,
    }]);
    assert!(e.is_err());
}

#[test]
fn without_the_range_op_every_owed_pfn_goes_out_page_by_page() {
    // An unpatched hypervisor: ENOSYS for the op, once; then the old way.
    let x = dest_domain(3000);
    x.state()
        .fail
        .insert("XENMEM_paging_op_absent_range", libc::ENOSYS);
    let d = XenDestination::new(x.clone(), 3000).unwrap();
    d.mark_absent(&[PfnRun {
        start: 100,
        count: 1500,
    }])
    .unwrap();
    assert_eq!(d.page_out_stats().0, 0);
    assert_eq!(d.page_out_stats().1, 1500);
    let st = x.state();
    assert!((100..1600).all(|p| st.paged.contains(&p)));
    assert_eq!(
        st.calls
            .iter()
            .filter(|c| *c == "XENMEM_paging_op_absent_range")
            .count(),
        1
    );
}

/// A 64-pfn destination domain with pfns 10..30 paged out.
fn absent_10_to_30() -> (Arc<FakeXen>, XenDestination<FakeXen>) {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun {
        start: 10,
        count: 20,
    }])
    .unwrap();
    (x, d)
}

#[test]
fn a_backend_touching_an_absent_page_is_a_foreign_fault() {
    let (x, d) = absent_10_to_30();
    // dom0's vCPU 1 maps the page (a grant copy by netback, say).
    assert!(x.foreign_touch(20, 1));
    let f = d
        .wait_fault(Duration::from_secs(5))
        .unwrap()
        .expect("fault");
    assert_eq!((f.pfn, f.origin), (20, FaultOrigin::Foreign));
    let page = vec![0x11u8; PAGE_SIZE];
    assert_eq!(d.install(20, &page).unwrap(), Installed::Installed);
    assert_eq!(
        x.collect_responses(),
        1,
        "the backend's request is answered"
    );
}

#[test]
fn backend_faults_are_handed_to_the_engine_before_vcpu_faults() {
    let (x, d) = absent_10_to_30();
    // Two vCPUs fault, then blkback and netback (dom0's vCPUs 0 and 1)
    // touch absent pages, all before the pager looks at the ring.
    assert!(x.guest_touch(12, 0));
    assert!(x.guest_touch(13, 1));
    assert!(x.foreign_touch(20, 0));
    assert!(x.guest_touch(14, 0));
    assert!(x.foreign_touch(21, 1));
    let mut order = Vec::new();
    while let Some(f) = d.wait_fault(Duration::from_millis(20)).unwrap() {
        order.push((f.pfn, f.origin));
    }
    assert_eq!(
        order,
        [
            (20, FaultOrigin::Foreign),
            (21, FaultOrigin::Foreign),
            (12, FaultOrigin::Vcpu(0)),
            (13, FaultOrigin::Vcpu(1)),
            (14, FaultOrigin::Vcpu(0)),
        ],
        "backends first, each kind in ring order"
    );
    // a backend's request for a page a vCPU already waits on is no new
    // fault, and the load answers both
    assert!(x.guest_touch(15, 1));
    assert!(x.foreign_touch(15, 0));
    let f = d
        .wait_fault(Duration::from_secs(5))
        .unwrap()
        .expect("fault");
    assert_eq!((f.pfn, f.origin), (15, FaultOrigin::Vcpu(1)));
    assert_eq!(d.wait_fault(Duration::from_millis(5)).unwrap(), None);
    let page = vec![0x22u8; PAGE_SIZE];
    assert_eq!(d.install(15, &page).unwrap(), Installed::Installed);
    assert_eq!(x.collect_responses(), 2);
}

#[test]
fn a_guest_fault_becomes_a_fault_event_and_the_load_resumes_the_vcpu() {
    let (x, d) = absent_10_to_30();
    assert_eq!(d.wait_fault(Duration::from_millis(5)).unwrap(), None);
    assert!(x.guest_touch(12, 0));
    assert!(x.guest_touch(12, 1)); // a second vCPU on the same page
    assert!(x.guest_touch(13, 2));
    let f = d
        .wait_fault(Duration::from_secs(5))
        .unwrap()
        .expect("fault");
    assert_eq!(f.pfn, 12);
    assert_eq!(f.origin, FaultOrigin::Vcpu(0), "the first toucher");
    let f = d
        .wait_fault(Duration::from_secs(5))
        .unwrap()
        .expect("fault");
    assert_eq!(f.pfn, 13, "one event per page, not per vCPU");
    assert_eq!(f.origin, FaultOrigin::Vcpu(2));
    assert_eq!(d.wait_fault(Duration::from_millis(5)).unwrap(), None);
    assert_eq!(x.collect_responses(), 0, "nobody resumed before the load");
    let page = vec![0x5au8; PAGE_SIZE];
    assert_eq!(d.install(12, &page).unwrap(), Installed::Installed);
    assert_eq!(x.collect_responses(), 2);
    assert!(x.notifications() >= 1);
    {
        let st = x.state();
        assert!(st.pages[&12].iter().all(|&b| b == 0x5a));
        for r in &st.responses {
            assert_eq!(
                r.version,
                sys::VM_EVENT_INTERFACE_VERSION,
                "the xenpaging bug"
            );
            assert_ne!(r.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED, 0);
            // SAFETY: a paging response.
            assert_eq!(unsafe { r.u.mem_paging.gfn }, 12);
        }
        let mut vcpus: Vec<u32> = st.responses.iter().map(|r| r.vcpu_id).collect();
        vcpus.sort_unstable();
        assert_eq!(vcpus, vec![0, 1]);
    }
    assert_eq!(d.install_zero(13).unwrap(), Installed::Installed);
    assert_eq!(x.collect_responses(), 1);
    assert_eq!(d.install(12, &page).unwrap(), Installed::AlreadyPresent);
    assert_eq!(d.absent(), 18);
}

#[test]
fn a_request_read_after_its_page_loaded_is_answered_at_once() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: 8 }]).unwrap();
    // The vCPU faults, but the bulk channel loads the page before the
    // pager reads the ring.
    assert!(x.guest_touch(3, 0));
    let page = vec![1u8; PAGE_SIZE];
    assert_eq!(d.install(3, &page).unwrap(), Installed::Installed);
    assert_eq!(x.collect_responses(), 0);
    assert_eq!(
        d.wait_fault(Duration::from_millis(20)).unwrap(),
        None,
        "no fault for a loaded page"
    );
    assert_eq!(x.collect_responses(), 1, "but the vCPU is resumed");
}

#[test]
fn settle_answers_requests_left_on_the_ring() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: 2 }]).unwrap();
    assert!(x.guest_touch(1, 0));
    d.install(0, &[1u8; PAGE_SIZE]).unwrap();
    d.install(1, &[2u8; PAGE_SIZE]).unwrap();
    // Nobody read the ring: the vCPU on pfn 1 is still paused.
    assert_eq!(x.collect_responses(), 0);
    assert_eq!(d.settle().unwrap(), 0);
    assert_eq!(x.collect_responses(), 1);
}

#[test]
fn dropping_the_backend_answers_leftovers_and_disables_paging() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: 1 }]).unwrap();
    assert!(x.guest_touch(0, 0));
    d.install(0, &[1u8; PAGE_SIZE]).unwrap();
    drop(d);
    assert_eq!(x.collect_responses(), 1);
    assert!(x.state().calls.iter().any(|c| c == "xc_mem_paging_disable"));
}

/// The pager dies (nothing of it runs again) with a vCPU paused on its
/// ring and one owed page loaded: the replacement pauses the domain,
/// disables and enables mem_paging, releases every vCPU's paging pause,
/// refuses the loaded page without touching it, serves the vCPU's new
/// fault, and releases the toolstack's pauses with its own.
#[test]
fn a_replacement_takes_the_ring_over_and_releases_the_vcpus() {
    let x = dest_domain(64);
    if let Some(d) = x.state().domain.as_mut() {
        d.max_vcpu_id = 1;
    }
    let dead = XenDestination::new(x.clone(), 64).unwrap();
    dead.mark_absent(&[PfnRun { start: 0, count: 8 }]).unwrap();
    dead.install(2, &[7u8; PAGE_SIZE]).unwrap();
    assert!(
        x.guest_touch(5, 1),
        "vCPU 1 paused by a request never answered"
    );
    std::mem::forget(dead);
    // xl migrate-receive paused it when its helper died.
    x.pause().unwrap();
    let first = x.state().calls.len();
    let owed = postcopy::takeover::OwedSet {
        guest_pfns: 64,
        acks: false,
        runs: vec![PfnRun { start: 0, count: 8 }],
    };
    let r = XenDestination::take_over(x.clone(), &owed).unwrap();
    {
        let st = x.state();
        let calls = &st.calls[first..];
        let at = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert!(
            at("xc_domain_pause") < at("xc_mem_paging_disable"),
            "{calls:?}"
        );
        assert!(
            at("xc_mem_paging_disable") < at("xc_mem_paging_enable"),
            "{calls:?}"
        );
        assert_eq!(st.pauses, 2);
    }
    assert_eq!(x.collect_responses(), 2);
    {
        let st = x.state();
        let mut vcpus: Vec<u32> = st.responses.iter().map(|r| r.vcpu_id).collect();
        vcpus.sort_unstable();
        assert_eq!(vcpus, vec![0, 1]);
        for rsp in &st.responses {
            assert_ne!(rsp.flags & sys::VM_EVENT_FLAG_VCPU_PAUSED, 0);
            assert_eq!(rsp.reason, sys::VM_EVENT_REASON_MEM_PAGING);
            // SAFETY: a paging response carries the mem_paging member.
            let pflags = unsafe { rsp.u.mem_paging.flags };
            assert_ne!(pflags & sys::MEM_PAGING_DROP_PAGE, 0);
        }
    }
    assert_eq!(r.absent(), 8);
    // The page the dead pager loaded comes again: Xen refuses it, the
    // guest's copy stays.
    r.install(2, &[9u8; PAGE_SIZE]).unwrap();
    assert_eq!(x.state().pages[&2][0], 7);
    assert_eq!(r.absent(), 7);
    // vCPU 1 runs again and faults on the new ring.
    assert!(x.guest_touch(5, 1));
    let f = r.wait_fault(Duration::from_millis(200)).unwrap().unwrap();
    assert_eq!((f.pfn, f.origin), (5, FaultOrigin::Vcpu(1)));
    assert_eq!(
        r.install(5, &[5u8; PAGE_SIZE]).unwrap(),
        Installed::Installed
    );
    assert!(x.wait_response(1, 5, Duration::from_secs(1)));
    assert_eq!(crate::xen_dest::release_pauses(&*x, 8).unwrap(), 2);
    assert!(!x.state().domain.unwrap().paused);
}

/// A replacement pager that no source reaches within its window fails
/// with every owed page counted, leaves the domain paused (never
/// unpaused: no source was connected) and keeps the owed set for another
/// try.
#[test]
fn a_replacement_nobody_reaches_keeps_the_domain_paused() {
    let x = dest_domain(64);
    let dead = XenDestination::new(x.clone(), 64).unwrap();
    dead.mark_absent(&[PfnRun { start: 0, count: 8 }]).unwrap();
    std::mem::forget(dead);
    let dir = tempfile::tempdir().unwrap();
    let owed = postcopy::takeover::OwedSet {
        guest_pfns: 64,
        acks: false,
        runs: vec![PfnRun { start: 0, count: 8 }],
    };
    let path = postcopy::takeover::owed_path(dir.path(), 2);
    owed.write(&path).unwrap();
    let t = Instant::now();
    let e = crate::takeover::serve_with(x.clone(), &owed, dir.path(), Duration::from_millis(300))
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(e, crate::takeover::TakeoverError::Failed { lost: 8, .. }),
        "{e}"
    );
    assert!(x.state().domain.unwrap().paused);
    assert!(!x.state().calls.iter().any(|c| c == "xc_domain_unpause"));
    assert!(path.exists(), "the owed set stays for another replacement");
}

#[test]
fn dropped_pages_need_no_load_and_no_response() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: 4 }]).unwrap();
    assert!(x.guest_drop(2));
    assert_eq!(d.wait_fault(Duration::from_millis(20)).unwrap(), None);
    assert_eq!(x.collect_responses(), 0);
    assert_eq!(d.absent(), 3);
    assert_eq!(
        d.install(2, &[7u8; PAGE_SIZE]).unwrap(),
        Installed::AlreadyPresent
    );
    assert!(!x.state().calls.iter().any(|c| c == "xc_mem_paging_load"));
}

/// `n` owed pages from pfn 0 as one engine batch: pfns `4k, 4k+1` a run
/// of data (page bytes from [`pages_of`]), `4k+2` and `4k+3` zero pages.
fn mixed_batch(data: &[u8], n: Pfn) -> Vec<(Pfn, PageIn<'_>)> {
    let mut batch = Vec::new();
    for k in 0..n / 4 {
        let p = 4 * k;
        let at = p as usize * PAGE_SIZE;
        batch.push((p, PageIn::Data(&data[at..at + 2 * PAGE_SIZE])));
        batch.push((p + 2, PageIn::Zero));
        batch.push((p + 3, PageIn::Zero));
    }
    batch
}

fn assert_loaded_mixed(x: &FakeXen, n: Pfn) {
    let st = x.state();
    assert!(
        st.paged.is_empty(),
        "{} pages still paged out",
        st.paged.len()
    );
    for p in 0..n {
        let want = if p % 4 < 2 { page_byte(p) } else { 0 };
        assert!(st.pages[&p].iter().all(|&b| b == want), "pfn {p:#x}");
    }
}

#[test]
fn a_batch_loads_with_one_call_per_256_pages_and_copies_no_zero_page() {
    let n = 600;
    let x = dest_domain(n);
    let d = XenDestination::new(x.clone(), n).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: n }]).unwrap();
    // Two vCPUs wait on a data page, one on a zero page, of the last call.
    assert!(x.guest_touch(513, 0));
    assert!(x.guest_touch(513, 1));
    assert!(x.guest_touch(514, 2));
    let mut faults = Vec::new();
    while let Some(f) = d.wait_fault(Duration::from_millis(20)).unwrap() {
        faults.push(f.pfn);
    }
    assert_eq!(faults, vec![513, 514]);
    let data = pages_of(&(0..n).collect::<Vec<_>>());
    d.install_batch(&mixed_batch(&data, n)).unwrap();
    assert_loaded_mixed(&x, n);
    let calls = x.state().calls.clone();
    let count = |name: &str| calls.iter().filter(|c| *c == name).count();
    assert_eq!(
        count("XENMEM_paging_op_load_batch"),
        3,
        "600 pages, 256 a call"
    );
    assert_eq!(count("xc_mem_paging_load"), 0);
    assert_eq!(x.state().zero_loads, n / 2, "zero pages are not copied");
    let loads = d.load_stats();
    assert_eq!(
        (
            loads.batched,
            loads.batched_zero,
            loads.batch_calls,
            loads.per_page
        ),
        (n, n / 2, 3, 0)
    );
    assert_eq!(d.absent(), 0);
    // Every waiter answered, with one notification for the call.
    assert_eq!(x.collect_responses(), 3);
    let mut vcpus: Vec<u32> = x.state().responses.iter().map(|r| r.vcpu_id).collect();
    vcpus.sort_unstable();
    assert_eq!(vcpus, vec![0, 1, 2]);
    // Loaded pages are not loaded again.
    d.install_batch(&[(514, PageIn::Zero)]).unwrap();
    assert_eq!(count("XENMEM_paging_op_load_batch"), 3);
}

#[test]
fn without_the_batch_op_pages_load_one_by_one() {
    // An unpatched hypervisor: ENOSYS for the op, once; then the old way.
    let n = 64;
    let x = dest_domain(n);
    x.state()
        .fail
        .insert("XENMEM_paging_op_load_batch", libc::ENOSYS);
    let d = XenDestination::new(x.clone(), n).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: n }]).unwrap();
    assert!(x.guest_touch(2, 0));
    assert_eq!(
        d.wait_fault(Duration::from_secs(1)).unwrap().map(|f| f.pfn),
        Some(2)
    );
    let data = pages_of(&(0..n).collect::<Vec<_>>());
    d.install_batch(&mixed_batch(&data, n)).unwrap();
    assert_loaded_mixed(&x, n);
    let calls = x.state().calls.clone();
    let count = |name: &str| calls.iter().filter(|c| *c == name).count();
    assert_eq!(count("XENMEM_paging_op_load_batch"), 1);
    assert_eq!(count("xc_mem_paging_load"), n as usize);
    assert_eq!(d.load_stats().per_page, n);
    assert_eq!(d.load_stats().batched, 0);
    assert_eq!(
        x.collect_responses(),
        1,
        "the waiter on a zero page resumed"
    );
}

#[test]
fn a_batch_cut_short_by_preemption_or_a_dropped_page_goes_on() {
    let n = 300;
    let x = dest_domain(n);
    x.state().preempt_after = Some(100);
    let d = XenDestination::new(x.clone(), n).unwrap();
    d.mark_absent(&[PfnRun { start: 0, count: n }]).unwrap();
    // The guest releases pfn 150 under the pager's feet (the DROP request
    // is not read yet): Xen stops at it, it is skipped, the rest loads.
    x.state().paged.remove(&150);
    let data = pages_of(&(0..n).collect::<Vec<_>>());
    d.install_batch(&mixed_batch(&data, n)).unwrap();
    {
        let st = x.state();
        assert!(st.paged.is_empty());
        assert!(!st.pages.contains_key(&150), "a dropped page is not loaded");
    }
    let loads = d.load_stats();
    assert_eq!(loads.batched, n - 1);
    assert_eq!(loads.per_page, 0);
    // 0..100, 100..150 (stopped at 150), 150 alone (ENOENT), 151..251,
    // 251..300.
    assert_eq!(loads.batch_calls, 4);
    assert_eq!(
        x.state()
            .calls
            .iter()
            .filter(|c| *c == "XENMEM_paging_op_load_batch")
            .count(),
        5
    );
    assert_eq!(d.absent(), 0);
}

#[test]
fn ring_overflow_is_drained_in_order() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    d.mark_absent(&[PfnRun {
        start: 0,
        count: 40,
    }])
    .unwrap();
    let mut faulted = Vec::new();
    for p in 0..40 {
        while !x.guest_touch(p, 0) {
            // Ring full: the pager must drain (as Xen waits for space).
            let f = d
                .wait_fault(Duration::from_secs(1))
                .unwrap()
                .expect("fault");
            faulted.push(f.pfn);
            d.install_zero(f.pfn).unwrap();
            x.collect_responses();
        }
    }
    while let Some(f) = d.wait_fault(Duration::from_millis(20)).unwrap() {
        faulted.push(f.pfn);
        d.install_zero(f.pfn).unwrap();
        x.collect_responses();
    }
    assert_eq!(faulted, (0..40).collect::<Vec<_>>());
    assert_eq!(x.state().responses.len(), 40);
    assert_eq!(d.absent(), 0);
}

#[test]
fn writes_before_the_switch_populate_on_demand() {
    let x = dest_domain(64);
    let d = XenDestination::new(x.clone(), 64).unwrap();
    x.fill(1, 0);
    let data: Vec<u8> = [1u8, 2].iter().flat_map(|&b| [b; PAGE_SIZE]).collect();
    d.write_pages(&[1, 2], &data).unwrap();
    let st = x.state();
    assert!(st.pages[&1].iter().all(|&b| b == 1));
    assert!(st.pages[&2].iter().all(|&b| b == 2));
    assert_eq!(
        st.calls
            .iter()
            .filter(|c| *c == "xc_domain_populate_physmap_exact")
            .count(),
        1
    );
}

// -------------------------------------------- both sessions, end to end

/// A 4-level address space in the source guest: CR3 at pfn 0x100, the
/// kernel stack at va 0xffffc90000010000 (PT 0x103 → pfns 0x200..),
/// the code page at va 0x1000 (pfn 0x300), all inside a 0x800-pfn guest.
fn build_source(n: Pfn) -> (Arc<FakeXen>, BTreeSet<Pfn>) {
    let x = Arc::new(FakeXen::new(1, n - 1));
    for p in (0..n).filter(|p| p % 97 != 5) {
        x.fill(p, page_byte(p));
    }
    x.fill(0x50, 0); // an all-zero page
    let mut tables = BTreeSet::new();
    let mut set = |pfn: Pfn, idx: usize, v: u64| {
        let mut st = x.state();
        let page = st
            .pages
            .entry(pfn)
            .or_insert_with(|| Box::new([0; PAGE_SIZE]));
        if !tables.contains(&pfn) {
            page.fill(0);
            tables.insert(pfn);
        }
        page[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_le_bytes());
    };
    let stack_va: u64 = 0xffff_c900_0001_0000;
    let l4 = ((stack_va >> 39) & 0x1ff) as usize;
    let l3 = ((stack_va >> 30) & 0x1ff) as usize;
    let l2 = ((stack_va >> 21) & 0x1ff) as usize;
    set(0x100, l4, (0x101 << 12) | 3);
    set(0x101, l3, (0x102 << 12) | 3);
    set(0x102, l2, (0x103 << 12) | 3);
    for i in 0..32u64 {
        set(0x103, i as usize, ((0x200 + i) << 12) | 3);
    }
    set(0x100, 0, (0x104 << 12) | 3);
    set(0x104, 0, (0x105 << 12) | 3);
    set(0x105, 0, (0x106 << 12) | 3);
    set(0x106, 1, (0x300 << 12) | 3);
    // Event delivery: a TSS at PT index 2 whose RSP0 tops index 5 and
    // IST1 index 14, and the per-CPU area (GS base) from index 28.
    let base = stack_va & !0x1f_ffff;
    {
        let mut st = x.state();
        let tss = st.pages.get_mut(&0x202).unwrap();
        tss[4..12].copy_from_slice(&(base + 0x6000).to_le_bytes());
        tss[36..44].copy_from_slice(&(base + 0xf000).to_le_bytes());
    }
    let cpu = sys::hvm_hw_cpu {
        cr0: (1 << 31) | 1,
        cr3: 0x100 << 12,
        cr4: 1 << 5,
        msr_efer: (1 << 10) | (1 << 8),
        rsp: stack_va + 0x8000,
        rip: 0x1010,
        tr_base: base + 0x2000,
        tr_limit: 0x206f,
        tr_arbytes: 0x8b,
        gs_base: base + 0x1c000,
        ..Default::default()
    };
    let mut ctx = Vec::new();
    let size = size_of::<sys::hvm_hw_cpu>();
    ctx.extend_from_slice(&2u16.to_le_bytes());
    ctx.extend_from_slice(&0u16.to_le_bytes());
    ctx.extend_from_slice(&(size as u32).to_le_bytes());
    // SAFETY: viewing a plain-data struct as bytes.
    ctx.extend_from_slice(unsafe {
        std::slice::from_raw_parts((&cpu as *const sys::hvm_hw_cpu).cast::<u8>(), size)
    });
    ctx.extend_from_slice(&[0u8; 8]); // END
    {
        let mut st = x.state();
        st.context = ctx;
        st.params.insert(sys::HVM_PARAM_STORE_PFN, 0x7f0);
        st.params.insert(sys::HVM_PARAM_CONSOLE_PFN, 0x7f1);
        st.params.insert(sys::HVM_PARAM_PAGING_RING_PFN, 0x7f8);
    }
    let mut must: BTreeSet<Pfn> = [0x7f0, 0x7f1, 0x300].into_iter().collect();
    must.extend(0x100..=0x106);
    // Stack window: rsp (PT index 24) ± 16 KiB → PT indices 20..=27.
    must.extend(0x214..=0x21b);
    // Event delivery: the TSS (2), below RSP0 (2..=5) and IST1 (11..=14),
    // and the mapped part of the per-CPU window (28..=31).
    must.extend((0x202..=0x205).chain(0x20b..=0x20e).chain(0x21c..=0x21f));
    must.retain(|p| p % 97 != 5);
    (x, must)
}

/// Every populated source page but the ring (0x7f8) is on the destination
/// with its content, none paged out any more.
fn assert_arrived_whole(s: &crate::fake::FakeState, d: &crate::fake::FakeState) {
    assert!(
        d.paged.is_empty(),
        "{} pages still paged out",
        d.paged.len()
    );
    for (p, page) in s.pages.iter().filter(|(p, _)| **p != 0x7f8) {
        assert_eq!(
            d.pages.get(p).map(|q| &q[..]),
            Some(&page[..]),
            "pfn {p:#x} differs"
        );
    }
}

/// One record off the stream, as libxenguest frames it: type and body.
fn read_record<S: Read>(stream: &mut S) -> (u32, Vec<u8>) {
    let mut hdr = [0u8; 8];
    stream.read_exact(&mut hdr).unwrap();
    let t = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let mut body = vec![0u8; len.div_ceil(8) * 8];
    stream.read_exact(&mut body).unwrap();
    body.truncate(len);
    (t, body)
}

/// Plays libxenguest's restore loop: reads records from the stream and
/// hands them to the session until TRANSITION.
fn restore_until_transition<S: Read + AsRawFd>(
    stream: &mut S,
    dest: &Arc<FakeXen>,
    back_fd: i32,
) -> RestoreSession<FakeXen> {
    restore_after_early(stream, dest, back_fd, None)
}

/// [`restore_until_transition`] with the memory EARLY_PFNS records
/// already paged out (more of them are handled as they come).
fn restore_after_early<S: Read + AsRawFd>(
    stream: &mut S,
    dest: &Arc<FakeXen>,
    back_fd: i32,
    mut early: Option<XenDestination<FakeXen>>,
) -> RestoreSession<FakeXen> {
    let mut session = None;
    loop {
        let (t, body) = read_record(stream);
        if t == RecordType::EarlyPfns as u32 {
            early = Some(
                crate::restore::early_record(early.take(), dest.clone(), back_fd, &body).unwrap(),
            );
        } else if t == RecordType::Begin as u32 {
            let mut r = RestoreSession::begin(
                dest.clone(),
                stream.as_raw_fd(),
                back_fd,
                &body,
                early.take(),
            )
            .unwrap();
            // A broken link fails at once unless a test gives a window.
            r.set_recovery(std::env::temp_dir(), Duration::ZERO);
            session = Some(r);
        } else if t == RecordType::Transition as u32 {
            return session.expect("BEGIN first");
        } else {
            session
                .as_mut()
                .expect("BEGIN first")
                .record(t, &body)
                .unwrap();
        }
    }
}

fn migrate(strategy: StrategySpec, touches: &[Pfn]) {
    migrate_over(strategy, touches, false);
}

/// [`migrate`] with the stream on a socket pair (`pipe` false: replies
/// in-band) or on one pipe, as `xl migrate` on one host (replies on the
/// fault lane, [`crate::lane`]).
fn migrate_over(strategy: StrategySpec, touches: &[Pfn], pipe: bool) {
    let n = 0x800;
    let (src, must) = build_source(n);
    let dst = Arc::new(FakeXen::new(2, n - 1));
    dst.state()
        .params
        .insert(sys::HVM_PARAM_PAGING_RING_PFN, 0x7f8);
    let (s_stream, d_stream): (std::os::fd::OwnedFd, std::os::fd::OwnedFd) = if pipe {
        let (r, w) = std::io::pipe().unwrap();
        (w.into(), r.into())
    } else {
        let (s, d) = UnixStream::pair().unwrap();
        (s.into(), d.into())
    };
    let mut d_stream = std::fs::File::from(d_stream);
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let src2 = src.clone();
    let s_fd = s_stream.as_raw_fd();
    let sb_fd = s_back.as_raw_fd();
    let source = std::thread::spawn(move || {
        let (mut s, summary) =
            SaveSession::begin(src2, s_fd, sb_fd, strategy, Known::Nothing).unwrap();
        // The lane is offered (opt-in on Xen); only a pipe lets the two
        // helpers meet on it.
        s.set_offer_lane(true);
        s.transition().unwrap();
        let lane = s.replies_on_lane();
        s.serve().unwrap();
        let m = s.metrics().snapshot();
        (summary, m, lane)
    });
    let mut session = restore_until_transition(&mut d_stream, &dst, d_back.as_raw_fd());
    // Before the guest runs: the must-present pages are there, every
    // other populated page is paged out.
    {
        let st = dst.state();
        for p in &must {
            assert!(
                st.pages.contains_key(p),
                "must-present pfn {p:#x} missing at unpause"
            );
            assert!(!st.paged.contains(p));
        }
        assert!(
            !st.pages.contains_key(&0x7f8) && !st.paged.contains(&0x7f8),
            "ring pfn"
        );
    }
    // The guest runs: a vCPU thread touches pages and waits for each.
    let guest = {
        let dst = dst.clone();
        let touches = touches.to_vec();
        std::thread::spawn(move || {
            let mut waited = 0;
            for (i, &p) in touches.iter().enumerate() {
                if dst.guest_touch(p, (i % 2) as u32) {
                    waited += 1;
                    let t = Instant::now();
                    while dst.state().paged.contains(&p)
                        || dst.collect_responses() == 0 && dst.state().responses.len() < waited
                    {
                        assert!(
                            t.elapsed() < Duration::from_secs(20),
                            "vCPU never resumed on {p:#x}"
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            waited
        })
    };
    session.serve().unwrap();
    let waited = guest.join().unwrap();
    let (summary, sm, lane) = source.join().unwrap();
    drop(s_stream);
    // On one pipe both helpers meet on the lane (where the status folder
    // can hold its socket); on anything else the replies stay in-band.
    let dir = crate::status_file::status_dir();
    let can_meet = std::fs::create_dir_all(&dir).is_ok()
        && std::fs::metadata(&dir).is_ok_and(|m| !m.permissions().readonly());
    assert_eq!(lane, pipe && can_meet, "fault lane used: {lane}");
    // Every populated source page is on the destination with its content.
    let s = src.state();
    let d = dst.state();
    assert_arrived_whole(&s, &d);
    assert_eq!(summary.sent_now as usize, must.len());
    assert_eq!(summary.delivery, 12, "TSS, RSP0 and IST1 stacks, per-CPU");
    assert_eq!(summary.owed + summary.sent_now + 1, summary.populated);
    assert_eq!(sm.pages_duplicate, 0);
    // Each owed page exactly once (the all-zero pfn 0x50 as a ZERO record).
    assert_eq!(
        sm.pages_pushed + sm.pages_faulted + sm.pages_zero,
        summary.owed
    );
    assert_eq!(sm.pages_zero, 1);
    assert_eq!(sm.pages_precopy, summary.sent_now);
    if strategy == StrategySpec::None && !touches.is_empty() {
        // Demand only: the touched pages came as fault replies.
        assert_eq!(sm.pages_faulted, touches.len() as u64, "{sm:?}");
        assert_eq!(waited, touches.len());
    }
    assert!(d.responses.len() >= waited);
    for r in &d.responses {
        assert_eq!(r.version, sys::VM_EVENT_INTERFACE_VERSION);
    }
    let dm = session.metrics().snapshot();
    assert_eq!(dm.pages_duplicate, 0);
    // Every owed page came in by the batch op, fewer calls than pages.
    let loads = session.memory().load_stats();
    assert_eq!(loads.batched, summary.owed, "{loads:?}");
    assert_eq!(loads.per_page, 0);
    assert!(loads.batch_calls < summary.owed, "{loads:?}");
    assert_eq!(loads.batched_zero, 1);
}

#[test]
fn end_to_end_bubble_with_faults() {
    migrate(StrategySpec::Bubble, &[0x400, 0x401, 0x10, 0x7ff, 0x555]);
}

#[test]
fn end_to_end_demand_only() {
    migrate(StrategySpec::None, &[0x20, 0x600, 0x21]);
}

#[test]
fn end_to_end_over_one_pipe_with_the_fault_lane() {
    migrate_over(
        StrategySpec::Bubble,
        &[0x400, 0x401, 0x10, 0x7ff, 0x555],
        true,
    );
    migrate_over(StrategySpec::None, &[0x20, 0x600, 0x21], true);
}

#[test]
fn end_to_end_multi_pivot_without_faults() {
    migrate(StrategySpec::MultiPivot(3), &[]);
}

/// A digest of every page of `x` but the paging ring (memory checked by
/// hash after a migration).
fn memory_digest(x: &FakeXen) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let st = x.state();
    let mut pfns: Vec<Pfn> = st.pages.keys().copied().filter(|&p| p != 0x7f8).collect();
    pfns.sort_unstable();
    for p in pfns {
        p.hash(&mut h);
        st.pages[&p][..].hash(&mut h);
    }
    h.finish()
}

/// xl's stream and back channel (socket pairs) break after the switch,
/// while the source pushes: with `recover`, a helper of its own hands
/// each side one end of a new TCP connection through its control socket
/// (as `xl-postcopy recover` on each host does) and both complete,
/// saying the stream was replaced; without, both fail once the window
/// passes, counting the pages lost. Returns both results and the two
/// memories' digests.
fn migrate_with_a_broken_stream(
    recover: bool,
    window: Duration,
    touches: &[Pfn],
) -> (
    Result<i32, postcopy::Error>,
    Result<i32, postcopy::Error>,
    u64,
    u64,
    Duration,
) {
    let n = 0x800;
    let (src, _must) = build_source(n);
    let dst = Arc::new(FakeXen::new(2, n - 1));
    dst.state()
        .params
        .insert(sys::HVM_PARAM_PAGING_RING_PFN, 0x7f8);
    let dir = std::env::temp_dir().join(format!("xpc-recover-{}-{recover}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (s_stream, d_stream) = UnixStream::pair().unwrap();
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let src2 = src.clone();
    let (s_fd, sb_fd) = (s_stream.as_raw_fd(), s_back.as_raw_fd());
    let sdir = dir.clone();
    let source = std::thread::spawn(move || {
        let (mut s, _) =
            SaveSession::begin(src2, s_fd, sb_fd, StrategySpec::Bubble, Known::Nothing).unwrap();
        s.set_offer_lane(false);
        s.set_recovery(sdir, window);
        s.transition().unwrap();
        s.serve()
    });
    let mut d = d_stream.try_clone().unwrap();
    let mut session = restore_until_transition(&mut d, &dst, d_back.as_raw_fd());
    session.set_recovery(dir.clone(), window);
    // The source pushes into the stream; the transport dies mid-push.
    std::thread::sleep(Duration::from_millis(50));
    let broke = Instant::now();
    for sock in [&s_stream, &d_stream, &s_back, &d_back] {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    // The guest runs on and touches pages during the outage: its vCPUs
    // wait for the new connection.
    let guest = {
        let dst = dst.clone();
        let touches = touches.to_vec();
        std::thread::spawn(move || {
            for (i, &p) in touches.iter().enumerate() {
                if dst.guest_touch(p, (i % 2) as u32) {
                    let t = Instant::now();
                    while dst.state().paged.contains(&p) && t.elapsed() < Duration::from_secs(30) {
                        dst.collect_responses();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })
    };
    // xl-postcopy recover on each host: one listens, the other connects,
    // each hands its end to its helper.
    let admin = recover.then(|| {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let to = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (from, _) = l.accept().unwrap();
            let hand = |domid: u32, c: std::net::TcpStream| {
                let path = postcopy::handover::control_path(&dir, domid);
                std::thread::spawn(move || {
                    let t = Instant::now();
                    while !path.exists() && t.elapsed() < Duration::from_secs(10) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    postcopy::handover::hand_over(
                        &path,
                        std::os::fd::AsFd::as_fd(&c),
                        Duration::from_secs(20),
                    )
                })
            };
            let a = hand(1, to);
            let b = hand(2, from);
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    let dr = session.serve();
    let sr = source.join().unwrap();
    let took = broke.elapsed();
    if let Some(a) = admin {
        let (a, b) = a.join().unwrap();
        assert!(a.unwrap().contains("source of domain 1"));
        assert!(b.unwrap().contains("destination of domain 2"));
    }
    guest.join().unwrap();
    assert!(
        !postcopy::handover::control_path(&dir, 1).exists()
            && !postcopy::handover::control_path(&dir, 2).exists(),
        "the control sockets go with the serve phase"
    );
    let _ = std::fs::remove_dir_all(&dir);
    (sr, dr, memory_digest(&src), memory_digest(&dst), took)
}

#[test]
fn a_stream_broken_after_the_switch_is_recovered_through_the_control_sockets() {
    let (sr, dr, s_hash, d_hash, took) = migrate_with_a_broken_stream(
        true,
        Duration::from_secs(30),
        &[0x700, 0x701, 0x10, 0x7ff, 0x555],
    );
    eprintln!("recovered: the migration ended {took:?} after the break");
    assert_eq!(sr.unwrap(), crate::recover::STREAM_REPLACED);
    assert_eq!(dr.unwrap(), crate::recover::STREAM_REPLACED);
    assert_eq!(s_hash, d_hash, "the destination's memory is the source's");
}

#[test]
fn nobody_recovering_within_the_window_fails_both_sides_counted() {
    let (sr, dr, _, _, took) =
        migrate_with_a_broken_stream(false, Duration::from_millis(1500), &[]);
    for (side, r) in [("source", sr), ("destination", dr)] {
        match r {
            Err(e @ postcopy::Error::LinkLost { missing, .. }) => {
                assert!(missing > 0, "{side}: {e}");
                assert!(e.to_string().contains(&missing.to_string()), "{side}: {e}");
            }
            other => panic!("{side}: expected the link lost, got {other:?}"),
        }
    }
    assert!(took < Duration::from_secs(15), "bounded: {took:?}");
}

#[test]
fn hybrid_owes_only_pages_dirtied_since_sent() {
    let n = 0x800;
    let (src, must) = build_source(n);
    // Pre-copy sent everything; since then 0x10..0x20, a stack page and a
    // ballooned-out pfn (5, never populated) were dirtied.
    let mut bitmap = vec![0u64; (n as usize).div_ceil(64)];
    let dirty: Vec<Pfn> = (0x10..0x20).chain([0x216, 5]).collect();
    for &p in &dirty {
        bitmap[(p / 64) as usize] |= 1 << (p % 64);
    }
    let (s_stream, _d_stream) = UnixStream::pair().unwrap();
    let (s_back, _d_back) = UnixStream::pair().unwrap();
    let (session, summary) = SaveSession::begin(
        src.clone(),
        s_stream.as_raw_fd(),
        s_back.as_raw_fd(),
        StrategySpec::Bubble,
        Known::Precopy(&bitmap, n),
    )
    .unwrap();
    assert!(must.contains(&0x216));
    assert_eq!(
        summary.sent_now, 1,
        "only the dirty must-present page is resent"
    );
    let owed: Vec<Pfn> = session.owed().iter().flat_map(|r| r.pfns()).collect();
    assert_eq!(owed, (0x10..0x20).collect::<Vec<_>>());
    assert_eq!(summary.owed, 16);
}

/// Plays a pure post-copy save as libxenguest does: log-dirty mode on, the
/// prescan while the guest runs, the guest's `changes`, the stop's dirty
/// bitmap, then `begin` with what `known` makes of them. Returns the owed
/// pfns, the summary and the type queries `begin` made.
fn begin_after_changes(
    changes: impl FnOnce(&FakeXen),
    prescan: bool,
) -> (Vec<Pfn>, crate::save::BeginSummary, usize) {
    use crate::xc::XenOps;
    let n = 0x800;
    let (src, _) = build_source(n);
    src.logdirty_enable().unwrap();
    let pre = Prescan::run(&XenSource::new(src.clone()).unwrap()).unwrap();
    assert_eq!(pre.pfns, n);
    changes(&src);
    let mut bitmap = vec![0u64; (n as usize).div_ceil(64)];
    src.logdirty_clean(&mut bitmap, n).unwrap();
    let (s_stream, d_stream) = UnixStream::pair().unwrap();
    let (s_back, _d_back) = UnixStream::pair().unwrap();
    let reader = drain(d_stream);
    let calls = src.state().calls.len();
    let known = if prescan {
        Known::Prescan(pre, &bitmap, n)
    } else {
        Known::Nothing
    };
    let (session, summary) = SaveSession::begin(
        src.clone(),
        s_stream.as_raw_fd(),
        s_back.as_raw_fd(),
        StrategySpec::Bubble,
        known,
    )
    .unwrap();
    let typed = src.state().calls[calls..]
        .iter()
        .filter(|c| *c == "xc_get_pfn_type_batch")
        .count();
    let owed: Vec<Pfn> = session.owed().iter().flat_map(|r| r.pfns()).collect();
    drop(session);
    drop(s_stream);
    let _ = reader.join();
    (owed, summary, typed)
}

/// The guest's balloon and writes between the prescan and the stop.
fn balloon_changes(x: &FakeXen) {
    x.guest_release(0x400); // owed at the prescan, freed
    x.guest_release(0x7f1); // the console page: must-present, freed
    x.guest_populate(5); // a hole taken back (5 % 97 == 5)
    x.guest_populate(0x66); // another
    x.guest_release(0x500); // freed and taken back
    x.guest_populate(0x500);
    x.guest_write(0x401, 0xee); // written: still owed
    x.guest_populate(199); // taken back and freed again
    x.guest_release(199);
}

#[test]
fn after_a_prescan_the_stop_owes_what_is_populated_then_and_asks_only_the_log() {
    let (owed, summary, typed) = begin_after_changes(balloon_changes, true);
    // The same domain, the same changes, every pfn asked at the stop.
    let (want, full, full_typed) = begin_after_changes(balloon_changes, false);
    assert_eq!(owed, want, "the owed set differs from a full scan's");
    assert_eq!(summary.sent_now, full.sent_now);
    assert_eq!(summary.populated, full.populated);
    for p in [5, 0x66, 0x500, 0x401] {
        assert!(owed.contains(&p), "pfn {p:#x} not owed");
    }
    for p in [0x400, 199, 0x7f1] {
        assert!(!owed.contains(&p), "pfn {p:#x} owed but freed");
    }
    // Only the 7 logged pfns were asked: one query, not one per 1024.
    assert_eq!(summary.asked, 7);
    assert_eq!(typed, 1);
    assert_eq!(full.asked, 0x800);
    assert_eq!(full_typed, 2);
}

/// Issue #15 end to end: EARLY_PFNS from the prescan while the guest
/// runs, the balloon's changes, then the stop: the destination claims the
/// owed pfns it paged out early, pages out only those added, loads the
/// must-present ones and gives back the freed ones, and the memory
/// arrives whole.
#[test]
fn the_early_page_out_leaves_the_stop_only_the_difference() {
    let n = 0x800;
    let (src, must) = build_source(n);
    // The destination has no ring pfn before HVM_PARAMS: EARLY_PFNS
    // brings it.
    let dst = Arc::new(FakeXen::new(2, n - 1));
    src.logdirty_enable().unwrap();
    let pre = Prescan::run(&XenSource::new(src.clone()).unwrap()).unwrap();
    let early_pfns: BTreeSet<Pfn> = pre.populated.iter().copied().collect();
    let (s_stream, d_stream) = UnixStream::pair().unwrap();
    let mut d_stream = d_stream;
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let (src2, s_fd, sb_fd) = (src.clone(), s_stream.as_raw_fd(), s_back.as_raw_fd());
    let source = std::thread::spawn(move || {
        let sent =
            crate::save::send_early(&*src2, &pre, s_fd, sb_fd, Duration::from_secs(20)).unwrap();
        balloon_changes(&src2);
        let mut bitmap = vec![0u64; (n as usize).div_ceil(64)];
        src2.logdirty_clean(&mut bitmap, n).unwrap();
        let (mut s, summary) = SaveSession::begin(
            src2,
            s_fd,
            sb_fd,
            StrategySpec::Bubble,
            Known::Prescan(pre, &bitmap, n),
        )
        .unwrap();
        s.set_offer_lane(false);
        s.transition().unwrap();
        let owed: BTreeSet<Pfn> = s.owed().iter().flat_map(|r| r.pfns()).collect();
        s.serve().unwrap();
        (sent, summary, owed)
    });
    // Before the stop: EARLY_PFNS handled and answered; the calls made
    // from then on are the stop's.
    let (t, body) = read_record(&mut d_stream);
    assert_eq!(t, RecordType::EarlyPfns as u32);
    let early = crate::restore::early_record(None, dst.clone(), d_back.as_raw_fd(), &body).unwrap();
    let calls_at_stop = dst.state().calls.len();
    let mut session = restore_after_early(&mut d_stream, &dst, d_back.as_raw_fd(), Some(early));
    let stop_calls: Vec<String> = dst.state().calls[calls_at_stop..].to_vec();
    let early = session.early_stats();
    let owed_now: BTreeSet<Pfn> = {
        let st = dst.state();
        assert_eq!(
            st.params.get(&sys::HVM_PARAM_PAGING_RING_PFN),
            Some(&0x7f8),
            "EARLY_PFNS set the ring pfn"
        );
        // (0x7f1, the console page, was freed by the balloon.)
        for p in must.iter().filter(|p| **p != 0x7f1) {
            assert!(st.pages.contains_key(p), "must-present {p:#x} missing");
        }
        // Freed after the prescan: given back, neither present nor paged.
        assert!(!st.pages.contains_key(&0x400) && !st.paged.contains(&0x400));
        assert_eq!(
            st.dropped_paged, 0,
            "no paged-out gfn was given back as such"
        );
        st.paged.iter().copied().collect()
    };
    session.serve().unwrap();
    let (sent, summary, owed) = source.join().unwrap();
    // The paged-out set at the switch is the owed set, no more, no less.
    assert_eq!(owed_now, owed);
    assert_eq!(summary.owed, owed.len() as u64);
    assert!(sent.answered && sent.records == 1);
    // Everything of the prescan but the special pfns and the ring.
    let special = crate::present::special_pfns(|p| src.hvm_param(p).ok());
    let want_early = early_pfns
        .iter()
        .filter(|p| **p != 0x7f8 && !special.contains(*p))
        .count() as u64;
    assert_eq!(sent.pfns, want_early);
    assert_eq!(early.paged_out, want_early);
    // The difference at the stop: 5 and 0x66 taken back (added); 0x400
    // freed (given back); the must-present pages loaded; the rest kept.
    assert_eq!(early.added, 2, "{early:?}");
    assert_eq!(early.given_back, 1, "{early:?}");
    assert!(early.written > 0, "{early:?}");
    assert_eq!(
        early.kept + early.written + early.given_back,
        early.paged_out,
        "{early:?}"
    );
    assert_eq!(early.kept + early.added, summary.owed, "{early:?}");
    // The calls at the stop follow the difference: one range call per run
    // of added pfns, one release, no per-page eviction.
    let count = |name: &str| stop_calls.iter().filter(|c| *c == name).count();
    assert_eq!(count("XENMEM_paging_op_absent_range"), 2, "{stop_calls:?}");
    assert_eq!(count("xc_domain_decrease_reservation_exact"), 1);
    assert_eq!(count("xc_mem_paging_evict"), 0);
    assert!(
        stop_calls.len() < 40,
        "{} calls at the stop",
        stop_calls.len()
    );
    // The memory arrived whole.
    let s = src.state();
    let d = dst.state();
    assert_arrived_whole(&s, &d);
    assert!(!d.pages.contains_key(&0x400));
    drop(s_stream);
}

#[test]
fn a_prescan_without_the_log_of_the_changes_owes_the_wrong_set() {
    // What the log-dirty hypervisor patch is for: the same changes with a
    // log that misses the balloon's (a stock 4.17 hypervisor), and the
    // owed set is wrong: freed pfns owed, populated ones missing.
    let balloon = |x: &FakeXen| {
        x.guest_release(0x400);
        x.guest_populate(5);
    };
    let (owed, _, _) = begin_after_changes(
        |x| {
            balloon(x);
            x.state().logdirty.as_mut().unwrap().clear();
        },
        true,
    );
    let (want, _, _) = begin_after_changes(balloon, false);
    assert_ne!(owed, want);
    assert!(owed.contains(&0x400) && !owed.contains(&5));
    assert!(!want.contains(&0x400) && want.contains(&5));
}

#[test]
fn at_stop_asks_every_pfn_beyond_the_prescan_or_the_log() {
    let x = Arc::new(FakeXen::new(1, 99));
    for p in (0..100).filter(|p| p % 3 != 0) {
        x.fill(p, 1);
    }
    {
        use crate::xc::XenOps;
        x.logdirty_enable().unwrap();
    }
    let pre = Prescan::run(&XenSource::new(x.clone()).unwrap()).unwrap();
    assert_eq!(pre.populated.len(), 66);
    // The guest grows (max_gpfn 199) and takes back 3 and 150; the log
    // libxenguest collects covers only the 100 pfns it knew of.
    x.state().max_gpfn = 199;
    x.guest_populate(3);
    x.guest_populate(150);
    let mut bitmap = vec![0u64; 2];
    {
        use crate::xc::XenOps;
        x.logdirty_clean(&mut bitmap, 100).unwrap();
    }
    let now = XenSource::new(x.clone()).unwrap();
    let a = pre.at_stop(&now, &bitmap, 100).unwrap();
    let want: Vec<Pfn> = (0..100)
        .filter(|p| p % 3 != 0)
        .chain([3, 150])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(a.populated, want);
    assert_eq!(a.asked, 1 + 100);
    // A shorter log than the prescan: the rest is asked too.
    let a = pre.at_stop(&now, &bitmap, 50).unwrap();
    assert_eq!(a.populated, want);
    assert_eq!(a.asked, 1 + 150);
    // A bitmap shorter than it says (one word for 100 bits): the same.
    let a = pre.at_stop(&now, &bitmap[..1], 100).unwrap();
    assert_eq!(a.populated, want);
    assert_eq!(a.asked, 1 + 136);
}

#[test]
fn a_corrupt_stream_ends_the_restore_with_an_error() {
    let n = 64;
    let dst = dest_domain(n);
    let (_s, d) = UnixStream::pair().unwrap();
    let begin = postcopy::records::BeginBody::new(postcopy::prepage::StrategySpec::Bubble, n, n);
    let body = zerocopy::IntoBytes::as_bytes(&begin).to_vec();
    let mut r =
        RestoreSession::begin(dst.clone(), d.as_raw_fd(), d.as_raw_fd(), &body, None).unwrap();
    assert_eq!(r.strategy(), Some(StrategySpec::Bubble));
    // A PFNS record naming a pfn beyond the guest.
    let mut pfns = Vec::new();
    pfns.extend_from_slice(&1u32.to_le_bytes());
    pfns.extend_from_slice(&0u32.to_le_bytes());
    pfns.extend_from_slice(&60u64.to_le_bytes());
    pfns.extend_from_slice(&10u64.to_le_bytes());
    assert!(r.record(RecordType::Pfns as u32, &pfns).is_err());
    // An unknown type, and a record that is not allowed here.
    assert!(r.record(0x99, &[]).is_err());
    assert!(r
        .record(RecordType::Complete as u32, &0u64.to_le_bytes())
        .is_err());
    // The same run twice.
    let mut ok = Vec::new();
    ok.extend_from_slice(&1u32.to_le_bytes());
    ok.extend_from_slice(&0u32.to_le_bytes());
    ok.extend_from_slice(&8u64.to_le_bytes());
    ok.extend_from_slice(&4u64.to_le_bytes());
    r.record(RecordType::Pfns as u32, &ok).unwrap();
    assert!(r.record(RecordType::Pfns as u32, &ok).is_err());
    assert_eq!(r.owed_count(), 4);
    assert_eq!(r.memory().absent(), 4);
    // A bad BEGIN.
    assert!(
        RestoreSession::begin(dst.clone(), d.as_raw_fd(), d.as_raw_fd(), &body[..8], None).is_err()
    );
    // A BEGIN claiming an absurd guest is refused before any allocation
    // (found by the records fuzz target: it used to abort the process).
    let mut huge = begin;
    huge.guest_pfns = (1u64 << 60).into();
    let body = zerocopy::IntoBytes::as_bytes(&huge).to_vec();
    assert!(RestoreSession::begin(dst, d.as_raw_fd(), d.as_raw_fd(), &body, None).is_err());
}

/// Drains a stream in the background (the destination's reader).
fn drain(mut s: UnixStream) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    })
}

/// A transitioned source session; the source's socket ends come back too,
/// because the session only borrows their fds.
struct SourceEnds {
    _stream: UnixStream,
    _back: UnixStream,
}

fn source_session(
    strategy: StrategySpec,
) -> (SaveSession<FakeXen>, UnixStream, UnixStream, SourceEnds) {
    let (src, _) = build_source(0x800);
    let (s_stream, d_stream) = UnixStream::pair().unwrap();
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let (mut s, _) = SaveSession::begin(
        src,
        s_stream.as_raw_fd(),
        s_back.as_raw_fd(),
        strategy,
        Known::Nothing,
    )
    .unwrap();
    // A broken link fails at once (no recovery window).
    s.set_recovery(std::env::temp_dir(), Duration::ZERO);
    // The destination's READY, queued before the source waits for it.
    {
        let mut w = postcopy::records::RecordWriter::new(&d_back);
        w.empty(RecordType::Ready).unwrap();
        w.flush().unwrap();
    }
    s.transition().unwrap();
    (
        s,
        d_stream,
        d_back,
        SourceEnds {
            _stream: s_stream,
            _back: s_back,
        },
    )
}

#[test]
fn the_source_fails_cleanly_when_the_destination_goes_away() {
    let (mut s, d_stream, d_back, _keep) = source_session(StrategySpec::None);
    let reader = drain(d_stream);
    drop(d_back);
    let t = Instant::now();
    let e = s.serve().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(e.is_disconnect(), "{e}");
    // A failed session refuses to serve again.
    assert!(s.serve().is_err());
    drop(s);
    let _ = reader;
}

#[test]
fn a_request_for_an_unowed_page_is_a_protocol_error() {
    let (mut s, d_stream, d_back, _keep) = source_session(StrategySpec::None);
    let reader = drain(d_stream);
    let mut w = postcopy::records::RecordWriter::new(d_back);
    // pfn 0x100 is a page-table page: sent before the switch, never owed.
    w.pfn_list(RecordType::Fault, &[0x100]).unwrap();
    let e = s.serve().unwrap_err();
    assert!(e.to_string().contains("not owed"), "{e}");
    drop(w);
    let _ = reader;
}

#[test]
fn phases_must_come_in_order() {
    let (src, _) = build_source(0x800);
    let (a, _b) = UnixStream::pair().unwrap();
    let (mut s, _) = SaveSession::begin(
        src,
        a.as_raw_fd(),
        a.as_raw_fd(),
        StrategySpec::Linear,
        Known::Nothing,
    )
    .unwrap();
    assert!(s.serve().is_err(), "serve before transition");
}

#[test]
fn end_to_end_four_vcpus_touching_concurrently() {
    let n = 0x800;
    let (src, _) = build_source(n);
    let dst = Arc::new(FakeXen::new(2, n - 1));
    dst.state()
        .params
        .insert(sys::HVM_PARAM_PAGING_RING_PFN, 0x7f8);
    let (s_stream, mut d_stream) = UnixStream::pair().unwrap();
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let (src2, s_fd, sb_fd) = (src.clone(), s_stream.as_raw_fd(), s_back.as_raw_fd());
    let source = std::thread::spawn(move || {
        let (mut s, summary) = SaveSession::begin(
            src2,
            s_fd,
            sb_fd,
            StrategySpec::MultiPivot(4),
            Known::Nothing,
        )
        .unwrap();
        s.transition().unwrap();
        s.serve().unwrap();
        (summary, s.metrics().snapshot())
    });
    let mut session = restore_until_transition(&mut d_stream, &dst, d_back.as_raw_fd());
    let owed: Vec<Pfn> = dst.state().paged.iter().copied().collect();
    let want: std::collections::HashMap<Pfn, u8> =
        src.state().pages.iter().map(|(p, b)| (*p, b[0])).collect();
    let vcpus: Vec<_> = (0..4u32)
        .map(|v| {
            let dst = dst.clone();
            let want = want.clone();
            // Each vCPU walks its own stride of the owed pages.
            let mine: Vec<Pfn> = owed
                .iter()
                .copied()
                .skip(v as usize)
                .step_by(37)
                .take(40)
                .collect();
            std::thread::spawn(move || {
                let mut faults = 0;
                for p in mine {
                    if dst.guest_touch(p, v) {
                        faults += 1;
                        assert!(
                            dst.wait_response(v, p, Duration::from_secs(20)),
                            "vCPU {v} never resumed on {p:#x}"
                        );
                    }
                    // After the resume the page is there, with the source's data.
                    let st = dst.state();
                    let got = st.pages.get(&p).map(|b| b[0]);
                    assert_eq!(got, Some(want[&p]), "vCPU {v} reads pfn {p:#x}");
                }
                faults
            })
        })
        .collect();
    session.serve().unwrap();
    let faults: usize = vcpus.into_iter().map(|h| h.join().unwrap()).sum();
    let (summary, sm) = source.join().unwrap();
    drop(s_stream);
    assert!(dst.state().paged.is_empty());
    assert_eq!(
        sm.pages_pushed + sm.pages_faulted + sm.pages_zero,
        summary.owed
    );
    assert_eq!(sm.pages_duplicate, 0);
    eprintln!(
        "{faults} vCPU faults, {} served by fault replies, {} already in flight",
        sm.pages_faulted, sm.faults_in_flight
    );
}

/// A source session up to the CPU state, its stream read to the end by a
/// thread: (session, source stream end, destination back end, reader).
#[allow(clippy::type_complexity, reason = "a test fixture's parts")]
fn switch_fixture() -> (
    SaveSession<FakeXen>,
    UnixStream,
    UnixStream,
    std::thread::JoinHandle<Vec<u8>>,
    UnixStream,
) {
    let (src, _) = build_source(0x800);
    let (s_stream, mut d_stream) = UnixStream::pair().unwrap();
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let (s, _) = SaveSession::begin(
        src,
        s_stream.as_raw_fd(),
        s_back.as_raw_fd(),
        StrategySpec::Linear,
        Known::Nothing,
    )
    .unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        d_stream.read_to_end(&mut bytes).unwrap();
        bytes
    });
    (s, s_stream, d_back, reader, s_back)
}

/// Ends a switch that never happened: TRANSITION was never written, the
/// stream ends with the marker.
fn assert_no_transition(reader: std::thread::JoinHandle<Vec<u8>>) {
    let bytes = reader.join().unwrap();
    let mut r = postcopy::records::RecordReader::new(&bytes[..], Some(0x800));
    let mut last = None;
    while let Ok(rec) = r.next_record() {
        last = Some(rec.rtype());
    }
    assert_eq!(last, Some(RecordType::VcpuState));
}

#[test]
fn the_switch_waits_for_ready_and_an_abort_cancels_it() {
    let (mut s, s_stream, d_back, reader, _s_back) = switch_fixture();
    {
        let mut w = postcopy::records::RecordWriter::new(&d_back);
        w.abort("no room for the guest").unwrap();
        w.flush().unwrap();
    }
    let e = s.transition().unwrap_err();
    assert!(
        matches!(e, postcopy::Error::PeerAborted(ref r) if r == "no room for the guest"),
        "{e}"
    );
    assert_eq!(crate::ffi::errno_of(&e), libc::ECANCELED);
    assert!(s.serve().is_err(), "no service after a refused switch");
    drop(s);
    drop(s_stream);
    assert_no_transition(reader);
    drop(d_back);
}

/// A destination that takes the CPU state and never answers (no READY,
/// no ABORT, the back channel open): the switch gives up after the ready
/// timeout, before TRANSITION, with a worded timeout that the C ABI
/// returns as -ETIMEDOUT (libxl then resumes the guest here).
#[test]
fn a_destination_silent_before_ready_costs_a_timeout_not_the_guest() {
    let (mut s, s_stream, d_back, reader, _s_back) = switch_fixture();
    s.set_ready_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let e = s.transition().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(
            e,
            postcopy::Error::Timeout {
                waiting_for: "READY",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("READY within 300 ms"), "{e}");
    assert_eq!(crate::ffi::errno_of(&e), libc::ETIMEDOUT);
    assert!(s.serve().is_err(), "no service after an abandoned switch");
    drop(s);
    drop(s_stream);
    assert_no_transition(reader);
    drop(d_back);
}

#[test]
fn the_destination_answers_ready_at_the_marker_and_abort_on_a_bad_record() {
    let n = 64;
    let dst = dest_domain(n);
    let begin = postcopy::records::BeginBody::new(postcopy::prepage::StrategySpec::Bubble, n, n);
    let body = zerocopy::IntoBytes::as_bytes(&begin).to_vec();
    let (d_back, s_back) = UnixStream::pair().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    // A good session: READY at the marker, once.
    let mut r =
        RestoreSession::begin(dst.clone(), a.as_raw_fd(), d_back.as_raw_fd(), &body, None).unwrap();
    // No owed set in this host's status folder.
    r.set_recovery(std::env::temp_dir(), Duration::ZERO);
    r.record_or_abort(RecordType::VcpuState as u32, &[])
        .unwrap();
    assert!(r.ready_sent());
    assert!(r
        .record_or_abort(RecordType::VcpuState as u32, &[])
        .is_err());
    // A bad record before the marker: ABORT with the reason.
    let mut r2 =
        RestoreSession::begin(dst, a.as_raw_fd(), d_back.as_raw_fd(), &body, None).unwrap();
    assert!(r2.record_or_abort(0x99, &[]).is_err());
    // Serving without READY is refused.
    assert!(r2.serve().is_err());
    drop(r);
    drop(r2);
    drop(d_back);
    let mut rd = postcopy::records::RecordReader::new(s_back, Some(n));
    assert!(matches!(
        rd.next_record().unwrap(),
        postcopy::records::Record::Ready
    ));
    assert!(matches!(
        rd.next_record().unwrap(),
        postcopy::records::Record::Abort(_)
    ));
}

/// One record as libxenguest hands it over: its type and body.
fn encode(
    f: impl FnOnce(&mut postcopy::records::RecordWriter<&mut Vec<u8>>) -> Result<(), RecordError>,
) -> (u32, Vec<u8>) {
    let mut buf = Vec::new();
    f(&mut postcopy::records::RecordWriter::new(&mut buf)).unwrap();
    let t = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    (t, buf[8..8 + len].to_vec())
}

/// A destination at READY owing `owed` (content `page_byte`), with the
/// fake source's ends of the stream and the back channel.
fn dest_at_ready(
    n: Pfn,
    owed: std::ops::Range<Pfn>,
    cfg: Option<postcopy::destination::DestConfig>,
) -> (
    Arc<FakeXen>,
    RestoreSession<FakeXen>,
    UnixStream,
    UnixStream,
) {
    let dst = dest_domain(n);
    let (s_stream, d_stream) = UnixStream::pair().unwrap();
    let (s_back, d_back) = UnixStream::pair().unwrap();
    let begin = postcopy::records::BeginBody::new(postcopy::prepage::StrategySpec::None, n, n);
    let body = zerocopy::IntoBytes::as_bytes(&begin).to_vec();
    let mut r = RestoreSession::begin(
        dst.clone(),
        d_stream.as_raw_fd(),
        d_back.as_raw_fd(),
        &body,
        None,
    )
    .unwrap();
    // No owed set in this host's status folder (a test that recovers sets
    // its own folder and window).
    r.set_recovery(std::env::temp_dir(), Duration::ZERO);
    if let Some(cfg) = cfg {
        r.set_config(cfg);
    }
    let run = PfnRun {
        start: owed.start,
        count: owed.end - owed.start,
    };
    let (t, b) = encode(|w| w.runs(RecordType::Pfns, &[run]));
    r.record(t, &b).unwrap();
    let (t, b) = encode(|w| w.vcpu_state(&[]));
    r.record(t, &b).unwrap();
    assert!(r.ready_sent());
    // The session only borrows the destination's fds: keep them open.
    std::mem::forget(d_stream);
    std::mem::forget(d_back);
    (dst, r, s_stream, s_back)
}

/// The fake source's reader of the back channel, `wait` per record.
fn back_reader(s_back: &UnixStream, n: Pfn, wait: Duration) -> RecordReader<UnixStream> {
    let r = s_back.try_clone().unwrap();
    r.set_read_timeout(Some(wait)).unwrap();
    RecordReader::new(r, Some(n))
}

fn next_back(rd: &mut RecordReader<UnixStream>) -> Option<Record<'_>> {
    match rd.next_record() {
        Ok(r) => Some(r),
        Err(RecordError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("back channel: {e}"),
    }
}

type Served = std::thread::JoinHandle<(Result<i32, postcopy::Error>, RestoreSession<FakeXen>)>;

/// Serves `r` on a thread; the fake source has seen READY and RESUMED.
fn serve_in_background(
    mut r: RestoreSession<FakeXen>,
    s_back: &UnixStream,
    n: Pfn,
    wait: Duration,
) -> (Served, RecordReader<UnixStream>) {
    let serve = std::thread::spawn(move || {
        let res = r.serve();
        (res, r)
    });
    let mut rd = back_reader(s_back, n, wait);
    assert!(matches!(next_back(&mut rd), Some(Record::Ready)));
    assert!(matches!(next_back(&mut rd), Some(Record::Resumed(_))));
    (serve, rd)
}

/// Nothing is paged out and `owed` holds the source's data.
fn assert_all_loaded(dst: &FakeXen, owed: std::ops::Range<Pfn>) {
    let st = dst.state();
    assert!(st.paged.is_empty());
    for p in owed {
        assert_eq!(
            st.pages[&p][..],
            [page_byte(p); PAGE_SIZE][..],
            "pfn {p:#x}"
        );
    }
}

fn pages_of(pfns: &[Pfn]) -> Vec<u8> {
    pfns.iter()
        .flat_map(|&p| [page_byte(p); PAGE_SIZE])
        .collect()
}

#[test]
fn a_destination_flooding_fault_requests_is_disconnected() {
    let (mut s, d_stream, d_back, _keep) = source_session(StrategySpec::None);
    let reader = drain(d_stream);
    let owed: Vec<Pfn> = s.owed().iter().flat_map(|r| r.pfns()).collect();
    assert!(!owed.is_empty() && owed.len() <= postcopy::records::MAX_PFN_LIST);
    // A well-behaved destination asks for each page once; this one asks
    // for every owed page over and over.
    let flood = std::thread::spawn(move || {
        let mut w = postcopy::records::RecordWriter::new(d_back);
        let rounds = 3 + postcopy::records::MAX_PFN_LIST / owed.len();
        for _ in 0..rounds {
            if w.pfn_list(RecordType::Fault, &owed).is_err() || w.flush().is_err() {
                break;
            }
        }
        w
    });
    let t = Instant::now();
    let e = s.serve().unwrap_err();
    assert!(matches!(e, postcopy::Error::Flood(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(s);
    drop(flood.join().unwrap());
    drop(_keep);
    let _ = reader.join();
}

#[test]
fn outstanding_faults_are_capped_on_the_xen_path() {
    let n = 64;
    let cap = 3;
    let cfg = postcopy::destination::DestConfig {
        max_outstanding: cap,
        ..Default::default()
    };
    let (dst, r, s_stream, s_back) = dest_at_ready(n, 16..48, Some(cfg));
    let (serve, mut rd) = serve_in_background(r, &s_back, n, Duration::from_millis(300));
    // Seven vCPUs fault on seven distinct owed pages at once (the fake's
    // ring holds eight requests).
    let touched: Vec<Pfn> = (20..27).collect();
    for (v, &p) in touched.iter().enumerate() {
        assert!(dst.guest_touch(p, v as u32), "touch {p:#x}");
    }
    let mut w = postcopy::records::RecordWriter::new(s_stream.try_clone().unwrap());
    let mut asked: BTreeSet<Pfn> = BTreeSet::new();
    let mut answered: BTreeSet<Pfn> = BTreeSet::new();
    let t = Instant::now();
    while answered.len() < touched.len() {
        assert!(t.elapsed() < Duration::from_secs(20), "asked {asked:?}");
        // Whatever comes within the wait is everything in flight.
        let mut fresh = Vec::new();
        while let Some(rec) = next_back(&mut rd) {
            let Record::Fault(pfns) = rec else {
                panic!("unexpected {rec:?}");
            };
            for p in pfns {
                assert!(asked.insert(p), "pfn {p:#x} asked twice");
                fresh.push(p);
            }
            assert!(
                asked.len() - answered.len() <= cap,
                "{} faults in flight, cap {cap}",
                asked.len() - answered.len()
            );
        }
        assert!(!fresh.is_empty(), "the forwarder stalled");
        fresh.sort_unstable();
        w.page_data(postcopy::records::Cause::Fault, &fresh, &pages_of(&fresh))
            .unwrap();
        w.flush().unwrap();
        answered.extend(fresh);
    }
    assert_eq!(asked, touched.iter().copied().collect::<BTreeSet<_>>());
    // The rest is pushed, then COMPLETE; the destination confirms.
    let rest: Vec<Pfn> = (16..48).filter(|p| !answered.contains(p)).collect();
    w.page_data(postcopy::records::Cause::Push, &rest, &pages_of(&rest))
        .unwrap();
    w.count(RecordType::Complete, 32).unwrap();
    w.flush().unwrap();
    let mut rd = back_reader(&s_back, n, Duration::from_secs(10));
    assert!(matches!(next_back(&mut rd), Some(Record::Complete(32))));
    let (res, r) = serve.join().unwrap();
    res.unwrap();
    for (v, &p) in touched.iter().enumerate() {
        assert!(dst.wait_response(v as u32, p, Duration::from_secs(5)));
    }
    assert_all_loaded(&dst, 16..48);
    assert_eq!(r.metrics().snapshot().pages_faulted, touched.len() as u64);
}

#[test]
fn a_fault_raised_while_its_page_is_installed_is_not_lost() {
    let n = 64;
    let racy: Pfn = 20;
    let (dst, r, s_stream, s_back) = dest_at_ready(n, 16..48, None);
    // The guest touches pfn 20 while its pushed copy is being loaded, and
    // the fault forwarder gets to see the request before the load ends.
    dst.on_load(Box::new(move |x, p| {
        if p == racy {
            assert!(x.guest_touch(p, 1));
            std::thread::sleep(Duration::from_millis(100));
        }
    }));
    let (serve, mut rd) = serve_in_background(r, &s_back, n, Duration::from_secs(10));
    let mut w = postcopy::records::RecordWriter::new(s_stream.try_clone().unwrap());
    let all: Vec<Pfn> = (16..48).collect();
    w.page_data(postcopy::records::Cause::Push, &all, &pages_of(&all))
        .unwrap();
    w.count(RecordType::Complete, 32).unwrap();
    w.flush().unwrap();
    // No request for the page being installed reaches the source: only
    // the destination's COMPLETE.
    match next_back(&mut rd) {
        Some(Record::Complete(32)) => {}
        other => panic!("expected COMPLETE, got {other:?}"),
    }
    let (res, r) = serve.join().unwrap();
    res.unwrap();
    // The vCPU that faulted mid-install was resumed, onto the right data.
    assert!(
        dst.wait_response(1, racy, Duration::from_secs(5)),
        "the vCPU on pfn {racy:#x} was never resumed"
    );
    assert_all_loaded(&dst, 16..48);
    assert_eq!(r.metrics().snapshot().pages_duplicate, 0);
}

#[test]
fn a_failed_xen_call_stays_the_source_of_the_memory_error() {
    let x = Arc::new(FakeXen::new(1, 15));
    for p in 0..16 {
        x.fill(p, page_byte(p));
    }
    let src = XenSource::new(x.clone()).unwrap();
    x.state().paged.insert(9);
    let mut one = vec![0u8; PAGE_SIZE];
    let e = src.read_pages(&[9], &mut one).unwrap_err();
    let MemoryError::Backend { errno, source } = &e else {
        panic!("not a backend error: {e:?}");
    };
    assert_eq!(*errno, Some(libc::ENOENT));
    let xc = source.downcast_ref::<crate::xc::XcError>();
    assert!(
        matches!(xc, Some(crate::xc::XcError::PagedOut { pfn: 9, .. })),
        "{source:?}"
    );
    let engine = postcopy::Error::from(e);
    assert_eq!(crate::ffi::errno_of(&engine), libc::ENOENT);
}

/// A domain that crashes `after` into serving.
struct Crashes {
    start: Instant,
    after: Duration,
}

impl postcopy::destination::ServeHooks for Crashes {
    fn resumed_at(&self) -> Option<Instant> {
        Some(self.start)
    }
    fn watch(&self) -> Result<(), postcopy::Error> {
        if self.start.elapsed() >= self.after {
            return Err(postcopy::Error::GuestDied("domain 2 crashed".into()));
        }
        Ok(())
    }
}

#[test]
fn a_guest_watch_error_ends_the_restore_and_is_told_to_the_source() {
    let n = 64;
    let (_dst, mut r, _s_stream, s_back) = dest_at_ready(n, 16..48, None);
    let hooks = Crashes {
        start: Instant::now(),
        after: Duration::from_millis(150),
    };
    let t = Instant::now();
    let e = r.serve_with(&hooks).unwrap_err();
    assert!(matches!(e, postcopy::Error::GuestDied(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // One errno for a guest death on both hosts, the one the libxl patches
    // check (was ESRCH before the guest-death scheme).
    assert_eq!(crate::ffi::errno_of(&e), libc::EOWNERDEAD);
    // The source hears RESUMED, then ABORT with the destination's reason.
    let mut rd = back_reader(&s_back, n, Duration::from_secs(5));
    assert!(matches!(next_back(&mut rd), Some(Record::Ready)));
    assert!(matches!(next_back(&mut rd), Some(Record::Resumed(_))));
    match next_back(&mut rd) {
        Some(Record::Abort(why)) => assert!(why.contains("domain 2 crashed"), "{why}"),
        other => panic!("expected ABORT, got {other:?}"),
    }
}

// ------------------------------------ a guest that dies during post-copy

/// The end-to-end setup of [`migrate`] up to the switch, with the source
/// serving on a thread: (source, destination, the destination session,
/// its stream end, the source's result, the sockets the sessions borrow).
#[allow(clippy::type_complexity)]
fn switched(
    strategy: StrategySpec,
    dest_paused: bool,
) -> (
    Arc<FakeXen>,
    Arc<FakeXen>,
    RestoreSession<FakeXen>,
    UnixStream,
    std::thread::JoinHandle<(
        Result<i32, postcopy::Error>,
        postcopy::metrics::EngineReport,
    )>,
    (UnixStream, UnixStream, UnixStream),
) {
    let n = 0x800;
    let (src, _) = build_source(n);
    let dst = dest_domain_with_ring(n, 0x7f8);
    dst.set_paused(dest_paused);
    let ((s_stream, mut d_stream), (s_back, d_back)) =
        (UnixStream::pair().unwrap(), UnixStream::pair().unwrap());
    let (s_fd, sb_fd, src2) = (s_stream.as_raw_fd(), s_back.as_raw_fd(), src.clone());
    let source = std::thread::spawn(move || {
        let (mut s, _) = SaveSession::begin(src2, s_fd, sb_fd, strategy, Known::Nothing).unwrap();
        // A broken link fails at once (no recovery window).
        s.set_recovery(std::env::temp_dir(), Duration::ZERO);
        s.transition().unwrap();
        let r = s.serve();
        (r, s.metrics().snapshot())
    });
    let session = restore_until_transition(&mut d_stream, &dst, d_back.as_raw_fd());
    (
        src,
        dst,
        session,
        d_stream,
        source,
        (s_stream, s_back, d_back),
    )
}

/// The guest faults on `touch`, gets it, then dies with `reason`.
#[allow(clippy::type_complexity)]
fn guest_dies_mid_serve(
    reason: u32,
) -> (
    postcopy::Error,
    postcopy::Error,
    u64,
    Arc<FakeXen>,
    Option<crate::domain_watch::GuestDied>,
) {
    let (_src, dst, mut session, d_stream, source, _keep) = switched(StrategySpec::None, false);
    let owed = session.owed_count();
    let guest = {
        let dst = dst.clone();
        std::thread::spawn(move || {
            let touch = 0x400;
            assert!(dst.guest_touch(touch, 0));
            assert!(
                dst.wait_response(0, touch, Duration::from_secs(10)),
                "vCPU never resumed"
            );
            dst.guest_shutdown(
                reason,
                "(XEN) d2v0 Triple fault - invoking HVM shutdown action",
            );
            dst.guest_shutdown(reason, "(XEN) d12v0 another domain");
        })
    };
    let t = Instant::now();
    let e = session.serve().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    guest.join().unwrap();
    // The destination stopped reading: let the source's writes drain.
    let reader = drain(d_stream);
    let (r, _) = source.join().unwrap();
    drop(reader);
    let death = session.guest_death().cloned();
    (e, r.unwrap_err(), owed, dst, death)
}

/// A guest dies with `reason` mid-serve: both sides fail with the typed
/// death, the destination's message (`what`, then the counts) reaches the
/// source, the source's errno is not the ECANCELED that resumes it, and the
/// dead domain is left as it was. Returns the destination's death.
fn both_sides_fail_on_death(reason: u32, what: &str) -> crate::domain_watch::GuestDied {
    let (e, se, owed, dst, death) = guest_dies_mid_serve(reason);
    assert!(matches!(e, postcopy::Error::GuestDied(_)), "{e}");
    let d = death.unwrap_or_else(|| panic!("not a death: {e}"));
    assert_eq!(d.death, crate::domain_watch::Death::Shutdown(reason));
    assert_eq!(d.owed, owed);
    // The faulted page came; with demand paging nothing else did yet.
    assert!(d.absent < owed && d.absent > 0, "{d}");
    let msg = e.to_string();
    let want = format!(
        "guest died on the destination during post-copy: {what} with {} of {owed} owed pages still absent",
        d.absent
    );
    assert!(msg.contains(&want), "{msg}");
    assert_eq!(crate::ffi::errno_of(&e), libc::EOWNERDEAD);
    // The source learnt why.
    assert!(crate::domain_watch::is_guest_death(&se), "{se}");
    assert!(se.to_string().contains(&want), "{se}");
    assert_eq!(crate::ffi::errno_of(&se), libc::EOWNERDEAD);
    assert_ne!(crate::ffi::errno_of(&se), libc::ECANCELED);
    // The dead domain is left as it was: shut down, pages still out.
    let st = dst.state();
    assert_eq!(st.domain.and_then(|i| i.shutdown), Some(reason));
    assert_eq!(st.paged.len() as u64, d.absent);
    assert!(!st.calls.iter().any(|c| c == "xc_mem_paging_disable"));
    d
}

/// The destination's toolstack acts on the paused domain (`act`, 300 ms
/// after the switch) while the serve waits for its unpause: (the
/// destination's error, the source's).
fn toolstack_acts_before_the_unpause(act: fn(&FakeXen)) -> (postcopy::Error, postcopy::Error) {
    let (_src, dst, mut session, d_stream, source, _keep) = switched(StrategySpec::None, true);
    let toolstack = {
        let dst = dst.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            act(&dst);
        })
    };
    let t = Instant::now();
    let e = session.serve().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    toolstack.join().unwrap();
    assert!(matches!(e, postcopy::Error::GuestDied(_)), "{e}");
    let reader = drain(d_stream);
    let (r, _) = source.join().unwrap();
    drop(reader);
    (e, r.unwrap_err())
}

/// libxl gives up on the destination after the transition and destroys
/// the domain before it ever unpaused it (a device that did not attach):
/// the destination proves the guest never ran there (ABORT without
/// RESUMED), and the source fails with the ECANCELED that lets libxl
/// resume its copy, the guest's latest state.
#[test]
fn a_domain_destroyed_before_it_ever_ran_lets_the_source_resume_its_copy() {
    let (_e, se) = toolstack_acts_before_the_unpause(FakeXen::destroy);
    assert!(matches!(se, postcopy::Error::PeerAborted(_)), "{se}");
    assert!(
        se.to_string()
            .contains(postcopy::destination::NEVER_RAN.trim()),
        "{se}"
    );
    assert_eq!(crate::ffi::errno_of(&se), libc::ECANCELED);
}

/// The same destruction after libxl unpaused the domain, between two of
/// the watch's looks (so no look saw it unpaused, only its vCPU time):
/// the guest may have run there, so the source keeps its copy stopped.
#[test]
fn a_domain_destroyed_after_its_unpause_keeps_the_source_stopped() {
    let (_e, se) = toolstack_acts_before_the_unpause(FakeXen::unpause_and_destroy);
    assert!(!matches!(se, postcopy::Error::PeerAborted(_)), "{se}");
    assert_ne!(crate::ffi::errno_of(&se), libc::ECANCELED);
}

#[test]
fn a_guest_that_crashes_mid_serve_fails_both_sides_with_the_counts() {
    both_sides_fail_on_death(
        sys::SHUTDOWN_crash,
        "shutdown reason crash (3), crashed (triple fault?)",
    );
}

#[test]
fn a_guest_that_reboots_mid_serve_fails_both_sides() {
    both_sides_fail_on_death(
        sys::SHUTDOWN_reboot,
        "shutdown reason reboot (1), a guest reboot or a triple fault (Xen's default action)",
    );
}

#[test]
fn the_post_mortem_names_registers_absent_pages_and_console_lines() {
    let (_e, _se, _owed, dst, death) = guest_dies_mid_serve(sys::SHUTDOWN_crash);
    let d = death.unwrap();
    // The dead vCPU: the source's context, with its IDT at va 0x2000,
    // mapped (PT pfn 0x106, present) to pfn 0x401 (owed, never sent), and
    // FS base at va 0x3000 behind a page table that is owed and absent.
    let (src, _) = build_source(0x800);
    let mut ctx = src.state().context.clone();
    let mut cpu: sys::hvm_hw_cpu =
        // SAFETY: the context's first record is the CPU record.
        unsafe { std::ptr::read_unaligned(ctx[8..].as_ptr().cast()) };
    cpu.idtr_base = 0x2000;
    cpu.idtr_limit = 0xfff;
    cpu.fs_base = 0xffff_8880_0000_0000;
    cpu.__bindgen_anon_1.pending_event = (1 << 31) | (1 << 11) | (3 << 8) | 8;
    cpu.error_code = 0;
    // SAFETY: writing the plain-data record back over itself.
    unsafe { std::ptr::write_unaligned(ctx[8..].as_mut_ptr().cast(), cpu) };
    {
        let mut st = dst.state();
        st.context = ctx;
        let pt = st.pages.get_mut(&0x106).expect("PT present");
        pt[2 * 8..3 * 8].copy_from_slice(&((0x401u64 << 12) | 3).to_le_bytes());
        let l4 = st.pages.get_mut(&0x100).expect("L4 present");
        let i = ((0xffff_8880_0000_0000u64 >> 39) & 0x1ff) as usize;
        l4[i * 8..i * 8 + 8].copy_from_slice(&((0x402u64 << 12) | 3).to_le_bytes());
        assert!(st.paged.contains(&0x401) && st.paged.contains(&0x402));
    }
    let owed = |p: Pfn| p > 0x300 && p < 0x7f0;
    let lines = crate::forensics::post_mortem(&*dst, &d, 0x800, &owed);
    let all = lines.join("\n");
    assert!(
        all.contains(&format!("post-mortem of domain 2: {}", d.death)),
        "{all}"
    );
    assert!(
        all.contains("vCPU 0: RIP 0x1010 RSP 0xffffc90000018000"),
        "{all}"
    );
    assert!(
        all.contains("pending event: vector 8 type 3 error code 0x0"),
        "{all}"
    );
    assert!(all.contains("IDT 0x2000: pfn 0x401 ABSENT (owed)"), "{all}");
    assert!(
        all.contains("code at RIP 0x1010: pfn 0x300 present"),
        "{all}"
    );
    assert!(
        all.contains("FS base 0xffff888000000000: not translatable (page-table pfns absent on the way: 0x402)"),
        "{all}"
    );
    assert!(
        all.contains("owed pfns still absent among the pages its registers point at: 0x401 0x402"),
        "{all}"
    );
    assert!(
        all.contains("xen console: (XEN) d2v0 Triple fault"),
        "{all}"
    );
    assert!(!all.contains("d12v0"), "{all}");
}

#[test]
fn resumed_ends_the_downtime_only_when_libxl_unpauses() {
    let hold = Duration::from_millis(400);
    let (_src, dst, mut session, d_stream, source, _keep) = switched(StrategySpec::Linear, true);
    let unpause = {
        let dst = dst.clone();
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            dst.set_paused(false);
        })
    };
    session.serve().unwrap();
    unpause.join().unwrap();
    let (r, m) = source.join().unwrap();
    r.unwrap();
    drop(d_stream);
    assert!(
        m.downtime_ms >= hold.as_secs_f64() * 1000.0,
        "downtime {} ms, held paused {hold:?}",
        m.downtime_ms
    );
    assert!(dst.state().paged.is_empty());
}
