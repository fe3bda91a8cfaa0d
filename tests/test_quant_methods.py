"""Quantization methods on the tiny models: RTN, GPTQ, int8 dynamic, W/A quantization, KV through KIVI;
exact restore, packed bytes, cost models, the double-quantization guard and bad input."""
import pytest
import torch

import efficiency as ef
from efficiency.quant import base as qbase
from efficiency.quant import modules as qmodules
from efficiency.quant.gptq import quantize_gptq
from efficiency.quant.grids import quantize_tokens, quantize_weight
from workbench import InputError

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps on the mat."
CALIB = ["A calibration text about rivers, mountains and the weather in the valley. " * 12,
         "Another calibration document: the market opens at nine and closes at five. " * 12]


def _snapshot(m):
    return {n: p.detach().clone() for n, p in m.hf.named_parameters()}, [id(x) for x in m.hf.modules()]


def _unchanged(m, snap):
    params, mods = snap
    now = dict(m.hf.named_parameters())
    return (set(now) == set(params) and all(torch.equal(now[n].detach(), params[n]) for n in params)
            and [id(x) for x in m.hf.modules()] == mods)


def test_registry_lists_the_quantization_methods():
    names = set(ef.list_methods()["name"])
    assert {"rtn", "gptq", "int8_dynamic", "rotate", "wa_quant", "quarot", "dfrot"} <= names
    assert set(ef.list_methods("weight-quantization")["name"]) == {"rtn", "gptq", "int8_dynamic"}
    assert ef.get_method("gptq").needs_calibration and ef.get_method("dfrot").needs_calibration
    assert ef.get_method("rtn", bits=3, group=32).label == "rtn(bits=3, group=32, sym=False)"
    assert ef.get_method("quarot").rotation == "rh" and ef.get_method("quarot").online_had


def test_bad_knobs_fail_clearly(tiny_llama):
    with pytest.raises(InputError, match=r"bits=5 is out of range; expected one of 2, 3, 4, 8"):
        ef.get_method("rtn", bits=5)
    with pytest.raises(InputError, match="group=48 is out of range"):
        ef.get_method("rtn", group=48)
    with pytest.raises(InputError, match="a_bits=2 is out of range"):
        ef.get_method("wa_quant", a_bits=2)
    with pytest.raises(InputError, match="nothing to quantize"):
        ef.get_method("wa_quant", w_bits=None, a_bits=None)
    with pytest.raises(InputError, match="unknown knob"):
        ef.get_method("rtn", a_bits=4)
    # tiny-llama: d_model 64, d_mlp 128 -> group 128 does not divide the q/k/v/gate/up inputs
    with pytest.raises(InputError, match=r"group=128 does not divide the input dimension 64 of the q projection"):
        ef.get_method("rtn", group=128).intervention(tiny_llama)
    with pytest.raises(InputError, match="does not divide"):
        ef.get_method("wa_quant", group=128).check_model(tiny_llama)


# ------------------------------------------------------------------------------------------ RTN
@pytest.mark.parametrize("bits,group,sym", [(8, None, True), (4, 32, False), (3, 16, True), (2, None, False)])
def test_rtn_edits_every_linear_holds_packed_codes_and_restores_exactly(tiny_llama, bits, group, sym):
    m = tiny_llama
    snap = _snapshot(m)
    ref = m.run(PROMPT).logits
    meth = ef.get_method("rtn", bits=bits, group=group, sym=sym)
    iv = meth.intervention(m)
    sites = qbase.linear_sites(m)
    originals = {s: m.linear_weight(*s).clone() for s in sites}
    with m.intervene(iv):
        assert len(iv.packed) == len(sites) == 7 * m.info.n_layers
        for s in sites:
            w = m.linear_weight(*s)
            assert torch.equal(w, iv.packed[s].dequantize())  # computes exactly with what the packed form holds
            assert torch.equal(w, quantize_weight(originals[s], bits, group, sym).dequantize())
        assert all(how == "quantized by " + meth.label for _, how in m.active_edits())
        out = m.run(PROMPT).logits
        cost = meth.cost(m, 8)
        measured = m.parameter_bytes() - qbase.fp_bytes(m, sites) + iv.packed_bytes()
    assert cost.weight_bytes == measured and cost.saving == "simulated"
    assert cost.weight_bytes < cost.baseline_weight_bytes
    assert not torch.equal(out, ref)
    assert iv.packed == {} and m.active_edits() == []
    assert _unchanged(m, snap) and torch.equal(m.run(PROMPT).logits, ref)


