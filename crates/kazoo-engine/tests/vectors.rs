//! Checks the engine against the ground-truth vectors captured from the C module
//! (`vectors/encode.tsv`, `vectors/json_path.tsv`, `vectors/json_keys.tsv`; format in
//! `vectors/README.md` §3 and §4).

use kazoo_engine::encode::{encode_checked, encode_truncating};
use kazoo_engine::json::{array_len, field_text, field_text_or_empty, object_keys, JsonError};

const ESCAPE_CHAR: u8 = b'%';

/// The rows of a TSV file as raw cells, header checked and dropped.
fn rows(file: &str, header: &[&str]) -> Vec<Vec<String>> {
    let text = kamailio_test::read_vector(file);
    let mut lines = text.lines();
    let found: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    assert_eq!(found, header, "unexpected header in {file}");
    lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let cells: Vec<String> = line.split('\t').map(str::to_owned).collect();
            assert_eq!(cells.len(), header.len(), "bad row in {file}: {line}");
            cells
        })
        .collect()
}

/// Decodes a cell (README §3); `None` is the null cell `\N`.
fn cell(text: &str) -> Option<Vec<u8>> {
    kamailio_test::tsv_cell(text)
}

fn cell_bytes(text: &str) -> Vec<u8> {
    cell(text).unwrap_or_else(|| panic!("unexpected null cell"))
}

fn hex_decode(text: &str) -> Vec<u8> {
    kamailio_test::hex_decode(text).unwrap_or_else(|e| panic!("bad hex {text}: {e}"))
}

fn show(bytes: &Option<Vec<u8>>) -> String {
    match bytes {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "null".to_owned(),
    }
}

/// Rewrites the C module's broken escapes for bytes >= 0x80 into the `%XX` we emit instead.
///
/// C writes `%`, then `'0' + (signed_byte >> 4)`, i.e. one of `( ) * + , - . /` standing for a
/// high nibble of 8..F, then the correct low hex digit. Correct escapes of bytes < 0x80 have a
/// digit 0..7 after the `%`, and the characters `(`..`/` never appear raw in the output.
fn fix_c_high_bytes(c_output: &[u8]) -> Vec<u8> {
    let mut out = c_output.to_vec();
    for i in 0..out.len().saturating_sub(1) {
        if out[i] == b'%' && (b'('..=b'/').contains(&out[i + 1]) {
            let nibble = out[i + 1] - 0x20;
            out[i + 1] = b"0123456789ABCDEF"[usize::from(nibble)];
        }
    }
    out
}

#[test]
fn encode_vectors() {
    let rows = rows(
        "encode.tsv",
        &[
            "input_hex",
            "output",
            "kz_encode",
            "kazoo_encode_rc",
            "note",
        ],
    );
    let (mut ascii_rows, mut high_rows) = (0, 0);
    for row in &rows {
        let input = hex_decode(&row[0]);
        let function_output = cell(&row[1]);
        let transformation_output = cell_bytes(&row[2]);
        let rc: i32 = row[3].parse().expect("rc is an integer");
        assert_eq!(
            rc == -1,
            function_output.is_none(),
            "rc/output mismatch in row {row:?}"
        );
        let (want_function, want_transformation) = if input.iter().all(|&b| b < 0x80) {
            ascii_rows += 1;
            (function_output, transformation_output)
        } else {
            high_rows += 1;
            (
                function_output.as_deref().map(fix_c_high_bytes),
                fix_c_high_bytes(&transformation_output),
            )
        };
        let got_function = encode_checked(&input);
        assert_eq!(
            got_function,
            want_function,
            "kazoo_encode({:?}): got {}, want {} ({})",
            String::from_utf8_lossy(&input),
            show(&got_function),
            show(&want_function),
            row[4]
        );
        let got_transformation = encode_truncating(&input);
        assert_eq!(
            got_transformation,
            want_transformation,
            "{{kz.encode}} of {:?} ({})",
            String::from_utf8_lossy(&input),
            row[4]
        );
    }
    println!(
        "encode.tsv: {} rows checked ({ascii_rows} ASCII-only, {high_rows} with bytes >= 0x80)",
        rows.len()
    );
    assert!(ascii_rows > 0, "no ASCII-only encode rows");
    assert!(high_rows > 0, "no encode rows with bytes >= 0x80");
}

#[test]
fn fix_c_high_bytes_rewrites_only_broken_escapes() {
    assert_eq!(fix_c_high_bytes(b"%,3%)Cn%,3%*F"), b"%C3%9Cn%C3%AF");
    assert_eq!(fix_c_high_bytes(b"%2E%7F%/F"), b"%2E%7F%FF");
}

