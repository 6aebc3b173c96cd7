//! The kazoo engine: plain Rust that knows nothing of Kamailio.
//!
//! Layout:
//! - [`json`]: a json-c compatible reader and writer (lenient input, "spaced" output),
//!   the `kazoo_json` / `kz.json` path language and the script-level helpers built on it.
//! - [`encode`]: the routing-key encoder behind `kazoo_encode` and `{kz.encode}`.
//! - [`config`]: broker URLs (`amqp_connection`), zones and the validation of the
//!   module's parameters.
#![forbid(unsafe_code)]

pub mod config;
pub mod encode;
pub mod json;
