"""Scale the outputs of chosen attention heads (a dial between zero-ablation and the identity)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from workbench.errors import InputError
from workbench.hook_names import hook_name
from workbench.intervention import Intervention


class HeadScale(Intervention):
    """Multiply the outputs of the given (layer, head) pairs by ``alpha`` (their z slice, every position).

    alpha = 0 is zero-ablation, alpha = 1 the identity. Heads: a list of (layer, head) pairs.
    """

    def __init__(self, heads: Sequence[tuple[int, int]], alpha: float):
        self.heads = [(int(l), int(h)) for l, h in heads]
        if not self.heads:
            raise InputError("HeadScale needs at least one (layer, head) pair.")
        if not np.isfinite(alpha):
            raise InputError(f"alpha must be a finite number, got {alpha!r}.")
        self.alpha = float(alpha)

    def validate(self, model):
        for l, h in self.heads:
            model.check_layer(l)
            model.check_heads([h])

    def hooks(self, model):
        by_layer: dict[int, list[int]] = {}
        for l, h in self.heads:
            by_layer.setdefault(model.check_layer(l), []).append(h)
        out = []
        for l, hs in by_layer.items():
            def fn(z: torch.Tensor, _name: str, hs=hs) -> torch.Tensor:  # (B, T, H, d_head)
                z = z.clone()
                z[:, :, hs] = z[:, :, hs] * self.alpha
                return z

            out.append((hook_name("z", l), fn))
        return out

    def __repr__(self) -> str:
        return f"HeadScale({', '.join(f'L{l}H{h}' for l, h in self.heads)} × {self.alpha:g})"
