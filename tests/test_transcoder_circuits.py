"""Transcoder circuits (probes/transcoders/connections.py, attribution_graph.py, circuit_figure.py,
circuit_explorer.py) on tiny-llama (RMSNorm, GQA) and tiny-gpt2 (LayerNorm, biases).

Exact checks: conservation (a feature's pre-activation and a logit equal the
sum of their one-step contributions plus bias; on a model whose MLPs are spliced transcoders the
transcoder error is 0, on the real model the error nodes close the sum); head decomposition
(Σ_s of a head's per-source terms = its captured output · u, GQA included); every node of a greedy
graph conserves (flow = Σ child edges + error nodes, and equals the decomposition of its own
pulled-back vector); connection strengths match the input-dependent edges."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from interventions.transcoder_splice import SpliceTranscoder
from probes.transcoders.attribution_graph import (attribution_graph, build_graph, capture_prompt, feature_contributions,
                                                  feature_vector, logit_contributions, one_step)
from probes.transcoders.circuit_explorer import circuit_explorer
from probes.transcoders.connections import connection_strengths
from transcoder_helpers import random_tc
from workbench.errors import InputError

PROMPT = "the cat sat on the mat and the dog sat too"


def tcs_for(model):
    d = model.info.d_model
    return {0: random_tc(d, seed=1, skip=True), 1: random_tc(d, seed=2)}


def active(cache, layer, pos, n=3):
    z = cache.z[layer][pos]
    return [int(i) for i in z.topk(n).indices if z[i] > 0]


@pytest.mark.parametrize("spliced", [True, False])
def test_conservation_one_step(tiny, spliced):
    tcs = tcs_for(tiny)
    ivs = [SpliceTranscoder(tcs)] if spliced else []
    cache = capture_prompt(tiny, tcs, PROMPT, interventions=ivs)
    checked = 0
    for layer in (0, 1):
        for pos in (1, 5, cache.n_tokens - 1):
            for i in active(cache, layer, pos) + [0]:
                c = feature_contributions(cache, layer, pos, i)
                assert abs(c.total() - c.target_value) < 1e-5 * max(1, abs(c.target_value))
                err = sum(c.tc_error.values())
                if spliced or layer == 0:  # layer 0 reads no MLP; spliced layers have no error
                    assert abs(err) < 1e-5
                checked += 1
    assert checked >= 6
    if not spliced:  # the error nodes are what close the sum on the real model
        c = feature_contributions(cache, 1, cache.n_tokens - 1, 0)
        assert abs(sum(c.tc_error.values())) > 1e-3
    for tok in (3, 100, 200):
        lc = logit_contributions(cache, -1, tok)
        assert abs(lc.total() - lc.target_value) < 1e-4 * max(1, abs(lc.target_value))
        assert abs(lc.target_value - float(cache.logits[-1, tok])) < 1e-6


def test_head_decomposition_matches_captured_head_output(tiny):
    tcs = tcs_for(tiny)
    cache = capture_prompt(tiny, tcs, PROMPT)
    run = tiny.run(PROMPT, capture=["head_out"])
    u = torch.randn(tiny.info.d_model, generator=torch.Generator().manual_seed(0))
    for pos in (0, 4, cache.n_tokens - 1):
        c = one_step(cache, u, pos, n_attn=tiny.info.n_layers, n_mlp=0)
        for l in range(tiny.info.n_layers):
            want = run["head_out", l][0, pos] @ u  # (H,)
            np.testing.assert_allclose(c.heads[l].sum(-1).numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
            assert (c.heads[l, :, pos + 1:] == 0).all()  # causal


@pytest.mark.parametrize("spliced", [True, False])
def test_graph_conserves_at_every_node(tiny, spliced):
    tcs = tcs_for(tiny)
    cache = capture_prompt(tiny, tcs, PROMPT, interventions=[SpliceTranscoder(tcs)] if spliced else [])
    pos = cache.n_tokens - 1
    i = active(cache, 1, pos)[0]
    for kw in (dict(feature=(1, pos, i)), dict(logit=int(cache.logits[pos].argmax()), pos=pos)):
        g = build_graph(cache, max_depth=4, top_k=4, max_expand=40, min_frac=0.0, **kw)
        assert g.conservation_gap() < 1e-4
        expanded = [n for n in g.nodes.values() if n.expanded]
        assert len(expanded) > 3 and any(n.kind == "head" for n in expanded)
        t = g.target_node
        assert abs(t.flow - (float(cache.pre[1][pos, i]) if "feature" in kw else float(cache.logits[pos, kw["logit"]]))) < 1e-6
        for n in expanded:
            assert set(n.errors) == {"tc_error", "untranscoded", "bias", "skip", "pruned", "act_gap"}
            if spliced:
                assert abs(n.errors["tc_error"]) < 1e-5
        # error nodes are graph nodes with edges into their parent
        assert any(n.kind == "error" for n in g.nodes.values())
        df = g.to_frame()
        assert len(df) == len(g.edges) and {"child", "parent", "value"} <= set(df.columns)
        assert len(g.nodes_frame()) == len(g.nodes)
        assert "AttributionGraph" in repr(g) and "<b>" in g._repr_html_()
    for show in ("total", "all", False):
        fig = g.figure(show_errors=show)
        assert isinstance(fig, go.Figure) and any(tr.mode == "markers" for tr in fig.data)
        names = {tr.name for tr in fig.data}
        assert ("error" in names) == bool(show)


def test_pruning_goes_to_pruned_error(tiny_llama):
    tcs = tcs_for(tiny_llama)
    cache = capture_prompt(tiny_llama, tcs, PROMPT)
    pos = cache.n_tokens - 1
    g_small = build_graph(cache, logit=5, pos=pos, max_depth=1, top_k=1, min_frac=0.0)
    g_big = build_graph(cache, logit=5, pos=pos, max_depth=1, top_k=50, min_frac=0.0, ignore_pos0=False)
    kept_small = sum(v for c, v in g_small.children(g_small.target) if c[0] != "error")
    assert len([c for c, _ in g_small.children(g_small.target) if c[0] != "error"]) == 1
    assert abs(g_small.target_node.errors["pruned"] - (g_big.target_node.errors["pruned"]
               + sum(v for c, v in g_big.children(g_big.target) if c[0] != "error") - kept_small)) < 1e-4


def test_connection_strengths_match_input_dependent_edges(tiny):
    tcs = tcs_for(tiny)
    cache = capture_prompt(tiny, tcs, PROMPT)
    rep = connection_strengths(tiny, tcs, 0, 1, heads=True)
    assert rep.strengths.shape == (32, 32) and len(rep.heads) == tiny.info.n_heads
    pos = 6
    for j in (0, 1, 2):
        c = feature_contributions(cache, 1, pos, j)
        # edge = z_i (W_dec[i] · P W_enc[:, j]) / s2 : input-dependent = activation × invariant / frozen scale
        want = cache.z[0][pos] * rep.strengths[:, j] / cache.s2[1, pos]
        np.testing.assert_allclose(c.features[0].numpy(), want.numpy(), atol=1e-5, rtol=1e-4)
    # the OV path: a unit vector written at the source, read by head h with all attention on it
    u, _ = feature_vector(cache, 1, pos, 0)
    W = cache.weights
    l, h = 1, 1
    back = W.ov_pullback(l, W.center(tcs[1].W_enc.detach()[:, 0]))[h]
    np.testing.assert_allclose((tcs[0].W_dec.detach() @ back).numpy(), rep.heads[(l, h)][:, 0].numpy(), atol=1e-5)
    assert rep.top(5).shape[0] == 5 and len(rep.to_frame()) == 32 * 32 * (1 + len(rep.heads))
    assert isinstance(rep.figure(), go.Figure)
    with pytest.raises(InputError, match="below"):
        connection_strengths(tiny, tcs, 1, 0)
    with pytest.raises(InputError, match="No transcoder"):
        connection_strengths(tiny, {0: tcs[0]}, 0, 1)


def test_gradient_equivalence_of_feature_edges(tiny_llama):
    """With norm scales fixed, an upstream feature's edge z_i (W_dec[i]·u) = z_i ∂p/∂z_i (direct path)."""
    tcs = tcs_for(tiny_llama)
    cache = capture_prompt(tiny_llama, tcs, PROMPT)
    pos, j = 7, 0
    c = feature_contributions(cache, 1, pos, j)
    z = cache.z[0][pos].clone().requires_grad_(True)
    resid_mid = cache.resid_mid[1, pos] - cache.mlp_out[0, pos] + (z @ tcs[0].W_dec.detach())
    p = (resid_mid / cache.s2[1, pos]) @ tcs[1].W_enc.detach()[:, j]  # RMS: P = I; scale frozen
    p.backward()
    np.testing.assert_allclose((cache.z[0][pos] * z.grad).numpy(), c.features[0].numpy(), atol=1e-5, rtol=1e-4)


