#!/usr/bin/env python3
"""Data-parallel harvest and transcoder training on torch.distributed (one process or many).

1. harvest: each rank writes its shards (shard i goes to rank i mod WORLD_SIZE) of (mlp_in,
   mlp_out) rows into the activation store ``--store`` (safetensors shards, resumable: complete
   shards are skipped on a rerun, with any number of processes);
2. train: one TopK (or ReLU/JumpReLU) transcoder per ``--layers`` entry; every step, rank r
   trains on rows [r·B/W, (r+1)·B/W) of the global batch B (``--batch-size``) streamed from the
   store, and the gradients are all-reduced, so W processes compute what one process computes on
   the whole batch;
3. rank 0 writes the SAELens folders ``--out/layer{L}/`` and ``--out/summary.json`` (timings).

    python scripts/train_distributed.py --model tiny-llama --store /tmp/store --out /tmp/tc
    torchrun --nproc_per_node=2 scripts/train_distributed.py --backend gloo --model tiny-llama ...
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=HOST --master_port=29500 \\
        scripts/train_distributed.py --backend nccl ...          # see docs/scale_out.md
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

DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                    help="torch.distributed backend (auto: nccl with CUDA, else gloo)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK with nccl, else cpu)")
    ap.add_argument("--model", default=None, help="model to load (default: SmolLM2; tiny-llama for a smoke test)")
    ap.add_argument("--model-dtype", default=None, choices=list(DTYPES), help="weights dtype (e.g. bfloat16 on GPUs)")
    ap.add_argument("--layers", type=int, nargs="+", default=[8])
    ap.add_argument("--store", type=Path, required=True, help="activation store folder (shared by all ranks)")
    ap.add_argument("--store-dtype", default="float16", choices=list(DTYPES))
    ap.add_argument("--n-shards", type=int, default=64)
    ap.add_argument("--batches-per-shard", type=int, default=4)
    ap.add_argument("--batch-prompts", type=int, default=8, help="windows per forward pass")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--max-texts", type=int, default=None, help="use only the first N corpus documents")
    ap.add_argument("--shards-in-memory", type=int, default=4, help="shuffle group size when streaming the store")
    ap.add_argument("--activation", default="topk", choices=["relu", "topk", "jumprelu"])
    ap.add_argument("--d-sae", type=int, default=3072)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=1024, help="GLOBAL batch (rows per step over all ranks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--autocast", action="store_true", help="bfloat16 matmuls in training")
    ap.add_argument("--train-device", default=None,
                    help="where the transcoders train: cpu or cuda (default: this rank's device)")
    ap.add_argument("--harvest-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="where rank 0 writes the trained transcoders")
    return ap


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import torch
    import workbench as wb
    from probes.transcoders.checkpoint import save_transcoder
    from probes.transcoders.config import TranscoderTrainingConfig
    from probes.transcoders.harvest import HarvestStats
    from probes.transcoders.store import harvest_store, store_pairs
    from probes.transcoders.train import TranscoderTrainer, fit_many, model_metadata
    from workbench.distributed import check_divides, init_distributed, shutdown
    from workbench.texts import load_corpus

    ctx = init_distributed(args.backend, args.device)
    try:
        check_divides(args.batch_size, ctx.world_size)  # refuse before any model is loaded
        log = (lambda s: print(f"[rank {ctx.rank}/{ctx.world_size}] {s}", flush=True))  # noqa: E731
        t0 = time.perf_counter()
        dtype = None if args.model_dtype is None else getattr(torch, args.model_dtype)
        model = (wb.load(args.model, device=ctx.device, dtype=dtype) if args.model
                 else wb.load(device=ctx.device, dtype=dtype))
        texts = load_corpus("train")
        if args.max_texts is not None:
            texts = texts[:args.max_texts]
        stats = HarvestStats()
        t_h = time.perf_counter()
        store = harvest_store(model, args.layers, args.store, args.n_shards, texts, context=args.context,
                              batch_prompts=args.batch_prompts, batches_per_shard=args.batches_per_shard,
                              seed=args.seed, dtype=getattr(torch, args.store_dtype), ctx=ctx, stats=stats, log=log)
        harvest_s = time.perf_counter() - t_h
        harvested = ctx.all_reduce_sum_int(stats.tokens)
        summary = {"world_size": ctx.world_size, "backend": ctx.backend, "device": str(ctx.device),
                   "store": str(args.store), "store_rows": store.n_rows, "rows_harvested_now": harvested,
                   "harvest_wall_seconds": harvest_s, "harvest_forward_seconds_rank0": stats.forward_s,
                   "load_avg": os.getloadavg()[0]}
        if args.harvest_only:
            if ctx.is_main:
                log(json.dumps(summary))
            return summary
        d = model.info.d_model
        trainers = {}
        for layer in args.layers:
            cfg = TranscoderTrainingConfig(d_in=d, d_out=d, d_sae=args.d_sae, activation=args.activation, k=args.k,
                                           lr=args.lr, total_steps=args.steps, batch_size=args.batch_size,
                                           seed=args.seed + layer, autocast=args.autocast,
                                           log_every=max(1, args.steps // 10))
            trainers[layer] = TranscoderTrainer(cfg, metadata=model_metadata(model, layer), comm=ctx,
                                                device=args.train_device or ctx.device)
        data = store_pairs(store, args.layers, args.batch_size, seed=args.seed, shards_in_memory=args.shards_in_memory,
                           ctx=ctx)
        t_t = time.perf_counter()
        results = fit_many(trainers, data, None, log=log if ctx.is_main else None)
        train_s = time.perf_counter() - t_t
        summary.update(train_wall_seconds=train_s, total_wall_seconds=time.perf_counter() - t0,
                       allreduce_seconds_rank0=ctx.comm_seconds,
                       steps=args.steps, global_batch=args.batch_size, local_batch=args.batch_size // ctx.world_size,
                       models={})
        if ctx.is_main and args.out is not None:
            for layer, res in results.items():
                folder = args.out / f"layer{layer}"
                save_transcoder(res.transcoder, folder, half=False)
                last = res.history.iloc[-1].to_dict()
                summary["models"][f"layer{layer}"] = {"folder": str(folder), "steps": res.steps, "tokens": res.tokens,
                                                      "final_mse": last["mse"], "final_l0": last["l0"]}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            log(json.dumps(summary))
        ctx.barrier()
        return summary
    finally:
        shutdown(ctx)


if __name__ == "__main__":
    main()
