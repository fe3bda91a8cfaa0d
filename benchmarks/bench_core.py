"""Core wrapper benchmark: forward-pass overhead of captures, and the memory guard's accuracy.

    python benchmarks/bench_core.py [--repeats N] [--batch 8 --seq 128] [--out benchmarks/results/core.json]

One SmolLM2-135M-Instruct forward (fp32, eager attention, CPU, torch.no_grad) on a seeded
(batch, seq) block of random token ids, timed for:

  hf_raw           a separate, never-wrapped HF copy (``load_smollm2()``): the baseline
  no_capture       ``m.run(ids, logits="all")``: nothing hooked, so the hook-free plain view runs
  hooked_forward   ``m.forward_tokens(ids)`` with ``workbench.settings.fast_path = False``: the
                   TransformerBridge forward with its hook points (what ``m.run`` cost before the fast path)
  resid            ``m.run(ids, capture=RESID, logits="all")`` (resid_pre/mid/post, all layers)
  full             ``m.run(ids, capture=FULL, logits="all")`` (see FULL below)
  full_head_out    FULL + the derived ``head_out`` (z_h W_O[h] per head; heavy)
  tl_run_with_cache ``m.transformer_lens_cache(ids)`` (TransformerLens' run_with_cache, every hook point)

Each variant is warmed up once, then the variants are run in interleaved, rotating order
``--repeats`` times; min and median wall time are reported, with ratios to ``hf_raw``. The logits of
``no_capture`` and ``hooked_forward`` are checked to be identical. Threads (``--threads``, applied
through ``workbench.settings.threads``) and the load average are recorded at the start and end.

Memory: for ``none``, ``full`` and ``full_head_out`` a fresh subprocess loads the model, warms
up on a tiny input, then runs once while a thread samples the process RSS. It reports the bytes
held by ``run.captures`` + ``run.logits`` (numel * element_size and distinct storages), the RSS
still held after the run, the RSS peak during it, and ``ru_maxrss``; these are compared with
``m.estimate_capture(...).total``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.conditions import conditions, describe, machine, set_threads  # noqa: E402

RESID = ["resid_pre", "resid_mid", "resid_post"]
# "Full capture": every per-layer activation of a Llama block except the pre-softmax scores and
# the MLP gate pre-activation, plus the three normalization scales; all 30 layers, all positions.
FULL = ["resid_pre", "resid_mid", "resid_post", "attn_in", "q", "k", "v", "q_rot", "k_rot", "pattern", "z",
        "attn_out", "mlp_in", "mlp_hidden", "mlp_out", "attn_norm_scale", "mlp_norm_scale", "final_norm_scale"]
FULL_HEAD_OUT = FULL + ["head_out"]
TARGETS = {"no_capture": 1.01, "resid": 1.15, "full": 1.40}
MEM_TARGET = 0.20  # |estimate / measured - 1| <= 20%
CAPTURES = {"none": [], "full": FULL, "full_head_out": FULL_HEAD_OUT}


def _ids(batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def _rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _held_bytes(run) -> tuple[int, int]:
    """(sum numel*element_size, bytes of distinct storages) over captures + logits."""
    tensors = list(run.captures.values()) + ([run.logits] if run.logits is not None else [])
    numel = sum(t.numel() * t.element_size() for t in tensors)
    storages = {}
    for t in tensors:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return numel, sum(storages.values())


# ---------------------------------------------------------------------------------- memory child
def mem_child(mode: str, batch: int, seq: int, seed: int, threads: int) -> dict:
    set_threads(threads or None)
    import workbench as wb

    m = wb.load()
    ids = _ids(batch, seq, m.info.d_vocab, seed)
    cap = CAPTURES[mode]
    with torch.no_grad():
        m.run(ids[:1, :8], capture=cap, logits="all")  # lazy init on a tiny input
    gc.collect()
    est = m.estimate_capture(ids, capture=cap, logits="all")
    base, maxrss0 = _rss(), _maxrss()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    with torch.no_grad():
        run = m.run(ids, capture=cap, logits="all")
    stop.set()
    th.join()
    gc.collect()
    held_rss = _rss() - base
    peak_rss = max(peak[0], _rss()) - base
    numel_b, storage_b = _held_bytes(run)
    return {
        "mode": mode, "estimate_total": est.total, "estimate_logits": est.logits_bytes,
        "estimate_transient": est.transient_bytes, "n_captures": len(run.captures),
        "tensor_bytes": numel_b, "storage_bytes": storage_b, "rss_baseline": base,
        "rss_held_delta": held_rss, "rss_peak_delta": peak_rss,
        "ru_maxrss_before": maxrss0, "ru_maxrss_after": _maxrss(),
    }


def run_mem(args) -> dict:
    out = {}
    for mode in CAPTURES:
        cmd = [sys.executable, __file__, "--_mem-child", mode, "--batch", str(args.batch), "--seq", str(args.seq),
               "--seed", str(args.seed), "--threads", str(args.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"memory child {mode} failed:\n{p.stderr[-3000:]}")
        out[mode] = json.loads(p.stdout.strip().splitlines()[-1])
    none, full, fho = out["none"], out["full"], out["full_head_out"]
    summary = {}
    for key, r in (("full", full), ("full_head_out", fho)):
        est = r["estimate_total"]
        cap_est = est - r["estimate_logits"]
        summary[key] = {
            "estimate_MiB": est / 2**20,
            "tensor_MiB": r["tensor_bytes"] / 2**20,
            "storage_MiB": r["storage_bytes"] / 2**20,
            "rss_held_MiB": r["rss_held_delta"] / 2**20,
            "rss_peak_MiB": r["rss_peak_delta"] / 2**20,
            "rss_peak_minus_none_MiB": (r["rss_peak_delta"] - none["rss_peak_delta"]) / 2**20,
            "est_over_tensor": est / r["tensor_bytes"],
            "est_over_storage": est / r["storage_bytes"],
            "est_over_rss_held": est / max(r["rss_held_delta"], 1),
            "est_over_rss_peak": est / max(r["rss_peak_delta"], 1),
            # capture part only: what the capture adds to the peak over a no-capture run
            "capture_est_over_peak_increase": cap_est / max(r["rss_peak_delta"] - none["rss_peak_delta"], 1),
        }
        s = summary[key]
        s["pass"] = all(abs(s[k] - 1) <= MEM_TARGET for k in ("est_over_storage", "est_over_rss_held"))
    return {"children": out, "summary": summary, "target_rel_err": MEM_TARGET,
            "no_capture_rss_peak_MiB": none["rss_peak_delta"] / 2**20,
            "no_capture_rss_held_MiB": none["rss_held_delta"] / 2**20}


# ---------------------------------------------------------------------------------- timing
def _hooked_forward(m, ids):
    import workbench as wb

    wb.settings.fast_path = False
    try:
        return m.forward_tokens(ids)
    finally:
        wb.settings.fast_path = True


def run_timing(args) -> dict:
    set_threads(args.threads or None)
    from workbench.loading.smollm2 import load_smollm2

    hf_raw, _, _ = load_smollm2()  # a second copy, never wrapped by TransformerBridge
    hf_raw.eval()
    import workbench as wb

    m = wb.load()
    ids = _ids(args.batch, args.seq, m.info.d_vocab, args.seed)

    variants = {
        "hf_raw": lambda: hf_raw(ids).logits,
        "no_capture": lambda: m.run(ids, logits="all"),
        "hooked_forward": lambda: _hooked_forward(m, ids),
        "resid": lambda: m.run(ids, capture=RESID, logits="all"),
        "full": lambda: m.run(ids, capture=FULL, logits="all"),
        "full_head_out": lambda: m.run(ids, capture=FULL_HEAD_OUT, logits="all"),
        "tl_run_with_cache": lambda: m.transformer_lens_cache(ids),
    }
    if args.quick:
        for k in ("full_head_out", "tl_run_with_cache"):
            variants.pop(k)
    info = {"fast_path": m.fast_path_status() or "on"}
    with torch.no_grad():
        ref = hf_raw(ids).logits
        r = m.run(ids, capture=FULL_HEAD_OUT, logits="all")
        info["max_abs_logit_diff_vs_hf"] = (r.logits - ref).abs().max().item()
        plain = m.run(ids, logits="all").logits
        info["no_capture_identical_to_hooked"] = bool(torch.equal(plain, _hooked_forward(m, ids)))
        info["no_capture_max_abs_logit_diff_vs_hf"] = (plain - ref).abs().max().item()
        assert not m.leftover_hooks(), m.leftover_hooks()  # before TL's run_with_cache, see below
        info["n_captures"] = {"resid": len(m.run(ids[:1, :4], capture=RESID).captures),
                              "full": len(m.run(ids[:1, :4], capture=FULL).captures),
                              "full_head_out": len(r.captures)}
        _, cache = m.transformer_lens_cache(ids[:1, :4])
        info["n_tl_cache_entries"] = len(cache)
        del r, ref, cache
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for k in names:  # warmup
            out = variants[k]()
            del out
        gc.collect()
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]  # rotate to spread drift
            for k in order:
                t0 = time.perf_counter()
                out = variants[k]()
                times[k].append(time.perf_counter() - t0)
                del out
                gc.collect()
            print(f"  repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    # TL's run_with_cache makes transformers install its (permanent, idle unless recording)
    # output-capturing hooks on the wrapped HF decoder layers / attention modules.
    info["hooks_left_after_tl_run_with_cache"] = len(m.leftover_hooks())
    base_min = min(times["hf_raw"])
    base_med = statistics.median(times["hf_raw"])
    rows = {}
    for k, ts in times.items():
        mn, md = min(ts), statistics.median(ts)
        row = {"min_s": mn, "median_s": md, "ratio_min": mn / base_min, "ratio_median": md / base_med,
               "times_s": ts}
        if k in TARGETS:
            row["target"] = TARGETS[k]
            row["pass"] = row["ratio_min"] <= TARGETS[k]
        rows[k] = row
    return {"rows": rows, "info": info}


LABELS = {
    "hf_raw": "raw HF eager forward (unwrapped copy)",
    "hooked_forward": "hooked path: TransformerBridge forward, no capture (fast path off)",
    "no_capture": "`m.run`, no capture (hook-free path)",
    "resid": "`m.run`, residual stream only",
    "full": "`m.run`, full capture",
    "full_head_out": "`m.run`, full capture + `head_out`",
    "tl_run_with_cache": "TL `bridge.run_with_cache`",
}


def table(res: dict) -> str:
    lines = ["| variant | min s | median s | ratio (min) | ratio (median) | target | pass |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    ncap = res["timing"]["info"]["n_captures"]
    c = res.get("conditions_start")
    if c:
        lines.insert(0, f"({describe(c)}; logits of the hook-free and hooked paths identical: "
                        f"{res['timing']['info'].get('no_capture_identical_to_hooked')})\n")
    for k, r in res["timing"]["rows"].items():
        label = LABELS[k]
        if k in ncap:
            label += f" ({ncap[k]} tensors)"
        if k == "tl_run_with_cache":
            label = f"TL `bridge.run_with_cache` ({res['timing']['info']['n_tl_cache_entries']} hooks)"
        tgt = f"<= {r['target']:.2f}x" if "target" in r else ""
        ok = ("PASS" if r["pass"] else "FAIL") if "target" in r else ""
        lines.append(f"| {label} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['ratio_min']:.3f}x | "
                     f"{r['ratio_median']:.3f}x | {tgt} | {ok} |")
    return "\n".join(lines)


def mem_table(res: dict) -> str:
    mem = res.get("memory")
    if not mem:
        return ""
    lines = ["| capture | estimate MiB | tensors MiB | storages MiB | RSS held MiB | RSS peak MiB | "
             "est/storages | est/RSS held | est/RSS peak | pass (±20%) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for k, s in mem["summary"].items():
        lines.append(f"| {k} | {s['estimate_MiB']:.1f} | {s['tensor_MiB']:.1f} | {s['storage_MiB']:.1f} | "
                     f"{s['rss_held_MiB']:.1f} | {s['rss_peak_MiB']:.1f} | {s['est_over_storage']:.3f} | "
                     f"{s['est_over_rss_held']:.3f} | {s['est_over_rss_peak']:.3f} | "
                     f"{'PASS' if s['pass'] else 'FAIL'} |")
    lines.append(f"| none (reference) | {mem['children']['none']['estimate_total'] / 2**20:.1f} | | | "
                 f"{mem['no_capture_rss_held_MiB']:.1f} | {mem['no_capture_rss_peak_MiB']:.1f} | | | | |")
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="2 repeats, no memory section, no head_out/TL variants")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "core.json")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.mem_child:
        print(json.dumps(mem_child(args.mem_child, args.batch, args.seq, args.seed, args.threads)))
        return 0

    if args.quick:
        args.repeats = min(args.repeats, 2)
    t0 = time.perf_counter()
    set_threads(args.threads or None)
    res = {
        "benchmark": "core", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(), "conditions_start": conditions(), "quick": args.quick,
        "config": {"model": "SmolLM2-135M-Instruct fp32 eager", "batch": args.batch, "seq": args.seq,
                   "seed": args.seed, "repeats": args.repeats, "warmup": 1, "grad": False,
                   "full_capture": FULL, "resid_capture": RESID},
        "targets": TARGETS,
    }
    print(f"timing ... ({describe(res['conditions_start'])})", file=sys.stderr, flush=True)
    res["timing"] = run_timing(args)
    gc.collect()
    if not args.no_memory and not args.quick:
        print("memory ...", file=sys.stderr, flush=True)
        res["memory"] = run_mem(args)
    res["conditions_end"] = conditions()
    res["wall_s"] = time.perf_counter() - t0
    write_json(args.out, res)
    print(table(res))
    if "memory" in res:
        print()
        print(mem_table(res))
    print(f"\n(wrote {args.out}; {res['wall_s']:.0f} s; end: {describe(res['conditions_end'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
