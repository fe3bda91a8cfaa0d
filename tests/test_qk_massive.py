"""Q/K concentration maps: RoPE pair-norm invariance, frequencies from the model's inv_freq,
flat-map statistics, non-rotary fallback; SmolLM2's Q/K above V (numbers in docs/sinks.md)."""
import math

import pytest
import torch

from probes.sinks.qk_massive import (QKConcentrationReport, concentration_map, concentration_ratio, dim_frequencies,
                               pair_norms, qk_concentration)
from workbench.errors import InputError
from conftest import SMOL_PROMPTS

PROMPTS = ["the cat sat on the mat, and then the dog came.", "a dog ran."]


def test_rope_preserves_pair_norms_not_dim_norms(tiny_llama):
    m = tiny_llama
    run = m.run(PROMPTS, capture=["q", "q_rot", "k", "k_rot"], logits=None)
    half = m.info.d_head // 2
    for l in range(m.info.n_layers):
        for pre, post in (("q", "q_rot"), ("k", "k_rot")):
            a, b = run[pre, l], run[post, l]  # (B, T, heads, e)
            pa = (a[..., :half] ** 2 + a[..., half:] ** 2).sqrt()
            pb = (b[..., :half] ** 2 + b[..., half:] ** 2).sqrt()
            assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-5)  # each (i, i + e/2) pair, every token
            assert not torch.allclose(a.abs(), b.abs(), atol=1e-3)  # per-dim values do change
    # the same through the report's maps
    r = qk_concentration(m, PROMPTS)
    ids, lengths = m.tokenize(PROMPTS)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]) & (torch.arange(ids.shape[1])[None] >= 1)
    for l in range(m.info.n_layers):
        pre = concentration_map(run["q", l], mask)
        assert torch.allclose(pair_norms(r.q_maps[l]), pair_norms(pre), rtol=1e-4)
        assert not torch.allclose(r.q_maps[l], pre, rtol=1e-3)


def test_frequencies_equal_model_inv_freq(tiny_llama):
    r = qk_concentration(tiny_llama, PROMPTS)
    inv = tiny_llama.hf.model.rotary_emb.inv_freq.float()
    e = tiny_llama.info.d_head
    assert r.rotary and r.freq_source.startswith("hf:") and torch.equal(r.inv_freq, inv)
    for i in range(e):
        assert r.theta[i].item() == pytest.approx(inv[i % (e // 2)].item())
        assert r.pair[i].item() == i % (e // 2)
        # plain RoPE: θ_p = base^(-2p/e)
        assert r.theta[i].item() == pytest.approx(10000.0 ** (-2 * (i % (e // 2)) / e), rel=1e-5)
    assert torch.allclose(r.wavelength, 2 * math.pi / r.theta)
    assert r.quarter_dims("low").tolist() == [6, 7, 14, 15]  # lowest-frequency quarter of 8 pairs
    assert r.quarter_dims("high").tolist() == [0, 1, 8, 9]


def test_maps_equal_manual_norms_and_exclude_first(tiny_llama):
    run = tiny_llama.run(PROMPTS, capture=["k_rot", "v"], layers=[1], logits=None)
    ids, lengths = tiny_llama.tokenize(PROMPTS)
    for excl in (True, False):
        r = qk_concentration(tiny_llama, PROMPTS, exclude_first=excl, layers=[1])
        lo = 1 if excl else 0
        k = torch.cat([run["k_rot", 1][b, lo:n] for b, n in enumerate(lengths)])  # (N, G, e)
        v = torch.cat([run["v", 1][b, lo:n] for b, n in enumerate(lengths)])
        assert torch.allclose(r.k_maps[0], k.norm(dim=0), rtol=1e-5)
        assert torch.allclose(r.v_maps[0], v.norm(dim=0), rtol=1e-5)
        assert r.n_tokens == sum(lengths) - (2 if excl else 0)


def test_flat_and_random_maps():
    flat = torch.ones(3, 64)
    assert torch.allclose(concentration_ratio(flat), torch.ones(3))
    x = torch.randn(4, 500, 2, 64, generator=torch.Generator().manual_seed(0))
    ratio = concentration_ratio(concentration_map(x, torch.ones(4, 500, dtype=torch.bool)))
    assert (ratio < 1.15).all()  # no RoPE, random activations: no massive dim
    pair, theta = dim_frequencies(torch.tensor([1.0, 0.1]), 6)  # partial rotary: 4 rotated dims of 6
    assert pair.tolist() == [0, 1, 0, 1, -1, -1] and theta.tolist()[4:] == [0.0, 0.0]


def test_non_rotary_model_uses_plain_qk(tiny_gpt2):
    r = qk_concentration(tiny_gpt2, PROMPTS)
    assert not r.rotary and r.inv_freq is None and "no rotary" in r.freq_source
    assert torch.isinf(r.wavelength).all()
    assert r.q_maps.shape == (2, 4, 16) and r.k_maps.shape == (2, 4, 16)
    assert "no RoPE" in repr(r)
    s = r.energy_share("q", "low")
    assert s.shape == (2, 4) and ((s >= 0) & (s <= 1)).all()


def test_report_api_and_bad_input(tiny_llama):
    r = qk_concentration(tiny_llama, PROMPTS)
    assert isinstance(r, QKConcentrationReport)
    df = r.to_frame()
    assert len(df) == 2 * (4 + 2 + 2)
    assert {"layer", "kind", "head", "concentration", "argmax_dim", "pair", "wavelength", "low_share"} <= set(df.columns)
    ls = r.layer_summary()
    assert list(ls.layer) == [0, 1] and "k_low_share" in ls.columns
    fig = r.figure(1)
    assert len(fig.data) == 3 and fig.data[0].z.shape == (4, 16) and fig.data[1].z.shape == (2, 16)
    assert "QKConcentrationReport(" in repr(r) and "<table" in r._repr_html_()
    with pytest.raises(InputError, match="not analysed"):
        r.figure(5)
    with pytest.raises(InputError, match="kind"):
        r.maps("z")
    with pytest.raises(InputError, match="has 1 token"):
        qk_concentration(tiny_llama, ["a"])
    assert qk_concentration(tiny_llama, ["a"], exclude_first=False).n_tokens == 1




@pytest.mark.smollm2
def test_smollm2_qk_concentration_above_v(smollm2):
    r = qk_concentration(smollm2, SMOL_PROMPTS)
    ls = r.layer_summary().set_index("layer")
    deep = ls.loc[5:]
    assert (deep.q_concentration > deep.v_concentration).all() and (deep.k_concentration > deep.v_concentration).all()
    assert deep.q_concentration.mean() > 2 * deep.v_concentration.mean()
    # arg-max Q/K dims cluster in the low-frequency pairs (measured: mostly pairs 22-25, wavelengths > 10k tokens)
    df = r.to_frame()
    qk = df[(df.kind != "v") & (df.layer >= 5)]
    assert (qk.wavelength > 1e4).mean() > 0.6
    assert abs(deep.v_low_share.mean() - 0.25) < 0.05 < deep.k_low_share.mean() - 0.25
    assert r.inv_freq.numel() == 32 and r.theta[22].item() == pytest.approx(1e5 ** (-44 / 64), rel=1e-5)