def test_restore_is_exact_after_an_exception(tiny_llama):
    m = tiny_llama
    snap = _snapshot(m)
    for meth in (ef.get_method("rtn", bits=3), ef.get_method("int8_dynamic"), ef.get_method("quarot"),
                 ef.get_method("wa_quant", w_bits=8, a_bits=8, kv_bits=4)):
        with pytest.raises(RuntimeError, match="boom"):
            with m.intervene(meth.intervention(m)):
                m.run(PROMPT)
                raise RuntimeError("boom")
        assert _unchanged(m, snap) and m.active_edits() == []


def test_an_error_half_way_through_the_edit_restores_too(tiny_llama, monkeypatch):
    m = tiny_llama
    snap = _snapshot(m)
    calls = {"n": 0}
    real = quantize_weight

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("failed on the fifth linear")
        return real(*a, **k)

    monkeypatch.setattr("efficiency.quant.rtn.quantize_weight", flaky)
    with pytest.raises(RuntimeError, match="fifth linear"):
        with m.intervene(ef.get_method("rtn", bits=4).intervention(m)):
            pass
    assert _unchanged(m, snap)


def test_quantizing_twice_fails_but_rotation_then_quantization_is_allowed(tiny_llama):
    m = tiny_llama
    with m.intervene(ef.get_method("rtn", bits=4).intervention(m)):
        for second in (ef.get_method("rtn", bits=8), ef.get_method("int8_dynamic"), ef.get_method("quarot")):
            with pytest.raises(InputError, match="already quantized"):
                with m.intervene(second.intervention(m)):
                    pass
        with pytest.raises(InputError, match="already quantized"):
            ef.get_method("gptq", n_samples=2, seq_len=16).prepare(m, CALIB)
        with m.without_interventions():  # the clean model can be quantized again
            with m.intervene(ef.get_method("rtn", bits=8).intervention(m)):
                pass
    with pytest.raises(InputError, match="already quantized"):
        m.run(PROMPT, interventions=[ef.get_method("rtn", bits=4).intervention(m), ef.get_method("rtn", bits=8).intervention(m)])
    ref = m.run(PROMPT).logits
    with m.intervene(ef.get_method("rotate").intervention(m)):
        with m.intervene(ef.get_method("rtn", bits=8).intervention(m)):
            rotated_q = m.run(PROMPT).logits
    assert rotated_q.shape == ref.shape and m.active_edits() == []


# ------------------------------------------------------------------------------------------ GPTQ
@pytest.mark.parametrize("group,sym", [(None, False), (16, False), (32, True)])
def test_gptq_with_an_identity_hessian_equals_rtn(group, sym):
    W = torch.randn(24, 64)
    for act_order in (False, True):
        q, losses = quantize_gptq(W, torch.eye(64), 3, group, sym, act_order=act_order)
        r = quantize_weight(W, 3, group, sym)
        assert torch.equal(q.codes, r.codes) and torch.equal(q.scale, r.scale)
        assert torch.equal(q.dequantize(), r.dequantize())
        assert losses["gptq_loss"] == pytest.approx(losses["rtn_loss"])


def test_gptq_beats_rtn_on_its_hessian_and_does_not_depend_on_the_block_size():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    H = X.t() @ X
    W = torch.randn(32, 64, generator=g)
    for group, act_order in ((None, False), (16, False), (16, True)):
        q1, loss = quantize_gptq(W, H, 3, group, block=128, act_order=act_order)
        q2, _ = quantize_gptq(W, H, 3, group, block=1, act_order=act_order)
        assert torch.equal(q1.codes, q2.codes)
        assert loss["gptq_loss"] < 0.8 * loss["rtn_loss"]
    # dead inputs: their weight column is set to zero
    H2 = H.clone()
    H2[5, :] = H2[:, 5] = 0
    q, _ = quantize_gptq(W, H2, 4)
    assert float(q.dequantize()[:, 5].abs().max()) <= float(q.scale.float().max()) / 2 + 1e-3


