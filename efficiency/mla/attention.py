"""The converted attention: decodes from the latent KV cache.

Called in place of a Llama attention (``replace_component(layer, "attn", ...)``) with the post-norm
hidden states (B, T, d), ``position_embeddings=(cos, sin)`` (B, T, e), the mask and the cache; returns
(output (B, T, d), None). With a cache it appends the new tokens' latent c (B, G, T, d_kv) and rotated
kept keys k_R (B, G, T, r) to the layer's ``LatentLayer`` and attends over everything held.

mode "absorb": scores q_R . k_R + q_lat . c with q_lat = x Wq_lat (W_Q's non-rotated part absorbed
    with up_k), output (p c) W_VO (up_v absorbed into W_O): the cache is never decompressed.
mode "decompress": k_nope = c up_k and v = c up_v rebuilt for every cached token at every step, then
    ordinary attention (the reference; its cost grows with the context).

``record_attention = True`` keeps the last pattern (B, H, T, N) in ``last_pattern`` (the converted
layer has no ``pattern`` hook: its attention is not the bridge's).
"""
from __future__ import annotations

import torch
from torch import nn

from workbench.errors import InputError

from .cache import LatentLayer, latent_layer_of
from .convert import LayerFactors

MODES = ("absorb", "decompress")


def _rot(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class MLAAttention(nn.Module):
    """Latent attention of one layer (see the module docstring)."""

    def __init__(self, layer_idx: int, f: LayerFactors, mode: str = "absorb"):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"MLA decode mode must be one of {MODES}, got {mode!r}.")
        self.layer_idx, self.mode = layer_idx, mode
        d, h, r = f.Wq_rope.shape
        g, dkv, _ = f.up_v.shape
        self.n_heads, self.n_kv, self.d_head, self.r, self.d_kv = h, g, f.W_O.shape[1], r, dkv
        p = lambda t: nn.Parameter(t.detach().contiguous(), requires_grad=False)  # noqa: E731
        self.W_qr = p(f.Wq_rope.reshape(d, h * r))
        self.W_kr = p(f.Wk_rope.reshape(d, g * r))
        self.W_down = p(f.down.reshape(d, g * dkv))
        self.b_O = None if f.b_O is None else p(f.b_O)
        # decompression factors: the cache layer's views need them in both modes
        self.up_k, self.up_v = p(f.up_k), p(f.up_v)
        if mode == "absorb":
            wq_lat, w_vo = f.absorbed()
            self.W_qlat = p(wq_lat.reshape(d, h * dkv))
            self.W_vo = p(w_vo.reshape(h * dkv, -1))
        else:
            self.W_qn = p(f.Wq_nope.reshape(d, h * (self.d_head - r)))
            self.W_o = p(f.W_O.reshape(h * self.d_head, -1))
        self.register_buffer("rope_idx", f.rope_idx.clone(), persistent=False)
        self.register_buffer("nope_idx", f.nope_idx.clone(), persistent=False)
        self.record_attention = False
        self.last_pattern: torch.Tensor | None = None

    def _new_layer(self) -> LatentLayer:
        return LatentLayer(self.up_k, self.up_v, self.rope_idx, self.nope_idx, self.d_head)

    def _cos_sin(self, position_embeddings, b, t, x):
        if position_embeddings is None:
            raise InputError("The converted (MLA) attention needs the rotary position embeddings of the model.")
        cos, sin = position_embeddings
        cos, sin = cos.expand(b, t, -1), sin.expand(b, t, -1)
        grp = self.n_heads // self.n_kv
        idx_k = self.rope_idx                                   # (G, r)
        idx_q = idx_k.repeat_interleave(grp, 0)                 # (H, r)
        take = lambda c, idx: c[:, :, idx]  # noqa: E731  (B, T, heads, r)
        return take(cos, idx_q), take(sin, idx_q), take(cos, idx_k), take(sin, idx_k)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                past_key_values=None, **kwargs):
        x = hidden_states
        b, t, _ = x.shape
        h, g, r, dkv, e = self.n_heads, self.n_kv, self.r, self.d_kv, self.d_head
        grp = h // g
        cq, sq, ck, sk = self._cos_sin(position_embeddings, b, t, x)
        qr = (x @ self.W_qr).view(b, t, h, r)
        kr = (x @ self.W_kr).view(b, t, g, r)
        if r:
            qr = qr * cq + _rot(qr) * sq
            kr = kr * ck + _rot(kr) * sk
        c = (x @ self.W_down).view(b, t, g, dkv)
        c, kr = c.transpose(1, 2), kr.transpose(1, 2)           # (B, G, T, .)
        if past_key_values is not None:
            c_all, kr_all = latent_layer_of(past_key_values, self.layer_idx, self._new_layer).append(c, kr)
        else:
            c_all, kr_all = c, kr
        n = c_all.shape[-2]
        qr = qr.view(b, t, g, grp, r).permute(0, 2, 3, 1, 4)    # (B, G, grp, T, r)
        scores = qr @ kr_all[:, :, None].transpose(-1, -2)      # (B, G, grp, T, N)
        if self.mode == "absorb":
            ql = (x @ self.W_qlat).view(b, t, g, grp, dkv).permute(0, 2, 3, 1, 4)
            scores = scores + ql @ c_all[:, :, None].transpose(-1, -2)
        else:
            k_nope = torch.einsum("bgnc,gcm->bgnm", c_all, self.up_k)
            v_all = torch.einsum("bgnc,gcm->bgnm", c_all, self.up_v)
            qn = (x @ self.W_qn).view(b, t, g, grp, e - r).permute(0, 2, 3, 1, 4)
            scores = scores + qn @ k_nope[:, :, None].transpose(-1, -2)
        scores = scores * e ** -0.5
        scores = scores + self._mask(attention_mask, b, t, n, scores)
        p = torch.softmax(scores.float(), dim=-1).to(x.dtype)   # (B, G, grp, T, N)
        if self.record_attention:
            self.last_pattern = p.reshape(b, h, t, n).detach()
        if self.mode == "absorb":
            ctx = p @ c_all[:, :, None]                          # (B, G, grp, T, d_kv)
            out = ctx.permute(0, 3, 1, 2, 4).reshape(b, t, h * dkv) @ self.W_vo
        else:
            z = p @ v_all[:, :, None]                            # (B, G, grp, T, e)
            out = z.permute(0, 3, 1, 2, 4).reshape(b, t, h * e) @ self.W_o
        if self.b_O is not None:
            out = out + self.b_O
        return out, None

    @staticmethod
    def _mask(attention_mask, b, t, n, like) -> torch.Tensor:
        """Additive mask broadcastable to (B, G, grp, T, N): the model's (its last N key columns) or causal."""
        if attention_mask is not None and attention_mask.ndim == 4 and attention_mask.shape[-2] == t:
            m = attention_mask[..., -n:]
            if m.dtype == torch.bool:
                m = torch.zeros_like(m, dtype=like.dtype).masked_fill(~m, torch.finfo(like.dtype).min)
            return m.to(like.dtype)[:, :, None]                 # (B, 1, 1, T, N)
        causal = torch.ones(t, n, dtype=torch.bool, device=like.device).triu(n - t + 1)
        return torch.zeros(t, n, dtype=like.dtype, device=like.device).masked_fill(causal, torch.finfo(like.dtype).min)

    def extra_repr(self) -> str:
        return f"layer={self.layer_idx}, d_kv={self.d_kv}, rope_dims={self.r}, mode={self.mode}"
