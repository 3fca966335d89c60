//! Syslog over mutual TLS (RFC 5425, issue 15 part 1) with the real senders from Debian packages: rsyslog
//! (`rsyslog`, `rsyslog-gnutls`) and syslog-ng (`syslog-ng-core`), each run as a child process with its own
//! configuration, pid file and work directory in the test's temp dir (no system service, 127.0.0.1 only). Their
//! forwarding settings are read from docs/INTEGRATIONS.md ("Syslog"), so the documented recipes are what is tested.
//! Plus the refusals, back-pressure with a slowed writer, and connections cut inside a frame, with a rustls client.

mod kit;

use kit::{Appliance, Options};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The `[[source]]` that takes the producer's syslog messages.
const SYSLOG_SOURCE: &str =
    "\n[[source]]\nname = \"syslog\"\nformat = \"syslog\"\nprincipals = [\"producer-1\"]\n";

fn syslog_options() -> Options {
    Options { syslog_listen: true, extra_config: SYSLOG_SOURCE.into(), ..Options::default() }
}

/// The code block after `<!-- recipe: NAME -->` in docs/INTEGRATIONS.md.
fn recipe(name: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/INTEGRATIONS.md"))
        .expect("docs/INTEGRATIONS.md");
    let marker = format!("<!-- recipe: {name} -->\n```\n");
    let start = doc.find(&marker).unwrap_or_else(|| panic!("no recipe {name:?} in docs/INTEGRATIONS.md"))
        + marker.len();
    let end = doc[start..].find("```").expect("the recipe's block ends") + start;
    doc[start..end].to_string()
}

/// Replaces `from` in `text`, which must hold it (a recipe that changed must fail the test, not pass untested).
fn subst(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the recipe no longer contains {from:?}:\n{text}");
    text.replace(from, to)
}

/// A sender process, killed on drop.
struct Sender {
    child: Child,
    log: PathBuf,
}

