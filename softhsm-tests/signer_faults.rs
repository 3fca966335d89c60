//! A hung or slow HSM and errors retrying cannot fix (issue 14.4), on real SoftHSM behind a fault double that
//! hangs on demand (fault injection only), with the appliance's own PIN-file opener.

mod kit;

use kit::health::{codes, health_get};
use kit::{post_concurrently, write_secret, Appliance, Options};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fault double: the real SoftHSM signer whose `sign` blocks while `hang` is set (an HSM that stops answering);
/// setting `reset` as well makes the blocked calls fail (the HSM comes back reset, its sessions gone).
struct HangingSigner {
    inner: anchorlog::signer::pkcs11::Pkcs11Signer,
    hang: Arc<AtomicBool>,
    reset: Arc<AtomicBool>,
}

impl anchorlog::signer::HeadSigner for HangingSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        while self.hang.load(Ordering::SeqCst) {
            if self.reset.load(Ordering::SeqCst) {
                return Err(anchorlog::signer::SignerError::InjectedUnrecoverable(
                    "the token was reset: its sessions are closed".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} (may hang)", self.inner.describe())
    }
    fn abandon(self: Box<Self>) {
        self.inner.abandon()
    }
}

fn reason<'a>(v: &'a serde_json::Value, code: &str) -> &'a serde_json::Value {
    v["reasons"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["code"] == code))
        .unwrap_or(&serde_json::Value::Null)
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(-1.0)
}

fn own_records(db: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut st = conn.prepare("SELECT body FROM events ORDER BY seq").unwrap();
    st.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| serde_json::from_slice::<serde_json::Value>(&b.unwrap()).unwrap())
        .filter(|v| v["type"] == kind)
        .collect()
}

