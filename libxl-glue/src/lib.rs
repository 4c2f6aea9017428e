//! `libxl_postcopy.so`: the post-copy engine as patched libxenguest sees it.
//!
//! - [`ffi`]: the C ABI of `include/libxl_postcopy.h` (save: begin /
//!   transition / serve / free; restore: begin / record / serve / free;
//!   the ABI version and the `--prepage=` parser). No panic crosses it.
//! - [`save`] and [`restore`]: the phased sessions behind those calls,
//!   built from the engine's public pieces (record reader/writer,
//!   scheduler, pre-pagers).
//! - [`source`] and [`dest`]: the Xen backends of the engine's
//!   `SourceMemory` / `DestinationMemory` traits.
//! - [`present`]: what must be present before the guest runs (special
//!   pfns, page tables walked from CR3, stacks).
//! - [`domain_watch`] and [`forensics`]: a guest that dies on the
//!   destination during post-copy fails the migration, with a post-mortem
//!   in the log.
//! - [`ring`]: the vm_event back ring; [`xc`]: one safe wrapper per Xen
//!   call behind the [`xc::XenOps`] trait; [`xtl`]: logging and progress
//!   through xentoollog.

pub mod dest;
pub mod domain_watch;
pub mod fdio;
pub mod ffi;
pub mod forensics;
pub mod present;
pub mod restore;
pub mod ring;
pub mod save;
pub mod source;
pub mod xc;
pub mod xtl;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod fake;

/// `LIBXL_POSTCOPY_ABI_VERSION` of `include/libxl_postcopy.h`.
pub const ABI_VERSION: u32 = 1;
/// `LIBXL_POSTCOPY_SONAME`.
pub const SONAME: &str = "libxl_postcopy.so.1";
