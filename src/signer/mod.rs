//! Head signers: the hardware that holds the key, behind one trait, driven from one dedicated thread.
//!
//! PKCS#11 sessions and TPM contexts are not `Sync` and their calls block, so each signer lives on its own
//! OS thread and the async service talks to it over a channel ([`SignerHandle`]). The service only ever sees
//! the public key; the private key stays in the device. Verifying signatures is not this layer's business: the
//! verification key is the core's (`anchorlog_core::key::PublicKey`).

#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod x509;

use anchorlog_core::counter::CounterObservation;
use anchorlog_core::head::HeadCounter;

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
    #[error(transparent)]
    UnsupportedKey(#[from] anchorlog_core::key::KeyError),
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

pub mod health;
pub use health::{SignerHealth, SignerSupervision};

#[cfg(feature = "server")]
pub use thread::SignerHandle;

#[cfg(feature = "server")]
mod thread;
