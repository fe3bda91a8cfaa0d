"""Transcoder features (probes/transcoders/features.py, feature_explorer.py) on tiny models.

Known answers: the streamed top-k contexts, frequencies and histograms equal a brute-force pass
over every window; the direct de-embedding equals the feature's pre-activation on single-token
prompts when layer-0 attention is zeroed (a 0-layer model); logit effects equal the direct
attribution of the feature to each logit."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

from interventions import HeadAblation
from probes.transcoders.attribution_graph import capture_prompt, logit_contributions
from probes.transcoders.feature_explorer import feature_explorer
from probes.transcoders.features import LOG_BINS, de_embeddings, feature_contexts, logit_effects
from workbench.errors import InputError

TEXTS = ["the cat sat on the mat. " * 4, "hello world, this is a test of features", "",
         "abc def ghi jkl mno pqr stu vwx yz " * 2]


def random_tc(d, n_features=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    tc = Transcoder(TranscoderConfig(d_in=d, d_sae=n_features, d_out=d, apply_b_dec_to_input=False))
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(d, n_features, generator=g) / d ** 0.5)
        tc.b_enc.copy_(torch.randn(n_features, generator=g) * 0.1 - 0.2)
        tc.W_dec.copy_(torch.randn(n_features, d, generator=g) / n_features ** 0.5)
        tc.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
    return tc


def brute_force(model, tc, layer, texts, context):
    """(text, position, activations (F,)) for every token but each window's first."""
    out = []
    for ti, text in enumerate(texts):
        if not text:
            continue
        ids = model.tokenizer(text)["input_ids"]
        for start in range(0, len(ids), context):
            chunk = ids[start:start + context]
            if len(chunk) < 2:
                continue
            run = model.run(torch.tensor([chunk]), capture=["mlp_in"], layers=[layer], logits=None)
            acts = tc.encode(run["mlp_in", layer][0]).detach()
            out += [(ti, start + p, acts[p]) for p in range(1, len(chunk))]
    return out


def test_contexts_match_brute_force(tiny):
    tc = random_tc(tiny.info.d_model)
    ctx = feature_contexts(tiny, tc, 1, TEXTS, k=4, context=24, batch_size=3, left=3, right=2)
    ref = brute_force(tiny, tc, 1, TEXTS, 24)
    assert ctx.n_tokens == len(ref)
    acts = torch.stack([a for _, _, a in ref])  # (N, F)
    np.testing.assert_array_equal(ctx.n_active.numpy(), (acts > 0).sum(0).numpy())
    np.testing.assert_allclose(ctx.max_act.numpy(), acts.max(0).values.numpy(), rtol=1e-5)
    assert (ctx.hist.sum(1) == ctx.n_active).all()
    for f in range(acts.shape[1]):
        want = acts[:, f].topk(4).values
        want = torch.where(want > 0, want, torch.zeros_like(want))
        np.testing.assert_allclose(ctx.top_values[f].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
        for j in range(4):
            if ctx.top_values[f, j] > 0:
                ti, p = ctx.top_where[f, j].tolist()
                match = [a[f] for t, q, a in ref if t == ti and q == p]
                assert match and abs(float(match[0]) - float(ctx.top_values[f, j])) < 1e-5
                # the snippet's centre is the activating token
                ids = tiny.tokenizer(TEXTS[ti])["input_ids"]
                assert int(ctx.top_tokens[f, j, ctx.left]) == ids[p]
                assert abs(float(ctx.top_acts[f, j, ctx.left]) - float(ctx.top_values[f, j])) < 1e-5
    f = int(ctx.max_act.argmax())
    ex = ctx.examples(f)
    assert len(ex) == int((ctx.top_values[f] > 0).sum()) and ex["activation"].is_monotonic_decreasing
    assert "background" in ctx.contexts_html(f)
    assert isinstance(ctx.histogram_figure(f), go.Figure) and isinstance(ctx.figure(), go.Figure)
    assert len(ctx.to_frame()) == 16 and "FeatureContexts" in repr(ctx)


def test_contexts_memory_is_bounded_and_subset(tiny_llama):
    tc = random_tc(tiny_llama.info.d_model)
    small = feature_contexts(tiny_llama, tc, 0, TEXTS[:1], features=[3, 5], k=3, context=16)
    big = feature_contexts(tiny_llama, tc, 0, TEXTS * 3, features=[3, 5], k=3, context=16)
    assert small.top_tokens.shape == big.top_tokens.shape == (2, 3, 17)
    assert big.n_tokens > small.n_tokens
    assert (big.top_values >= small.top_values - 1e-6).all()
    with pytest.raises(InputError, match="not tracked"):
        big.examples(4)
    capped = feature_contexts(tiny_llama, tc, 0, TEXTS * 3, k=3, context=16, batch_size=1, max_tokens=20)
    assert 20 <= capped.n_tokens < big.n_tokens * 3


def test_contexts_bad_input(tiny_llama):
    tc = random_tc(tiny_llama.info.d_model)
    with pytest.raises(InputError, match="no tokens"):
        feature_contexts(tiny_llama, tc, 0, ["", "  "])
    with pytest.raises(InputError, match="out of range"):
        feature_contexts(tiny_llama, tc, 0, TEXTS, features=[16])
    with pytest.raises(InputError, match="d_model"):
        feature_contexts(tiny_llama, random_tc(8), 0, TEXTS)
    with pytest.raises(InputError, match="k must"):
        feature_contexts(tiny_llama, tc, 0, TEXTS, k=0)


def test_direct_de_embedding_is_zero_layer_pre_activation(tiny_llama):
    """Single-token prompts with layer-0 attention zeroed: resid_mid 0 is the bare embedding."""
    m = tiny_llama
    tc = random_tc(m.info.d_model)
    toks = torch.arange(m.info.d_vocab)[:, None]
    run = m.run(toks, capture=["mlp_in"], layers=[0], logits=None,
                interventions=[HeadAblation(0, list(range(m.info.n_heads)))])
    pre = (run["mlp_in", 0][:, 0] @ tc.W_enc + tc.b_enc).detach()  # (V, F)
    for f in (0, 7):
        de = de_embeddings(m, tc, 0, f)
        np.testing.assert_allclose(de.direct.numpy(), pre[:, f].numpy(), atol=1e-5)
        assert list(de.top(5)["id"]) == pre[:, f].topk(5).indices.tolist()  # same ranking
    raw = de_embeddings(m, tc, 0, 0, normalize=False)
    np.testing.assert_allclose(raw.direct.numpy(), (m.bridge.W_E @ tc.W_enc[:, 0]).detach().numpy(), atol=1e-5)


def test_head_de_embedding_is_single_source_head_output(tiny):
    """Through head h of layer 0 on a 1-token prompt (A = 1 on itself): the head's output · P W_enc."""
    m = tiny
    tc = random_tc(m.info.d_model)
    de = de_embeddings(m, tc, 1, 2)
    assert de.ov_norms.shape == (2, m.info.n_heads)
    toks = [5, 77, 200]
    for t in toks:
        run = m.run(torch.tensor([[t]]), capture=["head_out", "resid_pre"], layers=[0], logits=None)
        if m.info.positional != "rotary":
            continue  # GPT-2: the source residual also holds a position embedding; the de-embedding ignores it
        u = tc.W_enc[:, 2].detach()
        want = run["head_out", 0][0, 0] @ u  # (H,)
        got = torch.stack([de.heads[(0, h)][t] for h in range(m.info.n_heads)])
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-4)
    assert {"direct"} < set(de.to_frame(3)["path"]) and isinstance(de.figure(), go.Figure)


