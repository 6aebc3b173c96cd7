//! Resource use of processes the harness started, from `/proc`: the process
//! tree of a Kamailio, each process's proportional set size and its open file
//! descriptors (for the fault and soak runs).

use std::fs;
use std::path::Path;

use crate::process;

/// Memory and descriptors of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    /// `Pss:` of `/proc/<pid>/smaps_rollup`, in kB.
    pub pss_kb: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub fds: u64,
}

/// `pid` and all its current descendants, `pid` first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(process::descendants(pid));
    pids
}

/// The usage of `pid` and each of its descendants that could be read
/// (a process that exits meanwhile is left out).
pub fn tree_usage(pid: u32) -> Vec<ProcessUsage> {
    process_tree(pid)
        .into_iter()
        .filter_map(|pid| {
            let base = Path::new("/proc").join(pid.to_string());
            let rollup = fs::read_to_string(base.join("smaps_rollup")).ok()?;
            let pss_kb = rollup_field(&rollup, "Pss:")?;
            let fds = fs::read_dir(base.join("fd")).ok()?.count() as u64;
            Some(ProcessUsage { pid, pss_kb, fds })
        })
        .collect()
}

/// CPU time (user + system, in clock ticks of 10 ms) of `pid` and its
/// descendants, all their threads included.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // The fields after the command name, which is in parentheses.
            let rest = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .sum()
}

/// Context switches (voluntary and involuntary) of `pid` and its
/// descendants, every thread of each.
pub fn tree_context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for pid in process_tree(pid) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            total += ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"]
                .iter()
                .filter_map(|field| rollup_field(&status, field))
                .sum::<u64>();
        }
    }
    total
}

/// The number after `field` (e.g. `Pss:`) in a `/proc` text
/// (`smaps_rollup`, `status`).
fn rollup_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pss_from_rollup_text() {
        let text = "00400000-7ffd rw-p 00000000 00:00 0 [rollup]\n\
                    Rss:                4321 kB\n\
                    Pss:                1234 kB\n\
                    Pss_Anon:            100 kB\n";
        assert_eq!(rollup_field(text, "Pss:"), Some(1234));
        assert_eq!(rollup_field(text, "Swap:"), None);
    }

    #[test]
    fn own_process_uses_cpu_and_switches_context() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(tree_cpu_ticks(std::process::id()) > 0);
        assert!(tree_context_switches(std::process::id()) > 0);
    }

    #[test]
    fn own_process_has_memory_and_descriptors() {
        let usage = tree_usage(std::process::id());
        let me = usage.first().expect("this process");
        assert_eq!(me.pid, std::process::id());
        assert!(me.pss_kb > 0 && me.fds > 0, "{me:?}");
    }
}
