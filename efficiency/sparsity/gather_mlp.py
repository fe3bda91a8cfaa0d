"""A SwiGLU MLP with TEAL thresholds whose decode path gathers gate and up in one pass.

gate and up read the same input, and under a uniform allocation they share its threshold, so their
kept columns are the same: stored side by side, transposed, as one (in, 2 f) matrix, one gather-GEMV
reads both (half the per-row overhead of two). Then h = silu(g) * u, thresholded, and the down
projection is a second gather-GEMV. Several tokens (prefill) take the masked dense products.

Installed with ``replace_component(layer, "mlp", ...)``: the MLP's inner hooks (``mlp_pre``,
``mlp_hidden``) cannot fire while it holds (``mlp_out`` does); ``TEAL(fuse_mlp=True)`` uses it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import InputError


class SparseGatedMLP(nn.Module):
    """down(t_down(silu(gate(t_in(x))) * up(t_in(x)))) with the gather paths described above."""

    def __init__(self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, t_in: float, t_down: float):
        super().__init__()
        f, d = w_gate.shape
        if w_up.shape != (f, d) or w_down.shape != (d, f):
            raise InputError(f"SparseGatedMLP: need gate/up (f, d) and down (d, f), got {tuple(w_gate.shape)}, "
                             f"{tuple(w_up.shape)}, {tuple(w_down.shape)}.")
        self.w_gu_t = nn.Parameter(torch.cat([w_gate.detach().t(), w_up.detach().t()], 1).contiguous(),
                                   requires_grad=False)  # (d, 2f)
        self.w_down_t = nn.Parameter(w_down.detach().t().contiguous(), requires_grad=False)  # (f, d)
        self.t_in, self.t_down, self.f = float(t_in), float(t_down), f
        self.count = False
        self.kept = {"in": 0, "down": 0}
        self.seen = {"in": 0, "down": 0}

    def _count(self, which: str, kept: int, seen: int) -> None:
        if self.count:
            self.kept[which] += kept
            self.seen[which] += seen

    @staticmethod
    def _gather(x: torch.Tensor, w_t: torch.Tensor, t: float) -> tuple[torch.Tensor, int]:
        idx = (x.abs() > t).nonzero().squeeze(1)
        y = F.embedding_bag(idx[None], w_t, per_sample_weights=x.index_select(0, idx)[None], mode="sum")[0]
        return y, idx.numel()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        d = x.shape[-1]
        if x.numel() == d:  # one token: two gather-GEMVs
            gu, k = self._gather(x.reshape(-1), self.w_gu_t, self.t_in)
            self._count("in", k, d)
            h = F.silu(gu[: self.f]) * gu[self.f:]
            y, k2 = self._gather(h, self.w_down_t, self.t_down)
            self._count("down", k2, self.f)
            return y.reshape(x.shape)
        m_in = x.abs() > self.t_in
        gu = (x * m_in) @ self.w_gu_t
        h = F.silu(gu[..., : self.f]) * gu[..., self.f:]
        m_dn = h.abs() > self.t_down
        if self.count:
            self._count("in", int(m_in.sum()), m_in.numel())
            self._count("down", int(m_dn.sum()), m_dn.numel())
        return (h * m_dn) @ self.w_down_t

    def extra_repr(self) -> str:
        return f"d={self.w_gu_t.shape[0]}, f={self.f}, t_in={self.t_in:.4g}, t_down={self.t_down:.4g}"


class FusedSiteView:
    """The counters of one input site ("in" for gate/up, "down") of a ``SparseGatedMLP``, read like a
    ``SparseInputLinear``'s (``threshold``, ``kept_fraction``, ``seen``, ``count``, ``reset_counts``)."""

    def __init__(self, mlp: SparseGatedMLP, site: str):
        self.mlp, self.site = mlp, site

    @property
    def threshold(self) -> float:
        return self.mlp.t_in if self.site == "in" else self.mlp.t_down

    @property
    def count(self) -> bool:
        return self.mlp.count

    @count.setter
    def count(self, on: bool) -> None:
        self.mlp.count = on

    @property
    def seen(self) -> int:
        return self.mlp.seen[self.site]

    @property
    def kept_fraction(self) -> float:
        return self.mlp.kept[self.site] / max(self.mlp.seen[self.site], 1)

    def reset_counts(self) -> None:
        self.mlp.kept[self.site] = self.mlp.seen[self.site] = 0
