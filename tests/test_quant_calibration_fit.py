"""Calibration windows fit the model and the texts by default (an explicit too-long length is an error), and simulated
quantization measures the packed weights it holds, which its cost model predicts exactly."""
import warnings

import pytest

import efficiency as ef
from efficiency.quant import base as qbase
from efficiency.quant.calibration import DEFAULT_SEQ_LEN, calibration_windows
from workbench import InputError

LONG = ["Rivers carry water from the mountains to the sea, and towns grow where they bend. " * 40]
SHORT = ["A short calibration text about the weather."]
PROMPT = "The quick brown fox jumps over the lazy dog."


def _n_tokens(m, texts):
    return len(m.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"])


def test_default_window_fits_the_models_context(tiny_llama):
    m = tiny_llama
    n_ctx = m.info.n_ctx
    assert n_ctx < DEFAULT_SEQ_LEN and _n_tokens(m, LONG) > n_ctx  # the case this test is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough text: no warning
        ids = calibration_windows(m, LONG, 3, None)
    assert tuple(ids.shape) == (3, n_ctx)
    assert tuple(calibration_windows(m, LONG, 2, 40).shape) == (2, 40)  # an explicit length is kept


def test_default_window_shrinks_to_short_texts_with_a_warning(tiny_llama):
    m = tiny_llama
    n = _n_tokens(m, SHORT)
    with pytest.warns(UserWarning, match=f"hold {n} tokens"):
        ids = calibration_windows(m, SHORT, 2, None)
    assert tuple(ids.shape) == (2, n)
    with pytest.raises(InputError, match="fewer than one window"):  # explicit: never shortened
        calibration_windows(m, SHORT, 2, n + 1)


def test_explicit_window_longer_than_the_context_is_an_error(tiny_llama):
    m = tiny_llama
    n_ctx = m.info.n_ctx
    with pytest.raises(InputError, match=f"seq_len={n_ctx + 1} exceeds the model's context of {n_ctx}"):
        calibration_windows(m, LONG, 1, n_ctx + 1)
    for meth in (ef.get_method("gptq", n_samples=1, seq_len=512), ef.get_method("dfrot", calib_tokens=512)):
        with pytest.raises(InputError, match="exceeds the model's context"):
            meth.prepare(m, LONG)
    g = ef.get_method("gptq", n_samples=2)  # the default fits: calibrates on this short-context model
    g.prepare(m, LONG)
    assert g.state is not None


@pytest.mark.parametrize("name", ["rtn", "quarot"])
def test_simulated_quantization_measures_the_packed_weights_it_holds(tiny_llama, name):
    m = tiny_llama
    meth = ef.get_method(name)
    assert meth.saving == "simulated"
    iv = meth.intervention(m)
    with m.intervene(iv):
        process = m.parameter_bytes()  # what this process holds: float32 stand-ins (+ rotation extras)
        held = meth.measured_weight_bytes(m, iv)
        sites = qbase.linear_sites(m)
        assert len(iv.packed) == len(sites)
        assert held == process - qbase.fp_bytes(m, sites) + iv.packed_bytes()
        assert held < process
    assert iv.packed == {} and qbase.held_weight_bytes(m, iv) == m.parameter_bytes()  # nothing held outside
    measured = meth.measure(m, PROMPT)
    assert measured.weight_bytes == held == meth.cost(m, measured.n_tokens).weight_bytes
    assert measured.weight_bytes < measured.baseline_weight_bytes
