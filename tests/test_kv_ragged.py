"""Per-head (ragged) KV storage and AdaKV budgets; ZigZagKV-style per-layer budgets from uncertainty.

Ragged: with equal counts it reproduces the dense per-head path exactly; with unequal counts it
equals a dense cache whose evicted entries are masked per head, and an independent per-head
attention over the packed storage; bytes equal the formula; decoding stays well-formed.
"""
import contextlib
import math

import pytest
import torch

from efficiency.kv import (
    AdaKV, AdaptiveHeadBudgets, PyramidBudgets, SnapKV, StreamingLLM, UncertaintyBudgets, ZigZagKV, get_policy,
    ragged_attention, ragged_bytes_formula,
)
from efficiency.kv.harness import perplexity
from efficiency.kv.zigzag import tokens_for_mass
from workbench import settings
from workbench.errors import InputError
from workbench.generation import cached_forward
from workbench.hooks import HookSession
from workbench.kv_cache import KVCache, RaggedLayer, StepContext

from kv_helpers import Recorder, kept_sets, masked_generation_logits, masked_perplexity


@contextlib.contextmanager
def wb_settings(**kw):
    old = {k: getattr(settings, k) for k in kw}
    for k, v in kw.items():
        setattr(settings, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(settings, k, v)


PROMPT = "The quick brown fox jumps over the lazy dog. A second sentence follows here. " * 2


def _prefill(model, prompt=PROMPT):
    return model.prefill(prompt)


def _per_head_indices(n, counts, seed=0):
    """Different, sorted slot sets per head with the given counts (the last slot always kept)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in counts:
        idx = torch.randperm(n - 1, generator=g)[:c - 1]
        out.append(torch.cat([idx, torch.tensor([n - 1])]).sort().values)
    return out


def _decode(model, cache, tokens):
    with torch.no_grad():
        return torch.stack([cached_forward(model, cache, torch.tensor([[t]]))[0, -1] for t in tokens])


def _masked_reference(model, full, kept, tokens):
    """Dense full cache; at every step each head's evicted slots get -inf scores (kvpress-style masking)."""
    cache = full.copy()
    n0 = full.seq_len(0)
    outs = []
    for step, t in enumerate(tokens):
        session = HookSession(model._points, model._dormant)
        for l, idx in kept.items():
            g = len(idx)
            allowed = torch.zeros(g, n0 + step + 1, dtype=torch.bool)
            for h, i in enumerate(idx):
                allowed[h, i] = True
            allowed[:, n0:] = True  # tokens decoded after the eviction are never evicted

            def fn(x, _n, allowed=allowed):
                m = (~allowed).repeat_interleave(x.shape[1] // allowed.shape[0], 0)[None, :, None, :]
                return x.masked_fill(m, float("-inf"))

            session.add(f"blocks.{l}.attn.hook_attn_scores", fn)
        with session, torch.no_grad():
            outs.append(cached_forward(model, cache, torch.tensor([[t]]))[0, -1])
    return torch.stack(outs)


# ---------------------------------------------------------------- the ragged layer
def test_equal_counts_ragged_storage_equals_dense_path(tiny_llama):
    full = _prefill(tiny_llama)
    n, G = full.seq_len(0), full.n_kv_heads
    idx = _per_head_indices(n, [n // 2] * G)
    dense, ragged = full.copy(), full.copy()
    for l in range(full.n_layers):
        dense.keep_heads(l, idx)  # equal counts: the ordinary dense gather
        ragged.keep_heads(l, idx)
        ragged.set_layer(l, RaggedLayer.from_padded(ragged.keys(l), ragged.values(l), ragged.positions[l]))
    assert not dense.is_ragged(0) and ragged.is_ragged(0)
    toks = [5, 17, 42, 7]
    # hooked path: the padded view equals the dense layer exactly; hook-free path: per-head attention
    # over the packed segments equals it up to float rounding
    with wb_settings(fast_path=False):
        a, b = _decode(tiny_llama, dense.copy(), toks), _decode(tiny_llama, ragged.copy(), toks)
    assert torch.equal(a, b)
    c, d = _decode(tiny_llama, ragged, toks), _decode(tiny_llama, dense, toks)
    torch.testing.assert_close(c, d, atol=1e-5, rtol=1e-5)
    assert torch.equal(d, a)  # the dense layer: hook-free and hooked paths agree exactly
    assert ragged.stats().physical_bytes == dense.stats().physical_bytes


def test_unequal_counts_equal_masked_full_cache_and_free_the_bytes(tiny_llama):
    full = _prefill(tiny_llama)
    n, G, i = full.seq_len(0), full.n_kv_heads, tiny_llama.info
    kept = {l: _per_head_indices(n, [n // 4 + 7 * h + l for h in range(G)], seed=l) for l in range(full.n_layers)}
    rag = full.copy()
    for l, idx in kept.items():
        rag.keep_heads(l, idx)
        assert rag.is_ragged(l)
        assert rag.head_counts(l)[0].tolist() == [len(x) for x in idx]
        for h, x in enumerate(idx):  # the kept positions, right-aligned behind -1 padding
            p = rag.positions[l][0, h]
            assert p[p >= 0].tolist() == x.tolist() and (p[:p.shape[0] - len(x)] == -1).all()
    total = sum(len(x) for idx in kept.values() for x in idx)
    st = rag.stats()
    longest = [max(len(x) for x in idx) for idx in kept.values()]  # the position index is padded per layer
    assert st.logical_bytes == total * i.d_head * 2 * 4
    assert st.physical_bytes == ragged_bytes_formula(rag) == total * i.d_head * 2 * 4 + sum(longest) * G * 8
    assert st.physical_bytes < full.stats().physical_bytes * 0.6
    toks = [3, 99, 11, 64, 2]
    got, ref = _decode(tiny_llama, rag, toks), _masked_reference(tiny_llama, full, kept, toks)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
    # after decoding, every head grew by one entry per token and stayed packed
    assert rag.head_counts(0)[0].tolist() == [len(x) + len(toks) for x in kept[0]]
    assert rag.stats().physical_bytes == ((total + len(toks) * G * i.n_layers) * i.d_head * 2 * 4
                                          + (sum(longest) + len(toks) * i.n_layers) * G * 8)


def test_ragged_attention_reference_matches_the_model(tiny_llama):
    full = _prefill(tiny_llama)
    n, G = full.seq_len(0), full.n_kv_heads
    rag = full.copy()
    for l in range(rag.n_layers):
        rag.keep_heads(l, _per_head_indices(n, [n // 3 + 5 * h for h in range(G)], seed=10 + l))
    got = {}
    session = HookSession(tiny_llama._points, tiny_llama._dormant)
    session.add("blocks.1.attn.hook_rot_q", lambda x, _n: got.__setitem__("q", x.detach().clone()))
    session.add("blocks.1.attn.hook_z", lambda x, _n: got.__setitem__("z", x.detach().clone()))
    with session, torch.no_grad():
        cached_forward(tiny_llama, rag, torch.tensor([[8]]))
    z_ref = ragged_attention(got["q"][0].transpose(0, 1), rag.layer(1))  # q (T, H, d) -> (H, T, d)
    torch.testing.assert_close(got["z"][0, 0], z_ref[:, 0], atol=1e-5, rtol=1e-5)


def test_copy_of_ragged_cache_is_independent(tiny_llama):
    full = _prefill(tiny_llama)
    n, G = full.seq_len(0), full.n_kv_heads
    rag = full.copy()
    rag.keep_heads(0, _per_head_indices(n, [5 + h for h in range(G)]))
    c = rag.copy()
    _decode(tiny_llama, c, [4])
    assert rag.head_counts(0)[0].tolist() == [5 + h for h in range(G)]
    assert c.head_counts(0)[0].tolist() == [6 + h for h in range(G)]


def test_ragged_bad_input(tiny_llama):
    full = _prefill(tiny_llama)
    with pytest.raises(InputError, match="one index tensor per KV head"):
        full.keep_heads(0, [torch.tensor([0])])
    with pytest.raises(InputError, match="must lie in"):
        full.keep_heads(0, [torch.tensor([10_000])] * full.n_kv_heads)
    with pytest.raises(InputError, match="batch size 1"):
        RaggedLayer.from_padded(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3).long())


# ---------------------------------------------------------------- AdaKV budgets
def test_adaptive_head_budgets_split_by_score():
    k, G, N = 8, 3, 40
    s = torch.full((G, N), 1e-4)
    s[0, :4] = 1.0  # a focused head
    s[1] = torch.linspace(0.5, 0.1, N)  # a spread head
    s[2, :2] = 0.3
    s[:, -2:] = float("inf")  # protected window
    s[2, 30:35] = float("-inf")  # padding
    idx = AdaptiveHeadBudgets(alpha=0.25)(s, k)
    counts = [len(i) for i in idx]
    assert sum(counts) == G * k
    assert all(c >= 2 + math.floor(0.25 * k) - 2 for c in counts)  # safeguard (the window counts in)
    assert counts[1] > k > counts[0]
    for h in range(G):
        assert {N - 2, N - 1} <= set(idx[h].tolist())  # protected kept
        assert not set(idx[h].tolist()) & set(range(30, 35)) or h != 2
        assert torch.equal(idx[h], idx[h].sort().values)
    uniform = AdaptiveHeadBudgets(alpha=1.0)(s, k)
    assert [len(i) for i in uniform] == [k] * G


def test_adakv_alpha_one_equals_uniform_snapkv(tiny_llama):
    a = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=AdaKV(ratio=0.5, window=4, alpha=1.0))
    b = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=SnapKV(ratio=0.5, window=4))
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.cache.positions[1], b.cache.positions[1])


def test_adakv_is_ragged_keeps_the_layer_total_and_decodes(tiny_llama):
    pol = AdaKV(ratio=0.75, window=4, at="both")
    kept = []
    g = tiny_llama.generate(PROMPT, 6, stop_at_eos=False, cache_policy=pol, on_step=lambda c, _: kept.append(kept_sets(c)))
    t, G = len(g.prompt_tokens), tiny_llama.info.n_kv_heads
    k = (t + 5) - math.floor(0.75 * (t + 5))
    assert len(g.new_tokens) == 6
    # every step's logits are those of a dense forward masked, per head, to what the ragged cache held
    torch.testing.assert_close(g.logits, masked_generation_logits(tiny_llama, g, kept), atol=2e-5, rtol=1e-5)
    assert any(len({len(s) for s in kept[1][l]}) > 1 for l in kept[1])  # heads really kept different counts
    full = tiny_llama.run(g.tokens[:t + 5][None], logits="all").logits[0, t - 1:].float()
    assert float((full[1:] - g.logits[1:]).abs().max()) > 1e-3  # and eviction did change them
    assert any(g.cache.is_ragged(l) for l in range(g.cache.n_layers))
    for st in g.cache_stats[1:]:
        assert st.logical_bytes == int(st.tokens.sum()) * tiny_llama.info.d_head * 2 * 4
    assert g.cache.stats().physical_bytes == ragged_bytes_formula(g.cache)
    assert (g.cache_stats[-1].tokens.sum(1) == G * k).all()
    # the protected window (the newest 4 positions) is in every head
    for l in range(g.cache.n_layers):
        for h in range(G):
            assert set(range(t + 5 - 4, t + 5)) <= set(g.cache.positions[l][0, h].tolist())


def test_adakv_on_gpt2_and_in_the_harness(tiny_gpt2, tiny_llama):
    kept = []
    g = tiny_gpt2.generate(PROMPT, 3, stop_at_eos=False, cache_policy=AdaKV(budget=12, window=2, at="both"),
                           on_step=lambda c, _: kept.append(kept_sets(c)))
    assert (g.cache.stats().tokens.sum(1) == 12 * g.cache.n_kv_heads).all()
    torch.testing.assert_close(g.logits, masked_generation_logits(tiny_gpt2, g, kept), atol=2e-5, rtol=1e-5)
    rec = Recorder(AdaKV(ratio=0.5, window=2))
    r = perplexity(tiny_llama, [PROMPT], rec, chunk=5)
    assert r.perplexity == pytest.approx(masked_perplexity(tiny_llama, [PROMPT], 0.5, 5, rec.snapshots), rel=1e-5)


# ---------------------------------------------------------------- several tokens into layers of different lengths
def test_chunked_forward_over_unequal_layers_is_causal(tiny_llama):
    ids = torch.randint(0, tiny_llama.info.d_vocab, (1, 40), generator=torch.Generator().manual_seed(0))
    pol = StreamingLLM(ratio=0.5, layer_budgets=PyramidBudgets(3))

    def run(chunked):
        c = KVCache.empty(tiny_llama)
        with torch.no_grad():
            cached_forward(tiny_llama, c, ids[:, :20])
            pol.apply(c, StepContext(0, 20))
            assert len({c.seq_len(l) for l in range(c.n_layers)}) > 1
            if chunked:
                return cached_forward(tiny_llama, c, ids[:, 20:])[0]
            return torch.cat([cached_forward(tiny_llama, c, ids[:, i:i + 1])[0] for i in range(20, 40)])

    torch.testing.assert_close(run(True), run(False), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- ZigZagKV budgets
def test_tokens_for_mass_known_answer():
    row = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05])
    assert tokens_for_mass(row[None, None, None], 0.75) == 2.0
    assert tokens_for_mass(row[None, None, None], 0.85) == 3.0
    uniform = torch.full((1, 2, 3, 10), 0.1)
    assert tokens_for_mass(uniform, 0.9) == 9.0


def test_uncertainty_budgets_are_proportional_with_floor_and_exact_total():
    b = UncertaintyBudgets(mass=0.9, floor=0.2)
    b.need.update({0: 10.0, 1: 30.0, 2: 20.0})
    out = b(40, 3)
    assert sum(out) == 120 and out[1] > out[2] > out[0] >= 8
    raw = [8 + 96 * x / 60 for x in (10, 30, 20)]
    assert all(abs(o - r) < 1 for o, r in zip(out, raw))
    with pytest.raises(InputError, match="no attention was observed"):
        UncertaintyBudgets()(10, 2)
    with pytest.raises(InputError, match="mass"):
        UncertaintyBudgets(mass=0)


def test_zigzag_budgets_follow_captured_attention(tiny_llama):
    pol = ZigZagKV(ratio=0.5, window=4)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n, L = cache.next_position, tiny_llama.info.n_layers
    run = tiny_llama.run(PROMPT, capture=("pattern",), logits=None)
    need = [tokens_for_mass(run["pattern", l][:, :, -16:].float(), 0.9) for l in range(L)]
    assert need == pytest.approx([pol.layer_budgets.need[l] for l in range(L)], rel=1e-5)
    t = n - math.floor(0.5 * n)
    expected = [b + 4 for b in UncertaintyBudgets(need={l: need[l] for l in range(L)})(t - 4, L)]
    assert [min(e, n) for e in expected] == [cache.seq_len(l) for l in range(L)]


def test_uncertainty_budgets_compose_with_any_policy(tiny_llama):
    pol = StreamingLLM(ratio=0.5, layer_budgets=UncertaintyBudgets())  # StreamingLLM needs no attention itself
    kept = []
    g = tiny_llama.generate(PROMPT, 3, stop_at_eos=False, cache_policy=pol, on_step=lambda c, _: kept.append(kept_sets(c)))
    assert set(pol.layer_budgets.need) == set(range(tiny_llama.info.n_layers))
    torch.testing.assert_close(g.logits, masked_generation_logits(tiny_llama, g, kept), atol=2e-5, rtol=1e-5)
    n = len(g.prompt_tokens)  # per-layer budgets from the measured need, with the uniform total
    assert sum(len(kept[0][l][0]) for l in kept[0]) == tiny_llama.info.n_layers * (n - math.floor(0.5 * n))
    assert get_policy("zigzagkv", ratio=0.0).layer_budgets.mass == 0.9


# ---------------------------------------------------------------- long texts for perplexity
def test_long_texts_are_long_distinct_windows(tiny_llama):
    from workbench.texts import long_texts

    texts = long_texts(tiny_llama, 2, 120)
    assert len(texts) == 2 and texts[0] != texts[1]
    for t in texts:
        assert abs(tiny_llama.tokenize(t)[0].shape[1] - 120) <= 4
    with pytest.raises(InputError, match="exceeds the model's context"):
        long_texts(tiny_llama, 1, 10_000)
    # a given corpus is cut instead of the pydoc topics: the windows are its own text
    from workbench.texts import load_corpus

    corpus = "\n\n".join(load_corpus("heldout")[:40])
    own = long_texts(tiny_llama, 2, 120, corpus=corpus)
    assert own != texts and all(t.split()[3] in corpus for t in own)
    with pytest.raises(InputError, match="fewer than n"):
        long_texts(tiny_llama, 3, 120, corpus="too short")


def test_capped_layer_budgets_are_handed_to_other_layers(tiny_llama):
    """A schedule asking a layer for more than it holds: the surplus goes to the other layer, so the
    total still equals the uniform one (water-filling)."""
    n = tiny_llama.tokenize(PROMPT)[0].shape[1]
    t = n - math.floor(0.1 * n)
    cache = tiny_llama.prefill(PROMPT, cache_policy=StreamingLLM(ratio=0.1, layer_budgets=lambda f, L: [0, 2 * f]))
    assert 2 * (t - 4) + 4 > n  # layer 1 is asked for more than it holds
    assert [cache.seq_len(l) for l in range(2)] == [2 * t - n, n]


def test_observed_summary_does_not_keep_the_pattern_alive():
    """A policy keeps only its summary of the attention, never a view into the whole (B, H, T, T) pattern
    (which held every layer's pattern in memory at once: 18 GB at 4k tokens on SmolLM2)."""
    pol = SnapKV(ratio=0.5, window=4)
    pattern = torch.rand(1, 4, 64, 64)
    pol.observe_attention(0, pattern)
    summary = pol._pending[0][0]
    assert summary.shape == (1, 4, 4, 64)
    assert summary.untyped_storage().nbytes() == summary.numel() * 4 < pattern.untyped_storage().nbytes()


def test_preallocated_ragged_layer_decodes_in_place_like_the_growing_one(tiny_llama):
    """With room reserved (a preallocated cache), decoding writes keys, values and positions into free slots:
    no storage or positions buffer is reallocated, and logits and positions equal the growing cache's."""
    toks = [3, 99, 11, 64]
    grown = tiny_llama.prefill(PROMPT)
    pre = tiny_llama.prefill(PROMPT, capacity=grown.seq_len(0) + len(toks))
    n, G = grown.seq_len(0), grown.n_kv_heads
    for cache in (grown, pre):
        for l in range(cache.n_layers):
            cache.keep_heads(l, _per_head_indices(n, [n // 3 + 4 * h + l for h in range(G)], seed=l))
    lay = pre.layer(1)
    assert isinstance(lay, RaggedLayer) and lay.room == len(toks) and lay.owns(pre.positions[1])
    ptrs = (lay.stored_tensors()[0].data_ptr(), pre.positions[1].data_ptr())
    copy = pre.copy()  # a copy's positions are its own layer's buffer view, so it records in place too
    assert copy.layer(1).owns(copy.positions[1]) and copy.positions[1].data_ptr() != ptrs[1]
    got, ref = _decode(tiny_llama, pre, toks), _decode(tiny_llama, grown, toks)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (lay.stored_tensors()[0].data_ptr(), pre.positions[1].data_ptr()) == ptrs
    for l in range(pre.n_layers):
        assert torch.equal(pre.positions[l], grown.positions[l])
        assert pre.head_counts(l).tolist() == grown.head_counts(l).tolist()
    torch.testing.assert_close(_decode(tiny_llama, copy, toks), ref, atol=1e-5, rtol=1e-5)
    # out of room: the layer re-lays its storage out and the positions fall back to concatenation
    more = _decode(tiny_llama, pre, [5])
    assert more.shape[0] == 1 and pre.positions[1].shape[-1] == grown.positions[1].shape[-1] + 1
    assert not pre.layer(1).owns(pre.positions[1])
