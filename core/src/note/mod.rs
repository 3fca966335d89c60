//! Signed notes, checkpoints, cosignatures and the witness protocol (the C2SP transparency-log family), pure:
//! no I/O, part of the core (the appliance, its witness, the offline verifier and the browser use it).
//!
//! | module | owns | spec |
//! |---|---|---|
//! | this one | signed notes: parse, serialise, verify, append signature lines | c2sp.org/signed-note v1.0.0 |
//! | [`vkey`] | key IDs and verifier keys of types 0x01 (Ed25519), 0x02 (ECDSA P-256), 0x04 (cosignature/v1) | signed-note, tlog-cosignature |
//! | [`checkpoint`] | the checkpoint body: origin, tree size, root, extension lines | c2sp.org/tlog-checkpoint v1.0.0 |
//! | [`cosignature`] | Ed25519 `cosignature/v1`: message, signing, verification, timestamps | c2sp.org/tlog-cosignature v1.0.1 |
//! | [`protocol`] | `add-checkpoint` request and response bodies | c2sp.org/tlog-witness v1.0.0 |
//!
//! A signed note is a text ending in `\n`, a blank line, and one or more signature lines
//! `— <key name> <base64(4-byte key ID ‖ signature)>\n` (U+2014 em dash). The text is everything up to and
//! including the newline before the *last* blank line. [`Note::parse`] checks the syntax only;
//! [`Note::verify`] applies the spec's trust rules against a set of [`VerifierKey`]s, exactly as
//! golang.org/x/mod/sumdb/note `Open` does: unknown keys are ignored, a known key's failing signature rejects
//! the whole note, and at least one known key must have signed.
//!
//! The byte formats are written up for third parties in docs/FORMAT.md §16.

pub mod checkpoint;
pub mod cosignature;
pub mod protocol;
pub mod vkey;

pub use checkpoint::TlogCheckpoint;
pub use vkey::{VerifierKey, VkeyError};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::HashSet;

/// The prefix of every signature line: U+2014 (em dash) and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Most signature lines a note may carry (golang.org/x/mod/sumdb/note's limit; the spec asks for at least 16).
pub const MAX_SIGNATURES: usize = 100;

/// Why a note is malformed or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The bytes are not UTF-8.
    #[error("the note is not valid UTF-8")]
    NotUtf8,
    /// An ASCII control character other than newline appears (signed-note forbids them).
    #[error(
        "the note contains the control character U+{code:04X} at byte {offset}; only newline is allowed"
    )]
    ControlCharacter {
        /// Byte offset.
        offset: usize,
        /// The character.
        code: u32,
    },
    /// No blank line separates text and signatures, or the text is empty.
    #[error("the note has no blank line followed by signature lines")]
    NoSignatureBlock,
    /// The signature block does not end with a newline, or is empty.
    #[error("the note's signature block is empty or does not end with a newline")]
    UnterminatedSignatureBlock,
    /// A signature line is malformed.
    #[error("signature line {line}: {problem}")]
    BadSignatureLine {
        /// 1-based line number within the signature block.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("the note carries more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// The text does not end with a newline, contains a blank line at its end, or is empty (serialising).
    #[error("a note text must be non-empty and end with a single newline")]
    BadText,
    /// No signature line comes from a trusted key.
    #[error("no signature from a trusted key (trusted: {})", .trusted.join(", "))]
    NoTrustedSignature {
        /// `name+key ID` of each trusted key.
        trusted: Vec<String>,
    },
    /// A signature line of a trusted key does not verify: the note is invalid as a whole.
    #[error("the signature by trusted key {name}+{key_id:08x} does not verify")]
    InvalidSignature {
        /// Key name.
        name: String,
        /// Key ID.
        key_id: u32,
    },
}

