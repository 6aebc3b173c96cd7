//! Consuming through a running Kamailio and a real RabbitMQ: subscriptions
//! made in `kazoo:mod-init` declare what they say; every message of
//! `vectors/routes.jsonl` runs the first defined of its candidate event
//! routes with the C module's `$kzE` and `$kzRK`; connection events arrive;
//! with `no_ack: 0` a message stays unacked while its route runs and is
//! redelivered when the worker dies; bad messages never take Kamailio down.
//! The same with the consumer workers consuming the subscriptions
//! themselves (`amqp_worker_consume 1`).
use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{amqp_cfg, Proxy};
use kamailio_test::{
    system_broker_url, system_queue_messages, system_rabbitmqctl, unique_name, AmqpProbe,
    QueueMessages,
};

/// The four subscriptions the vectors were captured with (names made
/// unique), then one that acks after its route (queue kept when consumers
/// go, so a redelivery can be seen).
struct Names {
    exchanges: [String; 5],
    queues: [String; 5],
}

impl Names {
    fn new() -> Names {
        let exchanges = std::array::from_fn(|i| unique_name(&format!("kzev{}", i + 1)));
        let queues = std::array::from_fn(|i| unique_name(&format!("kzev{}-q", i + 1)));
        Names { exchanges, queues }
    }

    fn mod_init(&self) -> String {
        let [e1, e2, e3, e4, e5] = &self.exchanges;
        let [q1, q2, q3, q4, q5] = &self.queues;
        format!(
            r##"event_route[kazoo:mod-init]
{{
    kazoo_subscribe("{{'exchange': '{e1}', 'type': 'topic', 'queue': '{q1}', 'routing': ['#', 'extra.key']}}");
    kazoo_subscribe("{{'exchange': '{e2}', 'type': 'topic', 'queue': '{q2}', 'routing': '#', 'event_key': 'My_Key', 'event_subkey': 'Sub_Key'}}");
    kazoo_subscribe("{{'exchange': '{e3}', 'type': 'topic', 'queue': '{q3}', 'routing': '#', 'event_key': 'K3'}}");
    kazoo_subscribe("{e4}", "topic", "{q4}", "#");
    kazoo_subscribe("{{'exchange': '{e5}', 'type': 'topic', 'queue': '{q5}', 'routing': '#', 'no_ack': 0, 'auto_delete': 0, 'event_key': 'Slow', 'event_subkey': 'Ack'}}");
}}
"##
        )
    }
}

/// The subscription of a vector row: its index in [`Names`].
fn subscription_index(row: &serde_json::Value) -> usize {
    let sub = &row["subscription"];
    match (sub["event_key"].as_str(), sub["event_subkey"].as_str()) {
        (Some("My_Key"), _) => 1,
        (Some("K3"), _) => 2,
        (None, Some("Only_Sub")) => 3,
        _ => 0,
    }
}

fn vector_rows() -> Vec<serde_json::Value> {
    kamailio_test::jsonl("routes.jsonl")
        .into_iter()
        .filter(|row: &serde_json::Value| row["body"].is_string())
        .collect()
}

/// The routes this configuration defines: for every row its second
/// candidate when definable, else its fourth, and the catch-all: enough to
/// see the fallback order at work across rows.
fn defined_routes(rows: &[serde_json::Value]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    names.insert("kazoo:consumer-event".to_string());
    names.insert("kazoo:consumer-event-connection-open".to_string());
    for row in rows {
        let Some(candidates) = row["candidates"].as_array() else {
            continue;
        };
        let definable = row["definable_in_cfg"].as_array().unwrap();
        for i in [1, 3] {
            if definable[i].as_bool().unwrap() {
                names.insert(candidates[i].as_str().unwrap().to_string());
                break;
            }
        }
    }
    names
}

