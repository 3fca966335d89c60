//! `Content-Encoding` of request bodies (`POST /v1/events`): `gzip` and `zstd`, decoded with the decompressed
//! size bounded *while* decoding, so a small compressed body that expands past the body limit (a "zip bomb") is
//! refused after at most `limit + 1` decoded bytes, never buffered whole.
//!
//! The compressed body itself is bounded by the same limit before decoding, and reading plus decoding by
//! `limits.body_read_timeout_ms` ([`super::ingest::read_decoded`]).

use super::ApiError;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::json;
use std::io::Read;

/// A body encoding this appliance decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No encoding (no header, or `identity`).
    Identity,
    /// RFC 1952 gzip (one or more members).
    Gzip,
    /// RFC 8878 Zstandard (one or more frames).
    Zstd,
}

impl Encoding {
    /// The header value naming it.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// The request's `Content-Encoding`; anything but one of `identity`, `gzip`, `x-gzip`, `zstd` is a 415.
pub fn from_headers(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(value) = values.next() else { return Ok(Encoding::Identity) };
    let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            format!(
                "Content-Encoding {:?} is not accepted; send the body as is, or compressed once with gzip or zstd",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )
        .with_detail(json!({"accepted": ["identity", "gzip", "zstd"]}))
    };
    if values.next().is_some() {
        return Err(unsupported());
    }
    match text.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(unsupported()),
    }
}

/// Largest zstd window accepted: the decoder allocates the window a frame declares before it decodes
/// anything, so a 20-byte frame could otherwise ask for gigabytes. 8 MiB is what RFC 8878 §3.1.1.1.2
/// recommends decoders support (every `zstd` level up to 19 stays within it); a larger body limit raises it.
pub const MIN_ZSTD_WINDOW: u64 = 8 << 20;

/// Decodes `body` per `encoding`, refusing more than `limit` decoded bytes (413 `decompressed_too_large`) and
/// data that does not decode (400 `bad_content_encoding`).
pub fn decode(encoding: Encoding, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let decoded = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => {
            let mut decoded = Vec::new();
            read_bounded(flate2::read::MultiGzDecoder::new(&body[..]), &mut decoded, limit, encoding)?;
            decoded
        }
        Encoding::Zstd => decode_zstd(&body, limit)?,
    };
    Ok(Bytes::from(decoded))
}

/// The `code` of a body that decompresses past the body limit (413).
pub const DECOMPRESSED_TOO_LARGE: &str = "decompressed_too_large";
/// The `code` of a zstd frame asking for a window beyond [`MIN_ZSTD_WINDOW`] and the body limit (413).
pub const ZSTD_WINDOW_TOO_LARGE: &str = "zstd_window_too_large";

fn too_large(limit: usize, encoding: Encoding) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        DECOMPRESSED_TOO_LARGE,
        format!(
            "the {} request body decompresses to more than the limit of {limit} bytes; send smaller batches",
            encoding.as_str()
        ),
    )
    .with_detail(json!({"limit_bytes": limit, "content_encoding": encoding.as_str()}))
}

fn corrupt(encoding: Encoding, why: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_content_encoding",
        format!(
            "the request body is not valid {} data ({why}); compress it once, as the Content-Encoding header says",
            encoding.as_str()
        ),
    )
    .with_detail(json!({"content_encoding": encoding.as_str()}))
}

/// Appends at most `limit - out.len()` decoded bytes of `reader` to `out`; one byte more is a 413.
fn read_bounded(
    reader: impl Read,
    out: &mut Vec<u8>,
    limit: usize,
    encoding: Encoding,
) -> Result<(), ApiError> {
    let room = limit.saturating_sub(out.len()) as u64;
    reader.take(room + 1).read_to_end(out).map_err(|e| corrupt(encoding, &e))?;
    if out.len() > limit {
        return Err(too_large(limit, encoding));
    }
    Ok(())
}

/// Zstandard frames one after another (RFC 8878 §3.1), each checked for its window size before it is decoded.
fn decode_zstd(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let max_window = MIN_ZSTD_WINDOW.max(limit as u64);
    let mut out = Vec::new();
    let mut rest = body;
    if rest.is_empty() {
        return Err(corrupt(Encoding::Zstd, &"the body is empty"));
    }
    while !rest.is_empty() {
        let window = zstd_window_size(rest).map_err(|why| corrupt(Encoding::Zstd, &why))?;
        if window > max_window {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ZSTD_WINDOW_TOO_LARGE,
                format!(
                    "the zstd frame asks for a {window}-byte window, more than the {max_window} bytes accepted; \
                     compress with a lower level or --long off"
                ),
            )
            .with_detail(json!({"window_bytes": window, "max_window_bytes": max_window})));
        }
        let mut cursor = rest;
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut cursor).map_err(|e| corrupt(Encoding::Zstd, &e))?;
        read_bounded(decoder, &mut out, limit, Encoding::Zstd)?;
        if cursor.len() >= rest.len() {
            return Err(corrupt(Encoding::Zstd, &"a frame consumed no input"));
        }
        rest = cursor;
    }
    Ok(out)
}

