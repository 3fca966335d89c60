//! The PKCS#11 signers on a real SoftHSM token, in this process (the unit tests of src/signer/pkcs11.rs and
//! src/signer/pkcs11/ed25519.rs that need a token; the rest stay there and pass without SoftHSM): ECDSA P-256
//! head signing checked by p256 and OpenSSL, the key's attributes, every refusal with its message, reconnecting
//! after a lost login or session, a key replaced behind the signer, and the Ed25519 witness key.
//!
//! Every test holds [`kit::softhsm::module_lock`]: the module is process-global, and the lock points the process
//! at a token directory of its own. What a token reset does to a live signer comes from the signers' test-only
//! fault doubles (`fault_*`, feature `fault-injection`).

mod kit;

use anchorlog::signer::pkcs11::ed25519::{self, Pkcs11Ed25519Signer};
use anchorlog::signer::pkcs11::faults::{self, RawSign};
use anchorlog::signer::pkcs11::{
    generate_key, init_token, KeyAttributes, Pkcs11Error, Pkcs11Settings, Pkcs11Signer,
};
use anchorlog::signer::x509;
use ed25519_dalek::Verifier as _;
use kit::softhsm::{module_lock, pin, unique_label, SOFTHSM, SO_PIN, USER_PIN};
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

/// A fresh token with one generated P-256 key; returns its settings. The caller holds [`module_lock`].
fn token_with_key(prefix: &str) -> Pkcs11Settings {
    let settings = Pkcs11Settings {
        module: PathBuf::from(SOFTHSM),
        token_label: unique_label(prefix),
        key_label: "head-signer".to_owned(),
    };
    init_token(&settings.module, &settings.token_label, &pin(SO_PIN), &pin(USER_PIN)).unwrap();
    generate_key(&settings, &pin(USER_PIN)).unwrap();
    settings
}

/// The signer's public key, read back from its SubjectPublicKeyInfo.
fn verifying_key(signer: &Pkcs11Signer) -> VerifyingKey {
    VerifyingKey::from_public_key_der(signer.public_key_spki_der()).unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap()
}

#[test]
fn sign_100_messages_verify_with_p256_and_openssl() {
    let _module = module_lock();
    let settings = token_with_key("sign");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    let spki = signer.public_key_spki_der().to_vec();
    assert_eq!(spki.len(), 91);
    assert_eq!(hex::encode(&spki[..26]), "3059301306072a8648ce3d020106082a8648ce3d030107034200");
    use p256::pkcs8::DecodePublicKey;
    let vk = VerifyingKey::from_public_key_der(&spki).unwrap();
    let mut last = (Vec::new(), Vec::new());
    for i in 0..100u32 {
        let msg = format!("anchorlog head {i}\n").into_bytes();
        let der = signer.sign(&msg).unwrap();
        let sig = Signature::from_der(&der).unwrap();
        assert!(sig.normalize_s().is_none(), "signature {i} is not low-S");
        vk.verify(&msg, &sig).unwrap();
        last = (msg, der);
    }
    let dir = tempfile::tempdir().unwrap();
    let pem = x509::public_key_pem(&spki).unwrap();
    let pub_pem = write(dir.path(), "pub.pem", pem.as_bytes());
    let sig = write(dir.path(), "sig.der", &last.1);
    let msg = write(dir.path(), "msg", &last.0);
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        pub_pem.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        msg.to_str().unwrap(),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Verified OK\n");
    assert!(out.status.success());
}

#[test]
fn key_attributes_prove_hardware_bound_key() {
    let _module = module_lock();
    let settings = token_with_key("attrs");
    let signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    let attrs = signer.key_attributes().unwrap();
    // Generated keys get a random 16-byte CKA_ID.
    assert_eq!(attrs.id_hex.len(), 2 * 16);
    assert_eq!(
        attrs,
        KeyAttributes {
            label: "head-signer".to_owned(),
            id_hex: attrs.id_hex.clone(),
            sensitive: true,
            extractable: false,
            always_sensitive: true,
            never_extractable: true,
            local: true,
            can_sign: true,
        }
    );
    assert!(attrs.is_hardware_bound());
}

