//! The benchmark's load part (`--load SECONDS`): each path under steady SIP
//! load, one operation per SIP request, from `--clients N` concurrent
//! clients that each send their next request as soon as the previous one is
//! answered, or that together send a fixed number per second; this module
//! and the C module in turn on the same configuration (this module also
//! with `amqp_direct 0`, its previous path for publishes and queries).
//!
//! Per path and module it prints the rate of requests whose operation
//! succeeded, the failures, the SIP round-trip latency (p50 / p99), the
//! Kamailio CPU and context switches (every process and thread) per
//! request, and the PSS of every Kamailio process before and after. Query
//! paths are answered by a responder on the benchmark's own broker
//! connection; publishes go to a routing key no queue is bound to.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kamailio_test::{
    msg_id_of, system_broker_url, tree_context_switches, tree_cpu_ticks, tree_usage, unique_name,
    AmqpProbe, Kamailio, Responder, SipClient,
};

/// A Kazoo-style payload of about 300 bytes.
const PAYLOAD: &str = "{'Event-Category':'directory','Event-Name':'reg_success','Call-ID':'a84b4c76e66710@pc33.example.com','Realm':'example.com','Username':'alice','From-User':'alice','From-Host':'example.com','To-User':'alice','To-Host':'example.com','User-Agent':'Kamailio benchmark client 1.0','Contact':'<sip:alice@192.0.2.10:5060>'}";

/// SIP requests wait this long for their reply.
const SIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The script operations measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The SIP request and its reply alone: what every other path includes.
    Nothing,
    /// The request answered statefully (a tm transaction, no operation):
    /// what an asynchronous query pays tm at least, with either module.
    Stateful,
    Publish,
    Query,
    AsyncQuery,
}

impl Path {
    pub(crate) const ALL: [Path; 5] = [
        Path::Nothing,
        Path::Stateful,
        Path::Publish,
        Path::Query,
        Path::AsyncQuery,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Path::Nothing => "SIP only (no operation)",
            Path::Stateful => "SIP in a tm transaction (no operation)",
            Path::Publish => "kazoo_publish",
            Path::Query => "kazoo_query",
            Path::AsyncQuery => "kazoo_async_query",
        }
    }

    /// The request URI's user the route dispatches on.
    pub(crate) fn user(self) -> &'static str {
        match self {
            Path::Nothing => "nothing",
            Path::Stateful => "stateful",
            Path::Publish => "publish",
            Path::Query => "query",
            Path::AsyncQuery => "async",
        }
    }
}

/// One path measured on one module.
#[derive(Debug)]
pub(crate) struct LoadResult {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) cpu_us: f64,
    pub(crate) switches: f64,
    pub(crate) pss_kb: (u64, u64),
    /// Kamailio stopped during the run.
    pub(crate) died: bool,
}

pub(crate) fn config(global: &str, run: &str) -> String {
    format!(
        r#"{global}
loadmodule "textops.so"
# Finished transactions leave shared memory after 0.5 s instead of 5 s:
# thousands per second would fill the default 64 MB otherwise.
modparam("tm", "wt_timer", 500)
onreply_route[KZ_OK] {{
    t_reply("200", "OK");
}}
failure_route[KZ_ERR] {{
    t_reply("503", "No reply");
}}
request_route {{
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    $var(p) = "{payload}";
    if ($rU == "publish") {{
        kazoo_publish("amq.topic", "bench.load.nobody", "$var(p)");
        $var(rc) = $rc;
    }} else if ($rU == "query") {{
        kazoo_query("amq.topic", "benchq.{run}.query", "$var(p)");
        $var(rc) = $rc;
    }} else if ($rU == "stateful") {{
        t_newtran();
        t_reply("200", "OK");
        exit;
    }} else if ($rU == "async") {{
        kazoo_async_query("amq.topic", "benchq.{run}.async", "$var(p)", "KZ_OK", "KZ_ERR");
        sl_send_reply("500", "Not suspended");
        exit;
    }} else {{
        $var(rc) = 1;
    }}
    if ($var(rc) == 1) {{
        sl_send_reply("200", "OK");
    }} else {{
        sl_send_reply("500", "Failed");
    }}
}}
"#,
        payload = PAYLOAD.replace('"', "\\\""),
    )
}

