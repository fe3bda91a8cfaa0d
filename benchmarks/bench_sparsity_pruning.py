"""Sparsity, layer pruning, low rank and MHA->MLA on SmolLM2: real savings and quality, ratios in one run.

    python benchmarks/bench_sparsity_pruning.py [--mode quick|full] [--sections drop_speed pruning ...]
                                                [--threads 1] [--out benchmarks/results/sparsity_pruning.json]

SmolLM2-135M-Instruct (``workbench.load()``), fp32, CPU, ``torch.set_num_threads(--threads)``. Every
timing compares variants measured in interleaved order in the same run (ratios, medians over repeats);
the machine load (``os.getloadavg``) and thread count are recorded with the results.

Data (no source shared between calibration and evaluation):
- calibration: the bundled corpus, source "python-docs", train split;
- held-out, out of domain: windows of the bundled corpus's "wordnet" documents;
- held-out, in domain: windows of the "python-docs" eval split (documents never calibrated on);
- facts: ``probes.factual.load_facts()``; LASER and TrimLLM select on one half, report on the other.
Perplexity is ``efficiency.kv.harness.perplexity`` (each window's second half scored after its first
half), on windows of ``--ppl-tokens`` tokens (2048 in full mode).

Sections (``--sections``, default all):
  drop_speed  decode ms/token and prefill time: unmodified vs 20% of the blocks skipped in place vs a
              pruned copy that really holds fewer blocks (target >= 1.2x for both)
  pruning     ShortGPT vs SLEB vs LaCo (vs TrimLLM, training-free) at 10/20/30%: perplexity, fact accuracy
  attn_drop   attention layers dropped by similarity: physical KV bytes and decode ms/token at 2k/4k context
  teal        TEAL at 50%: perplexity change, measured sparsity on held-out text, per-matrix decode
              speed of the gather-GEMV (gate/up target >= 1.25x) and end-to-end decode ms/token
  mla         MHA2MLA at d_kv 8/16/32 (rope_dims 8), no fine-tuning: physical KV bytes, perplexity,
              passkey, decode ms/token (absorbed vs decompressed) at 2k context
  laser       LASER sweep (layer x matrix x rank) on half the facts, best reported on the other half
  svd_llm     SVD-LLM at 20% (and 40% in full mode): perplexity, bytes, per-matrix two-GEMV speed
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
from torch.nn.functional import linear as F_linear  # noqa: E402

import efficiency as ef  # noqa: E402
import workbench as wb  # noqa: E402
from efficiency.kv.harness import perplexity  # noqa: E402
from workbench.texts import long_texts  # noqa: E402
from efficiency.lowrank import FactScorer, LowRankLinear, laser_sweep, truncated_svd  # noqa: E402
from efficiency.sparsity import SparseGatedMLP, SparseInputLinear, calibrate_teal, measured_sparsity  # noqa: E402
from probes.factual import load_facts  # noqa: E402
from probes.transcoders import load_corpus  # noqa: E402
from workbench.paths import atomic_write_bytes  # noqa: E402
from workbench.texts.tasks import passkey_prompts, score_passkey  # noqa: E402

SECTIONS = ("drop_speed", "pruning", "attn_drop", "teal", "mla", "laser", "svd_llm")
MODES = {
    "quick": dict(ppl_n=2, ppl_tokens=1024, facts_per_rel=20, repeats=3, decode_steps=8, prefill_tokens=256,
                  ratios=(0.1, 0.2, 0.3), sleb_windows=2, calib_windows=4, contexts=(2048,), passkey_n=4,
                  passkey_tokens=512, laser_layers=range(16, 30, 3), laser_kinds=("up", "down"),
                  laser_rhos=(0.01, 0.05, 0.2), teal_fracs=(0.5,), svd_ratios=(0.2,), mla_dkv=(8, 16, 32),
                  mla_whitened_dkv=(32,), svd_windows=32),
    "full": dict(ppl_n=4, ppl_tokens=2048, facts_per_rel=None, repeats=5, decode_steps=16, prefill_tokens=512,
                 ratios=(0.1, 0.2, 0.3), sleb_windows=8, calib_windows=16, contexts=(2048, 4096), passkey_n=10,
                 passkey_tokens=1024, laser_layers=range(0, 30), laser_kinds=("gate", "up", "down", "o"),
                 laser_rhos=(0.01, 0.02, 0.05, 0.1, 0.25), teal_fracs=(0.25, 0.4, 0.5, 0.65), svd_ratios=(0.2, 0.4),
                 mla_dkv=(8, 16, 32), mla_whitened_dkv=(8, 16, 32), svd_windows=64),
}


# ---------------------------------------------------------------------------------------------- data
class Data:
    """Calibration texts, held-out windows and facts (see the module docstring)."""

    def __init__(self, m, cfg):
        self.calib = load_corpus("train", sources=["python-docs"])
        gloss = "\n\n".join(load_corpus("all", sources=["wordnet"]))
        docs_eval = "\n\n".join(load_corpus("heldout", sources=["python-docs"]))
        self.ood = long_texts(m, cfg["ppl_n"], cfg["ppl_tokens"], corpus=gloss)
        self.indomain = long_texts(m, cfg["ppl_n"], cfg["ppl_tokens"], corpus=docs_eval)
        facts = load_facts()
        if cfg["facts_per_rel"]:
            facts = facts.sample(cfg["facts_per_rel"], seed=0)
        facts = list(facts)
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(facts), generator=g).tolist()
        half = len(facts) // 2
        self.facts_select = [facts[i] for i in perm[:half]]
        self.facts_eval = [facts[i] for i in perm[half:]]
        self.score_select = FactScorer(m, [f.prompt for f in self.facts_select], [f.answer for f in self.facts_select])
        self.score_eval = FactScorer(m, [f.prompt for f in self.facts_eval], [f.answer for f in self.facts_eval])


def quality(m, data, interventions=()) -> dict:
    """Perplexity (out of domain and in domain) and held-out fact accuracy under ``interventions``."""
    with m.intervene(*interventions):
        ood = perplexity(m, data.ood).perplexity
        ind = perplexity(m, data.indomain).perplexity
        facts = data.score_eval(m)
    return {"ppl_ood": ood, "ppl_indomain": ind, "fact_acc": facts.accuracy, "fact_logprob": facts.mean_logprob,
            "n_facts": len(data.score_eval)}


# ---------------------------------------------------------------------------------------------- timing
def decode_ms(m, ids, steps: int, interventions=()) -> float:
    """Median ms per decode step of a greedy generation from ``ids`` (prefill excluded)."""
    stamps = []
    with m.intervene(*interventions):
        m.generate(ids, steps + 1, stop_at_eos=False, on_step=lambda c, ctx: stamps.append(time.perf_counter()))
    return statistics.median([(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])])


def prefill_s(m, ids, interventions=()) -> float:
    """Seconds of one prefill of ``ids`` (the edits are installed before the clock starts)."""
    with m.intervene(*interventions):
        t = time.perf_counter()
        m.prefill(ids)
        return time.perf_counter() - t


def interleaved(variants: dict, fn, repeats: int) -> dict:
    """{name: median of fn(name) over repeats}, variants measured in rotating order after a warm-up."""
    names = list(variants)
    for n in names:
        fn(n)
    out = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            out[n].append(fn(n))
    return {n: statistics.median(v) for n, v in out.items()}


def tokens(m, text: str, n: int) -> torch.Tensor:
    ids = m.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return torch.tensor([ids], device=m.device)


def gemv_us(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(best)


# ---------------------------------------------------------------------------------------------- sections
def sec_drop_speed(m, data, cfg, log) -> dict:
    meth = ef.get_method("shortgpt", ratio=0.2, window=256, n_windows=cfg["calib_windows"])
    meth.prepare(m, data.calib)
    iv = meth.intervention(m)
    small = ef.pruned_copy(m, meth, check_parity=False)
    prompt = tokens(m, data.ood[0], 128)
    long = tokens(m, data.ood[0], cfg["prefill_tokens"])
    models = {"base": (m, ()), "skip_20pct": (m, (iv,)), "pruned_copy": (small, ())}
    dec = interleaved(models, lambda n: decode_ms(models[n][0], prompt, cfg["decode_steps"], models[n][1]), cfg["repeats"])
    pre = interleaved(models, lambda n: prefill_s(models[n][0], long, models[n][1]), cfg["repeats"])
    out = {"dropped": meth.dropped_blocks, "decode_ms": dec, "prefill_s": pre,
           "decode_speedup": {k: dec["base"] / v for k, v in dec.items()},
           "prefill_speedup": {k: pre["base"] / v for k, v in pre.items()},
           "weight_bytes": {"base": m.parameter_bytes(), "skip_20pct": m.parameter_bytes(),
                            "pruned_copy": small.parameter_bytes()},
           "prompt_tokens": int(prompt.shape[1]), "prefill_tokens": int(long.shape[1])}
    best = min(out["decode_speedup"]["skip_20pct"], out["decode_speedup"]["pruned_copy"])
    out["target_1.2x"] = bool(best >= 1.2 and min(out["prefill_speedup"]["skip_20pct"],
                                                   out["prefill_speedup"]["pruned_copy"]) >= 1.2)
    log(f"drop_speed: decode {out['decode_speedup']}, prefill {out['prefill_speedup']}")
    del small
    return out


def sec_pruning(m, data, cfg, log) -> dict:
    rows = [{"method": "unmodified", "ratio": 0.0, "dropped": [], **quality(m, data)}]
    log(f"pruning: base {rows[0]}")
    top = max(cfg["ratios"])
    t = time.perf_counter()
    sleb = ef.get_method("sleb", ratio=top, window=128, n_windows=cfg["sleb_windows"])
    sleb.prepare(m, data.calib)
    sleb_s = time.perf_counter() - t
    t = time.perf_counter()
    trim = ef.get_method("trimllm", ratio=top, window=128, n_windows=2)
    trim.prepare(m, data.calib, score=lambda mm: data.score_select(mm).accuracy)
    trim_s = time.perf_counter() - t
    times = {"sleb_prepare_s": sleb_s, "trimllm_prepare_s": trim_s}
    for ratio in cfg["ratios"]:
        variants = {}
        sg = ef.get_method("shortgpt", ratio=ratio, window=256, n_windows=cfg["calib_windows"])
        sg.prepare(m, data.calib)
        variants["shortgpt"] = sg
        sg0 = ef.get_method("shortgpt", ratio=ratio, metric="bi_no_first", window=256, n_windows=cfg["calib_windows"])
        sg0.prepare(m, data.calib)
        variants["shortgpt_no_first"] = sg0
        variants["sleb"] = sleb.at_ratio(ratio)
        lc = ef.get_method("laco", ratio=ratio, merge_layers=3, threshold=0.65, window=64, n_fragments=5)
        lc.prepare(m, data.calib)
        variants["laco"] = lc
        k = int(round(ratio * m.info.n_layers))
        tr = ef.get_method("drop_blocks", layers=sorted(trim.removal_order[:k]))
        variants["trimllm_facts"] = tr
        for name, meth in variants.items():
            row = {"method": name, "ratio": ratio, "dropped": list(meth.dropped_blocks), **quality(m, data, [meth.intervention(m)])}
            if name == "laco":
                row["laco_forced_merges"] = meth.forced
            rows.append(row)
            log(f"pruning: {row}")
    return {"rows": rows, "sleb_order": sleb.removal_order, "trimllm_order": trim.removal_order, **times,
            "sleb_curve": sleb.curve.steps, "note": "trimllm_facts selects on the fact selection half (its domain "
            "score), so its fact accuracy on the other half is held out; its perplexity is not what it optimizes."}


def sec_attn_drop(m, data, cfg, log) -> dict:
    out = {"rows": []}
    text = "\n\n".join(data.ood)
    gloss = "\n\n".join(load_corpus("all", sources=["wordnet"]))
    methods = {"none": None}
    for r in (0.25, 0.5):
        meth = ef.get_method("attn_drop", ratio=r, window=256, n_windows=cfg["calib_windows"])
        meth.prepare(m, data.calib)
        methods[f"attn_{int(r * 100)}pct"] = meth
    for ctx in cfg["contexts"]:
        ids = tokens(m, gloss if len(text) < ctx * 8 else text, ctx)
        caches, ivs = {}, {}
        for name, meth in methods.items():
            ivs[name] = () if meth is None else (meth.intervention(m),)
            caches[name] = m.prefill(ids, interventions=ivs[name])

        def step(name):
            c = caches[name].copy()
            nxt = torch.tensor([[13]], device=m.device)
            with m.session(interventions=ivs[name]) as s:
                s.forward_cached(c, nxt)  # warm
                t = time.perf_counter()
                for _ in range(cfg["decode_steps"]):
                    s.forward_cached(c, nxt)
                return (time.perf_counter() - t) / cfg["decode_steps"] * 1e3

        ms = interleaved(methods, step, cfg["repeats"])
        for name, meth in methods.items():
            st = caches[name].stats()
            row = {"context": ctx, "variant": name, "dropped_attn": [] if meth is None else meth.dropped_attn,
                   "kv_physical_bytes": st.physical_bytes, "decode_ms": ms[name], "speedup": ms["none"] / ms[name],
                   "kv_ratio": st.physical_bytes / caches["none"].stats().physical_bytes}
            if meth is not None:
                row["kv_formula_bytes"] = meth.cost(m, st.full_tokens).kv_bytes
            out["rows"].append(row)
            log(f"attn_drop: {row}")
        caches.clear()
    for name, meth in methods.items():
        if meth is not None:
            out.setdefault("quality", {})[name] = quality(m, data, [meth.intervention(m)])
    out.setdefault("quality", {})["none"] = quality(m, data)
    return out


def _kind_inputs(m, text, layer: int) -> dict:
    """Real inputs of every projection of ``layer`` at one held-out token (the last of ``text``)."""
    grab = {}
    from efficiency.calibration import recording_inputs

    with recording_inputs(m, [(layer, k) for k in ("q", "o", "gate", "down")], lambda l, k, x: grab.__setitem__(k, x[-1].clone())):
        m.run(text)
    return {"q": grab["q"], "k": grab["q"], "v": grab["q"], "o": grab["o"], "gate": grab["gate"], "up": grab["gate"],
            "down": grab["down"]}


def sec_teal(m, data, cfg, log) -> dict:
    t = time.perf_counter()
    calib = calibrate_teal(m, data.calib, window=256, n_windows=cfg["calib_windows"])
    out = {"calibrate_s": time.perf_counter() - t, "rows": []}
    sym = calib.to_frame((0.5,))
    out["symmetry_at_50pct"] = {s: [float(sym[sym.site == s].sparsity_with_signed.min()),
                                    float(sym[sym.site == s].sparsity_with_signed.max())] for s in ("q", "o", "gate", "down")}
    base = quality(m, data)
    out["base"] = base
    for s in cfg["teal_fracs"]:
        meth = ef.TEAL(sparsity=s, calibration=calib)
        q = quality(m, data, [meth.intervention(m)])
        ms = measured_sparsity(m, meth, data.ood[:1], window=min(512, m.info.n_ctx), n_windows=2).frame
        row = {"sparsity": s, **q, "measured_mean": float(ms.measured.mean()),
               "measured_by_kind": ms.groupby("kind").measured.mean().to_dict()}
        out["rows"].append(row)
        log(f"teal: {row}")
    # per-matrix decode speed: the weights of a middle layer, real inputs of one held-out token
    layer = m.info.n_layers // 2
    xs = _kind_inputs(m, data.ood[0][:2000], layer)
    per = []
    for kind in ("q", "k", "v", "o", "gate", "up", "down"):
        w = m.linear_weight(layer, kind)
        x = xs[kind][None].contiguous()
        dense = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        dense.weight.data = w.clone()
        with torch.no_grad():
            d_us = gemv_us(lambda: dense(x))
            for s in cfg["teal_fracs"]:
                thr = calib.threshold(layer, kind, s)
                lin = SparseInputLinear(w, None, thr, "gather")
                g_us = gemv_us(lambda: lin(x))
                lin_m = SparseInputLinear(w, None, thr, "mask")
                m_us = gemv_us(lambda: lin_m(x))
                kept = float((x.abs() > thr).float().mean())
                assert torch.allclose(lin(x), dense(x * (x.abs() > thr)), atol=1e-4)
                per.append({"kind": kind, "shape": list(w.shape), "sparsity": s, "kept_this_token": kept,
                            "dense_us": d_us, "gather_us": g_us, "mask_us": m_us, "gather_speedup": d_us / g_us})
                log(f"teal gemv: {per[-1]}")
    # gate and up together: two dense GEMVs vs two gathers vs one fused gather (SparseGatedMLP's path)
    wg, wu = m.linear_weight(layer, "gate"), m.linear_weight(layer, "up")
    x = xs["gate"].contiguous()
    wgu_t = torch.cat([wg.t(), wu.t()], 1).contiguous()
    with torch.no_grad():
        d_us = gemv_us(lambda: (F_linear(x, wg), F_linear(x, wu)))
        for sp in cfg["teal_fracs"]:
            thr = calib.threshold(layer, "gate", sp)
            lg, lu = SparseInputLinear(wg, None, thr), SparseInputLinear(wu, None, thr)
            two_us = gemv_us(lambda: (lg(x[None]), lu(x[None])))
            fused_us = gemv_us(lambda: SparseGatedMLP._gather(x, wgu_t, thr))
            per.append({"kind": "gate+up", "shape": [2 * wg.shape[0], wg.shape[1]], "sparsity": sp,
                        "kept_this_token": float((x.abs() > thr).float().mean()), "dense_us": d_us,
                        "gather_us": two_us, "fused_gather_us": fused_us, "gather_speedup": d_us / two_us,
                        "fused_speedup": d_us / fused_us})
            log(f"teal gemv: {per[-1]}")
    out["per_matrix"] = per
    gu = [r["gather_speedup"] for r in per if r["kind"] in ("gate", "up") and r["sparsity"] == 0.5]
    fu = [r["fused_speedup"] for r in per if r["kind"] == "gate+up" and r["sparsity"] == 0.5]
    out["target_gate_up_1.25x"] = bool(gu and min(gu) >= 1.25)
    out["target_gate_up_1.25x_fused"] = bool(fu and min(fu) >= 1.25)
    # end-to-end decode
    prompt = tokens(m, data.ood[0], 128)
    variants = {"dense": (), "teal50_all": (ef.TEAL(sparsity=0.5, calibration=calib).intervention(m),),
                "teal50_gate_up": (ef.TEAL(sparsity=0.5, calibration=calib, kinds=("gate", "up")).intervention(m),),
                "teal50_mask": (ef.TEAL(sparsity=0.5, calibration=calib, mode="mask").intervention(m),),
                "teal50_fused_mlp": (ef.TEAL(sparsity=0.5, calibration=calib, fuse_mlp=True).intervention(m),),
                "teal50_fused_mlp_only": (ef.TEAL(sparsity=0.5, calibration=calib, fuse_mlp=True,
                                                  kinds=("gate", "up", "down")).intervention(m),)}
    dec = interleaved(variants, lambda n: decode_ms(m, prompt, cfg["decode_steps"], variants[n]), cfg["repeats"])
    out["decode_ms"] = dec
    out["decode_speedup"] = {k: dec["dense"] / v for k, v in dec.items()}
    log(f"teal decode: {out['decode_speedup']}")
    return out


def sec_mla(m, data, cfg, log) -> dict:
    out = {"rows": []}
    base = quality(m, data)
    keys = passkey_prompts(m, cfg["passkey_n"], n_tokens=cfg["passkey_tokens"], seed=0)
    base["passkey"] = score_passkey(m, keys).accuracy
    out["base"] = base
    ctx = tokens(m, "\n\n".join(data.ood), 2048)
    base_cache = m.prefill(ctx)
    out["base_kv_bytes_2k"] = base_cache.stats().physical_bytes
    del base_cache
    # the last rows keep the full joint rank (2 d_head - rope_dims): the cost of partial RoPE alone, per selection
    grid = [(dkv, "plain", "2-norm") for dkv in cfg["mla_dkv"]]
    grid += [(dkv, "whitened", "2-norm") for dkv in cfg["mla_whitened_dkv"]]
    grid += [(2 * m.info.d_head - 8, "plain", sel) for sel in ("2-norm", "high", "low", "uniform")]
    for dkv, svd, sel in grid:
        meth = ef.get_method("mha2mla", d_kv=dkv, rope_dims=8, svd=svd, rope_select=sel, window=256,
                             n_windows=cfg["calib_windows"])
        meth.prepare(m, data.calib)
        iv = meth.intervention(m)
        q = quality(m, data, [iv])
        with m.intervene(iv):
            q["passkey"] = score_passkey(m, keys).accuracy
            st = m.prefill(ctx).stats()
        row = {"d_kv": dkv, "rope_dims": 8, "svd": svd, "rope_select": sel, **q, "kv_physical_bytes_2k": st.physical_bytes,
               "kv_formula_bytes_2k": meth.cost(m, st.full_tokens).kv_bytes,
               "kv_reduction": 1 - st.physical_bytes / out["base_kv_bytes_2k"]}
        out["rows"].append(row)
        log(f"mla: {row}")
    # decode speed at 2k: base vs absorbed vs decompressed latent (d_kv 32)
    variants = {"base": None}
    for mode in ("absorb", "decompress"):
        meth = ef.get_method("mha2mla", d_kv=32, rope_dims=8, mode=mode, window=256, n_windows=cfg["calib_windows"])
        meth.prepare(m, data.calib)
        variants[mode] = meth.intervention(m)
    caches = {n: m.prefill(ctx, interventions=() if iv is None else (iv,)) for n, iv in variants.items()}

    def step(name):
        c = caches[name].copy()
        nxt = torch.tensor([[13]], device=m.device)
        with m.session(interventions=() if variants[name] is None else (variants[name],)) as s:
            s.forward_cached(c, nxt)
            t = time.perf_counter()
            for _ in range(cfg["decode_steps"]):
                s.forward_cached(c, nxt)
            return (time.perf_counter() - t) / cfg["decode_steps"] * 1e3

    ms = interleaved(variants, step, cfg["repeats"])
    out["decode_ms_2k"] = ms
    out["decode_speedup_2k"] = {k: ms["base"] / v for k, v in ms.items()}
    log(f"mla decode: {out['decode_speedup_2k']}")
    return out


def sec_laser(m, data, cfg, log) -> dict:
    facts = data.facts_select + data.facts_eval
    t = time.perf_counter()
    sw = laser_sweep(m, [f.prompt for f in facts], [f.answer for f in facts], layers=list(cfg["laser_layers"]),
                     kinds=cfg["laser_kinds"], rhos=cfg["laser_rhos"], seed=0,
                     progress=lambda l, k, r, a: None)
    out = {"seconds": time.perf_counter() - t, "best": sw.best, "base_select": sw.base_select, "heldout": sw.heldout,
           "n_select": sw.n_select, "n_heldout": sw.n_heldout, "grid_size": len(sw.grid),
           "n_better_than_base_on_select": int((sw.grid.accuracy > sw.base_select["accuracy"]).sum()),
           "summary": sw.summary()}
    b = sw.best
    out["best_ppl"] = quality(m, data, [ef.get_method("laser", layer=b["layer"], kind=b["kind"],
                                                      rank=b["rank"]).intervention(m)])
    log(f"laser: {out['summary']}")
    return out


def sec_svd_llm(m, data, cfg, log) -> dict:
    out = {"rows": []}
    for ratio in cfg["svd_ratios"]:
        for alloc in ("uniform", "loss"):
            # the covariance of a 1536-wide input needs many more tokens than the other methods' calibration
            meth = ef.get_method("svd_llm", ratio=ratio, allocation=alloc, window=256, n_windows=cfg["svd_windows"])
            t = time.perf_counter()
            meth.prepare(m, data.calib)
            prep = time.perf_counter() - t
            c = meth.cost(m, 0)
            row = {"ratio": ratio, "allocation": alloc, "prepare_s": prep, "weight_bytes": c.weight_bytes,
                   "weight_ratio": c.weight_ratio, **quality(m, data, [meth.intervention(m)])}
            out["rows"].append(row)
            log(f"svd_llm: {row}")
            if alloc == "uniform":  # the same ranks by plain (unwhitened) truncated SVD, for contrast
                from efficiency.lowrank import LowRankEdit

                row = {"ratio": ratio, "allocation": "uniform, plain SVD (no whitening)", "weight_bytes": c.weight_bytes,
                       "weight_ratio": c.weight_ratio, **quality(m, data, [LowRankEdit(dict(meth.ranks))])}
                out["rows"].append(row)
                log(f"svd_llm: {row}")
    per = []
    for kind in ("up", "down", "q", "k"):
        w = m.linear_weight(m.info.n_layers // 2, kind)
        o, i = w.shape
        x = torch.randn(1, w.shape[1])
        dense = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        dense.weight.data = w.clone()
        d_us = gemv_us(lambda: dense(x))
        for ratio in (0.2, 0.5):
            r = max(1, int(o * i * (1 - ratio) / (o + i)))
            B, A = truncated_svd(w, r)
            lr = LowRankLinear(B, A)
            with torch.no_grad():
                l_us = gemv_us(lambda: lr(x))
            per.append({"kind": kind, "shape": [o, i], "ratio": ratio, "rank": r, "dense_us": d_us, "two_gemv_us": l_us,
                        "speedup": d_us / l_us})
            log(f"svd gemv: {per[-1]}")
    out["per_matrix"] = per
    return out


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=tuple(MODES), default="quick")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sparsity_pruning.json"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                    help='override a mode setting, e.g. --set mla_dkv=[] "teal_fracs=[0.5, 0.65]"')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(MODES[args.mode])
    for item in args.set:
        key, _, val = item.partition("=")
        if key not in cfg:
            ap.error(f"--set: unknown setting {key!r}; settings: {', '.join(cfg)}")
        cfg[key] = json.loads(val)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    m = wb.load()
    data = Data(m, cfg)
    results = {"meta": {"date": _dt.datetime.now().isoformat(timespec="seconds"), "mode": args.mode,
                        "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                        "model": m.info.name, "fingerprint": m.fingerprint, "ppl_windows": cfg["ppl_n"],
                        "ppl_tokens": cfg["ppl_tokens"], "n_facts_eval": len(data.score_eval),
                        "provisional": "timings measured on a shared, loaded machine: ratios only",
                        "overrides": args.set}}
    fns = {"drop_speed": sec_drop_speed, "pruning": sec_pruning, "attn_drop": sec_attn_drop, "teal": sec_teal,
           "mla": sec_mla, "laser": sec_laser, "svd_llm": sec_svd_llm}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # sections run separately accumulate in one file
        try:
            old = json.loads(out.read_text())
            results = {**{k: v for k, v in old.items() if k != "meta"}, **results}
        except json.JSONDecodeError:
            pass
    for sec in args.sections:
        t = time.perf_counter()
        with torch.no_grad():
            results[sec] = fns[sec](m, data, cfg, log)
        results[sec]["section_seconds"] = time.perf_counter() - t
        results[sec]["loadavg_end"] = os.getloadavg()
        results[sec]["mode"] = args.mode
        atomic_write_bytes(out, json.dumps(results, indent=1, default=_plain).encode())
        log(f"{sec} done in {results[sec]['section_seconds']:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
