"""Magnitude histograms of activations, for thresholds at a target sparsity.

TEAL's reference code builds a *signed* histogram and takes the threshold t = icdf(0.5 + s/2), which
is the right magnitude threshold only if the distribution is symmetric about zero. Here the two signs
are histogrammed separately, on a log grid of |x|, so the threshold can be read directly from the
magnitude distribution (t with P(|x| <= t) = s, no symmetry assumed), and TEAL's signed threshold can
be computed from the same data to show what the symmetry assumption costs (``signed_icdf``).

Grid: log10|x| in [LOG_MIN, LOG_MAX] with ``BINS`` bins (relative resolution 10^(15/16384) - 1 = 0.2%);
values below the grid (exact zeros included) fall in the first bin, counted as |x| = 0.
"""
from __future__ import annotations

import torch

LOG_MIN, LOG_MAX, BINS = -10.0, 5.0, 1 << 14


class MagnitudeHistogram:
    """Counts of |x| per log bin for positive and for negative values (float64 counts)."""

    def __init__(self):
        self.pos = torch.zeros(BINS, dtype=torch.float64)
        self.neg = torch.zeros(BINS, dtype=torch.float64)
        self.zeros = 0.0
        self.n = 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1).float()
        a = x.abs()
        nz = a > 0
        self.zeros += float((~nz).sum())
        self.n += x.numel()
        logs = a[nz].log10().clamp(LOG_MIN, LOG_MAX - 1e-6)
        sign = x[nz] > 0
        self.pos += torch.histc(logs[sign], BINS, LOG_MIN, LOG_MAX).double().cpu()
        self.neg += torch.histc(logs[~sign], BINS, LOG_MIN, LOG_MAX).double().cpu()

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _edge(i: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(10.0 ** (LOG_MIN + (LOG_MAX - LOG_MIN) * torch.as_tensor(i, dtype=torch.float64) / BINS))

    def _icdf(self, counts: torch.Tensor, zeros: float, q: float) -> float:
        """|x| threshold below which a fraction q of (zeros + counts) lies (log-linear inside a bin)."""
        total = zeros + float(counts.sum())
        target = q * total
        if target <= zeros:
            return 0.0
        cum = torch.cumsum(counts, 0) + zeros
        i = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)))
        i = min(i, BINS - 1)
        below = float(cum[i - 1]) if i > 0 else zeros
        frac = 0.0 if counts[i] == 0 else (target - below) / float(counts[i])
        return float(self._edge(i + min(max(frac, 0.0), 1.0)))

    def threshold(self, sparsity: float) -> float:
        """t with P(|x| <= t) = sparsity, from the magnitude distribution (no symmetry assumed)."""
        if sparsity <= 0:
            return 0.0
        return self._icdf(self.pos + self.neg, self.zeros, sparsity)

    def fraction_below(self, t: float) -> float:
        """P(|x| <= t) under this histogram (the sparsity threshold t gives)."""
        if t <= 0:
            return self.zeros / max(self.n, 1.0)
        pos = (torch.log10(torch.tensor(t, dtype=torch.float64)) - LOG_MIN) / (LOG_MAX - LOG_MIN) * BINS
        pos = float(pos.clamp(0, BINS))
        i = int(pos)
        both = self.pos + self.neg
        below = self.zeros + float(both[:i].sum()) + (float(both[i]) * (pos - i) if i < BINS else 0.0)
        return below / max(self.n, 1.0)

    def signed_icdf(self, p: float) -> float:
        """TEAL's threshold: the p-quantile of the *signed* values (used with p = 0.5 + s/2)."""
        total = self.n
        neg_total = float(self.neg.sum())
        target = p * total
        if target <= neg_total:  # among the negatives: largest |x| first
            rev = torch.flip(self.neg, [0])
            cum = torch.cumsum(rev, 0)
            i = min(int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64))), BINS - 1)
            return -float(self._edge(BINS - i))
        target -= neg_total
        return self._icdf(self.pos, self.zeros, target / max(self.zeros + float(self.pos.sum()), 1.0))

    def state(self) -> dict:
        return {"pos": self.pos, "neg": self.neg, "zeros": self.zeros, "n": self.n}
