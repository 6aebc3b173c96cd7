//! Kamailio's generic DB API (libsrdb1 and a `db_*` module), for the module's
//! writes to the presentity table.
//!
//! [`bind`] runs in `mod_init`: it finds `db_bind_mod` in the running process
//! (from Kamailio 6.0 the core binary holds the DB API), else in the libsrdb1
//! the DB modules already loaded (up to 5.8; `dlopen` of an already-loaded
//! library returns it), and binds the driver named by the URL's scheme (`sqlite://` →
//! `db_sqlite`, which must be loaded). Connections cannot cross a fork, so
//! each process opens its own on first use ([`with_connection`], which
//! never uses one opened by another process), and the main process closes
//! the one its start-up scripts opened before Kamailio forks
//! ([`close_connection`]).
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::OnceLock;

use crate::error::{database, module_missing, Error};
use crate::sys;

/// Where Debian installs libsrdb1 (up to 5.8), tried when no loaded copy is found.
const SRDB1_PATH: &str = "/usr/lib/x86_64-linux-gnu/kamailio/libsrdb1.so.1";

#[derive(Debug)]
struct Api {
    url: CString,
    funcs: sys::db_func_t,
}

// SAFETY: the function table is written once in mod_init (main process,
// before any thread or fork) and only read afterwards.
unsafe impl Sync for Api {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for Api {}

static API: OnceLock<Api> = OnceLock::new();

fn text_str(text: &[u8]) -> sys::str_ {
    sys::str_ {
        s: text.as_ptr() as *mut c_char,
        len: text.len() as c_int,
    }
}

/// `db_bind_mod`: exported by the core binary from Kamailio 6.0, by
/// libsrdb1 (loaded by the DB modules) before.
fn find_db_bind_mod() -> Result<*mut c_void, Error> {
    // SAFETY: a lookup in the process's global scope with a static name.
    let in_process = unsafe { sys::dlsym(sys::RTLD_DEFAULT, c"db_bind_mod".as_ptr()) };
    if !in_process.is_null() {
        return Ok(in_process);
    }
    // SAFETY: plain libc calls with NUL-terminated names.
    let handle = unsafe {
        let loaded = sys::dlopen(c"libsrdb1.so.1".as_ptr(), sys::RTLD_NOW);
        if loaded.is_null() {
            let path = CString::new(SRDB1_PATH).unwrap_or_default();
            sys::dlopen(path.as_ptr(), sys::RTLD_NOW)
        } else {
            loaded
        }
    };
    if handle.is_null() {
        return Err(module_missing(
            "cannot find db_bind_mod (is a db_* module loaded?)",
        ));
    }
    // SAFETY: a symbol lookup in the handle just opened.
    let symbol = unsafe { sys::dlsym(handle, c"db_bind_mod".as_ptr()) };
    if symbol.is_null() {
        return Err(module_missing("libsrdb1 has no db_bind_mod"));
    }
    Ok(symbol)
}

/// Binds the DB driver for `url` (call in `mod_init`).
pub fn bind(url: &str) -> Result<(), Error> {
    let url = CString::new(url).map_err(|_| database("the DB URL has a NUL byte"))?;
    let symbol = find_db_bind_mod()?;
    // SAFETY: `db_bind_mod` has this signature (srdb1/db.h).
    let bind_mod = unsafe { std::mem::transmute::<*mut c_void, sys::db_bind_mod_f>(symbol) };
    // SAFETY: `db_func_t` is plain pointers and an int: all-zero is valid.
    let mut funcs: sys::db_func_t = unsafe { std::mem::zeroed() };
    let url_str = text_str(url.as_bytes());
    // SAFETY: a valid URL `str` and a writable function table.
    if unsafe { bind_mod(&url_str, &mut funcs) } != 0 {
        return Err(module_missing(format!(
            "cannot bind the DB module for {} (is its db_* module loaded before this module?)",
            redact(url.to_str().unwrap_or_default())
        )));
    }
    if funcs.cap & sys::DB_CAP_ALL != sys::DB_CAP_ALL
        || funcs.insert.is_none()
        || funcs.delete.is_none()
    {
        return Err(database(
            "the DB module cannot query, insert, delete and update",
        ));
    }
    let _ = API.set(Api { url, funcs });
    Ok(())
}

/// The URL without its password, for log lines.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A value to write.
#[derive(Clone, Copy, Debug)]
pub enum DbValue<'a> {
    Str(&'a [u8]),
    Blob(&'a [u8]),
    Int(i32),
}

impl DbValue<'_> {
    fn raw(&self) -> sys::db_val_t {
        match self {
            DbValue::Str(s) => sys::db_val_t {
                type_: sys::DB1_STR,
                nul: 0,
                free: 0,
                val: sys::db_val_union {
                    str_val: text_str(s),
                },
            },
            DbValue::Blob(b) => sys::db_val_t {
                type_: sys::DB1_BLOB,
                nul: 0,
                free: 0,
                val: sys::db_val_union {
                    str_val: text_str(b),
                },
            },
            DbValue::Int(i) => sys::db_val_t {
                type_: sys::DB1_INT,
                nul: 0,
                free: 0,
                val: sys::db_val_union { int_val: *i },
            },
        }
    }
}

/// This process's connection (opened on first use).
#[derive(Debug)]
pub struct Connection {
    con: *mut sys::db1_con_t,
    api: &'static Api,
    /// The process that opened it: a connection is one socket and one
    /// driver state, which two processes must never share.
    owner: u32,
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Runs `f` with this process's connection, opening it first if needed. A
/// connection inherited across a fork is left to the process that opened it
/// (neither used nor closed here) and a new one is opened.
pub fn with_connection<R>(f: impl FnOnce(&Connection) -> Result<R, Error>) -> Result<R, Error> {
    let api = API
        .get()
        .ok_or_else(|| database("no database is configured (db_url)"))?;
    let pid = std::process::id();
    CONNECTION.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_some_and(|c| c.owner != pid) {
            crate::debug!("not using the DB connection inherited from the parent process");
            *slot = None;
        }
        if slot.is_none() {
            let init = api
                .funcs
                .init
                .ok_or_else(|| database("the DB module cannot open connections"))?;
            let url = text_str(api.url.as_bytes());
            // SAFETY: the driver's init with a valid URL; the connection belongs to this process.
            let con = unsafe { init(&url) };
            if con.is_null() {
                return Err(database("cannot connect to the database"));
            }
            *slot = Some(Connection {
                con,
                api,
                owner: pid,
            });
        }
        match slot.as_ref() {
            Some(connection) => f(connection),
            None => Err(database("cannot connect to the database")),
        }
    })
}

