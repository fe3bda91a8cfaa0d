"""Active versus dormant attention heads per text domain (Guo et al., 2024).

For each head and domain D, two numbers:

- sink mass m_0: mean attention the head puts on position 0, averaged over the queries
  q >= ``skip_queries`` of each text (``AttentionSummary.received[b, h, 0]``, padding excluded),
  then over the domain's texts;
- ΔCE: mean next-token cross-entropy (nats per predicted token, real positions only, pooled over
  the domain's texts) with the head zero-ablated (``HeadAblation``, its z slice before the output
  projection set to 0) minus the clean one.

Labels (our rule, not the paper's; see docs/sinks.md): **dormant** on D if
m_0 > ``dormant_mass`` and |ΔCE| < ``dormant_dce`` (it sinks and removing it barely matters);
**active** if m_0 <= ``dormant_mass`` and ΔCE >= ``dormant_dce`` (it does not sink and removing it
hurts); **mixed** otherwise. The report keeps both numbers, and per domain the Spearman
correlation between sink mass and |ΔCE| over the analysed heads.

Cost: one clean forward per domain (batched texts, attention summaries instead of patterns) and
one ablated forward per head and domain. On SmolLM2 (270 heads) pass ``heads=30`` for 30 random
heads, or a list of (layer, head).
"""
from __future__ import annotations

import html
import random
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from interventions.ablation import HeadAblation
from workbench.result import Result
from workbench.errors import InputError
from workbench.progress import progress

from workbench.texts.domains import load_domain

LABELS = ("dormant", "active", "mixed")


def label_head(sink_mass: float, dce: float, dormant_mass: float = 0.7, dormant_dce: float = 0.005) -> str:
    """'dormant', 'active' or 'mixed' for one head on one domain (NaN inputs give 'mixed')."""
    if sink_mass > dormant_mass and abs(dce) < dormant_dce:
        return "dormant"
    if sink_mass <= dormant_mass and dce >= dormant_dce:
        return "active"
    return "mixed"


def token_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, lengths: Sequence[int]) -> tuple[float, int]:
    """(sum of next-token CE in nats, number of predicted tokens) over the real positions.

    logits: (B, T, V); tokens: (B, T) right-padded ids; lengths: real length of each row. Row b
    contributes the predictions at positions 0..lengths[b]-2 of tokens 1..lengths[b]-1.
    """
    total, count = 0.0, 0
    for b, n in enumerate(lengths):
        if n < 2:
            continue
        lg = logits[b, : n - 1].double()  # (n-1, V)
        tgt = tokens[b, 1:n].to(lg.device)  # (n-1,)
        total += float((torch.logsumexp(lg, -1) - lg.gather(1, tgt[:, None])[:, 0]).sum())
        count += n - 1
    return total, count


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x[ok], y[ok]).statistic)


