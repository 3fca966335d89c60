//! PKCS#11 head-signing backend (ECDSA P-256 through `cryptoki`).
//!
//! The signed message is hashed with SHA-256 on the host and the 32-byte digest is signed with
//! `CKM_ECDSA`. Hashed mechanisms such as `CKM_ECDSA_SHA256` are deliberately not used: SoftHSM
//! 2.6.1 and OpenSC-driven tokens do not implement them, while every token implements plain
//! `CKM_ECDSA`. The raw `r‖s` the token returns is normalised to low-S, verified on the host
//! against the token's public key (so a faulty device can never produce a bad head signature
//! unnoticed) and returned DER-encoded, which is what `openssl dgst -verify` expects.
//!
//! # Process-global state
//!
//! `C_Initialize`/`C_Finalize` act on the whole process. [`Pkcs11Signer::open`],
//! [`generate_key`] and [`init_token`] each load the module, initialise it and finalise it
//! again when they are done (the signer when it is dropped). They must therefore be called
//! one at a time, never concurrently. If the module is already initialised by someone else in
//! this process, `CKR_CRYPTOKI_ALREADY_INITIALIZED` is accepted and that owner stays
//! responsible for `C_Finalize`.
//!
//! Modules such as SoftHSM read their configuration (`SOFTHSM2_CONF`) from the environment at
//! `C_Initialize`; this module never changes the environment, the caller's launcher must.

pub mod ed25519;
/// Test-only fault doubles on a live signer (feature `fault-injection`: never in a release build).
#[cfg(feature = "fault-injection")]
pub mod faults;

use std::fmt;
use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// DER encoding of the named-curve OID prime256v1 (1.2.840.10045.3.1.7), as found in `CKA_EC_PARAMS`.
const P256_EC_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What the ECDSA mechanisms are needed for (named in [`Pkcs11Error::MechanismNotSupported`]).
const ECDSA_PURPOSE: &str = "ECDSA P-256 signing";

/// Length in bytes of the random `CKA_ID` given to generated keys.
const KEY_ID_LEN: u32 = 16;

/// Longest token label PKCS#11 can store (`CK_TOKEN_INFO.label` is 32 bytes, space padded).
const MAX_TOKEN_LABEL_LEN: usize = 32;

/// Where to find the signing key: the module, the token and the key inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// Path of the vendor's PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// `CKA_LABEL` of the token. Slots are found by this label because slot ids are not stable.
    pub token_label: String,
    /// `CKA_LABEL` shared by the private and the public key object.
    pub key_label: String,
}

