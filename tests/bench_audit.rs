//! Auditor-side benchmarks (docs/PERFORMANCE.md, "Auditor toolkit"). Ignored by default; run with
//! `cargo test --release --test bench_audit -- --ignored --nocapture --test-threads=1`.
//! `ANCHORLOG_BENCH_EVENTS` / `ANCHORLOG_BENCH_PROOF_EVENTS` scale them down for a quick look.

/// The test kit's software-signed log builder, alone: these tests need no SoftHSM, TSA or appliance process.
#[path = "../softhsm-tests/kit/log_builder.rs"]
mod log_builder;

use anchorlog::store;
use anchorlog_core::merkle::{self, Frontier};
use log_builder::{build_log, TestKey};
use std::io::{BufRead as _, BufReader};
use std::time::Instant;

/// CPU seconds (user + system, all threads) this process has used so far, from /proc/self/stat: on a
/// shared machine, the work a run takes, independent of how much of the CPU other builds left it.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime), counted after the `(comm)` field; 100 ticks per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "benchmark"]
fn bench_verify_bundle() {
    let n = env_u64("ANCHORLOG_BENCH_EVENTS", 1_000_000);
    let per_block = 10_000.min(n);
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(1);
    let db = dir.path().join("a.db");
    let t = Instant::now();
    build_log(&db, &key, n / per_block, per_block);
    eprintln!("built {n} events in {:.1} s", t.elapsed().as_secs_f64());
    let conn = store::open_reader(&db).unwrap();
    let last = store::last_head(&conn).unwrap().unwrap().height;
    let tar = dir.path().join("bundle.tar");
    let t = Instant::now();
    anchorlog::bundle::export(&conn, 0, last, None, std::fs::File::create(&tar).unwrap(), &mut |_, _| {})
        .unwrap();
    let export_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&tar).unwrap().len();
    eprintln!("export: {:.2} s ({:.0} events/s, {} MB)", export_s, n as f64 / export_s, size >> 20);

    // Where the time goes: each stage alone over the same entries.
    let lines = {
        let mut a = tar::Archive::new(std::fs::File::open(&tar).unwrap());
        let m = a
            .entries()
            .unwrap()
            .map(|m| m.unwrap())
            .find(|m| m.path().unwrap().to_str() == Some("entries.jsonl"));
        let mut r = BufReader::new(m.unwrap());
        let mut v = Vec::new();
        let mut l = Vec::new();
        while r.read_until(b'\n', &mut l).unwrap() > 0 {
            v.push(std::mem::take(&mut l));
        }
        v
    };
    let stage = |name: &str, f: &mut dyn FnMut(&[u8])| {
        let t = Instant::now();
        for l in &lines {
            f(l);
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!("  stage {name:<28} {:>8.0} ns/event", s * 1e9 / n as f64);
    };
    stage("json line parse", &mut |l| {
        let _: anchorlog_core::bundle::EntryLine<'_> = serde_json::from_slice(l).unwrap();
    });
    stage("json + base64 decode", &mut |l| {
        let e: anchorlog_core::bundle::EntryLine<'_> = serde_json::from_slice(l).unwrap();
        use base64::Engine as _;
        let _ = base64::engine::general_purpose::STANDARD.decode(e.body.unwrap().as_bytes()).unwrap();
    });
    stage("entry parse (canonical check)", &mut |l| {
        let e: anchorlog_core::bundle::EntryLine<'_> = serde_json::from_slice(l).unwrap();
        anchorlog_core::entry::Entry::parse(e.entry.as_bytes()).unwrap();
    });
    stage("entry check (canonical scan)", &mut |l| {
        let e: anchorlog_core::bundle::EntryLine<'_> = serde_json::from_slice(l).unwrap();
        anchorlog_core::entry::Entry::check(e.entry.as_bytes()).unwrap();
    });
    stage("line decode + all event checks (fused)", &mut |l| {
        anchorlog_core::bundle::check_line(l, 0).unwrap().check.unwrap();
    });
    stage("leaf hash", &mut |l| {
        let _ = merkle::leaf_hash(&l[..l.len().min(200)]);
    });
    let mut f = Frontier::new();
    stage("frontier push", &mut |_| f.push([1; 32]));

    let t = Instant::now();
    let r = anchorlog::bundle::verify_bundle(&tar, &key.public, None).unwrap();
    let s = t.elapsed().as_secs_f64();
    if let Ok(keep) = std::env::var("ANCHORLOG_BENCH_KEEP_BUNDLE") {
        // For profiling the verifier alone (`bench_verify_kept_bundle`).
        std::fs::copy(&tar, keep).unwrap();
    }
    assert_eq!(r.report.events, n);
    eprintln!(
        "RESULT verify bundle: {n} events, {} heads in {s:.2} s = {:.0} events/s",
        r.report.heads,
        n as f64 / s
    );
    let t = Instant::now();
    anchorlog::verify::verify_database(&conn, &key.public, None).unwrap();
    let s = t.elapsed().as_secs_f64();
    eprintln!("RESULT verify database: {:.0} events/s", n as f64 / s);
}

