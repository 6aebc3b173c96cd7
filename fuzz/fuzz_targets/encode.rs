//! Any bytes: the encoder must not panic and must stay within its output alphabet and length.
#![no_main]

use kazoo_engine::encode::{encode_checked, encode_truncating, MAX_ROUTING_KEY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let encoded = encode_truncating(data);
    assert!(encoded.len() <= MAX_ROUTING_KEY_LEN + 2);
    if data != b"#" && data != b"*" {
        assert!(encoded
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"~_%+-".contains(b)));
    }
    assert_eq!(encode_checked(data).is_some(), data.len() <= MAX_ROUTING_KEY_LEN);
});
