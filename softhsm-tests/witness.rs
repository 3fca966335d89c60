//! Conformance tests of `anchorlog witness` against c2sp.org/tlog-witness v1.0.0, on real parts: the real binary
//! on 127.0.0.1, its state in a real SQLite file, its cosigning key in SoftHSM (`CKM_EDDSA`) or a key file, and
//! checkpoints signed by a real SoftHSM ECDSA P-256 key through the appliance's own `Pkcs11Signer` and
//! `signed_note` (exactly what the appliance emits), or by a test Ed25519 log key. Cosignatures are also
//! checked by an independent Python verifier (softhsm-tests/witness/verify_cosignature.py).

mod kit;

use anchorlog::client::{Connection, Response};
use anchorlog::signer::pkcs11::{self, Pkcs11Settings, Pkcs11Signer};
use anchorlog_core::head::{signed_note, Checkpoint};
use anchorlog_core::merkle::{consistency_proof, leaf_hash, root_of, Hash};
use anchorlog_core::note::protocol::AddCheckpointRequest;
use anchorlog_core::note::{cosignature, Note, NoteSignature, TlogCheckpoint, VerifierKey};
use kit::witness::{KeyBackend, WitnessProcess as Witness};
use kit::SOFTHSM;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use zeroize::Zeroizing;

/// The appliance-style log (ECDSA P-256 in SoftHSM).
const ORIGIN: &str = "anchorlog.test/witnessed";
/// A second log, signing its checkpoints with an Ed25519 note key.
const ED_ORIGIN: &str = "ed25519.test/log";
const WITNESS_NAME: &str = "witness.test/w1";

/// The log's ECDSA signer: one SoftHSM token per test process, opened once (C_Initialize is process-global,
/// so tests in one process share it), in the kit's token directory of this process's own.
fn log_signer() -> &'static Mutex<Pkcs11Signer> {
    static SIGNER: OnceLock<Mutex<Pkcs11Signer>> = OnceLock::new();
    SIGNER.get_or_init(|| {
        // Before the module's C_Initialize (in `init_token` below), which reads it.
        kit::softhsm::process_token_dir();
        let settings = Pkcs11Settings {
            module: SOFTHSM.into(),
            token_label: format!("wlog-{}", std::process::id()),
            key_label: "head-signer".into(),
        };
        let pin = Zeroizing::new("log-user-pin".to_owned());
        // SoftHSM answered CKR_GENERAL_ERROR once when another process wrote a token into the same directory; the
        // directory is this process's own now, but a retryable error is still retried (a wrong one still fails).
        fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, pkcs11::Pkcs11Error>) -> T {
            for _ in 0..5 {
                match f() {
                    Ok(v) => return v,
                    Err(e) if e.is_retryable() => std::thread::sleep(std::time::Duration::from_millis(100)),
                    Err(e) => panic!("{what}: {e:?}"),
                }
            }
            f().unwrap_or_else(|e| panic!("{what}: {e:?}"))
        }
        let so_pin = Zeroizing::new("log-so-pin".to_owned());
        retry("log token", || pkcs11::init_token(&settings.module, &settings.token_label, &so_pin, &pin));
        retry("log key", || pkcs11::generate_key(&settings, &pin));
        Mutex::new(retry("log signer", || Pkcs11Signer::open(&settings, &pin)))
    })
}

/// A test log: its leaves, and how it signs.
struct Log {
    origin: &'static str,
    leaves: Vec<Hash>,
    ed25519: Option<ed25519_dalek::SigningKey>,
}

impl Log {
    /// The appliance-style log: anchorlog heads, ECDSA in SoftHSM.
    fn ecdsa() -> Log {
        Log { origin: ORIGIN, leaves: Vec::new(), ed25519: None }
    }

    /// A plain checkpoint log signing with an Ed25519 note key.
    fn ed25519() -> Log {
        Log {
            origin: ED_ORIGIN,
            leaves: Vec::new(),
            ed25519: Some(ed25519_dalek::SigningKey::from_bytes(&[5; 32])),
        }
    }