fn routes_cfg(names: &Names, defined: &BTreeSet<String>) -> String {
    let mut cfg = names.mod_init();
    for name in defined {
        cfg.push_str(&format!(
            "event_route[{name}]\n{{\n    xlog(\"L_INFO\", \"ROUTE {name} rk=$kzRK e=$kzE\\n\");\n}}\n"
        ));
    }
    cfg.push_str(
        r#"event_route[kazoo:consumer-event-slow-ack]
{
    xlog("L_INFO", "SLOW-START $pp $kzE\n");
    # Long enough for a rabbitmqctl call (an Erlang VM boot) on a busy machine.
    usleep(5000000);
    xlog("L_INFO", "SLOW-DONE\n");
}
request_route {
    sl_send_reply("200", "OK");
}
"#,
    );
    cfg
}

struct Bed {
    proxy: Proxy,
    names: Names,
    probe: AmqpProbe,
}

/// The module's parameter that has the consumer workers consume the
/// subscriptions themselves (its default, said here for clarity).
const WORKERS_CONSUME: &str = "modparam(\"kazoo\", \"amqp_worker_consume\", 1)";

/// The parameters for who consumes: the workers (the default), or the
/// AMQP process.
fn consuming(workers_consume: bool) -> &'static str {
    if workers_consume {
        WORKERS_CONSUME
    } else {
        "modparam(\"kazoo\", \"amqp_worker_consume\", 0)"
    }
}

impl Bed {
    fn start(defined: &BTreeSet<String>) -> Bed {
        Bed::start_with(defined, "")
    }

    /// With further module parameters.
    fn start_with(defined: &BTreeSet<String>, params: &str) -> Bed {
        let names = Names::new();
        let (config, _node) = amqp_cfg(
            &system_broker_url(),
            &format!("loadmodule \"cfgutils.so\"\n{params}"),
            &routes_cfg(&names, defined),
        );
        let proxy = Proxy::start(&config);
        proxy.wait_connected(1, 1);
        let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
        proxy.wait_consumed(&probe, &names.queues);
        Bed {
            proxy,
            names,
            probe,
        }
    }

    fn wait_log(&self, needle: &str) {
        assert!(
            self.proxy
                .kamailio
                .wait_for_log(needle, Duration::from_secs(5)),
            "{needle} not in the log:\n{}",
            self.proxy.kamailio.log()
        );
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for e in &self.names.exchanges {
            self.probe.delete_exchange(e);
        }
        self.probe.delete_queue(&self.names.queues[4]);
    }
}

#[test]
fn messages_run_the_first_defined_route_with_the_c_modules_kz_e() {
    messages_run_their_routes(false);
}

#[test]
fn messages_consumed_by_the_workers_run_the_same_routes_with_the_same_kz_e() {
    messages_run_their_routes(true);
}

