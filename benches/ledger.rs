//! Micro-benchmarks of the ledger's hot paths: entry encoding, leaf hashing, the Merkle frontier, proofs,
//! and entry verification. End-to-end throughput is measured by `anchorlog bench` (docs/PERFORMANCE.md).

use anchorlog_core::entry::{payload_digest, AuthMethod, Entry};
use anchorlog_core::merkle::{self, Frontier};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        received_at_ns: 1_795_000_000_000_000_000 + seq,
        producer: "keycloak-prod".into(),
        source: "events".into(),
        auth: AuthMethod::Mtls,
        format: "json".into(),
        source_id: Some(format!("6f1c0e2a-1b0d-4f7e-9a55-{seq:012}")),
        payload_sha256: payload_digest(&[7; 32], b"{\"type\":\"LOGIN\"}"),
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1));
    let e = entry(42);
    g.bench_function("entry_encode", |b| b.iter(|| black_box(&e).to_canonical_json()));
    let bytes = e.to_canonical_json();
    g.bench_function("entry_parse_canonical", |b| b.iter(|| Entry::parse(black_box(&bytes))));
    g.bench_function("leaf_hash", |b| b.iter(|| merkle::leaf_hash(black_box(&bytes))));
    g.bench_function("payload_digest_600B", |b| {
        let body = vec![b'x'; 600];
        b.iter(|| payload_digest(black_box(&[7; 32]), black_box(&body)))
    });
    g.bench_function("frontier_push", |b| {
        b.iter_batched(
            Frontier::new,
            |mut f| {
                for i in 0..1024u64 {
                    f.push([i as u8; 32]);
                }
                f
            },
            BatchSize::SmallInput,
        )
    });
    let leaves: Vec<merkle::Hash> = (0..65_536u32).map(|i| merkle::leaf_hash(&i.to_be_bytes())).collect();
    g.bench_function("inclusion_proof_64k_from_slice", |b| {
        b.iter(|| merkle::inclusion_proof(black_box(40_000), &leaves))
    });
    let root = merkle::root_of(&leaves);
    let proof = merkle::inclusion_proof(40_000, &leaves).unwrap_or_default();
    g.bench_function("verify_inclusion_64k", |b| {
        b.iter(|| merkle::verify_inclusion(40_000, 65_536, &leaves[40_000], black_box(&proof), &root))
    });
    g.finish();
}

criterion_group!(ledger, benches);
criterion_main!(ledger);
