//! Shared pieces of the end-to-end tests: the Kamailio configuration they
//! start from, and helpers to call script functions over SIP.
//!
//! Inputs travel hex-encoded in request headers (`X-A`, `X-B`, ...) and are
//! decoded by the script with `{s.decode.hexa}`, so any byte can be passed;
//! results come back hex-encoded in reply headers, with a separate `...-Null`
//! header when a value is `$null`.
#![allow(dead_code)]

pub(crate) mod edge;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kamailio_test::{hex_decode, hex_encode, Kamailio, SipClient, SipReply};

/// Global part of every test configuration; `{{PARAMS}}` takes extra
/// modparams and `{{ROUTES}}` the routes. Kamailio 6 drops SIP messages of
/// 32 KB and more unless `msg_recv_max_size` allows them (5.6 has no such
/// parameter); some tests send more.
pub(crate) const BASE_CFG: &str = r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
disable_tcp=yes
pv_buffer_size=65536
#!ifdef KAMAILIO_6
msg_recv_max_size=65535
#!endif
listen=udp:127.0.0.1:{{PORT}}
mpath="{{MPATH}}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "ctl.so"
modparam("ctl", "binrpc", "{{CTL}}")
loadmodule "{{MODULE}}"
modparam("kazoo", "node_hostname", "kztest.local")
modparam("kazoo", "pua_mode", 0)
{{PARAMS}}
{{ROUTES}}
"#;

/// A configuration from [`BASE_CFG`] with a broker and a node name of its
/// own: reply queues are named after the node, so two instances with one
/// name would take each other's replies. Returns the config and the node.
pub(crate) fn amqp_cfg(broker_url: &str, params: &str, routes: &str) -> (String, String) {
    let node = kamailio_test::unique_name("kzvec").replace('-', ".");
    let config = cfg(
        &format!("modparam(\"kazoo\", \"amqp_connection\", \"{broker_url}\")\n{params}"),
        routes,
    )
    .replace("\"kztest.local\"", &format!("\"{node}\""));
    (config, node)
}

/// A configuration from [`BASE_CFG`].
pub(crate) fn cfg(params: &str, routes: &str) -> String {
    BASE_CFG
        .replace("{{PARAMS}}", params)
        .replace("{{ROUTES}}", routes)
}

pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// A running Kamailio and a client to talk to it.
pub(crate) struct Proxy {
    pub kamailio: Kamailio,
    pub client: SipClient,
}

impl Proxy {
    pub(crate) fn start(cfg: &str) -> Proxy {
        Proxy::with(Kamailio::start(cfg).unwrap_or_else(|e| panic!("kamailio: {e}")))
    }

    /// A proxy around a Kamailio started with other options.
    pub(crate) fn with(kamailio: Kamailio) -> Proxy {
        let client = SipClient::new().expect("sip client");
        Proxy { kamailio, client }
    }

    /// Sends a MESSAGE to `sip:<user>@...` with the given inputs as hex
    /// headers `X-A`, `X-B`, ... and returns the final reply.
    pub(crate) fn call(&self, user: &str, inputs: &[&[u8]]) -> SipReply {
        self.try_call(user, inputs)
            .unwrap_or_else(|e| panic!("{user}: {e}"))
    }

    pub(crate) fn try_call(
        &self,
        user: &str,
        inputs: &[&[u8]],
    ) -> Result<SipReply, kamailio_test::HarnessError> {
        let names = ["X-A", "X-B", "X-C", "X-D"];
        let values: Vec<String> = inputs.iter().map(|v| hex_encode(v)).collect();
        let headers: Vec<(&str, &str)> = names
            .iter()
            .zip(values.iter())
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        self.client.send_request(
            self.kamailio.port(),
            "MESSAGE",
            user,
            &headers,
            b"",
            TIMEOUT,
        )
    }

    /// Waits until the module's publisher connection and first consuming
    /// connection to broker `id` are up (`n`-th time: 1 at start-up, 2 after
    /// one reconnect, ...), as the `kazoo.brokers` RPC command reports them.
    pub(crate) fn wait_connected(&self, id: u32, n: usize) {
        // The first consuming connection consumes the reply queues, without
        // which a query fails at once.
        self.wait_connections(id, &["publisher", "consumer 0"], n);
    }

