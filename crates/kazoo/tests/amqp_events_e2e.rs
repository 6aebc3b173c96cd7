//! What configurations written for 2600hz's builds of the module use, through
//! a running Kamailio and RabbitMQ: `$knode`, the numeric flags argument
//! (2048 publishes `mandatory`), the returned-message event route, the
//! `connection-error` route raised on every failed login, and the
//! `listener-zone-available` / `-unavailable` routes.
//!
//! Each route writes what it saw on a log line of its own (`RETURNED ...`,
//! `CONN-ERROR ...`, `ZONE-UP ...`): the tests read what the script recorded.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, int, result, Proxy};
use kamailio_test::{msg_id_of, system_broker_url, unique_name, AmqpProbe, RabbitNode, SipReply};

const FLAG_ROUTES: &str = r#"
event_route[kazoo:consumer-event-amqp-error-message-returned]
{
    xlog("L_INFO", "RETURNED rk=$kzRK code=$(kzE{kz.json,Error-Code}) reason=$(kzE{kz.json,Error-Reason}) original=$(kzE{kz.json,Original-Event-Category})/$(kzE{kz.json,Original-Event-Name}) tag=$(kzE{kz.json,Tag}) zone=$(kzE{kz.json,AMQP-Broker-Zone})\n");
}

onreply_route[KZ_OK]
{
    xlog("L_INFO", "ASYNC-ANSWER $(kzR{kz.json,Answer})\n");
    t_reply("200", "ASYNC OK");
}

failure_route[KZ_ERR]
{
    t_reply("503", "ASYNC ERR");
}

request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(ex) = $(hdr(X-A){s.decode.hexa});
    $var(rk) = $(hdr(X-B){s.decode.hexa});
    $var(pl) = $(hdr(X-C){s.decode.hexa});
    $var(kz_timeout) = 2000;
    $var(res) = "UNSET";
    if ($rU == "knode") {
        append_to_reply("X-Node: $(knode{s.encode.hexa})\r\n");
        sl_send_reply("200", "OK");
        exit;
    } else if ($rU == "pub-flags") {
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)", "$def(KZ_TEST_AMQP_FLAGS)");
    } else if ($rU == "pub-immediate") {
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)", "4096");
    } else if ($rU == "pub-headers") {
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)", "k=v");
    } else if ($rU == "pub-plain") {
        kazoo_publish("$var(ex)", "$var(rk)", "$var(pl)");
    } else if ($rU == "query-flags") {
        kazoo_query("$var(ex)", "$var(rk)", "$var(pl)", "$def(KZ_TEST_AMQP_FLAGS)");
    } else if ($rU == "query-target") {
        kazoo_query("$var(ex)", "$var(rk)", "$var(pl)", "$var(res)");
    } else if ($rU == "async-flags") {
        kazoo_async_query("$var(ex)", "$var(rk)", "$var(pl)", "KZ_OK", "KZ_ERR", "$def(KZ_TEST_AMQP_FLAGS)");
        append_to_reply("X-RC: $rc\r\n");
        sl_send_reply("500", "Not suspended");
        exit;
    }
    $var(rc) = $rc;
    append_to_reply("X-RC: $var(rc)\r\n");
    if ($kzR != $null) {
        append_to_reply("X-KzR: $(kzR{s.encode.hexa})\r\n");
    }
    append_to_reply("X-Res: $(var(res){s.encode.hexa})\r\n");
    sl_send_reply("200", "OK");
}
"#;

const FLAG_PARAMS: &str = "#!define KZ_TEST_AMQP_FLAGS 2048\n\
                           modparam(\"kazoo\", \"amqp_query_timeout_avp\", \"$var(kz_timeout)\")";

fn call(proxy: &Proxy, form: &str, exchange: &str, rk: &str, payload: &str) -> SipReply {
    proxy.call(
        form,
        &[exchange.as_bytes(), rk.as_bytes(), payload.as_bytes()],
    )
}

