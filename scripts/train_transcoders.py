#!/usr/bin/env python3
"""Train the shipped SmolLM2 transcoders (one command, seeded, reproducible on the same machine).

One harvest stream (truncated forward over the bundled corpus, position 0 dropped) feeds every
layer's trainer, so two layers cost one forward pass per batch. Checkpoints go to
``--checkpoint-dir`` every ``--checkpoint-every`` steps; rerunning the same command resumes
from them. Final transcoders are written (float16 weights, SAELens format) to
``--out/smollm2-layer{L}/``, with a ``summary.json`` of the training run.

    OMP_NUM_THREADS=2 python scripts/train_transcoders.py            # the shipped set
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 15])
    ap.add_argument("--activation", default="topk", choices=["relu", "topk", "jumprelu"])
    ap.add_argument("--skip", action="store_true", help="add SAELens's skip connection W_skip")
    ap.add_argument("--d-sae", type=int, default=1536)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--l1", type=float, default=3.0, help="L1 coefficient (relu)")
    ap.add_argument("--l0", type=float, default=0.02, help="L0 coefficient (jumprelu)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--buffer-tokens", type=int, default=65536, help="shuffle buffer (streaming mode)")
    ap.add_argument("--cache-tokens", type=int, default=65536,
                    help="harvest this many tokens once and train several epochs on them (0: stream)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=ROOT / "probes" / "data" / "transcoders")
    ap.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/workbench-transcoder-ckpt"))
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--sae", action="store_true",
                    help="train SAEs on mlp_out (input = target) with the same settings, for comparisons")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    import workbench as wb
    from probes.transcoders.checkpoint import save_transcoder
    from probes.transcoders.config import TranscoderTrainingConfig
    from probes.transcoders.evaluate import as_sae
    from probes.transcoders.harvest import HarvestStats, cached_batches, harvest_cache, pair_batches
    from probes.transcoders.train import TranscoderTrainer, fit_many, model_metadata

    t0 = time.perf_counter()
    model = wb.load()
    d = model.info.d_model
    trainers, dirs = {}, {}
    for layer in args.layers:
        cfg = TranscoderTrainingConfig(d_in=d, d_out=d, d_sae=args.d_sae, activation=args.activation, skip=args.skip,
                                       k=args.k, l1_coefficient=args.l1, l0_coefficient=args.l0, lr=args.lr,
                                       total_steps=args.steps, batch_size=args.batch_size, seed=args.seed + layer,
                                       checkpoint_every=args.checkpoint_every,
                                       resample_until=0 if args.activation == "topk" else args.steps // 2)
        dirs[layer] = args.checkpoint_dir / f"layer{layer}{'-sae' if args.sae else ''}"
        if not args.fresh and (dirs[layer] / "training_state.json").exists():
            trainers[layer] = TranscoderTrainer.from_checkpoint(dirs[layer])
            print(f"layer {layer}: resuming from step {trainers[layer].n_steps}", flush=True)
        else:
            md = model_metadata(model, layer)
            if args.sae:
                md["hook_name"] = md["hook_name_out"]
            trainers[layer] = TranscoderTrainer(cfg, metadata=md)
    stats = HarvestStats()
    if args.cache_tokens:
        cache_file = args.checkpoint_dir / f"activations-{args.cache_tokens}-seed{args.seed}.safetensors"
        wanted = [str(l) for l in args.layers]
        cache = None
        if cache_file.exists():  # a resumed run reuses the (deterministic) harvest
            from safetensors.torch import load_file
            flat = load_file(str(cache_file))
            if all(f"x{l}" in flat for l in wanted):
                cache = {l: (flat[f"x{l}"], flat[f"y{l}"]) for l in args.layers}
                print(f"reusing activation cache {cache_file}", flush=True)
        if cache is None:
            cache = harvest_cache(model, args.layers, args.cache_tokens, seed=args.seed, stats=stats,
                                  log=lambda s: print(s, flush=True))
            from safetensors.torch import save_file
            args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_file({f"{s}{l}": t.contiguous() for l, (x, y) in cache.items() for s, t in (("x", x), ("y", y))},
                      str(cache_file))
            print(f"harvested {stats.tokens} tokens at {stats.tokens_per_s:.0f} tok/s", flush=True)
        data = cached_batches(cache, args.batch_size, seed=args.seed)
    else:
        data = pair_batches(model, args.layers, batch_size=args.batch_size, buffer_tokens=args.buffer_tokens,
                            seed=args.seed, repeat=True, stats=stats)
    if args.sae:  # an SAE is a transcoder whose input is its target
        data = ({l: (y, y) for l, (_, y) in b.items()} for b in data)
    results = fit_many(trainers, data, dirs, log=lambda s: print(s, flush=True))
    wall = time.perf_counter() - t0
    summary = {"command": " ".join(["python", "scripts/train_transcoders.py", *(argv or sys.argv[1:])]),
               "wall_seconds": wall, "harvest_tokens": stats.tokens,
               "harvest_forward_seconds": stats.forward_s, "harvest_tokens_per_s": stats.tokens_per_s,
               "threads": args.threads, "layers": {}}
    for layer, res in results.items():
        folder = args.out / f"smollm2-layer{layer}{'-sae' if args.sae else ''}"
        save_transcoder(as_sae(res.transcoder) if args.sae else res.transcoder, folder, half=True)
        last = res.history.iloc[-1].to_dict()
        summary["layers"][str(layer)] = {"folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
                                         "steps": res.steps, "tokens": res.tokens, "train_seconds": res.seconds,
                                         "final_mse": last["mse"], "final_l0": last["l0"], "dead": last["dead"]}
        print(f"layer {layer}: wrote {folder}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"summary{'-sae' if args.sae else ''}.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
