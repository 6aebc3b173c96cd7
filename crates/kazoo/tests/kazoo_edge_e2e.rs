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
use crate::common;

use std::time::{Duration, Instant};

use common::edge::{
    presence_updates_reach_watchers, register_with_digest_against_the_backend, stops_cleanly, Edge,
    MEDIA_SERVER, REALM, REALM_KEY, WAIT,
};
use kamailio_test::{system_rabbitmqctl, unique_name, SipClient, SipReply};
use serde_json::{json, Value};

/// The main file; the others are written next to it.
const MAIN_CFG: &str = include_str!("kazoo_edge/kamailio.cfg");
/// The queues (by prefix) the configuration's subscriptions declare.
const QUEUES: [&str; 4] = [
    "registrar-flush",
    "registrar-api",
    "presence-dialog",
    "nodes",
];
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

impl Edge {
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

fn search_req_is_answered_to_the_requester(edge: &Edge, contact: &str) {
    let answer = edge.ask("search_req", json!({"Username": "1001", "Realm": REALM}));
    assert_eq!(answer["Event-Name"], "search_resp", "{answer}");
    assert_eq!(answer["Registrations"][0]["Contact"], contact, "{answer}");
    let nobody = edge.ask("search_req", json!({"Username": "1009", "Realm": REALM}));
    assert_eq!(nobody["Registrations"][0]["Contact"], "", "{nobody}");
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
    let [api, presence, nodes] =
        ["registrar-api", "presence-dialog", "nodes"].map(|prefix| edge.names.queue(prefix));
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

#[test]
fn kazoo_edge_configuration_runs_every_flow() {
    let edge = Edge::start(MAIN_CFG, &INCLUDED, &QUEUES);
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
