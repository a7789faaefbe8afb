//! How session ids travel between client and server: the session cookie,
//! and optionally a header (`sessionIdHeader`) for API and mobile clients.
//!
//! Incoming: the header is checked first, then every cookie of the
//! configured name (several can arrive, from different paths or domains);
//! the first value that is a valid id of ours wins. Values that are not
//! UTF-8, malformed, or name an unknown node are ignored (counted as
//! invalid ids): the request simply has no session. A client can never
//! choose its id: an id is only ever accepted when a session with it exists.
//!
//! Outgoing: the id is sent when it is new or changed (in the cookie, and
//! in the header when one is configured); a persistent cookie is re-sent on
//! every response of a request with a session so its `Max-Age` slides with
//! the session's inactivity expiry; after an invalidation the cookie is
//! expired and the header sent empty.

use std::time::Duration;

use cookie::Cookie;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::inner::ManagerInner;
use crate::session::id::SessionId;
use crate::stats::Stats;

/// Browsers cap cookie lifetimes at 400 days.
const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 86_400);

/// What the response says about the session id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IdAction {
    /// No session: say nothing.
    None,
    /// The client already has this id; a persistent cookie is re-sent so
    /// its `Max-Age` slides (only built when the cookie is persistent).
    Keep(String, Lifetime),
    /// A new or changed id: send it.
    Set(String, Lifetime),
    /// The session was invalidated: expire the cookie, empty the header.
    Remove,
}

/// The session's inactivity interval, for a persistent cookie's
/// `Max-Age`; `None`: it never expires.
pub(crate) type Lifetime = Option<Duration>;

/// Every value of the session cookie across all `Cookie` headers.
pub(crate) fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

/// What the client sent as its session id.
#[derive(Debug)]
pub(crate) enum IncomingId {
    None,
    /// Present but malformed, or naming an unknown node.
    Invalid,
    Valid(SessionId),
}

/// The session id the client sent (see the module docs for the order).
pub(crate) fn incoming_id(manager: &ManagerInner, headers: &HeaderMap) -> IncomingId {
    let config = &manager.config;
    let from_header = config
        .id_header
        .iter()
        .flat_map(|name| headers.get_all(name).iter())
        .map(|value| value.to_str().unwrap_or_default().trim());
    let from_cookie = config
        .cookie
        .enabled
        .then(|| cookie_values(headers, &config.cookie.name))
        .into_iter()
        .flatten();
    let mut seen = false;
    for value in from_header.chain(from_cookie) {
        seen = true;
        if let Some(id) = SessionId::parse(value, |node| manager.store.nodes.is_known(node)) {
            return IncomingId::Valid(id);
        }
    }
    if seen {
        Stats::count(&manager.stats.counters.invalid_session_ids);
        tracing::debug!("ignoring a malformed or foreign session id");
        IncomingId::Invalid
    } else {
        IncomingId::None
    }
}

/// Writes what `action` needs into the response headers.
pub(crate) fn apply(manager: &ManagerInner, action: IdAction, headers: &mut HeaderMap) {
    let config = &manager.config;
    let (cookie_value, header_value, lifetime) = match &action {
        IdAction::None => return,
        IdAction::Keep(id, lifetime) => (config.cookie.persistent.then_some(id.as_str()), None, *lifetime),
        IdAction::Set(id, lifetime) => (Some(id.as_str()), Some(id.as_str()), *lifetime),
        IdAction::Remove => (Some(""), Some(""), None),
    };
    if let (Some(name), Some(value)) = (&config.id_header, header_value) {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    if !config.cookie.enabled {
        return;
    }
    if let Some(value) = cookie_value.and_then(|id| set_cookie(manager, id, action == IdAction::Remove, lifetime)) {
        headers.append(SET_COOKIE, value);
    }
}

fn set_cookie(manager: &ManagerInner, id: &str, removal: bool, lifetime: Lifetime) -> Option<HeaderValue> {
    let config = &manager.config.cookie;
    let mut cookie = Cookie::new(config.name.as_str(), id);
    if removal {
        cookie.make_removal();
    } else if config.persistent {
        let age = lifetime.unwrap_or(MAX_COOKIE_AGE).min(MAX_COOKIE_AGE);
        cookie.set_max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    cookie.set_path(config.path.as_str());
    if let Some(domain) = &config.domain {
        cookie.set_domain(domain.as_str());
    }
    cookie.set_http_only(true);
    cookie.set_secure(config.secure);
    cookie.set_same_site(config.same_site);
    HeaderValue::from_str(&cookie.to_string()).ok()
}
