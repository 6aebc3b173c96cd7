//! The fault suite: Kamailio with this module and a private RabbitMQ node
//! under steady SIP load (publishes and queries, synchronous and
//! asynchronous in turn, from several threads), with one fault injected at
//! a time; or a soak run of mixed traffic. An asynchronous query counts as
//! a query: answered when resumed in its `ok` route, failed when resumed in
//! its error route, unanswered when its transaction never got a reply.
//!
//! ```text
//! scripts/faults                    # every fault, 15 s each
//! scripts/faults --short            # CI: 5 s faults, smaller floods
//! scripts/faults --only close,alarm # some of them
//! scripts/faults --soak 600         # mixed traffic, memory and fd growth
//! ```
//!
//! Every publish carries a sequence number and goes to `amq.topic`, where a
//! durable quorum queue captures it (it survives closed connections and a
//! broker application restart); after each fault the capture is drained and
//! compared with what the script was told. For each fault it prints: publishes
//! answered 1, messages the capture holds, lost (answered 1 and not held: a
//! hard failure), failures reported to the script, duplicates, messages held
//! although the script was told -1, SIP transaction latency during the fault
//! (p50/p99/max), seconds to recover (a publish confirmed, a query answered
//! and a delivery consumed again), consumers of the subscription queue after
//! recovery, and the PSS of Kamailio's processes before and after.
//!
//! Exit status: 0 when every hard target holds (nothing lost, Kamailio alive,
//! recovery within 60 s with a consumer); 1 otherwise; 2 when the run could
//! not be set up. Latency above the timeout + 100 ms is printed as a finding.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kamailio_test::{
    msg_id_of, table, tree_usage, unique_name, value_long_str, AmqpProbe, Kamailio, ProcessUsage,
    RabbitNode, RawProperties, RawPublisher, Responder, SipClient,
};

/// The subscription the module consumes (declared by the module).
const EVENTS_EXCHANGE: &str = "faults.events";
const EVENTS_QUEUE: &str = "faults-events-q";
/// How long a fault may take to be recovered from.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// How long a SIP transaction may take before it counts as unanswered.
const SIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Latency slack over the module's timeout (the target).
const LATENCY_SLACK: Duration = Duration::from_millis(100);

/// Responder behaviour: answer at once, never, or after the timeout.
const ANSWER: u8 = 0;
const SILENT: u8 = 1;
const LATE: u8 = 2;

const CONFIG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
children=4
disable_tcp=yes
pv_buffer_size=65536
max_while_loops=100000
listen=udp:127.0.0.1:{{PORT}}
mpath="{{MPATH}}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "{{CTL}}")
loadmodule "{{MODULE}}"
modparam("kazoo", "node_hostname", "@NODE@")
modparam("kazoo", "pua_mode", 0)
modparam("kazoo", "amqp_connection", "@URL@")
modparam("kazoo", "amqp_publish_timeout", @TIMEOUT@)
modparam("kazoo", "amqp_query_timeout_avp", "$var(kz_timeout)")
@MODPARAMS@

event_route[kazoo:mod-init]
{
    kazoo_subscribe("{'exchange': 'faults.events', 'type': 'topic', 'queue': 'faults-events-q', 'routing': '#'}");
}

event_route[kazoo:consumer-event]
{
    if ($kzRK =~ "^check\.") {
        xlog("L_INFO", "CHECK $kzRK\n");
    } else if ($kzRK =~ "^flood\.") {
        $var(i) = 0;
        while ($var(i) < 200) {
            $var(x) = $(kzE{kz.json,Seq});
            $var(i) = $var(i) + 1;
        }
    } else {
        $var(x) = $(kzE{kz.json,Seq});
    }
}

# A resumed query says its outcome in the reason phrase (tm runs these
# blocks as failure routes, where append_to_reply is not allowed).
onreply_route[FAULTS_ASYNC_OK]
{
    t_reply("200", "RC 1");
}

failure_route[FAULTS_ASYNC_ERR]
{
    t_reply("200", "RC -1");
}

request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    if ($rU == "async") {
        $var(kz_timeout) = @TIMEOUT@;
        kazoo_async_query("amq.topic", "faultsq.@RUN@.$hdr(X-Seq)", "{'Event-Category':'faults','Event-Name':'async','Seq':'$hdr(X-Seq)'}", "FAULTS_ASYNC_OK", "FAULTS_ASYNC_ERR");
        # Only reached when nothing was suspended.
        append_to_reply("X-RC: -1\r\n");
        sl_send_reply("200", "OK");
        exit;
    }
    if ($rU == "query") {
        $var(kz_timeout) = @TIMEOUT@;
        kazoo_query("amq.topic", "faultsq.@RUN@.$hdr(X-Seq)", "{'Event-Category':'faults','Event-Name':'query','Seq':'$hdr(X-Seq)'}");
    } else {
        kazoo_publish("amq.topic", "faults.@RUN@.$hdr(X-Seq)", "{'Event-Category':'faults','Event-Name':'publish','Seq':'$hdr(X-Seq)'}");
    }
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