#[test]
fn generate_key_returns_the_same_attributes_open_reads() {
    let _module = module_lock();
    let settings = Pkcs11Settings {
        module: PathBuf::from(SOFTHSM),
        token_label: unique_label("gen"),
        key_label: "k1".to_owned(),
    };
    init_token(&settings.module, &settings.token_label, &pin(SO_PIN), &pin(USER_PIN)).unwrap();
    let generated = generate_key(&settings, &pin(USER_PIN)).unwrap();
    let signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    assert_eq!(signer.key_attributes().unwrap(), generated);
}

#[test]
fn unknown_token_is_token_not_found_with_available_labels() {
    let _module = module_lock();
    let settings = token_with_key("avail");
    let wanted = Pkcs11Settings { token_label: "no-such-token".to_owned(), ..settings.clone() };
    let err = Pkcs11Signer::open(&wanted, &pin(USER_PIN)).unwrap_err();
    match &err {
        Pkcs11Error::TokenNotFound { label, available } => {
            assert_eq!(label, "no-such-token");
            assert!(available.contains(&settings.token_label), "{available:?}");
        }
        other => panic!("expected TokenNotFound, got {other:?}"),
    }
    assert!(err.to_string().contains(&settings.token_label));
}

#[test]
fn wrong_pin_is_wrong_pin_and_never_echoed() {
    let _module = module_lock();
    let settings = token_with_key("pin");
    let err = Pkcs11Signer::open(&settings, &pin("9999-wrong")).unwrap_err();
    assert!(matches!(err, Pkcs11Error::WrongPin), "{err:?}");
    assert!(!err.to_string().contains("9999"));
    assert!(!format!("{err:?}").contains("9999"));
    assert!(!err.is_retryable());
}

#[test]
fn unknown_key_label_is_key_not_found() {
    let _module = module_lock();
    let settings = token_with_key("nokey");
    let wanted = Pkcs11Settings { key_label: "absent".to_owned(), ..settings };
    let err = Pkcs11Signer::open(&wanted, &pin(USER_PIN)).unwrap_err();
    assert!(matches!(&err, Pkcs11Error::KeyNotFound { label } if label == "absent"), "{err:?}");
    assert!(err.to_string().contains("anchorlog keys generate"));
}

#[test]
fn generating_twice_is_key_exists() {
    let _module = module_lock();
    let settings = token_with_key("twice");
    let err = generate_key(&settings, &pin(USER_PIN)).unwrap_err();
    assert!(matches!(&err, Pkcs11Error::KeyExists { label } if label == "head-signer"), "{err:?}");
}

#[test]
fn init_token_twice_is_token_exists() {
    let _module = module_lock();
    let settings = token_with_key("dup");
    let err = init_token(&settings.module, &settings.token_label, &pin(SO_PIN), &pin(USER_PIN)).unwrap_err();
    assert!(matches!(&err, Pkcs11Error::TokenExists { label } if *label == settings.token_label), "{err:?}");
}

#[test]
fn p384_key_is_wrong_key_type() {
    let _module = module_lock();
    let settings = Pkcs11Settings {
        module: PathBuf::from(SOFTHSM),
        token_label: unique_label("p384"),
        key_label: "p384".to_owned(),
    };
    init_token(&settings.module, &settings.token_label, &pin(SO_PIN), &pin(USER_PIN)).unwrap();
    faults::generate_p384_key(&settings, &pin(USER_PIN)).unwrap();
    let err = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap_err();
    match &err {
        Pkcs11Error::WrongKeyType { label, detail } => {
            assert_eq!(label, "p384");
            assert_eq!(
                detail,
                "CKA_EC_PARAMS is 06052b81040022, expected the P-256 curve OID 06082a8648ce3d030107"
            );
        }
        other => panic!("expected WrongKeyType, got {other:?}"),
    }
}

#[test]
fn sign_recovers_after_logout() {
    let _module = module_lock();
    let settings = token_with_key("relogin");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    signer.sign(b"before").unwrap();
    // Losing the login is what a token reset or a closed keeper session looks like.
    signer.fault_log_out().unwrap();
    // Prove the raw call really fails now, so the sign below exercises the reconnect.
    let digest = Sha256::digest(b"after");
    match signer.fault_sign_digest_once(&digest) {
        RawSign::SessionLost(_) => {}
        other => panic!("expected a lost-session error, got {other:?}"),
    }
    let der = signer.sign(b"after").unwrap();
    let sig = Signature::from_der(&der).unwrap();
    verifying_key(&signer).verify(b"after", &sig).unwrap();
    assert!(signer.key_attributes().unwrap().sensitive);
}

