//! The demo's routes: `filters` build the warp tree, `handlers` do the work.

use std::convert::Infallible;
use std::time::Duration;

use memcached_sessions::{Session, SessionManager};
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::{Json, Response};
use warp::{Filter, Rejection, Reply};

const COUNT: &str = "count";
const USER: &str = "user";
const TOKENS: &str = "tokens";
/// How many of the most recent write tokens a session keeps.
const MAX_TOKENS: usize = 512;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 32;
/// Longest `delay_ms` accepted, so a client cannot park requests forever.
const MAX_DELAY_MS: u64 = 60_000;

/// The whole app: routes, session layer, error mapping, `X-Instance`.
pub(crate) fn app(
    manager: SessionManager,
    instance: String,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let session = manager.session();
    let with_instance = {
        let instance = instance.clone();
        warp::any().map(move || instance.clone())
    };
    let health = warp::path!("health").and(warp::get()).map(|| "ok");
    let read_counter = warp::path!("counter")
        .and(warp::get())
        .and(session.clone())
        .and(with_instance.clone())
        .map(counter_json);
    let increment = warp::path!("counter")
        .and(warp::post())
        .and(warp::query::<IncrementQuery>())
        .and(session.clone())
        .and(with_instance.clone())
        .and_then(increment);
    let login = warp::path!("login")
        .and(warp::post())
        .and(warp::body::content_length_limit(4096))
        .and(warp::body::json::<Login>())
        .and(session.clone())
        .and(with_instance.clone())
        .map(login);
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(session.clone())
        .and(with_instance.clone())
        .map(logout);
    let stats = {
        let manager = manager.clone();
        warp::path!("stats")
            .and(warp::get())
            .map(move || warp::reply::json(&manager.statistics()))
    };
    let page = warp::path::end()
        .and(warp::get())
        .and(session)
        .and(with_instance)
        .map(page);
    let routes = health
        .or(read_counter)
        .or(increment)
        .or(login)
        .or(logout)
        .or(stats)
        .or(page);
    manager
        .wrap(routes)
        .recover(handle_rejection)
        .with(warp::reply::with::header("x-instance", instance))
}

#[derive(Debug, Deserialize)]
struct IncrementQuery {
    delay_ms: Option<u64>,
    /// Identifies this write: appended to the session's token list.
    token: Option<String>,
}

/// A write token: 1–32 characters of `[A-Za-z0-9_-]`.
fn valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Deserialize)]
struct Login {
    user: String,
}

#[derive(Debug, Serialize)]
struct CounterBody {
    count: u64,
    session_id: Option<String>,
    instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// The tokens of the most recent identified writes, oldest first.
    tokens: Vec<String>,
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

fn json_or_error(result: Result<CounterBody, memcached_sessions::Error>) -> Response {
    match result {
        Ok(body) => warp::reply::json(&body).into_response(),
        Err(error) => {
            tracing::error!(%error, "session data of an unexpected type");
            warp::reply::with_status(error.to_string(), StatusCode::INTERNAL_SERVER_ERROR).into_response()
        }
    }
}

/// `GET /counter`: read-only, creates no session.
fn counter_json(session: Session, instance: String) -> Response {
    json_or_error(body(&session, instance))
}

/// `POST /counter?delay_ms=N&token=T`: holds the session N ms, then
/// increments and, with a token, appends it to the session's token list
/// (the last [`MAX_TOKENS`] are kept). A malformed token is a 400 and
/// changes nothing.
async fn increment(query: IncrementQuery, session: Session, instance: String) -> Result<Response, Rejection> {
    if query.token.as_deref().is_some_and(|token| !valid_token(token)) {
        return Ok(warp::reply::with_status(
            "token must be 1-32 characters of [A-Za-z0-9_-]",
            StatusCode::BAD_REQUEST,
        )
        .into_response());
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
        .and_then(|()| body(&session, instance));
    Ok(json_or_error(result))
}

/// `POST /login {"user": ".."}`: stores the user and cycles the id.
fn login(login: Login, session: Session, instance: String) -> Response {
    let result = session.insert(USER, &login.user).and_then(|()| {
        session.cycle_id();
        body(&session, instance)
    });
    json_or_error(result)
}

/// `POST /logout`: invalidates the session.
fn logout(session: Session, instance: String) -> Json {
    session.invalidate();
    warp::reply::json(&CounterBody {
        count: 0,
        session_id: None,
        instance,
        user: None,
        tokens: Vec::new(),
    })
}

/// `GET /`: a page showing the session, with buttons.
fn page(session: Session, instance: String) -> Response {
    let count: u64 = session.get(COUNT).ok().flatten().unwrap_or(0);
    let user: Option<String> = session.get(USER).ok().flatten();
    let id = session.id().unwrap_or_else(|| "(none)".to_owned());
    let html = format!(
        include_str!("page.html"),
        id = escape(&id),
        instance = escape(&instance),
        user = escape(user.as_deref().unwrap_or("(not logged in)")),
        count = count,
    );
    warp::reply::html(html).into_response()
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

async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed".to_owned())
    } else if let Some(error) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (StatusCode::BAD_REQUEST, format!("bad request body: {error}"))
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "bad query string".to_owned())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "payload too large".to_owned())
    } else if rejection.find::<warp::reject::UnsupportedMediaType>().is_some() {
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported media type".to_owned())
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (StatusCode::LENGTH_REQUIRED, "length required".to_owned())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
    };
    Ok(warp::reply::with_status(message, status).into_response())
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
