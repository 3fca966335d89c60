//! Splitting a body into JSON values (single object, array, or lines) without copying.
//!
//! Every element is a `&RawValue` borrowed from the body, so its bytes are exactly the bytes
//! received. Limits are checked before serde parses anything.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::fields::Ctx;
use super::limits::{self, is_json_ws, Limits};
use super::FormatError;

/// How to treat newline-separated values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineMode {
    /// One JSON value (object or array); trailing content is an error.
    Off,
    /// NDJSON: one value per non-empty line.
    On,
    /// One value, or NDJSON if a second value follows the first (Auth0 `JSONLINES`).
    Detect,
}

/// One element of a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    /// 0-based event index.
    pub index: usize,
    /// 1-based line for line-framed bodies.
    pub line: Option<usize>,
    /// Byte offset of `raw` in the body (for error positions).
    pub start: usize,
    /// The element's exact bytes.
    pub raw: &'a RawValue,
}

impl Element<'_> {
    /// Error context naming this element.
    pub fn ctx(&self) -> Ctx {
        Ctx { index: self.index, line: self.line }
    }

    /// Parses the element into a JSON object, or fails with `NotAnObject`.
    ///
    /// `body` is the whole request body, used only to turn a serde position into a body position
    /// (the raw value is already syntax-checked; this can still fail on e.g. `1e400`).
    pub fn object(&self, body: &[u8]) -> Result<Map<String, Value>, FormatError> {
        match serde_json::from_str::<Value>(self.raw.get()) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(FormatError::NotAnObject { index: self.index, line: self.line }),
            Err(e) => Err(json_error_at(&e, body, self.start)),
        }
    }
}

/// Splits `body` into elements according to `mode`, enforcing `limits`.
pub(crate) fn split<'a>(
    body: &'a [u8],
    mode: LineMode,
    limits: &Limits,
) -> Result<Vec<Element<'a>>, FormatError> {
    let first = body.iter().position(|&b| !is_json_ws(b)).ok_or(FormatError::Empty)?;
    if mode == LineMode::On {
        return split_lines(body, limits);
    }
    let scan = limits::scan(body, limits.max_depth)
        .map_err(|e| FormatError::TooDeep { max: e.max, offset: e.offset })?;
    check_count(scan.top_level_items, limits)?;
    let elements = if body[first] == b'[' {
        split_array(body)?
    } else {
        match split_single(body, mode)? {
            Some(single) => vec![single],
            None => return split_lines(body, limits),
        }
    };
    if elements.is_empty() {
        return Err(FormatError::NoEvents);
    }
    Ok(elements)
}

/// Refuses `found` events if over the limit.
pub(crate) fn check_count(found: usize, limits: &Limits) -> Result<(), FormatError> {
    if found > limits.max_events {
        return Err(FormatError::TooManyEvents { max: limits.max_events, found });
    }
    Ok(())
}

/// A top-level array: each item is an element.
fn split_array(body: &[u8]) -> Result<Vec<Element<'_>>, FormatError> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| json_error_at(&e, body, 0))?;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| Element { index, line: None, start: offset_in(body, raw), raw })
        .collect())
}

/// One value filling the body. Returns `None` when `mode` is `Detect` and another value follows
/// (the caller then reads the body as lines).
fn split_single(body: &[u8], mode: LineMode) -> Result<Option<Element<'_>>, FormatError> {
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>();
    let raw = match stream.next() {
        Some(Ok(raw)) => raw,
        Some(Err(e)) => return Err(json_error_at(&e, body, 0)),
        None => return Err(FormatError::Empty),
    };
    let rest = &body[stream.byte_offset()..];
    if !rest.iter().all(|&b| is_json_ws(b)) {
        if mode == LineMode::Detect {
            return Ok(None);
        }
        // Let serde describe the trailing content with its position.
        return match serde_json::from_slice::<&RawValue>(body) {
            Err(e) => Err(json_error_at(&e, body, 0)),
            Ok(_) => {
                Err(FormatError::InvalidJson { line: 1, column: 1, reason: "trailing characters".to_owned() })
            }
        };
    }
    Ok(Some(Element { index: 0, line: None, start: offset_in(body, raw), raw }))
}

