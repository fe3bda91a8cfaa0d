"""KIVI-style KV quantization: exact packing, the error bound, physical bytes, and generation quality."""
import pytest
import torch

from efficiency.kv.packing import dequantize_groups, pack, quantize_groups, unpack
from efficiency.kv.quantized import KIVILayer, KIVIQuantization, bytes_formula
from workbench.errors import InputError
from workbench.kv_cache import StepContext

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3  # about 135 tokens on tiny-llama
SMOL_PROMPT = ("Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
               "Madrid is the capital of Spain. Lisbon is the capital of Portugal. Vienna is the capital of "
               "Austria. Warsaw is the capital of Poland. Prague is the capital of the Czech Republic. "
               "Budapest is the capital of Hungary. Oslo is the capital of Norway. Stockholm is the capital of "
               "Sweden. Helsinki is the capital of Finland. Copenhagen is the capital of Denmark. Dublin is the "
               "capital of Ireland. Brussels is the capital of Belgium. Amsterdam is the capital of the "
               "Netherlands. Bern is the capital of Switzerland. Athens is the capital of")


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_exact_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (3, 5, 32), generator=g).to(torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 32 * bits // 8)
    assert torch.equal(unpack(packed, bits), codes)


def test_pack_layout_low_bits_first():
    assert pack(torch.tensor([1, 2], dtype=torch.uint8), 4).tolist() == [0x21]
    assert pack(torch.tensor([3, 0, 1, 2], dtype=torch.uint8), 2).tolist() == [0b10010011]


def test_pack_rejects_bad_shapes_and_bits():
    with pytest.raises(InputError):
        pack(torch.zeros(3, dtype=torch.uint8), 2)  # 3 codes do not fill whole bytes
    with pytest.raises(InputError):
        pack(torch.zeros(8, dtype=torch.uint8), 3)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dim", [-1, -2])
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.float16])
def test_quantization_error_within_half_scale(bits, dim, param_dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 16, generator=g) * 3 + 0.5
    x[0, 0, :8] *= 40  # outliers make some groups wide
    q = quantize_groups(x, bits, 8, dim=dim, param_dtype=param_dtype)
    assert q.codes.dtype == torch.uint8 and int(q.codes.max()) <= 2 ** bits - 1
    assert q.scale.dtype == param_dtype and q.mn.dtype == param_dtype
    xh = dequantize_groups(q.codes, q.scale, q.mn, 8, dim=dim)
    half = (q.scale.float() / 2).repeat_interleave(8, dim=dim)
    err = (x - xh).abs()
    assert bool((err <= half * (1 + 1e-5) + 1e-6).all()), float((err - half).max())


