//! `kazoo_publish`, `kazoo_query`, `kazoo_async_query` / `kazoo_query_async`,
//! and their KEMI forms (`_kemi`: one function per native form, the same
//! work once the arguments are read).
//!
//! The calling process prepares the payload (the C module's rules, see
//! `kazoo_engine::payload`) and publishes it on its own broker link
//! ([`crate::direct`]; an asynchronous query's reply is then taken by a
//! consumer worker, see [`crate::worker`]) or hands it to the AMQP process,
//! waiting for the answer with a bound: a publish returns 1 only once the broker has
//! confirmed it; a query returns 1 with the reply in `$kzR`. Every failure is
//! -1 with a log line saying why; 0 (which silently stops the script) is
//! never returned.
//!
//! Configurations written for 2600hz's builds pass a numeric `flags`
//! argument (`"$def(X_AMQP_FLAGS)"`, e.g. 2048) where upstream has headers
//! (`kazoo_publish`) or a target variable (`kazoo_query`); an argument whose
//! value is an unsigned integer is read as flags (see [`Extra`]), and the
//! 2048 bit publishes `mandatory`.
use std::time::{Duration, Instant};

use kamailio::pv::NamedPv;
use kamailio::script::{ArgError, SpveArg};
use kamailio::tm::{self, ResumeRoute, Suspended};
use kamailio::SipMsg;
use kazoo_engine::broker::PublishError;
use kazoo_engine::ipc::{IpcError, Outcome, Outgoing, Request, ResumeAt};
use kazoo_engine::payload::{self, CommonFields, PayloadError, PublishFlags, PublishTarget};

use crate::direct;
use crate::ipc_client;
use crate::params::config;
use crate::pvs::QUERY_RESULT;
use crate::startup;

/// Extra time a query's caller waits on the socket beyond the query
/// timeout, for the AMQP process's own timeout answer to arrive.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Why a publish or query returned -1.
#[derive(Debug)]
pub(crate) enum AmqpError {
    Arg(ArgError),
    Target(String),
    Payload(PayloadError),
    NotInModInit,
    Ipc(IpcError),
    Failed(String),
    Timeout(u32),
}

impl std::fmt::Display for AmqpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AmqpError::Arg(e) => write!(f, "{e}"),
            AmqpError::Target(e) => write!(f, "{e}"),
            AmqpError::Payload(e) => write!(f, "{e}"),
            AmqpError::NotInModInit => {
                f.write_str("kazoo_query cannot run in kazoo:mod-init (no broker is connected yet)")
            }
            AmqpError::Ipc(e) => write!(f, "{e}"),
            AmqpError::Failed(reason) => write!(f, "{reason}"),
            AmqpError::Timeout(ms) => write!(f, "no reply within {ms} ms"),
        }
    }
}

impl From<ArgError> for AmqpError {
    fn from(e: ArgError) -> Self {
        AmqpError::Arg(e)
    }
}

impl From<PayloadError> for AmqpError {
    fn from(e: PayloadError) -> Self {
        AmqpError::Payload(e)
    }
}

fn common_fields() -> CommonFields {
    let config = config();
    CommonFields {
        app_name: config.params.app_name.clone(),
        app_version: kamailio::core_release(),
        node: config.node(),
    }
}

/// What a publish or query carries besides its payload: the upstream
/// headers argument, or the flags of 2600hz's builds.
#[derive(Default)]
struct Extra {
    headers: Option<Vec<u8>>,
    flags: Option<PublishFlags>,
}

impl Extra {
    /// Reads `value` as flags when it is an unsigned integer, else as headers.
    fn headers_or_flags(value: Vec<u8>) -> Extra {
        match PublishFlags::parse(&value) {
            Some(flags) => Extra {
                headers: None,
                flags: Some(flags),
            },
            None => Extra {
                headers: Some(value),
                flags: None,
            },
        }
    }

    /// Whether to publish `mandatory`; other flag bits are logged at debug
    /// level and ignored.
    fn mandatory(&self, function: &str) -> bool {
        let Some(flags) = self.flags else {
            return false;
        };
        if flags.ignored() != 0 {
            kamailio::debug!(
                "{function}: flags {} has bits without effect here ({:#x}); only 2048 (mandatory) is used",
                flags.0,
                flags.ignored()
            );
        }
        flags.mandatory()
    }
}

