//! The `kz` transformation class: `{kz.json,PATH}`, `{kz.json.count,PATH}`
//! and `{kz.encode}`.
//!
//! Sub-names are matched case-insensitively, as in the C module. PATH may be
//! a literal, a pseudo-variable (`$var(p)`) or a text with embedded
//! variables. Results follow the C module: a missing field gives `""` (not
//! `$null`) for `kz.json`, and 0 for `kz.json.count`.
use kamailio::trans::{TransClass, TransOutput, TransParam};
use kamailio::SipMsg;
use kazoo_engine::encode;
use kazoo_engine::json::{self, JsonError};

use crate::params::config;

pub(crate) struct KzTransformations;

pub(crate) enum KzTransformation {
    Encode,
    Json(TransParam),
    JsonCount(TransParam),
}

impl TransClass for KzTransformations {
    type Spec = KzTransformation;

    fn parse(text: &[u8]) -> Result<(KzTransformation, usize), String> {
        let name_len = text
            .iter()
            .position(|&b| b == b',' || b == b'}')
            .ok_or("missing `}`")?;
        let name = text[..name_len].trim_ascii().to_ascii_lowercase();
        let with_path = |make: fn(TransParam) -> KzTransformation| {
            if text.get(name_len) != Some(&b',') {
                return Err("a path parameter is required, e.g. {kz.json,Event-Name}".to_string());
            }
            let start = name_len + 1;
            let (param, used) = TransParam::parse(&text[start..])?;
            let mut end = start + used;
            while matches!(text.get(end), Some(b' ' | b'\t')) {
                end += 1;
            }
            Ok((make(param), end))
        };
        match name.as_slice() {
            b"encode" => Ok((KzTransformation::Encode, name_len)),
            b"json" => with_path(KzTransformation::Json),
            b"json.count" => with_path(KzTransformation::JsonCount),
            other => Err(format!(
                "unknown transformation kz.{}",
                String::from_utf8_lossy(other)
            )),
        }
    }

    fn eval(
        msg: &mut SipMsg,
        spec: &KzTransformation,
        input: &[u8],
    ) -> Result<TransOutput, String> {
        let escape = config().params.json_escape_char;
        match spec {
            KzTransformation::Encode => Ok(TransOutput::Str(encode::encode_truncating(input))),
            KzTransformation::Json(path) => {
                let path = path.value(msg)?;
                match json::field_text_or_empty(input, &path, escape) {
                    Ok(value) => Ok(TransOutput::Str(value)),
                    Err(e @ JsonError::InvalidJson(_)) => {
                        kamailio::error!("kz.json: {e}");
                        Ok(TransOutput::Str(Vec::new()))
                    }
                    Err(e) => Err(format!("kz.json: {e}")),
                }
            }
            KzTransformation::JsonCount(path) => {
                let path = path.value(msg)?;
                match json::array_len(input, &path, escape) {
                    Ok(n) => Ok(TransOutput::Int(i32::try_from(n).unwrap_or(i32::MAX))),
                    Err(e @ JsonError::InvalidJson(_)) => {
                        kamailio::error!("kz.json.count: {e}");
                        Ok(TransOutput::Int(0))
                    }
                    Err(e) => Err(format!("kz.json.count: {e}")),
                }
            }
        }
    }
}
