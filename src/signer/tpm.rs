//! TPM 2.0 head signer (`[signer] backend = "tpm"`), built on `tss-esapi` 7.7 / libtss2.
//!
//! The block-signing key is an ECC P-256 ECDSA key that lives in the TPM at a *persistent*
//! handle (e.g. `0x81010010`); the private key never leaves the TPM. Configuration is a TCTI
//! string (`device:/dev/tpmrm0` in production, `swtpm:host=…,port=…` in tests, `tabrmd`) and
//! the handle; the key may carry an auth value (read from a file by the caller).
//!
//! * [`TpmSigner`] opens the key, checks that it is an unrestricted ECC P-256 signing key,
//!   self-tests one signature, and then signs: SHA-256 on the host, `TPM2_Sign` with a NULL
//!   hash-check ticket (allowed for unrestricted keys), `r`/`s` left-padded to 32 bytes,
//!   low-S normalised, verified on the host, returned DER-encoded. The output is byte-for-byte
//!   the same format as the PKCS#11 backend, so
//!   `openssl dgst -sha256 -verify pub.pem -signature sig.der msg` accepts it.
//! * [`generate_key`] creates the key under the owner storage primary key (an ECC P-256 SRK
//!   re-derived from the owner seed, so it need not be persisted) and persists it with
//!   `TPM2_EvictControl`.
//! * [`attest`] certifies the key with an attestation key (`TPM2_Certify`) and returns
//!   [`KeyAttestation`] evidence, checked offline by [`anchorlog_core::attestation::verify_attestation`]; with a
//!   counter configured the same AK also certifies the counter (`TPM2_NV_Certify`).
//! * With `counter_index` set, every head carries a value of an orderly NV counter (module `counter`):
//!   [`TpmSigner::advance_counter`] reserves it before the head is signed, [`TpmSigner::read_counter`]
//!   reads it for the start-up check, [`provision_counter`] creates it. The TPM's reset count that goes with
//!   it is read with `TPM2_ReadClock` (module `esys`) just before each connection is opened.
//!
//! # Threading and connections
//! A `tss_esapi::Context` is `Send` but not `Sync`: the caller owns one dedicated thread that
//! holds the [`TpmSigner`]. `swtpm` over TCP and `/dev/tpm0` have **no resource manager**, so
//! every transient object this module creates is flushed before returning, on error paths too.
//! Authorisation uses a password session (the fast path: ~7x faster than a salted HMAC
//! session on swtpm). A password crosses the bus in clear; use an HMAC session if bus snooping
//! is in the threat model.
//!
//! If the TPM connection is lost (e.g. the simulator restarted), signing reconnects once and
//! retries, after checking that the key at the handle is still the same key.
//!
//! Set `TSS2_LOG=esys+none,tcti+none` in the service environment to silence libtss2's stderr
//! messages for errors this module handles itself (connection refused, wrong auth, …).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::ecdsa::{Signature as EcdsaSignature, VerifyingKey};
use p256::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::nv;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, StartupType};
use tss_esapi::handles::{KeyHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Data, Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Public,
    PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall as _;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::utils::create_unrestricted_signing_ecc_public;
use tss_esapi::Context;
use zeroize::Zeroizing;

pub use anchorlog_core::attestation::TpmKeyAttributes;
use anchorlog_core::attestation::{
    tpm_name_sha256, verify_attestation, verify_counter_attestation, CounterAttestation, KeyAttestation,
    KEY_ATTESTATION_FORMAT,
};
use anchorlog_core::counter::CounterObservation;
use anchorlog_core::head::HeadCounter;

mod counter;
mod esys;

pub use counter::CounterProvisioning;

/// First persistent handle (`TPM_HR_PERSISTENT`).
const PERSISTENT_FIRST: u32 = 0x8100_0000;
/// Last persistent handle in the owner range (`0x81000000..=0x817FFFFF`).
const OWNER_PERSISTENT_LAST: u32 = 0x817F_FFFF;
/// Last persistent handle (the platform range ends here).
const PERSISTENT_LAST: u32 = 0x81FF_FFFF;
/// First NV index handle.
const NV_INDEX_FIRST: u32 = 0x0100_0000;
/// `TPM_RH_OWNER`, used in errors about the SRK's hierarchy.
const TPM_RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_ENDORSEMENT`, used in errors about the AK's hierarchy.
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
/// EK certificate NV indices, in order of preference: ECC P-256, RSA 2048, ECC P-384
/// (TCG EK Credential Profile 2.x, §2.2.1.4 / TCG PC Client Platform TPM Profile).
const EK_CERT_NV_INDICES: [u32; 3] = [0x01C0_000A, 0x01C0_0002, 0x01C0_0016];
/// An object's auth value may not be longer than its name-algorithm digest (SHA-256).
const MAX_AUTH_LEN: usize = 32;
/// `TPM2B_DATA` (qualifying data) holds at most one `TPMT_HA` digest.
const MAX_NONCE_LEN: usize = 64;
/// Handles asked for per `TPM2_GetCapability` call.
const CAPABILITY_BATCH: u32 = 64;
/// Upper bound on capability pages (defends against a TPM that always says "more data").
const MAX_CAPABILITY_PAGES: usize = 64;
/// The message signed at open to prove that key, auth value and public key agree.
const SELF_TEST_MESSAGE: &[u8] = b"anchorlog tpm signer self-test";

/// Where the signing key lives: `[signer] tcti = "…"`, `handle = 0x81010010`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSettings {
    /// TCTI configuration: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`, …
    pub tcti: String,
    /// Persistent handle of the signing key (`0x81000000..=0x81FFFFFF`).
    pub handle: u32,
    /// NV index of the head counter (`0x01000000..=0x01BFFFFF`), if heads carry one.
    pub counter_index: Option<u32>,
}