/// Command-line settings.
#[derive(Debug, Clone)]
struct Settings {
    /// The module's publish and query timeout, ms.
    timeout_ms: u64,
    /// Publishing SIP threads, and the pause between two requests of one.
    publishers: usize,
    interval: Duration,
    /// How long load runs before a fault, and how long a lasting fault lasts.
    steady: Duration,
    fault: Duration,
    /// Deliveries of the flood, and copies of each small poison message.
    flood: usize,
    poison_copies: usize,
    big_bodies: usize,
    only: Option<Vec<String>>,
    soak: Option<Duration>,
    /// `--modparam name=value`: more kazoo parameters (integers), e.g.
    /// `amqp_direct=0` to send publishes and queries through the AMQP
    /// process.
    modparams: Vec<(String, i64)>,
}

impl Settings {
    fn parse() -> Result<Settings, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let short = args.iter().any(|a| a == "--short");
        let mut settings = Settings {
            timeout_ms: 1000,
            publishers: 3,
            interval: Duration::from_millis(5),
            steady: Duration::from_secs(if short { 2 } else { 3 }),
            fault: Duration::from_secs(if short { 5 } else { 15 }),
            flood: if short { 5_000 } else { 20_000 },
            poison_copies: if short { 3 } else { 20 },
            big_bodies: if short { 1 } else { 3 },
            only: None,
            soak: None,
            modparams: Vec::new(),
        };
        let mut i = 0;
        while i < args.len() {
            let value = |i: usize| {
                args.get(i + 1)
                    .ok_or_else(|| format!("{} needs a value", args[i]))
            };
            let number = |i: usize| -> Result<u64, String> {
                value(i)?
                    .parse()
                    .map_err(|_| format!("{}: not a number", args[i]))
            };
            match args[i].as_str() {
                "--short" => {}
                "--timeout" => settings.timeout_ms = number(i)?.max(1),
                "--publishers" => settings.publishers = number(i)?.clamp(1, 16) as usize,
                "--interval-ms" => settings.interval = Duration::from_millis(number(i)?),
                "--fault-seconds" => settings.fault = Duration::from_secs(number(i)?.max(1)),
                "--only" => {
                    let names: Vec<String> = value(i)?.split(',').map(str::to_owned).collect();
                    if let Some(unknown) =
                        names.iter().find(|n| !FAULTS.iter().any(|f| f.name == *n))
                    {
                        return Err(format!("unknown fault {unknown}"));
                    }
                    settings.only = Some(names);
                }
                "--soak" => settings.soak = Some(Duration::from_secs(number(i)?.max(20))),
                "--modparam" => {
                    let (name, number) = value(i)?
                        .split_once('=')
                        .and_then(|(name, v)| Some((name.to_string(), v.parse().ok()?)))
                        .ok_or_else(|| "--modparam takes name=integer".to_string())?;
                    settings.modparams.push((name, number));
                }
                other => return Err(format!("unknown argument {other}")),
            }
            i += if args[i] == "--short" { 1 } else { 2 };
        }
        Ok(settings)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One SIP transaction of the load.
#[derive(Debug, Clone, Copy)]
struct Sample {
    query: bool,
    seq: u64,
    started: Instant,
    took: Duration,
    /// The script's `$rc`; `None` when no reply came.
    rc: Option<i64>,
}

/// What the load threads share with the driver while they run.
struct Live {
    base: Instant,
    stop: AtomicBool,
    seq: AtomicU64,
    /// Start time (ns after `base`) of the latest publish / query answered 1.
    publish_ok: AtomicU64,
    query_ok: AtomicU64,
    /// Transactions finished, for the soak's per-operation figures.
    done: AtomicU64,
    /// Load stops by itself at this time (ns after `base`) at the latest.
    until: AtomicU64,
}

impl Live {
    fn since_base(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// False once the driver stopped the load or its time bound passed.
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && self.since_base(Instant::now()) < self.until.load(Ordering::SeqCst)
    }
}

/// SIP load from several threads, each pacing its own requests.
struct Load {
    live: Arc<Live>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// Starts the threads; they stop on [`Load::finish`], or by themselves
    /// after `limit`.
    fn start(port: u16, settings: &Settings, live: Arc<Live>, limit: Duration) -> Load {
        let until = live.since_base(Instant::now() + limit);
        live.until.store(until, Ordering::SeqCst);
        live.stop.store(false, Ordering::SeqCst);
        let mut threads = Vec::new();
        // The publishers, and one querying thread at a slower pace.
        for n in 0..=settings.publishers {
            let query = n == settings.publishers;
            let interval = if query {
                settings.interval * 10
            } else {
                settings.interval
            };
            let live = live.clone();
            threads.push(thread::spawn(move || {
                load_thread(port, query, interval, &live)
            }));
        }
        Load { live, threads }
    }

