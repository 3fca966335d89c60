//! `anchorlog verify --db FILE --key signer.pem --counter-attestation FILE --nonce HEX`: an auditor proves
//! that the copy of the database they hold is the newest one, with the TPM as the witness.
//!
//! The evidence (`anchorlog keys attest`) carries a reading of the head counter certified by the TPM's
//! attestation key over the auditor's nonce. The database reaches it when its last head's counter is within
//! the slack of the certified value, by the same rule the appliance applies at start
//! ([`crate::counter::check_newest`]). Taken after the copy, the reading shows no head was sealed
//! beyond the copy (up to the slack); a copy older by more than the slack fails, naming its last head.

use crate::attestation::{verify_counter_attestation, AttestationError, KeyAttestation};
use crate::counter::check_newest;
use crate::head::Checkpoint;
use crate::key::PublicKey;
use crate::verify::{Failure, Report};

/// Why the database does not reach the attested counter.
#[derive(Debug, thiserror::Error)]
pub enum CounterCheckError {
    /// The evidence itself does not verify (signature, nonce, Name, not a counter …).
    #[error("the counter attestation does not verify: {0}")]
    Attestation(#[from] AttestationError),
    /// The evidence verifies, and the database is not the newest one for it.
    #[error(transparent)]
    Invalid(#[from] Failure),
}

/// What a passing check established.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttestedCounter {
    /// The counter's NV index, e.g. `0x01800010`.
    pub index: String,
    /// The index's Name as the TPM certified it (hex).
    pub index_name: String,
    /// The certified counter value.
    pub attested_value: u64,
    /// The TPM's reset count when it certified it.
    pub attested_reset_count: u32,
    /// The database's last head.
    pub last_height: u64,
    /// Its counter value.
    pub last_counter: u64,
    /// Whether only the platform hierarchy can delete the index (else the owner can; docs/TPM.md).
    pub delete_needs_platform: bool,
    /// Whether the counter is orderly.
    pub orderly: bool,
    /// The attestation key's Name (hex): pin it, it is what ties the evidence to one TPM.
    pub ak_name: String,
}

/// Checks `att` (made for `nonce`, certifying `key`) and that the verified database described by `report`
/// reaches its counter reading.
pub fn check_attested(
    report: &Report,
    att: &KeyAttestation,
    key: &PublicKey,
    nonce: &[u8],
) -> Result<AttestedCounter, CounterCheckError> {
    let (key_report, counter) = verify_counter_attestation(att, &key.spki_der, nonce)?;
    let last = report.last_checkpoint.as_deref().map(Checkpoint::parse).transpose().map_err(|e| {
        Failure::HeadMalformed { height: report.heads.saturating_sub(1), reason: e.to_string() }
    })?;
    let head = last.as_ref().and_then(|cp| cp.counter.map(|c| (cp.height, c)));
    check_newest(head.as_ref().map(|(h, c)| (*h, c)), report.heads, &counter.observation())
        .map_err(Failure::Counter)?;
    // check_newest passed with a used counter, so the database has a counter head.
    let (last_height, last_counter) = head.map_or((0, 0), |(h, c)| (h, c.value));
    Ok(AttestedCounter {
        index: format!("{:#010x}", counter.index),
        index_name: hex::encode(&counter.index_name),
        attested_value: counter.value,
        attested_reset_count: counter.clock.reset_count,
        last_height,
        last_counter,
        delete_needs_platform: counter.delete_needs_platform,
        orderly: counter.attributes.orderly,
        ak_name: hex::encode(&key_report.ak_name),
    })
}