/// Everything that can go wrong talking to a PKCS#11 token.
///
/// No variant ever carries a PIN.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module file does not exist.
    #[error(
        "PKCS#11 module {path} does not exist (or is not a file): install softhsm2 (Debian: apt-get install softhsm2) \
         or the HSM vendor's PKCS#11 module, and set the module path to it"
    )]
    ModuleNotFound {
        /// The configured module path.
        path: PathBuf,
    },
    /// The module file exists but could not be loaded as a PKCS#11 library.
    #[error("cannot load PKCS#11 module {path}: {reason}; check that it is a PKCS#11 shared library for this architecture")]
    ModuleLoad {
        /// The configured module path.
        path: PathBuf,
        /// What the dynamic loader or the module said.
        reason: String,
    },
    /// `C_Initialize` failed (for SoftHSM usually a missing or unreadable `SOFTHSM2_CONF`).
    #[error(
        "PKCS#11 module {path} failed to initialise ({reason}); for SoftHSM check that \
         SOFTHSM2_CONF names a readable config whose tokendir exists and is writable"
    )]
    ModuleInit {
        /// The configured module path.
        path: PathBuf,
        /// The `CKR_*` name.
        reason: String,
    },
    /// No initialised token carries the configured label.
    #[error(
        "no PKCS#11 token labelled '{label}' (initialised tokens: {}); check the token label \
         in the configuration, or create the token (`softhsm2-util --init-token --free --label ...`)",
        display_labels(.available)
    )]
    TokenNotFound {
        /// The configured token label.
        label: String,
        /// Labels of the initialised tokens the module offers.
        available: Vec<String>,
    },
    /// `init_token` was asked to create a token whose label is already taken.
    #[error("a PKCS#11 token labelled '{label}' already exists; choose another label or use that token")]
    TokenExists {
        /// The requested token label.
        label: String,
    },
    /// `init_token` found no slot with an uninitialised token.
    #[error("the PKCS#11 module offers no slot with an uninitialised token; free a slot or initialise a token with the vendor tool")]
    NoFreeSlot,
    /// The token label is empty or longer than PKCS#11 allows.
    #[error("invalid token label '{label}': {reason}")]
    InvalidTokenLabel {
        /// The rejected label.
        label: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The token rejected the PIN (`CKR_PIN_INCORRECT`, `CKR_PIN_INVALID`, `CKR_PIN_LEN_RANGE`).
    #[error(
        "the token rejected the user PIN: check the configured PIN (repeated failures may lock the token)"
    )]
    WrongPin,
    /// The user PIN is locked or expired (`CKR_PIN_LOCKED`, `CKR_PIN_EXPIRED`).
    #[error("the token's user PIN is locked or expired: have the security officer reset it with the SO PIN")]
    PinLocked,
    /// A new PIN was refused by the token while initialising it (length or characters).
    #[error("the token refused the new {which} PIN ({reason}); SoftHSM accepts 4 to 255 bytes")]
    InvalidNewPin {
        /// `"SO"` or `"user"`.
        which: &'static str,
        /// The `CKR_*` name.
        reason: String,
    },
    /// No private key with the configured label exists on the token.
    #[error("no private key labelled '{label}' on the token: run `anchorlog keys generate` to create one")]
    KeyNotFound {
        /// The configured key label.
        label: String,
    },
    /// The private key exists but its public key object does not.
    #[error(
        "the private key labelled '{label}' has no matching public key object (same label and CKA_ID) \
         on the token; re-create the key pair with `anchorlog keys generate` under a new label"
    )]
    PublicKeyMissing {
        /// The configured key label.
        label: String,
    },
    /// More than one private key carries the configured label, so the choice would be a guess.
    #[error("{count} private keys are labelled '{label}' on the token; give the signing key a unique label")]
    DuplicateKey {
        /// The configured key label.
        label: String,
        /// How many private keys matched.
        count: usize,
    },
    /// `generate_key` refuses to create a second key under the same label.
    #[error(
        "a private key labelled '{label}' already exists on the token; use it, or generate under a new label"
    )]
    KeyExists {
        /// The requested key label.
        label: String,
    },
    /// The token lacks a mechanism this backend needs.
    #[error("the token does not support {mechanism}, which anchorlog needs for {purpose}; use another token or module")]
    MechanismNotSupported {
        /// The `CKM_*` name.
        mechanism: &'static str,
        /// What it is needed for, e.g. "ECDSA P-256 signing".
        purpose: &'static str,
    },
    /// The key is not an EC P-256 signing key.
    #[error("key '{label}' is not usable as an ECDSA P-256 signing key: {detail}")]
    WrongKeyType {
        /// The configured key label.
        label: String,
        /// What exactly is wrong.
        detail: String,
    },
    /// No Ed25519 private key with the configured label exists on the token (witness cosigning key).
    #[error("no private key labelled '{label}' on the token: run `anchorlog witness keygen` to create one")]
    Ed25519KeyNotFound {
        /// The configured key label.
        label: String,
    },
    /// The key is not an Ed25519 signing key.
    #[error("key '{label}' is not usable as an Ed25519 signing key: {detail}")]
    WrongEd25519Key {
        /// The configured key label.
        label: String,
        /// What exactly is wrong.
        detail: String,
    },
    /// After a reconnect the key under the label is a different key than before.
    #[error("the key labelled '{label}' changed while anchorlog was running; restart so the new key is checked against the log")]
    KeyChanged {
        /// The configured key label.
        label: String,
    },
    /// Any other PKCS#11 failure.
    #[error("PKCS#11 {operation} failed: {reason}")]
    Device {
        /// The PKCS#11 function or step that failed.
        operation: &'static str,
        /// The `CKR_*` name (or the binding's error text).
        reason: String,
        /// Whether the same call may succeed later (device or session trouble).
        retryable: bool,
    },
    /// The device returned a signature that does not verify under its own public key.
    #[error("the token returned an ECDSA signature that does not verify with its public key (device fault)")]
    BadSignature,
}

impl Pkcs11Error {
    /// Whether retrying later can help: device and session trouble yes, configuration errors no.
    pub fn is_retryable(&self) -> bool {
        match self {
            Pkcs11Error::Device { retryable, .. } => *retryable,
            Pkcs11Error::BadSignature => true,
            Pkcs11Error::ModuleNotFound { .. }
            | Pkcs11Error::ModuleLoad { .. }
            | Pkcs11Error::ModuleInit { .. }
            | Pkcs11Error::TokenNotFound { .. }
            | Pkcs11Error::TokenExists { .. }
            | Pkcs11Error::NoFreeSlot
            | Pkcs11Error::InvalidTokenLabel { .. }
            | Pkcs11Error::WrongPin
            | Pkcs11Error::PinLocked
            | Pkcs11Error::InvalidNewPin { .. }
            | Pkcs11Error::KeyNotFound { .. }
            | Pkcs11Error::PublicKeyMissing { .. }
            | Pkcs11Error::DuplicateKey { .. }
            | Pkcs11Error::KeyExists { .. }
            | Pkcs11Error::MechanismNotSupported { .. }
            | Pkcs11Error::WrongKeyType { .. }
            | Pkcs11Error::Ed25519KeyNotFound { .. }
            | Pkcs11Error::WrongEd25519Key { .. }
            | Pkcs11Error::KeyChanged { .. } => false,
        }
    }
}

/// Renders the list of available token labels for [`Pkcs11Error::TokenNotFound`].
fn display_labels(labels: &[String]) -> String {
    if labels.is_empty() {
        "none".to_owned()
    } else {
        labels.iter().map(|l| format!("'{l}'")).collect::<Vec<_>>().join(", ")
    }
}

/// The `CKR_*` name of a return value, e.g. `CKR_SESSION_HANDLE_INVALID`.
///
/// cryptoki's `Display` is a paragraph of spec prose; operators search for the constant name.
fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(v) => format!("CKR_VENDOR_DEFINED (0x{v:08x})"),
        RvError::UnknownErrorCode(v) => format!("unknown CKR (0x{v:08x})"),
        other => {
            // The variant names are the constant names in CamelCase.
            let camel = format!("{other:?}");
            let mut name = String::from("CKR");
            for c in camel.chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            name
        }
    }
}

