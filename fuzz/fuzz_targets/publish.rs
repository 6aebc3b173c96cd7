//! Any payload, routing key and headers a script passes to `kazoo_publish`:
//! prepared, targeted and given a body, or refused, never a panic.
#![no_main]

use kazoo_engine::payload::{check_routing_key, parse_headers, parse_target, prepare_publish, CommonFields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xFF);
    let payload = parts.next().unwrap_or_default();
    let routing_key = parts.next().unwrap_or_default();
    let headers = parts.next().unwrap_or_default();
    let common = CommonFields {
        app_name: "kamailio".into(),
        app_version: "5.6.3".into(),
        node: "kamailio@fuzz".into(),
    };
    if let Ok(prepared) = prepare_publish(payload, &common, || "msg-id".into()) {
        let _ = prepared.body("kamailio@fuzz-<1>-targeted-0");
    }
    if let Ok((_, key)) = parse_target(routing_key) {
        let _ = check_routing_key(key);
    }
    let _ = parse_headers(headers);
});