def test_gptq_calibrates_sequentially_and_beats_rtn_on_calibration_data(tiny_llama):
    m = tiny_llama
    snap = _snapshot(m)
    meth = ef.get_method("gptq", bits=3, n_samples=4, seq_len=32)
    with pytest.raises(InputError, match="not calibrated"):
        meth.intervention(m)
    meth.prepare(m, CALIB)
    assert _unchanged(m, snap)  # calibration leaves the model as it was
    rep = meth.report
    assert len(rep) == 7 * m.info.n_layers and (rep.tokens == 4 * 32).all()
    assert (rep.gptq_loss <= rep.rtn_loss * (1 + 1e-9)).all() and rep.gptq_loss.sum() < 0.8 * rep.rtn_loss.sum()
    iv = meth.intervention(m)
    with m.intervene(iv):
        assert torch.equal(m.linear_weight(1, "down"), iv.packed[(1, "down")].dequantize())
    # the harvested inputs of layer 1 are those of the model whose layer 0 is already quantized: the Hessian
    # of q at layer 1, recomputed from a run of the GPTQ model on the same windows, gives the same codes
    ids = torch.stack([torch.tensor(x) for x in _windows(m, 4, 32)])
    with m.intervene(meth.intervention(m)):
        x = m.run(ids, capture=["attn_in"], layers=[1])["attn_in", 1]
        x = (x * m.weights().layers[1].ln1.w).reshape(-1, m.info.d_model)
    q, _ = quantize_gptq(m.linear_weight(1, "q"), x.t() @ x, 3)
    assert torch.equal(q.codes, meth.state.quantized[(1, "q")].codes)
    excl = ef.get_method("gptq", bits=3, n_samples=4, seq_len=32, exclude_sink=True)
    excl.prepare(m, CALIB)
    assert (excl.report.tokens == 4 * 31).all()


def _windows(m, n, T):
    from efficiency.quant.calibration import calibration_windows

    return calibration_windows(m, CALIB, n, T).tolist()


