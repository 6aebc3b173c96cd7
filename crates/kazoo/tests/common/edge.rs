//! The Kazoo edge configuration's harness, shared by the native test
//! (`kazoo_edge_e2e.rs`) and the KEMI ones (`kazoo_edge_kemi_e2e.rs`): the
//! run's names and site file, the node's database, the emulated backend
//! (authn and ACL answers), the node under test, and the registrar and
//! presence checks both kinds of script must pass.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kamailio_test::{
    msg_id_of, system_broker_url, unique_name, AmqpProbe, DigestCredentials, Kamailio,
    ProbeMessage, Responder, SipClient, SipReply, SipRequest,
};
use serde_json::{json, Value};

use super::{read, sqlite};

/// The realm: the SIP domain the client sends to.
pub(crate) const REALM: &str = "127.0.0.1";
/// `REALM` as one routing-key word (`kazoo_encode`).
pub(crate) const REALM_KEY: &str = "127%2E0%2E0%2E1";
/// The media server in the dispatcher table.
pub(crate) const MEDIA_SERVER: &str = "sip:127.0.0.1:5090";
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Names of this run: node, the other node, exchanges (`local.cfg`
/// overrides the configuration's defaults with them, so runs on one broker
/// never see each other's messages).
pub(crate) struct Names {
    pub node: String,
    pub other_node: String,
    pub authn: String,
    pub registrar: String,
    pub presence: String,
    pub nodes: String,
    pub acl: String,
}

impl Names {
    pub(crate) fn new() -> Names {
        Names {
            node: unique_name("edge").replace('-', "."),
            other_node: unique_name("kamailio@other").replace('-', "."),
            authn: unique_name("callmgr"),
            registrar: unique_name("registrar"),
            presence: unique_name("presence"),
            nodes: unique_name("nodes"),
            acl: unique_name("frontier_acl"),
        }
    }

    /// The site file: what an operator writes for one node.
    fn local_cfg(&self, db: &Database) -> String {
        format!(
            "#!substdef \"!MY_HOSTNAME!{node}!g\"\n\
             #!substdef \"!MY_AMQP_URL!{url}!g\"\n\
             #!substdef \"!KAZOO_DB_FILE!{db}!g\"\n\
             #!substdef \"!KAZOO_DB_URL!sqlite://{db}!g\"\n\
             #!define AUTHN_EXCHANGE {authn}\n\
             #!define REGISTRAR_EXCHANGE {registrar}\n\
             #!define PRESENCE_EXCHANGE {presence}\n\
             #!define NODES_EXCHANGE {nodes}\n\
             #!define ACL_EXCHANGE {acl}\n",
            node = self.node,
            url = system_broker_url(),
            db = db.file.display(),
            authn = self.authn,
            registrar = self.registrar,
            presence = self.presence,
            nodes = self.nodes,
            acl = self.acl,
        )
    }

    /// The queue a subscription of the configuration declares: the
    /// subscription's prefix and the node's name.
    pub(crate) fn queue(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.node)
    }
}

/// The node's SQLite database: presence tables and the dispatcher table
/// with one media server.
pub(crate) struct Database {
    dir: PathBuf,
    pub file: PathBuf,
}

