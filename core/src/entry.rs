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

/// The fixed-size facts of an entry that a verifier needs, read without allocating ([`Entry::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFacts {
    /// Sequence number.
    pub seq: u64,
    /// Receive time, ns since the epoch.
    pub received_at_ns: u64,
    /// How the producer authenticated.
    pub auth: AuthMethod,
    /// `SHA-256(salt || body)`.
    pub payload_sha256: [u8; 32],
    /// Whether this is one of the appliance's own records: producer, source and format all
    /// [`APPLIANCE`](crate::record_types::APPLIANCE) and auth `internal`. Anything less is a
    /// producer's event, whatever its body says.
    pub appliance: bool,
}

impl Entry {
    /// Whether this entry is one of the appliance's own records (see [`EntryFacts::appliance`]).
    pub fn is_appliance_record(&self) -> bool {
        let own = crate::record_types::APPLIANCE;
        self.auth == AuthMethod::Internal && self.producer == own && self.source == own && self.format == own
    }

    /// Checks that `bytes` are a canonical entry and returns its fixed-size facts.
    ///
    /// Accepts exactly what [`Entry::parse`] accepts, but reads the canonical form directly (one pass, no
    /// allocation): canonical bytes are fully specified (docs/FORMAT.md §1), so a strict scanner that only
    /// admits the canonical spelling of each key, string and integer checks canonicity while it parses,
    /// instead of decoding JSON and re-encoding it for a comparison. Anything the scanner does not admit
    /// goes to [`Entry::parse`], which is the reference and names the precise error.
    pub fn check(bytes: &[u8]) -> Result<EntryFacts, EntryError> {
        if let Some(facts) = scan_canonical(bytes) {
            return Ok(facts);
        }
        Entry::parse(bytes).map(|e| EntryFacts {
            seq: e.seq,
            received_at_ns: e.received_at_ns,
            auth: e.auth,
            payload_sha256: e.payload_sha256,
            appliance: e.is_appliance_record(),
        })
    }
}

/// A cursor over entry bytes for [`scan_canonical`].
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i.checked_add(s.len())?;
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    /// A string in canonical spelling (RFC 8785 escapes only, no raw control characters, valid UTF-8);
    /// returns the raw bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.lit(b"\"")?;
        let start = self.i;
        loop {
            let c = *self.b.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self.b.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r' => {}
                        // `\u00xx`, lower-case hex, only for the control characters without a short escape.
                        b'u' => {
                            let h = self.b.get(self.i..self.i + 4)?;
                            self.i += 4;
                            let lower = |d: u8| matches!(d, b'0'..=b'9' | b'a'..=b'f');
                            if h[0] != b'0' || h[1] != b'0' || !lower(h[2]) || !lower(h[3]) || h[2] > b'1' {
                                return None;
                            }
                            let v = (h[2] - b'0') * 16
                                + if h[3] <= b'9' { h[3] - b'0' } else { h[3] - b'a' + 10 };
                            if matches!(v, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => {}
            }
        }
        let raw = &self.b[start..self.i - 1];
        // Escapes are ASCII, so the raw bytes are valid UTF-8 exactly when the decoded string is.
        std::str::from_utf8(raw).ok()?;
        Some(raw)
    }

    /// An unsigned integer in plain decimal without leading zeros that fits in a u64.
    fn uint(&mut self) -> Option<u64> {
        let digits = self.b[self.i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let d = &self.b[self.i..self.i + digits];
        if d.is_empty() || (d[0] == b'0' && d.len() > 1) {
            return None;
        }
        let mut v = 0u64;
        for c in d {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        }
        self.i += digits;
        Some(v)
    }
}

