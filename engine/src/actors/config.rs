//! Engine settings: limits of the queue and the batch, KV pool sizes, and when speculation
//! gives way under load ([`super::load`]).

use std::time::Duration;

pub use super::adapt::Calibration;
pub use super::calibrate::CatchUpPolicy;
use super::load::LoadPolicies;
use super::request::Method;
use super::EngineModels;

/// Limits and sizes of one engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Requests that may wait for admission; beyond it `submit` answers `overloaded`.
    pub max_waiting: usize,
    /// Sequences in the running batch at most.
    pub max_running: usize,
    /// Token rows one step may feed the target (verification rows plus prompt prefill). A
    /// longer prompt is prefilled in chunks over several steps.
    pub max_batch_tokens: usize,
    /// Blocks of the target's KV pool.
    pub target_kv_blocks: usize,
    /// Blocks of the draft model's KV pool.
    pub draft_kv_blocks: usize,
    /// Blocks of the GLIDE drafter's own KV pool (it reads the target's too).
    pub glide_kv_blocks: usize,
    /// When drafting shortens and stops under load, per method.
    pub load: LoadPolicies,
    /// When a drafter behind the committed tokens (a new sequence's prompt, or a pause under
    /// load) may catch up and draft.
    pub catch_up: CatchUpPolicy,
    /// When set, `load` and `catch_up` are where the policies start: the engine derives them
    /// again from these costs at the acceptance it measures per method, each method probing
    /// (drafting uncapped) until it has drafted enough to be judged ([`super::adapt`]).
    pub calibration: Option<Calibration>,
    /// Prompt tokens one step may prefill while other sequences decode: `None` sizes chunks
    /// from measured costs so that a step's prefill adds at most 0.6 of a decode step, unless
    /// the prompts waiting outnumber the streams under way ([`super::prefill`]); `Some(n)`: at
    /// most `n`. Alone, a prompt takes up to `max_batch_tokens` per step.
    pub prefill_chunk: Option<usize>,
    /// How long an idle engine waits after a request arrives before its first step, to admit
    /// requests arriving with it in the same batch.
    pub admission_window: Duration,
    /// Prefix caching in the target's pool: a new sequence whose tokens start as an earlier
    /// one's did (a chat template's system turn, a conversation's history) takes the cached
    /// blocks of that prefix instead of prefilling it ([`crate::kv::KvPool::attach_prefix`]).
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_waiting: 256,
            max_running: 64,
            max_batch_tokens: 2048,
            target_kv_blocks: 4096,
            draft_kv_blocks: 4096,
            glide_kv_blocks: 4096,
            load: LoadPolicies::default(),
            catch_up: CatchUpPolicy::default(),
            calibration: None,
            prefill_chunk: None,
            admission_window: Duration::from_millis(2),
            prefix_cache: true,
        }
    }
}

impl EngineConfig {
    /// Sizes the pools of `models` (the target's, and the draft model's and GLIDE's own when
    /// loaded) from one memory budget in bytes, split in proportion to the models' bytes per
    /// token on their device (so every pool holds the same number of tokens; GPU blocks are
    /// bf16, half the CPU's f32). A drafter not loaded gets no blocks.
    pub fn with_kv_memory(mut self, bytes: usize, models: &EngineModels) -> Self {
        let block_bytes = |m| models.proposer(m).map(|p| p.new_pool(1).block_bytes());
        let (draft, glide) = (block_bytes(Method::Draft), block_bytes(Method::Glide));
        let t = models.target.kv_block_bytes();
        let blocks = (bytes / (t + draft.unwrap_or(0) + glide.unwrap_or(0))).max(1);
        self.target_kv_blocks = blocks;
        self.draft_kv_blocks = if draft.is_some() { blocks } else { 0 };
        self.glide_kv_blocks = if glide.is_some() { blocks } else { 0 };
        self
    }
}
