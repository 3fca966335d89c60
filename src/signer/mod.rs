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
}

impl SignerError {
    /// Whether trying again later can succeed (a device hiccup) as opposed to a configuration problem.
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "pkcs11")]
            SignerError::Pkcs11(e) => e.is_retryable(),
            #[cfg(feature = "tpm")]
            SignerError::Tpm(e) => e.is_retryable(),
            SignerError::Injected(_) | SignerError::ThreadStopped => true,
            SignerError::Unavailable(_) | SignerError::UnsupportedKey(_) => false,
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

#[cfg(feature = "server")]
pub use thread::SignerHandle;

#[cfg(feature = "server")]
mod thread {
    use super::{CounterObservation, HeadCounter, HeadSigner, PublicKey, SignerError};
    use tokio::sync::{mpsc, oneshot};

    type Reply<T> = oneshot::Sender<Result<T, SignerError>>;

    /// One device call, run on the signer thread in the order sent.
    enum Job {
        Sign(Vec<u8>, Reply<Vec<u8>>),
        AdvanceCounter(Option<u64>, Reply<Option<HeadCounter>>),
        ReadCounter(Reply<Option<CounterObservation>>),
        Release(Reply<()>),
        Close(Reply<()>),
    }

    /// Async handle to a signer that lives on its own OS thread.
    #[derive(Clone)]
    pub struct SignerHandle {
        jobs: mpsc::Sender<Job>,
        public_key: PublicKey,
        description: String,
    }

    impl SignerHandle {
        /// Opens the signer on a new thread (so every device call, including opening, happens there) and
        /// returns once it is ready, or with the error that prevented it.
        pub fn spawn<F>(open: F) -> Result<SignerHandle, SignerError>
        where
            F: FnOnce() -> Result<Box<dyn HeadSigner>, SignerError> + Send + 'static,
        {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (jobs, mut rx) = mpsc::channel::<Job>(64);
            std::thread::Builder::new()
                .name("anchorlog-signer".into())
                .spawn(move || {
                    let mut signer = match open() {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let info = (signer.public_key_spki_der(), signer.describe());
                    if ready_tx.send(Ok(info)).is_err() {
                        return;
                    }
                    while let Some(job) = rx.blocking_recv() {
                        // A caller that gave up waiting is not an error of the device: sends may fail.
                        match job {
                            Job::Release(reply) => {
                                signer.release();
                                let _ = reply.send(Ok(()));
                            }
                            Job::Close(reply) => {
                                // The device is let go of before the caller hears back.
                                drop(signer);
                                let _ = reply.send(Ok(()));
                                return;
                            }
                            Job::Sign(message, reply) => {
                                let _ = reply.send(signer.sign(&message));
                            }
                            Job::AdvanceCounter(above, reply) => {
                                let _ = reply.send(signer.advance_counter(above));
                            }
                            Job::ReadCounter(reply) => {
                                let _ = reply.send(signer.read_counter());
                            }
                        }
                    }
                })
                .map_err(|_| SignerError::ThreadStopped)?;
            let (spki, description) = ready_rx.recv().map_err(|_| SignerError::ThreadStopped)??;
            let public_key = PublicKey::from_spki_der(&spki)?;
            Ok(SignerHandle { jobs, public_key, description })
        }

        /// Signs `message` on the signer thread.
        pub async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, SignerError> {
            self.call(|tx| Job::Sign(message, tx)).await
        }

        /// Reserves the counter value for the next head on the signer thread
        /// ([`HeadSigner::advance_counter`]).
        pub async fn advance_counter(&self, above: Option<u64>) -> Result<Option<HeadCounter>, SignerError> {
            self.call(|tx| Job::AdvanceCounter(above, tx)).await
        }

        /// Reads the device's counter on the signer thread ([`HeadSigner::read_counter`]).
        pub async fn read_counter(&self) -> Result<Option<CounterObservation>, SignerError> {
            self.call(Job::ReadCounter).await
        }

        /// Lets go of the device connection until the next call ([`HeadSigner::release`]).
        pub async fn release(&self) -> Result<(), SignerError> {
            self.call(Job::Release).await
        }

        /// Closes the signer: returns once the device was let go of; every clone fails from then on.
        pub async fn close(self) -> Result<(), SignerError> {
            self.call(Job::Close).await
        }

        async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, SignerError> {
            let (tx, rx) = oneshot::channel();
            self.jobs.send(job(tx)).await.map_err(|_| SignerError::ThreadStopped)?;
            rx.await.map_err(|_| SignerError::ThreadStopped)?
        }

        /// The signer's public key.
        pub fn public_key(&self) -> &PublicKey {
            &self.public_key
        }

        /// Description of the device and key.
        pub fn description(&self) -> &str {
            &self.description
        }
    }
}