/// Errors of the TPM backend. Messages say what was wrong and what to do; they never contain
/// the auth value.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string is not one libtss2 understands.
    #[error("invalid TCTI {tcti:?}: {reason}; use e.g. \"device:/dev/tpmrm0\", \"swtpm:host=127.0.0.1,port=2321\" or \"tabrmd\"")]
    InvalidTcti {
        /// The configured TCTI string.
        tcti: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The TPM could not be reached through the TCTI.
    #[error("cannot reach the TPM via {tcti:?}: {reason}; check that the device exists and is accessible (group tss) or that the simulator/resource manager is running")]
    TctiUnreachable {
        /// The configured TCTI string.
        tcti: String,
        /// What failed.
        reason: String,
    },
    /// An established TPM connection broke (after one reconnect attempt).
    #[error("lost the connection to the TPM via {tcti:?}: {reason}; it will be retried")]
    ConnectionLost {
        /// The configured TCTI string.
        tcti: String,
        /// What failed.
        reason: String,
    },
    /// The configured handle is not a persistent handle.
    #[error("handle {handle:#010x} is not a persistent TPM handle; use one in 0x81000000..=0x817fffff (owner range), e.g. 0x81010010")]
    InvalidHandle {
        /// The configured handle.
        handle: u32,
    },
    /// No object is persisted at the handle.
    #[error("no key is persisted at TPM handle {handle:#010x}; create one with `anchorlog keys generate` or fix [signer] handle")]
    HandleEmpty {
        /// The configured handle.
        handle: u32,
    },
    /// The auth value does not authorise the object.
    #[error("the auth value for TPM handle {handle:#010x} is wrong (the TPM's dictionary-attack counter was incremented); fix the auth file")]
    WrongAuth {
        /// The object (or hierarchy) handle.
        handle: u32,
    },
    /// The TPM is in dictionary-attack lockout.
    #[error("the TPM refuses authorisation for {handle:#010x}: dictionary-attack lockout after too many wrong auth values; wait for the lockout to expire or reset it with tpm2_dictionarylockout")]
    Lockout {
        /// The object handle.
        handle: u32,
    },
    /// The auth value is longer than the TPM allows.
    #[error("the auth value is {len} bytes; a TPM object's auth value may be at most {MAX_AUTH_LEN} bytes")]
    AuthTooLong {
        /// Its length.
        len: usize,
    },
    /// The auth file could not be read.
    #[error("cannot read the TPM auth file {path}: {reason}")]
    AuthFile {
        /// The path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The object at the handle is not an unrestricted ECC P-256 ECDSA signing key.
    #[error("the object at TPM handle {handle:#010x} is not usable as the head-signing key: {detail}")]
    WrongKeyType {
        /// The configured handle.
        handle: u32,
        /// What is wrong with it.
        detail: String,
    },
    /// [`generate_key`] found the handle taken.
    #[error("TPM handle {handle:#010x} is already in use; pick another handle or evict the old object (tpm2_evictcontrol -C o -c {handle:#010x}) if it is really unused")]
    HandleOccupied {
        /// The configured handle.
        handle: u32,
    },
    /// After a reconnect, the handle holds a different key than the one this signer opened.
    #[error("the key at TPM handle {handle:#010x} changed while the signer was running; restart the service so the key change is announced")]
    KeyChanged {
        /// The configured handle.
        handle: u32,
    },
    /// The attestation nonce is too long for `TPM2B_DATA`.
    #[error("the attestation nonce is {len} bytes; at most {MAX_NONCE_LEN} bytes are allowed")]
    NonceTooLong {
        /// Its length.
        len: usize,
    },
    /// The TPM is temporarily unable to run the command (TPM warning such as RETRY, TESTING,
    /// NV_RATE, or out of object memory).
    #[error("the TPM is busy during {operation}: {reason}; retry later")]
    Busy {
        /// The TPM operation.
        operation: &'static str,
        /// The response code.
        reason: String,
    },
    /// Any other TPM or TSS failure.
    #[error("TPM operation {operation} failed: {reason}")]
    Device {
        /// The TPM operation.
        operation: &'static str,
        /// The response code or local error.
        reason: String,
    },
    /// The TPM returned a signature that does not verify under the key's public key.
    #[error("the TPM returned a signature that does not verify with the key's public key; the TPM is malfunctioning, do not use it")]
    BadSignature,
    /// The configured counter index is not an NV index anchorlog uses.
    #[error("NV index {index:#010x} cannot hold the head counter; use one in 0x01000000..=0x01bfffff, e.g. 0x01800010")]
    InvalidCounterIndex {
        /// The configured index.
        index: u32,
    },
    /// No NV index is defined at the configured handle.
    #[error("no NV counter is defined at TPM index {index:#010x}; provision it with `anchorlog keys generate --tpm --counter-only --config FILE` (a new index for an existing log: see docs/TPM.md)")]
    CounterMissing {
        /// The configured index.
        index: u32,
    },
    /// Provisioning found the index taken.
    #[error("TPM NV index {index:#010x} is already defined; pick another signer.tpm.counter_index, or keep this one if it is this appliance's counter")]
    CounterIndexOccupied {
        /// The configured index.
        index: u32,
    },
    /// The index at the configured handle is not a counter anchorlog can use.
    #[error("the NV index {index:#010x} is not usable as the head counter: {detail}")]
    NotACounter {
        /// The configured index.
        index: u32,
        /// What is wrong with it.
        detail: String,
    },
    /// A counter operation was asked for but no counter index is configured.
    #[error("no head counter is configured: set signer.tpm.counter_index (e.g. \"0x01800010\") and provision it with `anchorlog keys generate --tpm --counter-only`")]
    CounterNotConfigured,
}

impl TpmError {
    /// Whether trying again later can succeed without operator action (the TPM or the link to
    /// it is temporarily unavailable). Configuration, key and auth problems are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TpmError::TctiUnreachable { .. } | TpmError::ConnectionLost { .. } | TpmError::Busy { .. }
        )
    }
}

/// Reads a key auth value from a file. The content is used verbatim except that one trailing
/// `\n` (or `\r\n`) is removed, so `echo secret > file` works; a value created with
/// `tpm2_create -p file:…` must then not end in a newline.
pub fn read_auth_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    crate::config::check_private_file_mode("signer.tpm.auth_file", path)
        .map_err(|e| TpmError::AuthFile { path: path.display().to_string(), reason: e.to_string() })?;
    let mut bytes = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| TpmError::AuthFile { path: path.display().to_string(), reason: e.to_string() })?,
    );
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    check_auth(Some(&bytes))?;
    Ok(bytes)
}

/// A key's auth value as read from its file (wiped from memory on drop).
pub type AuthValue = Zeroizing<Vec<u8>>;

/// The settings and auth value named by a `[signer.tpm]` section (the auth file is read here).
pub fn settings_from_config(
    c: &crate::config::TpmConfig,
) -> Result<(TpmSettings, Option<AuthValue>), TpmError> {
    let auth = c.auth_file.as_deref().map(read_auth_file).transpose()?;
    let settings =
        TpmSettings { tcti: c.tcti.clone(), handle: c.handle.0, counter_index: c.counter_index.map(|i| i.0) };
    Ok((settings, auth))
}

/// A head signer backed by a persistent ECC P-256 key in a TPM. `Send`, not `Sync`.
pub struct TpmSigner {
    settings: TpmSettings,
    auth: Option<Zeroizing<Vec<u8>>>,
    /// `None` after a lost connection until the next successful reconnect.
    conn: Option<Connection>,
    verifying_key: VerifyingKey,
    spki_der: Vec<u8>,
}

// The signer is moved onto its dedicated thread; fail the build if that stops being possible.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<TpmSigner>();
};

