//! Test harness: a real `swtpm` (libtpms) TPM 2.0 per test, reachable over TCP on 127.0.0.1.
//!
//! `swtpm` runs in the *foreground* as a child of the test process (never `-d`): a daemonised
//! swtpm in a container whose PID 1 does not reap children leaves zombies behind, and a child we
//! own can always be killed and reaped in [`Drop`]. Each instance gets its own state directory
//! (a [`tempfile::TempDir`]) and two free ports (command port `P`, control port `P + 1`), so
//! tests can run in parallel.
//!
//! [`Swtpm::with_ek_cert`] first provisions the state with `swtpm_setup` (EK + EK certificate
//! issued by a throw-away `swtpm_localca` CA in the same temp dir), so the EK-certificate code
//! path can be exercised without touching `/var/lib/swtpm-localca`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a freshly spawned swtpm to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful shutdown may take before the child is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Port pairs to try before giving up (another process can grab a port between probe and bind).
const PORT_ATTEMPTS: usize = 8;

/// Errors of the swtpm harness.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// A helper program could not be started (is the `swtpm`/`swtpm-tools` package installed?).
    #[error("cannot run {program}: {source} (install the swtpm and swtpm-tools packages)")]
    Spawn {
        /// The program that failed to start.
        program: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },
    /// A helper program ran but failed.
    #[error("{program} failed: {detail}")]
    Failed {
        /// The program that failed.
        program: &'static str,
        /// Exit status and the tail of its output.
        detail: String,
    },
    /// swtpm did not accept connections in time.
    #[error("swtpm did not accept connections on 127.0.0.1:{port} within {timeout:?}")]
    Timeout {
        /// The command port that was polled.
        port: u16,
        /// How long we waited.
        timeout: Duration,
    },
    /// Local I/O (temp dir, config files, free-port probing) failed.
    #[error("swtpm harness I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A running swtpm child process with its own state directory.
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: tempfile::TempDir,
    /// Kept alive so the localca files (and the CA certificates) exist while the TPM runs.
    localca: Option<PathBuf>,
}

impl Swtpm {
    /// Starts a fresh, unprovisioned TPM 2.0 (no EK certificate) on free ports.
    pub fn start() -> Result<Swtpm, SwtpmError> {
        let state = tempfile::Builder::new().prefix("swtpm-").tempdir()?;
        Self::launch(state, None)
    }

    /// Starts a TPM 2.0 provisioned by `swtpm_setup` with an RSA-2048 and an ECC EK, their EK
    /// certificates in NV (RSA 0x01C00002, ECC P-384 0x01C00016) and a platform
    /// certificate, all issued by a throw-away local CA created under the state temp dir.
    pub fn with_ek_cert() -> Result<Swtpm, SwtpmError> {
        let state = tempfile::Builder::new().prefix("swtpm-ek-").tempdir()?;
        let localca = provision_with_ek_cert(state.path())?;
        Self::launch(state, Some(localca))
    }

    fn launch(state: tempfile::TempDir, localca: Option<PathBuf>) -> Result<Swtpm, SwtpmError> {
        let tpm_dir = state.path().join("tpm");
        std::fs::create_dir_all(&tpm_dir)?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port_pair()?;
            let mut child = spawn_swtpm(&tpm_dir, port)?;
            match wait_until_listening(&mut child, port) {
                Ok(()) => return Ok(Swtpm { child: Some(child), port, state, localca }),
                Err(e) => {
                    kill_and_reap(&mut child);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(SwtpmError::Timeout { port: 0, timeout: START_TIMEOUT }))
    }

    /// The TCTI configuration string for tss-esapi / tpm2-tools, e.g.
    /// `swtpm:host=127.0.0.1,port=40123`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TCP command port (the control port is this + 1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the TPM state (`tpm2-00.permall`).
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("tpm")
    }

    /// The local CA's certificates (issuer, then root) when started with [`Swtpm::with_ek_cert`].
    pub fn ek_ca_certs(&self) -> Option<(PathBuf, PathBuf)> {
        self.localca
            .as_ref()
            .map(|dir| (dir.join("issuercert.pem"), dir.join("swtpm-localca-rootca-cert.pem")))
    }

    /// Gracefully stops the TPM (state is saved) and starts it again on the same ports with
    /// the same state directory. Existing TCP connections to the old process are broken, which
    /// is exactly what a client's reconnect logic must survive.
    pub fn restart(&mut self) -> Result<(), SwtpmError> {
        self.stop()?;
        self.resume()
    }

