//! Storage faults (issue 14, parts 2, 5 and 6), each a row of docs/RELIABILITY.md's fault table: a full disk, a
//! database locked by another process or held back by a long reader, and damaged database files. Real SQLite files,
//! SoftHSM, the real binary and the local TSA.

mod kit;

use kit::eventually;
use kit::tsa::{fast_retries, LocalTsa};
use kit::{Appliance, Options};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A small filesystem for the state directory, made by the test: a size-limited tmpfs, else a loop-mounted ext4
/// image. Unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
    _image: Option<tempfile::TempDir>,
}

impl SmallFs {
    /// `None` (the test is skipped, saying why) when this machine lets the test mount neither.
    fn mount(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let tmpfs = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "anchorlog-test"])
            .arg(dir.path())
            .output();
        if tmpfs.as_ref().is_ok_and(|o| o.status.success()) {
            return Some(SmallFs { dir, _image: None });
        }
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("fs.img");
        let made = std::fs::File::create(&image).and_then(|f| f.set_len(mib * 1024 * 1024)).is_ok()
            && Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image).status().is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
        if made {
            return Some(SmallFs { dir, _image: Some(image_dir) });
        }
        eprintln!(
            "SKIPPED: cannot mount a size-limited tmpfs ({}) nor a loop ext4 image here (the test needs root or \
             CAP_SYS_ADMIN)",
            tmpfs.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_else(|e| e.to_string())
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem holding `path` with a file there until the kernel answers ENOSPC.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [65_536usize, 4096, 512, 1] {
        let block = vec![0u8; chunk];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
}

fn body(i: usize) -> String {
    // ~2 KB: the WAL needs new space every few requests.
    format!(r#"{{"id":"ev-{i}","type":"LOGIN","user":"alice","pad":"{}"}}"#, "x".repeat(2000))
}

fn count_events(db: &Path) -> u64 {
    let conn = anchorlog::store::open_reader(db).expect("ledger opens read-only");
    anchorlog::store::event_count(&conn).expect("count")
}

fn reason_codes(readyz: &serde_json::Value) -> Vec<String> {
    readyz["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["code"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Every acknowledged `(seq, body)` is stored with that body, and `verify --db` passes.
fn assert_acknowledged_stored_and_verified(a: &Appliance, acked: &[(u64, String)]) {
    for (seq, b) in acked {
        assert_eq!(a.read_stored(*seq)["body"].as_str(), Some(b.as_str()), "acknowledged seq {seq}");
    }
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "verify --db: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_full_answers_507_storage_full_stores_nothing_unacknowledged_and_resumes_when_space_returns() {
    let Some(fs) = SmallFs::mount(8) else { return };
    let tsa = LocalTsa::start_new(&[]);
    let mut a =
        Appliance::prepare(Options { database_dir: Some(fs.path().to_path_buf()), ..Options::default() });
    a.options.extra_config = format!("{}{}", tsa.config_entry(2000), fast_retries());
    a.spawn().unwrap();
    let mut conn = a.connect("producer").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 0..10 {
        let r = conn.post_json("/v1/events", body(i).as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.json());
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body(i)));
    }
    a.wait_for_head(10).await;

    let filler = fs.path().join("filler");
    fill(&filler);
    // Space the WAL already holds is reused, so the first posts may still fit; posts stop fitting within a few MB.
    let mut refused = None;
    for i in 10..6000 {
        let r = conn.post_json("/v1/events", body(i).as_bytes()).await.unwrap();
        match r.status {
            200 => acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body(i))),
            507 => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected {s}: {:?}", r.json()),
        }
    }
    let r = refused.expect("a 507 before 6000 posts of 2 KB on an 8 MB filesystem");
    assert_eq!(r.json()["code"], "storage_full", "{:?}", r.json());
    assert_eq!(r.retry_after.as_deref(), Some("60"));
    assert!(r.json()["message"].as_str().unwrap().contains("nothing of this request was stored"));
    for i in 0..3 {
        let r = conn.post_json("/v1/events", body(10_000 + i).as_bytes()).await.unwrap();
        assert_eq!((r.status, r.json()["code"].as_str()), (507, Some("storage_full")));
    }
    let ready = a.audit_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(reason_codes(&ready.json()).contains(&"storage_full".to_string()), "{}", ready.json());
    let metrics = String::from_utf8(a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("\nanchorlog_storage_failing 1\n"), "{metrics}");
    // Nothing half-written and no 2xx for what was not committed: the file holds exactly what was acknowledged.
    assert_eq!(count_events(&a.db_path()), acked.len() as u64);
    println!("disk full after {} acknowledged events of ~2 KB on an 8 MiB tmpfs", acked.len());

    std::fs::remove_file(&filler).unwrap();
    for i in 20_000..20_010 {
        let r = conn.post_json("/v1/events", body(i).as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "after space returned: {:?}", r.json());
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body(i)));
    }
    // Seqs stay dense: the refused requests took none.
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..acked.len() as u64).collect::<Vec<_>>());
    a.wait_for_head(acked.len() as u64).await;
    eventually(60, "every head timestamped after space returned", async || {
        a.audit_get("/readyz").await.json()["untimestamped_heads"] == 0
    })
    .await;
    eventually(30, "/readyz 200 again", async || a.audit_get("/readyz").await.status == 200).await;
    drop(conn);
    assert!(a.sigterm().success(), "{}", a.server_log());
    assert_eq!(count_events(&a.db_path()), acked.len() as u64);
    assert_acknowledged_stored_and_verified(&a, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_lock_held_by_another_process_gets_503_database_busy_after_the_busy_timeout_and_loses_nothing(
) {
    let mut a = Appliance::start();
    let mut conn = a.connect("producer").await;
    let mut acked: Vec<(u64, String)> = Vec::new();
    for i in 0..5 {
        let r = conn.post_json("/v1/events", body(i).as_bytes()).await.unwrap();
        assert_eq!(r.status, 200);
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body(i)));
    }
    // Another process (this test) takes the write lock, as a `sqlite3` shell left in a transaction would.
    let locker = rusqlite::Connection::open(a.db_path()).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut c = a.connect("producer").await;
        tasks.push(tokio::spawn(async move {
            c.post_json("/v1/events", body(100 + i).as_bytes()).await.unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (503, Some("database_busy")),
            "{:?} {}",
            r.json(),
            a.server_log()
        );
        assert_eq!(r.retry_after.as_deref(), Some("5"));
    }
    let waited = started.elapsed();
    // The bounded wait: the busy timeout (5 s), then the answer — not a hang, not an immediate failure.
    assert!(waited >= Duration::from_millis(4500), "answered after {waited:?}, before the busy timeout");
    assert!(waited < Duration::from_secs(60), "answered after {waited:?}");
    println!("4 concurrent posts answered 503 database_busy after {waited:?} (busy timeout 5 s)");
    let ready = a.audit_get("/readyz").await;
    assert!(reason_codes(&ready.json()).contains(&"database_busy".to_string()), "{}", ready.json());
    // Nothing of the refused requests is stored, and nothing acknowledged is lost.
    assert_eq!(count_events(&a.db_path()), acked.len() as u64);
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    for i in 200..205 {
        let r = conn.post_json("/v1/events", body(i).as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "after the lock was released: {:?}", r.json());
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body(i)));
    }
    assert_eq!(acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (0..10).collect::<Vec<u64>>());
    a.wait_for_head(10).await;
    eventually(30, "/readyz 200 again", async || a.audit_get("/readyz").await.status == 200).await;
    drop(conn);
    assert!(a.sigterm().success(), "{}", a.server_log());
    assert_acknowledged_stored_and_verified(&a, &acked);
}

fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map_or(0, |m| m.len())
}

/// NDJSON batch of `n` events of ~1 KB.
fn batch(from: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in from..from + n {
        out.extend_from_slice(
            format!(r#"{{"id":"b-{i}","type":"LOGIN","pad":"{}"}}"#, "y".repeat(1000)).as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_reader_lets_the_wal_grow_only_while_it_reads_and_the_file_is_reused_after_it() {
    let mut a = Appliance::start();
    let mut conn = a.connect("producer").await;
    let post = async |conn: &mut anchorlog::client::Connection, from: usize| {
        let r = conn
            .request("POST", "/v1/events", &[("content-type", "application/x-ndjson")], batch(from, 500))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.json());
    };
    // Warm up: the WAL reaches its working size (autocheckpoint at 1000 pages, ~4 MB).
    for k in 0..20 {
        post(&mut conn, k * 500).await;
    }
    let baseline = wal_bytes(&a.db_path());
    // A reader (an export to a slow client, an auditor's sqlite3 shell) holds one snapshot.
    let reader =
        rusqlite::Connection::open_with_flags(a.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    let mut figures = Vec::new();
    for k in 20..60 {
        post(&mut conn, k * 500).await;
        if k % 10 == 9 {
            figures.push(((k - 19) * 500, wal_bytes(&a.db_path())));
        }
    }
    let held = wal_bytes(&a.db_path());
    println!("WAL: {baseline} bytes before the reader; while it held its snapshot (events ingested, WAL bytes): {figures:?}");
    // Checkpoint starvation, measured: the WAL grows with everything ingested while the snapshot is held.
    assert!(
        held > baseline + 20_000 * 1000,
        "WAL {held} bytes after 20,000 events of 1 KB under a reader (before: {baseline})"
    );
    let still: i64 = reader.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(still, seen, "the reader keeps its snapshot");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // Once the reader is gone a checkpoint completes and the WAL is written from its start again: half the
    // ingest again grows the file by a fraction of what it grew under the reader (measured: 1.2 MB, a few
    // autocheckpoints' worth of frames appended before the restart, against 24 MB per 10,000 events held).
    for k in 60..80 {
        post(&mut conn, k * 500).await;
    }
    let after = wal_bytes(&a.db_path());
    println!("WAL: {held} bytes when the reader ended, {after} bytes after 10,000 more events");
    assert!(
        after.saturating_sub(held) < (held - baseline) / 8,
        "the WAL grew from {held} to {after} bytes after the reader ended (from {baseline} while it read)"
    );
    let metrics = String::from_utf8(a.audit_get("/metrics").await.body).unwrap();
    assert!(metrics.contains("\nanchorlog_database_wal_bytes "), "{metrics}");
    drop(conn);
    assert!(a.sigterm().success());
    assert_eq!(wal_bytes(&a.db_path()), 0, "a clean stop folds the WAL back in");
}

/// Posts `n` single events with ids (the de-duplication index gets a row each); returns them acknowledged.
async fn post_singles(a: &Appliance, from: usize, n: usize) -> Vec<(u64, String)> {
    let mut conn = a.connect("producer").await;
    let mut acked = Vec::new();
    for i in from..from + n {
        let b = format!(r#"{{"id":"c-{i}","type":"LOGIN","user":"u{i}"}}"#);
        let r = conn.post_json("/v1/events", b.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.json());
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), b));
    }
    acked
}

/// A log of `n` events, all sealed, stopped cleanly (the WAL folded into the file).
async fn stopped_log(n: usize) -> (Appliance, Vec<(u64, String)>) {
    let mut a = Appliance::start();
    let acked = post_singles(&a, 0, n).await;
    a.wait_for_head(n as u64).await;
    assert!(a.sigterm().success());
    (a, acked)
}

/// The first page of the b-tree `name` (a table or an index), 1-based, and the page size.
fn root_page(db: &Path, name: &str) -> (u64, u64) {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let root: i64 =
        conn.query_row("SELECT rootpage FROM sqlite_master WHERE name = ?1", [name], |r| r.get(0)).unwrap();
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    (root as u64, size as u64)
}

/// Flips (XOR 0xFF) the byte at `offset` of the file.
fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0xFF]).unwrap();
    f.sync_all().unwrap();
}