fn messages_run_their_routes(workers_consume: bool) {
    let rows = vector_rows();
    let defined = defined_routes(&rows);
    let bed = Bed::start_with(&defined, consuming(workers_consume));
    let mut checked = 0;
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let exchange = &bed.names.exchanges[subscription_index(row)];
        let routing_key = row["routing_key"].as_str().unwrap();
        let before = bed.proxy.kamailio.log().len();
        bed.probe
            .publish(
                exchange,
                routing_key,
                row["body"].as_str().unwrap().as_bytes(),
            )
            .unwrap();
        if row["dropped"].is_string() {
            bed.wait_log("dropping a message");
            continue;
        }
        let candidates: Vec<&str> = row["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let expected_route = candidates
            .iter()
            .find(|c| defined.contains(**c))
            .unwrap_or_else(|| panic!("{id}: no candidate defined"));
        let kz_e = row["kzE"].as_str().unwrap();
        let prefix = format!(
            "ROUTE {expected_route} rk={} e={}",
            row["kzRK"].as_str().unwrap(),
            kz_e.split("{{AMQP_RECEIVED}}").next().unwrap()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = bed.proxy.kamailio.log();
            if log[before.min(log.len())..].contains(&prefix) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: expected `{prefix}`\n{}",
                &log[before.min(log.len())..]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        checked += 1;
    }
    println!("{checked} consumed messages checked against the C module");
    assert!(checked > 20);
    bed.proxy.assert_alive();
}

#[test]
fn subscriptions_declare_what_they_say_and_connection_events_arrive() {
    let bed = Bed::start(&BTreeSet::from([
        "kazoo:consumer-event-connection-open".to_string()
    ]));
    let bindings = system_rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .unwrap();
    let [e1, _, _, e4, _] = &bed.names.exchanges;
    let [q1, _, _, q4, q5] = &bed.names.queues;
    for (source, queue, key) in [(e1, q1, "#"), (e1, q1, "extra.key"), (e4, q4, "#")] {
        assert!(
            bindings.lines().any(
                |l| l.split('\t').collect::<Vec<_>>() == [source.as_str(), queue.as_str(), key]
            ),
            "{source} -> {queue} ({key}) not bound:\n{bindings}"
        );
    }
    let queues = system_rabbitmqctl(&["list_queues", "name", "durable", "auto_delete"]).unwrap();
    let line = |q: &str| {
        queues
            .lines()
            .find(|l| l.starts_with(&format!("{q}\t")))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(line(q1), format!("{q1}\tfalse\ttrue"));
    assert_eq!(line(q5), format!("{q5}\tfalse\tfalse"));
    bed.wait_log(
        "ROUTE kazoo:consumer-event-connection-open rk=<null> e={ \"Event-Category\" : \"connection\", \"Event-Name\" : \"open\", \"host\" : \"127.0.0.1\", \"zone\" : \"local\" }",
    );
}

fn messages(queue: &str) -> QueueMessages {
    system_queue_messages(queue)
        .unwrap()
        .unwrap_or(QueueMessages {
            ready: 0,
            unacked: 0,
        })
}

fn unacked(queue: &str) -> u64 {
    messages(queue).unacked
}

fn ready(queue: &str) -> u64 {
    messages(queue).ready
}

#[test]
fn no_ack_zero_acks_after_the_route_and_redelivers_when_the_worker_dies() {
    acks_after_the_route_and_redelivers(false);
}

#[test]
fn a_worker_consuming_itself_acks_after_the_route_and_its_death_redelivers() {
    acks_after_the_route_and_redelivers(true);
}

fn acks_after_the_route_and_redelivers(workers_consume: bool) {
    let bed = Bed::start_with(&BTreeSet::new(), consuming(workers_consume));
    let (exchange, queue) = (&bed.names.exchanges[4], &bed.names.queues[4]);
    bed.probe
        .publish(exchange, "slow.one", b"{\"n\": 1}")
        .unwrap();
    bed.wait_log("SLOW-START");
    assert_eq!(unacked(queue), 1, "unacked while the route runs");
    bed.wait_log("SLOW-DONE");
    let deadline = Instant::now() + Duration::from_secs(3);
    while unacked(queue) != 0 {
        assert!(Instant::now() < deadline, "not acked after the route");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A worker dies in the middle of a route: Kamailio shuts down (as it does
    // for any dead child), the connection drops, the broker keeps the message.
    bed.probe
        .publish(exchange, "slow.two", b"{\"n\": 2}")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        let log = bed.proxy.kamailio.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("SLOW-START") && l.contains("\"n\": 2"))
        {
            let pid = line
                .split("SLOW-START ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            break pid.parse::<i32>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the second message did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY-free kill of a process this test's Kamailio forked.
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(queue) != 1 {
        assert!(Instant::now() < deadline, "the message was not requeued");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_messages_never_take_kamailio_down() {
    bad_messages_are_dropped(false);
}

#[test]
fn bad_messages_consumed_by_the_workers_never_take_kamailio_down() {
    bad_messages_are_dropped(true);
}

fn bad_messages_are_dropped(workers_consume: bool) {
    let bed = Bed::start_with(
        &BTreeSet::from(["kazoo:consumer-event".to_string()]),
        consuming(workers_consume),
    );
    let exchange = &bed.names.exchanges[0];
    let long_server_id = format!("{{\"Server-ID\": \"{}\"}}", "s".repeat(2000));
    let long_category = format!(
        "{{\"Event-Category\": \"{}\", \"Event-Name\": \"x\"}}",
        "c".repeat(600)
    );
    // These abort the C module's consumer (vectors/crashers.txt).
    for body in [
        "[1,2]",
        "\"str\"",
        "42",
        "",
        "not json",
        "null",
        &long_server_id,
        &long_category,
    ] {
        bed.probe.publish(exchange, "bad", body.as_bytes()).unwrap();
    }
    bed.probe
        .publish(exchange, "good", b"{\"after\": \"bad ones\"}")
        .unwrap();
    // Several workers route these at once, in any order, and their long
    // log lines may be interleaved: short needles.
    bed.wait_log("\"after\": \"bad ones\"");
    bed.wait_log(&format!(
        "\"Server-ID\": \"consumer:\\/\\/1\\/{}",
        "s".repeat(40)
    ));
    bed.wait_log(&format!("\"Event-Category\": \"{}", "c".repeat(40)));
    bed.proxy.assert_alive();
}

/// With `amqp_worker_consume 1` every consumer worker consumes each
/// subscription itself (the broker spreads the deliveries), and the AMQP
/// process does not: 8 consumers per queue (the default
/// `amqp_consumer_workers`), one per worker's connection, not 9; its
/// deliveries never cross the AMQP process (its `kazoo.status` counts
/// none); and every message published runs its route once.
#[test]
fn each_worker_consumes_the_subscriptions_itself() {
    let bed = Bed::start_with(
        &BTreeSet::from(["kazoo:consumer-event".to_string()]),
        WORKERS_CONSUME,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for queue in &bed.names.queues {
        loop {
            let consumers = bed.probe.queue_counts(queue).unwrap().1;
            if consumers == 8 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{queue}: {consumers} consumers, not 8\n{}",
                bed.proxy.kamailio.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let connections = system_rabbitmqctl(&["list_connections", "client_properties"]).unwrap();
    let node = connections
        .lines()
        .filter(|l| l.contains("consumer worker"))
        .count();
    assert!(node >= 8, "8 workers' connections:\n{connections}");
    let exchange = &bed.names.exchanges[0];
    for n in 0..200 {
        bed.probe
            .publish(
                exchange,
                "spread",
                format!("{{\"spread\": {n}}}").as_bytes(),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = bed.proxy.kamailio.log();
        let routed = (0..200)
            .filter(|n| log.contains(&format!("\"spread\": {n},")))
            .count();
        if routed == 200 {
            // Once each (counted in the text: the workers' log lines may
            // be interleaved), by more than one worker.
            assert_eq!(
                log.matches("\"spread\": ").count(),
                200,
                "each message routed once"
            );
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("\"spread\": ")).collect();
            // Kamailio's log lines start with ` <rank>(<pid>) `.
            let pids: BTreeSet<&str> = lines
                .iter()
                .filter_map(|l| l.split('(').nth(1)?.split(')').next())
                .collect();
            assert!(pids.len() > 1, "one worker took everything: {pids:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{routed} of 200 routed:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status: serde_json::Value =
        serde_json::from_str(bed.proxy.kamcmd(&["kazoo.status"]).trim()).unwrap();
    assert_eq!(status["consumed"]["delivered"], 0, "{status}");
    assert!(
        status["consumed"]["by_workers"].as_u64().unwrap() >= 200,
        "{status}"
    );
    let subscriptions: serde_json::Value =
        serde_json::from_str(bed.proxy.kamcmd(&["kazoo.subscriptions"]).trim()).unwrap();
    let listed = subscriptions.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{subscriptions}");
    assert!(
        listed.iter().all(|s| s["in_workers"] == true),
        "{subscriptions}"
    );
    bed.proxy.assert_alive();
}
