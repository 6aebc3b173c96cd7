//! Checks `kazoo_engine::subscription`: the seed README's examples (§5.1.3, §5.1.4), every
//! subscription of `vectors/routes.jsonl`, kazoo-configs style descriptions, the C defaults and
//! json-c conversions the C module applies, and the checks the C module lacks.

use std::path::PathBuf;

use kazoo_engine::json::{self, Double, Value};
use kazoo_engine::subscription::{
    from_description, json_c_int, parse_description, simple, AckMode, ExchangeBinding,
    ExchangeFlags, QueueFlags, Subscription, SubscriptionError,
};

fn describe(text: &str) -> Subscription {
    parse_description(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: refused: {e}"))
}

fn refuse(text: &str) -> SubscriptionError {
    match parse_description(text.as_bytes()) {
        Ok(s) => panic!("{text}: accepted as {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn readme_simple_form() {
    // README §5.1.3, Example 1.24.
    let s = simple(
        "dialoginfo",
        "direct",
        "BLF-QUEUE-MY_HOSTNAME",
        "BLF-MY_HOSTNAME",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.exchange, "dialoginfo");
    assert_eq!(s.exchange_type, "direct");
    assert_eq!(s.exchange_flags, ExchangeFlags::default());
    assert_eq!(s.queue, "BLF-QUEUE-MY_HOSTNAME");
    assert_eq!(
        s.queue_flags,
        QueueFlags {
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: true,
            quorum: false
        }
    );
    assert_eq!(s.routing, ["BLF-MY_HOSTNAME"]);
    assert!(s.exchange_bindings.is_empty());
    assert!(s.no_ack);
    assert_eq!(s.ack_mode(), AckMode::None);
    assert_eq!((s.event_key, s.event_subkey), (None, None));
    assert!(!s.federate && !s.consistent_worker && s.consistent_worker_key.is_none());
}

#[test]
fn readme_json_form() {
    // README §5.1.4, Example 1.25: single-quoted, as json-c accepts it.
    let s = describe(
        "{ 'exchange' : 'dialoginfo' , 'type' : 'direct', 'queue' : 'BLF-QUEUE-MY_HOSTNAME', \
         'routing' : 'BLF-MY_HOSTNAME', 'auto_delete' : 0, 'durable' : 1, 'no_ack' : 0, \
         'wait_for_consumer_ack' : 1 }",
    );
    assert_eq!(
        (
            s.exchange.as_str(),
            s.exchange_type.as_str(),
            s.queue.as_str()
        ),
        ("dialoginfo", "direct", "BLF-QUEUE-MY_HOSTNAME")
    );
    assert_eq!(s.routing, ["BLF-MY_HOSTNAME"]);
    // Without exchange-def / queue-def the top-level flags apply to both.
    assert_eq!(
        s.exchange_flags,
        ExchangeFlags {
            durable: true,
            ..ExchangeFlags::default()
        }
    );
    assert_eq!(
        s.queue_flags,
        QueueFlags {
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            quorum: false
        }
    );
    assert!(!s.no_ack && s.wait_for_consumer_ack);
    assert_eq!(s.ack_mode(), AckMode::AfterRoute);
}

#[test]
fn json_defaults() {
    let s = describe(r#"{"exchange":"x","type":"topic"}"#);
    assert_eq!(s.queue, "");
    assert_eq!(s.exchange_flags, ExchangeFlags::default());
    assert_eq!(s.queue_flags, QueueFlags::default());
    assert!(s.queue_flags.auto_delete);
    // No routing: one binding with an empty key.
    assert_eq!(s.routing, [""]);
    assert!(s.no_ack && s.wait_for_consumer_ack);
    assert!(!s.federate && !s.consistent_worker);
    assert_eq!(s.consistent_worker_key, None);
    assert_eq!((s.event_key, s.event_subkey), (None, None));

    let on_receipt =
        describe(r#"{"exchange":"x","type":"topic","no_ack":0,"wait_for_consumer_ack":0}"#);
    assert_eq!(on_receipt.ack_mode(), AckMode::OnReceipt);
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../vectors")
}

#[test]
fn routes_vector_subscriptions() {
    let path = vectors_dir().join("routes.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad row: {e}"));
        let description = &row["subscription"];
        let s = describe(&description.to_string());
        let field = |name: &str| description[name].as_str().map(str::to_owned);
        assert_eq!(Some(s.exchange.clone()), field("exchange"));
        assert_eq!(Some(s.exchange_type.clone()), field("type"));
        assert_eq!(Some(s.queue.clone()), field("queue"));
        assert_eq!(vec![field("routing").unwrap_or_default()], s.routing);
        assert_eq!(s.event_key, field("event_key"));
        assert_eq!(s.event_subkey, field("event_subkey"));
        assert_eq!(s.exchange_flags, ExchangeFlags::default());
        assert_eq!(s.queue_flags, QueueFlags::default());
        assert!(s.no_ack);
        checked += 1;
    }
    println!("routes.jsonl: {checked} subscriptions checked");
    assert!(checked > 0);
}

#[test]
fn kazoo_configs_style() {
    let s = describe(
        r#"{"name": "presence-api", "exchange": "presence", "type": "topic",
            "queue": "presence-dialog-kz1", "routing": ["dialog.*.*", "update.*.*", "mwi_updates.*.*"],
            "exclusive": true, "federate": true, "no_ack": false,
            "event_key": "Event-Category", "event_subkey": "Event-Name",
            "consistent-worker": true, "consistent-worker-key": "Call-ID"}"#,
    );
    assert_eq!(s.routing, ["dialog.*.*", "update.*.*", "mwi_updates.*.*"]);
    assert!(s.queue_flags.exclusive && s.queue_flags.auto_delete);
    assert!(s.federate && s.consistent_worker);
    assert_eq!(s.consistent_worker_key.as_deref(), Some("Call-ID"));
    assert!(!s.no_ack);
    assert_eq!(s.ack_mode(), AckMode::AfterRoute);
    assert_eq!(s.event_key.as_deref(), Some("Event-Category"));
    assert_eq!(s.event_subkey.as_deref(), Some("Event-Name"));
}

#[test]
fn definitions_take_precedence_over_the_top_level() {
    let s = describe(
        r#"{"exchange":"x","type":"bogus","durable":1,"auto_delete":1,
            "exchange-def":{"type":"fanout","durable":0,"internal":true}}"#,
    );
    // Exchange: type and flags from exchange-def only (its auto_delete defaults to false).
    assert_eq!(s.exchange_type, "fanout");
    assert_eq!(
        s.exchange_flags,
        ExchangeFlags {
            internal: true,
            ..ExchangeFlags::default()
        }
    );
    // Queue: no queue-def, so the top level.
    assert!(s.queue_flags.durable && s.queue_flags.auto_delete);

    let s = describe(
        r#"{"exchange":"x","type":"direct","durable":1,
            "queue-def":{"exclusive":1,"auto_delete":0,"passive":"1"}}"#,
    );
    assert!(s.exchange_flags.durable);
    assert_eq!(
        s.queue_flags,
        QueueFlags {
            passive: true,
            durable: false,
            exclusive: true,
            auto_delete: false,
            quorum: false
        }
    );

    // A null definition counts as absent, as in C.
    let s = describe(r#"{"exchange":"x","type":"topic","exchange-def":null,"durable":1}"#);
    assert!(s.exchange_flags.durable);
}

#[test]
fn every_exchange_binding_is_kept() {
    let s = describe(
        r##"{"exchange":"dest","type":"topic","routing":"#",
            "exchange-bindings":{
                "src1":{"type":"topic","routing":"a.*"},
                "no-routing":{"type":"topic"},
                "src2":{"type":"fanout","routing":["b","c"],"durable":true,"auto_delete":"1"},
                "not-an-object":5,
                "src3":{"type":"x-consistent-hash","routing":[7]}}}"##,
    );
    assert_eq!(
        s.exchange_bindings,
        [
            ExchangeBinding {
                source: "src1".into(),
                exchange_type: "topic".into(),
                flags: ExchangeFlags::default(),
                routing: vec!["a.*".into()],
            },
            ExchangeBinding {
                source: "src2".into(),
                exchange_type: "fanout".into(),
                flags: ExchangeFlags {
                    durable: true,
                    auto_delete: true,
                    ..ExchangeFlags::default()
                },
                routing: vec!["b".into(), "c".into()],
            },
            ExchangeBinding {
                source: "src3".into(),
                exchange_type: "x-consistent-hash".into(),
                flags: ExchangeFlags::default(),
                routing: vec!["7".into()],
            },
        ]
    );
}

