"""Sink-report benchmark: the full extreme-token report on SmolLM2, and a 2k-token prompt's memory.

    python benchmarks/bench_sinks.py [--repeats 3] [--seq 256] [--long 2048] [--out benchmarks/results/sinks.json]

Timing: one SmolLM2-135M-Instruct (fp32, eager, CPU, ``--threads`` torch threads) prompt of
``--seq`` tokens (a fixed English paragraph, repeated as needed and cut to length), the four
analyses run back to back: ``sink_report`` + ``value_drain`` + ``massive_activations`` +
``qk_concentration`` (four forward passes), and ``extreme_token_report`` (the same four reports
from one forward pass). Warmed up once on a short prompt, then run ``--repeats`` times; min and
median wall time per analysis and in total, and one plain forward (``logits=None``) for
reference. Target: the full report <= 10 s.

Memory: a fresh subprocess loads the model, warms up, then runs ``sink_report`` on a
``--long``-token prompt while a thread samples the process RSS. Reported: the RSS peak above the
pre-run baseline, the memory guard's estimate for the attention summaries (what the run is
allowed to hold) against the budget, and the estimate for full patterns of all layers (which the
guard would refuse at the default budget).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_core import _rss, write_json  # noqa: E402

TARGET_S = 10.0
TEXT = (
    "The river town woke slowly. Fishermen pushed their boats into the grey water, calling to each other "
    "across the mist, while the baker on the corner pulled the first loaves from his oven. By seven the "
    "market square was full: farmers from the valley had brought apples, cheese, honey and late tomatoes, "
    "and a man with a cart sold knives he sharpened while you waited. Children ran between the stalls. "
    "At the town hall the mayor read the morning letters. One asked for a new bridge; another complained "
    "about the bells of the old church, which rang every quarter hour, day and night. She put both aside. "
    "In the library, a student copied a map of the coast from 1820, noting where the harbour wall had been "
    "before the great storm. def total(prices):\n    return sum(p * 1.2 for p in prices)\n"
    "Later that afternoon the rain came back, and the square emptied as quickly as it had filled. "
)


def prompt_ids(model, n: int) -> torch.Tensor:
    """(1, n) token ids of TEXT repeated and cut to n tokens."""
    ids = model.tokenize(TEXT * (n // 100 + 2))[0][:, :n]
    if ids.shape[1] < n:
        raise RuntimeError(f"could only build {ids.shape[1]} tokens")
    return ids


def analyses():
    from probes.sinks import massive_activations, qk_concentration, sink_report, value_drain

    return {"sink_report": sink_report, "value_drain": value_drain,
            "massive_activations": massive_activations, "qk_concentration": qk_concentration}


def run_timing(args) -> dict:
    torch.set_num_threads(args.threads)
    import workbench as wb

    from probes.sinks import extreme_token_report

    m = wb.load()
    fns = analyses()
    ids = prompt_ids(m, args.seq)
    with torch.no_grad():
        for fn in fns.values():  # warm-up on a short prompt
            fn(m, ids[:, :16])
        extreme_token_report(m, ids[:, :16])
        times: dict[str, list[float]] = {k: [] for k in fns}
        totals, one_pass = [], []
        results = {}
        for _ in range(args.repeats):
            t_all = time.perf_counter()
            for k, fn in fns.items():
                t0 = time.perf_counter()
                results[k] = fn(m, ids)
                times[k].append(time.perf_counter() - t0)
            totals.append(time.perf_counter() - t_all)
            t0 = time.perf_counter()
            extreme_token_report(m, ids)
            one_pass.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m.run(ids, logits=None)
        forward = time.perf_counter() - t0
    out = {k: {"min_s": min(v), "median_s": statistics.median(v), "all_s": v} for k, v in times.items()}
    out["total"] = {"min_s": min(totals), "median_s": statistics.median(totals), "all_s": totals,
                    "target_s": TARGET_S, "pass": min(totals) <= TARGET_S}
    out["extreme_token_report (one pass)"] = {"min_s": min(one_pass), "median_s": statistics.median(one_pass),
                                              "all_s": one_pass, "target_s": TARGET_S,
                                              "pass": min(one_pass) <= TARGET_S}
    out["plain forward (reference)"] = {"min_s": forward, "median_s": forward, "all_s": [forward]}
    sr, vd, ma, qk = (results[k] for k in fns)
    ls = qk.layer_summary()
    out["numbers"] = {
        "mass0_per_layer": [round(x, 4) for x in sr.layer_mass0.tolist()],
        "fraction_heads_mass0_gt_third_layers_ge2": sr.fraction_above(1 / 3, 2),
        "value_drain_ratio_per_layer": [round(x, 4) for x in vd.layer_ratio.tolist()],
        "massive": {"peak_position": int(ma.peak_position[0]), "max_ratio": float(ma.ratio[0].max()),
                    "dims_at_max": ma.top_dims[0, int(ma.ratio[0].argmax())].tolist(),
                    "appears_stage": ma.appears[0], "removed_stage": ma.removed[0]},
        "q_concentration": [round(x, 3) for x in ls.q_concentration], "k_concentration": [round(x, 3) for x in ls.k_concentration],
        "v_concentration": [round(x, 3) for x in ls.v_concentration],
    }
    return out


def mem_child(args) -> dict:
    torch.set_num_threads(args.threads)
    import workbench as wb
    from probes.sinks import sink_report

    m = wb.load()
    ids = prompt_ids(m, args.long)
    with torch.no_grad():
        sink_report(m, ids[:, :16])
    gc.collect()
    est = m.estimate_capture(ids, capture=["pattern"], attention="summary", logits=None, last_rows=1)
    full = m.estimate_capture(ids, capture=["pattern"], attention="full", logits=None)
    base = _rss()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with torch.no_grad():
        r = sink_report(m, ids)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    return {"tokens": int(ids.shape[1]), "wall_s": wall, "rss_baseline_MiB": base / 2**20,
            "rss_peak_delta_MiB": (max(peak[0], _rss()) - base) / 2**20,
            "summary_estimate_MiB": est.total / 2**20, "transient_estimate_MiB": est.transient_bytes / 2**20,
            "budget_MiB": est.budget / 2**20, "full_patterns_estimate_MiB": full.total / 2**20,
            "full_patterns_within_budget": full.total <= full.budget,
            "fraction_heads_mass0_gt_third_layers_ge2": r.fraction_above(1 / 3, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--long", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sinks.json")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--_mem-child", dest="mem_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mem_child:
        print(json.dumps(mem_child(args)))
        return 0
    t0 = time.perf_counter()
    res = {"benchmark": "sinks", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                       "torch": torch.__version__, "loadavg_before": os.getloadavg()},
           "config": {"model": "SmolLM2-135M-Instruct fp32 eager", "seq": args.seq, "long": args.long,
                      "repeats": args.repeats}}
    print("timing ...", file=sys.stderr, flush=True)
    res["timing"] = run_timing(args)
    gc.collect()
    if not args.no_memory:
        print("memory ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--_mem-child", "--long", str(args.long), "--threads", str(args.threads)]
        pr = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if pr.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{pr.stderr[-3000:]}")
        res["memory"] = json.loads(pr.stdout.strip().splitlines()[-1])
    res["machine"]["loadavg_after"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t0
    write_json(args.out, res)
    t = res["timing"]
    print(f"| analysis ({args.seq} tokens) | min s | median s |\n|---|---:|---:|")
    for k, v in t.items():
        if k != "numbers":
            print(f"| {k} | {v['min_s']:.2f} | {v['median_s']:.2f} |")
    print(f"target <= {TARGET_S:g} s: four analyses {'PASS' if t['total']['pass'] else 'FAIL'}, one pass "
          f"{'PASS' if t['extreme_token_report (one pass)']['pass'] else 'FAIL'}")
    if "memory" in res:
        mm = res["memory"]
        print(f"\n{mm['tokens']}-token sink_report: {mm['wall_s']:.1f} s, RSS peak +{mm['rss_peak_delta_MiB']:.0f} MiB "
              f"(summaries {mm['summary_estimate_MiB']:.1f} MiB held; full patterns would be "
              f"{mm['full_patterns_estimate_MiB']:.0f} MiB; budget {mm['budget_MiB']:.0f} MiB)")
    print(f"load average before/after: {res['machine']['loadavg_before']} / {res['machine']['loadavg_after']}")
    print(f"(wrote {args.out}; {res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
