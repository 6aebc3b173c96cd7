//! `kazoo_pua_publish*` through a running Kamailio and `db_sqlite`: every
//! case of `vectors/presence.jsonl` leaves the presentity table exactly as
//! the C module left it (rows, bodies, expiry), for both
//! `pua_include_entity` values; bad input never takes Kamailio down.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{cfg, int, Proxy};
use kamailio_test::unique_name;

const SCHEMA: &str = "/usr/share/kamailio/db_sqlite/presence-create.sql";

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

struct Db {
    dir: PathBuf,
    file: PathBuf,
}

impl Db {
    fn create() -> Db {
        let dir = std::env::temp_dir().join(unique_name("kazoo-presence"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("presence.db");
        let schema = std::fs::read_to_string(SCHEMA)
            .unwrap_or_else(|e| panic!("{SCHEMA}: {e} (Debian package kamailio-sqlite-modules)"));
        let script = format!(
            "CREATE TABLE version (table_name VARCHAR(32) NOT NULL, table_version INTEGER DEFAULT 0 NOT NULL);\n{schema}"
        );
        sql(&file, &script);
        Db { dir, file }
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        let out = sql(
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
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sql(file: &Path, script: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-json")
        .arg(file)
        .arg(script)
        .output()
        .expect("sqlite3 (Debian package sqlite3)");
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

fn replay(include_entity: bool) -> usize {
    let db = Db::create();
    let params = format!(
        "loadmodule \"db_sqlite.so\"\n\
         modparam(\"kazoo\", \"db_url\", \"sqlite://{}\")\n\
         modparam(\"kazoo\", \"pua_include_entity\", {})",
        db.file.display(),
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
        sql(&db.file, "DELETE FROM presentity;");
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
fn presence_writes_match_the_c_module_with_entities() {
    let checked = replay(true);
    println!("{checked} presence steps checked (pua_include_entity 1)");
    assert!(checked > 40);
}

#[test]
fn presence_writes_match_the_c_module_without_entities() {
    let checked = replay(false);
    println!("{checked} presence steps checked (pua_include_entity 0)");
    assert!(checked > 5);
}
