//! Any `kazoo_subscribe` description: parsed or refused, never a panic.
#![no_main]

use kazoo_engine::subscription::parse_description;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_description(data);
});
