"""Rotations by computational invariance (QuaRot), the per-head V/O rotation, the online Hadamard, DFRot."""
import pytest
import torch

import efficiency as ef
from efficiency.quant.dfrot import massive_rows, quant_loss, refine_rotation
from efficiency.quant.grids import token_error
from efficiency.quant.hadamard import random_hadamard, random_orthogonal
from efficiency.quant.rotation import DenseRotation, SignedHadamard, rotate
from workbench import InputError

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat."


def _params(m):
    return {n: p.detach().clone() for n, p in m.hf.named_parameters()}


@pytest.mark.parametrize("rotation", ["rh", "ro"])
@pytest.mark.parametrize("head_rotation,online_had", [(True, True), (False, False), (True, False)])
def test_rotated_float_model_gives_the_same_logits(tiny_llama, rotation, head_rotation, online_had):
    m = tiny_llama
    before = _params(m)
    ref = m.run(PROMPT).logits
    meth = ef.get_method("rotate", rotation=rotation, head_rotation=head_rotation, online_had=online_had, seed=3)
    with m.intervene(meth.intervention(m)):
        run = m.run(PROMPT, capture=["resid_post"], layers=[0])
        W = m.weights()
        assert torch.equal(W.layers[0].ln1.w, torch.ones_like(W.layers[0].ln1.w))  # gains folded
        cost_inside = m.parameter_bytes()
    assert float((run.logits - ref).abs().max()) <= 1e-4
    assert meth.cost(m, 4).weight_bytes == cost_inside  # the rotation's extra bytes are predicted exactly
    # the residual stream really is rotated: x Q, not x
    plain = m.run(PROMPT, capture=["resid_post"], layers=[0])["resid_post", 0]
    Q = meth.matrix(m).matrix().float()
    assert torch.allclose(run["resid_post", 0], plain @ Q, atol=1e-4)
    now = dict(m.hf.named_parameters())
    assert set(now) == set(before) and all(torch.equal(now[n], before[n]) for n in before)


def test_head_rotation_rotates_values_per_head(tiny_llama):
    m = tiny_llama
    with m.intervene(ef.get_method("rotate", rotation="rh").intervention(m)):
        v_rot = m.run(PROMPT, capture=["v"], layers=[1])["v", 1]
    with m.intervene(ef.get_method("rotate", rotation="rh", head_rotation=False).intervention(m)):
        v = m.run(PROMPT, capture=["v"], layers=[1])["v", 1]
    from efficiency.quant.hadamard import hadamard

    assert torch.allclose(v_rot, v @ hadamard(m.info.d_head).float(), atol=1e-5)


def test_rotation_refuses_layernorm_models_and_bad_matrices(tiny_gpt2, tiny_llama):
    with pytest.raises(InputError, match="LayerNorm"):
        ef.get_method("rotate").intervention(tiny_gpt2)
    with pytest.raises(InputError, match="LayerNorm"):
        ef.get_method("quarot").check_model(tiny_gpt2)
    with pytest.raises(RuntimeError, match="not orthogonal"):
        DenseRotation(torch.randn(64, 64))
    with pytest.raises(InputError, match="must be"):
        with tiny_llama.edit_weights() as ed:
            rotate(tiny_llama, ed, DenseRotation(random_orthogonal(32)))


def test_structured_hadamard_rotation_equals_its_matrix():
    R = SignedHadamard(576, seed=2)
    x = torch.randn(7, 576, dtype=torch.float64)
    assert torch.allclose(R.right(x), x @ random_hadamard(576, 2), atol=1e-12)
    assert torch.allclose(R.matrix(), random_hadamard(576, 2), atol=1e-12)


def test_quarot_float_twin_is_the_rotation_alone(tiny_llama):
    m = tiny_llama
    ref = m.run(PROMPT).logits
    meth = ef.get_method("quarot", w_bits=4, a_bits=4)
    with m.intervene(meth.float_twin(m)):
        assert float((m.run(PROMPT).logits - ref).abs().max()) <= 1e-4
        assert not any(how.startswith("quantized by") for _, how in m.active_edits())
    assert ef.get_method("wa_quant", rotation="none").float_twin(m) is None


# ------------------------------------------------------------------------------------------ DFRot
def test_refinement_never_increases_the_loss_and_stays_orthogonal():
    g = torch.Generator().manual_seed(0)
    d = 64
    A = torch.randn(300, d, generator=g)
    A[::25] = 0.0
    A[::25, 7] = 8.0  # massive rows: one coordinate holds the norm
    A[::25, 11] = 0.5
    massive = massive_rows(A, 0.9)
    assert int(massive.sum()) == 12
    R0 = random_hadamard(d, 0)
    R, hist = refine_rotation(A, R0, bits=4, alpha=10.0, massive=massive, n_iters=30)
    assert len(hist) >= 2 and all(b < a for a, b in zip(hist, hist[1:]))
    assert torch.allclose(R @ R.T, torch.eye(d, dtype=torch.float64), atol=1e-8)
    Aw = A.clone()
    Aw[massive] *= 10.0
    assert quant_loss(Aw @ R.float(), 4, True, 1.0) == pytest.approx(hist[-1], rel=1e-3)
    R1, hist1 = refine_rotation(A, R0, bits=4, massive=massive, n_iters=0)
    assert torch.allclose(R1, R0, atol=1e-12) and len(hist1) == 1


def test_dfrot_calibrates_on_one_sample_and_keeps_the_float_model(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("dfrot", calib_tokens=48, n_iters=10)
    with pytest.raises(InputError, match="not calibrated"):
        meth.residual_matrix(m)
    with pytest.raises(InputError, match="a_bits must be set"):
        ef.get_method("dfrot", a_bits=None)
    meth.prepare(m, ["Any text will do for one calibration sample of the tiny model. " * 8])
    info = meth.state["refinement"]
    assert info["n_rows"] == 2 * m.info.n_layers * 48
    assert all(b <= a for a, b in zip(info["losses"], info["losses"][1:]))
    R = meth.residual_matrix(m)
    assert torch.allclose(R @ R.T, torch.eye(m.info.d_model, dtype=torch.float64), atol=1e-8)
    ref = m.run(PROMPT).logits
    with m.intervene(meth.float_twin(m)):
        assert float((m.run(PROMPT).logits - ref).abs().max()) <= 1e-4
    with m.intervene(meth.intervention(m)):
        assert m.run(PROMPT).logits.shape == ref.shape


def test_dfrot_mechanism_on_a_massive_token():
    """RH makes a one-hot token exact under a symmetric 4-bit grid; RO does not; common tokens tie."""
    d = 576
    x = torch.randn(200, d, dtype=torch.float64)
    x[0] = 0.0
    x[0, 507] = 24.0
    e_rh = token_error(x @ random_hadamard(d, 0), 4)
    e_ro = token_error(x @ random_orthogonal(d, 0), 4)
    assert float(e_rh[0]) < 1e-12 < 0.05 < float(e_ro[0])
    assert abs(float(e_rh[1:].mean()) - float(e_ro[1:].mean())) < 0.01
