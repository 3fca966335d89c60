//! Ed25519 signing in a PKCS#11 token (`CKM_EDDSA`, PKCS#11 3.0; SoftHSM 2.6 has it): the witness's cosigning
//! key. The key pair is generated inside the token (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, curve OID 1.3.101.112),
//! sensitive and never extractable, like the ECDSA head key of the parent module, whose module loading,
//! slot lookup, login and error mapping this reuses.
//!
//! Ed25519 signs the message itself (no host-side pre-hash). Every signature the token returns is verified on
//! the host against the key read at open, so a faulty device cannot hand out a bad cosignature.

use super::{
    device, fake_sign, find_private_key, key_templates, read_key_attributes, rv_means_session_lost,
    KeyAttributes, Module, Pkcs11Error, Pkcs11Settings, KEY_ID_LEN,
};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ed25519_dalek::Verifier as _;
use std::fmt;
use zeroize::Zeroizing;

/// DER of the curve OID id-Ed25519 (1.3.101.112), the `CKA_EC_PARAMS` of generated keys.
const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER PrintableString "edwards25519", the other `CKA_EC_PARAMS` form PKCS#11 3.0 allows for the same curve.
const ED25519_NAME_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// What the mechanisms are needed for (named in [`Pkcs11Error::MechanismNotSupported`]).
const PURPOSE: &str = "Ed25519 witness cosignatures";

/// A logged-in session with the Ed25519 key found in it.
struct Connection {
    session: Session,
    private: ObjectHandle,
    public_key: [u8; 32],
}

/// An Ed25519 key in a PKCS#11 token. Send, not Sync: keep it on one thread.
pub struct Pkcs11Ed25519Signer {
    // Field order matters: the session must be closed before the module is finalised.
    connection: Option<Connection>,
    module: Module,
    settings: Pkcs11Settings,
    /// Kept for logging in again after a lost session; zeroised on drop, never printed.
    pin: Zeroizing<String>,
    verifying_key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for Pkcs11Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so the PIN can never end up in a log line.
        f.debug_struct("Pkcs11Ed25519Signer")
            .field("module", &self.module.path)
            .field("token_label", &self.settings.token_label)
            .field("key_label", &self.settings.key_label)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Ed25519Signer {
    /// Loads the module, logs in to the token and finds the Ed25519 key pair labelled `settings.key_label`.
    pub fn open(settings: &Pkcs11Settings, pin: &Zeroizing<String>) -> Result<Self, Pkcs11Error> {
        let module = Module::load(&settings.module)?;
        let connection = connect(&module, settings, pin)?;
        let verifying_key =
            ed25519_dalek::VerifyingKey::from_bytes(&connection.public_key).map_err(|_| {
                Pkcs11Error::WrongEd25519Key {
                    label: settings.key_label.clone(),
                    detail: "CKA_EC_POINT is not a valid Ed25519 public key".to_owned(),
                }
            })?;
        Ok(Self {
            connection: Some(connection),
            module,
            settings: settings.clone(),
            pin: pin.clone(),
            verifying_key,
        })
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.verifying_key.to_bytes()
    }

    /// Signs `message` with `CKM_EDDSA` (pure Ed25519) and checks the signature on the host. If the session
    /// was lost it reconnects once.
    pub fn sign(&mut self, message: &[u8]) -> Result<[u8; 64], Pkcs11Error> {
        let raw = match self.sign_raw(message) {
            Err(CkError::Pkcs11(rv, _)) if rv_means_session_lost(rv) => {
                self.reconnect()?;
                self.sign_raw(message).map_err(|e| device("C_Sign", e))?
            }
            other => other.map_err(|e| device("C_Sign", e))?,
        };
        let signature = <[u8; 64]>::try_from(raw.as_slice()).map_err(|_| Pkcs11Error::BadSignature)?;
        self.verifying_key
            .verify(message, &ed25519_dalek::Signature::from_bytes(&signature))
            .map_err(|_| Pkcs11Error::BadSignature)?;
        Ok(signature)
    }

    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, CkError> {
        match &self.connection {
            Some(c) => {
                let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                c.session.sign(&mechanism, c.private, message)
            }
            None => Err(CkError::Pkcs11(RvError::SessionHandleInvalid, fake_sign())),
        }
    }

    /// Drops the old session and opens a fresh, logged-in one; refuses if the key changed.
    fn reconnect(&mut self) -> Result<(), Pkcs11Error> {
        self.connection = None;
        let connection = match connect(&self.module, &self.settings, &self.pin) {
            Ok(c) => c,
            Err(Pkcs11Error::TokenNotFound { label, .. }) => {
                return Err(Pkcs11Error::Device {
                    operation: "reconnect",
                    reason: format!("token '{label}' is no longer present"),
                    retryable: true,
                })
            }
            Err(e) => return Err(e),
        };
        if connection.public_key != self.verifying_key.to_bytes() {
            return Err(Pkcs11Error::KeyChanged { label: self.settings.key_label.clone() });
        }
        self.connection = Some(connection);
        Ok(())
    }

    /// Reads the private key's label, id and protection flags back from the token.
    pub fn key_attributes(&self) -> Result<KeyAttributes, Pkcs11Error> {
        let c = self.connection.as_ref().ok_or(Pkcs11Error::Device {
            operation: "C_GetAttributeValue",
            reason: "no open session (the last reconnect failed); sign again to reconnect".to_owned(),
            retryable: true,
        })?;
        read_key_attributes(&c.session, c.private, &self.settings.key_label)
    }

    /// A one-line description without secrets.
    pub fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}' Ed25519 key '{}' via {}",
            self.settings.token_label,
            self.settings.key_label,
            self.settings.module.display()
        )
    }
}

