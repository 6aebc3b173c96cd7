//! The Kazoo edge configuration's registrar and presence roles written as
//! KEMI scripts, in Lua (app_lua) and in Python (app_python3), against
//! RabbitMQ and the emulated Kazoo backend, with the native test's checks
//! (`kazoo_edge_e2e.rs`, harness in `common/edge.rs`):
//!
//! - the subscriptions declared from the `event_callback` at
//!   `kazoo:mod-init` (`KSR.kazoo.kazoo_subscribe_simple` and
//!   `KSR.kazoo.kazoo_subscribe`) are consumed;
//! - REGISTER with digest: challenge, `authn_req` to the backend
//!   (`KSR.kazoo.kazoo_async_query`, resumed by tm in the script's
//!   functions), 200 or 403 from its answer, `save()`, `reg_success` on the
//!   broker (`KSR.kazoo.kazoo_publish`, `kazoo_encode`, `kazoo_json`);
//! - dialog, MWI and presence updates consumed by the `event_callback`,
//!   written by `KSR.kazoo.kazoo_pua_publish_*` and NOTIFYed to a
//!   SUBSCRIBEd client;
//! - a clean stop.
use crate::common;

use common::edge::{
    presence_updates_reach_watchers, register_with_digest_against_the_backend, stops_cleanly, Edge,
};

const MAIN_CFG: &str = include_str!("kazoo_edge_kemi/kamailio.cfg");
/// The queues (by prefix) the script's subscriptions declare.
const QUEUES: [&str; 2] = ["registrar-flush", "presence-dialog"];

/// Runs every check with the script `name` loaded by `engine` (the
/// engine's configuration lines).
fn edge_flows_pass(name: &str, script: &str, engine: &str) {
    let files = [
        ("defs.cfg", include_str!("kazoo_edge/defs.cfg")),
        ("globals.cfg", include_str!("kazoo_edge/globals.cfg")),
        ("modules.cfg", include_str!("kazoo_edge_kemi/modules.cfg")),
        ("engine.cfg", engine),
        (name, script),
    ];
    let edge = Edge::start(MAIN_CFG, &files, &QUEUES);
    register_with_digest_against_the_backend(&edge);
    presence_updates_reach_watchers(&edge);
    stops_cleanly(&edge);
}

#[test]
fn lua_edge_script_registers_and_serves_presence() {
    edge_flows_pass(
        "edge.lua",
        include_str!("kazoo_edge_kemi/edge.lua"),
        "loadmodule \"app_lua.so\"\n\
         modparam(\"app_lua\", \"load\", \"{{RUNDIR}}/edge.lua\")\n\
         cfgengine \"lua\"\n",
    );
}

#[test]
fn python_edge_script_registers_and_serves_presence() {
    edge_flows_pass(
        "edge.py",
        include_str!("kazoo_edge_kemi/edge.py"),
        "loadmodule \"app_python3.so\"\n\
         modparam(\"app_python3\", \"load\", \"{{RUNDIR}}/edge.py\")\n\
         cfgengine \"python\"\n",
    );
}