fn outgoing(
    target: PublishTarget,
    exchange: Vec<u8>,
    routing_key: &[u8],
    payload: &[u8],
    headers: Option<&[u8]>,
    mandatory: bool,
    timeout: Duration,
) -> Result<Outgoing, AmqpError> {
    payload::check_routing_key(routing_key).map_err(|e| AmqpError::Target(e.to_string()))?;
    let prepared = payload::prepare_publish(payload, &common_fields(), payload::new_msg_id)?;
    Ok(Outgoing {
        target,
        exchange,
        routing_key: routing_key.to_vec(),
        headers: headers.map(payload::parse_headers).unwrap_or_default(),
        payload: prepared,
        timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        mandatory,
    })
}

fn call(request: Request, deadline: Instant) -> Result<Outcome, AmqpError> {
    ipc_client::with_requester(|requester| requester.call(request, deadline))
        .map_err(AmqpError::Failed)?
        .map_err(AmqpError::Ipc)
}

/// `kazoo_publish(exchange, routing_key, payload [, headers | flags])`.
pub(crate) fn publish(msg: &mut SipMsg, args: &[SpveArg]) -> Result<i32, AmqpError> {
    let exchange = args[0].value(msg)?;
    let routing_key = args[1].value(msg)?;
    let payload = args[2].value(msg)?;
    let extra = match args.get(3) {
        Some(arg) => Extra::headers_or_flags(arg.value(msg)?),
        None => Extra::default(),
    };
    publish_values(exchange, &routing_key, &payload, extra)
}

/// `KSR.kazoo.kazoo_publish(exchange, routing_key, payload)`.
pub(crate) fn publish_kemi(_msg: &mut SipMsg, args: [&[u8]; 3]) -> Result<i32, AmqpError> {
    publish_values(args[0].to_vec(), args[1], args[2], Extra::default())
}

/// `KSR.kazoo.kazoo_publish_hdrs(exchange, routing_key, payload, headers)`:
/// the fourth argument is always headers (never flags).
pub(crate) fn publish_hdrs_kemi(_msg: &mut SipMsg, args: [&[u8]; 4]) -> Result<i32, AmqpError> {
    let extra = Extra {
        headers: Some(args[3].to_vec()),
        flags: None,
    };
    publish_values(args[0].to_vec(), args[1], args[2], extra)
}

fn publish_values(
    exchange: Vec<u8>,
    routing_key: &[u8],
    payload: &[u8],
    extra: Extra,
) -> Result<i32, AmqpError> {
    let (target, routing_key) =
        payload::parse_target(routing_key).map_err(|e| AmqpError::Target(e.to_string()))?;
    let timeout = Duration::from_millis(config().params.amqp_publish_timeout as u64);
    let mandatory = extra.mandatory("kazoo_publish");
    let outgoing = outgoing(
        target,
        exchange,
        routing_key,
        payload,
        extra.headers.as_deref(),
        mandatory,
        timeout,
    )?;
    if startup::in_mod_init() {
        startup::queue_publish(outgoing);
        kamailio::info!("kazoo_publish in kazoo:mod-init: queued until a broker is connected");
        return Ok(1);
    }
    if let Some(result) = direct::publish(&outgoing, Instant::now() + timeout) {
        return result
            .map(|()| 1)
            .map_err(|e| AmqpError::Failed(e.to_string()));
    }
    match call(
        Request::Publish(outgoing),
        Instant::now() + timeout + ANSWER_MARGIN,
    )? {
        Outcome::Published => Ok(1),
        Outcome::Failed(reason) => Err(AmqpError::Failed(reason)),
        Outcome::Timeout => Err(AmqpError::Failed(
            "the broker did not confirm in time".into(),
        )),
        Outcome::Reply(_) => Err(AmqpError::Failed("unexpected answer".into())),
    }
}

/// The query timeout: `amqp_query_timeout_avp` when it holds a non-zero
/// integer (milliseconds, as the C module reads it), else the modparams.
fn query_timeout(msg: &mut SipMsg) -> Duration {
    let params = &config().params;
    let from_avp = params
        .amqp_query_timeout_avp
        .as_ref()
        .and_then(|name| NamedPv::lookup(name.as_bytes()))
        .and_then(|pv| pv.get_int(msg))
        .filter(|ms| *ms > 0);
    match from_avp {
        Some(ms) => Duration::from_millis(ms as u64),
        None => params.amqp_query_timeout.duration(),
    }
}

