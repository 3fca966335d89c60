//! Key IDs and verifier keys (vkeys) of c2sp.org/signed-note, for the three signature types anchorlog uses.
//!
//! | type | what | key ID | public key material |
//! |---|---|---|---|
//! | `0x01` | Ed25519 note signature (RFC 8032 over the note text) | `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key)[:4]` | 32-byte Ed25519 key |
//! | `0x02` | ECDSA P-256 over SHA-256 of the text, ASN.1 DER (as transparency-dev/witness and Sigstore Rekor) | `SHA-256(SPKI DER)[:4]` | DER SubjectPublicKeyInfo |
//! | `0x04` | Ed25519 `cosignature/v1` (c2sp.org/tlog-cosignature) | `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4]` | 32-byte Ed25519 key |
//!
//! A vkey is `<name>+<8 hex digits of the key ID>+<base64(type ‖ public key material)>`. Parsing recomputes the
//! key ID and refuses a vkey whose stated ID differs, so a typo cannot silently make every signature "unknown".

use super::cosignature;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use sha2::{Digest, Sha256};
use std::fmt;

/// Signature type byte of Ed25519 note signatures (c2sp.org/signed-note).
pub const TYPE_ED25519: u8 = 0x01;
/// Signature type byte of ECDSA note signatures (c2sp.org/signed-note, as implemented by transparency-dev/witness).
pub const TYPE_ECDSA: u8 = 0x02;
/// Signature type byte of timestamped Ed25519 checkpoint cosignatures (c2sp.org/tlog-cosignature).
pub const TYPE_COSIGNATURE_V1: u8 = 0x04;

/// Longest key name accepted (the signed-note spec sets no limit; this keeps every line bounded).
pub const MAX_KEY_NAME_LEN: usize = 255;

/// Why a key name or a vkey string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VkeyError {
    /// The key name is empty, too long, or contains a space or `+`.
    #[error(
        "key name {0:?} is not valid: it must be 1 to 255 bytes of UTF-8 without spaces or '+', e.g. \
         \"witness.example.org/w1\""
    )]
    BadName(String),
    /// The vkey does not have the three `+`-separated parts.
    #[error("verifier key {0:?} is not <name>+<hex key ID>+<base64 key>")]
    Shape(String),
    /// The key ID part is not 8 lower-case hex digits.
    #[error("verifier key {vkey:?}: the key ID {id:?} is not 8 lower-case hex digits")]
    BadKeyId {
        /// The vkey.
        vkey: String,
        /// The key ID part.
        id: String,
    },
    /// The key part is not base64 or is empty.
    #[error("verifier key {0:?}: the key part is not base64 of (type byte ‖ public key)")]
    BadBase64(String),
    /// The signature type is not one anchorlog verifies.
    #[error(
        "verifier key {vkey:?}: signature type 0x{kind:02x} is not supported (0x01 Ed25519, 0x02 ECDSA P-256, \
         0x04 Ed25519 cosignature/v1 are)"
    )]
    UnsupportedType {
        /// The vkey.
        vkey: String,
        /// The type byte.
        kind: u8,
    },
    /// The public key material does not decode as a key of its type.
    #[error("verifier key {vkey:?}: {problem}")]
    BadKey {
        /// The vkey (or the key name when built from raw material).
        vkey: String,
        /// What is wrong with the key.
        problem: String,
    },
    /// The stated key ID is not the one the key name, type and key give.
    #[error(
        "verifier key {vkey:?}: the key ID {stated:08x} does not match the key (expected {computed:08x}); the vkey \
         was altered or copied wrongly"
    )]
    KeyIdMismatch {
        /// The vkey.
        vkey: String,
        /// The key ID written in the vkey.
        stated: u32,
        /// The key ID computed from the key.
        computed: u32,
    },
}

