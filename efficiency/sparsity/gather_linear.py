"""A linear whose input is thresholded (TEAL), with a gather-GEMV that reads only the kept weight columns.

``SparseInputLinear(weight (out, in), bias, threshold, mode)`` computes ``W (x * 1[|x| > t]) + b``.

- mode "gather": for a single token (decode, one row), only the inputs that survive the threshold are
  used: y = sum_{i in idx} x_i W[:, i] (+ b), read from the transposed weight stored row-contiguous
  (in, out), so the kept columns are contiguous rows. ``torch.nn.functional.embedding_bag`` with
  per-sample weights does exactly this in one pass without materializing W[:, idx]. Several rows
  (prefill) take the masked dense product: different tokens keep different inputs, so gathering does
  not pay there.
- mode "mask": always the masked dense product (the same numbers, no speed-up: simulation).

``count=True`` accumulates the kept and seen input counts (``kept_fraction``), for measured sparsity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import InputError

MODES = ("gather", "mask")


class SparseInputLinear(nn.Module):
    """y = W (x * 1[|x| > threshold]) + b, weight stored transposed (in, out) for the gather path."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, threshold: float, mode: str = "gather"):
        super().__init__()
        if mode not in MODES:
            raise InputError(f"SparseInputLinear: mode must be one of {MODES}, got {mode!r}.")
        if weight.ndim != 2:
            raise InputError(f"SparseInputLinear: weight must be (out, in), got shape {tuple(weight.shape)}.")
        if not float(threshold) >= 0:
            raise InputError(f"SparseInputLinear: threshold must be >= 0, got {threshold!r}.")
        self.weight_t = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)  # (in, out)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.threshold = float(threshold)
        self.mode = mode
        self.count = False
        self.kept = 0
        self.seen = 0

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) view of the stored weight (what analyses read)."""
        return self.weight_t.t()

    @property
    def in_features(self) -> int:
        return self.weight_t.shape[0]

    @property
    def out_features(self) -> int:
        return self.weight_t.shape[1]

    @property
    def kept_fraction(self) -> float:
        return self.kept / max(self.seen, 1)

    def reset_counts(self) -> None:
        self.kept = self.seen = 0

    def gather_gemv(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """(in,) -> (out,): the weight rows of the kept inputs ``idx`` (default: |x| > threshold), each scaled by
        its input, summed."""
        if idx is None:
            idx = (x.abs() > self.threshold).nonzero().squeeze(1)
        y = F.embedding_bag(idx[None], self.weight_t, per_sample_weights=x.index_select(0, idx)[None], mode="sum")[0]
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "gather" and x.numel() == x.shape[-1]:  # one token: gather-GEMV
            xs = x.reshape(-1)
            idx = (xs.abs() > self.threshold).nonzero().squeeze(1)
            if self.count:
                self.kept += idx.numel()
                self.seen += xs.numel()
            return self.gather_gemv(xs, idx).reshape(*x.shape[:-1], self.out_features)
        mask = x.abs() > self.threshold
        if self.count:
            self.kept += int(mask.sum())
            self.seen += mask.numel()
        return F.linear(x * mask, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold:.4g}, mode={self.mode}"
