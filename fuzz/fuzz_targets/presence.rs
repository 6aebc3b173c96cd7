//! Any presence event a `kazoo_pua_publish*` function receives: a write plan
//! or an error, never a panic.
#![no_main]

use kazoo_engine::presence::{plan, Entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for entry in [Entry::Any, Entry::Presence, Entry::Mwi, Entry::DialogInfo] {
        let _ = plan(entry, data, 1_700_000_000, true);
        let _ = plan(entry, data, 1_700_000_000, false);
    }
});
