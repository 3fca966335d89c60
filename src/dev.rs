//! `anchorlog dev`: a complete appliance on this machine with one command.
//!
//! On first run it creates, under the state directory: a SoftHSM token with a non-extractable P-256 signing
//! key (PINs random, in `secrets/`, mode 0600), a dev CA with server, producer, auditor and admin
//! certificates, the exported signer public key and certificate, and a config. Later runs reuse all of it.
//! File names are fixed so scripts and docs can rely on them. A local RFC 3161 TSA (`openssl ts -reply` behind
//! an HTTP responder, under `tsa/`) is started on every run and configured, its CA in `certs/tsa-ca.pem`;
//! without python3/openssl dev mode runs with timestamping off and says so. A local witness (this binary's
//! `anchorlog witness`, under `witness/`, [`crate::dev_witness`]) is started on every run and configured as the
//! log's `[[witness]]`, its vkey in `keys/witness.vkey`; it stops with dev mode.

use crate::config::Config;
use crate::keys;
use crate::signer::pkcs11::{self, Pkcs11Settings};
use rand::RngCore as _;
use std::path::{Path, PathBuf};

/// Debian's path of the SoftHSM2 PKCS#11 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "anchorlog-dev";
/// Label of the dev signing key.
pub const DEV_KEY_LABEL: &str = "anchorlog-head-signer";
/// Default listen address of dev mode.
pub const DEV_LISTEN: &str = "127.0.0.1:8443";

/// A dev-mode setup failure.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SoftHSM is not installed and we are not root.
    #[error("SoftHSM2 is not installed ({SOFTHSM_MODULE} missing); run as root to install it automatically, or `apt-get install softhsm2`")]
    SoftHsmMissing,
    /// Installing packages failed.
    #[error("apt-get failed: {0}")]
    Install(String),
    /// Token or key creation failed.
    #[error("SoftHSM: {0}")]
    Pkcs11(#[from] pkcs11::Pkcs11Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Certificate(String),
    /// Exporting the key failed.
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    /// The generated config is invalid (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The local witness could not be set up or started.
    #[error("the local witness: {0}")]
    Witness(String),
}

/// What [`prepare`] set up: the config to serve, and the local witness (stopped when dropped, so keep it until
/// the appliance has stopped).
pub struct DevSetup {
    /// The generated configuration file.
    pub config_path: PathBuf,
    /// The local witness, when it started.
    pub witness: Option<crate::dev_witness::DevWitness>,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io { path: path.to_path_buf(), source }
}

/// The SoftHSM config file dev mode uses; `SOFTHSM2_CONF` must point here before the module is loaded.
pub fn softhsm_conf_path(state_dir: &Path) -> PathBuf {
    state_dir.join("softhsm").join("softhsm2.conf")
}

/// Installs softhsm2 and openssl with apt-get when they are missing and we are root.
pub fn ensure_packages() -> Result<(), DevError> {
    let missing_hsm = !Path::new(SOFTHSM_MODULE).exists();
    let missing_openssl = which("openssl").is_none();
    let missing_python = which("python3").is_none();
    if !missing_hsm && !missing_openssl && !missing_python {
        return Ok(());
    }
    if !is_root() {
        return if missing_hsm { Err(DevError::SoftHsmMissing) } else { Ok(()) };
    }
    eprintln!("anchorlog dev: installing softhsm2, openssl and python3 with apt-get (first run only)…");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "softhsm2", "openssl", "python3"][..]] {
        let status = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| DevError::Install(e.to_string()))?;
        if !status.success() {
            return Err(DevError::Install(format!("apt-get {} exited with {status}", args.join(" "))));
        }
    }
    Ok(())
}

pub(crate) fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), DevError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}

pub(crate) fn random_secret() -> zeroize::Zeroizing<String> {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    zeroize::Zeroizing::new(hex::encode(bytes))
}