/// The log lines after `from` that contain `needle`, waiting up to `within`
/// for at least `count` of them.
fn lines_after(
    proxy: &Proxy,
    from: usize,
    needle: &str,
    count: usize,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let log = proxy.kamailio.log();
        let found: Vec<String> = log[from.min(log.len())..]
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if found.len() >= count || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn knode_the_flags_argument_and_returned_messages() {
    let url = system_broker_url();
    let probe = AmqpProbe::connect(&url).expect("probe");
    let exchange = unique_name("kzevents");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let captured = probe.capture(&exchange, "seen.#").unwrap();
    let responder = probe
        .responder(&exchange, "q.#", |request| {
            let id = msg_id_of(request);
            vec![(
                Duration::ZERO,
                format!("{{\"Msg-ID\":\"{id}\",\"Answer\":\"flags\"}}").into_bytes(),
            )]
        })
        .unwrap();
    let (config, node) = amqp_cfg(&url, FLAG_PARAMS, FLAG_ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);

    // $knode is the Node the module publishes.
    let knode = result(&proxy.call("knode", &[]), "X-Node").expect("$knode is set");
    assert_eq!(knode, format!("kamailio@{node}").into_bytes());

    // A numeric fourth argument is flags, not headers; 2048 is mandatory,
    // and a message that reaches a queue is confirmed as usual.
    let payload = "{'Event-Category':'directory','Event-Name':'reg_success','Tag':'one'}";
    let reply = call(&proxy, "pub-flags", &exchange, "seen.flags", payload);
    assert_eq!(int(&reply, "X-RC"), 1);
    let got = probe
        .get(&captured, Duration::from_secs(2))
        .unwrap()
        .expect("the flagged publish reached its queue");
    assert_eq!(got.headers, None, "flags sent as headers: {got:?}");
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["Node"].as_str().unwrap().as_bytes(), &knode[..]);
    // `k=v` keeps its upstream meaning.
    let reply = call(&proxy, "pub-headers", &exchange, "seen.headers", payload);
    assert_eq!(int(&reply, "X-RC"), 1);
    let got = probe
        .get(&captured, Duration::from_secs(2))
        .unwrap()
        .expect("the publish with headers reached its queue");
    assert_eq!(got.headers, Some(vec![("k".into(), 'S', "v".into())]));

    // Mandatory and nobody bound: -1 for the caller, and the returned
    // message goes to the returned-message event route.
    let from = proxy.kamailio.log().len();
    let started = Instant::now();
    let payload = "{'Event-Category':'directory','Event-Name':'reg_success','Tag':'two'}";
    let reply = call(&proxy, "pub-flags", &exchange, "nobody.flags", payload);
    assert_eq!(int(&reply, "X-RC"), -1);
    assert!(started.elapsed() < Duration::from_secs(1));
    let returned = lines_after(&proxy, from, "RETURNED ", 1, Duration::from_secs(5));
    assert_eq!(returned.len(), 1, "{}", proxy.kamailio.log());
    assert!(
        returned[0].contains(
            "RETURNED rk=nobody.flags code=312 reason=NO_ROUTE original=directory/reg_success tag=two zone=local"
        ),
        "{}",
        returned[0]
    );
    // Without the bit (no flags, or only bits without effect here), the
    // broker drops it and confirms, as upstream.
    let from = proxy.kamailio.log().len();
    for form in ["pub-plain", "pub-immediate"] {
        let reply = call(&proxy, form, &exchange, "nobody.plain", payload);
        assert_eq!(int(&reply, "X-RC"), 1, "{form}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(lines_after(&proxy, from, "RETURNED ", 1, Duration::ZERO).is_empty());

    // kazoo_query: a numeric fourth argument is flags; a variable name is
    // still the target.
    let query = "{'Event-Category':'q','Event-Name':'flags'}";
    let reply = call(&proxy, "query-flags", &exchange, "q.flags", query);
    assert_eq!(int(&reply, "X-RC"), 1, "{}", proxy.kamailio.log());
    let kz_r = String::from_utf8(result(&reply, "X-KzR").unwrap()).unwrap();
    assert!(kz_r.contains("\"Answer\": \"flags\""), "{kz_r}");
    assert_eq!(result(&reply, "X-Res").unwrap(), b"UNSET");
    let reply = call(&proxy, "query-target", &exchange, "q.target", query);
    assert_eq!(int(&reply, "X-RC"), 1);
    let res = String::from_utf8(result(&reply, "X-Res").unwrap()).unwrap();
    assert!(res.contains("\"Answer\": \"flags\""), "{res}");
    // A mandatory query nobody takes fails at once, not after its timeout.
    let started = Instant::now();
    let reply = call(&proxy, "query-flags", &exchange, "nobody.query", query);
    assert_eq!(int(&reply, "X-RC"), -1);
    assert!(started.elapsed() < Duration::from_secs(1));

    // kazoo_async_query's sixth argument: answered in the onreply route, and
    // a mandatory one nobody takes goes to the failure route at once.
    let from = proxy.kamailio.log().len();
    let reply = call(&proxy, "async-flags", &exchange, "q.async", query);
    assert_eq!(reply.code, 200, "{reply:?}");
    let answered = lines_after(&proxy, from, "ASYNC-ANSWER", 1, Duration::from_secs(2));
    assert!(answered[0].ends_with("ASYNC-ANSWER flags"), "{answered:?}");
    let started = Instant::now();
    let reply = call(&proxy, "async-flags", &exchange, "nobody.async", query);
    assert_eq!(reply.code, 503, "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    proxy.assert_alive();
    drop(responder);
    probe.delete_exchange(&exchange);
}

const CONNECTION_ROUTES: &str = r#"
event_route[kazoo:consumer-event-connection-error]
{
    xlog("L_INFO", "CONN-ERROR zone=$(kzE{kz.json,zone}) host=$(kzE{kz.json,host}) key=$(kzE{kz.json,Cat_Key}) message=$(kzE{kz.json,message}) rk=$kzRK\n");
}

event_route[kazoo:consumer-event-connection-closed]
{
    xlog("L_INFO", "CONN-CLOSED zone=$(kzE{kz.json,zone})\n");
}

request_route {
    sl_send_reply("200", "OK");
}
"#;

#[test]
fn a_refused_login_raises_connection_error_and_closed_on_every_retry() {
    let url = system_broker_url();
    let password = "wrong-password-5531";
    let params = format!(
        "modparam(\"kazoo\", \"amqp_consumer_event_key\", \"Cat_Key\")\n\
         modparam(\"kazoo\", \"amqp_consumer_event_subkey\", \"Name_Key\")\n\
         modparam(\"kazoo\", \"amqp_connection\", \"zone=badz;amqp://guest:{password}@127.0.0.1:5672\")"
    );
    let (config, _node) = amqp_cfg(&url, &params, CONNECTION_ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    // Attempts of each of broker 2's two connections: 100 ms doubling to
    // 5 s, so at least three failed attempts each within 4 s.
    let errors = lines_after(
        &proxy,
        0,
        "CONN-ERROR zone=badz",
        6,
        Duration::from_secs(10),
    );
    assert!(errors.len() >= 6, "{}", proxy.kamailio.log());
    for line in &errors {
        assert!(
            line.contains("host=127.0.0.1 key=connection message=")
                && line.contains("403 ACCESS_REFUSED")
                && line.contains("rk=<null>"),
            "{line}"
        );
        assert!(!line.contains(password), "{line}");
    }
    let closed = lines_after(
        &proxy,
        0,
        "CONN-CLOSED zone=badz",
        6,
        Duration::from_secs(5),
    );
    assert!(closed.len() >= 6, "{}", proxy.kamailio.log());
    // The working broker raises neither.
    let log = proxy.kamailio.log();
    assert!(!log.contains("CONN-ERROR zone=local"), "{log}");
    proxy.assert_alive();
}

const ZONE_ROUTES: &str = r#"
event_route[kazoo:mod-init]
{
    kazoo_subscribe("{'name': 'kzev-federated', 'exchange': '{{EXCHANGE}}', 'type': 'topic', 'queue': '{{QUEUE}}-fed', 'routing': '#', 'federate': 1}");
    kazoo_subscribe("{'exchange': '{{EXCHANGE}}', 'type': 'topic', 'queue': '{{QUEUE}}-local', 'routing': '#'}");
}

event_route[kazoo:consumer-event-connection-listener-zone-available]
{
    xlog("L_INFO", "ZONE-UP name=$(kzE{kz.json,name}) zone=$(kzE{kz.json,zone}) cat=$(kzE{kz.json,Event-Category})\n");
}

event_route[kazoo:consumer-event-connection-listener-zone-unavailable]
{
    xlog("L_INFO", "ZONE-DOWN name=$(kzE{kz.json,name}) zone=$(kzE{kz.json,zone})\n");
}

request_route {
    sl_send_reply("200", "OK");
}
"#;

/// How many log lines after `from` contain `needle`, once `count` of them
/// appeared or `within` passed.
fn count_after(proxy: &Proxy, from: usize, needle: &str, count: usize, within: Duration) -> usize {
    lines_after(proxy, from, needle, count, within).len()
}

#[test]
fn listener_zone_events_follow_the_first_and_last_consuming_connection() {
    let mut node = RabbitNode::start().expect("private RabbitMQ node");
    let exchange = unique_name("kzzone");
    let queue = unique_name("kzzone-q");
    let routes = ZONE_ROUTES
        .replace("{{EXCHANGE}}", &exchange)
        .replace("{{QUEUE}}", &queue);
    let params = format!(
        "modparam(\"kazoo\", \"amqp_consumer_processes\", 2)\n\
         modparam(\"kazoo\", \"amqp_connection\", \"zone=remote;{}\")",
        node.url()
    );
    let (config, _node) = amqp_cfg(&system_broker_url(), &params, &routes);
    let proxy = Proxy::start(&config);
    let wait = Duration::from_secs(15);
    let fed_local = "ZONE-UP name=kzev-federated zone=local cat=connection";
    let fed_remote = "ZONE-UP name=kzev-federated zone=remote cat=connection";
    let plain_local = format!("ZONE-UP name={queue}-local zone=local cat=connection");
    assert_eq!(count_after(&proxy, 0, fed_local, 1, wait), 1);
    assert_eq!(count_after(&proxy, 0, fed_remote, 1, wait), 1);
    assert_eq!(count_after(&proxy, 0, &plain_local, 1, wait), 1);
    // Both consuming connections of the primary zone are up: the zone was
    // announced once; the unfederated subscription is not consumed remotely.
    proxy.wait_connections(1, &["consumer 0", "consumer 1"], 1);
    std::thread::sleep(Duration::from_millis(500));
    let log = proxy.kamailio.log();
    assert_eq!(log.matches(fed_local).count(), 1, "{log}");
    assert!(
        !log.contains(&format!("name={queue}-local zone=remote")),
        "{log}"
    );
    assert!(!log.contains("ZONE-DOWN"), "{log}");

    // The remote zone loses its only consuming connection, then gets it back.
    let from = log.len();
    node.stop().unwrap();
    let down = lines_after(&proxy, from, "ZONE-DOWN", 1, wait);
    assert_eq!(down.len(), 1, "{}", proxy.kamailio.log());
    assert!(
        down[0].contains("ZONE-DOWN name=kzev-federated zone=remote"),
        "{}",
        down[0]
    );
    node.start_again().unwrap();
    assert_eq!(
        count_after(&proxy, from, fed_remote, 1, Duration::from_secs(30)),
        1
    );
    let log = proxy.kamailio.log();
    assert_eq!(log[from..].matches("ZONE-DOWN").count(), 1, "{log}");
    assert!(!log[from..].contains("zone=local"), "{log}");
    proxy.assert_alive();
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    probe.delete_exchange(&exchange);
}
