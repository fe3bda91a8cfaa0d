"""Attention-layer dropping by input/output similarity ("What Matters in Transformers?", He et al. 2024).

For a sublayer M with residual input X, S = mean_t cos(X, X + M(LN(X))) (``scores.layer_scores``:
``attn_sim`` = cos(resid_pre, resid_mid), ``mlp_sim`` = cos(resid_mid, resid_post)); the sublayers with
the highest S (the most redundant) are dropped. ``part``: "attn" drops attention sublayers only (their
KV cache goes with them), "mlp" MLP sublayers only, "joint" the highest S across both. ``iterative``:
drop one, re-score on the pruned model, repeat (the paper's iterative script); otherwise one shot.
``ratio`` is the fraction of the L sublayers of that kind dropped ("joint": of the 2L).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from workbench.errors import InputError

from ..calibration import token_windows
from ..method import Knob
from ..registry import register_method
from .base import N_WINDOWS, RATIO, WINDOW, LayerDropMethod
from .scores import LayerScores, layer_scores
from .skip import DropLayers


@register_method("attn_drop")
@dataclass
class AttentionDrop(LayerDropMethod):
    """Drop the most redundant attention (or MLP, or both) sublayers by input/output cosine similarity."""

    ratio: float = 0.25
    part: str = "attn"
    iterative: bool = False
    exclude_first: bool = False
    window: int = 256
    n_windows: int = 16

    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": RATIO, "window": WINDOW, "n_windows": N_WINDOWS,
        "part": Knob("choice", choices=("attn", "mlp", "joint")),
        "iterative": Knob("bool", doc="Re-score after every drop."),
        "exclude_first": Knob("bool", doc="Leave position 0 (the sink token) out of the similarity."),
    }
    needs_calibration: ClassVar[bool] = True
    scores: LayerScores | None = field(default=None, init=False, repr=False, compare=False)

    def _ranked(self, scores: LayerScores, done: set) -> list[tuple[str, int]]:
        f = scores.frame
        suffix = "_no_first" if self.exclude_first else ""
        cands = []
        if self.part in ("attn", "joint"):
            cands += [(float(s), "attn", int(l)) for l, s in zip(f.layer, f["attn_sim" + suffix])]
        if self.part in ("mlp", "joint"):
            cands += [(float(s), "mlp", int(l)) for l, s in zip(f.layer, f["mlp_sim" + suffix])]
        cands = [c for c in cands if (c[1], c[2]) not in done]
        cands.sort(key=lambda c: -c[0])  # most similar (most redundant) first
        return [(p, l) for _, p, l in cands]

    def check_model(self, model) -> None:
        if model.info.parallel_attn_mlp:
            raise InputError(f"{type(self).__name__} ranks attention / MLP sublayers by cos(resid_pre, resid_mid) and "
                             f"cos(resid_mid, resid_post); {model.info.name} runs attention and MLP in parallel "
                             "(GPT-NeoX), so there is no residual between them. Use a block-level method (shortgpt, "
                             "sleb) on this family.")

    def prepare(self, model, texts=None) -> None:
        self.check_model(model)
        n = model.info.n_layers
        total = 2 * n if self.part == "joint" else n
        k = int(round(self.ratio * total))
        if k >= total:
            raise InputError(f"attn_drop: ratio={self.ratio} would drop every {self.part} sublayer; use a smaller ratio.")
        windows = token_windows(model, texts, self.window, self.n_windows)
        done: list[tuple[str, int]] = []
        with model.without_interventions():
            self.scores = layer_scores(model, windows, label="attn_drop calibration")
            if self.iterative:
                for _ in range(k):
                    attn = [l for p, l in done if p == "attn"]
                    mlp = [l for p, l in done if p == "mlp"]
                    with model.intervene(DropLayers(attn=attn, mlp=mlp)):
                        s = layer_scores(model, windows)
                    done.append(self._ranked(s, set(done))[0])
            else:
                done = self._ranked(self.scores, set())[:k]
        self.dropped_attn = sorted(l for p, l in done if p == "attn")
        self.dropped_mlp = sorted(l for p, l in done if p == "mlp")
        self.prepared = True
