//! `kazoo_pua_publish`, `kazoo_pua_publish_presence`, `kazoo_pua_publish_mwi`
//! and `kazoo_pua_publish_dialoginfo`: presence state from bus events,
//! written into the presentity table through Kamailio's DB API (the rows and
//! bodies are the C module's, `kazoo_engine::presence`).
//!
//! As in the C module, the parameter has no fixup (pass `$kzE` unquoted),
//! nothing is written when required fields are missing (logged, return 1),
//! and invalid JSON returns -1. Unlike it, a failed database write returns
//! -1 (the C module returns 1).
use std::time::{SystemTime, UNIX_EPOCH};

use kamailio::db::{self, DbValue};
use kamailio::SipMsg;
use kazoo_engine::presence::{self, Entry, Outcome, Row, WritePlan};

use crate::params::config;

/// Why a presence function returned -1.
#[derive(Debug)]
pub(crate) enum PuaError {
    Disabled,
    Presence(String),
    Database(String),
}

impl std::fmt::Display for PuaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PuaError::Disabled => {
                f.write_str("presence writes are off (pua_mode is not 1, or no db_url)")
            }
            PuaError::Presence(e) => write!(f, "{e}"),
            PuaError::Database(e) => write!(f, "{e}"),
        }
    }
}

/// `kazoo_pua_publish(json)`: dispatches on `Event-Package` when `Event-Name`
/// is `update`.
pub(crate) fn publish_any(_msg: &mut SipMsg, payload: Vec<u8>) -> Result<i32, PuaError> {
    publish(Entry::Any, &payload)
}

/// `kazoo_pua_publish_presence(json)`.
pub(crate) fn publish_presence(_msg: &mut SipMsg, payload: Vec<u8>) -> Result<i32, PuaError> {
    publish(Entry::Presence, &payload)
}

/// `kazoo_pua_publish_mwi(json)`.
pub(crate) fn publish_mwi(_msg: &mut SipMsg, payload: Vec<u8>) -> Result<i32, PuaError> {
    publish(Entry::Mwi, &payload)
}

/// `kazoo_pua_publish_dialoginfo(json)`.
pub(crate) fn publish_dialoginfo(_msg: &mut SipMsg, payload: Vec<u8>) -> Result<i32, PuaError> {
    publish(Entry::DialogInfo, &payload)
}

/// `KSR.kazoo.kazoo_pua_publish(json)`.
pub(crate) fn publish_any_kemi(_msg: &mut SipMsg, args: [&[u8]; 1]) -> Result<i32, PuaError> {
    publish(Entry::Any, args[0])
}

/// `KSR.kazoo.kazoo_pua_publish_presence(json)`.
pub(crate) fn publish_presence_kemi(_msg: &mut SipMsg, args: [&[u8]; 1]) -> Result<i32, PuaError> {
    publish(Entry::Presence, args[0])
}

/// `KSR.kazoo.kazoo_pua_publish_mwi(json)`.
pub(crate) fn publish_mwi_kemi(_msg: &mut SipMsg, args: [&[u8]; 1]) -> Result<i32, PuaError> {
    publish(Entry::Mwi, args[0])
}

/// `KSR.kazoo.kazoo_pua_publish_dialoginfo(json)`.
pub(crate) fn publish_dialoginfo_kemi(
    _msg: &mut SipMsg,
    args: [&[u8]; 1],
) -> Result<i32, PuaError> {
    publish(Entry::DialogInfo, args[0])
}

fn publish(entry: Entry, payload: &[u8]) -> Result<i32, PuaError> {
    let params = &config().params;
    if params.pua_mode != 1 || params.db_url.is_none() {
        return Err(PuaError::Disabled);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let plan = presence::plan(entry, payload, now, params.pua_include_entity)
        .map_err(|e| PuaError::Presence(e.to_string()))?;
    match plan {
        Outcome::Skip(reason) => {
            // The C module logs missing fields as an error and the other
            // skips (not an update, another package) not at all.
            if reason.is_error() {
                kamailio::error!("{reason}");
            } else {
                kamailio::debug!("nothing to write: {reason}");
            }
            Ok(1)
        }
        Outcome::Write(plan) => {
            write(&plan).map_err(PuaError::Database)?;
            Ok(1)
        }
    }
}

/// The row's columns in the C module's order; the first four are the keys.
fn columns(row: &Row) -> [(&'static str, DbValue<'_>); 9] {
    [
        ("event", DbValue::Str(row.event.as_bytes())),
        ("domain", DbValue::Str(row.domain.as_bytes())),
        ("username", DbValue::Str(row.username.as_bytes())),
        ("etag", DbValue::Str(row.etag.as_bytes())),
        ("sender", DbValue::Str(row.sender.as_bytes())),
        ("body", DbValue::Blob(&row.body)),
        ("received_time", DbValue::Int(row.received_time as i32)),
        ("expires", DbValue::Int(row.expires as i32)),
        ("priority", DbValue::Int(row.priority)),
    ]
}

fn write(plan: &WritePlan) -> Result<(), String> {
    let params = &config().params;
    let table: &'static str = params.presentity_table.as_str();
    db::with_connection(|con| {
        con.use_table(table)?;
        con.transaction(params.pua_lock_type, || match plan {
            WritePlan::DeleteThenInsert { keys, row } => {
                let all = columns(row);
                con.delete(&all[..(*keys).min(4)])?;
                con.insert(&all)
            }
            WritePlan::Replace { row } => {
                let all = columns(row);
                if con.can_replace() {
                    con.replace(&all, 4)
                } else {
                    con.delete(&all[..4])?;
                    con.insert(&all)
                }
            }
        })
    })
    .map_err(String::from)
}
