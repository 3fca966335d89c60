//! Ed25519 checkpoint cosignatures, `cosignature/v1` (c2sp.org/tlog-cosignature, signature type `0x04`).
//!
//! A witness signs, with Ed25519, the message
//!
//! ```text
//! cosignature/v1
//! time <timestamp, decimal seconds since the epoch>
//! <the whole checkpoint text, extension lines included>
//! ```
//!
//! and publishes the note signature line `— <witness name> base64(key ID ‖ timestamp (8 bytes, big-endian) ‖
//! Ed25519 signature (64 bytes))`, with key ID `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]`. The cosignature
//! states that, at that time, this checkpoint was the largest consistent tree the witness had seen for the
//! origin. The signing itself is a closure, so that the key may live in an HSM.

use super::vkey::{self, VerifierKey, TYPE_COSIGNATURE_V1};
use super::{Note, NoteError, NoteSignature};
use ed25519_dalek::Verifier as _;

/// First line of every cosignature/v1 message (domain separation).
pub const HEADER: &str = "cosignature/v1\n";
/// Length of a cosignature/v1 signature after the key ID: 8-byte timestamp and 64-byte Ed25519 signature.
pub const SIGNATURE_LEN: usize = 8 + 64;
/// Largest timestamp the spec allows (`2^63 − 1`).
pub const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// Why a cosignature was not made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    /// The verifier key is not a cosignature/v1 (type 0x04) key.
    #[error("verifier key {0} is not a cosignature/v1 key (type 0x04)")]
    NotCosignatureKey(String),
    /// The signature line is malformed.
    #[error("cosignature {0}")]
    BadLine(NoteError),
    /// The line is by another key (name or key ID differ).
    #[error("the cosignature line is by {name}+{key_id:08x}, not by the witness key {expected}")]
    OtherKey {
        /// Name on the line.
        name: String,
        /// Key ID on the line.
        key_id: u32,
        /// `name+key ID` of the expected witness.
        expected: String,
    },
    /// The signature is not 72 bytes.
    #[error("a cosignature/v1 signature is 72 bytes (timestamp and Ed25519 signature), this one is {0}")]
    Length(usize),
    /// The timestamp is zero or above 2^63 − 1.
    #[error("cosignature timestamp {0} is out of range (1 ..= 2^63-1)")]
    Timestamp(u64),
    /// The Ed25519 signature does not verify over the message.
    #[error("the cosignature by {name}+{key_id:08x} does not verify over this checkpoint")]
    Invalid {
        /// Witness name.
        name: String,
        /// Witness key ID.
        key_id: u32,
    },
}

/// The signed message for `checkpoint_text` at `timestamp`.
pub fn message(checkpoint_text: &str, timestamp: u64) -> Vec<u8> {
    format!("{HEADER}time {timestamp}\n{checkpoint_text}").into_bytes()
}

/// Makes the cosignature line of witness `name` with Ed25519 `public_key`; `sign` signs the message (e.g. in an
/// HSM) and returns the 64-byte Ed25519 signature. `timestamp` must be in `1 ..= 2^63 − 1` (tlog-witness
/// forbids zero).
pub fn sign_with<E>(
    name: &str,
    public_key: &[u8; 32],
    checkpoint_text: &str,
    timestamp: u64,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], E>,
) -> Result<NoteSignature, E>
where
    E: From<CosignatureError>,
{
    if timestamp == 0 || timestamp > MAX_TIMESTAMP {
        return Err(CosignatureError::Timestamp(timestamp).into());
    }
    let signature = sign(&message(checkpoint_text, timestamp))?;
    let mut bytes = Vec::with_capacity(SIGNATURE_LEN);
    bytes.extend_from_slice(&timestamp.to_be_bytes());
    bytes.extend_from_slice(&signature);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: vkey::key_id(name, TYPE_COSIGNATURE_V1, public_key),
        signature: bytes,
    })
}

/// [`sign_with`] for an Ed25519 key held in memory (key files, tests).
pub fn sign(
    name: &str,
    key: &ed25519_dalek::SigningKey,
    checkpoint_text: &str,
    timestamp: u64,
) -> Result<NoteSignature, CosignatureError> {
    use ed25519_dalek::Signer as _;
    let public = key.verifying_key().to_bytes();
    sign_with(name, &public, checkpoint_text, timestamp, |m| Ok(key.sign(m).to_bytes()))
}

/// The timestamp of a cosignature/v1 signature (the 8 bytes after the key ID), without verifying it.
pub fn timestamp(signature: &NoteSignature) -> Result<u64, CosignatureError> {
    split(&signature.signature).map(|(t, _)| t)
}