/// NDJSON: one value per non-empty line (`\n` or `\r\n` endings).
fn split_lines<'a>(body: &'a [u8], limits: &Limits) -> Result<Vec<Element<'a>>, FormatError> {
    let found = body.split(|&b| b == b'\n').filter(|line| line.iter().any(|&b| !is_json_ws(b))).count();
    check_count(found, limits)?;
    let mut out = Vec::with_capacity(found);
    let mut line_start = 0usize;
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let start = line_start;
        line_start += line.len() + 1;
        let Some(lead) = line.iter().position(|&b| !is_json_ws(b)) else {
            continue;
        };
        let trimmed = &line[lead..];
        limits::scan(trimmed, limits.max_depth)
            .map_err(|e| FormatError::TooDeep { max: e.max, offset: start + lead + e.offset })?;
        let raw: &RawValue =
            serde_json::from_slice(trimmed).map_err(|e| json_error_at(&e, body, start + lead))?;
        out.push(Element { index: out.len(), line: Some(n + 1), start: offset_in(body, raw), raw });
    }
    if out.is_empty() {
        return Err(FormatError::NoEvents);
    }
    Ok(out)
}

/// One line of an NDJSON body judged on its own (partial ingest): its 0-based event index (every non-empty line
/// counts, good or bad), its 1-based line, and the element or that line's own error.
pub(crate) struct LineResult<'a> {
    /// 0-based index among the body's non-empty lines.
    pub index: usize,
    /// 1-based line in the body.
    pub line: usize,
    /// The line's element, or why it is not one.
    pub result: Result<Element<'a>, FormatError>,
}

/// [`split`] of an NDJSON body for partial ingest: what concerns the whole body (empty, no events, more lines
/// than the limit) fails it; a line that is not JSON or nests too deep fails that line only.
pub(crate) fn split_lines_each<'a>(
    body: &'a [u8],
    limits: &Limits,
) -> Result<Vec<LineResult<'a>>, FormatError> {
    body.iter().position(|&b| !is_json_ws(b)).ok_or(FormatError::Empty)?;
    let found = body.split(|&b| b == b'\n').filter(|line| line.iter().any(|&b| !is_json_ws(b))).count();
    check_count(found, limits)?;
    let mut out = Vec::with_capacity(found);
    let mut line_start = 0usize;
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let start = line_start;
        line_start += line.len() + 1;
        let Some(lead) = line.iter().position(|&b| !is_json_ws(b)) else {
            continue;
        };
        let trimmed = &line[lead..];
        let result = limits::scan(trimmed, limits.max_depth)
            .map_err(|e| FormatError::TooDeep { max: e.max, offset: start + lead + e.offset })
            .and_then(|_| {
                serde_json::from_slice::<&RawValue>(trimmed)
                    .map_err(|e| json_error_at(&e, body, start + lead))
            })
            .map(|raw| Element { index: out.len(), line: Some(n + 1), start: offset_in(body, raw), raw });
        out.push(LineResult { index: out.len(), line: n + 1, result });
    }
    Ok(out)
}

/// Byte offset of a borrowed value inside `body` (pointer difference; both point into the same
/// allocation because serde borrowed `raw` from `body`).
fn offset_in(body: &[u8], raw: &RawValue) -> usize {
    (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize)
}

