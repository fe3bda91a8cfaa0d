"""GPTQ (Frantar et al., 2023): quantize a weight column by column, pushing each column's rounding error
onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

For a linear with weight W (out, in) and calibration inputs X (tokens, in), GPTQ minimizes the output
error ``‖X Wᵀ - X Ŵᵀ‖² = tr((W - Ŵ) H (W - Ŵ)ᵀ)`` with ``H = Xᵀ X``, greedily:

1. Dead inputs (H_ii = 0) get H_ii = 1 and a zero weight column.
2. Optional act-order: columns are visited by decreasing H_ii (the most active inputs first).
3. Damping ``H += damp · mean(diag H) · I``; ``U = chol(H⁻¹)ᵀ`` (upper Cholesky factor of the inverse).
4. For each column i: ``q_i = Q(w_i)`` on its grid, ``e_i = (w_i - q_i) / U_ii``, and the remaining columns
   of the block take ``w_j -= e_i U_ij``; after a block of columns, the later columns take the block's
   errors at once (``W[:, i2:] -= E U[i1:i2, i2:]``), which gives the same result as column by column.
5. Grids: per channel, from the whole row before any update (as in the reference). With groups, each
   group's grid is computed when its first column is reached, from the error-updated weights (blocks are
   a multiple of the group so a group never straddles blocks); with act-order the group grids are fixed from
   the original weights in the original column order ("static groups"), so the packed layout needs no
   column permutation.

With H = I every update is zero and GPTQ equals round-to-nearest (a test). ``quantize_gptq`` returns the
codes (a ``QuantizedWeight`` in the original column order) and the proxy losses of GPTQ and of RTN on the
same H.

The method (``gptq``) calibrates in ``prepare(model, texts)``: one forward pass over the calibration
windows, every linear quantized when its inputs arrive (``calibration.sequential_inputs``), so each layer is
calibrated on the inputs of the already-quantized layers before it. ``report`` holds, per linear, the
proxy loss of GPTQ against RTN on the calibration Hessian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import pandas as pd
import torch

from workbench.errors import InputError

from ..method import Knob
from ..registry import register_method
from .base import WeightQuantMethod, check_not_quantized, linear_sites
from .calibration import calibration_windows, sequential_inputs
from .grids import QuantizedWeight, check_group, codes_for, dequantize_codes, grid_params, quantize_weight


def proxy_loss(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - Wq) H (W - Wq)ᵀ) in float64: the summed squared output error on the inputs behind H."""
    D = (W.double() - Wq.double())
    return float(torch.einsum("oi,ij,oj->", D, H.double(), D))


