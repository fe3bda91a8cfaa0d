"""Evict-then-merge (efficiency.kv.merge): budgets, identity with nothing evicted, merged values
against an independent computation, count bookkeeping during decoding, bad input."""
import pytest
import torch

from efficiency.kv import KeyNorm, get_policy
from efficiency.kv.merge import MergeEvicted, merge_layer
from workbench.errors import InputError

PROMPT = "The quick brown fox jumps over the lazy dog. " * 2


def _expected_merge(k, v, pos, counts, n_keep, sinks, window, seen):
    """One (layer, batch row, KV head) merged by loops: k, v (N, d), pos (N,), counts (N,)."""
    n = k.shape[0]
    norms = k.norm(dim=-1)
    protected = [i for i in range(n) if pos[i] < sinks or pos[i] >= seen - window]
    others = sorted((i for i in range(n) if i not in protected), key=lambda i: float(norms[i]))
    kept = sorted(protected + others[:n_keep - len(protected)])
    groups = {j: [j] for j in kept}
    for e in range(n):
        if e in groups:
            continue
        cos = [float(k[e] @ k[j] / (k[e].norm() * k[j].norm())) for j in kept]
        groups[kept[max(range(len(kept)), key=lambda t: cos[t])]].append(e)
    vals = torch.stack([sum(counts[i] * v[i] for i in groups[j]) / sum(counts[i] for i in groups[j]) for j in kept])
    cnts = torch.tensor([float(sum(counts[i] for i in groups[j])) for j in kept])
    return kept, vals, cnts


def test_counts_equal_the_budget_and_bytes_go(tiny_llama):
    i = tiny_llama.info
    pol = MergeEvicted(budget=20, sinks=2, window=4)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n = cache.next_position
    st = cache.stats()
    assert (st.tokens == 20).all() and n > 20
    assert st.logical_bytes == 20 * i.n_layers * i.n_kv_heads * i.d_head * 2 * 4
    assert st.physical_bytes == 20 * i.n_layers * i.n_kv_heads * (i.d_head * 2 * 4 + 8)  # + int64 positions
    for l in range(cache.n_layers):
        assert cache.keys(l).shape[-2] == cache.values(l).shape[-2] == 20
        assert torch.equal(pol.counts[l].sum(-1), torch.full((1, i.n_kv_heads), float(n)))
        p = cache.positions[l][0]
        assert (p[:, 1:] > p[:, :-1]).all() and (p[:, :2] == torch.tensor([0, 1])).all()
        assert (p[:, -4:] == torch.arange(n - 4, n)).all()


def test_ratio_counts(tiny_llama):
    cache = tiny_llama.prefill(PROMPT, cache_policy=MergeEvicted(ratio=0.75))
    n = cache.next_position
    assert (cache.stats().tokens == n - int(0.75 * n)).all()


def test_nothing_evicted_is_the_identity(tiny_llama):
    full = tiny_llama.generate(PROMPT, 5, stop_at_eos=False)
    g = tiny_llama.generate(PROMPT, 5, stop_at_eos=False, cache_policy=MergeEvicted(ratio=0.0, at="both"))
    assert torch.equal(g.logits, full.logits)
    big = tiny_llama.generate(PROMPT, 3, stop_at_eos=False, cache_policy=MergeEvicted(budget=10_000, at="both"))
    assert torch.equal(big.logits, full.logits[:3])
    for l in range(full.cache.n_layers):
        assert torch.equal(g.cache.keys(l), full.cache.keys(l)) and torch.equal(g.cache.values(l), full.cache.values(l))
    # merge_layer keeping everything returns the inputs
    k, v = torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    pos, c = torch.arange(7).expand(1, 2, 7), torch.ones(1, 2, 7)
    k2, v2, p2, c2, _ = merge_layer(k, v, pos, c, torch.arange(7).expand(1, 2, 7))
    assert torch.equal(k2, k) and torch.equal(v2, v) and torch.equal(p2, pos) and torch.equal(c2, c)


def test_merged_values_equal_the_group_mean_independently(tiny_llama):
    full = tiny_llama.prefill(PROMPT)
    pol = MergeEvicted(budget=16, sinks=2, window=3)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n = full.next_position
    merged_any = False
    for l in range(full.n_layers):
        for h in range(full.n_kv_heads):
            k, v = full.keys(l)[0, h], full.values(l)[0, h]
            kept, vals, cnts = _expected_merge(k, v, full.positions[l][0, h], torch.ones(n), 16, 2, 3, n)
            assert cache.positions[l][0, h].tolist() == kept
            assert torch.equal(cache.keys(l)[0, h], k[kept])  # kept keys unchanged
            assert torch.allclose(cache.values(l)[0, h], vals, atol=1e-6)
            assert torch.equal(pol.counts[l][0, h], cnts)
            merged_any |= bool((cnts > 1).any())
    assert merged_any


