//! End-to-end scenarios that run on both stores: the `softhsm` target (e2e.rs) runs them on SQLite, the `postgres`
//! target on a PostgreSQL log (`Options::postgres`), with the same assertions. The only difference a scenario
//! allows for is the writer node's `anchorlog.takeover` record, which a PostgreSQL node appends as its first write
//! (docs/HA.md): `base` is the number of the appliance's own records before the first posted event.

use super::kit::{post_concurrently, Appliance, Options};
use std::time::Duration;

/// The appliance's own records before the first posted event: a PostgreSQL node's takeover record, nothing on
/// SQLite (the kit's appliances do not record their starts unless asked).
fn base(options: &Options) -> u64 {
    u64::from(options.postgres.is_some())
}

/// 1,000 events from 32 connections: dense seqs, each acknowledged once, a head over all of them that OpenSSL
/// verifies with the exported key, an event read back with its leaf hash (and the read on record), and the log
/// verifying offline after a clean stop.
pub async fn thousand_concurrent_events_are_sealed_verified_and_openssl_checks_the_head(options: Options) {
    let base = base(&options);
    let mut a = Appliance::start_with(options);
    let seqs = post_concurrently(&a, 1000, 32).await;
    assert_eq!(seqs, (base..base + 1000).collect::<Vec<_>>(), "seqs are dense and each acknowledged once");
    let head = a.wait_for_head(base + 1000).await;
    assert_eq!(head["tree_size"], base + 1000);
    // The same head through /v1/heads/{height}.
    let height = head["height"].as_u64().unwrap();
    let by_height = a.audit_get(&format!("/v1/heads/{height}")).await.json();
    assert_eq!(by_height, head);
    // The C2SP signed-note form: the same text, a blank line, and one ECDSA (type 0x02) signature line.
    let note = head["note"].as_str().unwrap();
    let checkpoint = head["checkpoint"].as_str().unwrap();
    assert!(note.starts_with(&format!("{checkpoint}\n\u{2014} {} ", a.options.origin)), "{note}");

    // OpenSSL, knowing nothing about anchorlog, verifies the signed checkpoint with the exported key.
    a.assert_openssl_verifies_head(&head);

    // An event reads back with its exact body and a leaf hash that is SHA-256(0x00 || entry).
    let ev = a.audit_get(&format!("/v1/events/{}", base + 7)).await.json();
    let entry = ev["entry"].as_str().unwrap();
    use base64::Engine as _;
    let leaf = base64::engine::general_purpose::STANDARD.decode(ev["leaf_hash"].as_str().unwrap()).unwrap();
    assert_eq!(leaf, anchorlog_core::merkle::leaf_hash(entry.as_bytes()).to_vec());
    assert_eq!(ev["entry_fields"]["producer"], "producer-1");
    assert_eq!(ev["entry_fields"]["auth"], "mtls");
    assert!(ev["body"].as_str().unwrap().starts_with("{\"type\":\"LOGIN\""));
    // The read is on record (PCI DSS 10.2.1.3), as the log's next event.
    assert_eq!(ev["audit_seq"], base + 1000);

    assert!(a.sigterm().success());
    let (code, report) = a.verify_log();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["events"], base + 1001);
    assert_eq!(report["report"]["unsealed_events"], 0);
    let text = a.anchorlog(&["verify", "--db", &a.db_arg(), "--key", a.key_pem().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.starts_with("OK: log verified with key "), "{stdout}");
    assert!(stdout.contains(&format!("events:   {} (0 erased)", base + 1001)), "{stdout}");
}

/// SIGTERM while 8 connections post NDJSON pairs: every acknowledged event is stored and sealed, the shutdown seal
/// covers everything, the cadence holds, and the restarted appliance serves a head covering them.
pub async fn sigterm_under_load_loses_no_acknowledged_event(options: Options) {
    let mut a = Appliance::start_with(Options { seal_interval_ms: 1000, ..options });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let mut conn = a.connect("producer").await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body = format!("{{\"c\":{c},\"i\":{i}}}\n{{\"c\":{c},\"i\":{i},\"second\":true}}\n");
                match conn
                    .request(
                        "POST",
                        "/v1/events",
                        &[("content-type", "application/x-ndjson")],
                        body.into_bytes(),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        for e in r.json()["events"].as_array().unwrap() {
                            acked.push(e["seq"].as_u64().unwrap());
                        }
                    }
                    _ => break, // connection closed by the shutdown
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = a.sigterm();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(acked.len() > 100, "load was applied ({} events)", acked.len());
    let max = *acked.iter().max().unwrap();
    // Offline: every acknowledged event is stored and covered by a signed head.
    let (code, r) = a.verify_log();
    assert_eq!(code, 0, "{r}");
    assert!(r["report"]["events"].as_u64().unwrap() > max);
    assert_eq!(r["report"]["unsealed_events"], 0, "the shutdown sealed everything");
    // ~1.5 s of load at a 1 s cadence: head 0, one or two interval seals and the shutdown seal. A sealer that
    // chased the live commit counter would cut hundreds of tiny blocks here.
    let heads = r["report"]["heads"].as_u64().unwrap();
    assert!((2..=5).contains(&heads), "{heads} heads for 1.5 s of load");
    // And the restarted appliance serves a head covering them.
    a.spawn().expect("restarts");
    let head = a.wait_for_head(max + 1).await;
    assert!(head["tree_size"].as_u64().unwrap() > max);
}

/// An idle log: anchored at once, heartbeat heads over no new event, and a restart continuing the chain.
pub async fn idle_log_seals_heartbeats_and_restart_continues_the_chain(options: Options) {
    let base = base(&options);
    let mut a = Appliance::start_with(Options { heartbeat_interval_s: 1, ..options });
    let first = a.wait_for_head(0).await;
    assert_eq!(first["height"], 0, "a new log is anchored at once");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = a.audit_get("/v1/heads/latest").await.json();
    assert!(later["height"].as_u64().unwrap() >= 1, "heartbeat heads on an idle log: {later}");
    assert_eq!(later["tree_size"], base);
    assert!(a.sigterm().success());
    a.spawn().expect("restart");
    post_concurrently(&a, 5, 1).await;
    let h = a.wait_for_head(2 * base + 5).await;
    assert!(h["height"].as_u64().unwrap() > later["height"].as_u64().unwrap());
    assert!(a.sigterm().success());
    assert_eq!(a.verify_log().0, 0);
}
