//! Block heads: C2SP tlog-checkpoint text with anchorlog extension lines.
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <root hash, base64>
//! anchorlog-block <height>
//! anchorlog-prev <base64 SHA-256 of the previous head's text; 32 zero bytes at height 0>
//! anchorlog-time <seal time, RFC 3339 UTC with milliseconds>
//! anchorlog-counter <TPM counter value> <TPM reset count> <NV index, 0x + 8 hex digits>   (TPM backend only)
//! ```
//! Every line ends in `\n`. The signed message is exactly these bytes. The parser is strict: it accepts only
//! text that `to_text` would produce, so two different byte strings can never carry the same head.
//! The optional seventh line is the TPM monotonic counter reading the head was sealed under
//! ([`HeadCounter`], docs/FORMAT.md §3); heads signed by a PKCS#11 HSM have none.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// The 32-byte hash type shared with the Merkle module.
pub type Hash = [u8; 32];

/// RFC 3339 UTC with exactly three fractional digits, e.g. `2026-11-23T12:00:00.123Z`.
const TIME_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A block head, as signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log origin (first line).
    pub origin: String,
    /// Number of leaves the root covers.
    pub tree_size: u64,
    /// RFC 9162 root over the first `tree_size` leaves.
    pub root: Hash,
    /// Block height, dense from 0.
    pub height: u64,
    /// SHA-256 of the previous head's text, or 32 zero bytes at height 0.
    pub prev: Hash,
    /// Seal time in milliseconds since the Unix epoch (UTC).
    pub time_ms: i64,
    /// The TPM monotonic counter reading this head was sealed under (`anchorlog-counter`); `None` for
    /// backends without a counter.
    pub counter: Option<HeadCounter>,
}

/// The `anchorlog-counter` line: a value of the TPM's NV counter reserved for this head, the TPM's reset
/// count read before it (so a start-up check knows whether the counter may have jumped after a power loss),
/// and the NV index it came from (so a head cannot be matched against another counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadCounter {
    /// The counter value, strictly increasing along the chain.
    pub value: u64,
    /// `TPMS_CLOCK_INFO.resetCount` read before the value was reserved.
    pub reset_count: u32,
    /// The NV index handle of the counter, e.g. `0x01800010`.
    pub index: u32,
}

impl HeadCounter {
    /// The line's text after `anchorlog-counter `: `<value> <reset count> 0x<index, 8 lower-case hex digits>`.
    pub fn to_line_value(&self) -> String {
        format!("{} {} {:#010x}", self.value, self.reset_count, self.index)
    }

    /// Parses what [`HeadCounter::to_line_value`] writes (canonical decimals, exactly 8 lower-case hex digits).
    pub fn parse_line_value(s: &str) -> Option<HeadCounter> {
        let mut parts = s.split(' ');
        let value = parse_decimal(parts.next()?)?;
        let reset_count = u32::try_from(parse_decimal(parts.next()?)?).ok()?;
        let hex = parts.next()?.strip_prefix("0x")?;
        if parts.next().is_some()
            || hex.len() != 8
            || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let index = u32::from_str_radix(hex, 16).ok()?;
        Some(HeadCounter { value, reset_count, index })
    }
}

/// Why a text is not a well-formed checkpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    /// A line is missing, extra, or malformed.
    #[error("checkpoint line {line}: {problem}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The seal time is outside the representable range.
    #[error("seal time {0} ms is out of range")]
    TimeRange(i64),
}

fn malformed(line: usize, problem: impl Into<String>) -> HeadError {
    HeadError::Malformed { line, problem: problem.into() }
}

impl Checkpoint {
    /// The exact signed text.
    pub fn to_text(&self) -> Result<String, HeadError> {
        let mut text = format!(
            "{}\n{}\n{}\nanchorlog-block {}\nanchorlog-prev {}\nanchorlog-time {}\n",
            self.origin,
            self.tree_size,
            B64.encode(self.root),
            self.height,
            B64.encode(self.prev),
            format_time_ms(self.time_ms)?
        );
        if let Some(c) = &self.counter {
            text.push_str(&format!("anchorlog-counter {}\n", c.to_line_value()));
        }
        Ok(text)
    }

