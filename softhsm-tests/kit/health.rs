//! The plain-HTTP health listener (`server.health_listen`): what `/livez`, `/readyz` and `/metrics` answer.

use std::net::SocketAddr;

/// `GET path` on the health listener at `addr` → (status, body as JSON or `Null`, body as text).
pub async fn health_get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value, String) {
    let mut c =
        anchorlog::client::Connection::connect_plain(addr, "localhost").await.expect("health listener");
    let r = c.get(path).await.expect("GET");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    (r.status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text)
}

/// The `code` of every reason a `/readyz` answer gives, in order (none if it gives no reasons).
pub fn codes(v: &serde_json::Value) -> Vec<String> {
    v["reasons"].as_array().map_or_else(Vec::new, |a| {
        a.iter().map(|r| r["code"].as_str().unwrap_or_default().to_string()).collect()
    })
}
