//! One appliance per test on real parts: a fresh SoftHSM token (its own `SOFTHSM2_CONF` and token directory) or
//! swtpm, generated certificates, and the real `anchorlog` binary started as a child process on 127.0.0.1:0.
//! Each appliance is killed on drop, so a failing test leaves nothing running.

use super::softhsm::{TokenDir, SOFTHSM, SO_PIN, USER_PIN};
use super::swtpm::Swtpm;
use anchorlog::client::{Connection, Response};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes a secret file (PIN, private key, source secret) as an operator must: mode 0600. The appliance refuses
/// secrets its group or others can read.
pub fn write_secret(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The anchorlog binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_anchorlog")
}

/// The label of every appliance's token (one token per appliance, in its own directory).
pub const TOKEN_LABEL: &str = "anchorlog-test";

/// Persistent handle of the test's TPM signing key.
pub const TPM_HANDLE: u32 = 0x8101_0010;
/// NV index of the test's TPM head counter (provisioned by `keys generate --tpm`).
pub const TPM_COUNTER_INDEX: u32 = 0x0180_0010;
/// Keeps libtss2 from printing errors the TPM backend handles itself (connection refused while the TPM is
/// away, probes of absent handles) to the server's stderr.
pub const TSS2_LOG: &str = "esys+none,tcti+none";

/// Which device signs heads in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestSigner {
    /// A fresh SoftHSM token.
    SoftHsm,
    /// A fresh swtpm (one per test, killed on drop), key persisted at [`TPM_HANDLE`], head counter at
    /// [`TPM_COUNTER_INDEX`].
    Tpm,
}

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Options {
    pub signer: TestSigner,
    pub seal_interval_ms: u64,
    pub seal_max_events: u64,
    pub heartbeat_interval_s: u64,
    pub max_body_bytes: usize,
    pub extra_config: String,
    /// Open the source listener (secret-authenticated sources) on 127.0.0.1:0.
    pub source_listen: bool,
    /// Open the syslog listener (`server.syslog_listen`) on 127.0.0.1:0.
    pub syslog_listen: bool,
    /// Record starts, stops, outages and refused access in the log (`server.record_appliance_events`). Off by
    /// default here: most tests assert the exact seqs of the events they post; e2e.rs, tpm.rs and tsa_e2e.rs
    /// test the records themselves.
    pub record_appliance_events: bool,
    /// The log's origin.
    pub origin: String,
    /// Extra environment variables for `anchorlog serve`.
    pub env: Vec<(String, String)>,
    /// Extra lines of the `[server]` section (e.g. `health_listen = "127.0.0.1:PORT"`).
    pub server_extra: String,
    /// Extra lines of the `[limits]` section (e.g. `body_read_timeout_ms = 2000`, `writer_queue_depth = 1`).
    pub limits_extra: String,
    /// With [`TestSigner::Tpm`]: configure (and provision) the head counter at [`TPM_COUNTER_INDEX`].
    pub tpm_counter: bool,
    /// The PKCS#11 key label the configuration names (a key rotation changes it).
    pub key_label: String,
    /// The TPM persistent handle the configuration names (a key rotation changes it).
    pub tpm_handle: u32,
    /// The head counter's NV index the configuration names (with `tpm_counter`; a key rotation may change it).
    pub tpm_counter_index: u32,
    /// Rewrites the generated configuration text before it is written (e.g. several client CAs with issuers).
    pub config_filter: Option<Arc<dyn Fn(String) -> String + Send + Sync>>,
    /// The directory of the database (default: the test's directory); fault tests put it on a small filesystem.
    pub database_dir: Option<PathBuf>,
    /// Extra lines of the `[storage]` section (e.g. `integrity_check = "off"`).
    pub storage_extra: String,
    /// Serve a PostgreSQL log instead of the SQLite file: the application role's URL
    /// ([`super::pg_log::PgLog::app_url`]); search is turned off (it has no PostgreSQL counterpart yet).
    pub postgres: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            signer: TestSigner::SoftHsm,
            seal_interval_ms: 200,
            seal_max_events: 10_000,
            heartbeat_interval_s: 60,
            max_body_bytes: 1024 * 1024,
            extra_config: String::new(),
            source_listen: false,
            syslog_listen: false,
            record_appliance_events: false,
            origin: "anchorlog.test/e2e".into(),
            env: Vec::new(),
            server_extra: String::new(),
            limits_extra: String::new(),
            tpm_counter: true,
            key_label: "head-signer".into(),
            tpm_handle: TPM_HANDLE,
            tpm_counter_index: TPM_COUNTER_INDEX,
            config_filter: None,
            database_dir: None,
            storage_extra: String::new(),
            postgres: None,
        }
    }
}

