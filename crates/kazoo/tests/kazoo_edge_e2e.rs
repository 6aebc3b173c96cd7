//! A Kazoo edge configuration, as operators run it, against RabbitMQ and an
//! emulated Kazoo backend: the configuration in `tests/kazoo_edge/` (roles
//! switched with `#!define`, a per-site `local.cfg`, one file per role joined
//! with `include_file`, a custom `kazoo` cfg group) with registrar, presence,
//! nodes, ACL and dispatcher roles. One check per flow:
//!
//! - the cfg group, read in a request route, an event route and an rtimer
//!   route, changed at run time with `kamcmd cfg.set_now_int`;
//! - REGISTER with digest: challenge, `authn_req` to the backend
//!   (`kazoo_async_query`), 200 or 403 from its answer, `save()`,
//!   `reg_success` on the broker;
//! - `search_req` answered through `targeted` to the requester's `Server-ID`;
//! - dialog, MWI and presence updates from the bus written by
//!   `kazoo_pua_publish_*` and NOTIFYed to a SUBSCRIBEd client;
//! - node advertisements published on a timer (with `sqlops` and registrar
//!   counts) and the other nodes' consumed into an htable (this node's own,
//!   recognised with `$knode`, left out);
//! - an ACL cache filled on a timer from a 4-argument `kazoo_query`;
//! - `dispatcher` from the same database;
//! - the JSON subscriptions bound as written, their messages acked;
//! - a clean stop: exit 0, no core file, no critical or signal line.
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{read, sqlite};
use kamailio_test::{
    msg_id_of, system_broker_url, system_rabbitmqctl, unique_name, AmqpProbe, DigestCredentials,
    Kamailio, ProbeMessage, Responder, SipClient, SipReply, SipRequest,
};
use serde_json::{json, Value};

/// The main file; the others are written next to it.
const MAIN_CFG: &str = include_str!("kazoo_edge/kamailio.cfg");
const INCLUDED: [(&str, &str); 9] = [
    ("defs.cfg", include_str!("kazoo_edge/defs.cfg")),
    ("globals.cfg", include_str!("kazoo_edge/globals.cfg")),
    ("default.cfg", include_str!("kazoo_edge/default.cfg")),
    (
        "kazoo-bindings.cfg",
        include_str!("kazoo_edge/kazoo-bindings.cfg"),
    ),
    (
        "registrar-role.cfg",
        include_str!("kazoo_edge/registrar-role.cfg"),
    ),
    (
        "presence-role.cfg",
        include_str!("kazoo_edge/presence-role.cfg"),
    ),
    ("nodes-role.cfg", include_str!("kazoo_edge/nodes-role.cfg")),
    ("acl-role.cfg", include_str!("kazoo_edge/acl-role.cfg")),
    (
        "dispatcher-role.cfg",
        include_str!("kazoo_edge/dispatcher-role.cfg"),
    ),
];

/// The realm: the SIP domain the client sends to.
const REALM: &str = "127.0.0.1";
/// `REALM` as one routing-key word (`kazoo_encode`).
const REALM_KEY: &str = "127%2E0%2E0%2E1";
/// The media server in the dispatcher table.
const MEDIA_SERVER: &str = "sip:127.0.0.1:5090";
const WAIT: Duration = Duration::from_secs(10);

/// Names of this run: node, the other node, exchanges (`local.cfg`
/// overrides the configuration's defaults with them, so runs on one broker
/// never see each other's messages).
struct Names {
    node: String,
    other_node: String,
    authn: String,
    registrar: String,
    presence: String,
    nodes: String,
    acl: String,
}

