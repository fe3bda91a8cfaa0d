"""Every registered efficiency method (``efficiency.list_methods()``, so methods added later are covered too), at
its default setting, on tiny-llama: its cost model predicts exactly the bytes measured, and the lab runs it.

A method that cannot run on this tiny family must refuse through ``check_model`` with a message, which is accepted.
Methods that calibrate get ``prepare(model, texts)`` with a few tiny training texts first.
"""
import math

import numpy as np
import pytest

import efficiency as ef
import lab
from workbench import InputError

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
NAMES = sorted(ef.list_methods()["name"])
# per-head budgets stored ragged (AdaKV; KVzip's default "pair" level): each ragged layer's int64 position index is
# padded to its longest head, a data-dependent term the cost model does not predict (efficiency/kv/methods.py)
RAGGED = {"adakv", "kvzip"}
# the smallest suite that still reads every panel (no timing)
REGISTRY = lab.Suite("registry", ppl_windows=1, ppl_tokens=40, kl_positions=4, internals_windows=1, probe_rows=2,
                     facts=(), facts_per_relation=0, fact_context=0, passkey_n=0, timing_repeats=0, calibration_n=2,
                     calibration_tokens=32, concept=None)


def _method_or_refusal(model, name):
    m = ef.get_method(name)
    try:
        m.check_model(model)
    except InputError as e:
        assert str(e).strip(), f"{name} refused tiny-llama without saying why"
        return None
    if m.needs_calibration:
        m.prepare(model, lab.suite.materialize(model, REGISTRY).calibration)
    return m


def _assert_kv_bytes(model, name, predicted: int, measured: int, n_tokens: int) -> None:
    """Predicted KV bytes equal the measured physical bytes, except the one data-dependent term of a ragged
    layer: its int64 position index padded to its longest head (a multiple of 8 bytes, under a full index)."""
    if name in RAGGED:
        i = model.info
        pad = measured - predicted
        assert 0 <= pad < 8 * i.n_layers * i.n_kv_heads * n_tokens and pad % 8 == 0, name
    else:
        assert predicted == measured, name


def test_the_registry_is_covered():
    assert {"snapkv", "streaming_llm", "kivi"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_cost_model_equals_measured_bytes(tiny_llama, name):
    m = _method_or_refusal(tiny_llama, name)
    if m is None:
        return
    measured = m.measure(tiny_llama, PROMPT)
    predicted = m.cost(tiny_llama, measured.n_tokens)
    assert predicted.weight_bytes == measured.weight_bytes, name
    if name in RAGGED:  # + each ragged layer's int64 position index padded to its longest head (data-dependent)
        from workbench.generation import prefill

        i = tiny_llama.info
        cache = prefill(tiny_llama, PROMPT, cache_policy=m.cache_policy(tiny_llama))  # the cache measure() built
        tokens = cache.stats().tokens  # (L, G) entries kept per layer and KV head
        kept = predicted.kv_bytes // (i.n_layers * i.n_kv_heads * (i.d_head * 2 * 4 + 8))
        assert int(tokens.sum()) == kept * i.n_layers * i.n_kv_heads, name  # the total is the uniform budget's
        pad = 8 * (i.n_kv_heads * int(tokens.max(dim=1).values.sum()) - int(tokens.sum()))
        assert measured.kv_bytes == cache.stats().physical_bytes == predicted.kv_bytes + pad, name
    else:
        assert predicted.kv_bytes == measured.kv_bytes, name
    assert (predicted.baseline_weight_bytes, predicted.baseline_kv_bytes) == \
        (measured.baseline_weight_bytes, measured.baseline_kv_bytes), name
    assert predicted.saving == m.saving in ("real", "simulated", "mixed")
    assert tiny_llama.active_edits() == []


@pytest.mark.parametrize("name", NAMES)
def test_the_lab_runs_every_method(tiny_llama, name):
    m = _method_or_refusal(tiny_llama, name)
    if m is None:
        return
    r = lab.effects(tiny_llama, m, REGISTRY, progress=False)
    q = r.quality
    assert math.isfinite(q["perplexity"]) and q["kl"] >= 0
    assert r.cost.weight_bytes == r.measured["weight_bytes"]
    _assert_kv_bytes(tiny_llama, name, r.cost.kv_bytes, r.measured["kv_bytes"], r.cost.n_tokens)
    assert np.isfinite(r.drift_rel).all() and np.isfinite(r.attention_tv).all()
    assert r.forward_passes["method"] > 0
    assert tiny_llama.active_edits() == [] and tiny_llama.leftover_hooks() == []
