"""SVD-LLM (Wang et al. 2024): truncation-aware SVD with whitening by the input covariance.

For a linear W (out, in) with calibration inputs X (n, in), C = X^T X:

1. S = chol(C) (lower triangular, S S^T = C; C + eps I when C is not positive definite);
2. SVD of W S = U Sigma V^T, keep rank r;
3. W_u = U_r Sigma_r^1/2 (out, r), W_v = Sigma_r^1/2 V_r^T S^-1 (r, in); the linear becomes W_u (W_v x).

Because S^-1 whitens the inputs, the truncation error on the calibration inputs is exactly the dropped
singular values: ||(W - W_u W_v) X^T||_F^2 = sum_{i > r} sigma_i^2 (checked in the tests). Plain SVD
(LASER) minimizes ||W - W'||_F instead, ignoring which input directions the data uses.

Ranks: ``ratio`` is the fraction of each matrix's parameters removed, r = int(out x in x (1 - ratio) /
(out + in)) ("uniform", the paper); ``allocation="loss"`` spends the same total parameter budget where
the whitened spectrum says truncation costs most: rank units go, in order, to the largest
sigma_i^2 / (sum_j sigma_j^2) / (out + in) across all matrices (in the spirit of SVD-LLM V2's per-matrix
ratios from the truncation loss; V2's exact formula is not reproduced). The closed-form and LoRA
parameter updates of the paper are not done (no fine-tuning here).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch

from workbench.errors import InputError

from ..calibration import SHARED_INPUTS, record_linear_inputs, token_windows
from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .factors import break_even_rank
from .laser import KINDS, LowRankEdit, low_rank_bytes


def input_covariances(model, texts, layers, kinds, window: int = 256, n_windows: int = 8, skip_first: int = 0,
                      layers_per_pass: int = 10) -> tuple[dict, int]:
    """{(layer, site): C = X^T X (in, in) float64} for the input site of every kind, and the token count.
    Several passes of ``layers_per_pass`` layers keep the float64 accumulators small."""
    windows = token_windows(model, texts, window, n_windows)
    sites = sorted({SHARED_INPUTS[k] for k in kinds})
    cov: dict = {}
    n = 0
    with model.without_interventions():
        for start in range(0, len(layers), layers_per_pass):
            chunk = layers[start: start + layers_per_pass]
            acc = {}

            def on_input(layer, site, x):
                xd = x.double()
                acc[layer, site] = acc.get((layer, site), 0) + xd.T @ xd

            n = record_linear_inputs(model, windows, [(l, s) for l in chunk for s in sites], on_input,
                                     skip_first=skip_first)
            cov.update({k: v.cpu() for k, v in acc.items()})
    return cov, n


def cholesky_jittered(c: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of c (float64), adding (-lambda_min + 1e-6 x mean diag) I when needed."""
    s, info = torch.linalg.cholesky_ex(c)
    if int(info) == 0:
        return s
    lam = float(torch.linalg.eigvalsh(c)[0])
    eps = 1e-6 * float(c.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.cholesky(c + (max(-lam, 0.0) + eps) * torch.eye(c.shape[0], dtype=c.dtype))


def whitened_svd(w: torch.Tensor, cov: torch.Tensor):
    """(U, sigma, Vh, S) of W S with S = chol(cov), all float64."""
    s = cholesky_jittered(cov.double())
    u, sig, vh = torch.linalg.svd(w.detach().double().cpu() @ s, full_matrices=False)
    return u, sig, vh, s


def whitened_factors(w: torch.Tensor, svd, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_u (out, r), W_v (r, in)) from ``whitened_svd`` output, in w's dtype and device."""
    u, sig, vh, s = svd
    root = sig[:rank].sqrt()
    wu = u[:, :rank] * root
    # W_v = Sigma^1/2 V^T S^-1: solve S^T Z^T = (Sigma^1/2 V^T)^T for Z = W_v
    wv = torch.linalg.solve_triangular(s.T, (root[:, None] * vh[:rank]).T, upper=True).T
    return wu.to(w.dtype).to(w.device), wv.to(w.dtype).to(w.device)


def uniform_rank(shape, ratio: float) -> int:
    out, inp = shape
    return max(1, int(out * inp * (1 - ratio) / (out + inp)))


def loss_ranks(spectra: dict, shapes: dict, ratio: float) -> dict:
    """Ranks spending sum over matrices of (1 - ratio) out x in parameters on the largest normalized
    truncation losses per parameter (module docstring). A matrix never gets a rank at or above its
    break-even rank (its factors would not be smaller than the dense matrix)."""
    budget = sum((1 - ratio) * o * i for o, i in shapes.values())
    cand = []
    for key, sig in spectra.items():
        o, i = shapes[key]
        e = (sig ** 2)
        score = e / e.sum().clamp_min(1e-300) / (o + i)
        cand += [(float(v), key) for v in score]
    cand.sort(key=lambda c: -c[0])
    ranks = {k: 0 for k in spectra}
    cap = {k: max(1, math.ceil(break_even_rank(*shapes[k])) - 1) for k in spectra}
    spent = 0.0
    for _, key in cand:
        o, i = shapes[key]
        if ranks[key] >= cap[key]:
            continue
        if spent + (o + i) > budget:
            break
        ranks[key] += 1
        spent += o + i
    return {k: max(r, 1) for k, r in ranks.items()}


@register_method("svd_llm")
@dataclass
class SVDLLM(EfficiencyMethod):
    """Whitened truncated SVD of every chosen linear (module docstring)."""

    ratio: float = 0.2
    allocation: str = "uniform"
    kinds: tuple = KINDS
    layers: list | None = None
    skip_first: bool = False
    window: int = 256
    n_windows: int = 8

    family: ClassVar[str] = "low-rank"
    needs_calibration: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": Knob("float", 0.0, 1.0, high_open=True, doc="Fraction of each matrix's parameters removed."),
        "allocation": Knob("choice", choices=("uniform", "loss")),
        "layers": Knob("layers", optional=True, doc="Layers to compress (None: all)."),
        "skip_first": Knob("bool", doc="Leave position 0 (the massive-activation token) out of the covariance."),
        "window": Knob("int", 8, 8192), "n_windows": Knob("int", 1, 100000),
    }
    ranks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    spectra: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    n_tokens: int = field(default=0, init=False, repr=False, compare=False)

    def validate(self) -> None:
        self.kinds = tuple(self.kinds)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise InputError(f"svd_llm: kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}.")

    def _layers(self, model) -> list[int]:
        if self.layers is None:
            return list(range(model.info.n_layers))
        return [model.check_layer(l) for l in self.layers]

    def check_model(self, model) -> None:
        missing = [k for k in self.kinds if k not in model.linear_kinds]
        if missing:
            raise InputError(f"svd_llm: this model has no {missing} linears.")
        self._layers(model)

    def prepare(self, model, texts=None, layers_per_pass: int = 6) -> None:
        """Covariances, whitened SVDs and factors, a few layers at a time (the float64 covariances and SVDs
        of every matrix at once would take gigabytes); the loss allocation reads all spectra first, then
        computes the factors in a second pass."""
        self.check_model(model)
        layers = self._layers(model)
        self.spectra, self.factors, self.ranks = {}, {}, {}
        shapes = {(l, k): tuple(model.linear_weight(l, k).shape) for l in layers for k in self.kinds}

        def passes(make_factors: bool) -> None:
            for start in range(0, len(layers), layers_per_pass):
                chunk = layers[start: start + layers_per_pass]
                cov, self.n_tokens = input_covariances(model, texts, chunk, self.kinds, self.window, self.n_windows,
                                                       int(self.skip_first), layers_per_pass)
                with model.without_interventions():
                    for l in chunk:
                        for k in self.kinds:
                            w = model.linear_weight(l, k)
                            svd = whitened_svd(w, cov[l, SHARED_INPUTS[k]])
                            self.spectra[l, k] = svd[1]
                            if make_factors:
                                if self.allocation == "uniform":
                                    self.ranks[l, k] = min(uniform_rank(shapes[l, k], self.ratio), min(shapes[l, k]))
                                self.factors[l, k] = whitened_factors(w, svd, self.ranks[l, k])
                del cov

        if self.allocation == "uniform":
            passes(True)
        else:
            passes(False)
            self.ranks = loss_ranks(self.spectra, shapes, self.ratio)
            passes(True)
        widest = max(i for _, i in shapes.values())
        if self.n_tokens < 4 * widest:
            warnings.warn(f"svd_llm: the input covariances were estimated from {self.n_tokens} tokens for inputs up to "
                          f"{widest} wide; whitening then ignores the directions calibration never saw, and text from "
                          f"elsewhere suffers. Calibrate on many more tokens (n_windows x window >> {widest}).",
                          stacklevel=2)

    def _require(self) -> None:
        if not self.factors:
            raise InputError("svd_llm: call prepare(model, texts) first (whitening needs calibration inputs).")

    def intervention(self, model):
        self._require()
        return LowRankEdit(self.ranks, self.factors)

    def rank_table(self) -> pd.DataFrame:
        """One row per matrix: layer, kind, rank, break-even rank, share of whitened energy kept."""
        self._require()
        rows = []
        for (l, k), r in sorted(self.ranks.items()):
            wu, wv = self.factors[l, k]
            sig = self.spectra[l, k]
            rows.append({"layer": l, "kind": k, "rank": r, "break_even": break_even_rank(wu.shape[0], wv.shape[1]),
                         "energy_kept": float((sig[:r] ** 2).sum() / (sig ** 2).sum())})
        return pd.DataFrame(rows)

    def cost(self, model, n_tokens: int) -> Cost:
        self._require()
        w = low_rank_bytes(model, self.ranks)
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, kv, model.parameter_bytes(), kv, "real",
                    "two thin GEMVs per matrix below the break-even rank (bytes and decode time); no parameter update")
