//! Test helpers: a real OpenSSL TSA (`softhsm-tests/tsa/make-tsa.sh` + `openssl ts -reply`) for the
//! verification tests here and, through the `testutil` feature, the appliance's client tests (which put the HTTP
//! shim in front of it: `src/tsa/testutil.rs`). Test-only and native-only (it runs processes); nothing here is
//! mocked.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `make-tsa.sh` lives (`softhsm-tests/tsa/` of the workspace, beside this crate).
pub(crate) const HARNESS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../softhsm-tests/tsa");

/// A TSA created by `make-tsa.sh` in a temporary directory (deleted on drop).
pub struct TestTsa {
    dir: tempfile::TempDir,
}

impl TestTsa {
    /// Runs `make-tsa.sh DIR ARGS...`.
    pub fn new(args: &[&str]) -> Self {
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
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tsa.cnf`.
    pub fn config(&self) -> PathBuf {
        self.path().join("tsa.cnf")
    }

    /// The root CA certificate (PEM).
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path().join("ca.pem")).unwrap()
    }

    /// `openssl ts -reply` for a DER request; returns the DER TimeStampResp.
    pub fn reply(&self, request_der: &[u8]) -> Vec<u8> {
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
    pub fn token_of(&self, resp_der: &[u8]) -> Vec<u8> {
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
    pub fn cms_sign_token(&self, tst_info_der: &[u8]) -> Vec<u8> {
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
    pub fn openssl_verify(&self, message: &[u8], resp_der: &[u8]) -> (bool, String) {
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
