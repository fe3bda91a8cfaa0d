"""Low rank: exact at full rank, LASER's knobs and sweep, SVD-LLM's truncation-aware whitening, bytes."""
import pytest
import torch

import efficiency as ef
from efficiency.lowrank import (SVDLLM, LowRankLinear, laser_sweep, truncated_svd, whitened_factors,
                                whitened_svd)
from efficiency.lowrank.svd_llm import loss_ranks
from efficiency_helpers import HELD_OUT, TEXTS, deep_tiny_llama, same_params, snapshot
from workbench import InputError

PROMPT = HELD_OUT[0][:90]
FACT_PROMPTS = ["The cat sat on the", "Water is", "My name is", "One two three", "a b c d", "x y z"] * 2
FACT_ANSWERS = [" mat", " wet", " Bob", " four", " e", " w"] * 2


@pytest.fixture(scope="module")
def m6():
    return deep_tiny_llama()


def test_full_rank_svd_reproduces_the_weights():
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(0))
    B, A = truncated_svd(w, 40)
    assert torch.allclose(B @ A, w, atol=1e-5)
    lin = LowRankLinear(B, A)
    x = torch.randn(3, 40)
    assert torch.allclose(lin(x), x @ w.T, atol=1e-4) and lin.rank == 40
    B4, A4 = truncated_svd(w, 4)  # Eckart-Young: the error is the dropped singular values
    s = torch.linalg.svdvals(w.double())
    assert float((w.double() - (B4 @ A4).double()).norm() ** 2) == pytest.approx(float((s[4:] ** 2).sum()), rel=1e-4)
    with pytest.raises(InputError, match="larger than the matrix allows"):
        truncated_svd(w, 41)


def test_laser_edit_cost_and_restore(m6):
    snap = snapshot(m6)
    ref = m6.run(PROMPT).logits
    meth = ef.get_method("laser", layer=2, kind="down", rank=4)
    c = meth.cost(m6, 10)
    with m6.intervene(meth.intervention(m6)):
        assert m6.active_edits() == [("L2.down", "replaced by LowRankLinear")]
        assert m6.parameter_bytes() == c.weight_bytes < c.baseline_weight_bytes
        w = m6.linear_weight(2, "down")
        assert int(torch.linalg.matrix_rank(w.double(), rtol=1e-5)) == 4
    assert same_params(m6, snap) and torch.equal(m6.run(PROMPT).logits, ref)
    full = ef.get_method("laser", layer=2, kind="down", rho=1.0)  # above break-even: dense product, same bytes
    with m6.intervene(full.intervention(m6)):
        assert m6.active_edits() == [("L2.down", "weights edited")]
        assert torch.allclose(m6.run(PROMPT).logits, ref, atol=1e-4)


def test_laser_bad_input(m6):
    with pytest.raises(InputError, match="larger than the matrix allows"):
        ef.get_method("laser", layer=0, kind="k", rank=33).intervention(m6)
    with pytest.raises(InputError, match="rank 0"):
        ef.get_method("laser", layer=0, kind="up", rho=0.001).intervention(m6)
    with pytest.raises(InputError, match="not both"):
        ef.get_method("laser", rank=3, rho=0.5)
    with pytest.raises(InputError, match="out of range"):
        ef.get_method("laser", layer=9, kind="up").intervention(m6)
    with pytest.raises(InputError, match="one of 'q'"):
        ef.get_method("laser", kind="mlp")