def quantize_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, group: int | None = None, sym: bool = False,
                  block: int = 128, damp: float = 0.01, act_order: bool = False) -> tuple[QuantizedWeight, dict]:
    """GPTQ of W (out, in) against H (in, in) (module docstring); returns (codes, {"gptq_loss", "rtn_loss"})."""
    out, n = W.shape
    if tuple(H.shape) != (n, n):
        raise InputError(f"quantize_gptq(): H must be ({n}, {n}), got {tuple(H.shape)}.")
    check_group(group, n)
    if not isinstance(block, int) or block < 1:
        raise InputError(f"quantize_gptq(): block must be a positive integer, got {block!r}.")
    g = group or n
    W0 = W.detach().double().clone()
    Wd = W0.clone()
    H = H.detach().double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    Wd[:, dead] = 0.0
    static = group is None or act_order
    if static:  # grids from the original (dead-zeroed) weights, original column order
        s_all, z_all = grid_params(Wd.reshape(out, n // g, g), bits, sym)
    else:
        s_all = torch.empty(out, n // g, dtype=torch.float16, device=W.device)
        z_all = None if sym else torch.empty_like(s_all)
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(n, device=W.device)
    Wp, Hp = Wd[:, perm], H[perm][:, perm]
    Hp += damp * torch.diagonal(Hp).mean() * torch.eye(n, dtype=Hp.dtype, device=Hp.device)
    L = torch.linalg.cholesky(Hp)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    if not static:
        block = g * max(1, math.ceil(block / g))  # groups never straddle blocks
    codes = torch.empty(out, n, dtype=torch.uint8, device=W.device)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = Wp[:, i1:i2].clone()
        E = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            gi = int(perm[col]) // g
            if not static and int(perm[col]) % g == 0:
                s, z = grid_params(W1[:, i:i + g], bits, sym)
                s_all[:, gi] = s
                if z_all is not None:
                    z_all[:, gi] = z
            s = s_all[:, gi]
            z = None if z_all is None else z_all[:, gi]
            w = W1[:, i]
            q = codes_for(w[:, None], s, z, bits, sym)[:, 0]
            codes[:, col] = q
            err = (w - dequantize_codes(q[:, None], s, z, bits, sym)[:, 0].double()) / U[col, col]
            W1[:, i:] -= err[:, None] * U[col, i1 + i:i2][None, :]
            E[:, i] = err
        Wp[:, i2:] -= E @ U[i1:i2, i2:]
    inv = torch.argsort(perm)
    qw = QuantizedWeight(codes[:, inv].contiguous(), s_all, z_all, bits, group, bool(sym))
    rtn = quantize_weight(W0.float(), bits, group, sym).dequantize().double()
    return qw, {"gptq_loss": proxy_loss(W0, qw.dequantize().double(), H), "rtn_loss": proxy_loss(W0, rtn, H)}


@dataclass
class GPTQState:
    """What ``GPTQ.prepare`` computed: codes per linear, the weights they were computed from (a checksum per
    linear), and the report."""

    fingerprint: str
    quantized: dict
    checksums: dict
    report: pd.DataFrame


def checksum(w: torch.Tensor) -> float:
    return float(w.double().sum()) + float((w.double() ** 2).sum())


@register_method("gptq")
@dataclass
class GPTQ(WeightQuantMethod):
    """GPTQ weight quantization of every linear (module docstring); calibrate with ``prepare(model, texts)``."""

    act_order: bool = False
    damp: float = 0.01
    block: int = 128
    n_samples: int = 16
    seq_len: int | None = None
    exclude_sink: bool = False

    needs_calibration: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {
        **WeightQuantMethod.knobs,
        "act_order": Knob("bool", doc="Quantize the most active input columns first (static group grids)."),
        "damp": Knob("float", 0.0, 1.0, doc="Damping added to H's diagonal, as a fraction of its mean."),
        "block": Knob("int", 1, 4096, doc="Columns per lazy-update block (the result does not depend on it)."),
        "n_samples": Knob("int", 1, 4096, doc="Calibration windows (run as one batch)."),
        "seq_len": Knob("int", 2, 8192, optional=True,
                        doc="Tokens per calibration window (None: 512, fitted to the model's context and the texts)."),
        "exclude_sink": Knob("bool", doc="Leave each window's first token (the attention sink) out of H."),
    }
    state: GPTQState | None = field(default=None, init=False, repr=False, compare=False)

    def prepare(self, model, texts: Sequence[str] | None = None) -> None:
        """Calibrate on ``texts`` (module docstring); the model is left as it was."""
        self.check_model(model)
        check_not_quantized(model, self.label)
        ids = calibration_windows(model, texts, self.n_samples, self.seq_len, who=self.label)
        with model.edit_weights(label=f"calibrating {self.label}") as ed:
            self.state = self.calibrate(model, ed, ids)

    def calibrate(self, model, editor, ids, transforms=None) -> GPTQState:
        """GPTQ of every linear of ``model`` in one sequential pass over ``ids`` (N, T), each linear replaced by its
        quantized weight through ``editor`` as soon as it is done (so later layers see quantized inputs)."""
        quantized, sums, rows = {}, {}, []

        def handle(layer, kinds, X):
            H = X.t() @ X  # float32 accumulate of Σ x xᵀ
            for k in kinds:
                W = model.linear_weight(layer, k)
                sums[(layer, k)] = checksum(W)
                q, losses = quantize_gptq(W, H, self.bits, self.group, self.sym, self.block, self.damp, self.act_order)
                quantized[(layer, k)] = q
                editor.set_linear(layer, k, weight=q.dequantize(W.dtype))
                rows.append({"layer": layer, "kind": k, "tokens": X.shape[0], **losses})

        sequential_inputs(model, ids, handle, transforms, exclude_first=self.exclude_sink)
        missing = [s for s in linear_sites(model) if s not in quantized]
        if missing:
            raise RuntimeError(f"GPTQ calibration saw no inputs for {missing[:4]}: a hook did not fire.")
        report = pd.DataFrame(rows)
        report["ratio"] = report.gptq_loss / report.rtn_loss.where(report.rtn_loss > 0)
        return GPTQState(model.fingerprint, quantized, sums, report)

    @property
    def report(self) -> pd.DataFrame:
        """Per linear: calibration tokens, GPTQ and RTN proxy losses tr(ΔW H ΔWᵀ) and their ratio."""
        self._check_prepared()
        return self.state.report

    def _check_prepared(self, model=None) -> None:
        if self.state is None:
            raise InputError(f"{self.label} is not calibrated: call method.prepare(model, texts) first.")
        if model is not None and self.state.fingerprint != model.fingerprint:
            raise InputError(f"{self.label} was calibrated on another model; call prepare(model, texts) again.")

    def quantize_site(self, model, layer: int, kind: str, W: torch.Tensor) -> QuantizedWeight:
        self._check_prepared(model)
        key = (layer, kind)
        if key not in self.state.quantized:
            raise InputError(f"{self.label}: no calibrated codes for L{layer}.{kind}.")
        if checksum(W) != self.state.checksums[key]:
            raise InputError(f"{self.label} was calibrated on other weights for L{layer}.{kind} (the model is edited "
                             "differently now, e.g. rotated); call prepare(model, texts) again in the same state.")
        return self.state.quantized[key]

    def intervention(self, model):
        self._check_prepared(model)
        return super().intervention(model)
