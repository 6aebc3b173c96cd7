//! Start-up and KEMI paths with a real broker: a `kazoo_publish` made in
//! `kazoo:mod-init` (which deadlocks the C module) is published once a
//! broker is connected; a subscription without an exchange type (which
//! wedges the C module's consumer) is refused on its own while the others
//! work; with `event_callback` the KEMI function gets `kazoo:mod-init` (and
//! can subscribe and publish there; the C module cannot deliver it), then
//! consumed messages and connection events as `kazoo:consumer-event`, and
//! `KSR.kazoo.kazoo_publish` publishes.
use crate::common;

use std::time::Duration;

use common::{amqp_cfg, int, Proxy};
use kamailio_test::{system_broker_url, unique_name, AmqpProbe};

#[test]
fn mod_init_publishes_arrive_and_a_bad_subscription_stays_alone() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzstart");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let queue = probe.capture(&exchange, "#").unwrap();
    let events = unique_name("kzstart-events");
    let routes = format!(
        r##"event_route[kazoo:mod-init]
{{
    kazoo_publish("{exchange}", "from.mod-init", "{{'Event-Category':'boot'}}");
    xlog("L_INFO", "MODINIT publish rc=$rc\n");
    kazoo_subscribe("{{'exchange':'{events}-bad','queue':'{events}-bad-q','routing':'#'}}");
    xlog("L_INFO", "MODINIT bad subscription rc=$rc\n");
    kazoo_subscribe("{{'exchange':'{events}','type':'topic','queue':'{events}-q','routing':'#'}}");
}}
event_route[kazoo:consumer-event]
{{
    xlog("L_INFO", "EVENT rk=$kzRK\n");
}}
request_route {{
    sl_send_reply("200", "OK");
}}
"##
    );
    let (config, _node) = amqp_cfg(&system_broker_url(), "", &routes);
    let proxy = Proxy::start(&config);
    let log = proxy.kamailio.log();
    assert!(log.contains("MODINIT publish rc=1"), "{log}");
    assert!(log.contains("MODINIT bad subscription rc=-1"), "{log}");
    assert!(log.contains("type"), "the refusal names the field: {log}");
    let boot = probe
        .get(&queue, Duration::from_secs(10))
        .unwrap()
        .expect("the mod-init publish reached the broker");
    assert_eq!(boot.routing_key, "from.mod-init");
    assert!(boot.text().contains("\"Event-Category\": \"boot\""));
    // The good subscription consumes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe
        .queue_counts(&format!("{events}-q"))
        .map(|c| c.1)
        .unwrap_or(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "not subscribed");
        std::thread::sleep(Duration::from_millis(50));
    }
    probe.publish(&events, "good.one", b"{}").unwrap();
    assert!(proxy
        .kamailio
        .wait_for_log("EVENT rk=good.one", Duration::from_secs(5)));
    probe.delete_exchange(&exchange);
    probe.delete_exchange(&events);
}

