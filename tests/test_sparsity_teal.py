"""TEAL: exact at sparsity 0, gather-GEMV equal to the dense product on kept inputs, calibrated thresholds."""
import pytest
import torch

import efficiency as ef
from efficiency.sparsity import (TEAL, MagnitudeHistogram, SparseInputLinear, block_forward, calibrate_teal,
                                 greedy_allocation, measured_sparsity, rope_tables)
from efficiency_helpers import HELD_OUT, TEXTS, deep_tiny_llama, same_params, snapshot
from workbench import InputError

PROMPT = HELD_OUT[0][:90]


@pytest.fixture(scope="module")
def m6():
    return deep_tiny_llama()


@pytest.fixture(scope="module")
def calib(m6):
    return calibrate_teal(m6, TEXTS, window=64, n_windows=4)


def test_histogram_threshold_matches_the_exact_quantile():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) * torch.rand(200_000, generator=g).pow(3) + 0.3  # skewed, shifted
    h = MagnitudeHistogram()
    for part in x.split(50_000):
        h.update(part)
    for s in (0.25, 0.5, 0.65):
        exact = float(x.abs().quantile(s))
        assert h.threshold(s) == pytest.approx(exact, rel=3e-3)
        assert h.fraction_below(h.threshold(s)) == pytest.approx(s, abs=2e-3)
    # TEAL's signed icdf assumes symmetry: on this shifted distribution it misses the target
    t_signed = h.signed_icdf(0.75)
    assert abs(h.fraction_below(abs(t_signed)) - 0.5) > 0.05
    sym = torch.randn(100_000, generator=g)
    hs = MagnitudeHistogram()
    hs.update(sym)
    assert hs.fraction_below(abs(hs.signed_icdf(0.75))) == pytest.approx(0.5, abs=0.01)
    assert h.threshold(0.0) == 0.0


def test_gather_gemv_equals_the_dense_product_on_kept_inputs():
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(48, 40, generator=g), torch.randn(48, generator=g), torch.randn(1, 1, 40, generator=g)
    t = float(x.abs().median())
    lin = SparseInputLinear(w, b, t, mode="gather")
    kept = x * (x.abs() > t)
    assert torch.allclose(lin(x), kept @ w.T + b, atol=1e-5)
    assert torch.allclose(lin.gather_gemv(x[0, 0]), kept[0, 0] @ w.T + b, atol=1e-5)
    many = torch.randn(2, 5, 40, generator=g)  # several tokens: masked dense product
    assert torch.allclose(lin(many), (many * (many.abs() > t)) @ w.T + b, atol=1e-5)
    assert torch.equal(lin.weight, w)
    lin.count = True
    lin(x)
    assert lin.seen == 40 and lin.kept == int((x.abs() > t).sum())
    with pytest.raises(InputError, match="mode"):
        SparseInputLinear(w, b, t, mode="sparse")


def test_sparsity_zero_is_exactly_dense(m6, calib):
    ref = m6.run(PROMPT).logits
    gen = m6.generate(PROMPT, 4, stop_at_eos=False)
    meth = TEAL(sparsity=0.0, calibration=calib)
    with m6.intervene(meth.intervention(m6)):
        assert m6.active_edits() == []
        assert torch.equal(m6.run(PROMPT).logits, ref)
        assert torch.equal(m6.generate(PROMPT, 4, stop_at_eos=False).logits, gen.logits)


def test_thresholds_hit_the_target_on_calibration_and_held_out_text(m6, calib):
    meth = TEAL(sparsity=0.5, calibration=calib)
    on_calib = measured_sparsity(m6, meth, TEXTS, window=64, n_windows=4).frame
    # the first layer's q/k/v/gate/up inputs see exactly the calibration distribution
    first = on_calib[(on_calib.layer == 0) & on_calib.kind.isin(["q", "k", "v"])]
    assert (first.measured - 0.5).abs().max() < 0.01
    held = measured_sparsity(m6, meth, HELD_OUT, window=64, n_windows=2)
    assert abs(held.frame.measured.mean() - 0.5) < 0.08
    assert held.figure() is not None and "measured" in held.summary()


def test_gather_and_mask_modes_agree_and_restore_is_exact(m6, calib):
    snap = snapshot(m6)
    ref = m6.run(PROMPT).logits
    outs = {}
    for mode in ("gather", "mask"):
        with m6.intervene(TEAL(sparsity=0.5, mode=mode, calibration=calib).intervention(m6)):
            assert len(m6.active_edits()) == 6 * 7
            outs[mode] = m6.generate(PROMPT, 4, stop_at_eos=False)
    assert torch.equal(outs["gather"].new_tokens, outs["mask"].new_tokens)
    assert torch.allclose(outs["gather"].logits, outs["mask"].logits, atol=1e-4)
    with pytest.raises(RuntimeError, match="boom"):
        with m6.intervene(TEAL(sparsity=0.4, calibration=calib).intervention(m6)):
            raise RuntimeError("boom")
    assert same_params(m6, snap) and torch.equal(m6.run(PROMPT).logits, ref)


