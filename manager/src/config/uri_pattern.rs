//! Regular expressions matched against request paths
//! (`requestUriIgnorePattern`, `lockingMode=uriPattern:…`).

use regex::Regex;

use crate::error::ConfigError;

/// A regex that must match the **whole request path**.
///
/// What the pattern sees: the path exactly as the client sent it
/// (percent-encoded, starting with `/`), **without** the query string and
/// without the method or host. The match is anchored at both ends, like
/// Java's `String.matches`: `.*\.(png|css|js)` matches `/img/a.png` and
/// `/img/a.png?v=3` (the query is not part of the path), `/static/.*`
/// matches everything below `/static/`, and `/static` alone matches only
/// that exact path.
#[derive(Clone, Debug)]
pub struct UriPattern {
    source: String,
    anchored: Regex,
}

impl UriPattern {
    /// Compiles `pattern`; an invalid regex is an error naming `setting`.
    pub(crate) fn parse(setting: &'static str, pattern: &str) -> Result<Self, ConfigError> {
        let anchored = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            let reason = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
            ConfigError::new(setting, format!("{pattern:?} is not a valid regex: {reason}"))
        })?;
        Ok(Self {
            source: pattern.to_owned(),
            anchored,
        })
    }

    /// Whether the pattern matches the whole `path`.
    pub fn matches(&self, path: &str) -> bool {
        self.anchored.is_match(path)
    }

    /// The pattern as configured (not anchored).
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The anchored regex actually used.
    pub(crate) fn regex(&self) -> &Regex {
        &self.anchored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_path_only() {
        let p = UriPattern::parse("requestUriIgnorePattern", r".*\.(png|css)").unwrap();
        assert!(p.matches("/img/logo.png"));
        assert!(!p.matches("/img/logo.png.html"));
        let p = UriPattern::parse("requestUriIgnorePattern", "/static/.*").unwrap();
        assert!(p.matches("/static/app.js"));
        assert!(!p.matches("/api/static/app.js"));
        let p = UriPattern::parse("requestUriIgnorePattern", "/health|/metrics").unwrap();
        assert!(p.matches("/health") && p.matches("/metrics"));
        assert!(!p.matches("/healthz"));
    }

    #[test]
    fn invalid_regex_names_setting() {
        let err = UriPattern::parse("requestUriIgnorePattern", "([").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"requestUriIgnorePattern: "([" is not a valid regex"#)
        );
    }
}
