//! The C ABI of `include/libxl_postcopy.h`.
//!
//! Every entry point returns 0 or a negative errno (or a handle / NULL with
//! `*rc`), logs the reason of a failure through the caller's xentoollog
//! logger, and never unwinds: a panic is caught, logged and returned as
//! `-EIO`.

use std::ffi::{c_char, c_int, c_ulong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use libxl_sys as sys;
use log::{error, info, warn};
use postcopy::memory::MemoryError;
use postcopy::prepage::StrategySpec;
use postcopy::records::RecordError;
use postcopy::Error;

use crate::restore::RestoreSession;
use crate::save::{Known, SaveSession};
use crate::xc::LibXc;
use crate::xen_dest::XenDestination;
use crate::xen_source::{Prescan, XenSource};
use crate::xtl::{self, XtlLogger};
use crate::ABI_VERSION;

/// `struct libxl_postcopy_save_params`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SaveParams {
    /// `LIBXL_POSTCOPY_ABI_VERSION`.
    pub abi_version: u32,
    /// The domain.
    pub domid: u32,
    /// The caller's libxenctrl handle.
    pub xch: *mut sys::xc_interface,
    /// The caller's logger (NULL: stderr).
    pub lg: *mut sys::xentoollog_logger,
    /// Records to the destination.
    pub stream_fd: c_int,
    /// Fault requests from the destination.
    pub back_fd: c_int,
    /// `LIBXL_POSTCOPY_PREPAGE_*`.
    pub strategy: u32,
    /// K for multi-pivot, else 0.
    pub strategy_arg: u32,
    /// Live pre-copy rounds already sent.
    pub precopy_rounds: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// `struct libxl_postcopy_restore_params`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RestoreParams {
    /// `LIBXL_POSTCOPY_ABI_VERSION`.
    pub abi_version: u32,
    /// The domain.
    pub domid: u32,
    /// The caller's libxenctrl handle.
    pub xch: *mut sys::xc_interface,
    /// The caller's logger (NULL: stderr).
    pub lg: *mut sys::xentoollog_logger,
    /// Records from the source.
    pub stream_fd: c_int,
    /// Fault requests to the source.
    pub back_fd: c_int,
    /// Reserved, 0.
    pub flags: u32,
}

/// `struct libxl_postcopy_save` (opaque to C).
#[derive(Debug)]
pub struct SaveHandle {
    session: SaveSession<LibXc>,
    lg: XtlLogger,
}

/// `struct libxl_postcopy_restore` (opaque to C).
#[derive(Debug)]
pub struct RestoreHandle {
    session: RestoreSession<LibXc>,
    lg: XtlLogger,
}

/// The errno for an engine error.
pub fn errno_of(e: &Error) -> c_int {
    match e {
        Error::Record(RecordError::Closed | RecordError::Truncated { .. }) => libc::EPIPE,
        Error::Record(RecordError::Io(io)) => io.raw_os_error().unwrap_or(libc::EIO),
        Error::Record(_) | Error::Protocol(_) => libc::EPROTO,
        Error::Memory(MemoryError::Unsupported { .. }) => libc::EOPNOTSUPP,
        Error::Memory(MemoryError::GuestGone(_)) => libc::ESRCH,
        Error::Memory(MemoryError::OutOfRange { .. }) => libc::EINVAL,
        Error::Memory(MemoryError::Os { source, .. }) => source.raw_os_error().unwrap_or(libc::EIO),
        Error::Memory(MemoryError::Backend { errno, .. }) => errno.unwrap_or(libc::EIO),
        Error::Size(_) => libc::ENOMEM,
        // The destination refused the switch (ABORT before READY): the
        // guest never ran there, the source may resume it.
        Error::PeerAborted(_) => libc::ECANCELED,
        // A bounded wait ended (READY before the switch: the guest never
        // ran there either).
        Error::Timeout { .. } => libc::ETIMEDOUT,
        // The guest died on the destination after the switch: there
        // (GuestDied) or as the destination reported it here (its ABORT
        // reason). libxl turns it into ERROR_DOMAIN_DESTROYED on the source
        // and xl keeps both copies for the admin.
        e if e.is_guest_death() => libc::EOWNERDEAD,
        // After the switch the destination failed otherwise and said why:
        // the guest is its, never resume it here.
        Error::DestinationFailed { .. } => libc::ECONNABORTED,
        Error::Spawn { source, .. } => source.raw_os_error().unwrap_or(libc::EAGAIN),
        Error::WrongPhase { .. } => libc::EINVAL,
        _ => libc::EIO,
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Runs `f` with `lg` as the log destination; a panic becomes `-EIO`.
fn guarded<T>(what: &str, lg: XtlLogger, on_panic: T, f: impl FnOnce() -> T) -> T {
    let _g = xtl::register(lg);
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            error!("internal error in {what}: {}", panic_text(&*p));
            on_panic
        }
    }
}