    /// Parses checkpoint text strictly (it must be byte-identical to what `to_text` produces).
    pub fn parse(text: &str) -> Result<Checkpoint, HeadError> {
        let body = text.strip_suffix('\n').ok_or_else(|| malformed(6, "the text must end with a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        if !(6..=7).contains(&lines.len()) {
            return Err(malformed(
                lines.len().min(7),
                format!("expected 6 lines (7 with anchorlog-counter), found {}", lines.len()),
            ));
        }
        let origin = lines[0].to_string();
        if origin.is_empty() {
            return Err(malformed(1, "empty origin"));
        }
        let tree_size =
            parse_decimal(lines[1]).ok_or_else(|| malformed(2, "tree size is not a decimal number"))?;
        let root = parse_hash(lines[2]).ok_or_else(|| malformed(3, "root is not a base64 SHA-256 hash"))?;
        let height = lines[3]
            .strip_prefix("anchorlog-block ")
            .and_then(parse_decimal)
            .ok_or_else(|| malformed(4, "expected `anchorlog-block <height>`"))?;
        let prev = lines[4]
            .strip_prefix("anchorlog-prev ")
            .and_then(parse_hash)
            .ok_or_else(|| malformed(5, "expected `anchorlog-prev <base64 hash>`"))?;
        let time_text = lines[5]
            .strip_prefix("anchorlog-time ")
            .ok_or_else(|| malformed(6, "expected `anchorlog-time <time>`"))?;
        let time_ms = parse_time_ms(time_text)
            .ok_or_else(|| malformed(6, "time is not RFC 3339 UTC with milliseconds"))?;
        let counter = match lines.get(6) {
            None => None,
            Some(line) => Some(
                line.strip_prefix("anchorlog-counter ").and_then(HeadCounter::parse_line_value).ok_or_else(
                    || malformed(7, "expected `anchorlog-counter <value> <reset count> 0x<index>`"),
                )?,
            ),
        };
        let head = Checkpoint { origin, tree_size, root, height, prev, time_ms, counter };
        if head.to_text()? != text {
            return Err(malformed(1, "text is not in canonical form"));
        }
        Ok(head)
    }

    /// SHA-256 of the head text: what the next head's `anchorlog-prev` names.
    pub fn text_hash(text: &str) -> Hash {
        Sha256::digest(text.as_bytes()).into()
    }

    /// The seal time as RFC 3339.
    pub fn time_rfc3339(&self) -> Result<String, HeadError> {
        format_time_ms(self.time_ms)
    }
}

/// C2SP signed-note signature type of ECDSA signatures (c2sp.org/signed-note, type 0x02).
pub const NOTE_SIGNATURE_TYPE_ECDSA: u8 = crate::note::vkey::TYPE_ECDSA;

/// The C2SP signed-note form of a signed head, for note-aware tools and witnesses: the checkpoint text, a blank
/// line, and `— <origin> base64(key ID || DER signature)`, where the key ID is the first four bytes of
/// SHA-256(SubjectPublicKeyInfo DER), as c2sp.org/signed-note specifies for ECDSA (type 0x02). It verifies with
/// the vkey [`crate::note::VerifierKey::ecdsa`]`(origin, spki_der)`.
pub fn signed_note(text: &str, origin: &str, spki_der: &[u8], signature_der: &[u8]) -> String {
    let line = crate::note::NoteSignature {
        name: origin.to_owned(),
        key_id: crate::note::vkey::ecdsa_key_id(spki_der),
        signature: signature_der.to_vec(),
    };
    format!("{text}\n{}", line.to_line())
}

fn parse_decimal(s: &str) -> Option<u64> {
    // Canonical decimal only: no sign, no leading zeros (except "0" itself).
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_hash(s: &str) -> Option<Hash> {
    B64.decode(s).ok().and_then(|v| <[u8; 32]>::try_from(v).ok())
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn format_time_ms(ms: i64) -> Result<String, HeadError> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| HeadError::TimeRange(ms))?;
    t.format(TIME_FORMAT).map_err(|_| HeadError::TimeRange(ms))
}

/// Parses `YYYY-MM-DDThh:mm:ss.mmmZ` into milliseconds since the epoch.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let t = time::PrimitiveDateTime::parse(s, TIME_FORMAT).ok()?.assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            origin: "anchorlog.example.org/prod-1".into(),
            tree_size: 1000,
            root: [1; 32],
            height: 5,
            prev: [0; 32],
            time_ms: 1_795_432_930_123,
            counter: None,
        }
    }

    fn with_counter() -> Checkpoint {
        Checkpoint {
            counter: Some(HeadCounter { value: 1025, reset_count: 7, index: 0x0180_0010 }),
            ..sample()
        }
    }

    #[test]
    fn text_is_exact() {
        assert_eq!(
            sample().to_text().unwrap(),
            "anchorlog.example.org/prod-1\n1000\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\nanchorlog-block 5\n\
             anchorlog-prev AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\nanchorlog-time 2026-11-23T11:22:10.123Z\n"
        );
    }

    #[test]
    fn parse_round_trips() {
        let h = sample();
        assert_eq!(Checkpoint::parse(&h.to_text().unwrap()).unwrap(), h);
        let h = with_counter();
        assert_eq!(Checkpoint::parse(&h.to_text().unwrap()).unwrap(), h);
    }

    #[test]
    fn counter_line_is_exact() {
        let text = with_counter().to_text().unwrap();
        assert!(
            text.ends_with("anchorlog-time 2026-11-23T11:22:10.123Z\nanchorlog-counter 1025 7 0x01800010\n"),
            "{text}"
        );
        let max = HeadCounter { value: u64::MAX, reset_count: u32::MAX, index: 0xffff_ffff };
        assert_eq!(max.to_line_value(), "18446744073709551615 4294967295 0xffffffff");
        assert_eq!(HeadCounter::parse_line_value(&max.to_line_value()), Some(max));
    }

    #[test]
    fn counter_line_is_strict() {
        let t = with_counter().to_text().unwrap();
        let cases = [
            t.replace("counter 1025 ", "counter 01025 "),
            t.replace(" 7 0x", " 07 0x"),
            t.replace("0x01800010", "0x1800010"),
            t.replace("0x01800010", "0x01800010 "),
            t.replace("0x01800010", "0X01800010"),
            t.replace("0x01800010", "0x0180001A"),
            t.replace(" 7 0x", " 4294967296 0x"),
            t.replace("1025 7 0x01800010", "1025 0x01800010"),
            t.replace("1025 7", "1025  7"),
            t.replace("anchorlog-counter", "anchorlog-Counter"),
        ];
        for text in cases {
            match Checkpoint::parse(&text) {
                Err(HeadError::Malformed { line: 7, .. }) => {}
                other => panic!("{text:?}: {other:?}"),
            }
        }
        match Checkpoint::parse(&format!("{t}anchorlog-counter 1 1 0x01800010\n")) {
            Err(HeadError::Malformed { line: 7, problem }) => {
                assert!(problem.contains("found 8"), "{problem}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_rejects_variants() {
        let t = sample().to_text().unwrap();
        let cases = [
            (t.trim_end().to_string(), 6),
            (t.replace("\n1000\n", "\n01000\n"), 2),
            (t.replace("anchorlog-block 5", "anchorlog-block  5"), 4),
            (t.replace("anchorlog-prev ", "anchorlog-prev  "), 5),
            (t.replace(".123Z", "Z"), 6),
            (format!("{t}extra\n"), 7),
            (format!("{t}extra\nmore\n"), 7),
        ];
        for (text, line) in cases {
            match Checkpoint::parse(&text) {
                Err(HeadError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn signed_note_has_the_c2sp_shape() {
        let text = sample().to_text().unwrap();
        let spki = [0x30u8, 0x59, 0x30];
        let note = signed_note(&text, "anchorlog.example.org/prod-1", &spki, &[0xAA, 0xBB]);
        let (body, sig_line) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{body}\n"), text);
        let b64 = sig_line
            .strip_prefix("\u{2014} anchorlog.example.org/prod-1 ")
            .unwrap()
            .strip_suffix('\n')
            .unwrap();
        let blob = B64.decode(b64).unwrap();
        assert_eq!(&blob[..4], &Sha256::digest(spki)[..4]);
        assert_eq!(&blob[4..], &[0xAA, 0xBB]);
    }

    #[test]
    fn signed_note_verifies_with_the_ecdsa_vkey() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec();
        let text = sample().to_text().unwrap();
        let sig: p256::ecdsa::DerSignature = key.sign(text.as_bytes());
        let note = signed_note(&text, "anchorlog.example.org/prod-1", &spki, sig.as_bytes());
        let vkey = crate::note::VerifierKey::ecdsa("anchorlog.example.org/prod-1", &spki).unwrap();
        let parsed = crate::note::Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.text(), text);
        assert_eq!(parsed.verify(&[vkey]).unwrap().verified.len(), 1);
    }

    #[test]
    fn time_format_round_trips() {
        assert_eq!(format_time_ms(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(parse_time_ms("2026-11-23T11:22:10.123Z"), Some(1_795_432_930_123));
    }
}
