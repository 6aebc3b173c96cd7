//! Any `amqp_connection` value: a broker or a reason, never a panic.
#![no_main]

use kazoo_engine::config::parse_connection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_connection(text, "local", 1);
    }
});
