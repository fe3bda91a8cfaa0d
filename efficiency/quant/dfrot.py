"""``dfrot``: DFRot (Xiang & Zhang, 2025): refine the randomized Hadamard rotation of QuaRot so that the rare
tokens with massive activations quantize well too.

Why: after the norm, a massive-activation token (on SmolLM2 the first token, whose residual carries a
~2·10⁴ value in dimension 507 from block 11 on) is nearly one-hot: ≈ 24 e₅₀₇ (the norm is √d = 24). A
randomized Hadamard maps a one-hot vector to a flat ±1 vector, which a symmetric per-token grid represents
almost exactly; a random orthogonal matrix spreads it into a Gaussian-looking vector with ordinary error. The
common tokens quantize about equally well under both. So the massive tokens decide between rotations.

What (the "alternating Procrustes" of the paper, on one calibration sample):

1. Run one window of ``calib_tokens`` tokens; stack the normalized inputs of every block's attention and MLP
   (``attn_in``, ``mlp_in``: gain-free, the rows the rotated linears will quantize): A (2 L T, d).
2. Massive rows: those where one coordinate carries at least ``massive_ratio`` of the row's norm
   (max|a_i| ≥ massive_ratio · ‖a‖). They are multiplied by ``alpha`` (a per-token grid is scale-equivariant,
   so this weights their squared error by alpha²): A_w.
3. From R = R₀ (randomized Hadamard, ``seed``), repeat up to ``n_iters`` times: B = Q(A_w R) (per-token
   ``a_bits`` quantization, the method's grid); R' = U Vᵀ from the SVD of A_wᵀ B (orthogonal Procrustes:
   the rotation taking A_w closest to its quantized image); accept R' if the loss ‖Q(A_w R) - A_w R‖²
   drops by more than ``tol`` (relative), else stop. The loss never increases (a test).
4. R replaces the randomized Hadamard as the residual rotation; the rest is QuaRot (``wa_quant``):
   per-head V/O Hadamard, online Hadamard before down_proj, weight and activation grids, KV by KIVI.

``state["refinement"]``: the loss history and the per-token error on massive and on other rows under R₀ and R.
Calibration text: any text (pass one sample's worth); evaluate on text from another source.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from workbench.errors import InputError

from ..method import Knob
from ..registry import register_method
from .base import check_not_quantized
from .calibration import calibration_windows
from .grids import quantize_tokens, token_error
from .hadamard import check_orthogonal
from .rotation import residual_rotation
from .wa_quant import WAQuant


def massive_rows(A: torch.Tensor, ratio: float) -> torch.Tensor:
    """(n,) bool: rows of A (n, d) where one coordinate holds at least ``ratio`` of the row's norm."""
    return A.abs().amax(-1) >= ratio * A.norm(dim=-1)


def quant_loss(X: torch.Tensor, bits: int, sym: bool, clip: float) -> float:
    return float((quantize_tokens(X, bits, sym, clip) - X).double().pow(2).sum())


def refine_rotation(A: torch.Tensor, R0: torch.Tensor, bits: int, sym: bool = True, clip: float = 1.0,
                    alpha: float = 100.0, massive: torch.Tensor | None = None, n_iters: int = 100,
                    tol: float = 1e-4) -> tuple[torch.Tensor, list[float]]:
    """Alternating Procrustes (module docstring, step 3). A (n, d) rows, R0 (d, d) orthogonal.
    Returns (R (d, d) float64 orthogonal, loss history with one entry per accepted rotation)."""
    Aw = A.detach().float().clone()
    if massive is not None:
        Aw[massive] *= alpha
    R = R0.double()
    X = Aw @ R.float()
    loss = quant_loss(X, bits, sym, clip)
    hist = [loss]
    for _ in range(n_iters):
        B = quantize_tokens(X, bits, sym, clip)
        M = (Aw.t() @ B).double()
        U, _, Vh = torch.linalg.svd(M)
        Rn = U @ Vh
        Xn = Aw @ Rn.float()
        ln = quant_loss(Xn, bits, sym, clip)
        if not ln < loss * (1 - tol):
            break
        R, X, loss = Rn, Xn, ln
        hist.append(loss)
    # re-orthogonalize in float64 (the SVD factors are orthogonal to rounding)
    q, r = torch.linalg.qr(R)
    R = q * torch.sign(torch.diagonal(r))[None, :]
    return check_orthogonal(R, "the refined rotation", 1e-8), hist


@register_method("dfrot")
@dataclass
class DFRot(WAQuant):
    """QuaRot with the residual rotation refined on one calibration sample (module docstring)."""

    rotation: str = "rh"
    online_had: bool = True
    alpha: float = 100.0
    massive_ratio: float = 0.9
    n_iters: int = 100
    calib_tokens: int | None = None

    knobs: ClassVar[dict[str, Knob]] = {
        **WAQuant.knobs,
        "rotation": Knob("choice", choices=("rh",), doc="Starting rotation (randomized Hadamard)."),
        "alpha": Knob("float", 1.0, 1e6, doc="Weight of the massive-activation rows."),
        "massive_ratio": Knob("float", 0.0, 1.0, doc="A row is massive if one coordinate holds this share of its norm."),
        "n_iters": Knob("int", 0, 10000, doc="Most Procrustes steps."),
        "calib_tokens": Knob("int", 2, 8192, optional=True,
                             doc="Tokens of the one calibration sample (None: 512, fitted to the model's context and the texts)."),
    }
    needs_calibration: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if self.a_bits is None:
            raise InputError("dfrot refines the rotation for activation quantization: a_bits must be set (4 or 8).")

    def prepare(self, model, texts: Sequence[str] | None = None) -> None:
        """Refine the rotation on one window of ``texts``, then calibrate GPTQ (weights="gptq") on the rotated model."""
        self.check_model(model)
        check_not_quantized(model, self.label)
        ids = calibration_windows(model, texts, 1, self.calib_tokens, who=self.label)
        L = model.info.n_layers
        run = model.run(ids, capture=["attn_in", "mlp_in"], logits=None)
        A = torch.cat([run[site, l][0] for l in range(L) for site in ("attn_in", "mlp_in")]).float()
        massive = massive_rows(A, self.massive_ratio)
        R0 = residual_rotation(model.info.d_model, "rh", self.seed).matrix().to(A.device)
        R, hist = refine_rotation(A, R0, self.a_bits, self.a_sym, self.a_clip, self.alpha, massive, self.n_iters)
        errs = {}
        for name, M in (("rh", R0), ("dfrot", R)):
            e = token_error(A @ M.float(), self.a_bits, self.a_sym, self.a_clip)
            errs[name] = {"massive": float(e[massive].mean()) if massive.any() else float("nan"),
                          "other": float(e[~massive].mean())}
        self.state = {"rotation": R.cpu(), "refinement": {"losses": hist, "n_rows": int(A.shape[0]),
                                                          "n_massive": int(massive.sum()), "token_error": errs}}
        if self.calibrates:
            super().prepare(model, texts)

    def residual_matrix(self, model) -> torch.Tensor:
        if not self.state or "rotation" not in self.state:
            raise InputError(f"{self.label} is not calibrated: call method.prepare(model, texts) first (one sample "
                             "of text is enough).")
        R = self.state["rotation"]
        if R.shape[0] != model.info.d_model:
            raise InputError(f"{self.label} was calibrated on a model with d_model={R.shape[0]}; call prepare again.")
        return R
