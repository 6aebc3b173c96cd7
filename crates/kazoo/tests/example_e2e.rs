//! `examples/kazoo.cfg`, the configuration `scripts/demo` runs, works as
//! its comments say: loaded exactly as written (only its port and the
//! module's location changed), with the local RabbitMQ it records its
//! subscriptions, publishes (confirmed) and consumes, answers its own
//! queries through the targeted exchange, and answers the demo's requests.
use crate::common;

use common::Proxy;
use kamailio_test::SipReply;

fn example_config() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kazoo.cfg");
    let text = std::fs::read_to_string(&path).expect("examples/kazoo.cfg");
    assert!(text.contains("loadmodule \"kazoo.so\"") && text.contains("127.0.0.1:25060"));
    text.replace("loadmodule \"kazoo.so\"", "loadmodule \"{{MODULE}}\"")
        .replace("loadmodule \"", "loadmodule \"{{MPATH}}/")
        .replace("{{MPATH}}/{{MODULE}}", "{{MODULE}}")
        .replace("127.0.0.1:25060", "127.0.0.1:{{PORT}}")
}

fn send(proxy: &Proxy, user: &str, path: Option<&str>, body: &str) -> SipReply {
    let headers: Vec<(&str, &str)> = path.map(|p| vec![("X-Path", p)]).unwrap_or_default();
    proxy
        .client
        .send_request(
            proxy.kamailio.port(),
            "MESSAGE",
            user,
            &headers,
            body.as_bytes(),
            common::TIMEOUT,
        )
        .expect("reply")
}

#[test]
fn the_example_configuration_does_what_it_says() {
    let proxy = Proxy::start(&example_config());
    let log = proxy.kamailio.log();
    assert!(
        log.contains("2 subscription(s) recorded at start-up"),
        "{log}"
    );

    let payload = "{'Event-Category': 'presence', 'Event-Name': 'update', \
                   'Channels': [{'switch_url': 'sip:10.0.0.1:5060'}, {'switch_url': 'sip:10.0.0.2:5060'}]}";
    let reply = send(&proxy, "json", Some("Channels[1].switch_url"), payload);
    assert_eq!(reply.header("X-Value"), Some("sip:10.0.0.2:5060"));
    assert_eq!(reply.header("X-Kz-Json"), Some("sip:10.0.0.2:5060"));
    let reply = send(&proxy, "json", Some("Channels"), payload);
    assert_eq!(reply.header("X-Count"), Some("2"));
    let reply = send(&proxy, "json", Some("Channels[0]"), payload);
    assert_eq!(reply.headers_named("X-Key"), ["switch_url"]);
    let reply = send(&proxy, "json", Some("missing"), payload);
    assert_eq!(reply.header("X-Value"), Some("<null>"));
    assert_eq!(reply.header("X-Kz-Json"), Some(""));

    let reply = send(&proxy, "encode", None, "abc.def@host 1");
    assert_eq!(reply.header("X-Encoded"), Some("abc%2Edef%40host+1"));
    assert_eq!(
        reply.header("X-Routing-Key"),
        Some("call.status_req.abc%2Edef%40host+1")
    );

    let reply = send(&proxy, "json", Some("a..b"), payload);
    assert_eq!(reply.code, 200);
    proxy.assert_alive();
}
