"""Transcoder benchmark: harvest speed, training time, and fidelity of the shipped transcoders.

    python benchmarks/bench_transcoders.py [--threads 2] [--windows 32] [--heldout-tokens 4096]
                                           [--extra DIR ...] [--out benchmarks/results/transcoders.json]

1. Harvest: tokens/s of (mlp_in, mlp_out) pairs from a truncated forward over the bundled corpus
   (8 windows of 128 tokens per pass, position 0 dropped), at each shipped layer, after one
   warm-up pass.
2. Training: read from ``probes/data/transcoders/summary.json``, written by the training script
   (``scripts/train_transcoders.py``): wall time of the harvest and of training, steps, tokens.
3. Fidelity: for every shipped transcoder ("transcoder L{l}": the skip transcoder; "plain transcoder
   L{l}": the plain one; "SAE mlp_out L{l}": the SAE on mlp_out, all at the same layer and L0), on
   the whole out-of-domain evaluation set and on the in-domain held-out split (``--heldout-tokens``
   per source): L0, FVU of mlp_out, next-token loss clean / replaced / zero-ablated /
   mean-ablated, fraction of loss recovered against both baselines with 95% bootstrap intervals,
   overall and per domain, dead and dense features. ``--extra`` adds the models in other folders
   written by the training script (e.g. a width sweep). Targets at L0 <= 64, out of domain:
   >= 0.80 recovered against zero-ablation, >= 0.70 against mean-ablation, transcoder within 0.05
   of the SAE (both kinds reported).
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


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32, help="windows of 128 tokens for the harvest timing")
    ap.add_argument("--heldout-tokens", type=int, default=4096, help="tokens per source of the in-domain split")
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="folders of more models to evaluate")
    ap.add_argument("--skip-harvest", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transcoders.json")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    from sae_lens import SAE

    import workbench as wb
    from probes import transcoders as T

    model = wb.load()
    layers = T.shipped_layers()
    res: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                             "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0]},
                 "harvest": {}, "training": T.pretrained.training_summary(), "fidelity": [], "per_domain": []}
    for layer in ([] if args.skip_harvest else layers):
        T.measure_harvest(model, layer, n_windows=8)  # warm-up
        t = time.perf_counter()
        s = T.measure_harvest(model, layer, n_windows=args.windows)
        res["harvest"][str(layer)] = {"tokens": s.tokens, "forward_s": round(s.forward_s, 3),
                                      "tokens_per_s": round(s.tokens_per_s, 1),
                                      "wall_s": round(time.perf_counter() - t, 3)}
        print(f"harvest layer {layer}: {s.tokens_per_s:.0f} tokens/s", flush=True)
    tcs = T.load_pretrained(model)
    cands: dict[int, dict] = {l: {f"transcoder L{l}": tcs[l]} for l in layers}
    plain = T.load_pretrained(model, kind="plain")
    for layer in layers:
        if layer in plain:
            cands[layer][f"plain transcoder L{layer}"] = plain[layer]
        if layer in T.shipped_layers("sae"):
            cands[layer][f"SAE mlp_out L{layer}"] = T.load_pretrained_sae(model, layer)
    for folder in args.extra:
        for p in sorted(folder.glob("smollm2-layer*")):
            meta = json.loads((p / "cfg.json").read_text())
            layer = int(meta["metadata"]["hook_layer"])
            is_tc = "transcoder" in meta["architecture"]
            m = T.load_transcoder(p, model=model, layer=layer) if is_tc else SAE.load_from_disk(str(p)).eval()
            cands.setdefault(layer, {})[f"{p.name} ({folder.name})"] = m
    for layer, cs in sorted(cands.items()):
        for eval_set, kw in (("ood", {}), ("heldout", {"max_tokens_per_domain": args.heldout_tokens})):
            t = time.perf_counter()
            rep = T.evaluate(model, cs, layer=layer, eval_set=eval_set, **kw)
            dt = time.perf_counter() - t
            for r in rep.results:
                row = {k: _round(v) for k, v in r.row().items()}
                row.update(eval_set=eval_set, eval_s=round(dt, 1))
                res["fidelity"].append(row)
                print(f"[{eval_set}] {r.name}: L0 {r.l0:.1f}, FVU {r.fvu:.3f}, CE clean {r.ce_clean:.3f} / replaced "
                      f"{r.ce_replaced:.3f} / zero {r.ce_zero:.3f} / mean {r.ce_mean:.3f}; recovered vs zero "
                      f"{r.loss_recovered:.3f} [{r.recovered_ci[0]:.3f}, {r.recovered_ci[1]:.3f}], vs mean "
                      f"{r.loss_recovered_mean:.3f} [{r.recovered_mean_ci[0]:.3f}, {r.recovered_mean_ci[1]:.3f}]; "
                      f"dead {r.dead_fraction:.3f}, dense {r.dense_fraction:.3f}", flush=True)
            for row in rep.domain_frame().to_dict("records"):
                res["per_domain"].append({**{k: _round(v) for k, v in row.items()}, "layer": layer, "eval_set": eval_set})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))  # partial results survive an interruption
    res["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    args.out.write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