/// Value of each lower-case hex digit; `0x80` for every other byte.
const HEX_LOWER: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The canonical entry's facts if `bytes` are exactly a canonical entry of version 1, else `None`.
fn scan_canonical(bytes: &[u8]) -> Option<EntryFacts> {
    let mut s = Scan { b: bytes, i: 0 };
    s.lit(b"{\"auth\":")?;
    let auth = AuthMethod::parse(std::str::from_utf8(s.string()?).ok()?)?;
    s.lit(b",\"format\":")?;
    let format = s.string()?;
    s.lit(b",\"payload_sha256\":\"")?;
    let hex_digits = s.b.get(s.i..s.i + 64)?;
    // Lower-case hex only (what `to_canonical_json` writes); branch-free, one bad digit fails the lot.
    let mut payload_sha256 = [0u8; 32];
    let mut bad = 0u8;
    for (out, pair) in payload_sha256.iter_mut().zip(hex_digits.chunks_exact(2)) {
        let (hi, lo) = (HEX_LOWER[usize::from(pair[0])], HEX_LOWER[usize::from(pair[1])]);
        bad |= hi | lo;
        *out = (hi << 4) | (lo & 0x0f);
    }
    if bad & 0x80 != 0 {
        return None;
    }
    s.i += 64;
    s.lit(b"\",\"producer\":")?;
    let producer = s.string()?;
    s.lit(b",\"received_at_ns\":")?;
    let received_at_ns = s.uint()?;
    s.lit(b",\"seq\":")?;
    let seq = s.uint()?;
    s.lit(b",\"source\":")?;
    let source = s.string()?;
    s.lit(b",\"source_id\":")?;
    if s.lit(b"null").is_none() {
        s.string()?;
    }
    s.lit(b",\"v\":1}")?;
    // The raw bytes equal the decoded name: "anchorlog" has nothing to escape.
    let own = crate::record_types::APPLIANCE.as_bytes();
    let appliance = auth == AuthMethod::Internal && producer == own && source == own && format == own;
    (s.i == bytes.len() && ENTRY_VERSION == 1).then_some(EntryFacts {
        seq,
        received_at_ns,
        auth,
        payload_sha256,
        appliance,
    })
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

    /// The fast scanner admits a byte string exactly when the reference (parse + re-encode) does, with the
    /// same facts: every canonical entry, and mutations of them at every position.
    #[test]
    fn check_agrees_with_parse_on_canonical_entries_and_every_mutation() {
        let mut samples = vec![sample()];
        let mut e = sample();
        e.source_id = None;
        e.seq = 0;
        e.received_at_ns = u64::MAX;
        samples.push(e);
        let mut e = sample();
        e.source_id = Some((0u32..0x80).filter_map(char::from_u32).chain("é€😀/".chars()).collect());
        e.producer = "p\u{7f}".into();
        e.auth = AuthMethod::Internal;
        samples.push(e);
        let reference =
            |b: &[u8]| Entry::parse(b).map(|e| (e.seq, e.received_at_ns, e.auth, e.payload_sha256));
        let fast = |b: &[u8]| scan_canonical(b).map(|f| (f.seq, f.received_at_ns, f.auth, f.payload_sha256));
        for e in &samples {
            let bytes = e.to_canonical_json();
            assert_eq!(fast(&bytes), Some(reference(&bytes).unwrap()));
            assert_eq!(Entry::check(&bytes).unwrap().seq, e.seq);
            let replacements: &[&[u8]] = &[
                b"", b" ", b"0", b"1", b"9", b"a", b"A", b"\\", b"\"", b"\\u0041", b"\\u001f", b"\\u000a",
                b"\\/", b"\xff", b"\x01", b"-", b"null", b"{", b"}", b",",
            ];
            for i in 0..=bytes.len() {
                for r in replacements {
                    for (cut, label) in [(0usize, "insert"), (1, "replace")] {
                        if i + cut > bytes.len() {
                            continue;
                        }
                        let mut m = bytes[..i].to_vec();
                        m.extend_from_slice(r);
                        m.extend_from_slice(&bytes[i + cut..]);
                        // A scanner acceptance must be a reference acceptance with the same facts (soundness);
                        // the reverse is what makes the fast path fast, not what keeps it correct.
                        if let Some(f) = fast(&m) {
                            assert_eq!(
                                Ok(f),
                                reference(&m),
                                "{label} {r:?} at {i}: {}",
                                String::from_utf8_lossy(&m)
                            );
                        }
                        if reference(&m).is_ok() {
                            assert_eq!(fast(&m), reference(&m).ok(), "{label} {r:?} at {i}");
                        }
                    }
                }
            }
        }
        // Integers: leading zeros, overflow, sign; each rejected by both.
        let base = String::from_utf8(sample().to_canonical_json()).unwrap();
        for bad in ["\"seq\":07", "\"seq\":18446744073709551616", "\"seq\":-7", "\"seq\":7.0", "\"seq\":7e0"]
        {
            let m = base.replace("\"seq\":7", bad);
            assert_eq!(scan_canonical(m.as_bytes()), None, "{m}");
            assert!(Entry::check(m.as_bytes()).is_err(), "{m}");
        }
        let m = base.replace("\"seq\":7", "\"seq\":18446744073709551615");
        assert_eq!(Entry::check(m.as_bytes()).unwrap().seq, u64::MAX);
        assert_eq!(Entry::check(base.replace("\"v\":1", "\"v\":2").as_bytes()), Err(EntryError::Version(2)));
        assert_eq!(Entry::check(base.replacen(',', ", ", 1).as_bytes()), Err(EntryError::NotCanonical));
    }

    proptest::proptest! {
        #[test]
        fn check_accepts_every_canonical_entry(
            producer in "\\PC{0,20}", source in ".{0,12}", id in proptest::option::of("[\\x00-\\x7f]{0,12}|\\PC{0,8}"),
            seq: u64, ns: u64, digest: [u8; 32],
        ) {
            let e = Entry {
                seq,
                received_at_ns: ns,
                producer,
                source,
                auth: AuthMethod::Hmac,
                format: "okta".into(),
                source_id: id,
                payload_sha256: digest,
            };
            let bytes = e.to_canonical_json();
            proptest::prop_assert_eq!(
                scan_canonical(&bytes),
                Some(EntryFacts { seq, received_at_ns: ns, auth: AuthMethod::Hmac, payload_sha256: digest, appliance: false })
            );
        }
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