impl fmt::Debug for TpmSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSigner")
            .field("settings", &self.settings)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl TpmSigner {
    /// Connects, runs `TPM2_Startup` (idempotent), loads the persistent key, checks that it is an
    /// unrestricted ECC P-256 signing key and self-tests one signature (so a wrong auth value is
    /// reported here, as [`TpmError::WrongAuth`], rather than at the first seal).
    pub fn open(s: &TpmSettings, auth: Option<&Zeroizing<Vec<u8>>>) -> Result<Self, TpmError> {
        check_auth(auth)?;
        persistent_handle(s.handle)?;
        let mut conn = Connection::open(s, auth)?;
        let public = conn.read_public(s)?;
        let verifying_key = signing_key_of(&public, s.handle)?;
        let spki_der = spki_der_of(&verifying_key)?;
        let mut signer =
            TpmSigner { settings: s.clone(), auth: auth.cloned(), conn: Some(conn), verifying_key, spki_der };
        signer.sign(SELF_TEST_MESSAGE)?;
        Ok(signer)
    }

    /// The signing key's public key as a DER SubjectPublicKeyInfo (91 bytes for P-256).
    pub fn public_key_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Signs `message`: SHA-256 on the host, `TPM2_Sign` in the TPM, low-S DER ECDSA out.
    /// The signature is verified before it is returned. A lost connection is re-established
    /// once.
    pub fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let handle = self.settings.handle;
        let tcti = self.settings.tcti.clone();
        let tpm_sig = self.with_connection(|conn| conn.sign_digest(&digest, handle, &tcti))?;
        let sig = low_s_signature(&tpm_sig, "TPM2_Sign")?;
        self.verifying_key.verify_prehash(&digest, &sig).map_err(|_| TpmError::BadSignature)?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    /// Reads the key's attributes back from the TPM.
    pub fn key_attributes(&mut self) -> Result<TpmKeyAttributes, TpmError> {
        let settings = self.settings.clone();
        let public = self.with_connection(|conn| conn.read_public(&settings))?;
        Ok(attributes_of(&public))
    }

    /// A one-line description for logs and `/readyz`, e.g.
    /// `TPM 2.0 key 0x81010010 via device:/dev/tpmrm0 (ECDSA P-256, key id 3f2a…)`.
    pub fn describe(&self) -> String {
        let key_id = hex::encode(Sha256::digest(&self.spki_der));
        let counter = match self.settings.counter_index {
            Some(index) => format!(", head counter NV {index:#010x}"),
            None => String::new(),
        };
        format!(
            "TPM 2.0 key {:#010x} via {} (ECDSA P-256, key id {}{counter})",
            self.settings.handle, self.settings.tcti, key_id
        )
    }

    /// Reserves the head counter value for the next head (see [`super::HeadSigner::advance_counter`]);
    /// `None` without a configured counter. Re-run after a lost connection it reuses an increment that
    /// happened, so the counter is never more than one above the newest stored head.
    pub fn advance_counter(&mut self, above: Option<u64>) -> Result<Option<HeadCounter>, TpmError> {
        if self.settings.counter_index.is_none() {
            return Ok(None);
        }
        let tcti = self.settings.tcti.clone();
        self.with_connection(|conn| conn.with_counter(|c, ctx| c.reserve(ctx, above, &tcti))).map(Some)
    }

    /// The counter as the TPM reports it now, with the reset count read now (a fresh connection);
    /// `None` without a configured counter.
    pub fn read_counter(&mut self) -> Result<Option<CounterObservation>, TpmError> {
        if self.settings.counter_index.is_none() {
            return Ok(None);
        }
        let tcti = self.settings.tcti.clone();
        // The reset count is read when a connection opens: open one now.
        self.conn = None;
        self.with_connection(|conn| conn.with_counter(|c, ctx| c.observe(ctx, &tcti))).map(Some)
    }

    /// Closes the connection; the next call reconnects (and checks the key at the handle is still this one).
    pub fn release(&mut self) {
        self.conn = None;
    }

    /// Runs `op` on the connection; on a lost connection reconnects once and runs it again.
    fn with_connection<T>(
        &mut self,
        mut op: impl FnMut(&mut Connection) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        if self.conn.is_none() {
            self.reconnect()?;
        }
        let first = match self.conn.as_mut() {
            Some(conn) => op(conn),
            None => return Err(self.not_connected()),
        };
        match first {
            Err(TpmError::ConnectionLost { .. }) => {
                self.conn = None;
                self.reconnect()?;
                let second = match self.conn.as_mut() {
                    Some(conn) => op(conn),
                    None => return Err(self.not_connected()),
                };
                if matches!(second, Err(TpmError::ConnectionLost { .. })) {
                    self.conn = None;
                }
                second
            }
            other => other,
        }
    }

    /// Opens a fresh connection and checks the key at the handle is still ours.
    fn reconnect(&mut self) -> Result<(), TpmError> {
        let mut conn = Connection::open(&self.settings, self.auth.as_ref())?;
        let public = conn.read_public(&self.settings)?;
        if signing_key_of(&public, self.settings.handle)? != self.verifying_key {
            return Err(TpmError::KeyChanged { handle: self.settings.handle });
        }
        self.conn = Some(conn);
        Ok(())
    }

    fn not_connected(&self) -> TpmError {
        TpmError::ConnectionLost { tcti: self.settings.tcti.clone(), reason: "no connection".into() }
    }
}

/// Creates the head-signing key: an ECC P-256 ECDSA-SHA256 key with `fixedTPM`, `fixedParent`,
/// `sensitiveDataOrigin`, `userWithAuth`, `sign` (not `decrypt`, not `restricted`) under the
/// owner storage primary key, persisted at `s.handle`. Returns the attributes read back from
/// the TPM. Fails with [`TpmError::HandleOccupied`] if the handle is taken.
pub fn generate_key(
    s: &TpmSettings,
    auth: Option<&Zeroizing<Vec<u8>>>,
) -> Result<TpmKeyAttributes, TpmError> {
    let template = create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .map_err(|e| tss_error(e, "build key template", &s.tcti))?;
    generate_key_from_template(s, auth, template)
}

/// Like [`generate_key`] but with any child-key template (e.g. an RSA or decryption key).
/// For tooling and tests that need a key of another type at a handle.
pub fn generate_key_from_template(
    s: &TpmSettings,
    auth: Option<&Zeroizing<Vec<u8>>>,
    template: Public,
) -> Result<TpmKeyAttributes, TpmError> {
    check_auth(auth)?;
    let handle = owner_persistent_handle(s.handle)?;
    let mut ctx = connect(&s.tcti)?;
    if list_handles(&mut ctx, PERSISTENT_FIRST, &s.tcti)?.contains(&s.handle) {
        return Err(TpmError::HandleOccupied { handle: s.handle });
    }
    let srk = create_srk(&mut ctx, &s.tcti)?;
    let created = with_transient(&mut ctx, srk.into(), &s.tcti, |ctx| {
        create_and_persist(ctx, srk, template, auth, handle, s)
    })?;
    let public = read_public_of(&mut ctx, created, &s.tcti, s.handle)?;
    Ok(attributes_of(&public))
}