/// Creates (once) everything dev mode needs, starts the local witness, and returns the config path and the
/// witness. Must run before any other thread loads the PKCS#11 module, with `SOFTHSM2_CONF` already pointing at
/// [`softhsm_conf_path`], on the thread that stays alive while dev mode runs (the witness is tied to it).
pub fn prepare(state_dir: &Path, listen: &str) -> Result<DevSetup, DevError> {
    for sub in ["certs", "keys", "secrets", "softhsm/tokens"] {
        let d = state_dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    set_mode(&state_dir.join("secrets"), 0o700)?;
    let conf = softhsm_conf_path(state_dir);
    if !conf.exists() {
        let tokens = state_dir.join("softhsm/tokens").canonicalize().map_err(io_err(state_dir))?;
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&conf, text).map_err(io_err(&conf))?;
    }
    let pin_file = state_dir.join("secrets/pin");
    let settings = Pkcs11Settings {
        module: SOFTHSM_MODULE.into(),
        token_label: DEV_TOKEN_LABEL.into(),
        key_label: DEV_KEY_LABEL.into(),
    };
    if !pin_file.exists() {
        let pin = random_secret();
        let so_pin = random_secret();
        pkcs11::init_token(Path::new(SOFTHSM_MODULE), DEV_TOKEN_LABEL, &so_pin, &pin)?;
        pkcs11::generate_key(&settings, &pin)?;
        write_private(&state_dir.join("secrets/so-pin"), so_pin.as_bytes())?;
        write_private(&pin_file, pin.as_bytes())?;
    }
    let cert_dir = state_dir.join("certs");
    if !cert_dir.join("ca.pem").exists() {
        write_dev_pki(&cert_dir)?;
    }
    let config_path = state_dir.join("anchorlog.toml");
    let state_abs = state_dir.canonicalize().map_err(io_err(state_dir))?;
    let mut config_text = dev_config(&state_abs, listen);
    match crate::tsa::local::start(&state_abs.join("tsa")) {
        Ok(tsa) => {
            let ca = state_abs.join("certs/tsa-ca.pem");
            std::fs::copy(&tsa.ca_file, &ca).map_err(io_err(&ca))?;
            config_text.push_str(&format!(
                "\n# The local RFC 3161 TSA started by `anchorlog dev` (DIR/tsa/).\n[[tsa]]\nurl = \"{}\"\nca_file = \"{}\"\n",
                tsa.url,
                ca.display()
            ));
        }
        Err(e) => tracing::warn!(error = %e, "dev mode: the local TSA did not start; timestamping is off"),
    }
    std::fs::write(&config_path, &config_text).map_err(io_err(&config_path))?;
    let config = Config::parse(&config_text)?;
    if !state_dir.join("keys").join(keys::PUBLIC_KEY_FILE).exists() {
        let mut signer = keys::open(&config)?;
        keys::export(signer.as_mut(), &config.origin, &state_dir.join("keys"))?;
    }
    // The witness trusts the exported signer key, so it starts after the export.
    let witness = start_witness(state_dir, &config_path)?;
    Ok(DevSetup { config_path, witness })
}

/// Starts the local witness for the dev log whose configuration is `config_path` (its signer key already exported
/// to `DIR/keys/signer.pem`) and appends its `[[witness]]` to that file. `None` (logged) when it cannot start:
/// dev mode then runs with witnessing off. Call it on the thread that stays alive while dev mode runs.
pub fn start_witness(
    state_dir: &Path,
    config_path: &Path,
) -> Result<Option<crate::dev_witness::DevWitness>, DevError> {
    let mut text = std::fs::read_to_string(config_path).map_err(io_err(config_path))?;
    let origin = Config::parse(&text)?.origin;
    match crate::dev_witness::DevWitness::start(state_dir, &origin) {
        Ok(w) => {
            text.push_str(&w.config_section());
            Config::parse(&text)?;
            std::fs::write(config_path, &text).map_err(io_err(config_path))?;
            Ok(Some(w))
        }
        Err(e) => {
            tracing::warn!(error = %e, "dev mode: the local witness did not start; witnessing is off");
            Ok(None)
        }
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), DevError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// The dev health listener (`/healthz`, `/readyz`, `/metrics` without a certificate): the API's port + 1 on the
/// same host when that port is free, else any free port (the start prints the address it got).
pub fn dev_health_listen(listen: &str) -> String {
    let Some((host, port)) = listen.rsplit_once(':') else { return "127.0.0.1:0".into() };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && p < u16::MAX => {
            let next = format!("{host}:{}", p + 1);
            if std::net::TcpListener::bind(&next).is_ok() {
                next
            } else {
                format!("{host}:0")
            }
        }
        _ => format!("{host}:0"),
    }
}