/// Return values after which the same call may succeed later or after a reconnect.
fn rv_is_retryable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::SessionCount
            | RvError::UserNotLoggedIn
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::FunctionFailed
            | RvError::GeneralError
            | RvError::HostMemory
            | RvError::CantLock
            | RvError::FunctionCanceled
            | RvError::OperationActive
            | RvError::CryptokiNotInitialized
    )
}

/// Return values that mean the session (or its login, or its handles) is gone, so the signer
/// should open a fresh session and log in again before giving up.
fn rv_means_session_lost(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::DeviceError
            | RvError::UserNotLoggedIn
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::CryptokiNotInitialized
    )
}

/// Wraps a cryptoki failure of `operation` as [`Pkcs11Error::Device`].
fn device(operation: &'static str, err: CkError) -> Pkcs11Error {
    match err {
        CkError::Pkcs11(rv, _) => {
            Pkcs11Error::Device { operation, reason: ckr_name(rv), retryable: rv_is_retryable(rv) }
        }
        other => Pkcs11Error::Device { operation, reason: other.to_string(), retryable: false },
    }
}

/// Maps a `C_Login` failure; "already logged in" is success because login is per application.
fn login_result(result: Result<(), CkError>) -> Result<(), Pkcs11Error> {
    match result {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
            Err(Pkcs11Error::WrongPin)
        }
        Err(CkError::Pkcs11(RvError::PinLocked | RvError::PinExpired, _)) => Err(Pkcs11Error::PinLocked),
        Err(e) => Err(device("C_Login", e)),
    }
}

/// Logs the user in on `session` with `pin`.
fn login_user(session: &Session, pin: &Zeroizing<String>) -> Result<(), Pkcs11Error> {
    // AuthPin is a secrecy::SecretString: the copy is zeroised when it is dropped.
    let auth = AuthPin::from(pin.as_str());
    login_result(session.login(UserType::User, Some(&auth)))
}

/// A loaded and initialised module. Finalises on drop if this value initialised it.
///
/// Sessions hold clones of the inner `Pkcs11`; owners must drop their sessions before this
/// value (declare the session field first), so no session outlives `C_Finalize`.
struct Module {
    ctx: Pkcs11,
    path: PathBuf,
    /// False when `C_Initialize` said someone else in this process already initialised it.
    owns_init: bool,
}

impl Module {
    /// Loads `path` (checking that it exists first) and runs `C_Initialize(CKF_OS_LOCKING_OK)`.
    fn load(path: &Path) -> Result<Self, Pkcs11Error> {
        if !path.is_file() {
            return Err(Pkcs11Error::ModuleNotFound { path: path.to_path_buf() });
        }
        let ctx = Pkcs11::new(path)
            .map_err(|e| Pkcs11Error::ModuleLoad { path: path.to_path_buf(), reason: e.to_string() })?;
        let owns_init = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(CkError::Pkcs11(rv, _)) => {
                return Err(Pkcs11Error::ModuleInit { path: path.to_path_buf(), reason: ckr_name(rv) })
            }
            Err(e) => {
                return Err(Pkcs11Error::ModuleInit { path: path.to_path_buf(), reason: e.to_string() })
            }
        };
        Ok(Module { ctx, path: path.to_path_buf(), owns_init })
    }

    /// Labels of all initialised tokens, with their slots.
    fn initialized_tokens(&self) -> Result<Vec<(Slot, String)>, Pkcs11Error> {
        let slots = self.ctx.get_slots_with_initialized_token().map_err(|e| device("C_GetSlotList", e))?;
        slots
            .into_iter()
            .map(|slot| {
                let info = self.ctx.get_token_info(slot).map_err(|e| device("C_GetTokenInfo", e))?;
                Ok((slot, info.label().to_owned()))
            })
            .collect()
    }

    /// The slot whose token carries `label` (slot ids change, e.g. SoftHSM reassigns them).
    fn find_slot(&self, label: &str) -> Result<Slot, Pkcs11Error> {
        let tokens = self.initialized_tokens()?;
        if let Some((slot, _)) = tokens.iter().find(|(_, l)| l == label) {
            return Ok(*slot);
        }
        Err(Pkcs11Error::TokenNotFound {
            label: label.to_owned(),
            available: tokens.into_iter().map(|(_, l)| l).collect(),
        })
    }

    /// Fails with [`Pkcs11Error::MechanismNotSupported`] unless the slot offers `mechanism`.
    fn require_mechanism(
        &self,
        slot: Slot,
        mechanism: MechanismType,
        name: &'static str,
        purpose: &'static str,
    ) -> Result<(), Pkcs11Error> {
        let list = self.ctx.get_mechanism_list(slot).map_err(|e| device("C_GetMechanismList", e))?;
        if list.contains(&mechanism) {
            Ok(())
        } else {
            Err(Pkcs11Error::MechanismNotSupported { mechanism: name, purpose })
        }
    }

    /// Opens a read-write session on `slot` and logs the user in.
    fn user_session(&self, slot: Slot, pin: &Zeroizing<String>) -> Result<Session, Pkcs11Error> {
        let session = self.ctx.open_rw_session(slot).map_err(|e| device("C_OpenSession", e))?;
        login_user(&session, pin)?;
        Ok(session)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.owns_init {
            // Nothing useful can be done about a failing C_Finalize while dropping.
            let _ = self.ctx.clone().finalize();
        }
    }
}

