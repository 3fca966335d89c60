//! A real PostgreSQL 15 server per test (issue 17): `initdb` into a temp dir, `pg_ctl -w start` on a free port
//! of 127.0.0.1 with its unix socket in the same temp dir, `fsync=on`; killed with SIGKILL, restarted, and
//! stopped and removed on drop.
//!
//! initdb and the postmaster refuse to run as root, and tests run as root here and in CI: as root the kit runs
//! every PostgreSQL program as the `postgres` system user the Debian package creates (`runuser -u postgres --`)
//! and hands it the temp dir; as any other user it runs them directly. Authentication is `trust` for TCP from
//! 127.0.0.1 only (the roles under test are real roles, only their passwords are not checked): nothing but the
//! test process can reach the server, and it is gone when the test ends.
//!
//! Every wait is bounded: start and restart by [`START_TIMEOUT`], the exit of a killed postmaster's processes
//! by [`STOP_TIMEOUT`], replication and promotion by [`REPLICATION_TIMEOUT`].
//!
//! Beyond one server: [`PgCluster`] is a primary with a synchronous streaming standby (made with
//! `pg_basebackup -R`), for failover tests (kill -9 the primary, promote the standby); [`PgServer::base_backup`]
//! and [`PgServer::restore`] are PostgreSQL's own backup (`pg_basebackup`, tar format with its WAL) and a restore
//! of it into a new data directory, started as a server of its own.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `pg_ctl start` may take (it waits for the server to accept connections, crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the processes of a killed or stopped server may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a standby may take to stream and become synchronous, and a promotion to finish.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports to try before giving up (another process can take a port between probe and bind).
const PORT_ATTEMPTS: usize = 8;
/// The superuser initdb creates.
pub const SUPERUSER: &str = "postgres";
/// The role standbys and `pg_basebackup` connect as (`REPLICATION`, created by [`PgServer::allow_replication`]).
pub const REPLICATOR: &str = "replicator";

/// A running PostgreSQL server with its own data directory; stopped (immediately) and removed on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    running: bool,
    tls: bool,
}