fn fail(what: &str, e: &Error) -> c_int {
    error!("{what} failed: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        error!("  caused by: {s}");
        src = s.source();
    }
    -errno_of(e)
}

/// Returns `LIBXL_POSTCOPY_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn libxl_postcopy_abi_version() -> u32 {
    ABI_VERSION
}

/// `libxl_postcopy_precopy_policy`: 1 to switch to post-copy now, 0 for
/// one more live round ([`crate::precopy`]); a panic answers 1 (switching
/// is always safe).
#[no_mangle]
pub extern "C" fn libxl_postcopy_precopy_policy(
    domid: u32,
    precopy_rounds: u32,
    iteration: std::ffi::c_uint,
    dirty_count: std::ffi::c_long,
) -> c_int {
    #[allow(
        clippy::useless_conversion,
        reason = "c_long is i64 here, i32 on 32-bit targets"
    )]
    let dirty_count = i64::from(dirty_count);
    let out =
        catch_unwind(|| crate::precopy::policy_call(domid, precopy_rounds, iteration, dirty_count));
    match out {
        Ok(switch) => c_int::from(switch),
        Err(_) => {
            error!("precopy policy panicked; switching to post-copy");
            1
        }
    }
}

/// Writes `msg` NUL-terminated into `err[..errlen]`.
///
/// # Safety
/// `err` is NULL or valid for `errlen` bytes.
unsafe fn write_err(err: *mut c_char, errlen: usize, msg: &str) {
    if err.is_null() || errlen == 0 {
        return;
    }
    let n = msg.len().min(errlen - 1);
    // SAFETY: err has errlen >= n + 1 bytes (caller contract).
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// `libxl_postcopy_parse_strategy`.
///
/// # Safety
/// `arg` is NULL or a NUL-terminated string; `strategy` and `strategy_arg`
/// are NULL or valid for a write; `err` is NULL or valid for `errlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_parse_strategy(
    arg: *const c_char,
    strategy: *mut u32,
    strategy_arg: *mut u32,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if arg.is_null() || strategy.is_null() || strategy_arg.is_null() {
            // SAFETY: caller contract on err/errlen.
            unsafe { write_err(err, errlen, "libxl_postcopy_parse_strategy: NULL argument") };
            return -libc::EINVAL;
        }
        // SAFETY: arg is a NUL-terminated string (caller contract).
        let text = unsafe { CStr::from_ptr(arg) }.to_string_lossy();
        match StrategySpec::from_str(&text) {
            Ok(spec) => {
                let (id, k) = spec.wire_id();
                // SAFETY: both pointers are valid for a write (checked non-NULL,
                // caller contract).
                unsafe {
                    *strategy = id;
                    *strategy_arg = k;
                }
                0
            }
            Err(e) => {
                // SAFETY: caller contract on err/errlen.
                unsafe { write_err(err, errlen, &e.to_string()) };
                -libc::EINVAL
            }
        }
    }));
    r.unwrap_or_else(|p| {
        error!(
            "internal error in libxl_postcopy_parse_strategy: {}",
            panic_text(&*p)
        );
        -libc::EIO
    })
}

