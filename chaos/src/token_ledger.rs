//! Identifiable writes: what one virtual user knows about every token it
//! sent, and the check of a session's token list against it.
//!
//! Every write of a user carries a unique token `u<user>-<seq>` (sequence
//! numbers grow by one per write, whatever its outcome). The demo app
//! appends the token of every write it applies to the session's token list
//! and keeps the last [`TOKEN_WINDOW`] of them; every reply shows the list.
//! Pure logic, no I/O: the user records each outcome and feeds every list
//! it sees to [`TokenLedger::observe`].
//!
//! # The rules
//!
//! * An **acknowledged** token (2xx) must be in the list as long as fewer
//!   than [`TOKEN_WINDOW`] tokens can have been appended after it; missing,
//!   it is a **lost update**.
//! * A token whose request was answered `503` or `409` — statuses that
//!   promise "nothing saved" — must never appear: present, it is a
//!   **phantom write**.
//! * A token that never reached a server (connection refused), or one this
//!   user never sent, must never appear either: present, it is an **extra
//!   update** (the same as a count rising by more than was sent).
//! * Tokens of requests that failed in flight (timeout, broken connection,
//!   hang-up, other error statuses) may or may not be present, and may
//!   appear later.
//!
//! "Can have been appended after it" counts every later token that is not
//! known to be absent, plus earlier tokens that failed in flight (those may
//! land late). Each lost, phantom or extra token is reported once.

use std::collections::HashSet;

/// How many of a session's most recent tokens the demo app keeps.
pub const TOKEN_WINDOW: usize = 512;

/// What happened to the request that carried a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    /// Answered 2xx: the write is acknowledged and must be stored.
    Acknowledged,
    /// Answered `503`/`409`: nothing may have been saved.
    Refused,
    /// Never reached a server (connection refused).
    NotSent,
    /// Finished with another error status: applied or not.
    Settled,
    /// Timed out, broke or was hung up: applied or not, maybe later.
    InFlight,
}

impl TokenOutcome {
    /// May this token be in the session's list?
    fn may_be_present(self) -> bool {
        matches!(
            self,
            TokenOutcome::Acknowledged | TokenOutcome::Settled | TokenOutcome::InFlight
        )
    }
}

/// The verdict on one observed token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenCheck {
    /// Acknowledged tokens missing from the list.
    pub lost: u64,
    /// Tokens present whose request was answered `503`/`409`.
    pub phantom: u64,
    /// Tokens present that were never sent to a server, or not by this user.
    pub foreign: u64,
}

impl TokenCheck {
    /// `true` if nothing was lost, phantom or foreign.
    pub fn is_consistent(&self) -> bool {
        *self == TokenCheck::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    outcome: TokenOutcome,
    /// Already counted as lost, phantom or foreign.
    reported: bool,
}

/// The tokens one user sent for its current session.
#[derive(Debug, Clone)]
pub struct TokenLedger {
    prefix: String,
    /// Sequence number of the next token (never reused, across sessions).
    next_seq: u64,
    /// Sequence number of `entries[0]`: tokens of earlier sessions are gone.
    base_seq: u64,
    entries: Vec<Entry>,
    /// Tokens not of this ledger's current session seen already.
    foreign_seen: HashSet<String>,
}

impl TokenLedger {
    /// The ledger of user number `user`: tokens `u<user>-<seq>`.
    pub fn new(user: usize) -> TokenLedger {
        TokenLedger {
            prefix: format!("u{user}-"),
            next_seq: 0,
            base_seq: 0,
            entries: Vec::new(),
            foreign_seen: HashSet::new(),
        }
    }

    /// The token for the next write; record its outcome with
    /// [`record`](Self::record) before asking for another.
    pub fn next_token(&self) -> String {
        format!("{}{}", self.prefix, self.next_seq)
    }

    /// Records the outcome of the write that carried [`next_token`](Self::next_token).
    pub fn record(&mut self, outcome: TokenOutcome) {
        self.entries.push(Entry {
            outcome,
            reported: false,
        });
        self.next_seq += 1;
    }