/// The whole story on one appliance: the HSM hangs (timeout, thread replaced, outage recorded, `/readyz` says
/// so), the PIN is changed meanwhile (one failed login, then back-off without touching the token however often
/// sealing tries), the PIN file is corrected (signing resumes by itself, the outage's end is recorded), and the
/// log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_hsm_times_out_is_replaced_and_a_wrong_pin_is_backed_off_without_locking_the_token() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let port = kit::tsa::free_port();
    let mut a = Appliance::prepare(Options {
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        record_appliance_events: true,
        // Readiness here is about the signer only, whatever the free space of the shared test machine.
        extra_config: "[alerting]\nmin_free_disk_percent = 0\n".into(),
        config_filter: Some(Arc::new(|t: String| {
            t.replace(
                "backend = \"pkcs11\"\n",
                "backend = \"pkcs11\"\nsign_timeout_ms = 1000\nbackoff_initial_ms = 1000\nbackoff_max_ms = 4000\n",
            )
        })),
        ..Options::default()
    });
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = a.load_config();
    let supervision = config.signer.supervision();
    let hang = Arc::new(AtomicBool::new(false));
    let reset = Arc::new(AtomicBool::new(false));
    let pin_file = a.path("pin");
    let opener =
        Arc::new(anchorlog::signer::pkcs11::Pkcs11Opener::new(a.pkcs11_in_process(), pin_file.clone()));
    let (h, r, o) = (hang.clone(), reset.clone(), opener.clone());
    let signer = anchorlog::signer::SignerHandle::spawn_supervised(
        move || {
            let inner = o.open()?;
            Ok(Box::new(HangingSigner { inner, hang: h.clone(), reset: r.clone() })
                as Box<dyn anchorlog::signer::HeadSigner>)
        },
        supervision,
    )
    .unwrap();
    let signer_health = signer.health();
    let service = a.serve_in_process(config, signer).await;
    post_concurrently(&a, 1, 1).await;
    kit::eventually(20, "ready", async || health_get(health, "/readyz").await.0 == 200).await;

    // The HSM stops answering: the next seal times out after 1 s, its thread is abandoned.
    hang.store(true, Ordering::SeqCst);
    post_concurrently(&a, 1, 1).await;
    kit::eventually(30, "not ready: signer hung", async || {
        let (code, v, _) = health_get(health, "/readyz").await;
        code == 503 && codes(&v) == ["signer_failing", "signer_hung", "sealing_stalled"]
    })
    .await;
    let (_, v, _) = health_get(health, "/readyz").await;
    assert_eq!(
        reason(&v, "signer_hung"),
        &serde_json::json!({"code": "signer_hung", "message":
            "the signer did not answer within signer.sign_timeout_ms = 1000 ms: the waiting thread was abandoned \
             and a fresh session is opened at each attempt; check the HSM or TPM and its link"})
    );
    assert!(signer_health.timeouts.load(Ordering::SeqCst) >= 1);
    // Ingest goes on while the HSM hangs.
    post_concurrently(&a, 3, 1).await;

    // Meanwhile the token's PIN was changed (the PIN file no longer matches it): every fresh session's login
    // fails. Sealing tries every 200 ms; the token sees at most one failed login.
    write_secret(&pin_file, b"not-the-pin\n");
    let logins_before = opener.login_attempts();
    let (_, _, m) = health_get(health, "/metrics").await;
    let seal_failures_before = sample(&m, "anchorlog_seal_failures_total");
    // The HSM comes back reset: the calls blocked in it fail and every session it had is closed, so the next
    // session logs in again with the PIN file as it is now. (Had the sessions survived, their login would still
    // hold — a PKCS#11 login belongs to the process, and C_Login then answers CKR_USER_ALREADY_LOGGED_IN without
    // checking the PIN — and signing would simply resume; that race made this test flaky under load.)
    reset.store(true, Ordering::SeqCst);
    kit::eventually(30, "every thread blocked in the HSM returned", async || {
        signer_health.stuck_threads() == 0
    })
    .await;
    hang.store(false, Ordering::SeqCst);
    reset.store(false, Ordering::SeqCst);
    kit::eventually(30, "not ready: signer backing off", async || {
        let (_, v, _) = health_get(health, "/readyz").await;
        codes(&v).contains(&"signer_backing_off".to_string())
    })
    .await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let logins = opener.login_attempts() - logins_before;
    // One login with the wrong PIN; a second only if a thread had read the old PIN just before the change.
    assert!((1..=2).contains(&logins), "{logins} login attempts against the token");
    let (_, _, m) = health_get(health, "/metrics").await;
    let seal_attempts = sample(&m, "anchorlog_seal_failures_total") - seal_failures_before;
    assert!(
        seal_attempts >= 20.0,
        "sealing kept trying: {seal_attempts} failed seals in {:?}",
        window.elapsed()
    );
    assert!(sample(&m, "anchorlog_signer_unrecoverable_errors_total") >= 2.0, "{m}");
    assert!(sample(&m, "anchorlog_signer_backed_off_calls_total") >= 10.0, "{m}");
    assert_eq!(sample(&m, "anchorlog_signer_backoff_seconds"), 4.0, "at the cap: {m}");
    assert!(sample(&m, "anchorlog_signer_timeouts_total") >= 1.0, "{m}");
    let (code, v, text) = health_get(health, "/readyz").await;
    assert_eq!(code, 503, "{text}");
    assert_eq!(codes(&v), ["signer_failing", "signer_backing_off", "sealing_stalled"], "{text}");
    assert_eq!(
        reason(&v, "signer_backing_off"),
        &serde_json::json!({"code": "signer_backing_off", "message": format!(
            "the signer failed with an error that retrying cannot fix: the PIN in {} is the one the token refused \
             (CKR_PIN_INCORRECT); not logging in with it again, since every attempt counts towards locking the \
             token: write the correct PIN to that file (no restart needed). Attempts are spaced out, doubling up \
             to signer.backoff_max_ms = 4000 ms, so that a wrong PIN cannot lock the token; fix the cause (a wrong \
             PIN: write the right one to the PIN file) and the next attempt picks it up",
            pin_file.display()
        )})
    );

    // The operator writes the right PIN: within one pause (4 s) the signer opens, signs, and all is ready again.
    write_secret(&pin_file, kit::USER_PIN.as_bytes());
    kit::eventually(30, "ready again", async || health_get(health, "/readyz").await.0 == 200).await;
    assert_eq!(opener.login_attempts() - logins_before, logins + 1, "one login with the corrected PIN");
    post_concurrently(&a, 2, 1).await;
    service.stop().await;

    // On record: one sealing outage, from the timeout to the first head after the PIN was fixed.
    let outages = own_records(&a.db_path(), "anchorlog.outage");
    assert_eq!(outages.len(), 2, "{outages:?}");
    let since = outages[0]["since_ms"].as_i64().unwrap();
    assert_eq!(
        outages[0],
        serde_json::json!({"type": "anchorlog.outage", "component": "sealing", "state": "started",
            "since_ms": since, "error": "signing failed: the signer did not answer within 1000 ms \
            (signer.sign_timeout_ms): its thread was abandoned in the device (1 abandoned threads still waiting) \
            and the next attempt opens a fresh session"})
    );
    let failed = outages[1]["failed_attempts"].as_u64().unwrap();
    assert!(failed >= 20, "{outages:?}");
    assert_eq!(
        outages[1],
        serde_json::json!({"type": "anchorlog.outage", "component": "sealing", "state": "ended",
            "since_ms": since, "failed_attempts": failed})
    );
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["unsealed_events"], 0, "{report}");
    assert_eq!(report["report"]["appliance"]["outages_started"], 1, "{report}");
}

