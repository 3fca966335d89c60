//! The TPM 2.0 backend on a real swtpm (one per test, temporary state, free ports, killed on drop): the signer
//! and key attestation through the library, and the appliance end to end through the real binary (mTLS ingest,
//! heads signed in the TPM, `anchorlog verify`, OpenSSL, TPM outages, `keys attest` / `verify-attestation`).
//! Set `TSS2_LOG=esys+none,tcti+none` (run-all.sh does) to keep libtss2's own error lines out of the output.

mod kit;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use anchorlog::signer::tpm::{
    attest, generate_key, generate_key_from_template, TpmError, TpmSettings, TpmSigner,
};
use anchorlog_core::attestation::{verify_attestation, AttestationError, KeyAttestation, TpmKeyAttributes};
use kit::swtpm::Swtpm;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, Public, PublicBuilder, PublicEccParametersBuilder, RsaExponent,
    RsaScheme,
};
use tss_esapi::utils::create_unrestricted_signing_rsa_public;
use zeroize::Zeroizing;

const HANDLE: u32 = 0x8101_0010;
const OTHER_HANDLE: u32 = 0x8101_0011;

fn settings(tpm: &Swtpm, handle: u32) -> TpmSettings {
    TpmSettings { tcti: tpm.tcti(), handle, counter_index: None }
}

/// The settings of the appliance the harness prepared: its key and its head counter.
fn appliance_settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { counter_index: Some(kit::TPM_COUNTER_INDEX), ..settings(tpm, kit::TPM_HANDLE) }
}

fn expected_attributes() -> TpmKeyAttributes {
    TpmKeyAttributes {
        fixed_tpm: true,
        fixed_parent: true,
        sensitive_data_origin: true,
        user_with_auth: true,
        sign: true,
        decrypt: false,
        restricted: false,
    }
}

fn verifying_key(signer: &TpmSigner) -> VerifyingKey {
    VerifyingKey::from_public_key_der(signer.public_key_spki_der()).unwrap()
}

/// Parses a DER signature, checks it is low-S and verifies it.
fn assert_verifies(vk: &VerifyingKey, msg: &[u8], der: &[u8]) {
    let sig = Signature::from_der(der).unwrap();
    assert!(sig.normalize_s().is_none(), "signature is not low-S");
    vk.verify(msg, &DerSignature::try_from(der).unwrap()).unwrap();
}

fn auth(value: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(value.to_vec())
}