/// Test-only fault doubles (feature `fault-injection`, never in a release build; the parent module's `faults` has
/// the ECDSA signer's): what a token reset or a failed reopen does to the signer, for softhsm-tests/pkcs11.rs.
#[cfg(feature = "fault-injection")]
impl Pkcs11Ed25519Signer {
    /// Logs the signer's session out, as a token reset does; the next [`Pkcs11Ed25519Signer::sign`] must log in
    /// again.
    pub fn fault_log_out(&self) -> Result<(), Pkcs11Error> {
        let c = self.connection.as_ref().expect("the signer has a session");
        c.session.logout().map_err(|e| device("C_Logout", e))
    }

    /// Forgets the signer's session, as if opening it again had failed; the next [`Pkcs11Ed25519Signer::sign`]
    /// must open one.
    pub fn fault_drop_session(&mut self) {
        self.connection = None;
    }
}

/// Finds the token, logs in and finds the Ed25519 key pair.
fn connect(
    module: &Module,
    settings: &Pkcs11Settings,
    pin: &Zeroizing<String>,
) -> Result<Connection, Pkcs11Error> {
    let slot = module.find_slot(&settings.token_label)?;
    module.require_mechanism(slot, MechanismType::EDDSA, "CKM_EDDSA", PURPOSE)?;
    let session = module.user_session(slot, pin)?;
    let label = &settings.key_label;
    let private = find_private_key(&session, label).map_err(|e| match e {
        Pkcs11Error::KeyNotFound { label } => Pkcs11Error::Ed25519KeyNotFound { label },
        other => other,
    })?;
    check_private_key(&session, private, label)?;
    let public_key = read_public_key(&session, private, label)?;
    Ok(Connection { session, private, public_key })
}

/// Checks that the private key is an Edwards-curve (Ed25519) key that may sign.
fn check_private_key(session: &Session, handle: ObjectHandle, label: &str) -> Result<(), Pkcs11Error> {
    let wrong = |detail: String| Pkcs11Error::WrongEd25519Key { label: label.to_owned(), detail };
    let attrs = session
        .get_attributes(handle, &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::Sign])
        .map_err(|e| device("C_GetAttributeValue", e))?;
    let (mut key_type, mut params, mut can_sign) = (None, None, false);
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Sign(s) => can_sign = s,
            _ => {}
        }
    }
    match key_type {
        Some(t) if t == KeyType::EC_EDWARDS => {}
        Some(t) => return Err(wrong(format!("key type is {t}, expected CKK_EC_EDWARDS"))),
        None => return Err(wrong("the token does not report CKA_KEY_TYPE".to_owned())),
    }
    check_params(params.as_deref()).map_err(wrong)?;
    if !can_sign {
        return Err(wrong("CKA_SIGN is false on the private key".to_owned()));
    }
    Ok(())
}

/// Accepts the two encodings of the Ed25519 curve in `CKA_EC_PARAMS` (and refuses Ed448).
fn check_params(params: Option<&[u8]>) -> Result<(), String> {
    match params {
        Some(p) if p == ED25519_OID_PARAMS || p == ED25519_NAME_PARAMS => Ok(()),
        Some(p) => Err(format!(
            "CKA_EC_PARAMS is {}, expected Ed25519 ({} or {})",
            hex::encode(p),
            hex::encode(ED25519_OID_PARAMS),
            hex::encode(ED25519_NAME_PARAMS)
        )),
        None => Err("the token does not report CKA_EC_PARAMS".to_owned()),
    }
}