    fn grow_to(&mut self, n: u64) {
        while (self.leaves.len() as u64) < n {
            let i = self.leaves.len() as u64;
            self.leaves.push(leaf_hash(format!("{}-{i}", self.origin).as_bytes()));
        }
    }

    fn root(&mut self, n: u64) -> Hash {
        self.grow_to(n);
        root_of(&self.leaves[..n as usize])
    }

    fn proof(&mut self, old: u64, n: u64) -> Vec<Hash> {
        self.grow_to(n);
        consistency_proof(old, &self.leaves[..n as usize]).unwrap()
    }

    /// The log's signed checkpoint note of size `n` with `root`.
    fn note_with_root(&mut self, n: u64, root: Hash) -> String {
        match &self.ed25519 {
            Some(key) => {
                use ed25519_dalek::Signer as _;
                let text = TlogCheckpoint { origin: self.origin.into(), size: n, root, extensions: vec![] }
                    .to_text();
                let key_id =
                    anchorlog_core::note::vkey::key_id(self.origin, 0x01, key.verifying_key().as_bytes());
                let sig = NoteSignature {
                    name: self.origin.into(),
                    key_id,
                    signature: key.sign(text.as_bytes()).to_vec(),
                };
                Note::new(text, vec![sig]).unwrap().to_text()
            }
            None => {
                let head = Checkpoint {
                    origin: self.origin.into(),
                    tree_size: n,
                    root,
                    height: n,
                    prev: [0; 32],
                    time_ms: 0,
                    counter: None,
                };
                let text = head.to_text().unwrap();
                let mut signer = log_signer().lock().unwrap();
                let sig = signer.sign(text.as_bytes()).unwrap();
                signed_note(&text, self.origin, signer.public_key_spki_der(), &sig)
            }
        }
    }

    fn note(&mut self, n: u64) -> String {
        let root = self.root(n);
        self.note_with_root(n, root)
    }

    /// The `add-checkpoint` body moving from `old` to the checkpoint of size `n`.
    fn body(&mut self, old: u64, n: u64) -> Vec<u8> {
        let proof = if old == 0 || old >= n { Vec::new() } else { self.proof(old, n) };
        let checkpoint = self.note(n);
        AddCheckpointRequest { old_size: old, proof, checkpoint }.to_body()
    }

    /// The vkey the witness is configured with.
    fn vkey(&self) -> String {
        match &self.ed25519 {
            Some(key) => {
                VerifierKey::ed25519(self.origin, key.verifying_key().as_bytes()).unwrap().to_string()
            }
            None => VerifierKey::ecdsa(self.origin, log_signer().lock().unwrap().public_key_spki_der())
                .unwrap()
                .to_string(),
        }
    }
}

/// The two test logs' `[[log]]` sections.
fn test_logs() -> String {
    format!(
        "[[log]]\norigin = \"{ORIGIN}\"\nvkeys = [\"{ecdsa}\"]\n[[log]]\norigin = \"{ED_ORIGIN}\"\nvkeys = [\"{ed}\"]\n",
        ecdsa = Log::ecdsa().vkey(),
        ed = Log::ed25519().vkey(),
    )
}

impl Witness {
    fn start(backend: KeyBackend) -> Witness {
        let mut w = Self::prepare(backend, false);
        w.spawn().expect("witness starts");
        w
    }

    /// A witness of the two test logs, not started yet.
    fn prepare(backend: KeyBackend, tls: bool) -> Witness {
        Witness::create(WITNESS_NAME, backend, tls, &test_logs())
    }

