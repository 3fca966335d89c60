//! Running the appliance as an operator does (issue 12), on real parts: log formats a journal or a SIEM
//! reads, export defaults, the start-up order, systemd notifications, readiness and the monitor role.

mod kit;

use kit::health::{codes, health_get};
use kit::{post_concurrently, Appliance, Options};

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

/// Fault-injection double: the real SoftHSM signer that blocks inside `sign` while `hang` is set (a hung HSM).
struct HangingSigner {
    inner: anchorlog::signer::pkcs11::Pkcs11Signer,
    hang: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl anchorlog::signer::HeadSigner for HangingSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        while self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} (may hang)", self.inner.describe())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_watchdog_pings_that_stop_while_the_signer_hangs() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    let mut a = Appliance::prepare(Options::default());
    // systemd's side: a datagram socket the service is told about, as systemd does for Type=notify.
    let sock_path = a.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    let heard: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    {
        let heard = heard.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                heard.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
    }
    // This process is the service here (in-process, behind the signer double): its environment is systemd's.
    std::env::set_var("NOTIFY_SOCKET", &sock_path);
    std::env::set_var("WATCHDOG_USEC", "600000");
    let config = a.load_config();
    let hang = Arc::new(AtomicBool::new(false));
    let settings = a.pkcs11_in_process();
    let h = hang.clone();
    let signer = anchorlog::signer::SignerHandle::spawn(move || {
        let pin = zeroize::Zeroizing::new(kit::USER_PIN.to_string());
        let inner = anchorlog::signer::pkcs11::Pkcs11Signer::open(&settings, &pin)?;
        Ok(Box::new(HangingSigner { inner, hang: h.clone() }) as Box<dyn anchorlog::signer::HeadSigner>)
    })
    .unwrap();
    let service = a.serve_in_process(config, signer).await;
    let messages = |from: Instant, to: Instant, what: &str| -> Vec<Instant> {
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, m)| *t >= from && *t < to && m.contains(what))
            .map(|(t, _)| *t)
            .collect()
    };
    let t0 = Instant::now();
    tokio_sleep_until(|| !messages(t0 - Duration::from_secs(60), Instant::now(), "READY=1").is_empty()).await;
    let ready = heard.lock().unwrap()[0].1.clone();
    assert!(ready.contains("READY=1") && ready.contains("STATUS="), "the first message: {ready}");
    // Ready means accepting: an event is stored right away.
    post_concurrently(&a, 1, 1).await;
    // Pings every 0.3 s (half of WATCHDOG_USEC) while the sealer goes round.
    let (from, window) = (Instant::now(), Duration::from_millis(1500));
    tokio::time::sleep(window).await;
    let pings = messages(from, from + window, "WATCHDOG=1");
    assert!((4..=6).contains(&pings.len()), "{} pings in 1.5 s: {:?}", pings.len(), heard.lock().unwrap());
    // The HSM hangs: the next seal blocks inside the signer, the sealer stops going round, the pings stop.
    hang.store(true, Ordering::SeqCst);
    post_concurrently(&a, 1, 1).await;
    let hung = Instant::now();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    // At most the pings of the first interval after the hang (the sealer's last sign of life then).
    let silent_from = hung + Duration::from_millis(1200);
    assert_eq!(
        messages(silent_from, Instant::now(), "WATCHDOG=1").len(),
        0,
        "no ping while the signer hangs"
    );
    assert!(
        !messages(silent_from, Instant::now(), "STATUS=sealer stuck").is_empty(),
        "{:?}",
        heard.lock().unwrap()
    );
    // Back: the pings resume.
    hang.store(false, Ordering::SeqCst);
    let back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!messages(back, Instant::now(), "WATCHDOG=1").is_empty(), "pings resume");
    service.stop().await;
    assert!(!messages(back, Instant::now(), "STOPPING=1").is_empty(), "STOPPING=1 on stop");
}

