//! The head counter in the TPM: an orderly NV counter index (`signer.tpm.counter_index`), provisioned by
//! `anchorlog keys generate --tpm`, read and incremented on the signer's connection (docs/TPM.md
//! "Monotonic counter"; the rules that use it are in [`anchorlog_core::counter`]).
//!
//! Provisioning prefers the platform hierarchy: the index is then created with `TPMA_NV_PLATFORMCREATE`
//! and `TPMA_NV_POLICY_DELETE` and the delete policy `PolicyCommandCode(TPM_CC_NV_UndefineSpaceSpecial)`,
//! which only a caller with platform authorisation can satisfy (a TPM refuses `POLICY_DELETE` on an
//! owner-created index: `TPM_RC_ATTRIBUTES`, measured). Where firmware has disabled the platform hierarchy
//! (most real machines) or set its auth value, the index is created by the owner instead; what protects it
//! then is the TPM's rule that a new counter starts above every counter ever deleted (docs/TPM.md).

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::{NvIndexType, PropertyTag};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Auth, Digest, NvPublic, NvPublicBuilder};
use tss_esapi::tss2_esys::{TPM2_ALG_ID, TPMA_NV};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::{classify, map_error, raw_rc, tpm_code, tss_error, RcClass, TpmError};
use crate::config::{TPM_COUNTER_INDEX_FIRST, TPM_COUNTER_INDEX_LAST};
use anchorlog_core::attestation::{platform_delete_policy, tpm_name_sha256, NvPublicArea};
use anchorlog_core::counter::{CounterObservation, REFERENCE_MAX_ORDERLY_COUNT};
use anchorlog_core::head::HeadCounter;

/// Bytes of an NV counter.
const COUNTER_BYTES: u16 = 8;
/// `TPM_RC_HIERARCHY` (format 1, error number 5): the hierarchy is disabled.
const RC_HIERARCHY: u16 = 0x05;

/// How `keys generate --tpm` created the counter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CounterProvisioning {
    /// The NV index handle, e.g. `"0x01800010"`.
    pub index: String,
    /// `platform` (created with platform authorisation) or `owner`.
    pub hierarchy: &'static str,
    /// Whether only the platform hierarchy can delete it (`POLICY_DELETE` + the platform-only policy).
    pub delete_needs_platform: bool,
    /// `TPMA_NV_ORDERLY`.
    pub orderly: bool,
    /// The index's Name (hex), as an auditor finds it in `keys attest` evidence.
    pub name: String,
}

/// Checks that `index` is an NV index handle anchorlog may use for the counter.
pub(super) fn index_handle(index: u32) -> Result<NvIndexTpmHandle, TpmError> {
    if !(TPM_COUNTER_INDEX_FIRST..=TPM_COUNTER_INDEX_LAST).contains(&index) {
        return Err(TpmError::InvalidCounterIndex { index });
    }
    NvIndexTpmHandle::new(index).map_err(|_| TpmError::InvalidCounterIndex { index })
}

/// Like `key_error` for commands on the counter index: a wrong auth value and an absent index get their
/// own messages.
pub(super) fn counter_error(
    e: tss_esapi::Error,
    operation: &'static str,
    tcti: &str,
    index: u32,
) -> TpmError {
    match raw_rc(&e).map(classify) {
        Some(RcClass::HandleMissing) => TpmError::CounterMissing { index },
        _ => map_error(e, operation, tcti, Some(index)),
    }
}

/// The counter on an open connection.
pub(super) struct CounterConn {
    index: u32,
    handle: NvIndexHandle,
    written: bool,
    /// The TPM's reset count, read just before this connection was opened.
    reset_count: u32,
    max_orderly_count: u64,
    /// The value last read on this connection (saves a read per head; a new connection reads again).
    known_value: Option<u64>,
}

