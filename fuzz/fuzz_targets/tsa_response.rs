//! RFC 3161 answers (src/tsa/verify.rs): a `TimeStampResp` as a TSA returns it over HTTP and as bundles and
//! receipts store it, and a bare token (`ContentInfo`). The expected imprint is read out of the input itself, so
//! mutations get past the imprint check into the CMS signature, ESS, certificate chain and policy checks, which
//! run against the seed TSA's CA. A wrong imprint must always be refused.
#![no_main]

use anchorlog_core::tsa::{self, TimeStampResp, TstInfo, VerifyOptions, ID_CT_TST_INFO};
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::Decode;
use libfuzzer_sys::fuzz_target;

/// The imprint the token claims, if the input decodes that far.
fn claimed_imprint(token: &ContentInfo) -> Option<[u8; 32]> {
    let sd: SignedData = token.content.decode_as().ok()?;
    if sd.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return None;
    }
    let tst = TstInfo::from_der(sd.encap_content_info.econtent.as_ref()?.value()).ok()?;
    tst.message_imprint.hashed_message.as_bytes().try_into().ok()
}

fuzz_target!(|data: &[u8]| {
    let token = TimeStampResp::from_der(data)
        .ok()
        .and_then(|r| r.time_stamp_token)
        .or_else(|| ContentInfo::from_der(data).ok());
    let claimed = token.as_ref().and_then(claimed_imprint);
    let trust = anchorlog_fuzz::tsa_anchors();
    for (imprint, nonce) in [(claimed, None), (claimed, Some(&[1u8][..])), (None, None)] {
        let opts = VerifyOptions {
            expected_imprint: imprint.unwrap_or([0x5a; 32]),
            expected_nonce: nonce,
            trust,
            policy: None,
            not_before: None,
        };
        let resp = tsa::verify_response(data, &opts);
        let bare = tsa::verify_token(data, &opts);
        if imprint.is_none() && claimed != Some([0x5a; 32]) {
            assert!(resp.is_err() && bare.is_err(), "a token verified against an imprint it does not carry");
        }
        for e in [resp.err(), bare.err()].into_iter().flatten() {
            let _ = (e.to_string(), e.is_retryable());
        }
    }
});