    /// The session was replaced (lost, or new): its tokens no longer count.
    pub fn new_session(&mut self) {
        self.base_seq = self.next_seq;
        self.entries.clear();
        self.foreign_seen.clear();
    }

    /// Tokens sent for the current session.
    pub fn sent(&self) -> usize {
        self.entries.len()
    }

    /// Checks a token list read from the session (oldest first, at most
    /// [`TOKEN_WINDOW`] long).
    pub fn observe(&mut self, list: &[String]) -> TokenCheck {
        let mut check = TokenCheck::default();
        let mut present: HashSet<usize> = HashSet::with_capacity(list.len());
        for token in list {
            match self.index_of(token) {
                Some(index) => {
                    present.insert(index);
                    let entry = &mut self.entries[index];
                    if entry.reported || entry.outcome.may_be_present() {
                        continue;
                    }
                    entry.reported = true;
                    match entry.outcome {
                        TokenOutcome::Refused => check.phantom += 1,
                        _ => check.foreign += 1,
                    }
                }
                None => {
                    if self.foreign_seen.insert(token.clone()) {
                        check.foreign += 1;
                    }
                }
            }
        }
        // Tokens that failed in flight before position i may land after it.
        let mut in_flight_before = self
            .entries
            .iter()
            .filter(|e| e.outcome == TokenOutcome::InFlight)
            .count();
        let mut applied_after = 0usize;
        for index in (0..self.entries.len()).rev() {
            let entry = self.entries[index];
            if entry.outcome == TokenOutcome::InFlight {
                in_flight_before -= 1;
            }
            if applied_after >= TOKEN_WINDOW {
                break;
            }
            let is_present = present.contains(&index);
            if entry.outcome == TokenOutcome::Acknowledged
                && !is_present
                && !entry.reported
                && applied_after + in_flight_before < TOKEN_WINDOW
            {
                self.entries[index].reported = true;
                check.lost += 1;
            }
            if is_present || entry.outcome.may_be_present() {
                applied_after += 1;
            }
        }
        check
    }

    /// The index in `entries` of one of this session's tokens.
    fn index_of(&self, token: &str) -> Option<usize> {
        let seq: u64 = token.strip_prefix(&self.prefix)?.parse().ok()?;
        // `parse` accepts a leading '+': insist on the canonical form.
        if seq.to_string().len() + self.prefix.len() != token.len() {
            return None;
        }
        let index = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        (index < self.entries.len()).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ledger: &mut TokenLedger, outcome: TokenOutcome) -> String {
        let token = ledger.next_token();
        ledger.record(outcome);
        token
    }

    #[test]
    fn tokens_are_unique_and_well_formed() {
        let mut ledger = TokenLedger::new(7);
        let a = sent(&mut ledger, TokenOutcome::Acknowledged);
        let b = sent(&mut ledger, TokenOutcome::Acknowledged);
        assert_eq!((a.as_str(), b.as_str()), ("u7-0", "u7-1"));
        ledger.new_session();
        assert_eq!(ledger.next_token(), "u7-2", "never reused across sessions");
    }

    #[test]
    fn acknowledged_tokens_present_is_consistent() {
        let mut ledger = TokenLedger::new(0);
        let list: Vec<_> = (0..5).map(|_| sent(&mut ledger, TokenOutcome::Acknowledged)).collect();
        assert!(ledger.observe(&list).is_consistent());
    }

    #[test]
    fn a_missing_acknowledged_token_is_lost_once() {
        let mut ledger = TokenLedger::new(0);
        let a = sent(&mut ledger, TokenOutcome::Acknowledged);
        let _b = sent(&mut ledger, TokenOutcome::Acknowledged);
        let c = sent(&mut ledger, TokenOutcome::Acknowledged);
        let list = vec![a, c];
        assert_eq!(ledger.observe(&list).lost, 1);
        assert_eq!(ledger.observe(&list).lost, 0, "reported once");
    }