/// What one client thread saw: latencies of successful requests, failures.
/// With `interval`, it sends one request per interval (skipping a slot it
/// is late for), else the next as soon as the last is answered.
fn client(
    port: u16,
    path: Path,
    interval: Option<Duration>,
    first: Instant,
    running: &AtomicBool,
    sent: &AtomicU64,
) -> (Vec<Duration>, u64) {
    let Ok(client) = SipClient::new() else {
        return (Vec::new(), 0);
    };
    let mut took = Vec::new();
    let mut failed = 0;
    let mut next = first;
    while running.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            }
            next = next.max(now) + interval;
        }
        let started = Instant::now();
        match client.send_request(port, "MESSAGE", path.user(), &[], b"", SIP_TIMEOUT) {
            Ok(reply) if reply.code == 200 => took.push(started.elapsed()),
            _ => failed += 1,
        }
        sent.fetch_add(1, Ordering::Relaxed);
    }
    (took, failed)
}

/// How requests are sent: `clients` clients, each sending the next as
/// soon as the last is answered (`rate` `None`), or together `rate`
/// requests per second.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    pub(crate) clients: u32,
    pub(crate) rate: Option<u32>,
}

/// How long the clients run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    /// For this long.
    Elapsed(Duration),
    /// Until this many requests have been answered or have failed, or
    /// Kamailio stopped (checked every 100 ms).
    Sent(u64),
}

