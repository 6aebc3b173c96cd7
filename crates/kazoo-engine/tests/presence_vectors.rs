//! Replays `vectors/presence.jsonl` (vectors/README §2 "presence", §4, §5, §7.11) against
//! `kazoo_engine::presence`: every step's plan is applied to an in-memory presentity table that
//! behaves like the SQLite one the vectors were captured with, and the whole table is compared
//! with `rows_after`, column by column, after each step.

use kazoo_engine::presence::{plan, Entry, Outcome, Row, WritePlan, KEY_COLUMNS};
use serde_json::Value as J;

/// The write time passed for every step; `{{NOW}}` and `{{NOW+N}}` resolve against it.
const NOW: i64 = 1_700_000_000;

/// The columns of a `rows_after` entry; anything else fails the test so that a new column is
/// not silently ignored.
const COLUMNS: [&str; 12] = [
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
    "body_sqlite_type",
];

/// The presentity table as db_sqlite leaves it: `id` is SQLite's rowid, which for an
/// `INTEGER PRIMARY KEY` without AUTOINCREMENT is one more than the largest id present (1 in
/// an empty table), so ids freed by a DELETE at the top are handed out again.
#[derive(Default)]
struct Table {
    rows: Vec<(i64, Row)>,
}

impl Table {
    /// `DELETE ... WHERE` the first `keys` key columns equal `row`'s (no condition for 0).
    fn delete_matching(&mut self, row: &Row, keys: usize) {
        let wanted = row.key_values();
        self.rows.retain(|(_, old)| {
            !old.key_values()
                .iter()
                .zip(&wanted)
                .take(keys)
                .all(|(a, b)| a == b)
        });
    }

    fn insert(&mut self, row: Row) {
        let id = self.rows.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        self.rows.push((id, row));
    }

    /// Applies a plan as the C module does through db_sqlite, which has no `replace`.
    fn apply(&mut self, plan: WritePlan) {
        let (keys, row) = match plan {
            WritePlan::DeleteThenInsert { keys, row } => (keys, row),
            WritePlan::Replace { row } => (KEY_COLUMNS.len(), row),
        };
        self.delete_matching(&row, keys);
        self.insert(row);
    }
}

fn entry_for(function: &str) -> Entry {
    match function {
        "kazoo_pua_publish" => Entry::Any,
        "kazoo_pua_publish_presence" => Entry::Presence,
        "kazoo_pua_publish_mwi" => Entry::Mwi,
        "kazoo_pua_publish_dialoginfo" => Entry::DialogInfo,
        other => panic!("unknown function {other}"),
    }
}

/// An integer column: a number, or a `{{NOW}}` / `{{NOW+N}}` placeholder.
fn resolve_int(value: &J, what: &str) -> i64 {
    if let Some(n) = value.as_i64() {
        return n;
    }
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {value} is neither a number nor a placeholder"));
    let inner = text
        .strip_prefix("{{NOW")
        .and_then(|rest| rest.strip_suffix("}}"))
        .unwrap_or_else(|| panic!("{what}: unknown placeholder {text}"));
    if inner.is_empty() {
        return NOW;
    }
    let offset: i64 = inner
        .strip_prefix('+')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{what}: unknown placeholder {text}"));
    NOW + offset
}

fn expect_str<'a>(value: &'a J, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {value} is not a string"))
}

/// Compares one table row with one `rows_after` entry.
fn check_row(what: &str, expected: &J, id: i64, row: &Row) {
    let object = expected
        .as_object()
        .unwrap_or_else(|| panic!("{what}: row is not an object"));
    for key in object.keys() {
        assert!(
            COLUMNS.contains(&key.as_str()),
            "{what}: unknown column {key}"
        );
    }
    let field = |name: &str| &expected[name];
    assert_eq!(field("id").as_i64(), Some(id), "{what}: id");
    assert_eq!(
        expect_str(field("username"), what),
        row.username,
        "{what}: username"
    );
    assert_eq!(
        expect_str(field("domain"), what),
        row.domain,
        "{what}: domain"
    );
    assert_eq!(expect_str(field("event"), what), row.event, "{what}: event");
    assert_eq!(expect_str(field("etag"), what), row.etag, "{what}: etag");
    assert_eq!(
        expect_str(field("sender"), what),
        row.sender,
        "{what}: sender"
    );
    assert_eq!(
        resolve_int(field("expires"), what),
        row.expires,
        "{what}: expires"
    );
    assert_eq!(
        resolve_int(field("received_time"), what),
        row.received_time,
        "{what}: received_time"
    );
    assert_eq!(
        field("priority").as_i64(),
        Some(i64::from(row.priority)),
        "{what}: priority"
    );
    assert!(field("ruid").is_null(), "{what}: ruid is never written");
    assert_eq!(field("body_sqlite_type").as_str(), Some("blob"), "{what}");
    let body = expect_str(field("body"), what);
    assert!(
        body.as_bytes() == row.body.as_slice(),
        "{what}: body\n expected {body:?}\n      got {:?}",
        String::from_utf8_lossy(&row.body)
    );
}

#[test]
fn presence_vectors() {
    let cases = kamailio_test::jsonl("presence.jsonl");
    let (mut steps_checked, mut rows_checked) = (0usize, 0usize);
    for case in &cases {
        let id = expect_str(&case["id"], "case id");
        let include_entity = match case["pua_include_entity"].as_i64() {
            Some(1) => true,
            Some(0) => false,
            other => panic!("{id}: pua_include_entity {other:?}"),
        };
        let steps = case["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: no steps"));
        // Every case starts from an emptied table (`DELETE FROM presentity`).
        let mut table = Table::default();
        for (n, step) in steps.iter().enumerate() {
            let what = format!("{id} step {}", n + 1);
            let entry = entry_for(expect_str(&step["function"], &what));
            let json = expect_str(&step["json"], &what);
            let rc = match plan(entry, json.as_bytes(), NOW, include_entity) {
                Ok(Outcome::Write(plan)) => {
                    table.apply(plan);
                    1
                }
                Ok(Outcome::Skip(_)) => 1,
                Err(_) => -1,
            };
            assert_eq!(step["rc"].as_i64(), Some(rc), "{what}: rc");

            let expected = step["rows_after"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no rows_after"));
            assert_eq!(
                expected.len(),
                table.rows.len(),
                "{what}: number of rows after the step"
            );
            // rows_after is ordered by id, and so is the table: ids only grow on insert.
            for (i, (want, (row_id, row))) in expected.iter().zip(&table.rows).enumerate() {
                check_row(&format!("{what} row {}", i + 1), want, *row_id, row);
                rows_checked += 1;
            }
            steps_checked += 1;
        }
    }
    println!(
        "presence.jsonl: {} cases, {steps_checked} steps, {rows_checked} rows checked",
        cases.len()
    );
    assert!(steps_checked > 0, "no step checked");
    assert!(rows_checked > 0, "no row checked");
}
