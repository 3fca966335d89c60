//! Auth0 log streams (custom webhook): items `{"log_id": …, "data": {log object}}` framed as
//! `JSONARRAY`, `JSONLINES` or `JSONOBJECT`. The framing is detected from the body (first byte
//! `[` → array; one object → single; several values on separate lines → JSON lines), so a
//! stream's "Content Format" setting can change without reconfiguring the source. All three
//! framings of the same items give identical [`ParsedEvent`]s.
//!
//! | normalized | log item |
//! |---|---|
//! | source id (required) | `log_id`, else `data.log_id` (they must agree when both are present) |
//! | time (required) | `data.date` (RFC 3339) |
//! | type (required) | `data.type` (the event code, e.g. `s`, `fp`, `sapi`) |
//! | outcome | from the event code, by [`outcome_of_code`] |
//! | actor id / name | `data.user_id` / `data.user_name`; for Management API calls also `details.request.auth.user.{user_id, email}` |
//! | target | Management API calls (`sapi`, `fapi`, `mgmt_api_read`): `<METHOD> <path>` of `details.request` |
//! | source ip | `data.ip` |
//! | user agent | `data.user_agent`, else `details.request.userAgent` |
//! | session | `data.details.session_id` |
//! | client | `data.client_id` |
//! | realm | `data.hostname` (the tenant domain) |

use super::fields::{self, check_source_id, first_text, required_rfc3339_ms, required_text, text};
use super::frame::{self, Element, LineMode};
use super::{Format, FormatError, Limits, NormalizedFields, Outcome, ParsedEvent};

/// Event codes whose outcome is success (Auth0 "log event type codes").
const SUCCESS_CODES: &[&str] = &[
    "s",
    "ss",
    "ssa",
    "slo",
    "sapi",
    "sce",
    "scoa",
    "scp",
    "scpn",
    "scpr",
    "scu",
    "sd",
    "sdu",
    "seacft",
    "seccft",
    "sede",
    "sens",
    "seoobft",
    "seotpft",
    "sepft",
    "sercft",
    "sertft",
    "srrt",
    "sui",
    "sv",
    "svr",
    "scrc",
    "sscim",
    "ublkdu",
    "mgmt_api_read",
    "gd_auth_succeed",
    "gd_enrollment_complete",
    "gd_otp_rate_limit_exceed_reset",
    "oidc_backchannel_logout_succeeded",
];

/// Event codes whose outcome is failure.
const FAILURE_CODES: &[&str] = &[
    "f",
    "fapi",
    "fc",
    "fce",
    "fco",
    "fcoa",
    "fcp",
    "fcph",
    "fcpn",
    "fcpr",
    "fcpro",
    "fcu",
    "fd",
    "fdeac",
    "fdeaz",
    "fdecc",
    "fdu",
    "feacft",
    "feccft",
    "fede",
    "fens",
    "feoobft",
    "feotpft",
    "fepft",
    "fepotpft",
    "fercft",
    "ferrt",
    "fertft",
    "fi",
    "flo",
    "fn",
    "fp",
    "fs",
    "fsa",
    "fu",
    "fui",
    "fv",
    "fvr",
    "limit_delegation",
    "limit_mu",
    "limit_sul",
    "limit_wc",
    "pwd_leak",
    "actions_execution_failed",
    "gd_auth_failed",
    "gd_auth_rejected",
    "gd_otp_rate_limit_exceed",
    "gd_recovery_failed",
    "gd_recovery_rate_limit_exceed",
    "gd_send_pn_failure",
    "gd_send_sms_failure",
    "gd_start_enroll_failed",
    "gd_webauthn_enrollment_failed",
    "oidc_backchannel_logout_failed",
];

/// Management API event codes: their target is the API call.
const API_CODES: &[&str] = &["sapi", "fapi", "mgmt_api_read"];

/// Outcome of an Auth0 event code. The first letter is not enough (`w`, `du`, `cs`, `api_limit`
/// are neither), so known codes are looked up; unknown codes count by a `_succeeded`/`_failed`
/// style suffix, else unknown.
pub fn outcome_of_code(code: &str) -> Outcome {
    if SUCCESS_CODES.contains(&code) {
        Outcome::Success
    } else if FAILURE_CODES.contains(&code) {
        Outcome::Failure
    } else if ["_succeeded", "_succeed", "_success"].iter().any(|s| code.ends_with(s)) {
        Outcome::Success
    } else if ["_failed", "_failure", "_fail"].iter().any(|s| code.ends_with(s)) {
        Outcome::Failure
    } else {
        Outcome::Unknown
    }
}

/// Parses an Auth0 log stream body (array, JSON lines or single object).
pub fn parse(body: &[u8], ndjson: bool, limits: &Limits) -> Result<Vec<ParsedEvent>, FormatError> {
    let mode = if ndjson { LineMode::On } else { LineMode::Detect };
    frame::split(body, mode, limits)?.iter().map(|el| parse_item(body, el)).collect()
}