/// `libxl_postcopy_parse_rate`: a `--max-bandwidth` value with the
/// engine's rule ([`postcopy::scheduler::parse_rate`]), the one the save
/// helper applies to [`crate::save::MAX_BANDWIDTH_ENV`].
///
/// # Safety
/// `arg` is NULL or a NUL-terminated string; `rate` is NULL or valid for a
/// write; `err` is NULL or valid for `errlen` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_parse_rate(
    arg: *const c_char,
    rate: *mut u64,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if arg.is_null() || rate.is_null() {
            // SAFETY: caller contract on err/errlen.
            unsafe { write_err(err, errlen, "libxl_postcopy_parse_rate: NULL argument") };
            return -libc::EINVAL;
        }
        // SAFETY: arg is a NUL-terminated string (caller contract).
        let text = unsafe { CStr::from_ptr(arg) }.to_string_lossy();
        match postcopy::scheduler::parse_rate(&text) {
            Ok(r) => {
                // SAFETY: rate is valid for a write (checked non-NULL,
                // caller contract).
                unsafe { *rate = r };
                0
            }
            Err(e) => {
                // SAFETY: caller contract on err/errlen.
                unsafe { write_err(err, errlen, &e) };
                -libc::EINVAL
            }
        }
    }));
    r.unwrap_or_else(|p| {
        error!(
            "internal error in libxl_postcopy_parse_rate: {}",
            panic_text(&*p)
        );
        -libc::EIO
    })
}

/// `libxl_postcopy_host_capabilities`: this host's capability line
/// ([`crate::capabilities::probe`]) into `buf`.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_host_capabilities(buf: *mut c_char, len: usize) -> c_int {
    let r = catch_unwind(|| crate::capabilities::probe().to_line());
    match r {
        Ok(line) => {
            if len <= line.len() {
                // SAFETY: caller contract on buf/len.
                unsafe { write_err(buf, len, "capability buffer too small") };
                return -libc::ENOSPC;
            }
            // SAFETY: caller contract on buf/len; the line fits with its NUL.
            unsafe { write_err(buf, len, &line) };
            0
        }
        Err(p) => {
            let why = format!("internal error probing capabilities: {}", panic_text(&*p));
            error!("{why}");
            // SAFETY: caller contract on buf/len.
            unsafe { write_err(buf, len, &why) };
            -libc::EIO
        }
    }
}

/// `libxl_postcopy_check_receiver`: the sender's check of a receiver's
/// capability line ([`postcopy::capabilities::check_receiver`]); a
/// receiver that passes also sets the optional features this process's
/// save helper will use ([`crate::capabilities::adopt_receiver_features`]).
///
/// # Safety
/// `line` and `strategy` are NULL or NUL-terminated strings; `buf` is NULL
/// or valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_check_receiver(
    line: *const c_char,
    strategy: *const c_char,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if line.is_null() || strategy.is_null() {
            return Err("libxl_postcopy_check_receiver: NULL argument".to_string());
        }
        // SAFETY: both are NUL-terminated strings (caller contract).
        let (line, strategy) = unsafe { (CStr::from_ptr(line), CStr::from_ptr(strategy)) };
        let spec =
            StrategySpec::from_str(&strategy.to_string_lossy()).map_err(|e| e.to_string())?;
        let line = line
            .to_str()
            .map_err(|_| "its answer is unreadable: not text".to_string())?;
        let peer = postcopy::capabilities::check_receiver(line, ABI_VERSION, &spec)?;
        let early = crate::capabilities::adopt_receiver_features(&peer);
        info!(
            "post-copy sender: receiver: {peer}; early page-out {}",
            if early { "on" } else { "off" }
        );
        Ok(peer.to_string())
    }));
    let (rc, text) = match r {
        Ok(Ok(summary)) => (0, summary),
        Ok(Err(why)) => (-libc::EPROTO, why),
        Err(p) => (-libc::EIO, format!("internal error: {}", panic_text(&*p))),
    };
    // SAFETY: caller contract on buf/len.
    unsafe { write_err(buf, len, &text) };
    rc
}

