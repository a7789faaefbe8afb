//! The load client's virtual user: one keep-alive HTTP/1.1 connection
//! (hyper's low-level `client::conn`, no pool, no proxy, no TLS) and its
//! own cookie jar, so every contender is driven by exactly the same code.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_LENGTH, COOKIE, HOST, HeaderValue, SET_COOKIE};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Safety net for a single request (the failover runs want to see long
/// requests, so it is far above any timeout of the contenders).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one request failed.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The server answered with a status other than 2xx.
    Status(u16),
    /// Connecting, sending or receiving failed (the connection is dropped
    /// and redialed by the next request).
    Transport(String),
    /// No answer within 30 s.
    Timeout,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Status(status) => write!(f, "status {status}"),
            RequestError::Transport(message) => write!(f, "transport: {message}"),
            RequestError::Timeout => f.write_str("no answer within 30 s"),
        }
    }
}

/// A user with a cookie jar and one connection to the app.
pub(crate) struct HttpUser {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Empty<Bytes>>>,
    /// `name=value` pairs, in the order first seen.
    cookies: Vec<(String, String)>,
    /// The `Cookie` header built from `cookies`, rebuilt when they change.
    cookie_header: Option<HeaderValue>,
}

impl HttpUser {
    /// A user of the app at `addr` (connects on the first request).
    pub(crate) fn new(addr: SocketAddr) -> Self {
        HttpUser {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).expect("socket address is a valid header"),
            sender: None,
            cookies: Vec::new(),
            cookie_header: None,
        }
    }

    /// Forgets every cookie (the next request starts without a session).
    pub(crate) fn clear_cookies(&mut self) {
        self.cookies.clear();
        self.cookie_header = None;
    }

    /// Sends `method path` with the user's cookies, reads the whole body and
    /// keeps any `Set-Cookie`. Ok for a 2xx status.
    pub(crate) async fn request(&mut self, method: &Method, path: &'static str) -> Result<(), RequestError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path)).await {
            Ok(result) => result,
            Err(_) => {
                self.sender = None;
                Err(RequestError::Timeout)
            }
        }
    }

    async fn exchange(&mut self, method: &Method, path: &'static str) -> Result<(), RequestError> {
        let sender = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.sender.insert(connect(self.addr).await?),
        };
        let mut request = Request::builder().method(method.clone()).uri(path);
        let headers = request.headers_mut().expect("builder is valid");
        headers.insert(HOST, self.host.clone());
        if method == Method::POST {
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        if let Some(cookie) = &self.cookie_header {
            headers.insert(COOKIE, cookie.clone());
        }
        let request = request.body(Empty::new()).expect("request is valid");
        let outcome = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            body.collect().await?;
            Ok::<_, hyper::Error>(parts)
        }
        .await;
        let parts = match outcome {
            Ok(parts) => parts,
            Err(error) => {
                self.sender = None;
                return Err(RequestError::Transport(error.to_string()));
            }
        };
        let mut changed = false;
        for set_cookie in parts.headers.get_all(SET_COOKIE) {
            changed |= self.keep_cookie(set_cookie);
        }
        if changed {
            self.rebuild_cookie_header();
        }
        if parts.status.is_success() {
            Ok(())
        } else {
            Err(RequestError::Status(parts.status.as_u16()))
        }
    }

    /// Stores one `Set-Cookie` (an empty value or `Max-Age=0` removes it).
    fn keep_cookie(&mut self, set_cookie: &HeaderValue) -> bool {
        let Ok(text) = set_cookie.to_str() else {
            return false;
        };
        let mut attributes = text.split(';');
        let Some((name, value)) = attributes.next().and_then(|pair| pair.trim().split_once('=')) else {
            return false;
        };
        let removed = value.is_empty() || attributes.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
        let existing = self.cookies.iter().position(|(n, _)| n == name);
        match (existing, removed) {
            (Some(index), true) => {
                self.cookies.remove(index);
            }
            (Some(index), false) => value.clone_into(&mut self.cookies[index].1),
            (None, false) => self.cookies.push((name.to_owned(), value.to_owned())),
            (None, true) => return false,
        }
        true
    }

    fn rebuild_cookie_header(&mut self) {
        if self.cookies.is_empty() {
            self.cookie_header = None;
            return;
        }
        let joined = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        self.cookie_header = HeaderValue::from_str(&joined).ok();
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, RequestError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| RequestError::Transport(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| RequestError::Transport(e.to_string()))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes.
        let _ = connection.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> HttpUser {
        HttpUser::new(SocketAddr::from(([127, 0, 0, 1], 1)))
    }

    fn keep(user: &mut HttpUser, header: &'static str) {
        if user.keep_cookie(&HeaderValue::from_static(header)) {
            user.rebuild_cookie_header();
        }
    }

    #[test]
    fn cookies_are_kept_replaced_and_removed() {
        let mut user = user();
        keep(&mut user, "SESSIONID=abc; Path=/; HttpOnly");
        keep(&mut user, "other=1");
        assert_eq!(user.cookie_header.as_ref().unwrap(), "SESSIONID=abc; other=1");
        keep(&mut user, "SESSIONID=def; Path=/");
        assert_eq!(user.cookie_header.as_ref().unwrap(), "SESSIONID=def; other=1");
        keep(&mut user, "other=; Max-Age=0");
        assert_eq!(user.cookie_header.as_ref().unwrap(), "SESSIONID=def");
        keep(&mut user, "SESSIONID=x; Max-Age=0");
        assert!(user.cookie_header.is_none());
    }
}