#[test]
fn replaced_key_is_key_changed_and_nested_load_keeps_module_initialised() {
    let _module = module_lock();
    let settings = token_with_key("rekey");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    signer.fault_destroy_key().unwrap();
    // The signer's module is initialised, so this load sees CKR_CRYPTOKI_ALREADY_INITIALIZED
    // and must not finalise when it is done.
    generate_key(&settings, &pin(USER_PIN)).unwrap();
    let err = signer.sign(b"after rekey").unwrap_err();
    assert!(matches!(&err, Pkcs11Error::KeyChanged { label } if label == "head-signer"), "{err:?}");
    assert!(!err.is_retryable());
    // A fresh open accepts the new key: the module is still initialised and usable.
    drop(signer);
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    signer.sign(b"new key").unwrap();
}

#[test]
fn sign_recovers_without_session() {
    let _module = module_lock();
    let settings = token_with_key("nosession");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    signer.fault_drop_session();
    let der = signer.sign(b"reopened").unwrap();
    let sig = Signature::from_der(&der).unwrap();
    verifying_key(&signer).verify(b"reopened", &sig).unwrap();
}

#[test]
fn describe_names_token_key_and_module_only() {
    let _module = module_lock();
    let settings = token_with_key("descr");
    let signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    assert_eq!(
        signer.describe(),
        format!(
            "PKCS#11 token '{}' key 'head-signer' via /usr/lib/softhsm/libsofthsm2.so",
            settings.token_label
        )
    );
    assert!(!format!("{signer:?}").contains(USER_PIN));
}

#[test]
fn self_signed_certificate_with_token_key_verifies_in_openssl() {
    let _module = module_lock();
    let settings = token_with_key("cert");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    let spki = signer.public_key_spki_der().to_vec();
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let cert = x509::self_signed_certificate(
        &spki,
        "anchorlog head signer",
        not_before,
        365,
        &mut |tbs: &[u8]| signer.sign(tbs),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = write(dir.path(), "cert.pem", x509::certificate_pem(&cert).as_bytes());
    let cert_path = cert_pem.to_str().unwrap();

    let text = openssl(&["x509", "-in", cert_path, "-noout", "-text"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("Signature Algorithm: ecdsa-with-SHA256"), "{text}");
    assert!(text.contains("Issuer: CN = anchorlog head signer"), "{text}");
    assert!(text.contains("Subject: CN = anchorlog head signer"), "{text}");

    let verify = openssl(&["verify", "-CAfile", cert_path, cert_path]);
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        format!("{cert_path}: OK\n"),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let pubkey = openssl(&["x509", "-in", cert_path, "-noout", "-pubkey"]);
    assert_eq!(String::from_utf8_lossy(&pubkey.stdout), x509::public_key_pem(&spki).unwrap());
}

#[test]
fn key_id_matches_openssl_sha256_of_spki() {
    let _module = module_lock();
    let settings = token_with_key("keyid");
    let signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    let spki = signer.public_key_spki_der();
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "pub.pem", x509::public_key_pem(spki).unwrap().as_bytes());
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl pkey -pubin -in '{}' -outform DER | sha256sum", pem.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(stdout.split_whitespace().next().unwrap(), anchorlog_core::key::key_id(spki));
}

/// Throughput probe: run it with `cargo test --test pkcs11 -- --ignored --nocapture bench_1000_signs`.
#[test]
#[ignore = "benchmark; run explicitly"]
fn bench_1000_signs() {
    let _module = module_lock();
    let settings = token_with_key("bench");
    let mut signer = Pkcs11Signer::open(&settings, &pin(USER_PIN)).unwrap();
    let start = Instant::now();
    for i in 0..1000u32 {
        signer.sign(&i.to_be_bytes()).unwrap();
    }
    let elapsed = start.elapsed();
    eprintln!(
        "1000 signs in {:.3} s = {:.0} signs/s ({:.1} us each, incl. host SHA-256 + verify)",
        elapsed.as_secs_f64(),
        1000.0 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0
    );
    // Split: the token's C_Sign alone vs. the host-side check.
    let digest = Sha256::digest(b"bench");
    let start = Instant::now();
    for _ in 0..1000 {
        let RawSign::Signed(_) = signer.fault_sign_digest_once(&digest) else { panic!("C_Sign failed") };
    }
    let raw = start.elapsed();
    eprintln!(
        "C_Sign alone: {:.0} signs/s ({:.1} us each)",
        1000.0 / raw.as_secs_f64(),
        raw.as_secs_f64() * 1000.0
    );
}

// ---- Ed25519 (the witness's cosigning key) ----

/// A fresh token with one Ed25519 key; returns its settings. The caller holds [`module_lock`].
fn ed25519_token_with_key(prefix: &str) -> Pkcs11Settings {
    let settings = Pkcs11Settings {
        module: PathBuf::from(SOFTHSM),
        token_label: unique_label(prefix),
        key_label: "witness".to_owned(),
    };
    init_token(&settings.module, &settings.token_label, &pin("so-pin-1"), &pin("user-pin-1")).unwrap();
    ed25519::generate_key(&settings, &pin("user-pin-1")).unwrap();
    settings
}

#[test]
fn signs_verifiable_ed25519_and_the_key_is_hardware_bound() {
    let _module = module_lock();
    let settings = ed25519_token_with_key("ed");
    let mut signer = Pkcs11Ed25519Signer::open(&settings, &pin("user-pin-1")).unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&signer.public_key()).unwrap();
    let sig = signer.sign(b"cosignature/v1\ntime 1\nx\n1\nAA==\n").unwrap();
    vk.verify(b"cosignature/v1\ntime 1\nx\n1\nAA==\n", &ed25519_dalek::Signature::from_bytes(&sig)).unwrap();
    // Ed25519 is deterministic: the token and the host agree byte for byte on the same message.
    assert_eq!(signer.sign(b"m").unwrap(), signer.sign(b"m").unwrap());
    let attrs = signer.key_attributes().unwrap();
    assert!(
        attrs.is_hardware_bound() && attrs.sensitive && !attrs.extractable && attrs.can_sign,
        "{attrs:?}"
    );
    assert_eq!(
        signer.describe(),
        format!("PKCS#11 token '{}' Ed25519 key 'witness' via {SOFTHSM}", settings.token_label)
    );
    assert!(!format!("{signer:?}").contains("user-pin-1"));
}

