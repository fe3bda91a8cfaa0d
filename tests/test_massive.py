"""Residual-state peaks: norms equal HF output_hidden_states, the peak/appear/removed logic on
synthetic ratios, the report API; SmolLM2's dim-507 peak at position 0 (numbers in the module docstring)."""
import pytest
import torch

from probes.sinks.massive_activations import MassiveActivationReport, _massive_run, massive_activations
from workbench.errors import InputError
from workbench.loading.tiny import build_tiny  # a never-wrapped HF copy, same seed
from conftest import SMOL_PROMPTS

PROMPTS = ["the cat sat on the mat.", "a dog ran far."]


def test_norms_equal_hf_hidden_states(tiny):
    r = massive_activations(tiny, PROMPTS)
    ids, lengths = tiny.tokenize(PROMPTS)
    with torch.no_grad():
        hs = build_tiny(tiny.info.name)[0](ids, output_hidden_states=True).hidden_states  # L + 1; the last one is final-normed
    L = tiny.info.n_layers
    assert r.norms.shape == (2, L + 1, ids.shape[1])
    for s in range(L):  # stage s = embedding (s = 0) or output of block s - 1
        ref = hs[s].norm(dim=-1)
        for b, n in enumerate(lengths):
            assert torch.allclose(r.norms[b, s, :n], ref[b, :n], rtol=1e-5, atol=1e-5), s
    assert r.norms[1, :, lengths[1]:].isnan().all()


def test_peak_statistics_are_consistent(tiny_llama):
    r = massive_activations(tiny_llama, PROMPTS, top_k=4)
    run = tiny_llama.run(PROMPTS, capture=["resid_post"], logits=None)
    for b, n in enumerate(r.lengths):
        p = int(r.peak_position[b])
        others = [j for j in range(n) if j != p]
        for s in range(1, 3):
            x = run["resid_post", s - 1][b]
            med = x[others].norm(dim=-1).median()
            assert r.ratio[b, s].item() == pytest.approx((x[p].norm() / med).item(), rel=1e-5)
            top = x[p].abs().topk(4)
            assert r.top_dims[b, s].tolist() == top.indices.tolist()
            assert torch.allclose(r.top_values[b, s], x[p, top.indices])
            assert r.top_share[b, s].item() == pytest.approx(float((top.values ** 2).sum() / (x[p] ** 2).sum()), rel=1e-5)


def test_massive_run_logic():
    t = torch.tensor
    assert _massive_run(t([1.0, 2, 3]), 10) == (None, None, None)
    # an early weak run (stages 1-2), the main run from 4 to 6, gone at 7
    assert _massive_run(t([1.0, 12, 11, 3, 50, 200, 40, 5]), 10) == (4, 7, 1)
    assert _massive_run(t([1.0, 20, 30]), 10) == (1, None, 1)  # lasts to the last block


def test_report_api_and_bad_input(tiny_llama):
    r = massive_activations(tiny_llama, PROMPTS, factor=1.5)
    assert isinstance(r, MassiveActivationReport)
    assert r.stage_labels == ["embed", "L0", "L1"]
    df = r.to_frame()
    assert len(df) == 2 * 3 and {"stage", "peak_norm", "median_other", "ratio", "top_dims", "massive"} <= set(df.columns)
    fig = r.figure(prompt=1, positions=[1])
    assert len(fig.data) == 4
    assert "MassiveActivationReport(" in repr(r)
    assert isinstance(r.massive_dims(0), list)
    with pytest.raises(InputError, match="has 1 token"):
        massive_activations(tiny_llama, ["x"])
    with pytest.raises(InputError, match="factor"):
        massive_activations(tiny_llama, PROMPTS, factor=1.0)
    with pytest.raises(InputError, match="out of range"):
        massive_activations(tiny_llama, PROMPTS, layers=[-3])
    with pytest.raises(InputError, match="outside prompt"):
        r.figure(positions=[99])