#[test]
fn generate_open_sign_verify_and_openssl() {
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    assert_eq!(generate_key(&s, None).unwrap(), expected_attributes());

    let mut signer = TpmSigner::open(&s, None).unwrap();
    assert_eq!(signer.public_key_spki_der().len(), 91);
    assert_eq!(signer.key_attributes().unwrap(), expected_attributes());
    assert!(signer
        .describe()
        .starts_with(&format!("TPM 2.0 key 0x81010010 via {} (ECDSA P-256, key id ", s.tcti)));
    let vk = verifying_key(&signer);
    for i in 0..200 {
        let msg = format!("anchorlog.example.org/prod-1\n{i}\nroot\nanchorlog-block {i}\n");
        let der = signer.sign(msg.as_bytes()).unwrap();
        assert_verifies(&vk, msg.as_bytes(), &der);
    }

    // Cross-check with a tool we did not write.
    let dir = tempfile::tempdir().unwrap();
    let msg = b"anchorlog.example.org/prod-1\n42\nAAAA\nanchorlog-block 7\n";
    std::fs::write(dir.path().join("head.txt"), msg).unwrap();
    std::fs::write(dir.path().join("head.sig"), signer.sign(msg).unwrap()).unwrap();
    std::fs::write(dir.path().join("pub.pem"), vk.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args(["dgst", "-sha256", "-verify", "pub.pem", "-signature", "head.sig", "head.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
}

#[test]
fn key_survives_swtpm_restart_for_new_and_existing_signer() {
    let mut tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    generate_key(&s, None).unwrap();
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let vk = verifying_key(&signer);
    assert_verifies(&vk, b"before", &signer.sign(b"before").unwrap());

    tpm.restart().unwrap();
    // The same signer keeps working (transparently, or through its one reconnect).
    assert_verifies(&vk, b"after restart", &signer.sign(b"after restart").unwrap());
    // A new signer finds the same persistent key.
    let mut fresh = TpmSigner::open(&s, None).unwrap();
    assert_eq!(fresh.public_key_spki_der(), signer.public_key_spki_der());
    assert_verifies(&vk, b"fresh", &fresh.sign(b"fresh").unwrap());
}

#[test]
fn signer_reconnects_after_an_outage() {
    let mut tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    generate_key(&s, None).unwrap();
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let vk = verifying_key(&signer);

    tpm.stop().unwrap();
    let err = signer.sign(b"while down").unwrap_err();
    assert!(matches!(err, TpmError::TctiUnreachable { .. } | TpmError::ConnectionLost { .. }), "{err:?}");
    assert!(err.is_retryable());

    tpm.resume().unwrap();
    assert_verifies(&vk, b"back", &signer.sign(b"back").unwrap());
    assert_eq!(signer.key_attributes().unwrap(), expected_attributes());
}

#[test]
fn unreachable_tcti_is_reported() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = TpmSettings {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        handle: HANDLE,
        counter_index: None,
    };
    let err = TpmSigner::open(&s, None).unwrap_err();
    assert!(matches!(&err, TpmError::TctiUnreachable { tcti, .. } if *tcti == s.tcti), "{err:?}");
    assert!(err.is_retryable());
    assert!(matches!(generate_key(&s, None), Err(TpmError::TctiUnreachable { .. })));
    assert!(matches!(attest(&s, None, b"n"), Err(TpmError::TctiUnreachable { .. })));
}

#[test]
fn empty_handle_and_occupied_handle() {
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    let err = TpmSigner::open(&s, None).unwrap_err();
    assert!(matches!(err, TpmError::HandleEmpty { handle: HANDLE }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(matches!(attest(&s, None, b"n"), Err(TpmError::HandleEmpty { handle: HANDLE })));

    generate_key(&s, None).unwrap();
    let err = generate_key(&s, None).unwrap_err();
    assert!(matches!(err, TpmError::HandleOccupied { handle: HANDLE }), "{err:?}");

    let bad = TpmSettings { tcti: tpm.tcti(), handle: 0x8000_0001, counter_index: None };
    assert!(matches!(TpmSigner::open(&bad, None), Err(TpmError::InvalidHandle { handle: 0x8000_0001 })));
}

#[test]
fn wrong_auth_is_reported() {
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    let good = auth(b"correct horse");
    generate_key(&s, Some(&good)).unwrap();

    let err = TpmSigner::open(&s, Some(&auth(b"battery staple"))).unwrap_err();
    assert!(matches!(err, TpmError::WrongAuth { handle: HANDLE }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!format!("{err}").contains("battery"));
    let err = TpmSigner::open(&s, None).unwrap_err();
    assert!(matches!(err, TpmError::WrongAuth { handle: HANDLE }), "{err:?}");

    let mut signer = TpmSigner::open(&s, Some(&good)).unwrap();
    let vk = verifying_key(&signer);
    assert_verifies(&vk, b"ok", &signer.sign(b"ok").unwrap());
    assert!(!format!("{signer:?}").contains("correct"));
    let nonce = [7u8; 32];
    let att = attest(&s, Some(&good), &nonce).unwrap();
    verify_attestation(&att, signer.public_key_spki_der(), &nonce).unwrap();
    let err = attest(&s, Some(&auth(b"nope")), &nonce).unwrap_err();
    assert!(matches!(err, TpmError::WrongAuth { handle: HANDLE }), "{err:?}");
}

fn ecc_decrypt_template() -> Public {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .build()
        .unwrap();
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(EccScheme::Null)
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(tss_esapi::structures::KeyDerivationFunctionScheme::Null)
                .with_is_decryption_key(true)
                .build()
                .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap()
}

#[test]
fn wrong_key_types_are_rejected() {
    let tpm = Swtpm::start().unwrap();
    let rsa = settings(&tpm, HANDLE);
    let template = create_unrestricted_signing_rsa_public(
        RsaScheme::RsaSsa(HashScheme::new(HashingAlgorithm::Sha256)),
        RsaKeyBits::Rsa2048,
        RsaExponent::default(),
    )
    .unwrap();
    generate_key_from_template(&rsa, None, template).unwrap();
    let err = TpmSigner::open(&rsa, None).unwrap_err();
    assert!(
        matches!(&err, TpmError::WrongKeyType { handle: HANDLE, detail } if detail.starts_with("it is an RSA key")),
        "{err:?}"
    );

    let dec = settings(&tpm, OTHER_HANDLE);
    let attrs = generate_key_from_template(&dec, None, ecc_decrypt_template()).unwrap();
    assert!(attrs.decrypt && !attrs.sign);
    let err = TpmSigner::open(&dec, None).unwrap_err();
    assert!(
        matches!(&err, TpmError::WrongKeyType { handle: OTHER_HANDLE, detail }
            if detail.starts_with("attributes sign=false decrypt=true restricted=false")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn attestation_verifies_offline_and_rejects_other_key_and_nonce() {
    let tpm = Swtpm::with_ek_cert().unwrap();
    let s = settings(&tpm, HANDLE);
    let s2 = settings(&tpm, OTHER_HANDLE);
    generate_key(&s, None).unwrap();
    generate_key(&s2, None).unwrap();
    let spki = TpmSigner::open(&s, None).unwrap().public_key_spki_der().to_vec();
    let spki2 = TpmSigner::open(&s2, None).unwrap().public_key_spki_der().to_vec();
    assert_ne!(spki, spki2);

    let nonce = b"auditor nonce 2026-11-23".to_vec();
    let att = attest(&s, None, &nonce).unwrap();
    let report = verify_attestation(&att, &spki, &nonce).unwrap();
    assert_eq!(report.key_attributes, expected_attributes());
    assert!(report.ak_attributes.restricted && report.ak_attributes.sign);
    assert_eq!(report.key_name.len(), 34);
    assert!(report.ek_certificate_present);
    assert_eq!(att.key_handle, HANDLE);

    // The EK certificate chains to the throw-away local CA (checked with openssl).
    let ek_index = att.ek_certificate_nv_index.unwrap();
    println!("EK certificate read from NV index {ek_index:#010x}");
    assert!([0x01c0_0002, 0x01c0_000a, 0x01c0_0016].contains(&ek_index));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ek.der"), att.ek_certificate.as_ref().unwrap()).unwrap();
    let (issuer, root) = tpm.ek_ca_certs().unwrap();
    let mut chain = std::fs::read(issuer).unwrap();
    chain.extend(std::fs::read(root).unwrap());
    std::fs::write(dir.path().join("ca.pem"), chain).unwrap();
    let conv = Command::new("openssl")
        .current_dir(dir.path())
        .args(["x509", "-inform", "DER", "-in", "ek.der", "-out", "ek.pem"])
        .status()
        .unwrap();
    assert!(conv.success());
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args(["verify", "-partial_chain", "-CAfile", "ca.pem", "ek.pem"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The AK signature over TPMS_ATTEST also verifies with openssl.
    let ak = VerifyingKey::from_public_key_der(&att.ak_spki).unwrap();
    std::fs::write(dir.path().join("attest.bin"), &att.attest).unwrap();
    std::fs::write(dir.path().join("attest.sig"), &att.ak_signature).unwrap();
    std::fs::write(dir.path().join("ak.pem"), ak.to_public_key_pem(LineEnding::LF).unwrap()).unwrap();
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args(["dgst", "-sha256", "-verify", "ak.pem", "-signature", "attest.sig", "attest.bin"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");

    // JSON round trip keeps it verifiable.
    let json = serde_json::to_string(&att).unwrap();
    let back: KeyAttestation = serde_json::from_str(&json).unwrap();
    verify_attestation(&back, &spki, &nonce).unwrap();

    // Wrong nonce, another key's attestation, and a fresh attestation of the same key.
    assert_eq!(verify_attestation(&att, &spki, b"other nonce").unwrap_err(), AttestationError::NonceMismatch);
    let att2 = attest(&s2, None, &nonce).unwrap();
    verify_attestation(&att2, &spki2, &nonce).unwrap();
    assert_eq!(verify_attestation(&att2, &spki, &nonce).unwrap_err(), AttestationError::KeyMismatch);
    // Swapping in the other key's public area breaks the certified Name.
    let mut mixed = att.clone();
    mixed.key_tpmt_public = att2.key_tpmt_public.clone();
    assert_eq!(verify_attestation(&mixed, &spki2, &nonce).unwrap_err(), AttestationError::NameMismatch);
    // The AK is a primary: re-derived identically, so an auditor can pin it.
    assert_eq!(att.ak_spki, att2.ak_spki);
    assert!(matches!(attest(&s, None, &[0u8; 65]), Err(TpmError::NonceTooLong { len: 65 })));
}

#[test]
fn attestation_without_ek_certificate() {
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    generate_key(&s, None).unwrap();
    let spki = TpmSigner::open(&s, None).unwrap().public_key_spki_der().to_vec();
    let att = attest(&s, None, b"").unwrap();
    assert_eq!(att.ek_certificate, None);
    assert_eq!(att.ek_certificate_nv_index, None);
    let report = verify_attestation(&att, &spki, b"").unwrap();
    assert!(!report.ek_certificate_present);
}

#[test]
fn transient_objects_do_not_leak() {
    // swtpm has ~3 transient slots and no resource manager: leaking one handle per call
    // would fail within a few iterations with TPM_RC_OBJECT_MEMORY.
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    generate_key(&s, None).unwrap();
    for i in 0..6 {
        let other = settings(&tpm, HANDLE + 1 + i);
        generate_key(&other, None).unwrap();
        attest(&s, None, &[i as u8; 8]).unwrap();
        assert!(matches!(generate_key(&s, None), Err(TpmError::HandleOccupied { .. })));
    }
}

#[test]
fn signing_latency() {
    let tpm = Swtpm::start().unwrap();
    let s = settings(&tpm, HANDLE);
    generate_key(&s, None).unwrap();
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let mut samples: Vec<Duration> = Vec::with_capacity(1000);
    for i in 0u32..1000 {
        let msg = i.to_be_bytes();
        let t = Instant::now();
        signer.sign(&msg).unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    // Host-side share: the signer verifies every signature it returns; time that alone.
    let vk = verifying_key(&signer);
    let der = signer.sign(b"x").unwrap();
    let sig = DerSignature::try_from(der.as_slice()).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        vk.verify(b"x", &sig).unwrap();
    }
    let verify_each = t.elapsed() / 100;
    let p50 = samples[499];
    let p99 = samples[989];
    let total: Duration = samples.iter().sum();
    println!(
        "TPM sign latency over 1000 signs (swtpm TCP, password session, incl. host verify): \
         p50={p50:?} p99={p99:?} max={:?} throughput={:.0}/s; host verify alone {verify_each:?}",
        samples[999],
        1000.0 / total.as_secs_f64()
    );
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
}

#[test]
fn harness_swtpm_starts_restarts_and_stops() {
    let mut tpm = Swtpm::start().unwrap();
    assert!(kit::swtpm::port_in_use(tpm.port()));
    assert!(tpm.tcti().starts_with("swtpm:host=127.0.0.1,port="));
    tpm.restart().unwrap();
    assert!(kit::swtpm::port_in_use(tpm.port()));
    tpm.stop().unwrap();
    assert!(!kit::swtpm::port_in_use(tpm.port()));
    tpm.stop().unwrap();
}

// ---- the appliance end to end on swtpm (real binary, mTLS, SQLite) ----------------------------------------

use kit::{post_concurrently, Appliance, Options, TestSigner};

fn tpm_options() -> Options {
    Options { signer: TestSigner::Tpm, ..Options::default() }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_backend_end_to_end_thousand_events_verify_and_openssl() {
    let mut a = Appliance::start_with(tpm_options());
    let seqs = post_concurrently(&a, 1000, 32).await;
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    let head = a.wait_for_head(1000).await;
    assert_eq!(head["tree_size"], 1000);
    a.assert_openssl_verifies_head(&head);
    // The head names the TPM key: the id of the exported signer.pem.
    let pem = std::fs::read_to_string(a.key_pem()).unwrap();
    let key = anchorlog_core::key::PublicKey::from_pem(&pem).unwrap();
    assert_eq!(head["key_id"], key.key_id.as_str());
    assert!(a.server_log().contains("TPM 2.0 key 0x81010010 via swtpm:host=127.0.0.1"), "{}", a.server_log());

    // The head carries the TPM counter as its seventh line (docs/FORMAT.md §3); OpenSSL verified it above.
    let text = head["checkpoint"].as_str().unwrap();
    assert!(text.lines().nth(6).unwrap().starts_with("anchorlog-counter "), "{text}");
    assert!(text.ends_with(" 0x01800010\n"), "{text}");

    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["events"], 1000);
    assert_eq!(report["report"]["unsealed_events"], 0);
    // A bundle from height 1 (its anchor, head 0, carries a counter too): our verifier and the Python one,
    // written from docs/FORMAT.md alone, both check the counter lines.
    let last = head["height"].as_u64().unwrap().to_string();
    let tar = a.path("bundle.tar");
    let db = a.db_path();
    let out = a.anchorlog(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--from-height",
        "1",
        "--to-height",
        &last,
        "--out",
        tar.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let ours = a.anchorlog(&["verify", tar.to_str().unwrap(), "--key", a.key_pem().to_str().unwrap()]);
    assert!(ours.status.success(), "{ours:?}");
    let (code, stdout, stderr) = kit::bundle::python_verify(&tar, &a.key_pem(), &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The certificate exported by `keys export` is signed by the TPM key; OpenSSL accepts it.
    let crt = a.path("keys/signer.crt");
    let v = Command::new("openssl").arg("verify").arg("-CAfile").arg(&crt).arg(&crt).output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).trim().ends_with(": OK"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swtpm_restart_keeps_the_same_persisted_key() {
    let mut a = Appliance::start_with(tpm_options());
    assert_eq!(post_concurrently(&a, 50, 4).await.len(), 50);
    let before = a.wait_for_head(50).await;

    // The TPM restarts with the same state while the service runs: the signer reconnects to the same key.
    a.tpm.as_mut().unwrap().restart().unwrap();
    assert_eq!(post_concurrently(&a, 50, 4).await.len(), 50);
    let after = a.wait_for_head(100).await;
    assert_eq!(after["key_id"], before["key_id"]);
    a.assert_openssl_verifies_head(&after);

    // And the service itself restarts against the restarted TPM: same key, chain continues.
    assert!(a.sigterm().success());
    a.tpm.as_mut().unwrap().restart().unwrap();
    a.spawn().unwrap();
    assert_eq!(post_concurrently(&a, 10, 2).await.len(), 10);
    let last = a.wait_for_head(110).await;
    assert_eq!(last["key_id"], before["key_id"]);
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["events"], 110);
}

#[test]
fn tpm_unreachable_at_start_is_a_clear_error_and_nonzero_exit() {
    let mut a = Appliance::prepare(tpm_options());
    let tcti = a.tpm.as_ref().unwrap().tcti();
    a.tpm.as_mut().unwrap().stop().unwrap();
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 1: "), "{err}");
    assert!(
        err.contains(&format!("error: cannot open the signer: cannot reach the TPM via {tcti:?}")),
        "{err}"
    );
    // The same for the key commands; libtss2's own error lines are silenced by TSS2_LOG.
    let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).starts_with(&format!("error: cannot reach the TPM via {tcti:?}")), "{out:?}");
    assert!(!stderr_of(&out).contains("ERROR:tcti"), "{out:?}");
}

#[test]
fn tpm_misconfiguration_gives_clear_errors() {
    let a = Appliance::prepare(tpm_options());
    let cfg = std::fs::read_to_string(a.config_path()).unwrap();
    let show = |text: &str| {
        std::fs::write(a.config_path(), text).unwrap();
        let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        stderr_of(&out)
    };
    let e = show(&cfg.replace("0x81010010", "0x81010099"));
    assert!(e.starts_with("error: no key is persisted at TPM handle 0x81010099;"), "{e}");
    assert!(e.contains("anchorlog keys generate"), "{e}");
    let e = show(&cfg.replace("0x81010010", "0x80000001"));
    assert!(e.contains("`signer.tpm.handle`: 0x80000001 is not an owner persistent handle"), "{e}");
    let e = show(&cfg.replace("tcti = \"swtpm:", "tcti = \"tcp:"));
    assert!(e.contains("`signer.tpm.tcti`"), "{e}");
    // The key has no auth value; a configured (wrong) one is refused without being echoed.
    kit::write_secret(&a.path("tpm-auth"), b"not-the-auth\n");
    let with_auth = cfg.replace(
        "handle = \"0x81010010\"\n",
        &format!("handle = \"0x81010010\"\nauth_file = \"{}\"\n", a.path("tpm-auth").display()),
    );
    let e = show(&with_auth);
    assert!(e.starts_with("error: the auth value for TPM handle 0x81010010 is wrong"), "{e}");
    assert!(!e.contains("not-the-auth"), "{e}");
    // Generating again at a taken handle is refused.
    std::fs::write(a.config_path(), &cfg).unwrap();
    let out = a.anchorlog(&["keys", "generate", "--tpm", "--config", a.config_path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).starts_with("error: TPM handle 0x81010010 is already in use"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_gone_mid_run_ingest_continues_and_heads_resume() {
    let mut a = Appliance::start_with(tpm_options());
    assert_eq!(post_concurrently(&a, 100, 4).await.len(), 100);
    let before = a.wait_for_head(100).await;
    let height_before = before["height"].as_u64().unwrap();

    a.tpm.as_mut().unwrap().stop().unwrap();
    // Ingest keeps acknowledging while the TPM is away.
    let seqs = post_concurrently(&a, 200, 4).await;
    assert_eq!(seqs, (100..300).collect::<Vec<_>>());
    // Sealing fails and is retried on every tick (200 ms); nothing gets signed meanwhile.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ready = a.audit_get("/readyz").await.json();
    assert_eq!(ready["events"], 300, "{ready}");
    assert_eq!(ready["unsealed_events"], 200, "{ready}");
    assert!(ready["seal_failures"].as_u64().unwrap() >= 2, "{ready}");
    let latest = a.audit_get("/v1/heads/latest").await.json();
    assert_eq!(latest["height"].as_u64(), Some(height_before));
    assert!(a.server_log().contains("seal failed"), "{}", a.server_log());

    a.tpm.as_mut().unwrap().resume().unwrap();
    let after = a.wait_for_head(300).await;
    assert_eq!(after["tree_size"], 300);
    assert_eq!(after["key_id"], before["key_id"]);
    a.assert_openssl_verifies_head(&after);
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["events"], 300);
    assert_eq!(report["report"]["unsealed_events"], 0);
}

#[test]
fn tpm_key_attributes_read_back_as_specified() {
    let a = Appliance::prepare(tpm_options());
    let out = a.anchorlog(&["keys", "show", "--config", a.config_path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fixed_tpm"], true);
    assert_eq!(v["fixed_parent"], true);
    assert_eq!(v["sensitive_data_origin"], true);
    assert_eq!(v["user_with_auth"], true);
    assert_eq!(v["sign"], true);
    assert_eq!(v["decrypt"], false);
    assert_eq!(v["restricted"], false);
    assert_eq!(v["handle"], "0x81010010");
    let pem = std::fs::read_to_string(a.key_pem()).unwrap();
    assert_eq!(v["public_key_pem"], pem.as_str());
    let key = anchorlog_core::key::PublicKey::from_pem(&pem).unwrap();
    assert_eq!(v["key_id"], key.key_id.as_str());
    // tpm2-tools, which we did not write, reads the same public key from the TPM.
    let tcti = a.tpm.as_ref().unwrap().tcti();
    let tools_pem = a.path("tools.pem");
    let out = Command::new("tpm2_readpublic")
        .args(["-c", "0x81010010", "-f", "pem", "-o"])
        .arg(&tools_pem)
        .env("TPM2TOOLS_TCTI", &tcti)
        .env("TSS2_LOG", kit::TSS2_LOG)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"), "{text}");
    let tools_key =
        anchorlog_core::key::PublicKey::from_pem(&std::fs::read_to_string(tools_pem).unwrap()).unwrap();
    assert_eq!(tools_key.key_id, key.key_id);
}

#[test]
fn attest_and_verify_attestation_cli() {
    let a = Appliance::prepare(tpm_options());
    let cfg = a.config_path();
    let cfg = cfg.to_str().unwrap();
    let nonce = "5eed00112233445566778899aabbccddeeff00112233445566778899aabbccdd";
    let att = a.path("attestation.json");
    let out =
        a.anchorlog(&["keys", "attest", "--config", cfg, "--nonce", nonce, "--out", att.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "wrote the attestation of TPM key 0x81010010 to {} (EK certificate not provisioned in this TPM); \
             head counter 0x01800010 not certified: no head carries it yet",
            att.display()
        )
    );
    let key = a.key_pem();
    let key = key.to_str().unwrap();
    let verify = |file: &str, nonce: &str| {
        a.anchorlog(&["verify-attestation", file, "--key", key, "--nonce", nonce, "--json"])
    };
    let ok = verify(att.to_str().unwrap(), nonce);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let pem = std::fs::read_to_string(a.key_pem()).unwrap();
    assert_eq!(
        v["report"]["key_id"],
        anchorlog_core::key::PublicKey::from_pem(&pem).unwrap().key_id.as_str()
    );
    assert_eq!(v["report"]["key_attributes"]["fixed_tpm"], true);
    assert_eq!(v["report"]["key_attributes"]["decrypt"], false);
    assert_eq!(v["report"]["key_name"].as_str().unwrap().len(), 68);
    assert_eq!(v["report"]["ek_certificate_present"], false);
    // Text form.
    let text = a.anchorlog(&["verify-attestation", att.to_str().unwrap(), "--key", key, "--nonce", nonce]);
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("OK: the TPM certified signing key "));

    // A wrong nonce: exit 3, named.
    let bad = verify(att.to_str().unwrap(), "00");
    assert_eq!(bad.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        v["failure"],
        "the attestation was made for a different nonce; it is stale or replayed: request a fresh one"
    );

    // Another key's (genuine) attestation does not vouch for the head-signing key.
    let other_cfg = a.path("other.toml");
    let other = std::fs::read_to_string(cfg).unwrap().replace("0x81010010", "0x81010011");
    std::fs::write(&other_cfg, other.replace("0x01800010", "0x01800011")).unwrap();
    let other_cfg = other_cfg.to_str().unwrap();
    let gen = a.anchorlog(&["keys", "generate", "--tpm", "--config", other_cfg]);
    assert!(gen.status.success(), "{gen:?}");
    let other_att = a.path("other-attestation.json");
    let out = a.anchorlog(&[
        "keys",
        "attest",
        "--config",
        other_cfg,
        "--nonce",
        nonce,
        "--out",
        other_att.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let bad = verify(other_att.to_str().unwrap(), nonce);
    assert_eq!(bad.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["failure"], "the attested TPM key is not the block-signing key (different public point)");

    // A PKCS#11 config cannot attest; a bad nonce is a usage error.
    let bad_hex = a.anchorlog(&["verify-attestation", att.to_str().unwrap(), "--key", key, "--nonce", "xyz"]);
    assert_eq!(bad_hex.status.code(), Some(1));
    assert!(stderr_of(&bad_hex).contains("is not hex"), "{bad_hex:?}");
}

// ---- `anchorlog dev --signer tpm` -------------------------------------------------------------------------

/// A child process killed (and reaped) on drop.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `pid` is gone (or a zombie nobody reaps: it holds no ports and does nothing).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts `anchorlog dev --signer tpm`; returns the process and the swtpm pid it uses.
fn start_dev(dir: &std::path::Path, listen: &str) -> (Guard, u32) {
    let mut child = Command::new(kit::bin())
        .args(["dev", "--signer", "tpm", "--state-dir", dir.to_str().unwrap(), "--listen", listen])
        .env("TSS2_LOG", kit::TSS2_LOG)
        .env("ANCHORLOG_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let guard = Guard(child);
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("dev mode prints its address");
    assert_eq!(first, format!("anchorlog listening on https://{listen}"));
    let pid: u32 = std::fs::read_to_string(dir.join("tpm/swtpm.pid")).unwrap().trim().parse().unwrap();
    assert!(!process_gone(pid));
    (guard, pid)
}

async fn dev_post_and_head(dir: &std::path::Path, listen: &str) -> serde_json::Value {
    let certs = dir.join("certs");
    let conn = |who: &str| {
        anchorlog::tls::client_config(
            &certs.join("ca.pem"),
            &certs.join(format!("{who}.pem")),
            &certs.join(format!("{who}.key")),
        )
        .unwrap()
    };
    let addr = listen.parse().unwrap();
    let mut producer =
        anchorlog::client::Connection::connect(addr, "localhost", conn("producer")).await.unwrap();
    let r = producer.post_json("/v1/events", br#"{"type":"LOGIN","user":"alice"}"#).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seq = r.json()["events"][0]["seq"].as_u64().unwrap();
    let mut auditor =
        anchorlog::client::Connection::connect(addr, "localhost", conn("auditor")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = auditor.get("/v1/heads/latest").await.unwrap();
        if h.status == 200 && h.json()["tree_size"].as_u64() > Some(seq) {
            return h.json();
        }
        assert!(Instant::now() < deadline, "no head covering seq {seq}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_with_tpm_provisions_once_serves_and_takes_swtpm_down() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");

    let (mut dev, swtpm_pid) = start_dev(&dir, &listen);
    for f in ["certs/ca.pem", "certs/producer.pem", "keys/signer.pem", "keys/signer.crt", "anchorlog.toml"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(dir.join("tpm/tpm2-00.permall").is_file(), "swtpm state lives under DIR/tpm/");
    let pem = std::fs::read_to_string(dir.join("keys/signer.pem")).unwrap();
    let key_id = anchorlog_core::key::PublicKey::from_pem(&pem).unwrap().key_id;
    let head = dev_post_and_head(&dir, &listen).await;
    assert_eq!(head["key_id"], key_id.as_str());

    // SIGTERM: dev stops and its swtpm with it.
    let _ = Command::new("kill").args(["-TERM", &dev.0.id().to_string()]).status();
    let status = dev.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(wait_gone(swtpm_pid), "swtpm {swtpm_pid} outlived dev mode");

    // Second start: a new swtpm on the same state, the same key (not provisioned again), the chain continues.
    let (dev2, swtpm_pid2) = start_dev(&dir, &listen);
    assert_ne!(swtpm_pid2, swtpm_pid);
    assert_eq!(std::fs::read_to_string(dir.join("keys/signer.pem")).unwrap(), pem);
    let head2 = dev_post_and_head(&dir, &listen).await;
    assert_eq!(head2["key_id"], key_id.as_str());
    assert!(head2["height"].as_u64() > head["height"].as_u64());

    // SIGKILL (no destructors run): the kernel still takes swtpm down (PR_SET_PDEATHSIG).
    drop(dev2);
    assert!(wait_gone(swtpm_pid2), "swtpm {swtpm_pid2} outlived a killed dev mode");

    let out = Command::new(kit::bin())
        .args(["verify", "--db", dir.join("anchorlog.db").to_str().unwrap(), "--key"])
        .arg(dir.join("keys/signer.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

// ---- performance: a slow (200 ms) TPM does not slow sealing down ------------------------------------------

/// Runs the appliance in this process with the test's TPM key behind a fault-injection double made by `wrap`;
/// returns the sender that stops it and its task.
async fn serve_in_process(
    a: &mut Appliance,
    wrap: impl Fn(TpmSigner) -> Box<dyn anchorlog::signer::HeadSigner> + Send + Sync + 'static,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), anchorlog::server::ServeError>>) {
    a.write_config("127.0.0.1:0");
    let config = anchorlog::config::Config::load(&a.config_path()).unwrap();
    let s = appliance_settings(a.tpm.as_ref().unwrap());
    let signer =
        anchorlog::signer::SignerHandle::spawn(move || Ok(wrap(TpmSigner::open(&s, None)?))).unwrap();
    let service = anchorlog::server::Service::start_with_signer(config, signer).await.unwrap();
    a.addr = service.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run(async move {
        let _ = stop_rx.await;
    }));
    (stop_tx, server)
}

/// Fault-injection double: the real TPM signer, plus a fixed delay per signature (a slow hardware TPM).
struct SlowSigner {
    inner: TpmSigner,
    delay: Duration,
}

impl anchorlog::signer::HeadSigner for SlowSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        std::thread::sleep(self.delay);
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} + {:?} injected delay", self.inner.describe(), self.delay)
    }
    fn advance_counter(
        &mut self,
        above: Option<u64>,
    ) -> Result<Option<anchorlog_core::head::HeadCounter>, anchorlog::signer::SignerError> {
        Ok(self.inner.advance_counter(above)?)
    }
    fn read_counter(
        &mut self,
    ) -> Result<Option<anchorlog_core::counter::CounterObservation>, anchorlog::signer::SignerError> {
        Ok(self.inner.read_counter()?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_200ms_signer_keeps_up_with_1s_sealing_under_load() {
    const DELAY: Duration = Duration::from_millis(200);
    const LOAD: Duration = Duration::from_secs(8);
    let mut a = Appliance::prepare(Options { seal_interval_ms: 1000, ..tpm_options() });
    let (stop_tx, server) =
        serve_in_process(&mut a, |inner| Box::new(SlowSigner { inner, delay: DELAY })).await;

    // Load: 8 connections posting batches of 50 events for LOAD.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let mut conn = a.connect("producer").await;
        tasks.push(tokio::spawn(async move {
            let mut stored = 0u64;
            let mut i = 0u64;
            while started.elapsed() < LOAD {
                let batch: Vec<String> =
                    (0..50).map(|k| format!("{{\"type\":\"LOGIN\",\"user\":\"u{c}-{i}-{k}\"}}")).collect();
                let body = format!("[{}]", batch.join(","));
                let r = conn.post_json("/v1/events", body.as_bytes()).await.unwrap();
                assert_eq!(r.status, 200);
                stored += r.json()["stored"].as_u64().unwrap();
                i += 1;
            }
            stored
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let load_secs = started.elapsed().as_secs_f64();
    let load_end = Instant::now();
    let last = a.wait_for_head(total).await;
    let catch_up = load_end.elapsed();

    // Every head: sealing cadence and how many events one 200 ms signature covered.
    let last_height = last["height"].as_u64().unwrap();
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    let mut counters = Vec::new();
    for h in 0..=last_height {
        let head = a.audit_get(&format!("/v1/heads/{h}")).await.json();
        let t = time::OffsetDateTime::parse(
            head["sealed_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        times.push(t);
        sizes.push(head["tree_size"].as_u64().unwrap());
        counters.push(head_counter(&head).value);
    }
    let ready = a.audit_get("/readyz").await.json();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();

    // Heads 1.. are the ones sealed under load (head 0 is the empty log's genesis head).
    let gaps: Vec<f64> = times.windows(2).skip(1).map(|w| (w[1] - w[0]).as_seconds_f64()).collect();
    let max_gap = gaps.iter().copied().fold(0.0, f64::max);
    let per_head: Vec<u64> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
    let max_per_head = per_head.iter().copied().max().unwrap_or(0);
    println!(
        "slow signer ({DELAY:?}/signature), seal interval 1 s: {total} events in {load_secs:.1} s \
         ({:.0} events/s); {} heads; gaps between heads max {max_gap:.2} s; up to {max_per_head} events per \
         head; last event sealed {catch_up:?} after the load stopped; seal failures {}",
        total as f64 / load_secs,
        last_height + 1,
        ready["seal_failures"]
    );
    assert_eq!(ready["seal_failures"], 0);
    assert_eq!(ready["unsealed_events"], 0);
    // Every head carries the counter, one increment per head.
    assert_eq!(counters.windows(2).filter(|w| w[1] != w[0] + 1).count(), 0, "{counters:?}");
    assert!(last_height as f64 >= load_secs - 2.0, "about one head per second: {last_height} heads");
    assert!(max_gap < 1.6, "a head at least every 1.6 s while loaded: {gaps:?}");
    assert!(catch_up < Duration::from_millis(2500), "sealed {catch_up:?} after the load stopped");
    // One signature covers hundreds of events: signing one per event at 200 ms would allow 5 events/s.
    assert!(total as f64 / load_secs > 50.0 * 5.0, "{total} events in {load_secs} s");
}

// ---- PCI DSS 10.7.3: a signer outage is recorded in the log, start and end -----------------------------------

/// Fault-injection double: the real TPM signer, failing every signature while `down` is set (a TPM that
/// stops answering, then comes back).
struct SwitchableSigner {
    inner: TpmSigner,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl anchorlog::signer::HeadSigner for SwitchableSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(anchorlog::signer::SignerError::Injected("TPM not answering".into()));
        }
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} (switchable)", self.inner.describe())
    }
    fn advance_counter(
        &mut self,
        above: Option<u64>,
    ) -> Result<Option<anchorlog_core::head::HeadCounter>, anchorlog::signer::SignerError> {
        Ok(self.inner.advance_counter(above)?)
    }
    fn read_counter(
        &mut self,
    ) -> Result<Option<anchorlog_core::counter::CounterObservation>, anchorlog::signer::SignerError> {
        Ok(self.inner.read_counter()?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_outage_is_recorded_with_its_start_and_end() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut a = Appliance::prepare(Options { record_appliance_events: true, ..tpm_options() });
    let down = std::sync::Arc::new(AtomicBool::new(false));
    let switch = down.clone();
    let (stop_tx, server) =
        serve_in_process(&mut a, move |inner| Box::new(SwitchableSigner { inner, down: switch.clone() }))
            .await;

    // seq 0 is the start record; three events are sealed normally.
    assert_eq!(post_concurrently(&a, 3, 1).await, vec![1, 2, 3]);
    a.wait_for_head(4).await;
    // The signer goes down: events are still acknowledged (4, 5), sealing fails, and the first failure is
    // recorded (seq 6).
    down.store(true, Ordering::SeqCst);
    assert_eq!(post_concurrently(&a, 2, 1).await, vec![4, 5]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.audit_get("/readyz").await.json()["seal_failures"].as_u64().unwrap() < 3 {
        assert!(Instant::now() < deadline, "no seal failures within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back up: the next seal succeeds, the end is recorded (seq 7), and a head covers everything.
    down.store(false, Ordering::SeqCst);
    a.wait_for_head(8).await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();

    let own = a.own_records();
    let types: Vec<(u64, &str)> = own.iter().map(|(s, b)| (*s, b["type"].as_str().unwrap())).collect();
    assert_eq!(
        types,
        vec![(0, "anchorlog.start"), (6, "anchorlog.outage"), (7, "anchorlog.outage"), (8, "anchorlog.stop")]
    );
    let (started, ended) = (&own[1].1, &own[2].1);
    assert_eq!((&started["component"], &started["state"]), (&"sealing".into(), &"started".into()));
    assert!(started["error"].as_str().unwrap().contains("TPM not answering"), "{started}");
    assert_eq!((&ended["component"], &ended["state"]), (&"sealing".into(), &"ended".into()));
    assert_eq!(ended["since_ms"], started["since_ms"], "both records name the outage's start");
    assert!(ended["failed_attempts"].as_u64().unwrap() >= 3, "{ended}");
    // The outage's duration: from since_ms to the end record's own receive time.
    let conn = anchorlog::store::open_reader(&a.db_path()).unwrap();
    let received: i64 =
        conn.query_row("SELECT received_at_ns FROM events WHERE seq = 7", [], |r| r.get(0)).unwrap();
    assert!(received / 1_000_000 >= started["since_ms"].as_i64().unwrap());
    drop(conn);
    let out = Command::new(kit::bin())
        .args(["verify", "--db", a.db_path().to_str().unwrap(), "--key"])
        .arg(a.key_pem())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("  appliance: 1 starts (0 after a run that ended without a stop record), 1 stops, 1 outages (1 ended), 0 refused access"), "{text}");
}

// ---- issue 10: the TPM monotonic counter in every head (docs/TPM.md "Monotonic counter") ------------------

use anchorlog::signer::tpm::provision_counter;
use anchorlog_core::counter::CounterObservation;
use anchorlog_core::head::{Checkpoint, HeadCounter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const COUNTER: u32 = kit::TPM_COUNTER_INDEX;

/// Settings of a key at `HANDLE` with the head counter at `COUNTER`.
fn counter_settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { counter_index: Some(COUNTER), ..settings(tpm, HANDLE) }
}

/// A head's counter line, from the API's checkpoint text.
fn head_counter(head: &serde_json::Value) -> HeadCounter {
    Checkpoint::parse(head["checkpoint"].as_str().unwrap())
        .unwrap()
        .counter
        .expect("the head carries a counter")
}

/// The last head of a database file: its height and counter line.
fn last_head(db: &std::path::Path) -> (u64, Option<HeadCounter>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (height, text): (i64, String) = conn
        .query_row("SELECT height, checkpoint FROM heads ORDER BY height DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    (height as u64, Checkpoint::parse(&text).unwrap().counter)
}

/// Runs a tpm2-tools command against the test's TPM (nothing else may be connected: swtpm serves one
/// connection at a time).
fn tpm2(tpm: &Swtpm, args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .env("TSS2_LOG", kit::TSS2_LOG)
        .output()
        .unwrap()
}

/// The counter as a fresh signer reads it (the appliance must not be connected).
fn read_tpm_counter(tpm: &Swtpm) -> CounterObservation {
    TpmSigner::open(&appliance_settings(tpm), None).unwrap().read_counter().unwrap().unwrap()
}

/// The TPM response code of a failed tss-esapi call.
fn tss_rc(e: &tss_esapi::Error) -> u32 {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    // tss-esapi 7.7 keeps the raw code private but prints it as "… 0x<code>" (as the backend reads it too).
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        other => panic!("not a TPM response code: {other:?}"),
    };
    u32::from_str_radix(text.rsplit("0x").next().unwrap().trim(), 16).unwrap()
}

/// Tries `TPM2_NV_UndefineSpace` on the counter with owner or platform authorisation (empty on swtpm).
fn undefine_counter(
    tpm: &Swtpm,
    by: tss_esapi::interface_types::resource_handles::Provision,
) -> Result<(), u32> {
    use tss_esapi::handles::{NvIndexTpmHandle, TpmHandle};
    use tss_esapi::interface_types::session_handles::AuthSession;
    let mut ctx = tss_esapi::Context::new(tpm.tcti().parse().unwrap()).unwrap();
    let nv = ctx
        .execute_without_session(|c| {
            c.tr_from_tpm_public(TpmHandle::NvIndex(NvIndexTpmHandle::new(COUNTER).unwrap()))
        })
        .unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.nv_undefine_space(by, nv.into()))
        .map_err(|e| tss_rc(&e))
}

#[test]
fn counter_is_platform_created_and_only_the_platform_can_delete_it() {
    use tss_esapi::interface_types::resource_handles::Provision;
    let tpm = Swtpm::start().unwrap();
    let s = counter_settings(&tpm);
    generate_key(&s, None).unwrap();
    let p = provision_counter(&s, None).unwrap();
    assert_eq!(
        (p.index.as_str(), p.hierarchy, p.delete_needs_platform, p.orderly),
        ("0x01800010", "platform", true, true)
    );
    assert_eq!(p.name.len(), 68);
    assert!(matches!(provision_counter(&s, None), Err(TpmError::CounterIndexOccupied { index: COUNTER })));

    // Never incremented: no value; the first reservation increments it.
    let mut signer = TpmSigner::open(&s, None).unwrap();
    assert!(signer.describe().ends_with(", head counter NV 0x01800010)"), "{}", signer.describe());
    let unused = signer.read_counter().unwrap().unwrap();
    assert_eq!((unused.index, unused.value, unused.max_orderly_count), (COUNTER, None, 255));
    let first = signer.advance_counter(None).unwrap().unwrap();
    assert_eq!((first.index, first.reset_count), (COUNTER, unused.reset_count));
    drop(signer);

    // tpm2-tools, which we did not write, reads the attributes and the delete policy we set.
    let out = tpm2(&tpm, &["tpm2_nvreadpublic", "0x01800010"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for attr in
        ["nt=0x1", "policydelete", "authwrite", "authread", "no_da", "orderly", "written", "platformcreate"]
    {
        assert!(text.contains(attr), "{attr}: {text}");
    }
    assert!(
        text.contains(
            "authorization policy: 1D2DC485E177DDD0A40A344913CEEB420CAA093C42587D2E1B132B157CCB5DB0"
        ),
        "{text}"
    );

    // Root with owner (or even platform) authorisation cannot delete it with TPM2_NV_UndefineSpace.
    let owner = undefine_counter(&tpm, Provision::Owner).unwrap_err();
    let platform = undefine_counter(&tpm, Provision::Platform).unwrap_err();
    println!("NV_UndefineSpace of the POLICY_DELETE counter: owner -> {owner:#x}, platform -> {platform:#x}");
    // TPM_RC_ATTRIBUTES on handle 2 (the index): a POLICY_DELETE index is only deleted by UndefineSpaceSpecial.
    assert_eq!((owner, platform), (0x282, 0x282));
    // TPM2_Clear (the lockout auth is empty here, as on most machines) takes the owner's key, not the counter.
    let cleared = tpm2(&tpm, &["tpm2_clear", "-c", "l"]);
    assert!(cleared.status.success(), "{cleared:?}");
    let nv = tpm2(&tpm, &["tpm2_getcap", "handles-nv-index"]);
    assert!(String::from_utf8_lossy(&nv.stdout).contains("0x1800010"), "{nv:?}");
    let persistent = tpm2(&tpm, &["tpm2_getcap", "handles-persistent"]);
    assert!(!String::from_utf8_lossy(&persistent.stdout).contains("0x81010010"), "{persistent:?}");

    // Only TPM2_NV_UndefineSpaceSpecial, with the delete policy *and* platform authorisation, deletes it.
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.ctx");
    let session = session.to_str().unwrap();
    for args in [
        &["tpm2_startauthsession", "--policy-session", "-S", session][..],
        &["tpm2_policycommandcode", "-S", session, "TPM2_CC_NV_UndefineSpaceSpecial"][..],
        &["tpm2_nvundefine", "-C", "p", "-S", session, "0x01800010"][..],
    ] {
        let out = tpm2(&tpm, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let nv = tpm2(&tpm, &["tpm2_getcap", "handles-nv-index"]);
    assert!(!String::from_utf8_lossy(&nv.stdout).contains("0x1800010"), "{nv:?}");
    // Even then a re-created counter starts above the deleted one (maxCounter), so no copy passes.
    generate_key(&s, None).unwrap();
    provision_counter(&s, None).unwrap();
    let again = TpmSigner::open(&s, None).unwrap().advance_counter(None).unwrap().unwrap();
    assert_eq!(again.value, first.value + 1);
}

#[test]
fn without_platform_auth_the_counter_is_owner_created_and_a_recreated_one_starts_higher() {
    use tss_esapi::interface_types::resource_handles::Provision;
    let tpm = Swtpm::start().unwrap();
    // What firmware does on most real machines: disable the platform hierarchy.
    let off = tpm2(&tpm, &["tpm2_hierarchycontrol", "-C", "p", "phEnable", "clear"]);
    assert!(off.status.success(), "{off:?}");
    let s = counter_settings(&tpm);
    generate_key(&s, Some(&auth(b"key and counter auth"))).unwrap();
    let p = provision_counter(&s, Some(&auth(b"key and counter auth"))).unwrap();
    assert_eq!((p.hierarchy, p.delete_needs_platform, p.orderly), ("owner", false, true));

    let mut signer = TpmSigner::open(&s, Some(&auth(b"key and counter auth"))).unwrap();
    let mut last = None;
    for _ in 0..20 {
        last = Some(signer.advance_counter(last).unwrap().unwrap().value);
    }
    let top = last.unwrap();
    // The counter's auth value is the key's: another one is refused, without echoing it.
    let err = TpmSigner::open(&s, Some(&auth(b"wrong"))).unwrap_err();
    assert!(matches!(err, TpmError::WrongAuth { .. }), "{err:?}");
    drop(signer);

    // Root with owner authorisation deletes the index and defines it again: it cannot start lower, because a
    // new counter starts above the largest value any deleted counter had (the TPM's maxCounter).
    undefine_counter(&tpm, Provision::Owner).unwrap();
    provision_counter(&s, Some(&auth(b"key and counter auth"))).unwrap();
    let mut signer = TpmSigner::open(&s, Some(&auth(b"key and counter auth"))).unwrap();
    assert_eq!(signer.read_counter().unwrap().unwrap().value, None);
    let again = signer.advance_counter(None).unwrap().unwrap().value;
    println!("owner-created counter: {top} before deletion, first value of the re-created index {again}");
    assert_eq!(again, top + 1);
}

#[test]
fn orderly_counter_jumps_only_after_an_unclean_reset_and_reservations_reuse_it() {
    let mut tpm = Swtpm::start().unwrap();
    let s = counter_settings(&tpm);
    generate_key(&s, None).unwrap();
    provision_counter(&s, None).unwrap();
    // Every unclean reset after the (dictionary-attack protected) key was used counts as one failed
    // authorisation; swtpm locks out after 3 (measured, docs/TPM.md). This test resets the TPM uncleanly
    // three times, so it raises the limit first (the lockout auth is empty on swtpm).
    let da = tpm2(&tpm, &["tpm2_dictionarylockout", "-s", "-n", "100", "-t", "1", "-l", "1"]);
    assert!(da.status.success(), "{da:?}");
    let mut signer = TpmSigner::open(&s, None).unwrap();
    // 300 heads: the counter crosses a multiple of 256 (one NV write) and stops inside the next window.
    let mut last = None;
    for _ in 0..300 {
        last = Some(signer.advance_counter(last).unwrap().unwrap().value);
    }
    let v = last.unwrap();
    // A reservation that stored no head is reused, not incremented again.
    let reserved = signer.advance_counter(Some(v)).unwrap().unwrap();
    assert_eq!(reserved.value, v + 1);
    assert_eq!(signer.advance_counter(Some(v)).unwrap().unwrap(), reserved);
    let before = signer.read_counter().unwrap().unwrap();
    assert_eq!(before.value, Some(v + 1));
    drop(signer);

    // A clean reboot (TPM2_Shutdown first): same value, reset count + 1.
    tpm.stop_orderly().unwrap();
    tpm.resume().unwrap();
    let orderly = read_tpm_counter(&tpm);
    assert_eq!((orderly.value, orderly.reset_count), (Some(v + 1), before.reset_count + 1));

    // A power loss (SIGKILL of swtpm): the RAM value is lost, the low 8 bits come back set.
    tpm.kill_unclean();
    tpm.resume().unwrap();
    let jumped = read_tpm_counter(&tpm);
    assert_eq!((jumped.value, jumped.reset_count), (Some((v + 1) | 255), orderly.reset_count + 1));
    // The next head takes the jumped value as it is (no increment) with the new reset count.
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let next = signer.advance_counter(Some(v)).unwrap().unwrap();
    assert_eq!((next.value, next.reset_count), ((v + 1) | 255, jumped.reset_count));
    drop(signer);
    // A second power loss without an increment in between does not jump again.
    tpm.kill_unclean();
    tpm.resume().unwrap();
    assert_eq!(read_tpm_counter(&tpm).value, Some((v + 1) | 255));
    // swtpm_ioctl -s (the harness's stop) sends no TPM2_Shutdown: for the TPM it is unclean too.
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let after = signer.advance_counter(Some((v + 1) | 255)).unwrap().unwrap().value;
    assert_eq!(after, ((v + 1) | 255) + 1);
    drop(signer);
    tpm.restart().unwrap();
    let restarted = read_tpm_counter(&tpm);
    println!(
        "orderly counter: {} after 300 heads and one unused reservation; after TPM2_Shutdown + restart {:?}; \
         after SIGKILL {:?}; {after} then swtpm_ioctl -s + restart {:?} (TPM_PT_ORDERLY_COUNT {})",
        v + 1,
        orderly.value,
        jumped.value,
        restarted.value,
        restarted.max_orderly_count
    );
    assert_eq!(restarted.value, Some(after | 255));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_older_copy_or_cut_off_heads_refuse_to_start_and_fail_the_counter_attestation() {
    let mut a = Appliance::start_with(tpm_options());
    assert_eq!(post_concurrently(&a, 10, 2).await.len(), 10);
    a.wait_for_head(10).await;
    assert!(a.sigterm().success());
    let old = a.copy_db("old.db");
    let (old_height, old_counter) = last_head(&old);
    let old_counter = old_counter.unwrap();

    // The log goes on: three more blocks.
    a.spawn().unwrap();
    for round in 1..=3u64 {
        assert_eq!(post_concurrently(&a, 5, 1).await.len(), 5);
        let head = a.wait_for_head(10 + 5 * round).await;
        assert_eq!(head_counter(&head).index, COUNTER);
    }
    assert!(a.sigterm().success());
    let newest = a.copy_db("newest.db");
    let (new_height, new_counter) = last_head(&newest);
    let new_counter = new_counter.unwrap();
    assert!(new_height >= old_height + 3, "{old_height} -> {new_height}");
    // One increment per head, nothing skipped: the counter is as far ahead as the heights.
    assert_eq!(new_counter.value - old_counter.value, new_height - old_height);
    assert_eq!(new_counter.reset_count, old_counter.reset_count);

    // The older copy verifies on its own; only the counter tells that heads are missing.
    let (code, report) = a.verify(&old);
    assert_eq!(code, 0, "{report}");
    a.restore_db(&old);
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    let expected = format!(
        "head height {old_height}: the last head carries TPM counter {} (reset count {r}) but the TPM's counter \
         0x01800010 is at {} (reset count {r}; at most {} is consistent with this being the newest head): the \
         database was rolled back or truncated — heads signed after height {old_height} are missing",
        old_counter.value,
        new_counter.value,
        old_counter.value + 1,
        r = old_counter.reset_count
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("error: refusing to start:"), "{err}");

    // The newest copy with its two newest heads (and the events after them) cut off: refused too.
    a.restore_db(&newest);
    let cut = new_height - 2;
    let conn = rusqlite::Connection::open(a.db_path()).unwrap();
    let size: i64 =
        conn.query_row("SELECT tree_size FROM heads WHERE height = ?1", [cut as i64], |r| r.get(0)).unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER heads_no_delete; DROP TRIGGER events_no_delete; \
         DELETE FROM heads WHERE height > {cut}; DELETE FROM events WHERE seq >= {size};"
    ))
    .unwrap();
    drop(conn);
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "the truncated copy verifies on its own: {report}");
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    assert!(
        err.contains(&format!(
            "head height {cut}: the last head carries TPM counter {} ",
            new_counter.value - 2
        )),
        "{err}"
    );
    assert!(err.contains("rolled back or truncated"), "{err}");

    // The newest copy starts and continues the counter.
    a.restore_db(&newest);
    a.spawn().unwrap();
    assert_eq!(post_concurrently(&a, 1, 1).await.len(), 1);
    let head = a.wait_for_head(26).await;
    assert_eq!(head_counter(&head).value, new_counter.value + 1);
    assert!(a.sigterm().success());
    let current = a.copy_db("current.db");
    let (cur_height, cur_counter) = last_head(&current);

    // The auditor's proof, with the TPM as the witness: a counter reading certified now, for the auditor's nonce.
    let nonce = "a11ce0000000000000000000000000000000000000000000000000000000beef";
    let att = a.path("counter-attestation.json");
    let cfg = a.config_path();
    let out = a.anchorlog(&[
        "keys",
        "attest",
        "--config",
        cfg.to_str().unwrap(),
        "--nonce",
        nonce,
        "--out",
        att.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("and of head counter 0x01800010"), "{out:?}");
    let key = a.key_pem();
    let check = |db: &std::path::Path, json: bool| {
        let mut args = vec!["verify", "--db", db.to_str().unwrap(), "--key", key.to_str().unwrap()];
        args.extend(["--counter-attestation", att.to_str().unwrap(), "--nonce", nonce]);
        if json {
            args.push("--json");
        }
        a.anchorlog(&args)
    };
    let ok = check(&current, false);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let text = String::from_utf8_lossy(&ok.stdout);
    let cur = cur_counter.unwrap().value;
    assert!(
        text.contains(&format!(
            "  counter:  the database reaches the TPM's head counter 0x01800010: last head height {cur_height} \
             carries {cur}, the TPM certified {cur} (reset count {}) for this nonce",
            new_counter.reset_count
        )),
        "{text}"
    );
    assert!(text.contains("only the platform hierarchy can delete the index"), "{text}");
    // The older copy does not reach it: exit 3, naming its last head.
    let bad = check(&old, true);
    assert_eq!(bad.status.code(), Some(3), "{bad:?}");
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["height"], old_height);
    let failure = v["failure"].as_str().unwrap();
    assert!(
        failure.starts_with(&format!(
            "head height {old_height}: the last head carries TPM counter {} ",
            old_counter.value
        )),
        "{failure}"
    );
    assert!(failure.contains("rolled back or truncated"), "{failure}");
    // A stale (replayed) attestation is no proof: another nonce fails before the database is compared.
    let mut args = vec!["verify", "--db", current.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend(["--counter-attestation", att.to_str().unwrap(), "--nonce", "00"]);
    let stale = a.anchorlog(&args);
    assert_eq!(stale.status.code(), Some(3), "{stale:?}");
    assert_eq!(
        String::from_utf8_lossy(&stale.stdout).trim(),
        "FAILED: the counter attestation does not verify: the attestation was made for a different nonce; it is stale or replayed: request a fresh one"
    );
    // verify-attestation shows the counter reading too.
    let shown = a.anchorlog(&[
        "verify-attestation",
        att.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--nonce",
        nonce,
    ]);
    assert!(
        String::from_utf8_lossy(&shown.stdout)
            .contains(&format!("  head counter: NV 0x01800010 = {}", cur_counter.unwrap().value)),
        "{shown:?}"
    );
}

/// Fault-injection double: the real TPM signer whose process "dies" between reserving the counter value and
/// storing the head: once `crashed` is set, the counter is still advanced in the TPM, every signature fails.
struct CrashAfterIncrement {
    inner: TpmSigner,
    crashed: Arc<AtomicBool>,
}

impl anchorlog::signer::HeadSigner for CrashAfterIncrement {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(anchorlog::signer::SignerError::Injected(
                "the process died after the counter increment".into(),
            ));
        }
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} (crashes after the counter increment)", self.inner.describe())
    }
    fn advance_counter(
        &mut self,
        above: Option<u64>,
    ) -> Result<Option<HeadCounter>, anchorlog::signer::SignerError> {
        Ok(self.inner.advance_counter(above)?)
    }
    fn read_counter(&mut self) -> Result<Option<CounterObservation>, anchorlog::signer::SignerError> {
        Ok(self.inner.read_counter()?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_counter_increment_and_storing_the_head_still_starts() {
    let mut a = Appliance::prepare(tpm_options());
    let crashed = Arc::new(AtomicBool::new(false));
    let flag = crashed.clone();
    let (stop_tx, server) =
        serve_in_process(&mut a, move |inner| Box::new(CrashAfterIncrement { inner, crashed: flag.clone() }))
            .await;
    assert_eq!(post_concurrently(&a, 5, 1).await, vec![0, 1, 2, 3, 4]);
    let stored = head_counter(&a.wait_for_head(5).await);

    // From now on every seal increments (once) and dies before the head is stored; events are still acknowledged.
    crashed.store(true, Ordering::SeqCst);
    assert_eq!(post_concurrently(&a, 3, 1).await, vec![5, 6, 7]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.audit_get("/readyz").await.json()["seal_failures"].as_u64().unwrap() < 3 {
        assert!(Instant::now() < deadline, "no seal failures within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    let (height, last) = last_head(&a.db_path());
    assert_eq!(last, Some(stored), "no head was stored after the crash");
    // However many attempts failed, the TPM is exactly one increment past the newest stored head.
    assert_eq!(read_tpm_counter(a.tpm.as_ref().unwrap()).value, Some(stored.value + 1));

    // The real appliance starts on it (the one increment is inside the slack) and uses the reserved value.
    a.spawn().unwrap();
    let head = a.wait_for_head(8).await;
    assert_eq!(head["height"], height + 1);
    assert_eq!(head_counter(&head), HeadCounter { value: stored.value + 1, ..stored });
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_from_before_the_counter_adopts_it_and_its_old_copy_is_refused_afterwards() {
    let mut a = Appliance::start_with(Options { tpm_counter: false, ..tpm_options() });
    assert_eq!(post_concurrently(&a, 5, 1).await.len(), 5);
    a.wait_for_head(5).await;
    assert!(a.sigterm().success());
    let pre = a.copy_db("pre-counter.db");
    assert_eq!(last_head(&pre).1, None, "heads without a counter");

    // The operator provisions a counter for the existing key and configures it.
    a.options.tpm_counter = true;
    a.write_config("127.0.0.1:0");
    let cfg = a.config_path();
    let out =
        a.anchorlog(&["keys", "generate", "--tpm", "--counter-only", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counter"]["index"], "0x01800010");
    assert_eq!(v["counter"]["hierarchy"], "platform");
    assert_eq!(v.get("handle"), None, "no key was created");
    a.spawn().unwrap();
    assert!(a.server_log().contains("no head carries the TPM counter yet"), "{}", a.server_log());
    assert_eq!(post_concurrently(&a, 5, 1).await.len(), 5);
    let head = a.wait_for_head(10).await;
    assert_eq!(head_counter(&head).index, COUNTER);
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    let newest = a.copy_db("newest.db");

    // The copy from before the counter's first use is refused now: heads sealed with the counter are missing.
    a.restore_db(&pre);
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    let (pre_height, _) = last_head(&pre);
    assert!(
        err.contains(&format!(
            "head height {}: no head of this log carries a TPM counter, but the counter 0x01800010 is at {}",
            pre_height + 1,
            last_head(&newest).1.unwrap().value
        )),
        "{err}"
    );
    assert!(err.contains("rolled back or truncated"), "{err}");

    // Taking the counter out of the configuration does not get the newest copy's successor past the check.
    a.restore_db(&newest);
    a.options.tpm_counter = false;
    let err = a.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 3: "), "{err}");
    assert!(err.contains("the log's heads carry TPM counter 0x01800010 but the signer has no counter; configure signer.tpm.counter_index = \"0x01800010\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_re_signed_with_a_lower_or_no_counter_fails_verification_at_its_height() {
    let mut a = Appliance::start_with(tpm_options());
    for n in [3u64, 6] {
        assert_eq!(post_concurrently(&a, 3, 1).await.len(), 3);
        a.wait_for_head(n).await;
    }
    assert!(a.sigterm().success());
    let (height, last) = last_head(&a.db_path());
    let previous = {
        let conn = rusqlite::Connection::open(a.db_path()).unwrap();
        let text: String = conn
            .query_row("SELECT checkpoint FROM heads WHERE height = ?1", [height as i64 - 1], |r| r.get(0))
            .unwrap();
        Checkpoint::parse(&text).unwrap().counter.unwrap()
    };
    // Root re-signs the last head through the TPM with the appliance's own credentials.
    let resign = |counter: Option<HeadCounter>, name: &str| {
        let copy = a.copy_db(name);
        let conn = rusqlite::Connection::open(&copy).unwrap();
        let text: String = conn
            .query_row("SELECT checkpoint FROM heads WHERE height = ?1", [height as i64], |r| r.get(0))
            .unwrap();
        let forged = Checkpoint { counter, ..Checkpoint::parse(&text).unwrap() }.to_text().unwrap();
        let mut signer = TpmSigner::open(&appliance_settings(a.tpm.as_ref().unwrap()), None).unwrap();
        let sig = signer.sign(forged.as_bytes()).unwrap();
        conn.execute_batch("DROP TRIGGER heads_no_update;").unwrap();
        conn.execute(
            "UPDATE heads SET checkpoint = ?1, signature = ?2 WHERE height = ?3",
            rusqlite::params![forged, sig, height as i64],
        )
        .unwrap();
        drop(conn);
        a.verify(&copy)
    };
    let (code, v) = resign(Some(HeadCounter { value: previous.value, ..last.unwrap() }), "equal.db");
    assert_eq!(code, 3, "{v}");
    assert_eq!(
        v["failure"],
        format!(
            "head height {height}: TPM counter {0} is not greater than the previous head's {0}",
            previous.value
        )
    );
    assert_eq!(v["height"], height);
    let (code, v) = resign(None, "dropped.db");
    assert_eq!(code, 3, "{v}");
    assert_eq!(
        v["failure"],
        format!(
            "head height {height}: carries no TPM counter although the previous head does (counter {})",
            previous.value
        )
    );
}

#[test]
fn head_latency_sign_alone_and_counter_plus_sign() {
    const HEADS: usize = 1000;
    let tpm = Swtpm::start().unwrap();
    let s = counter_settings(&tpm);
    generate_key(&s, None).unwrap();
    provision_counter(&s, None).unwrap();
    let mut signer = TpmSigner::open(&s, None).unwrap();
    let mut last = None;
    let msg = b"anchorlog.example.org/prod-1\n1000\nAAAA\nanchorlog-block 7\n";
    let (mut sign_only, mut with_counter) = (Vec::with_capacity(HEADS), Vec::with_capacity(HEADS));
    // Interleaved in one run, so both see the same machine load.
    for _ in 0..HEADS {
        let t = Instant::now();
        signer.sign(msg).unwrap();
        sign_only.push(t.elapsed());
        let t = Instant::now();
        last = Some(signer.advance_counter(last).unwrap().unwrap().value);
        signer.sign(msg).unwrap();
        with_counter.push(t.elapsed());
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let mean = v.iter().sum::<Duration>() / v.len() as u32;
        (v[v.len() / 2], v[v.len() * 99 / 100], v[v.len() - 1], mean)
    };
    let (p50a, p99a, maxa, meana) = stats(&mut sign_only);
    let (p50b, p99b, maxb, meanb) = stats(&mut with_counter);
    println!(
        "head latency over {HEADS} heads (swtpm TCP, password sessions, one run, interleaved): sign alone p50={p50a:?} \
         p99={p99a:?} max={maxa:?} mean={meana:?}; counter (NV_Increment + NV_Read) + sign p50={p50b:?} p99={p99b:?} \
         max={maxb:?} mean={meanb:?}; ratio p50 {:.2}, mean {:.2}",
        p50b.as_secs_f64() / p50a.as_secs_f64(),
        meanb.as_secs_f64() / meana.as_secs_f64()
    );
    assert_eq!(last, Some(signer.read_counter().unwrap().unwrap().value.unwrap()));
}
