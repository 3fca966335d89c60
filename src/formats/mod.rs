//! Native IdP payloads (Keycloak, Okta, Auth0) and generic JSON/NDJSON → [`ParsedEvent`]s.
//!
//! Producers post their own payloads unchanged; this module splits a request body into events,
//! keeps each event's **exact bytes** (`raw`), extracts the de-duplication key (`source_id`) and a
//! small set of [`NormalizedFields`] for search. The stored evidence is always `raw`; the
//! normalized fields are a convenience and may be absent.
//!
//! Rules that hold for every format:
//! - A request is **atomic**: one bad element rejects the whole body, and the error names the
//!   element (0-based `index`, plus the 1-based `line` for NDJSON / JSON lines).
//! - `raw` is the exact byte slice of the element's JSON value in the body (no surrounding
//!   whitespace, no re-serialization). For a body that is a single object without surrounding
//!   whitespace, `raw` equals the body, so a producer's body signature stays verifiable.
//! - Unknown fields are ignored. Optional known fields of the wrong type, `null` or `""` give
//!   `None` (the raw bytes still hold them); only the fields a format needs for time, type and
//!   de-duplication are required ([`FormatError::MissingField`] / [`FormatError::BadField`]).
//! - A body that is valid JSON but clearly not the source's format gives
//!   [`FormatError::WrongFormat`], so a misconfigured source is told so instead of "missing field".
//! - Nesting depth and event count are checked by a byte scanner ([`limits::scan`]) before serde
//!   allocates anything.
//!
//! Framing per format (`ndjson` is what the HTTP layer derived from `Content-Type`):
//!
//! | format | accepted bodies |
//! |---|---|
//! | `keycloak` | one `EventRepresentation` / `AdminEventRepresentation` object; an array of them; NDJSON if `ndjson` |
//! | `okta` | the event-hook envelope `{"data":{"events":[…]}}` only (`ndjson` is ignored) |
//! | `auth0` | `JSONARRAY`, `JSONLINES` (detected, or forced by `ndjson`) or `JSONOBJECT` of `{log_id, data}` items |
//! | `json` | an object, an array of objects, or NDJSON if `ndjson` |
//! | `syslog` | one message per LF-terminated line over HTTP; one per frame on the syslog listener ([`syslog`]) |
//!
//! Not handled here (HTTP layer): body size limit, authentication ([`auth`]), Okta's GET
//! verification handshake (see [`okta_verification_response`]), the `Idempotency-Key` override of
//! `source_id` for a single generic event, and de-duplication itself.

pub mod auth;
pub mod auth0;
mod fields;
mod frame;
pub mod json;
pub mod keycloak;
pub mod limits;
pub mod okta;
pub mod syslog;
#[cfg(test)]
mod tests;

pub use limits::Limits;

use std::fmt;

/// Longest accepted source event id; longer ids are refused so the de-duplication index stays
/// small (real ids: Keycloak 36, Okta 36, Auth0 56 characters).
pub const MAX_SOURCE_ID_LEN: usize = 256;

/// The payload format a source is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Keycloak `EventRepresentation` / `AdminEventRepresentation` (webhook plugins).
    Keycloak,
    /// Okta event hook delivery (`{"data":{"events":[LogEvent…]}}`).
    Okta,
    /// Auth0 log stream "custom webhook" items (`{log_id, data}`).
    Auth0,
    /// Any JSON object per event; nothing required.
    Json,
    /// Syslog messages (RFC 5424, RFC 3164): one per frame on `server.syslog_listen`, one per line over HTTP.
    Syslog,
}

impl Format {
    /// The lowercase name used in configuration, entries and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Keycloak => "keycloak",
            Format::Okta => "okta",
            Format::Auth0 => "auth0",
            Format::Json => "json",
            Format::Syslog => "syslog",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the recorded action succeeded, as the producer reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The producer reported success.
    Success,
    /// The producer reported a failure or denial.
    Failure,
    /// Not reported, or a result that is neither (e.g. Okta `CHALLENGE`, Auth0 `w`).
    #[default]
    Unknown,
}

impl Outcome {
    /// The lowercase name used in the query API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Unknown => "unknown",
        }
    }
}

