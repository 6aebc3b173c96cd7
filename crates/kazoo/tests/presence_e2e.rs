//! `kazoo_pua_publish*` through a running Kamailio and Kamailio's own DB
//! drivers: every case of `vectors/presence.jsonl` leaves the presentity
//! table as the C module left it (rows, bodies, expiry), for both
//! `pua_include_entity` values, with `db_sqlite` (row for row, ids included:
//! the vectors were captured with it) and with `db_mysql` on MariaDB (a
//! driver with REPLACE and transactions; ids there follow AUTO_INCREMENT, so
//! they are not compared).
use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{cfg, int, read, sqlite, Proxy};
use kamailio_test::unique_name;

const SQLITE_SCHEMA: &str = "/usr/share/kamailio/db_sqlite/presence-create.sql";
const MYSQL_SCHEMA: &str = "/usr/share/kamailio/mysql/presence-create.sql";
const MYSQL_VERSION_SCHEMA: &str = "/usr/share/kamailio/mysql/standard-create.sql";

const ROUTES: &str = r#"
request_route {
    if (is_method("OPTIONS")) { sl_send_reply("200", "OK"); exit; }
    $var(pl) = $(hdr(X-A){s.decode.hexa});
    if ($rU == "kazoo_pua_publish") {
        kazoo_pua_publish($var(pl));
    } else if ($rU == "kazoo_pua_publish_presence") {
        kazoo_pua_publish_presence($var(pl));
    } else if ($rU == "kazoo_pua_publish_mwi") {
        kazoo_pua_publish_mwi($var(pl));
    } else if ($rU == "kazoo_pua_publish_dialoginfo") {
        kazoo_pua_publish_dialoginfo($var(pl));
    }
    append_to_reply("X-RC: $rc\r\n");
    sl_send_reply("200", "OK");
}
"#;

/// A presentity table in some database, as the tests see it.
trait Store {
    /// `modparam` lines loading the driver and pointing `db_url` at it.
    fn params(&self) -> String;
    /// Empties the table.
    fn clear(&self);
    /// Every row ordered by id, columns as in the vectors (body as text).
    fn rows(&self) -> Vec<serde_json::Value>;
    /// Whether row ids follow SQLite's rowid rule, as in the vectors.
    fn sqlite_ids(&self) -> bool;
}

struct Sqlite {
    dir: PathBuf,
    file: PathBuf,
}

