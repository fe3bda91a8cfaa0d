"""From the baseline's pass and a method's pass to an ``EffectReport`` (formulas: ``lab.report`` docstring)."""
from __future__ import annotations

import statistics
import warnings

import numpy as np
import pandas as pd
import torch

from . import concepts as _concepts
from .dla import DLA_TOLERANCE
from .metrics import js_divergence, pearson, residual_drift, topk_kept, total_variation
from .report import EffectReport, wilson

PASSKEY_MODE = "query-aware: the question is inside the compressed prefix"


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def quality(base, rec) -> dict:
    n_scored = sum(w.n_scored for w in rec.windows)
    agree = sum(int((wb.top1 == wm.top1).sum()) for wb, wm in zip(base.windows, rec.windows))
    kls = [w.kl for w in rec.windows if w.kl is not None]
    kl = torch.cat(kls) if kls else torch.zeros(0)
    q = {"perplexity_base": base.perplexity, "perplexity": rec.perplexity, "n_scored": n_scored,
         "kl": float(kl.mean()) if kl.numel() else 0.0, "kl_max": float(kl.max()) if kl.numel() else 0.0,
         "n_kl": int(kl.numel()), "top1_agreement": agree / max(n_scored, 1)}
    nf = len(rec.facts)
    kf, kfb = sum(f.correct for f in rec.facts), sum(f.correct for f in base.facts)
    q.update(n_facts=nf, fact_accuracy=kf / nf if nf else float("nan"),
             fact_accuracy_base=kfb / nf if nf else float("nan"), fact_ci=wilson(kf, nf), fact_ci_base=wilson(kfb, nf),
             fact_logprob=float(np.mean([f.answer_logprob for f in rec.facts])) if nf else float("nan"),
             fact_logprob_base=float(np.mean([f.answer_logprob for f in base.facts])) if nf else float("nan"),
             fact_changed=sum(a.top1 != b.top1 for a, b in zip(rec.facts, base.facts)))
    npk = len(rec.passkeys)
    kp, kpb = sum(p.correct for p in rec.passkeys), sum(p.correct for p in base.passkeys)
    q.update(n_passkey=npk, passkey_accuracy=kp / npk if npk else float("nan"),
             passkey_accuracy_base=kpb / npk if npk else float("nan"), passkey_ci=wilson(kp, npk),
             passkey_ci_base=wilson(kpb, npk),
             passkey_logprob=float(np.mean([p.answer_logprob for p in rec.passkeys])) if npk else float("nan"),
             passkey_logprob_base=float(np.mean([p.answer_logprob for p in base.passkeys])) if npk else float("nan"))
    return q


def internals(base, rec) -> dict:
    """Drift, attention divergence and sink mass over the internals windows (token-weighted means)."""
    pairs = [(a.internals, b.internals) for a, b in zip(base.windows, rec.windows) if a.internals is not None]
    rels, coss, tvs, jss, sb, sm, weights = [], [], [], [], [], [], []
    for ib, im in pairs:
        r, c = residual_drift(ib.resid, im.resid)
        rels.append(r)
        coss.append(c)
        tvs.append(total_variation(ib.probe_rows, im.probe_rows).mean(0))  # (L, H)
        jss.append(js_divergence(ib.received, im.received))
        sb.append(ib.received[..., 0].double())
        sm.append(im.received[..., 0].double())
        weights.append(ib.resid.shape[1])
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    avg = lambda xs: _np(sum(wi * x for wi, x in zip(w, xs)))  # noqa: E731
    return {"drift_rel": avg(rels), "drift_cos": avg(coss), "attention_tv": avg(tvs), "attention_js": avg(jss),
            "sink_base": avg(sb), "sink_method": avg(sm)}


