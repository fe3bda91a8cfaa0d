"""Efficiency-lab benchmark (issue 12 targets): one method through ``lab.effects`` on the quick and full suites.

    python benchmarks/bench_lab.py [--suites quick full] [--methods snapkv:ratio=0.5 streaming_llm:ratio=0.75]
                                   [--threads 2] [--out benchmarks/results/lab.json]

SmolLM2-135M-Instruct (``workbench.load()``), fp32, CPU, ``torch.no_grad``, ``torch.set_num_threads(--threads)``.
For each suite (``lab.QUICK``, ``lab.FULL``; sizes in ``docs/efficiency_lab.md``) the baseline cache is cleared,
then every method runs through ``lab.effects``:

- the first method's wall time includes the baseline pass (target: quick ≤ 60 s, full ≤ 10 min for one
  method on 2 cores), each later method reuses the cached baseline (its ``forward_passes["baseline"]`` must
  be 0, checked); the forward passes of baseline, method and timing are recorded from ``model.forward_count``;
- per method: the cost model's bytes against the measured bytes (must be equal), the quality numbers and the
  interleaved prefill/decode ms per token of baseline and method, with threads and load average.

Timings on the shared 2-core machine are provisional: report the load average with them. The process's CPU
seconds are recorded too: on a loaded machine they show the work done (about threads × wall on a quiet one).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"quick": 60.0, "full": 600.0}


def parse_method(text: str):
    """"snapkv:ratio=0.5,..." -> ("snapkv", {"ratio": 0.5})."""
    name, _, rest = text.partition(":")
    knobs = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        try:
            knobs[k] = json.loads(v)
        except json.JSONDecodeError:
            knobs[k] = v
    return name, knobs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suites", nargs="+", default=["quick", "full"])
    ap.add_argument("--methods", nargs="+", default=["snapkv:ratio=0.5", "streaming_llm:ratio=0.75"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lab.json"))
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import lab
    import workbench as wb

    model = wb.load()
    out = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "threads": torch.get_num_threads(), "model": model.info.name, "suites": {}}
    for sname in a.suites:
        suite = lab.get_suite(sname)
        lab.clear_baselines()
        rows = []
        for i, text in enumerate(a.methods):
            name, knobs = parse_method(text)
            load0 = os.getloadavg()
            n0, t0, c0 = model.forward_count, time.perf_counter(), time.process_time()
            r = lab.effects(model, (name, knobs), suite, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            fp = r.forward_passes
            if i > 0 and fp["baseline"] != 0:
                raise SystemExit(f"{r.method}: the baseline was recomputed ({fp['baseline']} forwards)")
            if model.forward_count - n0 != fp["baseline"] + fp["method"] + fp["timing"]:
                raise SystemExit(f"{r.method}: forward passes do not add up")
            exact = (r.cost.weight_bytes, r.cost.kv_bytes) == (r.measured["weight_bytes"], r.measured["kv_bytes"])
            row = {"method": r.method, "seconds": wall, "cpu_seconds": cpu, "method_seconds": r.seconds, "forward_passes": fp,
                   "includes_baseline": fp["baseline"] > 0, "cost_model_exact": exact, "saving": r.saving,
                   "measured": r.measured, "quality": {k: v for k, v in r.quality.items() if not isinstance(v, tuple)},
                   "timing": r.timing, "loadavg_before": load0, "loadavg_after": os.getloadavg()}
            if i == 0:
                row["target_seconds"] = TARGETS.get(sname)
                row["meets_target"] = TARGETS.get(sname) is None or wall <= TARGETS[sname]
            rows.append(row)
            print(f"[{sname}] {r.method}: {wall:.1f} s wall, {cpu:.1f} s CPU (baseline forwards {fp['baseline']}, method {fp['method']}, "
                  f"timing {fp['timing']}); cost model exact: {exact}; perplexity {r.quality['perplexity_base']:.3f} -> "
                  f"{r.quality['perplexity']:.3f}; load {load0[0]:.1f}", flush=True)
        out["suites"][sname] = {"suite": suite.describe(), "runs": rows}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
