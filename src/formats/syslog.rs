//! Syslog messages: RFC 5424 and the legacy BSD form (RFC 3164), as rsyslog, syslog-ng and network devices send
//! them. One frame (one message) is one event; its bytes are stored exactly as framed, without the framing
//! (RFC 6587's `MSG-LEN SP` prefix or the LF trailer).
//!
//! Nothing is required: a frame that is neither form is still stored, with no fields (an audit log does not
//! silently discard what a relay forwarded). There is no event id, so no de-duplication: a message sent twice is
//! stored twice.
//!
//! | normalized | RFC 5424 | RFC 3164 |
//! |---|---|---|
//! | time | `TIMESTAMP` (RFC 3339, its offset applied) | `Mmm dd hh:mm:ss`, read as UTC in the year of receipt (the year before when that would lie more than a day ahead) |
//! | realm | `HOSTNAME` (a name or an IP address) | `HOSTNAME` |
//! | client id | `APP-NAME` | the tag before `[pid]:` |
//! | session id | `PROCID` | the `pid` in `tag[pid]:` |
//! | target | `MSGID`, unless an auth message below names a target | — |
//! | source ip | `[origin ip="…"]` structured data, unless an auth message names one | — |
//! | type, outcome, actor (id and name) | from the auth messages below; else type = `APP-NAME`, outcome unknown | same |
//!
//! Auth messages recognised in `MSG` (OpenSSH, sudo, PAM's `pam_unix` as Debian ships them):
//!
//! | message | type | outcome | actor | target | source ip |
//! |---|---|---|---|---|---|
//! | `Accepted password for U from IP port P ssh2` | `sshd.accepted_password` | success | U | — | IP |
//! | `Accepted publickey for U from IP port P ssh2: …` | `sshd.accepted_publickey` | success | U | — | IP |
//! | `Failed password for [invalid user ]U from IP port P ssh2` | `sshd.failed_password` | failure | U | — | IP |
//! | `Failed publickey for U from IP port P ssh2: …` | `sshd.failed_publickey` | failure | U | — | IP |
//! | `Invalid user U from IP port P` | `sshd.invalid_user` | failure | U | — | IP |
//! | sudo `U : TTY=… ; PWD=… ; USER=R ; COMMAND=C` | `sudo.command` | success | U | R | — |
//! | sudo `U : <reason> ; TTY=… ; USER=R ; COMMAND=C` (not in sudoers, incorrect password attempts, …) | `sudo.denied` | failure | U | R | — |
//! | `pam_unix(S:session): session opened for user U[(uid=N)] by …` | `pam.session_opened` | success | U | S | — |
//! | `pam_unix(S:session): session closed for user U` | `pam.session_closed` | success | U | S | — |
//! | `pam_unix(S:auth): authentication failure; … rhost=H  user=U` | `pam.auth_failure` | failure | U | S | H |
//!
//! An `APP-NAME` in the appliance's reserved namespace (`anchorlog.`…) gives no type: the message is stored, but
//! never typed like one of the appliance's own records.

use super::fields::rfc3339_ms;
use super::{FormatError, Limits, NormalizedFields, Outcome, ParsedEvent};

/// One SD-ELEMENT of RFC 5424 structured data: its SD-ID and its parameters (values unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdElement {
    /// The SD-ID, e.g. `origin`, `timeQuality`, `exampleSDID@32473`.
    pub id: String,
    /// `(PARAM-NAME, value)` in order; `\"`, `\\` and `\]` unescaped.
    pub params: Vec<(String, String)>,
}

/// The header of a syslog message; every field is `None` when absent, `-` (NILVALUE) or unparsable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// Which form the message has.
    pub form: Form,
    /// PRI: facility × 8 + severity.
    pub pri: Option<u8>,
    /// TIMESTAMP as epoch milliseconds.
    pub time_ms: Option<i64>,
    /// HOSTNAME.
    pub hostname: Option<String>,
    /// APP-NAME (RFC 3164: the tag).
    pub app_name: Option<String>,
    /// PROCID (RFC 3164: the pid in `tag[pid]`).
    pub procid: Option<String>,
    /// MSGID (RFC 5424 only).
    pub msgid: Option<String>,
    /// STRUCTURED-DATA (RFC 5424 only); empty for `-`.
    pub structured_data: Vec<SdElement>,
    /// Byte offset of MSG in the frame (after a UTF-8 BOM); the frame's length when there is none.
    pub msg_offset: usize,
}

