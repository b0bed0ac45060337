//! The drafter's weight sets: a layer's cross-attention, the feature's, the whole drafter's on
//! its device, and as read from its file ([`GlideHost`], with its move onto the CPU).

use super::FeatureSource;
use crate::error::{Error, Result};
use crate::model::cpu_forward::Projection;
#[cfg(doc)]
use crate::model::glide_config::GlideFeature;
use crate::model::host_weights::{HostLayer, HostMatrix};
use crate::model::llama::LlamaWeights;
use crate::model::Model;

/// A layer's cross-attention weights.
#[derive(Debug, Clone)]
pub(crate) struct CrossWeights<M, V> {
    pub norm: V,
    /// hidden → target heads × target head_dim.
    pub q: M,
    /// target heads × target head_dim → hidden.
    pub o: M,
}

/// The weights of a drafter's feature ([`GlideFeature::LastHidden`]): the row that takes it
/// adds `proj · down · rms_norm(h, norm)` (no `down` at full rank) to its embedding; a chained
/// row ([`FeatureSource::Drafter`]) normalizes with `chain_norm` where the file has it.
#[derive(Debug, Clone)]
pub(crate) struct FeatureWeights<M, V> {
    pub norm: V,
    pub chain_norm: Option<V>,
    pub down: Option<M>,
    pub proj: M,
}

impl<M, V> FeatureWeights<M, V> {
    /// The norm weights a feature row of `source` is normalized with.
    pub fn norm_for(&self, source: FeatureSource) -> &V {
        match (source, &self.chain_norm) {
            (FeatureSource::Drafter, Some(chain)) => chain,
            _ => &self.norm,
        }
    }
}

/// A GLIDE drafter's weights: the Llama layers (embedding shared with the target), each with
/// its cross-attention, and its feature's if it has one.
#[derive(Debug, Clone)]
pub(crate) struct GlideWeights<M, V> {
    pub base: LlamaWeights<M, V>,
    pub cross: Vec<CrossWeights<M, V>>,
    pub feature: Option<FeatureWeights<M, V>>,
}

/// A GLIDE drafter's weights as read from its file, before they go to the target's device
/// (the embedding is the target's; the head, where the file has none, the target's rows).
#[derive(Debug)]
pub(crate) struct GlideHost {
    pub layers: Vec<HostLayer>,
    pub cross: Vec<CrossWeights<HostMatrix, Vec<f32>>>,
    pub norm: Vec<f32>,
    /// The file's own head over the reduced vocabulary, if it has one.
    pub head: Option<HostMatrix>,
    pub feature: Option<FeatureWeights<HostMatrix, Vec<f32>>>,
}

impl GlideHost {
    /// The weights on the CPU, sharing `target`'s embedding (and head rows for `ids`).
    pub(super) fn into_cpu(
        self,
        target: &Model,
        ids: &[u32],
    ) -> Result<GlideWeights<Projection, Vec<f32>>> {
        let (Some(embed), Some(target_head)) = (target.cpu_embedding(), target.cpu_head()) else {
            return Err(Error::Device("the target is not on the CPU".into()));
        };
        let head = match self.head {
            Some(h) => h.into_cpu()?,
            None => target_head.select_rows(ids)?,
        };
        let cross = self
            .cross
            .into_iter()
            .map(|c| {
                Ok(CrossWeights {
                    norm: c.norm,
                    q: c.q.into_cpu()?,
                    o: c.o.into_cpu()?,
                })
            })
            .collect::<Result<_>>()?;
        let feature = match self.feature {
            None => None,
            Some(f) => Some(FeatureWeights {
                norm: f.norm,
                chain_norm: f.chain_norm,
                down: f.down.map(HostMatrix::into_cpu).transpose()?,
                proj: f.proj.into_cpu()?,
            }),
        };
        Ok(GlideWeights {
            feature,
            base: LlamaWeights {
                embed,
                layers: HostLayer::all_into_cpu(self.layers)?,
                norm: self.norm,
                head,
            },
            cross,
        })
    }
}
