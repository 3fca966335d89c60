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

use super::fields::{self, check_source_id, text, Obj};
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
    frame::split(body, mode, limits)?.iter().map(|el| parse_element(el, body, normalize)).collect()
}

fn parse_element(el: &frame::Element<'_>, body: &[u8], normalize: bool) -> Result<ParsedEvent, FormatError> {
    let obj = el.object(body)?;
    let source_id = match text(&obj, &["id"]) {
        Some(id) => Some(check_source_id(id, "id", el.ctx())?),
        None => None,
    };
    refuse_reserved_types(&obj, el.ctx())?;
    let fields = if normalize { self::normalize(&obj) } else { NormalizedFields::default() };
    Ok(ParsedEvent { raw: el.raw.get().as_bytes().to_vec(), source_id, fields })
}

/// One event of a body judged on its own (partial ingest).
#[derive(Debug)]
pub struct EachEvent {
    /// 0-based index of the event in the body (for NDJSON: among the non-empty lines, good or bad).
    pub index: usize,
    /// 1-based NDJSON line, for line-framed bodies.
    pub line: Option<usize>,
    /// The event, or why this one is refused.
    pub result: Result<ParsedEvent, FormatError>,
}

/// [`parse_with`] for partial ingest: every event is judged on its own, so one bad event refuses only itself.
/// What concerns the whole body still fails it (`Err`): empty, no events, too many, and for a JSON array or a
/// single object, a body that is not JSON at all (its elements cannot be told apart).
pub fn parse_each(
    body: &[u8],
    ndjson: bool,
    limits: &Limits,
    normalize: bool,
) -> Result<Vec<EachEvent>, FormatError> {
    if ndjson {
        return Ok(frame::split_lines_each(body, limits)?
            .into_iter()
            .map(|l| EachEvent {
                index: l.index,
                line: Some(l.line),
                result: l.result.and_then(|el| parse_element(&el, body, normalize)),
            })
            .collect());
    }
    Ok(frame::split(body, LineMode::Off, limits)?
        .iter()
        .map(|el| EachEvent { index: el.index, line: el.line, result: parse_element(el, body, normalize) })
        .collect())
}

/// Every key that can give the event's type (the module docs' table), whichever one wins the normalization.
const TYPE_KEYS: [&str; 5] = ["type", "event_type", "eventType", "action", "event"];

/// Refuses an event whose type keys name the appliance's reserved namespace. Checked on every key, with
/// search on or off: the stored body is what a reader (and a re-derivation) sees.
fn refuse_reserved_types(obj: &Obj, ctx: fields::Ctx) -> Result<(), FormatError> {
    for key in TYPE_KEYS {
        if let Some(Value::String(v)) = obj.get(key) {
            ctx.refuse_reserved_type(key, v)?;
        }
    }
    Ok(())
}

/// Which normalized field a key feeds.
#[derive(Clone, Copy)]
enum Slot {
    Type,
    Outcome,
    ActorId,
    ActorName,
    Target,
    SourceIp,
    UserAgent,
    Session,
    Client,
    Realm,
}

const SLOTS: usize = 10;

/// What a top-level key can give: `(slot, rank, sub-key)`: the string at the key itself (`None`) or at
/// `key.sub`. Lower ranks win, as in the table of the module docs (`rank` = position in that list).
fn candidates(key: &str) -> &'static [(Slot, u8, Option<&'static str>)] {
    use Slot::*;
    match key {
        "type" => &[(Type, 0, None)],
        "event_type" => &[(Type, 1, None)],
        "eventType" => &[(Type, 2, None)],
        "action" => &[(Type, 3, None)],
        "event" => &[(Type, 4, None)],
        "outcome" => &[(Outcome, 0, None), (Outcome, 1, Some("result"))],
        "result" => &[(Outcome, 2, None)],
        "status" => &[(Outcome, 3, None)],
        "actor_id" => &[(ActorId, 0, None)],
        "actor" => &[
            (ActorId, 1, None),
            (ActorId, 2, Some("id")),
            (ActorName, 1, Some("name")),
            (ActorName, 2, Some("displayName")),
        ],
        "user_id" => &[(ActorId, 3, None)],
        "userId" => &[(ActorId, 4, None)],
        "user" => &[(ActorId, 5, None), (ActorId, 6, Some("id")), (ActorName, 5, Some("name"))],
        "sub" => &[(ActorId, 7, None)],
        "actor_name" => &[(ActorName, 0, None)],
        "user_name" => &[(ActorName, 3, None)],
        "username" => &[(ActorName, 4, None)],
        "email" => &[(ActorName, 6, None)],
        "target" => &[(Target, 0, None), (Target, 1, Some("id"))],
        "resource" => &[(Target, 2, None), (Target, 3, Some("id"))],
        "object" => &[(Target, 4, None)],
        "ip" => &[(SourceIp, 0, None)],
        "source_ip" => &[(SourceIp, 1, None)],
        "ip_address" => &[(SourceIp, 2, None)],
        "ipAddress" => &[(SourceIp, 3, None)],
        "client_ip" => &[(SourceIp, 4, None)],
        "remote_addr" => &[(SourceIp, 5, None)],
        "user_agent" => &[(UserAgent, 0, None)],
        "userAgent" => &[(UserAgent, 1, None)],
        "session_id" => &[(Session, 0, None)],
        "sessionId" => &[(Session, 1, None)],
        "session" => &[(Session, 2, None)],
        "client_id" => &[(Client, 0, None)],
        "clientId" => &[(Client, 1, None)],
        "app" => &[(Client, 2, None)],
        "application" => &[(Client, 3, None)],
        "realm" => &[(Realm, 0, None)],
        "tenant" => &[(Realm, 1, None)],
        "realmId" => &[(Realm, 2, None)],
        "org" => &[(Realm, 3, None)],
        "organization" => &[(Realm, 4, None)],
        _ => &[],
    }
}