#[test]
fn reconnects_after_logout() {
    let _module = module_lock();
    let settings = ed25519_token_with_key("edre");
    let mut signer = Pkcs11Ed25519Signer::open(&settings, &pin("user-pin-1")).unwrap();
    signer.fault_log_out().unwrap();
    signer.sign(b"after logout").unwrap();
    signer.fault_drop_session();
    signer.sign(b"without session").unwrap();
}

#[test]
fn missing_key_and_second_generate_and_ecdsa_key_are_refused() {
    let _module = module_lock();
    let settings = ed25519_token_with_key("edmiss");
    let wanted = Pkcs11Settings { key_label: "absent".to_owned(), ..settings.clone() };
    let err = Pkcs11Ed25519Signer::open(&wanted, &pin("user-pin-1")).unwrap_err();
    assert!(matches!(&err, Pkcs11Error::Ed25519KeyNotFound { label } if label == "absent"), "{err:?}");
    assert!(err.to_string().contains("anchorlog witness keygen"));
    let err = ed25519::generate_key(&settings, &pin("user-pin-1")).unwrap_err();
    assert!(matches!(&err, Pkcs11Error::KeyExists { label } if label == "witness"), "{err:?}");
    // An ECDSA key under the label is not an Ed25519 key.
    let ecdsa = Pkcs11Settings { key_label: "p256".to_owned(), ..settings };
    generate_key(&ecdsa, &pin("user-pin-1")).unwrap();
    match Pkcs11Ed25519Signer::open(&ecdsa, &pin("user-pin-1")).unwrap_err() {
        Pkcs11Error::WrongEd25519Key { label, detail } => {
            assert_eq!(label, "p256");
            assert_eq!(detail, "key type is CKK_EC, expected CKK_EC_EDWARDS");
        }
        other => panic!("expected WrongEd25519Key, got {other:?}"),
    }
}
