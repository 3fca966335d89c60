//! Shared pieces of the fuzz targets: the public keys the seed corpora were made with, so that inputs near a
//! seed reach the signature, chain and proof checks instead of stopping at "unknown key".
//!
//! The keys come from a throw-away `anchorlog dev` instance (fuzz/keys/README.md); they are public keys only.

use anchorlog_core::verify::timestamps::TimestampPolicy;
use anchorlog_core::verify::witnesses::WitnessPolicy;
use anchorlog_core::key::PublicKey;
use anchorlog_core::note::VerifierKey;
use anchorlog_core::tsa::TrustAnchors;
use std::sync::OnceLock;

/// The seed log's signing key (`anchorlog keys export` of the dev instance).
pub fn log_key() -> &'static PublicKey {
    static KEY: OnceLock<PublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        PublicKey::from_pem(include_str!("../keys/log-key.pem"))
            .expect("fuzz/keys/log-key.pem is a P-256 key")
    })
}

/// The seed log's origin.
pub fn log_origin() -> &'static str {
    include_str!("../keys/origin").trim_end()
}

/// The seed log's key as a signed-note verifier key (ECDSA, C2SP signed-note type 0x02).
pub fn log_vkey() -> &'static VerifierKey {
    static KEY: OnceLock<VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| {
        VerifierKey::ecdsa(log_origin(), &log_key().spki_der).expect("the seed origin is a valid key name")
    })
}

/// The seed log's witness (`cosignature/v1` verifier key).
pub fn witness_vkey() -> &'static VerifierKey {
    static KEY: OnceLock<VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| {
        VerifierKey::parse(include_str!("../keys/witness.vkey").trim_end())
            .expect("fuzz/keys/witness.vkey parses")
    })
}

/// The seed TSA's CA.
pub fn tsa_anchors() -> &'static TrustAnchors {
    static ANCHORS: OnceLock<TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        TrustAnchors::from_pem(include_bytes!("../keys/tsa-ca.pem")).expect("fuzz/keys/tsa-ca.pem parses")
    })
}

/// Tokens must chain to the seed TSA's CA.
pub fn timestamp_policy() -> TimestampPolicy {
    TimestampPolicy::new(tsa_anchors().clone())
}

/// The seed witness must have cosigned.
pub fn witness_policy() -> WitnessPolicy {
    WitnessPolicy::new(vec![witness_vkey().clone()], None).expect("one witness is a valid policy")
}

/// The checks shared by the `ingest_*` targets.
pub mod ingest {
    use anchorlog::formats::{self, Format, Limits, MAX_SOURCE_ID_LEN};

    /// Parses `body` as `format` framed both ways (JSON and NDJSON), with the default limits and with tight
    /// ones, and checks what every accepted body promises (src/formats/mod.rs): each event's `raw` is a JSON
    /// value found verbatim in the body, ids are bounded, counts stay within the limits, refusals are 4xx, and
    /// the indexer's re-derivation from `raw` does not panic either.
    pub fn check(format: Format, body: &[u8]) {
        let tight = Limits { max_events: 3, max_depth: 4 };
        for limits in [Limits::default(), tight] {
            for ndjson in [false, true] {
                for normalize in [true, false] {
                    match formats::parse_with(format, body, ndjson, &limits, normalize) {
                        Ok(events) => {
                            assert!(events.len() <= limits.max_events, "more events than the limit");
                            for ev in &events {
                                assert!(
                                    serde_json::from_slice::<serde::de::IgnoredAny>(&ev.raw).is_ok(),
                                    "raw is not a JSON value"
                                );
                                assert!(contains(body, &ev.raw), "raw is not a slice of the body");
                                if let Some(id) = &ev.source_id {
                                    assert!(id.len() <= MAX_SOURCE_ID_LEN, "source id longer than the bound");
                                }
                                let _ = formats::normalize_stored(format.as_str(), &ev.raw);
                            }
                        }
                        Err(e) => {
                            let status = e.http_status();
                            assert!((400..500).contains(&status), "refusal with status {status}");
                            assert!(!e.code().is_empty());
                            let _ = e.to_string();
                        }
                    }
                }
            }
        }
        // The indexer's crash recovery re-derives fields from stored bytes of any format.
        let _ = formats::normalize_stored(format.as_str(), body);
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
    }
}

/// Syslog messages (src/formats/syslog.rs): one frame of the syslog listener, or an HTTP body of lines.
pub mod syslog {
    use anchorlog::formats::{self, syslog, Limits};

    /// Reads `body` as one message (at two receive times, for the year-less RFC 3164 timestamp) and as an HTTP
    /// body of lines: no panic, MSG lies inside the frame, every accepted line is the body's bytes unchanged and
    /// holds no LF, and the stored form re-derives without a panic.
    pub fn check(body: &[u8]) {
        for now_ms in [0, 1_796_644_800_000, i64::MAX / 2] {
            let h = syslog::parse_header(body, now_ms);
            assert!(h.msg_offset <= body.len(), "MSG starts past the frame");
            let _ = syslog::normalize(body, now_ms);
        }
        let tight = Limits { max_events: 3, max_depth: 4 };
        for limits in [Limits::default(), tight] {
            if let Ok(events) = syslog::parse(body, &limits, true) {
                assert!(events.len() <= limits.max_events, "more events than the limit");
                for ev in &events {
                    assert!(!ev.raw.is_empty() && !ev.raw.contains(&b'\n'), "a line is empty or holds an LF");
                    assert!(
                        body.windows(ev.raw.len()).any(|w| w == ev.raw.as_slice()),
                        "raw is not from the body"
                    );
                    assert!(ev.source_id.is_none(), "syslog has no event ids");
                }
            }
        }
        let _ = formats::normalize_stored("syslog", body);
    }
}
