//! The canonical entry: the small server-built record that each Merkle leaf commits to.
//!
//! The leaf is `SHA-256(0x00 || entry)` where `entry` is canonical JSON (keys sorted by byte value, no
//! whitespace, strings escaped as RFC 8785 prescribes, integers in plain decimal). The entry commits to the
//! payload only through `payload_sha256 = SHA-256(salt || body)`, so a body and its salt can be erased later
//! (GDPR) without changing any leaf. Every byte is specified in docs/FORMAT.md.

use sha2::{Digest, Sha256};

/// Version of the entry format written into every entry as `"v"`.
pub const ENTRY_VERSION: u64 = 1;
/// Length of the per-event random salt.
pub const SALT_LEN: usize = 32;

/// How the producer of an event authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// A client certificate on the mTLS listener.
    Mtls,
    /// A static bearer / Authorization secret.
    Bearer,
    /// An HMAC-SHA256 signature of the body.
    Hmac,
    /// Written by the appliance itself (start, stop, erasure, audit access).
    Internal,
}

impl AuthMethod {
    /// The lower-case name used in the entry.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Mtls => "mtls",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Hmac => "hmac",
            AuthMethod::Internal => "internal",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mtls" => AuthMethod::Mtls,
            "bearer" => AuthMethod::Bearer,
            "hmac" => AuthMethod::Hmac,
            "internal" => AuthMethod::Internal,
            _ => return None,
        })
    }
}

/// One entry, as committed by a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number: the leaf index, dense from 0.
    pub seq: u64,
    /// When the appliance received the event, nanoseconds since the Unix epoch.
    pub received_at_ns: u64,
    /// The authenticated producer (principal or source name).
    pub producer: String,
    /// The source the event arrived through (`events` for the generic endpoint, else a configured source).
    pub source: String,
    /// How the producer authenticated.
    pub auth: AuthMethod,
    /// Payload format: `json`, `keycloak`, `okta`, `auth0`, `anchorlog`.
    pub format: String,
    /// The event id the producer assigned, if any (the de-duplication key).
    pub source_id: Option<String>,
    /// `SHA-256(salt || body)`.
    pub payload_sha256: [u8; 32],
}

/// Why stored entry bytes are not a valid canonical entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    /// Not JSON, or not an object of the expected shape.
    #[error("entry is not valid JSON of the expected shape: {0}")]
    Shape(String),
    /// The entry has a version this build does not understand.
    #[error("entry version {0} is not supported (expected {ENTRY_VERSION})")]
    Version(u64),
    /// The bytes parse but are not the canonical encoding of what they contain.
    #[error("entry bytes are not in canonical form")]
    NotCanonical,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryJson {
    auth: String,
    format: String,
    payload_sha256: String,
    producer: String,
    received_at_ns: u64,
    seq: u64,
    source: String,
    source_id: Option<String>,
    v: u64,
}

