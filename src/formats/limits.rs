//! Size limits checked **before** `serde_json` sees a body.
//!
//! `serde_json` recurses once per nesting level and stops at 128 levels with a generic
//! "recursion limit exceeded" error. We want a smaller, configurable limit with its own error,
//! and we want to refuse a 100,000-element array before allocating a `Vec` for it. [`scan`] walks
//! the bytes once, tracking string state so that brackets inside strings — including after
//! escaped quotes — are not counted. String bodies, most of a typical payload, are skipped with
//! `memchr2` (SIMD), so the scan costs well under a microsecond per kilobyte.
//!
//! The scanner is deliberately not a validator: it never rejects malformed JSON (serde does that
//! right after, with a line and column). It only measures nesting and counts top-level items.

use std::fmt;

/// `serde_json`'s own nesting limit is 128; a `max_depth` above this is never reached because
/// serde refuses the body first (as invalid JSON).
pub const SERDE_RECURSION_LIMIT: usize = 128;

/// Per-request limits applied by [`super::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events one request may carry (array elements, NDJSON lines or Okta `data.events`).
    pub max_events: usize,
    /// Deepest allowed nesting of arrays and objects; a bare `{}` or `[]` has depth 1.
    pub max_depth: usize,
}

impl Limits {
    /// Default for [`Limits::max_events`]: matches the sealer's default block size.
    pub const DEFAULT_MAX_EVENTS: usize = 10_000;
    /// Default for [`Limits::max_depth`]: the deepest real payload (Okta) nests about 6 levels.
    pub const DEFAULT_MAX_DEPTH: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_events: Self::DEFAULT_MAX_EVENTS, max_depth: Self::DEFAULT_MAX_DEPTH }
    }
}

/// What [`scan`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// Deepest nesting seen (0 for a scalar or an empty input).
    pub depth: usize,
    /// If the first non-whitespace byte is `[`: the number of items in that array (commas at
    /// depth 1 plus one, for a non-empty array). Otherwise 1 for any non-blank input, 0 for blank.
    pub top_level_items: usize,
}

/// The input nests deeper than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthExceeded {
    /// The configured limit.
    pub max: usize,
    /// Byte offset of the bracket that went one level too deep.
    pub offset: usize,
}

impl fmt::Display for DepthExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JSON nests deeper than {} levels (at byte {}); flatten the payload", self.max, self.offset)
    }
}

impl std::error::Error for DepthExceeded {}

/// True for the four whitespace bytes JSON allows between tokens.
pub(crate) fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Measures nesting depth and counts top-level array items without parsing.
///
/// Fails as soon as a `[` or `{` outside a string would make the depth exceed `max_depth`.
/// Unbalanced closing brackets are ignored here (serde reports them).
pub fn scan(bytes: &[u8], max_depth: usize) -> Result<Scan, DepthExceeded> {
    let Some(first) = bytes.iter().position(|&b| !is_json_ws(b)) else {
        return Ok(Scan::default());
    };
    let mut depth = 0usize;
    let mut deepest = 0usize;
    // Commas directly inside the top-level container; only meaningful when it is an array.
    let mut commas = 0usize;
    let mut i = first;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = skip_string(bytes, i + 1);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(DepthExceeded { max: max_depth, offset: i });
                }
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => commas += 1,
            _ => {}
        }
        i += 1;
    }
    let top_level_items = if bytes[first] == b'[' {
        // `[ ]` holds nothing; otherwise items = separators + 1 (a trailing comma over-counts
        // by one, which only matters for a body serde rejects anyway).
        let empty = bytes[first + 1..].iter().find(|&&b| !is_json_ws(b)).is_none_or(|&b| b == b']');
        if empty {
            0
        } else {
            commas + 1
        }
    } else {
        1
    };
    Ok(Scan { depth: deepest, top_level_items })
}

/// Returns the index just past the closing quote of a string whose body starts at `i`
/// (or `bytes.len()` for an unterminated string). A backslash always consumes the next byte,
/// which is exactly how `\"` and `\\` must be read.
fn skip_string(bytes: &[u8], mut i: usize) -> usize {
    loop {
        let Some(rest) = bytes.get(i..) else {
            return bytes.len();
        };
        match memchr::memchr2(b'"', b'\\', rest) {
            None => return bytes.len(),
            Some(p) if rest[p] == b'"' => return i + p + 1,
            Some(p) => i += p + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_64_is_accepted_and_65_rejected() {
        let ok = nested(64);
        assert_eq!(scan(ok.as_bytes(), 64), Ok(Scan { depth: 64, top_level_items: 1 }));
        let bad = nested(65);
        assert_eq!(scan(bad.as_bytes(), 64), Err(DepthExceeded { max: 64, offset: 64 }));
    }

    #[test]
    fn objects_count_as_levels_too() {
        let mut s = String::new();
        for _ in 0..65 {
            s.push_str("{\"a\":");
        }
        s.push('1');
        s.push_str(&"}".repeat(65));
        assert_eq!(scan(s.as_bytes(), 64), Err(DepthExceeded { max: 64, offset: 64 * 5 }));
        assert_eq!(scan(s.as_bytes(), 65).map(|s| s.depth), Ok(65));
    }

    #[test]
    fn brackets_inside_strings_are_ignored() {
        let s = format!("{{\"a\":\"{}\"}}", "[{".repeat(100));
        assert_eq!(scan(s.as_bytes(), 1).map(|s| s.depth), Ok(1));
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        // The string holds `\"[[[` and `\\`; the bracket after the string is real.
        let s = r#"{"a":"\"[[[\\","b":[1]}"#;
        assert_eq!(scan(s.as_bytes(), 2).map(|s| s.depth), Ok(2));
        assert_eq!(scan(s.as_bytes(), 1), Err(DepthExceeded { max: 1, offset: 19 }));
    }

    #[test]
    fn counts_top_level_array_items() {
        let count = |s: &str| scan(s.as_bytes(), 64).map(|s| s.top_level_items);
        assert_eq!(count(""), Ok(0));
        assert_eq!(count("  \n"), Ok(0));
        assert_eq!(count("[]"), Ok(0));
        assert_eq!(count(" [ ] "), Ok(0));
        assert_eq!(count("[1]"), Ok(1));
        assert_eq!(count(r#"[{"a":[1,2,3]}, "x,y", [4,5]]"#), Ok(3));
        assert_eq!(count("{\"a\":1,\"b\":2}"), Ok(1));
        assert_eq!(count("\"[1,2]\""), Ok(1));
    }

    #[test]
    fn unterminated_string_does_not_panic() {
        assert_eq!(scan(b"[\"abc\\", 64).map(|s| s.depth), Ok(1));
        assert_eq!(scan(b"]]]}", 64).map(|s| s.depth), Ok(0));
    }
}