fn split(signature: &[u8]) -> Result<(u64, &[u8]), CosignatureError> {
    if signature.len() != SIGNATURE_LEN {
        return Err(CosignatureError::Length(signature.len()));
    }
    let (time, sig) = signature.split_at(8);
    let mut t = [0u8; 8];
    t.copy_from_slice(time);
    let t = u64::from_be_bytes(t);
    if t > MAX_TIMESTAMP {
        return Err(CosignatureError::Timestamp(t));
    }
    Ok((t, sig))
}

/// Verifies the bytes after the key ID of a cosignature/v1 line by `witness` over `checkpoint_text`; returns
/// the timestamp.
pub fn verify_signature(
    witness: &VerifierKey,
    checkpoint_text: &str,
    signature: &[u8],
) -> Result<u64, CosignatureError> {
    let key = witness
        .ed25519_key()
        .filter(|_| witness.signature_type() == TYPE_COSIGNATURE_V1)
        .ok_or_else(|| CosignatureError::NotCosignatureKey(witness.to_string()))?;
    let (t, sig) = split(signature)?;
    let invalid = || CosignatureError::Invalid { name: witness.name().to_owned(), key_id: witness.key_id() };
    let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| invalid())?;
    key.verify(&message(checkpoint_text, t), &sig).map_err(|_| invalid())?;
    Ok(t)
}

/// Verifies one cosignature line (with or without its trailing newline) by `witness` over `checkpoint_text`
/// (the checkpoint note's text, ending in `\n`); returns the cosignature's timestamp.
pub fn verify_line(
    line: &str,
    witness: &VerifierKey,
    checkpoint_text: &str,
) -> Result<u64, CosignatureError> {
    let sig = NoteSignature::parse_line(line.strip_suffix('\n').unwrap_or(line))
        .map_err(CosignatureError::BadLine)?;
    if !witness.matches(&sig.name, sig.key_id) {
        return Err(CosignatureError::OtherKey {
            name: sig.name,
            key_id: sig.key_id,
            expected: format!("{}+{:08x}", witness.name(), witness.key_id()),
        });
    }
    verify_signature(witness, checkpoint_text, &sig.signature)
}

/// One witness's verified cosignature on a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cosigned {
    /// Index of the witness in the list given to [`cosigned_by`].
    pub witness: usize,
    /// The cosignature's timestamp (seconds since the epoch).
    pub timestamp: u64,
}

