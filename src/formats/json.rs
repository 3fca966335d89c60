//! Generic JSON events: a JSON object, an array of objects, or NDJSON (with `ndjson`).
//!
//! Nothing is required beyond "each event is an object". `source_id` is the `id` member when it
//! is a non-empty string (other types are ignored: an id of `1` and `"1"` would otherwise
//! collide); the HTTP layer may replace it with an `Idempotency-Key` for a single event.
//! Normalized fields are taken best-effort from common keys, first match wins:
//!
//! | normalized | keys |
//! |---|---|
//! | time | `time`, `timestamp`, `ts`, `@timestamp`, `date`, `published`, `event_time`: RFC 3339 string, or a number of epoch seconds (< 10^11) or milliseconds |
//! | type | `type`, `event_type`, `eventType`, `action`, `event` |
//! | outcome | `outcome` / `result` / `status` (string, or `outcome.result`), or boolean `success` |
//! | actor id | `actor_id`, `actor` (string), `actor.id`, `user_id`, `userId`, `user` (string), `user.id`, `sub` |
//! | actor name | `actor_name`, `actor.name`, `actor.displayName`, `user_name`, `username`, `user.name`, `email` |
//! | target | `target` (string), `target.id`, `resource` (string), `resource.id`, `object` |
//! | source ip | `ip`, `source_ip`, `ip_address`, `ipAddress`, `client_ip`, `remote_addr` |
//! | user agent | `user_agent`, `userAgent` |
//! | session | `session_id`, `sessionId`, `session` |
//! | client | `client_id`, `clientId`, `app`, `application` |
//! | realm | `realm`, `tenant`, `realmId`, `org`, `organization` |

use serde_json::Value;

use super::fields::{self, check_source_id, first_text, text, Obj};
use super::frame::{self, LineMode};
use super::{FormatError, Limits, NormalizedFields, Outcome, ParsedEvent};

/// Below this a numeric time is taken as seconds (10^11 s is the year 5138; 10^11 ms is 1973).
const SECONDS_CUTOFF: i64 = 100_000_000_000;

/// Parses a generic JSON body.
pub fn parse(body: &[u8], ndjson: bool, limits: &Limits) -> Result<Vec<ParsedEvent>, FormatError> {
    parse_with(body, ndjson, limits, true)
}

/// [`parse`], with the best-effort normalized fields left empty unless `normalize` (search disabled:
/// nothing would store them, and the key lookups are a measurable share of a handler's time).
pub fn parse_with(
    body: &[u8],
    ndjson: bool,
    limits: &Limits,
    normalize: bool,
) -> Result<Vec<ParsedEvent>, FormatError> {
    let mode = if ndjson { LineMode::On } else { LineMode::Off };
    frame::split(body, mode, limits)?
        .iter()
        .map(|el| {
            let obj = el.object(body)?;
            let source_id = match text(&obj, &["id"]) {
                Some(id) => Some(check_source_id(id, "id", el.ctx())?),
                None => None,
            };
            let fields = if normalize { self::normalize(&obj) } else { NormalizedFields::default() };
            Ok(ParsedEvent { raw: el.raw.get().as_bytes().to_vec(), source_id, fields })
        })
        .collect()
}

/// Best-effort normalized fields; never fails.
pub(crate) fn normalize(obj: &Obj) -> NormalizedFields {
    NormalizedFields {
        event_time_ms: event_time(obj),
        event_type: first_text(obj, &[&["type"], &["event_type"], &["eventType"], &["action"], &["event"]]),
        outcome: outcome(obj),
        actor_id: first_text(
            obj,
            &[
                &["actor_id"],
                &["actor"],
                &["actor", "id"],
                &["user_id"],
                &["userId"],
                &["user"],
                &["user", "id"],
                &["sub"],
            ],
        ),
        actor_name: first_text(
            obj,
            &[
                &["actor_name"],
                &["actor", "name"],
                &["actor", "displayName"],
                &["user_name"],
                &["username"],
                &["user", "name"],
                &["email"],
            ],
        ),
        target: first_text(
            obj,
            &[&["target"], &["target", "id"], &["resource"], &["resource", "id"], &["object"]],
        ),
        source_ip: first_text(
            obj,
            &[&["ip"], &["source_ip"], &["ip_address"], &["ipAddress"], &["client_ip"], &["remote_addr"]],
        ),
        user_agent: first_text(obj, &[&["user_agent"], &["userAgent"]]),
        session_id: first_text(obj, &[&["session_id"], &["sessionId"], &["session"]]),
        client_id: first_text(obj, &[&["client_id"], &["clientId"], &["app"], &["application"]]),
        realm: first_text(obj, &[&["realm"], &["tenant"], &["realmId"], &["org"], &["organization"]]),
    }
}

