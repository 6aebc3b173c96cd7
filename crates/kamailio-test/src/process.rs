//! Finding programs, running commands with a deadline, and ending the process
//! trees the harness started.
//!
//! Every wait here is bounded, so a hung server or CLI fails one test instead of
//! hanging the run. Processes are only ever signalled by the pid the harness got
//! from `spawn` or by the pids of that process's own descendants, read from
//! `/proc`: never by name, since other Kamailio or RabbitMQ instances (the
//! system broker, other tests) run on the same machine.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::HarnessError;

/// How often bounded waits poll.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Finds a program: the path in `env_var` if set, else the first of `defaults`
/// that exists, else `name` on `PATH`.
pub(crate) fn find_program(
    env_var: &str,
    defaults: &[&str],
    name: &'static str,
) -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::NotInstalled {
                program: name,
                hint: format!("{env_var}={} does not name a file", path.display()),
            })
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    defaults
        .iter()
        .map(PathBuf::from)
        .chain(on_path.into_iter().map(|dir| dir.join(name)))
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::NotInstalled {
            program: name,
            hint: format!(
                "looked in {defaults:?} and on PATH; install it or set {env_var} to its path"
            ),
        })
}

/// Runs `cmd` to completion with stdin closed, returning its exit status and its
/// stdout and stderr interleaved; kills its process tree at the deadline.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(ExitStatus, String), HarnessError> {
    let shown = describe(cmd);
    // One anonymous file for both streams keeps their relative order and needs no
    // reader threads: nothing can block on a full pipe.
    let mut out = tempfile::tempfile().map_err(|e| HarnessError::io("creating output file", e))?;
    let err = out
        .try_clone()
        .map_err(|e| HarnessError::io("duplicating output file", e))?;
    let stdout = out
        .try_clone()
        .map_err(|e| HarnessError::io("duplicating output file", e))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(err)
        .spawn()
        .map_err(|e| HarnessError::io(format!("running `{shown}`"), e))?;
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        kill_tree(&mut child);
    }
    let mut text = Vec::new();
    out.seek(SeekFrom::Start(0))
        .and_then(|_| out.read_to_end(&mut text))
        .map_err(|e| HarnessError::io(format!("reading output of `{shown}`"), e))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    match status {
        Some(status) => Ok((status, text)),
        None => Err(HarnessError::Timeout(format!(
            "`{shown}` still running after {timeout:?}, killed; output:\n{text}"
        ))),
    }
}

/// Like [`run_bounded`], but a non-zero exit is an error.
pub(crate) fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<String, HarnessError> {
    let (status, output) = run_bounded(cmd, timeout)?;
    if status.success() {
        Ok(output)
    } else {
        Err(HarnessError::CommandFailed {
            command: describe(cmd),
            status: status.to_string(),
            output,
        })
    }
}

/// The command line as a person would type it (for messages only).
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Polls `child` until it exits (reaping it) or `timeout` passes.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            // An error means the child was already reaped elsewhere: treat it as gone.
            Err(_) => return Some(ExitStatus::default()),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL),
        }
    }
}

/// Asks `child` to stop with SIGTERM and waits up to `grace`; then kills its whole
/// tree. Returns how the child ended.
///
/// Kamailio's and RabbitMQ's main processes stop their own children on SIGTERM,
/// so SIGKILL is a last resort. Its descendants are collected before the kill
/// because once the parent is gone they are re-parented and cannot be found.
pub(crate) fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let tree = descendants(child.id());
    signal(child.id(), libc::SIGTERM);
    let status = match wait_timeout(child, grace) {
        Some(status) => status,
        None => kill_tree(child),
    };
    // Children that outlive their parent (e.g. a server the parent failed to
    // stop) would keep ports bound; give them a moment, then kill them too.
    let deadline = Instant::now() + grace;
    while tree.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    for pid in tree {
        if is_alive(pid) {
            signal(pid, libc::SIGKILL);
        }
    }
    status
}

/// SIGKILLs `child` and all its descendants, and reaps `child`.
fn kill_tree(child: &mut Child) -> ExitStatus {
    let tree = descendants(child.id());
    signal(child.id(), libc::SIGKILL);
    for pid in tree {
        signal(pid, libc::SIGKILL);
    }
    child.wait().unwrap_or_default()
}

/// Sends `sig` to `pid`; false if the process does not exist.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes plain integers; pid is positive, so it targets exactly one process.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True while `pid` exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    match proc_stat(pid) {
        Some((state, _)) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// All current descendants of `pid` (children, grandchildren, ...), from `/proc`.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, proc_stat(p)?.1)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, ppid)| ppid == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// `(state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The last `lines` lines of `text`.
/// Opens `path` for appending and returns it twice, for a child's stdout
/// and stderr.
pub(crate) fn log_outputs(path: &Path) -> Result<(Stdio, Stdio), HarnessError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| HarnessError::io("duplicating log file", e))?;
    Ok((log.into(), log_err.into()))
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Keeps `dir` instead of deleting it when `KAMAILIO_TEST_KEEP` is set (non-empty),
/// and says where it is.
///
/// The message goes straight to the process's stderr: the test harness captures
/// `eprintln!` of passing tests, and the path matters most when the test passed
/// but its output is to be inspected.
pub(crate) fn keep_if_asked(dir: &mut Option<tempfile::TempDir>, what: &str) {
    if std::env::var_os("KAMAILIO_TEST_KEEP").is_none_or(|v| v.is_empty()) {
        return;
    }
    if let Some(dir) = dir.take() {
        let path = dir.keep();
        let _ = writeln!(std::io::stderr(), "{what} kept: {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_command_output_and_status() {
        let (status, out) = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(out.contains("out") && out.contains("err"), "{out}");
    }

    #[test]
    fn bounded_command_times_out_and_kills_tree() {
        let started = Instant::now();
        let err = run_bounded(
            Command::new("sh").args(["-c", "sleep 30 & wait"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, HarnessError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn terminate_finds_and_ends_descendants() {
        // The shell ignores SIGTERM, so the SIGKILL path must end it and its child.
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tree = descendants(child.id());
        while tree.is_empty() && Instant::now() < deadline {
            thread::sleep(POLL);
            tree = descendants(child.id());
        }
        assert_eq!(tree.len(), 1, "the sleep should be the only descendant");
        terminate(&mut child, Duration::from_millis(300));
        assert!(!is_alive(child.id()));
        assert!(!is_alive(tree[0]));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn missing_program_is_reported() {
        let err = find_program(
            "KAMAILIO_TEST_NO_SUCH_VAR",
            &[],
            "no-such-program-kamailio-test",
        )
        .unwrap_err();
        assert!(matches!(err, HarnessError::NotInstalled { .. }), "{err}");
    }
}