def test_gptq_refuses_empty_corpora_and_foreign_weights(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("gptq", bits=4, n_samples=2, seq_len=16)
    for bad in ([], ["", "   "], None):
        with pytest.raises(InputError, match="calibrat"):
            meth.prepare(m, bad)
    with pytest.raises(InputError, match="fewer than one window"):
        meth.prepare(m, ["short text"])
    meth.prepare(m, CALIB)
    with m.intervene(ef.get_method("rotate").intervention(m)):
        with pytest.raises(InputError, match="calibrated on other weights"):
            with m.intervene(meth.intervention(m)):
                pass
    with pytest.raises(InputError, match="calibration corpus is empty"):
        ef.get_method("quarot", weights="gptq").prepare(m, [])
    with pytest.raises(InputError, match="calibration corpus is empty"):
        ef.get_method("dfrot").prepare(m, [""])


# ------------------------------------------------------------------------------------------ int8 dynamic
def test_int8_dynamic_runs_every_linear_and_lm_head_in_int8(tiny_llama):
    m = tiny_llama
    snap = _snapshot(m)
    ref = m.run(PROMPT, capture=["mlp_out"], layers=[1])
    meth = ef.get_method("int8_dynamic")
    assert meth.saving == "real"
    cost = meth.cost(m, 8)
    with m.intervene(meth.intervention(m)):
        assert m.parameter_bytes() == cost.weight_bytes < cost.baseline_weight_bytes
        run = m.run(PROMPT, capture=["mlp_out"], layers=[1])  # captures and hooks keep working
        assert m.weights().W_U.shape == (m.info.d_model, m.info.d_vocab)  # analyses still read the weights
        assert ("unembed", "quantized by " + meth.label) in m.active_edits()
        w8 = m.linear_weight(0, "up")
        g = m.generate(PROMPT, max_new_tokens=3)
    assert len(g.new_tokens) == 3
    lp, lq = torch.log_softmax(ref.logits, -1), torch.log_softmax(run.logits, -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert 0 < kl < 0.05
    w = m.linear_weight(0, "up")
    assert float((w8 - w).abs().max()) <= float(w.abs().amax(1).max()) / 127 / 2 * 1.01
    rel = float((run["mlp_out", 1] - ref["mlp_out", 1]).norm() / ref["mlp_out", 1].norm())
    assert 0 < rel < 0.25  # per-tensor 8-bit inputs on a random model
    assert _unchanged(m, snap)


def test_int8_per_token_ranges_protect_the_other_tokens_from_a_massive_one():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(32, 64, generator=g)
    x = torch.randn(5, 64, generator=g)
    x[0] *= 2000.0  # a massive token, like the attention sink's down_proj input in SmolLM2's block 11
    exact = x @ W.t()
    tok = qmodules.Int8DynamicLinear(W, per_token=True)
    ten = qmodules.Int8DynamicLinear(W, per_token=False)
    assert torch.equal(tok(x), torch.cat([tok(x[i:i + 1]) for i in range(5)]))
    err_tok = ((tok(x) - exact)[1:].norm() / exact[1:].norm()).item()
    err_ten = ((ten(x) - exact)[1:].norm() / exact[1:].norm()).item()
    assert err_tok < 0.02 < 0.3 < err_ten
    assert torch.allclose(tok(x[1:2]), ten(x[1:2]))  # one token: the same call
    assert torch.equal(ten(x), ten.inner(x))  # the kernel called directly is the fbgemm module's own call


def test_int8_dynamic_on_a_rotated_model(tiny_llama, tiny_gpt2):
    m = tiny_llama
    meth = ef.get_method("int8_dynamic", rotation="rh")
    cost = meth.cost(m, 4)
    with m.intervene(meth.intervention(m)):
        assert m.parameter_bytes() == cost.weight_bytes
        assert any(how.startswith("rotated for") for _, how in m.active_edits())
        m.run(PROMPT)
    with pytest.raises(InputError, match="LayerNorm"):
        ef.get_method("int8_dynamic", rotation="rh").check_model(tiny_gpt2)


@pytest.mark.skipif(not qmodules.cpu_has_vnni(), reason="act_bits=8 needs a CPU with VNNI")
def test_int8_full_input_range_halves_the_rounding_error():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(48, 96, generator=g)
    x = torch.randn(16, 96, generator=g) * torch.rand(16, 96, generator=g).pow(4) * 8  # heavy-tailed inputs
    exact = x @ W.t()
    err = {b: float((qmodules.Int8DynamicLinear(W, act_bits=b)(x) - exact).norm() / exact.norm()) for b in (7, 8)}
    assert err[8] < 0.75 * err[7] and err[8] < 0.02  # no saturation: 8 bits of range really are finer


def test_int8_act_bits_refused_without_vnni(tiny_llama, monkeypatch):
    monkeypatch.setattr(qmodules, "cpu_has_vnni", lambda: False)
    with pytest.raises(InputError, match="VNNI"):
        ef.get_method("int8_dynamic", act_bits=8).intervention(tiny_llama)
    with pytest.raises(InputError, match="act_bits"):
        ef.get_method("int8_dynamic", act_bits=6)


def test_int8_dynamic_with_online_hadamard(tiny_llama):
    m = tiny_llama
    ref = m.run(PROMPT).logits
    meth = ef.get_method("int8_dynamic", rotation="rh", online_had=True)
    cost = meth.cost(m, 4)
    assert cost.weight_bytes > ef.get_method("int8_dynamic", rotation="rh").cost(m, 4).weight_bytes  # the factors
    with m.intervene(meth.intervention(m)):
        assert m.parameter_bytes() == cost.weight_bytes
        downs = [m.linear_module(l, "down") for l in range(m.info.n_layers)]
        assert all(isinstance(d, qmodules.Int8DynamicLinear) and d.transform is not None for d in downs)
        out = m.run(PROMPT).logits
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(out, -1)
    assert 0 < float((lp.exp() * (lp - lq)).sum(-1).mean()) < 0.05  # rotation exact in float: only int8 error
    with pytest.raises(InputError, match="online_had=True needs rotation='rh'"):
        ef.get_method("int8_dynamic", online_had=True).intervention(m)


def test_int8_dynamic_without_fbgemm_fails_clearly(tiny_llama, monkeypatch):
    monkeypatch.setattr(qmodules, "supported_engines", lambda: ["qnnpack"])
    assert not qmodules.fbgemm_available()
    with pytest.raises(InputError, match="fbgemm"):
        ef.get_method("int8_dynamic").intervention(tiny_llama)
    with pytest.raises(InputError, match="fbgemm"):
        qmodules.Int8DynamicLinear(torch.randn(4, 8))


# ------------------------------------------------------------------------------------------ activations, KV
def test_activation_quantization_covers_every_linear_input_including_o_and_down(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("wa_quant", w_bits=None, a_bits=4)
    with m.intervene(meth.intervention(m)):
        assert len(m.active_edits()) == 7 * m.info.n_layers
        run = m.run(PROMPT, capture=["mlp_hidden", "mlp_out", "z", "attn_out", "attn_in", "q"], layers=[1])
        w_down, w_o, w_q = (m.linear_weight(1, k) for k in ("down", "o", "q"))
    # down_proj's input (the SwiGLU output, no norm in front) is quantized per token
    h = run["mlp_hidden", 1]
    assert torch.allclose(run["mlp_out", 1], quantize_tokens(h, 4) @ w_down.t(), atol=1e-5)
    assert not torch.allclose(run["mlp_out", 1], h @ w_down.t(), atol=1e-3)
    z = run["z", 1].reshape(*run["z", 1].shape[:2], -1)
    assert torch.allclose(run["attn_out", 1], quantize_tokens(z, 4) @ w_o.t(), atol=1e-5)
    x = run["attn_in", 1] * m.weights().layers[1].ln1.w
    q = (quantize_tokens(x, 4) @ w_q.t()).reshape(run["q", 1].shape)
    assert torch.allclose(run["q", 1], q, atol=1e-5)


def test_wa_quant_cost_and_kv_through_kivi(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("wa_quant", w_bits=4, a_bits=8, kv_bits=4, group=32, rotation="rh", online_had=True)
    assert meth.saving == "mixed"
    iv = meth.intervention(m)
    pol = meth.cache_policy(m)
    assert pol is not None and pol.name.startswith("KIVI 4-bit")
    with m.intervene(iv):
        cost = meth.cost(m, 64)
        sites = qbase.linear_sites(m)
        measured = m.parameter_bytes() - qbase.fp_bytes(m, sites) + iv.packed_bytes()
        cache = m.prefill(PROMPT * 3, cache_policy=meth.cache_policy(m))
    base_cost = ef.get_method("wa_quant", w_bits=4, a_bits=8, kv_bits=4, group=32, rotation="rh", online_had=True).cost(m, 64)
    assert base_cost.weight_bytes == measured
    st = cache.stats()
    assert meth.cost(m, st.full_tokens).kv_bytes == st.physical_bytes < meth.cost(m, st.full_tokens).baseline_kv_bytes
    assert cost.kv_ratio < 1
    # KV only: no weight edits at all, just the cache policy
    kv_only = ef.get_method("wa_quant", w_bits=None, a_bits=None, kv_bits=4)
    assert kv_only.intervention(m) is None and kv_only.saving == "real"


def test_wa_quant_with_gptq_needs_prepare(tiny_llama):
    m = tiny_llama
    meth = ef.get_method("quarot", weights="gptq", n_samples=2, seq_len=24)
    with pytest.raises(InputError, match="prepare"):
        meth.intervention(m)  # the edit runs at intervene time; building checks nothing yet
        with m.intervene(meth.intervention(m)):
            pass
    meth.prepare(m, CALIB)
    assert (meth.report.gptq_loss <= meth.report.rtn_loss * (1 + 1e-9)).all()
    with m.intervene(meth.intervention(m)):
        m.run(PROMPT)
