//! Conversions between wire attribute values and engine label values.

use allot_engine::LabelValue;
use allot_wire::message::{ArchivedAttrValue, ArchivedTaskStatus};
use allot_wire::{Attr, AttrValue, TaskStatus};

/// An engine label from a wire value. Booleans become 1 or 0, so that
/// `server.gpu == 1` and `server.gpu` (non-zero) both work.
pub fn label_from_archived(v: &ArchivedAttrValue) -> Option<LabelValue> {
    Some(match v {
        ArchivedAttrValue::Num(n) => LabelValue::Num(n.to_native()),
        ArchivedAttrValue::Str(s) => LabelValue::Str(s.as_str().to_owned()),
        ArchivedAttrValue::Bool(b) => LabelValue::Num(if *b { 1.0 } else { 0.0 }),
    })
}

/// A wire attribute from an engine label.
pub fn attr_from_label(key: &str, v: &LabelValue) -> Attr {
    Attr {
        key: key.to_owned(),
        value: match v {
            LabelValue::Num(n) => AttrValue::Num(*n),
            LabelValue::Str(s) => AttrValue::Str(s.clone()),
        },
    }
}

/// Parses `key=value` as given on the command line: a number if it parses
/// as one (with a size unit such as `32GiB` too), else a string.
pub fn parse_attr(kv: &str) -> Result<Attr, String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("`{kv}` is not key=value"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{k}` is not a valid attribute name (letters, digits, _)"
        ));
    }
    let v = v.trim();
    let value = match v {
        "true" => AttrValue::Bool(true),
        "false" => AttrValue::Bool(false),
        _ => match v.parse::<f64>() {
            Ok(n) if n.is_finite() => AttrValue::Num(n),
            _ => match crate::units::parse_size(v) {
                Ok(n) => AttrValue::Num(n as f64),
                Err(_) => AttrValue::Str(v.to_owned()),
            },
        },
    };
    Ok(Attr {
        key: k.to_owned(),
        value,
    })
}

/// The owned status of an archived one.
pub fn status_from_archived(s: &ArchivedTaskStatus) -> TaskStatus {
    match s {
        ArchivedTaskStatus::Ok => TaskStatus::Ok,
        ArchivedTaskStatus::Failed => TaskStatus::Failed,
        ArchivedTaskStatus::Refused => TaskStatus::Refused,
        ArchivedTaskStatus::NoMatch => TaskStatus::NoMatch,
        ArchivedTaskStatus::Timeout => TaskStatus::Timeout,
        ArchivedTaskStatus::Cancelled => TaskStatus::Cancelled,
        ArchivedTaskStatus::Error => TaskStatus::Error,
    }
}

/// The lower-case name of a status, as `submit --json` prints it.
pub fn status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Ok => "ok",
        TaskStatus::Failed => "failed",
        TaskStatus::Refused => "refused",
        TaskStatus::NoMatch => "no_match",
        TaskStatus::Timeout => "timeout",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Error => "error",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_parse_numbers_sizes_bools_and_strings() {
        assert_eq!(parse_attr("gpus=2").unwrap().value, AttrValue::Num(2.0));
        assert_eq!(
            parse_attr("scratch=1GiB").unwrap().value,
            AttrValue::Num((1u64 << 30) as f64)
        );
        assert_eq!(parse_attr("gpu=true").unwrap().value, AttrValue::Bool(true));
        assert_eq!(
            parse_attr("region=eu-west").unwrap().value,
            AttrValue::Str("eu-west".into())
        );
        assert_eq!(
            parse_attr("region").unwrap_err(),
            "`region` is not key=value"
        );
        assert!(parse_attr("bad key=1")
            .unwrap_err()
            .contains("not a valid attribute name"));
    }
}