impl CounterConn {
    /// Loads the counter index on `ctx`, sets its auth value and checks that it is a counter anchorlog can
    /// read and increment with that auth value.
    pub(super) fn open(
        ctx: &mut Context,
        index: u32,
        auth: Option<&Zeroizing<Vec<u8>>>,
        reset_count: u32,
        tcti: &str,
    ) -> Result<CounterConn, TpmError> {
        let nv = index_handle(index)?;
        if !super::list_handles(ctx, super::NV_INDEX_FIRST, tcti)?.contains(&index) {
            return Err(TpmError::CounterMissing { index });
        }
        let handle: NvIndexHandle = ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv)))
            .map_err(|e| counter_error(e, "Esys_TR_FromTPMPublic(counter)", tcti, index))?
            .into();
        if let Some(auth) = auth {
            let value =
                Auth::try_from(auth.as_slice()).map_err(|_| TpmError::AuthTooLong { len: auth.len() })?;
            ctx.tr_set_auth(handle.into(), value).map_err(|e| tss_error(e, "Esys_TR_SetAuth", tcti))?;
        }
        let public = read_public(ctx, handle, index, tcti)?;
        let a = public.counter_attributes();
        if !a.counter || public.data_size != COUNTER_BYTES || !a.auth_read || !a.auth_write {
            return Err(TpmError::NotACounter {
                index,
                detail: format!(
                    "attributes {:#010x}, {} bytes; an 8-byte counter (TPM_NT_COUNTER) with AUTHREAD and AUTHWRITE \
                     is required",
                    public.attributes, public.data_size
                ),
            });
        }
        let max_orderly_count = ctx
            .get_tpm_property(PropertyTag::OrderlyCount)
            .map_err(|e| tss_error(e, "TPM2_GetCapability(TPM_PT_ORDERLY_COUNT)", tcti))?
            .map_or(REFERENCE_MAX_ORDERLY_COUNT, u64::from);
        Ok(CounterConn {
            index,
            handle,
            written: a.written,
            reset_count,
            max_orderly_count,
            known_value: None,
        })
    }

    /// The counter's value now (`None` while it was never incremented).
    fn read(&mut self, ctx: &mut Context, tcti: &str) -> Result<Option<u64>, TpmError> {
        if !self.written {
            return Ok(None);
        }
        let (index, handle) = (self.index, self.handle);
        let data = ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.nv_read(NvAuth::NvIndex(handle), handle, COUNTER_BYTES, 0)
            })
            .map_err(|e| counter_error(e, "TPM2_NV_Read(counter)", tcti, index))?;
        let bytes: [u8; 8] = data.value().try_into().map_err(|_| TpmError::Device {
            operation: "TPM2_NV_Read(counter)",
            reason: format!("the TPM returned {} bytes for an 8-byte counter", data.value().len()),
        })?;
        let value = u64::from_be_bytes(bytes);
        self.known_value = Some(value);
        Ok(Some(value))
    }

    /// Reserves the counter value for the next head: the current value if it is above `above` (reserved by an
    /// attempt that stored no head, or advanced by a TPM reset), else the value after one `TPM2_NV_Increment`.
    /// Idempotent when re-run after a lost connection: an increment that happened is seen and reused.
    ///
    /// The value after an increment is read back, never computed: the TCTI may reconnect to a TPM that was
    /// reset meanwhile (swtpm's does; measured: a head computed as "known + 1" then carried 6 while the TPM
    /// stood at 256 after its orderly jump), and the head must carry the TPM's value. The value before the
    /// increment may come from the cache: at worst it costs an increment that was not needed.
    pub(super) fn reserve(
        &mut self,
        ctx: &mut Context,
        above: Option<u64>,
        tcti: &str,
    ) -> Result<HeadCounter, TpmError> {
        let current = match self.known_value {
            Some(v) => Some(v),
            None => self.read(ctx, tcti)?,
        };
        let value = match (current, above) {
            (Some(c), Some(a)) if c > a => c,
            _ => {
                let (index, handle) = (self.index, self.handle);
                // Unknown until the increment is confirmed: a failed or lost one is re-read next time.
                self.known_value = None;
                ctx.execute_with_session(Some(AuthSession::Password), |c| {
                    c.nv_increment(NvAuth::NvIndex(handle), handle)
                })
                .map_err(|e| counter_error(e, "TPM2_NV_Increment(counter)", tcti, index))?;
                self.written = true;
                self.read(ctx, tcti)?.ok_or_else(|| TpmError::Device {
                    operation: "TPM2_NV_Increment(counter)",
                    reason: "the counter has no value after an increment".into(),
                })?
            }
        };
        if let Some(a) = above.filter(|a| value <= *a) {
            // The TPM is behind the newest head (the start-up check refuses that); never sign a non-increasing value.
            return Err(TpmError::Device {
                operation: "TPM2_NV_Increment(counter)",
                reason: format!("the counter is at {value}, not above the newest head's {a}"),
            });
        }
        self.known_value = Some(value);
        Ok(HeadCounter { value, reset_count: self.reset_count, index: self.index })
    }

    /// Whether the counter was ever incremented.
    pub(super) fn written(&self) -> bool {
        self.written
    }

    /// The NV index handle.
    pub(super) fn index(&self) -> u32 {
        self.index
    }

    /// `TPM_PT_ORDERLY_COUNT` as the TPM reports it.
    pub(super) fn max_orderly_count(&self) -> u64 {
        self.max_orderly_count
    }

    /// The index's marshalled `TPMS_NV_PUBLIC` as it is now (its Name is what `TPM2_NV_Certify` certifies).
    pub(super) fn public_bytes(&mut self, ctx: &mut Context, tcti: &str) -> Result<Vec<u8>, TpmError> {
        read_public(ctx, self.handle, self.index, tcti)?
            .marshal()
            .map_err(|e| TpmError::Device { operation: "TPM2_NV_ReadPublic(counter)", reason: e.to_string() })
    }

    /// What the TPM says about the counter, read now.
    pub(super) fn observe(&mut self, ctx: &mut Context, tcti: &str) -> Result<CounterObservation, TpmError> {
        self.known_value = None;
        let value = self.read(ctx, tcti)?;
        Ok(CounterObservation {
            index: self.index,
            value,
            reset_count: self.reset_count,
            max_orderly_count: self.max_orderly_count,
        })
    }
}

