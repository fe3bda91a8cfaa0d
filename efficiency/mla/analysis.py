"""What the MHA2MLA conversion does: KV bytes per layer and quality against d_kv; attention sinks per head.

- ``mla_report(model, calib_texts, eval_texts, d_kvs)``: for each d_kv, the physical KV bytes of every
  layer after prefilling an evaluation text (measured from the cache's tensors), the perplexity of the
  evaluation texts (second half of each scored after the first), and any ``extra(model) -> dict`` metrics
  (e.g. passkey accuracy), next to the unmodified model.
- ``mla_attention_effect(model, method, text)``: attention of the converted layers (recorded inside the
  latent attention) against the unmodified model's: mass on position 0 (the sink) per layer and head,
  and the total-variation distance between the two patterns.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.errors import InputError
from workbench.result import Result

from ..calibration import check_texts


def _layer_bytes(cache) -> list[int]:
    """Physical bytes of each layer: its tensors plus its int64 position index (``cache.positions[l]``), each
    storage counted once, so the layers sum to ``cache.stats().physical_bytes``."""
    from workbench.kv_cache import tensors_of

    out = []
    for l, lay in enumerate(cache.layers()):
        index = [cache.positions[l]] if l < len(cache.positions) else []
        storages = {(t.device.type, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes()
                    for t in tensors_of(lay) + index if t.numel()}
        out.append(sum(storages.values()))
    return out


@dataclass(repr=False)
class MLAReport(Result):
    """rows: one per variant (d_kv None = unmodified): kv_bytes, perplexity, extra metrics;
    layer_bytes: {variant label: [bytes per layer]}."""

    rows: list
    layer_bytes: dict
    n_tokens: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def summary(self) -> str:
        f = self.to_frame()
        parts = ", ".join(f"{r.variant}: {r.kv_bytes / 2**20:.2f} MiB ppl {r.perplexity:.1f}" for r in f.itertuples())
        return f"MLAReport({self.n_tokens}-token prefill; {parts})"

    def figure(self, **_) -> go.Figure:
        f = self.to_frame()
        fig = make_subplots(rows=1, cols=2, subplot_titles=("physical KV bytes per layer", "quality vs d_kv"),
                            specs=[[{}, {"secondary_y": True}]])
        for label, b in self.layer_bytes.items():
            fig.add_bar(x=list(range(len(b))), y=[v / 1024 for v in b], name=label, row=1, col=1)
        conv = f[f.d_kv.notna()]
        fig.add_scatter(x=conv.d_kv, y=conv.perplexity, mode="lines+markers", name="perplexity", row=1, col=2)
        base = f[f.d_kv.isna()]
        if len(base):
            fig.add_hline(y=float(base.perplexity.iloc[0]), line_dash="dash", row=1, col=2,
                          annotation_text="unmodified perplexity")
        fig.add_scatter(x=conv.d_kv, y=conv.kv_ratio, mode="lines+markers", name="KV bytes / unmodified", row=1, col=2,
                        secondary_y=True)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.update_xaxes(title_text="d_kv", type="log", row=1, col=2)
        fig.update_yaxes(title_text="KiB", row=1, col=1)
        fig.update_yaxes(title_text="perplexity", type="log", row=1, col=2)
        fig.update_layout(title="MHA2MLA without fine-tuning: KV bytes and quality", barmode="group")
        return fig


def mla_report(model, calib_texts, eval_texts, d_kvs=(8, 16, 32), rope_dims: int = 8, extra=None,
               prefill_text: str | None = None, **knobs) -> MLAReport:
    """See the module docstring. ``knobs`` go to every ``MHA2MLA`` (svd=, rope_select=, ...)."""
    from efficiency.kv.harness import perplexity

    from .mha2mla import MHA2MLA

    eval_texts = check_texts(eval_texts, "evaluation")
    text = prefill_text or eval_texts[0]
    rows, layer_bytes = [], {}

    def measure(label, d_kv, iv):
        with model.intervene(*([iv] if iv is not None else [])):
            cache = model.prefill(text)
            ppl = perplexity(model, eval_texts).perplexity
            more = extra(model) if extra is not None else {}
        st = cache.stats()
        layer_bytes[label] = _layer_bytes(cache)
        rows.append({"variant": label, "d_kv": d_kv, "rope_dims": None if d_kv is None else rope_dims,
                     "kv_bytes": st.physical_bytes, "perplexity": ppl, **more})
        return st

    with model.without_interventions():
        base = measure("unmodified", None, None)
        for d in d_kvs:
            meth = MHA2MLA(d_kv=d, rope_dims=rope_dims, **knobs)
            meth.prepare(model, calib_texts)
            measure(f"d_kv={d}", d, meth.intervention(model))
    for r in rows:
        r["kv_ratio"] = r["kv_bytes"] / base.physical_bytes
    return MLAReport(rows, layer_bytes, base.full_tokens)


@dataclass(repr=False)
class MLAAttentionEffect(Result):
    """sink_base / sink_mla: (L, H) attention mass on position 0 (mean over queries after the first);
    tv: (L, H) mean total-variation distance between the two patterns."""

    sink_base: torch.Tensor
    sink_mla: torch.Tensor
    tv: torch.Tensor
    label: str

    def to_frame(self) -> pd.DataFrame:
        n_l, n_h = self.tv.shape
        return pd.DataFrame([{"layer": l, "head": h, "sink_base": float(self.sink_base[l, h]),
                              "sink_mla": float(self.sink_mla[l, h]), "tv": float(self.tv[l, h])}
                             for l in range(n_l) for h in range(n_h)])

    def summary(self) -> str:
        return (f"MLAAttentionEffect({self.label}: sink mass {float(self.sink_base.mean()):.2f} -> "
                f"{float(self.sink_mla.mean()):.2f} on average; attention TV {float(self.tv.mean()):.3f})")

    def figure(self, **_) -> go.Figure:
        fig = make_subplots(rows=1, cols=3, subplot_titles=("sink mass, unmodified", f"sink mass, {self.label}",
                                                            "attention TV distance"))
        for i, z in enumerate((self.sink_base, self.sink_mla, self.tv)):
            fig.add_heatmap(z=z.numpy().T, colorscale="Viridis", showscale=i == 2, zmin=0, zmax=1, row=1, col=i + 1)
            fig.update_xaxes(title_text="layer", row=1, col=i + 1)
        fig.update_yaxes(title_text="head", row=1, col=1)
        fig.update_layout(title="Attention of the converted layers vs the unmodified model")
        return fig


def mla_attention_effect(model, method, text: str) -> MLAAttentionEffect:
    """Sink mass per (layer, head) and pattern distance, unmodified vs ``method`` (a prepared ``MHA2MLA``)."""
    if not isinstance(text, str) or not text:
        raise InputError("mla_attention_effect(): give a non-empty text.")
    layers = sorted(method.factors)
    if not layers:
        raise InputError("mla_attention_effect(): prepare the method first.")
    with model.without_interventions():
        run = model.run(text, capture=["pattern"], layers=layers, logits=None)
        base = {l: run["pattern", l][0].double().cpu() for l in layers}
        edit = method.intervention(model)
        with model.intervene(edit):
            for mod in edit.modules.values():
                mod.record_attention = True
            model.run(text, logits=None)
            mla = {l: edit.modules[l].last_pattern[0].double().cpu() for l in layers}
    sb = torch.stack([base[l][:, 1:, 0].mean(-1) for l in layers]).float()
    sm = torch.stack([mla[l][:, 1:, 0].mean(-1) for l in layers]).float()
    tv = torch.stack([0.5 * (base[l] - mla[l]).abs().sum(-1)[:, 1:].mean(-1) for l in layers]).float()
    return MLAAttentionEffect(sb, sm, tv, method.label)
