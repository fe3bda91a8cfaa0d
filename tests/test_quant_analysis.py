"""Why-it-breaks analyses (per token and layer, rotation spread) and the quantization explorer, on tiny models."""
import numpy as np
import pytest
import torch

import efficiency as ef
from efficiency.quant.analysis import quantization_error, rotation_spread
from efficiency.quant.explorer import quantization_explorer
from efficiency.quant.grids import token_error
from efficiency.quant.hadamard import random_hadamard
from workbench import InputError

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat."


def test_error_is_zero_against_itself_and_positive_when_quantized(tiny_llama):
    m = tiny_llama
    zero = quantization_error(m, ef.get_method("rotate"), PROMPT)  # its float twin is itself
    assert float(np.abs(zero.resid_error).max()) == 0.0 and float(np.abs(zero.kl).max()) < 1e-12
    assert zero.top1_same.all() and zero.input_error == {}
    r = quantization_error(m, ef.get_method("quarot", w_bits=4, a_bits=4), PROMPT)
    T = len(r.str_tokens)
    assert r.resid_error.shape == (m.info.n_layers, T) and r.kl.shape == (T,)
    assert (r.resid_error > 0).all() and (r.kl[1:] > 0).all()
    assert set(r.input_error) == {"attn_in", "z", "mlp_in", "mlp_hidden"}
    df = r.to_frame()
    assert len(df) == m.info.n_layers * T and df.sink.sum() == m.info.n_layers
    bl = r.by_layer()
    assert bl.resid_sink.tolist() == r.resid_error[:, 0].tolist()
    for kind in ("layers", "heatmap", "kl"):
        assert len(r.figure(kind).data) > 0
    assert "KL" in r.summary()
    with pytest.raises(InputError, match="kind"):
        r.figure("nope")


def test_local_input_error_matches_the_grid_on_the_float_inputs(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("wa_quant", w_bits=None, a_bits=4)  # no rotation: the twin is the plain model
    r = quantization_error(m, meth, PROMPT)
    run = m.run(PROMPT, capture=["mlp_in", "mlp_hidden"], layers=[1])
    x = run["mlp_in", 1][0] * m.weights().layers[1].ln2.w
    assert np.allclose(r.input_error["mlp_in"][1], token_error(x, 4).numpy(), atol=1e-6)
    assert np.allclose(r.input_error["mlp_hidden"][1], token_error(run["mlp_hidden", 1][0], 4).numpy(), atol=1e-6)


def test_weight_only_and_cache_only_methods(tiny_llama):
    m = tiny_llama
    r = quantization_error(m, ef.get_method("rtn", bits=3), PROMPT)
    assert r.input_error == {} and len(r.figure().data) == 2
    with pytest.raises(InputError, match="cache-only"):
        quantization_error(m, ef.get_method("wa_quant", w_bits=None, a_bits=None, kv_bits=4), PROMPT)
    with pytest.raises(InputError, match="max_tokens"):
        quantization_error(m, ef.get_method("rtn"), PROMPT, max_tokens=4)


def test_rotation_spread(tiny_llama):
    m = tiny_llama
    d = m.info.d_model
    s = rotation_spread(m, PROMPT, rotations={"none": torch.eye(d, dtype=torch.float64), "rh": random_hadamard(d, 0)})
    x = m.run(PROMPT, capture=["attn_in"])["attn_in", 1][0].double()
    flat = (x.abs().amax(-1) / x.pow(2).mean(-1).sqrt()).numpy()
    assert np.allclose(s.flatness[0, 1], flat)
    assert np.allclose(s.error[1, 1], token_error(x @ random_hadamard(d, 0), 4).numpy())
    assert s.coords.shape == (2, 2, d)
    assert np.allclose(np.linalg.norm(s.coords[0], axis=-1), np.linalg.norm(s.coords[1], axis=-1))  # rotations keep norms
    s2 = rotation_spread(m, PROMPT)  # names: none, rh, ro
    assert s2.rotations == ["none", "rh", "ro"] and len(s2.to_frame()) == 3 * m.info.n_layers
    for kind in ("coordinates", "layers"):
        assert len(s2.figure(kind).data) > 0
    with pytest.raises(InputError, match="site"):
        rotation_spread(m, PROMPT, site="z")
    with pytest.raises(InputError, match="must be"):
        rotation_spread(m, PROMPT, rotations={"bad": torch.eye(3)})


def test_quantization_explorer(tiny_llama):
    m = tiny_llama
    box = quantization_explorer(m, PROMPT, calibration_texts=["Calibration text for the tiny model. " * 20],
                                calibration=(2, 24))
    assert "rtn(bits=4" in box.summary.value and box.current() == ("rtn", 4, None, None, "none")
    r = box.show("rtn", 4, 32, 8, "rh")
    assert r.a_bits == 8 and box.controls["rotation"].value == "rh"
    assert len(box.error_figure.data[2].y) == m.info.n_layers  # input-error traces filled
    box.show("gptq", 3, None, None, "none")
    assert box.current() == ("gptq", 3, None, None, "none") and len(box.error_figure.data[2].y) == 0
    box.show("dfrot", 4, None, 4, "none")
    box.show("int8_dynamic", 4, None, None, "none")
    assert len(box.computed()) == 5
    box.controls["method"].value = "rtn"  # moving a control computes the new setting
    box.controls["w_bits"].value = 2
    assert box.current() == ("rtn", 2, None, None, "none") and "rtn(bits=2" in box.summary.value
    assert "dfrot" in str(box.computed())
    box.show("rtn", None, None, None, "none")
    assert "Nothing to quantize" in box.summary.value
    with pytest.raises(InputError, match="not offered"):
        box.show("rtn", 5, None, None, "none")
    with pytest.raises(InputError, match="not offered"):
        box.show("rtn", 4, 128, None, "none")  # 128 does not divide d_model 64
    plain = quantization_explorer(m, PROMPT)
    assert "gptq" not in plain.controls["method"].options
    with pytest.raises(InputError, match="max_tokens"):
        quantization_explorer(m, PROMPT, max_tokens=3)
