//! docs/openapi.json against a running appliance (issue 12): every example request of the document is sent,
//! on every listener the operation names (`x-listeners`) and with a certificate of the role it names
//! (`x-roles`); the appliance must answer the documented success status with a body valid against the
//! documented schema. A principal without the role gets the documented 403. `GET /v1/openapi.json` serves
//! the file itself. (That the routers and the document list the same routes is checked by the unit tests of
//! `src/api/openapi.rs`; that the document is valid OpenAPI 3.1 and its examples valid against their schemas by
//! `tests/check_openapi.py`.)

mod kit;

use anchorlog::api::openapi::DOCUMENT;
use anchorlog::client::{Connection, Response};
use kit::{Appliance, Options};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The secret of the test's Okta source on the source listener (the document's `Authorization` example).
const OKTA_SECRET: &str = "my-shared-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the appliance on drop.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One operation of the document.
struct Op {
    path: String,
    method: String,
    op: Value,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Op { path: path.clone(), method: method.to_uppercase(), op: op.clone() });
        }
    }
    ops
}

impl Op {
    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The example request: path with its parameters filled in, query, headers, body and its content type.
    fn example_request(&self) -> (String, Vec<(String, String)>, Vec<u8>) {
        let mut path = self.path.clone();
        let mut query = Vec::new();
        let mut headers = Vec::new();
        for p in self.op["parameters"].as_array().into_iter().flatten() {
            let Some(example) = p["example"].as_str() else { continue };
            let name = p["name"].as_str().unwrap();
            assert!(
                example.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
                "{}: example {example:?} needs no URL encoding",
                self.name()
            );
            match p["in"].as_str().unwrap() {
                "path" => path = path.replace(&format!("{{{name}}}"), example),
                "query" => query.push(format!("{name}={example}")),
                "header" => headers.push((name.to_string(), example.to_string())),
                other => panic!("{}: parameter in {other}", self.name()),
            }
        }
        assert!(!path.contains('{'), "{}: every path parameter has an example", self.name());
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let mut body = Vec::new();
        if let Some(content) = self.op["requestBody"]["content"].as_object() {
            let (ctype, media) =
                content.iter().find(|(_, m)| m.get("example").is_some()).expect("a request body example");
            body = match &media["example"] {
                Value::String(text) => text.clone().into_bytes(),
                json => serde_json::to_vec(json).unwrap(),
            };
            headers.push(("content-type".into(), ctype.clone()));
        }
        (path, headers, body)
    }

    /// The success status and its media type (and schema, for JSON).
    fn success(&self) -> (u16, String, Value) {
        let responses = self.op["responses"].as_object().unwrap();
        let (status, resp) = responses.iter().find(|(s, _)| s.starts_with('2')).expect("a 2xx answer");
        let (ctype, media) = resp["content"].as_object().unwrap().iter().next().unwrap();
        (status.parse().unwrap(), ctype.clone(), media["schema"].clone())
    }

