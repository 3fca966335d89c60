//! `GET /v1/openapi.json`: the OpenAPI 3.1 description of every route (docs/openapi.json, embedded), and
//! [`ROUTES`], the list of what the three routers serve, which the tests hold against both the routers and the
//! document so that neither can drift from the other.

use super::{authorize, ApiError};
use crate::config::Role;
use crate::tls::Peer;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;

/// The document, as shipped in the repository and the Debian package.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// Which listener a route is served on: [`super::router`] (`mtls`), [`super::source_router`] (`source`) or
/// [`super::health_router`] (`health`), the names of the document's `x-listeners`.
pub type Listener = &'static str;

/// Every (listener, method, path) the routers serve, paths in axum's `{param}` syntax (the same as OpenAPI's).
pub const ROUTES: &[(Listener, &str, &str)] = &[
    ("mtls", "GET", "/healthz"),
    ("mtls", "GET", "/readyz"),
    ("mtls", "GET", "/metrics"),
    ("mtls", "GET", "/v1/openapi.json"),
    ("mtls", "POST", "/v1/events"),
    ("mtls", "GET", "/v1/events"),
    ("mtls", "POST", "/v1/sources/{name}/events"),
    ("mtls", "GET", "/v1/sources/{name}/events"),
    ("mtls", "GET", "/v1/events/{seq}"),
    ("mtls", "GET", "/v1/events/{seq}/receipt"),
    ("mtls", "GET", "/v1/heads/latest"),
    ("mtls", "GET", "/v1/heads/{height}"),
    ("mtls", "GET", "/v1/proofs/inclusion"),
    ("mtls", "GET", "/v1/proofs/consistency"),
    ("mtls", "GET", "/v1/key-rotations"),
    ("mtls", "POST", "/v1/admin/erasures"),
    ("mtls", "GET", "/v1/export"),
    ("mtls", "GET", "/v1/stream"),
    ("mtls", "GET", "/console/"),
    ("mtls", "GET", "/console/{file}"),
    ("source", "GET", "/healthz"),
    ("source", "POST", "/v1/sources/{name}/events"),
    ("source", "GET", "/v1/sources/{name}/events"),
    ("health", "GET", "/healthz"),
    ("health", "GET", "/readyz"),
    ("health", "GET", "/metrics"),
];

/// Any principal may read the description (any role): it holds no event content, but like every route but
/// `/healthz` it is not for clients without a mapped certificate.
pub(super) async fn document(peer: Option<Extension<Peer>>) -> Result<Response, ApiError> {
    match authorize(peer.as_ref().map(|p| &p.0), Role::Auditor) {
        Err(e) if e.code != "forbidden_role" => return Err(e),
        _ => {}
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    type Route = (String, String, String);

    /// The `.route("PATH", get(..).post(..))` calls of each router function in `mod.rs`, read from the source:
    /// a route added there but not to [`ROUTES`] fails the test below.
    fn routes_in_source() -> BTreeSet<Route> {
        let src = include_str!("mod.rs");
        let mut found = BTreeSet::new();
        for (listener, start) in [
            ("mtls", "pub fn router("),
            ("source", "pub fn source_router("),
            ("health", "pub fn health_router("),
        ] {
            let body = &src[src.find(start).expect("router function")..];
            let body = &body[..body.find("\n}\n").expect("end of function")];
            for call in body.split(".route(").skip(1) {
                let path = call.split('"').nth(1).expect("path literal");
                // The method routers of this call: up to the `.route(`'s closing parenthesis.
                let mut depth = 1;
                let end = call.char_indices().find_map(|(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    (depth == 0).then_some(i)
                });
                let args = &call[..end.expect("closing parenthesis")];
                for (method, token) in
                    [("GET", "get("), ("POST", "post("), ("PUT", "put("), ("DELETE", "delete(")]
                {
                    if args.contains(token) {
                        found.insert((listener.to_string(), method.to_string(), path.to_string()));
                    }
                }
            }
        }
        found
    }

    fn routes_const() -> BTreeSet<Route> {
        ROUTES.iter().map(|(l, m, p)| (l.to_string(), m.to_string(), p.to_string())).collect()
    }

    /// Every operation of the document, once per listener in its `x-listeners`.
    fn routes_in_document() -> BTreeSet<Route> {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for listener in op["x-listeners"].as_array().expect("x-listeners") {
                    let listener = listener.as_str().expect("listener name").to_string();
                    found.insert((listener, method.to_uppercase(), path.clone()));
                }
            }
        }
        found
    }

    /// Fails naming the routes only one side has.
    fn assert_same(what: &str, found: BTreeSet<Route>, listed: BTreeSet<Route>) {
        let only_found: Vec<_> = found.difference(&listed).collect();
        let only_listed: Vec<_> = listed.difference(&found).collect();
        assert!(
            only_found.is_empty() && only_listed.is_empty(),
            "{what} but not in api::ROUTES: {only_found:?}; in api::ROUTES but not {what}: {only_listed:?} \
             (a new route goes into the router, ROUTES and docs/openapi.json together)"
        );
    }

    #[test]
    fn the_routers_serve_exactly_the_listed_routes() {
        assert_same("served by the routers (src/api/mod.rs)", routes_in_source(), routes_const());
    }

    #[test]
    fn the_document_describes_exactly_the_listed_routes() {
        assert_same("described in docs/openapi.json", routes_in_document(), routes_const());
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version_and_every_operation_names_its_roles() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let roles = op["x-roles"].as_array().unwrap_or_else(|| panic!("{method} {path}: x-roles"));
                // Deny by default: only /healthz is open.
                assert_eq!(roles.is_empty(), path == "/healthz", "{method} {path}");
                for r in roles {
                    assert!(
                        ["producer", "auditor", "admin", "monitor", "reader"].contains(&r.as_str().unwrap()),
                        "{method} {path}"
                    );
                }
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: a success answer");
                if !roles.is_empty() {
                    for status in ["401", "403"] {
                        assert!(responses.contains_key(status), "{method} {path}: {status}");
                    }
                }
            }
        }
    }
}
