//! Okta event hook deliveries: `{"eventType":"com.okta.event_hook", "source": …,
//! "data": {"events": [LogEvent, …]}}`. Each `LogEvent` becomes one event whose `raw` is the
//! exact bytes of that array element; the envelope itself (delivery id, hook URL) is not stored
//! per event except the org domain taken from `source`.
//!
//! Okta delivers at least once, so `uuid` (the event id, not the envelope's `eventId`) is required.
//!
//! | normalized | LogEvent |
//! |---|---|
//! | source id (required) | `uuid` |
//! | time (required) | `published` (RFC 3339) |
//! | type (required) | `eventType` |
//! | outcome | `outcome.result`: `SUCCESS`/`ALLOW` → success; `FAILURE`/`DENY`/`RATE_LIMIT` → failure; others unknown |
//! | actor id / name | `actor.id` / `actor.displayName`, else `actor.alternateId` |
//! | target | every `target[]` entry as `<type>:<alternateId or id>`, joined by `, ` |
//! | source ip | `client.ipAddress`, else `request.ipChain[0].ip` |
//! | user agent | `client.userAgent.rawUserAgent` |
//! | session | `authenticationContext.externalSessionId` |
//! | client | `client.id` (OAuth client id, when there is one) |
//! | realm | host of the envelope's `source` URL, e.g. `example.okta.com` |
//!
//! The one-time verification GET is answered with [`super::okta_verification_response`].

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::fields::{self, check_source_id, first_text, required_rfc3339_ms, required_text, text};
use super::frame::{self, json_error_at, Element};
use super::limits::{self, is_json_ws};
use super::{Format, FormatError, Limits, NormalizedFields, Outcome, ParsedEvent};

/// The parts of the envelope we read; everything else is ignored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    source: Option<Value>,
}

/// `data` of the envelope.
#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
}

/// Parses an Okta event hook POST body.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Vec<ParsedEvent>, FormatError> {
    let first = body.iter().position(|&b| !is_json_ws(b)).ok_or(FormatError::Empty)?;
    limits::scan(body, limits.max_depth)
        .map_err(|e| FormatError::TooDeep { max: e.max, offset: e.offset })?;
    if body[first] != b'{' {
        // Parse anyway so invalid JSON is reported as such, not as a format mismatch.
        serde_json::from_slice::<&RawValue>(body).map_err(|e| json_error_at(&e, body, 0))?;
        return Err(wrong(if body[first] == b'[' {
            "got a JSON array (Auth0 and generic JSON sources send arrays)"
        } else {
            "got a JSON value that is not an object"
        }));
    }
    let envelope: Envelope<'_> = serde_json::from_slice(body).map_err(|e| json_error_at(&e, body, 0))?;
    let realm = envelope.source.as_ref().and_then(Value::as_str).and_then(host_of);
    let events = events_of(&envelope)?;
    frame::check_count(events.len(), limits)?;
    if events.is_empty() {
        return Err(FormatError::NoEvents);
    }
    events
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let el = Element {
                index,
                line: None,
                start: (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize),
                raw,
            };
            parse_event(body, &el, realm.as_deref())
        })
        .collect()
}

/// `data.events` as raw elements, or `WrongFormat` if the envelope shape is not there.
fn events_of<'a>(envelope: &Envelope<'a>) -> Result<Vec<&'a RawValue>, FormatError> {
    let data = envelope.data.ok_or_else(|| wrong("the object has no `data` member"))?;
    let data: Data<'a> = serde_json::from_str(data.get())
        .map_err(|_| wrong("`data` is not an object with an `events` array"))?;
    let events = data.events.ok_or_else(|| wrong("`data` has no `events` array"))?;
    serde_json::from_str::<Vec<&'a RawValue>>(events.get())
        .map_err(|_| wrong("`data.events` is not an array"))
}

/// `WrongFormat` with the envelope shape Okta sends.
fn wrong(detail: &str) -> FormatError {
    FormatError::WrongFormat {
        expected: Format::Okta,
        detail: format!("{detail}; expected an event hook envelope {{\"data\":{{\"events\":[…]}}}}"),
    }
}

