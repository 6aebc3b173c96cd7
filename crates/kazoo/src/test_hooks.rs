//! Script functions that exist only to test the module's safety nets; built
//! with the `test-hooks` feature, never in a release build.
use kamailio::script::SpveArg;
use kamailio::SipMsg;

/// `kazoo_test_panic(reason)`: panics, to show that the guard turns a panic
/// into an error line and -1 while Kamailio keeps running.
pub fn panic(msg: &mut SipMsg, args: &[SpveArg; 1]) -> Result<i32, kamailio::script::ArgError> {
    let reason = args[0].value(msg)?;
    panic!("test hook: {}", String::from_utf8_lossy(&reason));
}

/// Makes this module's `child_init` fail in the consumer workers when the
/// environment has `KAZOO_TEST_FAIL_WORKER_INIT`, to show that such a
/// process exits instead of running the main process's start-up code.
pub fn child_init(rank: i32) -> Result<(), String> {
    if rank == kamailio::sys::PROC_XWORKER
        && std::env::var_os("KAZOO_TEST_FAIL_WORKER_INIT").is_some()
    {
        return Err("test hook: child_init fails in the worker".into());
    }
    Ok(())
}