/// Fails if the key handle or (when configured) the counter index is already taken, so that `keys generate`
/// creates both or neither.
pub fn check_free(s: &TpmSettings) -> Result<(), TpmError> {
    owner_persistent_handle(s.handle)?;
    let mut ctx = connect(&s.tcti)?;
    if list_handles(&mut ctx, PERSISTENT_FIRST, &s.tcti)?.contains(&s.handle) {
        return Err(TpmError::HandleOccupied { handle: s.handle });
    }
    if let Some(index) = s.counter_index {
        counter::index_handle(index)?;
        if list_handles(&mut ctx, NV_INDEX_FIRST, &s.tcti)?.contains(&index) {
            return Err(TpmError::CounterIndexOccupied { index });
        }
    }
    Ok(())
}

/// Creates the head counter at `s.counter_index` (see the `counter` module): platform-created with a delete policy
/// only the platform hierarchy satisfies when it can, owner-created otherwise; orderly, authorised with
/// the key's auth value, not yet incremented. Fails with [`TpmError::CounterIndexOccupied`] if the index
/// is taken.
pub fn provision_counter(
    s: &TpmSettings,
    auth: Option<&Zeroizing<Vec<u8>>>,
) -> Result<CounterProvisioning, TpmError> {
    check_auth(auth)?;
    let index = s.counter_index.ok_or(TpmError::CounterNotConfigured)?;
    let mut ctx = connect(&s.tcti)?;
    counter::provision(&mut ctx, index, auth, &s.tcti)
}

/// Certifies the key at `s.handle` with an attestation key and returns the evidence.
///
/// The AK is a primary ECC P-256 restricted signing key (ECDSA-SHA256, `fixedTPM`,
/// `fixedParent`, `sensitiveDataOrigin`, `userWithAuth`, `restricted`, `sign`) in the
/// *endorsement* hierarchy. Being a primary, it is re-derived identically from the endorsement
/// seed each time, so an auditor can pin its public key. `nonce` (at most 64 bytes) becomes the
/// attestation's `extraData`. The EK certificate is included when one is in NV. With a counter configured
/// (and incremented at least once), the same AK then certifies the counter over the same nonce (`TPM2_NV_Certify`, on a connection of its
/// own: tss-esapi 7.7 does not wrap it). The evidence is verified with [`verify_attestation`] (and
/// [`verify_counter_attestation`]) before it is returned.
pub fn attest(
    s: &TpmSettings,
    auth: Option<&Zeroizing<Vec<u8>>>,
    nonce: &[u8],
) -> Result<KeyAttestation, TpmError> {
    if nonce.len() > MAX_NONCE_LEN {
        return Err(TpmError::NonceTooLong { len: nonce.len() });
    }
    check_auth(auth)?;
    persistent_handle(s.handle)?;
    let mut conn = Connection::open(s, auth)?;
    let key_public = conn.read_public(s)?;
    let key_spki = spki_der_of(&signing_key_of(&key_public, s.handle)?)?;
    let key_tpmt_public = marshall_public(&key_public, &s.tcti)?;
    let (ek_certificate_nv_index, ek_certificate) = match read_ek_certificate(&mut conn.ctx, &s.tcti)? {
        Some((index, der)) => (Some(index), Some(der)),
        None => (None, None),
    };
    let ak = create_ak(&mut conn.ctx, &s.tcti)?;
    let certified = with_transient(&mut conn.ctx, ak.handle.into(), &s.tcti, |ctx| {
        certify(ctx, conn.key, ak.handle, nonce, s)
    })?;
    // A counter never incremented has no value to certify (no head carries it yet): the key alone is attested.
    let counter_public = match &mut conn.counter {
        Some(c) if c.written() => {
            Some((c.index(), c.public_bytes(&mut conn.ctx, &s.tcti)?, c.max_orderly_count()))
        }
        _ => None,
    };
    // `TPM2_NV_Certify` runs on a connection of its own, which must not overlap this one.
    drop(conn);
    let counter = match counter_public {
        Some((index, nv_public, max_orderly_count)) => {
            Some(certify_counter(s, auth, nonce, index, nv_public, max_orderly_count, &ak.tpmt_public)?)
        }
        None => None,
    };
    let att = KeyAttestation {
        format: KEY_ATTESTATION_FORMAT.to_string(),
        key_handle: s.handle,
        attest: certified.attest,
        ak_signature: certified.signature_der,
        ak_spki: ak.spki_der,
        ak_tpmt_public: ak.tpmt_public,
        key_tpmt_public,
        ek_certificate,
        ek_certificate_nv_index,
        counter,
    };
    let verified = match att.counter {
        Some(_) => verify_counter_attestation(&att, &key_spki, nonce).map(|_| ()),
        None => verify_attestation(&att, &key_spki, nonce).map(|_| ()),
    };
    verified.map_err(|e| TpmError::Device { operation: "verify attestation", reason: e.to_string() })?;
    Ok(att)
}

/// `TPM2_NV_Certify` of the counter by the AK (re-derived from `ak_template()`; it must be the AK whose
/// public area is `ak_tpmt_public`).
fn certify_counter(
    s: &TpmSettings,
    auth: Option<&Zeroizing<Vec<u8>>>,
    nonce: &[u8],
    index: u32,
    nv_public: Vec<u8>,
    max_orderly_count: u64,
    ak_tpmt_public: &[u8],
) -> Result<CounterAttestation, TpmError> {
    let template = ak_template().map_err(|e| tss_error(e, "build AK template", &s.tcti))?;
    let mut raw = esys::RawEsys::open(&s.tcti)?;
    let certified = raw.nv_certify(template, index, auth.map(|a| a.as_slice()), nonce)?;
    if marshall_public(&certified.ak_public, &s.tcti)? != ak_tpmt_public {
        return Err(TpmError::Device {
            operation: "TPM2_NV_Certify",
            reason: "the AK re-derived for the counter differs from the one that certified the key".into(),
        });
    }
    let signature = low_s_signature(&certified.signature, "TPM2_NV_Certify")?;
    Ok(CounterAttestation {
        nv_index: index,
        nv_public,
        attest: certified.attest,
        ak_signature: signature.to_der().as_bytes().to_vec(),
        max_orderly_count,
    })
}

/// An open ESYS context with the signing key's persistent handle loaded (and its auth set), and the head
/// counter when one is configured.
struct Connection {
    ctx: Context,
    key: KeyHandle,
    counter: Option<counter::CounterConn>,
}

impl Connection {
    fn open(s: &TpmSettings, auth: Option<&Zeroizing<Vec<u8>>>) -> Result<Self, TpmError> {
        // Before the connection: swtpm serves one connection at a time (see `esys`).
        let clock = s.counter_index.map(|_| esys::read_clock(&s.tcti)).transpose()?;
        let mut ctx = connect(&s.tcti)?;
        let key = load_persistent(&mut ctx, s)?;
        if let Some(auth) = auth {
            let value =
                Auth::try_from(auth.as_slice()).map_err(|_| TpmError::AuthTooLong { len: auth.len() })?;
            ctx.tr_set_auth(key.into(), value).map_err(|e| tss_error(e, "Esys_TR_SetAuth", &s.tcti))?;
        }
        let counter = match (s.counter_index, clock) {
            (Some(index), Some(clock)) => {
                Some(counter::CounterConn::open(&mut ctx, index, auth, clock.reset_count, &s.tcti)?)
            }
            _ => None,
        };
        Ok(Connection { ctx, key, counter })
    }

