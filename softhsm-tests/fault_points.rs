//! Fault doubles at fixed points (docs/RELIABILITY.md, issue 14.1, 14.7, 14.8), on real parts: the real
//! `anchorlog` binary on a SoftHSM token and a real SQLite file. The doubles (src/fault.rs) are compiled into the
//! binary the tests start because the crate enables its `fault-injection` feature on itself as a
//! dev-dependency; release builds never have them. Each is armed by an environment variable of the server:
//! a wall clock shifted by the milliseconds in a file, SIGKILL at a named point, an indexer that stalls while a
//! file exists.

mod kit;

use kit::eventually;
use kit::tsa::{fast_retries, LocalTsa};
use kit::{Appliance, Options};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Posts `n` single events as the producer; every one must be acknowledged. Returns (seq, body) of each.
async fn post_n(a: &Appliance, tag: &str, n: u64) -> Vec<(u64, String)> {
    let mut conn = a.connect("producer").await;
    let mut out = Vec::new();
    for i in 0..n {
        let body = format!("{{\"type\":\"LOGIN\",\"user\":\"{tag}-{i}\",\"n\":{i}}}");
        let r = conn.post_json("/v1/events", body.as_bytes()).await.expect("post");
        assert_eq!(r.status, 200, "{tag} {i}: {}", String::from_utf8_lossy(&r.body));
        out.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body));
    }
    out
}

/// Every head in the database file: (height, tree_size, sealed_at_ms), by height.
fn heads(db: &Path) -> Vec<(u64, u64, i64)> {
    let conn = anchorlog::store::open_reader(db).expect("ledger opens");
    let mut st = conn.prepare("SELECT height, tree_size, sealed_at_ms FROM heads ORDER BY height").unwrap();
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?)));
    rows.unwrap().map(Result::unwrap).collect()
}

