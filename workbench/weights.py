"""The weights analyses read, in canonical (TransformerLens) layouts, versioned so edits are seen.

``Model.weights()`` returns a ``Weights`` snapshot: detached tensors in the model's dtype and on its
device. It is rebuilt whenever any parameter of the model changes (an edit through
``Model.edit_weights()``, a weight-editing intervention, an in-place write, a replaced module), so
an analysis run inside ``model.intervene(...)`` always reads the weights that run uses.

Layouts (H query heads, G KV heads, e = d_head, d = d_model, f = d_mlp, V = vocabulary):

    W_E (V, d)   W_pos (n_ctx, d) or None   W_U (d, V)   b_U (V,) or None
    per layer:  W_Q (H, d, e)  W_K, W_V (G, d, e)  W_O (H, e, d)
                b_Q (H, e)  b_K, b_V (G, e)  b_O (d,)   (None when the model has no such bias)
                W_in (d, f) [the "up" projection]  W_gate (d, f) or None  W_out (f, d)
                b_in (f,)  b_out (d,)
                ln1 (before attention), ln2 (before the MLP): ``NormWeights``
    final_norm: ``NormWeights``

Query head h reads KV head h // (H // G).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InputError


@dataclass(frozen=True)
class NormWeights:
    """One normalization layer: ``kind`` "RMS" or "LN", gain ``w`` (d,) or None, bias ``b`` (d,) or None.

    offset: added to the stored gain before use (Gemma's RMSNorm multiplies by 1 + w, so 1.0 there);
    ``gain`` is the effective multiplier ``w + offset``.
    """

    kind: str
    w: torch.Tensor | None
    b: torch.Tensor | None
    eps: float
    offset: float = 0.0

    @property
    def gain(self) -> torch.Tensor | None:
        """(d,) the effective gain ``w + offset`` (None when the norm has no gain)."""
        return None if self.w is None else (self.w + self.offset if self.offset else self.w)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 1) the divisor the norm applies to ``x`` (..., d): RMS, or the standard deviation."""
        if self.kind == "LN":
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (..., d) as the model does, in the same operation order (differentiable in ``x``)."""
        g = self.gain
        if self.kind == "LN":
            w = None if g is None else g.to(x.dtype)
            b = None if self.b is None else self.b.to(x.dtype)
            return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, self.eps)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y if g is None else g.to(y.dtype) * y

    def read_direction(self, direction: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """The residual direction(s) u with u · x = direction · norm(x) when the norm's divisor is frozen at
        ``scale``: u = g ⊙ direction / scale (centred over d for LayerNorm). direction (d,) or (d, k).

        The norm's bias adds a constant, not a direction; it is left out."""
        g = self.gain
        u = direction
        if g is not None:
            g = g.to(direction.dtype)
            u = g[:, None] * direction if direction.ndim == 2 else g * direction
        if self.kind == "LN":
            u = u - u.mean(0, keepdim=True)
        return u / scale


@dataclass(frozen=True)
class LayerWeights:
    """One block's weights in TransformerLens layouts (see the module docstring)."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor | None
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None
    b_O: torch.Tensor | None
    W_in: torch.Tensor
    W_gate: torch.Tensor | None
    W_out: torch.Tensor
    b_in: torch.Tensor | None
    b_out: torch.Tensor | None
    ln1: NormWeights
    ln2: NormWeights
    ln1_post: NormWeights | None = None  # norm applied to the attention output before it joins the residual
    ln2_post: NormWeights | None = None  # the same after the MLP (Gemma)
    q_norm: NormWeights | None = None    # per-head norm of queries / keys (Qwen3, Gemma 3)
    k_norm: NormWeights | None = None


@dataclass(frozen=True)
class Weights:
    """A snapshot of the model's weights at ``version`` (see the module docstring for layouts)."""

    version: int
    W_E: torch.Tensor
    W_pos: torch.Tensor | None
    W_U: torch.Tensor
    b_U: torch.Tensor | None
    final_norm: NormWeights
    layers: tuple[LayerWeights, ...]
    embed_scale: float = 1.0              # token embeddings are multiplied by this (√d in Gemma)
    logit_softcap: float | None = None    # logits = cap · tanh(logits / cap) (Gemma 2)
    _stacks: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def stacked(self, name: str) -> torch.Tensor:
        """One per-layer weight stacked over layers, e.g. ``stacked("W_O")`` -> (L, H, e, d) (memoized)."""
        if name in self._stacks:
            return self._stacks[name]
        if not self.layers or not hasattr(self.layers[0], name) or name in ("ln1", "ln2"):
            raise InputError(f"stacked(): {name!r} is not a per-layer weight tensor; use one of "
                             "W_Q, W_K, W_V, W_O, W_in, W_gate, W_out, b_Q, b_K, b_V, b_O, b_in, b_out.")
        vals = [getattr(lw, name) for lw in self.layers]
        if any(v is None for v in vals):
            raise InputError(f"stacked(): this model has no {name!r}.")
        self._stacks[name] = torch.stack(vals)
        return self._stacks[name]

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """(..., d) residual -> (..., V) logits through the final norm and the unembedding (differentiable
        in ``resid``); at the last layer's output it equals the model's logits."""
        x = self.final_norm(resid.to(self.W_U.dtype))
        out = x @ self.W_U
        if self.b_U is not None:
            out = out + self.b_U
        if self.logit_softcap:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out


def _det(t) -> torch.Tensor | None:
    return None if t is None else t.detach()


def norm_weights(component, kind: str) -> NormWeights:
    """NormWeights of a HF norm module (LayerNorm, RMSNorm and look-alikes), checked against the module.

    The gain convention (w or 1 + w) is found by running the module on a probe vector; a norm that
    matches neither is refused rather than described wrongly."""
    w = getattr(component, "weight", None)
    b = getattr(component, "bias", None) if kind == "LN" else None
    eps = getattr(component, "variance_epsilon", None) or getattr(component, "eps", None) or 1e-5
    found = None
    d = w.shape[0] if isinstance(w, torch.Tensor) else None
    if d is None:
        return NormWeights(kind, None, _det(b), float(eps))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, d, generator=gen, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
    tol = max(1e-4, 16 * torch.finfo(w.dtype).eps)  # bf16/fp16 norms round their output
    with torch.no_grad():
        y = component(x).float()
        for offset in (0.0, 1.0):
            cand = NormWeights(kind, _det(w).float(), None if b is None else _det(b).float(), float(eps), offset)(x.float())
            if torch.allclose(cand, y, rtol=tol, atol=tol * float(cand.abs().max())):
                found = offset
                break
    if found is None:
        raise InputError(f"workbench cannot describe the norm {type(component).__name__}: it is neither g·norm(x) nor "
                         "(1 + g)·norm(x). Analyses that read weights do not support this architecture yet.")
    return NormWeights(kind, _det(w), _det(b), float(eps), found)


def read_weights(bridge, info, version: int) -> Weights:
    """Build a ``Weights`` snapshot from a TransformerBridge (inside ``workbench`` only)."""
    kind = "LN" if info.normalization.upper().startswith("LN") else "RMS"

    def original(bridge_component):
        return getattr(bridge_component, "original_component", None) or bridge_component

    layers = []
    for blk in bridge.blocks:
        a, m = blk.attn, blk.mlp
        w_k, w_v = _det(a.W_K), _det(a.W_V)
        if w_k.shape[0] != info.n_kv_heads:  # a bridge that expanded GQA: one copy per KV head
            w_k, w_v = w_k[:: info.group_size], w_v[:: info.group_size]
        b_k, b_v = _det(a.b_K), _det(a.b_V)
        if b_k is not None and b_k.shape[0] != info.n_kv_heads:
            b_k, b_v = b_k[:: info.group_size], b_v[:: info.group_size]
        layers.append(LayerWeights(
            W_Q=_det(a.W_Q), W_K=w_k, W_V=w_v, W_O=_det(a.W_O),
            b_Q=_det(a.b_Q), b_K=b_k, b_V=b_v, b_O=_det(a.b_O),
            W_in=_det(m.W_in), W_gate=_det(getattr(m, "W_gate", None)), W_out=_det(m.W_out),
            b_in=_det(getattr(m, "b_in", None)), b_out=_det(getattr(m, "b_out", None)),
            ln1=norm_weights(original(blk.ln1), kind), ln2=norm_weights(original(blk.ln2), kind),
            ln1_post=_optional_norm(blk, "ln1_post", kind), ln2_post=_optional_norm(blk, "ln2_post", kind),
            q_norm=_optional_norm(original(a), "q_norm", "RMS"), k_norm=_optional_norm(original(a), "k_norm", "RMS"),
        ))
    w_pos = None
    if info.positional != "rotary":
        pe = getattr(bridge, "pos_embed", None)
        w = getattr(original(pe), "weight", None) if pe is not None else None
        w_pos = _det(w)
    emb = original(bridge.embed)
    scale = getattr(emb, "scalar_embed_scale", None) or getattr(emb, "embed_scale", None) or 1.0
    return Weights(version=version, W_E=_det(bridge.W_E), W_pos=w_pos, W_U=_det(bridge.W_U),
                   b_U=_det(getattr(bridge, "b_U", None)), final_norm=norm_weights(original(bridge.ln_final), kind),
                   layers=tuple(layers), embed_scale=float(scale), logit_softcap=info.logit_softcap)


def _optional_norm(parent, name: str, kind: str) -> NormWeights | None:
    mod = parent._modules.get(name) if hasattr(parent, "_modules") else None
    if mod is None:
        return None
    mod = getattr(mod, "original_component", None) or mod
    return norm_weights(mod, kind)