/// Checks a key name: non-empty, at most [`MAX_KEY_NAME_LEN`] bytes, no Unicode space, no `+`.
pub fn validate_key_name(name: &str) -> Result<(), VkeyError> {
    if name.is_empty()
        || name.len() > MAX_KEY_NAME_LEN
        || name.contains('+')
        || name.contains(char::is_whitespace)
    {
        return Err(VkeyError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The recommended key ID of c2sp.org/signed-note: `SHA-256(name ‖ 0x0A ‖ type ‖ key)[:4]`, big-endian.
/// Used for Ed25519 (`0x01`) and cosignature/v1 (`0x04`) keys.
pub fn key_id(name: &str, signature_type: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', signature_type]);
    h.update(public_key);
    first_four(&h.finalize())
}

/// The key ID of ECDSA (`0x02`) note signatures: `SHA-256(SubjectPublicKeyInfo DER)[:4]`, big-endian (it does
/// not cover the key name; the name is matched separately).
pub fn ecdsa_key_id(spki_der: &[u8]) -> u32 {
    first_four(&Sha256::digest(spki_der))
}

fn first_four(digest: &[u8]) -> u32 {
    let mut id = [0u8; 4];
    id.copy_from_slice(&digest[..4]);
    u32::from_be_bytes(id)
}

/// The public key inside a [`VerifierKey`].
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    Ed25519(ed25519_dalek::VerifyingKey),
    Ecdsa { spki_der: Vec<u8>, key: p256::ecdsa::VerifyingKey },
    CosignatureV1(ed25519_dalek::VerifyingKey),
}

/// A verifier key: key name, key ID and public key of one signature type.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    material: KeyMaterial,
}

impl fmt::Debug for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VerifierKey").field(&self.to_string()).finish()
    }
}