def massive(base, rec) -> dict:
    """Per stage: the baseline's peak token's norm before and after, peak/median ratios, its top dimension."""
    mb = base.windows[0].internals.massive
    mm = rec.windows[0].internals.massive
    p = int(mb.peak_position[0])
    dims = mb.top_dims[0, :, 0]  # (S,) the baseline's top dim per stage
    return {"stages": list(mb.stage_labels), "peak_position": p, "peak_token": mb.str_tokens[0][p],
            "norm_base": _np(mb.norms[0, :, p]), "norm_method": _np(mm.norms[0, :, p]),
            "ratio_base": _np(mb.ratio[0]), "ratio_method": _np(mm.norms[0, :, p] / mm.median_other[0]),
            "top_dim": [int(d) for d in dims], "top_value_base": _np(mb.top_values[0, :, 0]),
            "median_base": _np(mb.median_other[0]), "median_method": _np(mm.median_other[0])}


def _dla_stack(facts, metric: str) -> dict:
    ds = [f.dla for f in facts]
    return {"heads": np.stack([d.metric(d.heads, metric) for d in ds]), "mlps": np.stack([d.metric(d.mlps, metric) for d in ds]),
            "embed": np.array([d.metric(d.embed, metric) for d in ds]),
            "attn_bias": np.stack([d.metric(d.attn_bias, metric) for d in ds])}


def dla(base, rec) -> dict:
    """Mean DLA per component over the facts, before, and its change (metrics "diff" and "logit")."""
    if not rec.facts:
        return {}
    out = {"error_base": max(f.dla.error for f in base.facts), "error_method": max(f.dla.error for f in rec.facts),
           "n_facts": len(rec.facts)}
    for metric, key in (("diff", ""), ("logit", "_logit")):
        b, m = _dla_stack(base.facts, metric), _dla_stack(rec.facts, metric)
        out["heads_base" + key] = b["heads"].mean(0)
        out["heads_delta" + key] = (m["heads"] - b["heads"]).mean(0)
        out["mlps_base" + key] = b["mlps"].mean(0)
        out["mlps_delta" + key] = (m["mlps"] - b["mlps"]).mean(0)
        out["embed_base" + key] = float(b["embed"].mean())
        out["embed_delta" + key] = float((m["embed"] - b["embed"]).mean())
    # per fact, the heads' change (for overlaps between methods): (n_facts, L, H)
    out["heads_delta_per_fact"] = _dla_stack(rec.facts, "diff")["heads"] - _dla_stack(base.facts, "diff")["heads"]
    return out


def features(base, rec, k: int) -> dict:
    """Per transcoder layer: top-k kept, activation correlation, per-feature firing and activation."""
    out = {}
    pairs = [(a.internals, b.internals) for a, b in zip(base.windows, rec.windows) if a.internals is not None]
    if not pairs or not pairs[0][0].features:
        return out
    for l in pairs[0][0].features:
        fb = torch.cat([ib.features[l] for ib, _ in pairs])  # (N, F)
        fm = torch.cat([im.features[l] for _, im in pairs])
        kept = topk_kept(fb, fm, k)
        on_b, on_m = (fb > 0).double(), (fm > 0).double()
        mean_b, mean_m = fb.double().mean(0), fm.double().mean(0)
        per = pd.DataFrame({"feature": np.arange(fb.shape[1]), "freq_base": _np(on_b.mean(0)),
                            "freq_method": _np(on_m.mean(0)), "mean_base": _np(mean_b), "mean_method": _np(mean_m)})
        per["activation_kept"] = np.where(per.mean_base > 0, per.mean_method / per.mean_base.where(per.mean_base > 0, 1),
                                          np.nan)
        per["dead"] = (per.freq_base > 0) & (per.freq_method == 0)
        out[l] = {"kept": float(np.nanmean(_np(kept))) if (~kept.isnan()).any() else float("nan"),
                  "correlation": pearson(fb, fm), "n_tokens": int(fb.shape[0]),
                  "n_active_base": int((per.freq_base > 0).sum()), "n_dead": int(per.dead.sum()),
                  "n_born": int(((per.freq_base == 0) & (per.freq_method > 0)).sum()), "per_feature": per, "k": k}
    return out