/// `kazoo_query`'s fourth argument: the text of a variable name, as in the
/// C module; unless it names no writable variable and its value is an
/// unsigned integer: then it is flags (2600hz's builds).
fn target_or_flags(msg: &mut SipMsg, arg: &SpveArg) -> (Option<Vec<u8>>, Extra) {
    let name = arg.literal();
    if NamedPv::lookup(&name).is_some_and(|pv| pv.is_writable()) {
        return (Some(name), Extra::default());
    }
    // A value that cannot be read is not flags: the name is kept, as upstream.
    let flags = arg
        .value(msg)
        .ok()
        .and_then(|value| PublishFlags::parse(&value));
    match flags {
        Some(flags) => (
            None,
            Extra {
                headers: None,
                flags: Some(flags),
            },
        ),
        None => (Some(name), Extra::default()),
    }
}

/// `kazoo_query(exchange, routing_key, payload [, target_var | flags [, headers]])`.
pub(crate) fn query(msg: &mut SipMsg, args: &[SpveArg]) -> Result<i32, AmqpError> {
    let exchange = args[0].value(msg)?;
    let routing_key = args[1].value(msg)?;
    let payload = args[2].value(msg)?;
    let (target_var, mut extra) = match args.get(3) {
        Some(arg) => target_or_flags(msg, arg),
        None => (None, Extra::default()),
    };
    extra.headers = args.get(4).map(|h| h.value(msg)).transpose()?;
    query_values(msg, exchange, &routing_key, &payload, target_var, extra)
}

/// `KSR.kazoo.kazoo_query(exchange, routing_key, payload)`.
pub(crate) fn query_kemi(msg: &mut SipMsg, args: [&[u8]; 3]) -> Result<i32, AmqpError> {
    query_values(
        msg,
        args[0].to_vec(),
        args[1],
        args[2],
        None,
        Extra::default(),
    )
}

/// `KSR.kazoo.kazoo_query_var(exchange, routing_key, payload, target_var)`:
/// the fourth argument is always a variable name (never flags).
pub(crate) fn query_var_kemi(msg: &mut SipMsg, args: [&[u8]; 4]) -> Result<i32, AmqpError> {
    let target = Some(args[3].to_vec());
    query_values(
        msg,
        args[0].to_vec(),
        args[1],
        args[2],
        target,
        Extra::default(),
    )
}

/// `KSR.kazoo.kazoo_query_hdrs(exchange, routing_key, payload, target_var,
/// headers)`: an empty `target_var` leaves the reply in `$kzR` only.
pub(crate) fn query_hdrs_kemi(msg: &mut SipMsg, args: [&[u8]; 5]) -> Result<i32, AmqpError> {
    let target = (!args[3].is_empty()).then(|| args[3].to_vec());
    let extra = Extra {
        headers: Some(args[4].to_vec()),
        flags: None,
    };
    query_values(msg, args[0].to_vec(), args[1], args[2], target, extra)
}

fn query_values(
    msg: &mut SipMsg,
    exchange: Vec<u8>,
    routing_key: &[u8],
    payload: &[u8],
    target_var: Option<Vec<u8>>,
    extra: Extra,
) -> Result<i32, AmqpError> {
    QUERY_RESULT.set(None);
    if startup::in_mod_init() {
        return Err(AmqpError::NotInModInit);
    }
    let timeout = query_timeout(msg);
    let outgoing = outgoing(
        PublishTarget::Primary,
        exchange,
        routing_key,
        payload,
        extra.headers.as_deref(),
        extra.mandatory("kazoo_query"),
        timeout,
    )?;
    let direct = direct::query(&outgoing, Instant::now() + timeout);
    let answer = match direct {
        Some(Ok(reply)) => Outcome::Reply(reply),
        Some(Err(PublishError::Timeout)) => Outcome::Timeout,
        Some(Err(e)) => Outcome::Failed(e.to_string()),
        None => call(
            Request::Query(outgoing),
            Instant::now() + timeout + ANSWER_MARGIN,
        )?,
    };
    let reply = match answer {
        Outcome::Reply(reply) => reply,
        Outcome::Timeout => return Err(AmqpError::Timeout(timeout.as_millis() as u32)),
        Outcome::Failed(reason) => return Err(AmqpError::Failed(reason)),
        Outcome::Published => return Err(AmqpError::Failed("unexpected answer".into())),
    };
    if let Some(name) = target_var {
        match NamedPv::lookup(&name) {
            Some(pv) if pv.set_str(msg, &reply).is_ok() => {}
            _ => kamailio::error!(
                "kazoo_query: cannot write the reply into {} (not a writable variable)",
                String::from_utf8_lossy(&name)
            ),
        }
    }
    QUERY_RESULT.set(Some(reply));
    Ok(1)
}

