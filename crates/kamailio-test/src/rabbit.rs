//! RabbitMQ for tests: a private node per test ([`RabbitNode`]) for tests that
//! stop or restart their broker, and access to the shared system broker.
//!
//! A private node is fully separate from the system one (`rabbit@localhost` on
//! 5672): its own node name, AMQP and distribution ports (reserved like
//! Kamailio's), and every file under a temporary directory: config, env file,
//! enabled-plugins file (empty, so no management listener on a fixed port), Mnesia
//! data, logs and `HOME`.
//!
//! Why `HOME`: the node and `rabbitmqctl` authenticate to each other with the
//! Erlang cookie in `$HOME/.erlang.cookie`. The harness writes a fresh cookie
//! (mode 0400, as Erlang requires) into the private `HOME` and gives both the
//! same `HOME`, so it works as root or any user without touching `~/.erlang.cookie`
//! or the system node's cookie.
//!
//! Why not `/usr/sbin/rabbitmq-server`: on Debian that is a wrapper that, run as
//! root, re-runs the script as the `rabbitmq` user through `su` (which resets
//! `HOME` and would need the private files owned by `rabbitmq`), and refuses any
//! other user. The harness resolves the wrapper to the real scripts beside it and
//! runs those directly as the current user.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::names::random_u64;
use crate::ports::{reserve_port, PortLease};
use crate::process::{self, find_program, run_checked, POLL};
use crate::HarnessError;

/// Default location of `rabbitmq-server` (Debian); `RABBITMQ_SERVER` overrides it.
const DEFAULT_SERVER: &str = "/usr/sbin/rabbitmq-server";
/// Default location of `rabbitmqctl` (Debian); `RABBITMQCTL` overrides it.
const DEFAULT_CTL: &str = "/usr/sbin/rabbitmqctl";
/// Boot to "ready" usually takes 5-10 s on a small machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A graceful stop syncs Mnesia and closes connections: a few seconds.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Each `rabbitmqctl` call boots an Erlang VM: one to a few seconds.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
const TAIL_LINES: usize = 60;

/// The system broker's URL: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672`.
pub fn system_broker_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

/// Runs `rabbitmqctl <args>` against the system node as installed
/// (`RABBITMQCTL`, default `/usr/sbin/rabbitmqctl`, else on `PATH`); returns its
/// output, or an error if it fails.
pub fn system_rabbitmqctl(args: &[&str]) -> Result<String, HarnessError> {
    let ctl = find_program("RABBITMQCTL", &[DEFAULT_CTL], "rabbitmqctl")?;
    run_checked(Command::new(ctl).args(args), CTL_TIMEOUT)
}

/// Messages a queue of the system node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueMessages {
    /// Waiting for a consumer.
    pub ready: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
}

/// What `queue` of the system node holds, per `rabbitmqctl list_queues`;
/// `None` when there is no such queue.
pub fn system_queue_messages(queue: &str) -> Result<Option<QueueMessages>, HarnessError> {
    let out = system_rabbitmqctl(&[
        "-q",
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])?;
    Ok(out.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields[..] {
            [name, ready, unacked] if name == queue => Some(QueueMessages {
                ready: ready.parse().ok()?,
                unacked: unacked.parse().ok()?,
            }),
            _ => None,
        }
    }))
}

/// PEM files of a private node's TLS listener.
#[derive(Debug)]
struct TlsFiles<'a> {
    cacert: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

/// A private RabbitMQ node on its own ports, stopped and deleted on drop.
///
/// Started from the real `rabbitmq-server` script in the foreground as a child of
/// the test (found from `RABBITMQ_SERVER`, default `/usr/sbin/rabbitmq-server`,
/// else on `PATH`; its directory must also hold `rabbitmqctl`). Login is
/// `guest`/`guest`, allowed from loopback only, which is where tests connect
/// from. `KAMAILIO_TEST_KEEP` (non-empty) keeps its directory.
#[derive(Debug)]
pub struct RabbitNode {
    node: String,
    scripts: PathBuf,
    amqp: PortLease,
    // Reserved so no other test's node takes it while this one is stopped.
    dist: PortLease,
    // The TLS listener's port, when started with one.
    amqps: Option<PortLease>,
    // `None` only after Drop decided to keep the directory.
    dir: Option<TempDir>,
    base: PathBuf,
    child: Option<Child>,
}

impl RabbitNode {
    /// Creates the private files and starts the node; returns once
    /// `rabbitmqctl await_startup` succeeds (at most 60 s).
    pub fn start() -> Result<RabbitNode, HarnessError> {
        Self::start_inner(None)
    }

