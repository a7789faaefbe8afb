//! The part of memcached's meta text protocol this crate speaks: commands
//! encoded into a byte buffer, replies parsed incrementally from the bytes
//! read so far.
//!
//! Commands: `mg` (get, with `v` value, `c` CAS token, `t` remaining TTL,
//! `T` new TTL), `ms` (set, with `M` mode, `C` compare-CAS, `T`, `c`), `md`
//! (delete, with `C`). Replies: `VA <len> <flags>` + data, `HD <flags>`,
//! `EN` (miss), `NS` (not stored), `EX` (CAS mismatch), `NF` (not found),
//! `MN`, and the error lines. The parser never panics on any bytes: a
//! reply it cannot read is a [`ReplyError`] and the caller drops the
//! connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::backend::node_backend::Expiry;

/// Memcached reads a relative TTL above 30 days as an absolute unix time.
const MAX_RELATIVE_TTL_SECS: u64 = 30 * 24 * 60 * 60;
/// The latest absolute expiry memcached reads correctly.
const MAX_ABSOLUTE_TTL: u64 = i32::MAX as u64;
/// A value this long or longer is refused by memcached anyway (its default
/// item size limit is 1 MiB; the largest it can be set to is 1 GiB) — and
/// at 2^31 bytes it would read the value as commands: never sent, never
/// accepted in a reply.
pub(super) const MAX_VALUE_LEN: usize = 1 << 30;
/// A reply header line longer than this is garbage (a real one is < 100 B).
const MAX_HEADER_LEN: usize = 1024;

/// How an `ms` stores its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SetMode {
    /// Always.
    Set,
    /// Only if the key is absent (`ME`).
    Add,
    /// Only if the item's CAS token is still this one (`C<cas>`).
    IfCas(u64),
}

/// A key memcached accepts in the text protocol: 1 to 250 printable ASCII
/// bytes, no spaces. Keys built by this crate always are; anything else is
/// refused before it reaches the wire.
pub(super) fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 250 && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The TTL token for `expiry`: whole seconds, or the absolute unix time
/// memcached expects above 30 days — at most `i32::MAX` (January 2038):
/// memcached reads a larger one as already past, and would acknowledge a
/// write and drop the item at once. `0` (no expiry) for [`Expiry::Never`].
fn ttl_secs(expiry: Expiry) -> u64 {
    let Some(secs) = expiry.whole_secs().map(u64::from) else {
        return 0;
    };
    if secs <= MAX_RELATIVE_TTL_SECS {
        return secs;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    now.as_secs().saturating_add(secs).min(MAX_ABSOLUTE_TTL)
}

/// What an `mg` asks for besides the key.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GetFlags {
    /// Return the value (`v`); without it a hit answers `HD`.
    pub value: bool,
    /// Return the CAS token (`c`).
    pub cas: bool,
    /// Return the remaining TTL (`t`).
    pub ttl: bool,
    /// Set a new TTL (`T<secs>`).
    pub touch: Option<Expiry>,
}

