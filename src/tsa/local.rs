//! The local RFC 3161 TSA of `anchorlog dev`: the test harness's `make-tsa.sh` and `tsa_http.py`
//! (embedded in the binary) run `openssl ts -reply` behind an HTTP responder on 127.0.0.1.
//!
//! Everything lives under one directory (`DIR/tsa/` in dev mode): the scripts, `ca/` with the CA and TSA
//! certificates (created once, reused afterwards) and `tsa_http.log`. The responder exits when this process
//! does: it watches its stdin, a pipe only this process holds open.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MAKE_TSA: &str = include_str!("../../softhsm-tests/tsa/make-tsa.sh");
const TSA_HTTP: &str = include_str!("../../softhsm-tests/tsa/tsa_http.py");

/// A running local TSA.
#[derive(Debug, Clone)]
pub struct LocalTsa {
    /// `http://127.0.0.1:PORT/tsa`.
    pub url: String,
    /// Its CA certificate (what `[[tsa]] ca_file` and `verify --tsa-ca` need).
    pub ca_file: PathBuf,
}

/// Why the local TSA could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalTsaError {
    /// A required program is not installed.
    #[error(
        "{0} is not installed (the local TSA needs python3 and openssl; apt-get install python3 openssl)"
    )]
    Missing(&'static str),
    /// A file could not be written or a program not run.
    #[error("{path}: {source}")]
    Io {
        /// The file or program.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `make-tsa.sh` failed.
    #[error("creating the TSA certificates failed: {0}")]
    MakeTsa(String),
    /// The responder did not report a port.
    #[error("the TSA responder did not start; see {0}")]
    NoPort(PathBuf),
}

fn in_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Creates the TSA under `dir` on first use and starts its responder on a free 127.0.0.1 port.
pub fn start(dir: &Path) -> Result<LocalTsa, LocalTsaError> {
    for prog in ["python3", "openssl", "bash"] {
        if !in_path(prog) {
            return Err(LocalTsaError::Missing(prog));
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalTsaError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (make, http) = (dir.join("make-tsa.sh"), dir.join("tsa_http.py"));
    std::fs::write(&make, MAKE_TSA).map_err(io(&make))?;
    std::fs::write(&http, TSA_HTTP).map_err(io(&http))?;
    let ca_dir = dir.join("ca");
    if !ca_dir.join("tsa.cnf").exists() {
        let out = Command::new("bash").arg(&make).arg(&ca_dir).output().map_err(io(&make))?;
        if !out.status.success() {
            return Err(LocalTsaError::MakeTsa(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
    }
    let log_path = dir.join("tsa_http.log");
    let log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
    let mut child = Command::new("python3")
        .arg(&http)
        .arg("--config")
        .arg(ca_dir.join("tsa.cnf"))
        .args(["--port", "0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(io(&http))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let Ok(port) = line.trim().parse::<u16>() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LocalTsaError::NoPort(log_path));
    };
    // Keep the write end of its stdin open for the life of this process: when the process ends (even
    // killed), the pipe closes and the responder exits.
    std::mem::forget(child.stdin.take());
    Ok(LocalTsa { url: format!("http://127.0.0.1:{port}/tsa"), ca_file: ca_dir.join("ca.pem") })
}