/// The form a message was recognised as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Form {
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`.
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`.
    Rfc3164,
    /// Neither: stored, no fields.
    #[default]
    Unknown,
}

impl Header {
    /// The facility (PRI / 8).
    pub fn facility(&self) -> Option<u8> {
        self.pri.map(|p| p / 8)
    }
    /// The severity (PRI % 8).
    pub fn severity(&self) -> Option<u8> {
        self.pri.map(|p| p % 8)
    }
}

/// Parses one message's header. `now_ms` is the receive time: an RFC 3164 timestamp has no year.
pub fn parse_header(frame: &[u8], now_ms: i64) -> Header {
    let Some((pri, rest_at)) = parse_pri(frame) else {
        return Header { msg_offset: 0, ..Header::default() };
    };
    let rest = &frame[rest_at..];
    if rest.starts_with(b"1 ") {
        if let Some(h) = parse_5424(frame, rest_at + 2, pri) {
            return h;
        }
    }
    parse_3164(frame, rest_at, pri, now_ms)
}

/// `<PRI>` with 1 to 3 digits and a value up to 191; returns the PRI and the offset after `>`.
fn parse_pri(frame: &[u8]) -> Option<(u8, usize)> {
    if frame.first() != Some(&b'<') {
        return None;
    }
    let close = frame.iter().take(5).position(|b| *b == b'>')?;
    let digits = &frame[1..close];
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let value: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (value <= 191).then_some((value as u8, close + 1))
}

/// The next space-delimited header field starting at `at`: `(field, offset after the space or at the end)`.
fn field(frame: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = frame.get(at..)?;
    let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
    let value = std::str::from_utf8(&rest[..end]).ok()?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let next = at + end + usize::from(end < rest.len());
    Some((value, next))
}

fn nil(value: &str) -> Option<String> {
    (value != "-").then(|| value.to_owned())
}

fn parse_5424(frame: &[u8], at: usize, pri: u8) -> Option<Header> {
    let (timestamp, at) = field(frame, at)?;
    let (hostname, at) = field(frame, at)?;
    let (app_name, at) = field(frame, at)?;
    let (procid, at) = field(frame, at)?;
    let (msgid, at) = field(frame, at)?;
    let time_ms = if timestamp == "-" { None } else { Some(rfc3339_ms(timestamp)?) };
    let (structured_data, at) = parse_sd(frame, at)?;
    let mut msg_offset = match frame.get(at) {
        None => frame.len(),
        Some(b' ') => at + 1,
        Some(_) => return None,
    };
    if frame[msg_offset..].starts_with(b"\xEF\xBB\xBF") {
        msg_offset += 3;
    }
    Some(Header {
        form: Form::Rfc5424,
        pri: Some(pri),
        time_ms,
        hostname: nil(hostname),
        app_name: nil(app_name),
        procid: nil(procid),
        msgid: nil(msgid),
        structured_data,
        msg_offset,
    })
}

/// STRUCTURED-DATA at `at`: `-` or one or more `[SD-ID (SP PARAM="value")*]`; returns the elements and the
/// offset after them.
fn parse_sd(frame: &[u8], mut at: usize) -> Option<(Vec<SdElement>, usize)> {
    if frame.get(at) == Some(&b'-') {
        return Some((Vec::new(), at + 1));
    }
    let mut elements = Vec::new();
    while frame.get(at) == Some(&b'[') {
        at += 1;
        let name_end = |from: usize| {
            frame[from..].iter().position(|b| matches!(b, b' ' | b'=' | b']' | b'"')).map(|p| from + p)
        };
        let id_end = name_end(at)?;
        let id = std::str::from_utf8(&frame[at..id_end]).ok()?.to_owned();
        if id.is_empty() || id.len() > 32 {
            return None;
        }
        at = id_end;
        let mut params = Vec::new();
        loop {
            match frame.get(at)? {
                b']' => {
                    at += 1;
                    break;
                }
                b' ' => at += 1,
                _ => return None,
            }
            let n_end = name_end(at)?;
            let name = std::str::from_utf8(&frame[at..n_end]).ok()?.to_owned();
            if name.is_empty() || name.len() > 32 || frame.get(n_end..n_end + 2)? != b"=\"" {
                return None;
            }
            at = n_end + 2;
            let mut value = Vec::new();
            loop {
                match *frame.get(at)? {
                    b'\\' if matches!(frame.get(at + 1), Some(b'"' | b'\\' | b']')) => {
                        value.push(frame[at + 1]);
                        at += 2;
                    }
                    b'"' => {
                        at += 1;
                        break;
                    }
                    b => {
                        value.push(b);
                        at += 1;
                    }
                }
            }
            params.push((name, String::from_utf8(value).ok()?));
        }
        elements.push(SdElement { id, params });
    }
    (!elements.is_empty()).then_some((elements, at))
}

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