/// The private key handle plus what was learned about its public half.
struct FoundKey {
    private: ObjectHandle,
    verifying_key: VerifyingKey,
}

/// Finds exactly one private key labelled `label`.
fn find_private_key(session: &Session, label: &str) -> Result<ObjectHandle, Pkcs11Error> {
    let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.as_bytes().to_vec())];
    let found = session.find_objects(&template).map_err(|e| device("C_FindObjects", e))?;
    match found.as_slice() {
        [] => Err(Pkcs11Error::KeyNotFound { label: label.to_owned() }),
        [one] => Ok(*one),
        many => Err(Pkcs11Error::DuplicateKey { label: label.to_owned(), count: many.len() }),
    }
}

/// Reads one byte-string attribute, `None` when the token does not report it.
fn bytes_attribute(
    session: &Session,
    handle: ObjectHandle,
    kind: AttributeType,
) -> Result<Option<Vec<u8>>, Pkcs11Error> {
    let attrs = session.get_attributes(handle, &[kind]).map_err(|e| device("C_GetAttributeValue", e))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Id(v) | Attribute::EcParams(v) | Attribute::EcPoint(v) | Attribute::Label(v) => Some(v),
        _ => None,
    }))
}

/// Checks that the private key is an EC key on P-256 that may sign.
fn check_private_key(session: &Session, handle: ObjectHandle, label: &str) -> Result<(), Pkcs11Error> {
    let wrong = |detail: String| Pkcs11Error::WrongKeyType { label: label.to_owned(), detail };
    let attrs = session
        .get_attributes(handle, &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::Sign])
        .map_err(|e| device("C_GetAttributeValue", e))?;
    let mut key_type = None;
    let mut params = None;
    let mut can_sign = false;
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Sign(s) => can_sign = s,
            _ => {}
        }
    }
    match key_type {
        Some(t) if t == KeyType::EC => {}
        Some(t) => return Err(wrong(format!("key type is {t}, expected CKK_EC"))),
        None => return Err(wrong("the token does not report CKA_KEY_TYPE".to_owned())),
    }
    check_ec_params(params.as_deref()).map_err(wrong)?;
    if !can_sign {
        return Err(wrong("CKA_SIGN is false on the private key".to_owned()));
    }
    Ok(())
}

/// Accepts only the named curve prime256v1 in `CKA_EC_PARAMS`.
fn check_ec_params(params: Option<&[u8]>) -> Result<(), String> {
    match params {
        Some(p) if p == P256_EC_PARAMS => Ok(()),
        Some(p) => Err(format!(
            "CKA_EC_PARAMS is {}, expected the P-256 curve OID {}",
            hex::encode(p),
            hex::encode(P256_EC_PARAMS)
        )),
        None => Err("the token does not report CKA_EC_PARAMS".to_owned()),
    }
}

/// Parses `CKA_EC_POINT` in either encoding seen in the wild: the spec's DER OCTET STRING
/// around the SEC1 point (67 bytes for P-256, what SoftHSM returns) or the bare SEC1 point.
fn parse_ec_point(raw: &[u8]) -> Result<VerifyingKey, String> {
    use der::Decode;
    // Try the DER form first, then the bare one: a bare point can look like a short DER
    // header, but then its inner bytes are no valid point, so the fallback catches it.
    if let Ok(octets) = der::asn1::OctetStringRef::from_der(raw) {
        if let Ok(key) = VerifyingKey::from_sec1_bytes(octets.as_bytes()) {
            return Ok(key);
        }
    }
    VerifyingKey::from_sec1_bytes(raw).map_err(|_| {
        format!("CKA_EC_POINT ({} bytes) is not a P-256 point, neither DER-wrapped nor bare", raw.len())
    })
}

/// Finds the public key object matching the private key (same label and CKA_ID) and parses it.
fn read_public_key(
    session: &Session,
    private: ObjectHandle,
    label: &str,
) -> Result<VerifyingKey, Pkcs11Error> {
    let mut template =
        vec![Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Label(label.as_bytes().to_vec())];
    // Matching on CKA_ID too pairs the halves correctly even if labels were reused.
    if let Some(id) = bytes_attribute(session, private, AttributeType::Id)? {
        template.push(Attribute::Id(id));
    }
    let found = session.find_objects(&template).map_err(|e| device("C_FindObjects", e))?;
    let public = match found.as_slice() {
        [] => return Err(Pkcs11Error::PublicKeyMissing { label: label.to_owned() }),
        [one] => *one,
        many => return Err(Pkcs11Error::DuplicateKey { label: label.to_owned(), count: many.len() }),
    };
    let wrong = |detail: String| Pkcs11Error::WrongKeyType { label: label.to_owned(), detail };
    let params = bytes_attribute(session, public, AttributeType::EcParams)?;
    check_ec_params(params.as_deref()).map_err(wrong)?;
    let point = bytes_attribute(session, public, AttributeType::EcPoint)?
        .ok_or_else(|| wrong("the public key has no CKA_EC_POINT".to_owned()))?;
    parse_ec_point(&point).map_err(wrong)
}

