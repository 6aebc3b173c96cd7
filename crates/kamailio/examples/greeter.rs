//! A whole Kamailio module on this crate, and the crate's own end-to-end
//! test (`tests/tests.rs` loads it into a real Kamailio):
//!
//! ```cfg
//! loadmodule "libgreeter.so"
//! modparam("greeter", "greeting", "hello")
//! ...
//! greet("$fU", "$var(text)");   # $var(text) = "hello, <from user>"
//! ```
//!
//! `cargo build -p kamailio --example greeter` builds it into
//! `target/<profile>/examples/libgreeter.so`, for the Kamailio found at
//! build time (see `kamailio-sys`).
#![deny(unsafe_code)]

use std::sync::Mutex;

use kamailio::params::ParamValue;
use kamailio::script::{PvDest, SpveArg};
use kamailio::{cmd, param, SipMsg};

/// Set by `modparam` in the main process before the fork: every process
/// reads its own copy.
static GREETING: Mutex<String> = Mutex::new(String::new());

kamailio::module! {
    name: c"greeter",
    cmds: [cmd!("greet", spve_pv<2>(name; target) => greet)],
    params: [param!("greeting", Str, set_greeting)],
    init: init,
}

fn set_greeting(_name: &str, value: ParamValue<'_>) -> Result<(), String> {
    match value {
        ParamValue::Str(text) => {
            *GREETING.lock().unwrap_or_else(|e| e.into_inner()) =
                String::from_utf8_lossy(text).into_owned();
            Ok(())
        }
        ParamValue::Int(_) => Err("a string is expected".into()),
    }
}

/// `greet(name, $var)`: 1, with the greeting in the variable.
fn greet(msg: &mut SipMsg, args: &[SpveArg; 1], target: &PvDest) -> Result<i32, String> {
    let name = args[0].value(msg).map_err(|e| e.to_string())?;
    let greeting = GREETING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let text = format!("{greeting}, {}", String::from_utf8_lossy(&name));
    target
        .set_str(msg, text.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(1)
}

fn init() -> Result<(), String> {
    let mut greeting = GREETING.lock().unwrap_or_else(|e| e.into_inner());
    if greeting.is_empty() {
        *greeting = "hello".into();
    }
    kamailio::info!("greeting with \"{greeting}\"");
    Ok(())
}
