//! Prompt lookup: propose what followed the latest earlier occurrence of the sequence's last
//! tokens. Code and edits repeat themselves, and this costs no model at all.

use super::proposer::{Draft, ProposeInput, Proposer, TargetView};
use crate::error::{Error, Result};
use crate::kv::KvPool;

/// The n-gram (prompt lookup) proposer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramProposer {
    max_n: usize,
    min_n: usize,
}

impl Default for NgramProposer {
    fn default() -> Self {
        Self { max_n: 3, min_n: 1 }
    }
}

impl NgramProposer {
    /// Matches suffixes of `max_n` tokens down to `min_n` tokens (longest first).
    pub fn new(max_n: usize, min_n: usize) -> Result<Self> {
        if min_n == 0 || min_n > max_n || max_n > 32 {
            return Err(Error::InvalidRequest(format!(
                "n-gram sizes must satisfy 1 <= min ({min_n}) <= max ({max_n}) <= 32"
            )));
        }
        Ok(Self { max_n, min_n })
    }

    /// The proposal for one token history.
    pub fn lookup(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        self.lookup_match(tokens, max)
            .map(|m| m.tokens)
            .unwrap_or_default()
    }

    /// The proposal for one token history with the length of the suffix it continues; `None`
    /// when no suffix of `min_n..=max_n` tokens occurred earlier (or `max` is 0).
    pub fn lookup_match(&self, tokens: &[u32], max: usize) -> Option<NgramMatch> {
        let len = tokens.len();
        if max == 0 {
            return None;
        }
        for n in (self.min_n..=self.max_n.min(len.saturating_sub(1))).rev() {
            let pattern = &tokens[len - n..];
            // Latest start strictly before the suffix itself, so that a token follows it.
            if let Some(start) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == pattern) {
                let from = start + n;
                return Some(NgramMatch {
                    len: n,
                    tokens: tokens[from..(from + max).min(len)].to_vec(),
                });
            }
        }
        None
    }
}

/// A prompt-lookup proposal: what followed the latest earlier occurrence of the history's last
/// `len` tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgramMatch {
    /// Tokens of the matched suffix (the longest that occurred earlier, up to `max_n`).
    pub len: usize,
    /// The proposed continuation (never empty: a token always follows the occurrence).
    pub tokens: Vec<u32>,
}

impl Proposer for NgramProposer {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(
        &self,
        _target: TargetView<'_>,
        _kv: &mut KvPool,
        batch: &mut [ProposeInput<'_>],
    ) -> Result<Vec<Draft>> {
        Ok(batch
            .iter()
            .map(|s| Draft {
                tokens: self.lookup(s.tokens, s.max),
                probs: None,
                lookup: true,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_latest_match_wins() {
        let p = NgramProposer::new(3, 1).unwrap();
        // "1 2 3" occurs at 0 and 5; the latest earlier occurrence (5) is followed by 9 9.
        let t = [1, 2, 3, 4, 5, 1, 2, 3, 9, 9, 7, 1, 2, 3];
        assert_eq!(p.lookup(&t, 2), vec![9, 9]);
        assert_eq!(p.lookup(&t, 10), vec![9, 9, 7, 1, 2, 3]);
        // Only a 1-gram matches: the last 8 is followed by 6.
        assert_eq!(p.lookup(&[8, 6, 5, 8], 3), vec![6, 5, 8]);
        assert_eq!(p.lookup(&[1, 2, 3], 3), Vec::<u32>::new());
        assert_eq!(p.lookup(&[7], 3), Vec::<u32>::new());
        assert_eq!(p.lookup(&t, 0), Vec::<u32>::new());
    }

    #[test]
    fn a_match_says_how_long_a_suffix_it_continues() {
        let p = NgramProposer::new(8, 1).unwrap();
        // The last five tokens 4 5 6 7 8 occurred at 1; a 1-gram match would be later (8 at 9).
        let t = [3, 4, 5, 6, 7, 8, 1, 2, 8, 9, 4, 5, 6, 7, 8];
        let m = p.lookup_match(&t, 3).unwrap();
        assert_eq!((m.len, m.tokens), (5, vec![1, 2, 8]));
        assert_eq!(p.lookup(&t, 3), vec![1, 2, 8]);
        assert_eq!(p.lookup_match(&[1, 2, 3], 3), None);
        assert_eq!(p.lookup_match(&t, 0), None);
        // A proposer that needs at least six matching tokens finds none here.
        assert_eq!(NgramProposer::new(8, 6).unwrap().lookup_match(&t, 3), None);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(NgramProposer::new(0, 0).is_err());
        assert!(NgramProposer::new(2, 3).is_err());
    }
}