def test_attribution_graph_entry_point_and_bad_input(tiny_llama):
    tcs = tcs_for(tiny_llama)
    g = attribution_graph(tiny_llama, tcs, PROMPT, logit=7)
    assert g.target == ("logit", len(g.str_tokens) - 1, 7)
    with pytest.raises(InputError, match="exactly one target"):
        attribution_graph(tiny_llama, tcs, PROMPT)
    with pytest.raises(InputError, match="No transcoder"):
        attribution_graph(tiny_llama, {0: tcs[0]}, PROMPT, feature=(1, 2, 0))
    with pytest.raises(InputError, match="out of range"):
        attribution_graph(tiny_llama, tcs, PROMPT, feature=(1, 999, 0))
    with pytest.raises(InputError, match="out of range"):
        attribution_graph(tiny_llama, tcs, PROMPT, feature=(1, 2, 32))
    with pytest.raises(InputError, match="top_k"):
        attribution_graph(tiny_llama, tcs, PROMPT, logit=7, top_k=0)
    with pytest.raises(InputError, match="token id"):
        attribution_graph(tiny_llama, tcs, PROMPT, logit="cat")
    with pytest.raises(InputError, match="d_model"):
        capture_prompt(tiny_llama, {0: random_tc(8)}, PROMPT)


