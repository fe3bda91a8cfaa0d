"""Pass-through modules that skip a block, an attention or an MLP, and the weight edit that installs them.

A skipped component is replaced (``WeightEditor.replace_component``) by a module that returns what the
residual stream needs from it: a skipped block returns its input unchanged; a skipped attention or MLP
returns zeros, so the block adds nothing. What this really saves:

- compute: the skipped part never runs (no projections, no attention, no KV update);
- KV cache: a layer whose attention is skipped (block or attention) writes no keys or values; the
  workbench ``KVCache`` holds an empty ``SkippedLayer`` there, so its physical bytes really fall;
- weights: they stay in memory while the edit holds (the edit must restore them bit-exactly);
  ``pruned_copy`` builds a smaller model that really holds fewer blocks.

Layer indices stay in place: the skipped block's ``resid_pre``/``resid_post`` hooks still fire (equal),
so per-layer analyses line up with the unmodified model; hooks inside a skipped component cannot fire
and asking for them fails with a message naming the edit.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workbench.edits import WeightEdit
from workbench.errors import InputError


class SkipBlock(nn.Module):
    """A block that leaves the residual stream unchanged: returns ``hidden_states`` (B, T, d)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class SkipAttention(nn.Module):
    """An attention that adds nothing: returns (zeros (B, T, d), None), as the HF attention returns
    (output, weights). It never touches the KV cache."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class SkipMLP(nn.Module):
    """An MLP that adds nothing: returns zeros (B, T, d)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(x)


def check_drop(model, layers: Sequence[int], what: str, allow_all: bool = False) -> list[int]:
    """Sorted distinct layer indices, each in range; dropping every block is refused."""
    n = model.info.n_layers
    out = []
    for l in layers:
        if not isinstance(l, int) or isinstance(l, bool) or not 0 <= l < n:
            raise InputError(f"{what}: layer {l!r} is unknown; this model has layers 0..{n - 1}.")
        out.append(l)
    out = sorted(set(out))
    if not allow_all and len(out) >= n:
        raise InputError(f"{what}: dropping all {n} layers leaves no model; keep at least one.")
    return out


class DropLayers(WeightEdit):
    """Skip whole blocks, attention sublayers and/or MLP sublayers for as long as the edit holds.

    blocks / attn / mlp: layer indices. Dropping no layer at all is the identity (nothing is edited).
    """

    def __init__(self, blocks: Sequence[int] = (), attn: Sequence[int] = (), mlp: Sequence[int] = ()):
        self.blocks, self.attn, self.mlp = tuple(blocks), tuple(attn), tuple(mlp)

    def validate(self, model) -> None:
        b = check_drop(model, self.blocks, "DropLayers(blocks=)")
        check_drop(model, self.attn, "DropLayers(attn=)", allow_all=True)
        check_drop(model, self.mlp, "DropLayers(mlp=)", allow_all=True)
        both = set(self.attn) & set(self.mlp)
        if len(set(b) | both) >= model.info.n_layers:
            raise InputError("DropLayers: every layer would be skipped entirely; keep at least one.")

    def edit(self, model, editor) -> None:
        self.validate(model)
        for l in sorted(set(self.blocks)):
            editor.replace_component(l, "block", SkipBlock())
        for l in sorted(set(self.attn) - set(self.blocks)):
            editor.replace_component(l, "attn", SkipAttention())
        for l in sorted(set(self.mlp) - set(self.blocks)):
            editor.replace_component(l, "mlp", SkipMLP())

    def describe(self) -> str:
        parts = [f"{k}={list(v)}" for k, v in (("blocks", self.blocks), ("attn", self.attn), ("mlp", self.mlp)) if v]
        return f"DropLayers({', '.join(parts)})"

    __repr__ = describe
