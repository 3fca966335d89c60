//! `anchorlog dev --signer tpm`: the dev appliance with its heads signed in a TPM 2.0 simulated by swtpm.
//!
//! The swtpm state lives under `DIR/tpm/` (so the persisted key survives restarts of dev mode). On start we
//! reuse an swtpm that already serves exactly that state (its pid file names a live `swtpm` whose command line
//! holds the state directory), or start one as our child on two free 127.0.0.1 ports. A child we start dies
//! with us: it is killed when [`DevSwtpm`] is dropped, and it runs under `setpriv --pdeathsig KILL` so even a
//! SIGKILL of the dev process takes it down. The signing key is created once (ECC P-256 at
//! [`DEV_TPM_HANDLE`], random auth value in `DIR/secrets/tpm-auth`), and so is the head counter
//! ([`DEV_COUNTER_INDEX`], also for a state directory from before counters); everything else (certificates, config,
//! `keys/signer.pem`, `keys/signer.crt`, `anchorlog.db`) has the same names as in the SoftHSM dev mode.

use crate::config::Config;
use crate::dev::{self, io_err, DevError};
use crate::keys;
use crate::signer::tpm::{self, TpmError, TpmSettings};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Persistent handle of the dev signing key.
pub const DEV_TPM_HANDLE: u32 = 0x8101_0010;
/// NV index of the dev head counter.
pub const DEV_COUNTER_INDEX: u32 = 0x0180_0010;
/// How long a freshly started swtpm may take to accept connections.
const SWTPM_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A dev-mode TPM setup failure.
#[derive(Debug, thiserror::Error)]
pub enum DevTpmError {
    /// The shared dev setup (directories, certificates, key export) failed.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// swtpm is not installed and we are not root.
    #[error("swtpm is not installed; run as root to install it automatically, or `apt-get install swtpm swtpm-tools`")]
    SwtpmMissing,
    /// swtpm could not be started.
    #[error("cannot start swtpm on {state}: {reason}")]
    SwtpmStart {
        /// The state directory.
        state: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TPM refused to create or open the key.
    #[error("TPM: {0}")]
    Tpm(#[from] TpmError),
    /// The state directory holds a TPM key but not its auth file (or the other way round).
    #[error("{dir} holds a TPM key at {handle:#010x} but no {auth}; remove {dir} to start over")]
    Inconsistent {
        /// The TPM state directory.
        dir: PathBuf,
        /// The handle.
        handle: u32,
        /// The missing auth file.
        auth: PathBuf,
    },
    /// `keys/signer.pem` is not the TPM key (the directory was set up with another signer).
    #[error("{pem} is not the public key of the TPM key at {handle:#010x} (was {dir} created with --signer softhsm?); use a fresh --state-dir")]
    OtherKey {
        /// The exported public key file.
        pem: PathBuf,
        /// The handle.
        handle: u32,
        /// The state directory.
        dir: PathBuf,
    },
    /// A bug in dev mode itself.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Installs swtpm and openssl with apt-get when they are missing and we are root.
pub fn ensure_packages() -> Result<(), DevTpmError> {
    let missing_swtpm = dev::which("swtpm").is_none();
    let missing_openssl = dev::which("openssl").is_none();
    if !missing_swtpm && !missing_openssl {
        return Ok(());
    }
    if !dev::is_root() {
        return if missing_swtpm { Err(DevTpmError::SwtpmMissing) } else { Ok(()) };
    }
    eprintln!("anchorlog dev: installing swtpm, swtpm-tools and openssl with apt-get (first run only)…");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "swtpm", "swtpm-tools", "openssl"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| DevError::Install(e.to_string()))?;
        if !status.success() {
            return Err(DevError::Install(format!("apt-get {} exited with {status}", args.join(" "))).into());
        }
    }
    Ok(())
}

/// The dev swtpm: either our child (stopped on drop) or one that already served the state directory.
pub struct DevSwtpm {
    child: Option<Child>,
    port: u16,
    pid_file: PathBuf,
}

impl DevSwtpm {
    /// Reuses an swtpm already serving `state_dir/tpm`, or starts one as a child of this process.
    pub fn start_or_reuse(state_dir: &Path) -> Result<DevSwtpm, DevTpmError> {
        let dir = state_dir.join("tpm");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        dev::set_mode(&dir, 0o700)?;
        let dir = dir.canonicalize().map_err(io_err(&dir))?;
        let pid_file = dir.join("swtpm.pid");
        let port_file = dir.join("swtpm.port");
        if let Some(port) = running_swtpm(&dir, &pid_file, &port_file) {
            eprintln!("anchorlog dev: reusing the swtpm already serving {} on port {port}", dir.display());
            return Ok(DevSwtpm { child: None, port, pid_file });
        }
        let start_err = |reason: String| DevTpmError::SwtpmStart { state: dir.clone(), reason };
        let mut last = String::from("no free port pair");
        for _ in 0..8 {
            let port = free_port_pair().map_err(|e| start_err(e.to_string()))?;
            let mut child = spawn_swtpm(&dir, &pid_file, port).map_err(|e| start_err(e.to_string()))?;
            match wait_listening(&mut child, port) {
                Ok(()) => {
                    std::fs::write(&port_file, port.to_string()).map_err(io_err(&port_file))?;
                    return Ok(DevSwtpm { child: Some(child), port, pid_file });
                }
                Err(reason) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = reason;
                }
            }
        }
        Err(start_err(last))
    }

