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
