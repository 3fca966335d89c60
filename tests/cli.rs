//! CLI behaviour that needs no hardware: config checking and verifier input errors.

use std::process::Command;

fn anchorlog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anchorlog")).args(args).output().expect("runs")
}

/// The shipped example, with its `/etc/anchorlog` files made as an operator would (certificates, the PIN
/// file at mode 0600, a TSA CA): `check-config` loads every one of them and passes; each file it names is
/// checked, so a missing one fails naming it.
#[test]
fn the_shipped_example_config_is_valid() {
    use std::os::unix::fs::PermissionsExt as _;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/hsm-config/anchorlog.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    std::fs::create_dir_all(etc.join("tsa")).unwrap();
    let pki = anchorlog::dev::generate_pki(&[("producer", "producer.example")]).unwrap();
    std::fs::write(etc.join("tls/server.pem"), &pki.server_pem).unwrap();
    // Secrets where systemd's LoadCredential= puts them for the service (here: a directory of the test).
    let creds = dir.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("secret_server.key"), &pki.server_key_pem).unwrap();
    std::fs::set_permissions(creds.join("secret_server.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    std::fs::write(etc.join("tls/clients-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(etc.join("tsa/digicert-tsa-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(creds.join("secret_pkcs11-pin"), "1234").unwrap();
    std::fs::set_permissions(creds.join("secret_pkcs11-pin"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("/etc/anchorlog/", &format!("{}/", etc.display()))
        .replace("/run/credentials/anchorlog.service/", &format!("{}/", creds.display()))
        .replace("/var/lib/anchorlog/", &format!("{}/", dir.path().display()));
    let config = dir.path().join("anchorlog.toml");
    std::fs::write(&config, text).unwrap();
    let out = anchorlog(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with(&format!("{}: OK", config.display())), "{said}");
    assert!(said.contains("does not exist yet; serve creates it"), "{said}");
    std::fs::remove_file(etc.join("tsa/digicert-tsa-ca.pem")).unwrap();
    let out = anchorlog(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("digicert-tsa-ca.pem"), "{out:?}");
    // The TOML alone, as the verify-only build checks it: the untouched example parses and validates.
    anchorlog::config::Config::parse(&std::fs::read_to_string(example).unwrap()).unwrap();
}

#[test]
fn a_config_with_a_typo_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/hsm-config/anchorlog.example.toml"))
            .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, example.replace("seal_interval_ms = 1000", "seal_intervall_ms = 1000")).unwrap();
    let out = anchorlog(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `seal_intervall_ms`"), "{err}");
}

#[test]
fn verify_reports_unreadable_input_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, "not a key").unwrap();
    let out = anchorlog(&["verify", "--db", "/nonexistent/a.db", "--key", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsing key"));
}
