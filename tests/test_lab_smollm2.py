"""The lab on the bundled SmolLM2 (a small suite): shipped transcoders, known sink and massive-activation facts,
exact cost models, one baseline for two methods."""
import numpy as np
import pytest

import lab

pytestmark = pytest.mark.smollm2

SUITE = lab.QUICK.replace(name="smollm2-test", ppl_windows=1, kl_positions=16, facts_per_relation=1, passkey_n=1,
                          passkey_tokens=160, timing_repeats=1, timing_tokens=64, decode_tokens=2)


def test_lab_on_smollm2(smollm2):
    m = smollm2
    lab.clear_baselines()
    r = lab.effects(m, ("snapkv", {"ratio": 0.5}), SUITE, progress=False)
    assert r.forward_passes["baseline"] > 0
    assert (r.cost.weight_bytes, r.cost.kv_bytes) == (r.measured["weight_bytes"], r.measured["kv_bytes"])
    assert r.measured["kv_bytes"] == r.measured["baseline_kv_bytes"] // 2  # 64 of 128 prefix tokens kept
    # known facts about SmolLM2: position 0 is the sink, its residual peak is carried by dimension 507
    assert r.massive["peak_position"] == 0
    assert r.massive["top_dim"][16] == 507 and r.massive["norm_base"][16] > 1e4
    assert r.sink_base[15:].mean() > 0.3
    # the shipped transcoders fit this model and read layers 8 and 15
    assert set(r.features) == {8, 15} and all(0.5 < f["kept"] <= 1 for f in r.features.values())
    assert r.dla["error_base"] < 1e-3 and r.dla["error_method"] < 1e-3
    assert r.quality["perplexity"] >= r.quality["perplexity_base"] * 0.98
    from probes.frames.wordnet import wordnet_available

    assert (r.concept is not None) == wordnet_available()
    # a second method reuses the baseline: only its own forwards run
    n0 = m.forward_count
    r2 = lab.effects(m, ("streaming_llm", {"ratio": 0.5}), SUITE, progress=False)
    assert r2.forward_passes["baseline"] == 0
    assert m.forward_count - n0 == r2.forward_passes["method"] + r2.forward_passes["timing"]
    # StreamingLLM keeps the sink: the attention on position 0 does not fall
    assert np.all(r2.sink_method[2:].mean(1) >= r2.sink_base[2:].mean(1) - 0.02)
