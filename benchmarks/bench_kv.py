"""KV-cache compression benchmark: decode latency, physical bytes and quality (issue 5 targets).

    python benchmarks/bench_kv.py [--contexts 1024 2048 4096] [--steps 16] [--repeats 5]
                                  [--passkey-n 10] [--out benchmarks/results/kv.json]
                                  [--sections latency quality long]

SmolLM2-135M-Instruct (``workbench.load()``), fp32, eager attention, CPU, ``torch.no_grad``,
``torch.set_num_threads(--threads)`` (default 2).

1. Decode latency. For each context length a passkey prompt of about that many tokens
   (``workbench.tasks.passkey_prompts``, filler text) is prefilled **once** into a full
   ``KVCache`` while SnapKV and H2O observe the prefill's attention. Every variant then starts
   from that prefill:

     full          the default growing cache (``WorkbenchDynamicCache``, a ``torch.cat`` per step)
     static        a preallocated HF ``StaticCache`` of max_cache_len = context + steps + 1,
                   filled with the same prefilled keys/values, decoded through the same
                   ``m.bridge(..., past_key_values=..., cache_position=..., position_ids=...)``
     streaming_llm, snapkv, h2o  at ratio 0.75 (4x fewer entries), compressed once after prefill
                   (``policy.apply(full.copy(), step 0)``), then decoded with a growing cache
     adakv         AdaKV at ratio 0.75: per-head budgets stored ragged (``RaggedLayer``): the
                   attention runs over a transient padded view with per-head score masking
     kivi4         KIVI 4-bit (g32, r32) installed after prefill (``get_policy("kivi", bits=4)``)

   Each variant decodes ``--steps`` tokens greedily one at a time (``cached_forward``, no hooks,
   no policy call during the timed steps: the ratio policies compress at prefill only). Variants
   run in interleaved, rotating order ``--repeats`` times after one warm-up, each repeat from a
   fresh copy of its cache (copy not timed); reported: ms/token (min and median over repeats of
   the mean step time), speedups vs the full and the static baseline, physical bytes vs full.
   The static baseline's first-step logits are checked against the full cache's.

2. Quality. (a) ``efficiency.kv.harness.perplexity`` of StreamingLLM at ratio 0.75 vs the full
   cache. Compressed prompt (prefix 0.5, the policy compresses the prefix once, the second half
   is scored) on the bundled corpus (``probes.domains``: every text, and each domain's texts
   joined into one longer text) and on ``--ppl-long-n`` long texts of ``--ppl-long-tokens`` tokens
   (``harness.long_texts``: windows of ``pydoc_data.topics``); and streaming on the long texts
   (``at="both"``, prefix 0.25, chunks of 16 tokens: after every chunk the cache is cut back to a
   quarter of the tokens seen; the last 75% of each text is scored).
   (b) ``efficiency.kv.harness.sweep`` at ratio 0.75 for ``QUALITY_POLICIES`` on ``--passkey-n``
   passkey prompts of ``--passkey-tokens`` tokens, key depth spread over 0.1..0.9.

3. Long task runs (``--sections long``): ``sweep`` on passkey and single-needle prompts of
   ``--long-contexts`` tokens (``--long-n`` of each per length, depth spread), policies
   ``LONG_POLICIES`` at ratios 0.25 and 0.75, recording prompt tokens, prefill and decode seconds.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
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
from transformers import StaticCache  # noqa: E402

RATIO = 0.75  # 4x compression: a quarter of the entries kept
EVICT = ("streaming_llm", "snapkv", "h2o", "adakv")
QUALITY_POLICIES = ("snapkv", "h2o", "tova", "pyramidkv", "adakv", "zigzagkv", "streaming_llm")
QUERY_AWARE = ("snapkv", "h2o", "tova", "pyramidkv", "adakv", "zigzagkv")
LONG_POLICIES = ("streaming_llm", "snapkv", "tova", "adakv", "zigzagkv")
LONG_RATIOS = (0.25, 0.75)
TARGET_SPEEDUP, TARGET_BYTES_TOL, TARGET_PPL, TARGET_PASSKEY = 1.4, 0.05, 0.10, 0.90


class _Fanout:
    def __init__(self, policies):
        self.policies = policies

    def observe_attention(self, layer, pattern):
        for p in self.policies:
            p.observe_attention(layer, pattern)


def _static_from(m, full, max_len: int) -> tuple[StaticCache, int]:
    """A StaticCache of ``max_len`` slots holding the prefilled keys/values of ``full``."""
    sc = StaticCache(config=m.hf.config, max_cache_len=max_len)
    n = full.seq_len(0)
    for l, lay in enumerate(sc.layers):
        k, v = full.keys(l), full.values(l)
        lay.lazy_initialization(k, v)
        lay.keys[:, :, :n].copy_(k)
        lay.values[:, :, :n].copy_(v)
        lay.cumulative_length.fill_(n)
    return sc, n


def _static_bytes(sc) -> int:
    return sum(l.keys.untyped_storage().nbytes() + l.values.untyped_storage().nbytes() for l in sc.layers)


def _decode_kv(m, cache, first_tok: int, steps: int) -> tuple[float, torch.Tensor]:
    from workbench.generation import cached_forward

    tok, first_logits = first_tok, None
    t0 = time.perf_counter()
    for i in range(steps):
        logits = cached_forward(m, cache, torch.tensor([[tok]]))[0, -1]
        if i == 0:
            first_logits = logits
        tok = int(logits.argmax())
    return time.perf_counter() - t0, first_logits


def _decode_static(m, sc, n: int, first_tok: int, steps: int) -> tuple[float, torch.Tensor]:
    tok, first_logits = first_tok, None
    t0 = time.perf_counter()
    for i in range(steps):
        pos = torch.tensor([n + i])
        logits = m.bridge(torch.tensor([[tok]]), return_type="logits", past_key_values=sc, use_cache=True,
                          position_ids=pos[None], cache_position=pos)[0, -1]
        if i == 0:
            first_logits = logits
        tok = int(logits.argmax())
    return time.perf_counter() - t0, first_logits


def bench_latency(m, contexts, steps, repeats) -> list[dict]:
    from efficiency.kv import get_policy
    from workbench.generation import _observe_attention, cached_forward
    from workbench.kv_cache import KVCache, StepContext
    from workbench.tasks import passkey_prompts

    rows = []
    for L in contexts:
        s = passkey_prompts(m, 1, n_tokens=L, seed=L)[0]
        ids, _ = m.tokenize(s.prompt)
        T = int(ids.shape[1])
        policies = {name: get_policy(name, ratio=RATIO) for name in EVICT}
        observers = [p for p in policies.values() if getattr(p, "observe_attention", None)]
        full = KVCache.empty(m)
        t0 = time.perf_counter()
        with m._session(()) as session:
            _observe_attention(m, session, _Fanout(observers))
            with session, torch.no_grad():
                first_tok = int(cached_forward(m, full, ids)[0, -1].argmax())
        prefill_s = time.perf_counter() - t0
        caches = {"full": full}
        for name, p in policies.items():
            c = full.copy()
            p.apply(c, StepContext(0, T))
            caches[name] = c
        kivi = get_policy("kivi", bits=4)
        c = full.copy()
        kivi.apply(c, StepContext(0, T))
        caches["kivi4"] = c
        max_len = T + steps + 1
        phys = {k: c.stats().physical_bytes for k, c in caches.items()}
        kept = {k: c.stats().compression for k, c in caches.items()}
        sc0, _ = _static_from(m, full, max_len)
        phys["static"], kept["static"] = _static_bytes(sc0), 1.0
        del sc0
        variants = ["full", "static", *EVICT, "kivi4"]
        times = {v: [] for v in variants}
        first_logits = {}
        with torch.no_grad():
            for rep in range(repeats + 1):  # rep 0 = warm-up
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for v in order:
                    if v == "static":
                        sc, n = _static_from(m, full, max_len)
                        dt, fl = _decode_static(m, sc, n, first_tok, steps)
                        del sc
                    else:
                        c = caches[v].copy()
                        dt, fl = _decode_kv(m, c, first_tok, steps)
                        del c
                    if rep == 0:
                        first_logits[v] = fl
                    else:
                        times[v].append(dt / steps * 1000)
        static_diff = float((first_logits["static"] - first_logits["full"]).abs().max())
        base_min, base_med = min(times["full"]), statistics.median(times["full"])
        st_min, st_med = min(times["static"]), statistics.median(times["static"])
        for v in variants:
            mn, md = min(times[v]), statistics.median(times[v])
            rows.append({"context": T, "variant": v, "ms_min": mn, "ms_median": md, "ms_all": times[v],
                         "speedup_vs_full_min": base_min / mn, "speedup_vs_full_median": base_med / md,
                         "speedup_vs_static_min": st_min / mn, "speedup_vs_static_median": st_med / md,
                         "physical_bytes": phys[v], "bytes_vs_full": phys[v] / phys["full"],
                         "kept_fraction": kept[v], "prefill_s": prefill_s, "static_first_logit_maxdiff": static_diff})
            print(f"  L={T} {v:14s} {mn:7.1f} / {md:7.1f} ms/tok  x{base_med / md:.2f} vs full  "
                  f"x{st_med / md:.2f} vs static  bytes {phys[v] / phys['full']:.3f}", flush=True)
        print(f"  L={T}: prefill {prefill_s:.1f}s, static vs full first-step logits max|diff| {static_diff:.2e}",
              flush=True)
        del caches, full
    return rows


def bench_quality(m, passkey_n, passkey_tokens, ppl_long_n=3, ppl_long_tokens=2048, do_ppl=True,
                  policies=None) -> dict:
    from efficiency.kv import get_policy
    from efficiency.kv.harness import long_texts, perplexity, sweep
    from probes.domains import load_domains
    from workbench.tasks import passkey_prompts

    out = {}
    doms = load_domains()
    texts = [t for v in doms.values() for t in v]
    joined = ["\n\n".join(v) for v in doms.values()]
    long = long_texts(m, ppl_long_n, ppl_long_tokens) if ppl_long_n and do_ppl else []
    ppl = {}
    runs = [("corpus_texts", texts, "prompt"), ("corpus_joined_per_domain", joined, "prompt")] if do_ppl else []
    if long:
        from workbench.texts import load_corpus

        # the bundled corpus (in-domain held-out split, workbench/texts/data/corpus), joined and cut into long windows
        bundled = long_texts(m, ppl_long_n, ppl_long_tokens, corpus="\n\n".join(load_corpus("heldout")))
        runs += [(f"pydoc_{ppl_long_tokens}", long, "prompt"), (f"pydoc_{ppl_long_tokens}_streaming", long, "stream"),
                 (f"bundled_corpus_{ppl_long_tokens}", bundled, "prompt"),
                 (f"bundled_corpus_{ppl_long_tokens}_streaming", bundled, "stream")]
    for label, tx, mode in runs:
        t0 = time.perf_counter()
        if mode == "prompt":
            full = perplexity(m, tx, None)
            sl = perplexity(m, tx, get_policy("streaming_llm", ratio=RATIO))
        else:
            full = perplexity(m, tx, None, prefix=0.25)
            sl = perplexity(m, tx, get_policy("streaming_llm", ratio=RATIO, at="both"), prefix=0.25, chunk=16)
        ppl[label] = {"mode": {"prompt": "compressed prefix (0.5), at=prefill",
                               "stream": "streaming: prefix 0.25, chunk 16, at=both"}[mode],
                      "n_texts": len(tx), "n_scored": full.n_scored, "full": full.perplexity,
                      "streaming_llm": sl.perplexity, "rel_increase": sl.perplexity / full.perplexity - 1,
                      "kept_fraction": float(sl.per_text.kept_fraction.mean()),
                      "mean_tokens": float(full.per_text.n_tokens.mean()),
                      "seconds": time.perf_counter() - t0}
        print(f"  ppl {label}: full {full.perplexity:.3f}  streaming_llm@0.75 {sl.perplexity:.3f} "
              f"({ppl[label]['rel_increase']:+.1%}), kept {ppl[label]['kept_fraction']:.2f}", flush=True)
    out["perplexity"] = ppl
    if not passkey_n:
        return out
    depths = [0.1 + 0.8 * i / max(passkey_n - 1, 1) for i in range(passkey_n)]
    samples = [passkey_prompts(m, 1, n_tokens=passkey_tokens, depth=d, seed=100 + i)[0] for i, d in enumerate(depths)]
    t0 = time.perf_counter()
    res = sweep(m, samples, policies=policies or QUALITY_POLICIES, ratios=(RATIO,))
    summ = res.summary()
    print(summ.to_string(index=False), flush=True)
    scores = {r.policy: float(r.score) for r in summ.itertuples()}
    return {**out, "passkey": {"n": passkey_n, "n_tokens": [s.n_tokens for s in samples],
                                           "depths": depths, "scores": scores,
                                           "kept_fraction": {r.policy: float(r.kept_fraction) for r in summ.itertuples()},
                                           "seconds": time.perf_counter() - t0, "rows": res.rows}}


def bench_long(m, contexts, n_each, save=None) -> dict:
    """Passkey and single-needle sweeps at each context length (see the module docstring, 3.)."""
    from efficiency.kv.harness import sweep
    from workbench.tasks import needle_prompts, passkey_prompts

    out = {"policies": list(LONG_POLICIES), "ratios": list(LONG_RATIOS), "n_each": n_each, "runs": []}
    for L in contexts:
        depths = [0.2 + 0.6 * i / max(n_each - 1, 1) for i in range(n_each)]
        samples = [passkey_prompts(m, 1, n_tokens=L, depth=d, seed=200 + i)[0] for i, d in enumerate(depths)]
        samples += needle_prompts(m, n_each, n_tokens=L, kind="single", seed=300)
        t0 = time.perf_counter()
        res = sweep(m, samples, policies=LONG_POLICIES, ratios=LONG_RATIOS)
        df = res.to_frame()
        summ = (df.groupby(["kind", "policy", "ratio"], sort=False)
                .agg(score=("score", "mean"), kept=("kept_fraction", "mean"), n=("score", "size")).reset_index())
        print(f"  L={L}: {sorted(set(df.n_tokens))} tokens, prefill {res.prefill_seconds:.0f}s, "
              f"decode {res.decode_seconds:.0f}s", flush=True)
        print(summ.to_string(index=False), flush=True)
        out["runs"].append({"context": L, "n_tokens": sorted(int(x) for x in set(df.n_tokens)),
                            "prefill_s": res.prefill_seconds, "decode_s": res.decode_seconds,
                            "wall_s": time.perf_counter() - t0, "summary": summ.to_dict("records"),
                            "rows": res.rows})
        if save is not None:
            save(out)  # partial results survive an interrupted run
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passkey-n", type=int, default=10)
    ap.add_argument("--passkey-tokens", type=int, default=1024)
    ap.add_argument("--ppl-long-n", type=int, default=3)
    ap.add_argument("--ppl-long-tokens", type=int, default=2048)
    ap.add_argument("--long-contexts", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--long-n", type=int, default=2)
    ap.add_argument("--sections", nargs="+", default=["latency", "quality"], choices=["latency", "quality", "long"])
    ap.add_argument("--skip-ppl", action="store_true", help="quality: passkey only")
    ap.add_argument("--passkey-policies", nargs="+", default=None, help=f"default: {' '.join(QUALITY_POLICIES)}")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kv.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import workbench as wb

    m = wb.load()
    t_start = time.perf_counter()
    out = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "threads": a.threads,
           "torch": torch.__version__, "model": m.info.name, "ratio": RATIO, "steps": a.steps,
           "repeats": a.repeats}
    if "latency" in a.sections and not a.skip_latency:
        print("decode latency:", flush=True)
        out["latency"] = bench_latency(m, a.contexts, a.steps, a.repeats)
    if "quality" in a.sections and not a.skip_quality:
        print("quality:", flush=True)
        out["quality"] = bench_quality(m, a.passkey_n, a.passkey_tokens, a.ppl_long_n, a.ppl_long_tokens,
                                       do_ppl=not a.skip_ppl, policies=a.passkey_policies)
    if "long" in a.sections:
        print("long task runs:", flush=True)

        def save(partial):
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps({**out, "long": partial, "partial": True}, indent=1, default=str))

        out["long"] = bench_long(m, a.long_contexts, a.long_n, save)
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t_start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(_markdown(out))
    print(f"wrote {a.out} ({out['seconds']:.0f}s)")


def _markdown(out) -> str:
    lines = []
    if "latency" in out:
        lines += ["| context | cache | ms/token min | ms/token median | vs growing full (median) | "
                  "vs preallocated (median) | physical bytes vs full | kept |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in out["latency"]:
            lines.append(f"| {r['context']} | {r['variant']} | {r['ms_min']:.1f} | {r['ms_median']:.1f} | "
                         f"{r['speedup_vs_full_median']:.2f}× | {r['speedup_vs_static_median']:.2f}× | "
                         f"{r['bytes_vs_full']:.3f} | {r['kept_fraction']:.3f} |")
    if "quality" in out:
        q = out["quality"]
        lines += ["", "| text set | measure | texts | mean tokens | full ppl | streaming_llm@0.75 ppl | change |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for k, v in q["perplexity"].items():
            lines.append(f"| {k} | {v.get('mode', '')} | {v['n_texts']} | {v['mean_tokens']:.0f} | {v['full']:.3f} | "
                         f"{v['streaming_llm']:.3f} | {v['rel_increase']:+.1%} |")
        lines += ["", "| policy | passkey accuracy | kept |", "|---|---:|---:|"]
        for k, v in q.get("passkey", {}).get("scores", {}).items():
            lines.append(f"| {k} | {v:.2f} | {q['passkey']['kept_fraction'][k]:.3f} |")
    if "long" in out:
        lines += ["", "| context | kind | policy | ratio | score | kept | n |", "|---:|---|---|---:|---:|---:|---:|"]
        for run in out["long"]["runs"]:
            for r in run["summary"]:
                lines.append(f"| {run['context']} | {r['kind']} | {r['policy']} | {r['ratio']} | {r['score']:.2f} | "
                             f"{r['kept']:.3f} | {r['n']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
