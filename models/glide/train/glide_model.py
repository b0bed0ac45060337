"""The GLIDE drafter in PyTorch, as specd runs it (engine/src/model/glide/), and its file.

One decoder layer (or more) over the target's token embedding:

    h = embed(x) (+ feature_proj(rms_norm(f)) on feature rows, if the file has a feature)
    h += self_attention(rms_norm(h))                  own causal cache, drafter's heads
    h += cross_attention(rms_norm(h), target K, V)    target's heads, one target layer
    h += mlp(rms_norm(h))                             SiLU-gated
    logits = head(rms_norm(h))                        the draft vocabulary's rows

The cross-attention's queries are rotated at their row's position with the target's rotary
embedding and read the keys (already rotated) and values one target layer cached. Which target
positions a row sees is the paper's block-wise mask: a row in a block that starts at position s
sees target positions 0..s-1. specd drafts exactly so: the rows drafted after a verification are
a block starting at the first unverified position, and a row catching up on a committed token is
a block of its own (s = its position). A row that sees nothing gets no cross-attention output.

With `feature = "last_hidden"` (served by specd on the CPU and the GPU), the first row of a block also adds a projection of
the target's final hidden state (after its last norm: what its head reads) at the position
before it, the one whose logits chose that row's token. specd's draft round starts exactly
there: the target's verification has just computed that row. Rows of a prompt read as catch-up
(blocks of one) are given no feature, as specd would read them.

With `feature = "last_hidden_chain"` (trained once from run 6's weights in session 18, and lost
to `last_hidden`; specd serves it on the CPU and the GPU), every later row of a block adds the
same projection of the drafter's own final hidden state (after its last norm: what its own head
read) at the row before: the drafted row's stand-in for the target's, which verification has
not computed yet (EAGLE's drafters feed their own hidden state forward so). Same weights as
`last_hidden`: such a file resumes into it unchanged. With `chain_norm`, the chained rows
normalize that state with their own weights, zero at the start: a `last_hidden` drafter
resumed into it drafts exactly as before until training opens them. `forward_chain` computes
it in passes (see there).

With `verified_rank` r > 0 (with `last_hidden`, one layer; written in session 33, trained in
session 34: no gain over the same training without it, so specd does not serve it), a row the
target has verified is kept in the drafter's own cache with a rank-r projection of the target's
final hidden state at the row before added to its input (EAGLE's drafters read the target's
state at every verified position): its keys and values in the cache then carry what the target
knew there. A drafted row has no such state, so the rows of the block being drafted read their
own inputs as drafted and every row before the block its verified input. The rows that take
it are those whose row before verification computed (`verified_rows`: answer and source rows,
not a prompt's, which specd catches up on after the prefill without the target's state); specd
rewrites a round's accepted rows so once verified. The projection's up half starts at zero: a
drafter resumed into it drafts as before.

The file is specd's GLIDE file: one safetensors file whose metadata key `glide_config` holds the
configuration as JSON, the id map as the int64 tensor `draft_vocab.ids`, and Hugging Face names
for the weights (see `tensor_names`). Without `lm_head.weight` the head is the target's own rows
for the drafter's tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_KEY = "glide_config"
VOCAB_TENSOR = "draft_vocab.ids"


@dataclass
class GlideTarget:
    """The shapes of the target a drafter is made for (specd checks them at load)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float


