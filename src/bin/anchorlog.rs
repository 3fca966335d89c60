//! The `anchorlog` command: a thin edge over the library (anyhow lives only here).
//!
//! Exit codes: 0 success; 1 error (bad config, device or I/O failure); 2 usage error (clap);
//! 3 `verify` found the log invalid (or `verify-attestation` the attestation), or `serve` refused to start because the stored log does not verify.

use anchorlog::config::Config;
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code when a log does not verify.
const EXIT_INVALID: u8 = 3;

#[derive(Parser)]
#[command(name = "anchorlog", version, about = "Hardware-anchored audit log appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance with a configuration file.
    #[cfg(feature = "server")]
    Serve {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete local appliance (SoftHSM token, dev CA and certificates, config), created on first run.
    #[cfg(all(feature = "server", feature = "pkcs11"))]
    Dev {
        /// Directory for all dev state (created if missing, reused afterwards).
        #[arg(long, default_value = "./anchorlog-dev")]
        state_dir: PathBuf,
        /// Listen address of the mTLS API.
        #[arg(long, default_value = anchorlog::dev::DEV_LISTEN)]
        listen: String,
        /// Which device signs heads: a SoftHSM token, or a TPM 2.0 simulated by swtpm (state under DIR/tpm/).
        #[arg(long, value_enum, default_value_t = DevSigner::Softhsm)]
        signer: DevSigner,
    },
    /// Manage the head-signing key in the HSM.
    #[cfg(feature = "server")]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Copy a SQLite log into an empty PostgreSQL database and prove the copy: the source and the copy are both
    /// walked under the given keys, and their heads must be equal byte for byte (docs/HA.md, "Moving a log").
    /// Exit codes: 0 copied and proven, 1 error (nothing committed), 3 the source or the copy does not verify.
    #[cfg(feature = "postgres")]
    Migrate {
        /// The SQLite log: `sqlite:PATH` or a path (opened read-only; stop the appliance first).
        #[arg(long)]
        from: String,
        /// The PostgreSQL database, reached as its owner role: `postgres://OWNER@HOST:PORT/DATABASE`.
        #[arg(long)]
        to: String,
        /// A file holding the owner role's password.
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// TLS to the server, its certificate verified against these CA certificates (PEM).
        #[arg(long)]
        to_ca: Option<PathBuf>,
        /// The application role the appliance will run as: granted its privileges (docs/HA.md, "Roles").
        #[arg(long)]
        grant_app: Option<String>,
        /// The signer's public key or certificate (PEM), as for `verify`. Repeatable.
        #[arg(long, required_unless_present = "keyring")]
        key: Vec<PathBuf>,
        /// A keyring file, as for `verify`.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a database or an export bundle offline: every leaf, root, chain link and signature.
    Verify {
        /// An export bundle (tar) to verify instead of a database.
        #[arg(conflicts_with = "db", required_unless_present = "db")]
        bundle: Option<PathBuf>,
        /// The SQLite database (opened read-only), or a PostgreSQL log: `postgres://ROLE@HOST:PORT/DATABASE`
        /// (a role that may read the log tables; docs/HA.md).
        #[arg(long)]
        db: Option<PathBuf>,
        /// With a PostgreSQL --db: a file holding the role's password (never in the URL or the command line).
        #[arg(long, requires = "db")]
        db_password_file: Option<PathBuf>,
        /// With a PostgreSQL --db: TLS to the server, its certificate verified against these CA certificates (PEM).
        #[arg(long, requires = "db")]
        db_ca: Option<PathBuf>,
        /// The signer's public key or certificate (PEM): the key the log started with; later keys follow from
        /// its key rotation records. Repeatable: the chain may then start with any of them.
        #[arg(long, required_unless_present = "keyring")]
        key: Vec<PathBuf>,
        /// A keyring: a file of PEM public keys or certificates (one block each), every one of which may sign
        /// any head, as the nodes of an active/standby pair each sign with their own key (docs/FORMAT.md §20).
        /// With --key too, those keys join the ring. The report lists which key signed which heads.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// The log's origin: every head must carry it. Default: the one the key's certificate names, else the
        /// database's (or bundle manifest's) own; the report prints which.
        #[arg(long)]
        origin: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tsa: TsaArgs,
        /// With --db: evidence from `anchorlog keys attest` holding a certified reading of the TPM's head
        /// counter; the database must reach it (it is the newest copy, up to the documented slack).
        #[arg(long, requires = "db", requires = "nonce")]
        counter_attestation: Option<PathBuf>,
        /// The nonce (hex) the counter attestation was made for.
        #[arg(long, requires = "counter_attestation")]
        nonce: Option<String>,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Check a TPM key attestation (from `keys attest`) offline against the signer's public key and nonce.
    VerifyAttestation {
        /// The attestation file (JSON) written by `anchorlog keys attest`.
        file: PathBuf,
        /// The head signer's public key or certificate (PEM), e.g. signer.pem.
        #[arg(long)]
        key: PathBuf,
        /// The nonce (hex) the attestation must have been made for.
        #[arg(long)]
        nonce: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a receipt (GET /v1/events/{seq}/receipt) offline: entry, payload, signature, inclusion proof.
    VerifyReceipt {
        /// The receipt (JSON).
        file: PathBuf,
        /// The signer's public key or certificate (PEM): a key of the log (its first one will do: the receipt
        /// carries the key rotations since). Repeatable.
        #[arg(long, required_unless_present = "keyring")]
        key: Vec<PathBuf>,
        /// A keyring: a file of PEM public keys or certificates, the signing keys of the log's nodes; the head may
        /// be signed by any of them (or a key a rotation brought in), each node's rotations followed on its own.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// The log's origin: the receipt's head must carry it. Default: the one the key's certificate names,
        /// else the receipt's own (printed).
        #[arg(long)]
        origin: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tsa: TsaArgs,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Monitor a live appliance: check the latest head's signature and its consistency with the head seen on
    /// the previous run (state file). Exit codes: 0 ok, 1 error, 3 bad head, 4 rollback, 5 fork, 6 bad proof,
    /// 7 stale (the latest head is older than --max-age), 8 below the witness quorum (--witness).
    #[cfg(feature = "server")]
    Audit {
        /// Appliance URL, `https://host:port`.
        #[arg(long)]
        url: String,
        /// Auditor client certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// CA certificate of the appliance's server certificate.
        #[arg(long)]
        ca: PathBuf,
        /// The head signer's public key or certificate (PEM): the auditor's trusted copy.
        #[arg(long, required_unless_present = "keyring")]
        signer: Option<PathBuf>,
        /// A keyring: a file of PEM public keys or certificates, the signing keys of the log's nodes; the latest
        /// head may be signed by any of them (with --signer, that key joins the ring), each key's rotations followed.
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// State file (the last head seen); created on the first run.
        #[arg(long)]
        state: PathBuf,
        /// The log's origin; default: the one the --signer certificate names, else the first head seen.
        #[arg(long)]
        origin: Option<String>,
        /// Fail (exit 7) when the latest head is older than this, e.g. 5m: the log stopped advancing.
        #[arg(long, value_parser = anchorlog::monitor::parse_duration)]
        max_age: Option<std::time::Duration>,
        /// Fail (exit 1) when the run has not finished within this time, e.g. 30s: a hung appliance or network
        /// must raise the alarm, not stall the monitor.
        #[arg(long, value_parser = anchorlog::monitor::parse_duration, default_value = "60s")]
        timeout: std::time::Duration,
        #[command(flatten)]
        witnesses: WitnessArgs,
    },
    /// Write an export bundle (tar) of heads FROM..=TO from a database, verifiable offline on its own.
    Export {
        /// The SQLite database (opened read-only).
        #[arg(long)]
        db: PathBuf,
        /// First head height (default 0).
        #[arg(long, default_value_t = 0)]
        from_height: u64,
        /// Last head height, inclusive (default: the latest head).
        #[arg(long)]
        to_height: Option<u64>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// The signer's public key, if the database does not hold it (it does once the appliance has run).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Check a configuration and every file it names (TLS key and certificates, client CAs, secret files and
    /// their modes, TSA CAs, the database's origin and schema) without writing anything; exit 1 naming the
    /// first problem.
    CheckConfig {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Also open the signer (HSM or TPM) and read its public key.
        #[arg(long)]
        signer: bool,
    },
    /// Run a transparency-log witness (c2sp.org/tlog-witness): cosign the configured logs' checkpoints that are
    /// consistent with what it saw before. `witness keygen` creates its key and prints the vkey.
    #[cfg(feature = "server")]
    #[command(args_conflicts_with_subcommands = true)]
    Witness {
        #[command(subcommand)]
        command: Option<WitnessCommand>,
        /// Path of the witness TOML configuration (see hsm-config/witness.example.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// End-to-end load generator over mTLS (see docs/PERFORMANCE.md).
    #[cfg(feature = "server")]
    Bench(anchorlog::bench::BenchArgs),
}

/// How `verify` and `verify-receipt` check RFC 3161 tokens.
#[derive(clap::Args)]
struct TsaArgs {
    /// TSA CA certificate(s), PEM: check every head's RFC 3161 token against them, and the time they tell.
    #[arg(long)]
    tsa_ca: Option<PathBuf>,
    /// With --tsa-ca: a head without a token is a failure (otherwise it is reported).
    #[arg(long, requires = "tsa_ca")]
    require_timestamps: bool,
    /// With --tsa-ca: how much earlier than the seal time a token's genTime may be, in seconds.
    #[arg(long, default_value_t = anchorlog::config::DEFAULT_TIMESTAMP_MAX_SKEW_S, requires = "tsa_ca")]
    tsa_max_skew_s: u64,
    /// With --tsa-ca: the longest a token may come after its head's seal time, in seconds, unless the log
    /// records a timestamping outage around that head (a later token means a backdated or rewritten head).
    #[arg(
        long,
        default_value_t = anchorlog_core::verify::timestamps::DEFAULT_MAX_TIMESTAMP_DELAY_S,
        requires = "tsa_ca"
    )]
    max_timestamp_delay: u64,
}

impl TsaArgs {
    /// The token policy, or `None` without --tsa-ca.
    fn policy(&self) -> anyhow::Result<Option<anchorlog_core::verify::timestamps::TimestampPolicy>> {
        let Some(ca) = &self.tsa_ca else { return Ok(None) };
        let pem = std::fs::read(ca).with_context(|| format!("reading TSA CA {}", ca.display()))?;
        let anchors = anchorlog_core::tsa::TrustAnchors::from_pem(&pem)
            .with_context(|| format!("parsing TSA CA {}", ca.display()))?;
        Ok(Some(anchorlog_core::verify::timestamps::TimestampPolicy {
            anchors,
            max_skew: std::time::Duration::from_secs(self.tsa_max_skew_s),
            require: self.require_timestamps,
            max_delay: std::time::Duration::from_secs(self.max_timestamp_delay),
        }))
    }
}

/// Which witnesses' cosignatures `verify`, `verify-receipt` and `audit` demand.
#[derive(clap::Args)]
struct WitnessArgs {
    /// A witness whose cosignatures count: its vkey (`name+keyid+key`, as `anchorlog witness keygen` prints it)
    /// or a file holding it. Repeatable. Lines of other keys are ignored; a listed witness's line that does not
    /// verify fails the verification.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// How many distinct listed witnesses must have cosigned the newest head relied on (the last head of the
    /// database or bundle, the receipt's head). Default: every listed witness.
    #[arg(long, value_name = "K", requires = "witnesses")]
    witness_quorum: Option<usize>,
}

impl WitnessArgs {
    /// The cosignature policy, or `None` without --witness.
    fn policy(&self) -> anyhow::Result<Option<anchorlog_core::verify::witnesses::WitnessPolicy>> {
        if self.witnesses.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(self.witnesses.len());
        for arg in &self.witnesses {
            let path = Path::new(arg);
            let text = if path.is_file() {
                std::fs::read_to_string(path).with_context(|| format!("reading witness vkey {arg}"))?
            } else {
                arg.clone()
            };
            keys.push(
                anchorlog_core::note::VerifierKey::parse(text.trim())
                    .with_context(|| format!("--witness {arg}: not a vkey, nor a file holding one"))?,
            );
        }
        let policy = anchorlog_core::verify::witnesses::WitnessPolicy::new(keys, self.witness_quorum)
            .map_err(|e| anyhow::anyhow!("--witness/--witness-quorum: {e}"))?;
        Ok(Some(policy))
    }
}

/// The signing device of `anchorlog dev`.
#[cfg(all(feature = "server", feature = "pkcs11"))]
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DevSigner {
    /// A SoftHSM2 token under DIR/softhsm/.
    Softhsm,
    /// A TPM 2.0 (swtpm) whose state lives under DIR/tpm/.
    Tpm,
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
enum WitnessCommand {
    /// Create the cosigning key ([key]: a new key file, mode 0600, or an Ed25519 key pair in the token) and
    /// print the witness's vkey for log operators and verifiers.
    Keygen {
        /// Path of the witness TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the vkey of the configured cosigning key.
    Vkey {
        /// Path of the witness TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
enum KeysCommand {
    /// Create the signing key inside the device (EC P-256, sensitive, never extractable).
    Generate {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Create the key in the TPM named by [signer.tpm] (persisted at its handle), whatever
        /// signer.backend says; with signer.tpm.counter_index, also the head counter.
        #[arg(long)]
        tpm: bool,
        /// Create only the TPM head counter (signer.tpm.counter_index) for a key that exists already.
        #[arg(long, requires = "tpm")]
        counter_only: bool,
    },
    /// Have the TPM certify the signing key with an attestation key (TPM2_Certify) over a nonce.
    Attest {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Nonce chosen by the verifier (hex, at most 64 bytes).
        #[arg(long)]
        nonce: String,
        /// Output file (JSON evidence for `anchorlog verify-attestation`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the public key (signer.pem) and a certificate signed by the device key (signer.crt).
    Export {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Print the key's attributes as the device reports them (JSON).
    Show {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a new signing key in the same device and prepare its rotation: the appliance's next start with the
    /// new key configured records the rotation in the log (docs/FORMAT.md §20). Prints what to do next.
    Rotate {
        /// Path of the TOML configuration (naming the log's current key).
        #[arg(long)]
        config: PathBuf,
        /// Why the key is rotated (recorded in the log, 1 to 1024 bytes).
        #[arg(long)]
        reason: String,
        /// PKCS#11: the label of the new key pair.
        #[arg(long, conflicts_with = "new_handle")]
        new_key_label: Option<String>,
        /// TPM: the persistent handle of the new key, e.g. 0x81010011.
        #[arg(long, value_parser = parse_tpm_handle)]
        new_handle: Option<u32>,
        /// TPM: a fresh head counter for the new key's heads at this NV index (default: they continue the
        /// configured counter).
        #[arg(long, value_parser = parse_tpm_handle, requires = "new_handle")]
        new_counter_index: Option<u32>,
    },
    /// Write a PKCS#10 certificate signing request for the configured key, signed inside the HSM/TPM, for an
    /// organisation's CA to issue signer.crt (check it with `openssl req -verify -in FILE -noout`).
    Csr {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Output file (PEM).
        #[arg(long)]
        out: PathBuf,
        /// Subject as an RFC 4514 name, e.g. "CN=anchorlog head signer,O=Example Corp" (default: CN=anchorlog
        /// head signer). The request always asks for the log's origin as a subjectAltName URI.
        #[arg(long)]
        subject: Option<String>,
    },
}

/// A TPM handle or NV index: hex with or without `0x`.
#[cfg(feature = "server")]
fn parse_tpm_handle(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    u32::from_str_radix(digits, 16).map_err(|_| format!("{text:?} is not a hex handle such as 0x81010011"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if refused_to_serve(&e) {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether `serve` refused to start because the stored log does not verify.
fn refused_to_serve(e: &anyhow::Error) -> bool {
    #[cfg(feature = "server")]
    {
        use anchorlog::rotation::RotationError;
        use anchorlog::server::ServeError;
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<ServeError>(),
                Some(ServeError::Reconciliation { .. } | ServeError::Keys(RotationError::KeyMismatch { .. }))
            )
        })
    }
    #[cfg(not(feature = "server"))]
    {
        let _ = e;
        false
    }
}

#[cfg(not(feature = "server"))]
fn init_logging() {}

#[cfg(feature = "server")]
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ANCHORLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // cryptoki logs every vendor mechanism it has no name for at ERROR level while listing mechanisms;
    // that is noise, not an error of ours.
    let filter = match "cryptoki::mechanism=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // tss-esapi logs every failed TPM command at ERROR before returning it; the TPM backend turns those into
    // one clear error of its own (or retries), so its lines would only be misleading duplicates.
    let filter = match "tss_esapi=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // journald and SIEMs read one event per line: ANSI colour only on a terminal, and JSON on request
    // (`ANCHORLOG_LOG_FORMAT=json`: one object per line with stable field names `timestamp`, `level`,
    // `target`, `fields.message`, and each event's own fields).
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match std::env::var("ANCHORLOG_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().flatten_event(false).with_current_span(false).init(),
        Ok("text") | Err(_) => builder.init(),
        Ok(other) => {
            builder.init();
            tracing::warn!(value = other, "ANCHORLOG_LOG_FORMAT is neither json nor text; logging as text");
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        #[cfg(feature = "server")]
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            serve(config, None)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(all(feature = "server", feature = "pkcs11"))]
        #[cfg(feature = "tpm")]
        Command::Dev { state_dir, listen, signer: DevSigner::Tpm } => {
            anchorlog::dev_tpm::ensure_packages()?;
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            // Dropped (and so stopped, if this process started it) after `serve` returns or fails.
            let swtpm = anchorlog::dev_tpm::DevSwtpm::start_or_reuse(&state_dir)?;
            let config_path = anchorlog::dev_tpm::prepare(&state_dir, &listen, &swtpm.tcti())?;
            // Stopped when dropped, after `serve` returns or fails (like the swtpm).
            let witness = anchorlog::dev::start_witness(&state_dir, &config_path)?;
            let config = Config::load(&config_path)?;
            let banner = format!(
                "anchorlog dev (TPM 2.0 via {tcti}): config {cfg}\n  signer public key: {dir}/keys/signer.pem\n  post an event:\n{curl}\n",
                tcti = swtpm.tcti(),
                cfg = config_path.display(),
                dir = state_dir.display(),
                curl = anchorlog::dev::curl_example(&state_dir, &listen)
            );
            serve(config, Some(banner))?;
            drop(witness);
            drop(swtpm);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(all(feature = "server", feature = "pkcs11", not(feature = "tpm")))]
        Command::Dev { signer: DevSigner::Tpm, .. } => {
            anyhow::bail!("this build has no TPM backend (cargo feature `tpm`); use --signer softhsm")
        }
        #[cfg(all(feature = "server", feature = "pkcs11"))]
        Command::Dev { state_dir, listen, signer: DevSigner::Softhsm } => {
            anchorlog::dev::ensure_packages()?;
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            // SoftHSM reads SOFTHSM2_CONF when the module initializes; set it now, while this process is still
            // single-threaded (no runtime, no signer thread yet), so it names the dev token directory.
            std::env::set_var("SOFTHSM2_CONF", anchorlog::dev::softhsm_conf_path(&state_dir));
            // The local witness stops when `setup` drops, after `serve` returns or fails.
            let setup = anchorlog::dev::prepare(&state_dir, &listen)?;
            let config = Config::load(&setup.config_path)?;
            let witness = match &setup.witness {
                Some(w) => format!(
                    "  witness: {url} (vkey in {dir}/keys/witness.vkey): heads are cosigned\n  verify with the \
                     quorum: anchorlog verify --db {dir}/anchorlog.db --key {dir}/keys/signer.pem --witness \
                     {dir}/keys/witness.vkey\n",
                    url = w.url(),
                    dir = state_dir.display()
                ),
                None => "  witness: none (it did not start; see the log)\n".into(),
            };
            let banner = format!(
                "anchorlog dev: config {cfg}\n  signer public key: {dir}/keys/signer.pem\n{witness}  post an event:\n{curl}\n",
                cfg = setup.config_path.display(),
                dir = state_dir.display(),
                curl = anchorlog::dev::curl_example(&state_dir, &listen)
            );
            serve(config, Some(banner))?;
            drop(setup);
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "server")]
        Command::Keys { command } => keys(command),
        Command::Verify {
            bundle,
            db,
            db_password_file,
            db_ca,
            key,
            keyring,
            origin,
            json,
            tsa,
            counter_attestation,
            nonce,
            witnesses,
        } => {
            let counter = match (counter_attestation, nonce) {
                (Some(file), Some(nonce)) => Some((file, parse_nonce(&nonce)?)),
                _ => None,
            };
            let checks = Checks { tsa: &tsa, counter: counter.as_ref(), witnesses: &witnesses };
            let signers = Signers { keys: &key, keyring: keyring.as_deref() };
            #[cfg(feature = "postgres")]
            if let Some(url) =
                db.as_deref().and_then(|d| d.to_str()).filter(|d| anchorlog::verify::pg::is_postgres_url(d))
            {
                let target =
                    PgTarget { url, password_file: db_password_file.as_deref(), ca: db_ca.as_deref() };
                return verify_postgres(&target, &signers, origin, json, &checks);
            }
            if db
                .as_deref()
                .and_then(|d| d.to_str())
                .is_some_and(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"))
            {
                anyhow::bail!(
                    "--db names a PostgreSQL database, but this build has no PostgreSQL support (cargo feature \
                     `postgres`, in the default build and the Debian package)"
                );
            }
            if db_password_file.is_some() || db_ca.is_some() {
                anyhow::bail!("--db-password-file and --db-ca apply to a PostgreSQL --db (postgres://…)");
            }
            verify(bundle.as_deref(), db.as_deref(), &signers, origin, json, &checks)
        }
        Command::VerifyReceipt { file, key, keyring, origin, json, tsa, witnesses } => {
            let signers = Signers { keys: &key, keyring: keyring.as_deref() };
            verify_receipt(&file, &signers, origin, json, &tsa, &witnesses)
        }
        #[cfg(feature = "server")]
        Command::Audit {
            url,
            cert,
            key,
            ca,
            signer,
            keyring,
            state,
            origin,
            max_age,
            timeout,
            witnesses,
        } => {
            let signers = Signers { keys: signer.as_slice(), keyring: keyring.as_deref() };
            let (mut keys, ring) = signers.read()?;
            // The same key given twice (--signer and in the ring) is one key.
            let mut seen = std::collections::HashSet::new();
            keys.retain(|k| seen.insert(k.key_id.clone()));
            let Some(signer) = keys.first().cloned() else { anyhow::bail!("give --signer or --keyring") };
            let target = anchorlog::monitor::Target { url, ca, cert, key, timeout };
            let expect = anchorlog::monitor::Expect {
                origin: origin.or(keys.iter().find_map(|k| k.certified_origin.clone())),
                max_age,
                witnesses: witnesses.policy()?,
                keyring: if ring { keys } else { Vec::new() },
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match rt.block_on(anchorlog::monitor::run(&target, &signer, &state, &expect)) {
                Ok(outcome) => {
                    println!("{}", serde_json::to_string(&outcome)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!(
                        "{}",
                        serde_json::json!({"outcome": "failed", "error": e.to_string(), "exit_code": e.exit_code()})
                    );
                    eprintln!("audit: {e}");
                    Ok(ExitCode::from(e.exit_code()))
                }
            }
        }
        #[cfg(feature = "postgres")]
        Command::Migrate { from, to, to_password_file, to_ca, grant_app, key, keyring, json } => {
            let signers = Signers { keys: &key, keyring: keyring.as_deref() };
            let target =
                PgTarget { url: &to, password_file: to_password_file.as_deref(), ca: to_ca.as_deref() };
            migrate(
                from.strip_prefix("sqlite:").unwrap_or(&from).as_ref(),
                &target,
                grant_app.as_deref(),
                &signers,
                json,
            )
        }
        Command::Export { db, from_height, to_height, out, key } => {
            export(&db, from_height, to_height, &out, key.as_deref())
        }

        Command::VerifyAttestation { file, key, nonce, json } => {
            verify_attestation(&file, &key, &nonce, json)
        }
        Command::CheckConfig { config, signer } => check_config(&config, signer),
        #[cfg(feature = "server")]
        Command::Witness { command, config } => witness(command, config),
        #[cfg(feature = "server")]
        Command::Bench(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(anchorlog::bench::run(args))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `check-config`: what `serve` loads before its first write, loaded and checked; nothing written.
#[cfg(feature = "server")]
fn check_config(path: &Path, open_signer: bool) -> anyhow::Result<ExitCode> {
    use anchorlog::preflight::{self, DatabaseState};
    let config = Config::load(path)?;
    let loaded = preflight::load(&config)?;
    println!("{}: OK", path.display());
    println!("  origin:   {}", config.origin);
    println!(
        "  tls:      server certificate and key, {} client CA file(s)",
        config.server.client_ca_files.len()
    );
    println!(
        "  sources:  {} ({} with a secret)",
        config.sources.len(),
        config.sources.iter().filter(|s| s.secret_file.is_some()).count()
    );
    match &loaded.timestamping {
        Some(t) => println!("  tsa:      {} TSA(s), CA files read", t.tsas.len()),
        None => println!("  tsa:      none configured: heads get no RFC 3161 token"),
    }
    #[cfg(feature = "postgres")]
    if config.storage.backend == anchorlog::config::StorageBackend::Postgres {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (events, heads) = runtime.block_on(anchorlog::pg_serve::check_database(&config))?;
        let url = config.storage.url.as_deref().unwrap_or_default();
        println!("  database: PostgreSQL {url} ({events} events, {heads} heads)");
        return check_signer(&config, open_signer);
    }
    match preflight::check_database(&config)? {
        DatabaseState::New => {
            println!("  database: {} does not exist yet; serve creates it", config.storage.database.display())
        }
        DatabaseState::Existing { events, heads } => {
            println!("  database: {} ({events} events, {heads} heads)", config.storage.database.display())
        }
    }
    check_signer(&config, open_signer)
}

/// `check-config --signer`: opens the signer and names its key.
#[cfg(feature = "server")]
fn check_signer(config: &Config, open_signer: bool) -> anyhow::Result<ExitCode> {
    if open_signer {
        let signer = anchorlog::keys::open(config)?;
        let key = anchorlog_core::key::PublicKey::from_spki_der(&signer.public_key_spki_der())?;
        println!("  signer:   {} (key id {})", signer.describe(), key.key_id);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "server"))]
fn check_config(path: &Path, open_signer: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!open_signer, "this build has no signer backends; --signer needs the appliance build");
    Config::load(path)?;
    println!("{}: OK (the verify-only build checks the TOML only)", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "server")]
fn serve(config: Config, banner: Option<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let service = anchorlog::server::Service::start(config).await?;
        // Before the listening line: from then on a SIGTERM means a clean stop.
        let shutdown = anchorlog::server::shutdown_signal();
        if let Some(addr) = service.local_addr() {
            // One line on stdout that scripts (and the test harness) can wait for.
            println!("anchorlog listening on https://{addr}");
        }
        if let Some(addr) = service.source_addr() {
            // Second line, only when server.source_listen is set (secret-authenticated sources).
            println!("anchorlog source listener on https://{addr}");
        }
        if let Some(addr) = service.syslog_addr() {
            // Only when server.syslog_listen is set: syslog over mutual TLS (RFC 5425).
            println!("anchorlog syslog listener on tls://{addr}");
        }
        if let Some(addr) = service.health_addr() {
            // Last, only when server.health_listen is set: /healthz, /readyz, /metrics without a certificate.
            println!("anchorlog health listener on http://{addr}");
        }
        if let Some(b) = banner {
            println!("{b}");
        }
        service.run(shutdown).await?;
        anyhow::Ok(())
    })
}

#[cfg(feature = "server")]
fn witness(command: Option<WitnessCommand>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use anchorlog::witness::config::WitnessConfig;
    match (command, config) {
        (Some(WitnessCommand::Keygen { config }), _) => {
            let config = WitnessConfig::load(&config)?;
            println!("{}", anchorlog::witness::key::keygen(&config)?);
        }
        (Some(WitnessCommand::Vkey { config }), _) => {
            let config = WitnessConfig::load(&config)?;
            let key = anchorlog::witness::key::CosignerKey::open(&config)?;
            println!("{}", key.vkey(&config.name)?);
        }
        (None, Some(config)) => {
            let config = WitnessConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let service = anchorlog::witness::http::WitnessService::start(config).await?;
                if let Some(addr) = service.local_addr() {
                    // Lines on stdout that scripts (and the tests) can wait for.
                    println!("anchorlog witness listening on {}://{addr}", service.scheme());
                    println!("anchorlog witness vkey {}", service.vkey());
                }
                service.run(anchorlog::server::shutdown_signal()).await;
                anyhow::Ok(())
            })?;
        }
        (None, None) => {
            anyhow::bail!("give --config FILE to run the witness, or a subcommand (keygen, vkey)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "server")]
fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { config, tpm, counter_only } => {
            let config = Config::load(&config)?;
            let what = if counter_only {
                anchorlog::keys::Generate::CounterOnly
            } else {
                anchorlog::keys::Generate::KeyAndCounter
            };
            let attrs = anchorlog::keys::generate(&config, tpm, what)?;
            println!("{}", serde_json::to_string_pretty(&attrs)?);
        }
        KeysCommand::Attest { config, nonce, out } => {
            let config = Config::load(&config)?;
            let nonce = parse_nonce(&nonce)?;
            let att = anchorlog::keys::attest(&config, &nonce)?;
            let text = serde_json::to_string_pretty(&att)? + "\n";
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            let unused_counter =
                config.signer.tpm.as_ref().and_then(|t| t.counter_index).filter(|_| att.counter.is_none());
            println!(
                "wrote the attestation of TPM key {:#010x}{} to {} (EK certificate {}){}",
                att.key_handle,
                match &att.counter {
                    Some(c) => format!(" and of head counter {:#010x}", c.nv_index),
                    None => String::new(),
                },
                out.display(),
                if att.ek_certificate.is_some() { "included" } else { "not provisioned in this TPM" },
                match unused_counter {
                    Some(i) => format!("; head counter {:#010x} not certified: no head carries it yet", i.0),
                    None => String::new(),
                }
            );
        }
        KeysCommand::Export { config, out_dir } => {
            let config = Config::load(&config)?;
            let mut signer = anchorlog::keys::open(&config)?;
            let key_id = anchorlog::keys::export(signer.as_mut(), &config.origin, &out_dir)?;
            println!("key id {key_id}: wrote {0}/signer.pem and {0}/signer.crt", out_dir.display());
        }
        KeysCommand::Show { config } => {
            let config = Config::load(&config)?;
            println!("{}", serde_json::to_string_pretty(&anchorlog::keys::show(&config)?)?);
        }
        KeysCommand::Rotate { config, reason, new_key_label, new_handle, new_counter_index } => {
            let config = Config::load(&config)?;
            let new = anchorlog::keys::NewKey {
                key_label: new_key_label,
                handle: new_handle,
                counter_index: new_counter_index,
            };
            println!("{}", serde_json::to_string_pretty(&anchorlog::keys::rotate(&config, &reason, &new)?)?);
        }
        KeysCommand::Csr { config, out, subject } => {
            let config = Config::load(&config)?;
            let mut signer = anchorlog::keys::open(&config)?;
            let key_id = anchorlog::keys::csr(signer.as_mut(), &config.origin, subject.as_deref(), &out)?;
            println!("key id {key_id}: wrote the certificate signing request {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_key(key: &Path) -> anyhow::Result<anchorlog_core::key::PublicKey> {
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading key {}", key.display()))?;
    anchorlog_core::key::PublicKey::from_pem(&pem).with_context(|| format!("parsing key {}", key.display()))
}

/// Reads every `--key`.
fn read_keys(keys: &[PathBuf]) -> anyhow::Result<Vec<anchorlog_core::key::PublicKey>> {
    keys.iter().map(|k| read_key(k)).collect()
}

/// Reads a keyring file: every PEM block is one signer key (a public key or a certificate).
fn read_keyring(path: &Path) -> anyhow::Result<Vec<anchorlog_core::key::PublicKey>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading keyring {}", path.display()))?;
    let blocks = anchorlog_core::key::pem_blocks(&text);
    if blocks.is_empty() {
        anyhow::bail!(
            "keyring {} holds no PEM block: give the signer keys of the log's nodes as PEM public keys or \
             certificates, one after another",
            path.display()
        );
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            anchorlog_core::key::PublicKey::from_pem(block)
                .with_context(|| format!("keyring {}: key {} of {}", path.display(), i + 1, blocks.len()))
        })
        .collect()
}

/// The signer keys `verify` is given: `--key` files, and a `--keyring` file that makes them all a keyring.
struct Signers<'a> {
    keys: &'a [PathBuf],
    keyring: Option<&'a Path>,
}

impl Signers<'_> {
    /// Every key, `--key` first, and whether they are a keyring.
    fn read(&self) -> anyhow::Result<(Vec<anchorlog_core::key::PublicKey>, bool)> {
        let mut keys = read_keys(self.keys)?;
        if let Some(ring) = self.keyring {
            keys.extend(read_keyring(ring)?);
        }
        Ok((keys, self.keyring.is_some()))
    }
}

/// Where the origin every head is checked against came from: `--origin`, else the first given certificate's.
fn pinned_origin(
    given: Option<String>,
    keys: &[anchorlog_core::key::PublicKey],
) -> (Option<String>, &'static str) {
    match (given, keys.iter().find_map(|k| k.certified_origin.clone())) {
        (Some(o), _) => (Some(o), "--origin"),
        (None, Some(o)) => (Some(o), "the key's certificate"),
        (None, None) => (None, "the log itself"),
    }
}

/// What `verify` checks beyond the events and heads: tokens, the TPM counter attestation, witnesses.
struct Checks<'a> {
    tsa: &'a TsaArgs,
    /// `--counter-attestation` file and its nonce.
    counter: Option<&'a (PathBuf, Vec<u8>)>,
    witnesses: &'a WitnessArgs,
}

/// A PostgreSQL database to verify or migrate into: its URL and how to reach it.
#[cfg(feature = "postgres")]
struct PgTarget<'a> {
    url: &'a str,
    password_file: Option<&'a Path>,
    ca: Option<&'a Path>,
}

#[cfg(feature = "postgres")]
impl PgTarget<'_> {
    /// The connection settings: the password read from its file, TLS when a CA is given.
    fn connect(&self) -> anyhow::Result<anchorlog::store::pg::PgConnect> {
        let mut connect = anchorlog::store::pg::PgConnect::plain(self.url);
        if let Some(file) = self.password_file {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            connect.password = Some(text.trim_end_matches(['\r', '\n']).to_string());
        }
        if let Some(ca) = self.ca {
            use rustls_pki_types::pem::PemObject as _;
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let roots = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: not PEM certificates: {e}", ca.display()))?;
            connect.tls = anchorlog::store::pg::PgTls::Require { roots };
        }
        Ok(connect)
    }
}

/// `anchorlog migrate`: verify the SQLite source, copy it ([`anchorlog::store::pg::copy`]), verify the copy, and
/// compare their heads.
#[cfg(feature = "postgres")]
fn migrate(
    source: &Path,
    target: &PgTarget<'_>,
    app_role: Option<&str>,
    signers: &Signers<'_>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use anchorlog_core::verify::{VerifyError, WalkOptions};
    let started = std::time::Instant::now();
    let (keys, keyring) = signers.read()?;
    let invalid = |what: &str, e: VerifyError| -> anyhow::Result<ExitCode> {
        match e {
            VerifyError::Invalid(failure) => {
                let (kind, at) = failure.location();
                Ok(report_invalid(json, &format!("{what}: {failure}"), kind, at))
            }
            other => Err(anyhow::anyhow!("{what}: {other}")),
        }
    };
    let conn = anchorlog::store::open_reader(source)?;
    // One read snapshot for the source's verification, the copy and the comparison: were an appliance still
    // writing to it, all three see the same log (stop it first all the same: docs/HA.md).
    conn.execute_batch("BEGIN")?;
    let opts = || WalkOptions { keyring, ..WalkOptions::default() };
    let source_report = match anchorlog::verify::verify_database_with(&conn, &keys, opts()) {
        Ok(r) => r,
        Err(e) => return invalid("the source does not verify; nothing was copied", e),
    };
    let connect = target.connect()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let copied = rt.block_on(anchorlog::store::pg::copy::copy_sqlite_log(&conn, &connect, app_role))?;
    drop(rt);
    let copy_report = match anchorlog::verify::pg::verify_postgres(&connect, &keys, opts(), None) {
        Ok((r, _)) => r,
        Err(e) => return invalid("the copy does not verify (it is committed: drop the database)", e),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let copy_heads = rt.block_on(async {
        let client = anchorlog::store::pg::connect(&connect).await?;
        anchorlog::store::pg::read::heads_from(&client, 0).await
    })?;
    if copy_heads != anchorlog::store::all_heads(&conn)? {
        anyhow::bail!("the copy's heads differ from the source's (it is committed: drop the database)");
    }
    conn.execute_batch("COMMIT")?;
    let rows: serde_json::Map<String, serde_json::Value> =
        copied.iter().map(|(table, n)| (table.to_string(), serde_json::json!(n))).collect();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "copied": rows, "events": copy_report.events, "heads": copy_report.heads,
                "erased": copy_report.erased, "last_checkpoint": copy_report.last_checkpoint,
                "source_heads": source_report.heads, "seconds": seconds})
        );
    } else {
        println!(
            "OK: copied {} events and {} heads in {seconds:.1} s; the copy verifies and its heads equal the source's",
            copy_report.events, copy_report.heads
        );
        for (table, n) in &copied {
            println!("  {table}: {n} rows");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `verify --db postgres://…`: the walk over a PostgreSQL log (events, heads, erasures, the stored tree). Tokens,
/// cosignatures and counter attestations are checked on SQLite databases and bundles only, so far: asking for them
/// here is an error rather than a silent skip.
#[cfg(feature = "postgres")]
fn verify_postgres(
    target: &PgTarget<'_>,
    signers: &Signers<'_>,
    origin: Option<String>,
    json: bool,
    checks: &Checks<'_>,
) -> anyhow::Result<ExitCode> {
    if !checks.witnesses.witnesses.is_empty() || checks.counter.is_some() {
        anyhow::bail!(
            "a PostgreSQL log is verified for its events, heads, erasures, stored tree and time-stamp tokens; its \
             cosignatures and counter attestation are not checked yet: drop --witness and --counter-attestation, \
             or export a bundle (anchorlog export) and verify that"
        );
    }
    let policy = checks.tsa.policy()?;
    let (keys, keyring) = signers.read()?;
    let (origin, origin_from) = pinned_origin(origin, &keys);
    let connect = target.connect()?;
    let opts =
        anchorlog_core::verify::WalkOptions { origin: origin.as_deref(), keyring, ..Default::default() };
    match anchorlog::verify::pg::verify_postgres(&connect, &keys, opts, policy.as_ref()) {
        Ok((report, stamps)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "report": report, "origin_from": origin_from, "timestamps": stamps})
                );
            } else {
                print_report(&report, origin_from);
                if let Some(s) = &stamps {
                    print_timestamps(s, &report.timestamping_outages);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(anchorlog_core::verify::VerifyError::Invalid(failure)) => {
            let (kind, at) = failure.location();
            Ok(report_invalid(json, &failure.to_string(), kind, at))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

fn verify(
    bundle: Option<&Path>,
    db: Option<&Path>,
    signers: &Signers<'_>,
    origin: Option<String>,
    json: bool,
    checks: &Checks<'_>,
) -> anyhow::Result<ExitCode> {
    use anchorlog_core::verify::{Failure, VerifyError};
    let Checks { tsa, counter, witnesses } = *checks;
    let (keys, keyring) = signers.read()?;
    let (origin, origin_from) = pinned_origin(origin, &keys);
    let origin = origin.as_deref();
    let policy = tsa.policy()?;
    let witness_policy = witnesses.policy()?;
    // On a terminal, a bundle's verification shows how far it has come (as export does); never in a pipe.
    let terminal = {
        use std::io::IsTerminal as _;
        std::io::stderr().is_terminal()
    };
    let shown = std::cell::Cell::new(false);
    let mut progress = |done: u64| {
        if terminal {
            eprint!("\rverifying: {done} events");
            shown.set(true);
        }
    };
    let result = match (bundle, db) {
        (Some(bundle), _) => anchorlog::bundle::verify_bundle_progress(
            bundle,
            &keys,
            keyring,
            origin,
            policy.as_ref(),
            witness_policy.as_ref(),
            &mut progress,
        )
        .map(|b| {
            let value = serde_json::json!({"ok": true, "report": b.report, "manifest": b.manifest,
                "origin_from": origin_from, "tokens_present": b.tokens_present, "timestamps": b.timestamps,
                "notes_present": b.notes_present, "witnesses": b.witnesses});
            (b.report, value, b.timestamps, b.witnesses)
        }),
        (None, Some(db)) => {
            let conn = anchorlog::store::open_reader(db)?;
            let opts = anchorlog_core::verify::WalkOptions { origin, keyring, ..Default::default() };
            anchorlog::verify::verify_database_with(&conn, &keys, opts).and_then(|report| {
                let stamps = match &policy {
                    Some(p) => Some(anchorlog::verify::timestamps::verify_timestamps(
                        &conn,
                        p,
                        &report.timestamping_outages,
                    )?),
                    None => None,
                };
                let cosigned = match (&witness_policy, report.heads.checked_sub(1)) {
                    (Some(p), Some(last)) => {
                        Some(anchorlog::verify::witnesses::verify_database_cosignatures(&conn, p, last)?)
                    }
                    (Some(p), None) => {
                        return Err(Failure::BelowWitnessQuorum {
                            height: 0,
                            have: 0,
                            need: p.quorum,
                            cosigned_by: Vec::new(),
                        }
                        .into())
                    }
                    (None, _) => None,
                };
                let value = serde_json::json!({"ok": true, "report": report, "origin_from": origin_from,
                    "timestamps": stamps, "witnesses": cosigned});
                Ok((report, value, stamps, cosigned))
            })
        }
        (None, None) => anyhow::bail!("give a bundle file or --db"),
    };
    if shown.get() {
        eprintln!();
    }
    match result {
        Ok((report, mut value, stamps, cosigned)) => {
            let attested = match counter {
                Some((file, nonce)) => {
                    use anchorlog_core::verify::counter::{check_attested, CounterCheckError};
                    let att = read_attestation(file)?;
                    // The attestation certifies the key the chain holds now (after any rotation).
                    let Some(current) = report.current_key.as_ref() else {
                        anyhow::bail!(
                            "the database holds no signed head: nothing to check the counter against"
                        )
                    };
                    match check_attested(&report, &att, current, nonce) {
                        Ok(a) => Some(a),
                        Err(CounterCheckError::Invalid(failure)) => {
                            let (kind, at) = failure.location();
                            return Ok(report_invalid(json, &failure.to_string(), kind, at));
                        }
                        Err(e @ CounterCheckError::Attestation(_)) => {
                            if json {
                                println!("{}", serde_json::json!({"ok": false, "failure": e.to_string()}));
                            } else {
                                println!("FAILED: {e}");
                            }
                            return Ok(ExitCode::from(EXIT_INVALID));
                        }
                    }
                }
                None => None,
            };
            if json {
                if let Some(a) = &attested {
                    value["counter_attestation"] = serde_json::to_value(a)?;
                }
                println!("{value}");
            } else {
                print_report(&report, origin_from);
                if let Some(s) = &stamps {
                    print_timestamps(s, &report.timestamping_outages);
                }
                if let Some(a) = &attested {
                    print_attested_counter(a);
                }
                if let Some(w) = &cosigned {
                    print_witnesses(w);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Invalid(failure)) => {
            let (kind, at) = failure.location();
            Ok(report_invalid(json, &failure.to_string(), kind, at))
        }
        Err(e) => Err(e.into()),
    }
}

fn parse_nonce(hex_text: &str) -> anyhow::Result<Vec<u8>> {
    hex::decode(hex_text.trim())
        .with_context(|| format!("--nonce {hex_text:?} is not hex (e.g. --nonce $(openssl rand -hex 32))"))
}

fn read_attestation(file: &Path) -> anyhow::Result<anchorlog_core::attestation::KeyAttestation> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a key attestation from `anchorlog keys attest`", file.display()))
}

fn print_attested_counter(a: &anchorlog_core::verify::counter::AttestedCounter) {
    println!(
        "  counter:  the database reaches the TPM's head counter {}: last head height {} carries {}, the TPM \
         certified {} (reset count {}) for this nonce",
        a.index, a.last_height, a.last_counter, a.attested_value, a.attested_reset_count
    );
    println!(
        "            index name {}; {}; attestation key name {} (pin it)",
        a.index_name,
        if a.delete_needs_platform {
            "only the platform hierarchy can delete the index"
        } else {
            "the owner can delete the index (see docs/TPM.md)"
        },
        a.ak_name
    );
}

fn verify_attestation(file: &Path, key: &Path, nonce: &str, json: bool) -> anyhow::Result<ExitCode> {
    use anchorlog_core::attestation::{verify_attestation, verify_counter_attestation};
    let nonce = parse_nonce(nonce)?;
    let att = read_attestation(file)?;
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading key {}", key.display()))?;
    let key = anchorlog_core::key::PublicKey::from_pem(&pem)
        .with_context(|| format!("parsing key {}", key.display()))?;
    let verified = match att.counter {
        Some(_) => verify_counter_attestation(&att, &key.spki_der, &nonce).map(|(r, c)| (r, Some(c))),
        None => verify_attestation(&att, &key.spki_der, &nonce).map(|r| (r, None)),
    };
    match verified {
        Ok((r, counter)) => {
            let a = &r.key_attributes;
            if json {
                let report = serde_json::json!({
                    "key_id": key.key_id,
                    "key_name": hex::encode(&r.key_name),
                    "key_attributes": a,
                    "ak_name": hex::encode(&r.ak_name),
                    "ek_certificate_present": r.ek_certificate_present,
                    "firmware_version": format!("{:#018x}", r.firmware_version),
                    "counter": counter.as_ref().map(|c| serde_json::json!({
                        "index": format!("{:#010x}", c.index),
                        "index_name": hex::encode(&c.index_name),
                        "value": c.value,
                        "reset_count": c.clock.reset_count,
                        "attributes": c.attributes,
                        "delete_needs_platform": c.delete_needs_platform,
                    })),
                });
                println!("{}", serde_json::json!({"ok": true, "report": report}));
            } else {
                println!("OK: the TPM certified signing key {} for this nonce", key.key_id);
                println!("  key name: {}", hex::encode(&r.key_name));
                println!(
                    "  attributes: fixedTPM={} fixedParent={} sensitiveDataOrigin={} sign={} decrypt={}",
                    a.fixed_tpm, a.fixed_parent, a.sensitive_data_origin, a.sign, a.decrypt
                );
                println!("  attestation key name: {}", hex::encode(&r.ak_name));
                println!(
                    "  EK certificate: {}",
                    if r.ek_certificate_present { "included, NOT validated here" } else { "absent" }
                );
                if let Some(c) = &counter {
                    println!(
                        "  head counter: NV {:#010x} = {} (reset count {}), name {}, orderly={}, {}",
                        c.index,
                        c.value,
                        c.clock.reset_count,
                        hex::encode(&c.index_name),
                        c.attributes.orderly,
                        if c.delete_needs_platform {
                            "deletable only with platform authorisation"
                        } else {
                            "deletable by the owner"
                        }
                    );
                }
                println!(
                    "  note: this does not show that the attestation key belongs to a genuine hardware TPM \
                     (see docs/TPM.md)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "failure": e.to_string()}));
            } else {
                println!("FAILED: {e}");
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
    }
}

fn print_timestamps(
    s: &anchorlog_core::verify::timestamps::TimestampReport,
    outages: &[anchorlog_core::verify::OutageWindow],
) {
    println!(
        "  tokens:   {} verified (RFC 3161), genTime {} .. {}",
        s.verified,
        s.first_gen_time.as_deref().unwrap_or("-"),
        s.last_gen_time.as_deref().unwrap_or("-")
    );
    if let Some(d) = s.max_delay {
        println!(
            "  largest delay from seal to token: {:.3} s (head height {})",
            d.delay_ms as f64 / 1000.0,
            d.height
        );
    }
    let time = |ms: i64| anchorlog_core::head::format_time_ms(ms).unwrap_or_else(|_| ms.to_string());
    for w in outages {
        match w.end_ms {
            Some(end) => println!(
                "  timestamping outage recorded: {} .. {} ({} s)",
                time(w.since_ms),
                time(end),
                (end - w.since_ms) / 1000
            ),
            None => println!("  timestamping outage recorded: since {}, still open", time(w.since_ms)),
        }
    }
    if s.late_in_outage_count > 0 {
        let listed: Vec<String> = s.late_in_outage.iter().map(u64::to_string).collect();
        let more = if s.late_in_outage_count as usize > s.late_in_outage.len() { ", …" } else { "" };
        println!(
            "  late tokens excused by a recorded outage: {} heads (heights {}{more})",
            s.late_in_outage_count,
            listed.join(", ")
        );
    }
    if s.missing_count > 0 {
        let listed: Vec<String> = s.missing.iter().map(u64::to_string).collect();
        let more = if s.missing_count as usize > s.missing.len() { ", …" } else { "" };
        println!(
            "  untimestamped: {} heads have no token yet (heights {}{more})",
            s.missing_count,
            listed.join(", ")
        );
    }
}

fn print_witnesses(w: &anchorlog_core::verify::witnesses::WitnessReport) {
    let by: Vec<String> =
        w.newest_cosigned_by.iter().map(|c| format!("{} (time {})", c.witness, c.timestamp)).collect();
    println!(
        "  witnesses: head height {} cosigned by {} of the {} required: {}",
        w.newest_height,
        w.newest_cosigned_by.len(),
        w.quorum,
        by.join(", ")
    );
    for t in &w.witnesses {
        match (t.first_height, t.last_height) {
            (Some(first), Some(last)) => {
                println!("    {}: cosigned {} heads, heights {first} .. {last}", t.witness, t.heads)
            }
            _ => println!("    {}: cosigned no head", t.witness),
        }
    }
    if w.unlisted_lines > 0 {
        println!("    {} cosignature lines of unlisted keys ignored", w.unlisted_lines);
    }
}

fn verify_receipt(
    file: &Path,
    signers: &Signers<'_>,
    origin: Option<String>,
    json: bool,
    tsa: &TsaArgs,
    witnesses: &WitnessArgs,
) -> anyhow::Result<ExitCode> {
    let (keys, keyring) = signers.read()?;
    let (origin, origin_from) = pinned_origin(origin, &keys);
    let policy = tsa.policy()?;
    let witness_policy = witnesses.policy()?;
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let receipt: anchorlog_core::receipt::Receipt =
        serde_json::from_slice(&text).with_context(|| format!("parsing receipt {}", file.display()))?;
    let verify =
        if keyring { anchorlog_core::receipt::verify_keyring } else { anchorlog_core::receipt::verify_keys };
    match verify(&receipt, &keys, origin.as_deref(), policy.as_ref(), witness_policy.as_ref()) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "report": r, "origin_from": origin_from}));
            } else {
                println!(
                    "OK: event seq {} is in {} at head height {} (tree size {}){}",
                    r.seq,
                    r.origin,
                    r.height,
                    r.tree_size,
                    if r.erased { "; its payload was erased" } else { "" }
                );
                println!("  origin:   {} (from {origin_from})", r.origin);
                if !r.rotations.is_empty() {
                    println!(
                        "  key:      {} (the head's; the receipt carries the key rotations to it)",
                        r.key_id
                    );
                    print_rotations(&r.rotations);
                }
                if let Some(s) = &r.timestamp {
                    print_timestamps(s, &[]);
                }
                if let Some(w) = &r.witnesses {
                    print_witnesses(w);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            let (kind, at) = failure.location();
            Ok(report_invalid(json, &failure.to_string(), kind, at))
        }
    }
}

fn export(db: &Path, from: u64, to: Option<u64>, out: &Path, key: Option<&Path>) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let key = key.map(read_key).transpose()?;
    let conn = anchorlog::store::open_reader(db)?;
    let to = match to {
        Some(to) => to,
        None => anchorlog::store::last_head(&conn)?
            .map(|h| h.height)
            .ok_or_else(|| anyhow::anyhow!("{} holds no signed head yet: nothing to export", db.display()))?,
    };
    let partial = out.with_extension("partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |done: u64, total: u64| {
        if terminal {
            eprint!("\rexporting: {done}/{total} events");
        }
    };
    let writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let manifest = anchorlog::bundle::export(&conn, from, to, key.as_ref(), writer, &mut progress);
    if terminal {
        eprintln!();
    }
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))?;
    println!(
        "wrote {}: heads {}..={}, events {}..{}",
        out.display(),
        manifest.from_height,
        manifest.to_height,
        manifest.first_seq,
        manifest.end_seq
    );
    Ok(ExitCode::SUCCESS)
}

/// Prints why a log, bundle or receipt does not verify (naming the seq or height) and returns exit code 3.
fn report_invalid(json: bool, failure: &str, kind: &str, at: u64) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({"ok": false, "failure": failure, kind: at}));
    } else {
        println!("FAILED: {failure}");
    }
    ExitCode::from(EXIT_INVALID)
}

fn print_report(r: &anchorlog_core::verify::Report, origin_from: &str) {
    let ns_time = |ns: Option<u64>| {
        ns.and_then(|n| anchorlog_core::head::format_time_ms((n / 1_000_000) as i64).ok())
            .unwrap_or_else(|| "-".into())
    };
    let ms_time = |ms: Option<i64>| {
        ms.and_then(|m| anchorlog_core::head::format_time_ms(m).ok()).unwrap_or_else(|| "-".into())
    };
    println!("OK: log verified with key {}", r.key_id);
    print_rotations(&r.rotations);
    // One line per run of heads when more than one key signed (a keyring's nodes, or a rotation).
    if r.signers.len() > 1 {
        for run in &r.signers {
            println!(
                "  signer:   heads {}..={} signed by key {}",
                run.from_height, run.to_height, run.key_id
            );
        }
    }
    if let Some(seq) = r.unsealed_rotation {
        println!("  key rotation record at event seq {seq} is not covered by a head yet (it takes effect once sealed)");
    }
    println!("  origin:   {} (every head; from {origin_from})", r.origin);
    println!(
        "  events:   {} ({} erased), received {} .. {}",
        r.events,
        r.erased,
        ns_time(r.first_received_ns),
        ns_time(r.last_received_ns)
    );
    println!(
        "  heads:    {}, sealed {} .. {}",
        r.heads,
        ms_time(r.first_sealed_ms),
        ms_time(r.last_sealed_ms)
    );
    if r.unsealed_events > 0 {
        println!(
            "  unsealed: {} events after the last head (not yet covered by a signature)",
            r.unsealed_events
        );
    }
    let a = &r.appliance;
    println!(
        "  appliance: {} starts ({} after a run that ended without a stop record), {} stops, {} outages \
         ({} ended), {} refused access ({} more counted in {} summaries), {} audit accesses, {} erasures, {} witness \
         refusals, {} self-verifications, {} clock jumps",
        a.starts,
        a.starts_after_unclean_end,
        a.stops,
        a.outages_started,
        a.outages_ended,
        a.access_denied,
        a.access_denied_suppressed,
        a.access_denied_summaries,
        a.audit_access,
        a.erasures,
        a.witness_refusals,
        a.self_verifications,
        a.clock_jumps
    );
}

/// One line per key rotation the chain followed.
fn print_rotations(rotations: &[anchorlog_core::verify::keys::RotationReport]) {
    for r in rotations {
        println!(
            "  rotation: after head height {} (key rotation record at event seq {}): key {} -> {}, reason {:?}{}",
            r.height,
            r.seq,
            r.old_key_id,
            r.new_key_id,
            r.reason,
            r.new_counter_index.as_deref().map(|i| format!(", TPM counter {i}")).unwrap_or_default()
        );
    }
}
