//! Keycloak `EventRepresentation` (user events) and `AdminEventRepresentation` (admin events),
//! as POSTed by webhook event listeners (p2-inc `ext-event-http`, vymalo, …): one object per
//! request; an array or NDJSON (with `ndjson`) is also accepted for batch shippers and replays.
//!
//! An object with `operationType` is an admin event; one with `type` is a user event; anything
//! else is [`FormatError::WrongFormat`].
//!
//! | normalized | user event | admin event |
//! |---|---|---|
//! | source id | `id` (26.x; absent before) | `id` (26.x) |
//! | time (required) | `time` (epoch ms) | `time` |
//! | type (required) | `type`, e.g. `LOGIN_ERROR` (p2-inc's `access.` prefix removed) | `admin.<resourceType>-<operationType>`, e.g. `admin.USER-CREATE` (p2-inc's naming) |
//! | outcome | failure if `type` ends in `_ERROR` or `error` is set | failure iff `error` is set |
//! | actor id / name | `userId` / `details.username` | `authDetails.userId` / `authDetails.username` (p2-inc webhook only) |
//! | target | — (the user is the actor) | `resourcePath` |
//! | source ip | `ipAddress` | `authDetails.ipAddress` |
//! | session / client | `sessionId` / `clientId` | `authDetails.sessionId` (p2-inc webhook only) / `authDetails.clientId` |
//! | realm | `realmId` | `realmId` (the resource's realm) |
//!
//! Flattened shipper DTOs are recognised too: p2-inc `ext-event-webhook` user events
//! (`type: "access.LOGIN"`, `userId`/`ipAddress`/`sessionId`/`clientId` only inside
//! `authDetails`: those are used when the top-level field is absent) and vymalo admin events
//! (`type: "USER-CREATE"` plus `resourcePath`, no `operationType`: typed `admin.USER-CREATE`,
//! target `resourcePath`). Dedupe on `id`, never on p2-inc's per-delivery `uid`.
//!
//! The unreleased upstream "event hooks" payload (PR keycloak#48168: `sourceType`, `eventId`,
//! `eventType`, `auth{…}`) is read with the same table (`eventId` for `id`, `eventType` for
//! `type`, `auth` for `authDetails`) one event per object; its `{"events":[…]}` batch wrapper
//! is not accepted (send an array or NDJSON instead).
//!
//! The admin `representation` is a JSON string inside JSON; it stays untouched in `raw`.

use super::fields::{self, check_source_id, first_text, required_epoch_ms, required_text, text};
use super::frame::{self, Element, LineMode};
use super::{FormatError, Limits, NormalizedFields, Outcome, ParsedEvent};

/// Parses a Keycloak webhook body.
pub fn parse(body: &[u8], ndjson: bool, limits: &Limits) -> Result<Vec<ParsedEvent>, FormatError> {
    let mode = if ndjson { LineMode::On } else { LineMode::Off };
    frame::split(body, mode, limits)?.iter().map(|el| parse_element(body, el)).collect()
}

/// One Keycloak event object.
fn parse_element(body: &[u8], el: &Element<'_>) -> Result<ParsedEvent, FormatError> {
    let obj = el.object(body)?;
    let ctx = el.ctx();
    let fields = if obj.contains_key("operationType") {
        admin_fields(&obj, ctx)?
    } else if obj.contains_key("type") {
        user_fields(&obj, "type", ctx)?
    } else if obj.contains_key("eventType") && obj.contains_key("sourceType") {
        user_fields(&obj, "eventType", ctx)?
    } else {
        return Err(FormatError::WrongFormat {
            expected: super::Format::Keycloak,
            detail: format!(
                "event {} has neither `type` (user event) nor `operationType` (admin event){}",
                el.index,
                fields::looks_like_suffix(&obj)
            ),
        });
    };
    let source_id = match first_text(&obj, &[&["id"], &["eventId"]]) {
        Some(id) => Some(check_source_id(id, "id", ctx)?),
        None => None,
    };
    Ok(ParsedEvent { raw: el.raw.get().as_bytes().to_vec(), source_id, fields })
}

/// Normalized fields of a user event (`EventRepresentation`), also in the flattened shapes of
/// p2-inc's `ext-event-webhook` (`type: "access.LOGIN"`, ids in `authDetails`) and vymalo
/// (admin events as `type: "USER-CREATE"` with a `resourcePath`).
fn user_fields(
    obj: &fields::Obj,
    type_field: &'static str,
    ctx: fields::Ctx,
) -> Result<NormalizedFields, FormatError> {
    let raw_type = required_text(obj, &[type_field], type_field, ctx)?;
    ctx.refuse_reserved_type(type_field, raw_type.strip_prefix("access.").unwrap_or(&raw_type))?;
    ctx.refuse_reserved_type(type_field, &raw_type)?;
    let event_time_ms = required_epoch_ms(obj, &["time"], "time", ctx)?;
    let has_error = text(obj, &["error"]).is_some();
    // vymalo admin events carry no operationType; user events never have a resourcePath.
    let vymalo_admin = text(obj, &["resourcePath"]);
    let (event_type, failed) = match &vymalo_admin {
        Some(_) => (format!("admin.{raw_type}"), has_error),
        None => {
            // p2-inc webhooks prefix user events with `access.`; native senders do not.
            let t = raw_type.strip_prefix("access.").unwrap_or(&raw_type).to_owned();
            let failed = t.ends_with("_ERROR") || has_error;
            (t, failed)
        }
    };
    let either = |key: &str| first_text(obj, &[&[key], &["authDetails", key], &["auth", key]]);
    Ok(NormalizedFields {
        event_time_ms: Some(event_time_ms),
        event_type: Some(event_type),
        outcome: if failed { Outcome::Failure } else { Outcome::Success },
        actor_id: either("userId"),
        // `details.username` is what the user typed, also on LOGIN_ERROR for unknown users.
        actor_name: first_text(obj, &[&["details", "username"], &["authDetails", "username"]]),
        target: vymalo_admin,
        source_ip: either("ipAddress"),
        user_agent: None,
        session_id: either("sessionId"),
        client_id: either("clientId"),
        realm: text(obj, &["realmId"]),
    })
}

/// Normalized fields of an admin event (`AdminEventRepresentation`).
fn admin_fields(obj: &fields::Obj, ctx: fields::Ctx) -> Result<NormalizedFields, FormatError> {
    let operation = required_text(obj, &["operationType"], "operationType", ctx)?;
    let resource = required_text(obj, &["resourceType"], "resourceType", ctx)?;
    let event_time_ms = required_epoch_ms(obj, &["time"], "time", ctx)?;
    let failed = text(obj, &["error"]).is_some();
    // `authDetails` in representations, `auth` in the upstream event-hooks payload.
    let by = |key: &str| first_text(obj, &[&["authDetails", key], &["auth", key]]);
    Ok(NormalizedFields {
        event_time_ms: Some(event_time_ms),
        event_type: Some(format!("admin.{resource}-{operation}")),
        outcome: if failed { Outcome::Failure } else { Outcome::Success },
        actor_id: by("userId"),
        // Only p2-inc's own DTO carries a username; the REST representation has none.
        actor_name: by("username"),
        target: text(obj, &["resourcePath"]),
        source_ip: by("ipAddress"),
        user_agent: None,
        session_id: by("sessionId"),
        client_id: by("clientId"),
        realm: text(obj, &["realmId"]),
    })
}
