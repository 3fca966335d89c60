//! ASN.1 types of RFC 3161 (TSP) and RFC 2634/5035 (ESS signing certificate attributes).
//!
//! Why our own types instead of `x509-tsp 0.1.0`: its `TstInfo` uses der's strict
//! `GeneralizedTime`, which rejects fractional seconds (`20261123111912.831Z`). Real TSAs send
//! fractions, so [`TstInfo::gen_time`] is a [`GenTime`] that accepts `YYYYMMDDhhmmss[.f+]Z`.
//! The request/response types are here too so the module needs neither `x509-tsp` nor `cmpv2`.
//! The ESS types exist in no RustCrypto crate of the der 0.7 family.

use der::asn1::{BitString, Int, ObjectIdentifier, OctetString};
use der::{DecodeValue, EncodeValue, FixedTag, Header, Length, Reader, Sequence, Tag, Writer};
use spki::AlgorithmIdentifierOwned;
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::Extensions;

/// `id-ct-TSTInfo` (1.2.840.113549.1.9.16.1.4): the eContentType of a time-stamp token.
pub const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");

/// `MessageImprint ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, hashedMessage OCTET STRING }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct MessageImprint {
    /// Hash algorithm (SHA-256 for everything this module requests).
    pub hash_algorithm: AlgorithmIdentifierOwned,
    /// The hash of the time-stamped data.
    pub hashed_message: OctetString,
}

/// `TimeStampReq` (RFC 3161 §2.4.1).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampReq {
    /// Always 1.
    pub version: u8,
    /// What to time-stamp.
    pub message_imprint: MessageImprint,
    /// Requested TSA policy (optional).
    #[asn1(optional = "true")]
    pub req_policy: Option<ObjectIdentifier>,
    /// Random nonce the TSA must echo.
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    /// Ask the TSA to embed its certificate in the token.
    #[asn1(default = "Default::default")]
    pub cert_req: bool,
    /// Request extensions (unused).
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub extensions: Option<Extensions>,
}

/// `PKIStatusInfo` (RFC 3161 §2.4.2 / RFC 4210).
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct PkiStatusInfo {
    /// 0 granted, 1 grantedWithMods, 2 rejection, 3 waiting, 4 revocationWarning, 5 revocationNotification.
    pub status: u32,
    /// `PKIFreeText ::= SEQUENCE OF UTF8String`.
    #[asn1(optional = "true")]
    pub status_string: Option<Vec<String>>,
    /// `PKIFailureInfo ::= BIT STRING`.
    #[asn1(optional = "true")]
    pub fail_info: Option<BitString>,
}

/// Names of the `PKIFailureInfo` bits RFC 3161 defines, by bit number.
const FAILURE_BITS: &[(usize, &str)] = &[
    (0, "badAlg"),
    (2, "badRequest"),
    (5, "badDataFormat"),
    (14, "timeNotAvailable"),
    (15, "unacceptedPolicy"),
    (16, "unacceptedExtension"),
    (17, "addInfoNotAvailable"),
    (25, "systemFailure"),
];

impl PkiStatusInfo {
    /// Whether a token is granted (`granted` or `grantedWithMods`).
    pub fn is_granted(&self) -> bool {
        self.status == 0 || self.status == 1
    }

    /// The free text joined with "; " (empty when absent).
    pub fn text(&self) -> String {
        self.status_string.as_ref().map(|v| v.join("; ")).unwrap_or_default()
    }

    /// Names of the failure bits that are set; bits RFC 3161 does not define are ignored.
    pub fn failure_names(&self) -> Vec<&'static str> {
        let Some(bits) = &self.fail_info else {
            return Vec::new();
        };
        // BIT STRING bit n is bit (7 - n % 8) of byte n / 8 (most significant bit first).
        let bytes = bits.raw_bytes();
        FAILURE_BITS
            .iter()
            .filter(|(n, _)| bytes.get(n / 8).is_some_and(|b| b & (0x80u8 >> (n % 8)) != 0))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// `TimeStampResp ::= SEQUENCE { status PKIStatusInfo, timeStampToken TimeStampToken OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampResp {
    /// The TSA's verdict.
    pub status: PkiStatusInfo,
    /// The token (a CMS `ContentInfo` holding `SignedData`), present when granted.
    #[asn1(optional = "true")]
    pub time_stamp_token: Option<cms::content_info::ContentInfo>,
}