impl Names {
    fn new() -> Names {
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

    /// The queues the configuration's subscriptions declare.
    fn queues(&self) -> [String; 4] {
        [
            "registrar-flush",
            "registrar-api",
            "presence-dialog",
            "nodes",
        ]
        .map(|prefix| format!("{prefix}-{}", self.node))
    }
}

/// The node's SQLite database: presence tables and the dispatcher table
/// with one media server.
struct Database {
    dir: PathBuf,
    file: PathBuf,
}

impl Database {
    fn create() -> Database {
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
fn acl_answer(request: &[u8]) -> Vec<(Duration, Vec<u8>)> {
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

struct Edge {
    kamailio: Kamailio,
    names: Names,
    // Dropped before the probe, whose runtime they use.
    authn: Responder,
    acl: Responder,
    probe: AmqpProbe,
    _db: Database,
}

impl Edge {
    fn start() -> Edge {
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
        for (name, text) in INCLUDED {
            builder = builder.file(name, text);
        }
        let kamailio = builder
            .start(MAIN_CFG)
            .unwrap_or_else(|e| panic!("kamailio: {e}"));
        let edge = Edge {
            kamailio,
            names,
            authn,
            acl,
            probe,
            _db: db,
        };
        edge.wait_subscribed();
        edge
    }

    /// Every subscription of the configuration has its consumer.
    fn wait_subscribed(&self) {
        let deadline = Instant::now() + WAIT;
        for queue in self.names.queues() {
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

    fn message(&self, user: &str) -> SipReply {
        let client = SipClient::new().unwrap();
        client
            .send_request(self.kamailio.port(), "MESSAGE", user, &[], b"", WAIT)
            .unwrap_or_else(|e| panic!("MESSAGE {user}: {e}"))
    }

    fn kamcmd(&self, args: &[&str]) -> String {
        self.kamailio
            .kamcmd(args)
            .unwrap_or_else(|e| panic!("kamcmd {args:?}: {e}"))
    }

    /// Asks the node like a Kazoo application does and returns the reply.
    fn ask(&self, event_name: &str, fields: Value) -> Value {
        let mut request = fields;
        request["Event-Category"] = "registration".into();
        request["Event-Name"] = event_name.into();
        let msg_id = unique_name("msg");
        request["Msg-ID"] = msg_id.clone().into();
        let routing_key = format!("registration.{event_name}.{REALM_KEY}");
        let reply = self
            .probe
            .request(&self.names.registrar, &routing_key, request, WAIT)
            .unwrap()
            .unwrap_or_else(|| panic!("no reply to {event_name}:\n{}", self.kamailio.log()));
        assert_eq!(reply.exchange, "targeted");
        let body: Value = serde_json::from_slice(&reply.body).expect("JSON reply");
        assert_eq!(body["Msg-ID"], msg_id.as_str(), "{body}");
        body
    }

    /// The next advertisement of this node published on the nodes exchange.
    fn next_advertisement(&self, queue: &str) -> Value {
        let own = format!("kamailio@{}", self.names.node);
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .probe
                .get(queue, left)
                .unwrap()
                .unwrap_or_else(|| panic!("no advertisement:\n{}", self.kamailio.log()));
            let body: Value = serde_json::from_slice(&message.body).expect("JSON advertisement");
            if body["Node"] == own.as_str() {
                assert_eq!(body["Event-Name"], "advertise", "{body}");
                return body;
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
fn wait_request(
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

fn cfg_group_changes_are_seen_everywhere(edge: &Edge) {
    let adverts = edge.probe.capture(&edge.names.nodes, "").unwrap();
    let check = |revision: i64| {
        // Both SIP workers and both kazoo workers.
        for _ in 0..4 {
            let reply = edge.message("edge-status");
            assert_eq!(reply.code, 200);
            assert_eq!(
                reply.header("X-Edge-Revision"),
                Some(revision.to_string().as_str()),
                "request route"
            );
            let answer = edge.ask("revision_req", json!({}));
            assert_eq!(answer["Edge-Revision"], revision, "event route: {answer}");
        }
    };
    check(1);
    assert_eq!(edge.next_advertisement(&adverts)["Edge-Revision"], 1);

    edge.kamcmd(&["cfg.set_now_int", "kazoo", "edge_revision", "7"]);
    assert_eq!(
        edge.kamcmd(&["cfg.get", "kazoo", "edge_revision"]).trim(),
        "7"
    );
    check(7);
    // An advertisement built before the change may still be queued.
    let deadline = Instant::now() + WAIT;
    while edge.next_advertisement(&adverts)["Edge-Revision"] != 7 {
        assert!(
            Instant::now() < deadline,
            "rtimer route never saw revision 7"
        );
    }
    edge.probe.delete_queue(&adverts);
}

fn register(edge: &Edge, user: &str, password: &str) -> (SipClient, SipReply) {
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

fn authn_request_of(edge: &Edge, user: &str) -> ProbeMessage {
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
fn register_with_digest_against_the_backend(edge: &Edge) -> String {
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

fn search_req_is_answered_to_the_requester(edge: &Edge, contact: &str) {
    let answer = edge.ask("search_req", json!({"Username": "1001", "Realm": REALM}));
    assert_eq!(answer["Event-Name"], "search_resp", "{answer}");
    assert_eq!(answer["Registrations"][0]["Contact"], contact, "{answer}");
    let nobody = edge.ask("search_req", json!({"Username": "1009", "Realm": REALM}));
    assert_eq!(nobody["Registrations"][0]["Contact"], "", "{nobody}");
}

/// One SUBSCRIBEd client per event package.
struct Watcher {
    client: SipClient,
    package: &'static str,
}

impl Watcher {
    fn subscribe(edge: &Edge, user: &str, package: &'static str, accept: &str) -> Watcher {
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

    fn notify(&self, what: &str, body: impl Fn(&str) -> bool) -> SipRequest {
        wait_request(&self.client, &format!("{} {what}", self.package), |r| {
            r.method == "NOTIFY" && r.header("Event") == Some(self.package) && body(&r.text())
        })
    }
}

fn presence_updates_reach_watchers(edge: &Edge) {
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

fn nodes_advertise_and_track_each_other(edge: &Edge) {
    let adverts = edge.probe.capture(&edge.names.nodes, "").unwrap();
    // Counted with sqlops (dialog, MWI and presence of 2001) and from the
    // registrar.
    let advert = edge.next_advertisement(&adverts);
    assert_eq!(advert["Roles"]["Presence"]["Presentities"], 3, "{advert}");
    assert_eq!(advert["Roles"]["Registrar"]["Registrations"], 1, "{advert}");
    assert_eq!(advert["Expires"], 15000, "{advert}");
    edge.probe.delete_queue(&adverts);

    let other = &edge.names.other_node;
    let startup = 1_700_000_123;
    edge.probe
        .publish(
            &edge.names.nodes,
            "advertise",
            json!({
                "Event-Category": "nodes", "Event-Name": "advertise",
                "Node": other, "Expires": 15000, "Startup": startup,
                "Msg-ID": unique_name("msg"),
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
    wait_kamcmd(edge, &["htable.get", "nodes", other], &startup.to_string());
    // This node's own advertisements (recognised with `$knode`) are not
    // tracked.
    let own = format!("kamailio@{}", edge.names.node);
    let dump = edge.kamcmd(&["htable.dump", "nodes"]);
    assert!(dump.contains(other.as_str()), "{dump}");
    assert!(!dump.contains(&own), "{dump}");
}

/// Polls `kamcmd args` until its output contains `needle`; returns it.
fn wait_kamcmd(edge: &Edge, args: &[&str], needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = edge.kamailio.kamcmd(args).unwrap_or_default();
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "kamcmd {args:?} never showed {needle:?}: {out}\n{}",
            edge.kamailio.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn acl_cache_is_filled_on_a_timer(edge: &Edge) {
    let dump = wait_kamcmd(edge, &["htable.dump", "acl"], "allow,deny");
    for (key, value) in [
        ("realm::order", "allow,deny"),
        ("realm::cidrs", "2"),
        ("device::phone-1", "deny,allow"),
        ("device::phone-2", "allow,deny"),
    ] {
        let entry = edge.kamcmd(&["htable.get", "acl", key]);
        assert!(entry.contains(value), "acl {key}: {entry}\n{dump}");
    }
    let requests = edge.acl.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.routing_key, "sbc_config");
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["Event-Name"], "query", "{body}");
        assert_eq!(body["Category"], "frontier_acl", "{body}");
        assert_eq!(body["Realm"], REALM, "{body}");
    }
    // Filled: the timer (every second) reads the cache and asks no more.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(edge.acl.requests().len(), requests.len());
}

fn dispatcher_reads_the_same_database(edge: &Edge) {
    let reply = edge.message("media-server");
    assert_eq!(reply.code, 200, "{reply:?}");
    assert_eq!(reply.header("X-Media-Server"), Some(MEDIA_SERVER));
}

/// The JSON subscriptions (routing arrays, `no_ack: false`, `exclusive` and
/// `federate` booleans) bound what they list, and every message they
/// delivered was acked once its route ran.
fn subscriptions_bound_and_acked(edge: &Edge) {
    let bindings = system_rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ])
    .unwrap();
    let [_, api, presence, nodes] = edge.names.queues();
    let names = &edge.names;
    for (exchange, queue, key) in [
        (&names.registrar, &api, "registration.search_req.*"),
        (&names.registrar, &api, "registration.revision_req.*"),
        (&names.presence, &presence, "dialog.*.*"),
        (&names.presence, &presence, "update.*.*"),
        (&names.presence, &presence, "mwi_updates.*.*"),
        (&names.nodes, &nodes, ""),
    ] {
        let wanted = [exchange.as_str(), queue.as_str(), key];
        assert!(
            bindings
                .lines()
                .any(|l| l.split('\t').collect::<Vec<_>>() == wanted),
            "{wanted:?} not bound:\n{bindings}"
        );
    }
    let queues = system_rabbitmqctl(&[
        "list_queues",
        "name",
        "exclusive",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .unwrap();
    for queue in [&api, &presence] {
        let line = queues
            .lines()
            .find(|l| l.starts_with(&format!("{queue}\t")))
            .unwrap_or_else(|| panic!("{queue} missing:\n{queues}"));
        assert_eq!(line, format!("{queue}\tfalse\t0\t0"));
    }
}

fn stops_cleanly(edge: &Edge) {
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

#[test]
fn kazoo_edge_configuration_runs_every_flow() {
    let edge = Edge::start();
    cfg_group_changes_are_seen_everywhere(&edge);
    let contact = register_with_digest_against_the_backend(&edge);
    search_req_is_answered_to_the_requester(&edge, &contact);
    presence_updates_reach_watchers(&edge);
    nodes_advertise_and_track_each_other(&edge);
    acl_cache_is_filled_on_a_timer(&edge);
    dispatcher_reads_the_same_database(&edge);
    subscriptions_bound_and_acked(&edge);
    stops_cleanly(&edge);
}
