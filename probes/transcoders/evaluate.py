"""Evaluate transcoders (and SAEs on the MLP output) on text they were not trained on.

By default the text is the bundled **out-of-domain evaluation set** (``workbench.texts.load_eval_set``:
hand-written news, dialogue, fiction, how-to, explainer and chat text, and standard-library, zlib
and npm code; no source shared with the training corpus). ``eval_set="heldout"`` uses the
corpus's in-domain held-out split instead; ``documents=`` or ``texts=`` any text.

Per layer and replacement:
* L0: mean number of active features per token;
* FVU: fraction of variance of ``mlp_out`` unexplained, Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over tokens;
* next-token loss with the MLP output replaced (transcoder: TC(mlp_in); SAE: SAE(mlp_out)),
  next to the clean loss and two baselines: the MLP output zeroed, and the MLP output replaced
  by its mean over all evaluation tokens. Fraction of loss recovered against a baseline b:
  (CE_b − CE_replaced) / (CE_b − CE_clean). The mean-ablated baseline is the stricter one: it
  already keeps the MLP's constant part, which any replacement gets for free from its bias;
* both fractions per domain, with bootstrap confidence intervals over documents (resampled
  within each domain, so the overall interval keeps the domain mix);
* dead features (never active on the evaluation tokens) and dense ones (active on more than
  ``dense_threshold`` of tokens).

Every document is cut into windows of at most ``context`` tokens, each starting fresh at position
0 (documents are never joined). Position 0 (the attention sink, with massive activations,
excluded from training) is left clean in every replaced run, baselines alike, and excluded from
L0, FVU, frequencies and the mean; the loss covers every next-token prediction of the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from sae_lens.saes.sae import SAE
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError
from workbench.intervention import Intervention
from workbench.texts import Document, load_documents, load_eval_set

from .harvest import hook_names

EVAL_SETS = ("ood", "heldout")


class _ReplaceMLP(Intervention):
    """Replace ``mlp_out`` at one layer (positions >= ``first``) by f(x): a transcoder of mlp_in,
    an SAE reconstruction of mlp_out, zeros, or a constant vector (``mode="mean"``, ``module`` the
    (d_model,) mean). Evaluation-only helper."""

    def __init__(self, layer: int, mode: str, module=None, first: int = 1):
        self.layer, self.mode, self.module, self.first = layer, mode, module, first
        self._x: torch.Tensor | None = None

    def hooks(self, model):
        hi, ho = hook_names(self.layer)

        def keep_in(x, _name):
            self._x = x
            return None

        def replace(y, _name):
            y = y.clone()
            f = self.first
            if self.mode == "zero":
                y[:, f:] = 0.0
            elif self.mode == "mean":
                y[:, f:] = self.module.to(device=y.device, dtype=y.dtype)
            elif self.mode == "transcoder":
                y[:, f:] = self.module(self._x[:, f:].float()).to(y.dtype)
            else:  # sae on mlp_out
                y[:, f:] = self.module(y[:, f:].float()).to(y.dtype)
            return y

        return ([(hi, keep_in)] if self.mode == "transcoder" else []) + [(ho, replace)]

    def describe(self) -> str:
        return f"MLP {self.layer} -> {self.mode}"


def recovered(ce_base: np.ndarray, ce_clean: np.ndarray, ce_rep: np.ndarray) -> np.ndarray:
    """(CE_base − CE_rep) / (CE_base − CE_clean) from loss *sums* (any shape, broadcast)."""
    gap = ce_base - ce_clean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (ce_base - ce_rep) / gap, np.nan)


def bootstrap_recovered(sums: dict[str, np.ndarray], domains: np.ndarray, rep: str, base: str, n_boot: int,
                        ci: float, seed: int) -> tuple[float, float]:
    """Confidence interval of the fraction recovered, resampling documents within each domain.

    sums: {"clean" | base | rep: (n_docs,) per-document loss sums}; domains: (n_docs,) labels.
    """
    if n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(domains)))
    for dom in np.unique(domains):
        idx = np.flatnonzero(domains == dom)
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        np.add.at(counts, (np.arange(n_boot)[:, None], idx[draws]), 1.0)
    tot = {k: counts @ v for k, v in sums.items()}
    r = recovered(tot[base], tot["clean"], tot[rep])
    lo, hi = np.nanquantile(r, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return float(lo), float(hi)


@dataclass
class ReplacementEval:
    """Metrics of one transcoder or SAE at one layer (see module docstring). ``recovered_ci`` and
    ``recovered_mean_ci`` are bootstrap intervals of the two fractions; ``per_domain`` has one row
    per domain."""
    name: str
    kind: str                 # "transcoder" or "sae"
    layer: int
    d_sae: int
    n_tokens: int
    l0: float
    fvu: float
    ce_clean: float
    ce_replaced: float
    ce_zero: float
    ce_mean: float
    dead_fraction: float
    dense_fraction: float
    recovered_ci: tuple[float, float]
    recovered_mean_ci: tuple[float, float]
    per_domain: pd.DataFrame = field(repr=False)
    feature_frequency: torch.Tensor = field(repr=False)   # (d_sae,) fraction of tokens active

    @property
    def loss_recovered(self) -> float:
        """Fraction of the loss gap to the zero-ablated MLP that the replacement recovers."""
        return float(recovered(np.float64(self.ce_zero), np.float64(self.ce_clean), np.float64(self.ce_replaced)))

    @property
    def loss_recovered_mean(self) -> float:
        """Fraction of the loss gap to the mean-ablated MLP that the replacement recovers."""
        return float(recovered(np.float64(self.ce_mean), np.float64(self.ce_clean), np.float64(self.ce_replaced)))

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "layer": self.layer, "d_sae": self.d_sae,
                "tokens": self.n_tokens, "L0": self.l0, "FVU": self.fvu, "CE clean": self.ce_clean,
                "CE replaced": self.ce_replaced, "CE zero-ablated": self.ce_zero, "CE mean-ablated": self.ce_mean,
                "loss recovered": self.loss_recovered, "ci low": self.recovered_ci[0], "ci high": self.recovered_ci[1],
                "recovered vs mean": self.loss_recovered_mean, "mean ci low": self.recovered_mean_ci[0],
                "mean ci high": self.recovered_mean_ci[1], "dead": self.dead_fraction, "dense": self.dense_fraction}


@dataclass
class EvalReport:
    """Side-by-side evaluation of several replacements. ``to_frame()`` (overall), ``domain_frame()``
    (per domain, with intervals), ``figure()``, HTML repr. ``eval_set`` names the text used."""
    results: list[ReplacementEval]
    eval_set: str = ""
    ci: float = 0.95

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.row() for r in self.results])

    def domain_frame(self) -> pd.DataFrame:
        return pd.concat([r.per_domain for r in self.results], ignore_index=True)

    def __getitem__(self, name: str) -> ReplacementEval:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"No result named {name!r}; have {[r.name for r in self.results]}.")

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=3, column_widths=[0.5, 0.25, 0.25],
                            subplot_titles=(f"loss recovered per domain ({self.ci:.0%} CI; solid: vs zero, "
                                            "hatched: vs mean)", "FVU of mlp_out", "feature frequency (log10)"))
        for r in self.results:
            d = r.per_domain
            for col, lo, hi, pattern in (("recovered", "ci low", "ci high", ""),
                                         ("recovered vs mean", "mean ci low", "mean ci high", "/")):
                fig.add_trace(go.Bar(x=list(d["domain"]), y=d[col], name=f"{r.name} ({'zero' if not pattern else 'mean'})",
                                     marker_pattern_shape=pattern,
                                     error_y={"type": "data", "symmetric": False, "array": d[hi] - d[col],
                                              "arrayminus": d[col] - d[lo]}), row=1, col=1)
        names = [r.name for r in self.results]
        fig.add_trace(go.Bar(x=names, y=[r.fvu for r in self.results], showlegend=False), row=1, col=2)
        for r in self.results:
            f = r.feature_frequency.clamp_min(1e-6).log10().numpy()
            fig.add_trace(go.Histogram(x=f, name=r.name, opacity=0.6, nbinsx=40, showlegend=False), row=1, col=3)
        fig.update_layout(barmode="group", height=380, title=f"Transcoder / SAE evaluation on {self.eval_set}")
        return fig

    def _repr_html_(self) -> str:
        return (f"<b>EvalReport</b> on {self.eval_set}" + self.to_frame().to_html(float_format=lambda v: f"{v:.3f}", index=False))


def _check(model, module, layer: int, kind: str, name: str) -> None:
    d = model.info.d_model
    d_in = module.cfg.d_in
    d_out = module.cfg.d_out if isinstance(module, Transcoder) else d_in
    if d_in != d or d_out != d:
        raise InputError(f"{name}: {kind} maps {d_in} -> {d_out} dimensions, but the model's MLP input/output "
                         f"have d_model={d}.")
    md = module.cfg.metadata
    fp = md.get("model_fingerprint") if md is not None else None
    if fp is not None and fp != model.fingerprint:
        raise InputError(f"{name}: trained on another model (fingerprint {fp}, this model {model.fingerprint}).")
    hl = md.get("hook_layer") if md is not None else None
    if hl is not None and int(hl) != layer:
        raise InputError(f"{name}: trained on layer {hl}, evaluated at layer {layer}. Pass layer={hl}.")


def evaluation_documents(eval_set: str = "ood", max_docs_per_domain: int | None = None) -> list[Document]:
    """The documents ``evaluate`` uses for ``eval_set``: "ood" (out-of-domain set, domain = its
    genre) or "heldout" (the corpus's in-domain held-out split, domain = its source)."""
    if eval_set == "ood":
        return load_eval_set(max_docs_per_domain=max_docs_per_domain)
    if eval_set == "heldout":
        docs, per = [], {}
        for d in load_documents("heldout"):
            if max_docs_per_domain is None or per.get(d.source, 0) < max_docs_per_domain:
                per[d.source] = per.get(d.source, 0) + 1
                docs.append(Document(d.text, d.source, d.source, d.group, d.origin, d.license, d.split))
        return docs
    raise InputError(f"eval_set must be one of {EVAL_SETS}, got {eval_set!r}.")


def _windows(tokenizer, docs: Sequence[Document], context: int, max_tokens_per_domain: int | None):
    """[(doc index, ids (T,))]: each document cut into consecutive windows of <= context tokens."""
    out, per = [], {}
    encs = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    for i, (d, ids) in enumerate(zip(docs, encs)):
        for s in range(0, len(ids), context):
            w = ids[s:s + context]
            if max_tokens_per_domain is not None:  # the domain's token budget cuts the last window
                w = w[:max_tokens_per_domain - per.get(d.genre, 0)]
            if len(w) < 2:
                break
            per[d.genre] = per.get(d.genre, 0) + len(w)
            out.append((i, torch.tensor(w, dtype=torch.long)))
    return out


def _batches(windows, batch_prompts: int):
    """Windows grouped by length (longest first, stable), so padding is small: yields
    (doc indices, ids (B, T) right-padded with 0, lengths (B,))."""
    order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))
    for s in range(0, len(order), batch_prompts):
        chunk = [windows[j] for j in order[s:s + batch_prompts]]
        T = len(chunk[0][1])
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, (_, w) in enumerate(chunk):
            ids[b, :len(w)] = w
        yield [c[0] for c in chunk], ids, torch.tensor([len(w) for _, w in chunk])