/// Polls `done` every 20 ms for up to 20 s.
async fn tokio_sleep_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `GET path` on the plain health listener: (status, JSON or text body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_why_it_is_not_ready_and_recovers_and_a_monitor_reads_nothing_else() {
    let mut tsa = kit::tsa::LocalTsa::start_new(&[]);
    let port = kit::tsa::free_port();
    let a = Appliance::start_with(Options {
        extra_config: format!(
            "{}{}[readiness]\nmax_untimestamped_age_s = 1\n",
            tsa.config_entry(2000),
            kit::tsa::fast_retries()
        ),
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        ..Options::default()
    });
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    post_concurrently(&a, 2, 1).await;
    kit::eventually(20, "ready with every head timestamped", async || {
        health_get(health, "/readyz").await.0 == 200
    })
    .await;
    let (_, _, body) = health_get(health, "/readyz").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"], "ready", "{body}");
    let (code, _, text) = health_get(health, "/metrics").await;
    assert!(code == 200 && text.contains("anchorlog_events_appended_total 2"), "{text}");
    let (code, _, _) = health_get(health, "/v1/heads/latest").await;
    assert_eq!(code, 404, "the health listener serves health, readiness and metrics only");

    // The monitor role: readiness and metrics on the mTLS listener, nothing that reads the log.
    let mut monitor = a.connect("monitor").await;
    assert_eq!(monitor.get("/readyz").await.unwrap().status, 200);
    assert_eq!(monitor.get("/metrics").await.unwrap().status, 200);
    for path in [
        "/v1/heads/latest",
        "/v1/heads/0",
        "/v1/events?type=LOGIN",
        "/v1/events/0",
        "/v1/events/0/receipt",
        "/v1/proofs/inclusion?seq=0&tree_size=1",
        "/v1/proofs/consistency?from=0&to=1",
        "/v1/export?from_height=0&to_height=0",
    ] {
        let r = monitor.get(path).await.unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")), "{path}");
    }
    let r = monitor.post_json("/v1/events", br#"{"type":"LOGIN"}"#).await.unwrap();
    assert_eq!(r.status, 403);

    // The TSA goes down: heads stay without tokens past the threshold → 503, with the reason.
    tsa.stop();
    post_concurrently(&a, 1, 1).await;
    kit::eventually(20, "not ready: timestamps overdue", async || {
        let (code, v, _) = health_get(health, "/readyz").await;
        code == 503 && codes(&v) == ["timestamps_overdue"]
    })
    .await;
    let r = monitor.get("/readyz").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "not_ready");
    assert!(
        r.json()["reasons"][0]["message"].as_str().unwrap().contains("no RFC 3161 token"),
        "{}",
        r.json()
    );
    // Back: the heads are back-filled, ready again.
    tsa.start();
    kit::eventually(30, "ready again after the back-fill", async || {
        health_get(health, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_the_disk_is_nearly_full() {
    let port = kit::tsa::free_port();
    let a = Appliance::start_with(Options {
        // Any real filesystem has less than 100 % free.
        extra_config: "[alerting]\nmin_free_disk_percent = 100\n".into(),
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        ..Options::default()
    });
    let (code, v, body) = health_get(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/readyz").await;
    assert_eq!((code, codes(&v)), (503, vec!["disk_nearly_full".to_string()]), "{body}");
    drop(a);
}

/// Fault-injection double: the real SoftHSM signer that fails while `fail` is set (an HSM answering errors).
struct FailingSigner {
    inner: anchorlog::signer::pkcs11::Pkcs11Signer,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl anchorlog::signer::HeadSigner for FailingSigner {
    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der().to_vec()
    }
    fn sign(&mut self, message: &[u8]) -> Result<Vec<u8>, anchorlog::signer::SignerError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(anchorlog::signer::SignerError::Injected("the HSM answers CKR_DEVICE_ERROR".into()));
        }
        Ok(self.inner.sign(message)?)
    }
    fn describe(&self) -> String {
        format!("{} (may fail)", self.inner.describe())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_signer_fails_and_200_once_it_works() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let port = kit::tsa::free_port();
    let mut a = Appliance::prepare(Options {
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        ..Options::default()
    });
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = a.load_config();
    let fail = Arc::new(AtomicBool::new(false));
    let settings = a.pkcs11_in_process();
    let f = fail.clone();
    let signer = anchorlog::signer::SignerHandle::spawn(move || {
        let pin = zeroize::Zeroizing::new(kit::USER_PIN.to_string());
        let inner = anchorlog::signer::pkcs11::Pkcs11Signer::open(&settings, &pin)?;
        Ok(Box::new(FailingSigner { inner, fail: f.clone() }) as Box<dyn anchorlog::signer::HeadSigner>)
    })
    .unwrap();
    let service = a.serve_in_process(config, signer).await;
    post_concurrently(&a, 1, 1).await;
    kit::eventually(20, "ready", async || health_get(health, "/readyz").await.0 == 200).await;
    fail.store(true, Ordering::SeqCst);
    post_concurrently(&a, 1, 1).await;
    // Signing fails at the next seal (200 ms); the event waits more than 3 seal intervals soon after.
    kit::eventually(20, "not ready: signer failing and sealing stalled", async || {
        let (code, v, _) = health_get(health, "/readyz").await;
        code == 503 && codes(&v) == ["signer_failing", "sealing_stalled"]
    })
    .await;
    fail.store(false, Ordering::SeqCst);
    kit::eventually(20, "ready again", async || health_get(health, "/readyz").await.0 == 200).await;
    service.stop().await;
}

/// The value of the sample `name` (with its labels, exactly as exposed) in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_acks_signatures_tokens_commits_sources_and_failures() {
    let tsa = kit::tsa::LocalTsa::start_new(&[]);
    let port = kit::tsa::free_port();
    let a = Appliance::start_with(Options {
        extra_config: tsa.config_entry(2000),
        server_extra: format!("health_listen = \"127.0.0.1:{port}\""),
        ..Options::default()
    });
    let health = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    post_concurrently(&a, 5, 1).await;
    let mut producer = a.connect("producer").await;
    let r = producer.post_json("/v1/events", b"{not json").await.unwrap();
    assert_eq!(r.status, 400);
    kit::eventually(20, "a head over the 5 events with its token", async || {
        let (_, _, text) = health_get(health, "/metrics").await;
        sample(&text, "anchorlog_sealed_tree_size").unwrap_or(0.0) >= 5.0
            && sample(&text, "anchorlog_untimestamped_heads") == Some(0.0)
    })
    .await;
    let (code, _, text) = health_get(health, "/metrics").await;
    assert_eq!(code, 200);

    // The Prometheus project's own linter: names, units, `_total` on counters, HELP on every family.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; softhsm-tests/run-all.sh installs it)");
    use std::io::Write as _;
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the instruments say: 5 acknowledged requests, 5 JSON events from the generic endpoint, one rejected
    // request, signed heads and stored tokens timed, every stored event in exactly one group commit.
    assert_eq!(sample(&text, "anchorlog_ingest_ack_seconds_count"), Some(5.0), "{text}");
    assert_eq!(
        sample(&text, r#"anchorlog_events_ingested_total{format="json",source="events"}"#),
        Some(5.0),
        "{text}"
    );
    assert_eq!(sample(&text, r#"anchorlog_failures_total{kind="ingest_rejected"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"anchorlog_failures_total{kind="sealing"}"#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"anchorlog_failures_total{kind="timestamping"}"#), Some(0.0), "{text}");
    let heads = sample(&text, "anchorlog_heads_sealed_total").unwrap();
    assert!(heads >= 1.0);
    assert_eq!(sample(&text, "anchorlog_head_sign_seconds_count"), Some(heads), "{text}");
    assert_eq!(sample(&text, "anchorlog_timestamp_lag_seconds_count"), Some(heads), "{text}");
    let stored = sample(&text, "anchorlog_events_stored").unwrap();
    assert_eq!(sample(&text, "anchorlog_commit_events_sum"), Some(stored), "{text}");
    assert!(sample(&text, r#"anchorlog_ingest_ack_seconds_bucket{le="+Inf"}"#) == Some(5.0), "{text}");
}
