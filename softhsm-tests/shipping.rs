//! Shippers and SIEMs on real parts (SoftHSM signer, the real binary, rustls mTLS): compressed bodies and
//! bombs, the bounded writer queue (429 + Retry-After, nothing stored, retries stored once), partial batches,
//! and the event stream out (`GET /v1/stream`): every event once in order while events are posted, resumption
//! without gaps or duplicates, one open and one close audit record per stream, the end at shutdown.

mod kit;

use anchorlog::client::{Connection, StreamingResponse};
use base64::Engine as _;
use kit::{Appliance, Options};
use serde_json::{json, Value};
use std::io::Write as _;
use std::time::{Duration, Instant};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// `n` NDJSON lines `{"id":"<prefix>-i","type":"LOGIN",…}`.
fn ndjson(prefix: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"{prefix}-{i}\",\"type\":\"LOGIN\",\"user\":\"u{i}\",\"ip\":\"192.0.2.{}\"}}\n",
                i % 250
            )
        })
        .collect::<String>()
        .into_bytes()
}

/// POST /v1/events as the producer; returns status, `Retry-After` and the JSON answer.
async fn post(
    conn: &mut Connection,
    query: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Value) {
    let mut headers = vec![("content-type", "application/x-ndjson")];
    if let Some(e) = encoding {
        headers.push(("content-encoding", e));
    }
    let mut r = conn.open("POST", &format!("/v1/events{query}"), &headers, body).await.expect("POST");
    let retry_after = r.headers.get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut all = Vec::new();
    while let Some(c) = r.chunk().await.expect("answer") {
        all.extend_from_slice(&c);
    }
    (r.status, retry_after, serde_json::from_slice(&all).unwrap_or(Value::Null))
}