/// Flips the high byte of the cell count in the b-tree page header of `name`'s first page (byte 3 of the header;
/// page 1's header follows the 100-byte file header): the page no longer describes its own cells.
fn damage_btree(db: &Path, name: &str) {
    let (root, size) = root_page(db, name);
    let header = (root - 1) * size + if root == 1 { 100 } else { 0 };
    flip_byte(db, header + 3);
}

/// The serve error of a start that must be refused.
fn refused_start(a: &mut Appliance) -> String {
    match a.spawn() {
        Ok(addr) => panic!("the appliance started on a damaged database (listening on {addr})"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_an_index_page_refuses_the_start_naming_the_file_and_the_check() {
    let (mut a, _) = stopped_log(40).await;
    damage_btree(&a.db_path(), "events_source_id");
    let err = refused_start(&mut a);
    let db = a.db_path().display().to_string();
    assert!(err.contains(&format!("database {db} is damaged: PRAGMA quick_check reports: ")), "{err}");
    assert!(err.contains("Refusing to start"), "{err}");
    // The verifier reads events by seq, never this index: without the check the appliance would have served.
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "the damaged index is outside what verify reads: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_in_a_table_page_refuses_the_start_naming_the_file_and_the_check() {
    let (mut a, _) = stopped_log(40).await;
    // The heads table: verified rows live in it, but the damaged byte is its page header, not a row.
    damage_btree(&a.db_path(), "heads");
    let err = refused_start(&mut a);
    let db = a.db_path().display().to_string();
    assert!(err.contains(&format!("database {db} is damaged: PRAGMA quick_check reports: ")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_database_refuses_the_start_even_with_the_integrity_check_off() {
    let (mut a, _) = stopped_log(200).await;
    let len = std::fs::metadata(a.db_path()).unwrap().len();
    // Mid-page, as a copy cut short leaves it.
    std::fs::OpenOptions::new().write(true).open(a.db_path()).unwrap().set_len(len / 2 + 100).unwrap();
    let err = refused_start(&mut a);
    let db = a.db_path().display().to_string();
    let cut = len / 2 + 100;
    assert!(
        err.contains(&format!("database {db} is damaged: the file is {cut} bytes but its header says")),
        "{err}"
    );
    assert!(err.contains("it was truncated"), "{err}");
    // The O(1) length check runs whatever storage.integrity_check says.
    a.options.storage_extra = "integrity_check = \"off\"\n".into();
    let err = refused_start(&mut a);
    assert!(err.contains("it was truncated"), "{err}");
}

/// The WAL's frames: `(offset, commit size)` of each frame whose salts match the header's (the live ones).
fn live_wal_frames(wal: &[u8], page_size: usize) -> Vec<(usize, u32)> {
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let (salt1, salt2) = (be32(wal, 16), be32(wal, 20));
    let mut out = Vec::new();
    let mut at = 32;
    while at + 24 + page_size <= wal.len() && be32(wal, at + 8) == salt1 && be32(wal, at + 12) == salt2 {
        out.push((at, be32(wal, at + 4)));
        at += 24 + page_size;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torn_wal_tail_after_kill_9_is_discarded_by_design_and_every_acknowledged_event_is_there() {
    let mut a = Appliance::start();
    let mut acked = post_singles(&a, 0, 30).await;
    a.wait_for_head(30).await;
    acked.extend(post_singles(&a, 30, 5).await);
    a.kill();
    let mut wal_path = a.db_path().into_os_string();
    wal_path.push("-wal");
    let wal_path = PathBuf::from(wal_path);
    let wal = std::fs::read(&wal_path).unwrap();
    let page_size = u32::from_be_bytes([wal[8], wal[9], wal[10], wal[11]]) as usize;
    let frames = live_wal_frames(&wal, page_size);
    let (last, commit) = *frames.last().expect("committed frames in the WAL after kill -9");
    assert!(commit > 0, "the last live frame ends a committed transaction");
    // A transaction being written when the power went: its first frame only half on disk after the last commit.
    let end = last + 24 + page_size;
    let mut torn = wal[..end].to_vec();
    torn.extend_from_slice(&wal[last..last + 24 + page_size / 2]);
    std::fs::write(&wal_path, &torn).unwrap();
    a.spawn().expect("a torn WAL tail does not stop the start");
    assert_eq!(a.stored_events().await, acked.len() as u64);
    let more = post_singles(&a, 35, 3).await;
    assert_eq!(more[0].0, acked.len() as u64, "the next seq follows the last acknowledged one");
    acked.extend(more);
    a.wait_for_head(acked.len() as u64).await;
    assert!(a.sigterm().success());
    assert_acknowledged_stored_and_verified(&a, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_to_a_client_that_reads_slowly_is_aborted_at_max_export_snapshot_s() {
    let mut a = Appliance::prepare(Options {
        storage_extra: "max_export_snapshot_s = 10\n".into(),
        seal_max_events: 100_000,
        ..Options::default()
    });
    a.spawn().unwrap();
    let mut conn = a.connect("producer").await;
    for k in 0..16 {
        let r = conn
            .request("POST", "/v1/events", &[("content-type", "application/x-ndjson")], batch(k * 1000, 1000))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let head = a.wait_for_head(16_000).await;
    let to = head["height"].as_u64().unwrap();
    let port = a.addr.unwrap().port();
    let certs = a.path("certs");
    let out = a.path("export.tar");
    let started = Instant::now();
    // ~16 MB at 64 KB/s: far longer than the 10 s bound.
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "64k", "--max-time", "120", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("auditor.pem"))
        .arg("--key")
        .arg(certs.join("auditor.key"))
        .arg("-o")
        .arg(&out)
        .arg(format!("https://localhost:{port}/v1/export?from_height=0&to_height={to}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl runs");
    // The appliance lets go of the snapshot at the bound, whatever is still buffered on the way to the client.
    let abort =
        "the export held its database snapshot for 10 s (storage.max_export_snapshot_s) and was aborted";
    eventually(60, "the export aborted at its snapshot bound", async || a.server_log().contains(abort)).await;
    let took = started.elapsed();
    let received = std::fs::metadata(&out).map_or(0, |m| m.len());
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(took >= Duration::from_secs(10), "aborted after {took:?}, before the bound");
    println!("slow export (64 KB/s) aborted after {took:?}, {received} bytes received by then");
    // The snapshot is gone: the appliance still serves and stops cleanly.
    assert_eq!(a.audit_get("/readyz").await.status, 200);
    drop(conn);
    assert!(a.sigterm().success());
}
