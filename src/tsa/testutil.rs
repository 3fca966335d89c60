//! Test helpers: a real OpenSSL TSA (`softhsm-tests/tsa/make-tsa.sh` + `openssl ts -reply`) and the
//! HTTP shim (`softhsm-tests/tsa/tsa_http.py`). Test-only; nothing here is mocked.

use std::path::{Path, PathBuf};
use std::process::Command;
#[cfg(feature = "server")]
use std::process::{Child, Stdio};

/// Where `make-tsa.sh` and `tsa_http.py` live (`softhsm-tests/tsa/` of the crate).
pub(crate) const HARNESS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/tsa");

/// A TSA created by `make-tsa.sh` in a temporary directory (deleted on drop).
pub(crate) struct TestTsa {
    dir: tempfile::TempDir,
}

impl TestTsa {
    /// Runs `make-tsa.sh DIR ARGS...`.
    pub(crate) fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(Path::new(HARNESS_DIR).join("make-tsa.sh"))
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "make-tsa.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        TestTsa { dir }
    }

    /// The TSA's directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tsa.cnf`.
    pub(crate) fn config(&self) -> PathBuf {
        self.path().join("tsa.cnf")
    }

    /// The root CA certificate (PEM).
    pub(crate) fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path().join("ca.pem")).unwrap()
    }

    /// `openssl ts -reply` for a DER request; returns the DER TimeStampResp.
    pub(crate) fn reply(&self, request_der: &[u8]) -> Vec<u8> {
        let work = tempfile::tempdir().unwrap();
        let (q, r) = (work.path().join("q.tsq"), work.path().join("r.tsr"));
        std::fs::write(&q, request_der).unwrap();
        let out = Command::new("openssl")
            .args(["ts", "-reply", "-config"])
            .arg(self.config())
            .arg("-queryfile")
            .arg(&q)
            .arg("-out")
            .arg(&r)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl ts -reply: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&r).unwrap()
    }

    /// `openssl ts -reply -token_out`: the bare token (ContentInfo) of a response.
    pub(crate) fn token_of(&self, resp_der: &[u8]) -> Vec<u8> {
        let work = tempfile::tempdir().unwrap();
        let (r, t) = (work.path().join("r.tsr"), work.path().join("t.tst"));
        std::fs::write(&r, resp_der).unwrap();
        let out = Command::new("openssl")
            .args(["ts", "-reply", "-in"])
            .arg(&r)
            .args(["-token_out", "-out"])
            .arg(&t)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&t).unwrap()
    }

    /// Signs a TSTInfo with this directory's `tsa.pem`/`tsa.key` through
    /// `openssl cms -sign -cades` (signingCertificateV2 included); returns the bare token.
    /// Used for certificates `openssl ts -reply` refuses (no or non-critical EKU).
    pub(crate) fn cms_sign_token(&self, tst_info_der: &[u8]) -> Vec<u8> {
        let work = tempfile::tempdir().unwrap();
        let (i, o) = (work.path().join("tst.der"), work.path().join("token.der"));
        std::fs::write(&i, tst_info_der).unwrap();
        let out = Command::new("openssl")
            .current_dir(self.path())
            .args(["cms", "-sign", "-binary", "-nodetach", "-cades", "-nosmimecap"])
            .args(["-econtent_type", "1.2.840.113549.1.9.16.1.4", "-md", "sha256"])
            .args(["-signer", "tsa.pem", "-inkey", "tsa.key", "-outform", "DER", "-in"])
            .arg(&i)
            .arg("-out")
            .arg(&o)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&o).unwrap()
    }

    /// `openssl ts -verify -data MSG -in RESP -CAfile ca.pem`; returns (ok, output).
    pub(crate) fn openssl_verify(&self, message: &[u8], resp_der: &[u8]) -> (bool, String) {
        let work = tempfile::tempdir().unwrap();
        let (m, r) = (work.path().join("msg"), work.path().join("r.tsr"));
        std::fs::write(&m, message).unwrap();
        std::fs::write(&r, resp_der).unwrap();
        let out = Command::new("openssl")
            .args(["ts", "-verify", "-data"])
            .arg(&m)
            .arg("-in")
            .arg(&r)
            .arg("-CAfile")
            .arg(self.path().join("ca.pem"))
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success() && text.contains("Verification: OK"), text)
    }
}

/// `tsa_http.py` serving a [`TestTsa`] on 127.0.0.1 (killed on drop).
#[cfg(feature = "server")]
pub(crate) struct Shim {
    child: Child,
    port: u16,
}

#[cfg(feature = "server")]
impl Shim {
    /// Starts the shim on a free port and waits until it has printed the port.
    pub(crate) fn start(tsa: &TestTsa) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("python3")
            .arg(Path::new(HARNESS_DIR).join("tsa_http.py"))
            .arg("--config")
            .arg(tsa.config())
            .args(["--port", "0", "--sleep", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap();
        Shim { child, port }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Switches the fault mode through the control endpoint (blocking std HTTP).
    pub(crate) fn set_mode(&self, mode: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "POST /_control/mode HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{mode}",
            mode.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    }
}

#[cfg(feature = "server")]
impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
