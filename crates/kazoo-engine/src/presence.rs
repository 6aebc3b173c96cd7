//! What `kazoo_pua_publish`, `kazoo_pua_publish_presence`, `kazoo_pua_publish_mwi` and
//! `kazoo_pua_publish_dialoginfo` write into Kamailio's `presentity` table (`kz_pua.c`;
//! vectors/README §2 "presence", §4 "presence.jsonl", §7.11).
//!
//! This module owns the decision and the content: which package a call is for, whether it
//! writes at all, the row (columns and the PIDF / MWI / dialog-info body, byte for byte) and
//! how the row replaces older ones ([`WritePlan`]). The module glue owns `pua_mode` (the C
//! functions return -1 at once unless it is 1), the DB connection and running the plan through
//! Kamailio's DB API, inside a transaction when the driver has them, as the C module does.
//!
//! Field rules, as in the C module (`json_extract_field`): only top-level members are read,
//! each as the text `json_object_get_string` gives (strings raw, numbers and other values as
//! json-c text, `Messages-New: 2` → `2`), cut at the first NUL byte as C's `strlen` cuts it; a
//! missing member or JSON `null` is the empty string, and so is every member when the JSON is
//! not an object. `Expires` and `Flush-Level` go through json-c's `json_object_get_int`.
//!
//! Values are put into the bodies verbatim, without XML escaping, exactly like the C module's
//! `sprintf`: a value holding `<` or `&` gives ill-formed XML. The vectors pin this
//! (`pres-xml-chars`, `dlg-xml-chars-e1`), and the presence module stores and forwards the body
//! as an opaque blob, so escaping would change what subscribers receive from a drop-in.
//!
//! Deliberate differences, none of which a vector covers:
//! - The C module fills fixed buffers with `sprintf` (bodies of 4096 / 2048 / 8192 bytes,
//!   dialog tags of 100, the dialog sender of 1024) and overflows them on long input; we write
//!   the whole value.
//! - C adds `Expires` to `(int)time(NULL)` in a 32-bit `int`, which overflows (undefined
//!   behaviour) for `Expires` above about 2^31 − now; we add in 64 bits, saturating.
//! - A negative `Flush-Level` makes the C module delete on `4 − level` keys, past the four it
//!   set up (uninitialised operators, then out of bounds); we treat it as 0.
//! - A `NaN` `Expires` or `Flush-Level` reads as 0 (json-c's cast is undefined behaviour there,
//!   `INT32_MIN` on x86).
//! - The text columns of [`Row`] are `String`s: bytes that are not UTF-8 become U+FFFD there
//!   (the body keeps them), where the C module stores them as they came.

use std::fmt;

use crate::json::{parse, ParseError, Value};
use crate::payload::c_text;
use crate::subscription::json_c_int;

/// The presence package of a row: its `event` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Package {
    Presence,
    MessageSummary,
    Dialog,
}

impl Package {
    /// The `event` column value, which is also the `Event-Package` that selects the package in
    /// `kazoo_pua_publish`.
    pub fn event(self) -> &'static str {
        match self {
            Package::Presence => "presence",
            Package::MessageSummary => "message-summary",
            Package::Dialog => "dialog",
        }
    }
}

/// Which script function was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `kazoo_pua_publish`: acts only when `Event-Name` is exactly `update` (case-sensitive)
    /// and then picks the package from `Event-Package` (exact match).
    Any,
    /// `kazoo_pua_publish_presence`: PIDF, whatever `Event-Name` / `Event-Package` say.
    Presence,
    /// `kazoo_pua_publish_mwi`: message-summary.
    Mwi,
    /// `kazoo_pua_publish_dialoginfo`: dialog-info.
    DialogInfo,
}

/// The key columns of the presentity table, in the order the C module lists them for its
/// DELETE and REPLACE; [`WritePlan::DeleteThenInsert`] matches a prefix of them.
pub const KEY_COLUMNS: [&str; 4] = ["event", "domain", "username", "etag"];