/// Which of `witnesses` (cosignature/v1 keys) cosigned `note`, each at most once, in witness order. Lines of
/// other keys are ignored. As c2sp.org/signed-note asks, a line of a listed witness that does not verify
/// fails the whole check: the note was tampered with. A quorum policy counts the result.
pub fn cosigned_by(note: &Note, witnesses: &[VerifierKey]) -> Result<Vec<Cosigned>, CosignatureError> {
    let mut found: Vec<Option<u64>> = vec![None; witnesses.len()];
    for sig in note.signatures() {
        for (i, w) in witnesses.iter().enumerate() {
            if w.matches(&sig.name, sig.key_id) {
                let t = verify_signature(w, note.text(), &sig.signature)?;
                found[i].get_or_insert(t);
            }
        }
    }
    Ok(found
        .into_iter()
        .enumerate()
        .filter_map(|(witness, t)| t.map(|timestamp| Cosigned { witness, timestamp }))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test-only Ed25519 seed; the expected bytes below were computed independently with Python's
    /// `cryptography` (Ed25519PrivateKey.from_private_bytes(seed).sign(message), hashlib.sha256 for the key ID).
    const SEED: [u8; 32] = [0x42; 32];
    const NAME: &str = "witness.test/w1";
    const CHECKPOINT: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
    const TIME: u64 = 1_679_315_147;
    /// `NAME+<key ID>+base64(0x04 ‖ public key)` for SEED.
    const VKEY: &str = "witness.test/w1+786d922a+BCFS+NGbeR0kRTJC4V8uq2y3z/p7al7TAJeWDgaYgdsS";
    /// The cosignature line for CHECKPOINT at TIME.
    const LINE: &str = "\u{2014} witness.test/w1 eG2SKgAAAABkGFDLEqgtDUsneMqeLcGMqk8Xx08OQIVxF72ZJmEtUU5sbo5WiTljN+UF1cQ+vSoh1gRQ0wV3Nz9m8DFvjwHDTDcQBA==\n";

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&SEED)
    }

    #[test]
    fn message_is_exact() {
        assert_eq!(
            message(CHECKPOINT, TIME),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n\
              CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
                .to_vec()
        );
    }

    #[test]
    fn fixed_vector_signs_and_verifies() {
        let vk = VerifierKey::cosignature_v1(NAME, key().verifying_key().as_bytes()).unwrap();
        assert_eq!(vk.to_string(), VKEY);
        let sig = sign(NAME, &key(), CHECKPOINT, TIME).unwrap();
        assert_eq!(sig.to_line(), LINE);
        assert_eq!(timestamp(&sig), Ok(TIME));
        assert_eq!(verify_line(LINE, &VerifierKey::parse(VKEY).unwrap(), CHECKPOINT), Ok(TIME));
        // The generic note verifier accepts it too (type 0x04 through VerifierKey::verify).
        let note = Note::new(CHECKPOINT, vec![sig]).unwrap();
        assert!(note.verify(&[vk]).is_ok());
    }

    #[test]
    fn the_spec_example_timestamp_parses() {
        // c2sp.org/tlog-cosignature's example line: key ID 8d66cf3f, time 1679315147.
        let line = "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
        let sig = NoteSignature::parse_line(line).unwrap();
        assert_eq!(sig.key_id, 0x8d66cf3f);
        assert_eq!(timestamp(&sig), Ok(TIME));
    }

    #[test]
    fn wrong_inputs_are_refused_exactly() {
        let vk = VerifierKey::parse(VKEY).unwrap();
        let other_text = CHECKPOINT.replace("20852163", "20852164");
        assert_eq!(
            verify_line(LINE, &vk, &other_text),
            Err(CosignatureError::Invalid { name: NAME.into(), key_id: 0x786d922a })
        );
        // A changed timestamp changes the message.
        let mut sig = NoteSignature::parse_line(LINE.trim_end()).unwrap();
        sig.signature[7] ^= 1;
        assert!(matches!(
            verify_line(&sig.to_line(), &vk, CHECKPOINT),
            Err(CosignatureError::Invalid { .. })
        ));
        let other = VerifierKey::cosignature_v1("witness.test/w2", key().verifying_key().as_bytes()).unwrap();
        assert!(matches!(verify_line(LINE, &other, CHECKPOINT), Err(CosignatureError::OtherKey { .. })));
        let note_key = VerifierKey::ed25519(NAME, key().verifying_key().as_bytes()).unwrap();
        assert!(matches!(
            verify_signature(&note_key, CHECKPOINT, &[0; 72]),
            Err(CosignatureError::NotCosignatureKey(_))
        ));
        assert_eq!(verify_signature(&vk, CHECKPOINT, &[0; 71]), Err(CosignatureError::Length(71)));
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(verify_signature(&vk, CHECKPOINT, &huge), Err(CosignatureError::Timestamp(u64::MAX)));
        assert_eq!(sign(NAME, &key(), CHECKPOINT, 0), Err(CosignatureError::Timestamp(0)));
        assert_eq!(
            verify_line("- x", &vk, CHECKPOINT),
            Err(CosignatureError::BadLine(NoteError::BadSignatureLine {
                line: 1,
                problem: "does not start with an em dash and a space"
            }))
        );
    }

    #[test]
    fn cosigned_by_finds_each_witness_once() {
        let k2 = ed25519_dalek::SigningKey::from_bytes(&[0x43; 32]);
        let w1 = VerifierKey::parse(VKEY).unwrap();
        let w2 = VerifierKey::cosignature_v1("witness.test/w2", k2.verifying_key().as_bytes()).unwrap();
        let w3 = VerifierKey::cosignature_v1("witness.test/w3", &[0x11; 32]).ok();
        let s1 = sign(NAME, &key(), CHECKPOINT, TIME).unwrap();
        let s1_later = sign(NAME, &key(), CHECKPOINT, TIME + 5).unwrap();
        let s2 = sign("witness.test/w2", &k2, CHECKPOINT, TIME + 1).unwrap();
        let note = Note::new(CHECKPOINT, vec![s2.clone(), s1, s1_later]).unwrap();
        let mut witnesses = vec![w1.clone(), w2.clone()];
        witnesses.extend(w3);
        assert_eq!(
            cosigned_by(&note, &witnesses).unwrap(),
            vec![Cosigned { witness: 0, timestamp: TIME }, Cosigned { witness: 1, timestamp: TIME + 1 }]
        );
        let mut bad = s2;
        bad.signature[20] ^= 1;
        let note = Note::new(CHECKPOINT, vec![bad]).unwrap();
        assert_eq!(
            cosigned_by(&note, &[w1, w2.clone()]),
            Err(CosignatureError::Invalid { name: "witness.test/w2".into(), key_id: w2.key_id() })
        );
    }
}
