//! The AMQP and presence functions: `kazoo_publish`, `kazoo_query`,
//! `kazoo_async_query` / `kazoo_query_async` and `kazoo_pua_publish*`.
//!
//! They are registered with the C module's names and argument counts, so
//! configurations that use them load unchanged, but the AMQP engine and the
//! presence writer are not part of this build yet: each call logs why and
//! returns -1 (never 0, which would silently end the script).
use kamailio::script::SpveArg;
use kamailio::SipMsg;

/// The reason these functions fail in this build.
#[derive(Debug)]
pub struct NotAvailable;

impl std::fmt::Display for NotAvailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not available yet in this build of the kazoo module (returns -1)")
    }
}

pub fn publish(_msg: &mut SipMsg, _args: &[SpveArg]) -> Result<i32, NotAvailable> {
    Err(NotAvailable)
}

pub fn publish_kemi(_msg: &mut SipMsg, _args: [&[u8]; 3]) -> Result<i32, NotAvailable> {
    Err(NotAvailable)
}

pub fn query(_msg: &mut SipMsg, _args: &[SpveArg]) -> Result<i32, NotAvailable> {
    Err(NotAvailable)
}

pub fn async_query(_msg: &mut SipMsg, _args: &[SpveArg]) -> Result<i32, NotAvailable> {
    Err(NotAvailable)
}

pub fn pua_publish(_msg: &mut SipMsg, _payload: Vec<u8>) -> Result<i32, NotAvailable> {
    Err(NotAvailable)
}