/// One presentity row as the C module writes it. `id` and `ruid` are never written.
///
/// The text columns hold the extracted JSON text; bytes that are not UTF-8 (json-c lets them
/// through) are replaced with U+FFFD there, while `body` keeps them as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub username: String,
    pub domain: String,
    /// [`Package::event`].
    pub event: &'static str,
    pub etag: String,
    pub sender: String,
    /// Written as a BLOB.
    pub body: Vec<u8>,
    /// The write time (`now`).
    pub received_time: i64,
    /// `now + Expires` when `Expires` reads as a positive int, else that int (0 when missing).
    pub expires: i64,
    /// Always 0.
    pub priority: i32,
}

impl Row {
    /// The values of [`KEY_COLUMNS`], in that order.
    pub fn key_values(&self) -> [&str; 4] {
        [self.event, &self.domain, &self.username, &self.etag]
    }
}

/// How the row goes into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritePlan {
    /// DELETE rows matching the first `keys` of (event, domain, username, etag) (keys = 0: the
    /// whole table), then INSERT the row.
    DeleteThenInsert { keys: usize, row: Row },
    /// REPLACE keyed on (event, domain, username, etag) when the DB driver can, else DELETE on
    /// those 4 keys then INSERT.
    Replace { row: Row },
}

impl WritePlan {
    /// The row to insert or replace.
    pub fn row(&self) -> &Row {
        match self {
            WritePlan::DeleteThenInsert { row, .. } | WritePlan::Replace { row } => row,
        }
    }
}

/// Why a call writes nothing. The C module returns 1 in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `kazoo_pua_publish`: `Event-Name` is not exactly `update`. Not logged.
    NotAnUpdate,
    /// `kazoo_pua_publish`: `Event-Package` is none of the three packages. Not logged.
    UnknownPackage,
    /// A required field is empty: `From-User`, `To-User` or `State` for presence, `From`, `To`
    /// or `State` for dialog-info. Logged as an error, with this text (see `Display`).
    MissingField,
}

impl SkipReason {
    /// Whether the C module logs the skip as an error (`LM_ERR`).
    pub fn is_error(self) -> bool {
        matches!(self, SkipReason::MissingField)
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotAnUpdate => "Event-Name is not update",
            SkipReason::UnknownPackage => "unknown Event-Package",
            // The C module's message, word for word, for both packages.
            SkipReason::MissingField => "missing one of From / To / State",
        })
    }
}

/// What a call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Write(WritePlan),
    Skip(SkipReason),
}

/// Why a call fails; the C module returns -1 only for these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceError {
    /// Empty or invalid JSON (json-c's reason). The C module logs "Error parsing json: …".
    InvalidJson(ParseError),
    /// JSON `null`: json-c hands the C module a NULL object, which it treats as invalid.
    Null,
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::InvalidJson(e) => write!(f, "Error parsing json: {e}"),
            PresenceError::Null => f.write_str("Error parsing json: null"),
        }
    }
}

impl std::error::Error for PresenceError {}

/// What calling `entry` with `json` at time `now` (unix seconds) writes. `include_entity` is
/// the `pua_include_entity` modparam (dialog-info `<target>` elements).
pub fn plan(
    entry: Entry,
    json: &[u8],
    now: i64,
    include_entity: bool,
) -> Result<Outcome, PresenceError> {
    let root = match parse(json) {
        Ok(Value::Null) => return Err(PresenceError::Null),
        Ok(root) => root,
        Err(e) => return Err(PresenceError::InvalidJson(e)),
    };
    let fields = Fields(&root);
    let package = match entry {
        Entry::Any => match dispatch(&fields) {
            Ok(package) => package,
            Err(reason) => return Ok(Outcome::Skip(reason)),
        },
        Entry::Presence => Package::Presence,
        Entry::Mwi => Package::MessageSummary,
        Entry::DialogInfo => Package::Dialog,
    };
    let written = match package {
        Package::Presence => presence(&fields, now),
        Package::MessageSummary => Some(mwi(&fields, now)),
        Package::Dialog => dialog(&fields, now, include_entity),
    };
    Ok(written.map_or(Outcome::Skip(SkipReason::MissingField), Outcome::Write))
}

/// `kazoo_pua_publish`'s choice of package.
fn dispatch(fields: &Fields<'_>) -> Result<Package, SkipReason> {
    if fields.text("Event-Name") != b"update" {
        return Err(SkipReason::NotAnUpdate);
    }
    let package = fields.text("Event-Package");
    [Package::Dialog, Package::MessageSummary, Package::Presence]
        .into_iter()
        .find(|p| p.event().as_bytes() == package.as_slice())
        .ok_or(SkipReason::UnknownPackage)
}

