"""Value-state drains: ‖v_j W_O^h‖ against an independent computation from HF weights and
hidden states; padding; report API; SmolLM2 (numbers in docs/sinks.md)."""
import numpy as np
import pytest
import torch

from probes.sinks.value_drains import ValueDrainReport, drain_norms, value_drain
from workbench.errors import InputError
from workbench.loading.tiny import build_tiny  # a never-wrapped HF copy, same seed
from conftest import SMOL_PROMPTS

PROMPTS = ["the cat sat on the mat.", "a dog ran."]


def _orig_weight(hf, layer: int, suffix: str) -> torch.Tensor:
    """The parameter ``model.layers.{layer}.{suffix}`` of a plain HF Llama."""
    return hf.state_dict()[f"model.layers.{layer}.{suffix}"]


def test_drain_norms_equal_independent_hf_computation(tiny_llama):
    m = tiny_llama
    r = value_drain(m, PROMPTS)
    ids, lengths = m.tokenize(PROMPTS)
    with torch.no_grad():
        hf = build_tiny(m.info.name)[0]
        hs = hf(ids, output_hidden_states=True).hidden_states  # input of block l = hs[l]
    H, G, e = m.info.n_heads, m.info.n_kv_heads, m.info.d_head
    eps = hf.config.rms_norm_eps
    for l in range(m.info.n_layers):
        x = hs[l].double()
        g = _orig_weight(hf, l, "input_layernorm.weight").double()
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
        v = (xn @ _orig_weight(hf, l, "self_attn.v_proj.weight").double().T).view(*x.shape[:2], G, e)
        wo = _orig_weight(hf, l, "self_attn.o_proj.weight").double()  # (d, H*e)
        for h in range(H):
            out = v[:, :, h // (H // G)] @ wo[:, h * e:(h + 1) * e].T  # (B, T, d)
            ref = out.norm(dim=-1)
            for b, n in enumerate(lengths):
                assert torch.allclose(r.norms[b, l, h, :n].double(), ref[b, :n], rtol=1e-4, atol=1e-5), (l, h)
    assert r.norms[1, :, :, lengths[1]:].isnan().all()


def test_drain_norms_gqa_mapping():
    v = torch.zeros(1, 2, 2, 3)
    v[0, :, 1] = 1.0  # only KV head 1 is non-zero
    w_o = torch.eye(3).repeat(4, 1, 1)  # (H=4, e=3, d=3)
    n = drain_norms(v, w_o)  # (B, H, T)
    assert torch.allclose(n[0, :, 0], torch.tensor([0.0, 0.0, 3 ** 0.5, 3 ** 0.5]))  # heads 2, 3 read KV head 1


def test_ratio_excludes_padding(tiny_gpt2):
    r = value_drain(tiny_gpt2, PROMPTS, layers=[1])
    for b, n in enumerate(r.lengths):
        ref = r.norms[b, 0, :, 0] / r.norms[b, 0, :, 1:n].mean(-1)
        assert torch.allclose(r.ratio_per_prompt[b, 0], ref, atol=1e-6)
    assert torch.allclose(r.ratio, r.ratio_per_prompt.mean(0))


def test_report_api_and_bad_input(tiny_llama):
    r = value_drain(tiny_llama, PROMPTS)
    assert isinstance(r, ValueDrainReport) and r.norms.shape == (2, 2, 4, max(r.lengths))
    df = r.to_frame()
    assert len(df) == 8 and list(df.columns) == ["layer", "head", "sink_norm", "rest_norm", "ratio"]
    tf = r.token_frame(1, 2, prompt=1)
    assert len(tf) == r.lengths[1] and tf.token.tolist() == r.str_tokens[1]
    fig = r.figure()
    assert len(fig.data) == 4
    np.testing.assert_allclose(np.asarray(fig.data[-1].z, dtype=float), np.log10(r.ratio.numpy()), atol=1e-6)
    np.testing.assert_allclose(np.asarray(fig.data[2].y, dtype=float), r.layer_ratio.numpy(), atol=1e-6)
    assert "ValueDrainReport(" in repr(r)
    with pytest.raises(InputError, match="has 1 token"):
        value_drain(tiny_llama, ["ab", "a"])
    with pytest.raises(InputError, match="out of range"):
        value_drain(tiny_llama, PROMPTS, layers=7)
    with pytest.raises(InputError, match="not analysed"):
        value_drain(tiny_llama, PROMPTS, layers=[0]).token_frame(1, 0)
    with pytest.raises(InputError, match="Head"):
        r.token_frame(0, 9)




@pytest.mark.smollm2
def test_smollm2_sink_value_is_small(smollm2):
    r = value_drain(smollm2, SMOL_PROMPTS)
    lr = r.layer_ratio
    sinky = [l for l in list(range(3, 10)) + list(range(12, 29))]
    assert lr[sinky].median() < 0.4, lr  # measured 0.10-0.39 per layer (docs/sinks.md)
    assert lr[[10, 11]].mean() > 0.6, lr  # the non-sinky layers 10-11: measured 0.91 and 1.35
