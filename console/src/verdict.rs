//! The one answer shape every console function returns (see the crate documentation).

use anchorlog_core::verify::Failure;
use serde::Serialize;
use serde_json::{json, Value};

/// `{"ok": true, "report": report}`.
pub fn ok(report: &impl Serialize) -> Value {
    match serde_json::to_value(report) {
        Ok(report) => json!({"ok": true, "report": report}),
        Err(e) => input_error(format!("the report cannot be shown: {e}")),
    }
}

/// `{"ok": false, "failure": {"kind", "at", "message"}}`: invalid at the named seq or height.
pub fn failure(f: &Failure) -> Value {
    let (kind, at) = f.location();
    json!({"ok": false, "failure": {"kind": kind, "at": at, "message": f.to_string()}})
}

/// `{"ok": false, "input_error": message}`: the inputs could not be used.
pub fn input_error(message: impl Into<String>) -> Value {
    json!({"ok": false, "input_error": message.into()})
}

/// [`ok`] or [`failure`].
pub fn of<R: Serialize>(result: Result<R, Failure>) -> Value {
    match result {
        Ok(r) => ok(&r),
        Err(f) => failure(&f),
    }
}
