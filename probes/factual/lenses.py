"""Logit lens and a fitted linear ("jump") lens per layer, compared by precision@k.

Logit lens (nostalgebraist 2020): decode the residual after block l as if it were the last one,
``logits_l = W_U · n(resid_post[l]) + b_U`` with the model's own final norm n.

Linear lens ("mat", Din et al. 2023, "Jump to Conclusions"): per layer an affine map fitted by least
squares so that ``resid_post[l] @ A_l + c_l ≈ resid_post[L-1]`` (the final residual before the final
norm), then decoded like the logit lens. Fitted on a text corpus (by default the bundled domain texts
plus chunks of CPython's ``pydoc_data.topics``), split by text into fit and held-out sets, with
**position 0 left out** of both: on SmolLM2 its residual norm is about 2·10⁴ (the attention sink)
and would dominate any least-squares fit.

Solver: the normal equations are accumulated in float64 over batches (memory O(L·d²), not O(tokens))
and solved with ``torch.linalg.lstsq`` after adding a small ridge ``λ · mean(diag(XᵀX)) · I``
(default λ = 1e-3, relative to the average feature energy; λ = 0 gives plain least squares). The
ridge keeps the solve stable when the fit set has not many more tokens than d_model; it also shrinks
the maps, so the last layer's (exactly the identity) drops below precision 1. Measured on SmolLM2
(2,820 fit tokens): λ = 1e-4 gives precision@1 1.00 at layer 29 and 0.27 at layer 12; λ = 1e-2 gives
0.91 and 0.29. On a small fit set (about 1,100 tokens) a larger λ (1e-2 to 1e-1) generalises better.

Precision@k at layer l (as in Din et al.): the fraction of held-out tokens whose final top-1 token
(the model's own prediction) is among the lens's top-k tokens at layer l.
"""
from __future__ import annotations

import html
import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.capture import resolve_layers
from workbench.errors import InputError
from workbench.texts import lens_corpus


# ---------------------------------------------------------------------------------------------- decoding
def logits_from_resid(model, resid: torch.Tensor) -> torch.Tensor:
    """(..., d_model) residual -> (..., d_vocab) logits through the model's final norm and unembedding.

    Differentiable (used by the LRE); at the last layer it equals the model's logits.
    """
    return model.weights().unembed(resid)


def token_id(model, answer) -> int:
    """An answer as a token id: an int is checked against the vocabulary; a string gives its first token.

    Multi-token answers are scored by their first token (the rule used across this package).
    """
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        if not 0 <= int(answer) < model.info.d_vocab:
            raise InputError(f"Answer token id {answer} is outside the vocabulary [0, {model.info.d_vocab}).")
        return int(answer)
    if isinstance(answer, str) and answer:
        ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if ids:
            return int(ids[0])
    raise InputError(f"Answer must be a token id or a non-empty string (e.g. ' Paris'), got {answer!r}.")


# ---------------------------------------------------------------------------------------------- fitting
def fit_least_squares(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0, bias: bool = True):
    """Affine least squares ``y ≈ x @ A + c``: (N, d_in), (N, d_out) -> (A (d_in, d_out), c (d_out,)).

    ridge: λ relative to the mean diagonal of XᵀX (0 = plain least squares). c is zeros when bias=False.
    """
    eq = _NormalEquations(1, x.shape[-1], y.shape[-1], bias)
    eq.add(0, x, y)
    a = eq.solve(ridge)[0]
    return a[:-1], a[-1]


