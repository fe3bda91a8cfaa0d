"""Logit lens, fitted linear lens and FFN sub-updates (probes.factual.lenses / ffn_updates)."""
import pytest
import torch

import workbench as wb
from probes.factual.ffn_updates import ffn_layer_summary, ffn_sub_updates, final_norm_direction
from probes.factual.lenses import (LinearLens, compare_lenses, lens_corpus, fit_least_squares, fit_linear_lens,
                                   lens_trajectory, logits_from_resid, split_texts)

CAPITAL = "User: What is the capital city of France?\nAssistant: The capital city of France is"


def test_least_squares_recovers_a_known_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g) * torch.linspace(0.5, 3, 16)
    m, c = torch.randn(16, 12, generator=g), torch.randn(12, generator=g)
    a, b = fit_least_squares(x, x @ m + c, ridge=0.0)
    assert torch.allclose(a, m, atol=1e-5) and torch.allclose(b, c, atol=1e-5)
    a0, b0 = fit_least_squares(x, x @ m, ridge=0.0, bias=False)
    assert torch.allclose(a0, m, atol=1e-5) and torch.equal(b0, torch.zeros(12))
    a_r, _ = fit_least_squares(x, x @ m + c, ridge=1.0)  # ridge shrinks the map
    assert a_r.norm() < m.norm()


def test_logit_lens_at_the_last_layer_equals_the_logits(tiny):
    L = tiny.info.n_layers
    run = tiny.run(["hello there, world", "a b"], capture=["resid_post"], layers=[L - 1])
    with torch.no_grad():
        lg = logits_from_resid(tiny, run["resid_post", L - 1])
    assert torch.allclose(lg, run.logits, atol=1e-5)


def test_linear_lens_is_the_identity_at_the_last_layer(tiny):
    L = tiny.info.n_layers
    texts = lens_corpus(n_pydoc=6)
    lens = fit_linear_lens(tiny, texts[:10], layers=[0, L - 1], ridge=0.0)
    eye = torch.eye(tiny.info.d_model)
    assert torch.allclose(lens.maps[1, :-1], eye, atol=1e-4) and lens.maps[1, -1].abs().max() < 1e-3
    assert lens.n_fit_tokens > tiny.info.d_model
    cmp = compare_lenses(tiny, texts[10:14], lens=lens, ks=(1, 3))
    assert cmp.precision["logit"][1, 0] == 1.0 and cmp.precision["linear"][1, 0] == 1.0
    assert ((cmp.precision["logit"] >= 0) & (cmp.precision["logit"] <= 1)).all()
    assert (cmp.precision["linear"][:, 0] <= cmp.precision["linear"][:, 1]).all()  # p@1 <= p@3
    df = cmp.to_frame()
    assert set(df.lens) == {"logit", "linear"} and len(df) == 4
    assert len(cmp.figure().data) == 2 and "precision@1" in cmp._repr_html_()


def test_compare_lenses_holds_texts_out():
    texts = [f"text {i}" for i in range(8)]
    fit, held = split_texts(texts, 0.25, seed=0)
    assert len(held) == 2 and not set(fit) & set(held) and sorted(fit + held) == sorted(texts)


def test_lens_trajectory_matches_the_model(tiny_llama):
    lens = fit_linear_lens(tiny_llama, lens_corpus(n_pydoc=4)[:8], ridge=1e-3)
    tr = lens_trajectory(tiny_llama, "the cat sat on the", " m", lens=lens)
    L = tiny_llama.info.n_layers
    assert tr.rank["logit"][L - 1] == tr.final_rank
    assert tr.prob["logit"][L - 1] == pytest.approx(tr.final_prob, abs=1e-6)
    assert len(tr.to_frame()) == 2 * L and len(tr.figure().data) == 4 and tr._repr_html_()


def test_lens_save_load_round_trip(tiny_llama, tiny_gpt2, tmp_path):
    lens = fit_linear_lens(tiny_llama, lens_corpus(n_pydoc=2)[:4], layers=[0])
    lens.save(tmp_path / "lens")
    back = LinearLens.load(tmp_path / "lens", tiny_llama)
    assert torch.equal(back.maps, lens.maps) and back.layers == [0]
    with pytest.raises(wb.InputError, match="fitted on"):
        LinearLens.load(tmp_path / "lens", tiny_gpt2)


