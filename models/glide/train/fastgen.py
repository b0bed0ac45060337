"""Batched greedy generation for a Qwen2-style target, fast enough to make many answers.

transformers' `generate` made about 2,100 answer tokens/s on the H200 at 384 rows (GLIDE run 2):
its cache grows by concatenation and every step goes through the general masking code. This
decoder reads the same weights from the loaded model, keeps each layer's keys and values in one
preallocated tensor (rows left-padded to a common width), prefills in slices of rows, and
decodes all rows together, attending to the cache through two batched products per layer with
the query heads grouped onto their key/value head (no copy of the cache per step). Rows that
have finished are dropped from the batch once they are half of it.

It is the same arithmetic as the model's own forward (bf16 weights, f32 RMSNorm statistics and
softmax), so its greedy answers are those `generate` gives up to rounding on near ties:
check_fastgen.py compares them on a small random model, and `train.py prepare` on the target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FastDecoder:
    def __init__(self, model):
        c = model.config
        self.num_heads = c.num_attention_heads
        self.num_kv = c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        rope = getattr(c, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)))
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.head = model.get_output_embeddings().weight
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            # q, k and v in one product, gate and up in another.
            qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
            qkv_b = torch.cat(biases) if all(b is not None for b in biases) else None
            self.layers.append(
                dict(
                    ln1=layer.input_layernorm.weight,
                    qkv_w=qkv_w,
                    qkv_b=qkv_b,
                    o_w=a.o_proj.weight,
                    o_b=a.o_proj.bias,
                    ln2=layer.post_attention_layernorm.weight,
                    gu_w=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                    down_w=m.down_proj.weight,
                )
            )
        device = self.embed.device
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim))

    def _rms(self, x, w):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def _rope(self, pos):
        """cos and sin `[B, 1, T, head_dim]` for positions `[B, T]`."""
        f = pos.float()[..., None] * self.inv_freq
        emb = torch.cat([f, f], dim=-1)[:, None]
        dtype = self.embed.dtype
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _qkv(self, L, h, pos):
        """Normalized, projected and rotated q `[B, heads, T, d]`, k and v `[B, kv, T, d]`."""
        B, T, _ = h.shape
        x = self._rms(h, L["ln1"])
        qkv = F.linear(x, L["qkv_w"], L["qkv_b"])
        nq, nk = self.num_heads * self.head_dim, self.num_kv * self.head_dim
        q = qkv[..., :nq].view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = qkv[..., nq : nq + nk].view(B, T, self.num_kv, self.head_dim).transpose(1, 2)
        v = qkv[..., nq + nk :].view(B, T, self.num_kv, self.head_dim).transpose(1, 2)
        cos, sin = self._rope(pos)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin), v

    def _finish(self, L, h, attn):
        """Output projection, residual, MLP, residual."""
        B, _, T, _ = attn.shape
        h = h + F.linear(attn.transpose(1, 2).reshape(B, T, -1), L["o_w"], L["o_b"])
        x = self._rms(h, L["ln2"])
        gate, up = F.linear(x, L["gu_w"]).chunk(2, dim=-1)
        return h + F.linear(F.silu(gate) * up, L["down_w"])

    def _logits_last(self, h):
        return F.linear(self._rms(h[:, -1], self.norm), self.head)

    @torch.no_grad()
    def _prefill(self, ids, pad, caches, rows):
        """Fills the caches of `rows` (a slice) from left-padded `ids` `[b, W]`; the logits of
        each row's last position."""
        b, W = ids.shape
        j = torch.arange(W, device=ids.device)
        pos = (j[None] - pad[:, None]).clamp(min=0)
        # Causal, pads never seen; a pad row sees itself (no row without a key).
        allowed = (j[None, None] <= j[None, :, None]) & (j[None, None] >= pad[:, None, None])
        allowed |= torch.eye(W, dtype=torch.bool, device=ids.device)[None]
        mask = allowed[:, None]
        h = F.embedding(ids, self.embed)
        groups = self.num_heads // self.num_kv
        for L, (kc, vc) in zip(self.layers, caches):
            q, k, v = self._qkv(L, h, pos)
            kc[rows, :, :W] = k
            vc[rows, :, :W] = v
            kr = k.repeat_interleave(groups, dim=1)
            vr = v.repeat_interleave(groups, dim=1)
            h = self._finish(L, h, F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask))
        return self._logits_last(h)

    @torch.no_grad()
    def _step(self, tok, pos, col, pad, caches):
        """One decode step for every row: token `tok` `[B]` at column `col` of the caches."""
        B = tok.shape[0]
        h = F.embedding(tok[:, None], self.embed)
        groups = self.num_heads // self.num_kv
        keys = torch.arange(col + 1, device=tok.device)
        bias = torch.zeros((B, 1, 1, col + 1), dtype=torch.float32, device=tok.device)
        bias.masked_fill_(keys[None, None, None] < pad[:, None, None, None], float("-inf"))
        scale = self.head_dim**-0.5
        for L, (kc, vc) in zip(self.layers, caches):
            q, k, v = self._qkv(L, h, pos[:, None])
            kc[:, :, col : col + 1] = k
            vc[:, :, col : col + 1] = v
            # Query heads grouped by their key/value head: [B, kv, groups, d].
            qg = q.view(B, self.num_kv, groups, self.head_dim)
            scores = torch.matmul(qg, kc[:, :, : col + 1].transpose(-1, -2)).float() * scale + bias
            p = torch.softmax(scores, dim=-1).to(vc.dtype)
            out = torch.matmul(p, vc[:, :, : col + 1]).view(B, self.num_heads, 1, self.head_dim)
            h = self._finish(L, h, out)
        return self._logits_last(h)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new: int, eos: list[int], prefill_tokens: int = 65536) -> list[list[int]]:
        """Greedy answers to `prompts` (token ids), each through its first `eos` token or
        `max_new` tokens."""
        device = self.embed.device
        B, W = len(prompts), max(len(p) for p in prompts)
        pad = torch.tensor([W - len(p) for p in prompts], device=device)
        ids = torch.zeros((B, W), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, W - len(p) :] = torch.tensor(p)
        ids = ids.to(device)
        shape = (B, self.num_kv, W + max_new, self.head_dim)
        caches = [(torch.empty(shape, dtype=self.embed.dtype, device=device), torch.empty(shape, dtype=self.embed.dtype, device=device)) for _ in self.layers]
        chunk = max(1, prefill_tokens // W)
        tok = torch.empty(B, dtype=torch.long, device=device)
        for s in range(0, B, chunk):
            rows = slice(s, min(B, s + chunk))
            tok[rows] = self._prefill(ids[rows], pad[rows], caches, rows).argmax(-1)
        eos_t = torch.tensor(eos, device=device)
        answers = [[] for _ in range(B)]
        alive = list(range(B))  # the original row of each batch row
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_new):
            got = tok.tolist()
            for r, token in zip(alive, got):
                answers[r].append(token)
            done = done | torch.isin(tok, eos_t)
            if t == max_new - 1:
                break
            n_done = int(done.sum())
            if n_done == len(alive):
                break
            if n_done * 2 >= len(alive):
                keep = (~done).nonzero().squeeze(1)
                alive = [alive[i] for i in keep.tolist()]
                caches = [(kc[keep], vc[keep]) for kc, vc in caches]
                tok, pad, done = tok[keep], pad[keep], done[keep]
            col = W + t
            tok = self._step(tok, col - pad, col, pad, caches).argmax(-1)
        for a in answers:
            for j, token in enumerate(a):
                if token in eos:
                    del a[j + 1 :]
                    break
        return answers