fn set_rc(rc: *mut c_int, v: c_int) {
    if !rc.is_null() {
        // SAFETY: rc is NULL or valid for a write (ABI contract).
        unsafe { *rc = v };
    }
}

/// The prescan of the migration this process serves (a save helper
/// migrates one domain), from [`libxl_postcopy_save_prescan`] to
/// [`libxl_postcopy_save_begin`].
static PRESCAN: Mutex<Option<(u32, Prescan)>> = Mutex::new(None);

/// The prescan of `domid`, taken (any other is dropped).
fn take_prescan(domid: u32) -> Option<Prescan> {
    let mut g = PRESCAN.lock().unwrap_or_else(|p| p.into_inner());
    g.take().filter(|(d, _)| *d == domid).map(|(_, p)| p)
}

/// Environment switch: `stop` refuses the prescan (libxenguest then passes
/// no bitmap and the source asks the type of every pfn while the guest is
/// stopped, as before the prescan), to compare the two in one boot.
pub const SCAN_ENV: &str = "LIBXL_POSTCOPY_SCAN";

/// Refuses parameters of another ABI or with flags set.
fn check_save_params(what: &str, p: &SaveParams) -> Result<(), c_int> {
    if p.abi_version != ABI_VERSION || p.flags != 0 {
        error!(
            "{what}: caller speaks ABI {} with flags {:#x}; this library is ABI {ABI_VERSION} and needs flags 0",
            p.abi_version, p.flags
        );
        return Err(-libc::EINVAL);
    }
    Ok(())
}

/// `libxl_postcopy_save_prescan`: while the guest still runs (log-dirty
/// mode already on), finds its populated pfns for the next
/// `libxl_postcopy_save_begin` of the same domain.
///
/// # Safety
/// `params` points to a valid `struct libxl_postcopy_save_params` whose
/// `xch` and `lg` are live for the call.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_save_prescan(params: *const SaveParams) -> c_int {
    if params.is_null() {
        return -libc::EINVAL;
    }
    // SAFETY: non-NULL and valid (caller contract).
    let p = unsafe { *params };
    // SAFETY: lg is live for the call (caller contract).
    let lg = unsafe { XtlLogger::new(p.lg) };
    guarded("libxl_postcopy_save_prescan", lg, -libc::EIO, || {
        if let Err(e) = check_save_params("save_prescan", &p) {
            return e;
        }
        if std::env::var(SCAN_ENV).is_ok_and(|v| v == "stop") {
            info!("{SCAN_ENV}=stop: no prescan, every pfn is looked at while the guest is stopped");
            return -libc::EOPNOTSUPP;
        }
        // SAFETY: xch is live for the call (caller contract).
        let ops = match unsafe { LibXc::new(p.xch, p.domid, false) } {
            Ok(o) => o,
            Err(e) => {
                error!("save_prescan: {e}");
                return -e.errno();
            }
        };
        let ops = Arc::new(ops);
        let scan = XenSource::new(ops.clone()).and_then(|mem| Prescan::run(&mem));
        let pre = match scan {
            Ok(pre) => pre,
            Err(e) => return fail("post-copy prescan", &Error::Memory(e)),
        };
        info!(
            "post-copy source: prescan of domain {} while it runs: {} populated of {} pfns in {:?}",
            p.domid,
            pre.populated.len(),
            pre.pfns,
            pre.took
        );
        // Issue #15: the destination pages the prescan's pfns out now,
        // while the guest runs (opt-in).
        let early = crate::restore::evict_early_setting(false).then(|| {
            crate::save::send_early(
                &*ops,
                &pre,
                p.stream_fd,
                p.back_fd,
                crate::save::EARLY_TIMEOUT,
            )
        });
        *PRESCAN.lock().unwrap_or_else(|p| p.into_inner()) = Some((p.domid, pre));
        match early {
            Some(Err(e)) => fail("post-copy early page-out", &e),
            _ => 0,
        }
    })
}

