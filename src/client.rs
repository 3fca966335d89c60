//! A small HTTP/1.1 client (mTLS, server-only TLS or plain) over one keep-alive connection: used by the load
//! generator, the test suite and the audit monitor. One `Connection` carries one request at a time.

use bytes_body::full;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;

mod bytes_body {
    use http_body_util::Full;
    /// A complete in-memory request body.
    pub fn full(data: Vec<u8>) -> Full<axum::body::Bytes> {
        Full::new(axum::body::Bytes::from(data))
    }
}

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (e.g. the server refused our certificate).
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An HTTP-level failure.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// A request could not be built.
    #[error("bad request: {0}")]
    Request(String),
    /// The server name is not valid.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// A response: status, content type and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type header, if any.
    pub content_type: Option<String>,
    /// Retry-After header, if any (429 `writer_queue_full`, 507 `storage_full`, 503 `database_busy`).
    pub retry_after: Option<String>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// An answer read as it arrives (`GET /v1/stream`): status and headers now, the body chunk by chunk.
pub struct StreamingResponse {
    /// HTTP status code.
    pub status: u16,
    /// The answer's headers.
    pub headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
}

impl StreamingResponse {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<axum::body::Bytes>, ClientError> {
        while let Some(frame) = self.body.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

/// One keep-alive mTLS connection.
pub struct Connection {
    sender: SendRequest<http_body_util::Full<axum::body::Bytes>>,
    host: String,
}

impl Connection {
    /// Connects to `addr`, verifying the server as `server_name` with `tls`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientError::ServerName(server_name.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { sender, host: server_name.to_string() })
    }

    /// Connects to `addr` over plain HTTP/1.1, no TLS (a witness's `add-checkpoint`, `/healthz`).
    pub async fn connect_plain(addr: SocketAddr, host: &str) -> Result<Connection, ClientError> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection { sender, host: host.to_string() })
    }

    /// Sends one request and returns the response as soon as its head arrives (the body not read yet).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder.body(full(body)).map_err(|e| ClientError::Request(e.to_string()))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Sends one request and reads the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok(Response { status, content_type, retry_after, body })
    }

    /// Sends one request and returns its status and headers as soon as they arrive; the body is read with
    /// [`StreamingResponse::chunk`]. Drop the connection to abandon a body that does not end.
    pub async fn open(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<StreamingResponse, ClientError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        Ok(StreamingResponse { status, headers: parts.headers, body })
    }

    /// Sends one request and returns the status, reading at most `max_body` bytes of the answer (the rest is
    /// left unread and the connection should be dropped): for receivers whose answer is not used (alerts).
    pub async fn request_status(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        max_body: usize,
    ) -> Result<u16, ClientError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        // Drain a small answer so a keep-alive peer is not cut off mid-write; never more than `max_body`.
        let _ = http_body_util::Limited::new(resp.into_body(), max_body).collect().await;
        Ok(status)
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, &[], Vec::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> Result<Response, ClientError> {
        self.request("POST", path, &[("content-type", "application/json")], body.to_vec()).await
    }
}