    fn finish(self) -> Vec<Sample> {
        self.live.stop.store(true, Ordering::SeqCst);
        let mut samples: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        samples.sort_by_key(|s| s.started);
        samples
    }
}

fn load_thread(port: u16, query: bool, interval: Duration, live: &Live) -> Vec<Sample> {
    let Ok(client) = SipClient::new() else {
        return Vec::new();
    };
    let mut samples = Vec::new();
    while live.running() {
        let seq = live.seq.fetch_add(1, Ordering::SeqCst);
        // The querying thread takes turns: synchronous, then asynchronous.
        let user = match (query, seq % 2) {
            (false, _) => "publish",
            (true, 0) => "query",
            (true, _) => "async",
        };
        let seq_text = seq.to_string();
        let started = Instant::now();
        let reply = client.send_request(
            port,
            "MESSAGE",
            user,
            &[("X-Seq", &seq_text)],
            b"",
            SIP_TIMEOUT,
        );
        let took = started.elapsed();
        let rc = reply.ok().and_then(|r| {
            let said = r.header("X-RC").or_else(|| r.reason.strip_prefix("RC "));
            said.and_then(|v| v.trim().parse().ok())
        });
        if rc == Some(1) {
            let at = live.since_base(started);
            let slot = if query {
                &live.query_ok
            } else {
                &live.publish_ok
            };
            slot.fetch_max(at, Ordering::SeqCst);
        }
        live.done.fetch_add(1, Ordering::Relaxed);
        samples.push(Sample {
            query,
            seq,
            started,
            took,
            rc,
        });
        if let Some(rest) = interval.checked_sub(took) {
            thread::sleep(rest);
        }
    }
    samples
}

/// The Kazoo side on the broker: a probe connection and a query responder.
struct Backend {
    // Declared first so it stops before the probe's runtime goes.
    _responder: Responder,
    probe: AmqpProbe,
}

impl Backend {
    fn connect(url: &str, run: &str, mode: &Arc<AtomicU8>, timeout: Duration) -> Option<Backend> {
        let probe = AmqpProbe::connect(url).ok()?;
        let mode = mode.clone();
        let late = timeout + Duration::from_millis(300);
        let responder = probe
            .responder("amq.topic", &format!("faultsq.{run}.#"), move |request| {
                let reply = format!("{{\"Msg-ID\":\"{}\",\"Answer\":true}}", msg_id_of(request));
                match mode.load(Ordering::SeqCst) {
                    SILENT => Vec::new(),
                    LATE => vec![(late, reply.into_bytes())],
                    _ => vec![(Duration::ZERO, reply.into_bytes())],
                }
            })
            .ok()?;
        Some(Backend {
            probe,
            _responder: responder,
        })
    }
}

/// Everything one run shares.
struct Rig {
    settings: Settings,
    node: RabbitNode,
    kamailio: Kamailio,
    run: String,
    capture: String,
    live: Arc<Live>,
    mode: Arc<AtomicU8>,
    backend: Option<Backend>,
    checks: u64,
    /// What each Kamailio process is (`kamcmd core.psx`), by pid.
    labels: HashMap<u32, String>,
}

/// One row of the report.
struct Row {
    name: &'static str,
    published: usize,
    held: usize,
    lost: usize,
    publish_failed: usize,
    queries_ok: usize,
    queries_failed: usize,
    unanswered: usize,
    duplicates: usize,
    held_after_failure: usize,
    latency: Option<(Duration, Duration, Duration)>,
    /// Transactions of the fault window slower than the target, described.
    over_target: Vec<String>,
    recovered: Option<Duration>,
    consumers: u32,
    /// Broker connections of the module lost during the fault (its log).
    disconnects: usize,
    alive: bool,
    before: Vec<ProcessUsage>,
    after: Vec<ProcessUsage>,
}

impl Rig {
    fn start(settings: Settings) -> Result<Rig, String> {
        let node = RabbitNode::start().map_err(|e| format!("private RabbitMQ node: {e}"))?;
        let run = unique_name("faults");
        let capture = format!("{run}-capture");
        let probe = AmqpProbe::connect(&node.url()).map_err(|e| e.to_string())?;
        probe
            .durable_capture(&capture, "amq.topic", &format!("faults.{run}.#"))
            .map_err(|e| format!("capture queue: {e}"))?;
        drop(probe);
        let modparams: String = settings
            .modparams
            .iter()
            .map(|(name, value)| format!("modparam(\"kazoo\", \"{name}\", {value})\n"))
            .collect();
        let config = CONFIG
            .replace("@NODE@", &run.replace('-', "."))
            .replace("@URL@", &node.url())
            .replace("@TIMEOUT@", &settings.timeout_ms.to_string())
            .replace("@RUN@", &run)
            .replace("@MODPARAMS@", &modparams);
        let kamailio = Kamailio::start(&config).map_err(|e| format!("kamailio: {e}"))?;
        let labels = kamailio.process_labels();
        let mode = Arc::new(AtomicU8::new(ANSWER));
        let backend = Backend::connect(&node.url(), &run, &mode, settings.timeout());
        let live = Arc::new(Live {
            base: Instant::now(),
            stop: AtomicBool::new(true),
            seq: AtomicU64::new(1),
            publish_ok: AtomicU64::new(0),
            query_ok: AtomicU64::new(0),
            done: AtomicU64::new(0),
            until: AtomicU64::new(0),
        });
        let mut rig = Rig {
            settings,
            node,
            kamailio,
            run,
            capture,
            live,
            mode,
            backend,
            checks: 0,
            labels,
        };
        if rig.wait_recovered(Instant::now()).is_none() {
            return Err(format!(
                "the module never consumed or published at start-up:\n{}",
                rig.kamailio.log()
            ));
        }
        Ok(rig)
    }

    fn url(&self) -> String {
        self.node.url()
    }