/// One signature line: key name, key ID, and the signature bytes after the key ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key ID (big-endian `u32` of the first four decoded bytes).
    pub key_id: u32,
    /// The signature proper (for cosignature/v1: 8-byte timestamp ‖ 64-byte Ed25519 signature).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line `— <name> <base64(key ID ‖ signature)>\n`.
    pub fn to_line(&self) -> String {
        let mut blob = Vec::with_capacity(4 + self.signature.len());
        blob.extend_from_slice(&self.key_id.to_be_bytes());
        blob.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }

    /// Parses one signature line, without its trailing newline (errors name it as line 1).
    pub fn parse_line(line: &str) -> Result<Self, NoteError> {
        Self::parse_numbered(line, 1)
    }

    /// Parses line `number` of a signature block.
    fn parse_numbered(line: &str, number: usize) -> Result<Self, NoteError> {
        let bad = |problem| NoteError::BadSignatureLine { line: number, problem };
        let rest =
            line.strip_prefix(SIGNATURE_PREFIX).ok_or(bad("does not start with an em dash and a space"))?;
        let (name, b64) = rest.split_once(' ').ok_or(bad("has no space between key name and signature"))?;
        vkey::validate_key_name(name).map_err(|_| bad("the key name is empty or contains a space or '+'"))?;
        let raw = B64.decode(b64).map_err(|_| bad("the signature is not standard base64"))?;
        if raw.len() < 5 {
            return Err(bad("the signature is shorter than a key ID and one byte"));
        }
        let (id, signature) = raw.split_at(4);
        let key_id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        Ok(NoteSignature { name: name.to_owned(), key_id, signature: signature.to_vec() })
    }
}

/// A parsed signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// The outcome of [`Note::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The verified signatures, in note order, each with the index of the trusted key that made it.
    pub verified: Vec<(usize, NoteSignature)>,
    /// Signatures from keys not in the trusted set (kept, never trusted).
    pub unverified: Vec<NoteSignature>,
}

impl Note {
    /// A note from its text and signatures. The text must be non-empty and end with `\n`; a signed note's text
    /// cannot end in a blank line (that line would be taken as the separator).
    pub fn new(text: impl Into<String>, signatures: Vec<NoteSignature>) -> Result<Self, NoteError> {
        let text = text.into();
        if !text.ends_with('\n') || text.ends_with("\n\n") || text == "\n" {
            return Err(NoteError::BadText);
        }
        check_characters(&text)?;
        Ok(Note { text, signatures })
    }

    /// Parses a signed note (syntax only; see [`Note::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        let all = std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?;
        check_characters(all)?;
        let split = all.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let (text, block) = (&all[..=split], &all[split + 2..]);
        Ok(Note { text: text.to_owned(), signatures: parse_signature_lines(block)? })
    }

    /// The signed text (ends with `\n`).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds signature lines (e.g. witness cosignatures) after the existing ones.
    pub fn add_signatures(&mut self, more: impl IntoIterator<Item = NoteSignature>) -> Result<(), NoteError> {
        self.signatures.extend(more);
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures { max: MAX_SIGNATURES });
        }
        Ok(())
    }

    /// The serialised note: text, blank line, signature lines.
    pub fn to_text(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.to_line());
        }
        out
    }

    /// Applies the c2sp.org/signed-note trust rules with `trusted` keys: signatures from unknown keys (name and
    /// key ID not both matching a trusted key) are ignored; repeated signatures by one key are checked once; a
    /// failing signature of a trusted key rejects the note; at least one trusted signature must verify.
    pub fn verify(&self, trusted: &[VerifierKey]) -> Result<VerifiedNote, NoteError> {
        let mut out = VerifiedNote { verified: Vec::new(), unverified: Vec::new() };
        let mut seen = HashSet::new();
        let mut seen_unknown = HashSet::new();
        for sig in &self.signatures {
            let Some(index) = trusted.iter().position(|k| k.matches(&sig.name, sig.key_id)) else {
                if seen_unknown.insert(sig) {
                    out.unverified.push(sig.clone());
                }
                continue;
            };
            if !seen.insert(index) {
                continue;
            }
            if !trusted[index].verify(&self.text, &sig.signature) {
                return Err(NoteError::InvalidSignature { name: sig.name.clone(), key_id: sig.key_id });
            }
            out.verified.push((index, sig.clone()));
        }
        if out.verified.is_empty() {
            return Err(NoteError::NoTrustedSignature {
                trusted: trusted.iter().map(|k| format!("{}+{:08x}", k.name(), k.key_id())).collect(),
            });
        }
        Ok(out)
    }
}

