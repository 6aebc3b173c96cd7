//! A panic inside the module never takes Kamailio down: the panic guard
//! turns it into a critical log line and -1, and Kamailio keeps answering.
//! A module process whose initialisation fails exits (and Kamailio stops,
//! as for its own children) instead of running start-up code. A delivery
//! whose worker loses its link to the AMQP process before reporting the
//! route goes back to the broker and is delivered again.
//!
//! The panicking function and the failing initialisation exist only in
//! builds with the `test-hooks`
//! feature; this test builds that variant into its own target directory
//! (or takes it from `KAZOO_TEST_HOOKS_MODULE`).
use crate::common;

use std::path::PathBuf;
use std::process::Command;

use std::time::{Duration, Instant};

use common::{amqp_cfg, cfg, int, Proxy};
use kamailio_test::{
    system_broker_url, system_queue_messages, unique_name, AmqpProbe, HarnessError, Kamailio,
    QueueMessages,
};

fn hooks_module() -> PathBuf {
    if let Ok(path) = std::env::var("KAZOO_TEST_HOOKS_MODULE") {
        return path.into();
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target/test-hooks");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "-p",
            "kazoo",
            "--features",
            "test-hooks",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("running cargo build for the test-hooks module");
    assert!(status.success(), "building the test-hooks module failed");
    target.join("debug/libkazoo.so")
}

#[test]
fn a_panic_is_caught_logged_and_returns_minus_one() {
    let module = hooks_module();
    let routes = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    kazoo_test_panic("boom $rU");
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;
    let config = cfg("", routes).replace("{{MODULE}}", module.to_str().unwrap());
    let proxy = Proxy::start(&config);
    for round in 0..3 {
        let reply = proxy.call(&format!("round{round}"), &[]);
        assert_eq!(int(&reply, "X-RC"), -1, "round {round}");
        proxy.assert_alive();
    }
    let log = proxy.kamailio.log();
    assert_eq!(
        log.matches("internal error in kazoo_test_panic (caught, Kamailio keeps running)")
            .count(),
        3,
        "{log}"
    );
    assert!(log.contains("test hook: boom round2"), "{log}");
    assert!(!log.contains("exited by a signal"), "{log}");
}

#[test]
fn a_worker_whose_child_init_fails_exits() {
    let module = hooks_module();
    let routes = "request_route {\n    sl_send_reply(\"200\", \"OK\");\n}\n";
    let config = cfg("", routes).replace("{{MODULE}}", module.to_str().unwrap());
    let started = Kamailio::builder()
        .env("KAZOO_TEST_FAIL_WORKER_INIT", "1")
        .start(&config);
    // The SIP workers may answer before the main process sees the worker go.
    let log = match started {
        Ok(kamailio) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while kamailio.is_running() {
                assert!(Instant::now() < deadline, "Kamailio kept running");
                std::thread::sleep(Duration::from_millis(50));
            }
            kamailio.log()
        }
        Err(HarnessError::StartupFailed { log_tail, .. }) => log_tail,
        Err(e) => panic!("{e}"),
    };
    assert!(
        log.contains("kazoo worker 1: a module's child_init failed in the new process; exiting"),
        "{log}"
    );
    // What the worker would log had it gone back into the start-up code.
    assert!(!log.contains("cannot fork kazoo worker"), "{log}");
}

#[test]
fn a_delivery_whose_worker_link_breaks_goes_back_to_the_broker() {
    let module = hooks_module();
    let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
    let exchange = unique_name("kzlink");
    let queue = unique_name("kzlink-q");
    probe.declare_exchange(&exchange, "topic").unwrap();
    let routes = format!(
        r#"event_route[kazoo:mod-init] {{
    kazoo_subscribe("{{'exchange':'{exchange}','type':'topic','queue':'{queue}','routing':'#','no_ack':0,'auto_delete':0}}");
}}
event_route[kazoo:consumer-event-link-test] {{
    $shv(runs) = $shv(runs) + 1;
    xlog("L_INFO", "LINK-ROUTE run=$shv(runs)\n");
    if ($shv(runs) == 1) {{
        kazoo_test_break_link("first run");
    }}
}}
request_route {{
    sl_send_reply("200", "OK");
}}
"#
    );
    let (config, _node) = amqp_cfg(
        &system_broker_url(),
        "modparam(\"pv\", \"shvset\", \"runs=i:0\")\nmodparam(\"kazoo\", \"amqp_consumer_workers\", 1)",
        &routes,
    );
    let config = config.replace("{{MODULE}}", module.to_str().unwrap());
    let proxy = Proxy::start(&config);
    proxy.wait_connected(1, 1);
    probe
        .publish(
            &exchange,
            "link.one",
            br#"{"Event-Category":"link","Event-Name":"test"}"#,
        )
        .unwrap();
    assert!(proxy
        .kamailio
        .wait_for_log("dropping the link (test hook)", Duration::from_secs(10)));
    // Returned to the broker, delivered again, acked after the second run.
    assert!(
        proxy
            .kamailio
            .wait_for_log("LINK-ROUTE run=2", Duration::from_secs(10)),
        "{}",
        proxy.kamailio.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let empty = Some(QueueMessages {
        ready: 0,
        unacked: 0,
    });
    loop {
        let held = system_queue_messages(&queue).unwrap();
        if held == empty {
            break;
        }
        assert!(Instant::now() < deadline, "left on the broker: {held:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!proxy.kamailio.log().contains("LINK-ROUTE run=3"));
    let status: serde_json::Value =
        serde_json::from_str(proxy.kamcmd(&["kazoo.status"]).trim()).unwrap();
    let consumed = &status["consumed"];
    assert_eq!(consumed["requeued"], 1, "{status}");
    assert_eq!(consumed["redelivered"], 1, "{status}");
    assert_eq!(consumed["acked"], 1, "{status}");
    proxy.assert_alive();
    drop(proxy);
    probe.delete_queue(&queue);
    probe.delete_exchange(&exchange);
}