    /// Submits and expects a cosignature; returns the line after checking it against the keygen vkey.
    async fn cosign(&self, log: &mut Log, old: u64, n: u64) -> String {
        let body = log.body(old, n);
        let r = self.submit(body.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        let line = String::from_utf8(r.body).unwrap();
        let text = checkpoint_text(&body);
        cosignature::verify_line(&line, &self.vkey, &text)
            .expect("the cosignature verifies with the keygen vkey");
        line
    }
}

/// The note text of an `add-checkpoint` body.
fn checkpoint_text(body: &[u8]) -> String {
    let req = AddCheckpointRequest::parse(body).unwrap();
    Note::parse(req.checkpoint.as_bytes()).unwrap().text().to_owned()
}

fn assert_409(r: &Response, stored: u64) {
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type.as_deref(), Some("text/x.tlog.size"));
    assert_eq!(String::from_utf8_lossy(&r.body), format!("{stored}\n"));
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], code, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_origin_is_404() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    let body = String::from_utf8(log.body(0, 3)).unwrap().replace(ORIGIN, "anchorlog.test/unknown");
    let r = w.submit(body.into_bytes()).await;
    assert_error(&r, 404, "unknown_origin");
    assert_eq!(r.json()["detail"]["origin"], "anchorlog.test/unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_log_signature_is_403() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    // Signed by the Ed25519 log's key, but with the ECDSA log's origin: no trusted key signed it.
    let mut impostor = Log { origin: ORIGIN, ..Log::ed25519() };
    let r = w.submit(impostor.body(0, 3)).await;
    assert_error(&r, 403, "no_trusted_log_signature");
    // The log's real signature over other bytes (one extension line changed): a trusted key's signature that
    // fails rejects the note.
    let tampered =
        String::from_utf8(log.body(0, 3)).unwrap().replace("anchorlog-block 3", "anchorlog-block 4");
    let r = w.submit(tampered.into_bytes()).await;
    assert_error(&r, 403, "invalid_log_signature");
    // Neither changed anything: the first real checkpoint is cosigned from old size 0.
    w.cosign(&mut log, 0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_size_above_checkpoint_size_is_400_and_malformed_bodies_are_400() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    w.cosign(&mut log, 0, 5).await;
    let note = log.note(4);
    let r = w.submit(AddCheckpointRequest { old_size: 5, proof: vec![], checkpoint: note }.to_body()).await;
    assert_error(&r, 400, "old_size_above_checkpoint_size");
    assert_eq!(r.json()["detail"], serde_json::json!({"old_size": 5, "checkpoint_size": 4}));
    for bad in [&b"old 05\n\nx"[..], b"no blank line", b"old 5\nnot-base64\n\nx"] {
        assert_error(&w.submit(bad.to_vec()).await, 400, "malformed_request");
    }
    let proof = format!("{}\n", "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=").repeat(64);
    let r = w.submit(format!("old 5\n{proof}\n{}", log.note(9)).into_bytes()).await;
    assert_error(&r, 400, "malformed_request");
    assert!(r.json()["message"].as_str().unwrap().contains("at most 63"));
    // The body is bounded (64 KiB by default): 413 before it is parsed.
    let r = w.submit(vec![b'x'; 70 * 1024]).await;
    assert_error(&r, 413, "body_too_large");
    // GET is not the protocol.
    let r = w.connect().await.get("/witness/add-checkpoint").await.unwrap();
    assert_error(&r, 405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_size_different_from_stored_is_409_with_the_stored_size() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    // A client that knows nothing starts at 0 and learns the size.
    w.cosign(&mut log, 0, 5).await;
    let r = w.submit(log.body(0, 8)).await;
    assert_409(&r, 5);
    let r = w.submit(log.body(3, 8)).await;
    assert_409(&r, 5);
    // With the size it was told, it succeeds.
    w.cosign(&mut log, 5, 8).await;
    assert!(w.evidence(ORIGIN).is_empty(), "a conflict is not evidence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consistency_proof_is_422_and_recorded_as_evidence() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    w.cosign(&mut log, 0, 5).await;
    // A real checkpoint of size 9 with a corrupted proof.
    let mut proof = log.proof(5, 9);
    proof[1][0] ^= 0x80;
    let body = AddCheckpointRequest { old_size: 5, proof, checkpoint: log.note(9) }.to_body();
    let r = w.submit(body.clone()).await;
    assert_error(&r, 422, "bad_consistency_proof");
    // A fork: the log signs a size-9 tree that does not extend the cosigned size-5 tree; no proof exists.
    let mut fork = Log { leaves: log.leaves[..5].to_vec(), ..Log::ecdsa() };
    fork.leaves[2] = leaf_hash(b"rewritten history");
    let fork_body =
        AddCheckpointRequest { old_size: 5, proof: fork.proof(5, 9), checkpoint: fork.note(9) }.to_body();
    assert_error(&w.submit(fork_body.clone()).await, 422, "bad_consistency_proof");
    let ev = w.evidence(ORIGIN);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        (ev[0].kind.as_str(), ev[0].stored_size, ev[0].old_size, ev[0].checkpoint_size),
        ("bad_consistency_proof", 5, 5, 9)
    );
    assert_eq!(ev[0].request, body, "the whole request is kept");
    assert_eq!(ev[1].request, fork_body);
    assert!(ev[1].detail.contains("does not reproduce"), "{}", ev[1].detail);
    assert!(w.server_log().contains("possible log misbehaviour, evidence recorded"), "{}", w.server_log());
    // Nothing moved: the honest continuation from 5 is still cosigned.
    w.cosign(&mut log, 5, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_size_different_root_is_409_and_recorded() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    w.cosign(&mut log, 0, 6).await;
    // The same checkpoint again is cosigned again (idempotent retry).
    w.cosign(&mut log, 6, 6).await;
    let forked = log.note_with_root(6, [0xee; 32]);
    let r = w.submit(AddCheckpointRequest { old_size: 6, proof: vec![], checkpoint: forked }.to_body()).await;
    assert_409(&r, 6);
    let ev = w.evidence(ORIGIN);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind.as_str(), ev[0].stored_size, ev[0].checkpoint_size),
        ("same_size_different_root", 6, 6)
    );
    // A size-0 checkpoint must carry the empty tree's root.
    let mut fresh = Log::ed25519();
    let bad_empty = fresh.note_with_root(0, [1; 32]);
    let r =
        w.submit(AddCheckpointRequest { old_size: 0, proof: vec![], checkpoint: bad_empty }.to_body()).await;
    assert_error(&r, 422, "empty_tree_root");
    w.cosign(&mut fresh, 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_different_sizes_never_roll_back() {
    let w = Witness::start(KeyBackend::File);
    let mut log = Log::ecdsa();
    w.cosign(&mut log, 0, 1).await;
    let mut stored = 1;
    for round in 0..10u64 {
        // Eight clients race from the same old size with eight different sizes.
        let sizes: Vec<u64> = (1..=8).map(|k| stored + k + round).collect();
        let bodies: Vec<(u64, Vec<u8>)> = sizes.iter().map(|&n| (n, log.body(stored, n))).collect();
        let mut conns = Vec::new();
        for _ in &bodies {
            conns.push(w.connect().await);
        }
        let tasks: Vec<_> = bodies
            .into_iter()
            .zip(conns)
            .map(|((n, body), mut conn)| {
                tokio::spawn(async move {
                    let r = conn.request("POST", "/witness/add-checkpoint", &[], body).await.unwrap();
                    (n, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut told = Vec::new();
        for t in tasks {
            let (n, r) = t.await.unwrap();
            match r.status {
                200 => winners.push(n),
                409 => told.push(String::from_utf8(r.body).unwrap()),
                other => panic!("round {round}: size {n}: {other} {}", String::from_utf8_lossy(&r.body)),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one wins: {winners:?}");
        assert!(
            told.iter().all(|b| *b == format!("{}\n", winners[0])),
            "losers are told the winner's size: {told:?}"
        );
        // The witness's size is the winner's, larger than before: probe with old size 0.
        assert_409(&w.submit(log.body(0, winners[0])).await, winners[0]);
        assert!(winners[0] > stored);
        stored = winners[0];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_the_state_and_never_answers_below_it() {
    let mut w = Witness::start(KeyBackend::Pkcs11);
    let mut log = Log::ecdsa();
    w.cosign(&mut log, 0, 4).await;
    w.cosign(&mut log, 4, 10).await;
    w.kill9();
    w.spawn().expect("restarts on the same database");
    // It remembers 10: smaller or stale submissions get the stored size, never a cosignature.
    assert_409(&w.submit(log.body(0, 3)).await, 10);
    assert_409(&w.submit(log.body(4, 7)).await, 10);
    assert_error(&w.submit(log.body(10, 3)).await, 400, "old_size_above_checkpoint_size");
    // And it still continues from exactly there, with the key in the token.
    w.cosign(&mut log, 10, 10).await;
    w.cosign(&mut log, 10, 13).await;
    w.kill9();
    w.spawn().unwrap();
    assert_409(&w.submit(log.body(10, 12)).await, 13);
}

/// Both key backends produce cosignatures that verify with the vkey `witness keygen` printed — in our verifier
/// and in an independent Python one — and over the appliance's own head format and a plain Ed25519 log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_and_file_keys_cosign_verifiably_with_the_keygen_vkey() {
    for backend in [KeyBackend::Pkcs11, KeyBackend::File] {
        let w = Witness::start(backend);
        // `witness vkey` prints the same vkey from the configured key.
        let out = w.anchorlog(&["witness", "vkey", "--config", w.config().to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), w.vkey.to_string());
        assert_eq!(w.vkey.name(), WITNESS_NAME);
        assert_eq!(w.vkey.signature_type(), 0x04);
        for mut log in [Log::ecdsa(), Log::ed25519()] {
            let body = log.body(0, 7);
            let r = w.submit(body.clone()).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let line = String::from_utf8(r.body).unwrap();
            let text = checkpoint_text(&body);
            let t = cosignature::verify_line(&line, &w.vkey, &text).unwrap();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            assert!(t <= now && t + 60 > now, "timestamp {t} is now ({now})");
            // The log appends the line to its note; a verifier counts the witness.
            let req = AddCheckpointRequest::parse(&body).unwrap();
            let cosigned = anchorlog_core::note::append_signature_lines(&req.checkpoint, &line).unwrap();
            let note = Note::parse(cosigned.as_bytes()).unwrap();
            assert_eq!(
                cosignature::cosigned_by(&note, std::slice::from_ref(&w.vkey)).unwrap()[0].timestamp,
                t
            );
            // Python's `cryptography`, from the documented bytes only.
            let cp = w.path("checkpoint.txt");
            std::fs::write(&cp, &text).unwrap();
            let py = Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/witness/verify_cosignature.py"))
                .arg(w.vkey.to_string())
                .arg(&cp)
                .arg(&line)
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&py.stdout),
                format!("{t}\n"),
                "{}",
                String::from_utf8_lossy(&py.stderr)
            );
            // A changed checkpoint does not verify there either.
            std::fs::write(&cp, text.replace("\n7\n", "\n8\n")).unwrap();
            let py = Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/witness/verify_cosignature.py"))
                .arg(w.vkey.to_string())
                .arg(&cp)
                .arg(&line)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&py.stdout), "the signature does not verify\n");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut w = Witness::prepare(KeyBackend::File, false);
    let key = w.path("witness.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "keygen writes 0600");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = w.spawn().unwrap_err();
    assert!(err.starts_with("exit status: 1"), "{err}");
    assert!(
        err.contains(&format!(
            "refusing {0} (named by `key.file`): the file has mode 0644, so its group or other users can access \
             it; restrict it with `chmod 600 {0}`",
            key.display()
        )),
        "{err}"
    );
    let out = w.anchorlog(&["witness", "vkey", "--config", w.config().to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("mode 0644"));
    // keygen never overwrites a key.
    let out = w.anchorlog(&["witness", "keygen", "--config", w.config().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists; keygen never overwrites a key"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    w.spawn().expect("starts once the mode is fixed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_add_checkpoint() {
    let mut w = Witness::prepare(KeyBackend::File, true);
    w.spawn().expect("starts with TLS");
    let mut log = Log::ed25519();
    w.cosign(&mut log, 0, 2).await;
    w.cosign(&mut log, 2, 5).await;
    // Plain HTTP is not spoken on the TLS port.
    let mut plain = Connection::connect_plain(w.addr.unwrap(), "localhost").await.unwrap();
    assert!(plain.request("POST", "/witness/add-checkpoint", &[], log.body(5, 6)).await.is_err());
}