@dataclass
class ActiveDormantReport(Result):
    """Per-head, per-domain sink mass and loss change under zero-ablation.

    heads: the N analysed (layer, head) pairs; domains: the D domain names.
    sink_mass: (N, D) mean attention on position 0 (queries >= skip_queries, mean over texts).
    dce: (N, D) ablated minus clean mean next-token cross-entropy, nats.
    clean_ce: (D,) clean mean cross-entropy per domain, nats; n_tokens: (D,) predicted tokens.
    spearman: domain -> Spearman rho between sink mass and |ΔCE| over the heads (NaN if < 3 heads).
    """

    model_name: str
    heads: list[tuple[int, int]]
    domains: list[str]
    sink_mass: np.ndarray
    dce: np.ndarray
    clean_ce: np.ndarray
    n_tokens: np.ndarray
    n_texts: list[int]
    skip_queries: int
    dormant_mass: float
    dormant_dce: float
    spearman: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """(N, D) array of 'dormant' / 'active' / 'mixed'."""
        out = np.empty(self.sink_mass.shape, dtype=object)
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] = label_head(self.sink_mass[i, j], self.dce[i, j], self.dormant_mass, self.dormant_dce)
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per head and domain: layer, head, name, domain, sink_mass, dce, abs_dce, label."""
        labels = self.labels
        rows = []
        for i, (l, h) in enumerate(self.heads):
            for j, d in enumerate(self.domains):
                rows.append({"layer": l, "head": h, "name": f"L{l}H{h}", "domain": d,
                             "sink_mass": float(self.sink_mass[i, j]), "dce": float(self.dce[i, j]),
                             "abs_dce": abs(float(self.dce[i, j])), "label": labels[i, j]})
        return pd.DataFrame(rows)

    def wide(self) -> pd.DataFrame:
        """One row per head; sink mass, ΔCE and label per domain as columns."""
        return self.to_frame().pivot(index="name", columns="domain", values=["sink_mass", "dce", "label"])

    def figure(self):
        """Scatter of sink mass (x) against ΔCE (y), one colour per domain; hover names the head."""
        import plotly.graph_objects as go

        fig = go.Figure()
        labels = self.labels
        names = [f"L{l}H{h}" for l, h in self.heads]
        for j, d in enumerate(self.domains):
            rho = self.spearman.get(d, float("nan"))
            fig.add_scatter(
                x=self.sink_mass[:, j], y=self.dce[:, j], mode="markers", name=f"{d} (ρ = {rho:.2f})",
                text=names, customdata=labels[:, j].tolist(),
                hovertemplate="%{text}<br>sink mass %{x:.3f}<br>ΔCE %{y:+.4f} nats<br>%{customdata}"
                              f"<extra>{html.escape(d)}</extra>")
        fig.add_vline(x=self.dormant_mass, line_dash="dot", line_color="gray")
        for y in (-self.dormant_dce, self.dormant_dce):
            fig.add_hline(y=y, line_dash="dot", line_color="gray")
        fig.update_layout(
            title=f"Active vs dormant heads ({self.model_name}, {len(self.heads)} heads): sink mass vs loss change "
                  "under zero-ablation",
            xaxis_title=f"attention on position 0 (queries ≥ {self.skip_queries})",
            yaxis_title="ΔCE (nats per token, ablated − clean)", template="plotly_white", legend_title="domain")
        return fig

    def __repr__(self) -> str:
        labels = self.labels
        lines = [f"ActiveDormantReport({self.model_name}, {len(self.heads)} heads, domains {self.domains}; "
                 f"dormant: m0 > {self.dormant_mass} and |ΔCE| < {self.dormant_dce})"]
        for j, d in enumerate(self.domains):
            counts = {k: int((labels[:, j] == k).sum()) for k in LABELS}
            lines.append(f"  {d}: clean CE {self.clean_ce[j]:.3f} over {int(self.n_tokens[j])} tokens; "
                         f"{counts}; Spearman(sink mass, |ΔCE|) = {self.spearman.get(d, float('nan')):+.3f}")
        return "\n".join(lines)


def _resolve_domains(domains) -> dict[str, list[str]]:
    if isinstance(domains, str):
        domains = [domains]
    if isinstance(domains, Mapping):
        out = {str(k): v for k, v in domains.items()}
    else:
        names = list(domains)
        if not all(isinstance(n, str) for n in names):
            raise InputError("domains must be a mapping {name: [texts]} or a list of bundled domain names.")
        out = {n: load_domain(n) for n in names}
    if not out:
        raise InputError("No domains given: pass e.g. {'prose': [...], 'code': [...]} or ['prose', 'code'].")
    for name, texts in out.items():
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError(f"Domain {name!r} is empty: give it at least one text.")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"Domain {name!r}: text {i} is not a non-empty string.")
        out[name] = texts
    return out


def _resolve_heads(model, heads, seed: int) -> list[tuple[int, int]]:
    info = model.info
    everything = [(l, h) for l in range(info.n_layers) for h in range(info.n_heads)]
    if heads is None:
        return everything
    if isinstance(heads, int) and not isinstance(heads, bool):
        if not 1 <= heads <= len(everything):
            raise InputError(f"heads={heads}: ask for 1..{len(everything)} random heads.")
        return sorted(random.Random(seed).sample(everything, heads))
    out = []
    for pair in heads:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"Each head must be a (layer, head) pair, got {pair!r}.")
        l, h = model.check_layer(pair[0]), model.check_heads(pair[1])[0]
        if (l, h) not in out:
            out.append((l, h))
    if not out:
        raise InputError("The head list is empty.")
    return out


def active_dormant(model, domains=("prose", "code"), heads=None, skip_queries: int = 4,
                   dormant_mass: float = 0.7, dormant_dce: float = 0.005, seed: int = 0) -> ActiveDormantReport:
    """Sink mass and zero-ablation ΔCE for each head on each domain; see the module docstring.

    domains: {name: [texts]} or bundled names (``workbench.texts.domains.DOMAINS``). heads: None (all),
    an int (that many random heads, drawn with ``seed``) or a list of (layer, head).
    Every text needs more than ``skip_queries`` tokens.
    """
    doms = _resolve_domains(domains)
    pairs = _resolve_heads(model, heads, seed)
    if not isinstance(skip_queries, int) or isinstance(skip_queries, bool) or skip_queries < 0:
        raise InputError(f"skip_queries must be a non-negative integer, got {skip_queries!r}.")
    layers = sorted({l for l, _ in pairs})
    n, d = len(pairs), len(doms)
    sink = np.full((n, d), np.nan)
    dce = np.full((n, d), np.nan)
    clean_ce, n_tok = np.zeros(d), np.zeros(d, dtype=int)
    for j, (name, texts) in enumerate(doms.items()):
        _, lengths = model.tokenize(texts)
        short = [i for i, k in enumerate(lengths) if k <= max(skip_queries, 1)]
        if short:
            raise InputError(f"Domain {name!r}: text {short[0]} has {lengths[short[0]]} tokens; each text needs more "
                             f"than skip_queries={skip_queries} (and at least 2) tokens.")
        clean = model.run(texts, capture=["pattern"], layers=layers, attention="summary",
                          skip_queries=skip_queries, logits="all")
        total, count = token_cross_entropy(clean.logits, clean.tokens, clean.lengths)
        clean_ce[j], n_tok[j] = total / count, count
        for i, (l, h) in enumerate(pairs):
            sink[i, j] = float(torch.nanmean(clean.summaries[l].received[:, h, 0]))
        del clean
        for i, (l, h) in enumerate(progress(pairs, desc=f"ablate heads ({name})", unit="head")):
            run = model.run(texts, logits="all", interventions=[HeadAblation(l, h)])
            dce[i, j] = token_cross_entropy(run.logits, run.tokens, run.lengths)[0] / count - clean_ce[j]
    rho = {name: _spearman(sink[:, j], np.abs(dce[:, j])) for j, name in enumerate(doms)}
    return ActiveDormantReport(model.info.name, pairs, list(doms), sink, dce, clean_ce, n_tok,
                               [len(t) for t in doms.values()], skip_queries, dormant_mass, dormant_dce, rho)
