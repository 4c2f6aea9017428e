//! Scheduling precedence for the threads on a fault's path.
//!
//! A vCPU that faults waits for three things on the two hosts: the
//! destination's forwarder sending the request, the source's fault server
//! reading the page and writing the reply, and (with a reply channel of
//! its own) the destination's reply reader installing it. Each is asleep
//! almost all the time and runs for microseconds when woken. The push, on
//! the same CPUs, is busy all the time: on a host with one CPU for the
//! toolstack (the emulated Xen host's dom0, or local mode on a loaded
//! machine) a woken fault thread waited for the push's time slice to end.
//! These threads therefore take a lower nice value than the push
//! ([`FAULT_NICE`]), so that the kernel's scheduler runs them as soon as
//! they wake. They never spin: each blocks on a read or a poll with a
//! bound between bursts of work, so a nice value below the push's cannot
//! starve it.
//!
//! Lowering a nice value needs `CAP_SYS_NICE` (or `RLIMIT_NICE`): without
//! it the thread keeps its priority and says so once, at debug level; the
//! migration is the same, only slower to serve faults under load.

use log::debug;

/// The nice value the fault path's threads take by default (the push and
/// everything else stay at the process's, normally 0). Ten steps give a
/// woken thread about nine times the push's weight in Linux's fair
/// scheduler, which preempts the push at once.
pub const FAULT_NICE: i32 = -10;

/// Parses a fault-path nice setting, as an admin writes it: a nice value
/// in -20..=19, or `off` (`None`: the threads keep the process's).
/// Surrounding blanks are ignored.
pub fn parse_fault_nice(s: &str) -> Result<Option<i32>, String> {
    match s.trim() {
        "off" => Ok(None),
        t => match t.parse::<i32>() {
            Ok(n) if (-20..=19).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{t:?} is neither `off` nor a nice value in -20..=19"
            )),
        },
    }
}

/// Gives the calling thread `nice` (`None`: leaves it as it is). `role`
/// names the thread in the log. Never fails the caller: a refusal (no
/// privilege) is logged and the thread runs on at its priority.
pub fn fault_thread(nice: Option<i32>, role: &str) {
    let Some(nice) = nice else {
        return;
    };
    // PRIO_PROCESS with who = 0 is the calling thread on Linux: nice is a
    // per-thread attribute there.
    match rustix::process::setpriority_process(None, nice) {
        Ok(()) => debug!("{role}: nice {nice}"),
        Err(e) => debug!("{role}: keeps its priority (nice {nice} refused: {e})"),
    }
}

/// The calling thread's nice value, if it can be read.
pub fn current_nice() -> Option<i32> {
    rustix::process::getpriority_process(None).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_a_nice_value_or_off() {
        assert_eq!(parse_fault_nice("off"), Ok(None));
        assert_eq!(parse_fault_nice(" -5 "), Ok(Some(-5)));
        assert_eq!(parse_fault_nice("-20"), Ok(Some(-20)));
        assert_eq!(parse_fault_nice("19"), Ok(Some(19)));
        for bad in ["-21", "20", "fast", "", "-10x"] {
            assert!(parse_fault_nice(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_thread_takes_the_nice_value_or_keeps_its_own() {
        std::thread::spawn(|| {
            let before = current_nice().expect("getpriority of this thread");
            fault_thread(None, "test");
            assert_eq!(current_nice(), Some(before), "None leaves it");
            // Raising the value (less precedence) needs no privilege (19
            // is the highest: a test run under `nice -n 19` stays there).
            let up = (before + 1).min(19);
            fault_thread(Some(up), "test");
            assert_eq!(current_nice(), Some(up));
            // Lowering it needs CAP_SYS_NICE: either it took, or it stayed.
            fault_thread(Some(FAULT_NICE), "test");
            let now = current_nice().unwrap();
            assert!(now == FAULT_NICE || now == up, "nice {now}");
        })
        .join()
        .unwrap();
        // The other threads of the process keep theirs.
    }
}