    /// Runs `f` on the counter and the context it lives on.
    fn with_counter<T>(
        &mut self,
        f: impl FnOnce(&mut counter::CounterConn, &mut Context) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let counter = self.counter.as_mut().ok_or(TpmError::CounterNotConfigured)?;
        f(counter, &mut self.ctx)
    }

    fn read_public(&mut self, s: &TpmSettings) -> Result<Public, TpmError> {
        read_public_of(&mut self.ctx, self.key, &s.tcti, s.handle)
    }

    fn sign_digest(&mut self, digest: &[u8; 32], handle: u32, tcti: &str) -> Result<Signature, TpmError> {
        let digest = Digest::try_from(digest.as_slice()).map_err(|e| tss_error(e, "TPM2_Sign", tcti))?;
        let ticket = null_hashcheck_ticket(tcti)?;
        let scheme = SignatureScheme::EcDsa { hash_scheme: HashScheme::new(HashingAlgorithm::Sha256) };
        let key = self.key;
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |c| c.sign(key, digest, scheme, ticket))
            .map_err(|e| key_error(e, "TPM2_Sign", tcti, handle))
    }
}

/// A NULL hash-check ticket: accepted by `TPM2_Sign` for unrestricted keys only.
fn null_hashcheck_ticket(tcti: &str) -> Result<HashcheckTicket, TpmError> {
    TPMT_TK_HASHCHECK { tag: TPM2_ST_HASHCHECK, hierarchy: TPM2_RH_NULL, digest: Default::default() }
        .try_into()
        .map_err(|e| tss_error(e, "build hashcheck ticket", tcti))
}

fn check_auth(auth: Option<&Zeroizing<Vec<u8>>>) -> Result<(), TpmError> {
    match auth {
        Some(a) if a.len() > MAX_AUTH_LEN => Err(TpmError::AuthTooLong { len: a.len() }),
        _ => Ok(()),
    }
}

fn persistent_handle(handle: u32) -> Result<PersistentTpmHandle, TpmError> {
    if !(PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&handle) {
        return Err(TpmError::InvalidHandle { handle });
    }
    PersistentTpmHandle::new(handle).map_err(|_| TpmError::InvalidHandle { handle })
}

/// `TPM2_EvictControl` with owner authorisation only accepts the owner half of the range.
fn owner_persistent_handle(handle: u32) -> Result<PersistentTpmHandle, TpmError> {
    if handle > OWNER_PERSISTENT_LAST {
        return Err(TpmError::InvalidHandle { handle });
    }
    persistent_handle(handle)
}

/// Creates an ESYS context and makes sure the TPM is started.
fn connect(tcti: &str) -> Result<Context, TpmError> {
    let conf = TctiNameConf::from_str(tcti)
        .map_err(|e| TpmError::InvalidTcti { tcti: tcti.to_string(), reason: e.to_string() })?;
    let mut ctx = Context::new(conf)
        .map_err(|e| TpmError::TctiUnreachable { tcti: tcti.to_string(), reason: describe_tss(&e) })?;
    // Idempotent: ESYS treats TPM_RC_INITIALIZE ("already started") as success.
    ctx.startup(StartupType::Clear).map_err(|e| match tss_error(e, "TPM2_Startup", tcti) {
        TpmError::ConnectionLost { tcti, reason } => TpmError::TctiUnreachable { tcti, reason },
        other => other,
    })?;
    Ok(ctx)
}

/// Lists the TPM handles in the 8-bit handle range starting at `first` (e.g. all persistent
/// objects). Used instead of probing so an absent handle produces no ESYS error noise.
fn list_handles(ctx: &mut Context, first: u32, tcti: &str) -> Result<Vec<u32>, TpmError> {
    let range_end = first | 0x00FF_FFFF;
    let mut out = Vec::new();
    let mut next = first;
    for _ in 0..MAX_CAPABILITY_PAGES {
        let (data, more) = ctx
            .get_capability(CapabilityType::Handles, next, CAPABILITY_BATCH)
            .map_err(|e| tss_error(e, "TPM2_GetCapability", tcti))?;
        let CapabilityData::Handles(list) = data else {
            return Err(TpmError::Device {
                operation: "TPM2_GetCapability",
                reason: "the TPM answered with another capability type".into(),
            });
        };
        let page: Vec<u32> = list.iter().map(|h| u32::from(*h)).collect();
        let last = page.last().copied();
        out.extend(page.into_iter().filter(|h| (first..=range_end).contains(h)));
        match last {
            Some(l) if more && l < range_end => next = l + 1,
            _ => break,
        }
    }
    Ok(out)
}

/// Gets an ESYS handle for the persistent key, mapping an absent handle to `HandleEmpty`.
fn load_persistent(ctx: &mut Context, s: &TpmSettings) -> Result<KeyHandle, TpmError> {
    let handle = persistent_handle(s.handle)?;
    if !list_handles(ctx, PERSISTENT_FIRST, &s.tcti)?.contains(&s.handle) {
        return Err(TpmError::HandleEmpty { handle: s.handle });
    }
    let obj = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(handle)))
        .map_err(|e| key_error(e, "Esys_TR_FromTPMPublic", &s.tcti, s.handle))?;
    Ok(obj.into())
}

fn read_public_of(ctx: &mut Context, key: KeyHandle, tcti: &str, handle: u32) -> Result<Public, TpmError> {
    let operation = "TPM2_ReadPublic";
    let (public, name, _qualified_name) = ctx
        .execute_without_session(|c| c.read_public(key))
        .map_err(|e| key_error(e, operation, tcti, handle))?;
    // Cross-check our marshalling against the TPM's Name: the auditor recomputes it the same way.
    let expected = tpm_name_sha256(&marshall_public(&public, tcti)?);
    if matches!(public.name_hashing_algorithm(), HashingAlgorithm::Sha256) && name.value() != expected {
        return Err(TpmError::Device {
            operation,
            reason: "the TPM's Name does not match the marshalled public area".into(),
        });
    }
    Ok(public)
}

fn marshall_public(public: &Public, tcti: &str) -> Result<Vec<u8>, TpmError> {
    public.marshall().map_err(|e| tss_error(e, "marshal TPMT_PUBLIC", tcti))
}

fn attributes_of(public: &Public) -> TpmKeyAttributes {
    TpmKeyAttributes::from_bits(public.object_attributes().into())
}