def test_logit_difference_and_jumprelu_transcoders(tiny_llama):
    """A logit-difference target decomposes exactly; JumpReLU features (z = p when active) close too."""
    from sae_lens.saes.transcoder import JumpReLUTranscoder, JumpReLUTranscoderConfig

    d = tiny_llama.info.d_model
    tcs = {}
    for l in (0, 1):
        base = random_tc(d, seed=10 + l)
        tc = JumpReLUTranscoder(JumpReLUTranscoderConfig(d_in=d, d_sae=32, d_out=d, apply_b_dec_to_input=False))
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(tc, name).copy_(getattr(base, name))
            tc.threshold.fill_(0.3)
        tcs[l] = tc.eval()
    cache = capture_prompt(tiny_llama, tcs, PROMPT)
    pos = cache.n_tokens - 1
    assert ((cache.z[1] > 0) & (cache.z[1] <= 0.3)).sum() == 0  # the threshold is applied
    a, b = 11, 12
    g = build_graph(cache, logit=(a, b), pos=pos, max_depth=3, top_k=4, max_expand=30, min_frac=0.0)
    assert abs(g.target_node.flow - float(cache.logits[pos, a] - cache.logits[pos, b])) < 1e-5
    assert g.conservation_gap() < 1e-4
    assert g.target == ("logit", pos, a, b)
    feats = [n for n in g.nodes.values() if n.kind == "feature" and n.expanded]
    for n in feats:
        assert abs(n.errors["act_gap"]) < 1e-5


