//! Typed, lenient access to fields of a parsed event, and the error helpers the formats share.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{FormatError, MAX_SOURCE_ID_LEN};

/// A parsed JSON object.
pub(crate) type Obj = Map<String, Value>;

/// Which element an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctx {
    /// 0-based event index.
    pub index: usize,
    /// 1-based NDJSON line.
    pub line: Option<usize>,
}

impl Ctx {
    /// `MissingField` for this element.
    pub fn missing(self, field: &'static str) -> FormatError {
        FormatError::MissingField { index: self.index, line: self.line, field }
    }

    /// `BadField` for this element.
    pub fn bad(self, field: &'static str, reason: impl Into<String>) -> FormatError {
        FormatError::BadField { index: self.index, line: self.line, field, reason: reason.into() }
    }

    /// Refuses a type value in the appliance's reserved namespace (`anchorlog.`…): only the appliance writes
    /// such records, and a producer's look-alike would be read as one by search and by eye.
    pub fn refuse_reserved_type(self, field: &'static str, value: &str) -> Result<(), FormatError> {
        if anchorlog_core::record_types::is_reserved_type(value) {
            return Err(FormatError::ReservedType { index: self.index, line: self.line, field });
        }
        Ok(())
    }
}

/// Follows `path` through nested objects.
pub(crate) fn get<'a>(obj: &'a Obj, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = obj;
    for key in parents {
        cur = cur.get(*key)?.as_object()?;
    }
    cur.get(*last)
}

/// The object at `path`, if it is one.
pub(crate) fn obj<'a>(obj: &'a Obj, path: &[&str]) -> Option<&'a Obj> {
    get(obj, path)?.as_object()
}

/// A non-empty string at `path`; anything else (absent, null, "", other types) is `None`.
pub(crate) fn text(obj: &Obj, path: &[&str]) -> Option<String> {
    match get(obj, path)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The first of several candidate paths that holds a non-empty string.
pub(crate) fn first_text(obj: &Obj, paths: &[&[&str]]) -> Option<String> {
    paths.iter().find_map(|p| text(obj, p))
}

/// A required string field (absent or null → `MissingField`, other types or "" → `BadField`).
pub(crate) fn required_text(
    obj: &Obj,
    path: &[&str],
    field: &'static str,
    ctx: Ctx,
) -> Result<String, FormatError> {
    match get(obj, path) {
        None | Some(Value::Null) => Err(ctx.missing(field)),
        Some(Value::String(s)) if s.is_empty() => Err(ctx.bad(field, "must not be empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ctx.bad(field, format!("expected a string, got {}", kind(other)))),
    }
}

/// Checks a source event id's length (the id is the de-duplication key).
pub(crate) fn check_source_id(id: String, field: &'static str, ctx: Ctx) -> Result<String, FormatError> {
    if id.len() > MAX_SOURCE_ID_LEN {
        return Err(
            ctx.bad(field, format!("event id is {} bytes, longer than {MAX_SOURCE_ID_LEN}", id.len()))
        );
    }
    Ok(id)
}

/// A required RFC 3339 timestamp, as epoch milliseconds.
pub(crate) fn required_rfc3339_ms(
    obj: &Obj,
    path: &[&str],
    field: &'static str,
    ctx: Ctx,
) -> Result<i64, FormatError> {
    let s = required_text(obj, path, field, ctx)?;
    rfc3339_ms(&s)
        .ok_or_else(|| ctx.bad(field, format!("`{}` is not an RFC 3339 date-time", truncate(&s, 64))))
}

/// Parses an RFC 3339 date-time into epoch milliseconds.
pub(crate) fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
}

/// A required non-negative integer of epoch milliseconds (Keycloak `time`).
pub(crate) fn required_epoch_ms(
    obj: &Obj,
    path: &[&str],
    field: &'static str,
    ctx: Ctx,
) -> Result<i64, FormatError> {
    match get(obj, path) {
        None | Some(Value::Null) => Err(ctx.missing(field)),
        Some(Value::Number(n)) => n.as_i64().filter(|ms| *ms >= 0).ok_or_else(|| {
            ctx.bad(field, format!("expected non-negative integer epoch milliseconds, got {n}"))
        }),
        Some(other) => {
            Err(ctx.bad(field, format!("expected integer epoch milliseconds, got {}", kind(other))))
        }
    }
}

/// JSON type name for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` characters of `s` (user input echoed in errors stays short).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Guesses which producer an object came from, to explain a `WrongFormat`.
pub(crate) fn looks_like(obj: &Obj) -> Option<&'static str> {
    if get(obj, &["data", "events"]).is_some() {
        return Some("an Okta event hook envelope");
    }
    if obj.contains_key("uuid") && obj.contains_key("published") {
        return Some("a bare Okta LogEvent");
    }
    if obj.contains_key("log_id") || obj.get("data").is_some_and(Value::is_object) {
        return Some("an Auth0 log stream item");
    }
    if obj.contains_key("operationType") || obj.contains_key("authDetails") {
        return Some("a Keycloak admin event");
    }
    if obj.contains_key("realmId") && obj.contains_key("type") {
        return Some("a Keycloak user event");
    }
    None
}

/// "; it looks like X" or "".
pub(crate) fn looks_like_suffix(obj: &Obj) -> String {
    looks_like(obj).map(|what| format!("; it looks like {what}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o(v: Value) -> Obj {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test input is an object"),
        }
    }

    const CTX: Ctx = Ctx { index: 2, line: None };

    #[test]
    fn rfc3339_to_millis() {
        assert_eq!(rfc3339_ms("2024-11-23T10:41:05.777Z"), Some(1_732_358_465_777));
        assert_eq!(rfc3339_ms("2024-11-23T11:41:05.777+01:00"), Some(1_732_358_465_777));
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        assert_eq!(rfc3339_ms("2024-11-23T10:41:05"), None);
        assert_eq!(rfc3339_ms("1732358465777"), None);
    }

    #[test]
    fn text_is_lenient() {
        let v = o(json!({"a": "x", "b": "", "c": null, "d": 5, "e": {"f": "y"}}));
        assert_eq!(text(&v, &["a"]), Some("x".to_owned()));
        assert_eq!(text(&v, &["b"]), None);
        assert_eq!(text(&v, &["c"]), None);
        assert_eq!(text(&v, &["d"]), None);
        assert_eq!(text(&v, &["e", "f"]), Some("y".to_owned()));
        assert_eq!(text(&v, &["a", "f"]), None);
        assert_eq!(first_text(&v, &[&["b"], &["e", "f"]]), Some("y".to_owned()));
    }

    #[test]
    fn required_fields_name_the_problem() {
        let v = o(json!({"n": 5, "e": "", "t": -3, "f": 1.5}));
        assert_eq!(required_text(&v, &["x"], "x", CTX), Err(CTX.missing("x")));
        assert_eq!(required_text(&v, &["n"], "n", CTX), Err(CTX.bad("n", "expected a string, got a number")));
        assert_eq!(required_text(&v, &["e"], "e", CTX), Err(CTX.bad("e", "must not be empty")));
        assert_eq!(
            required_epoch_ms(&v, &["t"], "t", CTX),
            Err(CTX.bad("t", "expected non-negative integer epoch milliseconds, got -3"))
        );
        assert_eq!(
            required_epoch_ms(&v, &["f"], "f", CTX),
            Err(CTX.bad("f", "expected non-negative integer epoch milliseconds, got 1.5"))
        );
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("äbc", 2), "äb…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