impl VerifierKey {
    /// An Ed25519 note-signature key (type `0x01`).
    pub fn ed25519(name: &str, public_key: &[u8; 32]) -> Result<Self, VkeyError> {
        validate_key_name(name)?;
        let key = ed25519_key(name, public_key)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, TYPE_ED25519, public_key),
            material: KeyMaterial::Ed25519(key),
        })
    }

    /// An ECDSA P-256 note-signature key (type `0x02`) from its DER SubjectPublicKeyInfo. The appliance signs its
    /// heads' notes with key name = log origin (docs/FORMAT.md §4).
    pub fn ecdsa(name: &str, spki_der: &[u8]) -> Result<Self, VkeyError> {
        validate_key_name(name)?;
        let key =
            p256::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|e| VkeyError::BadKey {
                vkey: name.to_owned(),
                problem: format!(
                    "not a DER SubjectPublicKeyInfo of an ECDSA P-256 key ({e}); only P-256 is supported"
                ),
            })?;
        Ok(Self {
            name: name.to_owned(),
            key_id: ecdsa_key_id(spki_der),
            material: KeyMaterial::Ecdsa { spki_der: spki_der.to_vec(), key },
        })
    }

    /// An Ed25519 cosignature/v1 key (type `0x04`): what a witness publishes.
    pub fn cosignature_v1(name: &str, public_key: &[u8; 32]) -> Result<Self, VkeyError> {
        validate_key_name(name)?;
        let key = ed25519_key(name, public_key)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, TYPE_COSIGNATURE_V1, public_key),
            material: KeyMaterial::CosignatureV1(key),
        })
    }

    /// Parses `<name>+<hex key ID>+<base64(type ‖ key)>`, recomputing and checking the key ID.
    pub fn parse(vkey: &str) -> Result<Self, VkeyError> {
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(VkeyError::Shape(vkey.to_owned()));
        };
        validate_key_name(name)?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(VkeyError::BadKeyId { vkey: vkey.to_owned(), id: id.to_owned() });
        }
        let stated = u32::from_str_radix(id, 16)
            .map_err(|_| VkeyError::BadKeyId { vkey: vkey.to_owned(), id: id.to_owned() })?;
        let raw = B64.decode(key).map_err(|_| VkeyError::BadBase64(vkey.to_owned()))?;
        let (&kind, material) = raw.split_first().ok_or_else(|| VkeyError::BadBase64(vkey.to_owned()))?;
        let bad_key = |problem: String| VkeyError::BadKey { vkey: vkey.to_owned(), problem };
        let ed = |material: &[u8]| -> Result<[u8; 32], VkeyError> {
            <[u8; 32]>::try_from(material)
                .map_err(|_| bad_key(format!("an Ed25519 key is 32 bytes, this one is {}", material.len())))
        };
        let parsed = match kind {
            TYPE_ED25519 => Self::ed25519(name, &ed(material)?),
            TYPE_ECDSA => Self::ecdsa(name, material),
            TYPE_COSIGNATURE_V1 => Self::cosignature_v1(name, &ed(material)?),
            other => return Err(VkeyError::UnsupportedType { vkey: vkey.to_owned(), kind: other }),
        }
        .map_err(|e| match e {
            VkeyError::BadKey { problem, .. } => bad_key(problem),
            other => other,
        })?;
        if parsed.key_id != stated {
            return Err(VkeyError::KeyIdMismatch { vkey: vkey.to_owned(), stated, computed: parsed.key_id });
        }
        Ok(parsed)
    }

    /// The key name (the second field of the signature lines this key makes).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key ID, big-endian.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signature type byte (`0x01`, `0x02` or `0x04`).
    pub fn signature_type(&self) -> u8 {
        match self.material {
            KeyMaterial::Ed25519(_) => TYPE_ED25519,
            KeyMaterial::Ecdsa { .. } => TYPE_ECDSA,
            KeyMaterial::CosignatureV1(_) => TYPE_COSIGNATURE_V1,
        }
    }

    /// The public key material as it appears in the vkey (after the type byte).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.material {
            KeyMaterial::Ed25519(k) | KeyMaterial::CosignatureV1(k) => k.to_bytes().to_vec(),
            KeyMaterial::Ecdsa { spki_der, .. } => spki_der.clone(),
        }
    }

    /// Whether a signature line's name and key ID designate this key (c2sp.org/signed-note: both must match;
    /// a line matching only one of them belongs to an unknown key).
    pub fn matches(&self, name: &str, key_id: u32) -> bool {
        self.name == name && self.key_id == key_id
    }

    /// Whether `signature` (the bytes after the 4-byte key ID) is a valid signature of note `text` by this key.
    ///
    /// For cosignature/v1 keys `signature` is `timestamp (8 bytes, big-endian) ‖ Ed25519 signature` over
    /// `cosignature/v1\ntime <timestamp>\n<text>` (use [`cosignature::verify_signature`] to also get the timestamp).
    pub fn verify(&self, text: &str, signature: &[u8]) -> bool {
        match &self.material {
            KeyMaterial::Ed25519(key) => match ed25519_dalek::Signature::from_slice(signature) {
                Ok(sig) => key.verify(text.as_bytes(), &sig).is_ok(),
                Err(_) => false,
            },
            KeyMaterial::Ecdsa { key, .. } => match p256::ecdsa::DerSignature::try_from(signature) {
                Ok(sig) => key.verify(text.as_bytes(), &sig).is_ok(),
                Err(_) => false,
            },
            KeyMaterial::CosignatureV1(_) => cosignature::verify_signature(self, text, signature).is_ok(),
        }
    }

    /// The Ed25519 key of an Ed25519 or cosignature/v1 vkey.
    pub(crate) fn ed25519_key(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &self.material {
            KeyMaterial::Ed25519(k) | KeyMaterial::CosignatureV1(k) => Some(k),
            KeyMaterial::Ecdsa { .. } => None,
        }
    }
}

