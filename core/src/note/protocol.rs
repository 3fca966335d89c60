//! The `add-checkpoint` call of c2sp.org/tlog-witness v1.0.0: its request body, and the bodies of its 200 and
//! 409 answers. Used by the witness (parsing requests) and by a log submitting to witnesses (building them).
//!
//! ```text
//! old <size the client believes the witness has, decimal, no leading zeroes>
//! <consistency proof hash, base64>        (0 to 63 lines, RFC 6962 PROOF(old, new), deepest first)
//!
//! <the signed checkpoint note>
//! ```
//!
//! A 200 answer is one or more cosignature lines; a 409 answer has `Content-Type: text/x.tlog.size` and the
//! witness's stored size in decimal followed by a newline.

use super::checkpoint::{parse_decimal, parse_hash, MAX_TREE_SIZE};
use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Most consistency proof lines a client may send (tlog-witness: "MUST NOT send more than 63").
pub const MAX_PROOF_LINES: usize = 63;
/// Content type of the 409 answer's body.
pub const CONTENT_TYPE_TLOG_SIZE: &str = "text/x.tlog.size";
/// Path of the call below the witness's submission prefix.
pub const ADD_CHECKPOINT_PATH: &str = "/add-checkpoint";

/// Why a request or answer body is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// No blank line ends the header (old size and proof lines).
    #[error("the body has no blank line between the old size and proof lines and the checkpoint")]
    NoBlankLine,
    /// The first line is not `old <decimal>`.
    #[error("the first line must be `old <size>`: a decimal without leading zeroes below 2^63")]
    OldLine,
    /// A proof line is not base64 of 32 bytes.
    #[error("consistency proof line {0} is not the base64 of a 32-byte hash")]
    ProofLine(usize),
    /// More than [`MAX_PROOF_LINES`] proof lines.
    #[error("the consistency proof has {0} lines; at most 63 are allowed")]
    TooManyProofLines(usize),
    /// The checkpoint part is not UTF-8.
    #[error("the checkpoint note is not UTF-8")]
    NotUtf8,
    /// A `text/x.tlog.size` body is not a decimal and a newline.
    #[error("a text/x.tlog.size body must be a decimal tree size followed by a newline")]
    SizeBody,
}

/// An `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpointRequest {
    /// The size of the checkpoint the client believes the witness last cosigned (0 when it does not know).
    pub old_size: u64,
    /// RFC 6962 consistency proof from `old_size` to the checkpoint's size (empty when `old_size` is 0).
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, as sent (parse it with [`super::Note::parse`]).
    pub checkpoint: String,
}

impl AddCheckpointRequest {
    /// Parses a request body. The checkpoint note itself is only checked to be UTF-8 here.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let end = body.windows(2).position(|w| w == b"\n\n").ok_or(ProtocolError::NoBlankLine)?;
        let header = std::str::from_utf8(&body[..end]).map_err(|_| ProtocolError::OldLine)?;
        let mut lines = header.split('\n');
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(parse_decimal)
            .filter(|&n| n <= MAX_TREE_SIZE)
            .ok_or(ProtocolError::OldLine)?;
        let proof_lines: Vec<&str> = lines.collect();
        if proof_lines.len() > MAX_PROOF_LINES {
            return Err(ProtocolError::TooManyProofLines(proof_lines.len()));
        }
        let proof = proof_lines
            .iter()
            .enumerate()
            .map(|(i, l)| parse_hash(l).ok_or(ProtocolError::ProofLine(i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoint = std::str::from_utf8(&body[end + 2..]).map_err(|_| ProtocolError::NotUtf8)?;
        Ok(AddCheckpointRequest { old_size, proof, checkpoint: checkpoint.to_owned() })
    }

    /// The request body.
    pub fn to_body(&self) -> Vec<u8> {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&B64.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out.into_bytes()
    }
}

/// The body of a 409 answer: `<size>\n`.
pub fn tlog_size_body(size: u64) -> String {
    format!("{size}\n")
}

/// Parses the body of a 409 answer.
pub fn parse_tlog_size_body(body: &[u8]) -> Result<u64, ProtocolError> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(parse_decimal)
        .ok_or(ProtocolError::SizeBody)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_BODY: &str = "old 20852014\n\
        PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
        jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\
        5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n\
        /6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\
        \n\
        example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\
        \u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";

    #[test]
    fn spec_example_parses_and_round_trips() {
        let r = AddCheckpointRequest::parse(SPEC_BODY.as_bytes()).unwrap();
        assert_eq!(r.old_size, 20_852_014);
        assert_eq!(r.proof.len(), 4);
        assert_eq!(r.proof[0][..2], [0x3e, 0x54]);
        assert!(r.checkpoint.starts_with("example.com/behind-the-sofa\n20852163\n"));
        assert_eq!(r.to_body(), SPEC_BODY.as_bytes());
    }

    #[test]
    fn empty_proof_and_size_zero() {
        let r = AddCheckpointRequest::parse(b"old 0\n\nnote\n\n\xe2\x80\x94 k AAAAAAA=\n").unwrap();
        assert_eq!((r.old_size, r.proof.len()), (0, 0));
        assert_eq!(r.checkpoint, "note\n\n\u{2014} k AAAAAAA=\n");
    }

    #[test]
    fn malformed_requests_are_named() {
        let h = "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n";
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (b"old 1\nnote".to_vec(), ProtocolError::NoBlankLine),
            (b"old 01\n\nx".to_vec(), ProtocolError::OldLine),
            (b"old -1\n\nx".to_vec(), ProtocolError::OldLine),
            (b"Old 1\n\nx".to_vec(), ProtocolError::OldLine),
            (b"old  1\n\nx".to_vec(), ProtocolError::OldLine),
            (b"old 9223372036854775808\n\nx".to_vec(), ProtocolError::OldLine),
            (format!("old 1\n{h}AAAA\n\nx").into_bytes(), ProtocolError::ProofLine(2)),
            (format!("old 1\n{}\nx", h.repeat(64)).into_bytes(), ProtocolError::TooManyProofLines(64)),
            (b"old 1\n\n\xff".to_vec(), ProtocolError::NotUtf8),
        ];
        for (body, expected) in cases {
            assert_eq!(
                AddCheckpointRequest::parse(&body),
                Err(expected),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        assert!(AddCheckpointRequest::parse(format!("old 1\n{}\nx", h.repeat(63)).as_bytes()).is_ok());
    }

    #[test]
    fn tlog_size_bodies() {
        assert_eq!(tlog_size_body(42), "42\n");
        assert_eq!(parse_tlog_size_body(b"42\n"), Ok(42));
        for bad in [&b"42"[..], b"042\n", b"\n", b"x\n"] {
            assert_eq!(parse_tlog_size_body(bad), Err(ProtocolError::SizeBody));
        }
    }
}
