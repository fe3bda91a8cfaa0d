"""The KV cache: byte accounting, physical eviction, positions, and the cache-policy extension point."""
import pytest
import torch

from workbench.errors import InputError
from workbench.kv_cache import PolicyBase

from kv_helpers import kept_sets, masked_generation_logits

PROMPT = "The quick brown fox jumps over the lazy dog. " * 2


class KeepAll(PolicyBase):
    name = "keep-all"

    def apply(self, cache, ctx):
        for l in range(cache.n_layers):
            cache.keep(l, torch.arange(cache.seq_len(l)))


class SinkWindow(PolicyBase):
    """Keep the first `sinks` and the last `window` entries of every layer, once, after prefill."""

    def __init__(self, sinks=2, window=6):
        self.sinks, self.window = sinks, window

    @property
    def name(self):
        return f"sink{self.sinks}+window{self.window}"

    def apply(self, cache, ctx):
        if ctx.step:
            return
        for l in range(cache.n_layers):
            n = cache.seq_len(l)
            cache.keep(l, torch.cat([torch.arange(self.sinks), torch.arange(n - self.window, n)]))


def test_bytes_match_formula(tiny):
    cache = tiny.prefill(PROMPT)
    i, n = tiny.info, tiny.tokenize(PROMPT)[1][0]
    expected = n * i.n_layers * i.n_kv_heads * i.d_head * 2 * 4
    positions = n * i.n_layers * i.n_kv_heads * 8  # the int64 position of every entry is held too
    st = cache.stats()
    assert st.logical_bytes == expected and st.physical_bytes == expected + positions
    assert st.tokens.shape == (i.n_layers, i.n_kv_heads) and int(st.tokens[0, 0]) == n


def test_keep_all_reproduces_full_cache_exactly(tiny):
    full = tiny.generate(PROMPT, 6, stop_at_eos=False)
    kept = tiny.generate(PROMPT, 6, stop_at_eos=False, cache_policy=KeepAll())
    assert torch.equal(full.logits, kept.logits)


def test_eviction_frees_memory_and_tracks_positions(tiny_llama):
    cache = tiny_llama.prefill(PROMPT, cache_policy=SinkWindow(2, 6))
    n = cache.next_position
    assert cache.positions[0][0, 0].tolist() == [0, 1] + list(range(n - 6, n))
    i = tiny_llama.info
    assert cache.stats().physical_bytes == 8 * i.n_layers * i.n_kv_heads * (i.d_head * 2 * 4 + 8)
    assert cache.keys(0).shape[-2] == 8


def test_decoding_after_eviction_equals_masked_full_attention(tiny_llama):
    """One step after evicting equals a full forward whose last query sees only the kept keys."""
    m = tiny_llama
    ids, _ = m.tokenize(PROMPT)
    n = ids.shape[1]
    policy = SinkWindow(2, 6)
    g = m.generate(PROMPT, 2, stop_at_eos=False, cache_policy=policy)
    nxt = g.new_tokens[0]
    full = torch.cat([ids[0], nxt[None]])[None]
    keep = set([0, 1] + list(range(n - 6, n)))
    mask = torch.tril(torch.ones(n + 1, n + 1, dtype=torch.bool))
    mask[n, [j for j in range(n) if j not in keep]] = False
    add = torch.zeros(n + 1, n + 1).masked_fill(~mask, torch.finfo(torch.float32).min)[None, None]
    with torch.no_grad():
        ref = m.bridge(full, return_type="logits", attention_mask=add)[0, -1]
    assert torch.allclose(g.logits[1], ref, atol=1e-4)


def test_per_head_and_per_layer_budgets(tiny_llama):
    class Ragged(PolicyBase):
        def apply(self, cache, ctx):
            if ctx.step:
                return
            b, g = cache.keys(0).shape[:2]
            n = cache.seq_len(0)
            per_head = torch.stack([torch.arange(0, 8), torch.arange(n - 8, n)])[None].expand(b, g, 8)
            cache.keep(0, per_head)  # layer 0: a different window per KV head
            cache.keep(1, torch.arange(n - 4, n))  # layer 1: a smaller budget

    kept = []
    g = tiny_llama.generate(PROMPT, 3, stop_at_eos=False, cache_policy=Ragged(),
                            on_step=lambda c, _: kept.append(kept_sets(c)))
    pos0 = g.cache.positions[0][0]
    assert pos0[0, :8].tolist() == list(range(8)) and pos0[1, 0].item() > 8
    assert g.cache.seq_len(0) == 8 + 2 and g.cache.seq_len(1) == 4 + 2
    # the decoded steps equal a dense forward masked per layer and KV head to the kept entries
    torch.testing.assert_close(g.logits, masked_generation_logits(tiny_llama, g, kept), atol=2e-5, rtol=1e-5)


def test_keep_rejects_bad_indices(tiny_llama):
    cache = tiny_llama.prefill("hello")
    with pytest.raises(InputError, match="indices must lie"):
        cache.keep(0, torch.tensor([0, 99]))
    with pytest.raises(InputError, match="index must be"):
        cache.keep(0, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(InputError, match="out of range"):
        cache.keys(7)


def test_observe_attention_gets_rows_of_new_tokens(tiny_llama):
    shapes = []

    class Watcher(PolicyBase):
        def observe_attention(self, layer, pattern):
            if layer == 0:
                shapes.append(tuple(pattern.shape))

        def apply(self, cache, ctx):
            pass

    tiny_llama.generate("abcd", 3, stop_at_eos=False, cache_policy=Watcher())
    h = tiny_llama.info.n_heads
    assert shapes == [(1, h, 4, 4), (1, h, 1, 5), (1, h, 1, 6)]