# ---------------------------------------------------------------------------- KIVI cache
def test_physical_bytes_match_formula_at_every_step(tiny_llama):
    m, i = tiny_llama, tiny_llama.info
    for bits in (2, 4, 8):
        pol = KIVIQuantization(bits, group_size=16, residual=16)
        g = m.generate(PROMPT, 20, stop_at_eos=False, cache_policy=pol)
        t0 = len(g.prompt_tokens)
        for step, st in enumerate(g.cache_stats):
            n = t0 + step
            expected = bytes_formula(n, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads, d_head=i.d_head, bits=bits,
                                     group_size=16, residual=16)
            assert st.physical_bytes == expected == pol.bytes_formula(n, g.cache)
            assert st.logical_bytes == n * i.n_layers * i.n_kv_heads * i.d_head * 2 * 4
            assert int(st.tokens[0, 0]) == n
        lay = g.cache.layer(0)
        assert isinstance(lay, KIVILayer)
        n = t0 + len(g.cache_stats) - 1
        assert lay.n_quantized == 16 * ((n - 16) // 16) and lay.get_seq_length() == n


def test_4bit_quantized_part_below_03_of_fp32(tiny_llama):
    i = tiny_llama.info
    pol = KIVIQuantization(4, group_size=16, residual=16)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n_r = sum(lay.residual_keys.shape[-2] for lay in cache.layers())
    n_q = sum(lay.n_quantized for lay in cache.layers())
    residual_bytes = n_r * i.n_kv_heads * i.d_head * 2 * 4
    position_bytes = sum(p.numel() for p in cache.positions) * 8
    quant_bytes = cache.stats().physical_bytes - residual_bytes - position_bytes
    ratio = quant_bytes / (n_q * i.n_kv_heads * i.d_head * 2 * 4)
    assert n_q > 0 and ratio < 0.3  # 0.1875 with fp16 params, group 16, d_head 16


def test_residual_window_is_exact_and_quantized_part_within_bound(tiny_llama):
    m = tiny_llama
    full = m.prefill(PROMPT)
    pol = KIVIQuantization(4, group_size=16, residual=24)
    q = m.prefill(PROMPT, cache_policy=pol)
    for l in range(full.n_layers):
        lay = q.layer(l)
        n_q, n = lay.n_quantized, full.seq_len(l)
        assert n - n_q >= 24 and n_q % 16 == 0 and n_q > 0
        assert torch.equal(lay.residual_keys, full.keys(l)[..., n_q:, :])
        assert torch.equal(lay.residual_values, full.values(l)[..., n_q:, :])
        assert torch.equal(q.keys(l)[..., n_q:, :], full.keys(l)[..., n_q:, :])
        # the quantized part: within half a (4-bit) step of its group range
        k, v = full.keys(l)[..., :n_q, :], full.values(l)[..., :n_q, :]
        kq = k.reshape(*k.shape[:2], n_q // 16, 16, -1)
        k_step = (kq.amax(3) - kq.amin(3)) / 15  # per channel, per group of 16 tokens
        k_err = (q.keys(l)[..., :n_q, :] - k).abs().reshape_as(kq).amax(3)
        assert bool((k_err <= k_step * 0.5 * 1.01 + 1e-5).all())
        vq = v.reshape(*v.shape[:3], 1, 16)  # value groups: min(16, d_head=16) channels per token
        v_step = (vq.amax(-1) - vq.amin(-1)) / 15
        v_err = (q.values(l)[..., :n_q, :] - v).abs().reshape_as(vq).amax(-1)
        assert bool((v_err <= v_step * 0.5 * 1.01 + 1e-5).all())
    assert torch.equal(q.positions[0], full.positions[0])


def test_8bit_generation_close_to_full_cache_tiny(tiny_llama):
    full = tiny_llama.generate(PROMPT, 8, stop_at_eos=False)
    g = tiny_llama.generate(PROMPT, 8, stop_at_eos=False, cache_policy=KIVIQuantization(8, 16, 16))
    diff = float((g.logits - full.logits).abs().max())
    scale = float(full.logits.abs().max())
    print(f"\ntiny-llama 8-bit KIVI: max |logit diff| = {diff:.4g} (max |logit| {scale:.3g})")
    assert diff < 0.02 * scale
    assert torch.equal(g.logits[0], full.logits[0])  # the first token is predicted by full-precision prefill


def test_eviction_after_quantization_keeps_working(tiny_llama):
    """An eviction policy's keep() writes through the layer's keys/values; the next flush re-quantizes."""
    pol = KIVIQuantization(4, group_size=16, residual=16)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n = cache.seq_len(0)
    before_k = cache.keys(0)
    cache.keep(0, torch.arange(n - 40, n))
    assert torch.equal(cache.keys(0), before_k[..., n - 40:, :])
    pol.apply(cache, StepContext(1, 1))
    lay = cache.layer(0)
    assert lay.get_seq_length() == 40 and lay.n_quantized == 16
    assert cache.stats().physical_bytes < bytes_formula(n, n_layers=2, n_kv_heads=2, d_head=16, bits=4,
                                                        group_size=16, residual=16)


@pytest.mark.parametrize("kwargs", [dict(bits=3), dict(bits=16), dict(bits=True), dict(group_size=0),
                                    dict(group_size=-4), dict(group_size=1.5), dict(residual=-1),
                                    dict(value_group_size=0), dict(param_dtype=torch.int8)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(InputError):
        KIVIQuantization(**kwargs)


def test_group_size_not_dividing_head_dim_raises(tiny_llama):
    with pytest.raises(InputError, match="divide"):
        tiny_llama.prefill(PROMPT, cache_policy=KIVIQuantization(4, group_size=12))  # d_head 16
    with pytest.raises(InputError, match="divide"):
        bytes_formula(100, n_layers=1, n_kv_heads=1, d_head=64, bits=4, group_size=32, value_group_size=24)


# ---------------------------------------------------------------------------- SmolLM2
@pytest.mark.smollm2
def test_kivi_on_smollm2(smollm2):
    """8-bit: same greedy tokens, near-identical logits; bytes equal the formula.

    Measured (127-token prompt, 6 tokens): max |logit diff| 0.059 (8-bit), 0.73 (4-bit), 4.8 (2-bit).
    """
    m, i = smollm2, smollm2.info
    full = m.generate(SMOL_PROMPT, 3, stop_at_eos=False)
    t0 = len(full.prompt_tokens)
    assert t0 > 64 + 32  # some groups are really quantized (group 32, residual 32)
    g = m.generate(SMOL_PROMPT, 3, stop_at_eos=False, cache_policy=KIVIQuantization(8))
    diff = float((g.logits - full.logits).abs().max())
    print(f"\nSmolLM2 8-bit KIVI ({t0}-token prompt): max |logit diff| = {diff:.4g}")
    assert torch.equal(g.new_tokens, full.new_tokens) and diff < 0.5
    for step, st in enumerate(g.cache_stats):
        assert st.physical_bytes == bytes_formula(t0 + step, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads,
                                                  d_head=i.d_head, bits=8)
    # 4-bit, quantized part only (fp16 scales/mins): codes 0.5 + params 0.125 bytes per element = 0.156 of fp32
    cache = m.prefill(SMOL_PROMPT, cache_policy=KIVIQuantization(4))
    n_q = cache.layer(0).n_quantized
    assert n_q == 32 * ((t0 - 32) // 32) > 0
    fp_bytes = (t0 - n_q) * i.n_layers * i.n_kv_heads * i.d_head * 2 * 4 + t0 * i.n_layers * i.n_kv_heads * 8
    ratio = (cache.stats().physical_bytes - fp_bytes) / (n_q * i.n_layers * i.n_kv_heads * i.d_head * 2 * 4)
    assert ratio < 0.3