/// One test's world: token, PKI, config, database, and (while running) the appliance process.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub options: Options,
    child: Option<Child>,
    pub addr: Option<SocketAddr>,
    /// The source listener's address (when `Options::source_listen`).
    pub source_addr: Option<SocketAddr>,
    /// The syslog listener's address (when `Options::syslog_listen`).
    pub syslog_addr: Option<SocketAddr>,
    stderr_log: PathBuf,
    /// The test's swtpm when `options.signer` is [`TestSigner::Tpm`]; dropped after the server is killed.
    pub tpm: Option<Swtpm>,
}

impl Appliance {
    /// Creates token, key, certificates and config, exports the key, and starts the appliance.
    pub fn start() -> Appliance {
        Self::start_with(Options::default())
    }

    /// Same with options.
    pub fn start_with(options: Options) -> Appliance {
        let mut a = Self::prepare(options);
        a.spawn().expect("appliance starts");
        a
    }

    /// Creates everything but does not start the server.
    pub fn prepare(options: Options) -> Appliance {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = &dir.path().to_path_buf();
        TokenDir::create(d).init_token(TOKEN_LABEL, USER_PIN, SO_PIN);
        write_secret(&d.join("pin"), USER_PIN.as_bytes());
        write_pki(d);
        let tpm = (options.signer == TestSigner::Tpm).then(|| Swtpm::start().expect("swtpm starts"));
        let a = Appliance {
            dir,
            options,
            child: None,
            addr: None,
            source_addr: None,
            syslog_addr: None,
            stderr_log: PathBuf::new(),
            tpm,
        };
        a.write_config("127.0.0.1:0");
        let config_path = a.config_path();
        let mut args = vec!["keys", "generate", "--config", config_path.to_str().unwrap()];
        if a.tpm.is_some() {
            args.push("--tpm");
        }
        let gen = a.anchorlog(&args);
        assert!(gen.status.success(), "keys generate: {}", String::from_utf8_lossy(&gen.stderr));
        let exp = a.anchorlog(&[
            "keys",
            "export",
            "--config",
            a.config_path().to_str().unwrap(),
            "--out-dir",
            d.join("keys").to_str().unwrap(),
        ]);
        assert!(exp.status.success(), "keys export: {}", String::from_utf8_lossy(&exp.stderr));
        a
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn config_path(&self) -> PathBuf {
        self.path("anchorlog.toml")
    }
    pub fn db_path(&self) -> PathBuf {
        match &self.options.database_dir {
            Some(d) => d.join("anchorlog.db"),
            None => self.path("anchorlog.db"),
        }
    }
    pub fn key_pem(&self) -> PathBuf {
        self.path("keys/signer.pem")
    }

    /// (Re)writes the config with `listen`.
    pub fn write_config(&self, listen: &str) {
        let d = self.dir.path().display();
        let o = &self.options;
        let signer = match &self.tpm {
            Some(tpm) => format!(
                "[signer]\nbackend = \"tpm\"\n[signer.tpm]\ntcti = \"{}\"\nhandle = \"{:#010x}\"\n{}",
                tpm.tcti(),
                o.tpm_handle,
                if o.tpm_counter {
                    format!("counter_index = \"{:#010x}\"\n", o.tpm_counter_index)
                } else {
                    String::new()
                }
            ),
            None => format!(
                "[signer]\nbackend = \"pkcs11\"\n[signer.pkcs11]\nmodule = \"{SOFTHSM}\"\n\
                 token_label = \"{TOKEN_LABEL}\"\nkey_label = \"{}\"\npin_file = \"{d}/pin\"\n",
                o.key_label
            ),
        };
        let text = format!(
            r#"origin = "{origin}"
[server]
listen = "{listen}"
cert_file = "{d}/certs/server.pem"
key_file = "{d}/certs/server.key"
client_ca_files = ["{d}/certs/ca.pem"]
shutdown_grace_s = 5
record_appliance_events = {own}
{source_listen}
{syslog_listen}
{server_extra}
[storage]
{database}
{storage_extra}
[limits]
max_body_bytes = {mb}
{limits_extra}
[sealing]
seal_interval_ms = {si}
seal_max_events = {sm}
heartbeat_interval_s = {hb}
{signer}[[principal]]
name = "producer-1"
roles = ["producer"]
identities = ["dns:producer.test"]
[[principal]]
name = "auditor-1"
roles = ["auditor"]
identities = ["dns:auditor.test"]
[[principal]]
name = "admin-1"
roles = ["admin", "auditor"]
identities = ["dns:admin.test"]
[[principal]]
name = "monitor-1"
roles = ["monitor"]
identities = ["dns:monitor.test"]
[[principal]]
name = "reader-1"
roles = ["reader"]
identities = ["dns:reader.test"]
{extra}
{search}
{alerting}"#,
            database = match &o.postgres {
                Some(url) => format!("backend = \"postgres\"\nurl = \"{url}\"\nlease_poll_ms = 200"),
                None => format!("database = \"{}\"", self.db_path().display()),
            },
            storage_extra = o.storage_extra,
            mb = o.max_body_bytes,
            si = o.seal_interval_ms,
            sm = o.seal_max_events,
            hb = o.heartbeat_interval_s,
            extra = o.extra_config,
            own = o.record_appliance_events,
            origin = o.origin,
            server_extra = o.server_extra,
            limits_extra = o.limits_extra,
            source_listen = if o.source_listen { "source_listen = \"127.0.0.1:0\"" } else { "" },
            syslog_listen = if o.syslog_listen { "syslog_listen = \"127.0.0.1:0\"" } else { "" },
            // The disk alert watches the machine's real disk, which the tests share with everything else: a test
            // would fail on `disk_nearly_full` whenever that disk is over 95 % full. Off unless a test sets it.
            search = if o.postgres.is_some() { "[search]\nenabled = false\n" } else { "" },
            alerting = if o.extra_config.contains("[alerting]") {
                ""
            } else {
                "[alerting]\nmin_free_disk_percent = 0\n"
            },
        );
        let text = match &o.config_filter {
            Some(filter) => filter(text),
            None => text,
        };
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Runs the anchorlog binary with this test's SoftHSM environment.
    pub fn anchorlog(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("SOFTHSM2_CONF", self.path("softhsm2.conf"))
            .env("TSS2_LOG", TSS2_LOG)
            .env("ANCHORLOG_LOG", "warn")
            .output()
            .expect("anchorlog runs")
    }

    /// For tests that open this appliance's key in their own process (the service behind a signer double, a log
    /// signed directly): points the process's `SOFTHSM2_CONF` at this appliance's token directory (SoftHSM reads it
    /// at `C_Initialize`, so before the first PKCS#11 call) and returns the settings of its token and key.
    pub fn pkcs11_in_process(&self) -> anchorlog::signer::pkcs11::Pkcs11Settings {
        std::env::set_var("SOFTHSM2_CONF", self.path("softhsm2.conf"));
        anchorlog::signer::pkcs11::Pkcs11Settings {
            module: SOFTHSM.into(),
            token_label: TOKEN_LABEL.into(),
            key_label: self.options.key_label.clone(),
        }
    }

    /// This appliance's configuration (written first), loaded in the test process for [`Self::serve_in_process`].
    pub fn load_config(&self) -> anchorlog::config::Config {
        self.write_config("127.0.0.1:0");
        anchorlog::config::Config::load(&self.config_path()).expect("configuration loads")
    }

    /// Runs the appliance's service inside the test process instead of `anchorlog serve`, with `signer` (a signer
    /// double around the real token, typically: see [`Self::pkcs11_in_process`]); `self.addr` is its listener.
    pub async fn serve_in_process(
        &mut self,
        config: anchorlog::config::Config,
        signer: anchorlog::signer::SignerHandle,
    ) -> InProcess {
        let service =
            anchorlog::server::Service::start_with_signer(config, signer).await.expect("service starts");
        self.addr = service.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.run(async move {
            let _ = stopped.await;
        }));
        InProcess { stop, server }
    }

    /// Starts `anchorlog serve`; returns its stderr if it exits before listening.
    pub fn spawn(&mut self) -> Result<SocketAddr, String> {
        let listen = self.addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
        self.write_config(&listen);
        self.stderr_log =
            self.path(&format!("serve-{}.log", Instant::now().elapsed().as_nanos() ^ rand_u32()));
        let log = std::fs::File::create(&self.stderr_log).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--config", self.config_path().to_str().unwrap()])
            .env("SOFTHSM2_CONF", self.path("softhsm2.conf"))
            .env("TSS2_LOG", TSS2_LOG)
            .env("ANCHORLOG_LOG", "info")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn anchorlog serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The first line names the mTLS listener, the next ones (if configured) the source and syslog listeners.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let addr: SocketAddr = line
                    .trim()
                    .strip_prefix("anchorlog listening on https://")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
                self.addr = Some(addr);
                if self.options.source_listen {
                    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
                    self.source_addr = line
                        .trim()
                        .strip_prefix("anchorlog source listener on https://")
                        .and_then(|a| a.parse().ok());
                    assert!(self.source_addr.is_some(), "unexpected second line {line:?}");
                }
                if self.options.syslog_listen {
                    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
                    self.syslog_addr = line
                        .trim()
                        .strip_prefix("anchorlog syslog listener on tls://")
                        .and_then(|a| a.parse().ok());
                    assert!(self.syslog_addr.is_some(), "unexpected syslog listener line {line:?}");
                }
                self.child = Some(child);
                Ok(addr)
            }
            Err(_) => {
                let _ = child.kill();
                let code = child.wait().ok().and_then(|s| s.code());
                Err(format!(
                    "exit status: {}: {}",
                    code.map_or("signal".into(), |c| c.to_string()),
                    self.server_log()
                ))
            }
        }
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's stderr so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Waits (at most `within`) until the server's stderr holds `count` lines containing `needle`; returns the log.
    /// Lines a server writes as it starts may come after the harness saw it listen: wait, never read once.
    pub async fn wait_log(&self, needle: &str, count: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.server_log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} ×{count} not logged within {within:?}: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (bounded) for exit.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("anchorlog did not stop within 30 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`HUP`, `USR1`, ...) to the running server.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
    }

