"""Attribution patching versus activation patching over all heads of SmolLM2 (issue 4 target).

    python benchmarks/bench_patching.py [--repeats 3] [--naive-cells 30] [--threads 2]
                                        [--out benchmarks/results/patching.json]

SmolLM2-135M-Instruct (``workbench.load()``), fp32, CPU, ``torch.set_num_threads(--threads)``.
Prompts: country-capital facts "The capital city of {country} is", each paired with another
country of the same token length (``patching_pair``; answers given, e.g. " Paris" vs " Tokyo").
Metric: logit difference answer - corrupted answer at the last position, normalised so that
clean = 1 and corrupted = 0. Head output z patched at every position.

Per pair and direction (denoise: clean z into the corrupted run; noise: the reverse):

- **attribution patching** (``attribution_patching``, heads only): wall time (min and median
  over ``--repeats``), and the passes it makes, *counted* with a forward hook on the embedding
  (one call per forward pass) and a counter on ``torch.autograd.grad`` (one per backward);
- **batched activation patching** (``patch_heads``, batch 64): all 270 heads patched one at a
  time, 64 patched rows per forward; wall time (one run, its values are the ground truth);
- **naive activation patching**: one forward of batch 1 per head, as 270 separate runs would
  do. Only ``--naive-cells`` heads (spread over all layers) are timed; the time for 270 is
  extrapolated linearly (stated as such in the JSON), and their logit differences are checked
  against the batched run;
- **agreement**: Pearson and Spearman correlation between attribution estimates and real patching
  effects over the 270 heads, and the overlap of their top-10 heads by |effect|.

A plain forward pass of one prompt (``logits="last"``) is timed for reference. The machine may be
shared: load averages are recorded; compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_core import write_json  # noqa: E402

# (country, answer) pairs: clean first, corrupted second; single-token countries on SmolLM2
PAIRS = [(("France", " Paris"), ("Japan", " Tokyo")),
         (("Germany", " Berlin"), ("Italy", " Rome")),
         (("Spain", " Madrid"), ("Greece", " Athens"))]
TEMPLATE = "The capital city of {} is"
TARGET_PASSES = 3


class _Counter:
    """Counts forward passes (``Model.forward_count``) and backward passes (torch.autograd.grad calls)."""

    def __init__(self, model):
        self.model, self.bwd, self.end = model, 0, None

    @property
    def fwd(self) -> int:
        return (self.model.forward_count if self.end is None else self.end) - self.start

    def __enter__(self):
        self.start = self.model.forward_count
        self.real_grad = torch.autograd.grad

        def grad(*a, **k):
            self.bwd += 1
            return self.real_grad(*a, **k)

        torch.autograd.grad = grad
        return self

    def __exit__(self, *exc):
        self.end = self.model.forward_count
        torch.autograd.grad = self.real_grad


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def bench_pair(m, pair, direction, repeats, naive_cells) -> dict:
    from probes.factual.attribution_patching import attribution_patching
    from probes.factual.patching import ActivationPatch, patch_heads

    L, H = m.info.n_layers, m.info.n_heads
    with _Counter(m) as c:
        est = attribution_patching(m, pair, direction=direction, resid=False)
    passes = {"forward": c.fwd, "backward": c.bwd}
    est, att_times = _timed(lambda: attribution_patching(m, pair, direction=direction, resid=False), repeats)
    with _Counter(m) as c:
        act = patch_heads(m, pair, direction=direction, batch_size=64)
    comp = est.compare(act)
    # naive: one batch-1 forward per head, on a subset spread over the layers
    src = pair.clean_ids if direction == "denoise" else pair.corrupted_ids
    tgt = pair.corrupted_ids if direction == "denoise" else pair.clean_ids
    with torch.no_grad():
        z_run = m.run(src[None], capture=["z"], logits=None)
    cells = [(i % L, (i * 7) % H) for i in range(0, L * H, max(1, (L * H) // naive_cells))][:naive_cells]
    naive_ld, t0 = [], time.perf_counter()
    with torch.no_grad():
        for l, h in cells:
            lg = m.run(tgt[None], logits="last",
                       interventions=[ActivationPatch("z", l, z_run["z", l][0], heads=[h])]).last_logits[0]
            naive_ld.append(float(lg[pair.answer] - lg[pair.corrupted_answer]))
    naive_s = time.perf_counter() - t0
    naive_err = max(abs(a - float(act.ld[l, h])) for a, (l, h) in zip(naive_ld, cells))
    df = comp.to_frame()
    top_a = set(df.reindex(df.actual_effect.abs().sort_values(ascending=False).index).head(10).apply(
        lambda r: f"L{int(r['layer'])}H{int(r['head'])}", axis=1))
    top_e = set(df.reindex(df.estimated_effect.abs().sort_values(ascending=False).index).head(10).apply(
        lambda r: f"L{int(r['layer'])}H{int(r['head'])}", axis=1))
    best = act.top(5)
    return {
        "clean": pair.clean, "corrupted": pair.corrupted, "answer": pair.answer_str,
        "corrupted_answer": pair.corrupted_answer_str, "direction": direction, "n_tokens": pair.n_tokens,
        "ld_clean": act.ld_clean, "ld_corrupted": act.ld_corrupted, "n_heads": L * H,
        "attribution": {"passes_counted": passes, "passes_reported": {"forward": est.n_forward,
                                                                        "backward": est.n_backward},
                        "s_min": min(att_times), "s_median": statistics.median(att_times), "s_all": att_times},
        "batched_patching": {"patched_runs": act.n_patched_runs, "batched_forwards": act.n_forward,
                             "forwards_counted": c.fwd, "batch_size": 64, "s": act.seconds},
        "naive_patching": {"timed_cells": len(cells), "timed_s": naive_s, "s_per_run": naive_s / len(cells),
                           "extrapolated_s_for_all_heads": naive_s / len(cells) * L * H,
                           "extrapolated": True, "forwards_for_all_heads": L * H,
                           "max_abs_ld_diff_vs_batched": naive_err},
        "agreement": {"pearson": comp.pearson, "spearman": comp.spearman,
                      "top10_overlap": len(top_a & top_e), "top10_actual": sorted(top_a),
                      "top10_estimated": sorted(top_e)},
        "top5_actual": [{"layer": int(r.layer), "head": int(r.head), "metric": float(r.metric),
                         "estimated_metric": float(est.head_values[r.layer, r.head])} for r in best.itertuples()],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-cells", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=len(PAIRS))
    ap.add_argument("--directions", nargs="+", default=["denoise", "noise"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "patching.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import workbench as wb
    from probes.factual.patching import patching_pair

    m = wb.load()
    t_start = time.perf_counter()
    out = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "threads": a.threads,
           "torch": torch.__version__, "model": m.info.name, "template": TEMPLATE,
           "target_passes": TARGET_PASSES, "repeats": a.repeats}
    ids, _ = m.tokenize(TEMPLATE.format(PAIRS[0][0][0]))
    with torch.no_grad():
        m.run(ids, logits="last")  # warm-up
        _, fw = _timed(lambda: m.run(ids, logits="last"), max(3, a.repeats))
    out["plain_forward_s_min"] = min(fw)
    rows = []
    for (cs, ca), (rs, ra) in PAIRS[:a.pairs]:
        pair = patching_pair(m, TEMPLATE.format(cs), TEMPLATE.format(rs), answer=ca, corrupted_answer=ra)
        with torch.no_grad():
            top = m.run(torch.stack([pair.clean_ids, pair.corrupted_ids]), logits="last").last_logits.argmax(-1)
        correct = [int(top[0]) == pair.answer, int(top[1]) == pair.corrupted_answer]
        for d in a.directions:
            r = bench_pair(m, pair, d, a.repeats, a.naive_cells)
            r["model_correct"] = correct
            rows.append(r)
            ag, at, nv = r["agreement"], r["attribution"], r["naive_patching"]
            print(f"{cs}->{rs} {d}: attribution {at['s_min']:.2f}s ({at['passes_counted']}), batched patching "
                  f"{r['batched_patching']['s']:.1f}s, naive ~{nv['extrapolated_s_for_all_heads']:.1f}s; "
                  f"Pearson {ag['pearson']:.3f} Spearman {ag['spearman']:.3f} top10 {ag['top10_overlap']}/10",
                  flush=True)
    out["pairs"] = rows
    ok = all(r["attribution"]["passes_counted"]["forward"] + r["attribution"]["passes_counted"]["backward"]
             <= TARGET_PASSES for r in rows)
    out["summary"] = {
        "passes_target_met": ok,
        "pearson_mean": statistics.mean(r["agreement"]["pearson"] for r in rows),
        "spearman_mean": statistics.mean(r["agreement"]["spearman"] for r in rows),
        "attribution_s_median": statistics.median(r["attribution"]["s_min"] for r in rows),
        "batched_patching_s_median": statistics.median(r["batched_patching"]["s"] for r in rows),
        "naive_patching_s_median_extrapolated": statistics.median(
            r["naive_patching"]["extrapolated_s_for_all_heads"] for r in rows),
    }
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t_start
    write_json(Path(a.out), out)
    print(_markdown(out))
    print(f"wrote {a.out} ({out['seconds']:.0f}s)")


def _markdown(out) -> str:
    lines = ["| pair | direction | attribution passes (fwd+bwd) | attribution s | batched patching s (270 runs) | "
             "naive patching s (270 fwd, extrapolated) | Pearson | Spearman | top-10 overlap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["pairs"]:
        p, at = r["attribution"]["passes_counted"], r["attribution"]
        lines.append(f"| {r['clean'].split()[-2]} -> {r['corrupted'].split()[-2]} | {r['direction']} | "
                     f"{p['forward']}+{p['backward']} | {at['s_min']:.2f} | {r['batched_patching']['s']:.1f} | "
                     f"{r['naive_patching']['extrapolated_s_for_all_heads']:.1f} | {r['agreement']['pearson']:.3f} | "
                     f"{r['agreement']['spearman']:.3f} | {r['agreement']['top10_overlap']}/10 |")
    lines.append(f"\nplain forward (one prompt): {out['plain_forward_s_min'] * 1000:.0f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
