"""LaCo, layer collapse (Yang et al. 2024): merge rear blocks into an earlier one, guided by similarity.

Merge rule ("RDSC", the paper's Eq. 1), applied to q, k, v, o, gate, up and down (norms are not merged):

    theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)

then blocks l+1..l+m are removed. (For m = 1 the result is theta_{l+1}.) ``rule="replace"`` reproduces
the reference code's in-place bug, which leaves theta_{l+m}: plain dropping of blocks l..l+m-1 but the
last.

Procedure: start at l = L - C (C = ``merge_layers``, the base plus the C - 1 blocks merged into it);
build the candidate, measure the mean cosine between the flattened final hidden states of the original
and the candidate on short calibration fragments; accept when it exceeds ``threshold`` and move to
l - ``interval``, else l - 1. The paper has no target depth; here the merges stop at
``round(ratio x L)`` removed blocks, and if a full scan accepts too few (the threshold is too strict for a
small model), further scans accept the most similar candidate each time, so every ratio is reached
(``forced`` counts those merges).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from workbench import hook_name
from workbench.edits import WeightEdit
from workbench.errors import InputError

from ..calibration import token_windows
from ..method import Knob
from ..registry import register_method
from .base import RATIO, WINDOW, LayerDropMethod, n_to_remove
from .skip import DropLayers

MERGED_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def merge_rdsc(base: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """theta_l + sum_k (theta_{l+k} - theta_l)."""
    out = base.clone()
    for o in others:
        out += o - base
    return out


class LacoEdit(WeightEdit):
    """Merged weights written into the base blocks (``set_linear``) plus the merged blocks dropped."""

    def __init__(self, merged: dict, dropped: list[int]):
        self.merged = merged      # {base layer: {kind: (out, in) weight}}
        self.dropped = list(dropped)

    def edit(self, model, editor) -> None:
        for layer, kinds in self.merged.items():
            for kind, w in kinds.items():
                editor.set_linear(layer, kind, weight=w)
        DropLayers(blocks=self.dropped).edit(model, editor)

    def describe(self) -> str:
        return f"LaCo(merged into {sorted(self.merged)}, dropped {self.dropped})"

    __repr__ = describe


@register_method("laco")
@dataclass
class LaCo(LayerDropMethod):
    """Layer collapse by parameter merging (module docstring)."""

    ratio: float = 0.2
    merge_layers: int = 4
    interval: int = 1
    threshold: float = 0.85
    rule: str = "rdsc"
    window: int = 64
    n_fragments: int = 5

    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": RATIO, "window": WINDOW,
        "merge_layers": Knob("int", 2, 1 << 16, doc="C: the base block plus the C - 1 blocks merged into it."),
        "interval": Knob("int", 1, 1 << 16, doc="I: how far the base moves down after an accepted merge."),
        "threshold": Knob("float", -1.0, 1.0, doc="T: minimum cosine of the final hidden states to accept."),
        "rule": Knob("choice", choices=("rdsc", "replace"), doc="Eq. 1 of the paper, or the reference code's result."),
        "n_fragments": Knob("int", 1, 10000, doc="Calibration fragments for the similarity."),
    }
    needs_calibration: ClassVar[bool] = True
    merged: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    history: list = field(default_factory=list, init=False, repr=False, compare=False)
    forced: int = field(default=0, init=False, repr=False, compare=False)

    def edit(self, model):
        return LacoEdit(self.merged, self.dropped_blocks)

    def _final(self, model, frags, iv=None) -> torch.Tensor:
        out = {}

        def grab(x, _n):
            out["h"] = x.detach().double()

        with model.session(interventions=[iv] if iv is not None else (), hooks=[(hook_name("final_resid"), grab)]) as s:
            s.forward(frags)
        return out["h"].flatten(1)  # (F, T*d): each fragment's hidden states flattened

    def prepare(self, model, texts=None) -> None:
        n = model.info.n_layers
        target = n_to_remove(self.ratio, n)
        frags = token_windows(model, texts, self.window, self.n_fragments)
        c = self.merge_layers
        with model.without_interventions():
            weights = {(l, k): model.linear_weight(l, k) for l in range(n) for k in MERGED_KINDS}  # read-only views
            ref = self._final(model, frags)
            layers = list(range(n))     # original indices of the blocks still present
            merged: dict = {}
            removed: list[int] = []
            history = []

            def candidate(pos: int):
                m = min(c - 1, len(layers) - 1 - pos, target - len(removed))
                base, others = layers[pos], layers[pos + 1: pos + 1 + m]
                cur = lambda l, k: merged.get(l, {}).get(k, weights[l, k])  # noqa: E731
                new = {k: (merge_rdsc(cur(base, k), [cur(o, k) for o in others]) if self.rule == "rdsc"
                           else cur(others[-1], k).clone()) for k in MERGED_KINDS}
                edit = LacoEdit({**merged, base: new}, removed + others)
                sim = float(torch.nn.functional.cosine_similarity(ref, self._final(model, frags, edit), dim=-1).mean())
                return base, others, new, sim

            def accept(base, others, new, sim, forced):
                merged[base] = new
                for o in others:
                    merged.pop(o, None)
                    layers.remove(o)
                removed.extend(others)
                history.append({"base": base, "merged": list(others), "similarity": sim, "forced": forced,
                                "removed_so_far": len(removed)})

            pos = len(layers) - c
            while len(removed) < target and pos >= 1:
                if len(layers) - 1 - pos < 1:
                    pos -= 1
                    continue
                base, others, new, sim = candidate(pos)
                history.append({"base": base, "merged": list(others), "similarity": sim, "accepted": sim > self.threshold})
                if sim > self.threshold:
                    accept(base, others, new, sim, False)
                    pos = min(pos - self.interval, len(layers) - c)
                else:
                    pos -= 1
            forced = 0
            while len(removed) < target:  # the threshold stopped short of the target depth
                cands = [candidate(p) for p in range(1, len(layers) - 1)]
                if not cands:
                    raise InputError(f"laco: cannot reach {target} removed blocks with this model.")
                best = max(cands, key=lambda x: x[3])
                accept(*best, True)
                forced += 1
        self.merged = merged
        self.history = history
        self.forced = forced
        self.dropped_blocks = sorted(removed)
        self.prepared = True