/// Best-effort normalized fields; never fails.
///
/// One pass over the object's keys (instead of a map lookup per candidate key: this runs for every event
/// on the HTTP workers), keeping the best-ranked non-empty string per field; only the winners are copied.
pub(crate) fn normalize(obj: &Obj) -> NormalizedFields {
    let mut best: [Option<(u8, &str)>; SLOTS] = [None; SLOTS];
    for (key, value) in obj {
        for &(slot, rank, sub) in candidates(key) {
            let found = match (sub, value) {
                (None, Value::String(s)) => s.as_str(),
                (Some(sub), Value::Object(inner)) => match inner.get(sub) {
                    Some(Value::String(s)) => s.as_str(),
                    _ => continue,
                },
                _ => continue,
            };
            let cur = &mut best[slot as usize];
            if !found.is_empty() && cur.is_none_or(|(r, _)| rank < r) {
                *cur = Some((rank, found));
            }
        }
    }
    let take = |slot: Slot| best[slot as usize].map(|(_, s)| s.to_owned());
    let outcome = match best[Slot::Outcome as usize] {
        Some((_, word)) => outcome_word(word),
        None => match obj.get("success") {
            Some(Value::Bool(true)) => Outcome::Success,
            Some(Value::Bool(false)) => Outcome::Failure,
            _ => Outcome::Unknown,
        },
    };
    NormalizedFields {
        event_time_ms: event_time(obj),
        event_type: take(Slot::Type),
        outcome,
        actor_id: take(Slot::ActorId),
        actor_name: take(Slot::ActorName),
        target: take(Slot::Target),
        source_ip: take(Slot::SourceIp),
        user_agent: take(Slot::UserAgent),
        session_id: take(Slot::Session),
        client_id: take(Slot::Client),
        realm: take(Slot::Realm),
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

    use crate::formats::fields::first_text;

    /// The previous implementation (one lookup per candidate key), kept as the oracle for [`normalize`].
    fn normalize_by_lookup(obj: &Obj) -> NormalizedFields {
        NormalizedFields {
            event_time_ms: event_time(obj),
            event_type: first_text(
                obj,
                &[&["type"], &["event_type"], &["eventType"], &["action"], &["event"]],
            ),
            outcome: outcome_by_lookup(obj),
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

    /// Outcome from a string result or a boolean `success`.
    fn outcome_by_lookup(obj: &Obj) -> Outcome {
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

    #[test]
    fn one_pass_matches_the_lookup_rules() {
        use rand::{Rng, SeedableRng};
        const KEYS: &[&str] = &[
            "type",
            "event_type",
            "eventType",
            "action",
            "event",
            "outcome",
            "result",
            "status",
            "success",
            "actor_id",
            "actor",
            "user_id",
            "userId",
            "user",
            "sub",
            "actor_name",
            "user_name",
            "username",
            "email",
            "target",
            "resource",
            "object",
            "ip",
            "source_ip",
            "ip_address",
            "ipAddress",
            "client_ip",
            "remote_addr",
            "user_agent",
            "userAgent",
            "session_id",
            "sessionId",
            "session",
            "client_id",
            "clientId",
            "app",
            "application",
            "realm",
            "tenant",
            "realmId",
            "org",
            "organization",
            "other",
        ];
        const SUBS: &[&str] = &["id", "name", "displayName", "result", "x"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let value = |rng: &mut rand::rngs::StdRng, depth: u8| -> Value {
            match rng.gen_range(0..7) {
                0 => Value::String(String::new()),
                1 | 2 => Value::String(["ok", "DENY", "u-1", "x"][rng.gen_range(0..4)].into()),
                3 => Value::Bool(rng.gen()),
                4 => Value::Null,
                5 => json!(7),
                _ if depth == 0 => {
                    let mut m = serde_json::Map::new();
                    for _ in 0..rng.gen_range(0..4) {
                        let k = SUBS[rng.gen_range(0..SUBS.len())];
                        let v = ["", "n", "FAILED", "s"][rng.gen_range(0..4)];
                        m.insert(k.into(), if rng.gen_bool(0.8) { json!(v) } else { json!(1) });
                    }
                    Value::Object(m)
                }
                _ => Value::Null,
            }
        };
        for _ in 0..20_000 {
            let mut obj = Obj::new();
            for _ in 0..rng.gen_range(0..12) {
                let k = KEYS[rng.gen_range(0..KEYS.len())];
                let v = value(&mut rng, 0);
                obj.insert(k.into(), v);
            }
            assert_eq!(normalize(&obj), normalize_by_lookup(&obj), "{}", Value::Object(obj.clone()));
        }
    }

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