/// What the C module produces for a row, from our helpers. Invalid JSON is "as missing" there.
fn json_results(json: &[u8], path: &[u8]) -> (Option<Vec<u8>>, Vec<u8>, i64) {
    let invalid_or = |e: JsonError| match e {
        JsonError::InvalidJson(_) => (),
        other => panic!("json {json:?} path {path:?}: unexpected error {other}"),
    };
    let function = field_text(json, path, ESCAPE_CHAR).unwrap_or_else(|e| {
        invalid_or(e);
        None
    });
    let transformation = field_text_or_empty(json, path, ESCAPE_CHAR).unwrap_or_else(|e| {
        invalid_or(e);
        Vec::new()
    });
    let count = array_len(json, path, ESCAPE_CHAR).unwrap_or_else(|e| {
        invalid_or(e);
        0
    });
    (function, transformation, count)
}

#[test]
fn json_path_vectors() {
    let rows = rows(
        "json_path.tsv",
        &[
            "json",
            "path",
            "kazoo_json_result",
            "kzjson_result",
            "kzjsoncount_result",
            "note",
        ],
    );
    for row in &rows {
        let json = cell_bytes(&row[0]);
        let path = cell_bytes(&row[1]);
        let want_function = cell(&row[2]);
        let want_transformation = cell_bytes(&row[3]);
        let want_count: i64 = row[4].parse().expect("count is an integer");
        let (function, transformation, count) = json_results(&json, &path);
        let context = format!("path {:?} ({})", String::from_utf8_lossy(&path), row[5]);
        assert_eq!(
            function,
            want_function,
            "kazoo_json, {context}: got {}, want {}",
            show(&function),
            show(&want_function)
        );
        assert_eq!(
            transformation,
            want_transformation,
            "kz.json, {context}: got {}",
            show(&Some(transformation.clone()))
        );
        assert_eq!(count, want_count, "kz.json.count, {context}");
    }
    println!("json_path.tsv: {} rows checked", rows.len());
    assert!(!rows.is_empty(), "no json_path rows");
}

/// Parses the `keys_object_order` cell: a JSON array of strings as Python writes it.
fn string_array(text: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(text).expect("key list is UTF-8");
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not an array: {text}"));
    let mut keys = Vec::new();
    let mut chars = inner.chars();
    while let Some(ch) = chars.next() {
        match ch {
            ' ' | ',' => continue,
            '"' => {
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('u') => {
                                let digits: String = chars.by_ref().take(4).collect();
                                let code = u32::from_str_radix(&digits, 16).expect("hex");
                                key.push(char::from_u32(code).expect("scalar value"));
                            }
                            Some('n') => key.push('\n'),
                            Some('t') => key.push('\t'),
                            Some(other) => key.push(other),
                            None => panic!("unterminated escape in {text}"),
                        },
                        Some(other) => key.push(other),
                        None => panic!("unterminated string in {text}"),
                    }
                }
                keys.push(key.into_bytes());
            }
            other => panic!("unexpected {other:?} in {text}"),
        }
    }
    keys
}

#[test]
fn json_keys_vectors() {
    let rows = rows(
        "json_keys.tsv",
        &[
            "json",
            "path",
            "rc",
            "avp_count",
            "avps_stack",
            "keys_object_order",
            "preexisting_avp",
            "note",
        ],
    );
    let mut checked = 0;
    for row in &rows {
        if row[2] != "1" {
            continue;
        }
        let json = cell_bytes(&row[0]);
        let path = cell_bytes(&row[1]);
        let want = string_array(&cell_bytes(&row[5]));
        let avp_count: usize = row[3].parse().expect("avp_count is an integer");
        let preexisting: usize = row[6].parse().expect("preexisting_avp is 0 or 1");
        // The C module adds nothing for a missing/null path and for invalid JSON.
        let got = match object_keys(&json, &path, ESCAPE_CHAR) {
            Ok(keys) => keys.unwrap_or_default(),
            Err(JsonError::InvalidJson(_)) => Vec::new(),
            Err(e) => panic!(
                "kazoo_json_keys path {:?} ({}): {e}",
                String::from_utf8_lossy(&path),
                row[7]
            ),
        };
        assert_eq!(
            got,
            want,
            "kazoo_json_keys path {:?} ({})",
            String::from_utf8_lossy(&path),
            row[7]
        );
        assert_eq!(got.len() + preexisting, avp_count, "AVP count, {}", row[7]);
        checked += 1;
    }
    println!("json_keys.tsv: {checked} rows checked");
    assert!(checked > 0, "no json_keys rows");
}