/// `kazoo_async_query(exchange, routing_key, payload, ok_route, err_route
/// [, flags])` (also `kazoo_query_async`): suspends the transaction, which a
/// kazoo worker resumes in `onreply_route[ok_route]` with the reply in `$kzR`,
/// or in `failure_route[err_route]` when no reply came in time. The script
/// stops here (0); -1 when nothing was suspended (the script goes on). The
/// sixth parameter is flags when its value is an unsigned integer (2600hz's
/// builds), else ignored, as in the C module.
pub(crate) fn async_query(msg: &mut SipMsg, args: &[SpveArg]) -> Result<Suspended, AmqpError> {
    let exchange = args[0].value(msg)?;
    let routing_key = args[1].value(msg)?;
    let payload = args[2].value(msg)?;
    let routes = [args[3].value(msg)?, args[4].value(msg)?];
    // Never a reason to fail: upstream ignores this argument.
    let flags = args
        .get(5)
        .and_then(|arg| arg.value(msg).ok())
        .and_then(|value| PublishFlags::parse(&value));
    async_query_values(msg, exchange, &routing_key, &payload, routes, flags)
}

/// `KSR.kazoo.kazoo_async_query(exchange, routing_key, payload, ok_function,
/// err_function)`: as the native function, with the names of the script's
/// functions that tm calls on resume (as a failure route) instead of route
/// blocks; 0 once suspended: the script should exit then.
pub(crate) fn async_query_kemi(msg: &mut SipMsg, args: [&[u8]; 5]) -> Result<Suspended, AmqpError> {
    let routes = [args[3].to_vec(), args[4].to_vec()];
    async_query_values(msg, args[0].to_vec(), args[1], args[2], routes, None)
}

fn async_query_values(
    msg: &mut SipMsg,
    exchange: Vec<u8>,
    routing_key: &[u8],
    payload: &[u8],
    routes: [Vec<u8>; 2],
    flags: Option<PublishFlags>,
) -> Result<Suspended, AmqpError> {
    if startup::in_mod_init() {
        return Err(AmqpError::NotInModInit);
    }
    let [ok_route, err_route] = routes.map(|r| String::from_utf8_lossy(&r).into_owned());
    // With a KEMI engine the names are the script's functions, which cannot
    // be looked up from here; tm logs a missing one on resume.
    if !kamailio::route::kemi_engine_present() {
        for (kind, name) in [
            (ResumeRoute::OnReply, &ok_route),
            (ResumeRoute::Failure, &err_route),
        ] {
            if !tm::route_exists(kind, name) {
                return Err(AmqpError::Failed(format!(
                    "{}[{name}] does not exist",
                    kind.block()
                )));
            }
        }
    }
    let extra = Extra {
        headers: None,
        flags,
    };
    let timeout = query_timeout(msg);
    let outgoing = outgoing(
        PublishTarget::Primary,
        exchange,
        routing_key,
        payload,
        None,
        extra.mandatory("kazoo_async_query"),
        timeout,
    )?;
    let suspended = tm::suspend(msg).map_err(|e| AmqpError::Failed(e.to_string()))?;
    let id = suspended.id();
    let resumption = direct::Resumption {
        hash: id.hash,
        label: id.label,
        ok_route: &ok_route,
        err_route: &err_route,
    };
    match direct::async_query(&outgoing, resumption, timeout) {
        direct::AsyncSent::Sent => return Ok(suspended),
        direct::AsyncSent::NotHere => {}
        direct::AsyncSent::Duplicate => {
            tm::cancel_suspend(suspended);
            return Err(AmqpError::Failed(format!(
                "a query with Msg-ID {} is already waiting for its reply",
                outgoing.payload.msg_id()
            )));
        }
    }
    let request = Request::AsyncQuery {
        outgoing,
        resume: ResumeAt {
            hash: id.hash,
            label: id.label,
            ok_route,
            err_route,
        },
    };
    let sent = ipc_client::with_requester(|requester| {
        requester.send(&request, Instant::now() + ANSWER_MARGIN)
    })
    .map_err(AmqpError::Failed)
    .and_then(|sent| sent.map_err(AmqpError::Ipc));
    match sent {
        Ok(()) => Ok(suspended),
        Err(e) => {
            tm::cancel_suspend(suspended);
            Err(e)
        }
    }
}
