//! Every metric specd exports, declared once: name, unit, help text and histogram buckets.
//!
//! The engine records through the [`metrics`] facade; whoever serves `/metrics` installs a
//! recorder (the gateway installs the Prometheus exporter with [`buckets`] and calls
//! [`describe`]). Without a recorder, recording costs next to nothing.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Prefix of every metric name.
pub const PREFIX: &str = "specd_";

/// Drafting rounds that proposed at least one token. Every `specd_spec_*` counter and
/// [`ACCEPTED_LENGTH`] carry the label `method`: the request's speculation method (`none`,
/// `draft`, `ngram`, `glide`, `glide+ngram`).
pub const SPEC_DRAFTS: &str = "specd_spec_drafts_total";
/// Tokens proposed by drafters.
pub const SPEC_DRAFT_TOKENS: &str = "specd_spec_draft_tokens_total";
/// Proposed tokens the target accepted.
pub const SPEC_ACCEPTED_TOKENS: &str = "specd_spec_accepted_tokens_total";
/// Drafting rounds whose tokens came from prompt lookup (the n-gram proposer, or glide+ngram
/// taking the n-gram proposal over GLIDE's): a share of `SPEC_DRAFTS`.
pub const SPEC_LOOKUP_DRAFTS: &str = "specd_spec_lookup_drafts_total";
/// Tokens of those rounds: a share of `SPEC_DRAFT_TOKENS`.
pub const SPEC_LOOKUP_DRAFT_TOKENS: &str = "specd_spec_lookup_draft_tokens_total";
/// Tokens of those rounds the target accepted: a share of `SPEC_ACCEPTED_TOKENS`.
pub const SPEC_LOOKUP_ACCEPTED_TOKENS: &str = "specd_spec_lookup_accepted_tokens_total";
/// Accepted tokens by draft position (label `position`, 1-based).
pub const SPEC_ACCEPTED_PER_POSITION: &str = "specd_spec_accepted_tokens_per_position_total";
/// Drafted tokens by draft position (label `position`, 1-based): acceptance at position i is
/// `SPEC_ACCEPTED_PER_POSITION / SPEC_DRAFTED_PER_POSITION` at i.
pub const SPEC_DRAFTED_PER_POSITION: &str = "specd_spec_draft_tokens_per_position_total";
/// Tokens generated (streamed to clients).
pub const GENERATED_TOKENS: &str = "specd_generated_tokens_total";
/// Prompt tokens of admitted requests.
pub const PROMPT_TOKENS: &str = "specd_prompt_tokens_total";
/// Prompt tokens whose keys and values the target's prefix cache held, so were not computed
/// (a share of `PROMPT_TOKENS`; a preempted sequence's tokens taken again count again).
pub const PREFIX_CACHE_HIT_TOKENS: &str = "specd_prefix_cache_hit_tokens_total";
/// Requests the engine ended, with two labels: `finish_reason` (`length`, `stop`, `cancelled`,
/// or `error` for one that failed or was refused) and `error_code` (`none`, or the error's code
/// as clients see it: `invalid_request`, `prompt_too_long`, `overloaded`, `internal`, ...).
pub const REQUESTS: &str = "specd_requests_total";
/// [`REQUESTS`]' `error_code` of a request that did not fail.
pub const NO_ERROR: &str = "none";
/// Sequences preempted because KV blocks ran out.
pub const PREEMPTIONS: &str = "specd_preemptions_total";

/// KV blocks held by sequences (label `model`: `target` or `draft`).
pub const KV_BLOCKS_USED: &str = "specd_kv_cache_blocks_used";
/// KV blocks no sequence holds, kept for the prefix they cache until needed (label `model`;
/// counted free).
pub const KV_BLOCKS_PARKED: &str = "specd_kv_cache_blocks_parked";
/// KV blocks in the pool (label `model`).
pub const KV_BLOCKS_TOTAL: &str = "specd_kv_cache_blocks_total";
/// Used over total KV blocks (label `model`).
pub const KV_UTILIZATION: &str = "specd_kv_cache_utilization_ratio";
/// Sequences in the running batch.
pub const RUNNING_SEQUENCES: &str = "specd_running_sequences";
/// Requests waiting for admission.
pub const WAITING_SEQUENCES: &str = "specd_waiting_sequences";
/// Open WebSocket connections (recorded by the gateway).
pub const WEBSOCKET_CONNECTIONS: &str = "specd_websocket_connections";

/// Submission to first streamed token.
pub const TIME_TO_FIRST_TOKEN: &str = "specd_time_to_first_token_seconds";
/// Time between streamed chunks of one request, divided over the chunk's tokens.
pub const INTER_TOKEN_LATENCY: &str = "specd_inter_token_latency_seconds";
/// Submission to the end of a request.
pub const REQUEST_DURATION: &str = "specd_request_duration_seconds";
/// Time of each phase of a token step (label `phase`: see [`Phase`]).
pub const STEP_DURATION: &str = "specd_step_duration_seconds";
/// Tokens a verification kept per sequence (accepted drafts + the target's own).
pub const ACCEPTED_LENGTH: &str = "specd_accepted_length";
/// Prompt tokens the target read in a step: chunks riding along with the decoding sequences
/// and prompts prefilled on their own (what chunked prefill admits a step).
pub const STEP_PROMPT_TOKENS: &str = "specd_step_prompt_tokens";

