"""SAT probe (probes.factual.sat_probe): features, the planted-feature check, bad input, SmolLM2."""
import numpy as np
import pytest
import torch

import workbench as wb
from probes.factual.lre import country_relation
from probes.factual.sat_probe import _risk, attention_features, fit_sat_probe, sat_probe


def test_probe_recovers_a_planted_feature():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (160, 24))
    y = (x[:, 7] > 0.5).astype(int)
    res = fit_sat_probe(x, y, confidence=rng.uniform(size=160), layers=[0, 1, 2], n_heads=8)
    m = res.metrics()
    assert m.loc["probe", "auroc"] > 0.97
    assert 0.35 < m.loc["confidence", "auroc"] < 0.65  # noise baseline
    w = np.abs(res.coef).ravel()
    assert w.argmax() == 7 and w[7] > 5 * np.delete(w, 7).max()
    top = res.top_heads(1)
    assert (top["layer"][0], top["head"][0]) == (0, 7)
    assert m.loc["probe", "risk_top20"] < 0.1 and m.loc["probe", "risk_bottom20"] > 0.9
    assert len(res.to_frame()) == 160 and len(res.figure().data) == 5 and "AUROC" in repr(res) and res._repr_html_()


def test_risk_at_20_percent():
    y = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0])
    score = np.arange(10)[::-1].astype(float)  # highest score first
    assert _risk(score, y) == (0.0, 1.0)
    assert _risk(-score, y) == (1.0, 0.0)


def test_attention_features_are_sums_of_the_pattern(tiny_llama):
    prompts = ["the cat is big", "a dog runs far away"]
    pos = [[1, 2], [3]]
    feats, last = attention_features(tiny_llama, prompts, pos, reduce="sum")
    L, H = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    assert feats.shape == (2, L * H) and ((feats >= 0) & (feats <= 1 + 1e-6)).all()
    run = tiny_llama.run(prompts[1], capture=["pattern"])
    want = torch.stack([run["pattern", l][0, :, -1, 3] for l in range(L)]).reshape(-1)
    assert np.allclose(feats[1], want.numpy(), atol=1e-6)
    assert torch.allclose(last[1], run.logits[0, -1], atol=1e-5)
    fmax, _ = attention_features(tiny_llama, prompts, pos, reduce="max")
    assert (fmax <= feats + 1e-7).all()


def test_sat_bad_input(tiny_llama):
    x = np.random.default_rng(0).uniform(size=(12, 4))
    with pytest.raises(wb.InputError, match="Too few samples"):
        fit_sat_probe(x, np.array([1] * 9 + [0] * 3))
    with pytest.raises(wb.InputError, match="0/1"):
        fit_sat_probe(x, np.arange(12))
    with pytest.raises(wb.InputError, match="before the last token"):
        attention_features(tiny_llama, ["the cat"], [[6]])
    with pytest.raises(wb.InputError, match="no answer"):
        sat_probe(tiny_llama, [("the cat is big", "cat")])
    # a random tiny model never gets a capital right: one class only, refused clearly
    with pytest.raises(wb.InputError, match="Too few samples"):
        sat_probe(tiny_llama, country_relation("capital", 6))


@pytest.mark.smollm2
def test_smollm2_sat_probe_on_country_prompts(smollm2):
    res = sat_probe(smollm2, country_relation("capital", 40))
    m = res.metrics()
    assert 0.5 < res.accuracy < 0.95  # both classes present
    assert res.features.shape == (40, 270)
    for method in ("probe", "confidence", "mean_attention"):
        assert 0 <= m.loc[method, "auroc"] <= 1
    assert m.loc["confidence", "auroc"] > 0.5  # the model's confidence carries signal (0.67 measured)


def test_constraint_features_concatenate_one_block_per_constraint(tiny_llama):
    from probes.factual.sat_probe import constraint_attention_features

    prompts = ["the cat is big and red", "a dog runs far away now"]
    pos = [[[1, 2], [4]], [[3], [0, 5]]]
    feats, last = constraint_attention_features(tiny_llama, prompts, pos)
    L, H = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    assert feats.shape == (2, 2 * L * H) and ((feats >= 0) & (feats <= 1 + 1e-6)).all()
    for k in range(2):
        one, last1 = attention_features(tiny_llama, prompts, [p[k] for p in pos])
        assert np.allclose(feats[:, k * L * H:(k + 1) * L * H], one, atol=1e-6)
    assert torch.allclose(last, last1)
    # the two constraints of a prompt share the last token's attention: together at most 1 per head
    assert (feats[:, :L * H] + feats[:, L * H:] <= 1 + 1e-6).all()
    with pytest.raises(wb.InputError, match="same number"):
        constraint_attention_features(tiny_llama, prompts, [[[1]], [[1], [2]]])
    with pytest.raises(wb.InputError, match="before the last token"):
        constraint_attention_features(tiny_llama, prompts, [[[1], [40]], [[1], [2]]])


def test_two_constraint_probe_finds_a_feature_of_the_second_constraint():
    rng = np.random.default_rng(1)
    L, H, n = 3, 4, 200
    x = rng.uniform(0, 1, (n, 2 * L * H))
    y = (x[:, L * H + 1 * H + 2] > 0.5).astype(int)  # constraint 1, layer 1, head 2
    res = fit_sat_probe(x, y, confidence=rng.uniform(size=n), layers=[0, 1, 2], n_heads=H, n_constraints=2,
                        baselines={"top1_prob": rng.uniform(size=n)})
    m = res.metrics()
    assert m.loc["probe", "auroc"] > 0.95 and 0.35 < m.loc["top1_prob", "auroc"] < 0.65
    assert res.coef.shape == (2 * L, H) and res.n_constraints == 2
    top = res.top_heads(1).iloc[0]
    assert (top["constraint"], top["layer"], top["head"]) == (1, 1, 2)
    assert len(res.figure().data) == 6  # probe, confidence, top1_prob, mean attention, diagonal, heatmap
    # the same label read from constraint 0 alone carries no signal
    only_first = fit_sat_probe(x[:, :L * H], y, layers=[0, 1, 2], n_heads=H)
    assert only_first.metrics().loc["probe", "auroc"] < 0.7
    with pytest.raises(wb.InputError, match="constraint"):
        fit_sat_probe(x, y, layers=[0, 1, 2], n_heads=H, n_constraints=3)
    # seeded end to end (liblinear's L1 solver shuffles): a refit gives the same out-of-fold scores
    noisy = (x[:, 5] + rng.normal(0, 0.5, n) > 0.5).astype(int)
    a, b = (fit_sat_probe(x, noisy, layers=[0, 1, 2], n_heads=H, n_constraints=2).scores["probe"] for _ in range(2))
    assert np.array_equal(a, b)