class _NormalEquations:
    """Running XᵀX and XᵀY (float64) for several layers, with an appended ones column for the bias."""

    def __init__(self, n: int, d_in: int, d_out: int, bias: bool):
        self.bias = bias
        self.xtx = torch.zeros(n, d_in + 1, d_in + 1, dtype=torch.float64)
        self.xty = torch.zeros(n, d_in + 1, d_out, dtype=torch.float64)
        self.count = 0

    def add(self, i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype) if self.bias else torch.zeros(len(x), 1,
                                                                                                dtype=x.dtype)], 1)
        self.xtx[i] += x1.T @ x1
        self.xty[i] += x1.T @ y.detach().double().cpu()
        if i == 0:
            self.count += len(x)

    def solve(self, ridge: float) -> torch.Tensor:
        """(n, d_in + 1, d_out) maps; the last row is the bias (zeros when bias=False)."""
        out = []
        for xtx, xty in zip(self.xtx, self.xty):
            d = xtx.shape[0] - (0 if self.bias else 1)
            a = xtx.clone()
            if ridge > 0:
                scale = float(torch.diagonal(a)[:d].mean())
                a[:d, :d] += ridge * scale * torch.eye(d, dtype=a.dtype)
            if not self.bias:  # the ones column is all zeros: pin its weight to 0
                a[-1, -1] = 1.0
            out.append(torch.linalg.lstsq(a, xty).solution)
        return torch.stack(out).float()


