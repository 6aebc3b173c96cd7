//! [`HarnessError`]: every way the harness itself can fail.
//!
//! The messages are written for the person reading a failed test: they say what
//! was attempted and, where the cause is usually the machine (a missing program,
//! an unbuilt module), what to do about it. Errors about a server that did not
//! come up carry the tail of its log, because that is where the reason is.

use std::fmt;
use std::io;

/// A failure of the harness (not an assertion of the test using it).
#[derive(Debug)]
pub enum HarnessError {
    /// A program the harness needs (Kamailio, RabbitMQ) was not found.
    NotInstalled {
        /// The program that was looked for, e.g. `kamailio`.
        program: &'static str,
        /// Where it was looked for and how to point the harness at it.
        hint: String,
    },
    /// The kazoo module has not been built (or `KAZOO_MODULE` names a missing file).
    ModuleNotBuilt(String),
    /// An operating-system call failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A server exited or did not become ready in time.
    StartupFailed {
        /// Which server, e.g. `kamailio` or the RabbitMQ node name.
        what: String,
        /// Why the harness gave up.
        reason: String,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// Nothing (or nothing matching) arrived before the deadline.
    ///
    /// For [`SipClient::send_request`](crate::SipClient::send_request) this is how a
    /// test sees that the script ended without sending a reply.
    Timeout(String),
    /// A datagram answered our request but could not be parsed as a SIP reply.
    BadReply(String),
    /// An external command (e.g. `rabbitmqctl`) exited unsuccessfully.
    CommandFailed {
        /// The command line, for the reader.
        command: String,
        /// How it ended (exit code or signal).
        status: String,
        /// Its stdout and stderr, interleaved.
        output: String,
    },
    /// [`hex_decode`](crate::hex_decode) was given something that is not hex.
    InvalidHex(String),
    /// No free port could be reserved in the harness's port range.
    NoFreePort(String),
    /// A server did not go away when stopped.
    StopFailed(String),
    /// The harness was used in a way it does not support.
    Usage(String),
}

impl HarnessError {
    /// Wraps an [`io::Error`] with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::NotInstalled { program, hint } => {
                write!(f, "`{program}` is not installed or not found: {hint}")
            }
            HarnessError::ModuleNotBuilt(msg) => write!(f, "kazoo module not available: {msg}"),
            HarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            HarnessError::StartupFailed {
                what,
                reason,
                log_tail,
            } => write!(
                f,
                "{what} did not start: {reason}\n--- last log lines ---\n{log_tail}\n--- end of log ---"
            ),
            HarnessError::Timeout(msg) => write!(f, "timed out: {msg}"),
            HarnessError::BadReply(msg) => write!(f, "unparsable SIP reply: {msg}"),
            HarnessError::CommandFailed {
                command,
                status,
                output,
            } => write!(f, "`{command}` failed ({status}):\n{output}"),
            HarnessError::InvalidHex(msg) => write!(f, "invalid hex: {msg}"),
            HarnessError::NoFreePort(msg) => write!(f, "no free port: {msg}"),
            HarnessError::StopFailed(msg) => write!(f, "stop failed: {msg}"),
            HarnessError::Usage(msg) => write!(f, "harness misuse: {msg}"),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