    /// Like [`RabbitNode::start`], plus a TLS listener on another loopback
    /// port ([`RabbitNode::amqps_port`]) with these PEM files
    /// (`ssl_options.cacertfile`, `certfile`, `keyfile`), `verify_none` and no
    /// client certificate required.
    pub fn start_with_tls(
        cacert: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<RabbitNode, HarnessError> {
        Self::start_inner(Some(&TlsFiles { cacert, cert, key }))
    }

    fn start_inner(tls: Option<&TlsFiles<'_>>) -> Result<RabbitNode, HarnessError> {
        let scripts = rabbit_scripts_dir()?;
        let amqp = reserve_port()?;
        let dist = reserve_port()?;
        let amqps = match tls {
            Some(_) => Some(reserve_port()?),
            None => None,
        };
        let dir = tempfile::Builder::new()
            .prefix("kztest-rabbit-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating RabbitMQ directory", e))?;
        let base = dir.path().to_owned();
        let tls_listener = tls.zip(amqps.as_ref().map(PortLease::port));
        write_private_files(&base, amqp.port(), tls_listener)?;
        let mut node = RabbitNode {
            node: format!("kztest-{}@localhost", amqp.port()),
            scripts,
            amqp,
            dist,
            amqps,
            dir: Some(dir),
            base,
            child: None,
        };
        // On error `node` is dropped here, which stops whatever was started.
        node.spawn()?;
        Ok(node)
    }

    /// The AMQP port on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.amqp.port()
    }

    /// The TLS listener's port on 127.0.0.1, for a node started with
    /// [`RabbitNode::start_with_tls`].
    pub fn amqps_port(&self) -> Option<u16> {
        self.amqps.as_ref().map(PortLease::port)
    }

    /// The Erlang node name, `kztest-<amqp port>@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// `amqp://guest:guest@127.0.0.1:<amqp port>`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}", self.amqp.port())
    }

    /// Runs `rabbitmqctl -n <node> <args>` (with this node's cookie) and returns
    /// its output, or an error if it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut cmd = Command::new(self.scripts.join("rabbitmqctl"));
        self.configure(&mut cmd);
        cmd.arg("-n").arg(&self.node).args(args);
        run_checked(&mut cmd, CTL_TIMEOUT)
    }

    /// The node's log so far (it logs to the console, kept in one file).
    pub fn log(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// True while the node's process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the node (SIGTERM: a graceful shutdown; SIGKILL of its process tree
    /// after 30 s). Its data stays for [`RabbitNode::start_again`]. Stopping a
    /// stopped node does nothing.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            process::terminate(&mut child, STOP_GRACE);
        }
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.amqp.port());
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok() {
            return Err(HarnessError::StopFailed(format!(
                "{} stopped but {addr} still accepts connections",
                self.node
            )));
        }
        Ok(())
    }

    /// Starts the stopped node again on the same ports and data, as a broker
    /// restart would; returns once it is ready.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.is_running() {
            return Err(HarnessError::Usage(format!(
                "{} is running; stop() it before start_again()",
                self.node
            )));
        }
        self.spawn()
    }

    /// The pid of the node's Erlang VM (`beam.smp`): the process this node
    /// started or one of its descendants, never any other process.
    pub fn vm_pid(&self) -> Result<u32, HarnessError> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| HarnessError::Usage(format!("{} is not running", self.node)))?;
        let mut candidates = vec![child.id()];
        candidates.extend(process::descendants(child.id()));
        candidates
            .into_iter()
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim_end() == "beam.smp")
            })
            .ok_or_else(|| HarnessError::Usage(format!("no Erlang VM found for {}", self.node)))
    }

    /// Freezes the node (SIGSTOP of its Erlang VM): its sockets stay open but
    /// nothing answers, as with a hung or swapped-out broker. Returns the pid
    /// stopped; [`RabbitNode::thaw`] resumes it.
    pub fn freeze(&self) -> Result<u32, HarnessError> {
        let pid = self.vm_pid()?;
        if !process::signal(pid, libc::SIGSTOP) {
            return Err(HarnessError::Usage(format!("SIGSTOP {pid} failed")));
        }
        Ok(pid)
    }

    /// Resumes a node stopped by [`RabbitNode::freeze`] (SIGCONT).
    pub fn thaw(&self) -> Result<(), HarnessError> {
        let pid = self.vm_pid()?;
        if !process::signal(pid, libc::SIGCONT) {
            return Err(HarnessError::Usage(format!("SIGCONT {pid} failed")));
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.base.join("rabbit.log")
    }

    /// The environment shared by the node and `rabbitmqctl`.
    fn configure(&self, cmd: &mut Command) {
        // Inherited RABBITMQ_* / ERL_* settings are for the system node and would
        // leak into ours.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("RABBITMQ_") || key_text.starts_with("ERL_") {
                cmd.env_remove(&key);
            }
        }
        let base = &self.base;
        cmd.env("HOME", base.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp.port().to_string())
            .env("RABBITMQ_DIST_PORT", self.dist.port().to_string())
            // Keeps the system env file (which names the system node) out.
            .env("RABBITMQ_CONF_ENV_FILE", base.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", base.join("plugins-expand"))
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("rabbit.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // If no epmd runs yet, the VM starts one: keep it on loopback.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(base);
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log_path = self.log_path();
        let (log, log_err) = process::log_outputs(&log_path)?;
        let mut cmd = Command::new(self.scripts.join("rabbitmq-server"));
        self.configure(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting `{}`", process::describe(&cmd)), e))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits for the AMQP listener (cheap to poll), then confirms with
    /// `rabbitmqctl await_startup` that the node finished booting.
    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.amqp.port());
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(self.startup_failed(format!("it exited ({status})")));
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.startup_failed(format!(
                    "{addr} not accepting connections after {STARTUP_TIMEOUT:?}"
                )));
            }
            thread::sleep(POLL * 5);
        }
        self.rabbitmqctl(&["await_startup"])
            .map_err(|e| self.startup_failed(format!("await_startup failed: {e}")))?;
        Ok(())
    }

    fn startup_failed(&self, reason: String) -> HarnessError {
        HarnessError::StartupFailed {
            what: format!("RabbitMQ node {} ({})", self.node, self.base.display()),
            reason,
            log_tail: process::tail(&self.log(), TAIL_LINES),
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
        if thread::panicking() {
            eprintln!(
                "--- RabbitMQ node {} log tail ---\n{}\n--- end of RabbitMQ log ---",
                self.node,
                process::tail(&self.log(), TAIL_LINES)
            );
        }
        process::keep_if_asked(&mut self.dir, "RabbitMQ node directory");
    }
}