/// Converts a serde error from parsing `body[start..]` into a body-relative `InvalidJson`.
pub(crate) fn json_error_at(e: &serde_json::Error, body: &[u8], start: usize) -> FormatError {
    let prefix = body.get(..start).unwrap_or(body);
    let lines_before = prefix.iter().filter(|&&b| b == b'\n').count();
    let col_before = prefix.iter().rev().take_while(|&&b| b != b'\n').count();
    let (line, column) = if e.line() <= 1 {
        (lines_before + 1, col_before + e.column())
    } else {
        (lines_before + e.line(), e.column())
    };
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
    FormatError::InvalidJson { line, column, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raws(body: &[u8], mode: LineMode) -> Vec<(usize, Option<usize>, usize, String)> {
        split(body, mode, &Limits::default())
            .unwrap()
            .iter()
            .map(|e| (e.index, e.line, e.start, e.raw.get().to_owned()))
            .collect()
    }

    #[test]
    fn array_elements_are_exact_slices() {
        let body = b" [ {\"a\": 1} ,\n{ \"b\" :[2] } ]\n";
        assert_eq!(
            raws(body, LineMode::Off),
            vec![(0, None, 3, "{\"a\": 1}".to_owned()), (1, None, 14, "{ \"b\" :[2] }".to_owned())]
        );
    }

    #[test]
    fn single_value_excludes_surrounding_whitespace() {
        assert_eq!(raws(b"\n {\"a\":1}\r\n", LineMode::Off), vec![(0, None, 2, "{\"a\":1}".to_owned())]);
    }

    #[test]
    fn lines_skip_blank_lines_and_crlf() {
        let body = b"{\"a\":1}\r\n\r\n  {\"b\":2}\n";
        assert_eq!(
            raws(body, LineMode::On),
            vec![(0, Some(1), 0, "{\"a\":1}".to_owned()), (1, Some(3), 13, "{\"b\":2}".to_owned())]
        );
        assert_eq!(raws(body, LineMode::Detect), raws(body, LineMode::On));
    }

    #[test]
    fn off_mode_rejects_a_second_value() {
        assert_eq!(
            split(b"{\"a\":1}\n{\"b\":2}", LineMode::Off, &Limits::default()).unwrap_err(),
            FormatError::InvalidJson { line: 2, column: 1, reason: "trailing characters".to_owned() }
        );
    }

    #[test]
    fn line_errors_are_body_positions() {
        assert_eq!(
            split(b"{\"a\":1}\n  {\"b\":}\n", LineMode::On, &Limits::default()).unwrap_err(),
            FormatError::InvalidJson { line: 2, column: 8, reason: "expected value".to_owned() }
        );
    }

    #[test]
    fn lines_each_judges_every_line_alone_and_counts_bad_ones() {
        let limits = Limits { max_events: 10, max_depth: 2 };
        let body = b"{\"a\":1}\n\n{\"b\":}\n[[[1]]]\n {\"c\":3}\n";
        let lines = split_lines_each(body, &limits).unwrap();
        let summary: Vec<_> = lines
            .iter()
            .map(|l| {
                (l.index, l.line, l.result.as_ref().map(|e| e.raw.get().to_owned()).map_err(|e| e.code()))
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 1, Ok("{\"a\":1}".to_owned())),
                (1, 3, Err("invalid_json")),
                (2, 4, Err("too_deep")),
                (3, 5, Ok("{\"c\":3}".to_owned())),
            ]
        );
        // Whole-body problems still fail the body.
        assert_eq!(split_lines_each(b" \n", &limits).err(), Some(FormatError::Empty));
        let many = b"{}\n".repeat(11);
        assert_eq!(
            split_lines_each(&many, &limits).err(),
            Some(FormatError::TooManyEvents { max: 10, found: 11 })
        );
    }

    #[test]
    fn too_deep_in_a_line_reports_the_body_offset() {
        let limits = Limits { max_events: 10, max_depth: 2 };
        assert_eq!(
            split(b"[1]\n [[[1]]]\n", LineMode::On, &limits).unwrap_err(),
            FormatError::TooDeep { max: 2, offset: 7 }
        );
    }

    #[test]
    fn out_of_range_number_is_reported_at_its_body_line() {
        let body = b"[\n{\"a\":1},\n{\"a\":1e400}\n]";
        let els = split(body, LineMode::Off, &Limits::default()).unwrap();
        assert_eq!(
            els[1].object(body).unwrap_err(),
            FormatError::InvalidJson { line: 3, column: 10, reason: "number out of range".to_owned() }
        );
    }
}