/// `libxl_postcopy_save_begin`.
///
/// # Safety
/// `params` points to a valid `struct libxl_postcopy_save_params` whose
/// `xch` and `lg` outlive the handle; `dirty_bitmap` is NULL or holds
/// `nr_bits` bits; `rc` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_save_begin(
    params: *const SaveParams,
    dirty_bitmap: *const c_ulong,
    nr_bits: u64,
    rc: *mut c_int,
) -> *mut SaveHandle {
    if params.is_null() {
        set_rc(rc, -libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: non-NULL and valid (caller contract).
    let p = unsafe { *params };
    // SAFETY: lg outlives the handle (caller contract).
    let lg = unsafe { XtlLogger::new(p.lg) };
    let out = guarded("libxl_postcopy_save_begin", lg, Err(-libc::EIO), || {
        check_save_params("save_begin", &p)?;
        let Some(strategy) = StrategySpec::from_wire(p.strategy, p.strategy_arg) else {
            error!(
                "save_begin: unknown pre-paging strategy {} (argument {})",
                p.strategy, p.strategy_arg
            );
            return Err(-libc::EINVAL);
        };
        let words;
        let dirty = if dirty_bitmap.is_null() {
            None
        } else {
            let n = usize::try_from(nr_bits.div_ceil(64)).map_err(|_| -libc::EINVAL)?;
            // SAFETY: the bitmap holds nr_bits bits (caller contract), i.e.
            // n unsigned longs, which are u64 on the LP64 targets Xen
            // tools support.
            words = unsafe { std::slice::from_raw_parts(dirty_bitmap.cast::<u64>(), n) };
            Some((words, nr_bits))
        };
        // SAFETY: xch is live for the handle's lifetime (caller contract).
        let ops = unsafe { LibXc::new(p.xch, p.domid, false) }.map_err(|e| {
            error!("save_begin: {e}");
            -e.errno()
        })?;
        if p.precopy_rounds > 0 && dirty.is_none() {
            error!(
                "save_begin: {} pre-copy rounds but no dirty bitmap",
                p.precopy_rounds
            );
            return Err(-libc::EINVAL);
        }
        let prescan = take_prescan(p.domid);
        let known = match dirty {
            None => Known::Nothing,
            Some((words, bits)) if p.precopy_rounds > 0 => Known::Precopy(words, bits),
            Some((words, bits)) => match prescan {
                Some(pre) => Known::Prescan(pre, words, bits),
                None => {
                    warn!(
                        "save_begin: a dirty bitmap without pre-copy rounds, but no prescan of domain {}: every pfn is looked at",
                        p.domid
                    );
                    Known::Nothing
                }
            },
        };
        SaveSession::begin(Arc::new(ops), p.stream_fd, p.back_fd, strategy, known)
            .map(|(session, _)| Box::new(SaveHandle { session, lg }))
            .map_err(|e| fail("post-copy save begin", &e))
    });
    match out {
        Ok(h) => {
            set_rc(rc, 0);
            Box::into_raw(h)
        }
        Err(e) => {
            set_rc(rc, e);
            std::ptr::null_mut()
        }
    }
}

/// Runs `f` on a live handle.
///
/// # Safety
/// `h` is NULL or a live handle from the matching `*_begin`.
unsafe fn with_handle<H>(
    what: &str,
    h: *mut H,
    lg: impl FnOnce(&H) -> XtlLogger,
    f: impl FnOnce(&mut H) -> Result<c_int, Error>,
) -> c_int {
    // SAFETY: NULL or a live, exclusively used handle (caller contract).
    let Some(h) = (unsafe { h.as_mut() }) else {
        return -libc::EINVAL;
    };
    let l = lg(h);
    guarded(what, l, -libc::EIO, || match f(h) {
        Ok(rc) => rc,
        Err(e) => fail(what, &e),
    })
}

/// `libxl_postcopy_save_transition`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_save_begin`.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_save_transition(h: *mut SaveHandle) -> c_int {
    // SAFETY: forwarded caller contract.
    unsafe {
        with_handle(
            "post-copy transition",
            h,
            |h| h.lg,
            |h| h.session.transition().map(|()| 0),
        )
    }
}

/// Serving writes to xl's stream while the destination may close it (a
/// guest that died there: ABORT on the back channel, then the stream
/// shuts). libxl-save-helper keeps SIGPIPE's default action, which would
/// kill it before the engine reads the destination's reason; with the
/// signal ignored the write fails with EPIPE and the failure is reported
/// with its cause. The helper process exists for this one save, so the
/// process-wide setting touches nothing else.
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no
    // handler code; signal() is async-signal-safe and its result (the
    // previous disposition) is not needed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// `libxl_postcopy_save_serve`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_save_begin`.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_save_serve(h: *mut SaveHandle) -> c_int {
    ignore_sigpipe();
    // SAFETY: forwarded caller contract.
    unsafe { with_handle("post-copy page service", h, |h| h.lg, |h| h.session.serve()) }
}