/// The directory holding `initdb` and `pg_ctl`: Debian's `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`,
/// else the directory of `initdb` on PATH.
pub fn bindir() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("pg_ctl").is_file() && debian.join("initdb").is_file() {
        return debian;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("pg_ctl").is_file() && dir.join("initdb").is_file() {
            return dir;
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL 15 not found (neither /usr/lib/postgresql/15/bin, `pg_config --bindir` nor PATH has initdb and \
         pg_ctl): apt-get install postgresql"
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` system user.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, SUPERUSER]).output().expect("run id");
        assert!(out.status.success(), "no `postgres` system user (apt-get install postgresql creates it)");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// A command running `program` of PostgreSQL's bindir as the `postgres` user when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", SUPERUSER, "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl PgServer {
    /// initdb and start a fresh server on a free port of 127.0.0.1 (`fsync=on`, `synchronous_commit=on`).
    pub fn start() -> PgServer {
        Self::start_inner(None)
    }

    /// [`PgServer::start`] with TLS on (`ssl=on`), its certificate (for `127.0.0.1` and `localhost`) issued by a
    /// throw-away CA, whose certificate is returned (DER) for the client's roots.
    pub fn start_with_tls() -> (PgServer, rustls_pki_types::CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "anchorlog test PostgreSQL CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server certificate");
        let server = Self::start_inner(Some((cert.pem(), key.serialize_pem())));
        (server, ca.der().clone())
    }

    fn start_inner(tls: Option<(String, String)>) -> PgServer {
        let dir = tempfile::Builder::new().prefix("anchorlog-pg-").tempdir().expect("temp dir");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the temp dir to postgres");
        }
        let bin = bindir();
        let data = dir.path().join("data");
        let mut initdb = pg_command(&bin, "initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]);
        run(initdb, "initdb");
        // TCP from 127.0.0.1 only (listen_addresses below); trust, the test process being the only client. The
        // replication lines serve standbys and pg_basebackup (a role with REPLICATION is still needed).
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
        if let Some((cert, key)) = &tls {
            // The server refuses a key file others can read; it reads both as the postgres user.
            use std::os::unix::fs::PermissionsExt as _;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod TLS file");
                if is_root() {
                    let (uid, gid) = postgres_ids();
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown TLS file");
                }
            }
        }
        Self::start_on_free_port(PgServer { dir, bin, port: 0, running: false, tls: tls.is_some() })
    }

    /// Starts `server` (its data directory in place) on the first free port that works.
    fn start_on_free_port(mut server: PgServer) -> PgServer {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.try_start() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start on any of {PORT_ATTEMPTS} ports: {last}");
    }

    /// A temp dir owned by the `postgres` user (when we are root), for a data directory made by a tool.
    fn new_dir(prefix: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
        if is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the temp dir to postgres");
        }
        dir
    }

    /// Runs one SQL statement as the superuser with `psql` over the unix socket; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let mut cmd = pg_command(&self.bin, "psql");
        cmd.arg("-h").arg(self.dir.path()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        let out = run(cmd, &format!("psql -c {sql:?}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates the [`REPLICATOR`] role (`LOGIN REPLICATION`), once: what standbys and `pg_basebackup` use.
    pub fn allow_replication(&self) {
        let exists = self.psql(&format!("SELECT count(*) FROM pg_roles WHERE rolname = '{REPLICATOR}'"));
        if exists == "0" {
            self.psql(&format!("CREATE ROLE {REPLICATOR} LOGIN REPLICATION"));
        }
    }

    /// Polls `sql` (one value) until it returns `want`, for at most `within`; panics naming `what` otherwise.
    pub fn wait_for(&self, sql: &str, want: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{sql}` gave {got:?}, not {want:?}, within {within:?}\nserver log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A streaming standby of this server: `pg_basebackup -R -X stream` into a new data directory, started on its
    /// own free port (`hot_standby` is on: it serves reads). Waits until this server sees it streaming.
    pub fn start_standby(&self) -> PgServer {
        self.allow_replication();
        let dir = Self::new_dir("anchorlog-pg-standby-");
        let mut backup = pg_command(&self.bin, "pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", REPLICATOR, "-D"])
            .arg(dir.path().join("data"))
            .args(["-R", "-X", "stream", "-c", "fast"]);
        run(backup, "pg_basebackup -R (the standby's copy)");
        let standby = Self::start_on_free_port(PgServer {
            dir,
            bin: self.bin.clone(),
            port: 0,
            running: false,
            tls: self.tls,
        });
        self.wait_for(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            "1",
            REPLICATION_TIMEOUT,
            "the standby streams",
        );
        standby
    }

    /// PostgreSQL's own backup of the whole server: `pg_basebackup -F t -X stream` (tar format: `base.tar` and
    /// `pg_wal.tar`, the WAL needed to make it consistent) into a new directory, returned.
    pub fn base_backup(&self) -> tempfile::TempDir {
        self.allow_replication();
        let dir = Self::new_dir("anchorlog-pg-backup-");
        let mut backup = pg_command(&self.bin, "pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", REPLICATOR, "-D"])
            .arg(dir.path().join("backup"))
            .args(["-F", "t", "-X", "stream", "-c", "fast"]);
        run(backup, "pg_basebackup -F t");
        dir
    }

    /// Restores a [`PgServer::base_backup`] into a new data directory (`base.tar`, then `pg_wal.tar` into its
    /// `pg_wal`) and starts a server on it on its own free port: what an operator does after losing the host.
    pub fn restore(&self, backup: &tempfile::TempDir) -> PgServer {
        let dir = Self::new_dir("anchorlog-pg-restored-");
        let data = dir.path().join("data");
        let files = backup.path().join("backup");
        let as_postgres = |program: &str| {
            if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", SUPERUSER, "--", program]);
                c
            } else {
                Command::new(program)
            }
        };
        let mut mkdir = as_postgres("mkdir");
        mkdir.args(["-m", "700"]).arg(&data);
        run(mkdir, "mkdir (the restored data directory)");
        let mut base = as_postgres("tar");
        base.arg("-xf").arg(files.join("base.tar")).arg("-C").arg(&data);
        run(base, "tar -xf base.tar");
        let mut wal = as_postgres("tar");
        wal.arg("-xf").arg(files.join("pg_wal.tar")).arg("-C").arg(data.join("pg_wal"));
        run(wal, "tar -xf pg_wal.tar");
        Self::start_on_free_port(PgServer {
            dir,
            bin: self.bin.clone(),
            port: 0,
            running: false,
            tls: self.tls,
        })
    }

    /// `pg_ctl promote` of a standby, then waits until it leaves recovery (`pg_is_in_recovery()` false).
    pub fn promote(&self) {
        let mut cmd = pg_command(&self.bin, "pg_ctl");
        cmd.arg("-D").arg(self.data()).args([
            "-w",
            "-t",
            &REPLICATION_TIMEOUT.as_secs().to_string(),
            "promote",
        ]);
        run(cmd, "pg_ctl promote");
        self.wait_for(
            "SELECT pg_is_in_recovery()",
            "f",
            REPLICATION_TIMEOUT,
            "the promoted standby leaves recovery",
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c synchronous_commit=on \
             -c full_page_writes=on -c max_connections=50 -c ssl={}",
            self.port,
            self.dir.path().display(),
            if self.tls { "on" } else { "off" }
        );
        let mut cmd = pg_command(&self.bin, "pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string(), "-l"])
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, "start"]);
        let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        Err(format!(
            "pg_ctl start failed ({}): {}{}\nserver log: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        ))
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `postgres://` URL for `user` on database `db` over TCP.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's URL on the `postgres` database.
    pub fn superuser_url(&self) -> String {
        self.url(SUPERUSER, "postgres")
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> i32 {
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        pidfile.lines().next().and_then(|l| l.trim().parse().ok()).expect("pid in postmaster.pid")
    }

    /// SIGKILLs the postmaster (a crash: no checkpoint, no shutdown), then waits until its backends have noticed
    /// and exited, so that [`PgServer::restart`] finds the data directory free.
    pub fn kill9(&mut self) {
        let pid = self.postmaster_pid();
        let children = child_pids(pid);
        // SAFETY: kill has no memory preconditions; the pid is the server we started.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while std::iter::once(pid).chain(children.iter().copied()).any(alive) {
            assert!(Instant::now() < deadline, "PostgreSQL's processes did not exit within {STOP_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
    }

    /// Starts the server again on the same port and data directory (crash recovery after [`PgServer::kill9`]).
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "PostgreSQL did not restart: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = pg_command(&self.bin, "pg_ctl");
        cmd.arg("-D").arg(self.data()).args([
            "-w",
            "-t",
            &STOP_TIMEOUT.as_secs().to_string(),
            "-m",
            "fast",
            "stop",
        ]);
        run(cmd, "pg_ctl stop");
        self.running = false;
    }
}

/// CPU seconds (user + system) process `pid` has used, all its threads (0 when it is gone).
pub fn process_cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // After the command's closing parenthesis: state is the first field, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no memory preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

impl PgServer {
    /// CPU seconds used so far by the server's live processes (postmaster, backends, WAL sender or receiver,
    /// background workers): for measurements, as a difference around the measured work.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.postmaster_pid();
        std::iter::once(pid).chain(child_pids(pid)).map(process_cpu_seconds).sum()
    }
}

/// Whether process `pid` exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// The pids of `parent`'s children (the postmaster's backends and auxiliary processes).
fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let mut cmd = pg_command(&self.bin, "pg_ctl");
            cmd.arg("-D").arg(self.data()).args(["-w", "-t", "10", "-m", "immediate", "stop"]);
            let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
        // The TempDir removes the directory (root may remove what the postgres user wrote).
    }
}

