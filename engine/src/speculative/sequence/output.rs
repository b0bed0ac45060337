//! What a sequence hands back: the text final so far, the finished output, and the emitting of
//! committed tokens, which ends generation at EOS, a stop string or a length limit.

use super::Sequence;
use crate::error::Result;
use crate::generate::{FinishReason, GenerateOutput};

impl Sequence {
    /// Text that became final since the last call.
    pub fn take_text(&mut self) -> String {
        self.take_text_split().0
    }

    /// Text that became final since the last call, and how many of its leading characters
    /// were released by accepted draft tokens (the rest by the target's own tokens).
    pub fn take_text_split(&mut self) -> (String, usize) {
        let drafted = self.pending[..self.pending_drafted].chars().count();
        self.pending_drafted = 0;
        (std::mem::take(&mut self.pending), drafted)
    }

    /// The finished output (text held back for a possible stop string is released).
    pub fn output(&mut self) -> GenerateOutput {
        let rest = self.stops.flush();
        self.pending.push_str(&rest);
        GenerateOutput {
            tokens: self.generated.clone(),
            text: self.stops.text().to_string(),
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            prompt_tokens: self.req.prompt.len(),
            prefill_time: self.prefill_time,
            decode_time: self.decode_time,
            speculation: self.stats.clone(),
        }
    }

    /// Appends tokens the target produced this step (the first `drafted` of them accepted
    /// drafts), one at a time, ending generation at EOS, a stop string, `max_tokens` or the
    /// context length.
    pub(super) fn emit(&mut self, new: &[u32], drafted: usize, ctx: usize) -> Result<()> {
        for (i, &t) in new.iter().enumerate() {
            if self.eos.contains(&t) {
                self.finish = Some(FinishReason::Stop);
                return Ok(());
            }
            self.tokens.push(t);
            self.generated.push(t);
            if let Some(text) = self.stream.push(t)? {
                let (out, stopped) = self.stops.push(&text);
                // Drafted text stays a prefix of `pending`: only counted while all of it is.
                if i < drafted && self.pending_drafted == self.pending.len() {
                    self.pending_drafted += out.len();
                }
                self.pending.push_str(&out);
                if stopped {
                    self.finish = Some(FinishReason::Stop);
                    return Ok(());
                }
            }
            if self.generated.len() >= self.req.max_tokens || self.tokens.len() >= ctx {
                self.finish = Some(FinishReason::Length);
                return Ok(());
            }
        }
        Ok(())
    }
}