/// Checks the public area is an unrestricted ECC P-256 signing key usable with ECDSA-SHA256
/// and password auth, and returns its public key.
fn signing_key_of(public: &Public, handle: u32) -> Result<VerifyingKey, TpmError> {
    let wrong = |detail: String| TpmError::WrongKeyType { handle, detail };
    let Public::Ecc { parameters, unique, .. } = public else {
        let kind = match public {
            Public::Rsa { .. } => "an RSA key",
            Public::KeyedHash { .. } => "a keyed-hash (HMAC/sealed data) object",
            _ => "a symmetric cipher key",
        };
        return Err(wrong(format!("it is {kind}; an ECC P-256 signing key is required")));
    };
    let attrs = attributes_of(public);
    if !attrs.sign || attrs.decrypt || attrs.restricted {
        return Err(wrong(format!(
            "attributes sign={} decrypt={} restricted={}; a signing-only, unrestricted key is required",
            attrs.sign, attrs.decrypt, attrs.restricted
        )));
    }
    if !attrs.user_with_auth {
        return Err(wrong(
            "userWithAuth is clear, so it needs a policy session, which is not supported".into(),
        ));
    }
    if parameters.ecc_curve() != EccCurve::NistP256 {
        return Err(wrong(format!("curve {:?}; NIST P-256 is required", parameters.ecc_curve())));
    }
    match parameters.ecc_scheme() {
        EccScheme::Null => {}
        EccScheme::EcDsa(h) if h.hashing_algorithm() == HashingAlgorithm::Sha256 => {}
        other => {
            return Err(wrong(format!(
                "scheme {other:?}; ECDSA with SHA-256 (or no fixed scheme) is required"
            )))
        }
    }
    verifying_key_from_point(unique).map_err(|e| wrong(format!("its public point is invalid: {e}")))
}

fn verifying_key_from_point(point: &EccPoint) -> Result<VerifyingKey, String> {
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&pad32(point.x().value())?);
    sec1.extend_from_slice(&pad32(point.y().value())?);
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())
}

fn spki_der_of(key: &VerifyingKey) -> Result<Vec<u8>, TpmError> {
    key.to_public_key_der()
        .map(|d| d.into_vec())
        .map_err(|e| TpmError::Device { operation: "encode SubjectPublicKeyInfo", reason: e.to_string() })
}

/// Left-pads a TPM2B big-endian integer to 32 bytes (TPMs may drop leading zero bytes).
fn pad32(v: &[u8]) -> Result<[u8; 32], String> {
    // Tolerate redundant leading zero bytes beyond 32 (legal for a big-endian integer).
    let zeros = v.iter().take_while(|&&b| b == 0).count();
    let v = v.get(zeros.min(v.len().saturating_sub(32))..).unwrap_or_default();
    let mut out = [0u8; 32];
    let dst = out
        .get_mut(32usize.saturating_sub(v.len())..)
        .filter(|d| d.len() == v.len())
        .ok_or_else(|| format!("{}-byte value is too long for P-256", v.len()))?;
    dst.copy_from_slice(v);
    Ok(out)
}

/// Converts a TPM ECDSA signature to a low-S `p256` signature.
fn low_s_signature(sig: &Signature, operation: &'static str) -> Result<EcdsaSignature, TpmError> {
    let Signature::EcDsa(ecc) = sig else {
        return Err(TpmError::Device { operation, reason: "the TPM returned a non-ECDSA signature".into() });
    };
    let bad = |reason: String| TpmError::Device { operation, reason };
    let r = pad32(ecc.signature_r().value()).map_err(bad)?;
    let s = pad32(ecc.signature_s().value()).map_err(bad)?;
    let sig = EcdsaSignature::from_scalars(r, s).map_err(|_| TpmError::BadSignature)?;
    // TPMs do not normalise S; the PKCS#11 backend emits low-S too, so heads look the same.
    Ok(sig.normalize_s().unwrap_or(sig))
}

/// Runs `f`, then flushes the transient `object` whatever `f` returned (no resource manager
/// on swtpm TCP or /dev/tpm0 would do it for us).
fn with_transient<T>(
    ctx: &mut Context,
    object: ObjectHandle,
    tcti: &str,
    f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f(ctx);
    let flushed = ctx.flush_context(object).map_err(|e| tss_error(e, "TPM2_FlushContext", tcti));
    match (result, flushed) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

/// The owner storage root key: ECC P-256, AES-128-CFB, restricted decrypt, noDA, re-derived
/// identically from the owner seed each time (the `tpm2_createprimary -G ecc256:null:aes128cfb`
/// template), so nothing needs persisting. The caller must flush it.
fn create_srk(ctx: &mut Context, tcti: &str) -> Result<KeyHandle, TpmError> {
    let template = srk_template().map_err(|e| tss_error(e, "build SRK template", tcti))?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create_primary(Hierarchy::Owner, template, None, None, None, None)
    })
    .map(|r| r.key_handle)
    .map_err(|e| key_error(e, "TPM2_CreatePrimary(owner SRK)", tcti, TPM_RH_OWNER))
}

fn srk_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// `TPM2_Create` + `TPM2_Load` under the SRK, then `TPM2_EvictControl` to `handle`.
/// Returns the ESYS handle of the persistent object.
fn create_and_persist(
    ctx: &mut Context,
    srk: KeyHandle,
    template: Public,
    auth: Option<&Zeroizing<Vec<u8>>>,
    handle: PersistentTpmHandle,
    s: &TpmSettings,
) -> Result<KeyHandle, TpmError> {
    let auth_value = match auth {
        Some(a) => Some(Auth::try_from(a.as_slice()).map_err(|_| TpmError::AuthTooLong { len: a.len() })?),
        None => None,
    };
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create(srk, template, auth_value, None, None, None)
        })
        .map_err(|e| tss_error(e, "TPM2_Create", &s.tcti))?;
    let loaded = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(srk, created.out_private, created.out_public)
        })
        .map_err(|e| tss_error(e, "TPM2_Load", &s.tcti))?;
    let persisted = with_transient(ctx, loaded.into(), &s.tcti, |ctx| {
        ctx.execute_with_session(Some(AuthSession::Password), |c| {
            c.evict_control(Provision::Owner, loaded.into(), Persistent::Persistent(handle))
        })
        .map_err(|e| match raw_rc(&e) {
            Some(rc) if tpm_code(rc) == Some(TPM_RC_NV_DEFINED) => {
                TpmError::HandleOccupied { handle: s.handle }
            }
            _ => tss_error(e, "TPM2_EvictControl", &s.tcti),
        })
    })?;
    Ok(persisted.into())
}

/// The transient attestation key and its public forms.
struct Ak {
    handle: KeyHandle,
    spki_der: Vec<u8>,
    tpmt_public: Vec<u8>,
}