    fn roles(&self) -> Vec<String> {
        self.op["x-roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
    }
}

/// Checks `value` against `schema`, the subset of JSON Schema 2020-12 the document uses: `$ref` (to
/// `#/components/schemas/…`), `type` (one or a list), `const`, `enum`, `properties`, `required`,
/// `additionalProperties: false`, `items`, `oneOf`, `minimum`. Returns every violation, with its location.
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.strip_prefix("#/components/schemas/").expect("local $ref");
        return violations(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().map(|s| s.as_str().unwrap()).collect(),
            _ => panic!("type {t}"),
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.iter().any(|t| *t == actual || (*t == "number" && actual == "integer")) {
            out.push(format!("{at}: {actual} is not {types:?}"));
            return out;
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            out.push(format!("{at}: {value} is not {c}"));
        }
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            out.push(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64()) {
        if n < min {
            out.push(format!("{at}: {n} < {min}"));
        }
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let matching = alternatives.iter().filter(|s| violations(doc, s, value, at).is_empty()).count();
        if matching != 1 {
            out.push(format!("{at}: matches {matching} of the oneOf alternatives, not exactly 1"));
        }
    }
    if let Value::Object(obj) = value {
        let props = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(name.as_str().unwrap()) {
                out.push(format!("{at}: required {name} missing"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => out.extend(violations(doc, s, v, &format!("{at}/{k}"))),
                None if schema["additionalProperties"] == Value::Bool(false) => {
                    out.push(format!("{at}: undocumented property {k:?}"))
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            out.extend(violations(doc, s, v, &format!("{at}/{i}")));
        }
    }
    out
}

struct Listeners {
    a: Appliance,
    source: SocketAddr,
    health: SocketAddr,
}

impl Listeners {
    /// A connection to `listener` as `who` (a certificate name of the harness's PKI).
    async fn connect(&self, listener: &str, who: &str) -> Connection {
        match listener {
            "mtls" => self.a.connect(who).await,
            "source" => self.a.connect_source_listener().await,
            "health" => Connection::connect_plain(self.health, "localhost").await.expect("health listener"),
            other => panic!("unknown listener {other}"),
        }
    }
}

/// The appliance with all three listeners and an Okta source reachable over mTLS (producer-1) and with its
/// secret on the source listener.
fn start() -> (Listeners, Guard) {
    let mut a = Appliance::prepare(Options::default());
    let secret = a.path("okta.secret");
    kit::write_secret(&secret, OKTA_SECRET.as_bytes());
    a.options.extra_config = format!(
        "[[source]]\nname = \"okta\"\nformat = \"okta\"\nprincipals = [\"producer-1\"]\n\
         secret_auth = \"authorization\"\nsecret_file = \"{}\"\n",
        secret.display()
    );
    let (listen, source, health) = (free_port(), free_port(), free_port());
    a.write_config(&format!("127.0.0.1:{listen}"));
    // The console's routes serve whatever files of its names the directory holds (the real console is built
    // by console/build.sh and tested in console.rs): stand-ins are enough to check the documented answers.
    let console = a.path("console");
    std::fs::create_dir_all(&console).unwrap();
    for (file, text) in [
        ("index.html", "<!doctype html><title>console</title>"),
        ("console.css", "body {}"),
        ("console.js", "\"use strict\";"),
        ("engine.js", "var ANCHORLOG_ENGINE = {};"),
    ] {
        std::fs::write(console.join(file), text).unwrap();
    }
    let text = std::fs::read_to_string(a.config_path()).unwrap().replace(
        "shutdown_grace_s = 5",
        &format!(
            "shutdown_grace_s = 5\nsource_listen = \"127.0.0.1:{source}\"\nhealth_listen = \"127.0.0.1:{health}\"\n\
             console_dir = \"{}\"",
            console.display()
        ),
    );
    std::fs::write(a.config_path(), text).unwrap();
    let child = Command::new(kit::bin())
        .args(["serve", "--config", a.config_path().to_str().unwrap()])
        .env("SOFTHSM2_CONF", a.path("softhsm2.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(child);
    for port in [listen, source, health] {
        let up = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "listener on port {port}");
    }
    a.addr = Some(SocketAddr::from(([127, 0, 0, 1], listen)));
    a.source_addr = Some(SocketAddr::from(([127, 0, 0, 1], source)));
    let health = SocketAddr::from(([127, 0, 0, 1], health));
    (Listeners { a, source: SocketAddr::from(([127, 0, 0, 1], source)), health }, guard)
}

/// Sends `op`'s example request to `listener` as `who`.
/// A streaming operation (`x-streaming`, `GET /v1/stream`) never ends by itself: its answer is its status,
/// headers and first chunk, and the connection is dropped.
async fn send(l: &Listeners, op: &Op, listener: &str, who: &str) -> Response {
    let (path, headers, body) = op.example_request();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut conn = l.connect(listener, who).await;
    if op.op["x-streaming"] != Value::Bool(true) {
        return conn.request(&op.method, &path, &headers, body).await.expect("request");
    }
    let mut open = conn.open(&op.method, &path, &headers, body).await.expect("request");
    let header = |name: &str| open.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (content_type, retry_after) = (header("content-type"), header("retry-after"));
    let body = if open.status == 200 {
        let first = tokio::time::timeout(Duration::from_secs(60), open.chunk()).await;
        first.expect("a first chunk within 60 s").expect("stream").expect("a chunk").to_vec()
    } else {
        let mut all = Vec::new();
        while let Some(c) = open.chunk().await.expect("body") {
            all.extend_from_slice(&c);
        }
        all
    };
    Response { status: open.status, content_type, retry_after, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_request_is_answered_as_documented_on_every_listener() {
    let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
    let (l, _server) = start();
    assert_ne!(l.source, l.health);
    let ops = operations(&doc);
    // Ingest first (the reads' examples name seq 0 and tree size 2), the erasure last (it erases seq 0).
    let rank = |o: &Op| match (o.method.as_str(), o.path.as_str()) {
        (_, "/v1/admin/erasures") => 2,
        ("POST", _) => 0,
        _ => 1,
    };
    let mut ordered: Vec<&Op> = ops.iter().collect();
    ordered.sort_by_key(|o| rank(o));
    let mut checked = 0;
    let mut waited = false;
    for op in ordered {
        if rank(op) > 0 && !waited {
            // The example proofs go up to tree size 2 and the search finds the ingested event.
            l.a.wait_for_head(2).await;
            l.a.wait_indexed().await;
            waited = true;
        }
        let roles = op.roles();
        // The role of the operation, or any certificate for /healthz.
        let who = roles.first().map_or("auditor", String::as_str);
        let (status, ctype, schema) = op.success();
        for listener in op.op["x-listeners"].as_array().unwrap() {
            let listener = listener.as_str().unwrap();
            let r = send(&l, op, listener, who).await;
            let at = format!("{} on {listener}", op.name());
            assert_eq!(r.status, status, "{at}: {}", String::from_utf8_lossy(&r.body));
            let got = r.content_type.clone().unwrap_or_default();
            assert!(
                got.starts_with(ctype.split(';').next().unwrap()),
                "{at}: content type {got}, documented {ctype}"
            );
            if ctype == "application/json" {
                let body: Value =
                    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
                let errors = violations(&doc, &schema, &body, "");
                assert!(
                    errors.is_empty(),
                    "{at}: the answer does not match its schema: {errors:#?}\n{body:#}"
                );
            } else {
                assert!(!r.body.is_empty(), "{at}: empty body");
            }
            checked += 1;
        }
    }
    // 20 routes of the mTLS listener, 3 of the source listener, 3 of the health listener.
    assert_eq!(checked, anchorlog::api::ROUTES.len());

    // The description is the file itself.
    let served = l.a.connect("producer").await.get("/v1/openapi.json").await.unwrap();
    assert_eq!(served.status, 200);
    assert_eq!(served.body, DOCUMENT.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_the_role_gets_the_documented_403() {
    let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
    let (l, _server) = start();
    let mut checked = 0;
    for op in operations(&doc) {
        let roles = op.roles();
        if roles.is_empty() {
            continue;
        }
        // A principal holding none of the roles; `stranger` maps to no principal at all.
        let (who, code) =
            match ["producer", "auditor", "admin"].iter().find(|c| !roles.iter().any(|r| r == *c)) {
                Some(c) => (*c, "forbidden_role"),
                None => ("stranger", "unknown_principal"),
            };
        let r = send(&l, &op, "mtls", who).await;
        assert_eq!((r.status, r.json()["code"].as_str()), (403, Some(code)), "{} as {who}", op.name());
        let errors = violations(
            &doc,
            &op.op["responses"]["403"]["content"]["application/json"]["schema"],
            &r.json(),
            "",
        );
        assert!(errors.is_empty(), "{}: {errors:?}", op.name());
        assert!(
            op.op["responses"]["403"]["description"].as_str().unwrap().contains(code),
            "{}: 403 documents {code}",
            op.name()
        );
        checked += 1;
    }
    assert_eq!(checked, 19, "every route of the mTLS listener but /healthz");
}