/// Finds and validates the signing key pair labelled `label`.
fn find_key(session: &Session, label: &str) -> Result<FoundKey, Pkcs11Error> {
    let private = find_private_key(session, label)?;
    check_private_key(session, private, label)?;
    let verifying_key = read_public_key(session, private, label)?;
    Ok(FoundKey { private, verifying_key })
}

/// Reads the security-relevant attributes of a private key.
fn read_key_attributes(
    session: &Session,
    handle: ObjectHandle,
    label: &str,
) -> Result<KeyAttributes, Pkcs11Error> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
                AttributeType::Local,
                AttributeType::Sign,
            ],
        )
        .map_err(|e| device("C_GetAttributeValue", e))?;
    // Attributes the token does not report are absent (cryptoki drops them). Default each
    // flag to its unsafe value so an auditor never sees a protection the token did not assert.
    let mut out = KeyAttributes {
        label: label.to_owned(),
        id_hex: String::new(),
        sensitive: false,
        extractable: true,
        always_sensitive: false,
        never_extractable: false,
        local: false,
        can_sign: false,
    };
    for attr in attrs {
        match attr {
            Attribute::Label(v) => out.label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::Id(v) => out.id_hex = hex::encode(v),
            Attribute::Sensitive(b) => out.sensitive = b,
            Attribute::Extractable(b) => out.extractable = b,
            Attribute::AlwaysSensitive(b) => out.always_sensitive = b,
            Attribute::NeverExtractable(b) => out.never_extractable = b,
            Attribute::Local(b) => out.local = b,
            Attribute::Sign(b) => out.can_sign = b,
            _ => {}
        }
    }
    Ok(out)
}

/// Everything found out about the signing key, read back from the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttributes {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, lowercase hex.
    pub id_hex: String,
    /// `CKA_SENSITIVE`: the private value cannot be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key may be wrapped out of the token.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has been sensitive since it was created.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// `CKA_LOCAL`: the key was generated inside the token.
    pub local: bool,
    /// `CKA_SIGN`.
    pub can_sign: bool,
}

impl KeyAttributes {
    /// True when the token asserts the key was generated inside it and never left it
    /// (`CKA_LOCAL && CKA_ALWAYS_SENSITIVE && CKA_NEVER_EXTRACTABLE`).
    pub fn is_hardware_bound(&self) -> bool {
        self.local && self.always_sensitive && self.never_extractable
    }
}

/// A logged-in session with the key found in it.
struct Connection {
    session: Session,
    private: ObjectHandle,
    verifying_key: VerifyingKey,
}

/// Finds the token, opens and logs in a session and finds the key.
fn connect(
    module: &Module,
    settings: &Pkcs11Settings,
    pin: &Zeroizing<String>,
) -> Result<Connection, Pkcs11Error> {
    let slot = module.find_slot(&settings.token_label)?;
    module.require_mechanism(slot, MechanismType::ECDSA, "CKM_ECDSA", ECDSA_PURPOSE)?;
    let session = module.user_session(slot, pin)?;
    let key = find_key(&session, &settings.key_label)?;
    Ok(Connection { session, private: key.private, verifying_key: key.verifying_key })
}

/// Owns the module, one logged-in session and the key handles. Send, not Sync: the caller keeps it on one dedicated thread.
pub struct Pkcs11Signer {
    // Field order matters: the session must be closed before the module is finalised.
    connection: Option<Connection>,
    module: Module,
    settings: Pkcs11Settings,
    /// Kept for logging in again after a lost session; zeroised on drop, never printed.
    pin: Zeroizing<String>,
    verifying_key: VerifyingKey,
    spki_der: Vec<u8>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so the PIN can never end up in a log line.
        f.debug_struct("Pkcs11Signer")
            .field("module", &self.module.path)
            .field("token_label", &self.settings.token_label)
            .field("key_label", &self.settings.key_label)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// Loads the module, logs in to the token labelled `settings.token_label` and finds the
    /// EC P-256 key pair labelled `settings.key_label`.
    pub fn open(settings: &Pkcs11Settings, pin: &Zeroizing<String>) -> Result<Self, Pkcs11Error> {
        let module = Module::load(&settings.module)?;
        let connection = connect(&module, settings, pin)?;
        let verifying_key = connection.verifying_key;
        let spki_der = spki_der(&verifying_key, &settings.key_label)?;
        Ok(Pkcs11Signer {
            connection: Some(connection),
            module,
            settings: settings.clone(),
            pin: pin.clone(),
            verifying_key,
            spki_der,
        })
    }

