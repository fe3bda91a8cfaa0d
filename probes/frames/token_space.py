"""The whitened token space of the Frame Representation Hypothesis (docs/frames.md, section 1).

U is the unembedding (V, d). Σ = Cov(rows of U) (d, d), eigendecomposed as Q diag(λ) Qᵀ.
Eigenvalues λ ≤ ``tol`` (default 1e-6, the reference code's value) are dropped: their directions
carry no variance, and 1/√λ would blow them up. The whitener is the pseudo inverse square root
W = Q_kept diag(λ_kept^{-1/2}) Q_keptᵀ (d, d), and every token's vector is

    g(y) = U[y] W − mean_y(U W)        (the "mean" meaningless-vector option of the reference)

so the g(y) are centred and have identity covariance on the kept eigen-directions
(Cov(g) = Q_kept Q_keptᵀ, the projector). This is the causal inner product of the Linear
Representation Hypothesis (Park et al.). The PAD row is set to 0 (so padded frame slots are zero
columns) and rows are not L2-normalised, as in the reference.

Note (kept from the reference on purpose): hidden states are later compared in *raw* model space
against these whitened vectors; no Σ^{1/2} is applied on the hidden side.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError

DEFAULT_TOL = 1e-6


@dataclass
class TokenSpace(Result):
    """Whitened, centred unembedding rows of one model.

    vectors: (V, d) float32 g(y); PAD row zero (when ``pad_id`` is not None).
    whitener: (d, d) float64 Σ^{-1/2} on the kept eigen-directions.
    mean: (d,) float64 mean of U W (subtracted). eigenvalues: (d,) float64 of Σ, ascending.
    kept: number of eigenvalues above ``tol``. basis: (d, kept) float64 kept eigenvectors.
    """

    model_name: str
    fingerprint: str
    vectors: torch.Tensor
    whitener: torch.Tensor
    mean: torch.Tensor
    eigenvalues: torch.Tensor
    basis: torch.Tensor
    tol: float
    pad_id: int | None

    @property
    def kept(self) -> int:
        return int(self.basis.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per eigenvalue of Σ (ascending) and whether it was kept."""
        ev = self.eigenvalues
        return pd.DataFrame({"index": range(len(ev)), "eigenvalue": ev.tolist(), "kept": (ev > self.tol).tolist()})

    def figure(self):
        """Eigenvalue spectrum of the unembedding covariance (log scale) with the tolerance."""
        import plotly.graph_objects as go

        ev = self.eigenvalues.flip(0).clamp_min(1e-30).tolist()
        fig = go.Figure(go.Scatter(x=list(range(1, len(ev) + 1)), y=ev, mode="lines", name="eigenvalue"))
        fig.add_hline(y=self.tol, line=dict(dash="dot", color="gray"), annotation_text=f"tol {self.tol:g}")
        fig.update_yaxes(type="log", title="eigenvalue of Cov(U)")
        fig.update_xaxes(title="rank (largest first)")
        fig.update_layout(title=f"Unembedding covariance spectrum ({self.model_name}): {self.kept}/{self.d_model} kept",
                          template="plotly_white", width=700, height=400)
        return fig

    def __repr__(self) -> str:
        ev = self.eigenvalues
        return (f"TokenSpace({self.model_name}: {self.n_tokens} tokens × {self.d_model} dims, "
                f"{self.kept} eigenvalues kept (tol {self.tol:g}), Σ eigenvalues {float(ev[0]):.2e}..{float(ev[-1]):.2e})")

    def html_table(self):
        return None


def unembedding(model) -> torch.Tensor:
    """(V, d) unembedding rows (``lm_head.weight``; tied embeddings included)."""
    return model.weights().W_U.T


def whiten(u: torch.Tensor, tol: float = DEFAULT_TOL):
    """(V, d) rows -> (g (V, d) float64, W (d, d), mean (d,), eigenvalues (d,), basis (d, kept))."""
    if not tol >= 0:
        raise InputError(f"tol must be a number >= 0, got {tol!r}.")
    x = u.double()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.T @ xc / (x.shape[0] - 1)
    ev, q = torch.linalg.eigh(cov)  # ascending
    keep = ev > tol
    if not keep.any():
        raise InputError(f"No eigenvalue of the unembedding covariance exceeds tol={tol}; lower tol.")
    qk = q[:, keep]
    w = qk @ torch.diag(ev[keep].rsqrt()) @ qk.T
    g = x @ w
    mean = g.mean(0)
    return g - mean, w, mean, ev, qk


_CACHE: dict[tuple, TokenSpace] = {}


def token_space(model, tol: float = DEFAULT_TOL, zero_pad: bool = True) -> TokenSpace:
    """The whitened token space of ``model`` (cached per model fingerprint and options).

    zero_pad: set the PAD row (the tokenizer's pad token, if it has one distinct from every real
    word piece) to 0, as the reference does; padded frame slots are masked anyway.
    """
    key = (model.fingerprint, id(model), model.weights_version, float(tol), bool(zero_pad))
    if key in _CACHE:
        return _CACHE[key]
    g, w, mean, ev, qk = whiten(unembedding(model), tol)
    vecs = g.float()
    pad = model.tokenizer.pad_token_id
    if zero_pad and pad is not None and 0 <= pad < vecs.shape[0]:
        vecs[pad] = 0.0
    ts = TokenSpace(model.info.name, model.fingerprint, vecs.contiguous(), w, mean, ev, qk, float(tol),
                    pad if zero_pad else None)
    if len(_CACHE) > 4:
        _CACHE.clear()
    _CACHE[key] = ts
    return ts


__all__ = ["TokenSpace", "token_space", "whiten", "unembedding", "DEFAULT_TOL"]
