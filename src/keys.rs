//! `anchorlog keys`: create the signing key inside the device, export its public key and a certificate for
//! it, and show what the device says about the key. The private key never leaves the device; export writes
//! public material only.

use crate::config::{read_secret_file, Config, ConfigError, SignerBackend};
use crate::signer::{x509, HeadSigner, SignerError};
use std::path::{Path, PathBuf};

/// File name of the exported public key (PEM SubjectPublicKeyInfo).
pub const PUBLIC_KEY_FILE: &str = "signer.pem";
/// File name of the exported self-signed certificate (PEM).
pub const CERTIFICATE_FILE: &str = "signer.crt";
/// Validity of the exported certificate.
pub const CERTIFICATE_DAYS: u32 = 3650;

/// A key-management failure.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Device problem.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// Certificate building problem.
    #[error("building the certificate: {0}")]
    Certificate(#[from] x509::CertificateError),
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The backend is not available.
    #[error("the {0} backend is not available in this build")]
    Unavailable(&'static str),
    /// Key attestation needs a TPM.
    #[error("key attestation is only available for signer.backend = \"tpm\" (a PKCS#11 HSM attests its keys with vendor tools)")]
    NotAttestable,
    /// A description could not be encoded.
    #[error("encoding the output: {0}")]
    Json(String),
    /// A key rotation cannot be prepared (the message says why and what to do).
    #[error("{0}")]
    Rotate(String),
    /// The pending rotation file.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
    /// Reading the database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[cfg(feature = "pkcs11")]
fn pkcs11_parts(
    config: &Config,
) -> Result<(crate::signer::pkcs11::Pkcs11Settings, zeroize::Zeroizing<String>), KeysError> {
    let p = config.signer.pkcs11.clone().ok_or(KeysError::Unavailable("pkcs11"))?;
    let pin = read_secret_file("signer.pkcs11.pin_file", &p.pin_file)?;
    Ok((
        crate::signer::pkcs11::Pkcs11Settings {
            module: p.module,
            token_label: p.token_label,
            key_label: p.key_label,
        },
        pin,
    ))
}

#[cfg(feature = "tpm")]
fn tpm_parts(
    config: &Config,
) -> Result<(crate::signer::tpm::TpmSettings, Option<crate::signer::tpm::AuthValue>), KeysError> {
    let t = config.signer.tpm.as_ref().ok_or_else(|| ConfigError::Invalid {
        key: "signer.tpm".into(),
        problem: "a [signer.tpm] section (tcti, handle) is required for the TPM backend".into(),
    })?;
    Ok(crate::signer::tpm::settings_from_config(t).map_err(SignerError::from)?)
}

/// What `keys generate` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generate {
    /// The signing key, and in a TPM with `signer.tpm.counter_index` also the head counter.
    KeyAndCounter,
    /// Only the TPM head counter, for a key that exists already (a log from before counters).
    CounterOnly,
}

/// Creates the signing key in the configured device; returns a JSON description of the new key. With
/// `use_tpm`, the key is created in the TPM named by `[signer.tpm]` whatever `signer.backend` says, together
/// with the head counter when `signer.tpm.counter_index` is set (both or neither).
pub fn generate(config: &Config, use_tpm: bool, what: Generate) -> Result<serde_json::Value, KeysError> {
    let backend =
        if use_tpm || what == Generate::CounterOnly { SignerBackend::Tpm } else { config.signer.backend };
    match backend {
        #[cfg(feature = "pkcs11")]
        SignerBackend::Pkcs11 => {
            let (settings, pin) = pkcs11_parts(config)?;
            let attrs = crate::signer::pkcs11::generate_key(&settings, &pin).map_err(SignerError::from)?;
            Ok(attributes_json(&attrs))
        }
        #[cfg(not(feature = "pkcs11"))]
        SignerBackend::Pkcs11 => Err(KeysError::Unavailable("pkcs11")),
        #[cfg(feature = "tpm")]
        SignerBackend::Tpm => {
            use crate::signer::tpm;
            let (settings, auth) = tpm_parts(config)?;
            let mut v = serde_json::json!({});
            if what == Generate::KeyAndCounter {
                tpm::check_free(&settings).map_err(SignerError::from)?;
                let attrs = tpm::generate_key(&settings, auth.as_ref()).map_err(SignerError::from)?;
                v = tpm_attributes_json(&attrs);
                v["handle"] = format!("{:#010x}", settings.handle).into();
            } else if settings.counter_index.is_none() {
                return Err(SignerError::from(tpm::TpmError::CounterNotConfigured).into());
            }
            if settings.counter_index.is_some() {
                let counter = tpm::provision_counter(&settings, auth.as_ref()).map_err(SignerError::from)?;
                v["counter"] = serde_json::to_value(counter).map_err(|e| KeysError::Json(e.to_string()))?;
            }
            Ok(v)
        }
        #[cfg(not(feature = "tpm"))]
        SignerBackend::Tpm => {
            let _ = what;
            Err(KeysError::Unavailable("tpm"))
        }
    }
}

/// Opens the configured signer directly (on the calling thread; for the `keys` commands only).
pub fn open(config: &Config) -> Result<Box<dyn HeadSigner>, KeysError> {
    match config.signer.backend {
        #[cfg(feature = "pkcs11")]
        SignerBackend::Pkcs11 => {
            let (settings, pin) = pkcs11_parts(config)?;
            let s = crate::signer::pkcs11::Pkcs11Signer::open(&settings, &pin).map_err(SignerError::from)?;
            Ok(Box::new(s))
        }
        #[cfg(not(feature = "pkcs11"))]
        SignerBackend::Pkcs11 => Err(KeysError::Unavailable("pkcs11")),
        #[cfg(feature = "tpm")]
        SignerBackend::Tpm => {
            let (settings, auth) = tpm_parts(config)?;
            let s =
                crate::signer::tpm::TpmSigner::open(&settings, auth.as_ref()).map_err(SignerError::from)?;
            Ok(Box::new(s))
        }
        #[cfg(not(feature = "tpm"))]
        SignerBackend::Tpm => Err(KeysError::Unavailable("tpm")),
    }
}

/// What the device reports about the key, as JSON (`keys show`).
pub fn show(config: &Config) -> Result<serde_json::Value, KeysError> {
    match config.signer.backend {
        #[cfg(feature = "pkcs11")]
        SignerBackend::Pkcs11 => {
            let (settings, pin) = pkcs11_parts(config)?;
            let s = crate::signer::pkcs11::Pkcs11Signer::open(&settings, &pin).map_err(SignerError::from)?;
            let attrs = s.key_attributes().map_err(SignerError::from)?;
            let mut v = attributes_json(&attrs);
            v["key_id"] = anchorlog_core::key::key_id(s.public_key_spki_der()).into();
            v["device"] = s.describe().into();
            v["public_key_pem"] = x509::public_key_pem(s.public_key_spki_der())?.into();
            Ok(v)
        }
        #[cfg(not(feature = "pkcs11"))]
        SignerBackend::Pkcs11 => Err(KeysError::Unavailable("pkcs11")),
        #[cfg(feature = "tpm")]
        SignerBackend::Tpm => {
            let (settings, auth) = tpm_parts(config)?;
            let mut s =
                crate::signer::tpm::TpmSigner::open(&settings, auth.as_ref()).map_err(SignerError::from)?;
            let attrs = s.key_attributes().map_err(SignerError::from)?;
            let mut v = tpm_attributes_json(&attrs);
            v["handle"] = format!("{:#010x}", settings.handle).into();
            v["key_id"] = anchorlog_core::key::key_id(s.public_key_spki_der()).into();
            v["device"] = s.describe().into();
            v["public_key_pem"] = x509::public_key_pem(s.public_key_spki_der())?.into();
            if let Some(c) = s.read_counter().map_err(SignerError::from)? {
                v["counter"] = serde_json::json!({
                    "index": format!("{:#010x}", c.index),
                    "value": c.value,
                    "reset_count": c.reset_count,
                    "max_orderly_count": c.max_orderly_count,
                });
            }
            Ok(v)
        }
        #[cfg(not(feature = "tpm"))]
        SignerBackend::Tpm => Err(KeysError::Unavailable("tpm")),
    }
}

/// Has the TPM certify the signing key with an attestation key over `nonce` (`keys attest`); the evidence is
/// checked offline by [`anchorlog_core::attestation::verify_attestation`] (`anchorlog verify-attestation`).
pub fn attest(
    config: &Config,
    nonce: &[u8],
) -> Result<anchorlog_core::attestation::KeyAttestation, KeysError> {
    match config.signer.backend {
        #[cfg(feature = "tpm")]
        SignerBackend::Tpm => {
            let (settings, auth) = tpm_parts(config)?;
            Ok(crate::signer::tpm::attest(&settings, auth.as_ref(), nonce).map_err(SignerError::from)?)
        }
        #[cfg(not(feature = "tpm"))]
        SignerBackend::Tpm => {
            let _ = nonce;
            Err(KeysError::Unavailable("tpm"))
        }
        SignerBackend::Pkcs11 => Err(KeysError::NotAttestable),
    }
}

/// The TPM key attributes as `keys generate --tpm` and `keys show` print them.
pub fn tpm_attributes_json(a: &anchorlog_core::attestation::TpmKeyAttributes) -> serde_json::Value {
    serde_json::json!({
        "fixed_tpm": a.fixed_tpm,
        "fixed_parent": a.fixed_parent,
        "sensitive_data_origin": a.sensitive_data_origin,
        "user_with_auth": a.user_with_auth,
        "sign": a.sign,
        "decrypt": a.decrypt,
        "restricted": a.restricted,
    })
}

#[cfg(feature = "pkcs11")]
fn attributes_json(a: &crate::signer::pkcs11::KeyAttributes) -> serde_json::Value {
    serde_json::json!({
        "label": a.label,
        "id": a.id_hex,
        "sensitive": a.sensitive,
        "extractable": a.extractable,
        "always_sensitive": a.always_sensitive,
        "never_extractable": a.never_extractable,
        "local": a.local,
        "can_sign": a.can_sign,
    })
}

/// Writes `signer.pem` (public key) and `signer.crt` (certificate self-signed by the device key, naming the
/// log's `origin`) into `dir`; returns the key id.
pub fn export(signer: &mut dyn HeadSigner, origin: &str, dir: &Path) -> Result<String, KeysError> {
    let spki = signer.public_key_spki_der();
    let cert = x509::log_signer_certificate(
        &spki,
        origin,
        std::time::SystemTime::now(),
        CERTIFICATE_DAYS,
        &mut |tbs: &[u8]| signer.sign(tbs),
    )?;
    std::fs::create_dir_all(dir).map_err(|source| KeysError::Write { path: dir.into(), source })?;
    let pem_path = dir.join(PUBLIC_KEY_FILE);
    std::fs::write(&pem_path, x509::public_key_pem(&spki)?)
        .map_err(|source| KeysError::Write { path: pem_path, source })?;
    let crt_path = dir.join(CERTIFICATE_FILE);
    std::fs::write(&crt_path, x509::certificate_pem(&cert))
        .map_err(|source| KeysError::Write { path: crt_path, source })?;
    Ok(anchorlog_core::key::key_id(&spki))
}

/// Writes a PKCS#10 request for the configured key, signed inside the device ([`x509::log_signer_request`]), as
/// PEM to `out`; returns the key id.
pub fn csr(
    signer: &mut dyn HeadSigner,
    origin: &str,
    subject: Option<&str>,
    out: &Path,
) -> Result<String, KeysError> {
    let spki = signer.public_key_spki_der();
    let der = x509::log_signer_request(&spki, origin, subject, &mut |tbs: &[u8]| signer.sign(tbs))?;
    std::fs::write(out, x509::request_pem(&der))
        .map_err(|source| KeysError::Write { path: out.into(), source })?;
    Ok(anchorlog_core::key::key_id(&spki))
}

/// Where `keys rotate` creates the new key: a new PKCS#11 label, or a new TPM persistent handle (and, optionally, a
/// new head counter index; by default the new key's heads continue the configured counter).
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    /// `--new-key-label` (PKCS#11).
    pub key_label: Option<String>,
    /// `--new-handle` (TPM).
    pub handle: Option<u32>,
    /// `--new-counter-index` (TPM): provision a fresh counter for the new key's heads.
    pub counter_index: Option<u32>,
}