#[test]
fn the_kemi_callback_gets_consumer_events_and_kemi_publishes() {
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzkemi");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let queue = probe.capture(&exchange, "#").unwrap();
    let dir = std::env::temp_dir().join(unique_name("kazoo-kemi-amqp"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("kazoo.js");
    std::fs::write(
        &script,
        format!(
            r#"
function ksr_kazoo_event(evname) {{
    if (evname == "kazoo:mod-init") {{
        var s = KSR.kazoo.kazoo_subscribe("{{'exchange':'{exchange}-events','type':'topic','queue':'{exchange}-q','routing':'#'}}");
        var p = KSR.kazoo.kazoo_publish("{exchange}", "from.kemi.mod-init", "{{'Event-Category':'boot'}}");
        KSR.info("KEMI mod-init subscribe=" + s + " publish=" + p + "\n");
        return;
    }}
    KSR.info("KEMI " + evname + " rk=" + KSR.pv.get("$kzRK") + " e=" + KSR.pv.get("$kzE") + "\n");
    // The dialog module's script callbacks reset its context per message.
    KSR.info("KEMI dlg_ctx before=" + KSR.pv.get("$dlg_ctx(timeout_bye)") + "\n");
    KSR.pv.seti("$dlg_ctx(timeout_bye)", 5);
}}
function ksr_request_route() {{
    if (KSR.is_OPTIONS()) {{ KSR.sl.sl_send_reply(200, "OK"); return; }}
    var rc = KSR.kazoo.kazoo_publish("{exchange}", "from.kemi", "{{'Event-Category':'kemi'}}");
    KSR.hdr.append_to_reply("X-RC: " + rc + "\r\n");
    KSR.sl.sl_send_reply(200, "OK");
}}
"#
        ),
    )
    .unwrap();
    let params = format!(
        "loadmodule \"rr.so\"\nloadmodule \"dialog.so\"\n\
         loadmodule \"app_jsdt.so\"\nmodparam(\"app_jsdt\", \"load\", \"{}\")\n\
         modparam(\"kazoo\", \"event_callback\", \"ksr_kazoo_event\")\n\
         modparam(\"kazoo\", \"amqp_consumer_workers\", 1)\ncfgengine \"jsdt\"",
        script.display()
    );
    let (config, node) = amqp_cfg(&system_broker_url(), &params, "");
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    // kazoo:mod-init ran in the engine, subscribed and published.
    assert!(proxy.kamailio.wait_for_log(
        "KEMI mod-init subscribe=1 publish=1",
        Duration::from_secs(5)
    ));
    let boot = probe
        .get(&queue, Duration::from_secs(5))
        .unwrap()
        .expect("mod-init publish");
    assert_eq!(boot.routing_key, "from.kemi.mod-init");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while probe
        .queue_counts(&format!("{exchange}-q"))
        .map(|c| c.1)
        .unwrap_or(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the KEMI subscription is not consumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    probe
        .publish(
            &format!("{exchange}-events"),
            "kemi.sub",
            b"{\"Via\": \"subscription\"}",
        )
        .unwrap();
    assert!(proxy.kamailio.wait_for_log(
        "KEMI kazoo:consumer-event rk=kemi.sub",
        Duration::from_secs(5)
    ));
    // Connection events reach the callback.
    assert!(proxy.kamailio.wait_for_log(
        "KEMI kazoo:consumer-event rk=null e={ \"Event-Category\" : \"connection\", \"Event-Name\" : \"open\"",
        Duration::from_secs(5)
    ));
    // KSR.kazoo.kazoo_publish publishes with confirms.
    proxy.wait_connected(1, 1);
    let reply = proxy.call("kemi", &[]);
    assert_eq!(int(&reply, "X-RC"), 1);
    assert_eq!(
        probe
            .get(&queue, Duration::from_secs(2))
            .unwrap()
            .unwrap()
            .routing_key,
        "from.kemi"
    );
    // A consumed message (an unclaimed reply) reaches the callback too.
    probe
        .publish(
            "targeted",
            &format!("kamailio@{node}-<1>-targeted-0"),
            b"{\"Unclaimed\": 1}",
        )
        .unwrap();
    assert!(
        proxy
            .kamailio
            .wait_for_log("\"Unclaimed\": 1", Duration::from_secs(5)),
        "{}",
        proxy.kamailio.log()
    );
    // Each callback ran between the script callbacks, like a native route:
    // what one event set in the dialog context is gone for the next.
    let log = proxy.kamailio.log();
    assert!(log.matches("KEMI dlg_ctx before=0").count() >= 3, "{log}");
    assert!(!log.contains("KEMI dlg_ctx before=5"), "{log}");
    drop(proxy);
    probe.delete_exchange(&exchange);
    probe.delete_exchange(&format!("{exchange}-events"));
    let _ = std::fs::remove_dir_all(&dir);
}
