//! Running a real Kamailio from a test config: placeholder substitution, start
//! and readiness, log access, shutdown, `kamailio -c`, and locating the built
//! kazoo module.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::ports::{reserve_port, PortLease};
use crate::process::{self, find_program, run_bounded, run_checked, POLL};
use crate::{HarnessError, SipClient};

/// Default Kamailio binary (Debian's package); `KAMAILIO_BIN` overrides it.
const DEFAULT_KAMAILIO: &str = "/usr/sbin/kamailio";
/// Default `kamcmd` (Debian's package); `KAMCMD` overrides it.
const DEFAULT_KAMCMD: &str = "/usr/sbin/kamcmd";
/// How long one `kamcmd` call may take.
const KAMCMD_TIMEOUT: Duration = Duration::from_secs(10);
/// The control socket `{{CTL}}` names, in the run directory.
const CTL_SOCKET: &str = "kamailio.ctl";
/// Default module directory (Debian's package); `KAMAILIO_MODULES_DIR` overrides it.
const DEFAULT_MODULES_DIR: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules";
/// How many log lines errors and panics show.
const TAIL_LINES: usize = 80;

/// Lines of the log a failed start-up reports: all of a start-up's, as a
/// rule (the reason can come before the shutdown's own lines).
const STARTUP_TAIL_LINES: usize = 1000;
/// How long a `kamailio -c` may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Drop waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Options for starting a [`Kamailio`]; see [`Kamailio::builder`].
#[derive(Debug, Clone)]
pub struct KamailioBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    files: Vec<(String, String)>,
    startup_timeout: Duration,
}

impl KamailioBuilder {
    /// Adds a command-line argument after the harness's own (`-DD -E -f ... -M 16`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the Kamailio process.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Writes `text` (after the same placeholder substitution as the config)
    /// to `name` in the run directory before starting, for configurations
    /// split into several files joined with `include_file` / `import_file`
    /// (relative names are found there: Kamailio runs in that directory).
    pub fn file(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }

    /// How long to wait for the first SIP reply (default 15 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Substitutes the placeholders in `cfg`, starts Kamailio and waits until it
    /// answers `OPTIONS sip:ping@127.0.0.1:<port>`.
    pub fn start(self, cfg: &str) -> Result<Kamailio, HarnessError> {
        let binary = kamailio_binary()?;
        let instance = Instance::prepare(cfg, &self.files)?;
        let log_path = instance.dir.path().join("kamailio.log");
        let (log, log_err) = process::log_outputs(&log_path)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("-DD")
            .arg("-E")
            .arg("-f")
            .arg(&instance.cfg_path)
            .arg("-Y")
            .arg(instance.dir.path())
            .args(["-m", "64", "-M", "16"])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(instance.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting `{}`", process::describe(&cmd)), e))?;
        let kamailio = Kamailio {
            pid: child.id(),
            child: Mutex::new(child),
            port: instance.port.port(),
            _port: instance.port,
            dir: Some(instance.dir),
            log_path,
        };
        kamailio.wait_ready(self.startup_timeout)?;
        Ok(kamailio)
    }
}

/// A running Kamailio, stopped (and its run directory removed) on drop.
///
/// It runs `kamailio -DD -E -f <rundir>/kamailio.cfg -Y <rundir> -m 64 -M 16`
/// with stdout and stderr in `<rundir>/kamailio.log`, from the config text given
/// to [`Kamailio::start`] after replacing these placeholders:
///
/// | placeholder | replaced by |
/// |---|---|
/// | `{{PORT}}` | a free UDP/TCP port on 127.0.0.1 reserved for this instance |
/// | `{{MODULE}}` | the absolute path of the built kazoo module ([`module_path()`]) |
/// | `{{RUNDIR}}` | this instance's fresh temporary directory |
/// | `{{MPATH}}` | Kamailio's module directory: `KAMAILIO_MODULES_DIR`, default `/usr/lib/x86_64-linux-gnu/kamailio/modules` |
/// | `{{CTL}}` | this instance's private control socket, `unix:<rundir>/kamailio.ctl`, for `modparam("ctl", "binrpc", "{{CTL}}")` and [`Kamailio::kamcmd`] |
///
/// The config must listen on `udp:127.0.0.1:{{PORT}}` and **reply to every
/// request** its request route gets (e.g. `sl_send_reply("200", "OK")`): the
/// harness knows the server is up when `OPTIONS sip:ping@127.0.0.1:<port>` gets a
/// final reply, whatever its code. Set `debug=2` (or higher) to see
/// `xlog("L_INFO", ...)` lines in [`Kamailio::log`]; the harness passes `-E`, so
/// everything is logged to stderr, which goes to the log file.
///
/// Environment: `KAMAILIO_BIN` (binary, default `/usr/sbin/kamailio`, else
/// `kamailio` on `PATH`), `KAMAILIO_MODULES_DIR`, `KAZOO_MODULE` (see
/// [`module_path()`]), and `KAMAILIO_TEST_KEEP` (non-empty: keep run directories
/// and print where they are).
///
/// If the test panics while this is alive, drop prints the log tail to stderr.
/// Keep the value owned by the test: a `static` is never dropped, so its
/// Kamailio would outlive the test run.
#[derive(Debug)]
pub struct Kamailio {
    pid: u32,
    child: Mutex<Child>,
    port: u16,
    // Reserved until the server is gone, so no other test can reuse the port.
    _port: PortLease,
    // `None` only after Drop decided to keep the directory.
    dir: Option<TempDir>,
    log_path: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio from `cfg` with the default options; see [`Kamailio`].
    pub fn start(cfg: &str) -> Result<Kamailio, HarnessError> {
        Kamailio::builder().start(cfg)
    }