/// A primary and a synchronous streaming standby: COMMIT on the primary returns only after the standby flushed the
/// commit record (`synchronous_commit=on`, `synchronous_standby_names='*'`), the setting docs/HA.md prescribes for
/// failover without loss. Both are removed on drop.
pub struct PgCluster {
    /// The server that takes writes (until [`PgCluster::kill9_primary`]).
    pub primary: PgServer,
    /// The synchronous standby (read-only until [`PgCluster::promote_standby`]).
    pub standby: PgServer,
}

impl PgCluster {
    /// Starts a primary, makes a standby of it, and turns synchronous replication on once the standby streams
    /// (before, every COMMIT would wait for a standby that is not there yet). `synchronous_standby_names` is set
    /// with ALTER SYSTEM on the primary only, after the base backup: the promoted standby does not wait for a
    /// standby of its own.
    pub fn start_with_sync_standby() -> PgCluster {
        let primary = PgServer::start();
        let standby = primary.start_standby();
        // Two -c's would do, but one statement per call keeps ALTER SYSTEM out of a transaction block.
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        primary.psql("SELECT pg_reload_conf()");
        primary.wait_for(
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
            "sync",
            REPLICATION_TIMEOUT,
            "the standby becomes synchronous",
        );
        PgCluster { primary, standby }
    }

    /// A URL naming both servers, primary first, that connects only to the one accepting writes
    /// (`target_session_attrs=read-write`, which tokio-postgres 0.7 supports: it tries each host in order and
    /// skips a server in recovery). After a failover it reaches the promoted standby with no change.
    pub fn multi_host_url(&self, user: &str, db: &str) -> String {
        format!(
            "postgres://{user}@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.primary.port(),
            self.standby.port()
        )
    }

    /// SIGKILLs the primary's postmaster and waits until its processes are gone.
    pub fn kill9_primary(&mut self) {
        self.primary.kill9();
    }

    /// Promotes the standby (`pg_ctl promote`) and waits until it accepts writes; returns how long that took.
    pub fn promote_standby(&self) -> Duration {
        let started = Instant::now();
        self.standby.promote();
        started.elapsed()
    }
}
