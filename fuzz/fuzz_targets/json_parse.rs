//! Any bytes: the parser must not panic, and what it accepts must serialise to text that
//! parses again.
#![no_main]

use kazoo_engine::json::{parse, to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse(data) {
        let text = to_json(&value);
        assert!(parse(&text).is_ok(), "re-parse failed: {text:?}");
    }
});