    /// The TCTI string of this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for DevSwtpm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // swtpm writes its NV state (and so the persisted key) as it changes; killing it loses nothing.
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// The port of an swtpm that already serves `dir`: its pid file names a live swtpm process whose command line
/// contains `dir`, and its control port accepts connections.
fn running_swtpm(dir: &Path, pid_file: &Path, port_file: &Path) -> Option<u16> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let port: u16 = std::fs::read_to_string(port_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("swtpm") && cmdline.contains(&format!("dir={}", dir.display()));
    let ctrl: SocketAddr = ([127, 0, 0, 1], port.checked_add(1)?).into();
    (ours && TcpStream::connect_timeout(&ctrl, Duration::from_millis(200)).is_ok()).then_some(port)
}

fn spawn_swtpm(dir: &Path, pid_file: &Path, port: u16) -> std::io::Result<Child> {
    let server = format!("type=tcp,port={port},bindaddr=127.0.0.1");
    let ctrl = format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1);
    let state = format!("dir={}", dir.display());
    let pid = format!("file={}", pid_file.display());
    // setpriv (util-linux) sets PR_SET_PDEATHSIG before exec'ing swtpm: the kernel kills swtpm when this
    // process dies, even by SIGKILL, when Drop never runs. Without setpriv, Drop alone stops it.
    let mut cmd = match dev::which("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--", "swtpm"]);
            c
        }
        None => Command::new("swtpm"),
    };
    cmd.args(["socket", "--tpm2", "--tpmstate", &state, "--server", &server, "--ctrl", &ctrl])
        .args(["--flags", "not-need-init,startup-clear", "--pid", &pid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// Waits until swtpm's control port accepts (the command port is bound before it); fails if swtpm exits.
fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let ctrl: SocketAddr = ([127, 0, 0, 1], port + 1).into();
    let deadline = Instant::now() + SWTPM_START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("swtpm exited at start with {status} (is another swtpm using this state?)"));
        }
        if TcpStream::connect_timeout(&ctrl, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("swtpm did not listen on 127.0.0.1:{} within {SWTPM_START_TIMEOUT:?}", port + 1))
}

/// A port `P` with `P` and `P + 1` both free right now.
fn free_port_pair() -> std::io::Result<u16> {
    for _ in 0..64 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no two consecutive free ports on 127.0.0.1"))
}

