//! Logging and progress through xentoollog, so that messages land where
//! xl's and libxenguest's do (the save/restore helper forwards them to
//! xl), and `xl migrate` shows post-copy progress.
//!
//! The crate logs with the `log` facade. [`XtlBridge`] is installed as the
//! process's `log` logger the first time a session starts (if no other
//! logger is installed: a standalone Rust program keeps its own, e.g.
//! env_logger) and forwards each record to the xentoollog logger of the
//! current session, or to stderr when the caller passed none.

use std::ffi::CString;
use std::sync::{Mutex, Once};

use libxl_sys as sys;

/// The caller's `xentoollog_logger *`.
#[derive(Debug, Clone, Copy)]
pub struct XtlLogger(*mut sys::xentoollog_logger);

// SAFETY: xentoollog loggers are used from any thread of the helper
// (libxenguest logs from whichever thread calls it); calls are serialised
// by CURRENT's mutex below.
unsafe impl Send for XtlLogger {}

impl XtlLogger {
    /// Wraps a logger pointer (may be NULL: stderr).
    ///
    /// # Safety
    /// A non-NULL `lg` must stay valid until [`XtlGuard`] of the session
    /// that registered it is dropped.
    pub unsafe fn new(lg: *mut sys::xentoollog_logger) -> XtlLogger {
        XtlLogger(lg)
    }

    fn is_null(&self) -> bool {
        self.0.is_null()
    }
}

static CURRENT: Mutex<Option<XtlLogger>> = Mutex::new(None);
static INSTALL: Once = Once::new();
const CONTEXT: &[u8] = b"postcopy\0";

fn level(l: log::Level) -> sys::xentoollog_level {
    match l {
        log::Level::Error => sys::XTL_ERROR,
        log::Level::Warn => sys::XTL_WARN,
        log::Level::Info => sys::XTL_INFO,
        log::Level::Debug => sys::XTL_DETAIL,
        log::Level::Trace => sys::XTL_DEBUG,
    }
}

/// Removes NUL bytes (a C string cannot carry them).
fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// The `log` logger that forwards to xentoollog.
#[derive(Debug)]
pub struct XtlBridge;

impl log::Log for XtlBridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = format!("{}", record.args());
        let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        match *cur {
            Some(lg) if !lg.is_null() => {
                let text = c_text(&msg);
                // SAFETY: lg is live (XtlLogger::new contract, held under the
                // lock); the format is "%s" with one NUL-terminated string.
                unsafe {
                    sys::xtl_log(
                        lg.0,
                        level(record.level()),
                        -1,
                        CONTEXT.as_ptr().cast(),
                        c"%s".as_ptr(),
                        text.as_ptr(),
                    );
                }
            }
            _ => eprintln!("libxl_postcopy: {}: {msg}", record.level()),
        }
    }

    fn flush(&self) {}
}

static BRIDGE: XtlBridge = XtlBridge;

/// Installs the bridge (once per process, unless another logger is already
/// installed); with no session registered, records go to stderr.
pub fn install() {
    INSTALL.call_once(|| {
        if log::set_logger(&BRIDGE).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    });
}

/// Registers `lg` as the destination of this crate's log records until the
/// guard is dropped.
#[derive(Debug)]
pub struct XtlGuard {
    _private: (),
}

/// Installs the bridge (once per process, unless another logger is already
/// installed) and routes records to `lg`.
pub fn register(lg: XtlLogger) -> XtlGuard {
    install();
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(lg);
    XtlGuard { _private: () }
}