def test_planted_massive_activation_behind_a_scaled_embedding_outlier(tiny_family_models):
    """tiny-gemma2 (embeddings × √d, post norms): the first token's embedding row is made an outlier (so by the
    plain ratio it is "massive" from the embedding on), and block 1's MLP is edited to write a huge value into
    dim 37 at that token only. The detector must report block 1 and dim 37, not the embedding."""
    m = tiny_family_models("tiny-gemma2")
    prompts = ["# the cat sat on the mat.", "# a dog ran far away."]
    d_in, d_out, unit = 5, 37, 11
    first = int(m.tokenize("#")[0][0, 0])
    W = m.weights()
    with m.edit_weights() as ed:
        W_E = W.W_E.clone()
        W_E[:, d_in] = 0
        W_E[first, d_in] = 30.0  # × √d = 240: only the first token has anything in d_in
        ed.set_embedding(W_E)
        gate, up, down = (m.linear_weight(1, k).clone() for k in ("gate", "up", "down"))
        gate[unit], up[unit] = 0, 0
        gate[unit, d_in], up[unit, d_in] = 2.0, 2.0  # one MLP unit that fires on d_in only
        down[d_out] = 0
        down[d_out, unit] = 10.0  # ... and writes into d_out only
        for kind, w in (("gate", gate), ("up", up), ("down", down)):
            ed.set_linear(1, kind, weight=w)
        gain = W.layers[1].ln2_post.w.clone()
        gain[d_out] = 49.0  # Gemma's post-MLP norm multiplies by 1 + w: 50 on d_out
        ed.set_norm(1, "ln2_post", weight=gain)
        r = massive_activations(m, prompts)
    for b in range(2):
        assert float(r.ratio[b, 0]) > r.factor and float(r.ratio[b, 1]) > r.factor  # the trap: plain ratio
        assert not bool(r.massive[b, :2].any())  # ... but nothing written before block 1 is massive
        assert int(r.peak_position[b]) == 0 and r.appears[b] == 2 and r.peak_stage[b] == 2  # block 1's output
        assert r.stage_name(r.appears[b]) == "block 1's output"
        assert r.peak_dims(b)[0][0] == d_out and r.peak_dims(b)[0][1] > 300 and r.peak_norm[b] > 400
        assert r.massive_dims(b)[0] == d_out
        assert float(r.embed_ratio[b]) > r.factor and "not counted" in repr(r)
    assert {"written_ratio", "massive"} <= set(r.to_frame().columns)


@pytest.mark.smollm2
def test_smollm2_peak_at_position0_carried_by_dim_507(smollm2):
    r = massive_activations(smollm2, SMOL_PROMPTS)
    for b in range(len(SMOL_PROMPTS)):
        assert int(r.peak_position[b]) == 0
        s = int(r.ratio[b].argmax())
        assert r.ratio[b, s] > 10 and r.peak_stage[b] == s
        assert r.top_dims[b, s, 0] == 507
        assert r.top_values[b, s, 0].abs() > 0.9 * r.norms[b, s, 0]  # one dim carries the peak
        assert r.appears[b] == 12  # after block 11 (stage 0 is the embedding)
        assert r.massive_dims(b)[0] == 507
        # the numbers stated in the module docstring (stage s = block s - 1)
        assert s == 12 and 150 < r.ratio[b, s] < 200
        assert 21_000 < r.norms[b, s, 0] < 25_500 and r.top_values[b, s, 0] > 0.99 * r.norms[b, s, 0]
        assert (r.ratio[b, 12:20] > 100).all() and (r.ratio[b, 22:] < 100).all() and r.ratio[b, 28] < 45
        peak = r.norms[b, 12:29, 0]
        assert (peak.max() - peak.min()) < 0.02 * peak.max()  # flat through block 27
        assert r.norms[b, 29, 0] < 0.5 * peak.min() and r.removed[b] == 30