/// `TPM2_NV_ReadPublic` of the counter as the verifier's [`NvPublicArea`], cross-checked against the Name
/// the TPM reports (the auditor recomputes the Name from exactly these bytes).
pub(super) fn read_public(
    ctx: &mut Context,
    handle: NvIndexHandle,
    index: u32,
    tcti: &str,
) -> Result<NvPublicArea, TpmError> {
    let operation = "TPM2_NV_ReadPublic(counter)";
    let (public, name) = ctx
        .execute_without_session(|c| c.nv_read_public(handle))
        .map_err(|e| counter_error(e, operation, tcti, index))?;
    let area = nv_public_area(&public, tcti)?;
    let bytes = area.marshal().map_err(|e| TpmError::Device { operation, reason: e.to_string() })?;
    if area.name_alg != TPM2_ALG_ID::from(HashingAlgorithm::Sha256) || name.value() != tpm_name_sha256(&bytes)
    {
        return Err(TpmError::Device {
            operation,
            reason: "the TPM's Name of the counter does not match its marshalled SHA-256 public area".into(),
        });
    }
    Ok(area)
}

fn nv_public_area(public: &NvPublic, tcti: &str) -> Result<NvPublicArea, TpmError> {
    let operation = "TPM2_NV_ReadPublic(counter)";
    Ok(NvPublicArea {
        index: u32::from(public.nv_index()),
        name_alg: TPM2_ALG_ID::from(public.name_algorithm()),
        attributes: TPMA_NV::try_from(public.attributes()).map_err(|e| tss_error(e, operation, tcti))?,
        auth_policy: public.authorization_policy().value().to_vec(),
        data_size: u16::try_from(public.data_size())
            .map_err(|_| TpmError::Device { operation, reason: "NV data size above 65535".into() })?,
    })
}