/// Appends signature lines (e.g. a witness's `add-checkpoint` answer) to a serialised signed note, checking
/// both: the result is a well-formed note with the same text.
pub fn append_signature_lines(note: &str, lines: &str) -> Result<String, NoteError> {
    let mut parsed = Note::parse(note.as_bytes())?;
    let extra = parse_signature_lines(lines)?;
    parsed.add_signatures(extra)?;
    Ok(parsed.to_text())
}

/// Parses a block of signature lines, each ending in `\n` (a witness's `add-checkpoint` answer).
pub fn parse_signature_lines(lines: &str) -> Result<Vec<NoteSignature>, NoteError> {
    check_characters(lines)?;
    if lines.is_empty() || !lines.ends_with('\n') {
        return Err(NoteError::UnterminatedSignatureBlock);
    }
    let mut out = Vec::new();
    for (i, line) in lines[..lines.len() - 1].split('\n').enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures { max: MAX_SIGNATURES });
        }
        out.push(NoteSignature::parse_numbered(line, i + 1)?);
    }
    Ok(out)
}

/// Signed notes carry no ASCII control character except newline.
fn check_characters(s: &str) -> Result<(), NoteError> {
    match s.char_indices().find(|&(_, c)| (c as u32) < 0x20 && c != '\n') {
        Some((offset, c)) => Err(NoteError::ControlCharacter { offset, code: c as u32 }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// c2sp.org/signed-note "Verifier keys" example.
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo \
        Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    /// Real ECDSA (0x02) checkpoints, from transparency-dev/formats note/note_verifier_test.go.
    const REKOR_NOTE: &str = "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n\u{2014} rekor.sigstore.dev \
        wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n";
    const PIXEL_VKEY: &str = "pixel6_transparency_log+91c16e30+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=";
    const PIXEL_NOTE: &str = "DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n\u{2014} pixel6_transparency_log \
        kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n";

    fn key(vkey: &str) -> VerifierKey {
        VerifierKey::parse(vkey).unwrap()
    }

    #[test]
    fn spec_example_verifies_and_round_trips() {
        let note = Note::parse(SPEC_NOTE.as_bytes()).unwrap();
        assert_eq!(note.text(), "This is an example message.\n");
        assert_eq!(note.signatures()[0].key_id, 0x530d903a);
        assert_eq!(note.to_text(), SPEC_NOTE);
        let v = note.verify(&[key(SPEC_VKEY)]).unwrap();
        assert_eq!(v.verified.len(), 1);
        assert!(v.unverified.is_empty());
    }

    #[test]
    fn real_ecdsa_checkpoints_verify() {
        let rekor = key(super::vkey::tests::REKOR_VKEY);
        let pixel = key(PIXEL_VKEY);
        let n = Note::parse(REKOR_NOTE.as_bytes()).unwrap();
        assert_eq!(n.verify(&[pixel.clone(), rekor.clone()]).unwrap().verified[0].0, 1);
        let n = Note::parse(PIXEL_NOTE.as_bytes()).unwrap();
        assert_eq!(n.verify(std::slice::from_ref(&pixel)).unwrap().verified[0].0, 0);
        // The Rekor key does not know the Pixel signature: unknown, so nothing trusted.
        assert_eq!(
            n.verify(&[rekor]).unwrap_err().to_string(),
            "no signature from a trusted key (trusted: rekor.sigstore.dev+c0d23d6a)"
        );
        // One changed byte of the text: the trusted key's signature fails, the note is rejected.
        let tampered = Note::parse(PIXEL_NOTE.replace("\n10\n", "\n11\n").as_bytes()).unwrap();
        assert_eq!(
            tampered.verify(&[pixel]).unwrap_err(),
            NoteError::InvalidSignature { name: "pixel6_transparency_log".into(), key_id: 0x91c16e30 }
        );
    }

    #[test]
    fn trust_rules_follow_the_spec() {
        let trusted = key(SPEC_VKEY);
        let good = Note::parse(SPEC_NOTE.as_bytes()).unwrap().signatures()[0].clone();
        // Same name, other key ID: an unknown key, ignored (and kept as unverified).
        let other_id = NoteSignature { key_id: 1, ..good.clone() };
        // Same key ID, other name: unknown too.
        let other_name = NoteSignature { name: "example.com/bar".into(), ..good.clone() };
        let text = "This is an example message.\n";
        let n =
            Note::new(text, vec![other_id.clone(), other_name.clone(), good.clone(), good.clone()]).unwrap();
        let v = n.verify(std::slice::from_ref(&trusted)).unwrap();
        assert_eq!(v.verified, vec![(0, good.clone())]);
        assert_eq!(v.unverified, vec![other_id.clone(), other_name]);
        // A bad signature by the trusted key rejects the note even next to a good one.
        let mut bad = good.clone();
        bad.signature[0] ^= 1;
        let n = Note::new(text, vec![bad, good]).unwrap();
        assert!(matches!(n.verify(std::slice::from_ref(&trusted)), Err(NoteError::InvalidSignature { .. })));
        let n = Note::new(text, vec![other_id]).unwrap();
        assert!(matches!(n.verify(&[trusted]), Err(NoteError::NoTrustedSignature { .. })));
    }

    #[test]
    fn malformed_notes_are_refused_with_the_reason() {
        let sig = "\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=";
        let cases: Vec<(Vec<u8>, NoteError)> = vec![
            (b"text\n\xff\n\n".to_vec(), NoteError::NotUtf8),
            (format!("te\rxt\n\n{sig}\n").into_bytes(), NoteError::ControlCharacter { offset: 2, code: 13 }),
            (format!("text\n{sig}\n").into_bytes(), NoteError::NoSignatureBlock),
            (format!("text\n\n{sig}").into_bytes(), NoteError::UnterminatedSignatureBlock),
            (b"text\n\n".to_vec(), NoteError::UnterminatedSignatureBlock),
            (
                format!("text\n\n{}\n", sig.replace('\u{2014}', "--")).into_bytes(),
                NoteError::BadSignatureLine {
                    line: 1,
                    problem: "does not start with an em dash and a space",
                },
            ),
            (
                format!("text\n\n{sig}\n\u{2014} k AAAA\n").into_bytes(),
                NoteError::BadSignatureLine {
                    line: 2,
                    problem: "the signature is shorter than a key ID and one byte",
                },
            ),
            (
                format!("text\n\n{sig}\n\u{2014} k+1 AAAAAAA=\n").into_bytes(),
                NoteError::BadSignatureLine {
                    line: 2,
                    problem: "the key name is empty or contains a space or '+'",
                },
            ),
            (
                format!("text\n\n{sig} \n").into_bytes(),
                NoteError::BadSignatureLine { line: 1, problem: "the signature is not standard base64" },
            ),
            (
                format!("text\n\n{}", format!("{sig}\n").repeat(101)).into_bytes(),
                NoteError::TooManySignatures { max: 100 },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Note::parse(&bytes), Err(expected), "{}", String::from_utf8_lossy(&bytes));
        }
        // 100 lines are accepted.
        assert!(Note::parse(format!("text\n\n{}", format!("{sig}\n").repeat(100)).as_bytes()).is_ok());
    }

    #[test]
    fn text_is_split_at_the_last_blank_line() {
        let note = format!("a\n\nb\n\n{}", SPEC_NOTE.split_once("\n\n").unwrap().1);
        let n = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(n.text(), "a\n\nb\n");
        assert_eq!(n.to_text(), note);
    }

    #[test]
    fn appending_lines_keeps_the_text_and_order() {
        let line = "\u{2014} w.example/1 AAAAAQI=\n";
        let out = append_signature_lines(SPEC_NOTE, line).unwrap();
        assert_eq!(out, format!("{SPEC_NOTE}{line}"));
        assert!(Note::parse(out.as_bytes()).unwrap().verify(&[key(SPEC_VKEY)]).is_ok());
        assert_eq!(
            append_signature_lines(SPEC_NOTE, "\u{2014} w AAAAAQI="),
            Err(NoteError::UnterminatedSignatureBlock)
        );
        assert!(Note::new("no newline", vec![]).is_err());
        assert!(Note::new("ends blank\n\n", vec![]).is_err());
    }
}