/// `Accuracy ::= SEQUENCE { seconds INTEGER OPTIONAL, millis [0] INTEGER OPTIONAL, micros [1] INTEGER OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TstAccuracy {
    /// Whole seconds.
    #[asn1(optional = "true")]
    pub seconds: Option<u64>,
    /// Milliseconds (1..999).
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    pub millis: Option<u16>,
    /// Microseconds (1..999).
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub micros: Option<u16>,
}

/// `TSTInfo` (RFC 3161 §2.4.2) with a lenient [`GenTime`].
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TstInfo {
    /// Always 1.
    pub version: u8,
    /// The TSA policy under which the token was issued.
    pub policy: ObjectIdentifier,
    /// Must equal the request's imprint.
    pub message_imprint: MessageImprint,
    /// Unique per TSA (up to 160 bits).
    pub serial_number: Int,
    /// The time-stamp.
    pub gen_time: GenTime,
    /// Accuracy of `gen_time`.
    #[asn1(optional = "true")]
    pub accuracy: Option<TstAccuracy>,
    /// Whether tokens of this TSA can be ordered by `gen_time` alone.
    #[asn1(default = "Default::default")]
    pub ordering: bool,
    /// Must equal the request's nonce when one was sent.
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    /// The TSA's name (informational).
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub tsa: Option<GeneralName>,
    /// Extensions.
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    pub extensions: Option<Extensions>,
}

/// `IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber CertificateSerialNumber }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct IssuerSerial {
    /// The issuer of the identified certificate.
    pub issuer: Vec<GeneralName>,
    /// Its serial number.
    pub serial_number: Int,
}

