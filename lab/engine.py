"""The baseline (computed once per model, weights and suite, then reused) and a method's pass next to it.

Baselines are kept in a small cache keyed by (model fingerprint, the model object, a checksum of its weights
as ``model.weights()`` reads them, suite, transcoders, concept). The checksum, not ``Model.weights_version``,
because the version counter also grows when an intervention is undone, although the restored weights are
bit for bit the original ones. ``clear_baselines()`` empties the cache.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from workbench.errors import InputError

from .concepts import concept_frame
from .metrics import kl_from_logprobs
from .passes import PassRecord, check_memory, fact_pass, passkey_pass, timed_run, window_pass
from .progress import bar
from .suite import Suite, SuiteData, materialize
from .transcoders import n_features, resolve_transcoders

MAX_BASELINES = 4
_BASELINES: "OrderedDict[tuple, Baseline]" = OrderedDict()


@dataclass
class Baseline:
    """The clean model's pass over a suite: what every method is compared with.

    key: what it was computed for; data: the suite's token ids; record: the pass (with the log-probabilities and
    internals kept for comparison); transcoders, concept: what the internals were read with; notes: panels left
    out and why; weight_bytes: ``model.parameter_bytes()`` of the clean model."""

    key: tuple
    model_name: str
    suite: Suite
    data: SuiteData
    record: PassRecord
    transcoders: dict
    concept: object
    notes: list
    weight_bytes: int

    def matches(self, model) -> bool:
        return self.key[:3] == (model.fingerprint, id(model), weights_checksum(model))


def weights_checksum(model) -> str:
    """A checksum of every weight ``model.weights()`` reads (float64 sums of values and squares per tensor)."""
    W = model.weights()
    acc = []

    def add(t):
        if isinstance(t, torch.Tensor):
            acc.append(torch.stack([t.sum(dtype=torch.float64), t.double().square().sum()]).cpu())

    for t in (W.W_E, W.W_pos, W.W_U, W.b_U, W.final_norm.w, W.final_norm.b):
        add(t)
    for lw in W.layers:
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_gate", "W_out", "b_in", "b_out"):
            add(getattr(lw, name))
        for nw in (lw.ln1, lw.ln2):
            add(nw.w)
            add(nw.b)
    return torch.cat(acc).numpy().tobytes().hex()[:64] + f"-{len(acc)}" if acc else "empty"


def clear_baselines() -> None:
    """Forget every cached baseline."""
    _BASELINES.clear()


def check_clean(model) -> None:
    if model.describe_interventions() or model.active_edits():
        raise InputError("lab: call this outside `with model.intervene(...)` blocks and weight edits: the lab applies the "
                         "method itself and needs the clean model for the baseline. Pass what you are applying as "
                         "the method (an EfficiencyMethod, or a list combining several).")


def _kl_index(n_tail: int, k: int) -> list[int]:
    if k <= 0:
        return []
    k = min(k, n_tail)
    return sorted({round(i * (n_tail - 1) / max(k - 1, 1)) for i in range(k)}) if k > 1 else [n_tail - 1]


def _steps(data: SuiteData) -> int:
    return len(data.windows) + len(data.facts) + len(data.passkeys)


def run_pass(model, data: SuiteData, method, tcs: dict, base: PassRecord | None, progress: bool,
             desc: str) -> PassRecord:
    """One pass of the protocol (``lab.passes``) over ``data``; ``method`` None is the clean model. The method's
    intervention is in force for the whole pass; its cache policy is built fresh for every sequence."""
    s = data.suite
    factory = None
    if method is not None and method.cache_policy(model) is not None:
        factory = lambda: method.cache_policy(model)  # noqa: E731
    rec = PassRecord()
    n0, t0 = model.forward_count, time.perf_counter()
    pb = bar(_steps(data), desc, progress)
    n_tail = s.ppl_tokens - s.prefix_tokens
    kl_index = _kl_index(n_tail, s.kl_positions)
    try:
        for w, ids in enumerate(data.windows):
            internals = {"probe_rows": s.probe_rows, "tc": tcs} if w < s.internals_windows else None
            measure = None
            if w == 0:
                def measure(cache):
                    rec.kv_bytes = (int(method.measured_kv_bytes(model, cache)) if method is not None
                                    else int(cache.stats().physical_bytes))
                    rec.kv_tokens = int(cache.next_position)
            wr, lp = window_pass(model, ids, s.prefix_tokens, factory, kl_index, base is None, internals, measure)
            if base is not None and lp is not None:
                wr.kl = kl_from_logprobs(base.windows[w].kl_logprobs, lp)
            rec.windows.append(wr)
            pb.update()
        for item in data.facts:
            rec.facts.append(fact_pass(model, item, factory))
            pb.update()
        for sample in data.passkeys:
            rec.passkeys.append(passkey_pass(model, sample, factory))
            pb.update()
    finally:
        pb.close()
    rec.forward_passes = model.forward_count - n0
    rec.seconds = time.perf_counter() - t0
    return rec


def get_baseline(model, suite: Suite, transcoders="auto", progress: bool = True) -> tuple[Baseline, int]:
    """(the baseline for ``model`` and ``suite``, forward passes run to get it: 0 when it was cached)."""
    check_clean(model)
    tcs, tc_note = resolve_transcoders(model, transcoders)
    checksum = weights_checksum(model)
    key = (model.fingerprint, id(model), checksum, suite, tuple((l, id(t)) for l, t in tcs.items()))
    if key in _BASELINES:
        _BASELINES.move_to_end(key)
        return _BASELINES[key], 0
    data = materialize(model, suite)
    check_memory(model, data, n_features(tcs))
    concept, c_note = concept_frame(model, suite.concept, (model.fingerprint, id(model), checksum))
    with torch.no_grad():
        rec = run_pass(model, data, None, tcs, None, progress, f"baseline ({suite.name})")
    notes = [n for n in (tc_note, c_note) if n.startswith("no ")]
    b = Baseline(key, model.info.name, suite, data, rec, tcs, concept, notes, model.parameter_bytes())
    _BASELINES[key] = b
    while len(_BASELINES) > MAX_BASELINES:
        _BASELINES.popitem(last=False)
    return b, rec.forward_passes


def method_pass(model, method, b: Baseline, progress: bool = True) -> tuple[PassRecord, dict]:
    """The method's pass against baseline ``b``, plus the measured bytes and interleaved timings."""
    s = b.suite
    if method.needs_calibration:
        if not b.data.calibration:
            raise InputError(f"{method.label} calibrates, but suite {s.name!r} has calibration_n=0.")
        method.prepare(model, b.data.calibration)
    iv = method.intervention(model)
    extra = {"threads": torch.get_num_threads(), "loadavg_before": _loadavg()}
    with (model.intervene(iv) if iv is not None else nullcontext()), torch.no_grad():
        extra["weight_bytes"] = int(method.measured_weight_bytes(model, iv))
        extra["process_weight_bytes"] = int(model.parameter_bytes())
        rec = run_pass(model, b.data, method, b.transcoders, b.record, progress, method.label)
        if s.timing_repeats and b.data.timing_ids is not None:
            extra["timing"] = _interleaved_timing(model, method, b.data.timing_ids, s)
    extra["loadavg_after"] = _loadavg()
    return rec, extra


def _interleaved_timing(model, method, ids, s: Suite) -> dict:
    """Baseline and method prefill/decode ms per token, alternating which goes first (ABBA), in one run."""
    factory = (lambda: method.cache_policy(model)) if method.cache_policy(model) is not None else None  # noqa: E731
    out = {"baseline_prefill": [], "baseline_decode": [], "method_prefill": [], "method_decode": []}
    n0 = model.forward_count
    for r in range(s.timing_repeats):
        for side in (("baseline", "method") if r % 2 == 0 else ("method", "baseline")):
            if side == "baseline":
                with model.without_interventions():
                    p, d = timed_run(model, ids, None, s.decode_tokens)
            else:
                p, d = timed_run(model, ids, factory, s.decode_tokens)
            out[f"{side}_prefill"].append(p)
            out[f"{side}_decode"].append(d)
    out["forward_passes"] = model.forward_count - n0
    out["tokens"] = int(ids.shape[0])
    out["decode_tokens"] = s.decode_tokens
    return out


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


__all__ = ["Baseline", "get_baseline", "method_pass", "clear_baselines", "weights_checksum", "check_clean", "run_pass"]
