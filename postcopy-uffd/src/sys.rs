//! Thin wrappers over the userfaultfd and `PAGEMAP_SCAN` kernel interfaces.
//!
//! One small function per system call or ioctl, each with exactly one
//! `unsafe` block; errors come back as `io::Error` built from errno, and
//! the callers in this module map them to semantic variants. The structs
//! mirror `<linux/userfaultfd.h>` and `<linux/fs.h>` of Linux 6.7+ (the
//! distribution headers on the build hosts predate `UFFD_FEATURE_WP_ASYNC`
//! and `PAGEMAP_SCAN`, so bindgen over them would not see what we need);
//! their sizes and every ioctl number are checked at compile time against
//! the values the kernel headers produce.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

// ---- ioctl number encoding (asm-generic/ioctl.h) ----

const IOC_NRBITS: u64 = 8;
const IOC_TYPEBITS: u64 = 8;
const IOC_SIZEBITS: u64 = 14;
const IOC_NRSHIFT: u64 = 0;
const IOC_TYPESHIFT: u64 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u64 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u64 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> u64 {
    (dir << IOC_DIRSHIFT)
        | ((ty as u64) << IOC_TYPESHIFT)
        | ((nr as u64) << IOC_NRSHIFT)
        | ((size as u64) << IOC_SIZESHIFT)
}

// ---- <linux/userfaultfd.h> ----

/// `UFFDIO` ioctl type byte.
const UFFDIO: u8 = 0xAA;
/// The only userfaultfd API version.
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: handle only faults raised in user mode (allowed
/// for unprivileged users even when `vm.unprivileged_userfaultfd=0`).
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// `UFFD_FEATURE_EVENT_REMOVE`: MADV_DONTNEED/REMOVE of a registered range
/// raises a REMOVE event (and UFFDIO_COPY returns EAGAIN until it is read).
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_WP_ASYNC`: write-protect faults are resolved by the
/// kernel itself, clearing the page's uffd-wp bit (Linux 6.7).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE` moves pages between mappings of
/// one process without a copy (Linux 6.8).
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const REGISTER_MODE_WP: u64 = 1 << 1;

/// `UFFD_EVENT_PAGEFAULT`.
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_REMOVE`.
pub const EVENT_REMOVE: u8 = 0x15;

/// Bit numbers of the ioctls in `uffdio_register.ioctls`.
pub const IOCTL_BIT_WAKE: u64 = 1 << 0x02;
/// `_UFFDIO_COPY`.
pub const IOCTL_BIT_COPY: u64 = 1 << 0x03;
/// `_UFFDIO_ZEROPAGE`.
pub const IOCTL_BIT_ZEROPAGE: u64 = 1 << 0x04;
/// `_UFFDIO_WRITEPROTECT` (write-protect allowed on the range).
pub const IOCTL_BIT_WRITEPROTECT: u64 = 1 << 0x06;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negated errno. Signed: never store it unsigned.
    copy: i64,
}

/// `struct uffdio_move`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes moved, or a negated errno.
    moved: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    /// Bytes zeroed, or a negated errno.
    zeropage: i64,
}

/// Size of `struct uffd_msg`.
pub const UFFD_MSG_SIZE: usize = 32;

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x00,
    size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, UFFDIO, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x04,
    size_of::<UffdioZeropage>(),
);
const UFFDIO_MOVE: u64 = ioc(IOC_READ | IOC_WRITE, UFFDIO, 0x05, size_of::<UffdioMove>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (Linux 6.1).
const USERFAULTFD_IOC_NEW: u64 = ioc(IOC_NONE, UFFDIO, 0x00, 0);

// The values the kernel headers give (gcc -E on <linux/userfaultfd.h>).
const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_REGISTER == 0xC020_AA00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_AA01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_AA02);
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);
const _: () = assert!(UFFDIO_ZEROPAGE == 0xC020_AA04);
const _: () = assert!(size_of::<UffdioMove>() == 40);
const _: () = assert!(UFFDIO_MOVE == 0xC028_AA05);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xAA00);

// ---- <linux/fs.h>: PAGEMAP_SCAN (Linux 6.7) ----

/// `PAGE_IS_WRITTEN`: written since last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_PRESENT`.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `PM_SCAN_WP_MATCHING`: write-protect the matched pages.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail if a page lacks async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`: `[start, end)` with `categories`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

const PAGEMAP_SCAN: u64 = ioc(IOC_READ | IOC_WRITE, b'f', 0x10, size_of::<PmScanArg>());
const _: () = assert!(size_of::<PageRegion>() == 24);
const _: () = assert!(size_of::<PmScanArg>() == 96);
const _: () = assert!(PAGEMAP_SCAN == 0xC060_6610);

// ---- wrappers ----

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn request(n: u64) -> libc::Ioctl {
    // All our request numbers fit in 32 bits (checked above); the libc
    // request type is c_ulong on glibc and c_int on musl, and the kernel
    // reads it as an unsigned int.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let r = n as libc::Ioctl;
    r
}

/// Opens `path` read-write, close-on-exec.
pub fn open_rdwr(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string; open has no other
    // memory effects.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW, flags)`: a new uffd.
pub fn uffd_from_dev(dev: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and reads no
    // memory of ours.
    let fd = cvt(unsafe { libc::ioctl(dev.as_raw_fd(), request(USERFAULTFD_IOC_NEW), flags) })?;
    // SAFETY: the ioctl returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `userfaultfd(2)` system call.
pub fn uffd_syscall(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd takes one integer argument and touches no memory.
    let ret = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::c_long::from(flags)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the system call returned a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `UFFDIO_API`: enables `features`; returns what the kernel reports
/// (with `features == 0`, every feature it supports).
pub fn api(uffd: &OwnedFd, features: u64) -> io::Result<UffdioApi> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live, correctly sized `struct uffdio_api` that the
    // kernel reads and writes during the call only.
    cvt(unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_API),
            std::ptr::addr_of_mut!(arg),
        )
    })?;
    Ok(arg)
}