/// Creates the AK as a primary in the endorsement hierarchy. The caller must flush it.
fn create_ak(ctx: &mut Context, tcti: &str) -> Result<Ak, TpmError> {
    let template = ak_template().map_err(|e| tss_error(e, "build AK template", tcti))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
        })
        .map_err(|e| key_error(e, "TPM2_CreatePrimary(AK)", tcti, TPM_RH_ENDORSEMENT))?;
    let handle = created.key_handle;
    let forms = with_transient_on_error(ctx, handle.into(), || {
        let Public::Ecc { unique, .. } = &created.out_public else {
            return Err(TpmError::Device {
                operation: "TPM2_CreatePrimary(AK)",
                reason: "the TPM returned a non-ECC AK".into(),
            });
        };
        let key = verifying_key_from_point(unique)
            .map_err(|reason| TpmError::Device { operation: "TPM2_CreatePrimary(AK)", reason })?;
        Ok((spki_der_of(&key)?, marshall_public(&created.out_public, tcti)?))
    })?;
    Ok(Ak { handle, spki_der: forms.0, tpmt_public: forms.1 })
}

/// Runs `f`; if it fails, flushes `object` (best effort) before returning the error.
fn with_transient_on_error<T>(
    ctx: &mut Context,
    object: ObjectHandle,
    f: impl FnOnce() -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let result = f();
    if result.is_err() {
        // The original error is the one worth reporting.
        let _ = ctx.flush_context(object);
    }
    result
}

fn ak_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(tss_esapi::structures::KeyDerivationFunctionScheme::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The `TPM2_Certify` output: marshalled `TPMS_ATTEST` and the AK's DER signature.
struct Certified {
    attest: Vec<u8>,
    signature_der: Vec<u8>,
}

fn certify(
    ctx: &mut Context,
    key: KeyHandle,
    ak: KeyHandle,
    nonce: &[u8],
    s: &TpmSettings,
) -> Result<Certified, TpmError> {
    let qualifying = Data::try_from(nonce).map_err(|_| TpmError::NonceTooLong { len: nonce.len() })?;
    // Two authorisations: the certified object (its auth value) and the AK (empty).
    let (attest, signature) = ctx
        .execute_with_sessions((Some(AuthSession::Password), Some(AuthSession::Password), None), |c| {
            c.certify(key.into(), ak, qualifying, SignatureScheme::Null)
        })
        .map_err(|e| key_error(e, "TPM2_Certify", &s.tcti, s.handle))?;
    let attest = attest.marshall().map_err(|e| tss_error(e, "marshal TPMS_ATTEST", &s.tcti))?;
    let signature = low_s_signature(&signature, "TPM2_Certify")?;
    Ok(Certified { attest, signature_der: signature.to_der().as_bytes().to_vec() })
}

/// Reads the first EK certificate present in NV (ECC P-256, then RSA 2048, then ECC P-384).
fn read_ek_certificate(ctx: &mut Context, tcti: &str) -> Result<Option<(u32, Vec<u8>)>, TpmError> {
    let present = list_handles(ctx, NV_INDEX_FIRST, tcti)?;
    let Some(&index) = EK_CERT_NV_INDICES.iter().find(|i| present.contains(i)) else {
        return Ok(None);
    };
    let nv_handle = NvIndexTpmHandle::new(index).map_err(|e| tss_error(e, "NV index", tcti))?;
    let auth_obj = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv_handle)))
        .map_err(|e| tss_error(e, "Esys_TR_FromTPMPublic(EK certificate)", tcti))?;
    // EK certificate indices are readable with their own (empty) auth value.
    let der = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            nv::read_full(c, NvAuth::NvIndex(auth_obj.into()), nv_handle)
        })
        .map_err(|e| tss_error(e, "TPM2_NV_Read(EK certificate)", tcti))?;
    Ok(Some((index, der)))
}

// ---- response-code classification -------------------------------------------------------

/// `TPM_RC_NV_DEFINED`: the persistent handle is already in use.
const TPM_RC_NV_DEFINED: u16 = 0x014C;
/// Layer of TPM response codes (`0`) and of TPM codes relayed by a resource manager.
const LAYER_TPM: u32 = 0;
const LAYER_RESMGR_TPM: u32 = 12 << 16;
const LAYER_ESYS: u32 = 7 << 16;
const LAYER_SYS: u32 = 8 << 16;
const LAYER_TCTI: u32 = 10 << 16;
/// TSS base codes meaning the transport failed (`TSS2_BASE_RC_*`).
const TRANSPORT_BASE_CODES: [u32; 6] = [7, 8, 9, 10, 17, 19];

/// What a response code means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RcClass {
    /// The transport broke: reconnecting may help.
    ConnectionLost,
    /// `TPM_RC_HANDLE` (format 1, e.g. 0x18b): the handle does not exist.
    HandleMissing,
    /// `TPM_RC_AUTH_FAIL` / `TPM_RC_BAD_AUTH`.
    AuthFailed,
    /// `TPM_RC_LOCKOUT`.
    Lockout,
    /// A TPM warning after which the command may simply be retried.
    Busy,
    /// Anything else.
    Other,
}

/// The raw `TSS2_RC` of a tss-esapi error. tss-esapi 7.7 keeps it private, but prints it as
/// "Response code value: 0x…" in the inner code's `Display`.
fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::Success) => return Some(0),
        tss_esapi::Error::WrapperError(_) => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// The 16-bit TPM response code if `rc` comes from the TPM (directly or via a resource manager).
fn tpm_code(rc: u32) -> Option<u16> {
    let layer = rc & 0xFFFF_0000;
    if layer == LAYER_TPM || layer == LAYER_RESMGR_TPM {
        u16::try_from(rc & 0xFFFF).ok()
    } else {
        None
    }
}

fn classify(rc: u32) -> RcClass {
    let layer = rc & 0xFFFF_0000;
    if layer == LAYER_TCTI {
        return RcClass::ConnectionLost;
    }
    if (layer == LAYER_ESYS || layer == LAYER_SYS) && TRANSPORT_BASE_CODES.contains(&(rc & 0xFFFF)) {
        return RcClass::ConnectionLost;
    }
    let Some(code) = tpm_code(rc) else {
        return RcClass::Other;
    };
    if code & 0x0080 != 0 {
        // Format 1: error number in bits 0..5, handle/session/parameter number above.
        return match code & 0x003F {
            0x0B => RcClass::HandleMissing,
            0x0E | 0x22 => RcClass::AuthFailed,
            _ => RcClass::Other,
        };
    }
    // Format 0 warnings have VER1 (0x100) and S (0x800) set.
    if code & 0x0900 == 0x0900 {
        return match code & 0x007F {
            0x21 => RcClass::Lockout,
            0x02 | 0x03 | 0x04 | 0x08 | 0x09 | 0x0A | 0x20 | 0x22 | 0x23 => RcClass::Busy,
            _ => RcClass::Other,
        };
    }
    RcClass::Other
}

fn describe_tss(e: &tss_esapi::Error) -> String {
    match raw_rc(e) {
        Some(rc) => format!("{e} (TSS2_RC {rc:#x})"),
        None => e.to_string(),
    }
}

/// Maps a tss-esapi error for `operation` to a [`TpmError`].
fn tss_error(e: tss_esapi::Error, operation: &'static str, tcti: &str) -> TpmError {
    map_error(e, operation, tcti, None)
}