    /// Waits until every connection of broker `id` named in `roles` is up
    /// and the broker's connections have reopened `(n - 1) * roles.len()`
    /// times or more (`n`: 1 at start-up, 2 after one reconnect, ...).
    pub(crate) fn wait_connections(&self, id: u32, roles: &[&str], n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let reopened = ((n - 1) * roles.len()) as u64;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(text) = self.kamailio.kamcmd(&["kazoo.brokers"]) {
                if let Ok(brokers) = serde_json::from_str::<serde_json::Value>(text.trim()) {
                    let broker = brokers
                        .as_array()
                        .and_then(|all| all.iter().find(|b| b["id"] == id));
                    if let Some(broker) = broker {
                        let up = roles.iter().all(|r| broker["connections"][r] == "up");
                        if up && broker["reconnects"].as_u64() >= Some(reopened) {
                            return;
                        }
                    }
                }
                last = text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "broker {id}: {roles:?} not up ({n}) per kazoo.brokers: {last}\n{}",
            self.kamailio.log()
        );
    }

    /// Waits until every queue in `queues` has a consumer (subscriptions are
    /// declared once the consuming connection is up).
    pub(crate) fn wait_consumed(&self, probe: &kamailio_test::AmqpProbe, queues: &[String]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queues
            .iter()
            .any(|q| probe.queue_counts(q).map(|c| c.1).unwrap_or(0) == 0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "subscriptions not consumed:\n{}",
                self.kamailio.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kamcmd <args>` on the instance's ctl socket (`{{CTL}}`); its output.
    pub(crate) fn kamcmd(&self, args: &[&str]) -> String {
        self.kamailio
            .kamcmd(args)
            .unwrap_or_else(|e| panic!("kamcmd {args:?}: {e}"))
    }

    /// Kamailio still runs and answers SIP.
    pub(crate) fn assert_alive(&self) {
        assert!(self.kamailio.is_running(), "Kamailio exited");
        let reply = self
            .client
            .ping(self.kamailio.port(), TIMEOUT)
            .expect("Kamailio does not answer any more");
        assert_eq!(reply.code, 200);
    }
}

/// A hex result header: `None` when the `<name>-Null` header says `$null`.
pub(crate) fn result(reply: &SipReply, name: &str) -> Option<Vec<u8>> {
    if reply.header(&format!("{name}-Null")).is_some() {
        return None;
    }
    let value = reply
        .header(name)
        .unwrap_or_else(|| panic!("reply has no {name} header: {reply:?}"));
    Some(hex_decode(value).expect("hex"))
}

/// An integer result header.
pub(crate) fn int(reply: &SipReply, name: &str) -> i64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("reply has no {name} header: {reply:?}"))
        .parse()
        .expect("integer header")
}

/// The release of the Kamailio under test (`KAMAILIO_BIN`, default
/// `/usr/sbin/kamailio`), e.g. `5.6.3`, from the `version:` line of `kamailio -v`.
pub(crate) fn kamailio_release() -> &'static str {
    static RELEASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RELEASE.get_or_init(|| {
        let bin = std::env::var("KAMAILIO_BIN").unwrap_or_else(|_| "/usr/sbin/kamailio".into());
        let out = std::process::Command::new(&bin)
            .arg("-v")
            .output()
            .unwrap_or_else(|e| panic!("{bin} -v: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("version: kamailio "))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("{bin} -v printed no version line"))
            .to_string()
    })
}

/// Fills a vector template's placeholders (vectors/README.md §5) with what
/// this run produced: `{{MSG_ID}}` with `msg_id`, `{{CH}}` and
/// `{{AMQP_RECEIVED}}` with the values found in `actual`, and the capture's
/// node name `kzvec.local` with `node`; the capture's `App-Version` (5.6.3) with
/// the release under test.
pub(crate) fn fill_placeholders(template: &str, actual: &str, msg_id: &str, node: &str) -> String {
    let received = actual
        .split("\"AMQP-Received\": ")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .unwrap_or_default();
    let ch = actual
        .split("-targeted-")
        .nth(1)
        .and_then(|rest| rest.chars().next())
        .map(String::from)
        .unwrap_or_default();
    template
        .replace("{{MSG_ID}}", msg_id)
        .replace("{{AMQP_RECEIVED}}", &received)
        .replace("{{CH}}", &ch)
        .replace("kzvec.local", node)
        // The vectors were captured on Kamailio 5.6.3; the module reports
        // the release it runs in.
        .replace(
            "\"App-Version\": \"5.6.3\"",
            &format!("\"App-Version\": \"{}\"", kamailio_release()),
        )
}

/// A file the tests need from a Debian package (e.g. a Kamailio schema).
pub(crate) fn read(path: &str, package: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (Debian package {package})"))
}

/// Runs `script` on the SQLite database `file` with the `sqlite3` client
/// and returns its output (`-json`: rows as a JSON array, empty for none).
pub(crate) fn sqlite(file: &Path, script: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-json")
        .arg(file)
        .arg(script)
        .output()
        .expect("sqlite3 (Debian package sqlite3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