/// Search fields extracted from one event; every field is best-effort.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NormalizedFields {
    /// When the event happened at the source, epoch milliseconds (not when we received it).
    pub event_time_ms: Option<i64>,
    /// The producer's event type or action (e.g. `LOGIN_ERROR`, `user.session.start`, `fp`).
    pub event_type: Option<String>,
    /// Success, failure or unknown.
    pub outcome: Outcome,
    /// Stable id of who acted (user id; for admin events the admin).
    pub actor_id: Option<String>,
    /// Human-readable actor (username, display name or email).
    pub actor_name: Option<String>,
    /// What was acted on, when it is not the actor (admin resource path, Okta targets, API call).
    pub target: Option<String>,
    /// Client IP address as the producer reported it (may not be a valid IP behind proxies).
    pub source_ip: Option<String>,
    /// Raw user agent string.
    pub user_agent: Option<String>,
    /// The producer's session id.
    pub session_id: Option<String>,
    /// OAuth client / application id.
    pub client_id: Option<String>,
    /// Realm (Keycloak realm id), tenant domain (Auth0) or org domain (Okta).
    pub realm: Option<String>,
}

/// One event from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The exact bytes of this event's JSON value as received.
    pub raw: Vec<u8>,
    /// The producer's event id, the de-duplication key (None: no id, e.g. Keycloak < 26).
    pub source_id: Option<String>,
    /// Normalized search fields.
    pub fields: NormalizedFields,
}

/// Why a request body was refused. Every variant is caused by the producer; nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The body is empty or whitespace only.
    #[error("the request body is empty; send a JSON event (an object), an array of events, or NDJSON")]
    Empty,
    /// The body (or an NDJSON line) is not valid JSON.
    #[error("invalid JSON at line {line}, column {column}: {reason}; send valid UTF-8 JSON")]
    InvalidJson {
        /// 1-based line in the body.
        line: usize,
        /// 1-based column (byte) in that line.
        column: usize,
        /// serde_json's description, without its position suffix.
        reason: String,
    },
    /// Nesting exceeds [`Limits::max_depth`].
    #[error("JSON nests deeper than {max} levels (at byte {offset}); flatten the payload")]
    TooDeep {
        /// The configured limit.
        max: usize,
        /// Byte offset in the body of the bracket that went too deep.
        offset: usize,
    },
    /// More events than [`Limits::max_events`] in one request.
    #[error("the request carries {found} events, more than the limit of {max}; send smaller batches")]
    TooManyEvents {
        /// The configured limit.
        max: usize,
        /// How many the body holds (for NDJSON: non-empty lines).
        found: usize,
    },
    /// A well-formed container with no events (`[]`, blank NDJSON, empty `data.events`).
    #[error("the request contains no events; send at least one")]
    NoEvents,
    /// An event is not a JSON object.
    #[error("{} is not a JSON object; every event must be an object", at(*index, *line))]
    NotAnObject {
        /// 0-based event index.
        index: usize,
        /// 1-based NDJSON line, for line-framed bodies.
        line: Option<usize>,
    },
    /// A field the format requires is absent or `null`.
    #[error("{} lacks the required field `{field}`", at(*index, *line))]
    MissingField {
        /// 0-based event index.
        index: usize,
        /// 1-based NDJSON line, for line-framed bodies.
        line: Option<usize>,
        /// Field path inside the event, e.g. `uuid`, `data.date`.
        field: &'static str,
    },
    /// A required field has the wrong type or an unparsable value.
    #[error("{} has an invalid `{field}`: {reason}", at(*index, *line))]
    BadField {
        /// 0-based event index.
        index: usize,
        /// 1-based NDJSON line, for line-framed bodies.
        line: Option<usize>,
        /// Field path inside the event.
        field: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A type field begins with `anchorlog.`, the namespace of the appliance's own records.
    #[error(
        "{} has a `{field}` beginning with \"anchorlog.\": that namespace is reserved for the appliance's own \
         records; rename the event type",
        at(*index, *line)
    )]
    ReservedType {
        /// 0-based event index.
        index: usize,
        /// 1-based NDJSON line, for line-framed bodies.
        line: Option<usize>,
        /// The field holding the type.
        field: &'static str,
    },
    /// Valid JSON, but not the format configured for this source.
    #[error("the body is not a {expected} payload: {detail}; check the format configured for this source")]
    WrongFormat {
        /// The source's configured format.
        expected: Format,
        /// What was found instead.
        detail: String,
    },
}

/// "event 3" or "event 3 (line 4)", for error messages.
fn at(index: usize, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("event {index} (line {line})"),
        None => format!("event {index}"),
    }
}

