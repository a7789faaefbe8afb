//! What the demo's routes do, the same for both frameworks: each takes the
//! request's session and returns a [`Reply`] that `warp_app` and
//! `axum_app` turn into their responses.

use std::time::Duration;

use http::StatusCode;
use memcached_sessions::{NodeStatus, Session, SessionLocation, SessionManager};
use serde::{Deserialize, Serialize};

const COUNT: &str = "count";
const USER: &str = "user";
const TOKENS: &str = "tokens";
/// How many of the most recent write tokens a session keeps.
const MAX_TOKENS: usize = 512;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 32;
/// Longest `delay_ms` accepted, so a client cannot park requests forever.
const MAX_DELAY_MS: u64 = 60_000;
/// Largest `POST /login` body accepted.
pub(crate) const MAX_LOGIN_BODY: u64 = 4096;

/// A route's answer, before it becomes a framework's response.
pub(crate) enum Reply {
    /// `200` with this JSON.
    Json(serde_json::Value),
    /// `200` with this HTML page.
    Html(String),
    /// This status with a plain-text message.
    Text(StatusCode, String),
}

#[derive(Debug, Deserialize)]
pub(crate) struct IncrementQuery {
    delay_ms: Option<u64>,
    /// Identifies this write: appended to the session's token list.
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    user: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct CounterBody {
    count: u64,
    session_id: Option<String>,
    instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The tokens of the most recent identified writes, oldest first.
    tokens: Vec<String>,
}

/// A write token: 1–32 characters of `[A-Za-z0-9_-]`.
fn valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn body(session: &Session, instance: String) -> Result<CounterBody, memcached_sessions::Error> {
    Ok(CounterBody {
        count: session.get(COUNT)?.unwrap_or(0),
        session_id: session.id(),
        instance,
        user: session.get(USER)?,
        tokens: session.get(TOKENS)?.unwrap_or_default(),
    })
}

fn json_or_error<T: Serialize>(result: Result<T, memcached_sessions::Error>) -> Reply {
    match result {
        Ok(body) => json(&body),
        Err(error) => {
            tracing::error!(%error, "session data of an unexpected type");
            Reply::Text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
    }
}

fn json<T: Serialize>(body: &T) -> Reply {
    match serde_json::to_value(body) {
        Ok(value) => Reply::Json(value),
        Err(error) => Reply::Text(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// `GET /counter`: read-only, creates no session.
pub(crate) fn counter(session: &Session, instance: String) -> Reply {
    json_or_error(body(session, instance))
}

/// `POST /counter?delay_ms=N&token=T`: holds the session N ms, then
/// increments and, with a token, appends it to the session's token list
/// (the last [`MAX_TOKENS`] are kept). A malformed token is a 400 and
/// changes nothing.
pub(crate) async fn increment(query: IncrementQuery, session: &Session, instance: String) -> Reply {
    if query.token.as_deref().is_some_and(|token| !valid_token(token)) {
        return Reply::Text(
            StatusCode::BAD_REQUEST,
            "token must be 1-32 characters of [A-Za-z0-9_-]".to_owned(),
        );
    }
    let delay = query.delay_ms.unwrap_or(0).min(MAX_DELAY_MS);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let result = session
        .update(COUNT, |count: Option<u64>| count.unwrap_or(0) + 1)
        .and_then(|_| match query.token {
            Some(token) => session
                .update(TOKENS, |tokens: Option<Vec<String>>| {
                    let mut tokens = tokens.unwrap_or_default();
                    if tokens.len() >= MAX_TOKENS {
                        tokens.drain(..=tokens.len() - MAX_TOKENS);
                    }
                    tokens.push(token);
                    tokens
                })
                .map(drop),
            None => Ok(()),
        })
        .and_then(|()| body(session, instance));
    json_or_error(result)
}

/// `POST /login {"user": ".."}`: stores the user and cycles the id.
pub(crate) fn login(login: Login, session: &Session, instance: String) -> Reply {
    let result = session.insert(USER, &login.user).and_then(|()| {
        session.cycle_id();
        body(session, instance)
    });
    json_or_error(result)
}

/// `POST /logout`: invalidates the session.
pub(crate) fn logout(session: &Session, instance: String) -> Reply {
    session.invalidate();
    json(&CounterBody {
        count: 0,
        session_id: None,
        instance,
        user: None,
        tokens: Vec::new(),
    })
}

#[derive(Debug, Serialize)]
struct ClusterBody {
    instance: String,
    sticky: bool,
    nodes: Vec<NodeStatus>,
    /// `None` without a session.
    session: Option<SessionView>,
}

#[derive(Debug, Serialize)]
struct SessionView {
    id: Option<String>,
    count: u64,
    user: Option<String>,
    #[serde(flatten)]
    location: Option<SessionLocation>,
}

/// `GET /cluster`: what the page shows — this instance, every node with
/// its state, and the request's session with where it lives. Read-only:
/// creates no session.
pub(crate) fn cluster(manager: &SessionManager, session: &Session, instance: String) -> Reply {
    let view = || -> Result<Option<SessionView>, memcached_sessions::Error> {
        if !session.exists() {
            return Ok(None);
        }
        Ok(Some(SessionView {
            id: session.id(),
            count: session.get(COUNT)?.unwrap_or(0),
            user: session.get(USER)?,
            location: session.location(),
        }))
    };
    json_or_error(view().map(|session| ClusterBody {
        instance,
        sticky: manager.config().sticky(),
        nodes: manager.nodes(),
        session,
    }))
}

/// `GET /`: a page showing the session, the cluster and what happened to
/// the session, refreshing itself from `GET /cluster`, with buttons.
pub(crate) fn page(session: &Session, instance: String, sticky: bool) -> Reply {
    let count: u64 = session.get(COUNT).ok().flatten().unwrap_or(0);
    let user: Option<String> = session.get(USER).ok().flatten();
    let id = session.id().unwrap_or_else(|| "(none)".to_owned());
    let html = include_str!("page.html")
        .replace("__INSTANCE__", &escape(&instance))
        .replace("__MODE__", if sticky { "sticky" } else { "non-sticky" })
        .replace("__ID__", &escape(&id))
        .replace("__COUNT__", &count.to_string())
        // Last: the one value a client chooses is not searched again.
        .replace("__USER__", &escape(user.as_deref().unwrap_or("(not logged in)")));
    Reply::Html(html)
}

/// Minimal HTML escaping for text content.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{escape, valid_token};

    #[test]
    fn tokens_are_short_and_plain() {
        assert!(valid_token("u1-000042_x"));
        assert!(valid_token(&"a".repeat(32)));
        assert!(!valid_token(""));
        assert!(!valid_token(&"a".repeat(33)));
        for bad in ["a b", "a/b", "a.b", "ä", "a%20"] {
            assert!(!valid_token(bad), "{bad}");
        }
    }

    #[test]
    fn escapes_html() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