/// The dev syslog listener: the API's port + 2 on the same host when that port is free, else any free port.
pub fn dev_syslog_listen(listen: &str) -> String {
    let Some((host, port)) = listen.rsplit_once(':') else { return "127.0.0.1:0".into() };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && p < u16::MAX - 1 => {
            let next = format!("{host}:{}", p + 2);
            if std::net::TcpListener::bind(&next).is_ok() {
                next
            } else {
                format!("{host}:0")
            }
        }
        _ => format!("{host}:0"),
    }
}

/// The dev console line: the console built in this checkout (`console/build.sh` → `target/console-web`), when
/// `dev` runs from the repository and it is built; otherwise the packaged default.
fn dev_console_line() -> String {
    let built = std::env::current_dir()
        .map(|d| d.join("target/console-web"))
        .ok()
        .filter(|d| d.join("index.html").is_file());
    match built {
        Some(dir) => format!("console_dir = \"{}\"\n", dir.display()),
        None => {
            "# console_dir: the auditor's console at /console/ once console/build.sh has run (restart dev)\n"
                .into()
        }
    }
}

pub(crate) fn dev_config(state: &Path, listen: &str) -> String {
    let s = state.display();
    let health = dev_health_listen(listen);
    let syslog = dev_syslog_listen(listen);
    let console = dev_console_line();
    format!(
        r#"# Generated by `anchorlog dev` on every start; edit hsm-config/anchorlog.example.toml for production.
origin = "anchorlog.dev/local"

[server]
listen = "{listen}"
# /healthz, /readyz and /metrics without a client certificate (a load balancer, a Prometheus scraper).
health_listen = "{health}"
# Syslog over mutual TLS (RFC 5425, octet-counted) with the producer certificate; into source "syslog".
syslog_listen = "{syslog}"
cert_file = "{s}/certs/server.pem"
key_file = "{s}/certs/server.key"
client_ca_files = ["{s}/certs/ca.pem"]
{console}
[storage]
database = "{s}/anchorlog.db"

[signer]
backend = "pkcs11"

[signer.pkcs11]
module = "{SOFTHSM_MODULE}"
token_label = "{DEV_TOKEN_LABEL}"
key_label = "{DEV_KEY_LABEL}"
pin_file = "{s}/secrets/pin"

[[principal]]
name = "dev-producer"
roles = ["producer"]
identities = ["dns:producer.anchorlog.dev"]

[[principal]]
name = "dev-auditor"
roles = ["auditor"]
identities = ["dns:auditor.anchorlog.dev"]

[[principal]]
name = "dev-admin"
roles = ["admin", "auditor"]
identities = ["dns:admin.anchorlog.dev"]

# One source per format, posted to with the producer certificate: https://{listen}/v1/sources/NAME/events
[[source]]
name = "keycloak"
format = "keycloak"
principals = ["dev-producer"]

[[source]]
name = "okta"
format = "okta"
principals = ["dev-producer"]

[[source]]
name = "auth0"
format = "auth0"
principals = ["dev-producer"]

[[source]]
name = "json"
format = "json"
principals = ["dev-producer"]

# rsyslog / syslog-ng over TLS to syslog_listen (docs/INTEGRATIONS.md, "Syslog").
[[source]]
name = "syslog"
format = "syslog"
principals = ["dev-producer"]
"#
    )
}