/// One `{log_id, data}` item.
fn parse_item(body: &[u8], el: &Element<'_>) -> Result<ParsedEvent, FormatError> {
    let item = el.object(body)?;
    let ctx = el.ctx();
    let Some(data) = fields::obj(&item, &["data"]) else {
        if item.contains_key("log_id") {
            return Err(match item.get("data") {
                None | Some(serde_json::Value::Null) => ctx.missing("data"),
                Some(other) => ctx.bad("data", format!("expected an object, got {}", fields::kind(other))),
            });
        }
        return Err(FormatError::WrongFormat {
            expected: Format::Auth0,
            detail: format!(
                "item {} is not a log stream item {{\"log_id\", \"data\"}}{}",
                el.index,
                fields::looks_like_suffix(&item)
            ),
        });
    };
    let log_id = source_id(&item, data, ctx)?;
    let event_time_ms = required_rfc3339_ms(data, &["date"], "data.date", ctx)?;
    let code = required_text(data, &["type"], "data.type", ctx)?;
    ctx.refuse_reserved_type("data.type", &code)?;
    Ok(ParsedEvent {
        raw: el.raw.get().as_bytes().to_vec(),
        source_id: Some(log_id),
        fields: normalize(data, code, event_time_ms),
    })
}

/// `log_id` (outer, else `data.log_id`); both present and different is an error, since one of
/// them would silently become the de-duplication key.
fn source_id(item: &fields::Obj, data: &fields::Obj, ctx: fields::Ctx) -> Result<String, FormatError> {
    let outer = match item.get("log_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(required_text(item, &["log_id"], "log_id", ctx)?),
    };
    let inner = match data.get("log_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(required_text(data, &["log_id"], "data.log_id", ctx)?),
    };
    let id = match (outer, inner) {
        (Some(a), Some(b)) if a != b => {
            return Err(ctx.bad(
                "log_id",
                format!(
                    "`log_id` {} differs from `data.log_id` {}",
                    fields::truncate(&a, 64),
                    fields::truncate(&b, 64)
                ),
            ))
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(ctx.missing("log_id")),
    };
    check_source_id(id, "log_id", ctx)
}

/// Normalized fields of a log object (`data`).
fn normalize(data: &fields::Obj, code: String, event_time_ms: i64) -> NormalizedFields {
    let is_api = API_CODES.contains(&code.as_str());
    let (api_actor, api_actor_name, target) = if is_api {
        (
            text(data, &["details", "request", "auth", "user", "user_id"]),
            first_text(
                data,
                &[
                    &["details", "request", "auth", "user", "email"],
                    &["details", "request", "auth", "user", "name"],
                ],
            ),
            api_target(data),
        )
    } else {
        (None, None, None)
    };
    NormalizedFields {
        event_time_ms: Some(event_time_ms),
        outcome: outcome_of_code(&code),
        event_type: Some(code),
        actor_id: text(data, &["user_id"]).or(api_actor),
        actor_name: text(data, &["user_name"]).or(api_actor_name),
        target,
        source_ip: text(data, &["ip"]),
        user_agent: first_text(data, &[&["user_agent"], &["details", "request", "userAgent"]]),
        session_id: text(data, &["details", "session_id"]),
        client_id: text(data, &["client_id"]),
        realm: text(data, &["hostname"]),
    }
}

/// `PATCH /api/v2/users/…` from `details.request`.
fn api_target(data: &fields::Obj) -> Option<String> {
    let path = text(data, &["details", "request", "path"])?;
    Some(match text(data, &["details", "request", "method"]) {
        Some(method) => format!("{} {path}", method.to_ascii_uppercase()),
        None => path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_table() {
        assert_eq!(outcome_of_code("s"), Outcome::Success);
        assert_eq!(outcome_of_code("sapi"), Outcome::Success);
        assert_eq!(outcome_of_code("f"), Outcome::Failure);
        assert_eq!(outcome_of_code("fp"), Outcome::Failure);
        assert_eq!(outcome_of_code("limit_wc"), Outcome::Failure);
        assert_eq!(outcome_of_code("w"), Outcome::Unknown);
        assert_eq!(outcome_of_code("du"), Outcome::Unknown);
        assert_eq!(outcome_of_code("cs"), Outcome::Unknown);
        assert_eq!(outcome_of_code("api_limit"), Outcome::Unknown);
        assert_eq!(outcome_of_code("new_thing_succeeded"), Outcome::Success);
        assert_eq!(outcome_of_code("new_thing_failed"), Outcome::Failure);
        assert_eq!(outcome_of_code("sx"), Outcome::Unknown);
    }

    #[test]
    fn code_tables_are_disjoint() {
        for code in SUCCESS_CODES {
            assert!(!FAILURE_CODES.contains(code), "{code} in both tables");
        }
    }
}
