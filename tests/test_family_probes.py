"""Every main probe and efficiency method runs on every tiny architecture family or refuses with a clear
``InputError`` naming the unsupported trait; KV eviction keeps the sliding-window semantics of Gemma's
sliding layers (checked against a masked dense forward)."""
import numpy as np
import pytest
import torch

import workbench as wb
from efficiency.registry import get_method
from kv_helpers import Recorder, masked_generation_logits
from workbench.loading.tiny import TINY_MODELS

PROMPT = "hello there, general kenobi, the cat sat on the mat"
TEXTS = ["The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 2,
         "Rivers carry water from the mountains to the sea, and towns grow along their banks. " * 2]


def finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x.float()).all())
    return bool(np.isfinite(np.asarray(x, dtype=float)).all())


def runs_or_refuses(fn):
    """Run ``fn``; an InputError must name the trait it refuses (returns None then)."""
    try:
        return fn()
    except wb.InputError as exc:
        msg = str(exc)
        assert any(t in msg for t in ("post norm", "parallel", "sliding", "soft-cap", "bias", "q/k norm",
                                      "rotary", "GQA", "family", "architecture")), msg
        return None


@pytest.fixture(scope="module", params=TINY_MODELS)
def fam(request, tiny_family_models):
    return tiny_family_models(request.param)


def test_sink_report_and_massive_activations(fam):
    from probes.sinks import massive_activations, sink_report

    r = runs_or_refuses(lambda: sink_report(fam, PROMPT))
    if r is not None:
        assert finite(r.mass0)
    ma = runs_or_refuses(lambda: massive_activations(fam, [PROMPT]))
    if ma is not None:
        assert finite(ma.norms[0, :, : ma.lengths[0]]) and ma.peak_stage[0] >= 1


def test_factual_dla_and_logit_lens(fam):
    from probes.factual import direct_logit_attribution
    from probes.factual.lenses import lens_trajectory

    r = direct_logit_attribution(fam, PROMPT, answer=70)  # raises if the components miss the logit
    assert r.check_passed and finite(r.heads)
    t = runs_or_refuses(lambda: lens_trajectory(fam, PROMPT, answer=70))
    if t is not None:
        assert finite(t.to_frame().select_dtypes("number").to_numpy())


@pytest.mark.parametrize("method", ["snapkv", "h2o", "streaming_llm"])
def test_kv_policy_prefill_and_generate(fam, method):
    pol = get_method(method, ratio=0.5).cache_policy(fam)
    g = runs_or_refuses(lambda: fam.generate(PROMPT, 5, stop_at_eos=False, cache_policy=pol))
    if g is not None:
        assert finite(g.logits) and len(g.new_tokens) == 5
        assert int(g.cache.stats().tokens.max()) < g.cache.next_position  # something was evicted


@pytest.mark.parametrize("method", [("rtn", {"bits": 4}), ("shortgpt", {"ratio": 0.5})])
def test_weight_quantizer_and_pruning(fam, method):
    name, knobs = method
    m = get_method(name, **knobs)

    def go():
        m.check_model(fam)
        if m.needs_calibration:
            m.prepare(fam, TEXTS)
        with fam.intervene(m.intervention(fam)):
            return fam.run(PROMPT).logits

    logits = runs_or_refuses(go)
    if logits is not None:
        assert finite(logits)
        assert not torch.allclose(logits, fam.run(PROMPT).logits)  # the method really changed something


class DropSecondNewest(wb.PolicyBase):
    """Evict the second-newest entry of every layer at every step: inside Gemma's 4-token window."""

    def apply(self, cache, ctx):
        for l in range(cache.n_layers):
            n = cache.seq_len(l)
            if n > 6:
                cache.keep(l, torch.tensor([i for i in range(n) if i != n - 2]))


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("cache", ["dynamic", "preallocated"])
@pytest.mark.parametrize("policy", ["inside_window", "h2o"])
def test_eviction_keeps_the_sliding_window(name, cache, policy, tiny_family_models):
    """After eviction a sliding layer still sees only keys at positions > q - W (its own mask counts slots,
    which no longer match positions): cached logits equal a dense forward masked to the kept keys."""
    m = tiny_family_models(name)
    inner = DropSecondNewest() if policy == "inside_window" else get_method("h2o", ratio=0.5).cache_policy(m)
    rec = Recorder(inner)
    g = m.generate(PROMPT, 6, stop_at_eos=False, cache_policy=rec, cache=cache)
    ref = masked_generation_logits(m, g, rec.snapshots[0])
    assert torch.allclose(g.logits, ref, atol=1e-4), (g.logits - ref).abs().max()


def test_attention_drop_refuses_parallel_attention(tiny_family_models):
    m = tiny_family_models("tiny-neox")
    with pytest.raises(wb.InputError, match="parallel"):
        get_method("attn_drop").prepare(m, TEXTS)


def test_ffn_sub_updates_refuse_post_norms_and_post_norm_editing(tiny_family_models):
    from probes.factual.ffn_updates import ffn_sub_updates

    with pytest.raises(wb.InputError, match="post norms"):
        ffn_sub_updates(tiny_family_models("tiny-gemma2"), PROMPT, 0)
    llama = tiny_family_models("tiny-llama")
    assert ffn_sub_updates(llama, PROMPT, 0).coefficients.shape == (llama.info.d_mlp,)
    with pytest.raises(wb.InputError, match="no post norms"):
        with llama.edit_weights() as ed:
            ed.set_norm(0, "ln1_post", weight=torch.ones(llama.info.d_model))
