//! Self-tests of the Kamailio side of the harness against the installed
//! Kamailio with stock modules only (the kazoo module is not needed).
//!
//! They fail, with the harness's "not installed" message, when Kamailio is
//! missing: a harness that silently skipped would hide a broken test machine.

use std::path::Path;
use std::time::Duration;

use kamailio_test::{check_config, hex_decode, hex_encode, HarnessError, Kamailio, SipClient};

const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Replies to everything, except R-URI user `silent`, which exits without a
/// reply. `X-In` is hex: the reply's `X-Len` is the decoded length and `X-Out`
/// the decoded bytes plus "!" encoded again, which checks both directions.
/// Every reply has `X-Env`, the environment variable `KT_VALUE`. Requests
/// without `X-In` (like the harness's readiness OPTIONS) get 200, or 201 when
/// Kamailio runs with `-A WITH_201`.
const ECHO_CFG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
disable_tcp=yes
listen=udp:127.0.0.1:{{PORT}}
mpath="{{MPATH}}"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "xlog.so"

request_route {
    if ($rU == "silent") {
        xlog("L_INFO", "silent request, no reply\n");
        exit;
    }
    append_to_reply("X-Env: $env(KT_VALUE)\r\n");
    if (!is_present_hf("X-In")) {
        # The harness's readiness OPTIONS carries no X-In.
#!ifdef WITH_201
        sl_send_reply("201", "Defined");
#!else
        sl_send_reply("200", "OK");
#!endif
        exit;
    }
    $var(x) = $(hdr(X-In){s.decode.hexa});
    $var(out) = $var(x) + "!";
    xlog("L_INFO", "echo len=$(var(x){s.len})\n");
    append_to_reply("X-Len: $(var(x){s.len})\r\nX-Out: $(var(out){s.encode.hexa})\r\n");
    sl_send_reply("200", "OK");
}
"#;

fn start_echo() -> Kamailio {
    Kamailio::start(ECHO_CFG).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn replies_carry_decoded_and_reencoded_bytes() {
    let kamailio = start_echo();
    assert!(kamailio.is_running());
    assert!(kamailio.rundir().join("kamailio.cfg").is_file());
    let client = SipClient::new().unwrap();
    let cases: [&[u8]; 4] = [b"hello", b"", &[0x00, 0xff, 0x80, b'\n', b'"'], b"a:b;c=d"];
    for input in cases {
        let reply = client
            .send_request(
                kamailio.port(),
                "MESSAGE",
                "echo",
                &[("X-In", &hex_encode(input))],
                b"body",
                REPLY_TIMEOUT,
            )
            .unwrap();
        assert_eq!(reply.code, 200, "{reply:?}");
        assert_eq!(reply.reason, "OK");
        assert_eq!(
            reply.header("x-len"),
            Some(input.len().to_string().as_str())
        );
        let mut expected = input.to_vec();
        expected.push(b'!');
        // Kamailio's encoder is lowercase, so the text itself must match ours.
        assert_eq!(reply.header("X-Out"), Some(hex_encode(&expected).as_str()));
        assert_eq!(
            hex_decode(reply.header("X-Out").unwrap()).unwrap(),
            expected
        );
        assert_eq!(reply.headers_named("CSeq"), vec!["1 MESSAGE"]);
    }
    // Kamailio's decoder accepts uppercase too.
    let reply = client
        .send_request(
            kamailio.port(),
            "OPTIONS",
            "echo",
            &[("X-In", "00FFAB")],
            &[],
            REPLY_TIMEOUT,
        )
        .unwrap();
    assert_eq!(reply.header("X-Out"), Some("00ffab21"));
    assert!(
        kamailio.wait_for_log("echo len=5", REPLY_TIMEOUT),
        "{}",
        kamailio.log()
    );
}

#[test]
fn a_script_that_does_not_reply_times_out() {
    let kamailio = start_echo();
    let client = SipClient::new().unwrap();
    let err = client
        .send_request(
            kamailio.port(),
            "OPTIONS",
            "silent",
            &[],
            &[],
            Duration::from_millis(500),
        )
        .unwrap_err();
    assert!(matches!(err, HarnessError::Timeout(_)), "{err}");
    assert!(kamailio.wait_for_log("silent request, no reply", REPLY_TIMEOUT));
    // The server is still fine and the client usable after the timeout.
    assert_eq!(
        client.ping(kamailio.port(), REPLY_TIMEOUT).unwrap().code,
        200
    );
    assert!(!kamailio.wait_for_log("never logged", Duration::from_millis(100)));
}

#[test]
fn check_config_accepts_good_and_rejects_broken() {
    let good = check_config(ECHO_CFG);
    assert!(good.success, "{}", good.output);
    let broken =
        check_config(&ECHO_CFG.replace("sl_send_reply(\"200\", \"OK\");", "sl_send_reply(;"));
    assert!(!broken.success, "{}", broken.output);
    let missing = check_config(&ECHO_CFG.replace("xlog.so", "no_such_module.so"));
    assert!(!missing.success, "{}", missing.output);
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let kamailio = start_echo();
    let (pid, port) = (kamailio.pid(), kamailio.port());
    let rundir = kamailio.rundir().to_owned();
    drop(kamailio);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(!rundir.exists() || std::env::var_os("KAMAILIO_TEST_KEEP").is_some());
    let client = SipClient::new().unwrap();
    let err = client.ping(port, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, HarnessError::Timeout(_)), "{err}");
}

#[test]
fn stop_ends_kamailio_and_keeps_the_log() {
    let kamailio = start_echo();
    let status = kamailio.stop();
    assert!(!kamailio.is_running());
    assert!(status.success(), "{status}");
    assert!(
        kamailio.log().contains("Thank you for flying kamailio"),
        "{}",
        kamailio.log()
    );
}

#[test]
fn startup_failure_reports_the_log() {
    let cfg = ECHO_CFG.replace(
        "loadmodule \"xlog.so\"",
        "loadmodule \"xlog.so\"\nmodparam(\"sl\", \"no_such_param\", 1)",
    );
    let err = Kamailio::start(&cfg).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, HarnessError::StartupFailed { .. }), "{text}");
    assert!(text.contains("exited"), "{text}");
    assert!(text.contains("no_such_param"), "{text}");
}

#[test]
fn builder_passes_arguments_and_environment() {
    let kamailio = Kamailio::builder()
        .arg("-A")
        .arg("WITH_201")
        .env("KT_VALUE", "from-env")
        .startup_timeout(Duration::from_secs(10))
        .start(ECHO_CFG)
        .unwrap_or_else(|e| panic!("{e}"));
    let reply = SipClient::new()
        .unwrap()
        .ping(kamailio.port(), REPLY_TIMEOUT)
        .unwrap();
    assert_eq!((reply.code, reply.reason.as_str()), (201, "Defined"));
    assert_eq!(reply.header("X-Env"), Some("from-env"));
}

#[test]
fn a_config_that_never_replies_fails_startup_in_time() {
    let cfg = ECHO_CFG.replace("if ($rU == \"silent\")", "if (true)");
    let started = std::time::Instant::now();
    let err = Kamailio::builder()
        .startup_timeout(Duration::from_secs(2))
        .start(&cfg)
        .unwrap_err();
    assert!(matches!(err, HarnessError::StartupFailed { .. }), "{err}");
    assert!(err.to_string().contains("no reply to OPTIONS"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