    /// Options: extra arguments, environment, startup timeout.
    pub fn builder() -> KamailioBuilder {
        KamailioBuilder {
            args: Vec::new(),
            envs: Vec::new(),
            files: Vec::new(),
            startup_timeout: Duration::from_secs(15),
        }
    }

    /// The UDP port `{{PORT}}` was replaced with.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// This instance's run directory (`{{RUNDIR}}`); it holds `kamailio.cfg` and
    /// `kamailio.log`.
    pub fn rundir(&self) -> &Path {
        self.log_path.parent().unwrap_or(Path::new("."))
    }

    /// The pid of Kamailio's main process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything Kamailio has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` for `needle` to appear in the log; true if it did.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// True while the main process runs. Kamailio shuts itself down when any of
    /// its children dies, so this turning false mid-test means it crashed or
    /// exited.
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// Stops Kamailio now (SIGTERM, then SIGKILL after 5 s) and returns how it
    /// exited; the log stays readable until drop. Useful to check shutdown
    /// behaviour such as `mod_destroy` logging.
    pub fn stop(&self) -> ExitStatus {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        process::terminate(&mut child, STOP_GRACE)
    }

    /// Runs `kamcmd -s <{{CTL}}> <args>` (the config must load `ctl` with
    /// `modparam("ctl", "binrpc", "{{CTL}}")`) and returns its output; a
    /// non-zero exit (e.g. the command failed) is an error. `KAMCMD` overrides
    /// the binary (default `/usr/sbin/kamcmd`, else `kamcmd` on `PATH`).
    pub fn kamcmd(&self, args: &[&str]) -> Result<String, HarnessError> {
        let binary = find_program("KAMCMD", &[DEFAULT_KAMCMD], "kamcmd")?;
        run_checked(
            Command::new(binary)
                .arg("-s")
                .arg(ctl_address(self.rundir()))
                .args(args),
            KAMCMD_TIMEOUT,
        )
    }

    /// Shared memory in use, kB (`kamcmd core.shmmem`, `real_used`; the
    /// config must load `ctl` as for [`Kamailio::kamcmd`]).
    pub fn shm_used_kb(&self) -> Option<u64> {
        let out = self.kamcmd(&["core.shmmem"]).ok()?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("real_used:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|bytes| bytes / 1024)
    }

    /// Every Kamailio process's description by pid (`kamcmd core.psx`:
    /// `PID:` then `DSC:` lines); empty if the command failed.
    pub fn process_labels(&self) -> HashMap<u32, String> {
        let mut labels = HashMap::new();
        let Ok(psx) = self.kamcmd(&["core.psx"]) else {
            return labels;
        };
        let mut pid = None;
        for line in psx.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("PID:") {
                pid = value.trim().parse().ok();
            } else if let (Some(value), Some(p)) = (line.strip_prefix("DSC:"), pid.take()) {
                labels.insert(p, value.trim().to_owned());
            }
        }
        labels
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        let client = SipClient::new()?;
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250));
            if client.ping(self.port, attempt).is_ok() {
                return Ok(());
            }
            let exited = {
                let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
                child.try_wait().ok().flatten()
            };
            let reason = match exited {
                Some(status) => format!("it exited ({status})"),
                None if Instant::now() >= deadline => format!(
                    "no reply to OPTIONS on udp 127.0.0.1:{} within {timeout:?} \
                     (does the config reply to every request?)",
                    self.port
                ),
                None => continue,
            };
            return Err(HarnessError::StartupFailed {
                what: format!("kamailio (pid {}, {})", self.pid, self.rundir().display()),
                reason,
                log_tail: process::tail(&self.log(), STARTUP_TAIL_LINES),
            });
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // Kamailio's main process stops its own children on SIGTERM.
        self.stop();
        if thread::panicking() {
            eprintln!(
                "--- kamailio (pid {}, port {}) log tail ---\n{}\n--- end of kamailio log ---",
                self.pid,
                self.port,
                process::tail(&self.log(), TAIL_LINES)
            );
        }
        process::keep_if_asked(&mut self.dir, "kamailio run directory");
    }
}