impl Database {
    pub(crate) fn create() -> Database {
        let dir = std::env::temp_dir().join(unique_name("kazoo-edge"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kazoo.db");
        let package = "kamailio-sqlite-modules";
        let schema: String = ["standard", "presence", "dispatcher"]
            .iter()
            .map(|name| {
                read(
                    &format!("/usr/share/kamailio/db_sqlite/{name}-create.sql"),
                    package,
                )
            })
            .collect();
        sqlite(
            &file,
            &format!(
                "{schema}\nINSERT INTO dispatcher (setid, destination, flags, priority, attrs, description) \
                 VALUES (1, '{MEDIA_SERVER}', 0, 0, '', 'media');"
            ),
        );
        Database { dir, file }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The backend's answer to `authn_req`: users 1001 and 1002 exist (1002's
/// client will use another password), everyone else is unknown.
fn authn_answer(request: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let Ok(req) = serde_json::from_slice::<Value>(request) else {
        return vec![];
    };
    let user = req["Auth-User"].as_str().unwrap_or_default();
    let reply = match user {
        "1001" | "1002" => json!({
            "Event-Category": "directory",
            "Event-Name": "authn_resp",
            "Msg-ID": msg_id_of(request),
            "Auth-Method": "password",
            "Auth-Password": format!("secret-{user}"),
            "Custom-Channel-Vars": {"Account-ID": format!("account-{user}"), "Username": user},
        }),
        _ => json!({
            "Event-Category": "directory",
            "Event-Name": "authn_err",
            "Msg-ID": msg_id_of(request),
        }),
    };
    vec![(Duration::ZERO, reply.to_string().into_bytes())]
}

/// The backend's answer to the ACL query.
pub(crate) fn acl_answer(request: &[u8]) -> Vec<(Duration, Vec<u8>)> {
    let reply = json!({
        "Event-Category": "acl",
        "Event-Name": "query_resp",
        "Msg-ID": msg_id_of(request),
        "Realm": {"Order": "allow,deny", "CIDR": ["127.0.0.0/8", "10.0.0.0/8"]},
        "Devices": {
            "phone-1": {"Order": "deny,allow"},
            "phone-2": {"Order": "allow,deny"},
        },
    });
    vec![(Duration::ZERO, reply.to_string().into_bytes())]
}

pub(crate) struct Edge {
    pub kamailio: Kamailio,
    pub names: Names,
    // Dropped before the probe, whose runtime they use.
    pub authn: Responder,
    pub acl: Responder,
    pub probe: AmqpProbe,
    _db: Database,
}

impl Edge {
    /// Starts Kamailio with the main configuration file `main`, the other
    /// `files` next to it and the site file (`local.cfg`), and waits until
    /// the queues the subscriptions with these prefixes declare are consumed.
    pub(crate) fn start(main: &str, files: &[(&str, &str)], queues: &[&str]) -> Edge {
        let names = Names::new();
        let db = Database::create();
        let probe = AmqpProbe::connect(&system_broker_url()).expect("probe");
        // The backend's exchanges; the node declares the ones it consumes.
        probe.declare_exchange(&names.authn, "topic").unwrap();
        probe.declare_exchange(&names.acl, "topic").unwrap();
        let authn = probe
            .responder(&names.authn, "authn.req.#", authn_answer)
            .unwrap();
        let acl = probe
            .responder(&names.acl, "sbc_config", acl_answer)
            .unwrap();
        let mut builder = Kamailio::builder().file("local.cfg", names.local_cfg(&db));
        for (name, text) in files {
            builder = builder.file(*name, *text);
        }
        let kamailio = builder
            .start(main)
            .unwrap_or_else(|e| panic!("kamailio: {e}"));
        let edge = Edge {
            kamailio,
            names,
            authn,
            acl,
            probe,
            _db: db,
        };
        edge.wait_subscribed(queues);
        edge
    }

    /// Every subscription of the configuration has its consumer.
    fn wait_subscribed(&self, prefixes: &[&str]) {
        let deadline = Instant::now() + WAIT;
        for queue in prefixes.iter().map(|prefix| self.names.queue(prefix)) {
            while self.probe.queue_counts(&queue).map(|c| c.1).unwrap_or(0) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "queue {queue} not consumed:\n{}",
                    self.kamailio.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let names = &self.names;
        for exchange in [
            &names.authn,
            &names.registrar,
            &names.presence,
            &names.nodes,
            &names.acl,
        ] {
            self.probe.delete_exchange(exchange);
        }
    }
}

/// Waits for a request the node sends to `client` that `wanted` accepts.
pub(crate) fn wait_request(
    client: &SipClient,
    what: &str,
    wanted: impl Fn(&SipRequest) -> bool,
) -> SipRequest {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_request(left) {
            Ok(request) if wanted(&request) => return request,
            Ok(request) => seen.push(request.text()),
            Err(e) => panic!("{what}: {e}; other requests: {seen:?}"),
        }
    }
}

pub(crate) fn register(edge: &Edge, user: &str, password: &str) -> (SipClient, SipReply) {
    let client = SipClient::new().unwrap();
    let (challenge, reply) = client
        .send_with_digest(
            edge.kamailio.port(),
            "REGISTER",
            user,
            &[("Expires", "300")],
            DigestCredentials { user, password },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("REGISTER {user}: {e}"));
    assert_eq!(challenge.code, 401, "{challenge:?}");
    let offered = challenge.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        offered.contains(&format!("realm=\"{REALM}\"")) && offered.contains("qop="),
        "{offered}"
    );
    (client, reply)
}

pub(crate) fn authn_request_of(edge: &Edge, user: &str) -> ProbeMessage {
    edge.authn
        .requests()
        .into_iter()
        .find(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .map(|b| b["Auth-User"] == user)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("the backend got no authn_req for {user}"))
}

/// Registers 1001; returns the contact the node saved.
pub(crate) fn register_with_digest_against_the_backend(edge: &Edge) -> String {
    let successes = edge
        .probe
        .capture(&edge.names.registrar, "registration.success.#")
        .unwrap();

    let (_, refused) = register(edge, "1002", "not-the-password");
    assert_eq!(refused.code, 403, "wrong password: {refused:?}");
    let (_, unknown) = register(edge, "1003", "anything");
    assert_eq!(unknown.code, 403, "authn_err: {unknown:?}");

    let (client, accepted) = register(edge, "1001", "secret-1001");
    assert_eq!(accepted.code, 200, "{accepted:?}");
    let contact = format!("sip:harness@127.0.0.1:{}", client.local_port());
    let binding = accepted.header("Contact").unwrap_or_default();
    assert!(
        binding.contains(&contact) && binding.contains("expires=300"),
        "save() replies with the binding: {accepted:?}"
    );

    let request = authn_request_of(edge, "1001");
    assert_eq!(request.routing_key, format!("authn.req.{REALM_KEY}"));
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["Event-Name"], "authn_req");
    assert_eq!(body["Method"], "REGISTER");
    assert_eq!(body["Auth-Realm"], REALM);
    authn_request_of(edge, "1003");

    // Only the accepted registration is announced.
    let success = edge
        .probe
        .get(&successes, WAIT)
        .unwrap()
        .unwrap_or_else(|| panic!("no reg_success:\n{}", edge.kamailio.log()));
    assert_eq!(
        success.routing_key,
        format!("registration.success.{REALM_KEY}.1001")
    );
    let body: Value = serde_json::from_slice(&success.body).unwrap();
    assert_eq!(body["Event-Name"], "reg_success", "{body}");
    assert_eq!(body["Username"], "1001");
    assert_eq!(body["Account-ID"], "account-1001", "from the authn reply");
    assert_eq!(body["Contact"], contact.as_str());
    assert_eq!(body["Expires"], 300);
    assert_eq!(
        body["Node"],
        format!("kamailio@{}", edge.names.node).as_str()
    );
    edge.probe.delete_queue(&successes);
    contact
}

/// One SUBSCRIBEd client per event package.
pub(crate) struct Watcher {
    client: SipClient,
    package: &'static str,
}

impl Watcher {
    pub(crate) fn subscribe(
        edge: &Edge,
        user: &str,
        package: &'static str,
        accept: &str,
    ) -> Watcher {
        let client = SipClient::new().unwrap();
        let reply = client
            .send_request(
                edge.kamailio.port(),
                "SUBSCRIBE",
                user,
                &[("Event", package), ("Expires", "300"), ("Accept", accept)],
                b"",
                WAIT,
            )
            .unwrap_or_else(|e| panic!("SUBSCRIBE {package}: {e}"));
        assert!(
            reply.code == 200 || reply.code == 202,
            "SUBSCRIBE {package}: {reply:?}"
        );
        let watcher = Watcher { client, package };
        // The state at subscription time (nothing published yet).
        let initial = watcher.notify("initial NOTIFY", |_| true);
        let state = initial.header("Subscription-State").unwrap_or_default();
        assert!(state.starts_with("active"), "{package}: {initial:?}");
        watcher
    }

    pub(crate) fn notify(&self, what: &str, body: impl Fn(&str) -> bool) -> SipRequest {
        wait_request(&self.client, &format!("{} {what}", self.package), |r| {
            r.method == "NOTIFY" && r.header("Event") == Some(self.package) && body(&r.text())
        })
    }
}

pub(crate) fn presence_updates_reach_watchers(edge: &Edge) {
    let user = "2001";
    let aor = format!("sip:{user}@{REALM}");
    let dialog = Watcher::subscribe(edge, user, "dialog", "application/dialog-info+xml");
    let mwi = Watcher::subscribe(
        edge,
        user,
        "message-summary",
        "application/simple-message-summary",
    );
    let presence = Watcher::subscribe(edge, user, "presence", "application/pidf+xml");

    let call_id = unique_name("call");
    let dialog_update = json!({
        "Event-Category": "presence", "Event-Name": "dialog_update",
        "From": aor, "From-User": user, "From-Realm": REALM,
        "To": format!("sip:2002@{REALM}"), "To-User": "2002", "To-Realm": REALM,
        "State": "confirmed", "Call-ID": call_id, "From-Tag": "ft", "To-Tag": "tt",
        "Direction": "initiator", "Expires": 3600,
    });
    let mwi_update = json!({
        "Event-Category": "presence", "Event-Name": "mwi_update",
        "From": aor, "From-User": user, "From-Realm": REALM,
        "Messages-Waiting": "yes", "Message-Account": aor,
        "Messages-New": 2, "Messages-Saved": 5, "Messages-Urgent": 0,
        "Messages-Urgent-Saved": 1, "Call-ID": unique_name("mwi"), "Expires": 3600,
    });
    let presence_update = json!({
        "Event-Category": "presence", "Event-Name": "update",
        "From": aor, "From-User": user, "From-Realm": REALM,
        "To": aor, "To-User": user, "To-Realm": REALM,
        "State": "confirmed", "Call-ID": call_id, "Expires": 3600,
    });
    let publish = |key: &str, update: &Value| {
        edge.probe
            .publish(
                &edge.names.presence,
                &format!("{key}.{REALM_KEY}.{user}"),
                update.to_string().as_bytes(),
            )
            .unwrap();
    };
    // One at a time: the workers share one SQLite file.
    publish("dialog", &dialog_update);
    let notify = dialog.notify("NOTIFY with the call", |b| b.contains(call_id.as_str()));
    let body = notify.text();
    assert!(body.contains("<state>confirmed</state>"), "{body}");
    assert!(body.contains(&format!("entity=\"{aor}\"")), "{body}");

    publish("mwi_updates", &mwi_update);
    let notify = mwi.notify("NOTIFY with the counts", |b| b.contains("Voice-Message"));
    let body = notify.text();
    assert!(body.contains("Messages-Waiting: yes"), "{body}");
    assert!(body.contains("Voice-Message: 2/5 (0/1)"), "{body}");

    publish("update", &presence_update);
    let notify = presence.notify("NOTIFY with the state", |b| b.contains(call_id.as_str()));
    let body = notify.text();
    assert!(body.contains("On the Phone"), "{body}");
}

pub(crate) fn stops_cleanly(edge: &Edge) {
    assert!(edge.kamailio.is_running(), "Kamailio died during the test");
    let status = edge.kamailio.stop();
    assert!(status.success(), "exit status {status}");
    let cores: Vec<_> = std::fs::read_dir(edge.kamailio.rundir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "core files: {cores:?}");
    let log = edge.kamailio.log();
    // "signal 15 received" is every process acknowledging the stop.
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CRITICAL")
                || l.contains("ALERT")
                || (l.contains("signal") && !l.contains("signal 15 received"))
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}