/// The public key and id of the key `config` names (opened and closed again).
fn configured_key(config: &Config) -> Result<anchorlog_core::key::PublicKey, KeysError> {
    let signer = open(config)?;
    Ok(anchorlog_core::key::PublicKey::from_spki_der(&signer.public_key_spki_der())
        .map_err(SignerError::from)?)
}

/// `keys rotate`: creates a new key in the configured device and writes the pending rotation the appliance's next
/// start records in the log ([`crate::rotation`]). The configured key must be the log's current key. Returns what
/// the operator does next, as JSON.
pub fn rotate(config: &Config, reason: &str, new: &NewKey) -> Result<serde_json::Value, KeysError> {
    use crate::rotation::{pending_path, KeySpec, PendingRotation, PENDING_FORMAT};
    use anchorlog_core::verify::keys::{format_counter_index, MAX_REASON_BYTES};
    if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(KeysError::Rotate(format!(
            "--reason must say why, in 1 to {MAX_REASON_BYTES} bytes (it is recorded in the log)"
        )));
    }
    let path = pending_path(&config.storage.database);
    if path.exists() {
        return Err(KeysError::Rotate(format!(
            "a key rotation is already pending ({}): start the appliance with the new key configured to record it, \
             or delete the file to cancel it",
            path.display()
        )));
    }
    let log_key = {
        let conn = crate::store::open_reader(&config.storage.database)?;
        crate::rotation::indexed_log_key(&conn)?
    };
    let Some(log_key) = log_key else {
        return Err(KeysError::Rotate(format!(
            "{} holds no signed head yet: there is nothing to rotate; a new log starts with whatever key is configured",
            config.storage.database.display()
        )));
    };
    // One device connection at a time (a TPM simulator serves one): each step opens and closes its own.
    let old = configured_key(config)?;
    if old.key_id != log_key {
        return Err(KeysError::Rotate(format!(
            "the configured key {} is not the log's current key {log_key}: configure the log's current key, then \
             rotate",
            old.key_id
        )));
    }
    let old_spec = KeySpec::of(config)?;
    let new_spec = match (&old_spec, new) {
        (KeySpec::Pkcs11 { key_label }, NewKey { key_label: Some(l), handle: None, counter_index: None }) => {
            if l == key_label {
                return Err(KeysError::Rotate(format!(
                    "--new-key-label {l:?} is the configured key's label"
                )));
            }
            KeySpec::Pkcs11 { key_label: l.clone() }
        }
        (
            KeySpec::Tpm { handle, counter_index },
            NewKey { key_label: None, handle: Some(h), counter_index: c },
        ) => {
            if format_counter_index(*h) == *handle {
                return Err(KeysError::Rotate(format!(
                    "--new-handle {h:#010x} is the configured key's handle"
                )));
            }
            KeySpec::Tpm {
                handle: format_counter_index(*h),
                counter_index: c.map(format_counter_index).or_else(|| counter_index.clone()),
            }
        }
        (KeySpec::Pkcs11 { .. }, _) => {
            return Err(KeysError::Rotate(
                "a PKCS#11 key is rotated to a new label: give --new-key-label LABEL (and no TPM option)"
                    .into(),
            ))
        }
        (KeySpec::Tpm { .. }, _) => return Err(KeysError::Rotate(
            "a TPM key is rotated to a new persistent handle: give --new-handle 0x810100.. (and optionally \
                 --new-counter-index), not --new-key-label"
                .into(),
        )),
    };
    let new_config = new_spec.apply(config)?;
    let created = match new.counter_index.filter(|i| Some(*i) != old_spec.counter_index()) {
        // A fresh counter for the new key: created with the key (both or neither).
        Some(_) => generate(&new_config, true, Generate::KeyAndCounter)?,
        None => generate_key_only(&new_config)?,
    };
    let new_key = configured_key(&new_config)?;
    let pending = PendingRotation {
        format: PENDING_FORMAT.into(),
        old_key_id: old.key_id.clone(),
        new_key_id: new_key.key_id.clone(),
        new_public_key: x509::public_key_pem(&new_key.spki_der)?,
        reason: reason.to_string(),
        requested_at: anchorlog_core::head::format_time_ms(crate::store::now_ms()).unwrap_or_default(),
        old: old_spec,
        new: new_spec.clone(),
    };
    pending.save(&path)?;
    Ok(serde_json::json!({
        "old_key_id": old.key_id,
        "new_key_id": new_key.key_id,
        "new_key": created,
        "new_public_key": pending.new_public_key,
        "pending": path.display().to_string(),
        "next": format!(
            "set {} in the configuration, then restart the appliance: that start records the rotation in the log \
             (its last head signed by the old key ends with the key rotation record) and signs every later head \
             with the new key. Export the new key for auditors with `anchorlog keys export` once it is configured; \
             a witness must know the new key's vkey before the restart. To cancel, delete the pending file (the new \
             key stays in the device, unused)",
            new_spec.hint()
        ),
    }))
}

/// Creates only the signing key the configuration names (a rotation keeps the configured TPM counter).
fn generate_key_only(config: &Config) -> Result<serde_json::Value, KeysError> {
    match config.signer.backend {
        SignerBackend::Pkcs11 => generate(config, false, Generate::KeyAndCounter),
        #[cfg(feature = "tpm")]
        SignerBackend::Tpm => {
            let mut c = config.clone();
            if let Some(t) = c.signer.tpm.as_mut() {
                // The counter exists already (it is the old key's): only the key is created.
                t.counter_index = None;
            }
            generate(&c, true, Generate::KeyAndCounter)
        }
        #[cfg(not(feature = "tpm"))]
        SignerBackend::Tpm => Err(KeysError::Unavailable("tpm")),
    }
}
