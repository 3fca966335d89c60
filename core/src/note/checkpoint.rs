//! The checkpoint body of c2sp.org/tlog-checkpoint: origin, tree size, root hash, optional extension lines.
//!
//! This is the generic form a witness cosigns, whatever log produced it; anchorlog's own heads
//! ([`crate::head::Checkpoint`]) are checkpoints whose extension lines are exactly the three `anchorlog-…`
//! lines. Parsing is strict (canonical decimal, canonical base64, no empty line, trailing newline), so one
//! checkpoint has exactly one text: a witness never signs bytes it interpreted differently.

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Largest tree size accepted: `2^63 − 1`, as Go's `tlog` (sizes are stored as SQLite integers too).
pub const MAX_TREE_SIZE: u64 = i64::MAX as u64;

/// Why a text is not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text does not end in a newline or has fewer than three lines.
    #[error("a checkpoint is at least three lines (origin, tree size, root hash), each ending in a newline")]
    Shape,
    /// A line is malformed.
    #[error("checkpoint line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// A parsed checkpoint body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogCheckpoint {
    /// Log origin (first line).
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// RFC 6962 / 9162 root hash of the first `size` leaves.
    pub root: Hash,
    /// Extension lines, each non-empty, without their newline.
    pub extensions: Vec<String>,
}

impl TlogCheckpoint {
    /// Parses a checkpoint text strictly.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Shape)?;
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 {
            return Err(CheckpointError::Shape);
        }
        let bad = |line: usize, problem: &'static str| CheckpointError::Line { line, problem };
        let origin = lines[0];
        if origin.is_empty() {
            return Err(bad(1, "the origin is empty"));
        }
        let size = parse_decimal(lines[1])
            .filter(|&n| n <= MAX_TREE_SIZE)
            .ok_or(bad(2, "the tree size is not a decimal number without leading zeroes below 2^63"))?;
        let root = parse_hash(lines[2]).ok_or(bad(3, "the root hash is not the base64 of 32 bytes"))?;
        let mut extensions = Vec::with_capacity(lines.len() - 3);
        for (i, line) in lines[3..].iter().enumerate() {
            if line.is_empty() {
                return Err(bad(i + 4, "an extension line is empty"));
            }
            extensions.push((*line).to_owned());
        }
        Ok(TlogCheckpoint { origin: origin.to_owned(), size, root, extensions })
    }

    /// The checkpoint text (the note text that is signed).
    pub fn to_text(&self) -> String {
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        out
    }
}

/// Parses a decimal without sign or leading zeroes (`0` itself allowed).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses the canonical (padded, re-encodes identically) base64 of a 32-byte hash.
pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    let hash = B64.decode(s).ok().and_then(|v| <[u8; 32]>::try_from(v).ok())?;
    (B64.encode(hash) == s).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    #[test]
    fn spec_example_round_trips() {
        let c = TlogCheckpoint::parse(SPEC).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20_852_163);
        assert_eq!(c.root[..3], [0x0a, 0xc5, 0x18]);
        assert!(c.extensions.is_empty());
        assert_eq!(c.to_text(), SPEC);
    }

    #[test]
    fn anchorlog_heads_are_checkpoints_with_extensions() {
        let head = crate::head::Checkpoint {
            origin: "anchorlog.test/x".into(),
            tree_size: 3,
            root: [9; 32],
            height: 1,
            prev: [0; 32],
            time_ms: 0,
            counter: None,
        };
        let text = head.to_text().unwrap();
        let c = TlogCheckpoint::parse(&text).unwrap();
        assert_eq!((c.size, c.root), (3, [9; 32]));
        assert_eq!(c.extensions[0], "anchorlog-block 1");
        assert_eq!(c.to_text(), text);
    }

    #[test]
    fn malformed_checkpoints_name_the_line() {
        let cases = [
            (SPEC.trim_end().to_owned(), CheckpointError::Shape),
            ("o\n1\n".to_owned(), CheckpointError::Shape),
            (
                SPEC.replacen("example.com/behind-the-sofa", "", 1),
                CheckpointError::Line { line: 1, problem: "the origin is empty" },
            ),
            (
                SPEC.replace("\n20852163\n", "\n020852163\n"),
                CheckpointError::Line {
                    line: 2,
                    problem: "the tree size is not a decimal number without leading zeroes below 2^63",
                },
            ),
            (
                SPEC.replace("\n20852163\n", "\n-1\n"),
                CheckpointError::Line {
                    line: 2,
                    problem: "the tree size is not a decimal number without leading zeroes below 2^63",
                },
            ),
            (
                SPEC.replace("\n20852163\n", "\n9223372036854775808\n"),
                CheckpointError::Line {
                    line: 2,
                    problem: "the tree size is not a decimal number without leading zeroes below 2^63",
                },
            ),
            (
                SPEC.replace("q2I=", "q2I"),
                CheckpointError::Line { line: 3, problem: "the root hash is not the base64 of 32 bytes" },
            ),
            (
                format!("{SPEC}\nx\n"),
                CheckpointError::Line { line: 4, problem: "an extension line is empty" },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(TlogCheckpoint::parse(&text), Err(expected), "{text:?}");
        }
        assert_eq!(
            TlogCheckpoint::parse(&SPEC.replace("\n20852163\n", "\n9223372036854775807\n")).unwrap().size,
            MAX_TREE_SIZE
        );
    }
}