/// `ESSCertID ::= SEQUENCE { certHash OCTET STRING (SHA-1), issuerSerial IssuerSerial OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct EssCertId {
    /// SHA-1 of the whole certificate DER.
    pub cert_hash: OctetString,
    /// Issuer and serial of the certificate.
    #[asn1(optional = "true")]
    pub issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificate ::= SEQUENCE { certs SEQUENCE OF ESSCertID, policies ... OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SigningCertificate {
    /// The first entry identifies the signer certificate.
    pub certs: Vec<EssCertId>,
    /// Ignored.
    #[asn1(optional = "true")]
    pub policies: Option<der::Any>,
}

/// `ESSCertIDv2 ::= SEQUENCE { hashAlgorithm DEFAULT sha256, certHash, issuerSerial OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct EssCertIdV2 {
    /// Absent means SHA-256 (the DER encoding omits the DEFAULT).
    #[asn1(optional = "true")]
    pub hash_algorithm: Option<AlgorithmIdentifierOwned>,
    /// Hash of the whole certificate DER.
    pub cert_hash: OctetString,
    /// Issuer and serial of the certificate.
    #[asn1(optional = "true")]
    pub issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2, policies ... OPTIONAL }`
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct SigningCertificateV2 {
    /// The first entry identifies the signer certificate.
    pub certs: Vec<EssCertIdV2>,
    /// Ignored.
    #[asn1(optional = "true")]
    pub policies: Option<der::Any>,
}

/// A `GeneralizedTime` that accepts fractional seconds: `YYYYMMDDhhmmss[.f{1,9}]Z`.
///
/// The original bytes are kept, so re-encoding gives back exactly what the TSA signed.
/// Local times and offsets (`+hhmm`) are rejected: RFC 3161 requires UTC with `Z`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct GenTime {
    raw: Vec<u8>,
    utc: OffsetDateTime,
}

impl GenTime {
    /// Parses the content octets of a GeneralizedTime.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let (body, rest) = raw.split_at_checked(14)?;
        let nanos = parse_fraction_and_z(rest)?;
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let digits = body.get(r)?;
            digits.iter().try_fold(0u32, |acc, d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
        };
        let year = i32::try_from(num(0..4)?).ok()?;
        let month = Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
        let day = u8::try_from(num(6..8)?).ok()?;
        let hour = u8::try_from(num(8..10)?).ok()?;
        let minute = u8::try_from(num(10..12)?).ok()?;
        let second = u8::try_from(num(12..14)?).ok()?;
        let date = Date::from_calendar_date(year, month, day).ok()?;
        let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
        Some(GenTime { raw: raw.to_vec(), utc: PrimitiveDateTime::new(date, time).assume_utc() })
    }

    /// The time as a UTC date-time.
    pub fn to_offset_date_time(&self) -> OffsetDateTime {
        self.utc
    }

    /// The time as a `SystemTime`.
    pub fn to_system_time(&self) -> std::time::SystemTime {
        self.utc.into()
    }

    /// RFC 3339 form, keeping the fraction if there is one (`2026-11-23T11:19:12.831Z`).
    pub fn to_rfc3339(&self) -> String {
        format_rfc3339(self.utc)
    }

    /// The content octets as received (e.g. `20261123111912.831Z`).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Formats a UTC time as RFC 3339; falls back to the debug form, which cannot happen for
/// years 0..=9999 (the only ones a GeneralizedTime can carry).
pub(crate) fn format_rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}

/// Parses `Z` or `.ddd…Z` and returns nanoseconds. More than 9 digits are truncated, which
/// only drops precision below a nanosecond.
fn parse_fraction_and_z(rest: &[u8]) -> Option<u32> {
    match rest {
        [b'Z'] => Some(0),
        [b'.', frac @ .., b'Z'] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => {
            let mut nanos = 0u32;
            for i in 0..9 {
                let d = frac.get(i).map_or(0, |d| u32::from(d - b'0'));
                nanos = nanos * 10 + d;
            }
            Some(nanos)
        }
        _ => None,
    }
}

impl<'a> DecodeValue<'a> for GenTime {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let raw = reader.read_vec(header.length)?;
        GenTime::parse(&raw).ok_or_else(|| Tag::GeneralizedTime.value_error())
    }
}

impl EncodeValue for GenTime {
    fn value_len(&self) -> der::Result<Length> {
        Length::try_from(self.raw.len())
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(&self.raw)
    }
}

impl FixedTag for GenTime {
    const TAG: Tag = Tag::GeneralizedTime;
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};

    fn gt(s: &str) -> Option<GenTime> {
        GenTime::parse(s.as_bytes())
    }

    #[test]
    fn parses_whole_seconds() {
        let t = gt("20261123111912Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-23T11:19:12Z");
        assert_eq!(t.to_offset_date_time().unix_timestamp(), 1_795_432_752);
    }

    #[test]
    fn parses_fractions() {
        assert_eq!(gt("20261123111912.831Z").unwrap().to_rfc3339(), "2026-11-23T11:19:12.831Z");
        assert_eq!(gt("20261123111912.5Z").unwrap().to_offset_date_time().nanosecond(), 500_000_000);
        assert_eq!(gt("20261123111912.123456789Z").unwrap().to_offset_date_time().nanosecond(), 123_456_789);
        assert_eq!(gt("20261123111912.1234567891Z").unwrap().to_offset_date_time().nanosecond(), 123_456_789);
    }

    #[test]
    fn rejects_non_utc_and_junk() {
        for s in [
            "2026112311191Z",
            "20261123111912",
            "20261123111912.Z",
            "20261123111912+0100",
            "20261123111912.8a1Z",
            "20261323111912Z",
            "20261123251912Z",
            "2026112311191xZ",
            "",
        ] {
            assert_eq!(gt(s), None, "{s}");
        }
    }

    #[test]
    fn der_round_trip_keeps_raw_bytes() {
        let der = [&[0x18, 19][..], b"20261123111912.831Z"].concat();
        let t = GenTime::from_der(&der).unwrap();
        assert_eq!(t.raw(), b"20261123111912.831Z");
        assert_eq!(t.to_der().unwrap(), der);
        let bad = [&[0x18, 15][..], b"2026112311191ZZ"].concat();
        assert!(GenTime::from_der(&bad).is_err());
    }

    #[test]
    fn failure_bits_are_named() {
        // bits 0 (badAlg) and 14 (timeNotAvailable): bytes 0x80 0x02, 1 unused bit.
        let info = PkiStatusInfo {
            status: 2,
            status_string: Some(vec!["a".into(), "b".into()]),
            fail_info: Some(BitString::new(1, vec![0x80, 0x02]).unwrap()),
        };
        assert!(!info.is_granted());
        assert_eq!(info.text(), "a; b");
        assert_eq!(info.failure_names(), vec!["badAlg", "timeNotAvailable"]);
    }
}