fn parse_3164(frame: &[u8], at: usize, pri: u8, now_ms: i64) -> Header {
    let mut h = Header { form: Form::Rfc3164, pri: Some(pri), msg_offset: at, ..Header::default() };
    let Some(time_ms) = frame.get(at..at + 15).and_then(|t| bsd_time(t, now_ms)) else {
        return h;
    };
    h.time_ms = Some(time_ms);
    let mut cur = at + 15;
    if frame.get(cur) != Some(&b' ') {
        return h;
    }
    cur += 1;
    let Some((hostname, next)) = field(frame, cur) else { return h };
    h.hostname = Some(hostname.to_owned());
    h.msg_offset = next;
    // TAG: up to 32 alphanumerics (in practice also `-`, `_`, `.`, `/`), then `[pid]` and/or `:`.
    let rest = &frame[next..];
    let tag_len = rest.iter().take(48).position(|b| matches!(b, b'[' | b':' | b' ')).unwrap_or(0);
    if tag_len == 0 {
        return h;
    }
    let Ok(tag) = std::str::from_utf8(&rest[..tag_len]) else { return h };
    let mut after = tag_len;
    let mut pid = None;
    if rest.get(after) == Some(&b'[') {
        let Some(close) = rest[after..].iter().take(24).position(|b| *b == b']') else { return h };
        pid = std::str::from_utf8(&rest[after + 1..after + close]).ok().map(str::to_owned);
        after += close + 1;
    }
    if rest.get(after) != Some(&b':') {
        return h;
    }
    after += 1;
    if rest.get(after) == Some(&b' ') {
        after += 1;
    }
    h.app_name = Some(tag.to_owned());
    h.procid = pid.filter(|p| !p.is_empty());
    h.msg_offset = next + after;
    h
}

/// `Mmm dd hh:mm:ss` (day space-padded) as UTC epoch milliseconds in the year of `now_ms`, or the year before
/// when that would be more than a day after `now_ms` (a December message received in January).
fn bsd_time(t: &[u8], now_ms: i64) -> Option<i64> {
    let month = MONTHS.iter().position(|m| &t[0..3] == m.as_slice())? as u8 + 1;
    let day_text = std::str::from_utf8(&t[4..6]).ok()?;
    let day: u8 = day_text.trim_start().parse().ok()?;
    if t[3] != b' ' || t[6] != b' ' || t[9] != b':' || t[12] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u8> { std::str::from_utf8(&t[r]).ok()?.parse().ok() };
    let (hh, mm, ss) = (num(7..9)?, num(10..12)?, num(13..15)?);
    let now = time::OffsetDateTime::from_unix_timestamp(now_ms.div_euclid(1000)).ok()?;
    let at_year = |year: i32| -> Option<i64> {
        let date = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
        let when = date.with_hms(hh, mm, ss).ok()?.assume_utc();
        i64::try_from(when.unix_timestamp_nanos() / 1_000_000).ok()
    };
    match at_year(now.year()) {
        Some(ms) if ms <= now_ms + 86_400_000 => Some(ms),
        _ => at_year(now.year() - 1),
    }
}

/// What an auth message says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Auth {
    event_type: &'static str,
    outcome: Outcome,
    actor: Option<String>,
    target: Option<String>,
    source_ip: Option<String>,
}

