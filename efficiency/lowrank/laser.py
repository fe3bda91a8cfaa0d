"""LASER (Sharma et al. 2024): replace one weight matrix by its rank-r approximation.

An intervention (layer, kind, rank) replaces W by U_r S_r V_r^T (exact SVD); ``rho`` gives the rank as a
fraction of the full rank, r = int(rho x min(out, in)) (the paper's rho = 1 - 0.1 x rate; a rank of 0
is refused). Stored as two factors when r is below the break-even rank (``LowRankLinear``: fewer bytes,
two thin GEMVs), else as the dense rank-r matrix (same bytes as before).

``laser_sweep`` searches layer x matrix x rank on prompt/answer pairs (the bundled facts), choosing on
one half and reporting the chosen intervention on the other half (held out), with a paired bootstrap
interval on the accuracy change. LASER's claim is that factual accuracy can *rise* under such a
reduction (mostly late MLP matrices in the paper's 6B-7B models); the sweep shows whether it does here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.edits import WeightEdit
from workbench.errors import InputError
from workbench.result import Result

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .factors import LowRankLinear, break_even_rank, check_rank, svd64, truncated_svd
from .scoring import FactScorer

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def rank_of(rho: float, w_shape) -> int:
    return int(rho * min(w_shape))


class LowRankEdit(WeightEdit):
    """Replace (layer, kind) linears by rank-r approximations: factors below break-even, dense above."""

    def __init__(self, ranks: dict, factors: dict | None = None):
        self.ranks = ranks                  # {(layer, kind): r}
        self.factors = factors or {}        # {(layer, kind): (B, A)} precomputed (SVD-LLM's whitened factors)

    def edit(self, model, editor) -> None:
        for (layer, kind), r in sorted(self.ranks.items()):
            w = model.linear_weight(layer, kind)
            if (layer, kind) in self.factors:
                B, A = self.factors[layer, kind]
            else:
                B, A = truncated_svd(w, check_rank(r, w, f"L{layer}.{kind}"))
            if r < break_even_rank(*w.shape):
                editor.replace_linear(layer, kind, LowRankLinear(B, A, model.linear_bias(layer, kind)))
            else:
                editor.set_linear(layer, kind, weight=B @ A)

    def describe(self) -> str:
        return "LowRank(" + ", ".join(f"L{l}.{k}:r={r}" for (l, k), r in sorted(self.ranks.items())) + ")"

    __repr__ = describe


def low_rank_bytes(model, ranks: dict) -> int:
    """The model's weight bytes with these (layer, kind) -> rank replacements (factors below break-even)."""
    total = model.parameter_bytes()
    for (layer, kind), r in ranks.items():
        w = model.linear_weight(layer, kind)
        if r < break_even_rank(*w.shape):
            total += (r * (w.shape[0] + w.shape[1]) - w.numel()) * w.element_size()
    return total


@register_method("laser")
@dataclass
class LASER(EfficiencyMethod):
    """One matrix (``layer``, ``kind``) replaced by its rank-``rank`` approximation (or ``rho`` x full rank)."""

    layer: int = 0
    kind: str = "down"
    rank: int | None = None
    rho: float | None = None

    family: ClassVar[str] = "low-rank"
    knobs: ClassVar[dict[str, Knob]] = {
        "layer": Knob("int", 0, 1 << 16), "kind": Knob("choice", choices=KINDS),
        "rank": Knob("int", 1, 1 << 20, optional=True, doc="Kept rank (or give rho)."),
        "rho": Knob("float", 0.0, 1.0, optional=True, doc="Kept rank as a fraction of the full rank."),
    }

    def validate(self) -> None:
        if self.rank is not None and self.rho is not None:
            raise InputError("laser: give rank= or rho=, not both.")
        if self.rank is None and self.rho is None:
            self.rho = 0.1
        if self.rho is not None and self.rho <= 0:
            raise InputError(f"laser: rho must be > 0, got {self.rho}.")

    def resolved_rank(self, model) -> int:
        model.check_layer(self.layer)
        w = model.linear_weight(self.layer, self.kind)
        r = self.rank if self.rank is not None else rank_of(self.rho, w.shape)
        if r < 1:
            raise InputError(f"laser: rho={self.rho} keeps rank {r} of a {tuple(w.shape)} matrix (int truncation); "
                             "use a larger rho or give rank=.")
        return check_rank(r, w, f"laser(L{self.layer}.{self.kind})")

    def check_model(self, model) -> None:
        self.resolved_rank(model)

    def intervention(self, model):
        return LowRankEdit({(self.layer, self.kind): self.resolved_rank(model)})

    def cost(self, model, n_tokens: int) -> Cost:
        r = self.resolved_rank(model)
        w = low_rank_bytes(model, {(self.layer, self.kind): r})
        kv = kv_bytes_full(model, n_tokens)
        base = model.parameter_bytes()
        return Cost(n_tokens, w, kv, base, kv, "real",
                    "factors stored (two thin GEMVs)" if w < base else "rank above break-even: dense product stored")