/// The top-level members of the call's JSON.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    /// `json_extract_field`: the member's `json_object_get_string` text up to the first NUL,
    /// empty when missing or null.
    fn text(&self, key: &str) -> Vec<u8> {
        self.0.get(key.as_bytes()).map(c_text).unwrap_or_default()
    }

    /// The first of `keys` whose text is not empty (empty when none is).
    fn first_text(&self, keys: &[&str]) -> Vec<u8> {
        keys.iter()
            .map(|key| self.text(key))
            .find(|text| !text.is_empty())
            .unwrap_or_default()
    }

    /// `json_object_get_int` of the member, 0 when missing or null.
    fn int(&self, key: &str) -> i32 {
        self.0.get(key.as_bytes()).map_or(0, json_c_int)
    }

    /// The `expires` column.
    fn expires(&self, now: i64) -> i64 {
        expires_column(self.int("Expires"), now)
    }
}

/// `now + expires` when `expires` is positive, else `expires` as is (so 0 and negative values
/// are stored raw, as the C module does).
fn expires_column(expires: i32, now: i64) -> i64 {
    if expires > 0 {
        now.saturating_add(i64::from(expires))
    } else {
        i64::from(expires)
    }
}

/// The write mode for a dialog-info row from its `Flush-Level`. The C module uses REPLACE for
/// 0 and negative levels (DELETE on 4 keys then INSERT without `replace`) and otherwise
/// deletes on the first `4 − level` keys, which for 4 and above is every row of the table,
/// other packages included (vectors: `dlg-flush-4-e0`). Negative levels are treated as 0 here
/// (see the module comment).
fn dialog_write(flush_level: i32, row: Row) -> WritePlan {
    match flush_level {
        1 => WritePlan::DeleteThenInsert { keys: 3, row },
        2 => WritePlan::DeleteThenInsert { keys: 2, row },
        3 => WritePlan::DeleteThenInsert { keys: 1, row },
        4.. => WritePlan::DeleteThenInsert { keys: 0, row },
        _ => WritePlan::Replace { row },
    }
}

/// The PIDF `basic`, `note` and `rpid:activities` contents for a `State` (exact,
/// case-sensitive match; anything else is "Available").
fn pidf_state(state: &[u8]) -> (&'static str, &'static str, &'static str) {
    match state {
        b"early" => ("open", "Busy", "<rpid:busy/>"),
        b"confirmed" => ("open", "On the Phone", "<rpid:on-the-phone/>"),
        b"offline" => ("closed", "Offline", ""),
        _ => ("open", "Available", ""),
    }
}

/// Concatenates body pieces.
fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// A text column from extracted bytes; see [`Row`] for bytes that are not UTF-8.
fn text_column(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A row with the columns every package fills the same way.
struct RowParts<'a> {
    package: Package,
    username: &'a [u8],
    domain: &'a [u8],
    etag: &'a [u8],
    sender: &'a [u8],
    body: Vec<u8>,
}

impl RowParts<'_> {
    fn into_row(self, fields: &Fields<'_>, now: i64) -> Row {
        Row {
            username: text_column(self.username),
            domain: text_column(self.domain),
            event: self.package.event(),
            etag: text_column(self.etag),
            sender: text_column(self.sender),
            body: self.body,
            received_time: now,
            expires: fields.expires(now),
            priority: 0,
        }
    }
}