    /// Waits (at most `within`) until the server ends by itself, e.g. at a test-only kill point
    /// (`ANCHORLOG_FAULT_KILL_AT`); returns its exit status, or `None` if it was not running or still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server without a graceful shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// An mTLS connection as `who` (`producer`, `auditor`, `admin`, `monitor`, `stranger`, `foreign`).
    pub async fn connect(&self, who: &str) -> Connection {
        self.try_connect(who).await.expect("connect")
    }

    pub async fn try_connect(&self, who: &str) -> Result<Connection, anchorlog::client::ClientError> {
        let d = self.dir.path().join("certs");
        let tls = anchorlog::tls::client_config(
            &d.join("ca.pem"),
            &d.join(format!("{who}.pem")),
            &d.join(format!("{who}.key")),
        )
        .expect("client config");
        Connection::connect(self.addr.expect("running"), "localhost", tls).await
    }

    /// A connection to the source listener: server-authenticated TLS, no client certificate.
    pub async fn connect_source_listener(&self) -> Connection {
        let ca = self.dir.path().join("certs/ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for cert in anchorlog::tls::load_certs(&ca, "CA certificate").expect("CA") {
            roots.add(cert).expect("CA cert");
        }
        let tls =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocols")
                .with_root_certificates(roots)
                .with_no_client_auth();
        Connection::connect(self.source_addr.expect("source listener"), "localhost", Arc::new(tls))
            .await
            .expect("connect to the source listener")
    }