/// `word` followed by a space at the start of `s`: the rest.
fn after<'a>(s: &'a str, word: &str) -> Option<&'a str> {
    s.strip_prefix(word)
}

/// The first space-delimited token of `s` and the rest after the space.
fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], s[end..].trim_start_matches(' ')))
}

/// `U from IP port P…` (OpenSSH): the user and the address.
fn user_from(s: &str) -> Option<(String, String)> {
    let (user, rest) = token(s)?;
    let rest = after(rest, "from ")?;
    let (ip, rest) = token(rest)?;
    after(rest, "port ")?;
    Some((user.to_owned(), ip.to_owned()))
}

fn sshd(msg: &str) -> Option<Auth> {
    let (event_type, outcome, rest) = if let Some(r) = after(msg, "Accepted password for ") {
        ("sshd.accepted_password", Outcome::Success, r)
    } else if let Some(r) = after(msg, "Accepted publickey for ") {
        ("sshd.accepted_publickey", Outcome::Success, r)
    } else if let Some(r) = after(msg, "Failed password for ") {
        ("sshd.failed_password", Outcome::Failure, r.strip_prefix("invalid user ").unwrap_or(r))
    } else if let Some(r) = after(msg, "Failed publickey for ") {
        ("sshd.failed_publickey", Outcome::Failure, r.strip_prefix("invalid user ").unwrap_or(r))
    } else if let Some(r) = after(msg, "Invalid user ") {
        ("sshd.invalid_user", Outcome::Failure, r)
    } else {
        return None;
    };
    let (user, ip) = user_from(rest)?;
    Some(Auth { event_type, outcome, actor: Some(user), target: None, source_ip: Some(ip) })
}

fn sudo(msg: &str) -> Option<Auth> {
    // `alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id` (sudo 1.9 may put spaces before the
    // user: it pads with none, older versions with several).
    let (user, rest) = msg.trim_start().split_once(" : ")?;
    if user.is_empty() || user.contains(' ') {
        return None;
    }
    let parts: Vec<&str> = rest.split(" ; ").collect();
    let first = parts.first()?;
    let succeeded = first.starts_with("TTY=") || first.starts_with("PWD=");
    let run_as = parts.iter().find_map(|p| p.strip_prefix("USER="))?;
    parts.iter().find(|p| p.starts_with("COMMAND="))?;
    Some(Auth {
        event_type: if succeeded { "sudo.command" } else { "sudo.denied" },
        outcome: if succeeded { Outcome::Success } else { Outcome::Failure },
        actor: Some(user.to_owned()),
        target: Some(run_as.to_owned()),
        source_ip: None,
    })
}

fn pam(msg: &str) -> Option<Auth> {
    // `pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)`
    let rest = msg.strip_prefix("pam_unix(")?;
    let (service, rest) = rest.split_once(':')?;
    let (_kind, rest) = rest.split_once("): ")?;
    let user_of = |s: &str| -> Option<String> {
        let (user, _) = token(s)?;
        let user = user.split('(').next()?;
        (!user.is_empty()).then(|| user.to_owned())
    };
    let (event_type, outcome, actor, source_ip) = if let Some(r) = after(rest, "session opened for user ") {
        ("pam.session_opened", Outcome::Success, user_of(r), None)
    } else if let Some(r) = after(rest, "session closed for user ") {
        ("pam.session_closed", Outcome::Success, user_of(r), None)
    } else if let Some(r) = after(rest, "authentication failure;") {
        let value = |key: &str| {
            r.split(' ').find_map(|kv| kv.strip_prefix(key)).filter(|v| !v.is_empty()).map(str::to_owned)
        };
        ("pam.auth_failure", Outcome::Failure, value("user="), value("rhost="))
    } else {
        return None;
    };
    Some(Auth { event_type, outcome, actor, target: Some(service.to_owned()), source_ip })
}

fn auth_message(app: Option<&str>, msg: &str) -> Option<Auth> {
    match app {
        Some("sshd") => sshd(msg).or_else(|| pam(msg)),
        Some("sudo") => sudo(msg).or_else(|| pam(msg)),
        _ => pam(msg),
    }
}