/// Every acknowledged event is in the file at its seq with its body.
fn assert_stored(a: &Appliance, acked: &[(u64, String)]) {
    let ledger = anchorlog::store::open_reader(&a.db_path()).expect("ledger opens");
    for (seq, body) in acked {
        let ev =
            anchorlog::store::event(&ledger, *seq).unwrap().unwrap_or_else(|| panic!("seq {seq} missing"));
        assert_eq!(ev.body.as_deref(), Some(body.as_bytes()), "seq {seq}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// 14.7 clock jumps

/// An IdP fixture with one field changed (a distinct event id), as compact JSON.
fn fixture_with(name: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    change(&mut v);
    v.to_string()
}

/// The wall clock of the appliance jumps forward by an hour, back by an hour, and back by another hour while
/// producers post over mTLS and through bearer- and HMAC-authenticated sources. Every post is acknowledged
/// (no credential carries a time), seal times never go backwards (a head sealed while the clock is behind the
/// previous head's time carries that time), each jump is recorded as an `anchorlog.clock_jump` record with
/// its direction, old and new time and delta, and logged; `verify` passes and counts the three jumps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_forward_and_back_keep_seal_times_monotonic_refuse_no_producer_and_are_recorded() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let p = secrets.path().join(name);
        kit::write_secret(&p, format!("{value}\n").as_bytes());
        p.display().to_string()
    };
    let extra = format!(
        "[[source]]\nname = \"kc-hmac\"\nformat = \"keycloak\"\nsecret_auth = \"hmac\"\nsecret_file = \"{}\"\n\
         [[source]]\nname = \"auth0-stream\"\nformat = \"auth0\"\nsecret_auth = \"bearer\"\nsecret_file = \"{}\"\n",
        secret("kc", "kc-webhook-secret"),
        secret("auth0", "auth0-token"),
    );
    let clock = secrets.path().join("clock-offset-ms");
    std::fs::write(&clock, "0").unwrap();
    let mut a = Appliance::start_with(Options {
        record_appliance_events: true,
        source_listen: true,
        extra_config: extra,
        env: vec![("ANCHORLOG_FAULT_CLOCK_FILE".into(), clock.display().to_string())],
        ..Options::default()
    });
    // The line is written by the server as it starts, not necessarily before the harness sees it listening.
    a.wait_log("fault doubles armed", 1, Duration::from_secs(10)).await;
    let mut acked = post_n(&a, "before", 3).await;
    a.wait_for_head(acked.last().unwrap().0 + 1).await;

    // Forward an hour (0 → +1 h), back an hour (→ 0), back another hour (→ −1 h).
    for (step, offset) in [("forward", HOUR_MS), ("back", 0), ("back-again", -HOUR_MS)] {
        std::fs::write(&clock, offset.to_string()).unwrap();
        // The watcher compares the clocks every second.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        acked.extend(post_n(&a, step, 3).await);
        // The secret-authenticated sources: HMAC over the body and a bearer token, neither refused.
        let mut s = a.connect_source_listener().await;
        let kc = fixture_with("keycloak-user-event.json", |v| v["id"] = format!("kc-{step}").into());
        let mac = anchorlog::formats::auth::hmac_sha256_hex(b"kc-webhook-secret", kc.as_bytes());
        let h = [("content-type", "application/json"), ("x-keycloak-signature", mac.as_str())];
        let r = s.request("POST", "/v1/sources/kc-hmac/events", &h, kc.clone().into_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{step}: HMAC source: {}", String::from_utf8_lossy(&r.body));
        let auth0 = fixture_with("auth0-object-s.json", |v| {
            v["log_id"] = format!("a0-{step}").into();
            v["data"]["log_id"] = format!("a0-{step}").into();
        });
        let h = [("content-type", "application/json"), ("authorization", "Bearer auth0-token")];
        let r = s.request("POST", "/v1/sources/auth0-stream/events", &h, auth0.into_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{step}: bearer source: {}", String::from_utf8_lossy(&r.body));
        let last = acked.last().unwrap().0;
        a.wait_for_head(last + 1).await;
    }

    // Seal times never go backwards, and the heads sealed during the hour ahead carry it.
    let hs = heads(&a.db_path());
    for w in hs.windows(2) {
        assert!(w[1].2 >= w[0].2, "head {} sealed at {} after head {} at {}", w[1].0, w[1].2, w[0].0, w[0].2);
    }
    assert!(hs.iter().any(|h| h.2 > now_ms() + HOUR_MS / 2), "no head carries the hour ahead: {hs:?}");

    // Three jump records, in order, with their deltas (±5 s: the watcher's reading is up to a second late).
    let jumps: Vec<serde_json::Value> =
        a.own_records().into_iter().map(|(_, b)| b).filter(|b| b["type"] == "anchorlog.clock_jump").collect();
    assert_eq!(jumps.len(), 3, "{jumps:?}");
    for (j, (direction, delta)) in
        jumps.iter().zip([("forward", HOUR_MS), ("backward", -HOUR_MS), ("backward", -HOUR_MS)])
    {
        assert_eq!(j["direction"], direction, "{j}");
        let d = j["delta_ms"].as_i64().unwrap();
        assert!((d - delta).abs() < 5_000, "{j}");
        assert_eq!(j["new_time_ms"].as_i64().unwrap() - j["old_time_ms"].as_i64().unwrap(), d, "{j}");
        let parsed = anchorlog_core::head::parse_time_ms(j["new_time"].as_str().unwrap());
        assert_eq!(parsed, j["new_time_ms"].as_i64(), "{j}");
    }
    assert_eq!(a.server_log().matches("the wall clock jumped").count(), 3, "{}", a.server_log());

    assert!(a.sigterm().success());
    assert_stored(&a, &acked);
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["appliance"]["clock_jumps"], 3, "{report}");
    // The Python verifier accepts a bundle holding the records.
    let last_height = heads(&a.db_path()).last().unwrap().0;
    let tar = a.path("clock.tar");
    a.export_from_db(last_height, &tar);
    let (code, stdout, _) = kit::bundle::python_verify(&tar, &a.key_pem(), &[]);
    assert_eq!(code, 0, "{stdout}");
}

/// Against a real TSA (OpenSSL's, on the real clock): after the appliance's clock jumps back an hour, heads
/// sealed during the hold carry the held time and get tokens up to the hold's length later; the verifier's delay
/// check (here `--max-timestamp-delay 2`) excuses them because the backward jump record opens a window (docs/
/// FORMAT.md §21), and lists them. After a jump forward an hour, the TSA's genTime is an hour before the heads'
/// seal times: no token is stored (the appliance never stores one contradicting a signed time) and a
/// timestamping outage is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_against_a_tsa_a_backward_hold_is_excused_and_a_forward_jump_stops_timestamping() {
    let tsa = LocalTsa::start_new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock-offset-ms");
    std::fs::write(&clock, "0").unwrap();
    let mut a = Appliance::start_with(Options {
        record_appliance_events: true,
        extra_config: format!("{}{}", tsa.config_entry(5_000), fast_retries()),
        env: vec![("ANCHORLOG_FAULT_CLOCK_FILE".into(), clock.display().to_string())],
        ..Options::default()
    });
    let untimestamped =
        async |a: &Appliance| a.audit_get("/readyz").await.json()["untimestamped_heads"].clone();
    post_n(&a, "before", 3).await;
    eventually(30, "every head timestamped", async || untimestamped(&a).await == 0).await;

    // Back an hour: seal times hold at the last head's; keep sealing for ~4 s of real time.
    std::fs::write(&clock, (-HOUR_MS).to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for round in 0..8 {
        post_n(&a, &format!("held-{round}"), 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually(30, "held heads timestamped", async || untimestamped(&a).await == 0).await;
    let hs = heads(&a.db_path());
    let held = hs.last().unwrap().2;
    assert!(held > now_ms() - HOUR_MS / 2, "the last head carries the held time, not the clock's: {hs:?}");
    let key = a.key_pem();
    let ca = tsa.ca_pem();
    let verify_delay = |extra: &[&str]| {
        let db = a.db_path();
        let mut args = vec!["verify", "--db", db.to_str().unwrap(), "--key", key.to_str().unwrap()];
        args.extend(["--tsa-ca", ca.to_str().unwrap(), "--require-timestamps", "--json"]);
        args.extend_from_slice(extra);
        let out = a.anchorlog(&args);
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default())
    };
    let (code, v) = verify_delay(&["--max-timestamp-delay", "2"]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["timestamps"]["late_in_outage_count"].as_u64().unwrap() >= 1, "no held head was late: {v}");

    // Forward an hour past the real time: tokens are refused, an outage is recorded, nothing is stored for them.
    std::fs::write(&clock, HOUR_MS.to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    post_n(&a, "ahead", 2).await;
    eventually(30, "a timestamping outage is recorded", async || {
        a.own_records().iter().any(|(_, b)| {
            b["type"] == "anchorlog.outage" && b["component"] == "timestamping" && b["state"] == "started"
        })
    })
    .await;
    assert!(untimestamped(&a).await.as_u64().unwrap() >= 1);
    assert!(a.server_log().contains("time-stamp token rejected"), "{}", a.server_log());
    let jumps: Vec<i64> = a
        .own_records()
        .iter()
        .filter(|(_, b)| b["type"] == "anchorlog.clock_jump")
        .map(|(_, b)| b["delta_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(jumps.len(), 2, "{jumps:?}");
    assert!((jumps[0] + HOUR_MS).abs() < 5_000 && (jumps[1] - 2 * HOUR_MS).abs() < 5_000, "{jumps:?}");
    a.kill();
    // Every stored token verifies; the heads sealed in the hour ahead have none (reported, not a failure).
    let db = a.db_path();
    let out = a.anchorlog(&[
        "verify",
        "--db",
        db.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--tsa-ca",
        ca.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert!(v["timestamps"]["missing_count"].as_u64().unwrap() >= 1, "{v}");
}

// ---------------------------------------------------------------------------------------------------------
// 14.1 kill -9 at fixed points

/// Restarts the appliance with `point` armed, has it reach the point, and returns once it died by SIGKILL there.
fn arm_and_expect_kill(a: &mut Appliance, point: &str) {
    a.options.env = vec![("ANCHORLOG_FAULT_KILL_AT".into(), point.into())];
    // A point reached during the start kills before the listener line: spawn fails then, which is expected.
    let _ = a.spawn();
}

fn wait_killed_at(a: &mut Appliance, point: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = format!("fault-injection: SIGKILL at {}", point.split('@').next().unwrap_or(point));
    while !a.server_log().contains(&line) {
        assert!(Instant::now() < deadline, "never reached {point}: {}", a.server_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(status) = a.wait_exit(Duration::from_secs(30)) {
        assert_eq!(status.signal(), Some(9), "{point}: {status:?}");
    }
    a.kill();
}

/// After a kill: restart unarmed; the start record says the run ended without a stop record; every acknowledged
/// event is stored; `verify` passes.
async fn restart_and_check(a: &mut Appliance, point: &str, acked: &[(u64, String)]) {
    a.options.env.clear();
    a.spawn().unwrap_or_else(|e| panic!("{point}: restart failed: {e}"));
    let start = a.own_records().into_iter().rev().find(|(_, b)| b["type"] == "anchorlog.start").unwrap();
    assert_eq!(start.1["previous_run"], "ended_without_stop_record", "{point}");
    assert_stored(a, acked);
    let committed = a.stored_events().await;
    a.wait_for_head(committed).await;
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{point}: {report}");
}

/// kill -9 between a commit and the seal that covers it, between signing a head and storing it, and between
/// storing it and handing it to the timestamper: after each restart every acknowledged event is there, the
/// start says `ended_without_stop_record`, the interrupted head is made once (heights dense, no two heads of one
/// height, the first head after the restart covers the events the killed run acknowledged), and `verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_commit_seal_sign_store_and_timestamp_loses_nothing_and_seals_once() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let mut acked = post_n(&a, "first", 3).await;
    a.wait_for_head(acked.last().unwrap().0 + 1).await;
    a.kill();
    for point in ["commit_before_seal", "sign_before_store", "store_before_timestamp"] {
        let heads_before = heads(&a.db_path()).len();
        // The second passage: the first is the seal of the start record; the second comes after producers' posts
        // were acknowledged, so the killed run leaves acknowledged events that no head covers yet.
        arm_and_expect_kill(&mut a, &format!("{point}@2"));
        let acked_before = acked.len();
        let mut conn = a.connect("producer").await;
        for i in 0..200 {
            let body = format!("{{\"type\":\"LOGIN\",\"user\":\"{point}-{i}\"}}");
            match conn.post_json("/v1/events", body.as_bytes()).await {
                Ok(r) if r.status == 200 => {
                    acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body))
                }
                _ => break,
            }
        }
        wait_killed_at(&mut a, point);
        assert!(acked.len() > acked_before, "{point}: nothing acknowledged before the kill");
        let heads_killed = heads(&a.db_path());
        // The start record's head was stored; the second head was killed before (or, at the last point, just
        // after) it was stored.
        let stored = if point == "store_before_timestamp" { 2 } else { 1 };
        assert_eq!(heads_killed.len(), heads_before + stored, "{point}: {heads_killed:?}");
        let last_acked = acked.last().unwrap().0;
        if stored == 1 {
            assert!(
                heads_killed.last().unwrap().1 <= last_acked,
                "{point}: acknowledged events left unsealed"
            );
        }
        restart_and_check(&mut a, point, &acked).await;
        let hs = heads(&a.db_path());
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(h.0, i as u64, "{point}: heights dense and unique: {hs:?}");
        }
        a.kill();
    }
}

/// kill -9 inside an erasure (its transaction written, not committed) and just after it (committed, the search
/// fields not yet scrubbed): the first leaves no trace and the admin's retry erases once; the second is done
/// once (the retry answers `already_erased`) and the next start scrubs the search fields; `verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_an_erasure_erases_exactly_once_after_the_restart() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let acked = post_n(&a, "erase", 4).await;
    a.wait_indexed().await;
    a.kill();
    for (point, victim) in [("erasure_before_commit", acked[1].0), ("erasure_before_scrub", acked[2].0)] {
        arm_and_expect_kill(&mut a, point);
        let mut admin = a.connect("admin").await;
        let body = format!("{{\"seq\":{victim},\"reason\":\"test {point}\"}}");
        let r = admin.post_json("/v1/admin/erasures", body.as_bytes()).await;
        assert!(
            r.as_ref().is_err() || r.as_ref().is_ok_and(|r| r.status >= 500),
            "{point}: the erasure was answered: {:?}",
            r.map(|r| r.status)
        );
        wait_killed_at(&mut a, point);
        let erasures_killed = a
            .own_records()
            .iter()
            .filter(|(_, b)| b["type"] == "anchorlog.erasure" && b["erased_seq"] == victim)
            .count();
        let others: Vec<(u64, String)> =
            acked.iter().filter(|(s, _)| *s != acked[1].0 && *s != acked[2].0).cloned().collect();
        restart_and_check(&mut a, point, &others).await;
        let mut admin = a.connect("admin").await;
        let r = admin.post_json("/v1/admin/erasures", body.as_bytes()).await.unwrap();
        let erasures = a
            .own_records()
            .iter()
            .filter(|(_, b)| b["type"] == "anchorlog.erasure" && b["erased_seq"] == victim)
            .count();
        match point {
            "erasure_before_commit" => {
                assert_eq!(erasures_killed, 0, "{point}: nothing of the erasure was committed");
                assert_eq!(r.status, 200, "{point}: the retry erases: {}", String::from_utf8_lossy(&r.body));
            }
            _ => {
                assert_eq!(erasures_killed, 1, "{point}: the erasure was committed before the kill");
                assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("already_erased")), "{point}");
            }
        }
        assert_eq!(erasures, 1, "{point}: erased exactly once");
        assert_eq!(a.read_stored(victim)["body"], serde_json::Value::Null, "{point}");
        // The search fields derived from the body are gone too (re-applied at the start for the second point).
        a.wait_indexed().await;
        let search =
            anchorlog::store::open_search_reader(&anchorlog::store::search_path(&a.db_path())).unwrap();
        let actor: Option<String> = search
            .query_row("SELECT actor_id FROM event_fields WHERE seq = ?1", [victim as i64], |r| r.get(0))
            .unwrap();
        assert_eq!(actor, None, "{point}: search still holds the erased event's actor");
        let (code, report) = a.verify(&a.db_path());
        assert_eq!(code, 0, "{point}: {report}");
        a.kill();
    }
}

/// kill -9 inside the re-derivation of search fields (the search database was lost; the rows are inserted in
/// its transaction, not committed): the next start re-derives them again, and then the search database holds
/// exactly one row per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_search_rederivation_rederives_every_row_once_at_the_next_start() {
    let mut a = Appliance::start();
    let acked = post_n(&a, "derive", 40).await;
    a.wait_indexed().await;
    assert!(a.sigterm().success());
    let search = anchorlog::store::search_path(&a.db_path());
    std::fs::remove_file(&search).unwrap();
    arm_and_expect_kill(&mut a, "search_rederive");
    wait_killed_at(&mut a, "search_rederive");
    restart_and_check_plain(&mut a, &acked).await;
    a.wait_indexed().await;
    let conn = anchorlog::store::open_search_reader(&search).unwrap();
    let (rows, distinct): (i64, i64) = conn
        .query_row("SELECT count(*), count(DISTINCT seq) FROM event_fields", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, distinct), (40, 40));
    let r = a.audit_get("/v1/events?actor=derive-39").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["count"], 1, "{}", r.json());
}