impl Sender {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts rsyslogd with the documented recipe, reading `input` (RFC 5424 lines) through imfile.
fn start_rsyslog(a: &Appliance, dir: &Path, input: &Path) -> Sender {
    let certs = a.path("certs");
    let port = a.syslog_addr.expect("syslog listener").port().to_string();
    let mut forward = recipe("rsyslog");
    for (from, to) in [
        ("/etc/rsyslog.d/anchorlog/ca.pem", certs.join("ca.pem")),
        ("/etc/rsyslog.d/anchorlog/client.pem", certs.join("producer.pem")),
        ("/etc/rsyslog.d/anchorlog/client.key", certs.join("producer.key")),
    ] {
        forward = subst(forward, from, to.to_str().unwrap());
    }
    forward = subst(forward, "target=\"anchorlog.example.org\"", "target=\"127.0.0.1\"");
    forward = subst(forward, "port=\"6514\"", &format!("port=\"{port}\""));
    // The test server's certificate names localhost.
    forward = subst(
        forward,
        "StreamDriverPermittedPeers=\"anchorlog.example.org\"",
        "StreamDriverPermittedPeers=\"localhost\"",
    );
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let conf = format!(
        "global(workDirectory=\"{work}\")\nmodule(load=\"imfile\")\n{forward}\n\
         input(type=\"imfile\" File=\"{input}\" Tag=\"input\" ruleset=\"anchorlog\")\n",
        work = work.display(),
        input = input.display(),
    );
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.join("rsyslogd.log");
    let child = Command::new("rsyslogd")
        .args(["-n", "-f", conf_path.to_str().unwrap(), "-i", dir.join("rsyslogd.pid").to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
        .spawn()
        .expect("rsyslogd runs (apt-get install rsyslog rsyslog-gnutls)");
    Sender { child, log }
}

/// syslog-ng's root: `/` when the package is installed, else where CI unpacked it (`syslog-ng-core` conflicts
/// with `rsyslog`, so both cannot be installed at once: `.ci/run` unpacks it with `dpkg-deb -x`).
fn syslog_ng_root() -> PathBuf {
    if let Ok(root) = std::env::var("SYSLOG_NG_ROOT") {
        return PathBuf::from(root);
    }
    if Path::new("/usr/sbin/syslog-ng").exists() {
        return PathBuf::from("/");
    }
    PathBuf::from("/opt/syslog-ng-core")
}

/// Starts syslog-ng with the documented destination, reading `input` (RFC 5424 lines, parsed as such).
fn start_syslog_ng(a: &Appliance, dir: &Path, input: &Path) -> Sender {
    let certs = a.path("certs");
    let port = a.syslog_addr.expect("syslog listener").port().to_string();
    let mut dest = recipe("syslog-ng");
    for (from, to) in [
        ("/etc/syslog-ng/anchorlog/ca.pem", certs.join("ca.pem")),
        ("/etc/syslog-ng/anchorlog/client.pem", certs.join("producer.pem")),
        ("/etc/syslog-ng/anchorlog/client.key", certs.join("producer.key")),
    ] {
        dest = subst(dest, from, to.to_str().unwrap());
    }
    dest = subst(
        dest,
        "syslog(\"anchorlog.example.org\" port(6514)",
        &format!("syslog(\"127.0.0.1\" port({port})"),
    );
    let conf = format!(
        "@version: 3.38\noptions {{ keep-hostname(yes); stats-freq(0); }};\n\
         source s_in {{ file(\"{input}\" flags(syslog-protocol) follow-freq(1)); }};\n{dest}\n\
         log {{ source(s_in); destination(d_anchorlog); }};\n",
        input = input.display()
    );
    let conf_path = dir.join("syslog-ng.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let root = syslog_ng_root();
    let binary = root.join("usr/sbin/syslog-ng");
    assert!(
        binary.exists(),
        "{} is missing: apt-get install syslog-ng-core, or unpack it (apt-get download syslog-ng-core && dpkg-deb -x \
         syslog-ng-core_*.deb /opt/syslog-ng-core) and set SYSLOG_NG_ROOT",
        binary.display()
    );
    let log = dir.join("syslog-ng.log");
    let child = Command::new(&binary)
        .args(["-F", "-e", "--no-caps", "-f"])
        .arg(&conf_path)
        .arg(format!("--module-path={}", root.join("usr/lib/syslog-ng/3.38").display()))
        .arg("-p")
        .arg(dir.join("syslog-ng.pid"))
        .arg("-R")
        .arg(dir.join("syslog-ng.persist"))
        .arg("-c")
        .arg(dir.join("syslog-ng.ctl"))
        .env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"))
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
        .spawn()
        .expect("syslog-ng runs");
    Sender { child, log }
}

/// The bodies stored for the syslog source, in seq order, with their seqs.
fn stored(a: &Appliance) -> Vec<(u64, Vec<u8>)> {
    let conn = anchorlog::store::open_reader(&a.db_path()).expect("ledger opens");
    let mut st = conn.prepare("SELECT seq, body FROM events WHERE source = 'syslog' ORDER BY seq").unwrap();
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Waits (bounded) until `n` syslog events are stored; the sender's log in the panic message otherwise.
async fn wait_stored(
    a: &Appliance,
    n: usize,
    bound: Duration,
    sender: Option<&Sender>,
) -> Vec<(u64, Vec<u8>)> {
    let deadline = Instant::now() + bound;
    loop {
        let got = stored(a);
        if got.len() >= n {
            return got;
        }
        if Instant::now() > deadline {
            let bodies: Vec<String> =
                got.iter().take(20).map(|(_, b)| String::from_utf8_lossy(b).into_owned()).collect();
            panic!(
                "{} of {n} messages stored after {bound:?} (the first: {bodies:?})\nsender:\n{}\nserver:\n{}",
                got.len(),
                sender.map(Sender::output).unwrap_or_default(),
                a.server_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message of line `i` of the 10,000: sshd accepted/failed, sudo, PAM, and a plain message, in turn.
fn auth_message(i: usize) -> (&'static str, String, String) {
    match i % 5 {
        0 => (
            "sshd",
            format!("{}", 1000 + i),
            format!("Accepted password for user{} from 192.0.2.{} port {} ssh2", i % 7, i % 250, 1024 + i),
        ),
        1 => (
            "sshd",
            format!("{}", 1000 + i),
            format!("Failed password for invalid user mallory from 198.51.100.9 port {} ssh2", 1024 + i),
        ),
        2 => (
            "sudo",
            "-".into(),
            format!("alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id -u {i}"),
        ),
        3 => (
            "sshd",
            format!("{}", 1000 + i),
            format!("pam_unix(sshd:session): session opened for user bob(uid=1001) by (uid=0) n={i}"),
        ),
        _ => ("cron", "-".into(), format!("(root) CMD (run-parts /etc/cron.hourly) n={i}")),
    }
}

/// Searches as the auditor; returns the seqs found (all pages of up to 1,000).
async fn search_seqs(a: &Appliance, query: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let q = match &cursor {
            Some(c) => format!("{query}&limit=1000&cursor={c}"),
            None => format!("{query}&limit=1000"),
        };
        let r = a.audit_get(&format!("/v1/events?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        seqs.extend(v["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seqs.sort_unstable();
    seqs
}

/// The normalized fields of the 10,000, as search sees them (the same for both senders).
async fn assert_auth_fields(a: &Appliance, seqs: &[u64]) {
    a.wait_indexed().await;
    let every = |k: usize| -> Vec<u64> {
        seqs.iter().enumerate().filter(|(i, _)| i % 5 == k).map(|(_, s)| *s).collect()
    };
    assert_eq!(search_seqs(a, "source=syslog&type=sshd.accepted_password&outcome=success").await, every(0));
    let user3: Vec<u64> =
        seqs.iter().enumerate().filter(|(i, _)| i % 5 == 0 && i % 7 == 3).map(|(_, s)| *s).collect();
    assert_eq!(search_seqs(a, "type=sshd.accepted_password&actor=user3").await, user3);
    assert_eq!(
        search_seqs(a, "source=syslog&ip=192.0.2.10").await.len(),
        40,
        "i % 250 == 10 (then i % 5 == 0): 40 of 10,000"
    );
    assert_eq!(
        search_seqs(a, "type=sshd.failed_password&actor=mallory&ip=198.51.100.9&outcome=failure").await,
        every(1)
    );
    assert_eq!(search_seqs(a, "type=sudo.command&actor=alice&outcome=success").await, every(2));
    assert_eq!(search_seqs(a, "type=pam.session_opened&actor=bob").await, every(3));
    assert_eq!(search_seqs(a, "source=syslog&realm=bastion").await.len(), seqs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_10000_rfc5424_messages_over_mutual_tls_octet_counted_stored_byte_identical() {
    let a = Appliance::start_with(syslog_options());
    let dir = a.path("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = (0..10_000)
        .map(|i| {
            let (app, procid, msg) = auth_message(i);
            // Fractional seconds, an offset, structured data now and then, a non-ASCII byte: rsyslog relays them as is.
            let sd = if i % 10 == 4 {
                format!("[origin ip=\"10.1.2.3\"][x@32473 n=\"{i}\" q=\"a\\\"b\"]")
            } else {
                "-".into()
            };
            format!(
                "<86>1 2026-12-07T11:{:02}:{:02}.{:06}+01:00 bastion {app} {procid} - {sd} {msg} é",
                (i / 60) % 60,
                i % 60,
                i
            )
        })
        .collect();
    let input = dir.join("input.log");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let started = Instant::now();
    let rsyslog = start_rsyslog(&a, &dir, &input);
    let got = wait_stored(&a, 10_000, Duration::from_secs(240), Some(&rsyslog)).await;
    eprintln!("rsyslog: 10,000 messages stored in {:?}", started.elapsed());
    assert_eq!(got.len(), 10_000, "exactly 10,000: nothing lost, nothing twice");
    for (i, (_, body)) in got.iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(body), lines[i], "message {i} is stored byte for byte, in order");
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_auth_fields(&a, &seqs).await;
    // Structured data: the origin IP of the plain messages that carry one.
    assert_eq!(search_seqs(&a, "type=cron&ip=10.1.2.3").await.len(), 1_000);
    let r = a.audit_get(&format!("/v1/events/{}", seqs[1])).await.json();
    assert_eq!(r["entry_fields"]["format"], "syslog", "{r}");
    assert_eq!(
        r["entry_fields"]["producer"], "producer-1",
        "the certificate's principal is the producer: {r}"
    );
    // rsyslog is still connected: a SIGTERM stops reading it, commits, and exits cleanly within the harness's bound.
    let mut a = a;
    assert!(a.sigterm().success(), "{}", a.server_log());
    assert_eq!(stored(&a).len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_ng_forwards_10000_rfc5424_messages_over_mutual_tls_octet_counted_stored_as_sent() {
    let a = Appliance::start_with(syslog_options());
    let dir = a.path("syslog-ng");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = Vec::new();
    let mut sent = Vec::new();
    for i in 0..10_000 {
        let (app, procid, msg) = auth_message(i);
        let header =
            format!("<86>1 2026-12-07T11:{:02}:{:02}+00:00 bastion {app} {procid} -", (i / 60) % 60, i % 60);
        lines.push(format!("{header} - {msg}"));
        // syslog-ng re-renders RFC 5424: its sequenceId in the structured data, an LF ending the message inside the
        // octet-counted frame (docs/INTEGRATIONS.md). The frame it sends is exactly this.
        sent.push(format!("{header} [meta sequenceId=\"{}\"] {msg}\n", i + 1));
    }
    let input = dir.join("input.log");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let started = Instant::now();
    let sender = start_syslog_ng(&a, &dir, &input);
    let got = wait_stored(&a, 10_000, Duration::from_secs(240), Some(&sender)).await;
    eprintln!("syslog-ng: 10,000 messages stored in {:?}", started.elapsed());
    assert_eq!(got.len(), 10_000, "exactly 10,000: nothing lost, nothing twice");
    for (i, (_, body)) in got.iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(body), sent[i], "message {i} is stored byte for byte, in order");
    }
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_auth_fields(&a, &seqs).await;
}

/// A TLS client of the syslog listener with the harness's certificate `who` (`None`: no client certificate).
async fn tls_client(
    a: &Appliance,
    who: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let certs = a.path("certs");
    let config = match who {
        Some(who) => anchorlog::tls::client_config(
            &certs.join("ca.pem"),
            &certs.join(format!("{who}.pem")),
            &certs.join(format!("{who}.key")),
        )
        .expect("client config"),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for c in anchorlog::tls::load_certs(&certs.join("ca.pem"), "CA").unwrap() {
                roots.add(c).unwrap();
            }
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        }
    };
    let tcp = tokio::net::TcpStream::connect(a.syslog_addr.expect("syslog listener")).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

fn frame(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

/// Sends one frame as `who`; returns whether the connection was still open after it (the server closes refused
/// connections: a read then ends).
async fn try_send(a: &Appliance, who: Option<&str>, msg: &str) -> bool {
    let Ok(mut tls) = tls_client(a, who).await else { return false };
    if tls.write_all(&frame(msg)).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    // The server never writes: a refused connection ends (EOF or an alert), an accepted one stays open.
    let read = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut byte)).await;
    read.is_err()
}

async fn metric(a: &Appliance, name: &str) -> u64 {
    let text = a.connect("monitor").await.get("/metrics").await.expect("GET /metrics").body;
    let text = String::from_utf8_lossy(&text).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_from_another_ca_or_without_a_syslog_source_are_refused_and_store_nothing(
) {
    let a = Appliance::start_with(Options { record_appliance_events: true, ..syslog_options() });
    assert!(!try_send(&a, None, "<13>1 - - - - - - no certificate").await, "no client certificate: refused");
    assert!(
        !try_send(&a, Some("foreign"), "<13>1 - - - - - - another CA").await,
        "a certificate of another CA: refused"
    );
    assert!(!try_send(&a, Some("stranger"), "<13>1 - - - - - - no principal").await, "no principal: refused");
    assert!(
        !try_send(&a, Some("auditor"), "<13>1 - - - - - - not a producer").await,
        "not a producer: refused"
    );
    assert!(
        try_send(&a, Some("producer"), "<13>1 - - - - - - the producer").await,
        "the producer's connection stays open"
    );
    let got = wait_stored(&a, 1, Duration::from_secs(30), None).await;
    assert_eq!(
        got.iter().map(|(_, b)| String::from_utf8_lossy(b).to_string()).collect::<Vec<_>>(),
        ["<13>1 - - - - - - the producer"]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let reasons = loop {
        let reasons: Vec<String> = a
            .own_records()
            .into_iter()
            .filter(|(_, r)| r["type"] == "anchorlog.access_denied" && r["listener"] == "syslog")
            .map(|(_, r)| r["reason"].as_str().unwrap_or_default().to_string())
            .collect();
        if reasons.len() >= 4 || Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].starts_with("tls_handshake_refused") && reasons[1].starts_with("tls_handshake_refused"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2..], ["unknown_principal".to_string(), "forbidden_role".to_string()]);
    assert_eq!(stored(&a).len(), 1, "nothing of a refused client is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_inside_a_frame_stores_every_whole_frame_before_it_and_nothing_of_that_frame() {
    let a = Appliance::start_with(syslog_options());
    // A clean TLS close (close_notify) inside the fourth frame.
    let mut tls = tls_client(&a, Some("producer")).await.unwrap();
    for i in 0..3 {
        tls.write_all(&frame(&format!("<13>1 - - - - - - clean {i}"))).await.unwrap();
    }
    tls.write_all(b"40 <13>1 - - - - - - cut").await.unwrap();
    tls.shutdown().await.unwrap();
    drop(tls);
    // A TCP close without close_notify inside the third frame, the frame's length digits only half sent.
    let mut tls = tls_client(&a, Some("producer")).await.unwrap();
    for i in 0..2 {
        tls.write_all(&frame(&format!("<13>1 - - - - - - abrupt {i}"))).await.unwrap();
    }
    tls.write_all(b"3").await.unwrap();
    tls.flush().await.unwrap();
    // FIN without close_notify; the client then drains what the server sent (TLS 1.3 session tickets) until the
    // server closes, so that its close is no RST (a reset would make the kernel drop data the server had not read).
    let (mut tcp, _) = tls.into_inner();
    tcp.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut sink)).await;
    drop(tcp);
    // A frame over syslog.max_message_bytes, and a stream that is not octet-counted: closed, nothing of them stored.
    let mut tls = tls_client(&a, Some("producer")).await.unwrap();
    tls.write_all(&frame("<13>1 - - - - - - before too long")).await.unwrap();
    tls.write_all(b"99999999 <13>1").await.unwrap();
    tls.flush().await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a too long frame closes the connection: {closed:?}");
    let mut tls = tls_client(&a, Some("producer")).await.unwrap();
    tls.write_all(b"<13>1 - - - - - - not octet-counted\n").await.unwrap();
    tls.flush().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a bad octet count closes the connection: {closed:?}");

    let expected = [
        "<13>1 - - - - - - clean 0",
        "<13>1 - - - - - - clean 1",
        "<13>1 - - - - - - clean 2",
        "<13>1 - - - - - - abrupt 0",
        "<13>1 - - - - - - abrupt 1",
        "<13>1 - - - - - - before too long",
    ];
    wait_stored(&a, expected.len(), Duration::from_secs(30), None).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&a, "anchorlog_syslog_frames_total{outcome=\"truncated\"}").await < 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut bodies: Vec<String> =
        stored(&a).into_iter().map(|(_, b)| String::from_utf8(b).unwrap()).collect();
    bodies.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(bodies, want, "every whole frame, nothing of a cut one");
    assert_eq!(metric(&a, "anchorlog_syslog_frames_total{outcome=\"truncated\"}").await, 2);
    assert_eq!(metric(&a, "anchorlog_syslog_frames_total{outcome=\"too_long\"}").await, 1);
    assert_eq!(metric(&a, "anchorlog_syslog_frames_total{outcome=\"bad_framing\"}").await, 1);
    assert_eq!(metric(&a, "anchorlog_syslog_frames_total{outcome=\"stored\"}").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_writer_slowed_rsyslog_is_held_back_and_nothing_is_lost() {
    const N: usize = 2_000;
    const IN_FLIGHT: usize = 50;
    const DELAY_MS: u64 = 100;
    let a = Appliance::start_with(Options {
        env: vec![("ANCHORLOG_FAULT_WRITER_DELAY_MS".into(), DELAY_MS.to_string())],
        extra_config: format!("{SYSLOG_SOURCE}\n[syslog]\nmax_in_flight_messages = {IN_FLIGHT}\n"),
        ..syslog_options()
    });
    // The fault hook is on (feature fault-injection).
    a.wait_log("test fault hook", 1, Duration::from_secs(30)).await;
    let dir = a.path("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> =
        (0..N).map(|i| format!("<86>1 2026-12-07T11:00:00Z bastion sshd {i} - - Accepted password for u{i} from 192.0.2.1 port {i} ssh2")).collect();
    let input = dir.join("input.log");
    std::fs::write(&input, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let started = Instant::now();
    let rsyslog = start_rsyslog(&a, &dir, &input);
    let got = wait_stored(&a, N, Duration::from_secs(300), Some(&rsyslog)).await;
    let elapsed = started.elapsed();
    eprintln!("slowed writer: {N} messages in {elapsed:?}");
    assert_eq!(got.len(), N, "nothing lost, nothing twice");
    for (i, (_, body)) in got.iter().enumerate() {
        assert_eq!(String::from_utf8_lossy(body), lines[i], "message {i} in order");
    }
    // The listener stopped reading while the writer was behind (rsyslog's queue held the rest) ...
    assert!(metric(&a, "anchorlog_syslog_read_pauses_total").await > 0, "the listener applied back-pressure");
    // ... so no commit carried more than the in-flight bound: at least N / IN_FLIGHT commits of DELAY_MS each.
    let floor = Duration::from_millis((N / IN_FLIGHT) as u64 * DELAY_MS);
    assert!(elapsed >= floor, "{elapsed:?} < {floor:?}: more than {IN_FLIGHT} messages were in flight");
    // The counter moves right after the commit the rows above come from.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&a, "anchorlog_syslog_frames_total{outcome=\"stored\"}").await < N as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&a, "anchorlog_syslog_frames_total{outcome=\"stored\"}").await, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lf_framing_stores_each_line_and_nothing_of_a_line_cut_by_the_close() {
    let a = Appliance::start_with(Options {
        extra_config: format!("{SYSLOG_SOURCE}\n[syslog]\nframing = \"lf\"\n"),
        ..syslog_options()
    });
    let mut tls = tls_client(&a, Some("producer")).await.unwrap();
    tls.write_all(b"<13>1 - - - - - - one\n\n<13>Dec  7 11:00:00 host app[1]: two\r\n<13>1 - - - - - - thr")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let got = wait_stored(&a, 2, Duration::from_secs(30), None).await;
    let bodies: Vec<&[u8]> = got.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(
        bodies,
        [&b"<13>1 - - - - - - one"[..], b"<13>Dec  7 11:00:00 host app[1]: two\r"],
        "a blank line is no message; a CR stays"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&a, "anchorlog_syslog_frames_total{outcome=\"truncated\"}").await < 1
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&a, "anchorlog_syslog_frames_total{outcome=\"truncated\"}").await,
        1,
        "the line without its LF"
    );
    assert_eq!(stored(&a).len(), 2);
}
