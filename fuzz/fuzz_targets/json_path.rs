//! Any JSON text and path (split at the first 0xFF byte): the script helpers must not panic.
#![no_main]

use kazoo_engine::json::{array_len, field_text, field_text_or_empty, object_keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (json, path) = match data.iter().position(|&b| b == 0xFF) {
        Some(split) => (&data[..split], &data[split + 1..]),
        None => (data, &b"a"[..]),
    };
    let _ = field_text(json, path, b'%');
    let _ = field_text_or_empty(json, path, b'%');
    let _ = array_len(json, path, b'%');
    let _ = object_keys(json, path, b'%');
});
