//! CLI behaviour that needs no hardware: config checking and verifier input errors.

use std::process::Command;

fn anchorlog(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anchorlog")).args(args).output().expect("runs")
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/hsm-config/anchorlog.example.toml");
    let out = anchorlog(&["check-config", "--config", path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{path}: OK"));
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