impl FormatError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::Empty => "empty_body",
            FormatError::InvalidJson { .. } => "invalid_json",
            FormatError::TooDeep { .. } => "too_deep",
            FormatError::TooManyEvents { .. } => "too_many_events",
            FormatError::NoEvents => "no_events",
            FormatError::NotAnObject { .. } => "not_an_object",
            FormatError::MissingField { .. } => "missing_field",
            FormatError::BadField { .. } => "bad_field",
            FormatError::ReservedType { .. } => "reserved_type",
            FormatError::WrongFormat { .. } => "wrong_format",
        }
    }

    /// HTTP status for this error. All are 4xx: retrying the same body cannot succeed.
    pub fn http_status(&self) -> u16 {
        match self {
            FormatError::Empty
            | FormatError::InvalidJson { .. }
            | FormatError::TooDeep { .. }
            | FormatError::WrongFormat { .. } => 400,
            FormatError::TooManyEvents { .. } => 413,
            FormatError::NoEvents
            | FormatError::NotAnObject { .. }
            | FormatError::MissingField { .. }
            | FormatError::BadField { .. }
            | FormatError::ReservedType { .. } => 422,
        }
    }
}

/// Splits and validates a request body of `format` into events.
///
/// `ndjson`: the body is newline-delimited JSON (from `Content-Type: application/x-ndjson`);
/// Auth0 JSON lines are also detected without it, Okta ignores it. See the module docs for the
/// accepted framings and the error contract.
pub fn parse(
    format: Format,
    body: &[u8],
    ndjson: bool,
    limits: &Limits,
) -> Result<Vec<ParsedEvent>, FormatError> {
    parse_with(format, body, ndjson, limits, true)
}

/// [`parse`]; with `normalize` false (search disabled) the generic JSON format skips its best-effort field
/// extraction. The IdP formats extract their fields anyway: the same lookups validate their required fields.
pub fn parse_with(
    format: Format,
    body: &[u8],
    ndjson: bool,
    limits: &Limits,
    normalize: bool,
) -> Result<Vec<ParsedEvent>, FormatError> {
    match format {
        Format::Keycloak => keycloak::parse(body, ndjson, limits),
        Format::Okta => okta::parse(body, limits),
        Format::Auth0 => auth0::parse(body, ndjson, limits),
        Format::Json => json::parse_with(body, ndjson, limits, normalize),
        Format::Syslog => syslog::parse(body, limits, normalize),
    }
}

/// Re-derives the normalized fields of one stored event from its raw bytes (the indexer's crash recovery).
///
/// `format` is the entry's format name; `None` for a format this build does not parse or a body that no longer
/// parses. The appliance's own `anchorlog` records get their type and actor back, but no event time. An Okta element is re-wrapped in an envelope; its
/// `realm` came from the envelope's `source` URL, which is not stored per event, so it is `None` here.
pub fn normalize_stored(format: &str, raw: &[u8]) -> Option<NormalizedFields> {
    // Stored elements were accepted under the configured limits; the element alone is never deeper.
    let limits = Limits { max_events: 1, max_depth: 1024 };
    let parsed = match format {
        "keycloak" => keycloak::parse(raw, false, &limits),
        "auth0" => auth0::parse(raw, false, &limits),
        "json" => json::parse(raw, false, &limits),
        // An RFC 3164 timestamp has no year: re-derived now, it is read in the current year (or the one before).
        "syslog" => return Some(syslog::normalize(raw, crate::store::now_ms())),
        "okta" => {
            let mut envelope = Vec::with_capacity(raw.len() + 24);
            envelope.extend_from_slice(b"{\"data\":{\"events\":[");
            envelope.extend_from_slice(raw);
            envelope.extend_from_slice(b"]}}");
            okta::parse(&envelope, &limits)
        }
        // The appliance's own records (erasures, audit access): their type and actor stay searchable.
        "anchorlog" => {
            let body: serde_json::Value = serde_json::from_slice(raw).ok()?;
            return Some(internal_fields(&body, None));
        }
        _ => return None,
    };
    parsed.ok()?.into_iter().next().map(|e| e.fields)
}

/// The search fields of one of the appliance's own events (format `anchorlog`: erasures, audit access): its
/// type and who acted (`erased_by` or `principal`), at `time_ms` — given when the event is made; a stored body
/// does not carry it, so a re-derivation passes `None`.
pub fn internal_fields(body: &serde_json::Value, time_ms: Option<i64>) -> NormalizedFields {
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_string);
    NormalizedFields {
        event_time_ms: time_ms,
        event_type: text("type"),
        outcome: Outcome::Success,
        actor_id: text("erased_by").or_else(|| text("principal")),
        ..NormalizedFields::default()
    }
}

/// The JSON body answering Okta's one-time verification GET:
/// `{"verification": "<value of X-Okta-Verification-Challenge>"}` (send as `application/json`).
pub fn okta_verification_response(challenge: &str) -> serde_json::Value {
    serde_json::json!({ "verification": challenge })
}