async fn restart_and_check_plain(a: &mut Appliance, acked: &[(u64, String)]) {
    a.options.env.clear();
    a.spawn().unwrap_or_else(|e| panic!("restart failed: {e}"));
    assert_stored(a, acked);
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
}

// ---------------------------------------------------------------------------------------------------------
// 14.8 a starved indexer

/// With the indexer stalled (a fault double that blocks it before each batch, as if it were never scheduled),
/// 1,500 single events — more groups than the indexer's queue holds (1,024) — are acknowledged and sealed while
/// search answers `complete: false` with the exact number of events it does not cover; once the stall ends the
/// indexer writes what was queued, re-derives the rest from the stored bodies, and search covers exactly every
/// event. Before issue 14.8 the writer waited for the queue, so ingest stopped at the 1,025th group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_indexer_never_stalls_ingest_or_sealing_and_catches_up_later() {
    const DURING: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let stall = dir.path().join("stall");
    let a = Appliance::start_with(Options {
        env: vec![("ANCHORLOG_FAULT_INDEXER_STALL_FILE".into(), stall.display().to_string())],
        ..Options::default()
    });
    post_n(&a, "before", 10).await;
    a.wait_indexed().await;
    let r = a.audit_get("/v1/events?actor=before-9").await;
    assert_eq!(r.json()["index"], serde_json::json!({"complete": true, "pending_events": 0}));
    // seq 10 is that search's audit record.
    std::fs::write(&stall, "").unwrap();
    // The search's audit record reaches the indexer, which collects for its batch window (1 s) and then stalls
    // holding it. Only then post: events posted inside the window would join that batch instead of the queue,
    // and under load too few would be left to overflow it (seen in CI).
    a.wait_log("the search indexer is stalled", 1, Duration::from_secs(30)).await;
    let started = Instant::now();
    let during = post_n(&a, "during", DURING).await;
    let took = started.elapsed();
    assert_eq!(during.first().unwrap().0, 11);
    assert_eq!(during.last().unwrap().0, 10 + DURING);
    let head = a.wait_for_head(11 + DURING).await;
    assert_eq!(head["tree_size"], 11 + DURING);
    let search_path = anchorlog::store::search_path(&a.db_path());
    let rows = || -> i64 {
        let c = anchorlog::store::open_search_reader(&search_path).unwrap();
        c.query_row("SELECT count(*) FROM event_fields", [], |r| r.get(0)).unwrap()
    };
    assert!(rows() <= 11, "the stalled indexer wrote: {}", rows());
    let r = a.audit_get("/v1/events?actor=during-0").await;
    assert_eq!(r.status, 200);
    let answer = r.json();
    assert_eq!(answer["count"], 0, "not indexed yet: {answer}");
    assert_eq!(answer["index"]["complete"], false, "{answer}");
    // Every event after the last indexed one: the search's audit record (seq 10, possibly indexed before the
    // stall) and the 1,500 posted.
    let pending = answer["index"]["pending_events"].as_u64().unwrap();
    assert_eq!(pending, 11 + DURING - rows() as u64, "{answer}");
    eprintln!(
        "{DURING} single events acknowledged in {took:?} with the indexer stalled; search {pending} behind"
    );
    std::fs::remove_file(&stall).unwrap();
    let released = Instant::now();
    // Every event once: the 10, the first audit record, the 1,500 and the second search's audit record. (Not
    // `wait_indexed`: the highest seq may be written, re-derived, before queued rows below it.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows() < 12 + DURING as i64 {
        assert!(Instant::now() < deadline, "indexed {} of {} within 60 s", rows(), 12 + DURING);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caught_up = released.elapsed();
    assert!(
        a.server_log().contains("re-deriving search fields the queue had no room for"),
        "the queue never overflowed: {}",
        a.server_log()
    );
    assert_eq!(rows(), 12 + DURING as i64);
    let r = a.audit_get("/v1/events?actor=during-1499").await;
    let answer = r.json();
    assert_eq!(answer["count"], 1, "{answer}");
    assert_eq!(answer["index"]["complete"], true, "{answer}");
    eprintln!("search caught up {caught_up:?} after the stall ended");
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
}