/// One `LogEvent`.
fn parse_event(body: &[u8], el: &Element<'_>, realm: Option<&str>) -> Result<ParsedEvent, FormatError> {
    let obj = el.object(body)?;
    let ctx = el.ctx();
    if !obj.contains_key("uuid") && !obj.contains_key("eventType") {
        return Err(FormatError::WrongFormat {
            expected: Format::Okta,
            detail: format!(
                "data.events[{}] has neither `uuid` nor `eventType`{}",
                el.index,
                fields::looks_like_suffix(&obj)
            ),
        });
    }
    let uuid = check_source_id(required_text(&obj, &["uuid"], "uuid", ctx)?, "uuid", ctx)?;
    let event_time_ms = required_rfc3339_ms(&obj, &["published"], "published", ctx)?;
    let event_type = required_text(&obj, &["eventType"], "eventType", ctx)?;
    ctx.refuse_reserved_type("eventType", &event_type)?;
    let fields = NormalizedFields {
        event_time_ms: Some(event_time_ms),
        event_type: Some(event_type),
        outcome: outcome(text(&obj, &["outcome", "result"]).as_deref()),
        actor_id: text(&obj, &["actor", "id"]),
        actor_name: first_text(&obj, &[&["actor", "displayName"], &["actor", "alternateId"]]),
        target: targets(&obj),
        source_ip: text(&obj, &["client", "ipAddress"]).or_else(|| first_chain_ip(&obj)),
        user_agent: text(&obj, &["client", "userAgent", "rawUserAgent"]),
        session_id: text(&obj, &["authenticationContext", "externalSessionId"]),
        client_id: text(&obj, &["client", "id"]),
        realm: realm.map(str::to_owned),
    };
    Ok(ParsedEvent { raw: el.raw.get().as_bytes().to_vec(), source_id: Some(uuid), fields })
}

/// Maps `outcome.result`. `RATE_LIMIT` counts as failure: the request was refused.
fn outcome(result: Option<&str>) -> Outcome {
    match result {
        Some("SUCCESS" | "ALLOW") => Outcome::Success,
        Some("FAILURE" | "DENY" | "RATE_LIMIT") => Outcome::Failure,
        _ => Outcome::Unknown,
    }
}

/// All targets as `<type>:<alternateId or id>`; Okta says to select targets by type, not
/// position, so none is privileged.
fn targets(obj: &fields::Obj) -> Option<String> {
    let list = obj.get("target")?.as_array()?;
    let parts: Vec<String> = list
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|t| {
            let name = first_text(t, &[&["alternateId"], &["id"], &["displayName"]])?;
            Some(match text(t, &["type"]) {
                Some(kind) => format!("{kind}:{name}"),
                None => name,
            })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// `request.ipChain[0].ip`, the fallback when `client.ipAddress` is null.
fn first_chain_ip(obj: &fields::Obj) -> Option<String> {
    let first = fields::get(obj, &["request", "ipChain"])?.as_array()?.first()?.as_object()?;
    text(first, &["ip"])
}

/// Host (with port, if any) of an `https://host/…` URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit('@').next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_source_url() {
        assert_eq!(
            host_of("https://example.okta.com/api/v1/eventHooks/who"),
            Some("example.okta.com".to_owned())
        );
        assert_eq!(host_of("https://a.okta.com"), Some("a.okta.com".to_owned()));
        assert_eq!(host_of("ftp://a.okta.com/x"), None);
        assert_eq!(host_of("https:///x"), None);
    }

    #[test]
    fn outcome_mapping() {
        assert_eq!(outcome(Some("SUCCESS")), Outcome::Success);
        assert_eq!(outcome(Some("ALLOW")), Outcome::Success);
        assert_eq!(outcome(Some("FAILURE")), Outcome::Failure);
        assert_eq!(outcome(Some("DENY")), Outcome::Failure);
        assert_eq!(outcome(Some("RATE_LIMIT")), Outcome::Failure);
        assert_eq!(outcome(Some("CHALLENGE")), Outcome::Unknown);
        assert_eq!(outcome(None), Outcome::Unknown);
    }
}