    /// The DER SubjectPublicKeyInfo of the signing key (91 bytes for P-256).
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Signs `message` (SHA-256 on the host, `CKM_ECDSA` on the token) and returns a low-S,
    /// host-verified, DER-encoded ECDSA-with-SHA256 signature.
    ///
    /// If the session was lost (token reset, re-plugged, logged out) it reconnects once.
    pub fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let digest = Sha256::digest(message);
        let raw = match self.sign_digest(&digest) {
            Err(CkError::Pkcs11(rv, _)) if rv_means_session_lost(rv) => {
                self.reconnect()?;
                self.sign_digest(&digest).map_err(|e| device("C_Sign", e))?
            }
            other => other.map_err(|e| device("C_Sign", e))?,
        };
        let signature = parse_raw_signature(&raw).ok_or(Pkcs11Error::BadSignature)?;
        // HSMs do not normalise S; low-S keeps the encoding canonical for strict verifiers.
        let signature = signature.normalize_s().unwrap_or(signature);
        self.verifying_key.verify_prehash(&digest, &signature).map_err(|_| Pkcs11Error::BadSignature)?;
        Ok(signature.to_der().as_bytes().to_vec())
    }

    /// Runs `C_Sign` on the current session; a missing session reads as "session lost".
    fn sign_digest(&mut self, digest: &[u8]) -> Result<Vec<u8>, CkError> {
        match &self.connection {
            Some(c) => c.session.sign(&Mechanism::Ecdsa, c.private, digest),
            None => Err(CkError::Pkcs11(RvError::SessionHandleInvalid, fake_sign())),
        }
    }

    /// Drops the old session and opens a fresh, logged-in one; refuses if the key changed.
    fn reconnect(&mut self) -> Result<(), Pkcs11Error> {
        // Close the dead session first so the new login is not confused by it.
        self.connection = None;
        let connection = match connect(&self.module, &self.settings, &self.pin) {
            Ok(c) => c,
            // At start-up a missing token is a configuration error; mid-run it is a token
            // that was pulled or is rebooting, so the caller may retry.
            Err(Pkcs11Error::TokenNotFound { label, .. }) => {
                return Err(Pkcs11Error::Device {
                    operation: "reconnect",
                    reason: format!("token '{label}' is no longer present"),
                    retryable: true,
                })
            }
            Err(e) => return Err(e),
        };
        if connection.verifying_key != self.verifying_key {
            return Err(Pkcs11Error::KeyChanged { label: self.settings.key_label.clone() });
        }
        self.connection = Some(connection);
        Ok(())
    }

    /// Lets go of a signer whose thread was abandoned after a timeout: closes its session but leaves the module
    /// initialised. `C_Finalize` acts on the whole process: called here, it would end the session the replacement
    /// thread opened meanwhile. The module stays loaded until the process ends.
    pub fn abandon(self) {
        let Pkcs11Signer { connection, module, .. } = self;
        drop(connection);
        std::mem::forget(module);
    }

    /// Reads the private key's label, id and protection flags back from the token.
    pub fn key_attributes(&self) -> Result<KeyAttributes, Pkcs11Error> {
        let connection = self.connection.as_ref().ok_or(Pkcs11Error::Device {
            operation: "C_GetAttributeValue",
            reason: "no open session (the last reconnect failed); sign again to reconnect".to_owned(),
            retryable: true,
        })?;
        read_key_attributes(&connection.session, connection.private, &self.settings.key_label)
    }

    /// A one-line description without secrets, for logs and `/readyz`.
    pub fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}' key '{}' via {}",
            self.settings.token_label,
            self.settings.key_label,
            self.settings.module.display()
        )
    }
}

/// The `Function` tag used when there is no session to call `C_Sign` on.
fn fake_sign() -> cryptoki::context::Function {
    cryptoki::context::Function::Sign
}

/// Accepts the spec's raw `r‖s` and, leniently, a DER signature from non-conforming tokens.
fn parse_raw_signature(raw: &[u8]) -> Option<Signature> {
    if raw.len() == 64 {
        Signature::from_slice(raw).ok()
    } else {
        Signature::from_der(raw).ok()
    }
}

/// DER SubjectPublicKeyInfo of `key`.
fn spki_der(key: &VerifyingKey, label: &str) -> Result<Vec<u8>, Pkcs11Error> {
    key.to_public_key_der().map(|doc| doc.as_bytes().to_vec()).map_err(|e| Pkcs11Error::WrongKeyType {
        label: label.to_owned(),
        detail: format!("cannot encode the public key as SubjectPublicKeyInfo: {e}"),
    })
}

/// Create an EC P-256 key pair inside the token (CKA_TOKEN, private: CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_SIGN, no derive;
/// public: CKA_VERIFY), label + a random CKA_ID; refuses with KeyExists if a private key with that label exists.
pub fn generate_key(
    settings: &Pkcs11Settings,
    pin: &Zeroizing<String>,
) -> Result<KeyAttributes, Pkcs11Error> {
    let module = Module::load(&settings.module)?;
    let slot = module.find_slot(&settings.token_label)?;
    module.require_mechanism(slot, MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN", ECDSA_PURPOSE)?;
    module.require_mechanism(slot, MechanismType::ECDSA, "CKM_ECDSA", ECDSA_PURPOSE)?;
    let session = module.user_session(slot, pin)?;
    let label = &settings.key_label;
    match find_private_key(&session, label) {
        Err(Pkcs11Error::KeyNotFound { .. }) => {}
        Ok(_) | Err(Pkcs11Error::DuplicateKey { .. }) => {
            return Err(Pkcs11Error::KeyExists { label: label.clone() })
        }
        Err(e) => return Err(e),
    }
    // The token's own RNG: every token has one and it keeps this module free of host RNG code.
    let id = session.generate_random_vec(KEY_ID_LEN).map_err(|e| device("C_GenerateRandom", e))?;
    let (public_template, private_template) = key_templates(label, &id);
    let (_public, private) = session
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public_template, &private_template)
        .map_err(|e| device("C_GenerateKeyPair", e))?;
    read_key_attributes(&session, private, label)
}