/// Like [`tss_error`], for commands authorised on `handle`: auth failures, lockout and
/// `TPM_RC_HANDLE` become [`TpmError::WrongAuth`], [`TpmError::Lockout`] and
/// [`TpmError::HandleEmpty`].
fn key_error(e: tss_esapi::Error, operation: &'static str, tcti: &str, handle: u32) -> TpmError {
    map_error(e, operation, tcti, Some(handle))
}

fn map_error(e: tss_esapi::Error, operation: &'static str, tcti: &str, handle: Option<u32>) -> TpmError {
    let class = raw_rc(&e).map(classify).unwrap_or(RcClass::Other);
    let reason = describe_tss(&e);
    match (class, handle) {
        (RcClass::ConnectionLost, _) => TpmError::ConnectionLost { tcti: tcti.to_string(), reason },
        (RcClass::Busy, _) => TpmError::Busy { operation, reason },
        (RcClass::AuthFailed, Some(handle)) => TpmError::WrongAuth { handle },
        (RcClass::Lockout, Some(handle)) => TpmError::Lockout { handle },
        (RcClass::HandleMissing, Some(handle)) => TpmError::HandleEmpty { handle },
        _ => TpmError::Device { operation, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashSigner as _;
    use p256::ecdsa::SigningKey;

    fn rc_error(rc: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
    }

    #[test]
    fn raw_rc_round_trips_both_formats() {
        assert_eq!(raw_rc(&rc_error(0x18b)), Some(0x18b));
        assert_eq!(raw_rc(&rc_error(0x000a_000a)), Some(0x000a_000a));
        assert_eq!(raw_rc(&rc_error(0x921)), Some(0x921));
        assert_eq!(raw_rc(&tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam)), None);
    }

    #[test]
    fn classifies_response_codes() {
        assert_eq!(classify(0x18b), RcClass::HandleMissing);
        assert_eq!(classify(0x98e), RcClass::AuthFailed);
        assert_eq!(classify(0x9a2), RcClass::AuthFailed);
        assert_eq!(classify(0x921), RcClass::Lockout);
        assert_eq!(classify(0x922), RcClass::Busy);
        assert_eq!(classify(0x902), RcClass::Busy);
        assert_eq!(classify(0x000a_000a), RcClass::ConnectionLost);
        assert_eq!(classify(0x0007_000a), RcClass::ConnectionLost);
        assert_eq!(classify(0x0007_000b), RcClass::Other);
        assert_eq!(classify(0x000c_098e), RcClass::AuthFailed);
        assert_eq!(classify(0x101), RcClass::Other);
        assert_eq!(tpm_code(0x14c), Some(TPM_RC_NV_DEFINED));
    }

    #[test]
    fn maps_errors_to_variants() {
        let e = key_error(rc_error(0x98e), "TPM2_Sign", "t", 0x8101_0010);
        assert!(matches!(e, TpmError::WrongAuth { handle: 0x8101_0010 }));
        let e = key_error(rc_error(0x921), "TPM2_Sign", "t", 1);
        assert!(matches!(e, TpmError::Lockout { handle: 1 }));
        let e = key_error(rc_error(0x18b), "x", "t", 7);
        assert!(matches!(e, TpmError::HandleEmpty { handle: 7 }));
        let e = tss_error(rc_error(0x18b), "x", "t");
        assert!(matches!(e, TpmError::Device { operation: "x", .. }));
        let e = tss_error(rc_error(0x922), "TPM2_Sign", "t");
        assert!(matches!(e, TpmError::Busy { operation: "TPM2_Sign", .. }));
        assert!(e.is_retryable());
        let e = tss_error(rc_error(0x000a_000a), "TPM2_Sign", "swtpm:port=1");
        assert!(matches!(&e, TpmError::ConnectionLost { tcti, .. } if tcti == "swtpm:port=1"));
        assert!(e.is_retryable());
        let e = tss_error(rc_error(0x101), "TPM2_Sign", "t");
        assert!(matches!(e, TpmError::Device { operation: "TPM2_Sign", .. }));
        assert!(!e.is_retryable());
        assert!(!TpmError::BadSignature.is_retryable());
        assert!(!TpmError::WrongAuth { handle: 1 }.is_retryable());
    }

    #[test]
    fn handle_ranges_are_checked() {
        assert!(persistent_handle(0x8101_0010).is_ok());
        assert!(matches!(
            persistent_handle(0x8001_0000),
            Err(TpmError::InvalidHandle { handle: 0x8001_0000 })
        ));
        assert!(matches!(
            owner_persistent_handle(0x8180_0000),
            Err(TpmError::InvalidHandle { handle: 0x8180_0000 })
        ));
        assert!(owner_persistent_handle(0x817f_ffff).is_ok());
    }

    #[test]
    fn pad32_left_pads_and_rejects_long_values() {
        let p = pad32(&[1, 2]).unwrap();
        assert_eq!(&p[..30], &[0u8; 30]);
        assert_eq!(&p[30..], &[1, 2]);
        let mut long = vec![0u8; 2];
        long.extend_from_slice(&[7u8; 32]);
        assert_eq!(pad32(&long).unwrap(), [7u8; 32]);
        assert!(pad32(&[1u8; 33]).is_err());
    }

    #[test]
    fn signatures_are_normalised_to_low_s() {
        let key = SigningKey::from_slice(&[0x42; 32]).unwrap();
        let digest = [9u8; 32];
        let sig: EcdsaSignature = key.sign_prehash(&digest).unwrap();
        let (r, s) = sig.split_scalars();
        let high_s = EcdsaSignature::from_scalars(r, -*s).unwrap();
        assert!(high_s.normalize_s().is_some() || sig.normalize_s().is_some());
        let low = high_s.normalize_s().unwrap_or(high_s);
        assert!(low.normalize_s().is_none());
        key.verifying_key().verify_prehash(&digest, &low).unwrap();
    }

    #[test]
    fn auth_file_strips_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth");
        std::fs::write(&p, b"s3cret\r\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            // Readable by others: refused.
            assert!(matches!(read_auth_file(&p), Err(TpmError::AuthFile { .. })));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(read_auth_file(&p).unwrap().as_slice(), b"s3cret");
        std::fs::write(&p, b"s3cret\n\n").unwrap();
        assert_eq!(read_auth_file(&p).unwrap().as_slice(), b"s3cret\n");
        std::fs::write(&p, [b'x'; 33]).unwrap();
        assert!(matches!(read_auth_file(&p), Err(TpmError::AuthTooLong { len: 33 })));
        let missing = dir.path().join("missing");
        assert!(matches!(read_auth_file(&missing), Err(TpmError::AuthFile { .. })));
    }

    #[test]
    fn invalid_tcti_is_reported() {
        let err = connect("bogus:x").unwrap_err();
        assert!(matches!(err, TpmError::InvalidTcti { tcti, .. } if tcti == "bogus:x"));
    }
}