def test_logit_effects_equal_direct_attribution(tiny):
    m = tiny
    L = m.info.n_layers
    tc = random_tc(m.info.d_model)
    cache = capture_prompt(m, {L - 1: tc}, "the cat sat on the mat")
    pos = cache.n_tokens - 1
    i = int(cache.z[L - 1][pos].argmax())
    assert cache.z[L - 1][pos, i] > 0
    le = logit_effects(m, tc, L - 1, i)
    for tok in (1, 50, 120):
        c = logit_contributions(cache, pos, tok)
        # edge = z_i · effect / s_final
        want = float(cache.z[L - 1][pos, i]) * float(le.effects[tok]) / float(cache.s_final[pos])
        assert abs(float(c.features[L - 1][i]) - want) < 1e-5
    top = le.top(5)
    assert top["effect"].is_monotonic_decreasing and len(le.to_frame(5)) == 10
    assert isinstance(le.figure(), go.Figure) and "LogitEffects" in repr(le)


def test_feature_explorer_headless(tiny_llama):
    tc = random_tc(tiny_llama.info.d_model)
    ctx = feature_contexts(tiny_llama, tc, 1, TEXTS, k=3, context=24)
    box = feature_explorer(tiny_llama, tc, 1, ctx, k_tokens=5)
    first = box.current()
    x0, h0 = list(box.logit_figure.data[0].x), box.contexts_html.value
    other = [v for _, v in box.feature_dropdown.options if v != first][0]
    box.feature_dropdown.value = other
    assert box.current() == other
    assert list(box.logit_figure.data[0].x) != x0 and box.contexts_html.value != h0
    np.testing.assert_array_equal(np.asarray(box.histogram_figure.data[0].y), ctx.hist[ctx.features.index(other)].numpy())
    assert len(box.histogram_figure.data[0].x) == len(LOG_BINS) - 1
    de = de_embeddings(tiny_llama, tc, 1, other, heads=False)
    np.testing.assert_allclose(np.asarray(box.ov_figure.data[0].z), de.ov_norms.numpy(), rtol=1e-6)
    box.show(first)
    assert box.feature_dropdown.value == first and box.current() == first
    with pytest.raises(InputError, match="layer"):
        feature_explorer(tiny_llama, tc, 0, ctx)
