//! [`SessionClient`]: an HTTP client that keeps exactly one session cookie
//! (like a browser with one site) and reports every `Set-Cookie` of it, so
//! tests can assert when the cookie is (re-)sent.

use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

/// The session cookie name used by the manager's default configuration and
/// by `demo-app`.
pub const COOKIE_NAME: &str = "SESSIONID";

/// One `Set-Cookie` of the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    /// The cookie value (the session id; empty for a removal).
    pub value: String,
    /// The cookie expires the session cookie (`Max-Age=0` or an empty value).
    pub removal: bool,
    /// The whole header value.
    pub raw: String,
}

impl SetCookie {
    /// Parses a `Set-Cookie` header value if it sets cookie `name`.
    pub fn parse(header: &str, name: &str) -> Option<SetCookie> {
        let mut parts = header.split(';');
        let (key, value) = parts.next()?.split_once('=')?;
        if key.trim() != name {
            return None;
        }
        let value = value.trim().trim_matches('"').to_owned();
        let max_age_zero = parts.any(|attr| {
            attr.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age") && v.trim().parse::<i64>().is_ok_and(|s| s <= 0)
            })
        });
        Some(SetCookie {
            removal: max_age_zero || value.is_empty(),
            value,
            raw: header.to_owned(),
        })
    }
}

/// A response, read completely.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body as text.
    pub body: String,
    /// Time from sending the request to having read the whole body.
    pub elapsed: Duration,
    /// Every `Set-Cookie` of the session cookie, in order.
    pub session_cookies: Vec<SetCookie>,
}

impl Reply {
    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("response (status {}) is not JSON ({err}): {:?}", self.status, self.body))
    }

    /// The session id in the JSON body (`id` for the in-process test app,
    /// `session_id` for demo-app); `None` when it is `null`.
    pub fn id(&self) -> Option<String> {
        let json = self.json();
        let id = json.get("id").or_else(|| json.get("session_id"));
        id.and_then(|v| v.as_str()).map(str::to_owned)
    }

    /// The `count` field of the JSON body.
    ///
    /// # Panics
    ///
    /// If the body has no numeric `count`.
    pub fn count(&self) -> u64 {
        self.json()["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric count in {:?}", self.body))
    }

    /// The single session `Set-Cookie` of this reply, if any.
    ///
    /// # Panics
    ///
    /// If the reply set the session cookie more than once.
    pub fn set_cookie(&self) -> Option<&SetCookie> {
        assert!(
            self.session_cookies.len() <= 1,
            "the session cookie was set {} times in one response: {:?}",
            self.session_cookies.len(),
            self.session_cookies
        );
        self.session_cookies.first()
    }

    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a 200 and returns `self` (for chaining).
    ///
    /// # Panics
    ///
    /// If the status is not 200.
    #[track_caller]
    pub fn ok(self) -> Reply {
        assert_eq!(self.status, 200, "unexpected status; body: {:?}", self.body);
        self
    }
}

/// An HTTP client with a one-cookie jar for the session cookie.
///
/// The base URL can be switched ([`set_base`](Self::set_base)) while the
/// cookie is kept, which plays a load balancer moving the user to another
/// instance. The cookie is updated from every response: set on a
/// `Set-Cookie` with a value, cleared on a removal.
#[derive(Debug, Clone)]
pub struct SessionClient {
    http: reqwest::Client,
    base: String,
    cookie_name: String,
    cookie: Option<String>,
}

impl SessionClient {
    /// A client for `base` (e.g. `http://127.0.0.1:1234`) without a cookie.
    pub fn new(base: impl Into<String>) -> SessionClient {
        SessionClient {
            http: crate::http_client_without_cookies(),
            base: base.into(),
            cookie_name: COOKIE_NAME.to_owned(),
            cookie: None,
        }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends later requests to another base URL (keeping the cookie).
    pub fn set_base(&mut self, base: impl Into<String>) {
        self.base = base.into();
    }

    /// The session cookie value the client holds.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Replaces the held cookie (e.g. to replay an old one).
    pub fn set_cookie(&mut self, cookie: Option<String>) {
        self.cookie = cookie;
    }

    /// `GET base+path` with the cookie; updates the cookie from the reply.
    pub async fn get(&mut self, path: &str) -> Reply {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `POST base+path` (empty body) with the cookie.
    pub async fn post(&mut self, path: &str) -> Reply {
        let request = self.http.post(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// `POST base+path` with a JSON body and the cookie.
    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value) -> Reply {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request).await
    }

    /// Sends `request` with the held cookie, reads the reply and updates
    /// the cookie from it.
    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> Reply {
        let request = match &self.cookie {
            Some(cookie) => request.header(COOKIE, format!("{}={cookie}", self.cookie_name)),
            None => request,
        };
        let reply = execute(request, &self.cookie_name).await;
        for set in &reply.session_cookies {
            self.cookie = (!set.removal).then(|| set.value.clone());
        }
        reply
    }

    /// Sends `GET base+path` with exactly this `Cookie` header (the held
    /// cookie is neither sent nor updated).
    pub async fn get_with_cookie_header(&self, path: &str, cookie_header: HeaderValue) -> Reply {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, cookie_header);
        execute(request, &self.cookie_name).await
    }

    /// Like [`get_with_cookie_header`](Self::get_with_cookie_header) with `POST`.
    pub async fn post_with_cookie_header(&self, path: &str, cookie_header: HeaderValue) -> Reply {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, cookie_header);
        execute(request, &self.cookie_name).await
    }
}

async fn execute(request: reqwest::RequestBuilder, cookie_name: &str) -> Reply {
    let started = Instant::now();
    let response = request.send().await.expect("HTTP request failed");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("reading the HTTP body failed");
    let elapsed = started.elapsed();
    let session_cookies = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| SetCookie::parse(v, cookie_name))
        .collect();
    Reply {
        status,
        headers,
        body,
        elapsed,
        session_cookies,
    }
}
