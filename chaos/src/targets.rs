//! Which target URL a virtual user sends its next request to.

use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tokio::time::Instant;

use crate::error::Error;

/// How long a round-robin user skips a target that refused a connection
/// (a load balancer's health check would take it out of rotation).
const REFUSED_COOLDOWN: Duration = Duration::from_secs(1);

/// How users spread over several targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetMode {
    /// User `i` sticks to target `i % n` and moves to the next target when
    /// its target refuses connections (a load balancer failing over).
    Sticky,
    /// Every request goes to the next target; a target that refused a
    /// connection is skipped for a second.
    RoundRobin,
}

/// Parses target URLs (each may be a comma-separated list) into base URLs
/// without trailing slash.
///
/// # Errors
///
/// [`Error::InvalidTarget`] for anything that is not an `http(s)://` URL,
/// and when the list is empty.
pub fn parse_targets<S: AsRef<str>>(raw: &[S]) -> Result<Vec<String>, Error> {
    let mut targets = Vec::new();
    for item in raw.iter().flat_map(|s| s.as_ref().split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let invalid = |reason: String| Error::InvalidTarget {
            target: item.to_owned(),
            reason,
        };
        let url = reqwest::Url::parse(item).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid("expected http://host:port".to_owned()));
        }
        targets.push(url.as_str().trim_end_matches('/').to_owned());
    }
    if targets.is_empty() {
        return Err(Error::InvalidTarget {
            target: String::new(),
            reason: "no target given".to_owned(),
        });
    }
    Ok(targets)
}

/// One user's choice of target.
#[derive(Debug, Clone)]
pub struct TargetPicker {
    targets: Arc<[String]>,
    mode: TargetMode,
    /// Sticky: the target in use. Round-robin: the one used last.
    current: usize,
    /// Round-robin: targets skipped until then.
    refused_until: Vec<Option<Instant>>,
}

impl TargetPicker {
    /// The picker of user number `user` (0-based).
    ///
    /// # Panics
    ///
    /// If `targets` is empty.
    pub fn new(targets: Arc<[String]>, mode: TargetMode, user: usize) -> TargetPicker {
        assert!(!targets.is_empty(), "a target picker needs targets");
        let n = targets.len();
        let current = match mode {
            TargetMode::Sticky => user % n,
            // The first `pick` advances to `user % n`.
            TargetMode::RoundRobin => (user + n - 1) % n,
        };
        TargetPicker {
            refused_until: vec![None; n],
            targets,
            mode,
            current,
        }
    }

    /// The index of the target for the next request, and its base URL.
    pub fn pick(&mut self) -> (usize, &str) {
        if self.mode == TargetMode::RoundRobin {
            let n = self.targets.len();
            let now = Instant::now();
            let start = self.current;
            self.current = (1..=n)
                .map(|step| (start + step) % n)
                .find(|&i| self.refused_until[i].is_none_or(|until| until <= now))
                .unwrap_or((start + 1) % n);
        }
        (self.current, &self.targets[self.current])
    }

    /// Moves a sticky user to the next target (a round-robin user moves
    /// on every request anyway).
    pub fn advance(&mut self) {
        if self.mode == TargetMode::Sticky {
            self.current = (self.current + 1) % self.targets.len();
        }
    }

    /// Target `index` refused a connection: a sticky user moves on to the
    /// next target, a round-robin user skips it for a while.
    pub fn refused(&mut self, index: usize) {
        match self.mode {
            TargetMode::Sticky => {
                if index == self.current {
                    self.current = (self.current + 1) % self.targets.len();
                }
            }
            TargetMode::RoundRobin => {
                self.refused_until[index] = Some(Instant::now() + REFUSED_COOLDOWN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Arc<[String]> {
        (0..n).map(|i| format!("http://t{i}")).collect()
    }

    #[test]
    fn parses_lists_and_trims_slashes() {
        let parsed = parse_targets(&["http://127.0.0.1:1/,http://127.0.0.1:2", "http://h:3"]).unwrap();
        assert_eq!(parsed, vec!["http://127.0.0.1:1", "http://127.0.0.1:2", "http://h:3"]);
        assert!(parse_targets(&["127.0.0.1:1"]).is_err());
        assert!(parse_targets::<&str>(&[]).is_err());
    }

    #[test]
    fn sticky_stays_until_refused() {
        let mut picker = TargetPicker::new(targets(3), TargetMode::Sticky, 4);
        assert_eq!(picker.pick().0, 1);
        assert_eq!(picker.pick().0, 1);
        picker.refused(1);
        assert_eq!(picker.pick().0, 2);
        // A stale refusal of a target no longer in use changes nothing.
        picker.refused(1);
        assert_eq!(picker.pick().0, 2);
        picker.advance();
        assert_eq!(picker.pick().0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_rotates_and_skips_refused_targets() {
        let mut picker = TargetPicker::new(targets(3), TargetMode::RoundRobin, 1);
        let order: Vec<usize> = (0..4).map(|_| picker.pick().0).collect();
        assert_eq!(order, vec![1, 2, 0, 1]);
        picker.refused(2);
        let order: Vec<usize> = (0..3).map(|_| picker.pick().0).collect();
        assert_eq!(order, vec![0, 1, 0]);
        tokio::time::advance(REFUSED_COOLDOWN).await;
        assert_eq!(picker.pick().0, 1);
        assert_eq!(picker.pick().0, 2);
    }
}
