"""Factual-recall mechanisms from DLA over a prompt set (see ``docs/factual.md``).

**Head classes** (``classify_heads``). For head (l, h) let S, R, E, O be its DLA from subject
tokens, relation tokens, the last token itself and all other tokens (``DLAResult.source_groups``,
metric "diff" by default: answer minus the mean of the relation's other candidates), averaged over
the prompts. With SR = |S| + |R|:

- ``minor``: max(SR, |E|, |O|) < ``min_effect`` (default 0.1 logit);
- ``last``: |E| > SR and |E| >= |O| (the head mostly reads the token it sits on);
- ``other``: |O| > SR and |O| > |E| (neither group nor the last token; the table splits out the
  part read from position 0, the attention sink);
- ``subject``: |S| / SR >= ``share`` (default 0.7); ``relation``: |R| / SR >= ``share``;
- ``mixed``: otherwise (both groups contribute).

The last token never counts as relation (nor subject), whatever the spans cover, so a relation
head reads the relation words. This is our operationalisation, not the paper's exact criterion.

**Additive motif** (``additive_motif``). Per prompt, the DLA of every candidate of the relation
is summed over five groups: subject heads (whole head DLA), relation heads (whole), mixed heads'
subject part, mixed heads' relation part, and all MLPs. For each group alone and for their sum, the
rank of the correct candidate (0 = top; ties count against it) is reported (NaN for a group
with no head), and the *constructive-interference rate*: the fraction of prompts where the sum
ranks the answer first but no single group does.

**Suppression** (``suppressive_heads``, ``suppression_effect``). Heads of the last layers whose
mean DLA on the answer logit is below ``threshold`` are scaled by α via ``HeadScale`` (the head's
z slice is multiplied by α at every position, so its output α·head) and the answer probability is
measured over the prompts, α = 1 being the clean run.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from interventions.head_scale import HeadScale
from workbench.errors import InputError

from .dla import DLAResult

CLASSES = ("subject", "relation", "mixed", "last", "other", "minor")
CLASS_COLOURS = {"subject": "#d62728", "relation": "#1f77b4", "mixed": "#9467bd", "last": "#2ca02c",
                 "other": "#7f7f7f", "minor": "#c7c7c7"}
MOTIF_GROUPS = ("subject heads", "relation heads", "mixed: subject part", "mixed: relation part", "MLPs")


def _check_results(results) -> list[DLAResult]:
    results = list(results)
    if not results:
        raise InputError("No DLA results given: run direct_logit_attribution_many on at least one prompt.")
    shapes = {r.heads.shape[:2] for r in results}
    if len(shapes) != 1 or not all(isinstance(r, DLAResult) for r in results):
        raise InputError("All results must be DLAResults of the same model.")
    return results


# ---------------------------------------------------------------------- head classes
@dataclass
class HeadClassification:
    """Mean per-source DLA of every head over ``n_prompts`` prompts and its class.

    subject, relation, last, other: (L, H) mean DLA from each source group (``last``: the final
    token itself); labels: (L, H) class names; first: (L, H) the part of ``other`` read from
    position 0 (the attention sink).
    """

    model_name: str
    metric: str
    n_prompts: int
    subject: np.ndarray
    relation: np.ndarray
    last: np.ndarray
    other: np.ndarray
    labels: np.ndarray
    min_effect: float
    share: float
    first: np.ndarray | None = None  # (L, H) the part of ``other`` read from position 0 (the sink)

    def heads_of(self, cls: str) -> list[tuple[int, int]]:
        if cls not in CLASSES:
            raise InputError(f"Unknown head class {cls!r}; classes: {CLASSES}.")
        return [(int(l), int(h)) for l, h in zip(*np.nonzero(self.labels == cls))]

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == c).sum()) for c in CLASSES}

    def to_frame(self) -> pd.DataFrame:
        """One row per head, sorted by |subject| + |relation| + |last| + |other| (largest first)."""
        L, H = self.labels.shape
        e = np.abs(self.subject) + np.abs(self.relation)
        rows = [{"head": f"L{l}H{h}", "layer": l, "index": h, "class": self.labels[l, h],
                 "subject": self.subject[l, h], "relation": self.relation[l, h], "last": self.last[l, h],
                 "other": self.other[l, h],
                 "subject_share": self.subject[l, h].__abs__() / e[l, h] if e[l, h] > 0 else np.nan,
                 "other_from_position_0": np.nan if self.first is None else self.first[l, h]}
                for l in range(L) for h in range(H)]
        df = pd.DataFrame(rows)
        size = df["subject"].abs() + df["relation"].abs() + df["last"].abs() + df["other"].abs()
        order = size.sort_values(ascending=False).index
        return df.loc[order].reset_index(drop=True)

    def figure(self, title: str | None = None, label_top: int = 8):
        """Scatter of heads: mean DLA from subject tokens (x) versus relation tokens (y), by class."""
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for c in CLASSES:
            d = df[df["class"] == c]
            if d.empty:
                continue
            fig.add_trace(go.Scatter(
                x=d["subject"], y=d["relation"], mode="markers", name=f"{c} ({len(d)})",
                marker=dict(color=CLASS_COLOURS[c], size=8 if c != "minor" else 5, line=dict(width=0)),
                text=d["head"], customdata=d[["last", "other"]].to_numpy(),
                hovertemplate="%{text}<br>subject %{x:+.3f}<br>relation %{y:+.3f}<br>last token "
                              "%{customdata[0]:+.3f}<br>other %{customdata[1]:+.3f}<extra></extra>"))
        top = df[df["class"] != "minor"].head(label_top)
        for _, r in top.iterrows():
            fig.add_annotation(x=r["subject"], y=r["relation"], text=r["head"], showarrow=False, yshift=10,
                               font=dict(size=10))
        fig.add_hline(y=0, line=dict(color="gray", width=1))
        fig.add_vline(x=0, line=dict(color="gray", width=1))
        fig.update_layout(template="plotly_white", width=720, height=560,
                          title=title or f"Heads: DLA ({self.metric}) from subject vs relation tokens, mean over "
                                         f"{self.n_prompts} prompts ({self.model_name})",
                          xaxis_title="from subject tokens", yaxis_title="from relation tokens")
        return fig

    def __repr__(self) -> str:
        c = self.counts()
        top = ", ".join(f"{r['head']} ({r['class']}, S {r['subject']:+.2f} R {r['relation']:+.2f})"
                        for _, r in self.to_frame().head(5).iterrows())
        return (f"HeadClassification({self.n_prompts} prompts, metric {self.metric}, min_effect {self.min_effect}, "
                f"share {self.share}: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f")\n  top: {top}")

    def _repr_html_(self) -> str:
        df = self.to_frame()
        return (f"<pre>{html.escape(repr(self))}</pre>"
                + df[df["class"] != "minor"].head(15).to_html(index=False, float_format=lambda v: f"{v:+.3f}"))


def classify_heads(results: Sequence[DLAResult], metric: str = "diff", min_effect: float = 0.1,
                   share: float = 0.7) -> HeadClassification:
    """Classify every head from its mean per-source DLA over ``results`` (see the module docstring)."""
    results = _check_results(results)
    if not 0.5 < share <= 1:
        raise InputError(f"share must lie in (0.5, 1], got {share!r}.")
    if min_effect < 0:
        raise InputError(f"min_effect must be >= 0, got {min_effect!r}.")
    g = np.mean([r.source_groups(metric) for r in results], 0)  # (L, H, 4): subject, relation, last, other
    s, rl, last, o = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
    e = np.abs(s) + np.abs(rl)
    labels = np.full(s.shape, "mixed", dtype=object)
    safe = np.where(e > 0, e, 1)
    labels[np.abs(s) / safe >= share] = "subject"
    labels[np.abs(rl) / safe >= share] = "relation"
    labels[(np.abs(o) > e) & (np.abs(o) > np.abs(last))] = "other"
    labels[(np.abs(last) > e) & (np.abs(last) >= np.abs(o))] = "last"
    labels[np.maximum.reduce([e, np.abs(last), np.abs(o)]) < min_effect] = "minor"
    mi = ("logit", "diff").index(metric)
    # position 0 belongs to "other" unless it is a subject/relation token or the only (last) token
    first = np.mean([r.sources[mi][..., 0] * (0 not in {*r.subject_positions, *r.relation_positions, r.last_position})
                     for r in results], 0)
    return HeadClassification(results[0].model_name, metric, len(results), s, rl, last, o, labels.astype(str),
                              min_effect, share, first)


# ---------------------------------------------------------------------- additive motif
def _rank(x: np.ndarray) -> int:
    """Rank of x[0] among x (0 = largest; ties count against the answer)."""
    return int((x[1:] >= x[0]).sum())


def motif_group_dla(r: DLAResult, cls: HeadClassification) -> dict[str, np.ndarray]:
    """{group: (K,) DLA of every target} for the five motif groups and their sum."""
    lab = cls.labels
    out = {
        "subject heads": r.heads[lab == "subject"].sum(0),
        "relation heads": r.heads[lab == "relation"].sum(0),
        "mixed: subject part": r.groups[lab == "mixed"][:, 0].sum(0),
        "mixed: relation part": r.groups[lab == "mixed"][:, 1].sum(0),
        "MLPs": r.mlps.sum(0),
    }
    out["sum"] = sum(out[g] for g in MOTIF_GROUPS)
    return out


@dataclass
class MotifTable:
    """Per prompt: rank of the answer among the candidates under each motif group, the sum and the model."""

    per_prompt: pd.DataFrame  # id, relation, n_candidates, rank[<group>] ..., rank[sum], rank[model], interference
    n_candidates_min: int

    @property
    def interference_rate(self) -> float:
        """Fraction of prompts top-1 under the sum of the groups but under no single group."""
        return float(self.per_prompt["interference"].mean())

    def to_frame(self) -> pd.DataFrame:
        """One row per group (+ sum, model): top-1 rate, mean and median rank of the answer."""
        d = self.per_prompt
        rows = []
        for g in list(MOTIF_GROUPS) + ["sum", "model"]:
            col = d[f"rank[{g}]"].astype(float)
            top1 = float((col == 0).mean()) if col.notna().any() else np.nan
            rows.append({"group": g, "top1_rate": top1, "mean_rank": float(col.mean()),
                         "median_rank": float(col.median())})
        rows.append({"group": "only the sum is top-1", "top1_rate": self.interference_rate,
                     "mean_rank": np.nan, "median_rank": np.nan})
        return pd.DataFrame(rows)

    def by_relation(self) -> pd.DataFrame:
        """Top-1 rate of each group per relation, and the interference rate."""
        d = self.per_prompt
        cols = [f"rank[{g}]" for g in list(MOTIF_GROUPS) + ["sum", "model"]]
        ranks = d[cols].astype(float)
        t = (ranks == 0).where(ranks.notna()).groupby(d["relation"]).mean()
        t.columns = [c[5:-1] for c in cols]
        t["only the sum"] = d.groupby("relation")["interference"].mean()
        t["n"] = d.groupby("relation").size()
        return t

    def figure(self, title: str | None = None):
        """Bars: how often the answer is the top candidate under each group alone, their sum, the model."""
        import plotly.graph_objects as go

        t = self.to_frame()
        colours = ["#d62728", "#1f77b4", "#e377c2", "#17becf", "#f58518", "#2ca02c", "#7f7f7f", "#bcbd22"]
        fig = go.Figure(go.Bar(x=t["group"], y=t["top1_rate"], marker_color=colours[:len(t)],
                               customdata=t[["mean_rank"]].to_numpy(),
                               hovertemplate="%{x}<br>answer top-1 among candidates: %{y:.1%}"
                                             "<br>mean rank %{customdata[0]:.2f}<extra></extra>"))
        fig.update_layout(template="plotly_white", width=820, height=420, yaxis=dict(title="answer ranked first",
                                                                                       tickformat=".0%", range=[0, 1]),
                          title=title or f"Additive motif over {len(self.per_prompt)} prompts (≥ "
                                         f"{self.n_candidates_min} candidates each)")
        return fig

    def __repr__(self) -> str:
        t = self.to_frame()
        parts = ", ".join(f"{r.group} {r.top1_rate:.0%}" for r in t.itertuples())
        return f"MotifTable({len(self.per_prompt)} prompts; top-1: {parts})"

    def _repr_html_(self) -> str:
        return (f"<pre>{html.escape(repr(self))}</pre>"
                + self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))


def additive_motif(results: Sequence[DLAResult], classification: HeadClassification) -> MotifTable:
    """Rank of the answer under each motif group alone and under their sum, per prompt."""
    results = _check_results(results)
    if classification.labels.shape != results[0].heads.shape[:2]:
        raise InputError("The classification is for a model of another shape than these DLA results.")
    counts = classification.counts()
    empty = {g for g, c in (("subject heads", "subject"), ("relation heads", "relation"),
                            ("mixed: subject part", "mixed"), ("mixed: relation part", "mixed")) if counts[c] == 0}
    rows = []
    for r in results:
        g = motif_group_dla(r, classification)
        row = {"id": r.fact_id or r.prompt[-40:], "relation": r.relation or "", "n_candidates": len(r.targets)}
        for k, v in g.items():  # a group with no head has no rank (NaN), it cannot rank anything first
            row[f"rank[{k}]"] = _rank(v) if k not in empty else np.nan
        row["rank[model]"] = _rank(r.logits)
        row["interference"] = row["rank[sum]"] == 0 and not any(row[f"rank[{k}]"] == 0 for k in MOTIF_GROUPS)
        rows.append(row)
    df = pd.DataFrame(rows)
    return MotifTable(df, int(df["n_candidates"].min()))


# ---------------------------------------------------------------------- suppression
def suppressive_heads(results: Sequence[DLAResult], last_layers: int = 3, threshold: float = -0.1,
                      max_heads: int = 3, metric: str = "logit") -> list[tuple[int, int]]:
    """Heads of the last ``last_layers`` layers with mean DLA below ``threshold``, most negative first."""
    results = _check_results(results)
    mean = np.mean([r.metric(r.heads, metric) for r in results], 0)  # (L, H)
    L = mean.shape[0]
    if not 1 <= last_layers <= L:
        raise InputError(f"last_layers must be in 1..{L}, got {last_layers!r}.")
    cand = [(float(mean[l, h]), l, h) for l in range(L - last_layers, L) for h in range(mean.shape[1])
            if mean[l, h] < threshold]
    return [(l, h) for _, l, h in sorted(cand)[:max_heads]]


@dataclass
class SuppressionResult:
    """Answer probability when ``heads`` are scaled by each α. p_answer: (A, N); logit_answer: (A, N)."""

    model_name: str
    heads: list[tuple[int, int]]
    alphas: list[float]
    ids: list[str]
    p_answer: np.ndarray
    logit_answer: np.ndarray
    top1: np.ndarray  # (A, N) bool: the answer is the argmax

    def to_frame(self) -> pd.DataFrame:
        base = self.alphas.index(1.0) if 1.0 in self.alphas else None
        rows = []
        for i, a in enumerate(self.alphas):
            r = {"alpha": a, "mean_p_answer": float(self.p_answer[i].mean()),
                 "median_p_answer": float(np.median(self.p_answer[i])), "accuracy": float(self.top1[i].mean()),
                 "mean_logit_answer": float(self.logit_answer[i].mean())}
            if base is not None:
                r["frac_prompts_p_up"] = float((self.p_answer[i] > self.p_answer[base]).mean())
            rows.append(r)
        return pd.DataFrame(rows)

    def figure(self, title: str | None = None):
        """Mean answer probability (and accuracy) against the scale α of the suppressive heads."""
        import plotly.graph_objects as go

        t = self.to_frame()
        fig = go.Figure([
            go.Scatter(x=t["alpha"], y=t["mean_p_answer"], mode="lines+markers", name="mean p(answer)"),
            go.Scatter(x=t["alpha"], y=t["accuracy"], mode="lines+markers", name="accuracy (answer is argmax)",
                       line=dict(dash="dot")),
        ])
        fig.add_vline(x=1.0, line=dict(color="gray", dash="dot"))
        heads = ", ".join(f"L{l}H{h}" for l, h in self.heads)
        fig.update_layout(template="plotly_white", width=720, height=420, xaxis_title="scale α of the heads' output",
                          yaxis=dict(title="", range=[0, 1]),
                          title=title or f"Suppression: scaling {heads} over {len(self.ids)} prompts ({self.model_name})")
        return fig

    def __repr__(self) -> str:
        t = self.to_frame()
        parts = ", ".join(f"α={r.alpha:g}: p {r.mean_p_answer:.3f}" for r in t.itertuples())
        return f"SuppressionResult({', '.join(f'L{l}H{h}' for l, h in self.heads)}; {parts})"

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>" + self.to_frame().to_html(index=False, float_format=lambda v: f"{v:.4f}")


def suppression_effect(model, prompts, answers, heads: Sequence[tuple[int, int]],
                       alphas: Sequence[float] = (0.0, 0.5, 1.0, 1.5), batch_size: int = 32,
                       ids: Sequence[str] | None = None) -> SuppressionResult:
    """Scale ``heads`` by each α and measure the answer's probability at the last position.

    prompts: strings or FactPrompt-likes (``.prompt``); answers: one token id per prompt.
    """
    texts = [p.prompt if hasattr(p, "prompt") else p for p in prompts]
    answers = [int(a) for a in answers]
    if not texts:
        raise InputError("No prompts given to suppression_effect.")
    if len(answers) != len(texts):
        raise InputError(f"Got {len(answers)} answers for {len(texts)} prompts: pass one answer token per prompt.")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise InputError("Pass at least one alpha.")
    ids = list(ids) if ids is not None else [getattr(p, "id", str(i)) for i, p in enumerate(prompts)]
    ans = torch.tensor(answers)
    p = np.zeros((len(alphas), len(texts)))
    lg = np.zeros_like(p)
    top = np.zeros_like(p, dtype=bool)
    for i, a in enumerate(alphas):
        iv = [HeadScale(heads, a)]
        for j in range(0, len(texts), batch_size):
            with torch.no_grad():
                logits = model.run(texts[j:j + batch_size], logits="last", interventions=iv).last_logits.float()
            sl = slice(j, j + len(logits))
            aa = ans[sl]
            p[i, sl] = torch.softmax(logits, -1)[torch.arange(len(aa)), aa].numpy()
            lg[i, sl] = logits[torch.arange(len(aa)), aa].numpy()
            top[i, sl] = (logits.argmax(-1) == aa).numpy()
    return SuppressionResult(model.info.name, [(int(l), int(h)) for l, h in heads], alphas, ids, p, lg, top)