/// The pid of this test's swtpm (the one listening on `port`), found in /proc by its command line.
fn swtpm_pid(port: u16) -> u32 {
    let needle = format!("port={port},bindaddr");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let program = cmdline.split(' ').next().unwrap_or_default();
        if program.ends_with("swtpm") && cmdline.contains(&needle) {
            return pid;
        }
    }
    panic!("no swtpm process with {needle}");
}

fn signal_pid(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

/// A hung TPM: swtpm stopped with SIGSTOP under the real `anchorlog serve` (its TCTI reads block). The timeout
/// abandons the thread, `/readyz` says `signer_hung`, ingest goes on; after SIGCONT the abandoned threads drain,
/// signing resumes by itself, the outage is on record with the timeout as its error, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_swtpm_is_a_hung_tpm_the_appliance_times_out_and_resumes_after_sigcont() {
    let port = kit::tsa::free_port();
    let mut a = Appliance::start_with(Options {
        signer: kit::TestSigner::Tpm,
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        record_appliance_events: true,
        extra_config: "[alerting]\nmin_free_disk_percent = 0\n".into(),
        config_filter: Some(Arc::new(|t: String| {
            t.replace("backend = \"tpm\"\n", "backend = \"tpm\"\nsign_timeout_ms = 1000\n")
        })),
        ..Options::default()
    });
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    post_concurrently(&a, 2, 1).await;
    kit::eventually(30, "ready", async || health_get(health, "/readyz").await.0 == 200).await;
    let pid = swtpm_pid(a.tpm.as_ref().unwrap().port());
    signal_pid(pid, "STOP");
    post_concurrently(&a, 2, 1).await;
    kit::eventually(30, "not ready: signer hung", async || {
        let (code, v, _) = health_get(health, "/readyz").await;
        code == 503 && codes(&v).contains(&"signer_hung".to_string())
    })
    .await;
    let (_, v, text) = health_get(health, "/readyz").await;
    assert_eq!(
        reason(&v, "signer_hung"),
        &serde_json::json!({"code": "signer_hung", "message":
            "the signer did not answer within signer.sign_timeout_ms = 1000 ms: the waiting thread was abandoned \
             and a fresh session is opened at each attempt; check the HSM or TPM and its link"}),
        "{text}"
    );
    // Ingest does not wait for the TPM.
    post_concurrently(&a, 2, 1).await;
    signal_pid(pid, "CONT");
    kit::eventually(60, "ready again after SIGCONT", async || health_get(health, "/readyz").await.0 == 200)
        .await;
    post_concurrently(&a, 1, 1).await;
    assert!(a.sigterm().success(), "{}", a.server_log());
    let outages = own_records(&a.db_path(), "anchorlog.outage");
    assert_eq!(outages.len(), 2, "{outages:?}");
    assert_eq!((&outages[0]["state"], &outages[1]["state"]), (&"started".into(), &"ended".into()));
    let error = outages[0]["error"].as_str().unwrap();
    assert!(error.starts_with("signing failed: the signer did not answer within 1000 ms"), "{error}");
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["unsealed_events"], 0, "{report}");
}