/// Creates (once) the TPM key, certificates and exported key, writes the config for `tcti`, and returns its
/// path.
pub fn prepare(state_dir: &Path, listen: &str, tcti: &str) -> Result<PathBuf, DevTpmError> {
    for sub in ["certs", "keys", "secrets"] {
        let d = state_dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    dev::set_mode(&state_dir.join("secrets"), 0o700)?;
    let settings = TpmSettings {
        tcti: tcti.to_string(),
        handle: DEV_TPM_HANDLE,
        counter_index: Some(DEV_COUNTER_INDEX),
    };
    let auth_file = state_dir.join("secrets/tpm-auth");
    if !auth_file.exists() {
        let auth = dev::random_secret();
        let pending = state_dir.join("secrets/tpm-auth.pending");
        // Written before the key exists, renamed after: a crash in between leaves no key without its auth.
        dev::write_private(&pending, auth.as_bytes())?;
        let value = Zeroizing::new(auth.as_bytes().to_vec());
        match tpm::generate_key(&settings, Some(&value)) {
            Ok(_) => {}
            Err(TpmError::HandleOccupied { handle }) => {
                return Err(DevTpmError::Inconsistent { dir: state_dir.join("tpm"), handle, auth: auth_file })
            }
            Err(e) => return Err(e.into()),
        }
        std::fs::rename(&pending, &auth_file).map_err(io_err(&auth_file))?;
    }
    // Once: the counter of a fresh state, or of one created before heads carried counters.
    let auth = tpm::read_auth_file(&auth_file)?;
    match tpm::provision_counter(&settings, Some(&auth)) {
        Ok(_) | Err(TpmError::CounterIndexOccupied { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let cert_dir = state_dir.join("certs");
    if !cert_dir.join("ca.pem").exists() {
        dev::write_dev_pki(&cert_dir)?;
    }
    let config_path = state_dir.join("anchorlog.toml");
    let state_abs = state_dir.canonicalize().map_err(io_err(state_dir))?;
    let config_text = dev_tpm_config(&state_abs, listen, tcti)?;
    std::fs::write(&config_path, &config_text).map_err(io_err(&config_path))?;
    let config = Config::parse(&config_text).map_err(DevError::from)?;
    let pem = state_dir.join("keys").join(keys::PUBLIC_KEY_FILE);
    let mut signer = keys::open(&config).map_err(DevError::from)?;
    if pem.exists() {
        let existing = std::fs::read_to_string(&pem).map_err(io_err(&pem))?;
        let same = anchorlog_core::key::PublicKey::from_pem(&existing)
            .map(|k| k.spki_der == signer.public_key_spki_der())
            .unwrap_or(false);
        if !same {
            return Err(DevTpmError::OtherKey { pem, handle: DEV_TPM_HANDLE, dir: state_dir.to_path_buf() });
        }
    } else {
        keys::export(signer.as_mut(), &config.origin, &state_dir.join("keys")).map_err(DevError::from)?;
    }
    Ok(config_path)
}

/// The SoftHSM dev config with its `[signer]` section replaced by the TPM one.
fn dev_tpm_config(state: &Path, listen: &str, tcti: &str) -> Result<String, DevTpmError> {
    let s = state.display();
    let pkcs11 = format!(
        "backend = \"pkcs11\"\n\n[signer.pkcs11]\nmodule = \"{}\"\ntoken_label = \"{}\"\nkey_label = \"{}\"\npin_file = \"{s}/secrets/pin\"\n",
        dev::SOFTHSM_MODULE,
        dev::DEV_TOKEN_LABEL,
        dev::DEV_KEY_LABEL
    );
    let tpm = format!(
        "backend = \"tpm\"\n\n[signer.tpm]\ntcti = \"{tcti}\"\nhandle = \"{DEV_TPM_HANDLE:#010x}\"\nauth_file = \"{s}/secrets/tpm-auth\"\ncounter_index = \"{DEV_COUNTER_INDEX:#010x}\"\n"
    );
    let base = dev::dev_config(state, listen);
    if !base.contains(&pkcs11) {
        return Err(DevTpmError::Internal("the dev config has no [signer.pkcs11] section to replace".into()));
    }
    Ok(base.replace(&pkcs11, &tpm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_tpm_config_is_valid_and_names_the_tpm() {
        let text = dev_tpm_config(Path::new("/srv/dev"), "127.0.0.1:8443", "swtpm:host=127.0.0.1,port=2321")
            .unwrap();
        assert!(!text.contains("pkcs11"), "{text}");
        let c = Config::parse(&text).unwrap();
        let t = c.signer.tpm.unwrap();
        assert_eq!(t.tcti, "swtpm:host=127.0.0.1,port=2321");
        assert_eq!(t.handle.0, DEV_TPM_HANDLE);
        assert_eq!(t.auth_file, Some(PathBuf::from("/srv/dev/secrets/tpm-auth")));
        assert_eq!(t.counter_index.map(|i| i.0), Some(DEV_COUNTER_INDEX));
    }
}