    #[test]
    fn a_refused_token_present_is_a_phantom_write() {
        let mut ledger = TokenLedger::new(0);
        let a = sent(&mut ledger, TokenOutcome::Acknowledged);
        let refused = sent(&mut ledger, TokenOutcome::Refused);
        assert!(ledger.observe(std::slice::from_ref(&a)).is_consistent());
        let check = ledger.observe(&[a.clone(), refused.clone()]);
        assert_eq!(check.phantom, 1);
        assert_eq!(ledger.observe(&[a, refused]).phantom, 0, "reported once");
    }

    #[test]
    fn unsent_and_strangers_tokens_are_foreign() {
        let mut ledger = TokenLedger::new(1);
        let a = sent(&mut ledger, TokenOutcome::Acknowledged);
        let unsent = sent(&mut ledger, TokenOutcome::NotSent);
        let check = ledger.observe(&[
            a.clone(),
            unsent,
            "u2-0".to_owned(),
            "u1-99".to_owned(),
            "u1-+0".to_owned(),
        ]);
        assert_eq!(check.foreign, 4, "{check:?}");
        assert_eq!(check.lost, 0);
        assert_eq!(ledger.observe(&[a, "u2-0".to_owned()]).foreign, 0, "reported once");
    }

    #[test]
    fn ambiguous_tokens_may_or_may_not_be_present() {
        for outcome in [TokenOutcome::Settled, TokenOutcome::InFlight] {
            let mut ledger = TokenLedger::new(0);
            let a = sent(&mut ledger, TokenOutcome::Acknowledged);
            let maybe = sent(&mut ledger, outcome);
            assert!(ledger.observe(std::slice::from_ref(&a)).is_consistent());
            assert!(ledger.observe(&[a, maybe]).is_consistent());
        }
    }

    #[test]
    fn tokens_pushed_out_of_the_window_are_not_lost() {
        let mut ledger = TokenLedger::new(0);
        let all: Vec<_> = (0..TOKEN_WINDOW + 10)
            .map(|_| sent(&mut ledger, TokenOutcome::Acknowledged))
            .collect();
        let window = &all[all.len() - TOKEN_WINDOW..];
        assert!(ledger.observe(window).is_consistent());
        // One token inside the window missing is lost.
        let mut holed = window.to_vec();
        holed.remove(100);
        assert_eq!(ledger.observe(&holed).lost, 1);
    }

    #[test]
    fn a_late_token_can_push_an_acknowledged_one_out() {
        let mut ledger = TokenLedger::new(0);
        let late = sent(&mut ledger, TokenOutcome::InFlight);
        let all: Vec<_> = (0..TOKEN_WINDOW)
            .map(|_| sent(&mut ledger, TokenOutcome::Acknowledged))
            .collect();
        // The late token landed last and pushed the first acknowledged one out.
        let mut list = all[1..].to_vec();
        list.push(late);
        assert!(ledger.observe(&list).is_consistent());
    }

    #[test]
    fn refused_tokens_do_not_push_others_out() {
        let mut ledger = TokenLedger::new(0);
        let a = sent(&mut ledger, TokenOutcome::Acknowledged);
        for _ in 0..TOKEN_WINDOW {
            sent(&mut ledger, TokenOutcome::Refused);
        }
        // Nothing can have been appended after `a`: missing means lost.
        assert_eq!(ledger.observe(&[]).lost, 1);
        let _ = a;
    }

    #[test]
    fn a_new_session_forgets_the_old_tokens() {
        let mut ledger = TokenLedger::new(0);
        sent(&mut ledger, TokenOutcome::Acknowledged);
        ledger.new_session();
        assert_eq!(ledger.sent(), 0);
        let b = sent(&mut ledger, TokenOutcome::Acknowledged);
        assert!(ledger.observe(&[b]).is_consistent());
    }
}