/// The normalized fields of one message (see the module docs' tables).
pub fn normalize(frame: &[u8], now_ms: i64) -> NormalizedFields {
    let h = parse_header(frame, now_ms);
    if h.form == Form::Unknown {
        return NormalizedFields::default();
    }
    // A MSG that is not UTF-8 (RFC 5424 allows any octets without a BOM) is stored; it is just not read.
    let msg = std::str::from_utf8(&frame[h.msg_offset.min(frame.len())..]).unwrap_or("");
    let msg = msg.trim_end_matches(['\r', '\n']);
    let auth = auth_message(h.app_name.as_deref(), msg);
    let origin_ip = h
        .structured_data
        .iter()
        .filter(|e| e.id == "origin")
        .flat_map(|e| e.params.iter())
        .find(|(k, _)| k == "ip")
        .map(|(_, v)| v.clone());
    let app_type = h.app_name.clone().filter(|a| !anchorlog_core::record_types::is_reserved_type(a));
    let (event_type, outcome, actor, target, source_ip) = match auth {
        Some(a) => (Some(a.event_type.to_owned()), a.outcome, a.actor, a.target, a.source_ip.or(origin_ip)),
        None => (app_type, Outcome::Unknown, None, h.msgid.clone(), origin_ip),
    };
    NormalizedFields {
        event_time_ms: h.time_ms,
        event_type,
        outcome,
        // A user name is all syslog gives: it is the actor's id (what search's `actor` matches) and its name.
        actor_id: actor.clone(),
        actor_name: actor,
        target,
        source_ip,
        user_agent: None,
        session_id: h.procid,
        client_id: h.app_name,
        realm: h.hostname,
    }
}

/// One message as an event: its exact bytes and fields. No source id: syslog has no event ids.
pub fn event(frame: Vec<u8>, now_ms: i64, normalize_fields: bool) -> ParsedEvent {
    let fields = if normalize_fields { normalize(&frame, now_ms) } else { NormalizedFields::default() };
    ParsedEvent { raw: frame, source_id: None, fields }
}

