"""SAT probe (Yuksekgonul et al., ICLR 2024, "Attention Satisfies"): predict factual errors from attention.

Features, one row per prompt: for every layer l and query head h, the attention from the **last prompt
token** to the constraint tokens (the subject span), summed over those tokens (``reduce="sum"``; the
authors' code takes the max, ``reduce="max"``). That gives L·H features in [0, 1] (270 on SmolLM2).

Several constraints (``constraint_attention_features``): the same L·H block per constraint,
concatenated in the constraints' fixed order (K·L·H features), as the paper trains on the attention to
every constraint. ``probes.factual.sat_constraints`` runs the probe on ``probes.factual.constraints``
prompts (one or two constraints) with full-answer labels from a 15-token greedy completion.

Label (``sat_probe``): 1 when the model's top-1 next token equals the answer's first token (greedy
first-token correctness; the paper checks the whole greedy completion, see ``sat_constraints``).

Classifier: StandardScaler → ``LogisticRegressionCV`` with an L1 penalty (liblinear), C chosen by an
inner stratified CV on AUROC. Evaluation is out-of-fold: an outer stratified K-fold gives every prompt
a success probability from a probe that never saw it, so AUROC and risk use all prompts (the paper's
50/50 split wastes half of a small set). Baselines on the same prompts: the model's **confidence**
(probability of its own top-1 token; label-free) and the mean attention to the constraint over all heads.

Risk@top-20%: error rate among the 20% of prompts with the highest predicted success;
Risk@bottom-20%: among the 20% with the lowest. A useful probe has low top risk and high bottom risk.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.capture import resolve_layers
from workbench.errors import InputError

from .lenses import token_id
from .lre import _as_samples, subject_token_positions

DEFAULT_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def attention_features(model, prompts, constraint_positions, layers=None, reduce: str = "sum",
                       batch_size: int = 16):
    """(N, L·H) attention from each prompt's last token to its constraint tokens, and (N, vocab) last logits.

    prompts: list of strings; constraint_positions: per prompt, a non-empty list of token positions
    (before the last token). Feature index = i_layer · H + head. Returns (features, last_logits).
    """
    return constraint_attention_features(model, prompts, [[pos] for pos in constraint_positions], layers, reduce,
                                         batch_size)


def constraint_attention_features(model, prompts, constraint_positions, layers=None, reduce: str = "sum",
                                  batch_size: int = 16):
    """(N, K·L·H) attention from each prompt's last token to each of its K constraints, and (N, vocab) last logits.

    constraint_positions: per prompt, K lists of token positions (one per constraint, the same K and
    order for every prompt; each non-empty and before the last token). Feature index =
    k · L·H + i_layer · H + head: constraint 0's L·H block first. Each feature is the attention summed
    (``reduce="sum"``) or maxed (``"max"``) over that constraint's tokens, so it lies in [0, 1].
    """
    if reduce not in ("sum", "max"):
        raise InputError(f"reduce must be 'sum' or 'max', got {reduce!r}.")
    if len(prompts) != len(constraint_positions):
        raise InputError(f"{len(prompts)} prompts but {len(constraint_positions)} constraint position lists.")
    ks = {len(c) for c in constraint_positions}
    if len(ks) > 1 or 0 in ks:
        raise InputError(f"Every prompt needs the same number (≥ 1) of constraints; got counts {sorted(ks)}.")
    layer_list = resolve_layers(layers, model.info.n_layers)
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            run = model.run(chunk, capture=["pattern"], layers=layer_list, logits="last")
            pat = run.stack("pattern")  # (Lsel, B, H, T, T)
            for j, n in enumerate(run.lengths):
                row = []
                for pos in constraint_positions[i + j]:
                    if not pos or max(pos) >= n - 1 or min(pos) < 0:
                        raise InputError(f"Prompt {i + j}: constraint positions {pos} must lie in 0..{n - 2} "
                                         "(before the last token).")
                    rows = pat[:, j, :, n - 1][..., list(pos)]  # (Lsel, H, |C|)
                    f = rows.sum(-1) if reduce == "sum" else rows.max(-1).values
                    row.append(f.reshape(-1).float().cpu())
                feats.append(torch.cat(row))
            logits.append(run.last_logits.float().cpu())
    return torch.stack(feats).numpy(), torch.cat(logits)


# ---------------------------------------------------------------------------------------------- fitting
def _risk(score: np.ndarray, y: np.ndarray, frac: float = 0.2) -> tuple[float, float]:
    """Error rate among the top ``frac`` and the bottom ``frac`` of prompts by ``score`` (predicted success)."""
    k = max(1, int(round(frac * len(y))))
    order = np.argsort(-score, kind="stable")
    return float(1 - y[order[:k]].mean()), float(1 - y[order[-k:]].mean())


def _auroc(y, score) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, score))


def _probe(cs, inner_folds: int, seed: int):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = LogisticRegressionCV(Cs=list(cs), l1_ratios=[1.0], solver="liblinear", scoring="roc_auc",
                               cv=StratifiedKFold(inner_folds, shuffle=True, random_state=seed), max_iter=2000,
                               random_state=seed, use_legacy_attributes=False)  # liblinear's L1 solver shuffles
    return make_pipeline(StandardScaler(), clf)


@dataclass
class SATProbeResult:
    """Out-of-fold SAT-probe scores against baselines, and the probe refitted on all prompts.

    scores: method -> (N,) predicted success ("probe" out-of-fold, "confidence", extra baselines,
    "mean_attention"). coef: (K·L, H) L1 weights of the probe refitted on all prompts (standardised
    features; K = n_constraints blocks of L layers); C: its chosen C. completions: the generated
    answers when the labels came from them (else empty).
    """

    model_name: str
    layers: list[int]
    n_heads: int
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    coef: np.ndarray
    C: float
    fold_C: list[float]
    features: np.ndarray = field(repr=False)
    prompts: list[str] = field(default_factory=list, repr=False)
    reduce: str = "sum"
    n_constraints: int = 1
    completions: list[str] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float:
        return float(self.labels.mean())

    def metrics(self) -> pd.DataFrame:
        """One row per method: AUROC, Risk@top-20%, Risk@bottom-20%."""
        rows = []
        for name, s in self.scores.items():
            top, bottom = _risk(s, self.labels)
            rows.append({"method": name, "auroc": _auroc(self.labels, s), "risk_top20": top, "risk_bottom20": bottom})
        return pd.DataFrame(rows).set_index("method")

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: label and every method's score."""
        df = pd.DataFrame({"prompt": self.prompts or [""] * len(self.labels), "correct": self.labels.astype(bool)})
        if self.completions:
            df["completion"] = self.completions
        for name, s in self.scores.items():
            df[name] = s
        return df

    def top_heads(self, k: int = 10) -> pd.DataFrame:
        """The k heads with the largest |L1 weight| in the refitted probe (with their constraint when K > 1)."""
        flat = np.abs(self.coef).ravel()
        idx = np.argsort(-flat)[:k]
        n_l = len(self.layers)
        rows = [{**({"constraint": i // (self.n_heads * n_l)} if self.n_constraints > 1 else {}),
                 "layer": self.layers[(i // self.n_heads) % n_l], "head": i % self.n_heads,
                 "weight": float(self.coef.ravel()[i])} for i in idx if flat[i] > 0]
        return pd.DataFrame(rows)

    def figure(self, title: str | None = None):
        """Left: ROC curves (probe out-of-fold, confidence, mean attention). Right: L1 weights, layer × head."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        from sklearn.metrics import roc_curve
        m = self.metrics()
        fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.14,
                            subplot_titles=("ROC (predicting a correct answer)", f"probe L1 weights (C={self.C:g})"))
        for name, s in self.scores.items():
            fpr, tpr, _ = roc_curve(self.labels, s)
            fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {m.loc[name, 'auroc']:.2f})"), 1, 1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"),
                                 showlegend=False, hoverinfo="skip"), 1, 1)
        lim = float(np.abs(self.coef).max()) or 1.0
        ylab = ([f"L{l}" for l in self.layers] if self.n_constraints == 1 else
                [f"c{k} L{l}" for k in range(self.n_constraints) for l in self.layers])
        fig.add_trace(go.Heatmap(z=self.coef, x=list(range(self.n_heads)), y=ylab,
                                 colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, colorbar=dict(title="weight", x=1.02),
                                 hovertemplate="%{y} H%{x}<br>weight %{z:.3f}<extra></extra>"), 1, 2)
        fig.update_xaxes(title="false positive rate", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title="true positive rate", range=[0, 1.02], row=1, col=1)
        fig.update_xaxes(title="head", row=1, col=2)
        fig.update_yaxes(title="layer", autorange="reversed", row=1, col=2)
        what = "subject" if self.n_constraints == 1 else "constraints"
        fig.update_layout(title=title or (f"SAT probe: attention to the {what} at the last token ({self.model_name}; "
                                          f"{len(self.labels)} prompts, accuracy {self.accuracy:.2f})"),
                          template="plotly_white", width=1050,
                          height=max(420, 120 + 14 * len(self.layers) * self.n_constraints),
                          legend=dict(x=0.02, y=-0.15, orientation="h"))
        return fig

    def __repr__(self) -> str:
        m = self.metrics()
        parts = "; ".join(f"{n} AUROC {r.auroc:.2f} (risk top/bottom 20%: {r.risk_top20:.2f}/{r.risk_bottom20:.2f})"
                          for n, r in m.iterrows())
        return (f"SATProbeResult({self.model_name}, {len(self.labels)} prompts, accuracy {self.accuracy:.2f}, "
                f"{self.coef.size} features, C={self.C:g}, {int((self.coef != 0).sum())} non-zero weights)\n  {parts}")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>" + self.metrics().round(3).to_html()


def fit_sat_probe(features, labels, confidence=None, layers=None, n_heads: int | None = None, n_folds: int = 5,
                  inner_folds: int = 3, Cs=DEFAULT_CS, seed: int = 0, model_name: str = "",
                  prompts=None, reduce: str = "sum", n_constraints: int = 1, baselines=None,
                  completions=None) -> SATProbeResult:
    """Out-of-fold L1 logistic probe on (N, F) features and 0/1 labels, with baselines.

    confidence: (N,) model confidence for the baseline (optional). baselines: more named (N,) scores
    (e.g. {"top1_prob": ...}). layers/n_heads/n_constraints: the feature layout, F = K·L·H with
    constraint-major blocks as ``constraint_attention_features`` builds them (default: one layer of F
    heads). Needs at least ``n_folds`` prompts in each class.
    """
    from sklearn.model_selection import StratifiedKFold
    x = np.asarray(features, dtype=float)
    y = np.asarray(labels).astype(int)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"features must be (N, F) with one label per row; got {x.shape} and {y.shape}.")
    if not set(np.unique(y)) <= {0, 1}:
        raise InputError("labels must be 0/1 (1 = the model answered correctly).")
    counts = np.bincount(y, minlength=2)
    need = max(n_folds, inner_folds + 1)
    if counts.min() < need:
        raise InputError(f"Too few samples for cross-validation: {counts[1]} correct and {counts[0]} wrong prompts; "
                         f"each class needs at least {need} (n_folds={n_folds}, inner_folds={inner_folds}). "
                         "Use more prompts or fewer folds.")
    if not len(Cs):
        raise InputError("Cs must list at least one C value.")
    if not isinstance(n_constraints, int) or n_constraints < 1:
        raise InputError(f"n_constraints must be a positive integer, got {n_constraints!r}.")
    n_heads = n_heads or x.shape[1] // n_constraints
    layers = list(layers) if layers is not None else list(range(x.shape[1] // (n_heads * n_constraints)))
    if n_constraints * len(layers) * n_heads != x.shape[1]:
        raise InputError(f"{x.shape[1]} features do not match {n_constraints} constraint(s) × {len(layers)} layers × "
                         f"{n_heads} heads.")
    oof = np.zeros(len(y))
    fold_c = []
    for tr, te in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y):
        pipe = _probe(Cs, inner_folds, seed).fit(x[tr], y[tr])
        oof[te] = pipe.predict_proba(x[te])[:, 1]
        fold_c.append(float(np.ravel(pipe[-1].C_)[0]))
    full = _probe(Cs, inner_folds, seed).fit(x, y)
    coef = full[-1].coef_.reshape(n_constraints * len(layers), n_heads)
    scores = {"probe": oof}
    if confidence is not None:
        c = np.asarray(confidence, dtype=float)
        if c.shape != y.shape:
            raise InputError(f"confidence must have one value per prompt, got shape {c.shape}.")
        scores["confidence"] = c
    for name, b in (baselines or {}).items():
        b = np.asarray(b, dtype=float)
        if b.shape != y.shape:
            raise InputError(f"baseline {name!r} must have one value per prompt, got shape {b.shape}.")
        scores[name] = b
    scores["mean_attention"] = x.mean(1)
    return SATProbeResult(model_name, layers, n_heads, y, scores, coef, float(np.ravel(full[-1].C_)[0]), fold_c, x,
                          list(prompts or []), reduce, n_constraints, list(completions or []))


def sat_probe(model, items, layers=None, reduce: str = "sum", n_folds: int = 5, inner_folds: int = 3,
              Cs=DEFAULT_CS, seed: int = 0, batch_size: int = 16) -> SATProbeResult:
    """Run the SAT probe on factual prompts.

    items: FactPrompt-like objects (``.prompt``, ``.subject``, ``.answer``; ``.subject_span`` used when
    present) or (prompt, subject, answer) tuples. The constraint is the subject's token span.
    """
    samples = _as_samples(items, "sat_probe")
    if not samples:
        raise InputError("sat_probe needs factual prompts (prompt, subject, answer); got none.")
    raw = list(items)
    prompts, positions, answers = [], [], []
    for k, smp in enumerate(samples):
        if smp.answer is None:
            raise InputError(f"Item {k} ({smp.subject!r}) has no answer; the probe needs one to label correctness.")
        span = getattr(raw[k], "subject_span", None)
        positions.append(subject_token_positions(model, smp.prompt, smp.subject, tuple(span) if span else None))
        prompts.append(smp.prompt)
        answers.append(token_id(model, smp.answer))
    layer_list = resolve_layers(layers, model.info.n_layers)
    feats, last = attention_features(model, prompts, positions, layer_list, reduce, batch_size)
    probs = last.softmax(-1)
    top = probs.argmax(-1)
    labels = (top == torch.tensor(answers)).numpy().astype(int)
    conf = probs.max(-1).values.numpy()
    return fit_sat_probe(feats, labels, conf, layer_list, model.info.n_heads, n_folds, inner_folds, Cs, seed,
                         model.info.name, prompts, reduce)