    /// The backend, reconnected when its connection is gone.
    fn backend(&mut self) -> Option<&Backend> {
        let broken = self
            .backend
            .as_ref()
            .is_none_or(|b| b.probe.queue_counts(&self.capture).is_err());
        if broken {
            self.backend = None;
            self.backend =
                Backend::connect(&self.url(), &self.run, &self.mode, self.settings.timeout());
        }
        self.backend.as_ref()
    }

    /// Publishes a `check.` delivery to the subscription and waits a little
    /// for the event route to log it; true when it did.
    fn delivery_consumed(&mut self, wait: Duration) -> bool {
        self.checks += 1;
        let key = format!("check.{}", self.checks);
        let Some(backend) = self.backend() else {
            return false;
        };
        if backend.probe.publish(EVENTS_EXCHANGE, &key, b"{}").is_err() {
            self.backend = None;
            return false;
        }
        self.kamailio.wait_for_log(&format!("CHECK {key}\n"), wait)
    }

    /// Waits until, after `since`, a publish was confirmed, a query answered
    /// (the responder answering) and a delivery consumed; how long it took.
    fn wait_recovered(&mut self, since: Instant) -> Option<Duration> {
        let deadline = since + RECOVERY_LIMIT;
        let mark = self.live.since_base(since);
        let mut consumed = false;
        let load_running = self.live.running();
        while Instant::now() < deadline {
            if !consumed {
                consumed = self.delivery_consumed(Duration::from_millis(500));
            }
            let published = !load_running || self.live.publish_ok.load(Ordering::SeqCst) >= mark;
            let answered = !load_running
                || self.mode.load(Ordering::SeqCst) != ANSWER
                || self.live.query_ok.load(Ordering::SeqCst) >= mark;
            if consumed && published && answered {
                return Some(since.elapsed());
            }
            if !self.kamailio.is_running() {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Consumers of the subscription queue, waiting up to 15 s for one.
    fn consumers(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let count = self
                .backend()
                .and_then(|b| b.probe.queue_counts(EVENTS_QUEUE).ok())
                .map_or(0, |c| c.1);
            if count > 0 || Instant::now() >= deadline {
                return count;
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sequence numbers of the publishes the capture holds now.
    fn drain(&self) -> Result<Vec<u64>, String> {
        let probe = AmqpProbe::connect(&self.url()).map_err(|e| e.to_string())?;
        let bodies = probe
            .drain(
                &self.capture,
                Duration::from_secs(2),
                Duration::from_secs(120),
            )
            .map_err(|e| e.to_string())?;
        Ok(bodies
            .iter()
            .filter_map(|body| {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                value.get("Seq")?.as_str()?.parse().ok()
            })
            .collect())
    }

    fn alive(&self) -> bool {
        self.kamailio.is_running()
            && SipClient::new()
                .and_then(|c| c.ping(self.kamailio.port(), Duration::from_secs(5)))
                .is_ok_and(|r| r.code == 200)
    }

    /// Runs one fault under load and measures it.
    fn run_fault(&mut self, fault: &Fault) -> Result<Row, String> {
        eprintln!("==> {}", fault.name);
        let before = tree_usage(self.kamailio.pid());
        let disconnected = disconnects(&self.kamailio.log());
        // Steady load, the fault, its recovery and the measurements after.
        let limit = self.settings.steady + self.settings.fault * 2 + RECOVERY_LIMIT * 3;
        let load = Load::start(
            self.kamailio.port(),
            &self.settings,
            self.live.clone(),
            limit,
        );
        thread::sleep(self.settings.steady);
        let fault_start = Instant::now();
        let outcome = (fault.inject)(self);
        let fault_end = Instant::now();
        if let Err(e) = &outcome {
            eprintln!("    injecting failed: {e}");
        }
        let recovered = self.wait_recovered(fault_end);
        thread::sleep(Duration::from_secs(1));
        let samples = load.finish();
        self.mode.store(ANSWER, Ordering::SeqCst);
        let consumers = self.consumers();
        let held = self.drain()?;
        let alive = self.alive();
        let after = tree_usage(self.kamailio.pid());
        outcome?;
        let mut row = row(
            fault.name,
            &samples,
            &held,
            (fault_start, fault_end),
            self.settings.timeout() + LATENCY_SLACK,
            recovered,
            consumers,
            alive,
            before,
            after,
        );
        let log = self.kamailio.log();
        row.disconnects = disconnects(&log) - disconnected;
        // Why, for the findings: the module's own lines, a few of them.
        for line in log
            .lines()
            .filter(|l| l.contains(": disconnected: "))
            .skip(disconnected)
            .take(5)
        {
            eprintln!("    module: {}", line.trim());
        }
        Ok(row)
    }
}

/// Broker connections the module reported lost, in its log so far.
fn disconnects(log: &str) -> usize {
    log.matches(": disconnected: ").count()
}

#[allow(clippy::too_many_arguments)]
fn row(
    name: &'static str,
    samples: &[Sample],
    held: &[u64],
    (from, to): (Instant, Instant),
    target: Duration,
    recovered: Option<Duration>,
    consumers: u32,
    alive: bool,
    before: Vec<ProcessUsage>,
    after: Vec<ProcessUsage>,
) -> Row {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for seq in held {
        *counts.entry(*seq).or_default() += 1;
    }
    let publishes: Vec<&Sample> = samples.iter().filter(|s| !s.query).collect();
    let queries: Vec<&Sample> = samples.iter().filter(|s| s.query).collect();
    let confirmed: HashSet<u64> = publishes
        .iter()
        .filter(|s| s.rc == Some(1))
        .map(|s| s.seq)
        .collect();
    let mut during: Vec<Duration> = samples
        .iter()
        .filter(|s| s.started >= from && s.started <= to)
        .map(|s| s.took)
        .collect();
    during.sort();
    let pick = |q: f64| during[((during.len() - 1) as f64 * q).round() as usize];
    let over_target: Vec<String> = samples
        .iter()
        .filter(|s| s.started >= from && s.started <= to && s.took > target)
        .map(|s| {
            let kind = if s.query { "query" } else { "publish" };
            let rc = s.rc.map_or("no reply".to_owned(), |rc| format!("rc {rc}"));
            let at = s.started.saturating_duration_since(from).as_secs_f64();
            format!("{kind} {} ms {rc} at {at:.1} s", ms(s.took))
        })
        .collect();
    Row {
        name,
        published: confirmed.len(),
        held: counts.len(),
        lost: confirmed.iter().filter(|s| !counts.contains_key(s)).count(),
        publish_failed: publishes
            .iter()
            .filter(|s| matches!(s.rc, Some(rc) if rc != 1))
            .count(),
        queries_ok: queries.iter().filter(|s| s.rc == Some(1)).count(),
        queries_failed: queries
            .iter()
            .filter(|s| matches!(s.rc, Some(rc) if rc != 1))
            .count(),
        unanswered: samples.iter().filter(|s| s.rc.is_none()).count(),
        duplicates: counts.values().map(|n| n - 1).sum(),
        held_after_failure: publishes
            .iter()
            .filter(|s| s.rc != Some(1) && counts.contains_key(&s.seq))
            .count(),
        latency: (!during.is_empty()).then(|| (pick(0.5), pick(0.99), pick(1.0))),
        over_target,
        recovered,
        consumers,
        disconnects: 0,
        alive,
        before,
        after,
    }
}

/// A fault: its name and how to inject it (returns once it is over).
struct Fault {
    name: &'static str,
    inject: fn(&mut Rig) -> Result<(), String>,
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "close",
        inject: close_connections,
    },
    Fault {
        name: "alarm",
        inject: memory_alarm,
    },
    Fault {
        name: "freeze",
        inject: freeze,
    },
    Fault {
        name: "stop_app",
        inject: stop_app,
    },
    Fault {
        name: "flood",
        inject: flood,
    },
    Fault {
        name: "poison",
        inject: poison,
    },
    Fault {
        name: "silent_backend",
        inject: silent_backend,
    },
    Fault {
        name: "late_backend",
        inject: late_backend,
    },
];

fn ctl(rig: &Rig, args: &[&str]) -> Result<(), String> {
    rig.node
        .rabbitmqctl(args)
        .map(drop)
        .map_err(|e| format!("rabbitmqctl {args:?}: {e}"))
}

fn close_connections(rig: &mut Rig) -> Result<(), String> {
    ctl(rig, &["close_all_connections", "fault suite"])
}

fn memory_alarm(rig: &mut Rig) -> Result<(), String> {
    ctl(rig, &["set_vm_memory_high_watermark", "0.000001"])?;
    thread::sleep(rig.settings.fault);
    ctl(rig, &["set_vm_memory_high_watermark", "0.4"])
}

fn freeze(rig: &mut Rig) -> Result<(), String> {
    let pid = rig.node.freeze().map_err(|e| e.to_string())?;
    eprintln!("    stopped the node's VM, pid {pid}");
    thread::sleep(rig.settings.fault);
    rig.node.thaw().map_err(|e| e.to_string())
}

fn stop_app(rig: &mut Rig) -> Result<(), String> {
    ctl(rig, &["stop_app"])?;
    thread::sleep(rig.settings.fault);
    // Once in a suite run under load, the broker's own `start_app` hung
    // past the harness's 60 s: the fault is the broker being down, not
    // that; a second `start_app` (or "already running") ends it.
    ctl(rig, &["start_app"]).or_else(|e| {
        eprintln!("    {e}; trying start_app again");
        ctl(rig, &["start_app"])
    })
}

fn flood(rig: &mut Rig) -> Result<(), String> {
    let count = rig.settings.flood;
    let backend = rig.backend().ok_or("no backend connection")?;
    let started = Instant::now();
    for n in 0..count {
        let body = format!("{{\"Event-Category\":\"flood\",\"Seq\":\"{n}\"}}");
        backend
            .probe
            .publish(EVENTS_EXCHANGE, &format!("flood.{n}"), body.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "    {count} deliveries published in {took:.1} s ({:.0}/s)",
        count as f64 / took
    );
    Ok(())
}

fn poison(rig: &mut Rig) -> Result<(), String> {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let big = format!("{{\"Big\":\"{}\"}}", "a".repeat(10 << 20));
    let small: [(&str, &[u8]); 9] = [
        ("invalid-json", b"{not json"),
        ("truncated", b"{\"Event-Category\":\"x\""),
        ("array", b"[1,2,3]"),
        ("string", b"\"text\""),
        ("number", b"42"),
        ("null", b"null"),
        ("empty", b""),
        (
            "bad-utf8",
            b"{\"Event-Category\":\"\xff\xfe\xc3\",\"Seq\":\"\xc0\x80\"}",
        ),
        ("deep-array", deep_array.as_bytes()),
    ];
    let copies = rig.settings.poison_copies;
    let big_bodies = rig.settings.big_bodies;
    let backend = rig.backend().ok_or("no backend connection")?;
    let send = |key: &str, body: &[u8]| {
        backend
            .probe
            .publish(EVENTS_EXCHANGE, &format!("poison.{key}"), body)
            .map_err(|e| e.to_string())
    };
    for _ in 0..copies {
        for (key, body) in small {
            send(key, body)?;
        }
        send("deep-object", deep_object.as_bytes())?;
    }
    for _ in 0..big_bodies {
        send("big", big.as_bytes())?;
        send("big-invalid", &big.as_bytes()[..big.len() - 2])?;
    }
    // Fields that are not UTF-8 where AMQP has binary short strings.
    let body = b"{\"Event-Category\":\"poison\"}";
    let header = |name: &[u8], value: &[u8]| table(&[(name, value_long_str(value))]);
    let raw: [(&[u8], RawProperties); 4] = [
        (b"poison.raw-key.\xff\xfe", RawProperties::default()),
        (
            b"poison.raw-header-name",
            RawProperties::default().headers(header(b"X-Bad-\xff", b"value")),
        ),
        (
            b"poison.raw-header-value",
            RawProperties::default().headers(header(b"X-Bad", b"\xc0\x80\xff")),
        ),
        (
            b"poison.raw-content-type",
            RawProperties::default().content_type(b"application/\xff"),
        ),
    ];
    // One at a time, each followed by a delivery that must be consumed, to
    // tell which of them cost the module its consuming connection.
    let address = format!("127.0.0.1:{}", rig.node.amqp_port());
    for (routing_key, properties) in &raw {
        let before = disconnects(&rig.kamailio.log());
        let mut publisher =
            RawPublisher::connect(&address, "guest", "guest").map_err(|e| e.to_string())?;
        publisher
            .publish(EVENTS_EXCHANGE.as_bytes(), routing_key, properties, body)
            .map_err(|e| e.to_string())?;
        publisher.close();
        let consumed = (0..20).any(|_| rig.delivery_consumed(Duration::from_millis(500)));
        let lost = disconnects(&rig.kamailio.log()) - before;
        eprintln!(
            "    {}: {lost} connections lost, next delivery {}",
            String::from_utf8_lossy(routing_key),
            if consumed { "consumed" } else { "NOT consumed" }
        );
    }
    Ok(())
}

fn silent_backend(rig: &mut Rig) -> Result<(), String> {
    rig.mode.store(SILENT, Ordering::SeqCst);
    thread::sleep(rig.settings.fault);
    rig.mode.store(ANSWER, Ordering::SeqCst);
    Ok(())
}

fn late_backend(rig: &mut Rig) -> Result<(), String> {
    rig.mode.store(LATE, Ordering::SeqCst);
    thread::sleep(rig.settings.fault);
    rig.mode.store(ANSWER, Ordering::SeqCst);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

fn total_pss(usage: &[ProcessUsage]) -> u64 {
    usage.iter().map(|u| u.pss_kb).sum()
}

fn print_table(rows: &[Row], settings: &Settings, labels: &HashMap<u32, String>) {
    println!();
    println!(
        "| Fault | publishes answered 1 | held | lost | publish -1 | queries 1 / -1 | no reply | duplicates | held after -1 | latency p50 / p99 / max ms | recovered s | consumers | disconnects | Kamailio PSS kB before → after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let latency = r.latency.map_or("-".to_owned(), |(p50, p99, max)| {
            format!("{} / {} / {}", ms(p50), ms(p99), ms(max))
        });
        let recovered = r
            .recovered
            .map_or("never".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
        println!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            r.name,
            r.published,
            r.held,
            r.lost,
            r.publish_failed,
            r.queries_ok,
            r.queries_failed,
            r.unanswered,
            r.duplicates,
            r.held_after_failure,
            latency,
            recovered,
            r.consumers,
            r.disconnects,
            total_pss(&r.before),
            total_pss(&r.after),
        );
    }
    println!();
    println!("PSS of each Kamailio process, kB (pid: before → after):");
    for r in rows {
        let after: HashMap<u32, u64> = r.after.iter().map(|u| (u.pid, u.pss_kb)).collect();
        let cells: Vec<String> = r
            .before
            .iter()
            .map(|u| {
                let later = after.get(&u.pid).map_or("gone".to_owned(), u64::to_string);
                let label = labels.get(&u.pid).map_or("", String::as_str);
                format!("{} ({label}): {} → {}", u.pid, u.pss_kb, later)
            })
            .collect();
        println!("  {}: {}", r.name, cells.join(", "));
    }
    println!(
        "\nTimeout {} ms (publish and query); latency target: max ≤ {} ms.",
        settings.timeout_ms,
        settings.timeout_ms + LATENCY_SLACK.as_millis() as u64
    );
}

/// Hard failures (exit status) and findings (printed) of the rows.
fn verdict(rows: &[Row], settings: &Settings) -> bool {
    let mut ok = true;
    let target = settings.timeout() + LATENCY_SLACK;
    for r in rows {
        let mut hard = Vec::new();
        if r.lost > 0 {
            hard.push(format!("{} confirmed publishes lost", r.lost));
        }
        if !r.alive {
            hard.push("Kamailio died or stopped answering".to_owned());
        }
        if r.recovered.is_none() {
            hard.push(format!("no recovery within {RECOVERY_LIMIT:?}"));
        }
        if r.consumers == 0 {
            hard.push("no consumer on the subscription queue after recovery".to_owned());
        }
        for h in &hard {
            println!("FAIL {}: {h}", r.name);
        }
        ok &= hard.is_empty();
        if let Some((_, _, max)) = r.latency {
            if max > target {
                println!(
                    "finding {}: latency max {} ms > target {} ms ({} transactions over it: {})",
                    r.name,
                    ms(max),
                    ms(target),
                    r.over_target.len(),
                    r.over_target[..r.over_target.len().min(5)].join(", ")
                );
            }
        }
        if r.duplicates > 0 {
            println!(
                "finding {}: {} duplicates in the capture",
                r.name, r.duplicates
            );
        }
    }
    ok
}

fn faults(mut rig: Rig) -> bool {
    let selected: Vec<&Fault> = FAULTS
        .iter()
        .filter(|f| {
            rig.settings
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == f.name))
        })
        .collect();
    let mut rows = Vec::new();
    let started = Instant::now();
    for fault in selected {
        match rig.run_fault(fault) {
            Ok(row) => {
                let dead = !row.alive;
                rows.push(row);
                if dead {
                    eprintln!("Kamailio died; log tail:\n{}", tail(&rig.kamailio.log()));
                    break;
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", fault.name);
                print_table(&rows, &rig.settings, &rig.labels);
                return false;
            }
        }
    }
    print_table(&rows, &rig.settings, &rig.labels);
    println!("Run took {:.0} s.", started.elapsed().as_secs_f64());
    verdict(&rows, &rig.settings)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Mixed publish, query and consume traffic for `length`; memory and fd
/// growth per 100k operations between the end of a warm-up and the end.
fn soak(mut rig: Rig, length: Duration) -> bool {
    let warmup = (length / 5).min(Duration::from_secs(30));
    let limit = length + RECOVERY_LIMIT;
    let load = Load::start(rig.kamailio.port(), &rig.settings, rig.live.clone(), limit);
    let url = rig.url();
    let live = rig.live.clone();
    // Deliveries to the subscription, paced, from a connection of their own.
    let deliveries = thread::spawn(move || {
        let mut sent = 0u64;
        let Ok(probe) = AmqpProbe::connect(&url) else {
            return sent;
        };
        while live.running() {
            let body = format!("{{\"Event-Category\":\"soak\",\"Seq\":\"{sent}\"}}");
            if probe
                .publish(EVENTS_EXCHANGE, &format!("soak.{sent}"), body.as_bytes())
                .is_ok()
            {
                sent += 1;
                live.done.fetch_add(1, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    thread::sleep(warmup);
    let first = tree_usage(rig.kamailio.pid());
    let shm_first = rig.kamailio.shm_used_kb();
    let ops_first = rig.live.done.load(Ordering::SeqCst);
    let measured = Instant::now();
    let end = Instant::now() + length.saturating_sub(warmup);
    // A sample every sixth of the measured time, to tell growth from warm-up.
    let every = length.saturating_sub(warmup) / 6;
    let mut next_sample = Instant::now() + every;
    let fds = |u: &[ProcessUsage]| u.iter().map(|p| p.fds).sum::<u64>();
    let mut machine = MachineStalls::default();
    while Instant::now() < end && rig.kamailio.is_running() {
        // Timed like the latency findings: from the start of the load.
        machine.tick(rig.live.base);
        if Instant::now() >= next_sample {
            next_sample += every;
            let usage = tree_usage(rig.kamailio.pid());
            // The AMQP process on its own: the one whose growth a soak is for.
            let amqp_pss: u64 = usage
                .iter()
                .filter(|u| rig.labels.get(&u.pid).is_some_and(|l| l == "kazoo AMQP"))
                .map(|u| u.pss_kb)
                .sum();
            eprintln!(
                "    {:>5.0} s: {} operations, PSS {} kB (kazoo AMQP {amqp_pss} kB), shm {} kB, {} fds",
                measured.elapsed().as_secs_f64(),
                rig.live.done.load(Ordering::SeqCst) - ops_first,
                total_pss(&usage),
                rig.kamailio.shm_used_kb().map_or("?".into(), |kb| kb.to_string()),
                fds(&usage)
            );
        }
    }
    let last = tree_usage(rig.kamailio.pid());
    let shm_last = rig.kamailio.shm_used_kb();
    let ops = rig.live.done.load(Ordering::SeqCst) - ops_first;
    let seconds = measured.elapsed().as_secs_f64();
    let samples = load.finish();
    let delivered = deliveries.join().unwrap_or(0);
    let consumed = rig.delivery_consumed(Duration::from_secs(30));
    let held = match rig.drain() {
        Ok(held) => held,
        Err(e) => {
            eprintln!("drain: {e}");
            return false;
        }
    };
    let alive = rig.alive();
    let consumers = rig.consumers();
    let r = row(
        "soak",
        &samples,
        &held,
        (rig.live.base, Instant::now()),
        rig.settings.timeout() + LATENCY_SLACK,
        consumed.then_some(Duration::ZERO),
        consumers,
        alive,
        first.clone(),
        last.clone(),
    );
    let per_100k = |a: u64, b: u64| (b as f64 - a as f64) * 100_000.0 / ops.max(1) as f64;
    println!();
    println!("| Soak | value |\n|---|---|");
    println!(
        "| measured | {seconds:.0} s after a {} s warm-up |",
        warmup.as_secs()
    );
    println!(
        "| operations | {ops} (publishes, queries, deliveries; {delivered} deliveries in all) |"
    );
    println!(
        "| publishes answered 1 / held / lost | {} / {} / {} |",
        r.published, r.held, r.lost
    );
    println!(
        "| publish -1 / queries 1 / -1 / no reply | {} / {} / {} / {} |",
        r.publish_failed, r.queries_ok, r.queries_failed, r.unanswered
    );
    println!(
        "| module connections lost | {} |",
        disconnects(&rig.kamailio.log())
    );
    println!(
        "| Kamailio PSS kB | {} → {} ({:+.1} kB per 100k operations) |",
        total_pss(&first),
        total_pss(&last),
        per_100k(total_pss(&first), total_pss(&last))
    );
    if let (Some(a), Some(b)) = (shm_first, shm_last) {
        println!(
            "| Kamailio shm in use kB (`core.shmmem` real_used) | {a} → {b} ({:+.1} kB per 100k operations) |",
            per_100k(a, b)
        );
    }
    println!(
        "| Kamailio open fds | {} → {} ({:+.1} per 100k operations) |",
        fds(&first),
        fds(&last),
        per_100k(fds(&first), fds(&last))
    );
    println!("| machine | {machine} |");
    let after: HashMap<u32, &ProcessUsage> = last.iter().map(|u| (u.pid, u)).collect();
    println!("\nPSS kB and fds of each Kamailio process (pid: first → last):");
    for u in &first {
        let label = rig.labels.get(&u.pid).map_or("", String::as_str);
        match after.get(&u.pid) {
            Some(l) => println!(
                "  {} ({label}): {} → {} kB, {} → {} fds",
                u.pid, u.pss_kb, l.pss_kb, u.fds, l.fds
            ),
            None => println!("  {} ({label}): gone", u.pid),
        }
    }
    verdict(&[r], &rig.settings)
}

/// What the machine took from the soak: a virtual machine's host running
/// something else (CPU time stolen), or the soak's own half-second sleeps
/// overrunning. A latency finding at the same second (both are timed from
/// the start of the load) is the machine's, not the module's.
#[derive(Default)]
struct MachineStalls {
    steal_last: Option<u64>,
    /// The most CPU stolen in one tick (ms, all CPUs) and when (s).
    most_stolen: (u64, f64),
    /// The longest overrun of a 500 ms sleep (ms) and when (s).
    longest_overrun: (u64, f64),
}

impl MachineStalls {
    const TICK: Duration = Duration::from_millis(500);

    /// Sleeps one tick and notes what the machine did meanwhile.
    fn tick(&mut self, since: Instant) {
        let slept_from = Instant::now();
        thread::sleep(Self::TICK);
        let overrun = slept_from.elapsed().saturating_sub(Self::TICK).as_millis() as u64;
        let at = since.elapsed().as_secs_f64();
        if overrun > self.longest_overrun.0 {
            self.longest_overrun = (overrun, at);
        }
        let steal = steal_ticks();
        if let (Some(before), Some(now)) = (self.steal_last, steal) {
            // /proc/stat counts in USER_HZ, 100 per second on Linux.
            let stolen_ms = now.saturating_sub(before) * 10;
            if stolen_ms > self.most_stolen.0 {
                self.most_stolen = (stolen_ms, at);
            }
        }
        self.steal_last = steal;
    }
}

impl std::fmt::Display for MachineStalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "most CPU stolen by the host in 0.5 s: {} ms (all CPUs) at {:.1} s; longest overrun \
             of a 0.5 s sleep: {} ms at {:.1} s",
            self.most_stolen.0, self.most_stolen.1, self.longest_overrun.0, self.longest_overrun.1
        )
    }
}

/// The machine's CPU time stolen by its host so far, in USER_HZ ticks.
fn steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()
}

fn main() {
    let settings = match Settings::parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}\nusage: faults [--short] [--only a,b] [--soak SECONDS] [--timeout MS] [--publishers N] [--interval-ms MS] [--fault-seconds S] [--modparam NAME=INT]...");
            std::process::exit(2);
        }
    };
    let soak_length = settings.soak;
    let rig = match Rig::start(settings) {
        Ok(rig) => rig,
        Err(e) => {
            eprintln!("setting up: {e}");
            std::process::exit(2);
        }
    };
    let ok = match soak_length {
        Some(length) => soak(rig, length),
        None => faults(rig),
    };
    std::process::exit(if ok { 0 } else { 1 });
}
