//! Any consumed message body: what the AMQP process and a consumer worker
//! do with it (annotation, the candidate route names), never a panic.
#![no_main]

use kazoo_engine::payload::annotate_consumed;
use kazoo_engine::routes::candidates_for_text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(annotated) = annotate_consumed(data, "local", 1_700_000_000, 1) {
        let _ = candidates_for_text(&annotated.body, "Event-Category", "Event-Name", None, None);
    }
    let _ = candidates_for_text(data, "Event-Category", "Event-Name", Some("K"), Some("S"));
});