@dataclass(repr=False)
class LaserSweep(Result):
    """grid: one row per (layer, kind, rho, rank) with accuracy and mean answer log-prob on the selection
    half; best: the chosen row; heldout: base vs best on the held-out half, with a 95% paired bootstrap
    interval of the accuracy change."""

    grid: pd.DataFrame
    best: dict
    base_select: dict
    heldout: dict
    n_select: int
    n_heldout: int
    model_fingerprint: str = ""

    def to_frame(self) -> pd.DataFrame:
        return self.grid

    def summary(self) -> str:
        b, h = self.best, self.heldout
        return (f"LaserSweep({len(self.grid)} interventions on {self.n_select} selection facts: best L{b['layer']}."
                f"{b['kind']} rank {b['rank']} ({b['accuracy']:.1%} vs {self.base_select['accuracy']:.1%}); held out "
                f"({self.n_heldout} facts): {h['base_accuracy']:.1%} -> {h['best_accuracy']:.1%} "
                f"(change {h['delta']:+.1%}, 95% CI {h['ci_low']:+.1%}..{h['ci_high']:+.1%}))")

    def figure(self, metric: str = "accuracy", **_) -> go.Figure:
        g = self.grid
        kinds = [k for k in KINDS if k in set(g.kind)]
        fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True)
        base = self.base_select[metric]
        for i, k in enumerate(kinds):
            piv = g[g.kind == k].pivot_table(index="rho", columns="layer", values=metric)
            fig.add_heatmap(z=(piv - base).to_numpy(), x=list(piv.columns), y=[f"{r:g}" for r in piv.index],
                            colorscale="RdBu", zmid=0, showscale=i == 0, colorbar={"title": f"{metric} - base"},
                            row=1, col=i + 1)
        fig.update_layout(title=f"LASER sweep on the selection half: {metric} change vs the unmodified model "
                                f"({base:.3g}); best L{self.best['layer']}.{self.best['kind']} rho {self.best['rho']:g}",
                          yaxis_title="rho (kept rank fraction)")
        fig.update_xaxes(title_text="layer")
        return fig


def _bootstrap_delta(a: torch.Tensor, b: torch.Tensor, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (n, len(a)), generator=g)
    d = (b.float()[idx].mean(1) - a.float()[idx].mean(1)).sort().values
    return float(d[int(0.025 * n)]), float(d[int(0.975 * n) - 1])


def laser_sweep(model, prompts, answers, layers=None, kinds=("gate", "up", "down"), rhos=(0.01, 0.05, 0.1, 0.25, 0.5),
                select_fraction: float = 0.5, seed: int = 0, batch_size: int = 32, progress=None) -> LaserSweep:
    """Sweep (layer, kind, rho) on a random half of the pairs; report the best on the other half."""
    scorer = FactScorer(model, prompts, answers, batch_size)
    if not 0 < select_fraction < 1:
        raise InputError(f"laser_sweep(): select_fraction must lie in (0, 1), got {select_fraction!r}.")
    if len(scorer) < 4:
        raise InputError("laser_sweep(): give at least 4 prompt/answer pairs (half to select on, half held out).")
    layers = list(range(model.info.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    bad = [k for k in kinds if k not in model.linear_kinds]
    if bad or not kinds:
        raise InputError(f"laser_sweep(): kinds must be among {model.linear_kinds}, got {list(kinds)}.")
    perm = torch.randperm(len(scorer), generator=torch.Generator().manual_seed(seed)).tolist()
    n_sel = max(1, int(round(select_fraction * len(scorer))))
    select, held = scorer.subset(perm[:n_sel]), scorer.subset(perm[n_sel:])
    rows = []
    with model.without_interventions():
        base = select(model)
        base_sel = {"accuracy": base.accuracy, "mean_logprob": base.mean_logprob}
        for layer in layers:
            for kind in kinds:
                w = model.linear_weight(layer, kind)
                svd = svd64(w)
                for rho in rhos:
                    r = rank_of(rho, w.shape)
                    if r < 1:
                        continue
                    B, A = truncated_svd(w, r, svd)
                    with model.edit_weights() as ed:
                        ed.set_linear(layer, kind, weight=B @ A)
                        sc = select(model)
                    rows.append({"layer": layer, "kind": kind, "rho": rho, "rank": r, "accuracy": sc.accuracy,
                                 "mean_logprob": sc.mean_logprob})
                    if progress is not None:
                        progress(layer, kind, rho, sc.accuracy)
        grid = pd.DataFrame(rows)
        if grid.empty:
            raise InputError("laser_sweep(): every rho gives rank 0 on these matrices; use larger rhos.")
        best = grid.sort_values(["accuracy", "mean_logprob"], ascending=False, kind="stable").iloc[0].to_dict()
        best = {k: (int(v) if k in ("layer", "rank") else v) for k, v in best.items()}
        base_h = held(model)
        with model.intervene(LowRankEdit({(best["layer"], best["kind"]): best["rank"]})):
            best_h = held(model)
    lo, hi = _bootstrap_delta(base_h.correct, best_h.correct, seed=seed)
    heldout = {"base_accuracy": base_h.accuracy, "best_accuracy": best_h.accuracy,
               "delta": best_h.accuracy - base_h.accuracy, "ci_low": lo, "ci_high": hi,
               "base_logprob": base_h.mean_logprob, "best_logprob": best_h.mean_logprob,
               "n_changed": int((base_h.correct != best_h.correct).sum())}
    return LaserSweep(grid, best, base_sel, heldout, len(select), len(held), model.fingerprint)


__all__ = ["LASER", "LowRankEdit", "laser_sweep", "LaserSweep", "low_rank_bytes", "rank_of"]