    /// Starts the TPM again after [`Swtpm::stop`], on the same ports and state directory.
    /// Does nothing if it is running.
    pub fn resume(&mut self) -> Result<(), SwtpmError> {
        if self.child.is_some() {
            return Ok(());
        }
        let mut child = spawn_swtpm(&self.state_dir(), self.port)?;
        if let Err(e) = wait_until_listening(&mut child, self.port) {
            kill_and_reap(&mut child);
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the TPM the way a clean reboot does: `TPM2_Shutdown(CLEAR)` (tpm2-tools), then
    /// [`Swtpm::stop`]. An orderly counter keeps its value across this (measured, docs/TPM.md).
    pub fn stop_orderly(&mut self) -> Result<(), SwtpmError> {
        if self.child.is_none() {
            return Ok(());
        }
        let out = Command::new("tpm2_shutdown")
            .arg("-c")
            .env("TPM2TOOLS_TCTI", self.tcti())
            .env("TSS2_LOG", "esys+none,tcti+none")
            .output()
            .map_err(|source| SwtpmError::Spawn { program: "tpm2_shutdown", source })?;
        if !out.status.success() {
            return Err(SwtpmError::Failed {
                program: "tpm2_shutdown",
                detail: format!("{}: {}", out.status, tail(&String::from_utf8_lossy(&out.stderr), 300)),
            });
        }
        self.stop()
    }

    /// Kills the TPM process (SIGKILL): a power loss. What swtpm had written to its state file
    /// survives; volatile state (an orderly counter's RAM value) is lost.
    pub fn kill_unclean(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Gracefully stops the TPM with `swtpm_ioctl -s` (it saves its state and exits), killing
    /// it if it does not exit in time. Idempotent. No `TPM2_Shutdown` is sent, so for the TPM this
    /// is not an orderly shutdown: an orderly counter comes back with its low bits set (measured).
    pub fn stop(&mut self) -> Result<(), SwtpmError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let ctrl = format!("127.0.0.1:{}", self.port + 1);
        let status = Command::new("swtpm_ioctl")
            .args(["--tcp", &ctrl, "-s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait()? {
                Some(_) => break,
                None if Instant::now() >= deadline => {
                    kill_and_reap(&mut child);
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(SwtpmError::Failed { program: "swtpm_ioctl", detail: format!("exit status {s}") }),
            Err(source) => Err(SwtpmError::Spawn { program: "swtpm_ioctl", source }),
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }
}

/// Finds a port `P` such that both `P` and `P + 1` are free right now.
fn free_port_pair() -> Result<u16, SwtpmError> {
    for _ in 0..64 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(SwtpmError::Io(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no two consecutive free ports on 127.0.0.1",
    )))
}

fn spawn_swtpm(tpm_dir: &Path, port: u16) -> Result<Child, SwtpmError> {
    let server = format!("type=tcp,port={port},bindaddr=127.0.0.1");
    let ctrl = format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1);
    let state = format!("dir={}", tpm_dir.display());
    Command::new("swtpm")
        .args(["socket", "--tpm2", "--tpmstate", &state])
        .args(["--server", &server, "--ctrl", &ctrl])
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| SwtpmError::Spawn { program: "swtpm", source })
}

/// Polls the *control* port until it accepts (probing the command port would occupy swtpm's
/// single command connection slot). Fails fast if the child exits (e.g. port taken).
fn wait_until_listening(child: &mut Child, port: u16) -> Result<(), SwtpmError> {
    let ctrl: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(SwtpmError::Failed {
                program: "swtpm",
                detail: format!("exited during start-up with {status}"),
            });
        }
        let up = TcpStream::connect_timeout(&ctrl, Duration::from_millis(100)).is_ok();
        // The command socket is bound before the control socket is served, but check both so
        // the first TPM command never races the listener.
        if up && is_listening(server) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(SwtpmError::Timeout { port, timeout: START_TIMEOUT })
}

/// True when something is bound to `addr`: binding it ourselves fails with `AddrInUse`.
fn is_listening(addr: SocketAddr) -> bool {
    matches!(TcpListener::bind(addr), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
}

fn kill_and_reap(child: &mut Child) {
    // Errors are ignored on purpose: the child may already have exited.
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `swtpm_setup` with a self-contained `swtpm_localca` configuration under `root`.
/// Returns the localca directory.
fn provision_with_ek_cert(root: &Path) -> Result<PathBuf, SwtpmError> {
    let localca = root.join("localca");
    let tpm_dir = root.join("tpm");
    std::fs::create_dir_all(&localca)?;
    std::fs::create_dir_all(&tpm_dir)?;
    let localca_conf = root.join("swtpm-localca.conf");
    std::fs::write(
        &localca_conf,
        format!(
            "statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\n\
             certserial = {d}/certserial\n",
            d = localca.display()
        ),
    )?;
    let setup_conf = root.join("swtpm_setup.conf");
    std::fs::write(
        &setup_conf,
        format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\n\
             create_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
            localca_conf.display()
        ),
    )?;
    let out = Command::new("swtpm_setup")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(&tpm_dir)
        .arg("--config")
        .arg(&setup_conf)
        .args(["--create-ek-cert", "--overwrite"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SwtpmError::Spawn { program: "swtpm_setup", source })?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).into_owned();
        detail.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(SwtpmError::Failed {
            program: "swtpm_setup",
            detail: format!("{}: {}", out.status, tail(&detail, 600)),
        });
    }
    Ok(localca)
}

/// True when something is bound to 127.0.0.1:`port` (for tests of start/stop).
pub fn port_in_use(port: u16) -> bool {
    is_listening(([127, 0, 0, 1], port).into())
}

fn tail(s: &str, max: usize) -> &str {
    let start = s.len().saturating_sub(max);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
