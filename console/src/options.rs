//! What the auditor trusts, from the page's inputs: the signer's key(s) as PEM text and the options object.

use anchorlog_core::key::{pem_blocks, PublicKey};
use anchorlog_core::note::VerifierKey;
use anchorlog_core::tsa::TrustAnchors;
use anchorlog_core::verify::timestamps::TimestampPolicy;
use anchorlog_core::verify::witnesses::WitnessPolicy;
use serde::Deserialize;
use std::time::Duration;

/// Longest accepted key or CA text: a few certificates, not a file dropped by mistake.
pub const MAX_PEM_BYTES: usize = 256 * 1024;

/// The options object (JSON) the page sends with every request; unknown fields are refused so that a typo
/// is not a silently skipped check.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The log's origin every head must carry (`--origin`); default: a certificate's origin, else the log's.
    pub origin: Option<String>,
    /// TSA CA certificate(s), PEM (`--tsa-ca`): check RFC 3161 tokens.
    pub tsa_ca_pem: Option<String>,
    /// A head without a token fails (`--require-timestamps`).
    #[serde(default)]
    pub require_timestamps: bool,
    /// How much earlier than the seal time a token's genTime may be, seconds (`--tsa-max-skew-s`).
    pub tsa_max_skew_s: Option<u64>,
    /// The longest a token may follow its head's seal, seconds (`--max-timestamp-delay`).
    pub max_timestamp_delay_s: Option<u64>,
    /// Witness vkeys whose cosignatures count (`--witness`).
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// Distinct listed witnesses the newest head needs (`--witness-quorum`); default: all.
    pub witness_quorum: Option<usize>,
    /// The keys are a keyring (`--keyring`; docs/FORMAT.md §20, "Keyrings"): the keys of the log's nodes, any
    /// of which may sign any head. Off: the keys only start the chain of keys.
    #[serde(default)]
    pub keyring: bool,
}

/// The parsed trust: what every verification is checked against.
#[derive(Debug)]
pub struct Trust {
    /// The signer keys the auditor gave (at least one).
    pub keys: Vec<PublicKey>,
    /// The pinned origin: given, or the first certificate's.
    pub origin: Option<String>,
    /// The token policy, with a TSA CA.
    pub timestamps: Option<TimestampPolicy>,
    /// The cosignature policy, with witness keys.
    pub witnesses: Option<WitnessPolicy>,
    /// The keys are a keyring ([`Options::keyring`]).
    pub keyring: bool,
}

impl Trust {
    /// Parses the keys and the options; the error says which input is wrong and what to give instead.
    pub fn parse(keys: &str, options: &str) -> Result<Trust, String> {
        if keys.len() > MAX_PEM_BYTES {
            return Err(format!(
                "the key text is {} bytes; a public key or certificate is a few hundred",
                keys.len()
            ));
        }
        let options: Options = if options.trim().is_empty() {
            Options::default()
        } else {
            serde_json::from_str(options).map_err(|e| format!("the options are not understood: {e}"))?
        };
        let mut parsed = Vec::new();
        for (i, block) in pem_blocks(keys).into_iter().enumerate() {
            let key = PublicKey::from_pem(block)
                .map_err(|e| format!("key {} is not an ECDSA P-256 public key or certificate: {e}", i + 1))?;
            // A key given twice (as the signer key and in the keyring) counts once.
            if !parsed.iter().any(|k: &PublicKey| k.key_id == key.key_id) {
                parsed.push(key);
            }
        }
        if parsed.is_empty() {
            return Err("no signer key: give the appliance's public key or certificate (PEM, \
                        -----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----)"
                .into());
        }
        let origin =
            options.origin.clone().or_else(|| parsed.iter().find_map(|k| k.certified_origin.clone()));
        let timestamps = match &options.tsa_ca_pem {
            None => None,
            Some(pem) => {
                if pem.len() > MAX_PEM_BYTES {
                    return Err(format!(
                        "the TSA CA text is {} bytes; give the CA certificate(s) only",
                        pem.len()
                    ));
                }
                let anchors = TrustAnchors::from_pem(pem.as_bytes())
                    .map_err(|e| format!("the TSA CA certificate(s) cannot be used: {e}"))?;
                let mut policy = TimestampPolicy::new(anchors);
                policy.require = options.require_timestamps;
                if let Some(s) = options.tsa_max_skew_s {
                    policy.max_skew = Duration::from_secs(s);
                }
                if let Some(s) = options.max_timestamp_delay_s {
                    policy.max_delay = Duration::from_secs(s);
                }
                Some(policy)
            }
        };
        let witnesses = if options.witnesses.is_empty() {
            None
        } else {
            let keys = options
                .witnesses
                .iter()
                .map(|v| {
                    VerifierKey::parse(v.trim())
                        .map_err(|e| format!("witness key {v:?} is not a vkey (name+keyid+key): {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(WitnessPolicy::new(keys, options.witness_quorum).map_err(|e| format!("witnesses: {e}"))?)
        };
        Ok(Trust { keys: parsed, origin, timestamps, witnesses, keyring: options.keyring })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_and_unknown_option_say_what_to_give() {
        let e = Trust::parse("", "{}").unwrap_err();
        assert!(e.starts_with("no signer key: give the appliance's public key"), "{e}");
        let e = Trust::parse("x", r#"{"tsa_ca": "x"}"#).unwrap_err();
        assert!(e.starts_with("the options are not understood: unknown field `tsa_ca`"), "{e}");
        let e = Trust::parse("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "").unwrap_err();
        assert!(e.starts_with("key 1 is not an ECDSA P-256 public key or certificate"), "{e}");
    }

    #[test]
    fn the_keyring_option_makes_the_keys_a_keyring() {
        const KEY: &str = include_str!("../../core/tests/vectors/log-key.pem");
        assert!(!Trust::parse(KEY, "{}").unwrap().keyring);
        // The same key twice (as the signer key and in the keyring) counts once.
        let twice = format!("{KEY}\n{KEY}");
        let t = Trust::parse(&twice, r#"{"keyring": true}"#).unwrap();
        assert_eq!((t.keyring, t.keys.len()), (true, 1));
    }
}