@dataclass
class LinearLens:
    """Fitted affine maps from resid_post[l] to the final residual, one per layer.

    maps: (L, d_model + 1, d_model); row d_model is the bias. r2: (L,) held-out R² of the fit
    (fraction of the final residual's variance explained; NaN when there was no held-out set).
    """

    model_name: str
    fingerprint: str
    layers: list[int]
    maps: torch.Tensor
    ridge: float
    n_fit_tokens: int
    r2: torch.Tensor

    def apply(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """(..., d) residual after block ``layer`` -> (..., d) predicted final residual."""
        if layer not in self.layers:
            raise InputError(f"This lens was fitted for layers {self.layers}, not {layer!r}.")
        a = self.maps[self.layers.index(layer)].to(resid.device)
        return resid.to(a.dtype) @ a[:-1] + a[-1]

    def logits(self, model, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return logits_from_resid(model, self.apply(layer, resid))

    def save(self, path) -> None:
        """safetensors maps + JSON metadata (model fingerprint, layers, ridge) in the folder ``path``."""
        from pathlib import Path

        from safetensors.torch import save_file

        from workbench.paths import atomic_dir, atomic_write_json
        with atomic_dir(Path(path)) as tmp:
            save_file({"maps": self.maps.contiguous(), "r2": self.r2.float().contiguous()}, str(tmp / "lens.safetensors"))
            atomic_write_json(tmp / "lens.json", {"model": self.model_name, "fingerprint": self.fingerprint,
                                                  "layers": self.layers, "ridge": self.ridge,
                                                  "n_fit_tokens": self.n_fit_tokens, "kind": "linear_lens"})

    @classmethod
    def load(cls, path, model=None) -> "LinearLens":
        """Load a saved lens; with ``model`` given, refuse one fitted on another model."""
        import json
        from pathlib import Path

        from safetensors.torch import load_file
        path = Path(path)
        if not (path / "lens.json").is_file():
            raise InputError(f"No saved linear lens in {path} (expected lens.json and lens.safetensors).")
        meta = json.loads((path / "lens.json").read_text())
        if model is not None and meta["fingerprint"] != model.fingerprint:
            raise InputError(f"The lens in {path} was fitted on {meta['model']} (fingerprint {meta['fingerprint']}), "
                             f"not on this model ({model.fingerprint}). Refit it with fit_linear_lens.")
        t = load_file(str(path / "lens.safetensors"))
        return cls(meta["model"], meta["fingerprint"], meta["layers"], t["maps"], meta["ridge"],
                   meta["n_fit_tokens"], t["r2"])

    def __repr__(self) -> str:
        return (f"LinearLens({self.model_name}, {len(self.layers)} layers, fitted on {self.n_fit_tokens} tokens, "
                f"ridge λ={self.ridge:g})")


# ---------------------------------------------------------------------------------------------- corpus
def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = [getattr(t, "prompt", t) for t in (texts or [])]
    if not texts:
        raise InputError("The lens corpus is empty: pass a list of texts (e.g. probes.factual.lenses.lens_corpus()).")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise InputError(f"Corpus entries {bad[:5]} are not non-empty strings.")
    return list(texts)


def _batches(model, texts, batch_size: int, max_tokens: int):
    """Token batches (B, T) of the texts, each cut to ``max_tokens`` tokens, with their lengths."""
    for i in range(0, len(texts), batch_size):
        seqs = [model.tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts[i:i + batch_size]]
        seqs = [s for s in seqs if len(s) >= 2]
        if not seqs:
            continue
        lengths = [len(s) for s in seqs]
        ids = torch.full((len(seqs), max(lengths)), model.pad_id, dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
        yield ids.to(model.device), lengths


def _real_mask(lengths, t: int) -> torch.Tensor:
    """(B, T) True on real tokens at positions >= 1 (position 0 and right padding left out)."""
    pos = torch.arange(t)[None, :]
    return (pos >= 1) & (pos < torch.tensor(lengths)[:, None])


def fit_linear_lens(model, texts, layers=None, ridge: float = 1e-3, bias: bool = True, batch_size: int = 8,
                    max_tokens: int = 128) -> LinearLens:
    """Fit the per-layer affine maps resid_post[l] -> resid_post[L-1] on ``texts`` (position 0 excluded)."""
    texts = _check_texts(texts)
    layer_list = resolve_layers(layers, model.info.n_layers)
    last = model.info.n_layers - 1
    d = model.info.d_model
    eq = _NormalEquations(len(layer_list), d, d, bias)
    with torch.no_grad():
        for ids, lengths in _batches(model, texts, batch_size, max_tokens):
            run = model.run(ids, capture=["resid_post"], layers=sorted(set(layer_list) | {last}), logits=None,
                            stop_at_layer=model.info.n_layers)
            mask = _real_mask(lengths, ids.shape[1]).to(ids.device)
            y = run["resid_post", last][mask]
            for i, l in enumerate(layer_list):
                eq.add(i, run["resid_post", l][mask], y)
    if eq.count < 2:
        raise InputError("The corpus has no tokens past position 0 to fit on: pass longer texts.")
    maps = eq.solve(ridge)
    return LinearLens(model.info.name, model.fingerprint, layer_list, maps, float(ridge), eq.count,
                      torch.full((len(layer_list),), float("nan")))


# ---------------------------------------------------------------------------------------------- comparison
@dataclass
class LensComparison:
    """Held-out precision@k of the logit lens and the linear lens, per layer.

    precision: {"logit": (L, K), "linear": (L, K)} for k in ``ks``; kl: same keys, (L,) mean KL(final ‖ lens)
    in nats per token.
    """

    model_name: str
    layers: list[int]
    ks: list[int]
    precision: dict[str, np.ndarray]
    kl: dict[str, np.ndarray]
    n_eval_tokens: int
    n_fit_tokens: int
    n_fit_texts: int
    n_eval_texts: int
    lens: LinearLens = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, lens): precision@k for each k, KL to the final distribution, R² (linear)."""
        rows = []
        for i, l in enumerate(self.layers):
            for name in ("logit", "linear"):
                row = {"layer": l, "lens": name}
                row.update({f"precision@{k}": float(self.precision[name][i, j]) for j, k in enumerate(self.ks)})
                row["kl_nats"] = float(self.kl[name][i])
                row["r2"] = float(self.lens.r2[i]) if name == "linear" else float("nan")
                rows.append(row)
        return pd.DataFrame(rows)

    def wide(self, k: int = 1) -> pd.DataFrame:
        """layer × lens table of precision@k."""
        j = self.ks.index(k)
        return pd.DataFrame({"logit lens": self.precision["logit"][:, j], "linear lens": self.precision["linear"][:, j]},
                            index=pd.Index(self.layers, name="layer"))

    def figure(self, k: int = 1, title: str | None = None):
        """Precision@k per layer for both lenses (held-out tokens)."""
        import plotly.graph_objects as go
        if k not in self.ks:
            raise InputError(f"precision@{k} was not computed; available k: {self.ks}.")
        j = self.ks.index(k)
        fig = go.Figure()
        for name, label, dash in (("logit", "logit lens", "dot"), ("linear", "linear lens (fitted)", "solid")):
            fig.add_trace(go.Scatter(x=self.layers, y=self.precision[name][:, j], mode="lines+markers", name=label,
                                     line=dict(dash=dash),
                                     hovertemplate=f"{label}<br>layer %{{x}}<br>precision@{k} %{{y:.3f}}<extra></extra>"))
        fig.update_layout(title=title or (f"Precision@{k} against the final prediction ({self.model_name}; "
                                          f"{self.n_eval_tokens} held-out tokens, position 0 excluded)"),
                          xaxis_title="layer (residual after block)", yaxis_title=f"precision@{k}",
                          yaxis_range=[0, 1.02], template="plotly_white", width=820, height=420)
        return fig

    def __repr__(self) -> str:
        j = self.ks.index(1) if 1 in self.ks else 0
        pl, pn = self.precision["logit"][:, j], self.precision["linear"][:, j]
        per = " ".join(f"{l}:{a:.2f}/{b:.2f}" for l, a, b in zip(self.layers, pl, pn))
        return (f"LensComparison({self.model_name}; fit {self.n_fit_tokens} tokens from {self.n_fit_texts} texts, "
                f"held-out {self.n_eval_tokens} tokens from {self.n_eval_texts} texts)\n"
                f"  precision@{self.ks[j]} logit/linear per layer: {per}")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>" + self.wide(self.ks[0] if 1 not in self.ks else 1).round(3).to_html()


def split_texts(texts, eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle texts with ``seed`` and split them into (fit, held-out) by text, not by token."""
    if not 0 < eval_fraction < 1:
        raise InputError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}.")
    if len(texts) < 2:
        raise InputError(f"A held-out evaluation needs at least 2 texts, got {len(texts)}.")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(texts) - 1, max(1, round(eval_fraction * len(texts))))
    return [texts[i] for i in order[n_eval:]], [texts[i] for i in order[:n_eval]]


