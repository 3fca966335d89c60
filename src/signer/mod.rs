//! Head signers: the hardware that holds the key, behind one trait, driven from one dedicated thread.
//!
//! PKCS#11 sessions and TPM contexts are not `Sync` and their calls block, so each signer lives on its own
//! OS thread and the async service talks to it over a channel ([`SignerHandle`]). The service only ever sees
//! the public key; the private key stays in the device.

pub mod attestation;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod x509;

use crate::ledger::counter::CounterObservation;
use crate::ledger::head::HeadCounter;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;

/// A signing failure, from any backend.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// A PKCS#11 failure.
    #[cfg(feature = "pkcs11")]
    #[error(transparent)]
    Pkcs11(#[from] pkcs11::Pkcs11Error),
    /// A TPM 2.0 failure.
    #[cfg(feature = "tpm")]
    #[error(transparent)]
    Tpm(#[from] tpm::TpmError),
    /// The configured backend is not compiled into this build.
    #[error("signer backend {0:?} is not available in this build")]
    Unavailable(&'static str),
    /// The signer thread is gone (it panicked or the service is shutting down).
    #[error("the signer thread has stopped")]
    ThreadStopped,
    /// The device's public key is not an ECDSA P-256 key.
    #[error("the signing key is not an ECDSA P-256 key: {0}")]
    UnsupportedKey(String),
    /// A fault injected by a test double (only used by fault-injection tests).
    #[error("injected fault: {0}")]
    Injected(String),
    /// A non-retryable fault, injected by a test double (only used by fault-injection tests).
    #[error("injected unrecoverable fault: {0}")]
    InjectedUnrecoverable(String),
    /// The device did not answer within `signer.sign_timeout_ms`: the thread waiting in it was abandoned and the
    /// next call opens a fresh session on a new thread (docs/RELIABILITY.md, "A hung or slow HSM/TPM").
    #[error(
        "the signer did not answer within {timeout_ms} ms (signer.sign_timeout_ms): its thread was abandoned in the \
         device ({stuck} abandoned threads still waiting) and the next attempt opens a fresh session"
    )]
    Timeout {
        /// The configured timeout.
        timeout_ms: u64,
        /// Abandoned threads still blocked in the device, this one included.
        stuck: usize,
    },
    /// Too many abandoned threads are still blocked in the device to open another one.
    #[error(
        "{stuck} signer threads are still blocked in the device after timing out; no further session is opened \
         until one of them returns (the device or its link is hung: check it, restart it or the appliance)"
    )]
    Stuck {
        /// Abandoned threads still blocked in the device.
        stuck: usize,
    },
    /// An earlier error that retrying cannot fix is being backed off: the device was not called.
    #[error(
        "not retried for another {retry_in_ms} ms (back-off after an error retrying cannot fix): {error}"
    )]
    BackingOff {
        /// The error that started the back-off.
        error: String,
        /// When the next attempt may touch the device.
        retry_in_ms: u64,
    },
    /// The PIN file still holds the PIN the token refused: logging in with it again would only count towards
    /// locking the token, so it is not tried.
    #[error(
        "the PIN in {path} is the one the token refused (CKR_PIN_INCORRECT); not logging in with it again, since \
         every attempt counts towards locking the token: write the correct PIN to that file (no restart needed)"
    )]
    PinRefusedBefore {
        /// The PIN file.
        path: String,
    },
    /// The PIN file could not be read when reopening the device.
    #[error("cannot read the PIN file to reopen the signer: {0}")]
    PinFile(String),
    /// A reopened device holds a different key than the one this run signs with.
    #[error("after reopening, the device holds a different key ({0}) than the one this run signs with; restart to use it")]
    KeyChanged(String),
}

impl SignerError {
    /// Whether trying again later can succeed (a device hiccup) as opposed to a configuration problem.
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "pkcs11")]
            SignerError::Pkcs11(e) => e.is_retryable(),
            #[cfg(feature = "tpm")]
            SignerError::Tpm(e) => e.is_retryable(),
            SignerError::Injected(_)
            | SignerError::ThreadStopped
            | SignerError::Timeout { .. }
            | SignerError::Stuck { .. } => true,
            SignerError::Unavailable(_)
            | SignerError::UnsupportedKey(_)
            | SignerError::InjectedUnrecoverable(_)
            | SignerError::BackingOff { .. }
            | SignerError::PinRefusedBefore { .. }
            | SignerError::PinFile(_)
            | SignerError::KeyChanged(_) => false,
        }
    }
}