def test_cost_and_saving_labels(m6, calib):
    c = TEAL(sparsity=0.5, calibration=calib).cost(m6, 100)
    assert c.weight_bytes == c.baseline_weight_bytes and c.saving == "mixed"
    assert TEAL(sparsity=0.5, mode="mask").saving == "simulated"
    with m6.intervene(TEAL(sparsity=0.5, calibration=calib).intervention(m6)):
        assert m6.parameter_bytes() == c.weight_bytes  # the transposed copy has the same size


def test_block_forward_matches_the_model(m6):
    run = m6.run(PROMPT, capture=["resid_pre", "resid_post"])
    cos, sin = rope_tables(m6, 128)
    W = m6.weights()
    for l in range(6):
        assert torch.allclose(block_forward(W.layers[l], run["resid_pre", l], cos, sin), run["resid_post", l], atol=1e-5)


def test_greedy_allocation_path(m6, calib):
    alloc = greedy_allocation(m6, TEXTS, calib, max_sparsity=0.5, step=0.1, window=32, n_windows=1, layers=[0, 3])
    for l in (0, 3):
        eff = [r["effective"] for r in alloc.paths[l]]
        assert eff[0] == 0 and all(b > a for a, b in zip(eff, eff[1:])) and eff[-1] >= 0.5
    a = alloc.allocation(3, 0.4)
    assert set(a) == {"q", "k", "v", "o", "gate", "up", "down"} and all(0 <= v < 1 for v in a.values())
    assert alloc.figure(target=0.4) is not None


def test_calibration_symmetry_report(calib):
    f = calib.to_frame((0.5,))
    assert set(f.site) == {"q", "o", "gate", "down"} and len(f) == 6 * 4
    assert "signed-icdf" in calib.summary() and calib.figure() is not None


def test_bad_input_fails_clearly(m6):
    with pytest.raises(InputError, match=r"sparsity=1.0 is out of range"):
        ef.get_method("teal", sparsity=1.0)
    with pytest.raises(InputError, match=r"sparsity=-0.1 is out of range"):
        ef.get_method("teal", sparsity=-0.1)
    with pytest.raises(InputError, match="empty"):
        ef.get_method("teal", sparsity=0.5).prepare(m6, [])
    with pytest.raises(InputError, match="empty"):
        ef.get_method("teal", sparsity=0.5).prepare(m6, ["", "   "])
    with pytest.raises(InputError, match="prepare"):
        ef.get_method("teal", sparsity=0.5).intervention(m6)
    with pytest.raises(InputError, match="kinds"):
        TEAL(sparsity=0.5, kinds=("qkv",))


def test_sparsity_explorer(m6, calib):
    from efficiency.sparsity import sparsity_explorer

    box = sparsity_explorer(m6, PROMPT[:60], TEXTS, sparsities=(0.25, 0.5), allocations=("uniform",), calibration=calib)
    lo, hi = box.effect("uniform", 0.25), box.show("uniform", 0.5)
    assert sum(hi.detail) > sum(lo.detail) > 0 and float(hi.rel_err[-1]) > 0
    assert m6.active_edits() == []


def test_fused_mlp_matches_per_linear_teal(m6, calib):
    per = TEAL(sparsity=0.5, calibration=calib)
    fused = TEAL(sparsity=0.5, calibration=calib, fuse_mlp=True)
    with m6.intervene(per.intervention(m6)):
        a = m6.generate(PROMPT, 4, stop_at_eos=False)
        ref_run = m6.run(PROMPT).logits
    edit = fused.intervention(m6)
    c = fused.cost(m6, 10)
    with m6.intervene(edit):
        assert edit.fused_layers() == list(range(6))
        assert ("L0.mlp", "replaced by SparseGatedMLP") in m6.active_edits()
        b = m6.generate(PROMPT, 4, stop_at_eos=False)
        assert torch.allclose(m6.run(PROMPT).logits, ref_run, atol=1e-4)
        assert m6.parameter_bytes() == c.weight_bytes > c.baseline_weight_bytes
    assert torch.equal(a.new_tokens, b.new_tokens) and torch.allclose(a.logits, b.logits, atol=1e-4)
    f = measured_sparsity(m6, fused, HELD_OUT, window=64, n_windows=1).frame
    assert set(f.kind) == {"q", "k", "v", "o", "gate", "up", "down"} and (f.measured > 0.2).all()