/// `libxl_postcopy_save_free`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_save_begin`, not used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_save_free(h: *mut SaveHandle) {
    if h.is_null() {
        return;
    }
    // SAFETY: h came from Box::into_raw in save_begin and is freed once.
    let b = unsafe { Box::from_raw(h) };
    let lg = b.lg;
    guarded("libxl_postcopy_save_free", lg, (), move || drop(b));
}

/// `libxl_postcopy_restore_begin`.
///
/// # Safety
/// `params` points to a valid `struct libxl_postcopy_restore_params` whose
/// `xch` and `lg` outlive the handle; `begin_body` holds `len` bytes; `rc`
/// is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_restore_begin(
    params: *const RestoreParams,
    begin_body: *const c_void,
    len: u32,
    rc: *mut c_int,
) -> *mut RestoreHandle {
    if params.is_null() || (begin_body.is_null() && len > 0) {
        set_rc(rc, -libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: non-NULL and valid (caller contract).
    let p = unsafe { *params };
    // SAFETY: lg outlives the handle (caller contract).
    let lg = unsafe { XtlLogger::new(p.lg) };
    let out = guarded("libxl_postcopy_restore_begin", lg, Err(-libc::EIO), || {
        if p.abi_version != ABI_VERSION || p.flags != 0 {
            error!(
                "restore_begin: caller speaks ABI {} with flags {:#x}; this library is ABI {ABI_VERSION} and needs flags 0",
                p.abi_version, p.flags
            );
            return Err(-libc::EINVAL);
        }
        let body: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: begin_body holds len bytes (caller contract).
            unsafe { std::slice::from_raw_parts(begin_body.cast::<u8>(), len as usize) }
        };
        // SAFETY: xch is live for the handle's lifetime (caller contract).
        let ops = unsafe { LibXc::new(p.xch, p.domid, true) }.map_err(|e| {
            error!("restore_begin: {e}");
            -e.errno()
        })?;
        let early = take_early(p.domid);
        RestoreSession::begin(Arc::new(ops), p.stream_fd, p.back_fd, body, early)
            .map(|session| Box::new(RestoreHandle { session, lg }))
            .map_err(|e| fail("post-copy restore begin", &e))
    });
    match out {
        Ok(h) => {
            set_rc(rc, 0);
            Box::into_raw(h)
        }
        Err(e) => {
            set_rc(rc, e);
            std::ptr::null_mut()
        }
    }
}

/// The memory EARLY_PFNS paged out before BEGIN (issue #15), of the
/// domain this process restores, from [`libxl_postcopy_restore_early`] to
/// [`libxl_postcopy_restore_begin`].
static EARLY: Mutex<Option<(u32, XenDestination<LibXc>)>> = Mutex::new(None);

/// The early memory of `domid`, taken (any other is dropped).
fn take_early(domid: u32) -> Option<XenDestination<LibXc>> {
    let mut g = EARLY.lock().unwrap_or_else(|p| p.into_inner());
    g.take().filter(|(d, _)| *d == domid).map(|(_, m)| m)
}

/// `libxl_postcopy_restore_early`: an EARLY_PFNS record, before
/// POSTCOPY_BEGIN: pages its pfns out while the source's guest still runs
/// and answers EARLY_DONE on `back_fd`.
///
/// # Safety
/// `params` points to a valid `struct libxl_postcopy_restore_params` whose
/// `xch` and `lg` outlive the restore; `body` holds `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_restore_early(
    params: *const RestoreParams,
    body: *const c_void,
    len: u32,
) -> c_int {
    if params.is_null() || (body.is_null() && len > 0) {
        return -libc::EINVAL;
    }
    // SAFETY: non-NULL and valid (caller contract).
    let p = unsafe { *params };
    // SAFETY: lg is live for the call (caller contract).
    let lg = unsafe { XtlLogger::new(p.lg) };
    guarded("libxl_postcopy_restore_early", lg, -libc::EIO, || {
        if p.abi_version != ABI_VERSION || p.flags != 0 {
            error!(
                "restore_early: caller speaks ABI {} with flags {:#x}; this library is ABI {ABI_VERSION} and needs flags 0",
                p.abi_version, p.flags
            );
            return -libc::EINVAL;
        }
        let body: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: body holds len bytes (caller contract).
            unsafe { std::slice::from_raw_parts(body.cast::<u8>(), len as usize) }
        };
        // SAFETY: xch outlives the restore (caller contract).
        let ops = match unsafe { LibXc::new(p.xch, p.domid, true) } {
            Ok(o) => o,
            Err(e) => {
                error!("restore_early: {e}");
                return -e.errno();
            }
        };
        let before = take_early(p.domid);
        match crate::restore::early_record(before, Arc::new(ops), p.back_fd, body) {
            Ok(mem) => {
                *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some((p.domid, mem));
                0
            }
            Err(e) => fail("post-copy early page-out", &e),
        }
    })
}

