//! The benchmark's memory part (`--memory N`, default 1 000 000, 0 to skip;
//! `--memory-only` runs just this): what N script operations leave behind
//! in Kamailio's memory, this module and the C module in turn.
//!
//! Each module runs one Kamailio (the load part's configuration, with `ctl`
//! for `core.shmmem`), warms up on every path, then takes N operations: half
//! `kazoo_publish`, half `kazoo_async_query` (the C module crashes on
//! `kazoo_query`), from the load part's clients as fast as they go. Before
//! and after (once tm has freed the finished transactions), it reads the PSS
//! of every Kamailio process and the shared memory in use, and prints them
//! with the process whose PSS grew the most.
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use kamailio_test::{tree_usage, unique_name, Kamailio};

use crate::load::{self, Pace, Path, Until};

/// The paths the operations are shared between.
const PATHS: [Path; 2] = [Path::Publish, Path::AsyncQuery];

/// tm keeps a finished transaction 0.5 s (the load configuration's
/// `wt_timer`); the "after" figures wait longer than that.
const SETTLE: Duration = Duration::from_secs(3);

/// Memory of one Kamailio at one moment.
struct Snapshot {
    /// PSS kB by pid.
    pss_kb: HashMap<u32, u64>,
    shm_kb: Option<u64>,
}

impl Snapshot {
    fn take(kamailio: &Kamailio) -> Snapshot {
        Snapshot {
            pss_kb: tree_usage(kamailio.pid())
                .into_iter()
                .map(|u| (u.pid, u.pss_kb))
                .collect(),
            shm_kb: kamailio.shm_used_kb(),
        }
    }

    fn total_pss_kb(&self) -> u64 {
        self.pss_kb.values().sum()
    }
}

/// One module's run.
struct MemoryResult {
    operations: u64,
    failed: u64,
    seconds: f64,
    before: Snapshot,
    after: Snapshot,
    labels: HashMap<u32, String>,
    died: bool,
}

fn measure(global: &str, operations: u64, clients: u32) -> Result<MemoryResult, String> {
    let run = unique_name("memory").replace('-', "");
    let _backend = load::backend(&run)?;
    let global =
        format!("{global}\nloadmodule \"ctl.so\"\nmodparam(\"ctl\", \"binrpc\", \"{{{{CTL}}}}\")");
    let kamailio = Kamailio::start(&load::config(&global, &run)).map_err(|e| e.to_string())?;
    let pace = Pace {
        clients,
        rate: None,
    };
    thread::sleep(Duration::from_secs(2));
    for path in PATHS {
        load::drive(
            &kamailio,
            path,
            pace,
            Until::Elapsed(Duration::from_secs(2)),
        );
    }
    thread::sleep(SETTLE);
    let labels = kamailio.process_labels();
    let before = Snapshot::take(&kamailio);
    let started = Instant::now();
    let (mut done, mut failed) = (0, 0);
    let share = operations / PATHS.len() as u64;
    for path in PATHS {
        eprintln!("memory: {share} × {}", path.name());
        let (took, f) = load::drive(&kamailio, path, pace, Until::Sent(share));
        done += took.len() as u64 + f;
        failed += f;
    }
    let seconds = started.elapsed().as_secs_f64();
    thread::sleep(SETTLE);
    let died = !kamailio.is_running();
    let after = Snapshot::take(&kamailio);
    Ok(MemoryResult {
        operations: done,
        failed,
        seconds,
        before,
        after,
        labels,
        died,
    })
}

fn growth(before: u64, after: u64) -> String {
    format!(
        "{before} → {after} ({:+.1} %)",
        100.0 * (after as f64 - before as f64) / before.max(1) as f64
    )
}

fn print_row(name: &str, result: &Result<MemoryResult, String>) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!("| {name} | failed: {e} | | | | | |");
            return;
        }
    };
    let shm = match (r.before.shm_kb, r.after.shm_kb) {
        (Some(a), Some(b)) => growth(a, b),
        _ => "?".into(),
    };
    let grew_most = r
        .before
        .pss_kb
        .iter()
        .filter_map(|(pid, a)| r.after.pss_kb.get(pid).map(|b| (*pid, *a, *b)))
        .max_by_key(|(_, a, b)| b.saturating_sub(*a));
    let grew_most = grew_most.map_or("-".into(), |(pid, a, b)| {
        let label = r.labels.get(&pid).map_or("?", String::as_str);
        format!("{label}: {a} → {b}")
    });
    println!(
        "| {name} | {} | {} | {:.0} | {} | {shm} | {grew_most} |{}",
        r.operations,
        r.failed,
        r.seconds,
        growth(r.before.total_pss_kb(), r.after.total_pss_kb()),
        if r.died { " Kamailio died |" } else { " |" }
    );
}

/// The memory table: `operations` on each module in turn.
pub(crate) fn memory_table(modules: &[(&str, String)], operations: u64, clients: u32) {
    println!("\nMemory, before and after {operations} operations:\n");
    println!(
        "| module | operations | failed | seconds | PSS kB, every process | shm kB in use | process that grew most, PSS kB | note |\n|---|---|---|---|---|---|---|---|"
    );
    for (name, global) in modules {
        eprintln!("memory: {name}");
        print_row(name, &measure(global, operations, clients));
    }
    println!(
        "\nHalf kazoo_publish, half kazoo_async_query, {clients} SIP clients as fast as they go; before: after a warm-up on each path; after: {} s after the last operation (tm frees finished transactions after 0.5 s); children=4.",
        SETTLE.as_secs()
    );
}
