//! `kazoo_json`, `kazoo_json_keys` and `kazoo_encode`: JSON field access and
//! routing-key encoding from the script, with the C module's results.
//!
//! The KEMI forms take the destination variable's name as text (e.g.
//! `"$var(x)"`), as the native ones take the variable, and return the same
//! codes.
use kamailio::pv::NamedPv;
use kamailio::script::{PvDest, SpveArg};
use kamailio::SipMsg;
use kazoo_engine::encode;
use kazoo_engine::json::{self, JsonError};

use crate::params::config;

/// Errors that make these functions return -1.
#[derive(Debug)]
pub(crate) enum ScriptError {
    Arg(kamailio::script::ArgError),
    Json(JsonError),
    NotAvp,
    NotWritable(String),
    EncodeTooLong(usize),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::Arg(e) => write!(f, "{e}"),
            ScriptError::Json(e) => write!(f, "{e}"),
            ScriptError::NotAvp => f.write_str("the destination must be an AVP, e.g. $avp(keys)"),
            ScriptError::NotWritable(name) => {
                write!(f, "the destination {name:?} is not a writable variable")
            }
            ScriptError::EncodeTooLong(n) => {
                write!(f, "input is {n} bytes, longer than the 255 bytes allowed")
            }
        }
    }
}

impl From<kamailio::script::ArgError> for ScriptError {
    fn from(e: kamailio::script::ArgError) -> Self {
        ScriptError::Arg(e)
    }
}

/// `kazoo_json(json, path, $dst)`: the value at `path`, or `$null` when it is
/// missing or JSON null. Invalid JSON logs an error and gives `$null` with
/// return code 1, as in the C module; a path with an empty segment (which
/// aborts the C module) gives `$null` and -1.
pub(crate) fn kazoo_json(
    msg: &mut SipMsg,
    args: &[SpveArg; 2],
    target: &PvDest,
) -> Result<i32, ScriptError> {
    let payload = args[0].value(msg)?;
    let path = args[1].value(msg)?;
    json_into(msg, &payload, &path, target)
}

/// `KSR.kazoo.kazoo_json(json, path, target_var)`.
pub(crate) fn kazoo_json_kemi(msg: &mut SipMsg, args: [&[u8]; 3]) -> Result<i32, ScriptError> {
    json_into(msg, args[0], args[1], &kemi_target(args[2])?)
}

fn json_into(
    msg: &mut SipMsg,
    payload: &[u8],
    path: &[u8],
    target: &PvDest,
) -> Result<i32, ScriptError> {
    match json::field_text(payload, path, config().params.json_escape_char) {
        Ok(Some(value)) => target.set_str(msg, &value)?,
        Ok(None) => target.set_null(msg)?,
        Err(e @ JsonError::InvalidJson(_)) => {
            kamailio::error!("kazoo_json: {e}");
            target.set_null(msg)?;
        }
        Err(e) => {
            target.set_null(msg)?;
            return Err(ScriptError::Json(e));
        }
    }
    Ok(1)
}

/// `kazoo_json_keys(json, path, $avp(x))`: adds one value to the AVP per key
/// of the object at `path`, in object order (so `$(avp(x)[0])` is the last
/// key). A missing path or invalid JSON adds nothing and returns 1; a path
/// that holds something other than an object returns -1 (the C module
/// crashes there).
pub(crate) fn kazoo_json_keys(
    msg: &mut SipMsg,
    args: &[SpveArg; 2],
    target: &PvDest,
) -> Result<i32, ScriptError> {
    let payload = args[0].value(msg)?;
    let path = args[1].value(msg)?;
    keys_into(msg, &payload, &path, target)
}

/// `KSR.kazoo.kazoo_json_keys(json, path, avp_name)`.
pub(crate) fn kazoo_json_keys_kemi(msg: &mut SipMsg, args: [&[u8]; 3]) -> Result<i32, ScriptError> {
    keys_into(msg, args[0], args[1], &kemi_target(args[2])?)
}

fn keys_into(
    msg: &mut SipMsg,
    payload: &[u8],
    path: &[u8],
    target: &PvDest,
) -> Result<i32, ScriptError> {
    if !target.is_avp() {
        return Err(ScriptError::NotAvp);
    }
    match json::object_keys(payload, path, config().params.json_escape_char) {
        Ok(Some(keys)) => {
            for key in keys {
                target.set_str(msg, &key)?;
            }
        }
        Ok(None) => {}
        Err(e @ JsonError::InvalidJson(_)) => kamailio::error!("kazoo_json_keys: {e}"),
        Err(e) => return Err(ScriptError::Json(e)),
    }
    Ok(1)
}

/// `kazoo_encode(input, $dst)`: the routing-key encoding of `input`; inputs
/// longer than 255 bytes return -1 and leave `$dst` unchanged.
pub(crate) fn kazoo_encode(
    msg: &mut SipMsg,
    args: &[SpveArg; 1],
    target: &PvDest,
) -> Result<i32, ScriptError> {
    let input = args[0].value(msg)?;
    encode_into(msg, &input, target)
}

/// `KSR.kazoo.kazoo_encode(input, target_var)`.
pub(crate) fn kazoo_encode_kemi(msg: &mut SipMsg, args: [&[u8]; 2]) -> Result<i32, ScriptError> {
    encode_into(msg, args[0], &kemi_target(args[1])?)
}

fn encode_into(msg: &mut SipMsg, input: &[u8], target: &PvDest) -> Result<i32, ScriptError> {
    let encoded = encode::encode_checked(input).ok_or(ScriptError::EncodeTooLong(input.len()))?;
    target.set_str(msg, &encoded)?;
    Ok(1)
}

/// The writable variable a KEMI function names as its destination.
fn kemi_target(name: &[u8]) -> Result<PvDest, ScriptError> {
    NamedPv::lookup(name)
        .and_then(|pv| pv.dest())
        .ok_or_else(|| ScriptError::NotWritable(String::from_utf8_lossy(name).into_owned()))
}
