"""Quantization benchmark: the int8 speed path against plain HF, and quality/bytes of every method (issue 13).

    python benchmarks/bench_quant.py [--mode quick|full] [--sections speed quality] [--threads 2]
                                     [--out benchmarks/results/quant.json]

SmolLM2-135M-Instruct (``workbench.load()``), fp32, eager attention, CPU, ``torch.no_grad``,
``torch.set_num_threads(--threads)``; ``uptime`` load is recorded before and after each section. The machine
is shared: compare ratios measured side by side in one run, not absolute times across runs.

1. Speed (``--sections speed``). Decode at 256 tokens of context (a passkey prompt of about 256 tokens,
   ``workbench.tasks.passkey_prompts``), ``--steps`` greedy tokens one at a time, for

     hf_fp32 / hf_int8   a separate plain HF copy of the model (``workbench.loading.smollm2.load_smollm2``,
                         never wrapped); int8 = ``torch.ao.quantization.quantize_dynamic`` on every nn.Linear
                         with the lm_head untied first (so it is quantized too, the embedding stays fp32);
                         decoded with ``past_key_values`` (HF DynamicCache)
     wb_fp32 / wb_int8   through the workbench: ``model.session()`` + ``forward_cached`` on a ``KVCache``;
                         int8 = ``get_method("int8_dynamic")`` (every linear and the lm_head, fbgemm); a decode
                         step is one token per call in both ``act_ranges`` modes, so the timed steps are the
                         same; ``act_ranges="tensor"`` is used to keep the untimed prefill cheap

   Variants run in rotating order ``--repeats`` times after a warm-up, each repeat from a fresh prefill (not
   timed). Reported: ms/token (min and median of the repeats' mean step), the int8-over-fp32 speed-up of each
   path, and the ratio workbench speed-up / HF speed-up (target >= 0.95). Also the prefill time of the prompt
   (fp32, int8 with per-token input ranges, int8 with one range per call) and the physical weight bytes.

2. Quality (``--sections quality``). For every method in the table (``QUICK`` / ``FULL`` below):
   perplexity of 2048-token windows of the bundled corpus's ``python-docs`` source (the second half of each
   window scored after the first half is prefilled, ``efficiency.kv.perplexity``, with the method's KV cache policy
   if any), on held-out text: calibration (GPTQ, DFRot) uses the other source, ``wordnet`` (train
   split); an in-domain perplexity on windows of the wordnet eval split is reported too; next-token KL against
   the float model on the first ``--kl-tokens`` tokens of each evaluation window; top-1 accuracy on bundled facts
   (``probes.factual``); passkey retrieval at ``--passkey-tokens`` (greedy, through the method's cache policy);
   physical weight bytes (``cost()``; packed for simulated methods) and KV bytes at 2048 tokens; ms/token of
   decode at 256 tokens of context through the workbench (simulated methods compute in float32 and are slower;
   only int8_dynamic is a real speed path). Claims checked: rotation narrows the W4A4 perplexity gap (QuaRot),
   DFRot is no worse than RH (DFRot), GPTQ beats RTN at 3 bits per channel, int8 changes perplexity by <= 1%.
   4-bit weights with group 32 (asymmetric) reproduce SmolLM2's weights exactly (they were stored in GGUF Q4_1):
   that row is not a representative experiment and is marked so.
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CONTEXT = 256
TARGET_RATIO, TARGET_PPL_INT8 = 0.95, 0.01
CALIB_SOURCE, EVAL_SOURCE = "wordnet", "python-docs"

# (row label, registry name, knobs)
FULL = [
    ("fp32", None, {}),
    ("int8 dynamic", "int8_dynamic", {}),
    ("int8 dynamic, one range per call", "int8_dynamic", {"act_ranges": "tensor"}),
    ("int8 dynamic + RH rotation", "int8_dynamic", {"rotation": "rh"}),
    ("int8 dynamic + RH + online Hadamard", "int8_dynamic", {"rotation": "rh", "online_had": True}),
    ("int8 dynamic, 8-bit input ranges", "int8_dynamic", {"act_bits": 8}),
    ("int8 dynamic + RH + online Hadamard, 8-bit ranges", "int8_dynamic",
     {"rotation": "rh", "online_had": True, "act_bits": 8}),
    ("RTN W8 per-channel", "rtn", {"bits": 8, "sym": True}),
    ("RTN W4 per-channel", "rtn", {"bits": 4}),
    ("RTN W4 g32 asym (= Q4_1, not representative)", "rtn", {"bits": 4, "group": 32}),
    ("RTN W4 g64", "rtn", {"bits": 4, "group": 64}),
    ("RTN W3 per-channel", "rtn", {"bits": 3}),
    ("RTN W3 g32", "rtn", {"bits": 3, "group": 32}),
    ("RTN W2 g32", "rtn", {"bits": 2, "group": 32}),
    ("GPTQ W4 per-channel", "gptq", {"bits": 4}),
    ("GPTQ W3 per-channel", "gptq", {"bits": 3}),
    ("GPTQ W3 g32", "gptq", {"bits": 3, "group": 32}),
    ("W8A8 (no rotation)", "wa_quant", {"w_bits": 8, "a_bits": 8}),
    ("W4A8 (no rotation)", "wa_quant", {"w_bits": 4, "a_bits": 8}),
    ("W4A4 (no rotation)", "wa_quant", {"w_bits": 4, "a_bits": 4}),
    ("W4A4 RO (QuaRot, random orthogonal)", "quarot", {"rotation": "ro"}),
    ("W4A4 RH (QuaRot)", "quarot", {}),
    ("W4A4 DFRot", "dfrot", {}),
    ("W4A4 RH + KV4 (QuaRot + KIVI)", "quarot", {"kv_bits": 4}),
    ("W4A4 RH, GPTQ weights", "quarot", {"weights": "gptq"}),
    ("W4A4 DFRot, GPTQ weights", "dfrot", {"weights": "gptq"}),
]
QUICK_LABELS = ["fp32", "int8 dynamic", "RTN W3 per-channel", "GPTQ W3 per-channel", "W4A4 (no rotation)",
                "W4A4 RO (QuaRot, random orthogonal)", "W4A4 RH (QuaRot)", "W4A4 DFRot"]
MODES = {
    "quick": {"steps": 12, "repeats": 3, "windows": 2, "window_tokens": 1024, "in_windows": 1, "kl_tokens": 256,
              "n_facts": 40, "n_passkey": 3, "passkey_tokens": 256, "gptq_samples": 8, "gptq_seq_len": 256,
              "dfrot_tokens": 512, "decode_steps": 4},
    "full": {"steps": 32, "repeats": 5, "windows": 4, "window_tokens": 2048, "in_windows": 2, "kl_tokens": 512,
             "n_facts": 120, "n_passkey": 6, "passkey_tokens": 512, "gptq_samples": 16, "gptq_seq_len": 512,
             "dfrot_tokens": 2048, "decode_steps": 8},
}


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def _log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ speed
def _hf_copies():
    """(fp32, int8) plain HF copies of SmolLM2, never wrapped by the workbench."""
    from workbench.loading.smollm2 import load_smollm2

    hf, tok, _ = load_smollm2()
    hf.eval()
    q = copy.deepcopy(hf)
    if q.lm_head.weight is q.model.embed_tokens.weight:  # untie so the lm_head is quantized too
        q.lm_head.weight = torch.nn.Parameter(q.lm_head.weight.detach().clone())
    q.config.tie_word_embeddings = False
    q = torch.ao.quantization.quantize_dynamic(q, {torch.nn.Linear}, dtype=torch.qint8)
    return hf, q


def _hf_decode(hf, ids: torch.Tensor, steps: int) -> float:
    """Seconds per decoded token (prefill not timed)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = hf(input_ids=ids, past_key_values=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = hf(input_ids=tok, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / steps


def _wb_decode(m, ids: torch.Tensor, steps: int) -> float:
    from workbench.kv_cache import KVCache

    cache = KVCache.empty(m)
    with m.session() as s:
        tok = s.forward_cached(cache, ids)[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = s.forward_cached(cache, tok)[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / steps


def _wb_prefill(m, ids) -> float:
    from workbench.kv_cache import KVCache

    cache = KVCache.empty(m)
    with m.session() as s:
        t0 = time.perf_counter()
        s.forward_cached(cache, ids)
        return time.perf_counter() - t0


def bench_speed(m, cfg: dict) -> dict:
    import efficiency as ef
    from workbench.texts.tasks import passkey_prompts

    sample = passkey_prompts(m, 1, n_tokens=CONTEXT, seed=1)[0]
    ids, _ = m.tokenize(sample.prompt)
    hf32, hf8 = _hf_copies()
    # decoding feeds one token per call, so both act_ranges modes run the very same decode step; "tensor" only
    # makes the (untimed) prefill of each repeat cheaper (one call per linear instead of one per token)
    int8 = ef.get_method("int8_dynamic", act_ranges="tensor")
    # the setting that keeps perplexity: QuaRot's rotation, with the online Hadamard before down_proj, and the
    # full 8-bit input range where the CPU allows it (VNNI)
    from efficiency.quant.modules import cpu_has_vnni

    int8_rot = ef.get_method("int8_dynamic", act_ranges="tensor", rotation="rh", online_had=True,
                             act_bits=8 if cpu_has_vnni() else 7)
    methods = {"wb_int8": int8, "wb_int8_rot": int8_rot}
    variants = {
        "hf_fp32": lambda: _hf_decode(hf32, ids, cfg["steps"]),
        "hf_int8": lambda: _hf_decode(hf8, ids, cfg["steps"]),
        "wb_fp32": lambda: _wb_decode(m, ids, cfg["steps"]),
        "wb_int8": None,  # run inside the intervention below
        "wb_int8_rot": None,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    with torch.no_grad():
        for rep in range(cfg["repeats"] + 1):  # repeat 0 is the warm-up
            order = names[rep % len(names):] + names[: rep % len(names)]
            for k in order:
                if k in methods:
                    with m.intervene(methods[k].intervention(m)):
                        t = _wb_decode(m, ids, cfg["steps"])
                else:
                    t = variants[k]()
                if rep:
                    times[k].append(t)
            _log(f"speed repeat {rep}/{cfg['repeats']}: " + ", ".join(f"{k} {1e3 * times[k][-1]:.1f} ms"
                                                                     for k in names if times[k]))
        prefill = {"wb_fp32": min(_wb_prefill(m, ids) for _ in range(2))}
        for mode in ("token", "tensor"):
            with m.intervene(ef.get_method("int8_dynamic", act_ranges=mode).intervention(m)):
                prefill[f"wb_int8_{mode}"] = min(_wb_prefill(m, ids) for _ in range(2))
        bytes_fp32 = m.parameter_bytes()
        with m.intervene(int8.intervention(m)):
            bytes_int8 = m.parameter_bytes()
    rows = {k: {"ms_min": 1e3 * min(v), "ms_median": 1e3 * statistics.median(v), "ms_all": [1e3 * x for x in v]}
            for k, v in times.items()}
    hf_speedup = rows["hf_fp32"]["ms_min"] / rows["hf_int8"]["ms_min"]
    wb_speedup = rows["wb_fp32"]["ms_min"] / rows["wb_int8"]["ms_min"]
    rot_speedup = rows["wb_fp32"]["ms_min"] / rows["wb_int8_rot"]["ms_min"]
    return {"context_tokens": int(ids.shape[1]), "steps": cfg["steps"], "repeats": cfg["repeats"], "rows": rows,
            "hf_speedup": hf_speedup, "wb_speedup": wb_speedup, "ratio": wb_speedup / hf_speedup,
            "wb_rot_speedup": rot_speedup, "ratio_rot": rot_speedup / hf_speedup, "rot_label": int8_rot.label,
            "target_ratio": TARGET_RATIO, "pass": wb_speedup / hf_speedup >= TARGET_RATIO,
            "wb_fp32_over_hf_fp32": rows["wb_fp32"]["ms_min"] / rows["hf_fp32"]["ms_min"],
            "prefill_s": prefill, "weight_bytes": {"fp32": bytes_fp32, "int8": bytes_int8,
                                                   "predicted_int8": int8.cost(m, CONTEXT).weight_bytes}}


# ------------------------------------------------------------------------------------------ quality
def _texts(m, cfg):
    from workbench.texts import long_texts
    from probes.transcoders import load_corpus

    calib = load_corpus("train", sources=[CALIB_SOURCE])
    ev = long_texts(m, cfg["windows"], cfg["window_tokens"], corpus="\n\n".join(load_corpus("all", sources=[EVAL_SOURCE])))
    ind = long_texts(m, cfg["in_windows"], cfg["window_tokens"],
                     corpus="\n\n".join(load_corpus("heldout", sources=[CALIB_SOURCE])))
    return calib, ev, ind


def _facts(n: int):
    from probes.factual import load_facts

    facts = list(load_facts())
    step = max(1, len(facts) // n)
    return facts[::step][:n]


def _kl(m, texts, ref_lp, kl_tokens) -> float:
    kls = []
    for t, lp in zip(texts, ref_lp):
        ids, _ = m.tokenize(t)
        lq = torch.log_softmax(m.run(ids[:, :kl_tokens]).logits[0].float(), -1)
        kls.append(float((lp.exp() * (lp - lq)).sum(-1).mean()))
    return sum(kls) / len(kls)


def _passkey(m, samples, policy_fn) -> float:
    ok = 0
    for s in samples:
        g = m.generate(s.prompt, max_new_tokens=len(s.answer_token_ids), cache_policy=policy_fn())
        ok += g.text.strip() == s.answer.strip()
    return ok / len(samples)


def _decode_ms(m, ids, steps) -> float:
    _wb_decode(m, ids[:, :32], 1)  # warm-up
    return 1e3 * min(_wb_decode(m, ids, steps) for _ in range(2))


def _ci(diffs: list[float]) -> float:
    """Half-width of a normal-approximation 95% interval of the mean of paired differences."""
    if len(diffs) < 2:
        return float("nan")
    return 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))


def bench_quality(m, cfg: dict, labels: list[str]) -> dict:
    import efficiency as ef
    from efficiency.kv.harness import perplexity
    from probes.factual import evaluate_facts
    from workbench.texts.tasks import passkey_prompts

    calib, ev, ind = _texts(m, cfg)
    facts = _facts(cfg["n_facts"])
    samples = passkey_prompts(m, cfg["n_passkey"], n_tokens=cfg["passkey_tokens"], seed=7,
                              depth=0.5)
    speed_ids, _ = m.tokenize(passkey_prompts(m, 1, n_tokens=CONTEXT, seed=1)[0].prompt)
    with torch.no_grad():
        ref_lp = [torch.log_softmax(m.run(m.tokenize(t)[0][:, :cfg["kl_tokens"]]).logits[0].float(), -1) for t in ev]
    rows, base = [], None
    spec = {label: (name, knobs) for label, name, knobs in FULL}
    for label in labels:
        name, knobs = spec[label]
        _log(f"quality: {label}")
        t0 = time.perf_counter()
        meth = None
        if name is not None:
            knobs = dict(knobs)
            if name in ("gptq",) or knobs.get("weights") == "gptq":
                knobs.update(n_samples=cfg["gptq_samples"], seq_len=cfg["gptq_seq_len"])
            if name == "dfrot":
                knobs.update(calib_tokens=cfg["dfrot_tokens"])
            meth = ef.get_method(name, **knobs)
            if meth.needs_calibration or getattr(meth, "calibrates", False):
                meth.prepare(m, calib)
        prep_s = time.perf_counter() - t0
        iv = None if meth is None else meth.intervention(m)
        policy_fn = (lambda: None) if meth is None else (lambda: meth.cache_policy(m))
        with torch.no_grad(), (m.intervene(iv) if iv is not None else nullcontext()):
            ppl = perplexity(m, ev, policy=policy_fn(), prefix=0.5)
            ppl_in = perplexity(m, ind, policy=policy_fn(), prefix=0.5)
            kl = 0.0 if meth is None else _kl(m, ev, ref_lp, cfg["kl_tokens"])
            fact_acc = float(evaluate_facts(m, facts).correct.mean())
            passkey = _passkey(m, samples, policy_fn)
            ms = _decode_ms(m, speed_ids, cfg["decode_steps"])
        cost = None if meth is None else meth.cost(m, cfg["window_tokens"])
        per_window = ppl.per_text.perplexity.tolist()
        row = {"label": label, "method": "fp32" if meth is None else meth.label, "saving": "-" if meth is None else meth.saving,
               "perplexity": ppl.perplexity, "perplexity_windows": per_window, "perplexity_in_domain": ppl_in.perplexity,
               "kl": kl, "fact_acc": fact_acc, "passkey": passkey, "ms_per_token": ms, "prepare_s": prep_s,
               "weight_bytes": m.parameter_bytes() if meth is None else cost.weight_bytes,
               "kv_bytes": None if meth is None else cost.kv_bytes, "nll_windows": ppl.per_text.nll.tolist(),
               "n_scored": ppl.per_text.n_scored.tolist()}
        if meth is not None and hasattr(meth, "state") and isinstance(getattr(meth, "state"), dict) \
                and "refinement" in meth.state:
            row["dfrot"] = meth.state["refinement"]
        if base is None:
            base = row
        row["ppl_change"] = row["perplexity"] / base["perplexity"] - 1
        d = [a / n - b / n for a, b, n in zip(row["nll_windows"], base["nll_windows"], row["n_scored"])]
        row["nll_per_token_diff"] = sum(d) / len(d)
        row["nll_per_token_diff_ci95"] = _ci(d)
        rows.append(row)
        _log(f"  ppl {row['perplexity']:.3f} ({100 * row['ppl_change']:+.1f}%), KL {kl:.4f}, facts {fact_acc:.2f}, "
             f"passkey {passkey:.2f}, {ms:.0f} ms/token, prepare {prep_s:.0f} s")
    return {"rows": rows, "claims": claims(rows), "calibration_source": CALIB_SOURCE, "eval_source": EVAL_SOURCE,
            "windows": cfg["windows"], "window_tokens": cfg["window_tokens"], "n_facts": len(facts),
            "n_passkey": len(samples), "passkey_tokens": cfg["passkey_tokens"]}


def claims(rows: list[dict]) -> dict:
    by = {r["label"]: r for r in rows}

    def cmp(a, b):  # True when a has the lower perplexity; with the paired per-window NLL difference
        if a not in by or b not in by:
            return None
        ra, rb = by[a], by[b]
        d = [x / n - y / n for x, y, n in zip(ra["nll_windows"], rb["nll_windows"], ra["n_scored"])]
        return {"a": a, "b": b, "ppl_a": ra["perplexity"], "ppl_b": rb["perplexity"], "holds": ra["perplexity"] < rb["perplexity"],
                "nll_diff_mean": sum(d) / len(d), "nll_diff_ci95": _ci(d)}

    out = {
        "rotation_narrows_w4a4_gap (QuaRot)": cmp("W4A4 RH (QuaRot)", "W4A4 (no rotation)"),
        "dfrot_no_worse_than_rh (DFRot)": None,
        "rh_beats_ro": cmp("W4A4 RH (QuaRot)", "W4A4 RO (QuaRot, random orthogonal)"),
        "gptq_beats_rtn_3bit_per_channel": cmp("GPTQ W3 per-channel", "RTN W3 per-channel"),
        "int8_ppl_change_within_1pct": None,
    }
    if "W4A4 DFRot" in by and "W4A4 RH (QuaRot)" in by:
        c = cmp("W4A4 DFRot", "W4A4 RH (QuaRot)")
        c["holds"] = by["W4A4 DFRot"]["perplexity"] <= by["W4A4 RH (QuaRot)"]["perplexity"]
        out["dfrot_no_worse_than_rh (DFRot)"] = c
    if "int8 dynamic" in by:
        ch = by["int8 dynamic"]["ppl_change"]
        out["int8_ppl_change_within_1pct"] = {"ppl_change": ch, "holds": abs(ch) <= TARGET_PPL_INT8}
    for label in ("int8 dynamic + RH + online Hadamard", "int8 dynamic + RH + online Hadamard, 8-bit ranges"):
        if label in by:
            ch = by[label]["ppl_change"]
            out[f"int8_within_1pct: {label}"] = {"ppl_change": ch, "holds": abs(ch) <= TARGET_PPL_INT8}
    return out


# ------------------------------------------------------------------------------------------ report
def table(res: dict) -> str:
    lines = []
    sp = res.get("speed")
    if sp:
        r = sp["rows"]
        lines += [f"Decode at {sp['context_tokens']} tokens of context, {sp['steps']} steps, {res['threads']} threads "
                  f"(ms/token, min of {sp['repeats']}):",
                  f"  plain HF   fp32 {r['hf_fp32']['ms_min']:.1f}  int8 {r['hf_int8']['ms_min']:.1f}  -> {sp['hf_speedup']:.2f}x",
                  f"  workbench  fp32 {r['wb_fp32']['ms_min']:.1f}  int8 {r['wb_int8']['ms_min']:.1f}  -> {sp['wb_speedup']:.2f}x",
                  f"  workbench speed-up / HF speed-up = {sp['ratio']:.2f} (target >= {TARGET_RATIO}: "
                  f"{'pass' if sp['pass'] else 'FAIL'})",
                  f"  workbench int8 + RH rotation + online Hadamard ({sp.get('rot_label', '')}) "
                  f"{r['wb_int8_rot']['ms_min']:.1f} -> "
                  f"{sp['wb_rot_speedup']:.2f}x, {sp['ratio_rot']:.2f} of HF's speed-up",
                  "  prefill s: " + ", ".join(f"{k} {v:.2f}" for k, v in sp["prefill_s"].items()),
                  f"  weight bytes: fp32 {sp['weight_bytes']['fp32'] / 2**20:.1f} MiB, int8 "
                  f"{sp['weight_bytes']['int8'] / 2**20:.1f} MiB (predicted {sp['weight_bytes']['predicted_int8'] / 2**20:.1f})", ""]
    q = res.get("quality")
    if q:
        lines.append(f"Quality: perplexity on {q['windows']} x {q['window_tokens']}-token windows of {q['eval_source']} "
                     f"(second half scored); calibration on {q['calibration_source']}; in-domain = its eval split")
        lines.append(f"{'method':46s} {'ppl':>8s} {'Δ%':>6s} {'ppl in':>8s} {'KL':>7s} {'facts':>6s} {'pass':>5s} "
                     f"{'W MiB':>7s} {'KV MiB':>7s} {'ms/tok':>7s} saving")
        for r in q["rows"]:
            kvb = "-" if r["kv_bytes"] is None else f"{r['kv_bytes'] / 2**20:.1f}"
            lines.append(f"{r['label'][:46]:46s} {r['perplexity']:8.3f} {100 * r['ppl_change']:+6.1f} "
                         f"{r['perplexity_in_domain']:8.3f} {r['kl']:7.4f} {r['fact_acc']:6.2f} {r['passkey']:5.2f} "
                         f"{r['weight_bytes'] / 2**20:7.1f} {kvb:>7s} {r['ms_per_token']:7.0f} {r['saving']}")
        lines.append("")
        for k, c in q["claims"].items():
            if c is None:
                lines.append(f"  {k}: not measured")
            elif "a" in c:
                lines.append(f"  {k}: {'HOLDS' if c['holds'] else 'does NOT hold'} ({c['a']} {c['ppl_a']:.3f} vs "
                             f"{c['b']} {c['ppl_b']:.3f}; paired NLL/token diff {c['nll_diff_mean']:+.4f} ± {c['nll_diff_ci95']:.4f})")
            else:
                lines.append(f"  {k}: {'HOLDS' if c['holds'] else 'does NOT hold'} (change {100 * c['ppl_change']:+.2f}%)")
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    from workbench.paths import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=float).encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=list(MODES), default="quick")
    ap.add_argument("--sections", nargs="+", choices=["speed", "quality"], default=["speed", "quality"])
    ap.add_argument("--methods", nargs="*", default=None, help="Row labels of the quality table (default: the mode's).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant.json")
    args = ap.parse_args(argv)
    cfg = MODES[args.mode]
    torch.set_num_threads(args.threads)
    import workbench as wb

    res = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "mode": args.mode, "config": cfg,
           "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "quantized_engine": torch.backends.quantized.engine,
           "load": {"start": _uptime()}}
    m = wb.load()
    if "speed" in args.sections:
        _log("speed section")
        res["load"]["before_speed"] = _uptime()
        res["speed"] = bench_speed(m, cfg)
        res["load"]["after_speed"] = _uptime()
    if "quality" in args.sections:
        labels = args.methods or ([r[0] for r in FULL] if args.mode == "full" else QUICK_LABELS)
        unknown = [l for l in labels if l not in {r[0] for r in FULL}]
        if unknown:
            ap.error(f"unknown method labels {unknown}; choose from {[r[0] for r in FULL]}")
        if labels[0] != "fp32":
            labels = ["fp32"] + [l for l in labels if l != "fp32"]
        res["load"]["before_quality"] = _uptime()
        res["quality"] = bench_quality(m, cfg, labels)
        res["load"]["after_quality"] = _uptime()
    text = table(res)
    print(text)
    res["table"] = text
    write_json(args.out, res)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
