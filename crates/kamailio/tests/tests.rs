//! The host crate's end-to-end tests: its example module
//! (`examples/greeter.rs`), built by `cargo test` with the other examples,
//! loaded into a real Kamailio and called over SIP.

mod example_module {
    use std::path::PathBuf;
    use std::time::Duration;

    use kamailio_test::{Kamailio, SipClient};

    /// `target/<profile>/examples/libgreeter.so`, beside this test's
    /// `target/<profile>/deps/`.
    fn greeter() -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>");
        let module = profile_dir.join("examples/libgreeter.so");
        assert!(
            module.exists(),
            "{} is missing: cargo test builds it (cargo build -p kamailio --example greeter)",
            module.display()
        );
        module
    }

    fn config(greeting_param: &str) -> String {
        format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
disable_tcp=yes
listen=udp:127.0.0.1:{{{{PORT}}}}
mpath="{{{{MPATH}}}}"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "textops.so"
loadmodule "{module}"
{greeting_param}
request_route {{
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (greet("$rU", "$var(text)") == 1) {{
        append_to_reply("X-Greeting: $var(text)\r\n");
    }}
    sl_send_reply("200", "OK");
}}
"#,
            module = greeter().display()
        )
    }

    fn greeting_for(kamailio: &Kamailio, user: &str) -> Option<String> {
        let client = SipClient::new().expect("sip client");
        let reply = client
            .send_request(
                kamailio.port(),
                "MESSAGE",
                user,
                &[],
                b"",
                Duration::from_secs(5),
            )
            .expect("a reply");
        assert_eq!(reply.code, 200);
        reply.header("X-Greeting").map(str::to_string)
    }

    #[test]
    fn the_example_module_loads_and_its_function_and_parameter_work() {
        let kamailio = Kamailio::start(&config("")).expect("kamailio with the example module");
        assert_eq!(
            greeting_for(&kamailio, "alice").as_deref(),
            Some("hello, alice")
        );
        drop(kamailio);

        let kamailio = Kamailio::start(&config(r#"modparam("greeter", "greeting", "welcome")"#))
            .expect("kamailio with the example module");
        assert_eq!(
            greeting_for(&kamailio, "bob").as_deref(),
            Some("welcome, bob")
        );
    }

    #[test]
    fn a_parameter_of_the_wrong_type_stops_kamailio_at_start_up() {
        let started = Kamailio::start(&config(r#"modparam("greeter", "greeting", 5)"#));
        assert!(started.is_err(), "an int for a string parameter was taken");
    }
}
