//! Parameter validation and broker URL parsing: every `modparam` value the C
//! module accepts is accepted with the same meaning, and bad values are
//! refused with a message that says what is wrong.
use kazoo_engine::config::{parse_connection, ParamType, ParamValue, Params, Scheme, PARAMS};

#[test]
fn every_declared_parameter_is_accepted_with_its_type() {
    for (name, ty) in PARAMS {
        let mut params = Params::default();
        let value = match ty {
            ParamType::Int => ParamValue::Int(1),
            ParamType::Str if *name == "amqp_connection" => ParamValue::Str(b"amqp://h"),
            ParamType::Str if *name == "json_escape_char" => ParamValue::Str(b"#"),
            ParamType::Str => ParamValue::Str(b"x"),
        };
        params
            .set(name, value)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let wrong = match ty {
            ParamType::Int => ParamValue::Str(b"1"),
            ParamType::Str => ParamValue::Int(1),
        };
        assert!(
            params.set(name, wrong).is_err(),
            "{name} accepted the wrong type"
        );
    }
    assert!(Params::default()
        .set("no_such_param", ParamValue::Int(1))
        .is_err());
}

#[test]
fn both_spellings_of_the_timer_interval_are_accepted() {
    let mut params = Params::default();
    params
        .set("amqp_timer_process_interval", ParamValue::Int(100))
        .unwrap();
    params
        .set("amqp_timmer_process_interval", ParamValue::Int(100))
        .unwrap();
    assert_eq!(params.ignored.len(), 2);
}

#[test]
fn counts_and_micros_are_range_checked() {
    let mut p = Params::default();
    assert!(p.set("amqp_consumer_workers", ParamValue::Int(-1)).is_err());
    assert!(p.set("amqp_consumer_workers", ParamValue::Int(0)).is_err());
    assert!(p
        .set("amqp_consumer_processes", ParamValue::Int(-2))
        .is_err());
    assert!(p.set("amqp_max_channels", ParamValue::Int(0)).is_err());
    assert!(p
        .set("amqp_query_timeout_micro", ParamValue::Int(1_000_000))
        .is_err());
    assert!(p
        .set("amqp_connect_timeout_micro", ParamValue::Int(-1))
        .is_err());
    assert!(p
        .set("amqp_waitframe_timeout_micro", ParamValue::Int(1_000_000))
        .is_err());
    p.set("amqp_query_timeout_micro", ParamValue::Int(999_999))
        .unwrap();
    p.set("amqp_query_timeout_sec", ParamValue::Int(1)).unwrap();
    assert_eq!(p.amqp_query_timeout.duration().as_micros(), 1_999_999);
    let msg = p
        .set("amqp_query_timeout_micro", ParamValue::Int(2_000_000))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0..999999"), "{msg}");
}

#[test]
fn node_hostname_is_required() {
    let err = Params::default().finish().unwrap_err().to_string();
    assert!(err.contains("node_hostname"), "{err}");
    let mut p = Params::default();
    p.set("node_hostname", ParamValue::Str(b"kz.local"))
        .unwrap();
    let config = p.finish().unwrap();
    assert_eq!(config.node(), "kamailio@kz.local");
}

#[test]
fn cert_and_key_go_together() {
    let mut p = Params::default();
    p.set("node_hostname", ParamValue::Str(b"n")).unwrap();
    p.set("amqps_cert", ParamValue::Str(b"/c.pem")).unwrap();
    assert!(p.finish().unwrap_err().to_string().contains("amqps_key"));
}

#[test]
fn urls_parse_like_the_c_module() {
    let b = parse_connection("amqp://guest:guest@localhost:5672", "local", 1).unwrap();
    assert_eq!(
        (
            b.scheme,
            b.user.as_str(),
            b.password.as_str(),
            b.host.as_str(),
            b.port,
            b.vhost.as_str()
        ),
        (Scheme::Amqp, "guest", "guest", "localhost", 5672, "/")
    );
    assert_eq!(b.zone, "local");
    let b = parse_connection("kazoo://u:p%40ss@otherhost", "local", 2).unwrap();
    assert_eq!(
        (b.scheme, b.password.as_str(), b.port),
        (Scheme::Amqp, "p@ss", 5672)
    );
    let b = parse_connection("amqps://h/%2F", "local", 3).unwrap();
    assert_eq!(
        (b.scheme, b.port, b.vhost.as_str()),
        (Scheme::Amqps, 5671, "/")
    );
    let b = parse_connection("zone=z2;amqp://h:1234/vh", "local", 4).unwrap();
    assert_eq!(
        (b.zone.as_str(), b.port, b.vhost.as_str()),
        ("z2", 1234, "vh")
    );
    let b = parse_connection("amqp://[::1]:5673", "local", 5).unwrap();
    assert_eq!((b.host.as_str(), b.port), ("::1", 5673));
}

#[test]
fn a_password_with_a_slash_is_refused_without_showing_it() {
    for url in [
        "amqp://kazoo:Qx7/Zp9@rabbit.example.com:5672",
        "amqp://kazoo:1234/5678@rabbit.example.com",
        "amqp://ka/Jq:Wv8@rabbit.example.com/vhost",
    ] {
        let error = parse_connection(url, "local", 1).unwrap_err().to_string();
        assert!(error.contains("%2F"), "{url}: {error}");
        for secret in ["Qx7", "Zp9", "1234", "5678", "Jq", "Wv8"] {
            assert!(!error.contains(secret), "{url}: {error} shows {secret}");
        }
    }
    // Escaped, it is the password.
    let b = parse_connection("amqp://kazoo:se%2Fcr3t@h", "local", 1).unwrap();
    assert_eq!(b.password, "se/cr3t");
}

#[test]
fn malformed_urls_are_refused_with_a_reason() {
    for (url, needle) in [
        ("http://h", "amqp://"),
        ("zone=z2amqp://h", "`;`"),
        ("zone=;amqp://h", "empty zone"),
        ("amqp://h/", "trailing `/`"),
        ("amqp://h:notaport", "invalid port"),
        ("amqp://h:0", "invalid port"),
        ("amqp://", "no host"),
        ("amqp://u:p@h/%zz", "%-escape"),
    ] {
        let err = parse_connection(url, "local", 1).unwrap_err().to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[test]
fn credentials_never_appear_in_debug_output() {
    let b = parse_connection("amqp://user:s3cret@h", "local", 1).unwrap();
    let text = format!("{b:?} {}", b.redacted_url());
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("user@h:5672"), "{text}");
}

#[test]
fn primary_zone_applies_to_later_connections_only() {
    let mut p = Params::default();
    p.set("amqp_connection", ParamValue::Str(b"amqp://a"))
        .unwrap();
    p.set("amqp_primary_zone", ParamValue::Str(b"primaryz"))
        .unwrap();
    p.set("amqp_connection", ParamValue::Str(b"amqp://b"))
        .unwrap();
    let zones: Vec<_> = p.brokers.iter().map(|b| (b.id, b.zone.as_str())).collect();
    assert_eq!(zones, [(1, "local"), (2, "primaryz")]);
}
