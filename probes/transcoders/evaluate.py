"""Evaluate transcoders (and SAEs on the MLP output) on held-out corpus text.

Per layer and replacement:
* L0: mean number of active features per token;
* FVU: fraction of variance of ``mlp_out`` unexplained, Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over tokens;
* next-token loss with the MLP output replaced (transcoder: TC(mlp_in); SAE: SAE(mlp_out)),
  next to the clean loss and the zero-ablated MLP; fraction of loss recovered =
  (CE_zero − CE_replaced) / (CE_zero − CE_clean);
* dead features (never active on the evaluation tokens) and dense ones (active on more than
  ``dense_threshold`` of tokens).

Position 0 (the attention sink, with massive activations, excluded from training) is left
clean in every replaced run, transcoder and zero-ablation alike, and excluded from L0, FVU and
frequencies; the loss covers every next-token prediction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch
from sae_lens.saes.sae import SAE
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError
from workbench.intervention import Intervention

from .corpus import load_corpus, token_windows
from .harvest import hook_names


class _ReplaceMLP(Intervention):
    """Replace ``mlp_out`` at one layer (positions >= ``first``) by f(x): a transcoder of mlp_in,
    an SAE reconstruction of mlp_out, or zeros. Evaluation-only helper."""

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
            elif self.mode == "transcoder":
                y[:, f:] = self.module(self._x[:, f:].float()).to(y.dtype)
            else:  # sae on mlp_out
                y[:, f:] = self.module(y[:, f:].float()).to(y.dtype)
            return y

        return ([(hi, keep_in)] if self.mode == "transcoder" else []) + [(ho, replace)]

    def describe(self) -> str:
        return f"MLP {self.layer} -> {self.mode}"


@dataclass
class ReplacementEval:
    """Metrics of one transcoder or SAE at one layer (see module docstring)."""
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
    dead_fraction: float
    dense_fraction: float
    feature_frequency: torch.Tensor = field(repr=False)   # (d_sae,) fraction of tokens active

    @property
    def loss_recovered(self) -> float:
        gap = self.ce_zero - self.ce_clean
        return (self.ce_zero - self.ce_replaced) / gap if gap else float("nan")

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "layer": self.layer, "d_sae": self.d_sae,
                "tokens": self.n_tokens, "L0": self.l0, "FVU": self.fvu, "CE clean": self.ce_clean,
                "CE replaced": self.ce_replaced, "CE zero-ablated": self.ce_zero,
                "loss recovered": self.loss_recovered, "dead": self.dead_fraction, "dense": self.dense_fraction}


@dataclass
class EvalReport:
    """Side-by-side evaluation of several replacements. ``figure()``, ``to_frame()``, HTML repr."""
    results: list[ReplacementEval]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.row() for r in self.results])

    def __getitem__(self, name: str) -> ReplacementEval:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"No result named {name!r}; have {[r.name for r in self.results]}.")

    def figure(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        fig = make_subplots(rows=1, cols=3, subplot_titles=("fraction of loss recovered", "FVU of mlp_out",
                                                            "feature frequency (log10)"))
        names = [r.name for r in self.results]
        fig.add_trace(go.Bar(x=names, y=[r.loss_recovered for r in self.results],
                             text=[f"L0 {r.l0:.0f}" for r in self.results], showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=names, y=[r.fvu for r in self.results], showlegend=False), row=1, col=2)
        for r in self.results:
            f = r.feature_frequency.clamp_min(1e-6).log10().numpy()
            fig.add_trace(go.Histogram(x=f, name=r.name, opacity=0.6, nbinsx=40), row=1, col=3)
        fig.update_layout(barmode="overlay", height=340, title="Transcoder / SAE evaluation (held-out text)")
        return fig

    def _repr_html_(self) -> str:
        return "<b>EvalReport</b>" + self.to_frame().to_html(float_format=lambda v: f"{v:.3f}", index=False)


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> per-prediction loss (B, T−1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -lp.gather(-1, ids[:, 1:, None])[..., 0]


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


@torch.no_grad()
def evaluate(model, replacements: dict[str, Any], layer: int | None = None, texts: Sequence[str] | None = None,
             n_windows: int = 16, context: int = 128, batch_prompts: int = 4, dense_threshold: float = 0.1,
             seed: int = 0) -> EvalReport:
    """Evaluate transcoders / SAEs replacing the MLP at ``layer`` on held-out windows.

    replacements: {name: module}; a ``Transcoder`` replaces mlp_out by TC(mlp_in), any other
    SAELens ``SAE`` by its reconstruction of mlp_out. layer: defaults to the transcoders'
    ``hook_layer`` metadata. texts: default the bundled corpus's evaluation split.
    The clean and zero-ablated runs are shared by all replacements.
    """
    if not replacements:
        raise InputError("Nothing to evaluate: pass {name: transcoder or SAE}.")
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
    if texts is None:
        texts = load_corpus("eval")
    mods = {n: m.eval() for n, m in replacements.items()}
    hi, ho = hook_names(layer)
    ce = {"clean": [], "zero": [], **{n: [] for n in mods}}
    sq_err = {n: 0.0 for n in mods}
    l0 = {n: 0.0 for n in mods}
    freq = {n: torch.zeros(m.cfg.d_sae) for n, m in mods.items()}
    ys: list[torch.Tensor] = []
    done = 0
    for ids in token_windows(model.tokenizer, texts, context=context, batch_prompts=batch_prompts, seed=seed):
        ids = ids[: n_windows - done]
        run = model.run(ids, capture=[hi, ho])
        x, y = run.captures[hi][:, 1:].reshape(-1, model.info.d_model), run.captures[ho][:, 1:].reshape(-1, model.info.d_model)
        ys.append(y)
        ce["clean"].append(_ce(run.logits, ids))
        ce["zero"].append(_ce(model.run(ids, interventions=[_ReplaceMLP(layer, "zero")]).logits, ids))
        for n, m in mods.items():
            is_tc = isinstance(m, Transcoder)
            z = m.encode(x if is_tc else y)
            y_hat = m(x) if is_tc else m.decode(z)
            sq_err[n] += float(((y_hat - y) ** 2).sum())
            act = z > 0
            l0[n] += float(act.sum())
            freq[n] += act.sum(0).float()
            iv = _ReplaceMLP(layer, "transcoder" if is_tc else "sae", m)
            ce[n].append(_ce(model.run(ids, interventions=[iv]).logits, ids))
        done += ids.shape[0]
        if done >= n_windows:
            break
    if done == 0:
        raise InputError("No evaluation windows: the texts are shorter than one context window.")
    yall = torch.cat(ys)
    var = float(((yall - yall.mean(0)) ** 2).sum())
    n_tok = yall.shape[0]
    mean_ce = {k: float(torch.cat(v).mean()) for k, v in ce.items()}
    results = []
    for n, m in mods.items():
        f = freq[n] / n_tok
        results.append(ReplacementEval(
            name=n, kind="transcoder" if isinstance(m, Transcoder) else "sae", layer=layer, d_sae=m.cfg.d_sae,
            n_tokens=n_tok, l0=l0[n] / n_tok, fvu=sq_err[n] / var, ce_clean=mean_ce["clean"], ce_replaced=mean_ce[n],
            ce_zero=mean_ce["zero"], dead_fraction=float((f == 0).float().mean()),
            dense_fraction=float((f > dense_threshold).float().mean()), feature_frequency=f))
    return EvalReport(results)


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
