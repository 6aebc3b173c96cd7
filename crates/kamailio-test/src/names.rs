//! Unique names and the small source of randomness behind them.
//!
//! Tests run in parallel threads and in parallel processes (nextest), against
//! shared infrastructure such as the system RabbitMQ, so anything a test creates
//! there needs a name no other test run can pick. The harness also needs random
//! SIP branches, tags and port choices; `std`'s hasher keys are randomly seeded
//! per process, which is enough and avoids a dependency.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random 64-bit number (not cryptographic).
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A name unique across threads, processes and runs: `<prefix>-<pid>-<n>-<random>`.
///
/// Only ASCII letters, digits and `-` are added, so the result is usable as an
/// AMQP exchange or queue name, a routing key word or a SIP token as long as
/// `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_keep_prefix() {
        let a = unique_name("q");
        let b = unique_name("q");
        assert_ne!(a, b);
        assert!(a.starts_with("q-"));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