/// Templates for a token-resident, sensitive, never-extractable P-256 signing key pair.
fn key_templates(label: &str, id: &[u8]) -> (Vec<Attribute>, Vec<Attribute>) {
    let public = vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256_EC_PARAMS.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    (public, private)
}

/// For dev mode and tests: initialise a fresh token with this label in the first slot that has an uninitialized token
/// (SoftHSM always offers one), set SO PIN and user PIN. Refuses if a token with the label already exists.
pub fn init_token(
    module: &Path,
    token_label: &str,
    so_pin: &Zeroizing<String>,
    user_pin: &Zeroizing<String>,
) -> Result<(), Pkcs11Error> {
    check_token_label(token_label)?;
    let module = Module::load(module)?;
    if module.initialized_tokens()?.iter().any(|(_, l)| l == token_label) {
        return Err(Pkcs11Error::TokenExists { label: token_label.to_owned() });
    }
    let slot = free_slot(&module)?;
    let so_auth = AuthPin::from(so_pin.as_str());
    module.ctx.init_token(slot, &so_auth, token_label).map_err(|e| new_pin_error("SO", "C_InitToken", e))?;
    // SoftHSM moves the new token to a fresh slot id, so look it up again by label.
    let slot = module.find_slot(token_label)?;
    let session = module.ctx.open_rw_session(slot).map_err(|e| device("C_OpenSession", e))?;
    login_result(session.login(UserType::So, Some(&so_auth)))?;
    let user_auth = AuthPin::from(user_pin.as_str());
    session.init_pin(&user_auth).map_err(|e| new_pin_error("user", "C_InitPIN", e))?;
    session.logout().map_err(|e| device("C_Logout", e))?;
    Ok(())
}

/// The first slot that holds a token which is present but not yet initialised.
fn free_slot(module: &Module) -> Result<Slot, Pkcs11Error> {
    let slots = module.ctx.get_slots_with_token().map_err(|e| device("C_GetSlotList", e))?;
    for slot in slots {
        let info = module.ctx.get_token_info(slot).map_err(|e| device("C_GetTokenInfo", e))?;
        if !info.token_initialized() {
            return Ok(slot);
        }
    }
    Err(Pkcs11Error::NoFreeSlot)
}

/// Token labels are 1..=32 bytes; longer ones would be silently truncated by the module.
fn check_token_label(label: &str) -> Result<(), Pkcs11Error> {
    let reason = if label.trim().is_empty() {
        "it is empty"
    } else if label.len() > MAX_TOKEN_LABEL_LEN {
        "it is longer than 32 bytes"
    } else if label.trim_end() != label {
        "it ends in spaces, which PKCS#11 strips"
    } else {
        return Ok(());
    };
    Err(Pkcs11Error::InvalidTokenLabel { label: label.to_owned(), reason })
}

/// Maps a failure while setting a new PIN.
fn new_pin_error(which: &'static str, operation: &'static str, err: CkError) -> Pkcs11Error {
    match err {
        CkError::Pkcs11(rv @ (RvError::PinLenRange | RvError::PinInvalid), _) => {
            Pkcs11Error::InvalidNewPin { which, reason: ckr_name(rv) }
        }
        other => device(operation, other),
    }
}

/// Opens the PKCS#11 signer reading the PIN file at every call (so a corrected PIN file is picked up without a
/// restart), and never logs in again with a PIN the token refused: every `CKR_PIN_INCORRECT` counts towards
/// locking the token, so after a PIN change on the token the appliance costs it at most one failed login per
/// distinct wrong PIN, whatever the back-off (docs/RELIABILITY.md).
pub struct Pkcs11Opener {
    settings: Pkcs11Settings,
    pin_file: PathBuf,
    /// SHA-256 of the PIN the token last refused (never the PIN itself).
    refused: std::sync::Mutex<Option<[u8; 32]>>,
    login_attempts: std::sync::atomic::AtomicU64,
}

