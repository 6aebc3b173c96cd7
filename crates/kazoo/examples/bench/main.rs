//! Side-by-side benchmark: Kamailio CPU per script operation with this
//! module and with the C `kazoo.so` (when it is installed), same machine,
//! same configuration.
//!
//! ```text
//! cargo build --release -p kazoo
//! cargo run --release -p kazoo --example bench [-- --requests 400 --ops 200 --load 10]
//! ```
//!
//! For each module, Kamailio is started with a configuration whose request
//! route repeats one operation `ops` times per SIP request; `requests`
//! requests are sent, and the CPU time (user + system) of every Kamailio
//! process (the main process and all its children: SIP workers, the AMQP
//! and worker processes of either module) is read from `/proc` before and
//! after. A run with an empty loop body is subtracted, so the figure is the
//! operation's own cost. Publishing goes to the local RabbitMQ; this module
//! waits for the broker's confirm, the C module does not (see docs). CPU
//! time is counted in clock ticks (10 ms): keep `requests × ops` large.
//!
//! Consuming is measured apart (`--consume N`, default 20 000 messages):
//! N small events wait in the subscription's queue (durable, declared by
//! the benchmark as the subscription declares it) before Kamailio starts
//! and subscribes in `kazoo:mod-init` (with `no_ack` 1, then 0); the CPU of
//! every Kamailio process from the moment the broker sees its consumer
//! until the queue is empty, less the same span of idle CPU, is divided by
//! N, and N by that span is the rate; each event runs a route reading one
//! field of `$kzE`.
//! `--consume-only` skips the script operations.
//!
//! Under load (`--load SECONDS`, default 10, 0 to skip; `--load-only` runs
//! just this; `--clients N`, default 32; `--fixed-rate R`, default 1000;
//! `--paths publish,query,...`): each path with one operation per SIP
//! request from concurrent clients, as fast as they go and then at a fixed
//! rate: rate, failures, latency, CPU and context switches per request, PSS
//! (see `load.rs`).
//!
//! Memory (`--memory N`, default 1 000 000, 0 to skip; `--memory-only` runs
//! just this): the PSS of every Kamailio process and the shared memory in
//! use before and after N operations (see `memory.rs`).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kamailio_test::{
    system_broker_url, system_queue_messages, tree_cpu_ticks, unique_name, AmqpProbe, Kamailio,
    SipClient,
};

mod load;
mod memory;

const C_MODULE: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/kazoo.so";

/// A Kazoo-style payload of about 1.9 KB.
const PAYLOAD: &str = r#"{'Event-Category':'call_event','Event-Name':'CHANNEL_CREATE','Call-ID':'a84b4c76e66710@pc33.example.com','Caller-ID-Name':'Alice','Caller-ID-Number':'+15551234567','Callee-ID-Name':'Bob','Callee-ID-Number':'+15557654321','Channels':[{'switch_url':'sip:mod_sofia@10.0.0.1:11000','node':'freeswitch@fs1.example.com','uuid':'0d4c3f80-8f36-4b86-9f7e-5f8d1e4f5a01'},{'switch_url':'sip:mod_sofia@10.0.0.2:11000','node':'freeswitch@fs2.example.com','uuid':'6e0a9b55-0b8e-4c1f-8a0f-2b7f5b0d9c02'}],'Custom-Channel-Vars':{'Account-ID':'3a4f1b2c5d6e7f8091a2b3c4d5e6f708','Authorizing-ID':'9f8e7d6c5b4a39281706f5e4d3c2b1a0','Authorizing-Type':'device','Owner-ID':'0a1b2c3d4e5f60718293a4b5c6d7e8f9','Realm':'example.com','Username':'alice','Inception':'on-net','Presence-ID':'alice@example.com','Global-Resource':'false','Bridge-ID':'a84b4c76e66710@pc33.example.com'},'Custom-SIP-Headers':{'X-Kazoo-Cookie':'f1e2d3c4b5a69788','P-Asserted-Identity':'<sip:+15551234567@example.com>'},'Direction':'inbound','Disposition':'ANSWER','Hangup-Cause':'NORMAL_CLEARING','Media-Server':'fs1.example.com','Other-Leg-Call-ID':'b95c5d87f77821@pc34.example.com','Presence-ID':'alice@example.com','Timestamp':63830000000,'Duration-Seconds':125,'Billing-Seconds':120,'Ringing-Seconds':5,'User-Agent':'Kamailio benchmark client 1.0 (Linux x86_64)','To':'bob@example.com','From':'alice@example.com','Request':'bob@example.com','Switch-Hostname':'fs1.example.com','Switch-Nodename':'freeswitch@fs1.example.com','Switch-URI':'sip:10.0.0.1:11000','Switch-URL':'sip:mod_sofia@10.0.0.1:11000'}"#;

