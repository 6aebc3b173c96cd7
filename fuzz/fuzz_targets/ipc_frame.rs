//! Any IPC frame body: decoded or refused, never a panic; what decodes
//! encodes back to a frame that decodes to the same message.
#![no_main]

use kazoo_engine::ipc::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let frame = message.encode();
        let again = Message::decode(&frame[4..]).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
});
