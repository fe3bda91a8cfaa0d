#!/usr/bin/env python3
"""Train the shipped SmolLM2 transcoders and SAE (one command, seeded, reproducible on one machine).

Default (what ``make transcoders`` runs), for layers 8 and 15: a TopK skip transcoder (SAELens's
linear skip connection ``x @ W_skip.T`` added to the sparse path), a plain TopK transcoder and a
TopK SAE on ``mlp_out``, all from one harvest of the bundled corpus's training split
(``--kinds`` picks the transcoder kinds, ``--sae-layers`` the SAEs):

1. harvest: ``--tokens`` (mlp_in, mlp_out) rows per layer from a truncated forward pass (position
   0 dropped), written once as float16 memory-mapped files under ``--activation-dir`` (resumed
   when interrupted, reused by later runs with the same arguments);
2. train: every model sees the same shuffled batches (several epochs over the harvest), so adding
   a model to a run never changes the others; checkpoints every ``--checkpoint-every`` steps under
   ``--checkpoint-dir``, and rerunning the command resumes from them;
3. write the float16 SAELens folders ``--out/smollm2-layer{L}/`` (skip), ``smollm2-layer{L}-plain/``
   and ``smollm2-layer{L}-sae/``, and ``summary.json``.

``--extra KIND:LAYER:D_SAE`` trains more models from the same batches (e.g. ``tc:8:1536`` for a
width comparison, ``skip:8:3072`` for a transcoder with SAELens's linear skip connection) into
``--extra-out``, with a ``-d{width}`` suffix; the shipped ones are
unaffected (each model's result depends only on its seed and the shared batches). ``--all-layers`` trains a transcoder for every layer from a
streamed harvest (a full forward pass per batch, no activation files: 30 layers of float16 rows
would need about 70 kB per token), for complete replacement circuits.

    OMP_NUM_THREADS=1 python scripts/train_transcoders.py                 # the shipped set
    OMP_NUM_THREADS=1 python scripts/train_transcoders.py --all-layers --out /tmp/all-layers
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


def _autocast_iter(it, device_type: str, enabled: bool):
    """Advance a generator (the streamed harvest) under bf16 autocast, one item at a time."""
    import torch
    while True:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
            try:
                item = next(it)
            except StopIteration:
                return
        yield item


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="*", default=[8, 15], help="transcoder layers")
    ap.add_argument("--sae-layers", type=int, nargs="*", default=[8, 15], help="SAE-on-mlp_out layers")
    ap.add_argument("--all-layers", action="store_true", help="a transcoder for every layer (streamed harvest)")
    ap.add_argument("--activation", default="topk", choices=["relu", "topk", "jumprelu"])
    ap.add_argument("--kinds", nargs="+", default=["skip", "plain"], choices=["skip", "plain"],
                    help="transcoder kinds at --layers: skip (SAELens's W_skip; folder smollm2-layer{L}) and/or "
                         "plain (smollm2-layer{L}-plain)")
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--extra", nargs="*", default=[], metavar="KIND:LAYER:D_SAE",
                    help="more models trained on the same batches (KIND: tc, skip (transcoder + W_skip) or sae), "
                         "written to --extra-out")
    ap.add_argument("--extra-out", type=Path, default=ROOT / "out" / "transcoders-extra")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--l1", type=float, default=3.0, help="L1 coefficient (relu)")
    ap.add_argument("--l0", type=float, default=0.02, help="L0 coefficient (jumprelu)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=3000,
                    help="Adam steps per model (default: 3,000 of 1,024 rows, about 2.9 epochs of the default harvest)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=1_072_896,
                    help="activation rows harvested per layer (default: 1,056 batches of 8 windows x 127 rows)")
    ap.add_argument("--buffer-tokens", type=int, default=65536, help="shuffle buffer (--all-layers)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=ROOT / "probes" / "data" / "transcoders")
    ap.add_argument("--activation-dir", type=Path, default=Path("/tmp/workbench-transcoder-acts"))
    ap.add_argument("--checkpoint-dir", type=Path, default=Path("/tmp/workbench-transcoder-ckpt"))
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--harvest-only", action="store_true")
    ap.add_argument("--model", default=None, help="model to load (default: SmolLM2; e.g. tiny-llama for a smoke test)")
    ap.add_argument("--no-autocast", dest="autocast", action="store_false",
                    help="float32 throughout (default: bfloat16 autocast for the harvest forward pass and the "
                         "training matmuls, about 2x faster on CPUs with AMX; evaluation is always float32)")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    import workbench as wb
    from probes.transcoders.checkpoint import save_transcoder
    from probes.transcoders.config import TranscoderTrainingConfig
    from probes.transcoders.evaluate import as_sae
    from probes.transcoders.harvest import HarvestStats, harvest_to_disk, pair_batches
    from probes.transcoders.train import TranscoderTrainer, fit_many, model_metadata
    from workbench.texts import corpus_info

    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    model = wb.load(args.model) if args.model else wb.load()
    d = model.info.d_model
    if args.all_layers:
        args.layers, args.sae_layers = list(range(model.info.n_layers)), []
    kinds = [{"skip": "skip", "plain": "tc"}[k] for k in dict.fromkeys(args.kinds)]
    specs = [(kind, l, args.d_sae, False) for kind in kinds for l in args.layers]
    specs += [("sae", l, args.d_sae, False) for l in args.sae_layers]
    for e in args.extra:
        try:
            kind, l, w = e.split(":")
            assert kind in ("tc", "skip", "sae")
            specs.append((kind, int(l), int(w), True))
        except (ValueError, AssertionError):
            ap.error(f"--extra {e!r}: expected KIND:LAYER:D_SAE with KIND tc, skip or sae, e.g. tc:8:1536")
    if not specs:
        ap.error("nothing to train: give --layers and/or --sae-layers")

    def name(kind, l, w, extra):
        suffix = {"sae": "-sae", "skip": "-skip" if extra else "", "tc": "" if extra else "-plain"}[kind]
        return f"smollm2-layer{l}{suffix}{f'-d{w}' if extra else ''}"

    trainers, dirs = {}, {}
    for kind, layer, width, extra in specs:
        key = name(kind, layer, width, extra)
        cfg = TranscoderTrainingConfig(d_in=d, d_out=d, d_sae=width, activation=args.activation,
                                       skip=kind == "skip",
                                       k=args.k, l1_coefficient=args.l1, l0_coefficient=args.l0, lr=args.lr,
                                       total_steps=args.steps, batch_size=args.batch_size, seed=args.seed + layer,
                                       checkpoint_every=args.checkpoint_every, autocast=args.autocast,
                                       resample_until=0 if args.activation == "topk" else args.steps // 2)
        dirs[key] = args.checkpoint_dir / key
        if not args.fresh and (dirs[key] / "training_state.json").exists():
            trainers[key] = TranscoderTrainer.from_checkpoint(dirs[key])
            log(f"{key}: resuming from step {trainers[key].n_steps}")
        else:
            md = model_metadata(model, layer)
            if kind == "sae":
                md["hook_name"] = md["hook_name_out"]
            trainers[key] = TranscoderTrainer(cfg, metadata=md)

    stats = HarvestStats()
    layers = sorted({s[1] for s in specs})
    t_h = time.perf_counter()
    if args.all_layers:
        data = _autocast_iter(pair_batches(model, layers, batch_size=args.batch_size,
                                           buffer_tokens=args.buffer_tokens, seed=args.seed, repeat=True, stats=stats),
                              model.device.type, args.autocast)
        harvest_wall = 0.0
    else:
        folder = args.activation_dir / f"layers{'-'.join(map(str, layers))}-{args.tokens}-seed{args.seed}"
        folder = folder.with_name(folder.name + ("-bf16" if args.autocast else ""))
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=args.autocast):
            acts = harvest_to_disk(model, layers, args.tokens, folder, seed=args.seed, stats=stats, log=log)
        harvest_wall = time.perf_counter() - t_h
        if stats.tokens:
            log(f"harvested {stats.tokens} tokens at {stats.tokens_per_s:.0f} tok/s ({harvest_wall:.0f} s)")
        if args.harvest_only:
            return
        data = acts.batches(args.batch_size, seed=args.seed)
    by_key = {name(*s): (s[0], s[1]) for s in specs}
    extra_keys = {name(*s) for s in specs if s[3]}
    # an SAE is a transcoder whose input is its target
    stream = ({key: (b[l][1], b[l][1]) if kind == "sae" else b[l] for key, (kind, l) in by_key.items()} for b in data)
    t_train = time.perf_counter()
    results = fit_many(trainers, stream, dirs, log=log)
    train_wall = time.perf_counter() - t_train
    wall = time.perf_counter() - t0
    info = corpus_info()
    summary = {"command": " ".join(["python", "scripts/train_transcoders.py", *(argv if argv is not None else sys.argv[1:])]),
               "wall_seconds": wall, "harvest_wall_seconds": harvest_wall, "train_wall_seconds": train_wall,
               "harvest_tokens": stats.tokens, "harvest_forward_seconds": stats.forward_s,
               "harvest_tokens_per_s": stats.tokens_per_s, "threads": args.threads, "autocast_bf16": args.autocast,
               "load_avg_start_end": [load0, os.getloadavg()[0]],
               "corpus_sha256": info.get("corpus_sha256"), "models": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for key, res in results.items():
        kind, layer = by_key[key]
        folder = (args.extra_out if key in extra_keys else args.out) / key
        save_transcoder(as_sae(res.transcoder) if kind == "sae" else res.transcoder, folder, half=True)
        last = res.history.iloc[-1].to_dict()
        summary["models"][key] = {"kind": kind, "layer": layer, "d_sae": res.transcoder.cfg.d_sae,
                                  "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
                                  "steps": res.steps, "tokens": res.tokens, "train_seconds": res.seconds,
                                  "final_mse": last["mse"], "final_l0": last["l0"], "dead": last["dead"]}
        log(f"{key}: wrote {folder}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