def test_laser_sweep_selects_on_one_half_and_reports_the_other(m6):
    sw = laser_sweep(m6, FACT_PROMPTS, FACT_ANSWERS, layers=[4, 5], kinds=("down",), rhos=(0.25, 0.5))
    assert len(sw.grid) == 4 and sw.n_select + sw.n_heldout == len(FACT_PROMPTS)
    top = sw.grid.sort_values(["accuracy", "mean_logprob"], ascending=False).iloc[0]
    assert (sw.best["layer"], sw.best["kind"], sw.best["rank"]) == (int(top.layer), top.kind, int(top["rank"]))
    h = sw.heldout
    assert h["ci_low"] <= h["delta"] <= h["ci_high"]
    assert sw.figure() is not None and "held out" in sw.summary()
    with pytest.raises(InputError, match="as many answers"):
        laser_sweep(m6, FACT_PROMPTS, FACT_ANSWERS[:3])


@pytest.fixture(scope="module")
def svd_llm(m6):
    meth = SVDLLM(ratio=0.3, window=64, n_windows=4)
    meth.prepare(m6, TEXTS)
    return meth


def test_svd_llm_truncation_loss_is_the_dropped_whitened_spectrum(m6):
    from efficiency.lowrank import input_covariances
    from efficiency.calibration import record_linear_inputs, token_windows

    cov, _ = input_covariances(m6, TEXTS, [3], ("gate",), window=64, n_windows=4)
    xs = []
    record_linear_inputs(m6, token_windows(m6, TEXTS, 64, 4), [(3, "gate")], lambda l, k, x: xs.append(x.double()))
    X = torch.cat(xs)
    assert torch.allclose(X.T @ X, cov[3, "gate"], rtol=1e-6, atol=1e-6)
    w = m6.linear_weight(3, "gate")
    svd = whitened_svd(w, cov[3, "gate"])
    for r in (8, 20, 64):
        wu, wv = whitened_factors(w, svd, r)
        err = float(((w.double() - wu.double() @ wv.double()) @ X.T).norm() ** 2)
        assert err == pytest.approx(float((svd[1][r:] ** 2).sum()), rel=1e-3, abs=1e-6)
    wu, wv = whitened_factors(w, svd, 64)  # full rank reproduces the weights
    assert torch.allclose(wu @ wv, w, atol=1e-4)


def test_svd_llm_cost_equals_measured_bytes_and_restores(m6, svd_llm):
    snap = snapshot(m6)
    c = svd_llm.cost(m6, 10)
    with m6.intervene(svd_llm.intervention(m6)):
        assert m6.parameter_bytes() == c.weight_bytes < c.baseline_weight_bytes
    assert same_params(m6, snap)
    t = svd_llm.rank_table()
    assert (t["rank"] < t.break_even).all() and len(t) == 6 * 7


def test_svd_llm_loss_allocation_keeps_the_budget():
    spectra = {("a",): torch.tensor([10.0, 1.0, 0.1, 0.01]), ("b",): torch.tensor([5.0, 4.0, 3.0, 2.0])}
    shapes = {("a",): (8, 4), ("b",): (8, 4)}
    ranks = loss_ranks(spectra, shapes, 0.5)
    assert sum(r * 12 for r in ranks.values()) <= 0.5 * 64 + 1e-9
    assert ranks[("b",)] >= ranks[("a",)]  # the flatter spectrum loses more per dropped direction


def test_svd_llm_bad_input(m6):
    with pytest.raises(InputError, match="empty"):
        SVDLLM(ratio=0.2).prepare(m6, [])
    with pytest.raises(InputError, match="prepare"):
        SVDLLM(ratio=0.2).intervention(m6)
    with pytest.raises(InputError, match="out of range"):
        SVDLLM(ratio=1.0)


def test_lowrank_explorer(m6):
    from efficiency.lowrank import lowrank_explorer

    box = lowrank_explorer(m6, PROMPT[:60], TEXTS, ratios=(0.2, 0.6), knobs={"svd_llm": {"window": 32, "n_windows": 2}})
    e = box.show("laser L4.down", 0.6)
    assert e.detail[4] < 1 and all(v == 1 for i, v in enumerate(e.detail) if i != 4)
    assert all(v < 1 for v in box.effect("svd_llm", 0.2).detail)
    assert m6.active_edits() == []
