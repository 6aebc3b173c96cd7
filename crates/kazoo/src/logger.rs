//! Routes the engine's `log` records to Kamailio's logger.
//!
//! The engine logs through the `log` facade. On a process's host thread the
//! records go to Kamailio's logger (levels and targets as configured); on
//! other threads (lapin's I/O thread) only warnings and errors are kept, on
//! stderr, because Kamailio's logger must not be called there.
use kamailio::log::{self, Level};

struct KamailioLogger;

impl ::log::Log for KamailioLogger {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.level() <= ::log::Level::Info || kamailio::thread::is_host_thread()
    }

    fn log(&self, record: &::log::Record<'_>) {
        if kamailio::thread::is_host_thread() {
            let level = match record.level() {
                ::log::Level::Error => Level::Err,
                ::log::Level::Warn => Level::Warn,
                ::log::Level::Info => Level::Info,
                ::log::Level::Debug | ::log::Level::Trace => Level::Dbg,
            };
            log::plain(level, format_args!("{}", record.args()));
        } else if record.level() <= ::log::Level::Warn {
            eprintln!("kazoo [{}]: {}", record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: KamailioLogger = KamailioLogger;

/// Installs the bridge (once per process; later calls do nothing).
pub(crate) fn install() {
    if ::log::set_logger(&LOGGER).is_ok() {
        ::log::set_max_level(::log::LevelFilter::Debug);
    }
}
