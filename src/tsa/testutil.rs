//! Test helpers for the client: the core's real OpenSSL TSA (`anchorlog_core::tsa::testutil::TestTsa`, made by
//! `softhsm-tests/tsa/make-tsa.sh`) behind the HTTP shim (`softhsm-tests/tsa/tsa_http.py`). Test-only; nothing
//! here is mocked.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Where `tsa_http.py` lives (`softhsm-tests/tsa/` of the crate).
pub(crate) const HARNESS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/tsa");

pub(crate) use anchorlog_core::tsa::testutil::TestTsa;

/// `tsa_http.py` serving a [`TestTsa`] on 127.0.0.1 (killed on drop).
pub(crate) struct Shim {
    child: Child,
    port: u16,
}

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

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
