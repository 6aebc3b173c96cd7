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

use common::{cfg, int, Proxy};
use kamailio_test::{HarnessError, Kamailio};

pub(crate) fn hooks_module() -> PathBuf {
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
    // Every worker fails alike; which one's line is in the log's tail
    // depends on scheduling.
    assert!(
        log.lines().any(|l| l.contains("kazoo worker ")
            && l.contains(": a module's child_init failed in the new process; exiting")),
        "{log}"
    );
    // What the worker would log had it gone back into the start-up code.
    assert!(!log.contains("cannot fork kazoo worker"), "{log}");
}