def test_circuit_explorer_headless(tiny_llama):
    tcs = tcs_for(tiny_llama)
    box = circuit_explorer(tiny_llama, tcs, PROMPT)
    g0 = box.graph()
    n0 = len(box.figure.data)
    assert g0.target[0] == "logit" and n0 > 0
    feat_opt = [v for _, v in box.target_dropdown.options if v[0] == "feature"][0]
    box.target_dropdown.value = feat_opt
    g1 = box.graph()
    assert g1.target == ("feature", feat_opt[1], len(g1.str_tokens) - 1, feat_opt[2])
    box.position_dropdown.value = 4
    assert box.graph().target_node.pos == 4
    label = box.node_dropdown.options[-1][0]
    box.node_dropdown.value = box.node_dropdown.options[-1][1]
    assert label.split(" ")[0] in box.details.value
    n_before = len(box.graph().nodes)
    box.top_k_slider.value = 1
    box.depth_slider.value = 1
    assert box.graph().params["top_k"] == 1 and box.graph().params["max_depth"] == 1
    assert len(box.graph().nodes) <= n_before
    box.show(2, ("logit", 9))
    assert box.graph().target == ("logit", 2, 9)
    assert box.figure.layout.title.text.startswith("Attribution graph of logit[9]@2")
    with pytest.raises(InputError):
        box.show(99, ("logit", 9))


@pytest.mark.smollm2
def test_smollm2_conservation_and_splice(smollm2):
    """SmolLM2 (RMSNorm gains, GQA group 3, the position-0 massive activation): every one-step and
    graph decomposition is exact, and splicing with the error term leaves the logits unchanged."""
    d = smollm2.info.d_model
    tcs = {3: random_tc(d, 256, seed=0), 6: random_tc(d, 256, seed=1)}
    prompt = "The capital of France is Paris. The capital of Italy is"
    cache = capture_prompt(smollm2, tcs, prompt)
    pos = cache.n_tokens - 1
    for i in active(cache, 6, pos):
        c = feature_contributions(cache, 6, pos, i)
        assert abs(c.total() - c.target_value) < 1e-4 * max(1, abs(c.target_value))
    tok = int(cache.logits[pos].argmax())
    lc = logit_contributions(cache, pos, tok)
    assert abs(lc.total() - lc.target_value) < 1e-4 * abs(lc.target_value)
    run = smollm2.run(prompt, capture=["head_out"], layers=[23], logits=None)
    u, _ = feature_vector(cache, 6, pos, 0)
    c = one_step(cache, u, pos, n_attn=24, n_mlp=0)
    np.testing.assert_allclose(c.heads[23].sum(-1).numpy(), (run["head_out", 23][0, pos] @ u).numpy(), atol=1e-4, rtol=1e-4)
    g = build_graph(cache, logit=tok, pos=pos, max_depth=3, top_k=5, max_expand=20, min_frac=0.01)
    assert g.conservation_gap() < 1e-3
    assert any(n.kind == "head" and n.expanded for n in g.nodes.values())
    clean = smollm2.run(prompt).logits
    spliced = smollm2.run(prompt, interventions=[SpliceTranscoder(tcs, with_error=True)]).logits
    assert (spliced - clean).abs().max() < 1e-3
    assert smollm2.leftover_hooks() == []


@pytest.mark.smollm2
def test_smollm2_shipped_transcoders_attribute_and_splice(smollm2):
    """The shipped transcoders pass the checks, decompose exactly, and splice with the error term
    leaves the logits unchanged (the clean logits come from the capture itself)."""
    from probes.transcoders.pretrained import load_pretrained, shipped_layers

    if not shipped_layers():
        pytest.skip("no shipped transcoders in probes/data/transcoders")
    tcs = load_pretrained(smollm2)
    prompt = "The capital of France is Paris. The capital of Italy is"
    cache = capture_prompt(smollm2, tcs, prompt)
    pos, hi = cache.n_tokens - 1, max(tcs)
    i = active(cache, hi, pos, 1)[0]
    c = feature_contributions(cache, hi, pos, i)
    assert abs(c.total() - c.target_value) < 1e-4 * max(1, abs(c.target_value))
    g = build_graph(cache, feature=(hi, pos, i), max_depth=2, top_k=5, max_expand=10)
    assert g.conservation_gap() < 1e-3
    spliced = smollm2.run(prompt, logits="last", interventions=[SpliceTranscoder(tcs, with_error=True)]).last_logits[0]
    assert (spliced - cache.logits[pos]).abs().max() < 1e-3