/// `UFFDIO_REGISTER`: returns the bitmask of ioctls allowed on the range.
pub fn register(uffd: &OwnedFd, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_register`; the kernel only
    // changes page-table flags of the range, never our Rust objects.
    cvt(unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_REGISTER),
            std::ptr::addr_of_mut!(arg),
        )
    })?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER`.
pub fn unregister(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: `arg` is a live `struct uffdio_range` read by the kernel.
    cvt(unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_UNREGISTER),
            std::ptr::addr_of_mut!(arg),
        )
    })?;
    Ok(())
}

/// `UFFDIO_WAKE`: wakes threads blocked on faults in the range.
pub fn wake(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: `arg` is a live `struct uffdio_range` read by the kernel.
    cvt(unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_WAKE),
            std::ptr::addr_of_mut!(arg),
        )
    })?;
    Ok(())
}

/// Outcome of a fill ioctl (COPY, ZEROPAGE).
#[derive(Debug)]
pub enum Fill {
    /// All `len` bytes were filled and their waiters woken.
    Done,
    /// Only this many bytes (> 0) were filled (and woken); the kernel
    /// stopped at the next page (EEXIST there, or a pending event).
    Partial(u64),
    /// Nothing was filled: the kernel's error for the first page.
    Failed(io::Error),
}

fn fill_outcome(ret: libc::c_int, done: i64, len: u64) -> Fill {
    if ret >= 0 {
        return Fill::Done;
    }
    let err = io::Error::last_os_error();
    match u64::try_from(done) {
        Ok(n) if n > 0 && n < len => Fill::Partial(n),
        Ok(n) if n == len => Fill::Done,
        _ => Fill::Failed(err),
    }
}

/// `UFFDIO_COPY` of `len` bytes from `src` to the registered `dst`.
///
/// `src` is only read, and the kernel copies it before returning.
pub fn copy(uffd: &OwnedFd, dst: u64, src: &[u8], mode: u64) -> Fill {
    let len = src.len() as u64;
    let mut arg = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len,
        mode,
        copy: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_copy`; its `src` points to
    // `len` readable bytes borrowed for the duration of the call; `dst` is
    // inside a mapping the caller registered, which the kernel fills as if
    // by a page fault (atomically with respect to other accessors).
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_COPY),
            std::ptr::addr_of_mut!(arg),
        )
    };
    fill_outcome(ret, arg.copy, len)
}

/// `UFFDIO_ZEROPAGE` of `len` bytes at the registered `dst`.
pub fn zeropage(uffd: &OwnedFd, dst: u64, len: u64) -> Fill {
    let mut arg = UffdioZeropage {
        range: UffdioRange { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_zeropage`; the kernel maps the
    // zero page at `dst` (a registered range) and writes back `zeropage`.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_ZEROPAGE),
            std::ptr::addr_of_mut!(arg),
        )
    };
    fill_outcome(ret, arg.zeropage, len)
}

