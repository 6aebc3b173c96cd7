//! Who may talk to the AMQP process: only this Kamailio's own processes.
//! A process of the same user that is not one of them (here, the test
//! itself) is refused; Kamailio's processes still work when Kamailio drops
//! its privileges (`-u`): the AMQP process compares a peer's uid with its
//! own effective uid.
use crate::common;

use std::time::{Duration, Instant};

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{system_broker_url, unique_name, AmqpProbe, Kamailio};
use kazoo_engine::ipc::{Request, Requester};

const ROUTES: &str = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    kazoo_publish("$(hdr(X-A){s.decode.hexa})", "ipc.test", "{'Event-Category':'ipc'}");
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

/// The IPC socket name of the Kamailio whose main process is `pid`.
fn socket_name(pid: u32) -> String {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let prefix = format!("@kazoo-{pid}-");
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(7))
        .find(|path| path.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}* socket in /proc/net/unix"))[1..]
        .to_string()
}

#[test]
fn a_process_that_is_not_kamailios_is_refused() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzipc");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let (config, _node) = amqp_cfg(&system_broker_url(), "", ROUTES);
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    let name = socket_name(proxy.kamailio.pid());
    let mut foreign = Requester::new(&name);
    let refused = foreign.call(Request::Status, Instant::now() + Duration::from_secs(2));
    assert!(refused.is_err(), "a foreign process got an answer");
    let status: serde_json::Value =
        serde_json::from_str(proxy.kamcmd(&["kazoo.status"]).trim()).unwrap();
    assert_eq!(status["ipc"]["refused"], 1, "{status}");
    // Kamailio's own processes: a SIP worker and the RPC process.
    assert_eq!(int(&proxy.call("ipc", &[exchange.as_bytes()]), "X-RC"), 1);
    assert!(proxy.kamcmd(&["kazoo.status"]).contains("\"brokers\""));
    probe.delete_exchange(&exchange);
}

#[test]
fn kamailio_running_as_another_user_still_reaches_the_amqp_process() {
    // Only root can use `-u`.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    if euid != "0" {
        eprintln!("skipped: needs root to run Kamailio with -u nobody");
        return;
    }
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzipc-user");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let (config, _node) = amqp_cfg(&system_broker_url(), "", ROUTES);
    let kamailio = Kamailio::builder()
        .arg("-u")
        .arg("nobody")
        .arg("-g")
        .arg("nogroup")
        .start(&config)
        .unwrap_or_else(|e| panic!("kamailio -u nobody: {e}"));
    let proxy = Proxy::with(kamailio);
    proxy.wait_connected(1, 1);
    assert_eq!(int(&proxy.call("ipc", &[exchange.as_bytes()]), "X-RC"), 1);
    probe.delete_exchange(&exchange);
}
