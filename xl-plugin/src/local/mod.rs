//! Local mode: post-copy (and pre-copy, hybrid) migration of a live mini-VM
//! between two processes on this machine, over real TCP, with the
//! destination's memory behind a real userfaultfd.
//!
//! | module | owns |
//! |---|---|
//! | [`workload`] | the workloads and the vCPU registers |
//! | [`vcpu`] | the vCPU thread: run, stop between steps, stall timing |
//! | [`hostmem`] | whether a guest fits on this host (before any allocation) |
//! | [`link`] | the two TCP connections and their hello (the token handshake is [`crate::auth`]) |
//! | [`integrity`] | the source/destination memory digests |
//! | [`recover`] | redirecting a running side after a break (`xl-postcopy recover`), link options |
//! | [`session`] | the sender and receiver processes |
//! | [`report`] | the report, table and JSON |
//! | [`trace`] | page-access traces for the simulator |

pub mod hostmem;
pub mod integrity;
pub mod link;
pub mod recover;
pub mod report;
pub mod session;
pub mod trace;
pub mod vcpu;
pub mod workload;