/// An HTTP body of syslog messages, one per LF-terminated line (non-transparent framing; the last line needs no
/// LF). Empty lines are skipped; a CR before the LF stays part of the message.
pub fn parse(body: &[u8], limits: &Limits, normalize_fields: bool) -> Result<Vec<ParsedEvent>, FormatError> {
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return Err(FormatError::Empty);
    }
    if lines.len() > limits.max_events {
        return Err(FormatError::TooManyEvents { max: limits.max_events, found: lines.len() });
    }
    let now_ms = crate::store::now_ms();
    Ok(lines.into_iter().map(|l| event(l.to_vec(), now_ms, normalize_fields)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T12:00:00Z.
    const NOW: i64 = 1_796_644_800_000;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn rfc5424_header_with_structured_data_and_bom() {
        let m = b"<165>1 2026-12-07T11:59:58.123456+01:00 web-1.example.org sshd 4242 ID47 \
[exampleSDID@32473 iut=\"3\" eventSource=\"Appli\\\"cation\" eventID=\"1011\"][origin ip=\"192.0.2.7\"] \
\xEF\xBB\xBFhello";
        let h = parse_header(m, NOW);
        assert_eq!(h.form, Form::Rfc5424);
        assert_eq!((h.facility(), h.severity()), (Some(20), Some(5)));
        assert_eq!(h.time_ms, Some(1_796_641_198_123));
        assert_eq!(h.hostname, s("web-1.example.org"));
        assert_eq!(h.app_name, s("sshd"));
        assert_eq!(h.procid, s("4242"));
        assert_eq!(h.msgid, s("ID47"));
        assert_eq!(
            h.structured_data,
            vec![
                SdElement {
                    id: "exampleSDID@32473".into(),
                    params: vec![
                        ("iut".into(), "3".into()),
                        ("eventSource".into(), "Appli\"cation".into()),
                        ("eventID".into(), "1011".into())
                    ]
                },
                SdElement { id: "origin".into(), params: vec![("ip".into(), "192.0.2.7".into())] },
            ]
        );
        assert_eq!(&m[h.msg_offset..], b"hello");
        let f = normalize(m, NOW);
        assert_eq!(f.source_ip, s("192.0.2.7"), "origin ip from structured data");
        assert_eq!(f.target, s("ID47"), "MSGID when no auth message names a target");
        assert_eq!(f.event_type, s("sshd"));
    }

    #[test]
    fn rfc5424_nil_values_and_no_msg() {
        let h = parse_header(b"<13>1 - - - - - -", NOW);
        assert_eq!(h.form, Form::Rfc5424);
        assert_eq!((h.time_ms, h.hostname, h.app_name, h.procid, h.msgid), (None, None, None, None, None));
        assert!(h.structured_data.is_empty());
        assert_eq!(h.msg_offset, 17);
        assert_eq!(normalize(b"<13>1 - - - - - -", NOW).outcome, Outcome::Unknown);
    }

    #[test]
    fn sshd_accepted_and_failed_over_rfc5424() {
        let accepted = b"<38>1 2026-12-07T11:00:00Z bastion sshd 811 - - Accepted publickey for alice from 192.0.2.10 port 52144 ssh2: ED25519 SHA256:3q2+7w";
        assert_eq!(
            normalize(accepted, NOW),
            NormalizedFields {
                event_time_ms: Some(1_796_641_200_000),
                event_type: s("sshd.accepted_publickey"),
                outcome: Outcome::Success,
                actor_id: s("alice"),
                actor_name: s("alice"),
                target: None,
                source_ip: s("192.0.2.10"),
                user_agent: None,
                session_id: s("811"),
                client_id: s("sshd"),
                realm: s("bastion"),
            }
        );
        let cases: [(&[u8], &str, Outcome, &str, &str); 4] = [
            (
                b"<38>1 2026-12-07T11:00:00Z bastion sshd 812 - - Accepted password for bob from 2001:db8::5 port 40022 ssh2",
                "sshd.accepted_password",
                Outcome::Success,
                "bob",
                "2001:db8::5",
            ),
            (
                b"<38>1 2026-12-07T11:00:00Z bastion sshd 813 - - Failed password for invalid user mallory from 198.51.100.9 port 4242 ssh2",
                "sshd.failed_password",
                Outcome::Failure,
                "mallory",
                "198.51.100.9",
            ),
            (
                b"<38>1 2026-12-07T11:00:00Z bastion sshd 814 - - Failed publickey for alice from 192.0.2.10 port 52145 ssh2: RSA SHA256:abc",
                "sshd.failed_publickey",
                Outcome::Failure,
                "alice",
                "192.0.2.10",
            ),
            (
                b"<38>1 2026-12-07T11:00:00Z bastion sshd 815 - - Invalid user admin from 203.0.113.4 port 60000",
                "sshd.invalid_user",
                Outcome::Failure,
                "admin",
                "203.0.113.4",
            ),
        ];
        for (m, ty, outcome, user, ip) in cases {
            let f = normalize(m, NOW);
            assert_eq!(
                (f.event_type.as_deref(), f.outcome, f.actor_name.as_deref(), f.source_ip.as_deref()),
                (Some(ty), outcome, Some(user), Some(ip)),
                "{}",
                String::from_utf8_lossy(m)
            );
        }
    }

    #[test]
    fn sudo_command_and_denials() {
        let ok = b"<85>1 2026-12-07T11:00:01Z bastion sudo - - - alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx";
        let f = normalize(ok, NOW);
        assert_eq!(f.event_type, s("sudo.command"));
        assert_eq!(f.outcome, Outcome::Success);
        assert_eq!(f.actor_name, s("alice"));
        assert_eq!(f.target, s("root"));
        assert_eq!(f.source_ip, None);
        let denied = b"<85>1 2026-12-07T11:00:02Z bastion sudo - - - mallory : user NOT in sudoers ; TTY=pts/1 ; PWD=/tmp ; USER=root ; COMMAND=/bin/sh";
        let f = normalize(denied, NOW);
        assert_eq!(
            (f.event_type.as_deref(), f.outcome, f.actor_name.as_deref(), f.target.as_deref()),
            (Some("sudo.denied"), Outcome::Failure, Some("mallory"), Some("root"))
        );
        let attempts = b"<85>1 2026-12-07T11:00:03Z bastion sudo - - - bob : 3 incorrect password attempts ; TTY=pts/2 ; PWD=/home/bob ; USER=root ; COMMAND=/usr/bin/id";
        assert_eq!(normalize(attempts, NOW).event_type, s("sudo.denied"));
    }

    #[test]
    fn pam_sessions_and_auth_failure_over_rfc3164() {
        let opened = b"<86>Dec  7 11:00:04 bastion sshd[811]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)";
        let h = parse_header(opened, NOW);
        assert_eq!(h.form, Form::Rfc3164);
        assert_eq!(h.time_ms, Some(1_796_641_204_000));
        assert_eq!(
            (h.hostname.as_deref(), h.app_name.as_deref(), h.procid.as_deref()),
            (Some("bastion"), Some("sshd"), Some("811"))
        );
        assert_eq!(&opened[h.msg_offset..h.msg_offset + 9], b"pam_unix(");
        let f = normalize(opened, NOW);
        assert_eq!(
            (f.event_type.as_deref(), f.outcome, f.actor_name.as_deref(), f.target.as_deref()),
            (Some("pam.session_opened"), Outcome::Success, Some("alice"), Some("sshd"))
        );
        let closed =
            b"<86>Dec  7 11:10:00 bastion sudo: pam_unix(sudo:session): session closed for user root";
        let f = normalize(closed, NOW);
        assert_eq!(
            (f.event_type.as_deref(), f.actor_name.as_deref(), f.target.as_deref(), f.session_id),
            (Some("pam.session_closed"), Some("root"), Some("sudo"), None)
        );
        let failure = b"<85>Dec  7 11:00:05 bastion sshd[900]: pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=198.51.100.9  user=bob";
        let f = normalize(failure, NOW);
        assert_eq!(
            (f.event_type.as_deref(), f.outcome, f.actor_name.as_deref(), f.source_ip.as_deref()),
            (Some("pam.auth_failure"), Outcome::Failure, Some("bob"), Some("198.51.100.9"))
        );
    }

    #[test]
    fn rfc3164_december_received_in_january_is_last_year() {
        // 2027-01-01T00:00:30Z
        let now = 1_798_761_630_000;
        let h = parse_header(b"<13>Dec 31 23:59:59 host app: x", now);
        assert_eq!(h.time_ms, Some(1_798_761_599_000));
    }

    #[test]
    fn not_syslog_is_stored_without_fields() {
        for m in [&b"hello world"[..], b"<192>1 - - - - - -", b"<01>x", b"<>x", b""] {
            assert_eq!(normalize(m, NOW), NormalizedFields::default(), "{}", String::from_utf8_lossy(m));
        }
        // A bad 5424 header falls back to the BSD reading, which finds no timestamp.
        let h = parse_header(b"<13>1 notatime host app - - - msg", NOW);
        assert_eq!((h.form, h.time_ms, h.hostname), (Form::Rfc3164, None, None));
        let h = parse_header(b"<13>1 - host app - - [unterminated x=\"1\" msg", NOW);
        assert_eq!(h.form, Form::Rfc3164);
    }

    #[test]
    fn a_reserved_app_name_gives_no_type() {
        let f = normalize(b"<13>1 - host anchorlog.start - - - forged", NOW);
        assert_eq!(f.event_type, None);
        assert_eq!(f.client_id, s("anchorlog.start"));
    }

    #[test]
    fn http_bodies_are_lf_framed() {
        let limits = Limits { max_events: 2, max_depth: 8 };
        let events = parse(b"<13>1 - - - - - - a\r\n\n<13>1 - - - - - - b", &limits, true).unwrap();
        assert_eq!(
            events.iter().map(|e| e.raw.as_slice()).collect::<Vec<_>>(),
            [&b"<13>1 - - - - - - a\r"[..], b"<13>1 - - - - - - b"]
        );
        assert!(events.iter().all(|e| e.source_id.is_none()));
        assert_eq!(parse(b"\n\n", &limits, true), Err(FormatError::Empty));
        assert_eq!(parse(b"a\nb\nc", &limits, true), Err(FormatError::TooManyEvents { max: 2, found: 3 }));
    }
}