@dataclass
class GlideConfig:
    """Mirrors specd's GlideConfig (engine/src/model/glide_config.rs), field for field."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    target_layer: int
    draft_vocab_size: int
    target: GlideTarget
    # "none"; "last_hidden": block-start rows add a projection of the target's final hidden
    # state at the position before them; "last_hidden_chain": and later rows of a block the
    # same projection of the drafter's own at the row before. Absent from the file's JSON when
    # "none".
    feature: str = "none"
    # Rank of that projection (0: a full hidden × hidden matrix).
    feature_rank: int = 0
    # "last_hidden_chain" only: the chained rows normalize the drafter's own row with their own
    # weights (`model.chain_norm.weight`), zero at the start, so that a drafter resumed from a
    # `last_hidden` one drafts as before until training opens them. Absent from the JSON when
    # false (the chained rows then share the feature's norm).
    chain_norm: bool = False
    # Rank of the projection of the target's hidden state that verified rows add to their input
    # in the drafter's own cache (0: none; see the module's docstring). Absent from the JSON
    # when 0.
    verified_rank: int = 0

    def to_json(self) -> str:
        d = asdict(self)
        if self.feature == "none":
            del d["feature"], d["feature_rank"]
        if not self.chain_norm:
            del d["chain_norm"]
        if not self.verified_rank:
            del d["verified_rank"]
        return json.dumps(d)

    @staticmethod
    def from_json(text: str) -> "GlideConfig":
        d = json.loads(text)
        d["target"] = GlideTarget(**d["target"])
        return GlideConfig(**d)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (x * weight.float()).to(dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """cos and sin of the half-rotation ("NeoX", Qwen2's) layout: `[..., head_dim]`."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates `x` of `[B, heads, T, d]` with tables of `[B, T, d]`."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def block_starts_from_sizes(sizes: list[int], length: int, device=None) -> torch.Tensor:
    """The start position of each row's block, for blocks of the given sizes laid end to end."""
    starts = []
    pos = 0
    for s in sizes:
        s = min(s, length - pos)
        starts.extend([pos] * s)
        pos += s
        if pos >= length:
            break
    assert pos == length, "block sizes must cover the sequence"
    return torch.tensor(starts, dtype=torch.long, device=device)


def random_block_starts(length: int, max_block: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A random partition into blocks of 1..max_block rows (uniform sizes)."""
    sizes = []
    total = 0
    while total < length:
        s = int(torch.randint(1, max_block + 1, (1,), generator=generator))
        sizes.append(s)
        total += s
    return block_starts_from_sizes(sizes, length, device)


class GlideLayer(nn.Module):
    def __init__(self, cfg: GlideConfig):
        super().__init__()
        h, t = cfg.target.hidden_size, cfg.target
        self.cfg = cfg
        self.input_layernorm = nn.Parameter(torch.ones(h))
        self.q_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, h, bias=False)
        self.cross_attn_layernorm = nn.Parameter(torch.ones(h))
        self.cross_q_proj = nn.Linear(h, t.num_heads * t.head_dim, bias=False)
        self.cross_o_proj = nn.Linear(t.num_heads * t.head_dim, h, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(h))
        self.gate_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, h, bias=False)

    def self_kv(self, h, cos, sin):
        """The self-attention's keys and values of rows `h`, `[B, kv heads, T, head_dim]`."""
        cfg = self.cfg
        B, T, _ = h.shape
        a = rms_norm(h, self.input_layernorm, cfg.rms_norm_eps)
        k = self.k_proj(a).view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(a).view(B, T, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        return apply_rope(k, cos, sin), v

    def forward(self, h, positions, target_k, target_v, starts, verified=None):
        """`starts`: each row's block start, `[T]` (the same blocks for every sequence) or
        `[B, T]`. `verified` (drafters with `verified_rank`): the rows' inputs as kept once
        verified; a row reads those of the rows before its block and `h`'s of its own block's
        rows."""
        cfg, t = self.cfg, self.cfg.target
        B, T, _ = h.shape
        eps = cfg.rms_norm_eps
        starts = starts if starts.dim() == 2 else starts[None]  # [1 or B, T]

        # Self-attention over the drafter's own causal cache.
        a = rms_norm(h, self.input_layernorm, eps)
        q = self.q_proj(a).view(B, T, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = rope_tables(positions, cfg.head_dim, t.rope_theta)
        q = apply_rope(q, cos, sin)
        k, v = self.self_kv(h, cos, sin)
        rep = cfg.num_heads // cfg.num_kv_heads
        if verified is None:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            vk, vv = self.self_kv(verified, cos, sin)
            k = torch.cat([vk, k], dim=2).repeat_interleave(rep, dim=1)
            v = torch.cat([vv, v], dim=2).repeat_interleave(rep, dim=1)
            j = torch.arange(T, device=h.device)[None, None, :]
            i = torch.arange(T, device=h.device)[None, :, None]
            before = j < starts[..., None]  # [1 or B, T, T]
            own = (j >= starts[..., None]) & (j <= i)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.cat([before, own], dim=2)[:, None])
        h = h + self.o_proj(att.transpose(1, 2).reshape(B, T, -1))

        # Cross-attention over the target layer's keys and values, block-wise masked.
        c = rms_norm(h, self.cross_attn_layernorm, eps)
        q = self.cross_q_proj(c).view(B, T, t.num_heads, t.head_dim).transpose(1, 2)
        cos, sin = rope_tables(positions, t.head_dim, t.rope_theta)
        q = apply_rope(q, cos, sin)
        rep = t.num_heads // t.num_kv_heads
        tk = target_k.to(q.dtype).repeat_interleave(rep, dim=1)
        tv = target_v.to(q.dtype).repeat_interleave(rep, dim=1)
        S = tk.shape[2]
        # Row i sees target positions j < starts[i]; a row that sees none is given key 0 so the
        # softmax is defined, and its output is zeroed below.
        seen = torch.arange(S, device=h.device)[None, None, :] < starts[..., None]  # [1 or B, T, S]
        empty = ~seen.any(dim=2)
        mask = seen.clone()
        mask[..., 0] |= empty
        att = F.scaled_dot_product_attention(q, tk, tv, attn_mask=mask[:, None])
        att = att.masked_fill(empty[:, None, :, None], 0.0)
        h = h + self.cross_o_proj(att.transpose(1, 2).reshape(B, T, -1))

        # MLP.
        m = rms_norm(h, self.post_attention_layernorm, eps)
        return h + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))


class GlideDrafter(nn.Module):
    """The drafter; `embed` and `head_rows` (the target's, for the draft vocabulary) are frozen
    buffers, everything else trains."""

    def __init__(self, cfg: GlideConfig, embed: torch.Tensor, vocab_ids: torch.Tensor, head: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("embed", embed, persistent=False)
        self.register_buffer("vocab_ids", vocab_ids.long(), persistent=False)
        head_rows = (head if head is not None else embed)[vocab_ids.long()]
        self.register_buffer("head_rows", head_rows, persistent=False)
        self.layers = nn.ModuleList(GlideLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.target.hidden_size))
        self.own_head = None  # a trained head (lm_head.weight) when set
        hs = cfg.target.hidden_size
        if cfg.feature in FEATURES_WITH_WEIGHTS:
            self.feature_norm = nn.Parameter(torch.ones(hs))
            # Zero at the start: a drafter resumed from one without a feature drafts as before.
            if cfg.feature_rank:
                self.feature_down = nn.Linear(hs, cfg.feature_rank, bias=False)
                nn.init.normal_(self.feature_down.weight, std=hs**-0.5)
                self.feature_proj = nn.Linear(cfg.feature_rank, hs, bias=False)
            else:
                self.feature_proj = nn.Linear(hs, hs, bias=False)
            nn.init.zeros_(self.feature_proj.weight)
        elif cfg.feature != "none":
            raise ValueError(f"feature {cfg.feature!r}: expected 'none', 'last_hidden' or 'last_hidden_chain'")
        if cfg.chain_norm:
            if cfg.feature != "last_hidden_chain":
                raise ValueError(f"chain_norm is for feature 'last_hidden_chain', not {cfg.feature!r}")
            self.chain_norm = nn.Parameter(torch.zeros(hs))
        if cfg.verified_rank:
            if cfg.feature != "last_hidden" or cfg.num_layers != 1:
                raise ValueError(f"verified_rank needs feature 'last_hidden' and one layer, not {cfg.feature!r} and {cfg.num_layers}")
            self.verified_norm = nn.Parameter(torch.ones(hs))
            self.verified_down = nn.Linear(hs, cfg.verified_rank, bias=False)
            nn.init.normal_(self.verified_down.weight, std=hs**-0.5)
            self.verified_up = nn.Linear(cfg.verified_rank, hs, bias=False)
            nn.init.zeros_(self.verified_up.weight)

    def feature_input(self, feature, feature_rows, chain_rows=None):
        """What feature rows add to their embedding: `feature` `[B, T, hidden]` holds the target's
        final hidden state at the position before each row (or the drafter's own, on the rows
        `chain_rows` `[B, T]` marks); `feature_rows` `[B, T]` says which rows take one. With
        `chain_norm`, the chained rows' norm weights are their own."""
        weight = self.feature_norm
        if self.cfg.chain_norm and chain_rows is not None:
            weight = torch.where(chain_rows[..., None], self.chain_norm, self.feature_norm)
        f = rms_norm(feature.float(), weight, self.cfg.rms_norm_eps)
        if self.cfg.feature_rank:
            f = self.feature_down(f)
        return self.feature_proj(f) * feature_rows[..., None].to(f.dtype)

    def verified_input(self, feature, verified_rows):
        """What a verified row adds to its input in the cache (`verified_rank`): a low-rank
        projection of the target's final hidden state at the row before, on `verified_rows`."""
        f = rms_norm(feature.float(), self.verified_norm, self.cfg.rms_norm_eps)
        return self.verified_up(self.verified_down(f)) * verified_rows[..., None].to(f.dtype)

    def hidden(self, ids, positions, target_k, target_v, starts, feature=None, feature_rows=None, chain_rows=None, verified_rows=None):
        h = self.embed[ids].float()
        if self.cfg.feature != "none":
            if feature is None or feature_rows is None:
                raise ValueError("this drafter reads the target's last hidden state: pass feature and feature_rows")
            h = h + self.feature_input(feature, feature_rows, chain_rows)
        verified = None
        if self.cfg.verified_rank:
            if verified_rows is None:
                raise ValueError("this drafter keeps verified rows with the target's hidden state: pass verified_rows")
            verified = h + self.verified_input(feature, verified_rows)
        for layer in self.layers:
            h = layer(h, positions, target_k, target_v, starts, verified)
        return rms_norm(h, self.norm, self.cfg.rms_norm_eps)

    def forward_chain(self, ids, positions, target_k, target_v, starts, feature, feature_rows, chain_rows, passes: int):
        """Logits of a `last_hidden_chain` drafter: `feature_rows` (a block's first row) read the
        target's `feature` as in `forward`; `chain_rows` `[B, T]` (a block's later rows, drafted
        in specd) read this drafter's own final hidden state at the row before. Each pass computes
        the rows from the previous pass's hidden states (the first from none), so after n passes
        rows 0..n-1 are exactly what computing the rows one after another gives (specd's drafter
        cache); later rows are approximate, in their own inputs and in the keys and values of
        the chain-fed rows before them they attend to, less so with each pass. The earlier passes
        run without gradients (a later row learns from its inputs, not through them)."""
        later = chain_rows
        rows = feature_rows
        feat = feature
        with torch.no_grad():
            for _ in range(passes - 1):
                h = self.hidden(ids, positions, target_k, target_v, starts, feat, rows, later)
                own = torch.zeros_like(feature, dtype=h.dtype)
                own[:, 1:] = h[:, :-1]
                feat = torch.where(later[..., None], own.to(feature.dtype), feature)
                rows = feature_rows | later
        h = self.hidden(ids, positions, target_k, target_v, starts, feat, rows, later)
        head = self.own_head if self.own_head is not None else self.head_rows
        return h @ head.to(h.dtype).T

    def forward(self, ids, positions, target_k, target_v, starts, feature=None, feature_rows=None, verified_rows=None):
        """Logits over the draft vocabulary, `[B, T, draft_vocab_size]`.

        ids, positions: `[B, T]`; target_k, target_v: `[B, target kv heads, S, head_dim]`
        (keys rotated, as the target cached them); starts: block starts, `[T]` or `[B, T]`; feature,
        feature_rows: see `feature_input` (drafters with a feature only); verified_rows: see
        `verified_input` (drafters with `verified_rank` only)."""
        h = self.hidden(ids, positions, target_k, target_v, starts, feature, feature_rows, verified_rows=verified_rows)
        head = self.own_head if self.own_head is not None else self.head_rows
        return h @ head.to(h.dtype).T

    def init_from_target(self, layer_weights: dict[str, torch.Tensor], final_norm: torch.Tensor, std: float = 0.02):
        """A warm start: the cross-attention's query and output projections are the target
        layer's own (its queries already read its keys), the norms the target's; the rest is
        small random."""
        with torch.no_grad():
            for layer in self.layers:
                for lin in (layer.q_proj, layer.k_proj, layer.v_proj, layer.gate_proj, layer.up_proj):
                    nn.init.normal_(lin.weight, std=std)
                for lin in (layer.o_proj, layer.down_proj):
                    nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.cfg.num_layers))
                layer.cross_q_proj.weight.copy_(layer_weights["q_proj"])
                layer.cross_o_proj.weight.copy_(layer_weights["o_proj"])
                layer.cross_attn_layernorm.copy_(layer_weights["input_layernorm"])
                layer.input_layernorm.copy_(layer_weights["input_layernorm"])
                layer.post_attention_layernorm.copy_(layer_weights["post_attention_layernorm"])
            self.norm.copy_(final_norm)


