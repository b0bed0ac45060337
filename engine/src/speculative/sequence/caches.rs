//! A sequence's caches, the target's and its proposer's: prefill (whole or in chunks), the
//! proposer's catch-up, the blocks a step needs and their reservation, and their release.

use std::time::Instant;

use super::Sequence;
use crate::error::Result;
use crate::generate::PREFILL_CHUNK;
use crate::kv::KvPool;
use crate::model::{Logits, Model, SeqInput};
use crate::speculative::proposer::Proposer;
#[cfg(doc)]
use crate::speculative::verify::verify;

impl Sequence {
    /// Runs the target (and the proposer, if it keeps state) over the sequence's tokens but
    /// the last, which the next step feeds: the prompt of a new sequence, or prompt and output
    /// of one recomputed after preemption.
    pub fn prefill(
        &mut self,
        target: &Model,
        target_kv: &mut KvPool,
        proposer: Option<(&dyn Proposer, &mut KvPool)>,
    ) -> Result<()> {
        if let Some((p, kv)) = proposer {
            self.prefill_proposer(p, kv)?;
        }
        self.prefill_target(target, target_kv)
    }

    /// The proposer's part of [`Sequence::prefill`].
    pub fn prefill_proposer(&mut self, proposer: &dyn Proposer, kv: &mut KvPool) -> Result<()> {
        let t = Instant::now();
        proposer.prefill(kv, &mut self.proposer_state, &self.tokens)?;
        self.prefill_time += t.elapsed();
        Ok(())
    }

    /// The input feeding the target at most `limit` more of the tokens it has yet to cache,
    /// with no logits: a prompt chunk riding along in a verification forward ([`verify`]).
    /// `None` when nothing is pending.
    pub fn chunk_input(&mut self, limit: usize) -> Option<SeqInput<'_>> {
        let head = &self.tokens[..self.tokens.len() - 1];
        let from = self.table.len().min(head.len());
        let to = head.len().min(from.saturating_add(limit));
        (to > from).then(|| SeqInput {
            table: &mut self.table,
            tokens: &head[from..to],
            logits: Logits::None,
        })
    }

    /// Feeds the proposer at most `limit` of the committed tokens it has yet to read (a chunk
    /// of its catch-up, outside drafting); returns how many it fed.
    pub fn catch_up_proposer(
        &mut self,
        proposer: &dyn Proposer,
        kv: &mut KvPool,
        limit: usize,
    ) -> Result<usize> {
        let lag = self.drafter_lag(proposer);
        let n = lag.min(limit);
        if n == 0 {
            return Ok(0);
        }
        let cached = self.proposer_state.cached_len().unwrap_or(0);
        let t = Instant::now();
        // `prefill` reads all but the last of the tokens it is given.
        proposer.prefill(kv, &mut self.proposer_state, &self.tokens[..cached + n + 1])?;
        self.prefill_time += t.elapsed();
        Ok(n)
    }

    /// The target's part of [`Sequence::prefill`].
    pub fn prefill_target(&mut self, target: &Model, kv: &mut KvPool) -> Result<()> {
        self.prefill_target_chunk(target, kv, usize::MAX)
            .map(|_| ())
    }

    /// Feeds the target at most `limit` more of the tokens it has yet to cache (a chunk of a
    /// long prompt, prefilled over several steps); returns how many it fed. The cache ends up
    /// the same whatever the chunks: each position's keys and values depend only on the
    /// positions before it.
    pub fn prefill_target_chunk(
        &mut self,
        target: &Model,
        kv: &mut KvPool,
        limit: usize,
    ) -> Result<usize> {
        let t = Instant::now();
        let head = &self.tokens[..self.tokens.len() - 1];
        let from = self.table.len().min(head.len());
        let to = head.len().min(from.saturating_add(limit));
        for chunk in head[from..to].chunks(PREFILL_CHUNK) {
            target.forward(
                kv,
                &mut [SeqInput {
                    table: &mut self.table,
                    tokens: chunk,
                    logits: Logits::None,
                }],
            )?;
        }
        self.prefill_time += t.elapsed();
        Ok(to - from)
    }

    /// Committed tokens `proposer` has yet to read for this sequence before it can draft again.
    pub fn drafter_lag(&self, proposer: &dyn Proposer) -> usize {
        proposer.catch_up(&self.proposer_state, self.tokens.len())
    }

    /// Tokens the target has yet to cache before this sequence can step (its prompt when new,
    /// everything when preempted).
    pub fn pending_prefill(&self) -> usize {
        (self.tokens.len() - 1).saturating_sub(self.table.len())
    }

    /// Takes into the empty target table the blocks of `kv`'s prefix cache holding the longest
    /// cached prefix of the tokens before the last (which the next forward feeds, for the
    /// logits of the token after it); returns how many positions it took, whose prefill is
    /// then done.
    pub fn take_cached_prefix(&mut self, kv: &mut KvPool) -> usize {
        let head = &self.tokens[..self.tokens.len() - 1];
        kv.attach_prefix(&mut self.table, head)
    }

    /// Blocks of the target's pool that prefill plus a step drafting `k` tokens needs beyond
    /// what the sequence holds.
    pub fn target_blocks_needed(&self, k: usize) -> usize {
        // The step feeds [last, d_1..d_k] after the cached tokens[..len-1].
        KvPool::blocks_for(self.tokens.len() + k).saturating_sub(self.table.blocks().len())
    }

    /// Blocks of the target's pool that prefilling `chunk` more tokens (of those pending) needs
    /// beyond what the sequence holds.
    pub fn target_blocks_for_chunk(&self, chunk: usize) -> usize {
        let upto = self.table.len() + chunk.min(self.pending_prefill());
        KvPool::blocks_for(upto).saturating_sub(self.table.blocks().len())
    }

    /// Reserves the target blocks of [`Sequence::target_blocks_for_chunk`].
    pub fn reserve_target_chunk(&mut self, kv: &mut KvPool, chunk: usize) -> Result<()> {
        let n = chunk.min(self.pending_prefill());
        kv.reserve(&mut self.table, n)
    }

    /// Reserves the target blocks of [`Sequence::target_blocks_needed`].
    pub fn reserve_target(&mut self, kv: &mut KvPool, k: usize) -> Result<()> {
        let n = (self.tokens.len() + k).saturating_sub(self.table.len());
        kv.reserve(&mut self.table, n)
    }

    /// Reserves the proposer's blocks for drafting `k` tokens after `committed` tokens.
    pub fn reserve_proposer(
        &mut self,
        proposer: &dyn Proposer,
        kv: &mut KvPool,
        committed: usize,
        k: usize,
    ) -> Result<()> {
        proposer.reserve(kv, &mut self.proposer_state, committed, k)
    }

    /// Returns every block the sequence holds (target and proposer) to the pools. The sequence
    /// keeps its tokens: prefill rebuilds the caches (recompute after preemption).
    pub fn release(
        &mut self,
        target_kv: &mut KvPool,
        proposer: Option<(&dyn Proposer, &mut KvPool)>,
    ) {
        target_kv.free(&mut self.table);
        if let Some((p, kv)) = proposer {
            p.release(kv, &mut self.proposer_state);
        }
    }
}
