//! The TPM commands tss-esapi 7.7 does not wrap, called through libtss2's ESYS directly:
//! `TPM2_ReadClock` (the reset count a head's counter line carries) and `TPM2_NV_Certify` (the certified
//! counter reading of `keys attest`).
//!
//! tss-esapi keeps its `ESYS_CONTEXT` private, so these run on a connection of their own ([`RawEsys`]).
//! swtpm over TCP and `/dev/tpm0` serve **one connection at a time** (a second one waits until the first is
//! closed; measured, docs/TPM.md), so a `RawEsys` is only ever opened while no tss-esapi `Context` of the
//! same process is connected: the signer reads the clock just before it opens its connection, and
//! `keys attest` certifies the counter after it closed its own.
//!
//! Every output buffer ESYS allocates is freed with `Esys_Free` on all paths; the context and TCTI are
//! finalized on drop; the transient AK is flushed whatever `TPM2_NV_Certify` returned.

use std::ffi::CString;
use std::ptr::null_mut;

use tss_esapi::constants::response_code::Tss2ResponseCode;
use tss_esapi::constants::tss::{TPM2_ALG_NULL, TPM2_SU_CLEAR};
use tss_esapi::structures::{Auth, Data, Public, Signature};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::{
    Esys_CreatePrimary, Esys_Finalize, Esys_FlushContext, Esys_Free, Esys_Initialize, Esys_NV_Certify,
    Esys_ReadClock, Esys_Startup, Esys_TR_FromTPMPublic, Esys_TR_SetAuth, Tss2_TctiLdr_Finalize,
    Tss2_TctiLdr_Initialize, ESYS_CONTEXT, ESYS_TR, ESYS_TR_NONE, ESYS_TR_PASSWORD, ESYS_TR_RH_ENDORSEMENT,
    TPM2B_ATTEST, TPM2B_AUTH, TPM2B_CREATION_DATA, TPM2B_DATA, TPM2B_DIGEST, TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE, TPML_PCR_SELECTION, TPMS_TIME_INFO, TPMT_SIGNATURE, TPMT_SIG_SCHEME,
    TPMT_TK_CREATION, TSS2_RC, TSS2_TCTI_CONTEXT,
};

use super::{key_error, tss_error, TpmError};

/// `TPM_RC_INITIALIZE`: `TPM2_Startup` on a started TPM (ESYS passes it through on some versions).
const TPM_RC_INITIALIZE: TSS2_RC = 0x100;
/// Bytes of an NV counter.
const COUNTER_SIZE: u16 = 8;

/// The TPM's reset and restart counts (`TPMS_CLOCK_INFO`), as `TPM2_ReadClock` reports them (not obfuscated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClockReading {
    /// TPM resets (power cycles, `TPM2_Startup(CLEAR)` without a saved state) since the last `TPM2_Clear`.
    pub reset_count: u32,
    /// `TPM2_Shutdown(STATE)` / `TPM2_Startup` cycles since the last reset.
    pub restart_count: u32,
}

/// What `TPM2_NV_Certify` returned: the AK's public area as the TPM re-derived it, the marshalled
/// `TPMS_ATTEST` and the AK's signature over it.
pub(super) struct NvCertified {
    pub ak_public: Public,
    pub attest: Vec<u8>,
    pub signature: Signature,
}

/// An ESYS context on its own TCTI connection. Not `Send`: it lives and dies within one call.
pub(super) struct RawEsys {
    ctx: *mut ESYS_CONTEXT,
    tcti: *mut TSS2_TCTI_CONTEXT,
    tcti_conf: String,
}

impl Drop for RawEsys {
    fn drop(&mut self) {
        // SAFETY: both pointers were produced by their initialize functions in `open` (or are null, which the
        // finalizers accept) and are finalized exactly once, here; the ESYS context goes first because it
        // uses the TCTI.
        unsafe {
            if !self.ctx.is_null() {
                Esys_Finalize(&mut self.ctx);
            }
            if !self.tcti.is_null() {
                Tss2_TctiLdr_Finalize(&mut self.tcti);
            }
        }
    }
}

/// A TSS return code as the tss-esapi error the rest of the backend classifies.
fn rc_error(rc: TSS2_RC) -> tss_esapi::Error {
    tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
}

/// Frees an ESYS output buffer (null is fine).
fn free<T>(p: *mut T) {
    // SAFETY: `p` is null or a buffer ESYS allocated for an output parameter and nobody else frees it.
    unsafe { Esys_Free(p.cast()) }
}

