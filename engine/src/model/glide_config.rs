//! What a GLIDE drafter is (its own shapes) and what it was trained against (the target's
//! shapes and the target layer whose cache it reads), checked against the served target
//! before anything else is loaded.
//!
//! A GLIDE drafter (Du et al., "GLIDE with a CAPE", ICML 2024) is one decoder layer: self-attention
//! over its own cache, cross-attention whose queries read the keys and values one target layer
//! has cached for the verified positions, an MLP, RMSNorms; it embeds tokens with the target's
//! own embedding and scores a reduced vocabulary ([`super::DraftVocab`]). Its cross-attention
//! queries are shaped as the target's (heads, head dimension, rotary embedding), so a file made
//! for another target cannot be used: the target's name may match and its shapes not, so the
//! shapes are what is checked.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use crate::error::{Error, Result};

/// The target shapes a GLIDE drafter was trained against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlideTarget {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
}

impl GlideTarget {
    /// The shapes of `target`.
    pub fn of(target: &ModelConfig) -> Self {
        Self {
            vocab_size: target.vocab_size,
            hidden_size: target.hidden_size,
            num_layers: target.num_layers,
            num_heads: target.num_heads,
            num_kv_heads: target.num_kv_heads,
            head_dim: target.head_dim,
            rope_theta: target.rope_theta,
        }
    }
}

/// What a GLIDE drafter reads of the target beyond the keys and values of its layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlideFeature {
    /// Nothing more (the paper's drafter).
    #[default]
    None,
    /// The target's final hidden state (after its last norm: what its head reads) at the
    /// position before a draft round's first row: that row adds a projection of it to its
    /// embedding (models/glide/README.md, run 5).
    LastHidden,
    /// [`GlideFeature::LastHidden`], and every later row of a round adds the same projection
    /// of the drafter's own final hidden state (after its last norm: what its own head read)
    /// at the row before, in place of the target's, which verification has not computed yet
    /// (EAGLE's drafters chain their features so). The same weights.
    LastHiddenChain,
}

impl GlideFeature {
    fn is_none(&self) -> bool {
        !self.has_weights()
    }

    /// Whether the drafter has the feature's weights and reads the target's hidden state.
    pub fn has_weights(self) -> bool {
        self != GlideFeature::None
    }

    /// The name the file's configuration spells it with.
    pub fn name(self) -> &'static str {
        match self {
            GlideFeature::None => "none",
            GlideFeature::LastHidden => "last_hidden",
            GlideFeature::LastHiddenChain => "last_hidden_chain",
        }
    }

    /// Whether later rows of a round read the drafter's own hidden state
    /// ([`GlideFeature::LastHiddenChain`]).
    pub fn chains(self) -> bool {
        self == GlideFeature::LastHiddenChain
    }
}

