//! A real local RFC 3161 TSA per test: `tsa/make-tsa.sh` creates the CA and TSA certificates and the
//! `openssl ts -reply` config in a temp dir; `tsa/tsa_http.py` serves it over HTTP on 127.0.0.1. The shim
//! is killed on drop. Fault modes (`set_mode`) are the only test doubles; see the header of tsa_http.py.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `softhsm-tests/tsa/` of this crate.
pub const TSA_HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/softhsm-tests/tsa");

/// A TSA's files (and, while started, its HTTP shim).
pub struct LocalTsa {
    dir: tempfile::TempDir,
    /// A second TSA under a CA of the same name, used by the `alt` (untrusted CA) fault mode.
    alt: tempfile::TempDir,
    child: Option<Child>,
    /// The port the shim listens (or will listen) on.
    pub port: u16,
    /// While the shim is down, a socket bound to `port` but not listening: connections are refused (the
    /// TSA is down), yet no other listener started meanwhile (the appliance under test) can get the port.
    /// Released only once the shim listens; both set SO_REUSEADDR, which Linux allows while the holder
    /// does not listen.
    reservation: Option<socket2::Socket>,
}

/// A port that is free now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A socket bound to 127.0.0.1:`port` (0: any free port) that never listens, with SO_REUSEADDR.
fn reserve_port(port: u16) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    Ok(socket)
}

fn reserved_port(socket: &socket2::Socket) -> u16 {
    socket.local_addr().unwrap().as_socket().unwrap().port()
}

fn make_tsa(dir: &Path, args: &[&str]) {
    let out = Command::new("bash")
        .arg(Path::new(TSA_HARNESS).join("make-tsa.sh"))
        .arg(dir)
        .args(args)
        .output()
        .expect("bash runs make-tsa.sh");
    assert!(out.status.success(), "make-tsa.sh: {}", String::from_utf8_lossy(&out.stderr));
}

impl LocalTsa {
    /// Creates the TSA (`make-tsa.sh ARGS`) without starting it; `port` is reserved for a later `start`.
    pub fn create(args: &[&str]) -> LocalTsa {
        let dir = tempfile::tempdir().unwrap();
        make_tsa(dir.path(), args);
        let alt = tempfile::tempdir().unwrap();
        make_tsa(alt.path(), &[]);
        let reservation = reserve_port(0).unwrap();
        LocalTsa { dir, alt, child: None, port: reserved_port(&reservation), reservation: Some(reservation) }
    }

    /// Creates and starts a TSA.
    pub fn start_new(args: &[&str]) -> LocalTsa {
        let mut t = Self::create(args);
        t.start();
        t
    }

    /// Starts the shim on `self.port` and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new("python3")
            .arg(Path::new(TSA_HARNESS).join("tsa_http.py"))
            .arg("--config")
            .arg(self.dir.path().join("tsa.cnf"))
            .arg("--alt-config")
            .arg(self.alt.path().join("tsa.cnf"))
            .args(["--port", &self.port.to_string(), "--sleep", "5", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tsa_http.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), self.port.to_string(), "shim listens on the reserved port");
        self.child = Some(child);
        self.reservation = None;
    }

    /// Kills the shim (the TSA is down until `start`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // Hold the port again while down; if something else took it meanwhile, the test still sees
            // the TSA down, only without the guarantee.
            self.reservation = reserve_port(self.port).ok();
        }
    }

    /// `http://127.0.0.1:PORT/tsa`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/tsa", self.port)
    }

    /// The CA certificate tokens chain to.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A `[[tsa]]` entry for the appliance config.
    pub fn config_entry(&self, timeout_ms: u64) -> String {
        format!(
            "[[tsa]]\nurl = \"{}\"\nca_file = \"{}\"\ntimeout_ms = {timeout_ms}\n",
            self.url(),
            self.ca_pem().display()
        )
    }

    /// Switches the fault mode (`ok`, `http500`, `garbage`, `sleep`, `wrongimprint`, `wrongnonce`, `noeku`,
    /// `alt`, ...).
    pub fn set_mode(&self, mode: &str) {
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

impl Drop for LocalTsa {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `[timestamping]` with fast retries for tests.
pub fn fast_retries() -> String {
    "[timestamping]\nretry_initial_ms = 200\nretry_max_ms = 800\n".to_string()
}