/// Reads the public key object matching the private key (same label and CKA_ID): its 32-byte point.
fn read_public_key(session: &Session, private: ObjectHandle, label: &str) -> Result<[u8; 32], Pkcs11Error> {
    let mut template =
        vec![Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Label(label.as_bytes().to_vec())];
    if let Some(id) = super::bytes_attribute(session, private, AttributeType::Id)? {
        template.push(Attribute::Id(id));
    }
    let found = session.find_objects(&template).map_err(|e| device("C_FindObjects", e))?;
    let public = match found.as_slice() {
        [] => return Err(Pkcs11Error::PublicKeyMissing { label: label.to_owned() }),
        [one] => *one,
        many => return Err(Pkcs11Error::DuplicateKey { label: label.to_owned(), count: many.len() }),
    };
    let point = super::bytes_attribute(session, public, AttributeType::EcPoint)?.ok_or_else(|| {
        Pkcs11Error::WrongEd25519Key {
            label: label.to_owned(),
            detail: "the public key has no CKA_EC_POINT".to_owned(),
        }
    })?;
    parse_point(&point).ok_or_else(|| Pkcs11Error::WrongEd25519Key {
        label: label.to_owned(),
        detail: format!(
            "CKA_EC_POINT ({} bytes) is not a 32-byte Ed25519 key, neither DER-wrapped nor bare",
            point.len()
        ),
    })
}

/// `CKA_EC_POINT` of an Edwards key: PKCS#11 3.0 says a DER OCTET STRING (`04 20 ‖ key`, what SoftHSM returns);
/// some tokens return the bare 32 bytes.
fn parse_point(raw: &[u8]) -> Option<[u8; 32]> {
    match raw {
        [0x04, 0x20, key @ ..] if key.len() == 32 => <[u8; 32]>::try_from(key).ok(),
        key if key.len() == 32 => <[u8; 32]>::try_from(key).ok(),
        _ => None,
    }
}

/// Creates an Ed25519 key pair inside the token (token object; private: sensitive, not extractable, sign only;
/// public: verify), with the label and a random `CKA_ID`. Refuses with `KeyExists` if a private key with the
/// label exists.
pub fn generate_key(
    settings: &Pkcs11Settings,
    pin: &Zeroizing<String>,
) -> Result<KeyAttributes, Pkcs11Error> {
    let module = Module::load(&settings.module)?;
    let slot = module.find_slot(&settings.token_label)?;
    module.require_mechanism(
        slot,
        MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
        "CKM_EC_EDWARDS_KEY_PAIR_GEN",
        PURPOSE,
    )?;
    module.require_mechanism(slot, MechanismType::EDDSA, "CKM_EDDSA", PURPOSE)?;
    let session = module.user_session(slot, pin)?;
    let label = &settings.key_label;
    match find_private_key(&session, label) {
        Err(Pkcs11Error::KeyNotFound { .. }) => {}
        Ok(_) | Err(Pkcs11Error::DuplicateKey { .. }) => {
            return Err(Pkcs11Error::KeyExists { label: label.clone() })
        }
        Err(e) => return Err(e),
    }
    let id = session.generate_random_vec(KEY_ID_LEN).map_err(|e| device("C_GenerateRandom", e))?;
    // The ECDSA templates with the Ed25519 curve: the same protection attributes for both key kinds.
    let (mut public, private) = key_templates(label, &id);
    for attr in &mut public {
        if let Attribute::EcParams(p) = attr {
            *p = ED25519_OID_PARAMS.to_vec();
        }
    }
    let (_public, private) = session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .map_err(|e| device("C_GenerateKeyPair", e))?;
    read_key_attributes(&session, private, label)
}

#[cfg(test)]
mod tests {
    //! Parsing only; signing on a real SoftHSM token is tested in softhsm-tests/pkcs11.rs (so that a plain
    //! `cargo test` passes without SoftHSM configured).
    use super::*;

    #[test]
    fn ec_point_forms() {
        let key = [7u8; 32];
        let mut der = vec![0x04, 0x20];
        der.extend_from_slice(&key);
        assert_eq!(parse_point(&der), Some(key));
        assert_eq!(parse_point(&key), Some(key));
        assert_eq!(parse_point(&[0x04, 0x21, 1]), None);
        assert!(check_params(Some(ED25519_NAME_PARAMS)).is_ok());
        assert_eq!(
            check_params(Some(&[0x06, 0x03, 0x2b, 0x65, 0x71])),
            Err(format!(
                "CKA_EC_PARAMS is 06032b6571, expected Ed25519 (06032b6570 or {})",
                hex::encode(ED25519_NAME_PARAMS)
            ))
        );
    }
}