impl Drop for XtlGuard {
    fn drop(&mut self) {
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Reports progress through `xtl_progress` of the registered logger (what
/// `xl migrate` prints as a percentage), at most once per 1/200 of `total`.
#[derive(Debug)]
pub struct Progress {
    what: CString,
    total: u64,
    step: u64,
    last: u64,
}

impl Progress {
    /// Progress of `what` towards `total`.
    pub fn new(what: &str, total: u64) -> Progress {
        let p = Progress {
            what: c_text(what),
            total,
            step: (total / 200).max(1),
            last: 0,
        };
        p.emit(0);
        p
    }

    /// Reports `done` if it moved far enough (always at `total`).
    pub fn update(&mut self, done: u64) {
        if done >= self.last + self.step || (done >= self.total && self.last < self.total) {
            self.last = done;
            self.emit(done);
        }
    }

    fn emit(&self, done: u64) {
        let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        let Some(lg) = *cur else { return };
        if lg.is_null() {
            return;
        }
        let done = libc::c_ulong::try_from(done).unwrap_or(libc::c_ulong::MAX);
        let total = libc::c_ulong::try_from(self.total).unwrap_or(libc::c_ulong::MAX);
        // SAFETY: lg is live (held under the lock); both strings are
        // NUL-terminated and outlive the call.
        unsafe {
            sys::xtl_progress(
                lg.0,
                CONTEXT.as_ptr().cast(),
                self.what.as_ptr(),
                done,
                total,
            )
        };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A xentoollog logger that records what it is given, built on the
    /// public `xentoollog_logger` vtable.
    #[repr(C)]
    pub struct Recorder {
        vtable: sys::xentoollog_logger,
        pub lines: Mutex<Vec<String>>,
        pub progress: Mutex<Vec<(u64, u64)>>,
    }

    unsafe extern "C" fn vmessage(
        lg: *mut sys::xentoollog_logger,
        _level: sys::xentoollog_level,
        _errnoval: i32,
        _context: *const libc::c_char,
        format: *const libc::c_char,
        al: *mut sys::__va_list_tag,
    ) {
        let mut buf = [0u8; 512];
        extern "C" {
            fn vsnprintf(
                s: *mut libc::c_char,
                n: usize,
                f: *const libc::c_char,
                ap: *mut sys::__va_list_tag,
            ) -> i32;
        }
        // SAFETY: buf is 512 bytes; format/al come from xtl_log.
        unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), format, al) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        // SAFETY: lg is the vtable at the start of a live Recorder.
        let rec = unsafe { &*lg.cast::<Recorder>() };
        rec.lines
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
    }

    unsafe extern "C" fn progress(
        lg: *mut sys::xentoollog_logger,
        _context: *const libc::c_char,
        _doing: *const libc::c_char,
        _percent: i32,
        done: libc::c_ulong,
        total: libc::c_ulong,
    ) {
        // SAFETY: as in vmessage.
        let rec = unsafe { &*lg.cast::<Recorder>() };
        rec.progress.lock().unwrap().push((done, total));
    }

    unsafe extern "C" fn destroy(_lg: *mut sys::xentoollog_logger) {}

    impl Recorder {
        pub fn new() -> Box<Recorder> {
            Box::new(Recorder {
                vtable: sys::xentoollog_logger {
                    vmessage: Some(vmessage),
                    progress: Some(progress),
                    destroy: Some(destroy),
                },
                lines: Mutex::new(Vec::new()),
                progress: Mutex::new(Vec::new()),
            })
        }
        pub fn as_logger(&self) -> *mut sys::xentoollog_logger {
            (&self.vtable as *const sys::xentoollog_logger).cast_mut()
        }
    }

    /// Serialises tests that use the process-wide CURRENT logger.
    pub static LOG_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn log_records_and_progress_reach_the_xtl_logger() {
        let _l = LOG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let rec = Recorder::new();
        // SAFETY: rec outlives the guard.
        let g = register(unsafe { XtlLogger::new(rec.as_logger()) });
        log::warn!("hello {} %s %n", 42);
        let mut p = Progress::new("Post-copy pages", 1000);
        for i in 0..=1000 {
            p.update(i);
        }
        drop(g);
        log::warn!("after the guard: not recorded");
        let lines = rec.lines.lock().unwrap().clone();
        assert!(lines.iter().any(|l| l == "hello 42 %s %n"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("after the guard")));
        let prog = rec.progress.lock().unwrap().clone();
        assert_eq!(prog.first(), Some(&(0, 1000)));
        assert_eq!(prog.last(), Some(&(1000, 1000)));
        assert!(prog.len() <= 202, "{} progress calls", prog.len());
    }
}