def concept(base, rec, frame, tokens) -> dict | None:
    if frame is None:
        return None
    hb = base.windows[0].internals.final_resid
    hm = rec.windows[0].internals.final_resid
    sb, sm = _concepts.scores(frame, hb), _concepts.scores(frame, hm)
    return {"name": frame.name, "tokens": tokens, "base": _np(sb), "method": _np(sm), "correlation": pearson(sb, sm),
            "mean_abs_change": float((sm - sb).abs().mean()), "k": frame.k}


def timing(extra: dict) -> dict | None:
    t = extra.get("timing")
    if not t:
        return None
    med = statistics.median
    return {"baseline_prefill_ms": med(t["baseline_prefill"]), "method_prefill_ms": med(t["method_prefill"]),
            "baseline_decode_ms": med(t["baseline_decode"]), "method_decode_ms": med(t["method_decode"]),
            "raw": {k: list(v) for k, v in t.items() if isinstance(v, list)}, "tokens": t["tokens"],
            "decode_tokens": t["decode_tokens"], "threads": extra["threads"],
            "loadavg_before": extra["loadavg_before"], "loadavg_after": extra["loadavg_after"],
            "forward_passes": t["forward_passes"]}


def build_report(model, method, b, rec, extra: dict, baseline_forwards: int) -> EffectReport:
    """Compare ``rec`` (the method's pass) with the baseline ``b``; drop the raw tensors afterwards."""
    notes = list(b.notes)
    cost = method.cost(model, rec.kv_tokens)
    measured = {"weight_bytes": extra["weight_bytes"], "process_weight_bytes": extra["process_weight_bytes"],
                "kv_bytes": rec.kv_bytes, "kv_tokens": rec.kv_tokens, "baseline_weight_bytes": b.weight_bytes,
                "baseline_kv_bytes": b.record.kv_bytes}
    if (cost.weight_bytes, cost.kv_bytes) != (measured["weight_bytes"], measured["kv_bytes"]):
        notes.append(f"cost model and measurement differ: predicted weights {cost.weight_bytes} / KV {cost.kv_bytes} "
                     f"bytes, measured {measured['weight_bytes']} / {measured['kv_bytes']}")
    if method.saving != "real":
        notes.append(f"saving is {method.saving}: {cost.note or 'see the method'}; this process holds "
                     f"{measured['process_weight_bytes']} bytes of weights while it simulates")
    inter = internals(b.record, rec)
    d = dla(b.record, rec)
    if d and max(d["error_base"], d["error_method"]) > DLA_TOLERANCE:
        msg = (f"DLA misses the logit by up to {max(d['error_base'], d['error_method']):.2e} under {method.label}: the "
               "method changes the residual stream in a way the head/MLP decomposition does not see (e.g. activations "
               "quantized inside a projection); the DLA panel is approximate")
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    win0 = b.data.windows[0]
    rep = EffectReport(
        method=method.label, family=method.family, saving=method.saving, model_name=model.info.name,
        suite_name=b.suite.name, suite_text=b.suite.describe(), cost=cost, measured=measured, timing=timing(extra),
        quality=quality(b.record, rec), massive=massive(b.record, rec), dla=d,
        features=features(b.record, rec, b.suite.feature_top_k),
        concept=concept(b.record, rec, b.concept, model.str_tokens(win0.tolist())),
        forward_passes={"baseline": baseline_forwards, "method": rec.forward_passes,
                        "timing": (extra.get("timing") or {}).get("forward_passes", 0)},
        seconds=rec.seconds, passkey_mode=PASSKEY_MODE, notes=notes, **inter)
    for w in rec.windows:  # the method's raw tensors are no longer needed
        w.internals = None
    return rep


__all__ = ["build_report", "PASSKEY_MODE"]