def tensor_names(layer: int) -> dict[str, str]:
    """Attribute of a GlideLayer → specd's tensor name."""
    p = f"model.layers.{layer}."
    return {
        "input_layernorm": p + "input_layernorm.weight",
        "q_proj": p + "self_attn.q_proj.weight",
        "k_proj": p + "self_attn.k_proj.weight",
        "v_proj": p + "self_attn.v_proj.weight",
        "o_proj": p + "self_attn.o_proj.weight",
        "cross_attn_layernorm": p + "cross_attn_layernorm.weight",
        "cross_q_proj": p + "cross_attn.q_proj.weight",
        "cross_o_proj": p + "cross_attn.o_proj.weight",
        "post_attention_layernorm": p + "post_attention_layernorm.weight",
        "gate_proj": p + "mlp.gate_proj.weight",
        "up_proj": p + "mlp.up_proj.weight",
        "down_proj": p + "mlp.down_proj.weight",
    }


# Features that carry the projection's weights (the same ones: a file of one resumes into the
# other).
FEATURES_WITH_WEIGHTS = ("last_hidden", "last_hidden_chain")


def feature_tensor_names(cfg: GlideConfig) -> dict[str, str]:
    """Attribute of a GlideDrafter → tensor name, for the feature's weights (none without one)."""
    if cfg.feature == "none":
        return {}
    names = {"feature_norm": "model.feature_norm.weight", "feature_proj": "model.feature_proj.weight"}
    if cfg.feature_rank:
        names["feature_down"] = "model.feature_down.weight"
    if cfg.chain_norm:
        names["chain_norm"] = "model.chain_norm.weight"
    if cfg.verified_rank:
        names["verified_norm"] = "model.verified_norm.weight"
        names["verified_down"] = "model.verified_down.weight"
        names["verified_up"] = "model.verified_up.weight"
    return names