def compare_lenses(model, texts=None, layers=None, eval_fraction: float = 0.25, ridge: float = 1e-3,
                   ks=(1, 5), max_tokens: int = 128, max_eval_tokens: int = 512, batch_size: int = 8,
                   seed: int = 0, lens: LinearLens | None = None) -> LensComparison:
    """Fit the linear lens on part of ``texts`` and compare it with the logit lens on the rest.

    texts: corpus (default ``lens_corpus()``); split by text with ``eval_fraction`` held out.
    max_eval_tokens: held-out tokens scored (evenly subsampled; each costs L·2 unembeddings).
    lens: a lens fitted before (then all of ``texts`` is held out and nothing is fitted).
    """
    texts = _check_texts(lens_corpus() if texts is None else texts)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"ks must be positive integers, got {ks!r}.")
    if lens is None:
        fit_t, eval_t = split_texts(texts, eval_fraction, seed)
        lens = fit_linear_lens(model, fit_t, layers, ridge=ridge, batch_size=batch_size, max_tokens=max_tokens)
    else:
        if lens.fingerprint != model.fingerprint:
            raise InputError("This lens was fitted on another model; refit it with fit_linear_lens.")
        fit_t, eval_t = [], texts
    layer_list = lens.layers if layers is None else resolve_layers(layers, model.info.n_layers)
    missing = [l for l in layer_list if l not in lens.layers]
    if missing:
        raise InputError(f"The lens has no map for layers {missing}; it was fitted for {lens.layers}.")
    last = model.info.n_layers - 1
    kmax = max(ks)
    hits = {n: np.zeros((len(layer_list), len(ks))) for n in ("logit", "linear")}
    kl = {n: np.zeros(len(layer_list)) for n in ("logit", "linear")}
    ss_res = np.zeros(len(layer_list))
    # Collect the held-out residuals first (subsampled evenly), then decode in chunks.
    xs = {l: [] for l in layer_list}
    ys = []
    with torch.no_grad():
        for ids, lengths in _batches(model, eval_t, batch_size, max_tokens):
            run = model.run(ids, capture=["resid_post"], layers=sorted(set(layer_list) | {last}), logits=None,
                            stop_at_layer=model.info.n_layers)
            mask = _real_mask(lengths, ids.shape[1]).to(ids.device)
            ys.append(run["resid_post", last][mask])
            for l in layer_list:
                xs[l].append(run["resid_post", l][mask])
    if not ys:
        raise InputError("The held-out texts have no tokens past position 0: pass longer or more texts.")
    y = torch.cat(ys)
    keep = torch.linspace(0, len(y) - 1, min(len(y), max_eval_tokens)).round().long().unique()
    y = y[keep]
    n_tok = len(y)
    with torch.no_grad():
        final_logits = logits_from_resid(model, y)
        final_lp = final_logits.log_softmax(-1)
        final_top = final_logits.argmax(-1)
        y_mean = y.double().mean(0)
        ss_tot = float(((y.double() - y_mean) ** 2).sum())
        for i, l in enumerate(layer_list):
            x = torch.cat(xs[l])[keep]
            pred = lens.apply(l, x)
            ss_res[i] = float(((pred.double() - y.double()) ** 2).sum())
            for name, r in (("logit", x), ("linear", pred)):
                lg = logits_from_resid(model, r)
                top = lg.topk(kmax, -1).indices
                for j, k in enumerate(ks):
                    hits[name][i, j] = float((top[:, :k] == final_top[:, None]).any(-1).float().mean())
                lp = lg.log_softmax(-1)
                kl[name][i] = float((final_lp.exp() * (final_lp - lp)).sum(-1).mean())
            del xs[l]
    lens.r2 = torch.tensor(1 - ss_res / ss_tot, dtype=torch.float32) if lens.layers == layer_list else lens.r2
    return LensComparison(model.info.name, layer_list, ks, hits, kl, n_tok, lens.n_fit_tokens, len(fit_t),
                          len(eval_t), lens)