/// The window size a zstd frame header declares (RFC 8878 §3.1.1.1). Skippable frames and dictionaries are
/// refused: no shipper sends them in a request body.
fn zstd_window_size(frame: &[u8]) -> Result<u64, &'static str> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if frame.len() < 6 || frame[..4] != MAGIC {
        return Err("not a zstd frame (bad magic number)");
    }
    let descriptor = frame[4];
    let single_segment = descriptor & 0x20 != 0;
    if descriptor & 0x03 != 0 {
        return Err("the frame needs a dictionary");
    }
    if !single_segment {
        let wd = frame[5];
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        return Ok(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size, which follows the descriptor.
    let fcs = &frame[5..];
    let need = match descriptor >> 6 {
        0 => 1,
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let bytes = fcs.get(..need).ok_or("the frame header is truncated")?;
    let mut le = [0u8; 8];
    le[..need].copy_from_slice(bytes);
    let size = u64::from_le_bytes(le);
    Ok(if need == 2 { size + 256 } else { size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, value.parse().unwrap());
        h
    }

    #[test]
    fn encodings_are_named_by_the_header() {
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), Encoding::Identity);
        assert_eq!(from_headers(&headers("GZIP")).unwrap(), Encoding::Gzip);
        assert_eq!(from_headers(&headers("x-gzip")).unwrap(), Encoding::Gzip);
        assert_eq!(from_headers(&headers("zstd")).unwrap(), Encoding::Zstd);
        assert_eq!(from_headers(&headers("identity")).unwrap(), Encoding::Identity);
        for bad in ["br", "deflate", "gzip, zstd"] {
            let e = from_headers(&headers(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code),
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_content_encoding")
            );
        }
    }

    #[test]
    fn gzip_and_zstd_round_trip_including_several_members() {
        let data = b"{\"type\":\"LOGIN\"}\n".repeat(1000);
        assert_eq!(&decode(Encoding::Gzip, gzip(&data), data.len()).unwrap()[..], &data[..]);
        assert_eq!(&decode(Encoding::Zstd, Bytes::from(zstd(&data)), data.len()).unwrap()[..], &data[..]);
        // Concatenated gzip members and zstd frames decode to the concatenation (RFC 1952 §2.2, RFC 8878 §3.1).
        let mut two = gzip(b"{\"a\":1}\n").to_vec();
        two.extend_from_slice(&gzip(b"{\"b\":2}\n"));
        assert_eq!(&decode(Encoding::Gzip, Bytes::from(two), 100).unwrap()[..], b"{\"a\":1}\n{\"b\":2}\n");
        let mut two = zstd(b"{\"a\":1}\n");
        two.extend_from_slice(&zstd(b"{\"b\":2}\n"));
        assert_eq!(&decode(Encoding::Zstd, Bytes::from(two), 100).unwrap()[..], b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_not_after_inflating_it() {
        // 16 MiB of zeros compress to ~16 KiB (gzip) and a few KiB (zstd).
        let zeros = vec![0u8; 16 << 20];
        let limit = 1 << 20;
        let g = gzip(&zeros);
        assert!(g.len() < 20_000, "{}", g.len());
        let e = decode(Encoding::Gzip, g, limit).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::PAYLOAD_TOO_LARGE, "decompressed_too_large"));
        assert_eq!(e.detail, json!({"limit_bytes": limit, "content_encoding": "gzip"}));
        let e = decode(Encoding::Zstd, Bytes::from(zstd(&zeros[..4 << 20])), limit).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::PAYLOAD_TOO_LARGE, "decompressed_too_large"));
        // Exactly the limit is accepted.
        assert_eq!(decode(Encoding::Gzip, gzip(&zeros[..limit]), limit).unwrap().len(), limit);
    }

    #[test]
    fn a_frame_declaring_a_huge_window_is_refused_before_decoding() {
        // Magic, descriptor (no single segment, no dictionary), window descriptor: 2^(10+31) bytes.
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 31 << 3, 0, 0, 0];
        let e = decode(Encoding::Zstd, Bytes::copy_from_slice(&frame), 1 << 20).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::PAYLOAD_TOO_LARGE, "zstd_window_too_large"));
        assert_eq!(e.detail["window_bytes"], json!(1u64 << 41));
    }

    #[test]
    fn garbage_is_a_400_naming_the_encoding() {
        for (enc, body) in [
            (Encoding::Gzip, &b"not gzip at all"[..]),
            (Encoding::Zstd, b"not zstd at all"),
            (Encoding::Zstd, b""),
        ] {
            let e = decode(enc, Bytes::copy_from_slice(body), 1000).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_content_encoding"), "{enc:?}");
        }
        // A truncated gzip stream is refused, not taken as a shorter body.
        let g = gzip(&b"{\"a\":1}\n".repeat(100));
        let e = decode(Encoding::Gzip, g.slice(..g.len() - 10), 10_000).unwrap_err();
        assert_eq!(e.code, "bad_content_encoding");
    }
}