/// The first time-like key that parses.
fn event_time(obj: &Obj) -> Option<i64> {
    const KEYS: &[&str] = &["time", "timestamp", "ts", "@timestamp", "date", "published", "event_time"];
    KEYS.iter().find_map(|k| match obj.get(*k)? {
        Value::String(s) => fields::rfc3339_ms(s),
        Value::Number(n) => {
            let v = n.as_i64()?;
            if v.abs() < SECONDS_CUTOFF {
                v.checked_mul(1000)
            } else {
                Some(v)
            }
        }
        _ => None,
    })
}

/// Outcome from a string result or a boolean `success`.
fn outcome(obj: &Obj) -> Outcome {
    let word = first_text(obj, &[&["outcome"], &["outcome", "result"], &["result"], &["status"]]);
    if let Some(word) = word {
        return outcome_word(&word);
    }
    match obj.get("success") {
        Some(Value::Bool(true)) => Outcome::Success,
        Some(Value::Bool(false)) => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

/// Maps common result words, case-insensitively.
fn outcome_word(word: &str) -> Outcome {
    match word.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "successful" | "ok" | "allow" | "allowed" | "pass" | "passed" | "true" => {
            Outcome::Success
        }
        "failure" | "failed" | "fail" | "error" | "deny" | "denied" | "rejected" | "false" => {
            Outcome::Failure
        }
        _ => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields_of(v: Value) -> NormalizedFields {
        match v {
            Value::Object(m) => normalize(&m),
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn common_keys_are_picked_up() {
        let f = fields_of(json!({
            "id": "evt-1", "type": "db.login", "outcome": "FAILED",
            "actor": {"id": "u-9", "name": "Eve"}, "target": {"id": "db-prod"},
            "ip": "192.0.2.1", "userAgent": "curl/8", "session_id": "s-1",
            "client_id": "psql", "tenant": "acme", "time": "2024-11-23T10:41:05Z"
        }));
        assert_eq!(
            f,
            NormalizedFields {
                event_time_ms: Some(1_732_358_465_000),
                event_type: Some("db.login".into()),
                outcome: Outcome::Failure,
                actor_id: Some("u-9".into()),
                actor_name: Some("Eve".into()),
                target: Some("db-prod".into()),
                source_ip: Some("192.0.2.1".into()),
                user_agent: Some("curl/8".into()),
                session_id: Some("s-1".into()),
                client_id: Some("psql".into()),
                realm: Some("acme".into()),
            }
        );
    }

    #[test]
    fn numeric_times_in_seconds_or_millis() {
        assert_eq!(fields_of(json!({"ts": 1_732_358_465})).event_time_ms, Some(1_732_358_465_000));
        assert_eq!(fields_of(json!({"ts": 1_732_358_465_123_i64})).event_time_ms, Some(1_732_358_465_123));
        assert_eq!(fields_of(json!({"ts": 1.5})).event_time_ms, None);
        assert_eq!(fields_of(json!({"time": "yesterday"})).event_time_ms, None);
    }

    #[test]
    fn outcome_words_and_booleans() {
        assert_eq!(fields_of(json!({"result": "ok"})).outcome, Outcome::Success);
        assert_eq!(fields_of(json!({"outcome": {"result": "DENY"}})).outcome, Outcome::Failure);
        assert_eq!(fields_of(json!({"success": false})).outcome, Outcome::Failure);
        assert_eq!(fields_of(json!({"status": "pending"})).outcome, Outcome::Unknown);
        assert_eq!(fields_of(json!({})), NormalizedFields::default());
    }

    #[test]
    fn only_string_ids_are_source_ids() {
        let limits = Limits::default();
        let evs = parse(br#"[{"id":"a"},{"id":7},{"id":""},{}]"#, false, &limits).unwrap();
        let ids: Vec<_> = evs.iter().map(|e| e.source_id.clone()).collect();
        assert_eq!(ids, vec![Some("a".to_owned()), None, None, None]);
    }
}