/// The `position` label of draft position `pos` (1-based): a static string for the first 16,
/// so that recording a verification allocates nothing per position in the token step.
pub fn position_label(pos: usize) -> metrics::SharedString {
    const POSITIONS: [&str; 16] = [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match POSITIONS.get(pos.wrapping_sub(1)) {
        Some(p) => metrics::SharedString::const_str(p),
        None => pos.to_string().into(),
    }
}

/// The phases of a token step, each an actor's handler, plus the time between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Admission, streaming and retiring (Scheduler).
    Schedule,
    /// Block reservation, preemption and rollback (KvCacheManager).
    Kv,
    /// Drafter prefill and drafting (Drafter).
    Draft,
    /// Target prefill and verification (Verifier).
    Verify,
    /// Acceptance (Acceptor).
    Accept,
    /// Time in mailboxes between the handlers: the actor messaging overhead.
    Messaging,
    /// The whole step.
    Total,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 7] = [
        Phase::Schedule,
        Phase::Kv,
        Phase::Draft,
        Phase::Verify,
        Phase::Accept,
        Phase::Messaging,
        Phase::Total,
    ];

    /// The `phase` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Schedule => "schedule",
            Phase::Kv => "kv",
            Phase::Draft => "draft",
            Phase::Verify => "verify",
            Phase::Accept => "accept",
            Phase::Messaging => "messaging",
            Phase::Total => "total",
        }
    }
}

/// Histogram bucket bounds per metric (for the exporter).
pub fn buckets() -> Vec<(&'static str, Vec<f64>)> {
    let latency = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let long = vec![
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ];
    vec![
        (TIME_TO_FIRST_TOKEN, latency.clone()),
        (INTER_TOKEN_LATENCY, latency.clone()),
        (STEP_DURATION, latency),
        (REQUEST_DURATION, long),
        (ACCEPTED_LENGTH, (1..=16).map(f64::from).collect::<Vec<_>>()),
        (
            STEP_PROMPT_TOKENS,
            (0..=11).map(|i| f64::from(1u32 << i)).collect::<Vec<_>>(),
        ),
    ]
}

/// Registers units and help texts with the installed recorder, and creates the unlabelled
/// counters and gauges at zero: a series that exists from the start reads 0 on a dashboard
/// instead of "no data" (preemptions, say, may never happen).
pub fn describe() {
    for name in [
        PREEMPTIONS,
        GENERATED_TOKENS,
        PROMPT_TOKENS,
        PREFIX_CACHE_HIT_TOKENS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [RUNNING_SEQUENCES, WAITING_SEQUENCES, WEBSOCKET_CONNECTIONS] {
        metrics::gauge!(name).increment(0.0);
    }
    describe_counter!(
        SPEC_DRAFTS,
        "Verifications that had at least one drafted token"
    );
    describe_counter!(SPEC_DRAFT_TOKENS, "Tokens proposed by drafters");
    describe_counter!(
        SPEC_LOOKUP_DRAFTS,
        "Drafting rounds whose tokens came from prompt lookup (n-gram, or glide+ngram's n-gram choice)"
    );
    describe_counter!(SPEC_LOOKUP_DRAFT_TOKENS, "Tokens proposed by prompt lookup");
    describe_counter!(
        SPEC_LOOKUP_ACCEPTED_TOKENS,
        "Tokens proposed by prompt lookup that the target accepted"
    );
    describe_counter!(SPEC_ACCEPTED_TOKENS, "Drafted tokens the target accepted");
    describe_counter!(
        SPEC_ACCEPTED_PER_POSITION,
        "Accepted drafted tokens by draft position"
    );
    describe_counter!(
        SPEC_DRAFTED_PER_POSITION,
        "Drafted tokens by draft position"
    );
    describe_counter!(GENERATED_TOKENS, "Tokens generated and streamed");
    describe_counter!(PROMPT_TOKENS, "Prompt tokens of admitted requests");
    describe_counter!(
        PREFIX_CACHE_HIT_TOKENS,
        "Prompt tokens found in the target's prefix cache, not computed again"
    );
    describe_counter!(
        REQUESTS,
        "Requests ended, by finish reason (length, stop, cancelled, error) and error code (none if it did not fail)"
    );
    describe_counter!(PREEMPTIONS, "Sequences preempted when KV blocks ran out");
    describe_gauge!(KV_BLOCKS_USED, "KV cache blocks held by sequences");
    describe_gauge!(
        KV_BLOCKS_PARKED,
        "KV cache blocks kept for their cached prefix, held by no sequence (counted free)"
    );
    describe_gauge!(KV_BLOCKS_TOTAL, "KV cache blocks in the pool");
    describe_gauge!(KV_UTILIZATION, "KV blocks used over total (0 to 1)");
    describe_gauge!(RUNNING_SEQUENCES, "Sequences in the running batch");
    describe_gauge!(WAITING_SEQUENCES, "Requests waiting for admission");
    describe_gauge!(WEBSOCKET_CONNECTIONS, "Open WebSocket connections");
    describe_histogram!(TIME_TO_FIRST_TOKEN, Unit::Seconds, "Time to first token");
    describe_histogram!(
        INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time per streamed token"
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Request duration");
    describe_histogram!(STEP_DURATION, Unit::Seconds, "Token step time by phase");
    describe_histogram!(
        ACCEPTED_LENGTH,
        "Tokens kept per verification (accepted drafts + 1)"
    );
    describe_histogram!(
        STEP_PROMPT_TOKENS,
        "Prompt tokens the target read in a step that read any (chunked prefill)"
    );
}
