"""MHA2MLA: exact at full rank with every RoPE pair, a latent cache with the bytes of the formula, bad input."""
import pytest
import torch

import efficiency as ef
from efficiency.mla import MHA2MLA, LatentLayer, kv_bytes_mla, select_pairs
from efficiency.mla.convert import dims_of
from efficiency_helpers import HELD_OUT, TEXTS, deep_tiny_llama, same_params, snapshot
from workbench import InputError

PROMPT = HELD_OUT[0][:90]


@pytest.fixture(scope="module")
def m6():
    return deep_tiny_llama()


@pytest.mark.parametrize("mode", ["absorb", "decompress"])
def test_full_rank_with_every_rope_pair_reproduces_the_logits(m6, mode):
    ref = m6.run(PROMPT).logits
    gen = m6.generate(PROMPT, 5, stop_at_eos=False)
    meth = MHA2MLA(d_kv=16, rope_dims=16, mode=mode)  # d_head 16: all pairs rotated, latent = full V rank
    meth.prepare(m6, TEXTS)
    with m6.intervene(meth.intervention(m6)):
        assert (m6.run(PROMPT).logits - ref).abs().max() <= 1e-4
        g = m6.generate(PROMPT, 5, stop_at_eos=False)
    assert torch.equal(g.new_tokens, gen.new_tokens) and (g.logits - gen.logits).abs().max() <= 1e-4
    assert isinstance(g.cache.layer(0), LatentLayer)


@pytest.mark.parametrize("d_kv,rope_dims", [(4, 0), (8, 4), (12, 8)])
def test_latent_cache_bytes_follow_the_formula_and_decoding_matches_recompute(m6, d_kv, rope_dims):
    i = m6.info
    meth = MHA2MLA(d_kv=d_kv, rope_dims=rope_dims, window=64, n_windows=2)
    meth.prepare(m6, TEXTS)
    with m6.intervene(meth.intervention(m6)):
        g = m6.generate(PROMPT, 4, stop_at_eos=False)
        ref = m6.generate(PROMPT, 4, stop_at_eos=False, use_cache=False)
        cache = m6.prefill(PROMPT)
        keys = cache.keys(2)  # decompressed view for readers
    assert torch.equal(g.new_tokens, ref.new_tokens) and (g.logits - ref.logits).abs().max() <= 1e-4
    st = g.cache.stats()
    # per token, layer and KV head: the latent and the kept rotated key dims (fp32) plus the int64 position
    assert st.physical_bytes == st.full_tokens * i.n_layers * i.n_kv_heads * ((d_kv + rope_dims) * 4 + 8)
    assert meth.cost(m6, st.full_tokens).kv_bytes == st.physical_bytes
    assert st.physical_bytes / st.logical_bytes == pytest.approx(((d_kv + rope_dims) * 4 + 8) / (2 * i.d_head * 4))
    for l in range(i.n_layers):  # a latent layer keeps the position of each of its entries
        assert tuple(g.cache.positions[l].shape) == (1, i.n_kv_heads, st.full_tokens)
        assert torch.equal(g.cache.positions[l][0, 0], torch.arange(st.full_tokens))
    assert keys.shape == (1, i.n_kv_heads, cache.stats().full_tokens, i.d_head)
    assert kv_bytes_mla(m6, 100, 32, 8, range(30), 4) > 0


