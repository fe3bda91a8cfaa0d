"""Several methods side by side, and combinations against their parts (``lab.compare_effects``).

Every method runs against the same cached baseline (one baseline pass for the whole comparison). For each
combination (``m1 + m2`` or a list), its parts also run alone (``with_parts=True``), so the table shows whether
savings add up and whether the damage does: ``combination_table()``. ``head_overlap()`` asks whether two
methods hurt factual recall through the same heads: the overlap of their top-n heads by |ΔDLA| (Jaccard) and
the Spearman correlation of |ΔDLA| over all heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from efficiency import Combined
from workbench.errors import InputError
from workbench.result import Result

from .effects import effects
from .methods import parts, resolve_method
from .report import EffectReport
from .suite import get_suite


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a.ravel()).rank().to_numpy()
    rb = pd.Series(b.ravel()).rank().to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def summary_row(r: EffectReport) -> dict:
    """One report's headline numbers (bytes measured, quality, internals summaries)."""
    q, m = r.quality, r.measured
    total_b = m["baseline_weight_bytes"] + m["baseline_kv_bytes"]
    row = {"method": r.method, "family": r.family, "saving": r.saving,
           "weight_MiB": m["weight_bytes"] / 2**20, "kv_MiB": m["kv_bytes"] / 2**20,
           "bytes_ratio": (m["weight_bytes"] + m["kv_bytes"]) / max(total_b, 1),
           "cost_model_exact": (r.cost.weight_bytes, r.cost.kv_bytes) == (m["weight_bytes"], m["kv_bytes"]),
           "perplexity": q["perplexity"], "perplexity_base": q["perplexity_base"], "kl": q["kl"],
           "top1_agreement": q["top1_agreement"], "fact_accuracy": q["fact_accuracy"],
           "fact_accuracy_base": q["fact_accuracy_base"], "passkey_accuracy": q["passkey_accuracy"],
           "passkey_accuracy_base": q["passkey_accuracy_base"],
           "drift_last_layer": float(r.drift_rel[-1]), "drift_max": float(np.max(r.drift_rel)),
           "attention_tv_mean": float(r.attention_tv.mean()),
           "sink_mass_base": float(r.sink_base.mean()), "sink_mass": float(r.sink_method.mean()),
           "sink_mass_change": float((r.sink_method - r.sink_base).mean()),
           "massive_norm_change": float(np.nanmean(r.massive["norm_method"] / r.massive["norm_base"] - 1))}
    if r.features:
        row["features_kept"] = float(np.nanmean([f["kept"] for f in r.features.values()]))
        row["features_dead"] = int(sum(f["n_dead"] for f in r.features.values()))
    if r.concept:
        row["concept_correlation"] = r.concept["correlation"]
    if r.timing:
        t = r.timing
        row["decode_ms"] = t["method_decode_ms"]
        row["decode_ms_base"] = t["baseline_decode_ms"]
        row["decode_ratio"] = t["method_decode_ms"] / t["baseline_decode_ms"]
        row["prefill_ratio"] = t["method_prefill_ms"] / t["baseline_prefill_ms"]
    return row