/// A prepared run directory with the substituted config in it.
struct Instance {
    dir: TempDir,
    cfg_path: PathBuf,
    port: PortLease,
}

impl Instance {
    fn prepare(cfg: &str, files: &[(String, String)]) -> Result<Instance, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("kamailio-test-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating run directory", e))?;
        let port = reserve_port()?;
        let needs_module = std::iter::once(cfg)
            .chain(files.iter().map(|(_, text)| text.as_str()))
            .any(|text| text.contains("{{MODULE}}"));
        let module = if needs_module {
            try_module_path()?
        } else {
            PathBuf::new()
        };
        let pairs = [
            ("{{PORT}}", port.port().to_string()),
            ("{{MODULE}}", module.to_string_lossy().into_owned()),
            ("{{RUNDIR}}", dir.path().to_string_lossy().into_owned()),
            ("{{MPATH}}", modules_dir().to_string_lossy().into_owned()),
            ("{{CTL}}", ctl_address(dir.path())),
        ];
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cfg_path = dir.path().join("kamailio.cfg");
        let extra = files
            .iter()
            .map(|(name, text)| (dir.path().join(name), text.as_str()));
        for (path, text) in std::iter::once((cfg_path.clone(), cfg)).chain(extra) {
            fs::write(&path, substitute(text, &pairs))
                .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(Instance {
            dir,
            cfg_path,
            port,
        })
    }
}

fn substitute(cfg: &str, pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .fold(cfg.to_owned(), |text, (from, to)| text.replace(from, to))
}

/// The result of [`check_config`].
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// Whether `kamailio -c` exited 0.
    pub success: bool,
    /// Its stdout and stderr.
    pub output: String,
}

/// Runs `kamailio -c -f <file>` on `cfg` after the same placeholder
/// substitution as [`Kamailio::start`].
///
/// # Panics
/// If Kamailio is not installed, or `cfg` uses `{{MODULE}}` and the module is not
/// built: the check could not run at all, which a test must not mistake for a
/// rejected config.
pub fn check_config(cfg: &str) -> CheckResult {
    match try_check_config(cfg) {
        Ok(result) => result,
        Err(e) => panic!("check_config could not run kamailio -c: {e}"),
    }
}

fn try_check_config(cfg: &str) -> Result<CheckResult, HarnessError> {
    let binary = kamailio_binary()?;
    let instance = Instance::prepare(cfg, &[])?;
    let (status, output) = run_bounded(
        Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&instance.cfg_path)
            .current_dir(instance.dir.path()),
        CHECK_TIMEOUT,
    )?;
    Ok(CheckResult {
        success: status.success(),
        output,
    })
}

/// The `{{CTL}}` address of a run directory.
fn ctl_address(rundir: &Path) -> String {
    format!("unix:{}", rundir.join(CTL_SOCKET).display())
}

fn kamailio_binary() -> Result<PathBuf, HarnessError> {
    find_program("KAMAILIO_BIN", &[DEFAULT_KAMAILIO], "kamailio")
}

fn modules_dir() -> PathBuf {
    std::env::var_os("KAMAILIO_MODULES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULES_DIR))
}

/// The built kazoo module; see [`try_module_path`].
///
/// # Panics
/// If it is not built, with instructions to build it.
pub fn module_path() -> PathBuf {
    match try_module_path() {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// The built kazoo module: `KAZOO_MODULE` if set, else the newest of
/// `kazoo.so` / `libkazoo.so` in `debug/` and `release/` of the target
/// directory (`CARGO_TARGET_DIR`, relative to the workspace root if relative,
/// default `<workspace>/target`).
pub fn try_module_path() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("KAZOO_MODULE") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path.canonicalize().unwrap_or(path))
        } else {
            Err(HarnessError::ModuleNotBuilt(format!(
                "KAZOO_MODULE={} does not exist",
                path.display()
            )))
        };
    }
    // This crate is <workspace>/crates/kamailio-test.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().and_then(Path::parent).unwrap_or(manifest);
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let candidates: Vec<PathBuf> = ["debug", "release"]
        .iter()
        .flat_map(|profile| ["kazoo.so", "libkazoo.so"].map(|name| target.join(profile).join(name)))
        .collect();
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max_by_key(|&(modified, _): &(SystemTime, _)| modified)
        .map(|(_, p)| p.canonicalize().unwrap_or_else(|_| p.clone()))
        .ok_or_else(|| {
            HarnessError::ModuleNotBuilt(format!(
                "none of {candidates:?} exists; build it with `cargo build -p kazoo` \
                 (or `--release`), or set KAZOO_MODULE to the .so path"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitute_replaces_every_occurrence() {
        let text = substitute(
            "listen=udp:127.0.0.1:{{PORT}}\n# {{PORT}} {{RUNDIR}}/x",
            &[("{{PORT}}", "23000"), ("{{RUNDIR}}", "/r")],
        );
        assert_eq!(text, "listen=udp:127.0.0.1:23000\n# 23000 /r/x");
    }
}