impl Sqlite {
    fn create() -> Sqlite {
        let dir = std::env::temp_dir().join(unique_name("kazoo-presence"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("presence.db");
        let schema = read(SQLITE_SCHEMA, "kamailio-sqlite-modules");
        let script = format!(
            "CREATE TABLE version (table_name VARCHAR(32) NOT NULL, table_version INTEGER DEFAULT 0 NOT NULL);\n{schema}"
        );
        sqlite(&file, &script);
        Sqlite { dir, file }
    }
}

impl Store for Sqlite {
    fn params(&self) -> String {
        format!(
            "loadmodule \"db_sqlite.so\"\nmodparam(\"kazoo\", \"db_url\", \"sqlite://{}\")",
            self.file.display()
        )
    }

    fn clear(&self) {
        sqlite(&self.file, "DELETE FROM presentity;");
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        let out = sqlite(
            &self.file,
            "SELECT id, username, domain, event, etag, expires, received_time, \
             CAST(body AS TEXT) AS body, sender, priority, ruid, typeof(body) AS body_type \
             FROM presentity ORDER BY id;",
        );
        if out.trim().is_empty() {
            return vec![];
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn sqlite_ids(&self) -> bool {
        true
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A database of its own on the local MariaDB (root through its socket).
struct Mariadb {
    name: String,
}

impl Mariadb {
    fn create() -> Mariadb {
        let name = unique_name("kztest").replace('-', "_");
        mysql(None, &format!("CREATE DATABASE {name};"));
        let schema = format!(
            "{}\n{}",
            read(MYSQL_VERSION_SCHEMA, "kamailio-mysql-modules"),
            read(MYSQL_SCHEMA, "kamailio-mysql-modules")
        );
        mysql(Some(&name), &schema);
        Mariadb { name }
    }
}

impl Store for Mariadb {
    fn params(&self) -> String {
        format!(
            "loadmodule \"db_mysql.so\"\nmodparam(\"kazoo\", \"db_url\", \"mysql://root@localhost/{}\")",
            self.name
        )
    }

    fn clear(&self) {
        mysql(Some(&self.name), "DELETE FROM presentity;");
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        // Hex keeps every byte (CRLF, quotes) intact through the client.
        let out = mysql(
            Some(&self.name),
            "SELECT id, HEX(username), HEX(domain), HEX(event), HEX(etag), expires, \
             received_time, HEX(body), HEX(sender), priority, ruid IS NULL \
             FROM presentity ORDER BY id;",
        );
        let text = |hex: &str| {
            serde_json::Value::String(
                String::from_utf8(kamailio_test::hex_decode(hex).unwrap()).unwrap(),
            )
        };
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                let int = |s: &str| serde_json::Value::from(s.parse::<i64>().unwrap());
                serde_json::json!({
                    "id": int(f[0]), "username": text(f[1]), "domain": text(f[2]),
                    "event": text(f[3]), "etag": text(f[4]), "expires": int(f[5]),
                    "received_time": int(f[6]), "body": text(f[7]), "sender": text(f[8]),
                    "priority": int(f[9]),
                    "ruid": if f[10] == "1" { serde_json::Value::Null } else { "set".into() },
                    "body_type": "blob",
                })
            })
            .collect()
    }

    fn sqlite_ids(&self) -> bool {
        false
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = Command::new("mysql")
            .args(["-uroot", "-e", &format!("DROP DATABASE {};", self.name)])
            .output();
    }
}

fn mysql(database: Option<&str>, script: &str) -> String {
    let mut command = Command::new("mysql");
    command.args(["-uroot", "-N", "-B"]);
    if let Some(database) = database {
        command.arg(database);
    }
    let out = command
        .arg("-e")
        .arg(script)
        .output()
        .expect("mysql client (Debian package mariadb-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A vector value with `{{NOW}}` / `{{NOW+N}}` checked against the time
/// window of the step.
fn matches(expected: &serde_json::Value, actual: &serde_json::Value, window: (i64, i64)) -> bool {
    if let Some(text) = expected.as_str() {
        if let Some(offset) = text
            .strip_prefix("{{NOW")
            .and_then(|t| t.strip_suffix("}}"))
        {
            let offset: i64 = offset.trim_start_matches('+').parse().unwrap_or(0);
            let Some(value) = actual.as_i64() else {
                return false;
            };
            return value - offset >= window.0 && value - offset <= window.1;
        }
    }
    expected == actual
}

fn replay(db: &dyn Store, include_entity: bool) -> usize {
    let params = format!(
        "{}\nmodparam(\"kazoo\", \"pua_include_entity\", {})",
        db.params(),
        include_entity as i32
    );
    let config = cfg(&params, ROUTES).replace(
        "modparam(\"kazoo\", \"pua_mode\", 0)",
        "modparam(\"kazoo\", \"pua_mode\", 1)",
    );
    let proxy = Proxy::start(&config);
    let mut checked = 0;
    for case in kamailio_test::jsonl("presence.jsonl") {
        if case["pua_include_entity"].as_i64() != Some(include_entity as i64) {
            continue;
        }
        let id = case["id"].as_str().unwrap();
        db.clear();
        // Rows written by earlier steps of the case keep their time.
        let before = now();
        for step in case["steps"].as_array().unwrap() {
            let function = step["function"].as_str().unwrap();
            let reply = proxy.call(function, &[step["json"].as_str().unwrap().as_bytes()]);
            let after = now();
            assert_eq!(
                int(&reply, "X-RC"),
                step["rc"].as_i64().unwrap(),
                "{id}: rc"
            );
            let rows = db.rows();
            let expected = step["rows_after"].as_array().unwrap();
            assert_eq!(rows.len(), expected.len(), "{id}: rows {rows:?}");
            for (got, want) in rows.iter().zip(expected) {
                // Ids follow the driver: SQLite's rowid rule is what the
                // vectors hold; MariaDB's AUTO_INCREMENT never reuses one.
                let skip_id = !db.sqlite_ids();
                for column in [
                    "id",
                    "username",
                    "domain",
                    "event",
                    "etag",
                    "expires",
                    "received_time",
                    "body",
                    "sender",
                    "priority",
                    "ruid",
                ] {
                    if skip_id && column == "id" {
                        continue;
                    }
                    assert!(
                        matches(&want[column], &got[column], (before, after)),
                        "{id}: {column}: want {} got {}",
                        want[column],
                        got[column]
                    );
                }
                assert_eq!(got["body_type"], "blob", "{id}");
            }
            checked += 1;
        }
    }
    proxy.assert_alive();
    checked
}

#[test]
fn presence_writes_match_the_c_module_with_sqlite() {
    let db = Sqlite::create();
    let checked = replay(&db, true) + replay(&db, false);
    println!("{checked} presence steps checked with db_sqlite");
    assert!(checked > 50);
}

#[test]
fn presence_writes_match_the_c_module_with_mariadb() {
    let db = Mariadb::create();
    let checked = replay(&db, true) + replay(&db, false);
    println!("{checked} presence steps checked with db_mysql on MariaDB");
    assert!(checked > 50);
}

/// A presence payload for `user`, as Kazoo publishes it.
fn presence_payload(user: &str, call_id: &str) -> String {
    format!(
        "{{\"From\":\"sip:{user}@example.com\",\"From-User\":\"{user}\",\"From-Realm\":\"example.com\",\
         \"To\":\"sip:{user}@example.com\",\"To-User\":\"{user}\",\"To-Realm\":\"example.com\",\
         \"State\":\"confirmed\",\"Call-ID\":\"{call_id}\",\"Expires\":3600}}"
    )
}

/// The connections MariaDB has open to `database`.
fn connections(database: &str) -> usize {
    mysql(
        None,
        &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{database}';"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// A connection opened by `kazoo:mod-init` (main process, before the fork)
/// is closed before Kamailio forks: no process inherits it, and each one
/// that writes opens its own.
#[test]
fn a_connection_opened_in_mod_init_is_not_inherited() {
    let db = Mariadb::create();
    let mod_init = format!(
        "event_route[kazoo:mod-init] {{\n    kazoo_pua_publish_presence(\"{}\");\n}}\n",
        presence_payload("2001", "mod-init-cid").replace('"', "'")
    );
    let config = cfg(&db.params(), &format!("{mod_init}{ROUTES}")).replace(
        "modparam(\"kazoo\", \"pua_mode\", 0)",
        "modparam(\"kazoo\", \"pua_mode\", 1)",
    );
    let proxy = Proxy::start(&config);
    proxy.assert_alive();
    let users: Vec<String> = db
        .rows()
        .iter()
        .map(|r| r["username"].to_string())
        .collect();
    assert_eq!(users, ["\"2001\""], "the mod-init write");
    assert_eq!(
        connections(&db.name),
        0,
        "the mod-init connection is still open after the fork"
    );
    for i in 0..20 {
        let payload = presence_payload(&format!("30{i:02}"), &format!("cid-{i}"));
        let reply = proxy.call("kazoo_pua_publish_presence", &[payload.as_bytes()]);
        assert_eq!(int(&reply, "X-RC"), 1, "write {i}");
    }
    assert_eq!(db.rows().len(), 21);
    // One connection per SIP worker that wrote (children=2), none shared.
    let open = connections(&db.name);
    assert!((1..=2).contains(&open), "{open} connections");
    proxy.assert_alive();
}

/// A TCP relay to MariaDB (127.0.0.1:3306) that answers the first `COMMIT`
/// itself with an error (1180, "Got error during COMMIT"), so the server
/// never sees it. Returns its port.
fn commit_failing_relay() -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let failed = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect("127.0.0.1:3306") else {
                continue;
            };
            let mut from_client = client.try_clone().unwrap();
            let mut to_server = server.try_clone().unwrap();
            let mut from_server = server;
            // Both directions write to the client.
            let to_client = Arc::new(Mutex::new(client));
            let (failed, answer) = (failed.clone(), to_client.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = from_client.read(&mut buf) {
                    // A COM_QUERY packet: 3-byte length, sequence, 0x03, text.
                    let commit = n > 5 && buf[4] == 0x03 && &buf[5..n] == b"COMMIT";
                    if commit && !failed.swap(true, Ordering::SeqCst) {
                        let mut payload = vec![0xff, 0x9c, 0x04, b'#'];
                        payload.extend_from_slice(b"HY000Got error during COMMIT");
                        let mut packet = (payload.len() as u32).to_le_bytes()[..3].to_vec();
                        packet.push(buf[3].wrapping_add(1));
                        packet.extend_from_slice(&payload);
                        let mut client = answer.lock().unwrap();
                        if client.write_all(&packet).is_err() {
                            return;
                        }
                        continue;
                    }
                    if to_server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = to_server.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    if to_client.lock().unwrap().write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = to_client.lock().unwrap().shutdown(Shutdown::Both);
            });
        }
    });
    port
}

/// A write whose COMMIT fails is rolled back: the driver does not stay "in
/// transaction", refusing every later write of that process.
#[test]
fn a_failed_commit_is_rolled_back_and_later_writes_work() {
    let db = Mariadb::create();
    let user = db.name.clone();
    mysql(
        None,
        &format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'kzpw'; \
             GRANT ALL ON {user}.* TO '{user}'@'127.0.0.1';"
        ),
    );
    let port = commit_failing_relay();
    let params = format!(
        "loadmodule \"db_mysql.so\"\n\
         modparam(\"kazoo\", \"db_url\", \"mysql://{user}:kzpw@127.0.0.1:{port}/{}\")",
        db.name
    );
    // One SIP worker, so every write goes through the same connection.
    let config = cfg(&params, ROUTES)
        .replace(
            "modparam(\"kazoo\", \"pua_mode\", 0)",
            "modparam(\"kazoo\", \"pua_mode\", 1)",
        )
        .replace("children=2", "children=1");
    let proxy = Proxy::start(&config);
    let write = |i: u32| {
        let payload = presence_payload(&format!("40{i:02}"), &format!("commit-{i}"));
        int(
            &proxy.call("kazoo_pua_publish_presence", &[payload.as_bytes()]),
            "X-RC",
        )
    };
    assert_eq!(write(0), -1, "the write whose COMMIT was cut");
    for i in 1..4 {
        assert_eq!(write(i), 1, "write {i} after the failed commit");
    }
    let users: Vec<String> = db
        .rows()
        .iter()
        .map(|r| r["username"].to_string())
        .collect();
    assert_eq!(users, ["\"4001\"", "\"4002\"", "\"4003\""]);
    mysql(None, &format!("DROP USER '{user}'@'127.0.0.1';"));
    proxy.assert_alive();
}
