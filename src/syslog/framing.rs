//! RFC 6587 framing of syslog over a stream: octet counting (`MSG-LEN SP MSG`, RFC 5425's only framing) and
//! non-transparent framing (`MSG LF`). A frame is returned only once all of it has arrived, so a connection that
//! ends inside a frame yields nothing of it.

use crate::config::SyslogFraming;

/// Why a stream cannot be read on: the connection is closed, nothing of the offending frame is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message is longer than `syslog.max_message_bytes`.
    #[error("a message of {len} bytes or more exceeds syslog.max_message_bytes ({max})")]
    TooLong {
        /// Its length (octet counting), or the bytes seen without an LF (LF framing).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Octet counting: the frame does not start with `MSG-LEN SP` (1-9 digits, no leading zero).
    #[error(
        "the stream is not octet-counted (expected MSG-LEN SP MSG, RFC 6587 3.4.1); configure the sender for \
         octet-counted framing or set syslog.framing = \"lf\""
    )]
    BadFraming,
}

impl FrameError {
    /// The outcome label of `anchorlog_syslog_frames_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => "too_long",
            FrameError::BadFraming => "bad_framing",
        }
    }
}

/// One complete frame found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Bytes of the buffer the frame takes (framing included).
    pub consumed: usize,
    /// The message's position in the buffer; empty for a blank line in LF framing (to be skipped).
    pub message: std::ops::Range<usize>,
}

/// The first complete frame of `buf`, `Ok(None)` when more bytes are needed.
pub fn next_frame(buf: &[u8], framing: SyslogFraming, max: usize) -> Result<Option<Frame>, FrameError> {
    match framing {
        SyslogFraming::OctetCounted => octet_counted(buf, max),
        SyslogFraming::Lf => lf(buf, max),
    }
}

fn octet_counted(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 9 || (digits > 0 && buf[0] == b'0') {
        return Err(FrameError::BadFraming);
    }
    match buf.get(digits) {
        None => return Ok(None),
        Some(b' ') if digits > 0 => {}
        Some(_) => return Err(FrameError::BadFraming),
    }
    // 1 to 9 digits: fits.
    let len: usize = buf[..digits].iter().fold(0, |n, d| n * 10 + usize::from(d - b'0'));
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let start = digits + 1;
    if buf.len() < start + len {
        return Ok(None);
    }
    Ok(Some(Frame { consumed: start + len, message: start..start + len }))
}

fn lf(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let window = &buf[..buf.len().min(max + 1)];
    match memchr::memchr(b'\n', window) {
        Some(pos) => Ok(Some(Frame { consumed: pos + 1, message: 0..pos })),
        None if buf.len() > max => Err(FrameError::TooLong { len: buf.len(), max }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OC: SyslogFraming = SyslogFraming::OctetCounted;

    #[test]
    fn octet_counted_frames_are_returned_whole_only() {
        let stream = b"5 hello12 <13>1 - - x";
        let f = next_frame(stream, OC, 100).unwrap().unwrap();
        assert_eq!((f.consumed, &stream[f.message.clone()]), (7, &b"hello"[..]));
        let rest = &stream[f.consumed..];
        assert_eq!(next_frame(rest, OC, 100), Ok(None), "11 of 12 bytes: not yet a frame");
        let whole = b"11 <13>1 - - xy";
        let f = next_frame(whole, OC, 100).unwrap().unwrap();
        assert_eq!(&whole[f.message], b"<13>1 - - x");
        for partial in [&b""[..], b"1", b"12", b"12 ", b"12 abc"] {
            assert_eq!(next_frame(partial, OC, 100), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn an_lf_inside_an_octet_counted_message_is_data() {
        let stream = b"6 a\nb\r\nc";
        let f = next_frame(stream, OC, 100).unwrap().unwrap();
        assert_eq!(&stream[f.message], b"a\nb\r\nc");
    }

    #[test]
    fn bad_octet_counts_and_long_frames_are_refused() {
        for bad in [&b"<13>1 - -"[..], b" 5 hello", b"05 hello", b"1234567890 x", b"x", b"0 "] {
            assert_eq!(next_frame(bad, OC, 100), Err(FrameError::BadFraming), "{bad:?}");
        }
        assert_eq!(next_frame(b"101 ", OC, 100), Err(FrameError::TooLong { len: 101, max: 100 }));
        assert_eq!(next_frame(b"100 ", OC, 100), Ok(None));
    }

    #[test]
    fn lf_framing_splits_on_lf_and_keeps_cr() {
        let stream = b"<13>a\r\n\n<13>b";
        let f = next_frame(stream, SyslogFraming::Lf, 100).unwrap().unwrap();
        assert_eq!((&stream[f.message.clone()], f.consumed), (&b"<13>a\r"[..], 7));
        let blank = next_frame(&stream[7..], SyslogFraming::Lf, 100).unwrap().unwrap();
        assert!(blank.message.is_empty());
        assert_eq!(
            next_frame(&stream[8..], SyslogFraming::Lf, 100),
            Ok(None),
            "no LF yet: a cut line is nothing"
        );
        assert_eq!(next_frame(&[b'x'; 6], SyslogFraming::Lf, 5), Err(FrameError::TooLong { len: 6, max: 5 }));
        assert!(next_frame(b"xxxxx\n", SyslogFraming::Lf, 5).unwrap().is_some());
    }
}
