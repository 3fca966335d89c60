//! Crash faults of the fault table (docs/RELIABILITY.md), on real parts: the real `anchorlog` binary on a
//! SoftHSM token, a real SQLite file, producers over mTLS. The appliance is killed with SIGKILL (no shutdown, no
//! stop record, no final seal) while it is answering, restarted, and checked from the files and the verifier.

mod kit;

use kit::{Appliance, Options};
use rand::{Rng as _, SeedableRng as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kills per run (issue 14: 20).
const ROUNDS: u64 = 20;
/// Producer connections posting single events during each round.
const CONNECTIONS: u64 = 16;
/// The load of a round runs this long at most before the kill (a random moment inside it); with the restart and
/// the checks a round takes a few seconds, so the whole test stays near a minute on a loaded 2-core machine.
const MAX_LOAD_MS: u64 = 1_000;

/// One acknowledged event: where the appliance said it stored it, and what was sent.
struct Acked {
    seq: u64,
    body: String,
}

/// 16 producers post single events; at a random moment the appliance gets SIGKILL, then it is restarted. After
/// every restart: every event that got a 200 (in any round so far) is stored at the seq its answer named with
/// the body that was sent, `anchorlog verify --db` passes, and the start record says the previous run ended
/// without a stop record. Reproduce a run with `ANCHORLOG_CRASH_SEED` (printed at the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_20_times_loses_no_acknowledged_event_and_verifies() {
    let seed = std::env::var("ANCHORLOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("kill -9 under load: ANCHORLOG_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let began = Instant::now();
    // Appliance records on: the starts and their `previous_run` are part of what is checked.
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.gen_range(20..MAX_LOAD_MS));
        let (round_acked, refused) = load_then_kill(&mut a, round, kill_after).await;
        assert!(refused.is_empty(), "round {round}: answers other than 200 before the kill: {refused:?}");
        let in_round = round_acked.len();
        acked.extend(round_acked);
        a.spawn().unwrap_or_else(|e| panic!("round {round}: restart after kill -9 failed: {e}"));

        // Every acknowledged event of every round so far, from the database file: same seq, same body.
        let ledger = anchorlog::store::open_reader(&a.db_path()).expect("ledger opens");
        for ev in &acked {
            let stored = anchorlog::store::event(&ledger, ev.seq)
                .expect("ledger read")
                .unwrap_or_else(|| panic!("round {round}: acknowledged seq {} is missing", ev.seq));
            assert_eq!(
                stored.body.as_deref(),
                Some(ev.body.as_bytes()),
                "round {round}: seq {} holds another body",
                ev.seq
            );
        }
        // And one of this round's through the API, as an auditor reads it.
        if let Some(ev) = acked.last() {
            let r = a.audit_get(&format!("/v1/events/{}", ev.seq)).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["body"], ev.body.as_str());
        }

        // The start that followed the kill says so; the verifier counts every such start.
        let (start_seq, start) = a
            .own_records()
            .into_iter()
            .rev()
            .find(|(_, body)| body["type"] == "anchorlog.start")
            .expect("a start record");
        assert_eq!(start["previous_run"], "ended_without_stop_record", "round {round}: seq {start_seq}");
        let (code, report) = a.verify(&a.db_path());
        assert_eq!(code, 0, "round {round}: verify --db failed after the restart: {report}");
        assert_eq!(report["report"]["appliance"]["starts"], round + 2, "{report}");
        assert_eq!(report["report"]["appliance"]["starts_after_unclean_end"], round + 1, "{report}");
        assert_eq!(report["report"]["appliance"]["stops"], 0, "{report}");
        eprintln!(
            "round {round}: killed after {} ms, {in_round} events acknowledged in the round, {} stored, {:.1} s so far",
            kill_after.as_millis(),
            report["report"]["events"],
            began.elapsed().as_secs_f64()
        );
    }
    assert!(acked.len() as u64 > ROUNDS, "the load got through: {} events acknowledged", acked.len());

    // A clean stop at the end: its final head covers everything, and the whole history verifies.
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["appliance"]["starts"], ROUNDS + 1, "{report}");
    assert_eq!(report["report"]["appliance"]["starts_after_unclean_end"], ROUNDS, "{report}");
    assert_eq!(report["report"]["appliance"]["stops"], 1, "{report}");
    assert_eq!(report["report"]["unsealed_events"], 0, "{report}");
    eprintln!(
        "kill -9 under load: {ROUNDS} kills, {} events acknowledged, {} stored, {:.1} s",
        acked.len(),
        report["report"]["events"],
        began.elapsed().as_secs_f64()
    );
}

/// Starts `CONNECTIONS` producers posting single events (bodies unique per round, connection and number),
/// SIGKILLs the appliance `kill_after` later, and returns what was acknowledged with a 200 and any other answer
/// (status and body) received before the kill.
async fn load_then_kill(a: &mut Appliance, round: u64, kill_after: Duration) -> (Vec<Acked>, Vec<String>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut conn = a.connect("producer").await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            // Posts until the connection breaks (the kill) or, as a bound, the round is over.
            while !stop.load(Ordering::Relaxed) {
                let body = format!(
                    "{{\"type\":\"LOGIN\",\"user\":\"u{c}\",\"round\":{round},\"conn\":{c},\"n\":{n}}}"
                );
                n += 1;
                match conn.post_json("/v1/events", body.as_bytes()).await {
                    Ok(r) if r.status == 200 => match r.json()["events"][0]["seq"].as_u64() {
                        Some(seq) => acked.push(Acked { seq, body }),
                        None => {
                            refused.push(format!("200 without a seq: {}", String::from_utf8_lossy(&r.body)))
                        }
                    },
                    Ok(r) => refused.push(format!("{}: {}", r.status, String::from_utf8_lossy(&r.body))),
                    // The appliance is gone: what was not answered was never acknowledged.
                    Err(_) => break,
                }
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(kill_after).await;
    a.kill();
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        let (ok, no) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("producers notice the kill within 30 s")
            .expect("producer task");
        acked.extend(ok);
        refused.extend(no);
    }
    (acked, refused)
}
