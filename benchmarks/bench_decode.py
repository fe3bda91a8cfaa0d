"""Decoding benchmark: the workbench against plain Hugging Face, and compressed caches against their limit.

    python benchmarks/bench_decode.py [--quick] [--contexts 256 1024 4096] [--steps 32] [--repeats 3]
                                      [--threads 2] [--sections hf compressed] [--out benchmarks/results/decode.json]

SmolLM2-135M-Instruct, fp32, eager attention, greedy, CPU (or the GPU when present), ``torch.no_grad``.
Every prompt is the first L tokens of a long offline text (``workbench.texts.long_texts``).
Threads and the load average are recorded at the start and end of every section.

1. ``hf``: time per generated token of ``m.generate`` against HF ``generate`` on a separately loaded
   plain HF copy of the same checkpoint (``workbench.loading.smollm2.load_smollm2()``, never wrapped),
   same prompt ids and same number of new tokens (EOS ignored), with the same cache kind:
   ``DynamicCache`` vs ``m.generate(cache="dynamic")`` and ``StaticCache(max_cache_len=L + steps)`` vs
   ``m.generate(cache="preallocated")``. Per-token time: the median interval between consecutive
   decode steps, stamped by a logits processor (HF) and by ``on_step`` (workbench), so prefill is
   excluded and both loops' own per-step overhead is included. Variants run in rotating order,
   ``--repeats`` times; the generated tokens of all four are compared.

2. ``compressed``: decode speed of caches through the workbench's hook-free path, one prefill per
   context (SnapKV, H2O and AdaKV observe its attention), every variant from a copy of it, then
   ``--steps`` greedy tokens fed one at a time with ``cached_forward`` (no hooks, no policy call):

     full@L            preallocated full cache at every context L (the bandwidth model is fitted on these)
     growing@Lmax      the growing (``torch.cat``) full cache at the longest context
     <policy>@Lmax     streaming_llm, snapkv, h2o at ratio 0.75 (4x fewer entries), compacted in place
                       inside a preallocated cache (shrunk to kept + room for the steps)
     adakv@Lmax        AdaKV at ratio 0.75: per-head budgets, ragged per-head storage with room
     kivi4@Lmax        KIVI 4-bit (group 32, residual 32)

   Targets: a 4x-compressed Lmax context within 1.05x of the full cache at Lmax/4 (a model that only
   ever saw the kept entries: the physical limit of eviction); its speedup against full@Lmax next to
   the bandwidth model's prediction t(L) = a + b * L fitted on the full@L rows; AdaKV no slower than
   the uniform policies; KIVI 4-bit no slower than full@Lmax while holding <= 0.25 of its bytes.

``--quick``: contexts 256 and 1024, 8 steps, 2 repeats (a sanity run; not for the tables).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
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

from benchmarks.conditions import conditions, describe, machine, set_threads  # noqa: E402

RATIO = 0.75  # 4x compression
UNIFORM = ("streaming_llm", "snapkv", "h2o")
TARGETS = {"hf_ratio": 1.05, "evict_vs_limit": 1.05, "adakv_vs_uniform": 1.0, "kivi_vs_full": 1.0,
           "kivi_bytes": 0.25}
KV_BYTES_PER_TOKEN = None  # filled from the model: 2 * layers * kv_heads * d_head * 4


def _prompt_ids(m, n_tokens: int) -> torch.Tensor:
    from workbench.texts import long_texts

    text = long_texts(m, 1, n_tokens=n_tokens + 64)[0]
    ids, _ = m.tokenize(text)
    if ids.shape[1] < n_tokens:
        raise RuntimeError(f"the offline text gives only {ids.shape[1]} tokens, asked for {n_tokens}")
    return ids[:, :n_tokens].cpu()


def _per_token_ms(stamps: list[float]) -> tuple[float, float]:
    gaps = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps), statistics.fmean(gaps)


# ---------------------------------------------------------------------------------- 1. vs HF
def _hf_generate(hf, ids, steps, kind):
    from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StaticCache

    stamps = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    ids = ids.to(hf.device)
    cache = DynamicCache(config=hf.config) if kind == "dynamic" else \
        StaticCache(config=hf.config, max_cache_len=ids.shape[1] + steps)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                      past_key_values=cache, logits_processor=LogitsProcessorList([Stamp()]),
                      eos_token_id=None, pad_token_id=0, disable_compile=True, temperature=None, top_p=None,
                      top_k=None)
    return out[0, ids.shape[1]:].tolist(), stamps


def _wb_generate(m, ids, steps, kind):
    stamps = []
    g = m.generate(ids, steps, stop_at_eos=False, cache=kind,
                   on_step=lambda cache, ctx: stamps.append(time.perf_counter()))
    return g.new_tokens.tolist(), stamps


def bench_hf(m, contexts, steps, repeats) -> dict:
    from workbench.loading.smollm2 import load_smollm2

    hf, _, _ = load_smollm2()  # a second, never-wrapped copy: the baseline
    hf = hf.to(m.device).eval()
    variants = {"hf_dynamic": lambda ids: _hf_generate(hf, ids, steps, "dynamic"),
                "wb_dynamic": lambda ids: _wb_generate(m, ids, steps, "dynamic"),
                "hf_static": lambda ids: _hf_generate(hf, ids, steps, "static"),
                "wb_preallocated": lambda ids: _wb_generate(m, ids, steps, "preallocated")}
    rows = []
    out = {"conditions_start": conditions(), "rows": rows}
    with torch.no_grad():
        for L in contexts:
            ids = _prompt_ids(m, L)
            ms = {k: [] for k in variants}
            tokens = {}
            names = list(variants)
            for rep in range(repeats + 1):  # rep 0: warm-up
                order = names[rep % len(names):] + names[:rep % len(names)]
                for k in order:
                    toks, stamps = variants[k](ids)
                    tokens[k] = toks
                    if rep:
                        ms[k].append(_per_token_ms(stamps)[0])
            same = len({tuple(t) for t in tokens.values()}) == 1
            r = {"context": L, "steps": steps, "tokens_identical": same,
                 **{f"{k}_ms": statistics.median(v) for k, v in ms.items()},
                 **{f"{k}_all_ms": v for k, v in ms.items()}}
            r["ratio_dynamic"] = r["wb_dynamic_ms"] / r["hf_dynamic_ms"]
            r["ratio_static"] = r["wb_preallocated_ms"] / r["hf_static_ms"]
            rows.append(r)
            print(f"  L={L}: HF dynamic {r['hf_dynamic_ms']:.1f} ms/tok, wb dynamic {r['wb_dynamic_ms']:.1f} "
                  f"({r['ratio_dynamic']:.3f}x); HF static {r['hf_static_ms']:.1f}, wb preallocated "
                  f"{r['wb_preallocated_ms']:.1f} ({r['ratio_static']:.3f}x); same tokens: {same}", flush=True)
    out["conditions_end"] = conditions()
    variants.clear()  # drop the baseline copy with the closures that hold it
    return out


# ---------------------------------------------------------------------------------- 2. compressed caches
def _decode(m, cache, first_tok: int, steps: int) -> tuple[float, list[int]]:
    """Mean ms per token over ``steps`` greedy tokens fed one at a time (no hook: the plain path)."""
    from workbench.generation import cached_forward

    tok, toks = first_tok, []
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = cached_forward(m, cache, torch.tensor([[tok]], device=m.device), last_only=True)[0, -1]
        tok = int(logits.argmax())
        toks.append(tok)
    return (time.perf_counter() - t0) / steps * 1000, toks


def _prefill(m, ids, steps, observers):
    """Preallocated full cache of ``ids`` (capacity len + steps), the first token, prefill seconds."""
    from workbench.kv_cache import KVCache
    from workbench.session import AttentionFanout

    cache = KVCache.preallocated(m, ids.shape[1] + steps)
    fan = AttentionFanout(observers)
    t0 = time.perf_counter()
    with m.session(observe_attention=fan if fan else None) as s:
        first = int(s.forward_cached(cache, ids.to(m.device))[0, -1].argmax())
    return cache, first, time.perf_counter() - t0


def bench_compressed(m, contexts, steps, repeats) -> dict:
    from efficiency.kv import get_policy
    from workbench.kv_cache import StepContext

    lmax = max(contexts)
    out = {"conditions_start": conditions(), "ratio": RATIO, "steps": steps}
    rows = []
    with torch.no_grad():
        bases = {}
        for L in sorted(set(contexts)):
            ids = _prompt_ids(m, L)
            policies = {n: get_policy(n, ratio=RATIO) for n in (*UNIFORM, "adakv")} if L == lmax else {}
            full, first, pre_s = _prefill(m, ids, steps, [p.observe_attention for p in policies.values()])
            caches = {f"full@{L}": full}
            if L == lmax:
                caches[f"growing@{L}"] = full.copy(kind="dynamic")
                for n, p in policies.items():
                    c = full.copy()
                    p.apply(c, StepContext(0, L))
                    caches[f"{n}@{L}"] = c
                c = full.copy()
                get_policy("kivi", bits=4).apply(c, StepContext(0, L))
                caches[f"kivi4@{L}"] = c
            bases[L] = (caches, first, pre_s)
            print(f"  prefill L={L}: {pre_s:.1f} s", flush=True)
        variants = [(L, k) for L, (caches, _, _) in bases.items() for k in caches]
        ms = {k: [] for _, k in variants}
        toks = {}
        for rep in range(repeats + 1):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for L, k in order:
                caches, first, _ = bases[L]
                c = caches[k].copy()
                dt, t = _decode(m, c, first, steps)
                del c
                toks[k] = t
                if rep:
                    ms[k].append(dt)
        for L, k in variants:
            caches, first, pre_s = bases[L]
            st = caches[k].stats()
            rows.append({"context": L, "variant": k, "ms_median": statistics.median(ms[k]), "ms_min": min(ms[k]),
                         "ms_all": ms[k], "physical_bytes": st.physical_bytes, "logical_bytes": st.logical_bytes,
                         "kept_fraction": st.compression, "prefill_s": pre_s, "tokens": toks[k]})
    out["rows"] = rows
    out["summary"] = _summarize_compressed(m, rows, contexts)
    out["conditions_end"] = conditions()
    return out


def _summarize_compressed(m, rows, contexts) -> dict:
    lmax = max(contexts)
    by = {r["variant"]: r for r in rows}
    full = {L: by[f"full@{L}"]["ms_median"] for L in sorted(set(contexts))}
    i = m.info
    kv_tok = 2 * i.n_layers * i.n_kv_heads * i.d_head * 4  # fp32 K and V bytes per token of context
    s = {"kv_bytes_per_token": kv_tok, "weight_bytes": m.parameter_bytes()}
    if len(full) >= 2:  # least squares t = a + b L over the full-cache rows
        xs, ys = list(full), list(full.values())
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        a = my - b * mx
        s.update(fit_a_ms=a, fit_b_ms_per_1k=b * 1000, kv_bandwidth_GBps=kv_tok / (b * 1e-3) / 1e9 if b > 0 else None)
        if b > 0:
            bw = kv_tok / (b * 1e-3)
            s["weights_at_kv_bandwidth_ms"] = s["weight_bytes"] / bw * 1000
            s["overhead_ms"] = a - s["weights_at_kv_bandwidth_ms"]
    ref_ctx = lmax // 4
    limit = full.get(ref_ctx)
    kept = {}
    for n in (*UNIFORM, "adakv"):
        r = by.get(f"{n}@{lmax}")
        if r is None:
            continue
        n_kept = r["kept_fraction"] * lmax
        kept[n] = {"ms": r["ms_median"], "speedup_vs_full": full[lmax] / r["ms_median"],
                   "vs_limit": r["ms_median"] / limit if limit else None, "kept_tokens": n_kept,
                   "bytes_vs_full": r["physical_bytes"] / by[f"full@{lmax}"]["physical_bytes"]}
        if "fit_a_ms" in s:
            pred = (s["fit_a_ms"] + s["fit_b_ms_per_1k"] * lmax / 1000) / (s["fit_a_ms"] + s["fit_b_ms_per_1k"] * n_kept / 1000)
            kept[n]["predicted_speedup"] = pred
    s["evict"] = kept
    uni = [kept[n]["ms"] for n in UNIFORM if n in kept]
    if "adakv" in kept and uni:
        s["adakv_vs_best_uniform"] = kept["adakv"]["ms"] / min(uni)
        s["adakv_vs_mean_uniform"] = kept["adakv"]["ms"] / statistics.fmean(uni)
    k4 = by.get(f"kivi4@{lmax}")
    if k4:
        s["kivi4"] = {"ms": k4["ms_median"], "vs_full": k4["ms_median"] / full[lmax],
                      "bytes_vs_full": k4["physical_bytes"] / by[f"full@{lmax}"]["physical_bytes"],
                      "vs_growing": k4["ms_median"] / by[f"growing@{lmax}"]["ms_median"]}
    s["limit_context"] = ref_ctx if limit else None
    return s


# ---------------------------------------------------------------------------------- output
def markdown(res: dict) -> str:
    lines = []
    if "hf" in res:
        c = res["hf"]["conditions_start"]
        lines += [f"Decoding vs plain HF ({describe(c)}):", "",
                  "| context | HF DynamicCache ms/tok | `m.generate` dynamic | ratio | HF StaticCache ms/tok | "
                  "`m.generate` preallocated | ratio | same tokens |",
                  "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for r in res["hf"]["rows"]:
            lines.append(f"| {r['context']} | {r['hf_dynamic_ms']:.1f} | {r['wb_dynamic_ms']:.1f} | "
                         f"{r['ratio_dynamic']:.3f}x | {r['hf_static_ms']:.1f} | {r['wb_preallocated_ms']:.1f} | "
                         f"{r['ratio_static']:.3f}x | {'yes' if r['tokens_identical'] else 'NO'} |")
    if "compressed" in res:
        cp = res["compressed"]
        c = cp["conditions_start"]
        lines += ["", f"Compressed caches, hook-free decoding ({describe(c)}):", "",
                  "| cache | ms/token (median) | min | physical MiB | bytes vs full | kept |",
                  "|---|---:|---:|---:|---:|---:|"]
        fullb = {r["context"]: r["physical_bytes"] for r in cp["rows"] if r["variant"].startswith("full@")}
        lmax = max(fullb)
        for r in cp["rows"]:
            lines.append(f"| {r['variant']} | {r['ms_median']:.1f} | {r['ms_min']:.1f} | "
                         f"{r['physical_bytes'] / 2**20:.1f} | {r['physical_bytes'] / fullb[lmax]:.3f} | "
                         f"{r['kept_fraction']:.3f} |")
        s = cp["summary"]
        if "fit_a_ms" in s:
            lines += ["", f"Bandwidth model fitted on the full caches: t(L) = {s['fit_a_ms']:.1f} ms + "
                          f"{s['fit_b_ms_per_1k']:.2f} ms per 1k tokens (KV read at "
                          f"{s.get('kv_bandwidth_GBps') or float('nan'):.1f} GB/s; weights "
                          f"{s['weight_bytes'] / 2**20:.0f} MiB would take {s.get('weights_at_kv_bandwidth_ms', float('nan')):.1f} ms "
                          f"at that rate, leaving {s.get('overhead_ms', float('nan')):.1f} ms of fixed overhead)."]
        if s.get("evict"):
            lines += ["", f"| 4x eviction at {lmax} | ms/token | vs full@{s['limit_context']} (limit, <= 1.05) | "
                          f"speedup vs full@{lmax} | bandwidth model predicts | bytes vs full |",
                      "|---|---:|---:|---:|---:|---:|"]
            for n, e in s["evict"].items():
                vl = f"{e['vs_limit']:.3f}x" if e["vs_limit"] else "n/a"
                pr = f"{e['predicted_speedup']:.2f}x" if "predicted_speedup" in e else "n/a"
                lines.append(f"| {n} | {e['ms']:.1f} | {vl} | {e['speedup_vs_full']:.2f}x | {pr} | "
                             f"{e['bytes_vs_full']:.3f} |")
        if "adakv_vs_best_uniform" in s:
            lines.append(f"\nAdaKV (ragged) vs the fastest uniform policy: {s['adakv_vs_best_uniform']:.3f}x "
                         f"(vs their mean {s['adakv_vs_mean_uniform']:.3f}x; target <= 1.0).")
        if "kivi4" in s:
            k = s["kivi4"]
            lines.append(f"KIVI 4-bit vs the full fp32 cache at {lmax}: {k['vs_full']:.3f}x time "
                         f"({k['vs_growing']:.3f}x the growing cache), {k['bytes_vs_full']:.3f} of the bytes "
                         f"(targets <= 1.0x, <= 0.25).")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="contexts 256 1024, 8 steps, 2 repeats")
    ap.add_argument("--contexts", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument("--sections", nargs="+", default=["hf", "compressed"], choices=["hf", "compressed"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode.json")
    a = ap.parse_args(argv)
    contexts = a.contexts or ([256, 1024] if a.quick else [256, 1024, 4096])
    steps = a.steps or (8 if a.quick else 32)
    repeats = a.repeats or (2 if a.quick else 3)
    set_threads(a.threads or None)
    import workbench as wb

    m = wb.load()
    t0 = time.perf_counter()
    res = {"benchmark": "decode", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine(), "conditions_start": conditions(), "quick": a.quick,
           "config": {"model": m.info.name, "contexts": contexts, "steps": steps, "repeats": repeats,
                      "ratio": RATIO, "fast_path": m.fast_path_status() or "on"},
           "targets": TARGETS}
    print(f"bench_decode: {describe(res['conditions_start'])}", flush=True)
    if "hf" in a.sections:
        print("vs plain HF generate:", flush=True)
        res["hf"] = bench_hf(m, contexts, steps, repeats)
    if "compressed" in a.sections:
        print("compressed caches:", flush=True)
        res["compressed"] = bench_compressed(m, contexts, steps, repeats)
    res["conditions_end"] = conditions()
    res["wall_s"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, a.out)
    print(markdown(res))
    print(f"\n(wrote {a.out}; {res['wall_s']:.0f} s; end: {describe(res['conditions_end'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
