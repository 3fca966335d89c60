//! I/O errors on write and fsync (issue 14.3): the real appliance with a test-only LD_PRELOAD shim
//! (`softhsm-tests/iofault/iofault.c`, built here) that fails the database's `fsync`/`write` calls with EIO on
//! demand. The shim is never part of a build of the appliance: it exists only in these tests' temporary directory.

mod kit;

use kit::{Appliance, Options};
use std::path::{Path, PathBuf};

/// Builds the shim into `dir` with the system C compiler.
fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm-tests/iofault/iofault.c");
    let out = dir.join("iofault.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("the I/O fault tests need a C compiler (cc) to build their LD_PRELOAD shim");
    assert!(status.success(), "building {}", src.display());
    out
}

/// Events acknowledged before the fault, then `kind` ("fsync" or "write") fails with EIO: the request in flight
/// gets no 2xx, the appliance stops by itself with a non-zero status and says why, and after a restart on a healthy
/// disk every acknowledged event is there with its body and the log verifies.
async fn an_io_error_stops_the_appliance_and_loses_nothing_acknowledged(kind: &str) {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = build_shim(shim_dir.path());
    let control = shim_dir.path().join("control");
    let mut a = Appliance::prepare(Options { record_appliance_events: true, ..Options::default() });
    a.options.env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        ("ANCHORLOG_IOFAULT_PATH".into(), a.db_path().display().to_string()),
        ("ANCHORLOG_IOFAULT_CONTROL".into(), control.display().to_string()),
    ];
    a.spawn().unwrap();
    let mut producer = a.connect("producer").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        let body = format!("{{\"type\":\"LOGIN\",\"user\":\"u{i}\",\"id\":\"before-{i}\"}}");
        let r = producer.post_json("/v1/events", body.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        acked.push((r.json()["events"][0]["seq"].as_u64().unwrap(), body));
    }

    // The disk starts failing: the next commit's WAL write or sync returns EIO.
    std::fs::write(&control, kind).unwrap();
    let body = "{\"type\":\"LOGIN\",\"user\":\"during\",\"id\":\"during-fault\"}";
    let r = producer.post_json("/v1/events", body.as_bytes()).await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "storage_io_error", "{}", String::from_utf8_lossy(&r.body));
    let status = a
        .wait_exit(std::time::Duration::from_secs(60))
        .unwrap_or_else(|| panic!("anchorlog did not exit by itself within 60 s: {}", a.server_log()));
    assert!(!status.success(), "stopped with an error status: {status:?}");
    let log = a.server_log();
    assert!(log.contains("the database's storage failed a write or sync"), "{log}");
    assert!(!log.contains("stop recorded in the log"), "nothing more written after the fault: {log}");

    // A healthy disk again (the shim disarmed and not preloaded): the start succeeds and reports the unclean end.
    std::fs::remove_file(&control).unwrap();
    a.options.env.clear();
    a.spawn().unwrap();
    for (seq, body) in &acked {
        assert_eq!(a.read_stored(*seq)["body"].as_str(), Some(body.as_str()), "seq {seq}");
    }
    // Producers send again what got no 2xx: stored once (as new, or as a duplicate if the failed commit's frames
    // were on disk after all), never twice.
    let mut producer = a.connect("producer").await;
    let r = producer.post_json("/v1/events", body.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(a.sigterm().success());
    let (code, report) = a.verify(&a.db_path());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["report"]["unsealed_events"], 0, "{report}");
    assert_eq!(report["report"]["appliance"]["starts_after_unclean_end"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_error_gets_no_2xx_stops_the_appliance_and_a_restart_keeps_every_acknowledged_event() {
    an_io_error_stops_the_appliance_and_loses_nothing_acknowledged("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_error_gets_no_2xx_stops_the_appliance_and_a_restart_keeps_every_acknowledged_event() {
    an_io_error_stops_the_appliance_and_loses_nothing_acknowledged("write").await;
}