impl Pkcs11Opener {
    /// An opener for `settings` with the PIN in `pin_file` (owner-only mode, one line).
    pub fn new(settings: Pkcs11Settings, pin_file: PathBuf) -> Self {
        Pkcs11Opener {
            settings,
            pin_file,
            refused: std::sync::Mutex::new(None),
            login_attempts: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Opens the signer (one `C_Login`), unless the PIN file holds the PIN the token refused last.
    pub fn open(&self) -> Result<Pkcs11Signer, super::SignerError> {
        let pin = crate::config::read_secret_file("signer.pkcs11.pin_file", &self.pin_file)
            .map_err(|e| super::SignerError::PinFile(e.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(pin.as_bytes()).into();
        let mut refused = self.refused.lock().map_err(|_| super::SignerError::ThreadStopped)?;
        if *refused == Some(digest) {
            return Err(super::SignerError::PinRefusedBefore { path: self.pin_file.display().to_string() });
        }
        self.login_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match Pkcs11Signer::open(&self.settings, &pin) {
            Err(Pkcs11Error::WrongPin) => {
                *refused = Some(digest);
                Err(Pkcs11Error::WrongPin.into())
            }
            other => {
                if other.is_ok() {
                    *refused = None;
                }
                Ok(other?)
            }
        }
    }

    /// How many times [`Pkcs11Opener::open`] went to the token with a PIN (each one `C_Login` unless the module,
    /// token or mechanism was missing first).
    pub fn login_attempts(&self) -> u64 {
        self.login_attempts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    //! Tests that need no token: error mapping, parsing, refusals before the module loads. The ones on a real
    //! SoftHSM token are in softhsm-tests/pkcs11.rs (cargo test target `pkcs11`), so that a plain `cargo test`
    //! passes without SoftHSM configured.
    use super::*;

    const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
    const USER_PIN: &str = "1234-user";
    const SO_PIN: &str = "5678-so";

    fn pin(s: &str) -> Zeroizing<String> {
        Zeroizing::new(s.to_owned())
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn signer_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Pkcs11Signer>();
    }

    #[test]
    fn missing_module_is_module_not_found() {
        let settings = Pkcs11Settings {
            module: PathBuf::from("/nonexistent/libnothing.so"),
            token_label: "t".to_owned(),
            key_label: "k".to_owned(),
        };
        let err = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap_err();
        assert!(
            matches!(&err, Pkcs11Error::ModuleNotFound { path } if path == Path::new("/nonexistent/libnothing.so")),
            "{err:?}"
        );
        assert!(err.to_string().contains("softhsm2"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn non_library_file_is_module_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "not-a-module.so", b"hello");
        let settings =
            Pkcs11Settings { module: path.clone(), token_label: "t".to_owned(), key_label: "k".to_owned() };
        let err = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap_err();
        assert!(matches!(&err, Pkcs11Error::ModuleLoad { path: p, .. } if *p == path), "{err:?}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn overlong_token_label_is_rejected_before_loading() {
        let err = init_token(Path::new(SOFTHSM), &"x".repeat(33), &pin(SO_PIN), &pin(USER_PIN)).unwrap_err();
        assert!(
            matches!(err, Pkcs11Error::InvalidTokenLabel { reason: "it is longer than 32 bytes", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn ec_point_accepts_der_and_bare_forms() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
        let vk = *sk.verifying_key();
        let bare = vk.to_encoded_point(false).as_bytes().to_vec();
        assert_eq!(bare.len(), 65);
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&bare);
        assert_eq!(parse_ec_point(&der).unwrap(), vk);
        assert_eq!(parse_ec_point(&bare).unwrap(), vk);
        let compressed = vk.to_encoded_point(true).as_bytes().to_vec();
        assert_eq!(parse_ec_point(&compressed).unwrap(), vk);
        assert_eq!(
            parse_ec_point(&[0x04, 0x02, 0x01, 0x02]).unwrap_err(),
            "CKA_EC_POINT (4 bytes) is not a P-256 point, neither DER-wrapped nor bare"
        );
    }

    #[test]
    fn bare_point_that_looks_like_der_header_still_parses() {
        // Find a key whose X starts with 0x3f, so 04 3f ... reads as a 63-byte OCTET STRING.
        let vk = (1u8..=255)
            .flat_map(|a| (1u8..=255).map(move |b| [a, b]))
            .map(|[a, b]| {
                let mut scalar = [0x22u8; 32];
                scalar[0] = a;
                scalar[1] = b;
                *p256::ecdsa::SigningKey::from_slice(&scalar).unwrap().verifying_key()
            })
            .find(|vk| vk.to_encoded_point(false).as_bytes()[1] == 0x3f)
            .unwrap();
        let bare = vk.to_encoded_point(false).as_bytes().to_vec();
        assert_eq!(parse_ec_point(&bare).unwrap(), vk);
    }

    #[test]
    fn ckr_names_are_the_spec_constants() {
        assert_eq!(ckr_name(RvError::SessionHandleInvalid), "CKR_SESSION_HANDLE_INVALID");
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::DeviceRemoved), "CKR_DEVICE_REMOVED");
        assert_eq!(ckr_name(RvError::VendorDefined(0x8000_002f)), "CKR_VENDOR_DEFINED (0x8000002f)");
    }

    #[test]
    fn retryable_split_between_device_and_configuration_errors() {
        let lost = device("C_Sign", CkError::Pkcs11(RvError::DeviceRemoved, fake_sign()));
        assert!(lost.is_retryable());
        assert_eq!(lost.to_string(), "PKCS#11 C_Sign failed: CKR_DEVICE_REMOVED");
        let prohibited = device("C_Sign", CkError::Pkcs11(RvError::KeyFunctionNotPermitted, fake_sign()));
        assert!(!prohibited.is_retryable());
        assert!(Pkcs11Error::BadSignature.is_retryable());
        assert!(!Pkcs11Error::WrongPin.is_retryable());
        assert!(!Pkcs11Error::KeyNotFound { label: "k".to_owned() }.is_retryable());
    }

    #[test]
    fn login_error_mapping() {
        let f = cryptoki::context::Function::Login;
        assert!(login_result(Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, f))).is_ok());
        assert!(matches!(
            login_result(Err(CkError::Pkcs11(RvError::PinIncorrect, f))),
            Err(Pkcs11Error::WrongPin)
        ));
        assert!(matches!(
            login_result(Err(CkError::Pkcs11(RvError::PinLocked, f))),
            Err(Pkcs11Error::PinLocked)
        ));
        assert!(matches!(
            login_result(Err(CkError::Pkcs11(RvError::TokenNotPresent, f))),
            Err(Pkcs11Error::Device { operation: "C_Login", retryable: true, .. })
        ));
    }
}