def _token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> per-prediction loss (B, T−1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -lp.gather(-1, ids[:, 1:, None].to(lp.device))[..., 0].cpu()


@torch.no_grad()
def evaluate(model, replacements: dict[str, Any], layer: int | None = None, texts: Sequence[str] | None = None, *,
             documents: Sequence[Document] | None = None, eval_set: str = "ood", context: int = 128,
             batch_prompts: int = 8, max_docs_per_domain: int | None = None, max_tokens_per_domain: int | None = None,
             n_boot: int = 1000, ci: float = 0.95, dense_threshold: float = 0.1, seed: int = 0) -> EvalReport:
    """Evaluate transcoders / SAEs replacing the MLP at ``layer`` (see the module docstring).

    replacements: {name: module}; a ``Transcoder`` replaces mlp_out by TC(mlp_in), any other
    SAELens ``SAE`` by its reconstruction of mlp_out. layer: defaults to the transcoders'
    ``hook_layer`` metadata. Text: ``documents`` (``workbench.texts.Document``s, domain = genre),
    else ``texts`` (strings, one domain "texts"), else ``eval_set`` ("ood", the default, or
    "heldout"), optionally capped by ``max_docs_per_domain`` / ``max_tokens_per_domain``.
    The clean, zero-ablated and mean-ablated runs are shared by all replacements.
    """
    if not replacements:
        raise InputError("Nothing to evaluate: pass {name: transcoder or SAE}.")
    if not 0 < ci < 1:
        raise InputError(f"ci must be in (0, 1), got {ci}.")
    if layer is None:
        layers = {int(m.cfg.metadata.get("hook_layer")) for m in replacements.values()
                  if m.cfg.metadata is not None and m.cfg.metadata.get("hook_layer") is not None}
        if len(layers) != 1:
            raise InputError(f"Pass layer=...: the replacements name layers {sorted(layers) or 'none'}.")
        layer = layers.pop()
    layer = model.check_layer(layer)
    for name, m in replacements.items():
        if not isinstance(m, SAE):
            raise InputError(f"{name}: expected an SAELens Transcoder or SAE, got {type(m).__name__}.")
        _check(model, m, layer, "transcoder" if isinstance(m, Transcoder) else "SAE", name)
    if documents is not None:
        docs, label = list(documents), "the given documents"
    elif texts is not None:
        if isinstance(texts, str):
            texts = [texts]
        docs, label = [Document(t, "texts", "texts") for t in texts if t.strip()], "the given texts"
    else:
        docs = evaluation_documents(eval_set, max_docs_per_domain)
        label = {"ood": "the out-of-domain evaluation set", "heldout": "the corpus's in-domain held-out split"}[eval_set]
    if context < 2:
        raise InputError(f"context must be at least 2 tokens, got {context}.")
    windows = _windows(model.tokenizer, docs, context, max_tokens_per_domain)
    if not windows:
        raise InputError("No evaluation windows: the documents have fewer than 2 tokens each.")
    mods = {n: m.eval() for n, m in replacements.items()}
    hi, ho = hook_names(layer)
    d = model.info.d_model
    n_docs = len(docs)
    keys = ["clean", "zero", "mean", *mods]
    doc_sum = {k: np.zeros(n_docs) for k in keys}     # per-document loss sums
    doc_tok = np.zeros(n_docs)                          # per-document number of predictions
    sq_err = {n: 0.0 for n in mods}
    l0 = {n: 0.0 for n in mods}
    freq = {n: torch.zeros(m.cfg.d_sae) for n, m in mods.items()}
    y_sum, y_sq, n_tok = torch.zeros(d, dtype=torch.float64), 0.0, 0

    def add(key, doc_ids, ce, lengths):
        for b, i in enumerate(doc_ids):
            doc_sum[key][i] += float(ce[b, :lengths[b] - 1].double().sum())

    # pass 1: clean run, reconstructions, the mean of mlp_out over the evaluation tokens
    for doc_ids, ids, lengths in _batches(windows, batch_prompts):
        run = model.run(ids, capture=[hi, ho])
        add("clean", doc_ids, _token_ce(run.logits, ids), lengths)
        for b, i in enumerate(doc_ids):
            doc_tok[i] += int(lengths[b]) - 1
        real = (torch.arange(ids.shape[1])[None] < lengths[:, None])[:, 1:].reshape(-1)
        x = run.captures[hi][:, 1:].reshape(-1, d)[real.to(run.captures[hi].device)].float().cpu()
        y = run.captures[ho][:, 1:].reshape(-1, d)[real.to(run.captures[ho].device)].float().cpu()
        y_sum += y.double().sum(0)
        y_sq += float((y.double() ** 2).sum())
        n_tok += y.shape[0]
        for n, m in mods.items():
            is_tc = isinstance(m, Transcoder)
            dev = m.W_enc.device
            inp = (x if is_tc else y).to(dev)
            z = m.encode(inp)
            y_hat = (m(inp) if is_tc else m.decode(z)).float().cpu()
            sq_err[n] += float(((y_hat - y) ** 2).double().sum())
            act = (z > 0).cpu()
            l0[n] += float(act.sum())
            freq[n] += act.sum(0).float()
    if n_tok == 0:
        raise InputError("No evaluation tokens after position 0: use windows of at least 2 tokens.")
    y_mean = (y_sum / n_tok).float()
    # pass 2: baselines and replacements
    for doc_ids, ids, lengths in _batches(windows, batch_prompts):
        add("zero", doc_ids, _token_ce(model.run(ids, interventions=[_ReplaceMLP(layer, "zero")]).logits, ids), lengths)
        add("mean", doc_ids, _token_ce(model.run(ids, interventions=[_ReplaceMLP(layer, "mean", y_mean)]).logits, ids),
            lengths)
        for n, m in mods.items():
            iv = _ReplaceMLP(layer, "transcoder" if isinstance(m, Transcoder) else "sae", m)
            add(n, doc_ids, _token_ce(model.run(ids, interventions=[iv]).logits, ids), lengths)
    var = y_sq - n_tok * float((y_sum / n_tok).pow(2).sum())
    used = doc_tok > 0
    domains = np.array([dd.genre for dd in docs])[used]
    sums = {k: v[used] for k, v in doc_sum.items()}
    ntok = doc_tok[used]
    total_pred = ntok.sum()
    mean_ce = {k: float(v.sum() / total_pred) for k, v in sums.items()}
    results = []
    for j, (n, m) in enumerate(mods.items()):
        f = freq[n] / n_tok
        rows = []
        for dom in dict.fromkeys(domains):  # domains in document order
            sel = domains == dom
            s = {k: v[sel] for k, v in sums.items()}
            tk = ntok[sel].sum()
            ce = {k: float(v.sum() / tk) for k, v in s.items()}
            dom_labels = domains[sel]
            rows.append({"name": n, "domain": dom, "documents": int(sel.sum()), "tokens": int(tk),
                         "CE clean": ce["clean"], "CE replaced": ce[n], "CE zero-ablated": ce["zero"],
                         "CE mean-ablated": ce["mean"],
                         "recovered": float(recovered(np.float64(ce["zero"]), np.float64(ce["clean"]), np.float64(ce[n]))),
                         "ci low": np.nan, "ci high": np.nan,
                         "recovered vs mean": float(recovered(np.float64(ce["mean"]), np.float64(ce["clean"]),
                                                              np.float64(ce[n]))),
                         "mean ci low": np.nan, "mean ci high": np.nan})
            sub = {k: s[k] for k in ("clean", "zero", "mean", n)}
            rows[-1]["ci low"], rows[-1]["ci high"] = bootstrap_recovered(sub, dom_labels, n, "zero", n_boot, ci, seed + j)
            rows[-1]["mean ci low"], rows[-1]["mean ci high"] = bootstrap_recovered(sub, dom_labels, n, "mean", n_boot,
                                                                                    ci, seed + j)
        sub = {k: sums[k] for k in ("clean", "zero", "mean", n)}
        results.append(ReplacementEval(
            name=n, kind="transcoder" if isinstance(m, Transcoder) else "sae", layer=layer, d_sae=m.cfg.d_sae,
            n_tokens=n_tok, l0=l0[n] / n_tok, fvu=sq_err[n] / var if var > 0 else float("nan"),
            ce_clean=mean_ce["clean"], ce_replaced=mean_ce[n], ce_zero=mean_ce["zero"], ce_mean=mean_ce["mean"],
            dead_fraction=float((f == 0).float().mean()), dense_fraction=float((f > dense_threshold).float().mean()),
            recovered_ci=bootstrap_recovered(sub, domains, n, "zero", n_boot, ci, seed + j),
            recovered_mean_ci=bootstrap_recovered(sub, domains, n, "mean", n_boot, ci, seed + j),
            per_domain=pd.DataFrame(rows), feature_frequency=f))
    return EvalReport(results, eval_set=label, ci=ci)


def as_sae(tc: Transcoder) -> SAE:
    """An SAELens SAE (StandardSAE, or TopKSAE for TopK) from a transcoder trained with input =
    target (e.g. on mlp_out): same weights, ``apply_b_dec_to_input=False``."""
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from .architectures import TopKTranscoder, has_skip

    if tc.cfg.d_in != tc.cfg.d_out or has_skip(tc):
        raise InputError("Only a transcoder with d_in == d_out and no skip connection converts to an SAE.")
    md = dict(tc.cfg.metadata.to_dict()) if tc.cfg.metadata is not None else {}
    if isinstance(tc, TopKTranscoder):
        sae = TopKSAE(TopKSAEConfig(d_in=tc.cfg.d_in, d_sae=tc.cfg.d_sae, k=tc.cfg.k, apply_b_dec_to_input=False))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=tc.cfg.d_in, d_sae=tc.cfg.d_sae, apply_b_dec_to_input=False))
    from sae_lens.saes.sae import SAEMetadata
    sae.cfg.metadata = SAEMetadata(**md)
    with torch.no_grad():
        for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, n).copy_(getattr(tc, n))
    return sae.eval()