def state_for_file(model: GlideDrafter, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    out = {}
    for i, layer in enumerate(model.layers):
        for attr, name in tensor_names(i).items():
            t = getattr(layer, attr)
            t = t.weight if isinstance(t, nn.Linear) else t
            out[name] = t.detach().to("cpu", dtype).contiguous()
    out["model.norm.weight"] = model.norm.detach().to("cpu", dtype).contiguous()
    for attr, name in feature_tensor_names(model.cfg).items():
        t = getattr(model, attr)
        t = t.weight if isinstance(t, nn.Linear) else t
        out[name] = t.detach().to("cpu", dtype).contiguous()
    if model.own_head is not None:
        out["lm_head.weight"] = model.own_head.detach().to("cpu", dtype).contiguous()
    out[VOCAB_TENSOR] = model.vocab_ids.detach().to("cpu", torch.int64).contiguous()
    return out


def save_glide(path: str, model: GlideDrafter, dtype=torch.bfloat16) -> None:
    from safetensors.torch import save_file

    save_file(state_for_file(model, dtype), path, metadata={CONFIG_KEY: model.cfg.to_json()})


def narrow_mlp(tensors: dict[str, torch.Tensor], names: dict[str, str], width: int) -> None:
    """Keeps the `width` MLP channels of one layer whose gate, up and down weights have the
    largest product of norms (in place; nothing changes at the file's own width)."""
    gate, up, down = (tensors[names[k]] for k in ("gate_proj", "up_proj", "down_proj"))
    if gate.shape[0] == width:
        return
    score = gate.float().norm(dim=1) * up.float().norm(dim=1) * down.float().norm(dim=0)
    keep = torch.topk(score, width).indices.sort().values
    tensors[names["gate_proj"]], tensors[names["up_proj"]] = gate[keep], up[keep]
    tensors[names["down_proj"]] = down[:, keep]


def widen_mlp(tensors: dict[str, torch.Tensor], names: dict[str, str], width: int, generator: torch.Generator) -> None:
    """Widens one layer's MLP to `width` channels (in place): the new channels' gate and up rows
    drawn at the spread of the existing ones, their down columns zero, so that the drafter's
    function is unchanged until training moves them (the down columns learn first: their
    gradient is the new channels' output, which is not zero)."""
    gate, up, down = (tensors[names[k]] for k in ("gate_proj", "up_proj", "down_proj"))
    extra = width - gate.shape[0]
    if extra <= 0:
        return
    draw = lambda t: torch.randn((extra, t.shape[1]), generator=generator) * t.float().std()  # noqa: E731
    tensors[names["gate_proj"]] = torch.cat([gate.float(), draw(gate)])
    tensors[names["up_proj"]] = torch.cat([up.float(), draw(up)])
    tensors[names["down_proj"]] = torch.cat([down.float(), torch.zeros(down.shape[0], extra)], dim=1)


def dequantize_q8_0(t: torch.Tensor) -> torch.Tensor:
    """A matrix stored as GGUF's Q8_0 blocks of its rows (what `specd quantize-glide` writes: a
    uint8 tensor `[rows, cols / 32 * 34]`, each block an f16 scale then 32 int8 values) as f32
    `[rows, cols]`."""
    rows, width = t.shape
    blocks = t.reshape(rows, width // 34, 34)
    scale = blocks[..., :2].contiguous().view(torch.float16).float()
    values = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (scale * values).reshape(rows, -1)


def load_glide(path: str, embed: torch.Tensor, head: torch.Tensor | None = None, cfg: GlideConfig | None = None) -> GlideDrafter:
    """A GLIDE file as a drafter. With `cfg` (the file's own but for its feature, or for another
    MLP width), a drafter that adds the feature to the file's weights, its own starting at
    zero; a narrower MLP keeps the channels that carry the most (the largest product of their
    gate, up and down weights' norms), a wider one adds channels that start with no effect
    (`widen_mlp`)."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        stored = GlideConfig.from_json(f.metadata()[CONFIG_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # Matrices stored in Q8_0 (a file rewritten by `specd quantize-glide`) train on from their
    # dequantized values.
    tensors = {k: dequantize_q8_0(t) if t.dtype == torch.uint8 else t for k, t in tensors.items()}
    if cfg is None:
        cfg = stored
    same_weights = {stored.feature, cfg.feature} <= set(FEATURES_WITH_WEIGHTS) and stored.feature_rank == cfg.feature_rank
    if (stored.feature, stored.feature_rank) != (cfg.feature, cfg.feature_rank) and stored.feature != "none" and not same_weights:
        raise ValueError(f"{path} has feature {stored.feature!r} already")
    same = {**asdict(cfg), "target": cfg.target, "intermediate_size": stored.intermediate_size}
    if stored.chain_norm and not cfg.chain_norm:
        raise ValueError(f"{path}: its chained rows have their own norm (chain_norm); ask for it too")
    # A drafter without the chained rows' own norm gains one (zero: as before).
    same.update(chain_norm=stored.chain_norm)
    if stored.verified_rank and stored.verified_rank != cfg.verified_rank:
        raise ValueError(f"{path}: its verified rows' projection has rank {stored.verified_rank}, not {cfg.verified_rank}")
    # A drafter without the verified rows' projection gains one (its up half zero: as before).
    same.update(verified_rank=stored.verified_rank)
    if same_weights:
        same.update(feature=stored.feature)
    elif (stored.feature, stored.feature_rank) != (cfg.feature, cfg.feature_rank):
        same.update(feature="none", feature_rank=0)
    if GlideConfig(**same).to_json() != stored.to_json():
        raise ValueError(f"{path}: its shapes differ from the ones asked for")
    widen_from = torch.Generator().manual_seed(20261206)
    for i in range(cfg.num_layers):
        if cfg.intermediate_size < stored.intermediate_size:
            narrow_mlp(tensors, tensor_names(i), cfg.intermediate_size)
        else:
            widen_mlp(tensors, tensor_names(i), cfg.intermediate_size, widen_from)
    model = GlideDrafter(cfg, embed, tensors.pop(VOCAB_TENSOR), head)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for attr, name in tensor_names(i).items():
                t = getattr(layer, attr)
                (t.weight if isinstance(t, nn.Linear) else t).copy_(tensors[name].float())
        model.norm.copy_(tensors["model.norm.weight"].float())
        for attr, name in feature_tensor_names(stored).items():
            t = getattr(model, attr)
            (t.weight if isinstance(t, nn.Linear) else t).copy_(tensors[name].float())
        if "lm_head.weight" in tensors:
            model.own_head = nn.Parameter(tensors["lm_head.weight"].float())
    return model
