"""Exact DLA on every tiny architecture family (post norms, parallel attention/MLP, QKV biases, q/k norms,
logit soft-capping), and the sum-to-logit check that runs on every call."""
import numpy as np
import pytest
import torch

import workbench as wb
from probes.factual.dla import check_sum_to_logit, direct_logit_attribution
from workbench.loading.tiny import TINY_MODELS

PROMPT = "hello there, general kenobi"


def _randomize_norm_gains(model, ed, gen):
    """Non-trivial gains on every norm the editor reaches (pre, post and final norms)."""
    W = model.weights()
    whiches = ["ln1", "ln2"] + (["ln1_post", "ln2_post"] if model.info.post_norms else [])
    for layer in range(model.info.n_layers):
        for which in whiches:
            nw = getattr(W.layers[layer], which)
            ed.set_norm(layer, which, weight=nw.w + 0.5 * torch.randn(nw.w.shape, generator=gen))
    ed.set_norm(None, weight=W.final_norm.w + 0.5 * torch.randn(W.final_norm.w.shape, generator=gen))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_components_sum_to_logit_on_every_family(name, tiny_family_models):
    m = tiny_family_models(name)
    with m.edit_weights() as ed:
        _randomize_norm_gains(m, ed, torch.Generator().manual_seed(1))
        r = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71, 72])
        assert np.abs(r.total - r.logits).max() <= 1e-4
        assert r.check_passed and r.error <= r.tolerance
        # the per-source split (pattern · v) sums to the head DLA (z W_O): two independent paths
        np.testing.assert_allclose(r.sources[0].sum(-1), r.heads[..., 0], atol=1e-5)
        np.testing.assert_allclose(r.groups.sum(2), r.heads, atol=1e-5)
        if m.info.logit_softcap:  # the pre-cap logit is decomposed; capping it gives the model's logit
            c = m.info.logit_softcap
            assert r.softcap == c
            np.testing.assert_allclose(c * np.tanh(r.logits / c), r.capped_logits, atol=1e-5)
        if m.info.post_norms:  # the frozen post-attention norm scales really matter
            assert r.attn_post_norm_scales is not None and np.abs(r.attn_post_norm_scales - 1).max() > 1e-2


def test_post_norm_heads_match_an_independent_recomputation(tiny_family_models):
    """Gemma 2: one head's DLA equals the logit change of removing its (post-normed) output by hand,
    with every norm scale frozen at the clean run."""
    m = tiny_family_models("tiny-gemma2")
    r = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71])
    L = m.info.n_layers
    run = m.run(PROMPT, capture=["z", "attn_post_norm_scale", "final_norm_scale"])
    W = m.weights()
    layer, head = L - 1, 1
    z = run["z", layer][0, -1, head]  # (e,)
    head_out = z @ W.layers[layer].W_O[head]  # (d,) before the post norm
    s_post = run["attn_post_norm_scale", layer][0, -1, 0]
    added = W.layers[layer].ln1_post.gain * head_out / s_post  # what the head adds, post norm frozen
    s_fin = run["final_norm_scale"][0, -1, 0]
    by_hand = float((W.final_norm.gain * added / s_fin) @ W.W_U[:, 70])
    assert r.heads[layer, head, 0] == pytest.approx(by_hand, abs=1e-5)


def test_broken_decomposition_is_caught(tiny_family_models):
    """A hook that adds to the residual between components breaks the sum: the check raises by default,
    warns (and flags the result) with on_error="warn", and never returns silently."""
    m = tiny_family_models("tiny-llama")
    push = torch.randn(m.info.d_model, generator=torch.Generator().manual_seed(0))

    class Nudge(wb.Intervention):
        def hooks(self, model):
            return [(wb.hook_name("resid_pre", 1), lambda x, name: x + push)]

    with m.intervene(Nudge()):
        with pytest.raises(wb.DecompositionError, match="do not use these numbers"):
            direct_logit_attribution(m, PROMPT, answer=70)
        with pytest.warns(UserWarning, match="sum-to-logit|components sum to"):
            r = direct_logit_attribution(m, PROMPT, answer=70, on_error="warn")
    assert not r.check_passed and r.error > r.tolerance and "FAILED" in repr(r)
    # a tampered clean result fails the same check
    clean = direct_logit_attribution(m, PROMPT, answer=70)
    clean.mlps[0, 0] += 1.0
    with pytest.raises(wb.DecompositionError):
        check_sum_to_logit(clean)
    with pytest.raises(wb.InputError, match="on_error"):
        direct_logit_attribution(m, PROMPT, answer=70, on_error="ignore")


@pytest.mark.parametrize("name", TINY_MODELS)
def test_lab_component_dla_is_exact_and_matches_the_probe(name, tiny_family_models):
    """The lab's one-query DLA (used against compressed caches) is exact on every family and equals the probe's."""
    from lab.dla import capture_hooks, component_dla

    m = tiny_family_models(name)
    ids, _ = m.tokenize(PROMPT)
    store = {}
    with m.session(hooks=capture_hooks(m, store)) as s:
        logits = s.forward(ids)[0, -1]
    targets = [70, 71]
    c = component_dla(m, store, logits, targets)
    assert c.error <= 1e-4
    r = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71])
    np.testing.assert_allclose(c.heads, r.heads, atol=1e-5)
    np.testing.assert_allclose(c.logits, r.logits, atol=1e-5)