/// Closes this process's connection, if it opened one. The main process
/// calls it once its start-up scripts ran, so that no connection exists
/// when Kamailio forks (as Kamailio's own DB users close theirs).
pub fn close_connection() {
    CONNECTION.with(|slot| {
        let Some(connection) = slot.borrow_mut().take() else {
            return;
        };
        if connection.owner != std::process::id() {
            return;
        }
        if let Some(close) = connection.api.funcs.close {
            // SAFETY: a connection this process opened and no longer uses.
            unsafe { close(connection.con) };
        }
    });
}

/// The `str` of a table name, one per name for the life of the process.
fn table_name(table: &'static str) -> &'static sys::str_ {
    thread_local! {
        static NAMES: RefCell<Vec<(&'static str, &'static sys::str_)>> =
            const { RefCell::new(Vec::new()) };
    }
    NAMES.with(|names| {
        let mut names = names.borrow_mut();
        if let Some((_, name)) = names.iter().find(|(t, _)| *t == table) {
            return *name;
        }
        let name: &'static sys::str_ = Box::leak(Box::new(text_str(table.as_bytes())));
        names.push((table, name));
        name
    })
}

/// Column names and values as the driver takes them (keys stay borrowed).
struct Columns<'a> {
    names: Vec<sys::str_>,
    values: Vec<sys::db_val_t>,
    _borrow: std::marker::PhantomData<&'a ()>,
}

impl<'a> Columns<'a> {
    fn new(columns: &[(&'a str, DbValue<'a>)]) -> Columns<'a> {
        Columns {
            names: columns
                .iter()
                .map(|(n, _)| text_str(n.as_bytes()))
                .collect(),
            values: columns.iter().map(|(_, v)| v.raw()).collect(),
            _borrow: std::marker::PhantomData,
        }
    }

    fn keys(&self) -> Vec<sys::db_key_t> {
        self.names.iter().map(|n| n as *const sys::str_).collect()
    }
}

impl Connection {
    fn check(rc: c_int, what: &str) -> Result<(), Error> {
        if rc < 0 {
            Err(database(format!("database {what} failed")))
        } else {
            Ok(())
        }
    }

