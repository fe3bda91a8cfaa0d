"""KVzip: reconstruction scores against a direct computation, pruning levels, bytes, refusals."""
import pytest
import torch

import workbench as wb
from efficiency import get_policy, ragged_bytes_formula
from efficiency.kv.kvzip import KVzip
from workbench import hook_name
from workbench.questions import compress_context

CONTEXT = "The quick brown fox jumps over the lazy dog; the kettle began to whistle."  # byte tokens: short


def _direct_scores(model, policy, ids, chunk):
    """Max attention over the repeat queries and each KV group's query heads, from plain (uncached) forwards
    of context + repeat input, one per chunk, combined by max."""
    tok = model.tokenizer
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    ctx = ids[0].tolist()
    t, L, G = len(ctx), model.info.n_layers, model.info.n_kv_heads
    out = torch.zeros(L, G, t)
    for start in range(0, t, chunk):
        head = enc(policy.prompt) if start == 0 else enc(policy.continue_prompt) + ctx[max(0, start - 8):start]
        rep = head + enc(policy.suffix) + ctx[start:start + chunk]
        run = model.run(torch.tensor([ctx + rep]), capture=["pattern"])
        for l in range(L):
            p = run["pattern", l][0, :, t:, :t]  # (H, q, T): repeat queries over the context keys
            per_head = p.amax(1)  # (H, T)
            per_group = per_head.reshape(G, -1, t).amax(1)
            out[l] = torch.maximum(out[l], per_group)
    return out


@pytest.mark.parametrize("chunk", [2000, 17])
def test_scores_equal_a_direct_computation(tiny_llama, chunk):
    m = tiny_llama
    pol = KVzip(ratio=0.5, chunk=chunk)
    cache = m.prefill(CONTEXT, cache_policy=pol)
    ids, _ = m.tokenize(CONTEXT)
    direct = _direct_scores(m, pol, ids, chunk)
    for l in range(m.info.n_layers):
        torch.testing.assert_close(pol.scores[l][0], direct[l], atol=2e-5, rtol=1e-4)
    assert cache.next_position == ids.shape[1]
    assert m.leftover_hooks() == []


def test_pair_level_keeps_the_global_top_and_frees_the_bytes(tiny_llama):
    m = tiny_llama
    pol = KVzip(ratio=0.6)
    cache = m.prefill(CONTEXT, cache_policy=pol)
    n = cache.next_position
    keep = n - int(0.6 * n)
    st = cache.stats()
    G, L = m.info.n_kv_heads, m.info.n_layers
    assert int(st.tokens.sum()) == keep * G * L  # the same total as a uniform budget
    assert len(set(st.tokens.flatten().tolist())) > 1  # but spread unevenly over layers and heads
    assert st.physical_bytes == ragged_bytes_formula(cache)
    # every kept entry scores at least as high as every evicted one (sinks aside), across all layers and heads
    kept_min, evicted_max = float("inf"), float("-inf")
    for l in range(L):
        s = pol.scores[l][0]
        for g in range(G):
            p = cache.positions[l][0, g]
            kept = set(p[p >= 0].tolist())
            for j in range(n):
                if j < pol.sinks:
                    assert j in kept
                    continue
                if j in kept:
                    kept_min = min(kept_min, float(s[g, j]))
                else:
                    evicted_max = max(evicted_max, float(s[g, j]))
    assert kept_min >= evicted_max


def test_pair_uniform_is_topk_per_head(tiny_llama):
    pol = KVzip(ratio=0.5, level="pair-uniform")
    cache = tiny_llama.prefill(CONTEXT, cache_policy=pol)
    n = cache.next_position
    assert (cache.stats().tokens == n - int(0.5 * n)).all()
    assert not any(cache.is_ragged(l) for l in range(cache.n_layers))


def test_ratio_zero_and_answers_after_compression(tiny_llama):
    full = compress_context(tiny_llama, CONTEXT)
    z = compress_context(tiny_llama, CONTEXT, KVzip(ratio=0.0))
    assert z.stats.physical_bytes == full.stats.physical_bytes
    a = z.ask(" What did the kettle do?", max_new_tokens=4, stop_at_eos=False)
    b = full.ask(" What did the kettle do?", max_new_tokens=4, stop_at_eos=False)
    assert torch.equal(a.logits, b.logits)
    c = compress_context(tiny_llama, CONTEXT, get_policy("kvzip", ratio=0.75))
    assert c.stats.compression < 0.3 and c.compress_seconds > 0
    assert torch.isfinite(c.ask(" What did the kettle do?", max_new_tokens=3).logits).all()


def test_refusals(tiny_llama):
    with pytest.raises(wb.InputError, match="level"):
        KVzip(ratio=0.5, level="head")
    with pytest.raises(wb.InputError, match="prefill"):
        KVzip(ratio=0.5, at="both")
    cache = tiny_llama.prefill(CONTEXT)
    pol = KVzip(ratio=0.5)
    with pytest.raises(wb.InputError, match="needs the model"):
        pol.apply(cache, wb.StepContext(0, cache.next_position))
    pol.bind(tiny_llama)
    with pytest.raises(wb.InputError, match="token ids"):
        pol.apply(cache, wb.StepContext(0, cache.next_position))
    ids, _ = tiny_llama.tokenize(CONTEXT)
    with pytest.raises(wb.InputError, match="hooks"):
        with tiny_llama.session(hooks=[(hook_name("resid_post", 0), lambda x, n: None)], required=False):
            pol.apply(cache, wb.StepContext(0, cache.next_position, ids))


def test_a_sweep_over_ratios_scores_each_context_once(tiny_llama, monkeypatch):
    from efficiency import sweep
    from efficiency.kv import kvzip
    from workbench.texts.tasks import needle_prompts, split_ids

    s = needle_prompts(tiny_llama, 1, 170, seed=0, digits=3)[0]
    q_len = split_ids(tiny_llama, s)[1].shape[1]
    calls = []
    monkeypatch.setattr(wb.settings, "fast_path", False)  # every forward through the bridge, where it is counted
    orig = tiny_llama.bridge.forward
    monkeypatch.setattr(tiny_llama.bridge, "forward",
                        lambda inp, *a, **kw: calls.append(int(inp.shape[1])) or orig(inp, *a, **kw))

    def forwards(ratios):
        kvzip._MEMO.clear()
        calls.clear()
        res = sweep(tiny_llama, [s], ["kvzip"], ratios=ratios, max_new_tokens=1, query_aware=False)
        return len([n for n in calls if n > 30 and n != q_len]), res  # context prefill + reconstruction forwards

    one, _ = forwards((0.5,))
    three, res = forwards((0.25, 0.5, 0.75))
    assert one == three >= 2
    kept = res.to_frame().set_index("ratio").kept_fraction
    assert kept[0.25] > kept[0.5] > kept[0.75]
