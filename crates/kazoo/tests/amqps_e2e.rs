//! `amqps://` brokers through a running Kamailio: with the test CA the module
//! connects and publishes; a certificate from another CA, or one that does
//! not name the host, is refused with a clear reason in the log (and the
//! script gets -1 at once); `amqps_verify_hostname 0` and
//! `amqps_verify_peer 0` relax exactly their check.
use crate::common;

use std::time::Duration;

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{unique_name, AmqpProbe, RabbitNode, TestPki};

const ROUTES: &str = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    kazoo_publish("$(hdr(X-A){s.decode.hexa})", "tls.test", "{'Event-Category':'tls'}");
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

fn start(url: &str, tls_params: &str) -> Proxy {
    let (config, _node) = amqp_cfg(url, tls_params, ROUTES);
    Proxy::start(&config)
}

fn publish(proxy: &Proxy, exchange: &str) -> i64 {
    int(&proxy.call("tls", &[exchange.as_bytes()]), "X-RC")
}

#[test]
fn amqps_connects_with_the_right_ca_and_refuses_the_wrong_one() {
    let pki = TestPki::generate();
    let node = RabbitNode::start_with_tls(
        &pki.path("ca1.pem"),
        &pki.path("server.pem"),
        &pki.path("server.key"),
    )
    .expect("private RabbitMQ node with TLS");
    let port = node.amqps_port().expect("TLS port");
    let exchange = unique_name("kztls");
    let probe = AmqpProbe::connect(&node.url()).expect("probe");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let queue = probe.capture(&exchange, "#").unwrap();
    let ca = |file: &str| {
        format!(
            "modparam(\"kazoo\", \"amqps_ca_cert\", \"{}\")",
            pki.path(file).display()
        )
    };
    let by_name = format!("amqps://guest:guest@localhost:{port}");
    let by_address = format!("amqps://guest:guest@127.0.0.1:{port}");

    // The right CA: connected, publishes confirmed over TLS.
    let proxy = start(&by_name, &ca("ca1.pem"));
    proxy.wait_connected(1, 1);
    assert_eq!(publish(&proxy, &exchange), 1);
    let got = probe
        .get(&queue, Duration::from_secs(2))
        .unwrap()
        .expect("message over TLS");
    assert_eq!(got.routing_key, "tls.test");
    drop(proxy);

    // The right CA plus a client certificate.
    let client = format!(
        "{}\nmodparam(\"kazoo\", \"amqps_cert\", \"{}\")\nmodparam(\"kazoo\", \"amqps_key\", \"{}\")",
        ca("ca1.pem"),
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let proxy = start(&by_name, &client);
    proxy.wait_connected(1, 1);
    assert_eq!(publish(&proxy, &exchange), 1);
    drop(proxy);

    // Another CA: refused, said so, and the script is told at once.
    let proxy = start(&by_name, &ca("ca2.pem"));
    assert!(
        proxy
            .kamailio
            .wait_for_log("UnknownIssuer", Duration::from_secs(10)),
        "{}",
        proxy.kamailio.log()
    );
    assert_eq!(publish(&proxy, &exchange), -1);
    assert!(
        !proxy.kamailio.log().contains("guest:guest"),
        "credentials in the log"
    );
    drop(proxy);
    // ... unless peer verification is off.
    let proxy = start(
        &by_name,
        &format!(
            "{}\nmodparam(\"kazoo\", \"amqps_verify_peer\", 0)",
            ca("ca2.pem")
        ),
    );
    proxy.wait_connected(1, 1);
    assert_eq!(publish(&proxy, &exchange), 1);
    drop(proxy);

    // The certificate names localhost, not 127.0.0.1.
    let proxy = start(&by_address, &ca("ca1.pem"));
    assert!(
        proxy
            .kamailio
            .wait_for_log("not valid for name", Duration::from_secs(10)),
        "{}",
        proxy.kamailio.log()
    );
    drop(proxy);
    let proxy = start(
        &by_address,
        &format!(
            "{}\nmodparam(\"kazoo\", \"amqps_verify_hostname\", 0)",
            ca("ca1.pem")
        ),
    );
    proxy.wait_connected(1, 1);
    assert_eq!(publish(&proxy, &exchange), 1);
}