/// A device that signs block heads with a non-exportable ECDSA P-256 key.
pub trait HeadSigner: Send {
    /// The public key as DER SubjectPublicKeyInfo.
    fn public_key_spki_der(&self) -> Vec<u8>;
    /// Signs `message` (ECDSA P-256 over SHA-256(message)); returns the DER signature.
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignerError>;
    /// A human-readable description of the device and key, without secrets.
    fn describe(&self) -> String;
    /// Reserves the monotonic counter value for the next head, greater than `above` (the newest stored head's
    /// value; `None` when no head carries one yet): the device's current value if it already is (a value an
    /// earlier attempt reserved but no stored head carries), else the value after one increment. `None` for a
    /// device without a counter (PKCS#11, a TPM without `counter_index`).
    fn advance_counter(&mut self, above: Option<u64>) -> Result<Option<HeadCounter>, SignerError> {
        let _ = above;
        Ok(None)
    }
    /// The counter as the device reports it now, without changing it (start-up reconciliation); `None` for a
    /// device without a counter.
    fn read_counter(&mut self) -> Result<Option<CounterObservation>, SignerError> {
        Ok(None)
    }
    /// Lets go of the device connection until the next call (which reconnects and checks the key is still the
    /// same), so another signer can use a device that serves one connection at a time (swtpm). No-op where the
    /// device serves many (PKCS#11).
    fn release(&mut self) {}
    /// Lets go of a device whose call outlived its timeout, on the abandoned thread once the call returned. The
    /// default closes it like a drop; PKCS#11 closes its session but never calls `C_Finalize`, which would end
    /// every session of the process, the fresh one's included.
    fn abandon(self: Box<Self>) {}
}

#[cfg(feature = "pkcs11")]
impl HeadSigner for pkcs11::Pkcs11Signer {
    fn public_key_spki_der(&self) -> Vec<u8> {
        pkcs11::Pkcs11Signer::public_key_spki_der(self).to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(pkcs11::Pkcs11Signer::sign(self, message)?)
    }
    fn describe(&self) -> String {
        pkcs11::Pkcs11Signer::describe(self)
    }
    fn abandon(self: Box<Self>) {
        pkcs11::Pkcs11Signer::abandon(*self)
    }
}

#[cfg(feature = "tpm")]
impl HeadSigner for tpm::TpmSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        tpm::TpmSigner::public_key_spki_der(self).to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(tpm::TpmSigner::sign(self, message)?)
    }
    fn describe(&self) -> String {
        tpm::TpmSigner::describe(self)
    }
    fn advance_counter(&mut self, above: Option<u64>) -> Result<Option<HeadCounter>, SignerError> {
        Ok(tpm::TpmSigner::advance_counter(self, above)?)
    }
    fn read_counter(&mut self) -> Result<Option<CounterObservation>, SignerError> {
        Ok(tpm::TpmSigner::read_counter(self)?)
    }
    fn release(&mut self) {
        tpm::TpmSigner::release(self)
    }
}

/// The public half of the head-signing key, as every verifier needs it.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Hex SHA-256 of `spki_der`.
    pub key_id: String,
    /// The parsed key.
    pub verifying_key: VerifyingKey,
    /// The log origin the key's certificate names (`None` for a bare public key or another certificate): a
    /// verifier given no `--origin` pins every head to it ([`x509::certified_origin`]).
    pub certified_origin: Option<String>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo holding an ECDSA P-256 key.
    pub fn from_spki_der(spki_der: &[u8]) -> Result<Self, SignerError> {
        let verifying_key = VerifyingKey::from_public_key_der(spki_der)
            .map_err(|e| SignerError::UnsupportedKey(e.to_string()))?;
        Ok(Self {
            spki_der: spki_der.to_vec(),
            key_id: x509::key_id(spki_der),
            verifying_key,
            certified_origin: None,
        })
    }

    /// Parses a PEM public key (`-----BEGIN PUBLIC KEY-----`) or a PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self, SignerError> {
        if pem.contains("BEGIN CERTIFICATE") {
            use der::{DecodePem as _, Encode as _};
            let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| SignerError::UnsupportedKey(format!("not a PEM certificate: {e}")))?;
            let spki = cert
                .tbs_certificate
                .subject_public_key_info
                .to_der()
                .map_err(|e| SignerError::UnsupportedKey(e.to_string()))?;
            let mut key = Self::from_spki_der(&spki)?;
            key.certified_origin = x509::certified_origin(&cert);
            return Ok(key);
        }
        let verifying_key =
            VerifyingKey::from_public_key_pem(pem).map_err(|e| SignerError::UnsupportedKey(e.to_string()))?;
        use p256::pkcs8::EncodePublicKey as _;
        let der =
            verifying_key.to_public_key_der().map_err(|e| SignerError::UnsupportedKey(e.to_string()))?;
        Self::from_spki_der(der.as_bytes())
    }

    /// Whether `signature` (DER) is a valid signature of `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match DerSignature::try_from(signature) {
            Ok(sig) => self.verifying_key.verify(message, &sig).is_ok(),
            Err(_) => false,
        }
    }
}

pub mod health;
pub use health::{SignerHealth, SignerSupervision};

#[cfg(feature = "server")]
pub use thread::SignerHandle;

#[cfg(feature = "server")]
mod thread;