/// `UFFDIO_MOVE` of `len` bytes from `src` (private anonymous memory of
/// this process, whole resident pages) to the registered `dst`: the pages'
/// frames change owner without a copy, and `src` reads as zero (a hole)
/// afterwards. Needs [`UFFD_FEATURE_MOVE`] enabled on `uffd`.
///
/// `src` is borrowed mutably because the call empties it.
pub fn move_pages(uffd: &OwnedFd, dst: u64, src: &mut [u8]) -> Fill {
    let len = src.len() as u64;
    let mut arg = UffdioMove {
        dst,
        src: src.as_mut_ptr() as u64,
        len,
        mode: 0,
        moved: 0,
    };
    // SAFETY: `arg` is a live `struct uffdio_move`; `src` is `len` bytes we
    // hold exclusively for the call, which the kernel unmaps (they read as
    // zero afterwards, a valid value of `[u8]`); `dst` is inside a mapping
    // the caller registered, filled as if by a page fault.
    let ret = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            request(UFFDIO_MOVE),
            std::ptr::addr_of_mut!(arg),
        )
    };
    fill_outcome(ret, arg.moved, len)
}

/// Non-blocking `read` of whole `uffd_msg`s into `buf`; returns the bytes
/// read (`Ok(0)` when none is queued).
pub fn read_msgs(uffd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(0),
            _ => Err(e),
        };
    }
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Waits up to `timeout_ms` (-1: forever) until one of `fds` (at most 4)
/// is readable (or has an error); returns early on a signal.
pub fn poll_in(fds: &[&OwnedFd], timeout_ms: libc::c_int) -> io::Result<()> {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(p.len());
    for (slot, fd) in p.iter_mut().zip(fds) {
        slot.fd = fd.as_raw_fd();
    }
    // `n` <= 4: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let count = n as libc::nfds_t;
    // SAFETY: `p` holds `n` live pollfds, matching `count`.
    let ret = unsafe { libc::poll(p.as_mut_ptr(), count, timeout_ms) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// A new non-blocking, close-on-exec eventfd (a counter threads can wake
/// a poller with).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and touches no memory of ours.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd (wakes its pollers).
pub fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is 8 readable bytes, the size an eventfd write takes.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // EAGAIN: the counter is saturated, pollers are awake anyway.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Ok(())
}

/// Resets an eventfd to zero (non-blocking).
pub fn eventfd_clear(fd: &OwnedFd) -> io::Result<()> {
    let mut v = [0u8; 8];
    // SAFETY: `v` is 8 writable bytes, the size an eventfd read fills.
    let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), v.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
    Ok(())
}

/// `PAGEMAP_SCAN` over `[arg.start, arg.end)` with the filters in `arg`,
/// filling `out`. Returns the regions written and the scan's end address.
pub fn pagemap_scan(
    pagemap: &impl AsRawFd,
    arg: &PmScanArg,
    out: &mut [PageRegion],
) -> io::Result<(usize, u64)> {
    let mut a = *arg;
    a.size = size_of::<PmScanArg>() as u64;
    a.vec = if out.is_empty() {
        0
    } else {
        out.as_mut_ptr() as u64
    };
    a.vec_len = out.len() as u64;
    // SAFETY: `a` is a live `struct pm_scan_arg`; `vec`/`vec_len` describe
    // `out`, valid for writes of that many `page_region`s during the call.
    // The scanned range is only inspected (and write-protected with
    // PM_SCAN_WP_MATCHING), never written.
    let n = cvt(unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            request(PAGEMAP_SCAN),
            std::ptr::addr_of_mut!(a),
        )
    })?;
    let n = usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((n.min(out.len()), a.walk_end))
}

/// A fresh private anonymous mapping of `len` bytes (MAP_NORESERVE).
pub fn mmap_anon(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a new anonymous mapping at an address the kernel chooses
    // cannot alias any existing Rust object.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Unmaps a mapping made by [`mmap_anon`].
///
/// # Safety
///
/// `[ptr, ptr + len)` must be a mapping from [`mmap_anon`] that no live
/// reference points into.
pub unsafe fn munmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is ours and unreferenced.
    cvt(unsafe { libc::munmap(ptr.as_ptr().cast(), len) })?;
    Ok(())
}

/// `madvise(addr, len, advice)` on part of a mapping we own.
///
/// Only advice values that keep the mapping valid are passed
/// (MADV_DONTNEED, MADV_NOHUGEPAGE): memory stays mapped, DONTNEED'd
/// pages read back as zero (or fault to the uffd when registered).
pub fn madvise(addr: u64, len: usize, advice: libc::c_int) -> io::Result<()> {
    let ptr = usize::try_from(addr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the callers pass ranges of their own live mapping and only
    // advice that leaves it mapped; Rust code reads it only through
    // atomics, for which a concurrent zap is like a concurrent store.
    cvt(unsafe { libc::madvise(ptr as *mut libc::c_void, len, advice) })?;
    Ok(())
}
