"""EMS: global-local scores against captured attention, evict-then-merge with a zero class."""
import pytest
import torch

import workbench as wb
from efficiency.kv.ems import EMS, evict_then_merge

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


def test_scores_equal_captured_global_and_local_attention(tiny_llama):
    m, w = tiny_llama, 6
    pol = EMS(ratio=0.0, window=w, weight=0.3)
    cache = m.prefill(PROMPT, cache_policy=pol)
    run = m.run(PROMPT, capture=["pattern"])
    G = m.info.n_kv_heads
    for l in range(m.info.n_layers):
        p = run["pattern", l][0].float()  # (H, T, T)
        t = p.shape[-1]
        glob = p.sum(1) / torch.arange(t, 0, -1, dtype=torch.float32)  # column j is seen by T - j queries
        local = p[:, -w:].mean(1)
        head = 0.3 * glob + 0.7 * local
        expected = head.reshape(G, -1, t).mean(1)[None]
        torch.testing.assert_close(pol.score(cache, l, wb.StepContext(0, t)), expected, atol=1e-6, rtol=1e-5)


def _random(b=1, g=2, n=12, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, g, n, d, generator=gen), torch.randn(b, g, n, d, generator=gen),
            torch.rand(b, g, n, generator=gen))


def test_zero_class_only_is_plain_eviction():
    k, v, s = _random()
    keep = s.topk(5, -1).indices.sort(-1).values
    k2, v2, assign = evict_then_merge(k, v, s, keep, torch.ones_like(s, dtype=torch.bool), threshold=1.01)
    assert (assign == -1).all()
    gi = keep[..., None].expand(*keep.shape, 8)
    assert torch.equal(k2, torch.gather(k, 2, gi)) and torch.equal(v2, torch.gather(v, 2, gi))


def test_merge_is_the_score_weighted_mean_of_each_class():
    k, v, s = _random(seed=3)
    keep = s.topk(4, -1).indices.sort(-1).values
    can = torch.ones_like(s, dtype=torch.bool)
    can[..., keep[0, 0, 0]] = False  # one kept entry may not receive (like a sink)
    k2, v2, assign = evict_then_merge(k, v, s, keep, can, threshold=-2.0)  # every evicted entry merges
    assert (assign >= 0).all()
    for g in range(2):
        kept = keep[0, g].tolist()
        evicted = [j for j in range(12) if j not in kept]
        for c, j in enumerate(kept):
            members = [evicted[e] for e in range(len(evicted)) if int(assign[0, g, e]) == c]
            if g == 0 and c == 0:
                assert members == []
            w = torch.tensor([float(s[0, g, j])] + [float(s[0, g, e]) for e in members])
            w = w / w.sum()  # the merge weights sum to 1
            exp_v = sum(wi * v[0, g, x] for wi, x in zip(w, [j] + members))
            exp_k = sum(wi * k[0, g, x] for wi, x in zip(w, [j] + members))
            torch.testing.assert_close(v2[0, g, c], exp_v, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(k2[0, g, c], exp_k, atol=1e-6, rtol=1e-5)
            if not members:
                assert torch.equal(v2[0, g, c], v[0, g, j])
    # each evicted entry went to its most cosine-similar receiving kept key
    unit = k / k.norm(dim=-1, keepdim=True)
    for g in range(2):
        kept = keep[0, g].tolist()
        evicted = [j for j in range(12) if j not in kept]
        for e, j in enumerate(evicted):
            sims = [float(unit[0, g, j] @ unit[0, g, x]) if bool(can[0, g, x]) else -9 for x in kept]
            assert int(assign[0, g, e]) == max(range(len(kept)), key=lambda c: sims[c])


def test_policy_keeps_budget_and_sinks_exact(tiny_llama):
    full = tiny_llama.prefill(PROMPT)
    pol = EMS(budget=30, threshold=0.2)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    st = cache.stats()
    assert (st.tokens == 30).all()
    i = tiny_llama.info
    assert st.physical_bytes == 30 * i.n_layers * i.n_kv_heads * (i.d_head * 2 * 4 + 8)
    for l in range(cache.n_layers):
        assert torch.equal(cache.keys(l)[..., :4, :], full.keys(l)[..., :4, :])  # sinks never absorb
        assert cache.positions[l][0, 0, :4].tolist() == [0, 1, 2, 3]
    assert any(bool((a >= 0).any()) for a in pol.last_merge.values())  # something merged at 0.2
    g = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=EMS(ratio=0.5, at="both"))
    assert torch.isfinite(g.logits).all()


def test_bad_settings():
    with pytest.raises(wb.InputError, match="weight"):
        EMS(ratio=0.5, weight=1.5)
    with pytest.raises(wb.InputError, match="threshold"):
        EMS(ratio=0.5, threshold="high")