    /// GET as auditor, parsed JSON.
    pub async fn audit_get(&self, path: &str) -> Response {
        self.connect("auditor").await.get(path).await.expect("GET")
    }

    /// Number of stored events, from the auditor's /readyz.
    pub async fn stored_events(&self) -> u64 {
        self.audit_get("/readyz").await.json()["events"].as_u64().expect("events")
    }

    /// Waits until the indexer has written every committed event (read from the search file itself, so that
    /// the wait leaves no audit record).
    pub async fn wait_indexed(&self) {
        let committed = self.stored_events().await;
        let path = anchorlog::store::search_path(&self.db_path());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let indexed = anchorlog::store::open_search_reader(&path)
                .and_then(|c| anchorlog::store::indexed_until(&c))
                .unwrap_or(0);
            if indexed >= committed {
                return;
            }
            assert!(Instant::now() < deadline, "indexer: {indexed} of {committed} events within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Event `seq` read from the database files themselves, shaped like the `GET /v1/events/{seq}` answer
    /// (`seq`, `entry_fields`, `body`, `fields` with `source`; `fields` is null until indexed). Reading through
    /// the API appends an audit-access record (PCI DSS 10.2.1.3) and so moves the seqs that tests assert.
    pub fn read_stored(&self, seq: u64) -> serde_json::Value {
        let ledger = anchorlog::store::open_reader(&self.db_path()).expect("ledger opens");
        let ev = anchorlog::store::event(&ledger, seq)
            .expect("ledger read")
            .unwrap_or_else(|| panic!("no seq {seq}"));
        let fields = anchorlog::store::open_search_reader(&anchorlog::store::search_path(&self.db_path()))
            .ok()
            .and_then(|c| anchorlog::store::event_fields(&c, seq).ok().flatten())
            .map(|(source, f)| {
                let mut v = serde_json::to_value(&f).unwrap();
                v["source"] = source.into();
                v
            });
        serde_json::json!({
            "seq": seq,
            "entry_fields": serde_json::from_slice::<serde_json::Value>(&ev.entry).unwrap(),
            "body": ev.body.map(|b| String::from_utf8(b).unwrap()),
            "fields": fields,
        })
    }

    /// `anchorlog export --db` of heads `0..=to` into `out` (run after the server stopped); asserts success.
    pub fn export_from_db(&self, to: u64, out: &Path) {
        self.export_db(&self.db_path(), to, out);
    }

    /// [`Self::export_from_db`] of another database file `db` (a copy an attacker edited).
    pub fn export_db(&self, db: &Path, to: u64, out: &Path) {
        let done = self.anchorlog(&[
            "export",
            "--db",
            db.to_str().unwrap(),
            "--from-height",
            "0",
            "--to-height",
            &to.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }

    /// Signs `text` with a key of this appliance's token, as root with the PIN file can, outside the appliance:
    /// `pkcs11-tool`, CKM_ECDSA over SHA-256(text), DER. `key` selects the key in pkcs11-tool's words
    /// (`["--label", "head-signer"]`, or `["--id", HEX]` where labels repeat after a rotation).
    pub fn pkcs11_tool_sign(&self, key: &[&str], text: &[u8]) -> Vec<u8> {
        let digest = self.path("resign.digest");
        std::fs::write(&digest, <sha2::Sha256 as sha2::Digest>::digest(text)).unwrap();
        let sig = self.path("resign.sig");
        let out = Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM, "--token-label", TOKEN_LABEL, "--login", "--pin", USER_PIN])
            .args(["--sign", "--mechanism", "ECDSA"])
            .args(key)
            .args(["--signature-format", "openssl"])
            .arg("-i")
            .arg(&digest)
            .arg("-o")
            .arg(&sig)
            .env("SOFTHSM2_CONF", self.path("softhsm2.conf"))
            .output()
            .expect("pkcs11-tool runs (apt-get install opensc)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&sig).unwrap()
    }

    /// OpenSSL, knowing nothing about anchorlog, verifies `head`'s signed checkpoint with the exported key.
    pub fn assert_openssl_verifies_head(&self, head: &serde_json::Value) {
        let (txt, sig) = write_head_files(head, self.dir.path());
        let out = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(self.key_pem())
            .arg("-signature")
            .arg(&sig)
            .arg(&txt)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK", "{out:?}");
    }

    /// The appliance's own records (producer `anchorlog`) in seq order, with their parsed bodies, read from the
    /// database file (no API read, which would itself be recorded).
    pub fn own_records(&self) -> Vec<(u64, serde_json::Value)> {
        let conn = anchorlog::store::open_reader(&self.db_path()).expect("ledger opens");
        let mut st =
            conn.prepare("SELECT seq, body FROM events WHERE producer = 'anchorlog' ORDER BY seq").unwrap();
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))).unwrap();
        rows.map(|r| {
            let (seq, body) = r.unwrap();
            (seq, serde_json::from_slice(&body).unwrap())
        })
        .collect()
    }

