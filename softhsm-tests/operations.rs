//! Running the appliance as an operator does (issue 12), on real parts: log formats a journal or a SIEM
//! reads, and the export defaults.

mod harness;
mod swtpm;

use harness::{post_concurrently, Appliance, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_never_coloured_off_a_terminal() {
    let json = vec![("ANCHORLOG_LOG_FORMAT".to_string(), "json".to_string())];
    let mut a = Appliance::start_with(Options { env: json, ..Options::default() });
    post_concurrently(&a, 3, 1).await;
    a.wait_for_head(3).await;
    assert!(a.sigterm().success());
    let log = a.server_log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 4, "{log}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
        messages.push(v["fields"]["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m == "sealed head"), "{messages:?}");
    assert!(!log.contains('\u{1b}'), "no ANSI escape in a file: {log}");

    // Text, the default: also plain when stderr is a file.
    let mut b = Appliance::start();
    post_concurrently(&b, 1, 1).await;
    assert!(b.sigterm().success());
    let log = b.server_log();
    assert!(log.contains("sealed head") && !log.contains('\u{1b}'), "{log}");
    assert!(serde_json::from_str::<serde_json::Value>(log.lines().next().unwrap()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_defaults_to_the_whole_log() {
    let mut a = Appliance::start();
    post_concurrently(&a, 5, 1).await;
    let last = a.wait_for_head(5).await["height"].as_u64().unwrap();
    assert!(a.sigterm().success());
    let out = a.path("all.tar");
    let done =
        a.anchorlog(&["export", "--db", a.db_path().to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let said = String::from_utf8_lossy(&done.stdout).to_string();
    // The final seal on SIGTERM may add a head after the one waited for.
    assert!(said.contains("heads 0..="), "{said}");
    let v = a.anchorlog(&["verify", out.to_str().unwrap(), "--key", a.key_pem().to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v.status.code(), Some(0), "{report}");
    assert!(report["manifest"]["to_height"].as_u64().unwrap() >= last, "{report}");
    assert_eq!(report["report"]["events"], 5, "{report}");
}

/// Events in the stopped appliance's database, read from the file.
fn stored(a: &Appliance) -> u64 {
    anchorlog::store::event_count(&anchorlog::store::open_reader(&a.db_path()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_a_readable_pin_or_a_missing_ca_stops_the_start_before_any_write() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    post_concurrently(&a, 2, 1).await;
    assert!(a.sigterm().success());
    let before = stored(&a);
    let config = a.config_path();
    let check = |a: &Appliance| a.anchorlog(&["check-config", "--config", config.to_str().unwrap()]);
    let ok = check(&a);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&format!("({before} events")), "{ok:?}");

    let key = a.path("certs/server.key");
    let key_pem = std::fs::read(&key).unwrap();
    let pin = a.path("pin");
    let ca = a.path("certs/ca.pem");
    let ca_pem = std::fs::read(&ca).unwrap();
    type Fault<'f> = (&'f str, Box<dyn Fn()>, Box<dyn Fn()>);
    let faults: Vec<Fault> = vec![
        (
            "cannot read private key file",
            Box::new({
                let key = key.clone();
                move || std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap()
            }),
            Box::new({
                let (key, pem) = (key.clone(), key_pem.clone());
                move || std::fs::write(&key, &pem).unwrap()
            }),
        ),
        (
            "mode 0644",
            Box::new({
                let key = key.clone();
                move || std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap()
            }),
            Box::new({
                let key = key.clone();
                move || std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "mode 0604",
            Box::new({
                let pin = pin.clone();
                move || std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o604)).unwrap()
            }),
            Box::new({
                let pin = pin.clone();
                move || std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap()
            }),
        ),
        (
            "ca.pem",
            Box::new({
                let ca = ca.clone();
                move || std::fs::remove_file(&ca).unwrap()
            }),
            Box::new({
                let (ca, pem) = (ca.clone(), ca_pem.clone());
                move || std::fs::write(&ca, &pem).unwrap()
            }),
        ),
    ];
    for (said, break_it, mend) in &faults {
        break_it();
        let err = a.spawn().unwrap_err();
        assert!(err.starts_with("exit status: 1:"), "{said}: {err}");
        assert!(err.contains(said), "{said}: {err}");
        assert_eq!(stored(&a), before, "{said}: nothing written");
        let out = check(&a);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(said), "{said}: {out:?}");
        mend();
    }
    // Mended: it starts, and its start record is the only new event.
    a.spawn().unwrap();
    let status = a.sigterm();
    assert!(status.success(), "{status:?}: {}", a.server_log());
    assert_eq!(stored(&a), before + 2, "one start and one stop record");
}
