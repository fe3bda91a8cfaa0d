"""Transcoder benchmark: harvest speed, training time, and fidelity of the shipped transcoders.

    python benchmarks/bench_transcoders.py [--threads 2] [--windows 32] [--eval-windows 32]
                                           [--out benchmarks/results/transcoders.json]

1. Harvest: tokens/s of (mlp_in, mlp_out) pairs from a truncated forward over the bundled corpus
   (8 windows of 128 tokens per pass, position 0 dropped), at each shipped layer, after one
   warm-up pass. Target: >= 1.5k tokens/s at a mid layer on 2 cores.
2. Training: read from ``probes/data/transcoders/summary.json``, written by the training script
   (``scripts/train_transcoders.py``): wall time, steps, tokens. Target: <= 15 min on 2 cores.
3. Fidelity: for every shipped transcoder (and the shipped SAE on mlp_out), on ``--eval-windows``
   held-out windows: L0, FVU of mlp_out, next-token loss clean / replaced / zero-ablated,
   fraction of loss recovered, dead and dense features. Target: >= 0.8 recovered at L0 <= 64.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32, help="windows of 128 tokens for the harvest timing")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transcoders.json")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    import workbench as wb
    from probes import transcoders as T

    model = wb.load()
    layers = T.shipped_layers()
    res: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                             "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0]},
                 "harvest": {}, "training": T.pretrained.training_summary(), "fidelity": []}
    for layer in layers:
        T.measure_harvest(model, layer, n_windows=8)  # warm-up
        t = time.perf_counter()
        s = T.measure_harvest(model, layer, n_windows=args.windows)
        res["harvest"][str(layer)] = {"tokens": s.tokens, "forward_s": round(s.forward_s, 3),
                                      "tokens_per_s": round(s.tokens_per_s, 1),
                                      "wall_s": round(time.perf_counter() - t, 3)}
        print(f"harvest layer {layer}: {s.tokens_per_s:.0f} tokens/s", flush=True)
    tcs = T.load_pretrained(model)
    for layer in layers:
        cands = {f"transcoder L{layer}": tcs[layer]}
        if layer in T.shipped_layers("sae"):
            cands[f"SAE mlp_out L{layer}"] = T.load_pretrained_sae(model, layer)
        t = time.perf_counter()
        rep = T.evaluate(model, cands, layer=layer, n_windows=args.eval_windows)
        for r in rep.results:
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.row().items()}
            row["eval_s"] = round(time.perf_counter() - t, 1)
            res["fidelity"].append(row)
            print(f"{r.name}: L0 {r.l0:.1f}, FVU {r.fvu:.3f}, CE clean {r.ce_clean:.3f} / replaced "
                  f"{r.ce_replaced:.3f} / zero {r.ce_zero:.3f}, recovered {r.loss_recovered:.3f}, "
                  f"dead {r.dead_fraction:.3f}, dense {r.dense_fraction:.3f}", flush=True)
    res["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
