//! End-to-end test harness for the kazoo module: runs a real Kamailio with a
//! test config, talks SIP to it, and provides RabbitMQ brokers.
//!
//! - [`Kamailio`]: starts `kamailio` from config text with placeholders
//!   (`{{PORT}}`, `{{MODULE}}`, `{{RUNDIR}}`, `{{MPATH}}`, `{{CTL}}`; see
//!   [`Kamailio`]) and extra included files, waits until it answers SIP,
//!   exposes its log and `kamcmd`, stops it on drop and prints the log tail if
//!   the test panicked. [`check_config`] runs `kamailio -c`.
//! - [`SipClient`] / [`SipReply`] / [`SipRequest`]: one request, its final
//!   reply (with digest authentication when challenged); a
//!   [`HarnessError::Timeout`] means the script did not reply. Requests the
//!   server sends (NOTIFY) are answered 200 and kept for the test.
//! - [`hex_encode`] / [`hex_decode`]: carry arbitrary bytes in headers, matching
//!   Kamailio's `{s.encode.hexa}` (lowercase) and `{s.decode.hexa}` (either case).
//! - [`RabbitNode`]: a private broker that a test may stop and restart;
//!   [`system_broker_url`] / [`system_rabbitmqctl`] for the shared one.
//! - [`unique_name`]: per-test exchange, queue and key names.
//! - [`TestPki`]: fresh CA, server and client certificates for TLS tests.
//! - [`tsv_rows`], [`tsv_cell`], [`jsonl`]: the vectors captured from the C
//!   module (`vectors/`).
//! - [`AmqpProbe`]: an independent AMQP client that inspects what reached the
//!   broker, publishes to subscriptions and answers queries like a Kazoo
//!   responder.
//! - [`RawPublisher`]: publishes byte-exact frames (invalid UTF-8 in the
//!   routing key, property and header names, any table encoding) that no AMQP
//!   client library would send.
//! - [`tree_usage`]: PSS and open descriptors of a process and its
//!   descendants (a Kamailio's processes), from `/proc`.
//!
//! Everything is safe to use from tests running in parallel, in threads or in
//! processes: ports are reserved machine-wide, directories are fresh temporary
//! ones, and only processes the harness started are ever signalled. All waits
//! are bounded.
//!
//! Environment variables read: `KAMAILIO_BIN`, `KAMAILIO_MODULES_DIR`,
//! `KAMCMD`, `KAZOO_MODULE`, `CARGO_TARGET_DIR`, `KAMAILIO_TEST_KEEP`, `RABBITMQ_SERVER`,
//! `RABBITMQCTL`, `AMQP_URL`.

mod amqp;
mod error;
mod hex;
mod kamailio;
mod names;
mod pki;
mod ports;
mod process;
mod procinfo;
mod rabbit;
mod raw_amqp;
mod sip;
mod vectors;

pub use amqp::{msg_id_of, AmqpProbe, ProbeMessage, Responder};
pub use error::HarnessError;
pub use hex::{hex_decode, hex_encode};
pub use kamailio::{
    check_config, module_path, try_module_path, CheckResult, Kamailio, KamailioBuilder,
};
pub use names::unique_name;
pub use pki::TestPki;
pub use procinfo::{process_tree, tree_context_switches, tree_cpu_ticks, tree_usage, ProcessUsage};
pub use rabbit::{
    system_broker_url, system_queue_messages, system_rabbitmqctl, QueueMessages, RabbitNode,
};
pub use raw_amqp::{table, value_array, value_long_str, value_table, RawProperties, RawPublisher};
pub use sip::{DigestCredentials, SipClient, SipReply, SipRequest};
pub use vectors::{jsonl, read_vector, tsv_cell, tsv_rows, vectors_dir};