def test_absorb_and_decompress_agree(m6):
    outs = []
    for mode in ("absorb", "decompress"):
        meth = MHA2MLA(d_kv=8, rope_dims=4, rope_select="high", mode=mode)
        meth.prepare(m6, TEXTS)
        with m6.intervene(meth.intervention(m6)):
            outs.append(m6.run(PROMPT).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_restore_and_latent_layer_guards(m6):
    snap = snapshot(m6)
    ref = m6.run(PROMPT).logits
    meth = MHA2MLA(d_kv=8, rope_dims=4, rope_select="uniform")
    meth.prepare(m6, TEXTS)
    with pytest.raises(RuntimeError, match="boom"):
        with m6.intervene(meth.intervention(m6)):
            cache = m6.prefill(PROMPT)
            raise RuntimeError("boom")
    assert same_params(m6, snap) and torch.equal(m6.run(PROMPT).logits, ref)
    with pytest.raises(InputError, match="MLA latents"):
        with m6.session() as s:  # the ordinary attention cannot extend a latent cache
            s.forward_cached(cache, torch.tensor([[5]]))
    with pytest.raises(InputError, match="cannot be edited"):
        cache.keep(0, torch.tensor([0, 1]))


def test_rope_selection():
    class Info:
        n_layers, n_kv_heads, d_head = 2, 2, 8

    class M:
        info = Info()

    assert select_pairs(M(), 4, "high")[0, 0].tolist() == [0, 1]
    assert select_pairs(M(), 4, "low")[1, 1].tolist() == [2, 3]
    scores = torch.tensor([[[0.1, 5.0, 0.2, 3.0], [9.0, 0.0, 1.0, 0.5]]] * 2)
    assert select_pairs(M(), 4, "2-norm", scores)[0].tolist() == [[1, 3], [0, 2]]
    rope, nope = dims_of(torch.tensor([[1, 3]]), 8)
    assert rope.tolist() == [[1, 3, 5, 7]] and nope.tolist() == [[0, 2, 4, 6]]
    with pytest.raises(InputError, match="even"):
        select_pairs(M(), 3, "high")


def test_bad_input(m6):
    with pytest.raises(InputError, match="larger than the head dimensions allow"):
        ef.get_method("mha2mla", d_kv=29, rope_dims=4).prepare(m6, TEXTS)  # 2 x 16 - 4 = 28
    with pytest.raises(InputError, match="even"):
        ef.get_method("mha2mla", d_kv=8, rope_dims=3)
    with pytest.raises(InputError, match="exceeds the head dimension"):
        ef.get_method("mha2mla", d_kv=8, rope_dims=18).prepare(m6, TEXTS)
    with pytest.raises(InputError, match="empty"):
        ef.get_method("mha2mla", d_kv=8, rope_dims=4).prepare(m6, [])
    with pytest.raises(InputError, match="prepare"):
        ef.get_method("mha2mla").intervention(m6)


def test_gpt2_is_refused(tiny_gpt2):
    with pytest.raises(InputError, match="Llama-family"):
        ef.get_method("mha2mla", d_kv=8, rope_dims=4).prepare(tiny_gpt2, TEXTS)


def test_mla_report_attention_effect_and_explorer(m6):
    from efficiency.mla import mla_attention_effect, mla_explorer, mla_report

    rep = mla_report(m6, TEXTS, [PROMPT], d_kvs=(4, 8), rope_dims=4, extra=lambda model: {"one": 1.0}, window=32,
                     n_windows=2)
    f = rep.to_frame()
    assert list(f.variant) == ["unmodified", "d_kv=4", "d_kv=8"] and (f.one == 1.0).all()
    i = m6.info
    # physical bytes per entry and KV head, each with its int64 position: latent + rope dims against K and V
    assert f.kv_ratio.iloc[1] == pytest.approx(((4 + 4) * 4 + 8) / (2 * i.d_head * 4 + 8))
    assert sum(rep.layer_bytes["d_kv=8"]) == f.kv_bytes.iloc[2] and rep.figure() is not None
    assert sum(rep.layer_bytes["unmodified"]) == f.kv_bytes.iloc[0]  # per-layer bytes (index included) add up
    full = MHA2MLA(d_kv=16, rope_dims=16)
    full.prepare(m6, TEXTS)
    eff = mla_attention_effect(m6, full, PROMPT[:60])
    assert float(eff.tv.max()) < 1e-4 and torch.allclose(eff.sink_base, eff.sink_mla, atol=1e-4)
    box = mla_explorer(m6, PROMPT[:60], TEXTS, d_kvs=(4, 16), rope_dims=4, svds=("plain",))
    e = box.show("plain", 16)
    assert len(e.detail) == 6 and all(0 <= v <= 1 for v in e.detail)
    assert m6.active_edits() == []