impl Entry {
    /// The canonical bytes that the leaf hash covers.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // Keys in byte order: auth, format, payload_sha256, producer, received_at_ns, seq, source, source_id, v.
        let mut out = String::with_capacity(256);
        out.push_str("{\"auth\":");
        push_json_string(&mut out, self.auth.as_str());
        out.push_str(",\"format\":");
        push_json_string(&mut out, &self.format);
        out.push_str(",\"payload_sha256\":\"");
        out.push_str(&hex::encode(self.payload_sha256));
        out.push_str("\",\"producer\":");
        push_json_string(&mut out, &self.producer);
        out.push_str(",\"received_at_ns\":");
        out.push_str(&self.received_at_ns.to_string());
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        out.push_str(",\"source\":");
        push_json_string(&mut out, &self.source);
        out.push_str(",\"source_id\":");
        match &self.source_id {
            Some(id) => push_json_string(&mut out, id),
            None => out.push_str("null"),
        }
        out.push_str(",\"v\":");
        out.push_str(&ENTRY_VERSION.to_string());
        out.push('}');
        out.into_bytes()
    }

    /// Parses stored entry bytes and insists that they are canonical.
    pub fn parse(bytes: &[u8]) -> Result<Entry, EntryError> {
        let j: EntryJson = serde_json::from_slice(bytes).map_err(|e| EntryError::Shape(e.to_string()))?;
        if j.v != ENTRY_VERSION {
            return Err(EntryError::Version(j.v));
        }
        let auth = AuthMethod::parse(&j.auth)
            .ok_or_else(|| EntryError::Shape(format!("unknown auth {:?}", j.auth)))?;
        let digest = hex::decode(&j.payload_sha256)
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| EntryError::Shape("payload_sha256 is not 64 hex digits".into()))?;
        let entry = Entry {
            seq: j.seq,
            received_at_ns: j.received_at_ns,
            producer: j.producer,
            source: j.source,
            auth,
            format: j.format,
            source_id: j.source_id,
            payload_sha256: digest,
        };
        if entry.to_canonical_json() != bytes {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

/// `SHA-256(salt || body)`: what an entry commits to about its payload.
pub fn payload_digest(salt: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(body);
    h.finalize().into()
}

/// Appends `s` as a JSON string with RFC 8785 escaping: `"` and `\` escaped, U+0008/09/0A/0C/0D as
/// `\b \t \n \f \r`, other control characters as `\u00xx` (lower-case hex), everything else literal UTF-8.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            seq: 7,
            received_at_ns: 1_795_000_000_123_456_789,
            producer: "keycloak-prod".into(),
            source: "events".into(),
            auth: AuthMethod::Mtls,
            format: "json".into(),
            source_id: Some("a\"b\\c\n\u{1}é".into()),
            payload_sha256: [0xab; 32],
        }
    }

    #[test]
    fn canonical_bytes_are_exact() {
        let got = String::from_utf8(sample().to_canonical_json()).unwrap();
        let want = format!(
            "{{\"auth\":\"mtls\",\"format\":\"json\",\"payload_sha256\":\"{}\",\"producer\":\"keycloak-prod\",\
             \"received_at_ns\":1795000000123456789,\"seq\":7,\"source\":\"events\",\
             \"source_id\":\"a\\\"b\\\\c\\n\\u0001é\",\"v\":1}}",
            "ab".repeat(32)
        );
        assert_eq!(got, want);
    }

    #[test]
    fn escaping_matches_serde_json_for_all_control_chars() {
        // serde_json and Python's json.dumps(ensure_ascii=False) agree with this escaping; a third-party
        // verifier in either can re-derive the bytes.
        for c in (0u32..0x80).filter_map(char::from_u32) {
            let s = format!("x{c}y");
            let mut mine = String::new();
            push_json_string(&mut mine, &s);
            assert_eq!(mine, serde_json::to_string(&s).unwrap(), "char {:#x}", c as u32);
        }
    }

    #[test]
    fn parse_round_trips_and_rejects_non_canonical() {
        let e = sample();
        let bytes = e.to_canonical_json();
        assert_eq!(Entry::parse(&bytes).unwrap(), e);
        let spaced = String::from_utf8(bytes.clone()).unwrap().replacen(",", ", ", 1);
        assert_eq!(Entry::parse(spaced.as_bytes()), Err(EntryError::NotCanonical));
        let v2 = String::from_utf8(bytes).unwrap().replace("\"v\":1", "\"v\":2");
        assert_eq!(Entry::parse(v2.as_bytes()), Err(EntryError::Version(2)));
    }

    #[test]
    fn payload_digest_is_salted_sha256() {
        // Independently: `printf saltbody | sha256sum`.
        assert_eq!(
            hex::encode(payload_digest(b"salt", b"body")),
            "9c94f8772f5f5ad1793fe4c2a9ee85723d15eb37f9603448130c0a95fda4ba04"
        );
    }
}