    /// Waits until the latest head covers `tree_size` events; returns that head's JSON.
    pub async fn wait_for_head(&self, tree_size: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.audit_get("/v1/heads/latest").await;
            if r.status == 200 && r.json()["tree_size"].as_u64() >= Some(tree_size) {
                return r.json();
            }
            assert!(
                Instant::now() < deadline,
                "no head covering {tree_size} events within 30 s: {}",
                self.server_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies the database file (and its WAL, if any) to `name` in the test directory; returns its path.
    pub fn copy_db(&self, name: &str) -> PathBuf {
        let to = self.path(name);
        copy_sqlite(&self.db_path(), &to);
        to
    }

    /// Replaces the database (and its WAL) with the copy at `from`, as an attacker restoring a backup would.
    pub fn restore_db(&self, from: &Path) {
        copy_sqlite(from, &self.db_path());
    }

    /// `anchorlog keys rotate` on this appliance's configuration with `reason` and the new key's arguments
    /// (`["--new-key-label", L]`, `["--new-handle", H]`, or none).
    pub fn keys_rotate(&self, reason: &str, new_key: &[&str]) -> Output {
        let config = self.config_path();
        let mut args = vec!["keys", "rotate", "--config", config.to_str().unwrap(), "--reason", reason];
        args.extend_from_slice(new_key);
        self.anchorlog(&args)
    }

    /// The anchorlog binary with `args` and `--json` → (exit code, its JSON output, or `{stdout, stderr}` when it
    /// printed none).
    pub fn cli_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.anchorlog(&all);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            serde_json::json!({
                "stdout": String::from_utf8_lossy(&out.stdout),
                "stderr": String::from_utf8_lossy(&out.stderr),
            })
        });
        (out.status.code().unwrap_or(-1), json)
    }

    /// `anchorlog audit` as the auditor (its certificate, the test CA) against this appliance's listener, trusting
    /// the exported key, state in `audit-state.json`, plus `extra` arguments → (exit code, JSON outcome).
    pub fn audit(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        self.audit_as(None, &self.key_pem(), extra)
    }

    /// [`Self::audit`] against `url` instead (`None`: this appliance's listener), trusting `signer` instead.
    pub fn audit_as(&self, url: Option<&str>, signer: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
        let url = match url {
            Some(url) => url.to_string(),
            None => format!("https://localhost:{}", self.addr.expect("running").port()),
        };
        let c = |f: &str| self.path(&format!("certs/{f}")).to_str().unwrap().to_string();
        let (cert, key, ca) = (c("auditor.pem"), c("auditor.key"), c("ca.pem"));
        let state = self.path("audit-state.json");
        let mut args = vec!["audit", "--url", &url, "--cert", &cert, "--key", &key, "--ca", &ca];
        args.extend(["--signer", signer.to_str().unwrap(), "--state", state.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = self.anchorlog(&args);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }

    /// `anchorlog verify --db … --key … --json` → (exit code, JSON).
    /// `anchorlog verify --json` of the log this appliance serves (its SQLite file, or its PostgreSQL log) with its
    /// key; exit code and report.
    pub fn verify_log(&self) -> (i32, serde_json::Value) {
        match &self.options.postgres {
            Some(url) => self.verify_url(url),
            None => self.verify(&self.db_path()),
        }
    }

    /// `anchorlog verify --json` of the database at `db` (a path or a `postgres://` URL) with this appliance's key.
    pub fn verify_url(&self, db: &str) -> (i32, serde_json::Value) {
        let out =
            self.anchorlog(&["verify", "--db", db, "--key", self.key_pem().to_str().unwrap(), "--json"]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }

    /// The database `anchorlog verify --db` reads: the SQLite file, or the PostgreSQL URL.
    pub fn db_arg(&self) -> String {
        match &self.options.postgres {
            Some(url) => url.clone(),
            None => self.db_path().display().to_string(),
        }
    }

    pub fn verify(&self, db: &Path) -> (i32, serde_json::Value) {
        let out = self.anchorlog(&[
            "verify",
            "--db",
            db.to_str().unwrap(),
            "--key",
            self.key_pem().to_str().unwrap(),
            "--json",
        ]);
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }
}

/// The appliance's service running in the test process ([`Appliance::serve_in_process`]).
pub struct InProcess {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), anchorlog::server::ServeError>>,
}

impl InProcess {
    /// Shuts the service down as SIGTERM does and waits until it has; asserts that it ended without an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.expect("service task").expect("service ends cleanly");
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies a SQLite database with its `-wal` and `-shm` files (removing stale ones at the destination).
fn copy_sqlite(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let (src, dst) = (sidecar(from, suffix), sidecar(to, suffix));
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn rand_u32() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u128
}

/// CA + server + producer/auditor/admin/stranger/monitor/reader certs, plus a client cert from a foreign CA.
fn write_pki(d: &Path) {
    let certs = d.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let pki = anchorlog::dev::generate_pki(&[
        ("producer", "producer.test"),
        ("auditor", "auditor.test"),
        ("admin", "admin.test"),
        ("stranger", "stranger.test"),
        ("monitor", "monitor.test"),
        ("reader", "reader.test"),
    ])
    .unwrap();
    std::fs::write(certs.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(certs.join("server.pem"), &pki.server_pem).unwrap();
    write_secret(&certs.join("server.key"), pki.server_key_pem.as_bytes());
    for (stem, c, k) in &pki.clients {
        std::fs::write(certs.join(format!("{stem}.pem")), c).unwrap();
        std::fs::write(certs.join(format!("{stem}.key")), k).unwrap();
    }
    // Same identity as the producer, but issued by a CA the appliance does not trust.
    let foreign = anchorlog::dev::generate_pki(&[("foreign", "producer.test")]).unwrap();
    std::fs::write(certs.join("foreign.pem"), &foreign.clients[0].1).unwrap();
    std::fs::write(certs.join("foreign.key"), &foreign.clients[0].2).unwrap();
    std::fs::write(certs.join("foreign-ca.pem"), &foreign.ca_pem).unwrap();
}

/// Posts `n` small events concurrently over `conns` connections; returns every acknowledged seq.
pub async fn post_concurrently(a: &Appliance, n: u64, conns: u64) -> Vec<u64> {
    let a_addr = a.addr.unwrap();
    let _ = a_addr;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mut conn = a.connect("producer").await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut i = c;
            while i < n {
                let body = format!("{{\"type\":\"LOGIN\",\"user\":\"u{i}\",\"n\":{i}}}");
                let r = conn.post_json("/v1/events", body.as_bytes()).await.expect("post");
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                seqs.push(r.json()["events"][0]["seq"].as_u64().unwrap());
                i += conns;
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all
}

/// Writes the head's checkpoint and signature to files for openssl.
pub fn write_head_files(head: &serde_json::Value, dir: &Path) -> (PathBuf, PathBuf) {
    use base64::Engine as _;
    let txt = dir.join("head.txt");
    let sig = dir.join("head.sig");
    std::fs::write(&txt, head["checkpoint"].as_str().unwrap()).unwrap();
    let der = base64::engine::general_purpose::STANDARD.decode(head["signature"].as_str().unwrap()).unwrap();
    std::fs::write(&sig, der).unwrap();
    (txt, sig)
}

pub type Shared<T> = Arc<T>;

/// mTLS sources of the three IdP formats for `producer-1` (the harness's producer certificate), named after
/// their format; tests add more sources after it.
pub const IDP_SOURCES: &str = r#"
[[source]]
name = "keycloak"
format = "keycloak"
principals = ["producer-1"]
[[source]]
name = "okta"
format = "okta"
principals = ["producer-1"]
[[source]]
name = "auth0"
format = "auth0"
principals = ["producer-1"]
"#;