/// The operations measured: a name and the script statement repeated.
const OPERATIONS: &[(&str, &str)] = &[
    ("baseline (empty loop)", ""),
    (
        "{kz.json} nested field",
        "$var(x) = $(var(p){kz.json,Channels[1].switch_url});",
    ),
    (
        "kazoo_json top-level field",
        "kazoo_json(\"$var(p)\", \"Event-Name\", \"$var(x)\");",
    ),
    ("kazoo_encode", "kazoo_encode(\"$ci\", \"$var(x)\");"),
    ("{kz.encode}", "$var(x) = $(ci{kz.encode});"),
    (
        "kazoo_publish (1.9 KB)",
        "kazoo_publish(\"amq.topic\", \"bench.nobody\", \"$var(p)\");",
    ),
];

/// What both configurations start with: the module on the local RabbitMQ.
fn global_part(module: &str, children: u32) -> String {
    format!(
        r#"#!KAMAILIO
debug=1
log_stderror=yes
children={children}
disable_tcp=yes
listen=udp:127.0.0.1:{{{{PORT}}}}
mpath="{{{{MPATH}}}}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "{module}"
modparam("kazoo", "node_hostname", "bench.local")
modparam("kazoo", "pua_mode", 0)
modparam("kazoo", "amqp_connection", "{broker}")"#,
        broker = system_broker_url(),
    )
}

fn config(module: &str, statement: &str) -> String {
    format!(
        r#"{global}
pv_buffer_size=65536
max_while_loops=1000000
loadmodule "textops.so"
request_route {{
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    $var(p) = "{payload}";
    $var(n) = $(hdr(X-Ops){{s.int}});
    $var(i) = 0;
    while ($var(i) < $var(n)) {{
        {statement}
        $var(i) = $var(i) + 1;
    }}
    sl_send_reply("200", "OK");
}}
"#,
        global = global_part(module, 2),
        payload = PAYLOAD.replace('"', "\\\""),
    )
}

/// Kamailio CPU microseconds for `requests` requests of `ops` operations.
fn measure(module: &str, statement: &str, requests: u32, ops: u32) -> Result<f64, String> {
    let kamailio = Kamailio::start(&config(module, statement)).map_err(|e| e.to_string())?;
    let client = SipClient::new().map_err(|e| e.to_string())?;
    // Let broker connections settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let ops_text = ops.to_string();
    let before = tree_cpu_ticks(kamailio.pid());
    let started = Instant::now();
    for _ in 0..requests {
        let reply = client
            .send_request(
                kamailio.port(),
                "MESSAGE",
                "bench",
                &[("X-Ops", &ops_text)],
                b"",
                Duration::from_secs(30),
            )
            .map_err(|e| e.to_string())?;
        if reply.code != 200 {
            return Err(format!("reply {}", reply.code));
        }
    }
    let wall = started.elapsed();
    let ticks = tree_cpu_ticks(kamailio.pid()) - before;
    // Clock ticks are 1/100 s on Linux x86_64 (sysconf(_SC_CLK_TCK)).
    let micros = ticks as f64 * 10_000.0;
    eprintln!("  {module}: {ticks} ticks over {wall:.2?} for {requests}x{ops} ({statement})");
    Ok(micros)
}

/// A configuration that consumes `queue` on `exchange` (`no_ack` as given),
/// each event running a route that reads one field and counts itself; a
/// SIP request is answered with the count (`X-Routed`).
fn consume_config(module: &str, exchange: &str, queue: &str, no_ack: bool) -> String {
    let (module, extra) = module.split_once('\n').unwrap_or((module, ""));
    format!(
        r#"{global}
{extra}
loadmodule "textops.so"
loadmodule "htable.so"
modparam("htable", "htable", "bench=>size=4;initval=0;")
modparam("kazoo", "amqp_consumer_workers", 4)
event_route[kazoo:mod-init] {{
    kazoo_subscribe("{{'exchange': '{exchange}', 'type': 'topic', 'queue': '{queue}', 'routing': '#', 'queue-def': {{'durable': 1, 'auto_delete': 0}}, 'no_ack': {no_ack}}}");
}}
event_route[kazoo:consumer-event] {{
    $var(x) = $(kzE{{kz.json,Seq}});
    $var(n) = $shtinc(bench=>routed);
}}
request_route {{
    append_to_reply("X-Routed: $sht(bench=>routed)\r\n");
    sl_send_reply("200", "OK");
}}
"#,
        global = global_part(module, 2),
        no_ack = u8::from(no_ack),
    )
}