#[test]
fn json_c_int_conversion() {
    let flag = |value: &str| {
        describe(&format!(
            r#"{{"exchange":"x","type":"topic","durable":{value}}}"#
        ))
        .exchange_flags
        .durable
    };
    assert!(flag(r#""1""#));
    assert!(flag("true"));
    assert!(flag("2.5"));
    assert!(flag(r#"" 7 apples""#));
    assert!(flag("-1"));
    assert!(!flag(r#""abc""#));
    assert!(!flag(r#""0""#));
    assert!(!flag("0.5"));
    assert!(!flag("false"));
    assert!(!flag("[1]"));
    assert!(!flag("{}"));
    // Null is absent: the default stays.
    assert!(!flag("null"));
    assert!(describe(r#"{"exchange":"x","type":"topic","no_ack":null}"#).no_ack);

    let int = |text: &str| json_c_int(&json::parse(text.as_bytes()).unwrap_or(Value::Null));
    assert_eq!(int(r#""1""#), 1);
    assert_eq!(int("true"), 1);
    assert_eq!(int("2.5"), 2);
    assert_eq!(int(r#""abc""#), 0);
    assert_eq!(int(r#""12abc""#), 12);
    assert_eq!(int("-2.5"), -2);
    assert_eq!(int("4294967296"), i32::MAX);
    assert_eq!(int(r#""-4294967296""#), i32::MIN);
    assert_eq!(
        json_c_int(&Value::Double(Double::new(f64::INFINITY))),
        i32::MAX
    );
}

#[test]
fn text_fields_follow_json_c() {
    // Non-strings are used as their JSON text, as json_object_get_string gives them.
    let s = describe(
        r#"{"exchange":5,"type":"topic","queue":true,"routing":[1,"a",{"k":"/"}],
            "event_key":7,"event_subkey":""}"#,
    );
    assert_eq!(s.exchange, "5");
    assert_eq!(s.queue, "true");
    assert_eq!(s.routing, ["1", "a", r#"{ "k": "\/" }"#]);
    assert_eq!(s.event_key.as_deref(), Some("7"));
    // An empty event key is no key.
    assert_eq!(s.event_subkey, None);

    // Routing of another type, or an empty array, binds one empty key.
    for routing in ["5", "[]", "{}", "null", r#""""#] {
        let s = describe(&format!(
            r#"{{"exchange":"x","type":"topic","routing":{routing}}}"#
        ));
        assert_eq!(s.routing, [""], "routing {routing}");
    }
}

#[test]
fn bad_subscriptions_are_refused_with_the_field_named() {
    let cases: &[(&str, &str)] = &[
        (r#"{"type":"topic"}"#, "`exchange`"),
        (r#"{"exchange":"","type":"topic"}"#, "`exchange`"),
        (r#"{"exchange":"x"}"#, "`type`"),
        (r#"{"exchange":"x","type":""}"#, "`type`"),
        (r#"{"exchange":"x","type":"Topic"}"#, "`type`"),
        (r#"{"exchange":"x","type":"x-"}"#, "`type`"),
        (
            r#"{"exchange":"x","type":"topic","exchange-def":{"durable":1}}"#,
            "`exchange-def.type`",
        ),
        (
            r#"{"exchange":"x","type":"topic","exchange-def":"topic"}"#,
            "`exchange-def`",
        ),
        (
            r#"{"exchange":"x","type":"topic","queue-def":[1]}"#,
            "`queue-def`",
        ),
        (
            r#"{"exchange":"x","type":"topic","exchange-bindings":[1]}"#,
            "`exchange-bindings`",
        ),
        (
            r#"{"exchange":"x","type":"topic","exchange-bindings":{"s":{"routing":"r"}}}"#,
            "`exchange-bindings.s.type`",
        ),
        (
            r#"{"exchange":"x","type":"topic","exchange-bindings":{"":{"type":"topic","routing":"r"}}}"#,
            "`exchange-bindings.`",
        ),
        (r#"[{"exchange":"x","type":"topic"}]"#, "`subscription`"),
        ("null", "`subscription`"),
    ];
    for (text, field) in cases {
        let message = refuse(text).to_string();
        assert!(message.contains(field), "{text}: {message}");
    }

    let long = "r".repeat(256);
    let e = refuse(&format!(
        r#"{{"exchange":"x","type":"topic","routing":["ok","{long}"]}}"#
    ));
    assert_eq!(
        e,
        SubscriptionError::TooLong {
            field: "routing".into(),
            len: 256
        }
    );
    assert!(matches!(refuse("{"), SubscriptionError::InvalidJson(_)));
    assert!(matches!(refuse(""), SubscriptionError::InvalidJson(_)));
    let e = from_description(&Value::Object(vec![
        (b"exchange".to_vec(), Value::String(b"\xff".to_vec())),
        (b"type".to_vec(), Value::String(b"topic".to_vec())),
    ]));
    assert_eq!(
        e,
        Err(SubscriptionError::NotUtf8 {
            field: "exchange".into()
        })
    );

    assert!(simple("", "topic", "q", "#").is_err());
    let e = simple("x", "", "q", "#")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("`exchange_type`"), "{e}");
    assert!(simple("x", "headers", "", "").is_ok());
}

#[test]
fn the_name_field_names_the_listener_in_zone_events() {
    let named = describe(
        "{'name': 'presence', 'exchange': 'presence', 'type': 'topic', 'queue': 'presence-q'}",
    );
    assert_eq!(named.name.as_deref(), Some("presence"));
    assert_eq!(named.listener_name(), "presence");
    // Without a name: the queue; a queue named by the broker: the exchange.
    let by_queue = describe("{'exchange': 'x', 'type': 'topic', 'queue': 'q1'}");
    assert_eq!(
        (by_queue.name.as_deref(), by_queue.listener_name()),
        (None, "q1")
    );
    let by_exchange = describe("{'name': '', 'exchange': 'x', 'type': 'topic'}");
    assert_eq!(by_exchange.listener_name(), "x");
    assert_eq!(
        simple("x", "direct", "q2", "rk").unwrap().listener_name(),
        "q2"
    );
}

#[test]
fn quorum_queues() {
    let s = describe(
        r#"{"exchange":"x","type":"direct","queue":"q",
            "queue-def":{"durable":1,"auto_delete":0,"x-queue-type":"quorum"}}"#,
    );
    assert_eq!(
        s.queue_flags,
        QueueFlags {
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            quorum: true
        }
    );
    // At the top level, as the other queue flags; `classic` is the default type.
    let s = describe(
        r#"{"exchange":"x","type":"direct","durable":1,"auto_delete":0,"x-queue-type":"quorum"}"#,
    );
    assert!(s.queue_flags.quorum && s.queue_flags.durable);
    let s = describe(r#"{"exchange":"x","type":"direct","x-queue-type":"classic"}"#);
    assert!(!s.queue_flags.quorum);

    // A quorum queue must be durable, not exclusive and not auto-delete (the default).
    for def in [
        r#"{"auto_delete":0,"x-queue-type":"quorum"}"#,
        r#"{"durable":1,"x-queue-type":"quorum"}"#,
        r#"{"durable":1,"auto_delete":0,"exclusive":1,"x-queue-type":"quorum"}"#,
    ] {
        let text = format!(r#"{{"exchange":"x","type":"direct","queue-def":{def}}}"#);
        assert_eq!(
            refuse(&text),
            SubscriptionError::QuorumFlags {
                field: "queue-def.x-queue-type".into()
            },
            "{text}"
        );
    }
    assert_eq!(
        refuse(r#"{"exchange":"x","type":"direct","x-queue-type":"stream"}"#),
        SubscriptionError::BadQueueType {
            field: "x-queue-type".into(),
            value: "stream".into()
        }
    );
}