def test_lens_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="empty"):
        fit_linear_lens(tiny_llama, [])
    with pytest.raises(wb.InputError, match="out of range"):
        fit_linear_lens(tiny_llama, ["some text here"], layers=[7])
    with pytest.raises(wb.InputError, match="at least 2 texts"):
        compare_lenses(tiny_llama, ["only one text"])
    with pytest.raises(wb.InputError, match="position"):
        lens_trajectory(tiny_llama, "abc", " a", position=10)
    with pytest.raises(wb.InputError, match="Answer"):
        lens_trajectory(tiny_llama, "abc", "")


# ---------------------------------------------------------------------------------------------- FFN sub-updates
@pytest.mark.parametrize("layer", [0, 1])
def test_sub_updates_sum_to_mlp_out(tiny, layer):
    r = ffn_sub_updates(tiny, "the quick brown fox", layer, answer=" a", top_k=5)
    run = tiny.run("the quick brown fox", capture=["mlp_out"], layers=[layer])
    assert torch.allclose(r.mlp_out, run["mlp_out", layer][0, -1], atol=1e-6)
    assert r.reconstruction_error() < 1e-4
    assert torch.allclose(r.sub_updates().sum(0) + r.bias, r.mlp_out, atol=1e-4)
    scores = r.scores[r.top]
    assert (scores[:-1] >= scores[1:]).all() and scores[0] == r.scores.max()
    df = r.to_frame()
    assert len(df) == 5 and len(r.top_tokens[0]) == 10 and r.figure().data and r._repr_html_()


def test_frozen_final_norm_direction_reads_the_logit(tiny):
    """u · x_final (+ the norm's bias term for LayerNorm) + b_U equals the model's logit exactly."""
    L, a = tiny.info.n_layers, 42
    run = tiny.run("some words here", capture=["resid_post", "final_norm_scale"], layers=[L - 1])
    x, s = run["resid_post", L - 1][0, -1], run["final_norm_scale"][0, -1, 0]
    b = tiny.bridge
    with torch.no_grad():
        u = final_norm_direction(tiny, s, b.W_U[:, a])
        beta = getattr(b.ln_final._original_component, "bias", None)
        const = b.b_U[a] + (beta @ b.W_U[:, a] if beta is not None else 0)
        assert float(u @ x + const) == pytest.approx(float(run.logits[0, -1, a]), abs=1e-4)


def test_answer_ranking_and_layer_summary(tiny_llama):
    r = ffn_sub_updates(tiny_llama, "the quick brown fox", 1, answer=" a", top_k=3, rank_by="answer")
    c = r.answer_contrib
    assert abs(float(c[r.top[0]])) == pytest.approx(float(c.abs().max()))
    s = ffn_layer_summary(tiny_llama, "the quick brown fox", " a")
    assert s.total[1] == pytest.approx(float(c.sum()), abs=1e-5)
    assert len(s.to_frame()) == tiny_llama.info.n_layers and s.figure().data and s._repr_html_()


def test_ffn_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="needs an answer"):
        ffn_sub_updates(tiny_llama, "abc", 0, rank_by="answer")
    with pytest.raises(wb.InputError, match="out of range"):
        ffn_sub_updates(tiny_llama, "abc", 5)
    with pytest.raises(wb.InputError, match="top_k"):
        ffn_sub_updates(tiny_llama, "abc", 0, top_k=0)


# ---------------------------------------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_smollm2_logit_lens_puts_the_capital_on_top_at_the_last_layer(smollm2):
    tr = lens_trajectory(smollm2, CAPITAL, " Paris")
    assert tr.final_rank == 0 and tr.rank["logit"][-1] == 0
    assert tr.rank["logit"][:10].min() > 0  # not decodable in the early layers
    r = ffn_sub_updates(smollm2, CAPITAL, 27, answer=" Paris", top_k=10)
    assert r.reconstruction_error() < 1e-3


@pytest.mark.smollm2
def test_smollm2_linear_lens_beats_the_logit_lens_in_the_middle(smollm2):
    texts = lens_corpus(n_pydoc=12)  # 12 domain texts + 12 pydoc chunks, cut to 64 tokens each
    cmp = compare_lenses(smollm2, texts, layers=[10, 15, 20], max_tokens=64, max_eval_tokens=150, ridge=1e-2)
    assert cmp.n_fit_tokens > 800
    p = cmp.wide()
    assert (p["linear lens"] >= p["logit lens"]).all(), p