/// `kz_pua_publish_presence_to_presentity`: a PIDF document for `From-User`, replacing every
/// presence row of that user (DELETE on event, domain, username).
fn presence(fields: &Fields<'_>, now: i64) -> Option<WritePlan> {
    let from_user = fields.text("From-User");
    let state = fields.text("State");
    if from_user.is_empty() || fields.text("To-User").is_empty() || state.is_empty() {
        return None;
    }
    let call_id = fields.text("Call-ID");
    let (basic, note, activities) = pidf_state(&state);
    // One line: the template's backslash-newline continuations leave nothing but the single
    // space after the <presence ...> start tag.
    let body = concat(&[
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
          <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
          xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
          xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" \
          xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\"",
        &from_user,
        b"\"> <tuple xmlns=\"urn:ietf:params:xml:ns:pidf\" id=\"",
        &call_id,
        b"\"><status><basic>",
        basic.as_bytes(),
        b"</basic></status></tuple><note xmlns=\"urn:ietf:params:xml:ns:pidf\">",
        note.as_bytes(),
        b"</note><dm:person xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
          xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" id=\"1\"><rpid:activities>",
        activities.as_bytes(),
        b"</rpid:activities><dm:note>",
        note.as_bytes(),
        b"</dm:note></dm:person></presence>",
    ]);
    let row = RowParts {
        package: Package::Presence,
        username: &from_user,
        domain: &fields.text("From-Realm"),
        etag: &fields.first_text(&["ETag", "Call-ID"]),
        sender: &fields.first_text(&["Sender-URI", "Switch-URI", "From"]),
        body,
    }
    .into_row(fields, now);
    Some(WritePlan::DeleteThenInsert { keys: 3, row })
}

/// `kz_pua_publish_mwi_to_presentity`: the message-summary body, with no required field,
/// replacing every message-summary row of `From-User` (DELETE on event, domain, username).
/// The sender is always `From`: the C module reads `Sender-URI` but passes `From`.
fn mwi(fields: &Fields<'_>, now: i64) -> WritePlan {
    let body = concat(&[
        b"Messages-Waiting: ",
        &fields.text("Messages-Waiting"),
        b"\r\nMessage-Account: ",
        &fields.text("Message-Account"),
        b"\r\nVoice-Message: ",
        &fields.text("Messages-New"),
        b"/",
        &fields.text("Messages-Saved"),
        b" (",
        &fields.text("Messages-Urgent"),
        b"/",
        &fields.text("Messages-Urgent-Saved"),
        b")\r\n",
    ]);
    let row = RowParts {
        package: Package::MessageSummary,
        username: &fields.text("From-User"),
        domain: &fields.text("From-Realm"),
        etag: &fields.first_text(&["ETag", "Call-ID"]),
        sender: &fields.text("From"),
        body,
    }
    .into_row(fields, now);
    WritePlan::DeleteThenInsert { keys: 3, row }
}

/// `kz_pua_publish_dialoginfo_to_presentity`: a dialog-info document for the presentity
/// (`Presentity*`, or `From*` when any of the three is empty), written as `Flush-Level` says.
fn dialog(fields: &Fields<'_>, now: i64, include_entity: bool) -> Option<WritePlan> {
    let from = fields.text("From");
    let to = fields.text("To");
    let state = fields.text("State");
    if from.is_empty() || to.is_empty() || state.is_empty() {
        return None;
    }
    let presentity = [
        fields.text("Presentity"),
        fields.text("Presentity-User"),
        fields.text("Presentity-Realm"),
    ];
    let [pres, pres_user, pres_realm] = if presentity.iter().any(Vec::is_empty) {
        [
            from.clone(),
            fields.text("From-User"),
            fields.text("From-Realm"),
        ]
    } else {
        presentity
    };
    let call_id = fields.text("Call-ID");

    let body = if call_id.is_empty() {
        // The C module's fixed "terminated" document, with its hard-coded call-id.
        concat(&[
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
              <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" \
              state=\"full\" entity=\"",
            &pres,
            b"\"> <dialog call-id=\"76001e23e09704ea9e1257ebea85e1f3\" direction=\"initiator\">\
              <state>terminated</state></dialog></dialog-info>",
        ])
    } else {
        dialog_body(fields, &pres, &from, &to, &state, &call_id, include_entity)
    };

    let mut sender = fields.first_text(&["Sender-URI", "Switch-URI"]);
    if sender.is_empty() {
        // Literally "sip:" when there is no Call-ID either.
        sender = concat(&[b"sip:", &call_id]);
    }
    let row = RowParts {
        package: Package::Dialog,
        username: &pres_user,
        domain: &pres_realm,
        etag: &fields.first_text(&["ETag", "Call-ID"]),
        sender: &sender,
        body,
    }
    .into_row(fields, now);
    Some(dialog_write(fields.int("Flush-Level"), row))
}