/// Writes a dev CA and server/producer/auditor/admin certificates (ECDSA P-256) into `dir`.
pub fn write_dev_pki(dir: &Path) -> Result<(), DevError> {
    let pki = generate_pki(&[
        ("producer", "producer.anchorlog.dev"),
        ("auditor", "auditor.anchorlog.dev"),
        ("admin", "admin.anchorlog.dev"),
    ])?;
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).map_err(io_err(dir))?;
    write_private(&dir.join("ca.key"), pki.ca_key_pem.as_bytes())?;
    std::fs::write(dir.join("server.pem"), &pki.server_pem).map_err(io_err(dir))?;
    write_private(&dir.join("server.key"), pki.server_key_pem.as_bytes())?;
    for (name, cert, key) in &pki.clients {
        std::fs::write(dir.join(format!("{name}.pem")), cert).map_err(io_err(dir))?;
        write_private(&dir.join(format!("{name}.key")), key.as_bytes())?;
    }
    Ok(())
}

/// PEM material of a generated PKI.
pub struct Pki {
    /// CA certificate.
    pub ca_pem: String,
    /// CA private key.
    pub ca_key_pem: String,
    /// Server certificate (SAN localhost, 127.0.0.1, ::1).
    pub server_pem: String,
    /// Server key.
    pub server_key_pem: String,
    /// (file stem, certificate, key) per client.
    pub clients: Vec<(String, String, String)>,
}

/// Generates a CA, a server certificate and one client certificate per `(stem, dns name)`.
pub fn generate_pki(clients: &[(&str, &str)]) -> Result<Pki, DevError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let err = |e: rcgen::Error| DevError::Certificate(e.to_string());
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "anchorlog dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let leaf =
        |cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose| -> Result<(String, String), DevError> {
            let key = KeyPair::generate().map_err(err)?;
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = sans;
            p.extended_key_usages = vec![eku];
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let cert = p.signed_by(&key, &ca, &ca_key).map_err(err)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
    let dns = |n: &str| -> Result<SanType, DevError> {
        Ok(SanType::DnsName(n.try_into().map_err(|e: rcgen::Error| DevError::Certificate(e.to_string()))?))
    };
    let (server_pem, server_key_pem) = leaf(
        "localhost",
        vec![
            dns("localhost")?,
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let mut out = Vec::new();
    for (stem, name) in clients {
        let (c, k) = leaf(name, vec![dns(name)?], ExtendedKeyUsagePurpose::ClientAuth)?;
        out.push((stem.to_string(), c, k));
    }
    Ok(Pki { ca_pem: ca.pem(), ca_key_pem: ca_key.serialize_pem(), server_pem, server_key_pem, clients: out })
}

/// The ready-to-paste curl command that posts one event to a dev instance.
pub fn curl_example(state_dir: &Path, listen: &str) -> String {
    let d = state_dir.display();
    format!(
        "curl --cacert {d}/certs/ca.pem --cert {d}/certs/producer.pem --key {d}/certs/producer.key \\\n  \
         -H 'content-type: application/json' -d '{{\"type\":\"LOGIN\",\"user\":\"alice\",\"outcome\":\"success\"}}' \\\n  \
         https://{listen}/v1/events\n  \
         native IdP payloads: https://{listen}/v1/sources/{{keycloak,okta,auth0,json}}/events (same certificate)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_has_one_mtls_source_per_format() {
        let config = Config::parse(&dev_config(Path::new("/var/lib/anchorlog-dev"), DEV_LISTEN)).unwrap();
        let sources: Vec<_> = config
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.format.as_str(), s.principals.clone()))
            .collect();
        let producer = vec!["dev-producer".to_string()];
        assert_eq!(
            sources,
            vec![
                ("keycloak", "keycloak", producer.clone()),
                ("okta", "okta", producer.clone()),
                ("auth0", "auth0", producer.clone()),
                ("json", "json", producer.clone()),
                ("syslog", "syslog", producer),
            ]
        );
    }
}
