//! Any IPC frame body, read as each of the three directions (a request, an
//! answer, work for a worker): decoded or refused, never a panic; what
//! decodes encodes back to a frame that decodes to the same message.
#![no_main]

use kazoo_engine::ipc::{Answer, Request, Work};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((id, request)) = Request::decode(data) {
        let frame = request.encode(id);
        let again = Request::decode(&frame[4..]).expect("an encoded request decodes");
        assert_eq!(again, (id, request));
    }
    if let Ok(answer) = Answer::decode(data) {
        let frame = answer.encode();
        assert_eq!(Answer::decode(&frame[4..]), Ok(answer));
    }
    if let Ok(work) = Work::decode(data) {
        let frame = work.encode();
        assert_eq!(Work::decode(&frame[4..]), Ok(work));
    }
});