impl fmt::Display for VerifierKey {
    /// The vkey string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut blob = vec![self.signature_type()];
        blob.extend_from_slice(&self.public_key());
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, B64.encode(blob))
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = VkeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn ed25519_key(name: &str, public_key: &[u8; 32]) -> Result<ed25519_dalek::VerifyingKey, VkeyError> {
    ed25519_dalek::VerifyingKey::from_bytes(public_key).map_err(|_| VkeyError::BadKey {
        vkey: name.to_owned(),
        problem: "the 32 bytes are not an Ed25519 public key (not a point on the curve)".to_owned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example of c2sp.org/signed-note ("Verifier keys", "Example").
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";

    /// Sigstore Rekor's production key as an ECDSA vkey, from transparency-dev/formats note/note_verifier_test.go.
    pub(crate) const REKOR_VKEY: &str = "rekor.sigstore.dev+c0d23d6a+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7nwZ4QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc=";

    #[test]
    fn spec_vkey_parses_and_round_trips() {
        let k = VerifierKey::parse(SPEC_VKEY).unwrap();
        assert_eq!(k.name(), "example.com/foo");
        assert_eq!(k.key_id(), 0x530d903a);
        assert_eq!(k.signature_type(), TYPE_ED25519);
        assert_eq!(k.to_string(), SPEC_VKEY);
        let pk = <[u8; 32]>::try_from(k.public_key()).unwrap();
        assert_eq!(key_id("example.com/foo", TYPE_ED25519, &pk), 0x530d903a);
    }

    #[test]
    fn rekor_ecdsa_key_id_is_sha256_of_spki() {
        let k = VerifierKey::parse(REKOR_VKEY).unwrap();
        assert_eq!(k.signature_type(), TYPE_ECDSA);
        assert_eq!(k.key_id(), 0xc0d23d6a);
        assert_eq!(k.public_key().len(), 91);
        assert_eq!(ecdsa_key_id(&k.public_key()), 0xc0d23d6a);
        assert_eq!(k.to_string(), REKOR_VKEY);
    }

    #[test]
    fn the_same_ed25519_key_has_distinct_ids_per_type() {
        let pk = *ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key().as_bytes();
        let note = VerifierKey::ed25519("w.example/1", &pk).unwrap();
        let cosig = VerifierKey::cosignature_v1("w.example/1", &pk).unwrap();
        assert_ne!(note.key_id(), cosig.key_id());
        assert_eq!(cosig.key_id(), key_id("w.example/1", 0x04, &pk));
        assert!(cosig.to_string().starts_with(&format!("w.example/1+{:08x}+B", cosig.key_id())));
        assert_eq!(VerifierKey::parse(&cosig.to_string()).unwrap(), cosig);
    }

    #[test]
    fn bad_vkeys_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("example.com/foo+530d903a", "is not <name>+<hex key ID>+<base64 key>"),
            ("+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key name \"\" is not valid"),
            ("a b+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key name \"a b\" is not valid"),
            (
                "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
                "is not 8 lower-case hex",
            ),
            ("example.com/foo+530d903a+!!!", "is not base64"),
            ("example.com/foo+530d903a+AwEB", "signature type 0x03 is not supported"),
            (
                "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKa",
                "an Ed25519 key is 32 bytes, this one is 23",
            ),
            (
                "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
                "the key ID 530d903b does not match the key (expected 530d903a)",
            ),
            (
                "example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
                "does not match the key",
            ),
            ("x+00000000+AjBZ", "only P-256 is supported"),
        ];
        for (vkey, expected) in cases {
            let err = VerifierKey::parse(vkey).unwrap_err().to_string();
            assert!(err.contains(expected), "{vkey}: {err}");
        }
    }

    #[test]
    fn key_names_follow_the_spec() {
        assert!(validate_key_name("witness.example.org/w1").is_ok());
        for bad in ["", "a+b", "a b", "a\tb", "a\u{2003}b"] {
            assert_eq!(validate_key_name(bad), Err(VkeyError::BadName(bad.to_owned())));
        }
        assert!(validate_key_name(&"x".repeat(256)).is_err());
    }
}