@dataclass(repr=False)
class EffectComparison(Result):
    """Reports of several methods against one baseline; ``reports`` in run order (label -> EffectReport);
    ``combos``: label of each combination -> labels of its parts."""

    reports: dict
    combos: dict

    def __getitem__(self, label: str) -> EffectReport:
        if label not in self.reports:
            raise InputError(f"No report for {label!r}; have {', '.join(self.reports)}.")
        return self.reports[label]

    def to_frame(self) -> pd.DataFrame:
        """One row per method: bytes (measured, saving kind), quality and internals summaries."""
        return pd.DataFrame([summary_row(r) for r in self.reports.values()])

    def combination_table(self) -> pd.DataFrame:
        """Per combination: bytes saved and damage of the combination next to the sum over its parts."""
        df = self.to_frame().set_index("method")
        rows = []
        for combo, ps in self.combos.items():
            c = df.loc[combo]
            saved = lambda x: 1 - df.loc[x, "bytes_ratio"]  # noqa: E731
            row = {"combination": combo, "parts": " | ".join(ps), "bytes_saved": saved(combo),
                   "bytes_saved_parts_sum": sum(saved(p) for p in ps),
                   "perplexity_increase": c.perplexity - c.perplexity_base,
                   "perplexity_increase_parts_sum": sum(df.loc[p, "perplexity"] - df.loc[p, "perplexity_base"] for p in ps),
                   "kl": c.kl, "kl_parts_sum": sum(df.loc[p, "kl"] for p in ps),
                   "fact_accuracy": c.fact_accuracy,
                   "fact_accuracy_parts": [df.loc[p, "fact_accuracy"] for p in ps],
                   "drift_last_layer": c.drift_last_layer,
                   "drift_last_layer_parts": [df.loc[p, "drift_last_layer"] for p in ps]}
            rows.append(row)
        return pd.DataFrame(rows)

    def head_overlap(self, n: int = 10, methods=None) -> pd.DataFrame:
        """Pairs of methods: Jaccard overlap of their top-n heads by |mean ΔDLA| over the facts, and the Spearman
        correlation of |mean ΔDLA| over all heads (do they hurt factual recall through the same heads?)."""
        labels = list(methods or self.reports)
        rows = []
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                ra, rb = self[a], self[b]
                if not ra.dla or not rb.dla:
                    continue
                ta, tb = set(ra.top_changed_heads(n)), set(rb.top_changed_heads(n))
                rows.append({"method_a": a, "method_b": b, f"top{n}_jaccard": len(ta & tb) / max(len(ta | tb), 1),
                             "shared_heads": sorted(ta & tb),
                             "spearman_abs_delta": _spearman(np.abs(ra.dla["heads_delta"]), np.abs(rb.dla["heads_delta"]))})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        return f"EffectComparison({len(self.reports)} methods: {', '.join(self.reports)})"

    def figure(self, panel: str = "overview", **options):
        """"overview": bytes (measured, weights + KV) and perplexity/accuracy per method; "overlap": the head
        overlap matrix; any report panel name draws that panel for every method, side by side (e.g. "sinks")."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_frame()
        if panel == "overlap":
            labels = list(self.reports)
            n = options.get("n", 10)
            z = np.eye(len(labels))
            for _, r in self.head_overlap(n).iterrows():
                i, j = labels.index(r.method_a), labels.index(r.method_b)
                z[i, j] = z[j, i] = r[f"top{n}_jaccard"]
            fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale="Viridis",
                                       colorbar_title="Jaccard"))
            fig.update_layout(title=f"Do they change the same heads? Overlap of the top-{n} heads by |ΔDLA|",
                              template="plotly_white", height=500)
            return fig
        if panel != "overview":
            return self._side_by_side(panel, **options)
        fig = make_subplots(rows=1, cols=3, subplot_titles=["MiB measured (saving kind on hover)", "perplexity",
                                                            "accuracy"])
        hover = [f"{m}<br>saving: {s}" for m, s in zip(df.method, df.saving)]
        fig.add_bar(x=df.method, y=df.weight_MiB, name="weights", hovertext=hover, row=1, col=1)
        fig.add_bar(x=df.method, y=df.kv_MiB, name="KV", hovertext=hover, row=1, col=1)
        fig.add_bar(x=df.method, y=df.perplexity, name="perplexity", showlegend=False, row=1, col=2)
        fig.add_hline(y=float(df.perplexity_base.iloc[0]), line_dash="dash", annotation_text="baseline", row=1, col=2)
        fig.add_bar(x=df.method, y=df.fact_accuracy, name="facts", row=1, col=3)
        if df.passkey_accuracy.notna().any():
            fig.add_bar(x=df.method, y=df.passkey_accuracy, name="passkey", row=1, col=3)
        fig.update_layout(barmode="group", title="Methods side by side (same baseline, same suite)",
                          template="plotly_white", height=460)
        fig.update_xaxes(tickangle=-30)
        return fig

    def _side_by_side(self, panel: str, **options):
        from plotly.subplots import make_subplots

        reps = list(self.reports.values())
        figs = [r.figure(panel, **options) for r in reps]
        fig = make_subplots(rows=1, cols=len(figs), subplot_titles=[r.method for r in reps])
        for i, f in enumerate(figs):
            for tr in f.data:
                if getattr(tr, "xaxis", None) not in (None, "x"):
                    continue  # first subplot of multi-panel figures only
                fig.add_trace(tr, row=1, col=i + 1)
        fig.update_layout(title=f"{panel}: methods side by side", template="plotly_white", height=450,
                          showlegend=False)
        return fig


def compare_effects(model, methods, suite="quick", with_parts: bool = True, transcoders="auto",
                    progress: bool = True, reuse=None) -> EffectComparison:
    """``effects`` for each method against one baseline; combinations also get their parts run alone.

    reuse: reports already computed (a list of ``EffectReport`` or an ``EffectComparison``) taken as they are
    when their method's label and suite match, instead of running again."""
    if isinstance(methods, (str, dict)) or not hasattr(methods, "__iter__"):
        methods = [methods]
    resolved = [resolve_method(m) for m in methods]
    if not resolved:
        raise InputError("compare_effects needs at least one method.")
    order, combos = [], {}
    for m in resolved:
        if isinstance(m, Combined) and with_parts:
            for p in parts(m):
                if p.label not in [o.label for o in order]:
                    order.append(p)
            combos[m.label] = [p.label for p in parts(m)]
        if m.label not in [o.label for o in order]:
            order.append(m)
    known = {}
    if reuse is not None:
        for r in (reuse.reports.values() if isinstance(reuse, EffectComparison) else reuse):
            if not isinstance(r, EffectReport):
                raise InputError(f"reuse takes EffectReport objects, got {type(r).__name__}.")
            known[r.method] = r
    text = get_suite(suite).describe()
    reports = {}
    for m in order:
        r = known.get(m.label)
        if r is None or r.suite_text != text or r.model_name != model.info.name:
            r = effects(model, m, suite, transcoders=transcoders, progress=progress)
        reports[m.label] = r
    return EffectComparison(reports, combos)


__all__ = ["compare_effects", "EffectComparison", "summary_row"]
