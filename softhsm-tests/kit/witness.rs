//! A real `anchorlog witness` process for tests: its own directory (config, key file or SoftHSM token,
//! database), started on 127.0.0.1, restartable on the same port, killable with SIGKILL. Shared by the witness's
//! conformance tests (witness.rs) and the log side's end-to-end tests (witnessing.rs).

use super::appliance::{bin, write_secret};
use super::softhsm::{TokenDir, SOFTHSM};
use anchorlog::client::{Connection, Response};
use anchorlog::witness::state::WitnessStore;
use anchorlog_core::note::VerifierKey;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const PIN: &str = "witness-user-pin";
/// The submission prefix every test witness uses.
pub const PREFIX: &str = "/witness";

/// Which key the witness cosigns with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyBackend {
    File,
    Pkcs11,
}

/// One witness: its directory (config, key or token, database) and, while running, its process.
pub struct WitnessProcess {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub addr: Option<SocketAddr>,
    /// The vkey `witness keygen` printed.
    pub vkey: VerifierKey,
    pub tls: bool,
}

impl WitnessProcess {
    /// Writes the config (witness `name`, the `[[log]]` sections `logs`), creates the token for the PKCS#11
    /// backend, runs keygen. Not started yet.
    pub fn create(name: &str, backend: KeyBackend, tls: bool, logs: &str) -> WitnessProcess {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // Created for both backends: the witness's environment names it either way.
        let tokens = TokenDir::create(&d);
        let key = match backend {
            KeyBackend::File => {
                format!("[key]\nbackend = \"file\"\nfile = \"{}\"\n", d.join("witness.key").display())
            }
            KeyBackend::Pkcs11 => {
                tokens.init_token("witness", PIN, "witness-so");
                write_secret(&d.join("pin"), PIN.as_bytes());
                format!(
                    "[key]\nbackend = \"pkcs11\"\n[key.pkcs11]\nmodule = \"{SOFTHSM}\"\ntoken_label = \"witness\"\n\
                     key_label = \"cosigner\"\npin_file = \"{}\"\n",
                    d.join("pin").display()
                )
            }
        };
        let server = if tls {
            let pki = anchorlog::dev::generate_pki(&[]).unwrap();
            std::fs::write(d.join("ca.pem"), &pki.ca_pem).unwrap();
            std::fs::write(d.join("server.pem"), &pki.server_pem).unwrap();
            write_secret(&d.join("server.key"), pki.server_key_pem.as_bytes());
            format!("cert_file = \"{0}/server.pem\"\nkey_file = \"{0}/server.key\"\n", d.display())
        } else {
            String::new()
        };
        let text = format!(
            "name = \"{name}\"\n[server]\nlisten = \"127.0.0.1:0\"\nprefix = \"{PREFIX}\"\n{server}\
             [storage]\ndatabase = \"{db}\"\n{key}{logs}",
            db = d.join("witness.db").display(),
        );
        std::fs::write(d.join("witness.toml"), text).unwrap();
        let mut w = WitnessProcess {
            dir,
            child: None,
            addr: None,
            vkey: VerifierKey::cosignature_v1("x", &[0; 32]).unwrap(),
            tls,
        };
        let out = w.anchorlog(&["witness", "keygen", "--config", w.config().to_str().unwrap()]);
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8(out.stdout).unwrap();
        w.vkey = VerifierKey::parse(printed.trim_end()).expect("keygen prints a vkey");
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config(&self) -> PathBuf {
        self.path("witness.toml")
    }

    /// The submission prefix for an appliance's `[[witness]] url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{PREFIX}", self.addr.expect("started once"))
    }

    /// The vkey written to a file (for `verify --witness FILE`).
    pub fn vkey_file(&self) -> PathBuf {
        let p = self.path("witness.vkey");
        std::fs::write(&p, format!("{}\n", self.vkey)).unwrap();
        p
    }

    pub fn anchorlog(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("SOFTHSM2_CONF", self.path("softhsm2.conf"))
            .env("ANCHORLOG_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Starts `anchorlog witness --config` (on the previous port when restarting); its stderr if it fails.
    pub fn spawn(&mut self) -> Result<SocketAddr, String> {
        if let Some(addr) = self.addr {
            let text = std::fs::read_to_string(self.config()).unwrap();
            std::fs::write(
                self.config(),
                text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
            )
            .unwrap();
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.path("witness.log")).unwrap();
        let mut child = Command::new(bin())
            .args(["witness", "--config", self.config().to_str().unwrap()])
            .env("SOFTHSM2_CONF", self.path("softhsm2.conf"))
            .env("ANCHORLOG_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let scheme = if self.tls { "https" } else { "http" };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let addr: SocketAddr = line
                    .strip_prefix(&format!("anchorlog witness listening on {scheme}://"))
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
                let vkey_line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
                assert_eq!(vkey_line, format!("anchorlog witness vkey {}", self.vkey));
                self.addr = Some(addr);
                self.child = Some(child);
                Ok(addr)
            }
            Err(_) => {
                let status = child.wait().unwrap();
                Err(format!(
                    "{status}: {}",
                    std::fs::read_to_string(self.path("witness.log")).unwrap_or_default()
                ))
            }
        }
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9: no shutdown path runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn connect(&self) -> Connection {
        let addr = self.addr.expect("running");
        if !self.tls {
            return Connection::connect_plain(addr, "localhost").await.unwrap();
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in anchorlog::tls::load_certs(&self.path("ca.pem"), "CA").unwrap() {
            roots.add(cert).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Connection::connect(addr, "localhost", std::sync::Arc::new(tls)).await.unwrap()
    }

    pub async fn submit(&self, body: Vec<u8>) -> Response {
        let path = format!("{PREFIX}/add-checkpoint");
        self.connect().await.request("POST", &path, &[], body).await.unwrap()
    }

    pub fn evidence(&self, origin: &str) -> Vec<anchorlog::witness::state::Evidence> {
        WitnessStore::open(&self.path("witness.db")).unwrap().evidence(origin).unwrap()
    }

    /// The tree size the witness holds for `origin` (read from its database).
    pub fn stored_size(&self, origin: &str) -> Option<u64> {
        WitnessStore::open(&self.path("witness.db")).unwrap().latest(origin).ok().map(|s| s.size)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.path("witness.log")).unwrap_or_default()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