impl RawEsys {
    /// Connects through `tcti` and makes sure the TPM is started (like the tss-esapi connection does).
    pub(super) fn open(tcti: &str) -> Result<RawEsys, TpmError> {
        let unreachable = |reason: String| TpmError::TctiUnreachable { tcti: tcti.to_string(), reason };
        let conf = tcti
            .parse::<TctiNameConf>()
            .map_err(|e| TpmError::InvalidTcti { tcti: tcti.to_string(), reason: e.to_string() })?;
        let conf = CString::try_from(conf)
            .map_err(|e| TpmError::InvalidTcti { tcti: tcti.to_string(), reason: e.to_string() })?;
        let mut raw = RawEsys { ctx: null_mut(), tcti: null_mut(), tcti_conf: tcti.to_string() };
        // SAFETY: `conf` is a valid NUL-terminated string; `raw.tcti` receives a context owned by `raw`.
        let rc = unsafe { Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut raw.tcti) };
        if rc != 0 {
            return Err(unreachable(super::describe_tss(&rc_error(rc))));
        }
        // SAFETY: `raw.tcti` is an initialized TCTI context; `raw.ctx` receives an ESYS context owned by `raw`.
        let rc = unsafe { Esys_Initialize(&mut raw.ctx, raw.tcti, null_mut()) };
        if rc != 0 {
            return Err(unreachable(super::describe_tss(&rc_error(rc))));
        }
        // SAFETY: `raw.ctx` is an initialized ESYS context.
        let rc = unsafe { Esys_Startup(raw.ctx, TPM2_SU_CLEAR) };
        if rc != 0 && rc != TPM_RC_INITIALIZE {
            return Err(match tss_error(rc_error(rc), "TPM2_Startup", tcti) {
                TpmError::ConnectionLost { tcti, reason } => TpmError::TctiUnreachable { tcti, reason },
                other => other,
            });
        }
        Ok(raw)
    }

    /// `TPM2_ReadClock`: the reset and restart counts, in plain text.
    pub(super) fn read_clock(&mut self) -> Result<ClockReading, TpmError> {
        let mut time: *mut TPMS_TIME_INFO = null_mut();
        // SAFETY: `self.ctx` is initialized; ESYS allocates `time` on success.
        let rc = unsafe { Esys_ReadClock(self.ctx, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &mut time) };
        if rc != 0 {
            free(time);
            return Err(tss_error(rc_error(rc), "TPM2_ReadClock", &self.tcti_conf));
        }
        // SAFETY: on success ESYS set `time` to a valid TPMS_TIME_INFO (checked for null); copied out, then freed.
        let info = unsafe { time.as_ref().copied() };
        free(time);
        let info = info.ok_or_else(|| TpmError::Device {
            operation: "TPM2_ReadClock",
            reason: "ESYS returned no time info".into(),
        })?;
        Ok(ClockReading {
            reset_count: info.clockInfo.resetCount,
            restart_count: info.clockInfo.restartCount,
        })
    }

    /// Creates the AK from `ak_template` (a primary in the endorsement hierarchy, so the same key as the one
    /// that certified the signing key), has it certify the 8-byte counter at NV `index` over `nonce`
    /// (`TPM2_NV_Certify`, authorised with the index's own auth value), and flushes it.
    pub(super) fn nv_certify(
        &mut self,
        ak_template: Public,
        index: u32,
        auth: Option<&[u8]>,
        nonce: &[u8],
    ) -> Result<NvCertified, TpmError> {
        let tcti = self.tcti_conf.clone();
        let template =
            TPM2B_PUBLIC::try_from(ak_template).map_err(|e| tss_error(e, "build AK template", &tcti))?;
        let sensitive = TPM2B_SENSITIVE_CREATE::default();
        let outside = TPM2B_DATA::from(Data::default());
        let pcrs = TPML_PCR_SELECTION::default();
        let mut ak: ESYS_TR = ESYS_TR_NONE;
        let mut out_public: *mut TPM2B_PUBLIC = null_mut();
        let mut creation_data: *mut TPM2B_CREATION_DATA = null_mut();
        let mut creation_hash: *mut TPM2B_DIGEST = null_mut();
        let mut creation_ticket: *mut TPMT_TK_CREATION = null_mut();
        // SAFETY: all inputs are valid structures that outlive the call; ESYS allocates the outputs.
        let rc = unsafe {
            Esys_CreatePrimary(
                self.ctx,
                ESYS_TR_RH_ENDORSEMENT,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                ESYS_TR_NONE,
                &sensitive,
                &template,
                &outside,
                &pcrs,
                &mut ak,
                &mut out_public,
                &mut creation_data,
                &mut creation_hash,
                &mut creation_ticket,
            )
        };
        free(creation_data);
        free(creation_hash);
        free(creation_ticket);
        if rc != 0 {
            free(out_public);
            return Err(key_error(rc_error(rc), "TPM2_CreatePrimary(AK)", &tcti, super::TPM_RH_ENDORSEMENT));
        }
        // SAFETY: on success `out_public` points to a TPM2B_PUBLIC (checked for null); copied out, then freed.
        let public = unsafe { out_public.as_ref().copied() };
        free(out_public);
        let certified = self.certify_with(ak, public, index, auth, nonce);
        // SAFETY: `ak` is the transient object created above; flushed exactly once.
        let flushed = unsafe { Esys_FlushContext(self.ctx, ak) };
        let certified = certified?;
        if flushed != 0 {
            return Err(tss_error(rc_error(flushed), "TPM2_FlushContext", &tcti));
        }
        Ok(certified)
    }

    fn certify_with(
        &mut self,
        ak: ESYS_TR,
        ak_public: Option<TPM2B_PUBLIC>,
        index: u32,
        auth: Option<&[u8]>,
        nonce: &[u8],
    ) -> Result<NvCertified, TpmError> {
        let tcti = self.tcti_conf.clone();
        let ak_public = ak_public
            .ok_or_else(|| TpmError::Device {
                operation: "TPM2_CreatePrimary(AK)",
                reason: "ESYS returned no public area".into(),
            })
            .and_then(|p| Public::try_from(p).map_err(|e| tss_error(e, "TPM2_CreatePrimary(AK)", &tcti)))?;
        let mut nv: ESYS_TR = ESYS_TR_NONE;
        // SAFETY: `self.ctx` is initialized; `nv` receives an ESYS handle owned by the context.
        let rc = unsafe {
            Esys_TR_FromTPMPublic(self.ctx, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &mut nv)
        };
        if rc != 0 {
            return Err(super::counter::counter_error(
                rc_error(rc),
                "Esys_TR_FromTPMPublic(counter)",
                &tcti,
                index,
            ));
        }
        if let Some(auth) = auth {
            let value = Auth::try_from(auth).map_err(|_| TpmError::AuthTooLong { len: auth.len() })?;
            let value = TPM2B_AUTH::from(value);
            // SAFETY: `nv` is a valid ESYS handle of this context; `value` outlives the call (ESYS copies it).
            let rc = unsafe { Esys_TR_SetAuth(self.ctx, nv, &value) };
            if rc != 0 {
                return Err(tss_error(rc_error(rc), "Esys_TR_SetAuth", &tcti));
            }
        }
        let qualifying = Data::try_from(nonce).map_err(|_| TpmError::NonceTooLong { len: nonce.len() })?;
        let qualifying = TPM2B_DATA::from(qualifying);
        let scheme = TPMT_SIG_SCHEME { scheme: TPM2_ALG_NULL, ..Default::default() };
        let mut info: *mut TPM2B_ATTEST = null_mut();
        let mut signature: *mut TPMT_SIGNATURE = null_mut();
        // SAFETY: handles belong to this context, inputs outlive the call, ESYS allocates the outputs.
        // Sessions: the AK (empty auth) and the index (its auth value), both password sessions.
        let rc = unsafe {
            Esys_NV_Certify(
                self.ctx,
                ak,
                nv,
                nv,
                ESYS_TR_PASSWORD,
                ESYS_TR_PASSWORD,
                ESYS_TR_NONE,
                &qualifying,
                &scheme,
                COUNTER_SIZE,
                0,
                &mut info,
                &mut signature,
            )
        };
        // SAFETY: on success both point to ESYS-allocated structures (checked for null); copied out, then freed.
        let (info_copy, signature_copy) = unsafe { (info.as_ref().copied(), signature.as_ref().copied()) };
        free(info);
        free(signature);
        if rc != 0 {
            return Err(super::counter::counter_error(rc_error(rc), "TPM2_NV_Certify", &tcti, index));
        }
        let missing = |what: &str| TpmError::Device {
            operation: "TPM2_NV_Certify",
            reason: format!("ESYS returned no {what}"),
        };
        let info = info_copy.ok_or_else(|| missing("attestation"))?;
        let signature = signature_copy.ok_or_else(|| missing("signature"))?;
        let attest = info
            .attestationData
            .get(..usize::from(info.size))
            .ok_or_else(|| TpmError::Device {
                operation: "TPM2_NV_Certify",
                reason: format!("attestation size {} exceeds its buffer", info.size),
            })?
            .to_vec();
        let signature = Signature::try_from(signature).map_err(|e| tss_error(e, "TPM2_NV_Certify", &tcti))?;
        Ok(NvCertified { ak_public, attest, signature })
    }
}

/// Reads the TPM's reset count on a short connection of its own (see the module docs for why it must not
/// overlap another connection).
pub(super) fn read_clock(tcti: &str) -> Result<ClockReading, TpmError> {
    RawEsys::open(tcti)?.read_clock()
}
