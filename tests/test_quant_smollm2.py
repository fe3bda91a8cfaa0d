"""Quantization on the bundled SmolLM2-135M-Instruct: the Q4_1 origin of its weights, rotation invariance,
the int8 path, and the massive activation under rotations."""
import numpy as np
import pytest
import torch

import efficiency as ef
from efficiency.quant.analysis import rotation_spread
from efficiency.quant.base import linear_sites
from efficiency.quant.grids import quantize_weight

pytestmark = pytest.mark.smollm2

PROSE = ("The river ran past the old mill, and the children watched the water turn the wheel while the miller "
         "carried sacks of flour to the cart waiting by the gate.")


def test_4bit_group32_asymmetric_rtn_reproduces_the_q4_1_weights(smollm2):
    """The fp32 weights were dequantized from GGUF Q4_1 (w = d·q + m per 32 inputs): RTN at that setting is exact."""
    m = smollm2
    worst = 0.0
    for layer, kind in linear_sites(m):
        W = m.linear_weight(layer, kind)
        worst = max(worst, float((quantize_weight(W, 4, 32, sym=False).dequantize() - W).abs().max()))
    assert worst <= 1e-6
    W = m.linear_weight(12, "down")
    assert float((quantize_weight(W, 4, None, sym=False).dequantize() - W).abs().max()) > 1e-3  # per channel is real
    ref = m.run(PROSE).logits
    with m.intervene(ef.get_method("rtn", bits=4, group=32, sym=False).intervention(m)):
        assert float((m.run(PROSE).logits - ref).abs().max()) <= 1e-5


def test_rotated_smollm2_gives_the_same_logits(smollm2):
    m = smollm2
    ref = m.run(PROSE).logits
    with m.intervene(ef.get_method("rotate", rotation="rh", online_had=True).intervention(m)):
        out = m.run(PROSE, capture=["resid_post"], layers=[20])
    assert float((out.logits - ref).abs().max()) <= 1e-4
    # the sink's massive value is still there (the rotation keeps norms) but no longer in one coordinate
    x = out["resid_post", 20][0, 0]
    assert float(x.norm()) > 1e4 and float(x.abs().max()) < 0.2 * float(x.norm())
    assert torch.equal(m.run(PROSE).logits, ref)


def test_int8_dynamic_on_smollm2(smollm2):
    m = smollm2
    ref = m.run(PROSE).logits
    meth = ef.get_method("int8_dynamic")
    cost = meth.cost(m, 16)
    with m.intervene(meth.intervention(m)):
        assert m.parameter_bytes() == cost.weight_bytes
        out = m.run(PROSE).logits
    assert cost.weight_ratio < 0.6
    lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(out.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)[0]
    # per-token input ranges (default): the 8-bit activations cost about 0.08 nats on this prompt; with one range
    # for the whole prompt the sink's massive activation makes it about 1.4 (see int8_dynamic's docstring)
    assert float(kl[1:].mean()) < 0.15
    assert float((ref.argmax(-1) == out.argmax(-1)).float().mean()) > 0.75


def test_randomized_hadamard_flattens_the_sink_and_random_orthogonal_does_not(smollm2):
    s = rotation_spread(smollm2, PROSE, site="attn_in", bits=4)
    late = slice(12, 28)
    none, rh, ro = (s.rotations.index(r) for r in ("none", "rh", "ro"))
    # after the norm the sink is nearly one-hot: max/rms close to sqrt(576) = 24
    assert float(s.flatness[none, late, 0].min()) > 20
    assert float(s.flatness[rh, late, 0].max()) < 1.5  # flat ±1 coordinates
    e = s.error[:, late]
    assert float(e[rh, :, 0].mean()) < 0.6 * float(e[ro, :, 0].mean())  # DFRot's observation
    others = e[:, :, 1:].mean(axis=(1, 2))
    assert others[rh] < 0.5 * others[none] and abs(others[rh] - others[ro]) < 0.03
    assert np.isfinite(s.error).all()