# ---------------------------------------------------------------------------------------------- trajectory
@dataclass
class LensTrajectory:
    """Rank and probability of one answer token per layer under the logit lens (and a linear lens).

    rank/prob: {"logit": (L,), "linear": (L,)} (linear only when a lens was given); top_tokens: same
    keys, per layer the lens's top-1 token string. final_rank/final_prob: under the model's own logits.
    """

    model_name: str
    prompt: str
    answer: str
    answer_id: int
    position: int
    layers: list[int]
    rank: dict[str, np.ndarray]
    prob: dict[str, np.ndarray]
    top_tokens: dict[str, list[str]]
    final_rank: int
    final_prob: float

    def first_layer(self, lens: str = "logit", rank: int = 0) -> int | None:
        """First layer from which the answer stays at rank <= ``rank`` under ``lens`` (None if never)."""
        r = self.rank[lens]
        ok = np.isfinite(r)
        for i in range(len(r)):
            if ok[i] and (r[i:][ok[i:]] <= rank).all():
                return self.layers[i]
        return None

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for name in self.rank:
            for i, l in enumerate(self.layers):
                if not np.isfinite(self.rank[name][i]):
                    continue  # the linear lens has no map for this layer
                rows.append({"layer": l, "lens": name, "answer_rank": int(self.rank[name][i]),
                             "answer_prob": float(self.prob[name][i]), "top_token": self.top_tokens[name][i]})
        return pd.DataFrame(rows)

    def figure(self, title: str | None = None):
        """Answer rank (log scale, left) and probability (right) per layer, one line per lens."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=2, subplot_titles=(f"rank of {self.answer!r} (0 = top)",
                                                            f"probability of {self.answer!r}"))
        colors = {"logit": "#1f77b4", "linear": "#d62728"}
        for name in self.rank:
            label = "logit lens" if name == "logit" else "linear lens"
            tops = self.top_tokens[name]
            fig.add_trace(go.Scatter(x=self.layers, y=self.rank[name] + 1, mode="lines+markers", name=label,
                                     legendgroup=name, line=dict(color=colors[name]), customdata=tops,
                                     hovertemplate="layer %{x}<br>rank %{y}<br>top-1 %{customdata}<extra>"
                                                   + label + "</extra>"), 1, 1)
            fig.add_trace(go.Scatter(x=self.layers, y=self.prob[name], mode="lines+markers", name=label,
                                     legendgroup=name, showlegend=False, line=dict(color=colors[name]),
                                     customdata=tops, hovertemplate="layer %{x}<br>p %{y:.3f}<br>top-1 %{customdata}"
                                                                    "<extra>" + label + "</extra>"), 1, 2)
        fig.update_yaxes(type="log", title="rank + 1", row=1, col=1)
        fig.update_yaxes(title="probability", range=[0, 1.02], row=1, col=2)
        fig.update_xaxes(title="layer")
        short = self.prompt if len(self.prompt) <= 60 else "…" + self.prompt[-57:]
        fig.update_layout(title=title or f"Lens trajectory: {short!r} → {self.answer!r} ({self.model_name})",
                          template="plotly_white", width=1000, height=420)
        return fig

    def __repr__(self) -> str:
        parts = [f"{n} lens: top-1 from layer {self.first_layer(n)}" for n in self.rank]
        return (f"LensTrajectory({self.model_name}, answer {self.answer!r}: final rank {self.final_rank}, "
                f"p={self.final_prob:.3f}; " + "; ".join(parts) + ")")

    def _repr_html_(self) -> str:
        wide = self.to_frame().pivot(index="layer", columns="lens", values=["answer_rank", "answer_prob", "top_token"])
        return f"<pre>{html.escape(repr(self))}</pre>" + wide.to_html()


def lens_trajectory(model, prompt, answer, lens: LinearLens | None = None, position: int = -1) -> LensTrajectory:
    """Answer rank and probability per layer at ``position`` (default the last token) of one prompt.

    prompt: a string or FactPrompt-like object (then ``answer`` may be None and ``.answer`` is used).
    answer: token id or string (first token). lens: a fitted LinearLens, adds the "linear" curve on
    the layers it was fitted for.
    """
    if not isinstance(prompt, str):
        if answer is None:
            answer = getattr(prompt, "answer", None)
        prompt = getattr(prompt, "prompt", prompt)
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"prompt must be a non-empty string or a FactPrompt-like object, got {prompt!r}.")
    a = token_id(model, answer)
    if lens is not None and lens.fingerprint != model.fingerprint:
        raise InputError("This lens was fitted on another model; refit it with fit_linear_lens.")
    ids, lengths = model.tokenize(prompt)
    n = lengths[0]
    if not -n <= position < n:
        raise InputError(f"position {position} is out of range for a prompt of {n} tokens.")
    pos = position % n
    L = model.info.n_layers
    with torch.no_grad():
        run = model.run(ids, capture=["resid_post"], positions=[pos], logits="all")
        final = run.logits[0, pos]
        layers = list(range(L))
        resid = run.stack("resid_post")[:, 0, 0]  # (L, d)
        curves = {"logit": logits_from_resid(model, resid)}
        if lens is not None:
            curves["linear"] = torch.stack([lens.logits(model, l, resid[l]) for l in lens.layers])
    rank, prob, tops = {}, {}, {}
    for name, lg in curves.items():
        rank[name] = (lg > lg[:, a: a + 1]).sum(-1).cpu().numpy().astype(float)
        prob[name] = lg.softmax(-1)[:, a].cpu().numpy()
        tops[name] = model.str_tokens(lg.argmax(-1).tolist())
    if lens is not None and lens.layers != layers:  # put the linear curve on the full layer axis (NaN elsewhere)
        for d in (rank, prob):
            full = np.full(L, np.nan)
            full[lens.layers] = d["linear"]
            d["linear"] = full
        t = [""] * L
        for i, l in enumerate(lens.layers):
            t[l] = tops["linear"][i]
        tops["linear"] = t
    return LensTrajectory(model.info.name, prompt, model.to_string([a]), a, pos, layers, rank, prob, tops,
                          int((final > final[a]).sum()), float(final.softmax(-1)[a]))