/// The directory of the real `rabbitmq-server` and `rabbitmqctl` scripts.
fn rabbit_scripts_dir() -> Result<PathBuf, HarnessError> {
    let found = find_program("RABBITMQ_SERVER", &[DEFAULT_SERVER], "rabbitmq-server")?;
    let not_real = |path: &Path| HarnessError::NotInstalled {
        program: "rabbitmq-server",
        hint: format!(
            "{} is not the rabbitmq-server script (nor a wrapper beside it); \
             set RABBITMQ_SERVER to the real script",
            path.display()
        ),
    };
    let resolve = |path: &Path| {
        path.canonicalize()
            .map_err(|e| HarnessError::io(format!("resolving {}", path.display()), e))
    };
    let mut script = resolve(&found)?;
    if script.file_name() != Some("rabbitmq-server".as_ref()) {
        // Debian: /usr/sbin/rabbitmq-server -> .../bin/rabbitmq-script-wrapper,
        // and .../bin/rabbitmq-server is a link to the real script.
        script =
            resolve(&script.with_file_name("rabbitmq-server")).map_err(|_| not_real(&found))?;
    }
    let dir = script.parent().ok_or_else(|| not_real(&found))?.to_owned();
    if script.file_name() == Some("rabbitmq-server".as_ref()) && dir.join("rabbitmqctl").is_file() {
        Ok(dir)
    } else {
        Err(not_real(&found))
    }
}

/// Writes the node's config, env file, plugin list and cookie under `base`.
fn write_private_files(
    base: &Path,
    amqp_port: u16,
    tls: Option<(&TlsFiles<'_>, u16)>,
) -> Result<(), HarnessError> {
    let write = |name: &str, text: &str| {
        let path = base.join(name);
        fs::write(&path, text)
            .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e))
    };
    let mut conf = format!(
        "listeners.tcp.local = 127.0.0.1:{amqp_port}\n\
         loopback_users.guest = true\n\
         log.console = true\n\
         log.console.level = info\n\
         log.console.use_colors = off\n\
         log.file = false\n"
    );
    if let Some((files, port)) = tls {
        conf.push_str(&format!(
            "listeners.ssl.local = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            files.cacert.display(),
            files.cert.display(),
            files.key.display()
        ));
    }
    write("rabbitmq.conf", &conf)?;
    write("rabbitmq-env.conf", "")?;
    write("enabled_plugins", "[].\n")?;
    let home = base.join("home");
    fs::create_dir(&home)
        .map_err(|e| HarnessError::io(format!("creating {}", home.display()), e))?;
    let cookie = home.join(".erlang.cookie");
    let value: String = (0..20)
        .map(|_| char::from(b'A' + (random_u64() % 26) as u8))
        .collect();
    fs::write(&cookie, value)
        .and_then(|()| fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400)))
        .map_err(|e| HarnessError::io(format!("writing {}", cookie.display()), e))
}