/// `libxl_postcopy_restore_record`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_restore_begin`;
/// `body` holds `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_restore_record(
    h: *mut RestoreHandle,
    rtype: u32,
    body: *const c_void,
    len: u32,
) -> c_int {
    if body.is_null() && len > 0 {
        return -libc::EINVAL;
    }
    let body: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: body holds len bytes (caller contract).
        unsafe { std::slice::from_raw_parts(body.cast::<u8>(), len as usize) }
    };
    // SAFETY: forwarded caller contract.
    unsafe {
        with_handle(
            "post-copy restore record",
            h,
            |h| h.lg,
            |h| h.session.record_or_abort(rtype, body).map(|()| 0),
        )
    }
}

/// `libxl_postcopy_restore_serve`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_restore_begin`.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_restore_serve(h: *mut RestoreHandle) -> c_int {
    // SAFETY: forwarded caller contract.
    unsafe { with_handle("post-copy page service", h, |h| h.lg, |h| h.session.serve()) }
}

/// `libxl_postcopy_restore_free`.
///
/// # Safety
/// `h` is NULL or a live handle from `libxl_postcopy_restore_begin`, not
/// used afterwards.
#[no_mangle]
pub unsafe extern "C" fn libxl_postcopy_restore_free(h: *mut RestoreHandle) {
    if h.is_null() {
        return;
    }
    // SAFETY: h came from Box::into_raw in restore_begin and is freed once.
    let b = unsafe { Box::from_raw(h) };
    let lg = b.lg;
    guarded("libxl_postcopy_restore_free", lg, (), move || drop(b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xtl::tests::{Recorder, LOG_LOCK};

    #[test]
    fn a_panic_becomes_eio_and_is_logged() {
        let _l = LOG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let rec = Recorder::new();
        // SAFETY: rec outlives the call.
        let lg = unsafe { XtlLogger::new(rec.as_logger()) };
        let rc = guarded("test entry", lg, -libc::EIO, || -> c_int {
            panic!("boom {}", 1)
        });
        assert_eq!(rc, -libc::EIO);
        let lines = rec.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("internal error in test entry: boom 1")),
            "{lines:?}"
        );
    }

    #[test]
    fn errors_map_to_meaningful_errnos() {
        assert_eq!(errno_of(&Error::Record(RecordError::Closed)), libc::EPIPE);
        assert_eq!(errno_of(&Error::Protocol("x".into())), libc::EPROTO);
        assert_eq!(
            errno_of(&Error::Memory(MemoryError::Unsupported {
                what: "x",
                why: "y".into()
            })),
            libc::EOPNOTSUPP
        );
        assert_eq!(
            errno_of(&Error::Memory(MemoryError::os(
                "x",
                std::io::Error::from_raw_os_error(libc::EBUSY)
            ))),
            libc::EBUSY
        );
        let died = crate::domain_watch::GuestDied {
            death: crate::domain_watch::Death::Shutdown(libxl_sys::SHUTDOWN_crash),
            absent: 3,
            owed: 9,
        };
        assert_eq!(errno_of(&died.clone().into_error()), libc::EOWNERDEAD);
        // The source gets the destination error's text in ABORT.
        let told = Error::destination_failed(died.clone().into_error().to_string());
        assert_eq!(errno_of(&told), libc::EOWNERDEAD);
        // Any other failure after the switch: ECONNABORTED (the engine's
        // scheme; death's branch had EIO), never the ECANCELED that resumes
        // the source.
        let other = Error::destination_failed("disk full".into());
        assert_eq!(errno_of(&other), libc::ECONNABORTED);
    }

    #[test]
    fn the_rate_parser_is_the_engines() {
        let mut rate = 0u64;
        let mut err = [0 as c_char; 128];
        // SAFETY: valid pointers and lengths.
        let rc = unsafe {
            libxl_postcopy_parse_rate(c"2M".as_ptr(), &mut rate, err.as_mut_ptr(), err.len())
        };
        assert_eq!((rc, rate), (0, 2 << 20));
        // SAFETY: valid pointers and lengths.
        let rc = unsafe {
            libxl_postcopy_parse_rate(c"abc".as_ptr(), &mut rate, err.as_mut_ptr(), err.len())
        };
        assert_eq!(rc, -libc::EINVAL);
        // SAFETY: write_err NUL-terminated it.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        assert!(msg.contains("\"abc\" is not a rate"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        // SAFETY: a NULL argument is refused, nothing written.
        let rc = unsafe {
            libxl_postcopy_parse_rate(std::ptr::null(), &mut rate, err.as_mut_ptr(), err.len())
        };
        assert_eq!(rc, -libc::EINVAL);
    }

    #[test]
    fn the_strategy_parser_is_the_engines() {
        let mut id = 0;
        let mut arg = 0;
        let mut err = [0 as c_char; 128];
        for spec in StrategySpec::ALL {
            let name = std::ffi::CString::new(spec.to_string()).unwrap_or_default();
            // SAFETY: valid pointers and lengths.
            let rc = unsafe {
                libxl_postcopy_parse_strategy(
                    name.as_ptr(),
                    &mut id,
                    &mut arg,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            assert_eq!(rc, 0);
            assert_eq!((id, arg), spec.wire_id());
        }
        let bad = c"multi-pivot:x";
        // SAFETY: valid pointers and lengths.
        let rc = unsafe {
            libxl_postcopy_parse_strategy(
                bad.as_ptr(),
                &mut id,
                &mut arg,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        assert_eq!(rc, -libc::EINVAL);
        // SAFETY: write_err NUL-terminated it.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        assert!(
            msg.contains("multi-pivot:x") && msg.contains("bubble-forward"),
            "{msg}"
        );
    }
}
