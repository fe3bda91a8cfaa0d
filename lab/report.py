"""``EffectReport``: what one efficiency method saves and what it changes inside the model, against the baseline.

Built by ``lab.effects`` from the baseline's pass and the method's pass (``lab.engine``). Every internals
number compares the method with the baseline on the same tokens (L layers, H query heads, S = L + 1 stages):

- drift (L,): mean over the tail tokens of ‖x' − x‖/‖x‖ and of cos(x, x') at ``resid_post``;
- attention (L, H): total variation between baseline and method rows of the probe queries (mean), and the
  Jensen-Shannon divergence (nats) of the attention each position receives, averaged over the tail queries;
- sinks (L, H): attention mass on position 0 (mean over the tail queries), before and after;
- massive (S,): residual norm of the baseline's peak token (``probes.sinks.massive_activations``) per stage,
  before and after, with the peak/median ratio and the value of the baseline's top dimension;
- dla: mean over facts of each component's direct logit attribution (answer − mean of the other
  candidates, and the answer's logit), before and after; the components that changed most;
- features {layer}: share of each tail token's top-k transcoder features kept, Pearson correlation of all
  activations, per feature firing rate and mean activation before/after (the features that die first);
- concept: concept scores along the first internals window, before and after.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from workbench.result import Result

PANELS = ("overview", "cost", "quality", "drift", "attention", "sinks", "massive", "dla", "features", "concepts")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n ((nan, nan) for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, c - h), min(1.0, c + h)


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f} MiB"


@dataclass(repr=False)
class EffectReport(Result):
    """One method against the baseline (see the module docstring for every internals field).

    cost: the method's ``Cost`` predicted for ``measured["kv_tokens"]`` tokens of context; measured: bytes really
    held (``weight_bytes``: the weights as the method holds them, ``process_weight_bytes``:
    ``model.parameter_bytes()`` inside its intervention, which for a simulation includes full-precision stand-ins;
    ``kv_bytes``: the first window's cache after the policy) and the baseline's; timing: ms per token,
    baseline and method interleaved in one run (medians, every repeat, threads, load average); quality: the
    quality numbers; forward_passes: {"baseline": forwards run for the baseline (0 when reused), "method": ...,
    "timing": ...}; notes: panels left out and warnings.
    """

    method: str
    family: str
    saving: str
    model_name: str
    suite_name: str
    suite_text: str
    cost: object
    measured: dict
    timing: dict | None
    quality: dict
    drift_rel: np.ndarray
    drift_cos: np.ndarray
    attention_tv: np.ndarray
    attention_js: np.ndarray
    sink_base: np.ndarray
    sink_method: np.ndarray
    massive: dict
    dla: dict
    features: dict
    concept: dict | None
    forward_passes: dict
    seconds: float
    passkey_mode: str
    notes: list = field(default_factory=list)

    # ------------------------------------------------------------------ tables
    def cost_table(self) -> pd.DataFrame:
        """Bytes (predicted by the cost model, measured, baseline) and ms/token, with the saving kind."""
        c, m = self.cost, self.measured
        rows = [
            {"what": "weights", "baseline": m["baseline_weight_bytes"], "predicted": c.weight_bytes,
             "measured": m["weight_bytes"], "held by this process": m["process_weight_bytes"], "saving": self.saving},
            {"what": f"KV cache ({m['kv_tokens']} tokens)", "baseline": m["baseline_kv_bytes"], "predicted": c.kv_bytes,
             "measured": m["kv_bytes"], "held by this process": m["kv_bytes"], "saving": self.saving},
        ]
        df = pd.DataFrame(rows)
        if self.timing:
            t = self.timing
            df = pd.concat([df, pd.DataFrame([
                {"what": "prefill ms/token", "baseline": t["baseline_prefill_ms"], "measured": t["method_prefill_ms"],
                 "saving": "measured"},
                {"what": "decode ms/token", "baseline": t["baseline_decode_ms"], "measured": t["method_decode_ms"],
                 "saving": "measured"}])], ignore_index=True)
        return df

    def quality_table(self) -> pd.DataFrame:
        q = self.quality
        rows = [{"metric": "perplexity", "baseline": q["perplexity_base"], "method": q["perplexity"],
                 "n": q["n_scored"]},
                {"metric": "next-token KL (nats)", "baseline": 0.0, "method": q["kl"], "n": q["n_kl"]},
                {"metric": "top-1 agreement", "baseline": 1.0, "method": q["top1_agreement"], "n": q["n_scored"]}]
        if q["n_facts"]:
            rows.append({"metric": "fact accuracy", "baseline": q["fact_accuracy_base"], "method": q["fact_accuracy"],
                         "n": q["n_facts"], "ci95_method": q["fact_ci"], "ci95_baseline": q["fact_ci_base"]})
            rows.append({"metric": "fact answer log-prob", "baseline": q["fact_logprob_base"],
                         "method": q["fact_logprob"], "n": q["n_facts"]})
        if q["n_passkey"]:
            rows.append({"metric": f"passkey accuracy ({self.passkey_mode})", "baseline": q["passkey_accuracy_base"],
                         "method": q["passkey_accuracy"], "n": q["n_passkey"], "ci95_method": q["passkey_ci"],
                         "ci95_baseline": q["passkey_ci_base"]})
            rows.append({"metric": "passkey answer log-prob", "baseline": q["passkey_logprob_base"],
                         "method": q["passkey_logprob"], "n": q["n_passkey"]})
        return pd.DataFrame(rows)

    def top_changed(self, n: int = 10, metric: str = "diff") -> pd.DataFrame:
        """The heads, MLPs and the embedding whose mean DLA changed most (by |Δ|), with before and after."""
        d = self.dla
        if not d:
            return pd.DataFrame(columns=["component", "layer", "head", "baseline", "method", "delta"])
        key = "" if metric == "diff" else "_logit"
        rows = []
        L, H = d["heads_base" + key].shape
        for l in range(L):
            for h in range(H):
                b = d["heads_base" + key][l, h]
                rows.append({"component": f"L{l}H{h}", "layer": l, "head": h, "baseline": b,
                             "method": b + d["heads_delta" + key][l, h], "delta": d["heads_delta" + key][l, h]})
            b = d["mlps_base" + key][l]
            rows.append({"component": f"MLP{l}", "layer": l, "head": None, "baseline": b,
                         "method": b + d["mlps_delta" + key][l], "delta": d["mlps_delta" + key][l]})
        b = d["embed_base" + key]
        rows.append({"component": "embed", "layer": None, "head": None, "baseline": b, "method": b + d["embed_delta" + key],
                     "delta": d["embed_delta" + key]})
        df = pd.DataFrame(rows)
        return df.reindex(df.delta.abs().sort_values(ascending=False).index).head(n).reset_index(drop=True)

    def top_changed_heads(self, n: int = 10, metric: str = "diff") -> list[tuple[int, int]]:
        """(layer, head) of the n heads whose mean DLA changed most."""
        d = self.dla
        if not d:
            return []
        v = np.abs(d["heads_delta" + ("" if metric == "diff" else "_logit")])
        order = np.argsort(-v, axis=None)[:n]
        return [tuple(int(i) for i in np.unravel_index(o, v.shape)) for o in order]

    def dying_features(self, n: int = 20, layer: int | None = None) -> pd.DataFrame:
        """Features active in the baseline sorted by how much of their activation the method removes (dead
        ones first: firing rate 0 under the method)."""
        frames = []
        for l, f in self.features.items():
            if layer is not None and l != layer:
                continue
            frames.append(f["per_feature"].assign(layer=l))
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        df = df[df.freq_base > 0]
        return df.sort_values(["dead", "activation_kept", "freq_base"], ascending=[False, True, False]).head(n) \
            .reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        """Every number in one long table: panel, metric, layer, head, item, baseline, method, change."""
        rows = []

        def add(panel, metric, base, meth, layer=None, head=None, item=None):
            b = None if base is None else float(base)
            m = None if meth is None else float(meth)
            rows.append({"panel": panel, "metric": metric, "layer": layer, "head": head, "item": item, "baseline": b,
                         "method": m, "change": None if b is None or m is None else m - b})

        for _, r in self.cost_table().iterrows():
            add("cost", r["what"], r["baseline"], r["measured"], item=f"predicted={r.get('predicted')}, "
                                                                        f"saving={r['saving']}")
        for _, r in self.quality_table().iterrows():
            add("quality", r["metric"], r["baseline"], r["method"], item=f"n={r['n']}")
        for l in range(len(self.drift_rel)):
            add("drift", "relative error", 0.0, self.drift_rel[l], layer=l)
            add("drift", "cosine", 1.0, self.drift_cos[l], layer=l)
        L, H = self.attention_tv.shape
        for l in range(L):
            for h in range(H):
                add("attention", "TV (probe rows)", 0.0, self.attention_tv[l, h], l, h)
                add("attention", "JS (received mass)", 0.0, self.attention_js[l, h], l, h)
                add("sinks", "sink mass", self.sink_base[l, h], self.sink_method[l, h], l, h)
        m = self.massive
        for s_, lab in enumerate(m["stages"]):
            add("massive", "peak-token norm", m["norm_base"][s_], m["norm_method"][s_], item=lab)
            add("massive", "peak/median ratio", m["ratio_base"][s_], m["ratio_method"][s_], item=lab)
        for _, r in self.top_changed(n=10**6).iterrows():
            add("dla", "mean DLA (answer − others)", r["baseline"], r["method"],
                None if pd.isna(r["layer"]) else int(r["layer"]), None if pd.isna(r["head"]) else int(r["head"]),
                r["component"])
        for l, f in self.features.items():
            add("features", "top-k kept", 1.0, f["kept"], layer=l)
            add("features", "activation correlation", 1.0, f["correlation"], layer=l)
            add("features", "dead features", 0, f["n_dead"], layer=l)
        if self.concept:
            c = self.concept
            for t, (b, x) in enumerate(zip(c["base"], c["method"])):
                add("concepts", f"score {c['name']}", b, x, item=f"{t}:{c['tokens'][t]}")
        return pd.DataFrame(rows, columns=["panel", "metric", "layer", "head", "item", "baseline", "method", "change"])

    # ------------------------------------------------------------------ one line
    def summary(self) -> str:
        q = self.quality
        parts = [f"{self.method} [{self.family}, saving {self.saving}] on {self.model_name}, suite {self.suite_name}",
                 f"perplexity {q['perplexity_base']:.3f} -> {q['perplexity']:.3f}", f"KL {q['kl']:.4f}"]
        if q["n_facts"]:
            parts.append(f"facts {q['fact_accuracy_base']:.2f} -> {q['fact_accuracy']:.2f}")
        if q["n_passkey"]:
            parts.append(f"passkey {q['passkey_accuracy_base']:.2f} -> {q['passkey_accuracy']:.2f}")
        m = self.measured
        parts.append(f"weights {_mib(m['baseline_weight_bytes'])} -> {_mib(m['weight_bytes'])}, KV "
                     f"{_mib(m['baseline_kv_bytes'])} -> {_mib(m['kv_bytes'])} ({self.saving})")
        return "EffectReport(" + "; ".join(parts) + ")"

    def _repr_html_(self) -> str:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<b>{html.escape(self.summary())}</b>"
                + self.cost_table().to_html(index=False, float_format=lambda v: f"{v:,.4g}")
                + self.quality_table().to_html(index=False, float_format=lambda v: f"{v:.4g}")
                + (f"<ul>{notes}</ul>" if notes else "")
                + f"<i>figure(panel=...) for {', '.join(PANELS)}; to_frame() for every number</i>")

    # ------------------------------------------------------------------ figures
    def figure(self, panel: str = "overview", **options):
        """One panel: "overview", "cost", "quality", "drift", "attention", "sinks", "massive", "dla", "features",
        "concepts"."""
        from . import figures

        if panel not in PANELS:
            from workbench.errors import InputError
            from workbench.hook_names import suggest

            raise InputError(f"Unknown panel {panel!r}.{suggest(str(panel), PANELS)} Panels: {', '.join(PANELS)}.")
        return getattr(figures, f"{panel}_figure")(self, **options)

    def panels(self) -> list[str]:
        """The panels this report can draw (features and concepts only when they were measured)."""
        out = [p for p in PANELS if p not in ("features", "concepts")]
        if self.features:
            out.append("features")
        if self.concept:
            out.append("concepts")
        return out


__all__ = ["EffectReport", "PANELS", "wilson"]
