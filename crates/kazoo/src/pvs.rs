//! The per-process values behind the module's pseudo-variables: `$kzR`,
//! `$kzE`, `$kzRK` and `$knode`.
use kamailio::pv::ByteSlot;

/// `$kzR`: the last query result of this process.
pub(crate) static QUERY_RESULT: ByteSlot = ByteSlot::new();
/// `$kzE`: the payload of the event being handled.
pub(crate) static EVENT_PAYLOAD: ByteSlot = ByteSlot::new();
/// `$kzRK`: the routing key of the event being handled.
pub(crate) static EVENT_ROUTING_KEY: ByteSlot = ByteSlot::new();
/// `$knode`: this node's `Node` (`kamailio@<node_hostname>`), set at `mod_init`.
pub(crate) static NODE_NAME: ByteSlot = ByteSlot::new();