/// `(seq, producer, source_id, body)` of every stored event, read from the database file.
fn stored(a: &Appliance) -> Vec<(u64, String, Option<String>, Vec<u8>)> {
    let conn = anchorlog::store::open_reader(&a.db_path()).expect("ledger opens");
    let mut st = conn.prepare("SELECT seq, producer, source_id, body FROM events ORDER BY seq").unwrap();
    let rows =
        st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

fn producers_events(a: &Appliance) -> Vec<(u64, String, Option<String>, Vec<u8>)> {
    stored(a).into_iter().filter(|e| e.1 == "producer-1").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_batch_stores_the_same_events_as_the_plain_one() {
    let a = Appliance::start();
    let mut conn = a.connect("producer").await;
    let plain = ndjson("plain", 500);
    let (status, _, plain_answer) = post(&mut conn, "", None, plain.clone()).await;
    assert_eq!((status, plain_answer["stored"].as_u64()), (200, Some(500)), "{plain_answer}");
    // The same lines without ids (so that they are new events), plain, gzip and zstd.
    let lines: String = String::from_utf8(plain)
        .unwrap()
        .lines()
        .map(|l| l.replacen("\"id\":", "\"ref\":", 1) + "\n")
        .collect();
    for (encoding, body) in [
        (None, lines.as_bytes().to_vec()),
        (Some("gzip"), gzip(lines.as_bytes())),
        (Some("zstd"), zstd(lines.as_bytes())),
    ] {
        let (status, _, answer) = post(&mut conn, "", encoding, body).await;
        assert_eq!((status, answer["stored"].as_u64()), (200, Some(500)), "{encoding:?}: {answer}");
    }
    let events = producers_events(&a);
    assert_eq!(events.len(), 2000);
    // Bodies byte-identical across the three encodings; normalized fields the same once indexed.
    a.wait_indexed().await;
    for i in 0..500u64 {
        let (plain, gz, zs) =
            (&events[500 + i as usize], &events[1000 + i as usize], &events[1500 + i as usize]);
        assert_eq!(plain.3, gz.3, "seq {} vs {}", plain.0, gz.0);
        assert_eq!(plain.3, zs.3, "seq {} vs {}", plain.0, zs.0);
        if i % 97 == 0 {
            let f = |seq| a.read_stored(seq)["fields"].clone();
            assert_eq!(f(plain.0), f(gz.0));
            assert_eq!(f(plain.0), f(zs.0));
            assert_eq!(f(gz.0)["source_ip"], json!(format!("192.0.2.{}", i % 250)));
        }
    }
    // An unknown encoding is a 415, garbage under a known one a 400; nothing stored of either.
    let (status, _, e) = post(&mut conn, "", Some("br"), b"xx".to_vec()).await;
    assert_eq!((status, e["code"].as_str()), (415, Some("unsupported_content_encoding")));
    let (status, _, e) = post(&mut conn, "", Some("gzip"), lines.as_bytes().to_vec()).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("bad_content_encoding")));
    assert_eq!(producers_events(&a).len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_is_refused_with_413_and_nothing_is_stored() {
    let a = Appliance::start_with(Options { max_body_bytes: 256 * 1024, ..Options::default() });
    let mut conn = a.connect("producer").await;
    // At most 1 KiB of gzip that inflates to 900 KiB, 3.5 times the body limit: a valid NDJSON line padded with
    // JSON whitespace (deflate's best ratio is about 1:1000).
    let mut inflated = b"{\"type\":\"LOGIN\",\"user\":\"alice\"}".to_vec();
    inflated.resize(900 << 10, b' ');
    inflated.push(b'\n');
    let bomb = gzip(&inflated);
    assert!(bomb.len() <= 1024, "the gzip bomb is small: {} bytes", bomb.len());
    let (status, _, e) = post(&mut conn, "", Some("gzip"), bomb).await;
    assert_eq!((status, e["code"].as_str()), (413, Some("decompressed_too_large")), "{e}");
    assert_eq!(e["detail"], json!({"limit_bytes": 256 * 1024, "content_encoding": "gzip"}));
    // zstd does far better: a few KiB for 8 MiB.
    let zeros = vec![b' '; 8 << 20];
    let bomb = zstd(&zeros);
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    let (status, _, e) = post(&mut conn, "", Some("zstd"), bomb).await;
    assert_eq!((status, e["code"].as_str()), (413, Some("decompressed_too_large")), "{e}");
    // A hand-made zstd frame asking for a 2 TiB window is refused before any decoding.
    let frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 31 << 3, 0, 0, 0];
    let (status, _, e) = post(&mut conn, "", Some("zstd"), frame).await;
    assert_eq!((status, e["code"].as_str()), (413, Some("zstd_window_too_large")), "{e}");
    assert_eq!(stored(&a).len(), 0, "nothing stored");
    // Each refusal is counted as an abuse limit hit (`anchorlog_limit_hits_total`).
    let m = String::from_utf8(a.connect("monitor").await.get("/metrics").await.unwrap().body).unwrap();
    assert!(
        m.contains("anchorlog_limit_hits_total{limit=\"decompressed_too_large\",listener=\"mtls\"} 3\n"),
        "{m}"
    );
    // The connection is still usable, and an honest compressed batch under the limit is stored.
    let (status, _, ok) = post(&mut conn, "", Some("gzip"), gzip(&ndjson("ok", 10))).await;
    assert_eq!((status, ok["stored"].as_u64()), (200, Some(10)));
}

/// An appliance whose writer queue holds one request, each request delayed by `delay_ms` once admitted.
fn slow_writer(delay_ms: u64) -> Appliance {
    Appliance::start_with(Options {
        limits_extra: "writer_queue_depth = 1\nretry_after_s = 1".into(),
        env: vec![("ANCHORLOG_FAULT_APPEND_DELAY_MS".into(), delay_ms.to_string())],
        ..Options::default()
    })
}

async fn queue_in_use(a: &Appliance) -> u64 {
    let m = a.connect("monitor").await.get("/metrics").await.expect("metrics");
    let text = String::from_utf8(m.body).unwrap();
    let line = text.lines().find(|l| l.starts_with("anchorlog_writer_queue_requests ")).expect("queue gauge");
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_answers_429_with_retry_after_and_stores_nothing_of_the_refused_request() {
    let a = slow_writer(1_500);
    let mut first = a.connect("producer").await;
    let holder = tokio::spawn(async move { post(&mut first, "", None, ndjson("first", 5)).await });
    // The first request holds the only place (for 1.5 s): wait until the gauge says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_in_use(&a).await != 1 {
        assert!(Instant::now() < deadline, "the first request never took its place");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = a.connect("producer").await;
    let (status, retry_after, e) = post(&mut second, "", None, ndjson("second", 5)).await;
    assert_eq!(
        (status, e["code"].as_str(), retry_after.as_deref()),
        (429, Some("writer_queue_full"), Some("1")),
        "{e}"
    );
    assert_eq!(e["detail"], json!({"queue_depth": 1, "retry_after_s": 1}));
    // Partial mode and compressed bodies are refused the same way.
    let (status, _, _) = post(&mut second, "?partial=true", Some("gzip"), gzip(&ndjson("second", 5))).await;
    assert_eq!(status, 429);
    let (status, _, done) = holder.await.unwrap();
    assert_eq!((status, done["stored"].as_u64()), (200, Some(5)));
    let ids: Vec<_> = producers_events(&a).into_iter().filter_map(|e| e.2).collect();
    assert_eq!(
        ids,
        (0..5).map(|i| format!("first-{i}")).collect::<Vec<_>>(),
        "nothing of the refused requests"
    );
    let m = String::from_utf8(a.connect("monitor").await.get("/metrics").await.unwrap().body).unwrap();
    assert!(m.contains("anchorlog_ingest_throttled_total 2\n"), "{m}");
    assert!(
        m.contains("anchorlog_failures_total{kind=\"ingest_rejected\"} 0\n"),
        "429s are not rejections: {m}"
    );
    // The queue is free again: the same request is stored now.
    let (status, _, ok) = post(&mut second, "", None, ndjson("second", 5)).await;
    assert_eq!((status, ok["stored"].as_u64()), (200, Some(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_retrying_on_429_get_every_event_stored_exactly_once() {
    let a = slow_writer(40);
    let (clients, batches, per_batch) = (6usize, 5usize, 20usize);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = a.connect("producer").await;
        tasks.push(tokio::spawn(async move {
            let mut throttled = 0;
            for b in 0..batches {
                let body = ndjson(&format!("c{c}-b{b}"), per_batch);
                // A shipper's loop: on 429 wait Retry-After and send the same batch again.
                loop {
                    let (status, retry_after, answer) = post(&mut conn, "", None, body.clone()).await;
                    match status {
                        200 => {
                            assert_eq!(answer["stored"].as_u64(), Some(per_batch as u64), "{answer}");
                            break;
                        }
                        429 => {
                            throttled += 1;
                            let s: u64 = retry_after.expect("Retry-After").parse().unwrap();
                            tokio::time::sleep(Duration::from_millis(s * 1000 / 4)).await;
                        }
                        other => panic!("status {other}: {answer}"),
                    }
                }
            }
            // A shipper that lost the 200 of its last batch sends it again: every event is a duplicate.
            let last = ndjson(&format!("c{c}-b{}", batches - 1), per_batch);
            loop {
                let (status, _, answer) = post(&mut conn, "", None, last.clone()).await;
                if status == 200 {
                    assert_eq!(
                        (answer["stored"].as_u64(), answer["duplicates"].as_u64()),
                        (Some(0), Some(per_batch as u64))
                    );
                    break;
                }
                assert_eq!(status, 429);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            throttled
        }));
    }
    let mut throttled = 0;
    for t in tasks {
        throttled += t.await.unwrap();
    }
    assert!(throttled > 0, "six clients on a queue of one were throttled at least once");
    let events = producers_events(&a);
    assert_eq!(events.len(), clients * batches * per_batch);
    let mut ids: Vec<String> = events.into_iter().map(|e| e.2.expect("id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), clients * batches * per_batch, "each id exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_mode_stores_997_of_1000_and_lists_the_3_bad_lines() {
    let a = Appliance::start();
    let mut conn = a.connect("producer").await;
    let mut lines: Vec<String> =
        String::from_utf8(ndjson("p", 1000)).unwrap().lines().map(str::to_string).collect();
    lines[10] = "{\"id\":\"p-10\",\"type\":".into();
    lines[500] = "[1,2,3]".into();
    lines[999] = "{\"id\":\"p-999\",\"type\":\"anchorlog.start\"}".into();
    let body = (lines.join("\n") + "\n").into_bytes();
    // Atomic by default: one bad line refuses the batch, nothing stored.
    let (status, _, e) = post(&mut conn, "", None, body.clone()).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_json")));
    assert_eq!(stored(&a).len(), 0);
    let (status, _, answer) = post(&mut conn, "?partial=true", None, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["stored"].as_u64(), answer["duplicates"].as_u64()), (Some(997), Some(0)));
    let rejected: Vec<(u64, u64, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["line"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        rejected,
        vec![(10, 11, "invalid_json"), (500, 501, "not_an_object"), (999, 1000, "reserved_type")]
    );
    let events = answer["events"].as_array().unwrap();
    let indices: Vec<u64> = events.iter().map(|e| e["index"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (0..1000).filter(|i| ![10, 500, 999].contains(i)).collect();
    assert_eq!(indices, expected);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..997).collect::<Vec<_>>());
    let ids: Vec<String> = producers_events(&a).into_iter().map(|e| e.2.unwrap()).collect();
    assert_eq!(ids, expected.iter().map(|i| format!("p-{i}")).collect::<Vec<_>>());
    // The shipper sends the batch again: the good lines are duplicates, the bad ones refused again.
    let (status, _, again) = post(&mut conn, "?partial=true", None, body).await;
    assert_eq!((status, again["stored"].as_u64(), again["duplicates"].as_u64()), (200, Some(0), Some(997)));
    assert_eq!(again["rejected"].as_array().unwrap().len(), 3);
    // A typo in the parameter is refused rather than taken as atomic mode.
    let (status, _, e) = post(&mut conn, "?partal=true", None, b"{}\n".to_vec()).await;
    assert_eq!(
        (status, e["code"].as_str(), e["detail"]["parameter"].as_str()),
        (400, Some("bad_parameter"), Some("partal"))
    );
    // A JSON array in partial mode: elements judged alone too.
    let mut conn2 = a.connect("producer").await;
    let r = conn2
        .request(
            "POST",
            "/v1/events?partial=true",
            &[("content-type", "application/json")],
            b"[{\"a\":1},2,{\"b\":2}]".to_vec(),
        )
        .await
        .unwrap();
    let v = r.json();
    assert_eq!((r.status, v["stored"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(
        v["rejected"],
        json!([{"index": 1, "line": null, "code": "not_an_object", "message": "event 1 is not a JSON object; every event must be an object"}])
    );
    assert_eq!(stored(&a).len(), 999);
    // The OpenAPI document's partial-mode example is what the appliance answers for its three lines.
    let doc: Value = serde_json::from_str(anchorlog::api::openapi::DOCUMENT).unwrap();
    let example = &doc["paths"]["/v1/events"]["post"]["responses"]["200"]["content"]["application/json"]
        ["examples"]["partial"]["value"];
    let body = b"{\"id\":\"doc-0\",\"type\":\"LOGIN\"}\n{\"id\":\"doc-1\",\n{\"id\":\"doc-2\",\"type\":\"LOGOUT\"}\n";
    let (status, _, answer) = post(&mut conn, "?partial=true", None, body.to_vec()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"], example["rejected"]);
    for key in ["stored", "duplicates"] {
        assert_eq!(answer[key], example[key], "{key}");
    }
    let index =
        |v: &Value| v["events"].as_array().unwrap().iter().map(|e| e["index"].clone()).collect::<Vec<_>>();
    assert_eq!(index(&answer), index(example));
}

/// A stream consumer: reads lines, keeps the last seq.
struct Consumer {
    resp: StreamingResponse,
    buf: Vec<u8>,
    _conn: Connection,
}

impl Consumer {
    async fn open(a: &Appliance, who: &str, after: Option<u64>) -> (Consumer, u64) {
        let mut conn = a.connect(who).await;
        let path = match after {
            Some(s) => format!("/v1/stream?after={s}"),
            None => "/v1/stream".into(),
        };
        let resp = conn.open("GET", &path, &[], Vec::new()).await.expect("GET /v1/stream");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.headers["content-type"], "application/x-ndjson");
        let audit_seq = resp.headers["x-anchorlog-audit-seq"].to_str().unwrap().parse().unwrap();
        (Consumer { resp, buf: Vec::new(), _conn: conn }, audit_seq)
    }

    /// The next line, waiting at most 60 s.
    async fn line(&mut self) -> Value {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line).expect("a JSON line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .expect("a line within 60 s")
                .expect("stream")
                .expect("the stream goes on");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// The stream records in the log, in seq order: `(seq, parameters)`.
fn stream_records(a: &Appliance) -> Vec<(u64, Value)> {
    a.own_records()
        .into_iter()
        .filter(|(_, b)| b["type"] == "anchorlog.audit_access" && b["endpoint"] == "GET /v1/stream")
        .map(|(seq, b)| {
            let mut p = b["parameters"].clone();
            p["result_count"] = b["result_count"].clone();
            p["principal"] = b["principal"].clone();
            (seq, p)
        })
        .collect()
}

async fn wait_for_stream_records(a: &Appliance, n: usize) -> Vec<(u64, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = stream_records(a);
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{} of {n} stream records within 30 s: {r:?}", r.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_delivers_every_event_once_in_order_while_events_are_posted_and_resumes_without_gaps() {
    let a = Appliance::start();
    let (mut c, open_seq) = Consumer::open(&a, "reader", None).await;
    // A producer posts 40 batches of 50 while the consumer reads.
    let mut conn = a.connect("producer").await;
    let producer = tokio::spawn(async move {
        for b in 0..40 {
            let (status, _, answer) = post(&mut conn, "", None, ndjson(&format!("s{b}"), 50)).await;
            assert_eq!((status, answer["stored"].as_u64()), (200, Some(50)));
        }
    });
    let mut bodies = Vec::new();
    let mut next = 0u64;
    // Read the first 1000 events, then disconnect.
    while bodies.len() < 1000 {
        let line = c.line().await;
        assert_eq!(line["seq"], next, "dense and in order");
        check_line(&line);
        if line["fields"]["source"] == "events" {
            bodies.push(line["body"].as_str().unwrap().to_string());
        }
        next += 1;
    }
    drop(c);
    // Resume after the last seq received.
    let (mut c, _) = Consumer::open(&a, "reader", Some(next - 1)).await;
    producer.await.unwrap();
    while bodies.len() < 2000 {
        let line = c.line().await;
        // The second stream's open record appears in order too (it is an event of the log).
        assert_eq!(line["seq"], next, "no gap, no duplicate after resuming");
        check_line(&line);
        if line["fields"]["source"] == "events" {
            bodies.push(line["body"].as_str().unwrap().to_string());
        }
        next += 1;
    }
    drop(c);
    let posted: Vec<String> = (0..40)
        .flat_map(|b| {
            String::from_utf8(ndjson(&format!("s{b}"), 50))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bodies, posted, "every posted event exactly once, in the order it was stored");
    // One open and one close record per stream, the close naming the range handed over.
    let records = wait_for_stream_records(&a, 4).await;
    let phases: Vec<(&str, &str)> = records
        .iter()
        .map(|(_, p)| (p["phase"].as_str().unwrap(), p["principal"].as_str().unwrap()))
        .collect();
    assert_eq!(phases.iter().filter(|p| p.0 == "open").count(), 2, "{records:?}");
    assert_eq!(phases.iter().filter(|p| p.0 == "close").count(), 2, "{records:?}");
    assert!(phases.iter().all(|p| p.1 == "reader-1"));
    let closes: Vec<&Value> = records.iter().filter(|(_, p)| p["phase"] == "close").map(|(_, p)| p).collect();
    for close in &closes {
        assert_eq!(close["reason"], "client_closed");
        let (first, last) = (
            close["first_seq"].as_str().unwrap().parse::<u64>().unwrap(),
            close["last_seq"].as_str().unwrap().parse::<u64>().unwrap(),
        );
        assert_eq!(close["result_count"].as_u64(), Some(last - first + 1));
    }
    let first_close = closes.iter().find(|c| c.get("after").is_none()).expect("the first stream's close");
    assert_eq!(first_close["first_seq"], "0");
    assert_eq!(first_close["open_audit_seq"], open_seq.to_string());
    // Still exactly four after a while: nothing per event or page.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stream_records(&a).len(), 4);
}

/// A line's leaf hash is SHA-256(0x00 || entry), and its entry's payload hash SHA-256(salt || body).
fn check_line(line: &Value) {
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let entry = line["entry"].as_str().unwrap();
    let leaf = Sha256::new().chain_update([0u8]).chain_update(entry.as_bytes()).finalize();
    assert_eq!(line["leaf_hash"], b64.encode(leaf), "{line}");
    let fields: Value = serde_json::from_str(entry).unwrap();
    assert_eq!(fields["seq"], line["seq"]);
    let salt = b64.decode(line["salt"].as_str().unwrap()).unwrap();
    let payload = Sha256::new().chain_update(&salt).chain_update(line["body"].as_str().unwrap()).finalize();
    assert_eq!(fields["payload_sha256"], hex::encode(payload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_readers_and_auditors_may_stream_and_readers_may_do_nothing_else() {
    let a = Appliance::start();
    for who in ["producer", "monitor"] {
        let mut conn = a.connect(who).await;
        let r = conn.request("GET", "/v1/stream", &[], Vec::new()).await.unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("forbidden_role")), "{who}");
        assert_eq!(r.json()["detail"]["accepted_roles"], json!(["reader", "auditor"]));
    }
    let mut reader = a.connect("reader").await;
    for path in ["/v1/events?limit=1", "/v1/events/0", "/v1/export", "/v1/heads/latest"] {
        let r = reader.get(path).await.unwrap();
        assert_eq!(r.status, 403, "{path}");
    }
    let r = reader.get("/v1/stream?after=x").await.unwrap();
    assert_eq!((r.status, r.json()["detail"]["parameter"].as_str()), (400, Some("after")));
    // An auditor may follow the stream too.
    let (c, _) = Consumer::open(&a, "auditor", Some(u64::MAX - 1)).await;
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_at_shutdown_after_its_close_record_and_before_the_stop_record() {
    let mut a = Appliance::start_with(Options { record_appliance_events: true, ..Options::default() });
    let (mut c, open_seq) = Consumer::open(&a, "reader", None).await;
    let mut seen = 0;
    loop {
        let line = c.line().await;
        seen += 1;
        if line["seq"] == open_seq {
            break;
        }
    }
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let s = a.sigterm();
        (a, s)
    });
    // The stream ends (its body closes) without waiting for the grace period.
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.resp.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended at shutdown");
    let (a, status) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not held for the 5 s grace period: {:?}",
        started.elapsed()
    );
    let records = stream_records(&a);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (records[1].1["phase"].as_str(), records[1].1["reason"].as_str()),
        (Some("close"), Some("shutdown"))
    );
    assert!(records[1].1["result_count"].as_u64().unwrap() >= seen, "{records:?}");
    let own = a.own_records();
    let (stop_seq, stop) = own.last().unwrap();
    assert_eq!(stop["type"], "anchorlog.stop");
    assert!(records[1].0 < *stop_seq, "the close record precedes the stop record");
}

/// A consumer that stops reading cannot hold its connection: once a page could not be handed over for
/// `limits.stream_stall_timeout_ms`, the stream ends with a close record (reason `stalled`), the limit hit is
/// counted and the connection is closed. The consumer resumes after the last line it did get, without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_cut_off_after_the_stall_timeout_and_resumes_without_a_gap() {
    let a = Appliance::start_with(Options {
        limits_extra: "stream_stall_timeout_ms = 1000".into(),
        ..Options::default()
    });
    // ~32 MB of lines: more than the stream's pages in flight and the loopback socket buffers hold.
    let mut conn = a.connect("producer").await;
    let pad = "x".repeat(4000);
    for b in 0..40 {
        let body: String = (0..200)
            .map(|i| format!("{{\"id\":\"st-{b}-{i}\",\"type\":\"LOGIN\",\"pad\":\"{pad}\"}}\n"))
            .collect();
        let (status, _, answer) = post(&mut conn, "", None, body.into_bytes()).await;
        assert_eq!((status, answer["stored"].as_u64()), (200, Some(200)), "{answer}");
    }
    drop(conn);
    let total = 8_000u64;
    // Open the stream and take nothing.
    let (mut c, open_seq) = Consumer::open(&a, "reader", None).await;
    let records = wait_for_stream_records(&a, 2).await;
    let close = &records[1].1;
    assert_eq!(
        (close["phase"].as_str(), close["reason"].as_str()),
        (Some("close"), Some("stalled")),
        "{records:?}"
    );
    assert_eq!(close["open_audit_seq"], open_seq.to_string());
    let last_handed: u64 = close["last_seq"].as_str().unwrap().parse().unwrap();
    assert!(last_handed < total - 1, "not everything fitted in the buffers: {close}");
    let m = String::from_utf8(a.connect("monitor").await.get("/metrics").await.unwrap().body).unwrap();
    assert!(m.contains("anchorlog_limit_hits_total{limit=\"stream_stalled\",listener=\"mtls\"} 1\n"), "{m}");
    assert!(m.contains("anchorlog_streams_open 0\n"), "{m}");
    // The appliance closed the connection while the consumer still reads nothing: the only mTLS connection
    // left open is the one asking for the metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = String::from_utf8(a.connect("monitor").await.get("/metrics").await.unwrap().body).unwrap();
        if m.contains("anchorlog_open_connections{listener=\"mtls\"} 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled stream's connection is still open:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the socket buffers held still arrives, then the answer ends.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match c.resp.chunk().await {
                Ok(Some(chunk)) => c.buf.extend_from_slice(&chunk),
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled stream's connection was closed");
    let mut next = 0u64;
    for line in c.buf.split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { break };
        assert_eq!(v["seq"], next);
        next += 1;
    }
    assert!(next <= last_handed + 1, "received {next} lines, handed over up to {last_handed}");
    // Resumed after the last complete line received: the very next seq comes first.
    let (mut c, _) = Consumer::open(&a, "reader", next.checked_sub(1)).await;
    assert_eq!(c.line().await["seq"], next);
}

/// Throughput of one consumer reading a large log from seq 0 (docs/PERFORMANCE.md). Run with
/// `cargo test --release --test shipping stream_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn stream_throughput() {
    let n: usize =
        std::env::var("ANCHORLOG_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let a = Appliance::start_with(Options {
        max_body_bytes: 8 << 20,
        seal_interval_ms: 1000,
        ..Options::default()
    });
    let mut conn = a.connect("producer").await;
    let per = 10_000;
    for b in 0..n.div_ceil(per) {
        let (status, _, _) = post(&mut conn, "", None, ndjson(&format!("t{b}"), per)).await;
        assert_eq!(status, 200);
    }
    a.wait_indexed().await;
    let total = n.div_ceil(per) * per + 1;
    let (mut c, _) = Consumer::open(&a, "reader", None).await;
    let started = Instant::now();
    let (mut lines, mut bytes) = (0usize, 0usize);
    while lines < total {
        let chunk = c.resp.chunk().await.unwrap().unwrap();
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "stream: {lines} events, {:.1} MB in {secs:.2} s = {:.0} events/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        lines as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
}
