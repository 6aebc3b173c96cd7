//! Script functions that exist only to test the module's safety nets; built
//! with the `test-hooks` feature, never in a release build.
use kamailio::script::SpveArg;
use kamailio::SipMsg;

/// `kazoo_test_panic(reason)`: panics, to show that the guard turns a panic
/// into an error line and -1 while Kamailio keeps running.
pub(crate) fn panic(
    msg: &mut SipMsg,
    args: &[SpveArg; 1],
) -> Result<i32, kamailio::script::ArgError> {
    let reason = args[0].value(msg)?;
    panic!("test hook: {}", String::from_utf8_lossy(&reason));
}

/// Makes this module's `child_init` fail in the consumer workers when the
/// environment has `KAZOO_TEST_FAIL_WORKER_INIT`, to show that such a
/// process exits instead of running the main process's start-up code.
pub(crate) fn child_init(rank: i32) -> Result<(), String> {
    if rank == kamailio::sys::PROC_XWORKER
        && std::env::var_os("KAZOO_TEST_FAIL_WORKER_INIT").is_some()
    {
        return Err("test hook: child_init fails in the worker".into());
    }
    Ok(())
}

/// Set by `kazoo_test_break_link`: the worker drops its link to the AMQP
/// process after the current route, before reporting it.
static BREAK_LINK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `kazoo_test_break_link(reason)`: makes this worker drop its link to the
/// AMQP process once the current event route ends (before the ack), to show
/// that the delivery goes back to the broker instead of being lost.
pub(crate) fn break_link(
    _msg: &mut SipMsg,
    _args: &[SpveArg; 1],
) -> Result<i32, kamailio::script::ArgError> {
    BREAK_LINK.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(1)
}

/// Whether the worker should drop its link now (and forget the request).
pub(crate) fn take_break_link() -> bool {
    BREAK_LINK.swap(false, std::sync::atomic::Ordering::Relaxed)
}