/// A GLIDE drafter's configuration (stored with its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlideConfig {
    /// Decoder layers (1 in the paper and here).
    pub num_layers: usize,
    /// Self-attention heads, key/value heads and head dimension (the drafter's own; the
    /// cross-attention uses the target's).
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    /// The target layer whose cached keys and values the cross-attention reads.
    pub target_layer: usize,
    /// Rows of the reduced head (the id map stored with the weights has as many entries).
    pub draft_vocab_size: usize,
    /// What it was trained against.
    pub target: GlideTarget,
    /// What more it reads of the target (absent from files without it).
    #[serde(default, skip_serializing_if = "GlideFeature::is_none")]
    pub feature: GlideFeature,
    /// The rank of the feature's projection: 0 for a full hidden × hidden matrix, else a
    /// `rank × hidden` matrix then a `hidden × rank` one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub feature_rank: usize,
    /// [`GlideFeature::LastHiddenChain`] only: the chained rows normalize the drafter's own
    /// row with their own weights (`model.chain_norm.weight`) instead of the feature's. They
    /// start at zero in training, so that a drafter resumed from a [`GlideFeature::LastHidden`]
    /// one drafts as before until training opens them (absent from files without it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub chain_norm: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl GlideConfig {
    /// The drafter's own forward shapes: the target's (its embedding, hidden size, rotary
    /// embedding and context), with the drafter's layers, heads and MLP width.
    pub fn forward_config(&self, target: &ModelConfig) -> ModelConfig {
        let mut base = target.clone();
        base.num_layers = self.num_layers;
        base.num_heads = self.num_heads;
        base.num_kv_heads = self.num_kv_heads;
        base.head_dim = self.head_dim;
        base.intermediate_size = self.intermediate_size;
        base.rms_norm_eps = self.rms_norm_eps;
        base.qkv_bias = false;
        base.sliding_window = None;
        base
    }

    /// Refuses a drafter that does not fit `target`, naming the first mismatch and the file.
    pub fn check_target(&self, target: &ModelConfig, path: &Path) -> Result<()> {
        let refuse = |message: String| {
            Err(Error::IncompatibleDraft {
                path: path.to_path_buf(),
                message,
            })
        };
        let want = GlideTarget::of(target);
        let t = &self.target;
        let fields: [(&str, usize, usize); 6] = [
            ("vocabulary size", t.vocab_size, want.vocab_size),
            ("hidden size", t.hidden_size, want.hidden_size),
            ("layer count", t.num_layers, want.num_layers),
            ("attention head count", t.num_heads, want.num_heads),
            ("key/value head count", t.num_kv_heads, want.num_kv_heads),
            ("head dimension", t.head_dim, want.head_dim),
        ];
        for (what, trained, served) in fields {
            if trained != served {
                return refuse(format!(
                    "the GLIDE drafter was trained for a target with {what} {trained}, but the \
                     served target has {served}"
                ));
            }
        }
        if t.rope_theta != want.rope_theta {
            return refuse(format!(
                "the GLIDE drafter was trained for a target with rope theta {}, but the served \
                 target has {}",
                t.rope_theta, want.rope_theta
            ));
        }
        if self.target_layer >= target.num_layers {
            return refuse(format!(
                "the GLIDE drafter reads target layer {}, but the target has layers 0..{}",
                self.target_layer, target.num_layers
            ));
        }
        if self.draft_vocab_size == 0 || self.draft_vocab_size > target.vocab_size {
            return refuse(format!(
                "the GLIDE drafter's head has {} rows; it needs 1 to {} (the target's vocabulary)",
                self.draft_vocab_size, target.vocab_size
            ));
        }
        if self.chain_norm && !self.feature.chains() {
            return refuse(format!(
                "the GLIDE drafter has the chained rows' own norm (chain_norm) but feature \
                 \"{}\": chain_norm needs \"last_hidden_chain\"",
                self.feature.name()
            ));
        }
        if self.num_layers == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return refuse(format!(
                "the GLIDE drafter has {} layers, {} heads and {} key/value heads: it needs at \
                 least one layer and heads in whole groups per key/value head",
                self.num_layers, self.num_heads, self.num_kv_heads
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny::{tiny_config, TinySpec};

    fn glide_for(target: &ModelConfig) -> GlideConfig {
        GlideConfig {
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            intermediate_size: 128,
            rms_norm_eps: 1e-6,
            target_layer: target.num_layers - 1,
            draft_vocab_size: target.vocab_size / 2,
            target: GlideTarget::of(target),
            feature: GlideFeature::None,
            feature_rank: 0,
            chain_norm: false,
        }
    }

    #[test]
    fn a_drafter_made_for_the_target_is_accepted() {
        let target = tiny_config(&TinySpec::default());
        glide_for(&target)
            .check_target(&target, Path::new("glide.safetensors"))
            .unwrap();
    }

    #[test]
    fn every_mismatch_is_refused_with_what_and_where() {
        let target = tiny_config(&TinySpec::default());
        let path = Path::new("models/glide/x.safetensors");
        type Breakage = fn(&mut GlideConfig);
        let cases: [(&str, Breakage); 10] = [
            ("vocabulary size", |g| g.target.vocab_size += 1),
            ("hidden size", |g| g.target.hidden_size *= 2),
            ("layer count", |g| g.target.num_layers += 1),
            ("attention head count", |g| g.target.num_heads += 1),
            ("key/value head count", |g| g.target.num_kv_heads += 1),
            ("head dimension", |g| g.target.head_dim *= 2),
            ("rope theta", |g| g.target.rope_theta *= 2.0),
            ("reads target layer", |g| g.target_layer = 99),
            ("head has", |g| g.draft_vocab_size = 0),
            ("whole groups", |g| g.num_kv_heads = 3),
        ];
        for (what, break_it) in cases {
            let mut g = glide_for(&target);
            break_it(&mut g);
            let e = g.check_target(&target, path).unwrap_err().to_string();
            assert!(
                e.contains(what) && e.contains("models/glide/x.safetensors"),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn the_config_round_trips_through_json_and_refuses_unknown_fields() {
        let target = tiny_config(&TinySpec::default());
        let g = glide_for(&target);
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<GlideConfig>(&text).unwrap(), g);
        let extra = text.replacen('{', "{\"surprise\":1,", 1);
        let e = serde_json::from_str::<GlideConfig>(&extra)
            .unwrap_err()
            .to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    #[test]
    fn features_are_spelled_as_the_training_script_writes_them() {
        let target = tiny_config(&TinySpec::default());
        let mut g = glide_for(&target);
        for (feature, name) in [
            (GlideFeature::LastHidden, "last_hidden"),
            (GlideFeature::LastHiddenChain, "last_hidden_chain"),
        ] {
            g.feature = feature;
            assert_eq!(feature.name(), name);
            let text = serde_json::to_string(&g).unwrap();
            assert!(text.contains(&format!("\"feature\":\"{name}\"")), "{text}");
            assert_eq!(serde_json::from_str::<GlideConfig>(&text).unwrap(), g);
        }
        let text = serde_json::to_string(&g).unwrap();
        assert!(!text.contains("chain_norm"), "{text}");
        g.chain_norm = true;
        let gated = serde_json::to_string(&g).unwrap();
        assert!(gated.contains("\"chain_norm\":true"), "{gated}");
        assert_eq!(serde_json::from_str::<GlideConfig>(&gated).unwrap(), g);
        g.feature = GlideFeature::LastHidden;
        let e = g
            .check_target(&target, Path::new("glide.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chain_norm") && e.contains("last_hidden_chain"),
            "{e}"
        );
        let unknown = text.replace("\"last_hidden_chain\"", "\"every_layer\"");
        let e = serde_json::from_str::<GlideConfig>(&unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("every_layer"), "{e}");
    }
}