/// Appends `mg <key> <flags>\r\n`.
pub(super) fn encode_get(out: &mut Vec<u8>, key: &str, flags: GetFlags) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key.as_bytes());
    if flags.value {
        out.extend_from_slice(b" v");
    }
    if flags.cas {
        out.extend_from_slice(b" c");
    }
    if flags.ttl {
        out.extend_from_slice(b" t");
    }
    if let Some(expiry) = flags.touch {
        push_number(out, b" T", ttl_secs(expiry));
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `ms <key> <len> T<ttl> [ME|C<cas>] [c]\r\n<value>\r\n`.
pub(super) fn encode_set(out: &mut Vec<u8>, key: &str, value: &[u8], expiry: Expiry, mode: SetMode, return_cas: bool) {
    out.extend_from_slice(b"ms ");
    out.extend_from_slice(key.as_bytes());
    push_number(out, b" ", value.len() as u64);
    push_number(out, b" T", ttl_secs(expiry));
    match mode {
        SetMode::Set => {}
        SetMode::Add => out.extend_from_slice(b" ME"),
        SetMode::IfCas(cas) => push_number(out, b" C", cas),
    }
    if return_cas {
        out.extend_from_slice(b" c");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `md <key> [C<cas>]\r\n`.
pub(super) fn encode_delete(out: &mut Vec<u8>, key: &str, if_cas: Option<u64>) {
    out.extend_from_slice(b"md ");
    out.extend_from_slice(key.as_bytes());
    if let Some(cas) = if_cas {
        push_number(out, b" C", cas);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_number(out: &mut Vec<u8>, prefix: &[u8], number: u64) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(number.to_string().as_bytes());
}

/// What a reply says, without its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Status {
    /// `VA`: a hit, with the value.
    Value(Vec<u8>),
    /// `HD`: done (stored, deleted, or a hit without value).
    Done,
    /// `EN`: a get's miss.
    Miss,
    /// `NS`: not stored (add: the key exists).
    NotStored,
    /// `EX`: the CAS token did not match.
    Exists,
    /// `NF`: not found (delete, or a CAS write on a missing key).
    NotFound,
    /// `SERVER_ERROR <message>`: the node refused this command (for
    /// example out of memory); the connection stays usable.
    ServerError(String),
    /// `CLIENT_ERROR <message>` or `ERROR`: the node did not understand
    /// the command.
    ClientError(String),
}

/// One reply: its status and the flags this crate reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Reply {
    pub status: Status,
    /// `c<cas>`.
    pub cas: Option<u64>,
    /// `t<secs>`; `-1` when the item never expires.
    pub ttl: Option<i64>,
}

/// Bytes that are not a meta protocol reply: the connection cannot be
/// trusted any more.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable memcached reply: {0}")]
pub(super) struct ReplyError(pub String);

/// Parses one reply from the front of `input`: `Ok(Some((reply, consumed
/// bytes)))`, `Ok(None)` when more bytes are needed.
pub(super) fn parse_reply(input: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let Some(line_end) = find_crlf(input) else {
        if input.len() > MAX_HEADER_LEN {
            return Err(ReplyError("reply line too long".to_owned()));
        }
        return Ok(None);
    };
    let line = &input[..line_end];
    let header_len = line_end + 2;
    let line = std::str::from_utf8(line).map_err(|_| ReplyError("reply line is not UTF-8".to_owned()))?;
    if let Some(message) = line.strip_prefix("SERVER_ERROR") {
        return Ok(Some((bare(Status::ServerError(message.trim().to_owned())), header_len)));
    }
    if let Some(message) = line.strip_prefix("CLIENT_ERROR") {
        return Ok(Some((bare(Status::ClientError(message.trim().to_owned())), header_len)));
    }
    // `ERROR`, or `ERROR <message>` (e.g. "Too many open connections").
    if line == "ERROR" || line.starts_with("ERROR ") {
        return Ok(Some((bare(Status::ClientError(line.to_owned())), header_len)));
    }
    let mut tokens = line.split(' ').filter(|t| !t.is_empty());
    let code = tokens.next().unwrap_or("");
    let (status, consumed) = match code {
        "VA" => {
            let len: usize = tokens
                .next()
                .and_then(|t| t.parse().ok())
                .filter(|len| *len < MAX_VALUE_LEN)
                .ok_or_else(|| ReplyError(format!("bad value length in {line:?}")))?;
            let total = header_len + len + 2;
            if input.len() < total {
                return Ok(None);
            }
            if &input[header_len + len..total] != b"\r\n" {
                return Err(ReplyError("value not followed by CRLF".to_owned()));
            }
            (Status::Value(input[header_len..header_len + len].to_vec()), total)
        }
        "HD" => (Status::Done, header_len),
        "EN" => (Status::Miss, header_len),
        "NS" => (Status::NotStored, header_len),
        "EX" => (Status::Exists, header_len),
        "NF" => (Status::NotFound, header_len),
        _ => return Err(ReplyError(format!("unknown reply {line:?}"))),
    };
    let mut reply = bare(status);
    for flag in tokens {
        // Tokens are never empty (filtered above); `get` keeps a
        // multi-byte first character from splitting a char.
        let value = flag.get(1..).unwrap_or("");
        match flag.as_bytes()[0] {
            b'c' => {
                reply.cas = Some(
                    value
                        .parse()
                        .map_err(|_| ReplyError(format!("bad CAS flag {flag:?}")))?,
                )
            }
            b't' => {
                reply.ttl = Some(
                    value
                        .parse()
                        .map_err(|_| ReplyError(format!("bad TTL flag {flag:?}")))?,
                )
            }
            _ => {}
        }
    }
    Ok(Some((reply, consumed)))
}

fn bare(status: Status) -> Reply {
    Reply {
        status,
        cas: None,
        ttl: None,
    }
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    let limit = input.len().min(MAX_HEADER_LEN + 2);
    input[..limit].windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(input: &[u8]) -> (Reply, usize) {
        parse_reply(input).expect("readable").expect("complete")
    }

    #[test]
    fn commands_are_encoded_as_memcached_expects() {
        let mut out = Vec::new();
        let touch = Some(Expiry::After(Duration::from_millis(1500)));
        encode_get(
            &mut out,
            "k",
            GetFlags {
                value: true,
                cas: true,
                ttl: false,
                touch,
            },
        );
        encode_set(&mut out, "k", b"ab", Expiry::Never, SetMode::Add, true);
        encode_set(
            &mut out,
            "k",
            b"",
            Expiry::After(Duration::from_secs(5)),
            SetMode::IfCas(7),
            false,
        );
        encode_delete(&mut out, "k", Some(9));
        encode_delete(&mut out, "k", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "mg k v c T2\r\nms k 2 T0 ME c\r\nab\r\nms k 0 T5 C7\r\n\r\nmd k C9\r\nmd k\r\n"
        );
    }

    #[test]
    fn a_ttl_above_thirty_days_is_sent_as_an_absolute_time() {
        let days_40 = Expiry::After(Duration::from_secs(40 * 24 * 3600));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let sent = ttl_secs(days_40);
        assert!(
            sent >= now + 40 * 24 * 3600 && sent <= now + 40 * 24 * 3600 + 5,
            "{sent}"
        );
        assert_eq!(
            ttl_secs(Expiry::After(Duration::from_secs(MAX_RELATIVE_TTL_SECS))),
            MAX_RELATIVE_TTL_SECS
        );
    }

    #[test]
    fn replies_are_parsed_with_their_flags() {
        let (reply, used) = parsed(b"VA 3 c42 t-1\r\nabc\r\nHD\r\n");
        assert_eq!(
            (reply.status, reply.cas, reply.ttl, used),
            (Status::Value(b"abc".to_vec()), Some(42), Some(-1), 19)
        );
        assert_eq!(parsed(b"HD c5\r\n").0.cas, Some(5));
        for (bytes, status) in [
            (&b"EN\r\n"[..], Status::Miss),
            (b"NS\r\n", Status::NotStored),
            (b"EX\r\n", Status::Exists),
            (b"NF\r\n", Status::NotFound),
            (
                b"SERVER_ERROR out of memory\r\n",
                Status::ServerError("out of memory".to_owned()),
            ),
            (
                b"CLIENT_ERROR bad command line format\r\n",
                Status::ClientError("bad command line format".to_owned()),
            ),
            (b"ERROR\r\n", Status::ClientError("ERROR".to_owned())),
        ] {
            assert_eq!(parsed(bytes).0.status, status);
        }
    }

    #[test]
    fn an_incomplete_reply_asks_for_more_bytes() {
        let full = b"VA 5 c1\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_reply(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parsed(full).1, full.len());
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for bytes in [
            &b"HELLO\r\n"[..],
            b"VA x\r\n",
            b"VA 3\r\nabcXY",
            b"HD cnope\r\n",
            b"HD t\r\n",
            b"\xff\xfe\r\n",
            b"VA 99999999999999999999\r\n",
            b"\r\n",
        ] {
            assert!(parse_reply(bytes).is_err(), "{bytes:?}");
        }
        // Unknown flags are skipped, whatever their characters.
        assert_eq!(parsed("HD \u{e9}x c3\r\n".as_bytes()).0.cas, Some(3));
        assert!(parse_reply(&[b'x'; MAX_HEADER_LEN + 1]).is_err());
    }

    #[test]
    fn only_keys_memcached_accepts_are_valid() {
        assert!(is_valid_key("bak:abc-n1.r1"));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("a\r\nmd x"));
        assert!(!is_valid_key(&"k".repeat(251)));
    }
}
