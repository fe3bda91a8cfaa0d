"""Lexico: OMP with a cached Gram matrix, sparse storage whose bytes match the formula, exact
reconstruction with a complete dictionary, dictionary learning and files."""
import copy

import pytest
import torch

import workbench as wb
from efficiency.kv.lexico import LexicoCompression, LexicoLayer, bytes_formula
from efficiency.kv.lexico_dictionary import LexicoDictionary, learn_one, relative_error
from efficiency.kv.omp import omp, reconstruct
from workbench.questions import compress_context

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


def _orthonormal_dictionary(model, seed=0):
    """A complete dictionary per layer: a random orthonormal basis of R^d_head (N = d_head)."""
    i = model.info
    g = torch.Generator().manual_seed(seed)
    q = torch.stack([torch.linalg.qr(torch.randn(i.d_head, i.d_head, generator=g))[0] for _ in range(2 * i.n_layers)])
    return LexicoDictionary(q[:i.n_layers], q[i.n_layers:], i.name, model.fingerprint)


def _random_dictionary(model, n_atoms=64, seed=1):
    i = model.info
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(2, i.n_layers, i.d_head, n_atoms, generator=g)
    d = d / d.norm(dim=2, keepdim=True)
    return LexicoDictionary(d[0], d[1], i.name, model.fingerprint)


def test_omp_complete_dictionary_is_exact_and_error_falls_with_sparsity():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(32, 32, generator=g))[0]
    x = torch.randn(300, 32, generator=g) * 5
    idx, coef = omp(x, q, 32)
    torch.testing.assert_close(reconstruct(idx, coef, q), x, atol=2e-5, rtol=1e-5)
    d = torch.randn(32, 128, generator=g)
    d = d / d.norm(dim=0)
    errs = [relative_error(x, d, s) for s in (2, 4, 8, 16)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] * 0.6
    # OMP's picks: the first atom is the one most correlated with x
    idx, _ = omp(x, d, 3)
    assert torch.equal(idx[:, 0], (x @ d).abs().argmax(-1))


def test_complete_dictionary_reconstructs_the_cache_to_float_precision(tiny_llama):
    full = tiny_llama.prefill(PROMPT)
    pol = LexicoCompression(sparsity=tiny_llama.info.d_head, buffer=0, block=1,
                            value_dtype=torch.float32, dictionary=_orthonormal_dictionary(tiny_llama))
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    for l in range(cache.n_layers):
        lay = cache.layer(l)
        assert isinstance(lay, LexicoLayer) and lay.n_sparse == cache.next_position
        torch.testing.assert_close(cache.keys(l), full.keys(l), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.values(l), full.values(l), atol=1e-5, rtol=1e-5)


def test_physical_bytes_match_the_formula_at_every_step(tiny_llama):
    m, i = tiny_llama, tiny_llama.info
    for value_dtype, vb in ((torch.float16, 2), (torch.float8_e4m3fn, 1)):
        pol = LexicoCompression(sparsity=4, buffer=16, block=8, value_dtype=value_dtype,
                                dictionary=_random_dictionary(m))
        g = m.generate(PROMPT, 12, stop_at_eos=False, cache_policy=pol)
        t0 = len(g.prompt_tokens)
        for step, st in enumerate(g.cache_stats):
            n = t0 + step
            expected = bytes_formula(n, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads, d_head=i.d_head, sparsity=4,
                                     buffer=16, block=8, value_bytes=vb)
            assert st.physical_bytes == expected == pol.bytes_formula(n, g.cache)
        idx, coef = g.cache.layer(0).codes("keys")
        assert idx.dtype == torch.int16 and coef.dtype == value_dtype and idx.shape[-1] == 4
        assert g.cache.layer(0).n_sparse == 8 * ((t0 + 11 - 16) // 8)
        assert torch.isfinite(g.logits).all()


def test_buffer_is_exact_and_sparse_part_matches_omp(tiny_llama):
    full = tiny_llama.prefill(PROMPT)
    d = _random_dictionary(tiny_llama)
    cache = tiny_llama.prefill(PROMPT, cache_policy=LexicoCompression(sparsity=5, buffer=20, block=10, dictionary=d,
                                                                       value_dtype=torch.float32))
    for l in range(cache.n_layers):
        n_c = cache.layer(l).n_sparse
        assert torch.equal(cache.keys(l)[..., n_c:, :], full.keys(l)[..., n_c:, :])
        k = full.keys(l)[..., :n_c, :].reshape(-1, d.d_head)
        idx, coef = omp(k, d.keys[l], 5)
        torch.testing.assert_close(cache.keys(l)[..., :n_c, :].reshape(-1, d.d_head), reconstruct(idx, coef, d.keys[l]),
                                   atol=1e-5, rtol=1e-5)


def test_copies_share_the_gram_and_questions_work(tiny_llama):
    d = _random_dictionary(tiny_llama)
    ctx = compress_context(tiny_llama, PROMPT, LexicoCompression(sparsity=4, buffer=16, block=8, dictionary=d))
    lay = ctx.cache.layer(0)
    twin = copy.deepcopy(lay)
    assert twin._k.gram is lay._k.gram and twin._k.indices.data_ptr() != lay._k.indices.data_ptr()
    a = ctx.ask(" What jumps?", max_new_tokens=3, stop_at_eos=False)
    b = ctx.ask(" What jumps?", max_new_tokens=3, stop_at_eos=False)
    assert torch.equal(a.logits, b.logits)
    assert d.gram(0, "keys") is d.gram(0, "keys")  # computed once


def test_learning_recovers_a_planted_dictionary():
    g = torch.Generator().manual_seed(3)
    true = torch.randn(16, 48, generator=g)
    true = true / true.norm(dim=0)
    idx = torch.stack([torch.randperm(48, generator=g)[:3] for _ in range(3000)])
    coef = torch.randn(3000, 3, generator=g)
    x = reconstruct(idx, coef, true)
    learned, errors = learn_one(x, 48, 3, iterations=15, seed=0)
    assert errors[-1] < 0.5 * errors[0] and errors[-1] < 0.15, errors
    assert torch.allclose(learned.norm(dim=0), torch.ones(48), atol=1e-5)


def test_dictionary_files_and_model_check(tiny_llama, tmp_path):
    d = _random_dictionary(tiny_llama)
    d.config = {"note": "test"}
    path = d.save(tmp_path / "tiny")
    back = LexicoDictionary.load(path)
    torch.testing.assert_close(back.keys, d.keys.half().float())
    assert back.fingerprint == tiny_llama.fingerprint and back.config == {"note": "test"}
    back.check(tiny_llama)
    other = LexicoDictionary(d.keys, d.values, "other", "0123456789abcdef")
    with pytest.raises(wb.InputError, match="fingerprint"):
        other.check(tiny_llama)
    with pytest.raises(wb.InputError, match="build_lexico"):
        LexicoDictionary.for_model(tiny_llama)
    with pytest.raises(wb.InputError, match="dictionary"):
        tiny_llama.prefill(PROMPT, cache_policy=LexicoCompression())
    with pytest.raises(wb.InputError, match="sparsity"):
        LexicoCompression(sparsity=0)
