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