/// Verifies the bundle kept by `bench_verify_bundle` (`ANCHORLOG_BENCH_KEEP_BUNDLE=FILE`) a few times: the
/// verifier alone, for profiling and for repeated figures.
#[test]
#[ignore = "benchmark"]
fn bench_verify_kept_bundle() {
    let Ok(tar) = std::env::var("ANCHORLOG_BENCH_KEEP_BUNDLE") else { return };
    let key = TestKey::new(1);
    for _ in 0..env_u64("ANCHORLOG_BENCH_RUNS", 3) {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let r = anchorlog::bundle::verify_bundle(std::path::Path::new(&tar), &key.public, None).unwrap();
        let (s, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        let n = r.report.events as f64;
        eprintln!(
            "RESULT verify kept bundle: {n} events in {s:.3} s = {:.0} events/s; CPU {cpu:.2} s = {:.0} ns/event",
            n / s,
            cpu * 1e9 / n
        );
    }
}

#[test]
#[ignore = "benchmark"]
fn bench_inclusion_proof_latency() {
    let n = env_u64("ANCHORLOG_BENCH_PROOF_EVENTS", 10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let t = Instant::now();
    {
        // Only the leaf hashes and the node table matter for proofs; the entry is a placeholder and the
        // fixture skips fsync (it is a benchmark input, not a log).
        let conn = store::open_writer(&path, "bench").unwrap();
        conn.execute_batch("PRAGMA synchronous=OFF; DROP TRIGGER events_dense_seq;").unwrap();
        let mut frontier = Frontier::new();
        let mut seq = 0u64;
        while seq < n {
            let tx = conn.unchecked_transaction().unwrap();
            {
                let mut ev = tx
                    .prepare_cached(
                        "INSERT INTO events (seq, received_at_ns, producer, source, format, entry, leaf_hash)
                         VALUES (?1, 0, 'p', 'events', 'json', x'7b7d', ?2)",
                    )
                    .unwrap();
                for _ in 0..100_000.min(n - seq) {
                    let leaf = merkle::leaf_hash(&seq.to_be_bytes());
                    ev.execute(rusqlite::params![seq as i64, &leaf[..]]).unwrap();
                    let mut done = Vec::new();
                    frontier.push_with(leaf, |s, l, h| {
                        if l > 1 {
                            done.push((s, l, *h))
                        }
                    });
                    for (s, l, h) in done {
                        store::tree::insert_node(&tx, s, l, &h).unwrap();
                    }
                    seq += 1;
                }
            }
            tx.commit().unwrap();
        }
    }
    eprintln!("built {n}-event tree in {:.1} s", t.elapsed().as_secs_f64());
    let conn = store::open_reader(&path).unwrap();
    let root = store::tree::root_at(&conn, n).unwrap();
    // Pseudo-random seqs (xorshift), one fresh proof each, as the API computes it (proof + root + leaf).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut times = Vec::with_capacity(10_000);
    let (mut read_times, mut reads) = (Vec::with_capacity(10_000), 0u64);
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let seq = x % n;
        let t = Instant::now();
        let leaf = store::tree::subtree(&conn, seq, 1).unwrap();
        let proof = store::tree::inclusion_proof(&conn, seq, n).unwrap();
        let r = store::tree::root_at(&conn, n).unwrap();
        times.push(t.elapsed());
        // Where the time goes: how many point reads the same proof and root take, and their time alone.
        let mut count = 0u64;
        let t = Instant::now();
        merkle::inclusion_proof_with(seq, n, |s, l| {
            count += 1;
            store::tree::subtree(&conn, s, l)
        })
        .unwrap();
        merkle::root_with(n, |s, l| {
            count += 1;
            store::tree::subtree(&conn, s, l)
        })
        .unwrap();
        read_times.push(t.elapsed().as_secs_f64() * 1e6 / (count + 1) as f64);
        reads += count + 1;
        assert_eq!(r, root);
        merkle::verify_inclusion(seq, n, &leaf, &proof, &root).unwrap();
    }
    times.sort_unstable();
    read_times.sort_unstable_by(f64::total_cmp);
    eprintln!(
        "  point reads per proof (leaf + proof + root): {:.1}; per read: p50 {:.2} µs",
        reads as f64 / times.len() as f64,
        read_times[read_times.len() / 2]
    );
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_secs_f64() * 1e6;
    eprintln!(
        "RESULT inclusion proof at {n} events: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        p(0.5),
        p(0.99),
        p(1.0)
    );
}
