"""Activation patching: overwrite one site of a run with activations from another run.

``ActivationPatch(site, layer, source, positions=None, heads=None)`` writes ``source`` (captured from a
clean or corrupted run of a prompt with the same number of tokens) into ``site`` at ``layer``,
at the chosen positions and, for head-indexed sites, heads. The patching experiments in
``probes.factual`` are built on it; use it for your own runs too.
"""
from __future__ import annotations

import numpy as np
import torch

from workbench.errors import InputError
from workbench.hook_names import SPECS
from workbench.intervention import Intervention


def patch_site_spec(site: str):
    spec = SPECS.get(site)
    if spec is None or not spec.per_layer or spec.derived_from or not spec.layout.startswith("bt"):
        ok = [s.short for s in SPECS.values() if s.per_layer and not s.derived_from and s.layout.startswith("bt")]
        raise InputError(f"Cannot patch {site!r}: pick a per-layer, per-position site: {', '.join(ok)}.")
    return spec


def patch_positions(positions, n: int) -> torch.Tensor:
    """None/"all" -> all n positions; "last" -> [n-1]; ints (negative allowed) -> sorted unique (P,)."""
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return torch.arange(n)
    if isinstance(positions, str):
        if positions == "last":
            return torch.tensor([n - 1])
        raise InputError(f"positions must be 'all', 'last', an int or a list of ints, got {positions!r}.")
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    out = []
    for p in positions:
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or not -n <= p < n:
            raise InputError(f"Position {p!r} is out of range for a {n}-token prompt (0..{n - 1}, or negative).")
        out.append(int(p) % n)
    if not out:
        raise InputError("No positions given.")
    return torch.tensor(sorted(set(out)))


class ActivationPatch(Intervention):
    """Overwrite ``site`` at ``layer`` with ``source`` at ``positions`` (and ``heads``) in every batch row.

    site: a per-layer short name ("resid_pre", "attn_out", "z", "v", ...). source: the activation
    of one prompt, (T, ...) as captured (``run[site, layer][0]``), or (B, T, ...) per row.
    positions: None for all, else ints. heads: for head-indexed sites ("z", "q", ... axis 2),
    only these heads are overwritten. The patched run must have the source's length T.
    """

    def __init__(self, site: str, layer: int, source: torch.Tensor, positions=None, heads=None):
        self.site, self.layer, self.source = site, layer, source.detach()
        self.positions, self.heads = positions, heads
        self.spec = patch_site_spec(site)

    def validate(self, model):
        model.check_layer(self.layer)
        if self.heads is not None:
            if self.spec.layout[2:3] not in ("h", "g"):
                raise InputError(f"heads= only applies to head-indexed sites (z, q, k, v, ...), not {self.site!r}.")
            model.check_heads(self.heads)

    def hooks(self, model):
        name = self.spec.full_name(model.check_layer(self.layer))
        heads = None if self.heads is None else torch.tensor(model.check_heads(self.heads))

        def fn(x: torch.Tensor, _name: str) -> torch.Tensor:
            src = self.source.to(x)
            if src.shape[-(x.ndim - 1):] != x.shape[1:]:
                raise InputError(f"ActivationPatch({self.site}, L{self.layer}): source has shape {tuple(src.shape)}, "
                                 f"the patched run has {tuple(x.shape)} (batch first); the prompts must have the "
                                 "same number of tokens.")
            pos = patch_positions(self.positions, x.shape[1]).to(x.device)
            x = x.clone()
            src = src.expand_as(x)
            if heads is None:
                x[:, pos] = src[:, pos]
            else:
                x[:, pos[:, None], heads[None, :].to(x.device)] = src[:, pos[:, None], heads[None, :].to(x.device)]
            return x

        return [(name, fn)]