    /// Selects the table for the next statements. Drivers keep the pointer
    /// to the name's `str` (not a copy), so each table name gets one `str`
    /// for the life of the process, made on its first use.
    pub fn use_table(&self, table: &'static str) -> Result<(), Error> {
        let use_table = self
            .api
            .funcs
            .use_table
            .ok_or_else(|| database("the DB module has no use_table"))?;
        let name = table_name(table);
        // SAFETY: this process's connection and a name that lives forever.
        Self::check(unsafe { use_table(self.con, name) }, "use_table")
    }

    /// `DELETE ... WHERE` every column equals its value (no columns: every row).
    pub fn delete(&self, matching: &[(&str, DbValue<'_>)]) -> Result<(), Error> {
        let delete = self
            .api
            .funcs
            .delete
            .ok_or_else(|| database("the DB module cannot delete"))?;
        let columns = Columns::new(matching);
        let keys = columns.keys();
        let ops: Vec<sys::db_op_t> = matching.iter().map(|_| c"=".as_ptr()).collect();
        let (k, o, v) = if matching.is_empty() {
            (std::ptr::null(), std::ptr::null(), std::ptr::null())
        } else {
            (keys.as_ptr(), ops.as_ptr(), columns.values.as_ptr())
        };
        // SAFETY: arrays of `matching.len()` keys, operators and values that outlive the call, on this process's connection.
        let rc = unsafe { delete(self.con, k, o, v, matching.len() as c_int) };
        Self::check(rc, "delete")
    }

    /// `INSERT` one row.
    pub fn insert(&self, row: &[(&str, DbValue<'_>)]) -> Result<(), Error> {
        let insert = self
            .api
            .funcs
            .insert
            .ok_or_else(|| database("the DB module cannot insert"))?;
        let columns = Columns::new(row);
        let keys = columns.keys();
        let n = row.len() as c_int;
        // SAFETY: arrays of `row.len()` keys and values that outlive the call.
        let rc = unsafe { insert(self.con, keys.as_ptr(), columns.values.as_ptr(), n) };
        Self::check(rc, "insert")
    }

    /// Whether the driver can `REPLACE`.
    pub fn can_replace(&self) -> bool {
        self.api.funcs.replace.is_some()
    }

    /// `REPLACE` one row, unique on its first `unique` columns.
    pub fn replace(&self, row: &[(&str, DbValue<'_>)], unique: usize) -> Result<(), Error> {
        let replace = self
            .api
            .funcs
            .replace
            .ok_or_else(|| database("the DB module cannot replace"))?;
        let columns = Columns::new(row);
        let keys = columns.keys();
        let (n, unique) = (row.len() as c_int, unique as c_int);
        let (k, v) = (keys.as_ptr(), columns.values.as_ptr());
        // SAFETY: arrays of `row.len()` keys and values that outlive the call.
        let rc = unsafe { replace(self.con, k, v, n, unique, 0) };
        Self::check(rc, "replace")
    }

    /// Runs `f` in a transaction when the driver has them (`lock`: 0 none,
    /// 1 write, 2 full), aborting it when `f` fails.
    pub fn transaction<R>(
        &self,
        lock: i32,
        f: impl FnOnce() -> Result<R, Error>,
    ) -> Result<R, Error> {
        let funcs = &self.api.funcs;
        let (Some(start), Some(end), Some(abort)) = (
            funcs.start_transaction,
            funcs.end_transaction,
            funcs.abort_transaction,
        ) else {
            return f();
        };
        // SAFETY: this process's connection.
        Self::check(unsafe { start(self.con, lock) }, "start_transaction")?;
        let committed = f().and_then(|value| {
            // SAFETY: as above, closing the transaction just started.
            Self::check(unsafe { end(self.con) }, "end_transaction").map(|()| value)
        });
        if committed.is_err() {
            // A failed statement or a failed commit: the driver still
            // counts the transaction as open until it is aborted (and would
            // refuse every later one), so roll it back.
            // SAFETY: as above, aborting the transaction just started.
            unsafe { abort(self.con) };
        }
        committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a `str` was leaked for the table name on every write
    /// (drivers keep the pointer, so it must live; it must also be made
    /// only once per name).
    #[test]
    fn a_table_name_str_is_made_once_per_name_not_per_write() {
        let first = table_name("presentity");
        for _ in 0..1000 {
            assert!(std::ptr::eq(table_name("presentity"), first));
        }
        let other = table_name("active_watchers");
        assert!(!std::ptr::eq(other, first));
        // SAFETY: the `str` points at the static name.
        assert_eq!(unsafe { first.as_bytes() }, b"presentity");
    }
}
