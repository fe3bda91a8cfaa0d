"""HashEvict and its SimHash codes: angle estimate, packed Hamming distances, the recent-window limit."""
import math

import pytest
import torch

import workbench as wb
from efficiency import get_policy
from efficiency.kv import StreamingLLM
from efficiency.kv.hashevict import HashEvict
from efficiency.kv.simhash import (
    angle_estimate, gaussian_projection, hamming, hamming_matrix, pack_bits, sign_bits, unpack_bits,
)
from workbench.questions import compress_context

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


def test_pack_unpack_and_two_hamming_forms_agree():
    g = torch.Generator().manual_seed(0)
    bits = torch.rand(3, 7, 21, generator=g) > 0.5
    assert torch.equal(unpack_bits(pack_bits(bits), 21), bits)
    assert pack_bits(bits).shape == (3, 7, 3)
    direct = (bits[:, :, None] != bits[:, None, :]).sum(-1)
    assert torch.equal(hamming(pack_bits(bits)[:, :, None], pack_bits(bits)[:, None, :]), direct)
    assert torch.equal(hamming_matrix(bits, bits), direct)


def test_scaled_hamming_approaches_the_angle():
    """π · Hamming / b estimates the angle between the hashed vectors (Charikar); error shrinks with b."""
    d = 64
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, d, generator=g)
    y = torch.randn(200, d, generator=g)
    y = torch.where(torch.arange(200)[:, None] < 100, x + 0.4 * y, y)  # half close pairs, half random
    angle = torch.arccos(torch.nn.functional.cosine_similarity(x, y).clamp(-1, 1)).double()
    errors = []
    for b in (16, 256, 4096):
        p = gaussian_projection(d, b, seed=2)
        est = angle_estimate(hamming(pack_bits(sign_bits(x, p)), pack_bits(sign_bits(y, p))), b)
        errors.append(float((est - angle).abs().mean()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors
    assert math.isclose(float(angle_estimate(torch.tensor(8), 16)), math.pi / 2)


@pytest.mark.parametrize("at", ["prefill", "both"])
def test_all_bits_equal_keeps_exactly_the_recent_window(tiny_llama, at):
    """With a zero projection every code is all ones: every distance ties, the oldest goes first, so the
    cache holds the sinks and the most recent entries, exactly as StreamingLLM."""
    kw = dict(budget=20, sinks=3)
    pol = HashEvict(**kw, window=4, at=at, projection=torch.zeros(tiny_llama.info.d_head, 16))
    ref = StreamingLLM(**kw, at=at)
    g = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=pol)
    r = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=ref)
    for l in range(g.cache.n_layers):
        assert torch.equal(g.cache.positions[l], r.cache.positions[l])
    assert torch.equal(g.logits, r.logits)


def test_streaming_prefill_evicts_the_farthest_from_each_query(tiny_llama):
    """Replay the token-by-token eviction independently from captured q_rot / k_rot."""
    m = tiny_llama
    pol = HashEvict(budget=24, sinks=2, window=3, bits=8, seed=5)
    cache = m.prefill(PROMPT, cache_policy=pol)
    run = m.run(PROMPT, capture=["q_rot", "k_rot"])
    proj = pol.projection
    t, H, G = cache.next_position, m.info.n_heads, m.info.n_kv_heads
    for l in range(m.info.n_layers):
        q = sign_bits(run["q_rot", l][0].transpose(0, 1), proj)  # (H, T, b)
        k = sign_bits(run["k_rot", l][0].transpose(0, 1), proj)  # (G, T, b)
        for g in range(G):
            heads = range(g * (H // G), (g + 1) * (H // G))
            alive = list(range(24))
            for s in range(24, t):
                alive.append(s)
                cand = [j for j in alive if j >= 2 and j <= s - 3]
                dist = {j: min(int((q[h, s] != k[g, j]).sum()) for h in heads) for j in cand}
                victim = max(cand, key=lambda j: (dist[j], -j))
                alive.remove(victim)
            assert cache.positions[l][0, g].tolist() == alive, (l, g)


def test_decode_keeps_the_budget_and_code_store(tiny_llama):
    g = tiny_llama.generate(PROMPT, 5, stop_at_eos=False, cache_policy=get_policy("hashevict", budget=30))
    assert (g.cache.stats().tokens == 30).all()
    c = compress_context(tiny_llama, PROMPT, get_policy("hashevict", ratio=0.5))
    assert c.stats.compression == pytest.approx(0.5, abs=0.02)


def test_needs_queries(tiny_llama):
    cache = tiny_llama.prefill(PROMPT)
    with pytest.raises(wb.InputError, match="query"):
        HashEvict(ratio=0.5).apply(cache, wb.StepContext(0, cache.next_position))
    with pytest.raises(wb.InputError, match="bits"):
        HashEvict(ratio=0.5, bits=0)


def test_sequential_feeds_queries_and_binds(tiny_llama):
    from efficiency.kv import KVzip, Sequential

    pol = Sequential(HashEvict(budget=40), KVzip(budget=30, level="pair-uniform"))
    cache = tiny_llama.prefill(PROMPT[:70], cache_policy=pol)
    assert (cache.stats().tokens == 30).all()
    assert pol.policies[0].code_bytes() > 0 and pol.policies[1]._model is tiny_llama
