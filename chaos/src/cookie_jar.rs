//! A browser-like cookie jar that follows one user across instances.

use std::collections::BTreeMap;
use std::sync::Mutex;

use reqwest::Url;
use reqwest::cookie::CookieStore;
use reqwest::header::HeaderValue;

/// The cookies of one virtual user, sent to **every** target.
///
/// reqwest's default jar keys cookies by host, so a cookie set by
/// `http://localhost:8081` would not be sent to `http://127.0.0.1:8082`.
/// Behind a real load balancer the browser sees one host, so this jar
/// ignores host, port and path: a user's `SESSIONID` follows it to whichever
/// instance serves the next request. Expired cookies (`Max-Age=0`, an
/// `Expires` in the past) and empty values delete the cookie.
#[derive(Debug, Default)]
pub struct SessionJar {
    // A std mutex: held only to copy a few short strings, never across await.
    cookies: Mutex<BTreeMap<String, String>>,
}

impl SessionJar {
    /// An empty jar.
    pub fn new() -> SessionJar {
        SessionJar::default()
    }

    /// The current value of cookie `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.cookies.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CookieStore for SessionJar {
    fn set_cookies(&self, headers: &mut dyn Iterator<Item = &HeaderValue>, _url: &Url) {
        let mut cookies = self.lock();
        for header in headers {
            let Ok(text) = header.to_str() else { continue };
            let Ok(cookie) = cookie::Cookie::parse(text) else {
                continue;
            };
            let expired = cookie.max_age().is_some_and(|age| age <= cookie::time::Duration::ZERO)
                || cookie
                    .expires_datetime()
                    .is_some_and(|at| at <= cookie::time::OffsetDateTime::now_utc());
            if expired || cookie.value().is_empty() {
                cookies.remove(cookie.name());
            } else {
                cookies.insert(cookie.name().to_owned(), cookie.value().to_owned());
            }
        }
    }

    fn cookies(&self, _url: &Url) -> Option<HeaderValue> {
        let cookies = self.lock();
        if cookies.is_empty() {
            return None;
        }
        let header = cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::from_str(&header).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(jar: &SessionJar, header: &str, url: &str) {
        let value = HeaderValue::from_str(header).unwrap();
        jar.set_cookies(&mut std::iter::once(&value), &url.parse().unwrap());
    }

    #[test]
    fn cookie_follows_the_user_to_any_host() {
        let jar = SessionJar::new();
        set(&jar, "SESSIONID=abc; Path=/; HttpOnly", "http://127.0.0.1:1/x");
        let other: Url = "http://localhost:2/".parse().unwrap();
        assert_eq!(jar.cookies(&other).unwrap(), "SESSIONID=abc");
        assert_eq!(jar.get("SESSIONID").as_deref(), Some("abc"));
    }

    #[test]
    fn re_set_replaces_and_max_age_zero_deletes() {
        let jar = SessionJar::new();
        let url = "http://127.0.0.1:1/";
        set(&jar, "SESSIONID=abc", url);
        set(&jar, "SESSIONID=def; Path=/", url);
        assert_eq!(jar.get("SESSIONID").as_deref(), Some("def"));
        set(&jar, "SESSIONID=def; Max-Age=0", url);
        assert_eq!(jar.get("SESSIONID"), None);
        assert!(jar.cookies(&url.parse().unwrap()).is_none());
    }
}
