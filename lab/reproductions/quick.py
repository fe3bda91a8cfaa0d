"""Quick rows: the cheap claims re-measured live (seconds each on SmolLM2 on a CPU).

``run_quick(model, sizes)`` runs the sections below and returns the dict that
``scripts/reproductions.py --quick`` writes to ``benchmarks/results/reproductions_quick.json``:

- ``sinks``: one forward over ``sink_tokens`` tokens of held-out corpus text
  (``probes.sinks.extreme_token_report``): sink mass, value drain, residual peak, Q/K/V dim
  concentration and the low-frequency energy share, laid out like ``bench_sinks.py``'s "numbers";
- ``qk_disruption``: passkey vs facts clean and with the top-1 Q/K dim per head (``DisruptQKDims``
  set to its token mean, all layers), on all positions (the paper's protocol) and with position 0 left clean;
- ``kv``: passkey accuracy at a quarter of the cache for StreamingLLM, SnapKV, H2O, ZigZagKV and
  KIVI 2/4-bit (``efficiency.kv.harness.sweep``), and perplexity after a compressed prefix for the
  full cache, StreamingLLM with 4 and with 0 sinks, H2O and SnapKV (``harness.perplexity``).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from workbench.errors import InputError

SECTIONS = ("sinks", "qk_disruption", "kv")
RATIO = 0.75  # a quarter of the cache kept


@dataclass(frozen=True)
class QuickSizes:
    """Sizes of the quick run (defaults: well under a minute per section on SmolLM2, 2 CPU cores)."""

    sink_tokens: int = 256
    disruption_passkey_n: int = 6
    disruption_passkey_tokens: int = 128
    passkey_n: int = 5
    passkey_tokens: int = 256
    ppl_n: int = 2
    ppl_tokens: int = 512


def _heldout_ids(model, n_tokens: int) -> torch.Tensor:
    """(1, n_tokens) ids of the bundled corpus's held-out split, joined."""
    from workbench.texts import load_corpus, long_texts

    # long_texts cuts "about" n_tokens (a few tokens off at the edges): ask for a margin, then cut exactly
    text = long_texts(model, 1, min(n_tokens + 16, model.info.n_ctx), corpus="\n\n".join(load_corpus("heldout")))[0]
    ids = model.tokenize(text)[0][:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise InputError(f"The held-out corpus gives only {ids.shape[1]} tokens; ask for fewer.")
    return ids


def quick_sinks(model, sizes: QuickSizes) -> dict:
    from probes.sinks import extreme_token_report

    ids = _heldout_ids(model, sizes.sink_tokens)
    with torch.no_grad():
        r = extreme_token_report(model, ids)
    sr, vd, ma, qk = r.sinks, r.values, r.massive, r.qk
    ls = qk.layer_summary()
    k = int(ma.ratio[0].argmax())
    numbers = {
        "mass0_per_layer": [round(x, 4) for x in sr.layer_mass0.tolist()],
        "fraction_heads_mass0_gt_third_layers_ge2": sr.fraction_above(1 / 3, min(2, model.info.n_layers - 1)),
        "value_drain_ratio_per_layer": [round(x, 4) for x in vd.layer_ratio.tolist()],
        "massive": {"peak_position": int(ma.peak_position[0]), "max_ratio": float(ma.ratio[0].max()),
                    "dims_at_max": ma.top_dims[0, k].tolist(), "appears_stage": ma.appears[0],
                    "removed_stage": ma.removed[0]},
    }
    for kind in ("q", "k", "v"):
        numbers[f"{kind}_concentration"] = [round(float(x), 3) for x in ls[f"{kind}_concentration"]]
        numbers[f"{kind}_low_share"] = [round(float(x), 3) for x in ls[f"{kind}_low_share"]]
    return {"tokens": int(ids.shape[1]), "text": "bundled corpus, held-out split", "numbers": numbers}


def quick_qk_disruption(model, sizes: QuickSizes) -> dict:
    """Clean vs disrupted (top-1 Q/K dim per head set to its token mean, all layers): once on all positions
    (the paper's protocol), once with position 0 left clean. ``probes.sinks.qk_disruption_effect`` also runs
    the low-dim control; the quick row skips it and shares the clean run between the two settings."""
    from interventions.qk_dims import DisruptQKDims
    from probes.sinks import FACTUAL_PROMPTS
    from workbench.texts.tasks import passkey_prompts, score_answers, score_passkey

    samples = passkey_prompts(model, sizes.disruption_passkey_n, n_tokens=sizes.disruption_passkey_tokens, seed=0)
    prompts, answers = [p for p, _ in FACTUAL_PROMPTS], [a for _, a in FACTUAL_PROMPTS]

    def score(ivs):  # (accuracy, mean answer log-prob per token) for passkey, then facts
        a, b = score_passkey(model, samples, ivs), score_answers(model, prompts, answers, ivs)
        return (a.accuracy, float(a.answer_logprob.mean())), (b.accuracy, float(b.answer_logprob.mean()))

    (pk0, pl0), (fa0, fl0) = score(())
    out = {"passkey_n": len(samples), "passkey_tokens": [s.n_tokens for s in samples], "factual_n": len(prompts)}
    for name, skip in (("all_positions", False), ("skip_first", True)):
        (pk, pl), (fa, fl) = score([DisruptQKDims(target="both", top_n=1, skip_first=skip)])
        out[name] = {"passkey_clean": pk0, "passkey_disrupt": pk, "factual_clean": fa0, "factual_disrupt": fa,
                     "passkey_drop": pk0 - pk, "factual_drop": fa0 - fa,
                     "passkey_logprob_clean": pl0, "passkey_logprob_disrupt": pl,
                     "factual_logprob_clean": fl0, "factual_logprob_disrupt": fl,
                     "passkey_logprob_drop": pl0 - pl, "factual_logprob_drop": fl0 - fl}
    return out


def quick_kv(model, sizes: QuickSizes) -> dict:
    from efficiency.kv import get_policy
    from efficiency.kv.harness import FULL, perplexity, sweep
    from workbench.texts import load_corpus, long_texts
    from workbench.texts.tasks import passkey_prompts

    n = sizes.passkey_n
    depths = [0.1 + 0.8 * i / max(n - 1, 1) for i in range(n)]
    samples = [passkey_prompts(model, 1, n_tokens=sizes.passkey_tokens, depth=d, seed=100 + i)[0]
               for i, d in enumerate(depths)]
    # one sweep (one full-cache baseline); KIVI rows are labelled by the policy's own name ("KIVI 2-bit (g32, r32)")
    policies = ("streaming_llm", "snapkv", "h2o", "zigzagkv", get_policy("kivi", bits=2), get_policy("kivi", bits=4))
    t = sweep(model, samples, policies=policies, ratios=(RATIO,)).table()

    def name(label: str) -> str:
        m = re.match(r"KIVI (\d+)-bit", label)
        return f"kivi{m.group(1)}" if m else label

    scores = {name(str(r.policy)): float(r.score) for r in t.itertuples()}
    kept = {name(str(r.policy)): float(r.kept_fraction) for r in t.itertuples()}
    if not {"kivi2", "kivi4", FULL} <= set(scores):
        raise RuntimeError(f"unexpected sweep labels {sorted(scores)}")
    texts = long_texts(model, sizes.ppl_n, sizes.ppl_tokens, corpus="\n\n".join(load_corpus("heldout")))
    ppl_policies = {FULL: None, "streaming_llm": get_policy("streaming_llm", ratio=RATIO),
                    "window_only": get_policy("streaming_llm", ratio=RATIO, sinks=0),
                    "h2o": get_policy("h2o", ratio=RATIO), "snapkv": get_policy("snapkv", ratio=RATIO)}
    ppl = {k: perplexity(model, texts, p).perplexity for k, p in ppl_policies.items()}
    return {"ratio": RATIO, "passkey": {"n": n, "n_tokens": [s.n_tokens for s in samples], "depths": depths,
                                        "scores": scores, "kept_fraction": kept},
            "perplexity": {**ppl, "n_texts": len(texts), "n_tokens": sizes.ppl_tokens,
                           "measure": "compressed prefix (first half), second half scored"}}


QUICK_SECTIONS: dict[str, Callable] = {"sinks": quick_sinks, "qk_disruption": quick_qk_disruption, "kv": quick_kv}


def run_quick(model, sizes: QuickSizes | None = None, sections=SECTIONS, log: Callable[[str], None] | None = None) -> dict:
    """Run the quick ``sections`` on ``model``; returns the JSON-ready dict (with timings and conditions)."""
    sizes = sizes or QuickSizes()
    bad = [s for s in sections if s not in QUICK_SECTIONS]
    if bad:
        raise InputError(f"Unknown quick sections {bad}; choose from {list(QUICK_SECTIONS)}.")
    out = {"meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "model": model.info.name, "sizes": asdict(sizes), "torch_threads": torch.get_num_threads(),
                    "machine": platform.machine(), "loadavg_start": os.getloadavg()}, "seconds": {}}
    for s in sections:
        t = time.perf_counter()
        out[s] = QUICK_SECTIONS[s](model, sizes)
        out["seconds"][s] = round(time.perf_counter() - t, 2)
        if log:
            log(f"quick {s}: {out['seconds'][s]:.1f} s")
    out["meta"]["loadavg_end"] = os.getloadavg()
    return out
