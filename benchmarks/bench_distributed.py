"""Data-parallel harvest and training: 1 process versus N processes, side by side in one run.

    python benchmarks/bench_distributed.py [--nproc 2] [--backend gloo] [--model tiny-llama]
                                           [--out benchmarks/results/distributed.json]

Runs ``scripts/train_distributed.py`` twice with the same arguments and seed: once as one plain
process, once under ``torchrun --standalone --nproc_per_node=N``. Each run harvests a fresh
activation store and trains one TopK transcoder per layer. Reports, per run, the harvest and
training wall times, the time rank 0 spent in the gradient all-reduce, the speed-up ratios, whether
the two stores are byte-identical (sha256 of every shard) and the largest weight difference
between the two trainings (the data-parallel exactness check). On a CPU machine the processes
share the cores: read the ratios together with the core count and the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _run(cmd, env) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-shards", type=int, default=16)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--max-texts", type=int, default=400)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed.json")
    args = ap.parse_args(argv)

    from safetensors.torch import load_file

    from benchmarks.conditions import conditions, machine

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TQDM_DISABLE": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    common = ["--model", args.model, "--layers", *map(str, args.layers), "--n-shards", str(args.n_shards),
              "--batches-per-shard", "2", "--batch-prompts", "8", "--context", "128", "--max-texts",
              str(args.max_texts), "--d-sae", str(args.d_sae), "--k", "32", "--steps", str(args.steps),
              "--batch-size", str(args.batch_size)]
    script = str(ROOT / "scripts" / "train_distributed.py")
    before = conditions()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, launcher in (("1 process", [sys.executable, script]),
                               (f"{args.nproc} processes", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                            f"--nproc_per_node={args.nproc}", script,
                                                            "--backend", args.backend])):
            key = name.split()[0]
            wall = _run([*launcher, *common, "--store", str(tmp / f"s{key}"), "--out", str(tmp / f"o{key}")], env)
            summary = json.loads((tmp / f"o{key}" / "summary.json").read_text())
            summary["process_wall_seconds"] = wall
            runs[name] = summary
        one, many = tmp / "o1", tmp / f"o{args.nproc}"
        diff = 0.0
        for layer in args.layers:
            a = load_file(str(one / f"layer{layer}" / "sae_weights.safetensors"))
            b = load_file(str(many / f"layer{layer}" / "sae_weights.safetensors"))
            diff = max(diff, max(float((a[k] - b[k]).abs().max()) for k in a))
        marks = [sorted(json.loads(p.read_text())["sha256"] for p in (tmp / f"s{k}").glob("*.done.json"))
                 for k in ("1", str(args.nproc))]
    r1, rn = runs["1 process"], runs[f"{args.nproc} processes"]
    result = {"machine": machine(), "conditions_start": before, "conditions_end": conditions(), "args": vars(args) | {"out": str(args.out)},
              "runs": runs, "max_weight_difference": diff, "stores_identical": marks[0] == marks[1],
              "harvest_speedup": r1["harvest_wall_seconds"] / rn["harvest_wall_seconds"],
              "train_speedup": r1["train_wall_seconds"] / rn["train_wall_seconds"],
              "allreduce_fraction_of_training": rn["allreduce_seconds_rank0"] / rn["train_wall_seconds"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"load {before['loadavg']} -> {result['conditions_end']['loadavg']}, {os.cpu_count()} CPUs")
    for name, r in runs.items():
        print(f"{name:>12}: harvest {r['harvest_wall_seconds']:.2f} s ({r['store_rows']} rows), train "
              f"{r['train_wall_seconds']:.2f} s ({r['steps']} steps, global batch {r['global_batch']}), all-reduce "
              f"{r['allreduce_seconds_rank0']:.2f} s")
    print(f"harvest speed-up {result['harvest_speedup']:.2f}x, training speed-up {result['train_speedup']:.2f}x, "
          f"all-reduce {100 * result['allreduce_fraction_of_training']:.0f}% of training; stores identical: "
          f"{result['stores_identical']}; max |weight difference| {diff:.1e}")


if __name__ == "__main__":
    main()
