//! The `anchorlog` command: a thin edge over the library (anyhow lives only here).
//!
//! Exit codes: 0 success; 1 error (bad config, device or I/O failure); 2 usage error (clap);
//! 3 `verify` found the log invalid, or `serve` refused to start because the stored log does not verify.

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
    },
    /// Manage the head-signing key in the HSM.
    #[cfg(feature = "server")]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Verify a database offline: every leaf, root, chain link and signature.
    Verify {
        /// The SQLite database (opened read-only).
        #[arg(long)]
        db: PathBuf,
        /// The signer's public key or certificate (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Expected log origin (checked against every head when given).
        #[arg(long)]
        origin: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// End-to-end load generator over mTLS (see docs/PERFORMANCE.md).
    #[cfg(feature = "server")]
    Bench(anchorlog::bench::BenchArgs),
}

#[cfg(feature = "server")]
#[derive(Subcommand)]
enum KeysCommand {
    /// Create the signing key inside the device (EC P-256, sensitive, never extractable).
    Generate {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
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
        e.chain().any(|c| {
            matches!(
                c.downcast_ref::<anchorlog::server::ServeError>(),
                Some(anchorlog::server::ServeError::Reconciliation { .. })
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
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
        Command::Dev { state_dir, listen } => {
            anchorlog::dev::ensure_packages()?;
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            // SoftHSM reads SOFTHSM2_CONF when the module initializes; set it now, while this process is still
            // single-threaded (no runtime, no signer thread yet), so it names the dev token directory.
            std::env::set_var("SOFTHSM2_CONF", anchorlog::dev::softhsm_conf_path(&state_dir));
            let config_path = anchorlog::dev::prepare(&state_dir, &listen)?;
            let config = Config::load(&config_path)?;
            let banner = format!(
                "anchorlog dev: config {cfg}\n  signer public key: {dir}/keys/signer.pem\n  post an event:\n{curl}\n",
                cfg = config_path.display(),
                dir = state_dir.display(),
                curl = anchorlog::dev::curl_example(&state_dir, &listen)
            );
            serve(config, Some(banner))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "server")]
        Command::Keys { command } => keys(command),
        Command::Verify { db, key, origin, json } => verify(&db, &key, origin.as_deref(), json),
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: OK", config.display());
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "server")]
        Command::Bench(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(anchorlog::bench::run(args))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(feature = "server")]
fn serve(config: Config, banner: Option<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let service = anchorlog::server::Service::start(config).await?;
        if let Some(addr) = service.local_addr() {
            // One line on stdout that scripts (and the test harness) can wait for.
            println!("anchorlog listening on https://{addr}");
        }
        if let Some(addr) = service.source_addr() {
            // Second line, only when server.source_listen is set (secret-authenticated sources).
            println!("anchorlog source listener on https://{addr}");
        }
        if let Some(b) = banner {
            println!("{b}");
        }
        service.run(anchorlog::server::shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

#[cfg(feature = "server")]
fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { config } => {
            let config = Config::load(&config)?;
            let attrs = anchorlog::keys::generate(&config)?;
            println!("{}", serde_json::to_string_pretty(&attrs)?);
        }
        KeysCommand::Export { config, out_dir } => {
            let config = Config::load(&config)?;
            let mut signer = anchorlog::keys::open(&config)?;
            let key_id = anchorlog::keys::export(
                signer.as_mut(),
                &format!("anchorlog head signer {}", config.origin),
                &out_dir,
            )?;
            println!("key id {key_id}: wrote {0}/signer.pem and {0}/signer.crt", out_dir.display());
        }
        KeysCommand::Show { config } => {
            let config = Config::load(&config)?;
            println!("{}", serde_json::to_string_pretty(&anchorlog::keys::show(&config)?)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(db: &Path, key: &Path, origin: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading key {}", key.display()))?;
    let key = anchorlog::signer::PublicKey::from_pem(&pem)
        .with_context(|| format!("parsing key {}", key.display()))?;
    let conn = anchorlog::store::open_reader(db)?;
    match anchorlog::verify::verify_database(&conn, &key, origin) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "report": report}));
            } else {
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(anchorlog::verify::VerifyError::Invalid(failure)) => {
            let (kind, at) = failure.location();
            if json {
                println!("{}", serde_json::json!({"ok": false, "failure": failure.to_string(), kind: at}));
            } else {
                println!("FAILED: {failure}");
            }
            Ok(ExitCode::from(EXIT_INVALID))
        }
        Err(e) => Err(e.into()),
    }
}

fn print_report(r: &anchorlog::verify::Report) {
    let ns_time = |ns: Option<u64>| {
        ns.and_then(|n| anchorlog::ledger::head::format_time_ms((n / 1_000_000) as i64).ok())
            .unwrap_or_else(|| "-".into())
    };
    let ms_time = |ms: Option<i64>| {
        ms.and_then(|m| anchorlog::ledger::head::format_time_ms(m).ok()).unwrap_or_else(|| "-".into())
    };
    println!("OK: log verified with key {}", r.key_id);
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
}