/// Defines the counter at `index` (see the module docs): with platform authorisation if the platform
/// hierarchy is enabled and its auth value empty, else with owner authorisation. The index gets the key's
/// auth value and is left unwritten: its first increment is the first head's.
pub(super) fn provision(
    ctx: &mut Context,
    index: u32,
    auth: Option<&Zeroizing<Vec<u8>>>,
    tcti: &str,
) -> Result<CounterProvisioning, TpmError> {
    let nv = index_handle(index)?;
    if super::list_handles(ctx, super::NV_INDEX_FIRST, tcti)?.contains(&index) {
        return Err(TpmError::CounterIndexOccupied { index });
    }
    let hierarchy = match define(ctx, nv, auth, Provision::Platform) {
        Ok(()) => "platform",
        Err(e) if platform_unavailable(&e) => {
            define(ctx, nv, auth, Provision::Owner).map_err(|e| provision_error(e, tcti, index))?;
            "owner"
        }
        Err(e) => return Err(provision_error(e, tcti, index)),
    };
    let handle: NvIndexHandle = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(nv)))
        .map_err(|e| counter_error(e, "Esys_TR_FromTPMPublic(counter)", tcti, index))?
        .into();
    let area = read_public(ctx, handle, index, tcti)?;
    let bytes =
        area.marshal().map_err(|e| TpmError::Device { operation: "provision", reason: e.to_string() })?;
    Ok(CounterProvisioning {
        index: format!("{index:#010x}"),
        hierarchy,
        delete_needs_platform: area.delete_needs_platform(),
        orderly: area.counter_attributes().orderly,
        name: hex::encode(tpm_name_sha256(&bytes)),
    })
}

fn define(
    ctx: &mut Context,
    nv: NvIndexTpmHandle,
    auth: Option<&Zeroizing<Vec<u8>>>,
    by: Provision,
) -> Result<(), tss_esapi::Error> {
    let platform = matches!(by, Provision::Platform);
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_auth_write(true)
        .with_auth_read(true)
        .with_owner_read(true)
        .with_pp_read(platform)
        .with_no_da(true)
        .with_orderly(true)
        .with_platform_create(platform)
        .with_policy_delete(platform)
        .build()?;
    let mut public = NvPublicBuilder::new()
        .with_nv_index(nv)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(usize::from(COUNTER_BYTES));
    if platform {
        public = public.with_index_auth_policy(Digest::try_from(platform_delete_policy().to_vec())?);
    }
    let public = public.build()?;
    let auth = auth.map(|a| Auth::try_from(a.as_slice())).transpose()?;
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.nv_define_space(by, auth, public)).map(|_| ())
}

/// Whether defining with platform authorisation failed because the platform hierarchy is out of reach
/// (disabled by firmware: `TPM_RC_HIERARCHY`; or its auth value is set: an authorisation failure).
fn platform_unavailable(e: &tss_esapi::Error) -> bool {
    let Some(rc) = raw_rc(e) else { return false };
    if classify(rc) == RcClass::AuthFailed {
        return true;
    }
    tpm_code(rc).is_some_and(|code| code & 0x0080 != 0 && code & 0x003F == RC_HIERARCHY)
}

fn provision_error(e: tss_esapi::Error, tcti: &str, index: u32) -> TpmError {
    match raw_rc(&e).and_then(tpm_code) {
        Some(super::TPM_RC_NV_DEFINED) => TpmError::CounterIndexOccupied { index },
        _ => map_error(e, "TPM2_NV_DefineSpace(counter)", tcti, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_index_range_is_checked() {
        assert!(index_handle(0x0180_0010).is_ok());
        assert!(index_handle(0x0100_0000).is_ok());
        assert!(matches!(
            index_handle(0x01c0_000a),
            Err(TpmError::InvalidCounterIndex { index: 0x01c0_000a })
        ));
        assert!(matches!(index_handle(0x8101_0010), Err(TpmError::InvalidCounterIndex { .. })));
    }

    #[test]
    fn platform_out_of_reach_is_recognised() {
        let rc = |rc: u32| {
            tss_esapi::Error::Tss2Error(tss_esapi::constants::response_code::Tss2ResponseCode::from(rc))
        };
        assert!(platform_unavailable(&rc(0x185)), "TPM_RC_HIERARCHY on handle 1");
        assert!(platform_unavailable(&rc(0x9a2)), "TPM_RC_BAD_AUTH on session 1");
        assert!(!platform_unavailable(&rc(0x14c)), "TPM_RC_NV_DEFINED is another problem");
        assert!(!platform_unavailable(&rc(0x2c2)));
        assert!(matches!(provision_error(rc(0x14c), "t", 7), TpmError::CounterIndexOccupied { index: 7 }));
    }
}