/// The dialog-info document of a call (`DIALOGINFO_BODY`, or `DIALOGINFO_BODY_2` without
/// `pua_include_entity`).
fn dialog_body(
    fields: &Fields<'_>,
    pres: &[u8],
    from: &[u8],
    to: &[u8],
    state: &[u8],
    call_id: &[u8],
    include_entity: bool,
) -> Vec<u8> {
    // A missing tag leaves its attribute out but keeps the spaces around its slot.
    let attribute = |name: &[u8], value: Vec<u8>| {
        if value.is_empty() {
            value
        } else {
            concat(&[name, b"=\"", &value, b"\""])
        }
    };
    let local_tag = attribute(b"local-tag", fields.text("From-Tag"));
    let remote_tag = attribute(b"remote-tag", fields.text("To-Tag"));
    let dialog_id = fields.first_text(&["Dialog-ID", "Call-ID"]);
    let target = |uri_key: &str, fallback: &[u8]| {
        if !include_entity {
            return Vec::new();
        }
        let mut uri = fields.text(uri_key);
        if uri.is_empty() {
            uri = fallback.to_vec();
        }
        concat(&[b"<target uri=\"", &uri, b"\"/>"])
    };
    concat(&[
        b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
          <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"1\" \
          state=\"full\" entity=\"",
        pres,
        b"\"><dialog id=\"",
        &dialog_id,
        b"\" call-id=\"",
        call_id,
        b"\" ",
        &local_tag,
        b" ",
        &remote_tag,
        b" direction=\"",
        &fields.text("Direction"),
        b"\"><state>",
        state,
        b"</state><local><identity display=\"",
        &fields.text("From-User"),
        b"\">",
        from,
        b"</identity>",
        &target("From-URI", from),
        b"</local><remote><identity display=\"",
        &fields.text("To-User"),
        b"\">",
        to,
        b"</identity>",
        &target("To-URI", to),
        b"</remote></dialog></dialog-info>",
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            username: "u".into(),
            domain: "d".into(),
            event: "dialog",
            etag: "e".into(),
            sender: "s".into(),
            body: Vec::new(),
            received_time: 0,
            expires: 0,
            priority: 0,
        }
    }

    #[test]
    fn flush_level_mapping() {
        let keys = |level| match dialog_write(level, row()) {
            WritePlan::DeleteThenInsert { keys, .. } => Some(keys),
            WritePlan::Replace { .. } => None,
        };
        assert_eq!(keys(0), None, "0 replaces");
        assert_eq!(keys(1), Some(3), "1: every dialog of the presentity");
        assert_eq!(keys(2), Some(2), "2: every dialog of the domain");
        assert_eq!(keys(3), Some(1), "3: every dialog row");
        assert_eq!(keys(4), Some(0), "4: the whole table");
        assert_eq!(keys(i32::MAX), Some(0));
        assert_eq!(keys(-1), None, "negative: as 0");
        assert_eq!(keys(i32::MIN), None);
    }

    #[test]
    fn expires_column_rule() {
        let now = 1_700_000_000;
        assert_eq!(expires_column(3600, now), now + 3600);
        assert_eq!(expires_column(1, now), now + 1);
        assert_eq!(expires_column(0, now), 0);
        assert_eq!(expires_column(-5, now), -5);
        assert_eq!(expires_column(i32::MIN, now), i64::from(i32::MIN));
        assert_eq!(
            expires_column(i32::MAX, now),
            now + i64::from(i32::MAX),
            "no 32-bit overflow"
        );
        assert_eq!(expires_column(1, i64::MAX), i64::MAX, "saturates");
    }

    #[test]
    fn pidf_states() {
        assert_eq!(pidf_state(b"early"), ("open", "Busy", "<rpid:busy/>"));
        assert_eq!(
            pidf_state(b"confirmed"),
            ("open", "On the Phone", "<rpid:on-the-phone/>")
        );
        assert_eq!(pidf_state(b"offline"), ("closed", "Offline", ""));
        for other in [
            &b"online"[..],
            b"terminated",
            b"Confirmed",
            b"EARLY",
            b"early ",
            b"",
        ] {
            assert_eq!(pidf_state(other), ("open", "Available", ""), "{other:?}");
        }
    }

    #[test]
    fn skip_reasons() {
        assert!(SkipReason::MissingField.is_error());
        assert!(!SkipReason::NotAnUpdate.is_error());
        assert!(!SkipReason::UnknownPackage.is_error());
        assert_eq!(
            SkipReason::MissingField.to_string(),
            "missing one of From / To / State"
        );
    }
}