/// Kamailio CPU microseconds per consumed message, and messages per second:
/// `messages` events wait in the subscription's queue before Kamailio
/// starts, and are measured from its consumer's start until the queue is
/// empty (the module's own pace, not a publisher's).
fn measure_consume(module: &str, no_ack: bool, messages: u32) -> Result<(f64, f64), String> {
    let probe = AmqpProbe::connect(&system_broker_url()).map_err(|e| e.to_string())?;
    let exchange = unique_name("bench-consume");
    let queue = format!("{exchange}-q");
    let result = fill_and_drain(module, no_ack, messages, &probe, &exchange, &queue);
    probe.delete_exchange(&exchange);
    probe.delete_queue(&queue);
    result
}

fn fill_and_drain(
    module: &str,
    no_ack: bool,
    messages: u32,
    probe: &AmqpProbe,
    exchange: &str,
    queue: &str,
) -> Result<(f64, f64), String> {
    let failed = |e: kamailio_test::HarnessError| e.to_string();
    probe.declare_exchange(exchange, "topic").map_err(failed)?;
    probe.durable_queue(queue, exchange, "#").map_err(failed)?;
    for seq in 0..messages {
        let body = format!(
            "{{\"Event-Category\":\"bench\",\"Event-Name\":\"consume\",\"Seq\":\"{seq}\"}}"
        );
        probe
            .publish(exchange, &format!("bench.{seq}"), body.as_bytes())
            .map_err(failed)?;
    }
    let filled = Instant::now() + Duration::from_secs(60);
    while probe.queue_counts(queue).map_err(failed)?.0 < messages {
        if Instant::now() > filled {
            return Err("the queue was not filled".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kamailio =
        Kamailio::start(&consume_config(module, exchange, queue, no_ack)).map_err(failed)?;
    // From the moment the broker sees the consumer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, consumers) = probe.queue_counts(queue).map_err(failed)?;
        if consumers > 0 {
            break;
        }
        if Instant::now() > deadline {
            let log = kamailio.log();
            let why: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR"))
                .take(3)
                .collect();
            return Err(format!(
                "the subscription was not consumed: {}",
                why.join(" / ")
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let before = tree_cpu_ticks(kamailio.pid());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    // Until every event has run its route (the C module, with `no_ack`,
    // takes the whole queue into memory first).
    let client = SipClient::new().map_err(failed)?;
    loop {
        let reply = client
            .send_request(
                kamailio.port(),
                "MESSAGE",
                "count",
                &[],
                b"",
                Duration::from_secs(5),
            )
            .map_err(failed)?;
        let routed: u32 = reply
            .header("X-Routed")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if routed >= messages {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{routed} of {messages} routed"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = started.elapsed();
    let busy = tree_cpu_ticks(kamailio.pid()) - before;
    let settled = Instant::now() + Duration::from_secs(30);
    while system_queue_messages(queue)
        .map_err(failed)?
        .is_none_or(|m| m.ready + m.unacked > 0)
    {
        if Instant::now() > settled {
            return Err("deliveries left unacked".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same span idle: what Kamailio spends without traffic.
    let idle_from = tree_cpu_ticks(kamailio.pid());
    std::thread::sleep(wall);
    let idle = tree_cpu_ticks(kamailio.pid()) - idle_from;
    let ticks = busy.saturating_sub(idle);
    eprintln!(
        "  {module}: no_ack {no_ack}: {busy} ticks ({idle} idle) over {wall:.2?} for {messages} messages"
    );
    Ok((
        ticks as f64 * 10_000.0 / f64::from(messages),
        f64::from(messages) / wall.as_secs_f64(),
    ))
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This module's escape hatches to its previous paths: the parameters set
/// to 0 (each on top of the ones before it on the same path), and the load
/// paths they change (measured there only).
const ESCAPE_HATCHES: [(&[&str], &[load::Path]); 3] = [
    (&["amqp_direct"], &[load::Path::Publish, load::Path::Query]),
    (&["amqp_worker_replies"], &[load::Path::AsyncQuery]),
    (
        &["amqp_worker_replies", "amqp_native_client"],
        &[load::Path::AsyncQuery],
    ),
];

/// The load part (see `load`): every path, this module (by default and
/// with each of its [`ESCAPE_HATCHES`] at 0) and the C module in turn;
/// first as fast as `--clients` clients go, then at `--fixed-rate`
/// requests per second (latency).
fn load_table(modules: &[(&str, String)]) {
    let seconds = arg("--load", 10);
    if seconds == 0 {
        return;
    }
    let clients = arg("--clients", 32);
    let fixed_rate = arg("--fixed-rate", 1000);
    // (row name, global part, the paths measured: None for all)
    let mut variants: Vec<(String, String, Option<&[load::Path]>)> = Vec::new();
    for (name, module) in modules {
        let global = global_part(module, 4);
        if *name == "rust" {
            variants.push((name.to_string(), global.clone(), None));
            for (params, paths) in ESCAPE_HATCHES {
                let label: Vec<String> = params.iter().map(|p| format!("{p} 0")).collect();
                let set: String = params
                    .iter()
                    .map(|p| format!("\nmodparam(\"kazoo\", \"{p}\", 0)"))
                    .collect();
                variants.push((
                    format!("{name}, {}", label.join(", ")),
                    format!("{global}{set}"),
                    Some(paths),
                ));
            }
        } else {
            variants.push((name.to_string(), global, None));
        }
    }
    // `--paths publish,query`: only these (nothing, stateful, publish, query,
    // async).
    let only: Option<String> = std::env::args().skip_while(|a| a != "--paths").nth(1);
    let span = Duration::from_secs(seconds.into());
    for (title, pace) in [
        (
            format!("as fast as {clients} clients go"),
            load::Pace {
                clients,
                rate: None,
            },
        ),
        (
            format!("at {fixed_rate} requests/s"),
            load::Pace {
                clients,
                rate: Some(fixed_rate),
            },
        ),
    ] {
        println!("\nUnder load, {title}:\n");
        println!("{}", load::HEADER);
        for path in load::Path::ALL {
            if only
                .as_ref()
                .is_some_and(|o| !o.split(',').any(|p| p == path.user()))
            {
                continue;
            }
            // At full speed, tm's finished transactions (kept 0.5 s) fill
            // shared memory: the stateful path is measured at the fixed rate.
            if path == load::Path::Stateful && pace.rate.is_none() {
                continue;
            }
            for (name, global, paths) in &variants {
                if paths.is_some_and(|paths| !paths.contains(&path)) {
                    // The same code as "rust" for the other paths.
                    continue;
                }
                eprintln!("load ({title}): {}, {name}", path.name());
                let result = load::measure(global, path, pace, span);
                load::print_row(&format!("{}, {name}", path.name()), &result);
            }
            if pace.rate.is_none() && matches!(path, load::Path::Publish | load::Path::Query) {
                eprintln!("load: {}, broker alone", path.name());
                let result = load::measure_broker_alone(path, 4, span);
                load::print_row(
                    &format!("{}, broker alone (4 requesters, no Kamailio)", path.name()),
                    &result,
                );
            }
        }
    }
    println!(
        "\n{clients} SIP clients, {seconds} s per row (after 1 s of warm-up); children=4; a 300-byte payload; CPU and context switches of every Kamailio process and thread, per request."
    );
}

/// The memory part (see `memory`): `--memory N` operations (default
/// 1 000 000, 0 to skip) on each module in turn.
fn memory_table(modules: &[(&str, String)]) {
    let operations = arg("--memory", 1_000_000);
    if operations == 0 {
        return;
    }
    let globals: Vec<(&str, String)> = modules
        .iter()
        .map(|(name, module)| (*name, global_part(module, 4)))
        .collect();
    memory::memory_table(&globals, operations.into(), arg("--clients", 32));
}

fn main() {
    let requests = arg("--requests", 400);
    let ops = arg("--ops", 200);
    let ours = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/libkazoo.so");
    if !ours.exists() {
        eprintln!("build the module first: cargo build --release -p kazoo");
        std::process::exit(2);
    }
    let ours = ours.canonicalize().unwrap().display().to_string();
    let mut modules = vec![("rust", ours)];
    if std::path::Path::new(C_MODULE).exists() {
        modules.push(("C", C_MODULE.to_string()));
    } else {
        eprintln!("no C module at {C_MODULE} (Debian package kamailio-kazoo-modules): Rust only");
    }
    if std::env::args().any(|a| a == "--load-only") {
        load_table(&modules);
        return;
    }
    if std::env::args().any(|a| a == "--memory-only") {
        memory_table(&modules);
        return;
    }
    let total_ops = f64::from(requests) * f64::from(ops);
    let consume_only = std::env::args().any(|a| a == "--consume-only");
    let operations = if consume_only { &[][..] } else { OPERATIONS };
    let mut table: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    let mut baseline = vec![0.0; modules.len()];
    for (name, statement) in operations {
        eprintln!("{name}");
        let mut row = Vec::new();
        for (i, (_, module)) in modules.iter().enumerate() {
            match measure(module, statement, requests, ops) {
                Ok(micros) if statement.is_empty() => {
                    baseline[i] = micros;
                    row.push(Some(micros / total_ops));
                }
                Ok(micros) => row.push(Some(((micros - baseline[i]) / total_ops).max(0.0))),
                Err(e) => {
                    eprintln!("  {module}: failed: {e}");
                    row.push(None);
                }
            }
        }
        table.push((name.to_string(), row));
    }
    println!();
    print!("{:<30}", "Kamailio CPU µs per operation");
    for (name, _) in &modules {
        print!("{name:>10}");
    }
    if modules.len() == 2 {
        print!("{:>14}", "rust / C");
    }
    println!();
    for (name, row) in &table {
        print!("{name:<30}");
        for cell in row {
            match cell {
                Some(v) => print!("{v:>10.2}"),
                None => print!("{:>10}", "failed"),
            }
        }
        if let [Some(r), Some(c)] = row.as_slice() {
            if *c > 0.0 {
                print!("{:>14.2}", r / c);
            }
        }
        println!();
    }
    println!(
        "\n{requests} requests x {ops} operations; baseline subtracted; CPU of all Kamailio processes."
    );

    load_table(&modules);
    memory_table(&modules);

    let messages = arg("--consume", 20_000);
    let consume_runs = arg("--consume-runs", 3).max(1);
    if messages == 0 {
        return;
    }
    // This module with its previous consuming client too (a module path
    // and, after a line break, parameters for `consume_config`).
    let mut consumers: Vec<(String, String)> = Vec::new();
    for (name, module) in &modules {
        consumers.push((name.to_string(), module.clone()));
        if *name == "rust" {
            // Through the AMQP process, on its own client and on lapin.
            let through_amqp_process = "modparam(\"kazoo\", \"amqp_worker_consume\", 0)";
            consumers.push((
                "rust, worker_consume 0".into(),
                format!("{module}\n{through_amqp_process}"),
            ));
            consumers.push((
                "rust, native 0".into(),
                format!(
                    "{module}\n{through_amqp_process}\nmodparam(\"kazoo\", \"amqp_native_client\", 0)"
                ),
            ));
        }
    }
    // `--baseline PATH`: another build of this module (the one before a
    // change), in its own column, taking turns with the others.
    if let Some(path) = std::env::args().skip_while(|a| a != "--baseline").nth(1) {
        consumers.push(("baseline".into(), path));
    }
    // `--consume-with 'rust;C'` keeps only the named columns.
    if let Some(names) = std::env::args()
        .skip_while(|a| a != "--consume-with")
        .nth(1)
    {
        consumers.retain(|(name, _)| names.split(';').any(|n| n == name));
    }
    println!();
    print!("{:<30}", "consume: µs per message (msg/s)");
    for (name, _) in &consumers {
        print!("{name:>24}");
    }
    println!();
    for no_ack in [true, false] {
        eprintln!("consume, no_ack {no_ack}");
        print!("{:<30}", format!("consume, no_ack {}", u8::from(no_ack)));
        // The modules take turns, run after run; each shows its median run.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new(); consumers.len()];
        for _ in 0..consume_runs {
            for ((_, module), runs) in consumers.iter().zip(&mut runs) {
                match measure_consume(module, no_ack, messages) {
                    Ok(run) => runs.push(run),
                    Err(e) => eprintln!("  {module}: failed: {e}"),
                }
            }
        }
        for mut runs in runs {
            runs.sort_by(|a, b| a.0.total_cmp(&b.0));
            match runs.get(runs.len() / 2) {
                Some((micros, rate)) if runs.len() == consume_runs as usize => {
                    print!("{:>24}", format!("{micros:.1} ({rate:.0}/s)"))
                }
                _ => print!("{:>24}", "failed"),
            }
        }
        println!();
    }
    println!(
        "\n{messages} messages waiting in the queue before Kamailio starts; the route reads one field; the median of {consume_runs} runs."
    );
}