/// Runs the clients until `until`; their latencies and failures.
pub(crate) fn drive(
    kamailio: &Kamailio,
    path: Path,
    pace: Pace,
    until: Until,
) -> (Vec<Duration>, u64) {
    let port = kamailio.port();
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let interval = pace
        .rate
        .map(|rate| Duration::from_secs_f64(f64::from(pace.clients) / f64::from(rate.max(1))));
    let start = Instant::now();
    let threads: Vec<_> = (0..pace.clients)
        .map(|n| {
            let (running, sent) = (running.clone(), sent.clone());
            // Paced clients take turns: client n starts n/clients of an
            // interval late, so that requests come evenly, not in bursts.
            let first = start
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(f64::from(n) / f64::from(pace.clients))
                });
            thread::spawn(move || client(port, path, interval, first, &running, &sent))
        })
        .collect();
    match until {
        Until::Elapsed(span) => thread::sleep(span),
        Until::Sent(requests) => {
            while sent.load(Ordering::Relaxed) < requests && kamailio.is_running() {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    running.store(false, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failed = 0;
    for thread in threads {
        if let Ok((took, f)) = thread.join() {
            all.extend(took);
            failed += f;
        }
    }
    (all, failed)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1000.0
}

/// The Kazoo side: a responder answering every query sent to
/// `benchq.<run>.*` on `amq.topic` at once.
pub(crate) struct Backend {
    // Declared first: it stops before its probe's runtime goes.
    _responder: Responder,
    _probe: AmqpProbe,
}

pub(crate) fn backend(run: &str) -> Result<Backend, String> {
    let probe = AmqpProbe::connect(&system_broker_url()).map_err(|e| e.to_string())?;
    let responder = probe
        .responder("amq.topic", &format!("benchq.{run}.#"), |request| {
            let reply = format!("{{\"Msg-ID\":\"{}\",\"Answer\":true}}", msg_id_of(request));
            vec![(Duration::ZERO, reply.into_bytes())]
        })
        .map_err(|e| e.to_string())?;
    Ok(Backend {
        _responder: responder,
        _probe: probe,
    })
}

fn pss(pid: u32) -> u64 {
    tree_usage(pid).iter().map(|u| u.pss_kb).sum()
}

/// Measures `path` on a Kamailio started from `global` (the module and its
/// parameters).
pub(crate) fn measure(
    global: &str,
    path: Path,
    pace: Pace,
    span: Duration,
) -> Result<LoadResult, String> {
    let run = unique_name("load").replace('-', "");
    let _backend = backend(&run)?;
    let kamailio = Kamailio::start(&config(global, &run)).map_err(|e| e.to_string())?;
    // Connections settle, then a short warm-up (direct links open, caches).
    thread::sleep(Duration::from_secs(2));
    drive(
        &kamailio,
        path,
        pace,
        Until::Elapsed(Duration::from_secs(1)),
    );
    let pss_before = pss(kamailio.pid());
    let cpu_before = tree_cpu_ticks(kamailio.pid());
    let switches_before = tree_context_switches(kamailio.pid());
    let started = Instant::now();
    let (mut took, failed) = drive(&kamailio, path, pace, Until::Elapsed(span));
    let wall = started.elapsed();
    let cpu = tree_cpu_ticks(kamailio.pid()).saturating_sub(cpu_before);
    let switches = tree_context_switches(kamailio.pid()).saturating_sub(switches_before);
    let died = !kamailio.is_running();

    let pss_after = pss(kamailio.pid());
    took.sort();
    let ok = took.len() as u64;
    let requests = (ok + failed).max(1) as f64;
    Ok(LoadResult {
        ok,
        failed,
        rate: ok as f64 / wall.as_secs_f64(),
        p50_ms: percentile(&took, 0.50),
        p99_ms: percentile(&took, 0.99),
        // Clock ticks are 10 ms.
        cpu_us: cpu as f64 * 10_000.0 / requests,
        switches: switches as f64 / requests,
        pss_kb: (pss_before, pss_after),
        died,
    })
}

/// The broker's own ceiling for `path` (publish or query): `requesters`
/// threads, as many as Kamailio's SIP workers, each publishing or querying
/// synchronously with this module's engine (`kazoo_engine::direct`) and no
/// Kamailio, on the same broker and responder.
pub(crate) fn measure_broker_alone(
    path: Path,
    requesters: u32,
    span: Duration,
) -> Result<LoadResult, String> {
    use kazoo_engine::config::Params;
    use kazoo_engine::direct::{DirectOptions, DirectPublisher};
    use kazoo_engine::payload::{self, CommonFields};

    let run = unique_name("alone").replace('-', "");
    let _backend = backend(&run)?;
    let mut params = Params::default();
    params
        .set(
            "amqp_connection",
            kazoo_engine::config::ParamValue::Str(system_broker_url().as_bytes()),
        )
        .map_err(|e| e.to_string())?;
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let threads: Vec<_> = (0..requesters)
        .map(|n| {
            let (running, brokers, run) = (running.clone(), params.brokers.clone(), run.clone());
            thread::spawn(move || {
                let node = format!("{run}-{n}");
                let mut direct = DirectPublisher::new(
                    &brokers,
                    DirectOptions {
                        primary_zone: "local".into(),
                        node_hostname: node.clone(),
                        reply_queues: 1,
                        reply_idx: 1,
                        connect_timeout: Duration::from_secs(1),
                        connection_name: node,
                    },
                );
                let common = CommonFields {
                    app_name: "bench".into(),
                    app_version: "0".into(),
                    node: "bench".into(),
                };
                let (mut took, mut failed) = (Vec::new(), 0u64);
                while running.load(Ordering::Relaxed) {
                    let Ok(prepared) =
                        payload::prepare_publish(PAYLOAD.as_bytes(), &common, payload::new_msg_id)
                    else {
                        break;
                    };
                    let at = Instant::now();
                    let deadline = at + Duration::from_secs(2);
                    let ok = match path {
                        Path::Query => direct
                            .query(
                                "amq.topic",
                                &format!("benchq.{run}.q"),
                                &[],
                                &prepared,
                                deadline,
                            )
                            .is_ok(),
                        _ => direct
                            .publish(
                                None,
                                "amq.topic",
                                "bench.load.nobody",
                                Default::default(),
                                |_, _| prepared.body("bench"),
                                deadline,
                            )
                            .is_ok(),
                    };
                    if ok {
                        took.push(at.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (took, failed)
            })
        })
        .collect();
    thread::sleep(span);
    running.store(false, Ordering::Relaxed);
    let mut took = Vec::new();
    let mut failed = 0;
    for thread in threads {
        if let Ok((t, f)) = thread.join() {
            took.extend(t);
            failed += f;
        }
    }
    let wall = started.elapsed();
    took.sort();
    Ok(LoadResult {
        ok: took.len() as u64,
        failed,
        rate: took.len() as f64 / wall.as_secs_f64(),
        p50_ms: percentile(&took, 0.50),
        p99_ms: percentile(&took, 0.99),
        cpu_us: f64::NAN,
        switches: f64::NAN,
        pss_kb: (0, 0),
        died: false,
    })
}

/// Prints one row.
pub(crate) fn print_row(label: &str, result: &Result<LoadResult, String>) {
    match result {
        Ok(r) => {
            let or_dash = |v: f64| {
                if v.is_nan() {
                    "-".to_string()
                } else {
                    format!("{v:.1}")
                }
            };
            let pss = if r.pss_kb == (0, 0) {
                "-".to_string()
            } else {
                format!("{} → {}", r.pss_kb.0, r.pss_kb.1)
            };
            println!(
                "| {label} | {:.0} | {} ({:.1} %) | {:.2} / {:.2} | {} | {} | {pss} |{}",
                r.rate,
                r.failed,
                100.0 * r.failed as f64 / (r.ok + r.failed).max(1) as f64,
                r.p50_ms,
                r.p99_ms,
                or_dash(r.cpu_us),
                or_dash(r.switches),
                if r.died { " Kamailio died |" } else { " |" }
            )
        }
        Err(e) => println!("| {label} | failed: {e} | | | | | | |"),
    }
}

pub(crate) const HEADER: &str = "| path, module | ok/s | failed | p50 / p99 ms | CPU µs/request | context switches/request | PSS kB before → after | note |\n|---|---|---|---|---|---|---|---|";
