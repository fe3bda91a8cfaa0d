"""Activation patching and attribution patching (probes/factual/patching.py, attribution_patching.py).

Unit tests on the tiny random models (byte tokenizer: one token per character, so equal-length
subjects give equal-length prompts; tiny-llama has GQA, 4 query heads on 2 KV heads). Random
models do not know capitals, so the answers are given explicitly.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probes.factual.attribution_patching import activation_grads, attribution_patching, compare_attribution
from probes.factual.patching import (ActivationPatch, _Cell, corrupt_subject, patch_heads, patch_residual,
                                     patched_logit_diffs, patching_pair)
from workbench.errors import InputError

CLEAN = "The capital of France is"


def _pair(model):
    return patching_pair(model, CLEAN, subject="France", substitutes=["Spain", "Brazil"], answer="P",
                         corrupted_answer="B")


@pytest.fixture
def pair(tiny):
    return _pair(tiny)


@pytest.fixture
def lpair(tiny_llama):
    return _pair(tiny_llama)


def _acts(model, ids, site):
    with torch.no_grad():
        run = model.run(ids[None], capture=[site], logits="last")
    return {l: run[site, l][0] for l in range(model.info.n_layers)}, run.last_logits[0]


# ------------------------------------------------------------------------------ pair building
def test_pair_swaps_subject_of_equal_length(tiny):
    p = patching_pair(tiny, CLEAN, subject="France", substitutes=["Spain", "Brazil"], answer="P", corrupted_answer="B")
    assert p.corrupted == "The capital of Brazil is"  # "Spain" has 5 bytes, skipped
    assert p.corrupted_subject == "Brazil" and p.n_tokens == len(CLEAN)
    assert p.diff_positions == [i for i, (a, b) in enumerate(zip(CLEAN, p.corrupted)) if a != b]
    tok = tiny.tokenizer
    assert (p.answer, p.corrupted_answer) == (tok("P")["input_ids"][0], tok("B")["input_ids"][0])


def test_pair_accepts_fact_like_objects(tiny_llama):
    fact = SimpleNamespace(prompt=CLEAN, subject="France", answer="Paris")
    subs = [SimpleNamespace(subject="Brazil", answer="Brasilia")]
    p = patching_pair(tiny_llama, fact, substitutes=subs)
    assert (p.answer_str, p.corrupted_answer_str) == ("P", "B")  # first token of each answer


def test_corrupt_subject_replaces_every_occurrence(tiny_llama):
    text, sub = corrupt_subject(tiny_llama, "France? Yes, France is", "France", ["Brazil"])
    assert text == "Brazil? Yes, Brazil is" and sub == "Brazil"


def test_bad_input(tiny_llama):
    m = tiny_llama
    with pytest.raises(InputError, match="same number of tokens"):
        patching_pair(m, CLEAN, "The capital of Spain is", answer="P", corrupted_answer="M")
    with pytest.raises(InputError, match="does not occur"):
        patching_pair(m, CLEAN, subject="Germany", substitutes=["Brazil"], answer="P", corrupted_answer="B")
    with pytest.raises(InputError, match="same token length"):
        patching_pair(m, CLEAN, subject="France", substitutes=["Spain", "Peru"], answer="P", corrupted_answer="B")
    with pytest.raises(InputError, match="same token"):
        patching_pair(m, CLEAN, "The capital of Brazil is", answer="P", corrupted_answer="P")
    with pytest.raises(InputError, match="corrupted=<prompt> or subject"):
        patching_pair(m, CLEAN)
    p = patching_pair(m, CLEAN, "The capital of Brazil is", answer="P", corrupted_answer="B")
    with pytest.raises(InputError, match="direction"):
        patch_heads(m, p, direction="backwards")
    with pytest.raises(InputError, match="patch_residual patches"):
        patch_residual(m, p, site="pattern")
    with pytest.raises(InputError, match="out of range"):
        patch_heads(m, p, positions=[len(CLEAN)])
    with pytest.raises(InputError, match="out of range"):
        attribution_patching(m, p, layers=[5])
    with pytest.raises(InputError, match="same logit difference"):  # identical prompts: nothing to normalise
        patch_heads(m, patching_pair(m, CLEAN, CLEAN, answer="P", corrupted_answer="B"))
    assert m.leftover_hooks() == []


def test_shape_mismatch_inside_hook_raises_and_leaves_no_hook(tiny_llama):
    m = tiny_llama
    src = torch.zeros(3, m.info.d_model)  # a 3-token source for a longer prompt
    with pytest.raises(InputError, match="same number of tokens"):
        m.run(CLEAN, interventions=[ActivationPatch("resid_pre", 1, src)])
    assert m.leftover_hooks() == []
    with pytest.raises(InputError, match="heads= only applies"):
        m.run(CLEAN, interventions=[ActivationPatch("resid_pre", 1, src, heads=[0])])
    assert m.leftover_hooks() == []


# ------------------------------------------------------------------------------ exact properties
def test_clean_into_clean_is_identity(tiny, pair):
    m = tiny
    acts_z, logits = _acts(m, pair.clean_ids, "z")
    acts_r, _ = _acts(m, pair.clean_ids, "resid_pre")
    # single-site intervention: bit-for-bit the same logits
    with torch.no_grad():
        out = m.run(pair.clean_ids[None], logits="last",
                    interventions=[ActivationPatch("resid_pre", 1, acts_r[1]), ActivationPatch("z", 0, acts_z[0])])
    assert torch.equal(out.last_logits[0], logits)
    # every cell of both grids, batched: the clean logit difference everywhere, metric 1
    ld_clean = float(logits[pair.answer] - logits[pair.corrupted_answer])
    ld_corr = float(_acts(m, pair.corrupted_ids, "z")[1][[pair.answer, pair.corrupted_answer]] @ torch.tensor([1., -1.]))
    T, L, H = pair.n_tokens, m.info.n_layers, m.info.n_heads
    cells = [_Cell(l, torch.tensor([p])) for l in range(L) for p in range(T)]
    ld = patched_logit_diffs(m, pair, "resid_pre", pair.clean_ids, acts_r, cells, batch_size=16)
    metric = (ld - ld_corr) / (ld_clean - ld_corr)
    torch.testing.assert_close(metric, torch.ones_like(metric), atol=1e-5, rtol=0)
    cells = [_Cell(l, torch.arange(T), (h,)) for l in range(L) for h in range(H)]
    ld = patched_logit_diffs(m, pair, "z", pair.clean_ids, acts_z, cells, batch_size=3)
    torch.testing.assert_close((ld - ld_corr) / (ld_clean - ld_corr), torch.ones(L * H), atol=1e-5, rtol=0)


def test_corrupted_into_clean_at_layer0_recovers_corrupted_run(tiny, pair):
    m = tiny
    acts, corr_logits = _acts(m, pair.corrupted_ids, "resid_pre")
    with torch.no_grad():
        out = m.run(pair.clean_ids[None], logits="last", interventions=[ActivationPatch("resid_pre", 0, acts[0])])
    torch.testing.assert_close(out.last_logits[0], corr_logits, atol=1e-5, rtol=0)
    # the grid (noising): at layer 0 a position whose token is the same in both prompts changes nothing
    res = patch_residual(m, pair, direction="noise", layers=[0])
    same = [p for p in range(pair.n_tokens) if p not in pair.diff_positions]
    assert res.n_patched_runs == len(pair.diff_positions)  # identical cells are no-ops, not run
    assert torch.equal(res.values[0, same], torch.ones(len(same)))
    assert (res.values[0, pair.diff_positions] != 1).all()
    # denoising at the last layer's last position restores the clean answer exactly (resid_post)
    res = patch_residual(m, pair, site="resid_post", layers=[-1], positions="last")
    assert abs(float(res.values[0, 0]) - 1) < 1e-5


def test_all_heads_of_a_layer_equal_attn_out(tiny, pair):
    m = tiny
    z, _ = _acts(m, pair.clean_ids, "z")
    attn, _ = _acts(m, pair.clean_ids, "attn_out")
    H = m.info.n_heads
    for layer in range(m.info.n_layers):
        with torch.no_grad():
            a = m.run(pair.corrupted_ids[None], logits="last",
                      interventions=[ActivationPatch("z", layer, z[layer], heads=list(range(H)))]).last_logits
            b = m.run(pair.corrupted_ids[None], logits="last",
                      interventions=[ActivationPatch("attn_out", layer, attn[layer])]).last_logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # and one head only differs from the unpatched run (the patch does something)
    base = m.run(pair.corrupted_ids[None], logits="last").last_logits
    assert not torch.allclose(a, base)


def test_batched_head_grid_equals_single_runs(tiny_llama, lpair):
    m, pair = tiny_llama, lpair
    res = patch_heads(m, pair, batch_size=3)  # rows of several layers share a batch
    assert res.n_patched_runs == m.info.n_layers * m.info.n_heads and res.n_forward == 1 + 3
    z, _ = _acts(m, pair.clean_ids, "z")
    for layer, head in [(0, 1), (1, 3), (1, 0)]:
        with torch.no_grad():
            lg = m.run(pair.corrupted_ids[None], logits="last",
                       interventions=[ActivationPatch("z", layer, z[layer], heads=[head])]).last_logits[0]
        ld = float(lg[pair.answer] - lg[pair.corrupted_answer])
        assert abs(ld - float(res.ld[layer, head])) < 1e-4
    last = patch_heads(m, pair, positions="last")
    assert last.positions == [pair.n_tokens - 1]
    assert not torch.allclose(last.values, res.values)


# ------------------------------------------------------------------------------ attribution patching
def test_attribution_matches_patching_for_tiny_differences(tiny, pair):
    """First order: for a source a + eps * u the estimate equals the real change up to O(eps^2)."""
    m = tiny
    L, H, T = m.info.n_layers, m.info.n_heads, pair.n_tokens
    ld0, acts, grads = activation_grads(m, pair.clean_ids, pair, {"z": list(range(L))})
    gen = torch.Generator().manual_seed(0)
    errs = {}
    for eps in (1e-1, 2.5e-2):
        src = {l: acts[("z", l)] + eps * torch.randn(acts[("z", l)].shape, generator=gen) for l in range(L)}
        est = torch.stack([((src[l] - acts[("z", l)]) * grads[("z", l)]).sum((0, 2)) for l in range(L)]).flatten()
        cells = [_Cell(l, torch.arange(T), (h,)) for l in range(L) for h in range(H)]
        real = patched_logit_diffs(m, pair, "z", pair.clean_ids, src, cells, batch_size=64) - ld0
        errs[eps] = float((est - real).abs().max() / real.abs().max())
        assert np.corrcoef(est.numpy(), real.numpy())[0, 1] > 0.95
    assert errs[2.5e-2] < 0.05
    assert errs[2.5e-2] < errs[1e-1] / 2  # the gap shrinks with eps (first-order estimate)


def test_attribution_patching_passes_and_results(tiny_llama, lpair, monkeypatch):
    m, pair = tiny_llama, lpair
    n_fwd, n_grad = [], []
    handle = m.bridge.embed.register_forward_hook(lambda *a: n_fwd.append(1))
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: n_grad.append(1) or real_grad(*a, **k))
    try:
        est = attribution_patching(m, pair)
    finally:
        handle.remove()
    assert (len(n_fwd), len(n_grad)) == (2, 1) and (est.n_forward, est.n_backward) == (2, 1)
    L, H, T = m.info.n_layers, m.info.n_heads, pair.n_tokens
    assert est.head_effect.shape == (L, H) and est.resid_effect.shape == (L, T)
    # resid_pre at layer 0 equals the embedding: positions with the same token have zero estimate
    same = [p for p in range(T) if p not in pair.diff_positions]
    assert est.resid_effect[0, same].abs().max() == 0
    comp = compare_attribution(m, pair)
    assert -1 <= comp.pearson <= 1 and -1 <= comp.spearman <= 1 and comp.pearson > 0
    df = comp.to_frame()
    assert len(df) == L * H and {"estimated_effect", "actual_effect"} <= set(df.columns)
    torch.testing.assert_close(torch.tensor(df.estimated_effect.values).reshape(L, H).float(),
                               comp.attribution.head_effect)
    fig = comp.figure()
    assert len(fig.data[1].x) == L * H
    for obj in (est, comp, comp.actual):
        assert obj._repr_html_() and obj.figure().data
    assert est.resid_figure().data and len(est.resid_frame()) == L * T
    with pytest.raises(InputError, match="same arguments"):
        est.compare(patch_heads(m, pair, positions="last"))


def test_residual_result_views(tiny_llama, lpair):
    pair = lpair
    res = patch_residual(tiny_llama, pair, positions=[-1, 0], batch_size=5)
    assert res.positions == [0, pair.n_tokens - 1] and res.values.shape == (2, 2)
    df = res.to_frame()
    assert len(df) == 4 and df["token"].iloc[0].startswith("0:")
    fig = res.figure()
    assert list(fig.data[0].x) == [pair.position_labels()[0], pair.position_labels()[-1]]
    assert "ResidualPatchingResult" in res._repr_html_()


# ------------------------------------------------------------------------------ SmolLM2
@pytest.mark.smollm2
def test_smollm2_patching_and_attribution(smollm2):
    m = smollm2
    pair = patching_pair(m, "The capital city of France is", subject="France", substitutes=["Japan"])
    assert (pair.answer_str, pair.corrupted_answer_str) == (" Paris", " Tokyo")
    layers = [21, 23, 28, 29]
    comp = compare_attribution(m, pair, layers=layers)
    print(comp)
    assert comp.pearson > 0.5 and comp.spearman > 0.5
    # the subject-mover head L23H4 (docs/factual.md) tops both rankings
    df = comp.to_frame()
    for col in ("actual_effect", "estimated_effect"):
        best = df.loc[df[col].idxmax()]
        assert (best["layer"], best["head"]) == (23, 4)
    res = patch_residual(m, pair, layers=[0, 8, 29], positions=[4, 5])  # subject " France", last " is"
    v = res.values
    assert v[0, 0] > 0.9 and v[1, 0] > 0.9  # early: the subject position carries the answer
    assert abs(float(v[0, 1])) < 1e-4 and v[2, 1] > 0.9  # last position: nothing at the embedding, everything at the end
