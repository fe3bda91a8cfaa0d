"""Factual-recall DLA benchmark: full DLA with the per-source split versus one plain forward pass.

    python benchmarks/bench_factual.py [--prompts 8] [--repeats 5] [--threads 2] [--out benchmarks/results/factual.json]

On SmolLM2-135M-Instruct (fp32, eager, CPU), for ``--prompts`` bundled facts (drawn round robin over
the relations, seed 0, 19-32 tokens each): the time of ``direct_logit_attribution(model, fact)`` (one
forward capturing embed, v, pattern, z, mlp_out and the final-norm scale, then float64 algebra at
the last position: every head, MLP, bias, per source token and per source group, for the answer and
every candidate of the relation) against a plain ``model.run(prompt, logits="last")``. Both are
timed alternately, ``--repeats`` times per prompt after a warm-up; the min per prompt is kept and
the ratio reported per prompt and as the median over prompts. Also reported: the forward with the
DLA captures alone (to split capture cost from the algebra) and the exactness |Σ − logit|.
Target: ratio <= 2.
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

TARGET_RATIO = 2.0


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "factual.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import workbench as wb
    from probes.factual.data import load_facts
    from probes.factual.dla import capture_names, direct_logit_attribution

    load_before = os.getloadavg()
    model = wb.load()
    facts = load_facts()
    per_rel = max(1, -(-args.prompts // len(facts.relations())))
    drawn = facts.sample(per_rel, seed=0)
    by_rel = [list(drawn.by_relation(r)) for r in facts.relations()]
    chosen = [g[i] for i in range(per_rel) for g in by_rel if i < len(g)][: args.prompts]  # round robin
    names = capture_names(model)
    with torch.no_grad():
        direct_logit_attribution(model, chosen[0])  # warm-up
        model.run(chosen[0].prompt, logits="last")
    rows = []
    for f in chosen:
        plain, capture, full = [], [], []
        for _ in range(args.repeats):
            with torch.no_grad():
                plain.append(_time(lambda: model.run(f.prompt, logits="last")))
                capture.append(_time(lambda: model.run(f.prompt, capture=names, logits="last")))
                full.append(_time(lambda: direct_logit_attribution(model, f)))
        r = direct_logit_attribution(model, f)
        rows.append({"id": f.id, "tokens": len(r.str_tokens), "candidates": len(r.targets),
                     "plain_forward_s": min(plain), "capture_forward_s": min(capture), "dla_s": min(full),
                     "ratio": min(full) / min(plain), "abs_error": r.error})
        print(f"{f.id:32s} T={len(r.str_tokens):3d} K={len(r.targets):3d} plain {min(plain) * 1e3:6.1f} ms  "
              f"capture {min(capture) * 1e3:6.1f} ms  DLA {min(full) * 1e3:6.1f} ms  ratio {rows[-1]['ratio']:.2f}  "
              f"|err| {r.error:.1e}")
    ratio = statistics.median(r["ratio"] for r in rows)
    print(f"median ratio DLA / plain forward: {ratio:.2f} (target <= {TARGET_RATIO})")
    result = {
        "benchmark": "factual",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "loadavg_before": list(load_before),
                    "loadavg_after": list(os.getloadavg())},
        "config": {"model": "SmolLM2-135M-Instruct fp32 eager", "prompts": len(rows), "repeats": args.repeats},
        "dla": {"median_ratio": ratio, "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
                "max_abs_error": max(r["abs_error"] for r in rows), "per_prompt": rows},
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
