//! The host crate's error: what went wrong, by kind, and a message for the
//! log line.
use std::fmt;

/// Why a call into Kamailio failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A module the call needs is not loaded, or is not the build this one
    /// was made for (tm, a `db_*` driver).
    ModuleMissing,
    /// The core refused to register something (processes, statistics, the
    /// faked message of event routes) or to allocate shared memory for it.
    Registration,
    /// A module process could not be forked.
    Process,
    /// The database driver could not connect or a statement failed.
    Database,
    /// tm could not suspend or resume a transaction.
    Transaction,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// For modules whose hooks report their errors as text (`Result<(), String>`).
impl From<Error> for String {
    fn from(error: Error) -> String {
        error.message
    }
}

/// The kind of error each module of this crate reports, as constructors.
pub(crate) fn database(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Database, message)
}

pub(crate) fn module_missing(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::ModuleMissing, message)
}

pub(crate) fn registration(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Registration, message)
}

pub(crate) fn process(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Process, message)
}

pub(crate) fn transaction(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Transaction, message)
}