def test_count_weighted_mean_with_unequal_counts():
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 3, 12, 8, generator=g), torch.randn(2, 3, 12, 8, generator=g)
    counts = torch.randint(1, 5, (2, 3, 12), generator=g).float()
    pos = torch.arange(12).expand(2, 3, 12)
    norms = k.norm(dim=-1)
    keep_idx = (-norms).topk(5, dim=-1).indices.sort(-1).values  # the 5 lowest norms, no protection
    k2, v2, p2, c2, _ = merge_layer(k, v, pos, counts, keep_idx)
    for b in range(2):
        for h in range(3):
            kept, vals, cnts = _expected_merge(k[b, h], v[b, h], pos[b, h], counts[b, h], 5, 0, 0, 12)
            assert p2[b, h].tolist() == kept
            assert torch.allclose(v2[b, h], vals, atol=1e-6) and torch.equal(c2[b, h], cnts)
    assert torch.equal(c2.sum(-1), counts.sum(-1))


def test_decoding_keeps_the_budget_and_the_counts(tiny_llama):
    pol = MergeEvicted(budget=24, sinks=2, window=4, at="both")
    g = tiny_llama.generate(PROMPT, 6, stop_at_eos=False, cache_policy=pol)
    seen = g.cache.next_position
    assert all((st.tokens == 24).all() for st in g.cache_stats) and torch.isfinite(g.logits).all()
    for l in range(g.cache.n_layers):
        assert (pol.counts[l].sum(-1) == seen).all()
        p = g.cache.positions[l]
        assert (p[..., 1:] > p[..., :-1]).all() and int(p.max()) == seen - 1


def test_registered_and_composes_after_eviction(tiny_llama):
    assert isinstance(get_policy("merge", ratio=0.5), MergeEvicted)
    from efficiency.kv import Sequential
    pol = Sequential(KeyNorm(budget=30), MergeEvicted(budget=20))
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    assert (cache.stats().tokens == 20).all()


@pytest.mark.parametrize("kwargs", [dict(ratio=-0.1), dict(ratio=1.0), dict(ratio=1.5), dict(ratio="half"),
                                    dict(ratio=True), dict(), dict(ratio=0.5, budget=10),
                                    dict(budget=5, sinks=4, window=4), dict(budget=0), dict(ratio=0.5, sinks=-1),
                                    dict(ratio=0.5, at="sometimes")])
def test_bad_inputs(kwargs):
    with pytest.raises(InputError):
        MergeEvicted(**kwargs)


@pytest.mark.smollm2
def test_merge_on_smollm2(smollm2):
    """Merge vs plain key-norm eviction at the same budget; both well-formed, merge reported."""
    prompt = "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of"
    full = smollm2.generate(prompt, 2, stop_at_eos=False)
    merged = smollm2.generate(prompt, 2, stop_at_eos=False, cache_policy=MergeEvicted(ratio=0.5, sinks=4, window=4))
    evicted = smollm2.generate(prompt, 2, stop_at_eos=False, cache_policy=KeyNorm(ratio=0.5, sinks=4, window=4))
    n = len(full.prompt_tokens)
    assert (merged.cache_stats[0].tokens == n - n // 2).all()
    assert torch.equal(merged.new_tokens[:1], full.new_tokens[:1])  # token 0 comes from the full prefill

    def kl(g):  # KL(full || compressed) of the second token, the first predicted from the compressed cache
        lp, lq = full.logits[1].log_softmax(-1), g.logits[1].log_softmax(-1)
        return float((lp.exp() * (lp - lq)).sum())

    print(f"\nSmolLM2 ratio 0.5 ({n} tokens), step-1 KL(full||policy): merge {kl(merged):.4g}, key-norm eviction "
          f"{kl(evicted):.4g}; max |logit diff| merge {float((merged.logits[1] - full.logits[1]).abs().max()):.3g}, "
          f"eviction {float((evicted.logits[1] - full.logits[1]).abs().max()):.3g}")
    assert len(merged.new_tokens) == 2
    # merging keeps key-norm's selection (same scores, same budget) but changes the kept values
    for l in range(smollm2.info.n_layers):
        assert torch.equal(merged.cache.positions[l], evicted.cache.positions[l])
    assert float((merged.logits[1] - evicted.logits[1]).abs().max()) > 1e-4
