//! The ground-truth vectors captured from the C module (`vectors/` at the
//! workspace root; format in `vectors/README.md`): reading the files and
//! decoding TSV cells, for every test suite that replays them.
use std::collections::HashMap;
use std::path::PathBuf;

/// The `vectors/` directory.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../vectors")
}

/// A vector file's text (panics with the path when it cannot be read).
pub fn read_vector(name: &str) -> String {
    let path = vectors_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of a `.jsonl` vector file.
pub fn jsonl(name: &str) -> Vec<serde_json::Value> {
    read_vector(name)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
        .collect()
}

/// The rows of a `.tsv` vector file as column-name → raw cell maps.
pub fn tsv_rows(name: &str) -> Vec<HashMap<String, String>> {
    let text = read_vector(name);
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split('\t')
        .map(String::from)
        .collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), header.len(), "bad row in {name}: {line}");
            header
                .iter()
                .cloned()
                .zip(cells.into_iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Decodes one TSV cell (README §3: `\\`, `\t`, `\n`, `\r`, `\xHH`,
/// `\uXXXX`); `None` is the null cell `\N`.
pub fn tsv_cell(cell: &str) -> Option<Vec<u8>> {
    if cell == "\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(cell.len());
    let mut chars = cell.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
            continue;
        }
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> u32 {
            let digits: String = chars.by_ref().take(n).collect();
            u32::from_str_radix(&digits, 16)
                .unwrap_or_else(|e| panic!("bad escape {digits:?} in cell {cell:?}: {e}"))
        };
        match chars.next() {
            Some('\\') => out.push(b'\\'),
            Some('t') => out.push(b'\t'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('x') => out.push(u8::try_from(hex(&mut chars, 2)).unwrap_or_default()),
            Some('u') => {
                let code = hex(&mut chars, 4);
                let ch = char::from_u32(code)
                    .unwrap_or_else(|| panic!("bad code point {code:X} in {cell:?}"));
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
            }
            other => panic!("unknown escape {other:?} in cell {cell:?}"),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::tsv_cell;

    #[test]
    fn cells_decode_as_the_readme_says() {
        assert_eq!(tsv_cell("\\N"), None);
        assert_eq!(
            tsv_cell("a\\tb\\\\c\\x00\\u0085"),
            Some(b"a\tb\\c\0\xc2\x85".to_vec())
        );
        assert_eq!(tsv_cell("ü"), Some("ü".as_bytes().to_vec()));
    }
}
