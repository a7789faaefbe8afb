//! `lockingMode`: which requests lock their session in non-sticky mode.

use std::fmt;

use regex::Regex;

use crate::config::uri_pattern::UriPattern;
use crate::error::ConfigError;

/// Which requests take the session lock (non-sticky mode only; sticky mode
/// never locks because the primary copy lives in one process).
///
/// Text form: `none`, `all`, `auto`, or `uriPattern:<regex>` where the regex
/// is matched as described on [`UriPattern`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum LockingMode {
    /// Never lock (last writer wins between concurrent requests).
    #[default]
    None,
    /// Lock every request that uses the session.
    All,
    /// Lock until a request (method + path) is seen not to modify the
    /// session; a request seen modifying it is always locked.
    Auto,
    /// Lock requests whose path matches the pattern.
    UriPattern(UriPattern),
}

impl LockingMode {
    /// Parses the text form; errors name `lockingMode`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        const SETTING: &str = "lockingMode";
        let trimmed = text.trim();
        match trimmed {
            "none" | "" => Ok(Self::None),
            "all" => Ok(Self::All),
            "auto" => Ok(Self::Auto),
            _ => match trimmed.strip_prefix("uriPattern:") {
                Some(pattern) => Ok(Self::UriPattern(UriPattern::parse(SETTING, pattern)?)),
                None => Err(ConfigError::new(
                    SETTING,
                    format!("{text:?} is not none, all, auto or uriPattern:<regex>"),
                )),
            },
        }
    }

    /// The pattern of `uriPattern:` mode.
    pub fn pattern(&self) -> Option<&Regex> {
        match self {
            Self::UriPattern(p) => Some(p.regex()),
            _ => None,
        }
    }
}

impl fmt::Debug for LockingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::All => f.write_str("all"),
            Self::Auto => f.write_str("auto"),
            Self::UriPattern(p) => write!(f, "uriPattern:{}", p.as_str()),
        }
    }
}

/// What a non-sticky request does when it cannot get its session's lock
/// within `operationTimeout` (text: `fail` or `proceed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockFailure {
    /// Answer `503 Service Unavailable` with `Retry-After: 1` and do not run
    /// the handler's changes: no update can be lost. The default.
    #[default]
    Fail,
    /// Serve the request without the lock, with a warning (MSM's
    /// behaviour): the request succeeds, but a concurrent request may
    /// overwrite its changes or it may overwrite theirs.
    Proceed,
}

impl LockFailure {
    /// Parses `fail` or `proceed`; errors name `lockFailure`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "fail" => Ok(Self::Fail),
            "proceed" => Ok(Self::Proceed),
            _ => Err(ConfigError::new(
                "lockFailure",
                format!("{text:?} is not fail or proceed"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_mode() {
        assert!(matches!(LockingMode::parse("none").unwrap(), LockingMode::None));
        assert!(matches!(LockingMode::parse("all").unwrap(), LockingMode::All));
        assert!(matches!(LockingMode::parse(" auto ").unwrap(), LockingMode::Auto));
        let mode = LockingMode::parse("uriPattern:/cart/.*").unwrap();
        assert!(mode.pattern().is_some());
        assert_eq!(format!("{mode:?}"), "uriPattern:/cart/.*");
    }

    #[test]
    fn rejects_unknown_modes_and_bad_regexes() {
        let err = LockingMode::parse("sometimes").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"lockingMode: "sometimes" is not none, all, auto or uriPattern:<regex>"#
        );
        assert_eq!(LockingMode::parse("uriPattern:(").unwrap_err().setting(), "lockingMode");
    }
}
