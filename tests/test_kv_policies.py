"""KV-cache eviction policies (efficiency.kv): exactness at ratio 0, scores vs captured attention,
budgets and bytes, well-formed generation after eviction, registry and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from efficiency import (
    A2SF, H2O, POLICIES, TOVA, KeyNorm, PyramidKV, RandomPolicy, Sequential, SnapKV, StreamingLLM, get_policy,
    register,
)
from efficiency.kv import ScorePolicy, load_builtins
from workbench.errors import InputError
from workbench.kv_cache import StepContext

from kv_helpers import kept_sets, masked_generation_logits

PROMPT = "The quick brown fox jumps over the lazy dog. " * 2
# Eviction policies (ratio/budget/at); quantizers such as KIVI have their own tests.
NAMES = sorted(n for n, cls in load_builtins().items() if issubclass(cls, ScorePolicy))
PREFILL_ONLY = ("kvzip",)  # scores once after prefill (its score is a second forward over the context)


def _at(name, at):
    return "prefill" if name in PREFILL_ONLY else at


PER_LAYER = ("pyramidkv", "zigzagkv", "kvzip")  # budgets differ across layers (same total)
PER_PAIR = ("kvzip",)  # KVzip's default level "pair": one ranking over every (layer, KV head) pair
PER_HEAD = ("adakv",)  # budgets differ across the KV heads of a layer (same layer total), stored ragged


def _group(x, g, how):
    """(H, N) -> (G, N), written independently of efficiency.kv.base.group_reduce."""
    h = x.shape[0]
    rows = [x[j * (h // g):(j + 1) * (h // g)] for j in range(g)]
    return torch.stack([getattr(r, how)(0) if how != "max" else r.max(0).values for r in rows])


def _assert_well_formed(cache, n_seen):
    """Positions strictly increasing per head; a ragged layer's padding (-1) only before its entries."""
    assert cache.next_position == n_seen
    for l in range(cache.n_layers):
        pos = cache.positions[l]
        assert pos.shape == cache.keys(l).shape[:3] == cache.values(l).shape[:3]
        valid = pos >= 0
        assert (valid[..., 1:] >= valid[..., :-1]).all(), f"padding after entries in layer {l}"
        assert bool((pos[valid] >= -1).all()) and cache.is_ragged(l) == bool((~valid).any())
        inc = (pos[..., 1:] > pos[..., :-1]) | ~valid[..., :-1]
        assert inc.all(), f"positions not strictly increasing in layer {l}"
        assert 0 <= int(pos[valid].min()) and int(pos.max()) < n_seen


# ---------------------------------------------------------------- ratio 0 reproduces the full cache
@pytest.mark.parametrize("name", NAMES)
def test_ratio_zero_reproduces_full_cache(tiny_llama, name):
    full = tiny_llama.generate(PROMPT, 5, stop_at_eos=False)
    g = tiny_llama.generate(PROMPT, 5, stop_at_eos=False, cache_policy=get_policy(name, ratio=0.0, at=_at(name, "both")))
    assert torch.equal(g.new_tokens, full.new_tokens) and torch.equal(g.logits, full.logits)
    assert g.cache.stats().physical_bytes == full.cache.stats().physical_bytes


def test_ratio_zero_sequential_reproduces_full_cache(tiny_llama):
    full = tiny_llama.generate(PROMPT, 4, stop_at_eos=False)
    pol = Sequential(H2O(ratio=0.0, at="both"), SnapKV(ratio=0.0), KeyNorm(ratio=0.0))
    g = tiny_llama.generate(PROMPT, 4, stop_at_eos=False, cache_policy=pol)
    assert torch.equal(g.logits, full.logits)


# ---------------------------------------------------------------- StreamingLLM keeps sinks + window exactly
def test_streaming_llm_keeps_exactly_sinks_and_window(tiny_llama):
    cache = tiny_llama.prefill(PROMPT, cache_policy=StreamingLLM(sinks=4, window=20))
    n = cache.next_position
    for l in range(cache.n_layers):
        for h in range(cache.n_kv_heads):
            assert cache.positions[l][0, h].tolist() == list(range(4)) + list(range(n - 20, n))


def test_streaming_llm_decode_keeps_sinks_and_window_every_step(tiny_llama):
    seen = []
    tiny_llama.generate(PROMPT, 5, stop_at_eos=False, cache_policy=StreamingLLM(sinks=2, window=10, at="both"),
                        on_step=lambda c, ctx: seen.append((c.next_position, c.positions[1][0, 0].tolist())))
    for n, pos in seen:
        assert pos == [0, 1] + list(range(n - 10, n))


# ---------------------------------------------------------------- scores vs captured attention
def test_h2o_and_a2sf_scores_equal_captured_accumulated_attention(tiny_llama):
    m, steps = tiny_llama, 4
    h2o, a2sf = H2O(ratio=0.0, at="both"), A2SF(ratio=0.0, forgetting=0.9, at="both")
    g = m.generate(PROMPT, steps, stop_at_eos=False, cache_policy=Sequential(h2o, a2sf))
    fed = g.tokens[: len(g.prompt_tokens) + steps - 1]  # the last new token is never fed
    run = m.run(fed, capture=["pattern"])
    n, gk = fed.shape[0], m.info.n_kv_heads
    ctx = StepContext(steps - 1, 1)
    decay = 0.9 ** torch.arange(n - 1, -1, -1, dtype=torch.float32)
    for l in range(m.info.n_layers):
        pat = run["pattern", l][0].float()  # (H, n, n)
        expected_h2o = _group(pat.sum(1), gk, "sum")[None]
        expected_a2sf = _group(torch.einsum("hqk,q->hk", pat, decay), gk, "sum")[None]
        torch.testing.assert_close(h2o.score(g.cache, l, ctx), expected_h2o, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a2sf.score(g.cache, l, ctx), expected_a2sf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_snapkv_and_tova_scores_equal_captured_attention(tiny_llama, pooling):
    m, w = tiny_llama, 8
    snap, tova = SnapKV(ratio=0.0, window=w, pooling=pooling, kernel=5), TOVA(ratio=0.0)
    cache = m.prefill(PROMPT, cache_policy=Sequential(snap, tova))
    run = m.run(PROMPT, capture=["pattern"])
    ctx, gk = StepContext(0, cache.next_position), m.info.n_kv_heads
    for l in range(m.info.n_layers):
        pat = run["pattern", l][0].float()  # (H, n, n)
        obs = pat[:, -w:].mean(1)  # (H, n): mean attention of the observation window
        padded = F.pad(obs, (2, 2), value=float("-inf") if pooling == "max" else 0.0)
        win = padded.unfold(-1, 5, 1)  # (H, n, 5)
        pooled = win.max(-1).values if pooling == "max" else win.mean(-1)
        torch.testing.assert_close(snap.score(cache, l, ctx), _group(pooled, gk, "mean")[None], atol=1e-6, rtol=1e-5)
        expected_tova = pat[:, -1].mean(0).expand(gk, -1)[None]
        torch.testing.assert_close(tova.score(cache, l, ctx), expected_tova, atol=1e-6, rtol=1e-5)


def test_key_norm_keeps_the_lowest_norm_keys(tiny_llama):
    full = tiny_llama.prefill(PROMPT)
    cache = tiny_llama.prefill(PROMPT, cache_policy=KeyNorm(budget=12))
    for l in range(full.n_layers):
        norms = full.keys(l).norm(dim=-1)[0]  # (G, n)
        expected = norms.topk(12, largest=False).indices.sort().values
        assert torch.equal(cache.positions[l][0], expected)


# ---------------------------------------------------------------- budgets and bytes
def _reference_scores(name, pol, model, full, run, layer):
    """(G, n) the policy's scores of a full prefill of PROMPT, computed independently of efficiency.kv
    from the captured attention pattern, the full cache's keys, positions or the seeded generator."""
    g = model.info.n_kv_heads
    pat = run["pattern", layer][0].double()  # (H, n, n)
    n = pat.shape[-1]
    if name == "streaming_llm":
        return torch.arange(n, dtype=torch.float64).expand(g, n)
    if name in ("key_norm", "merge"):
        return -full.keys(layer)[0].double().norm(dim=-1)
    if name == "random":  # one draw per layer, in layer order, from the policy's seeded generator
        gen = torch.Generator().manual_seed(pol.seed)
        draws = [torch.rand((1, g, n), generator=gen) for _ in range(layer + 1)]
        return draws[layer][0].double()
    if name == "h2o":
        return _group(pat.sum(1), g, "sum")
    if name == "a2sf":
        decay = pol.forgetting ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
        return _group(torch.einsum("hqk,q->hk", pat, decay), g, "sum")
    if name == "tova":
        return pat[:, -1].mean(0).expand(g, n)
    if name in ("snapkv", "pyramidkv", "adakv", "zigzagkv"):
        obs = pat[:, -pol.window:].mean(1)  # (H, n)
        half = pol.kernel // 2
        padded = F.pad(obs, (half, half), value=float("-inf"))
        return _group(padded.unfold(-1, pol.kernel, 1).max(-1).values, g, "mean")
    return None  # kvzip, hash_evict, ems: scored by a second forward or hashing; their own tests check them


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_eviction_keeps_the_top_scored_entries(tiny_llama, name, ratio):
    """Every registered eviction policy at a real ratio (so score() and evict() run): per layer and KV
    head, exactly the budgeted count is kept; the sinks and the window are kept; the rest is the top-k
    of the policy's scores computed independently; the bytes are those of the kept entries."""
    m, i = tiny_llama, tiny_llama.info
    pol = get_policy(name, ratio=ratio, sinks=2, window=4)
    cache = m.prefill(PROMPT, cache_policy=pol)
    full, run = m.prefill(PROMPT), m.run(PROMPT, capture=["pattern"])
    n, G, L = cache.next_position, i.n_kv_heads, i.n_layers
    t = n - int(ratio * n)  # tokens per layer and head of a uniform budget
    protected = set(range(2)) | set(range(n - 4, n))
    counts = torch.stack([cache.head_counts(l)[0] for l in range(L)])  # (L, G)
    if name in PER_HEAD:  # per-head budgets: the layer total is uniform, heads differ
        assert (counts.sum(1) == G * t).all() and len(set(counts.flatten().tolist())) > 1
    elif name in PER_PAIR:  # one budget over every (layer, KV head) pair: only the total is uniform
        assert int(counts.sum()) == L * G * t and len(set(counts.flatten().tolist())) > 1
    elif name in PER_LAYER:  # per-layer budgets: the total is uniform, the same in every head of a layer
        assert int(counts[:, 0].sum()) == L * t and (counts == counts[:, :1]).all()
        assert name != "pyramidkv" or counts[0, 0] > counts[1, 0]
    else:
        assert (counts == t).all()
    kept_sets = {}
    for l in range(L):
        ref = _reference_scores(name, pol, m, full, run, l)
        if ref is None:
            continue
        evicted_max = []
        for h in range(G):
            pos = cache.positions[l][0, h]
            kept = kept_sets[l, h] = set(pos[pos >= 0].tolist())  # (ragged layers pad with -1)
            assert protected <= kept, f"layer {l} head {h} lost a sink or window entry"
            free_kept = sorted(kept - protected)
            evicted = sorted(set(range(n)) - kept)
            assert evicted, "nothing was evicted"
            # the kept set is the top of the reference scores (ties at the boundary may go either way)
            lo = float(ref[h, free_kept].min()) if free_kept else math.inf  # AdaKV: a head may keep only its protected
            hi = float(ref[h, evicted].max())
            assert lo >= hi - 1e-6, f"{name} layer {l} head {h}: kept score {lo} < evicted {hi}"
            evicted_max.append(hi)
            if name in PER_HEAD:  # each head keeps at least its own safeguard
                assert len(kept) >= math.floor(pol.alpha * t)
        if name in PER_HEAD:  # beyond the safeguards, the layer keeps its best entries across heads
            extra = [float(ref[h, sorted(kept_sets[l, h] - protected)].min())
                     for h in range(G) if counts[l, h] > max(math.floor(pol.alpha * t), len(protected))]
            assert extra and min(extra) >= max(evicted_max) - 1e-6
    if name == "random":  # seeded: a second policy object makes the same choices
        again = m.prefill(PROMPT, cache_policy=get_policy(name, ratio=ratio, sinks=2, window=4))
        assert all(torch.equal(again.positions[l], cache.positions[l]) for l in range(L))
    st = cache.stats()
    assert st.logical_bytes == int(counts.sum()) * i.d_head * 2 * 4
    # + the int64 position index (a ragged layer's is padded to its longest head)
    assert st.physical_bytes == st.logical_bytes + sum(p.numel() for p in cache.positions) * 8
    assert st.physical_bytes < full.stats().physical_bytes * (1 - ratio + 0.05)
    _assert_well_formed(cache, n)


def test_budget_in_tokens(tiny_llama):
    cache = tiny_llama.prefill(PROMPT, cache_policy=H2O(budget=20, window=4))
    assert (cache.stats().tokens == 20).all()


def test_pyramid_budgets_shrink_upwards_with_the_same_total(tiny_llama):
    pol = PyramidKV(ratio=0.5, window=4, beta=4)
    cache = tiny_llama.prefill(PROMPT, cache_policy=pol)
    n, i = cache.next_position, tiny_llama.info
    t = n - int(0.5 * n)
    counts = [cache.seq_len(l) for l in range(i.n_layers)]
    assert sum(counts) == t * i.n_layers and counts[0] > counts[-1]
    assert cache.stats().physical_bytes == sum(counts) * i.n_kv_heads * (i.d_head * 2 * 4 + 8)


# ---------------------------------------------------------------- generation after eviction
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("at", ["prefill", "decode"])
def test_generation_after_eviction_is_well_formed(tiny_llama, name, at):
    if name in PREFILL_ONLY and at == "decode":
        pytest.skip(f"{name} compresses at prefill only")
    budget = 24
    kw = {"window": 4} if name in ("snapkv", "pyramidkv", "h2o", "a2sf", "adakv", "zigzagkv") else {}
    steps, kept = [], []  # per step, per layer: entries held over all KV heads; the kept positions

    def watch(c, ctx):
        steps.append([int(c.head_counts(l).sum()) for l in range(c.n_layers)])
        kept.append(kept_sets(c))

    g = tiny_llama.generate(PROMPT, 6, stop_at_eos=False, cache_policy=get_policy(name, budget=budget, at=at, **kw),
                            on_step=watch)
    t0, G = len(g.prompt_tokens), tiny_llama.info.n_kv_heads
    assert len(g.new_tokens) == 6
    if name not in ("merge", "ems"):  # (merging edits the kept values, which no mask reproduces; test_kv_merge/ems)
        # each step's logits equal a dense forward whose rows only see what the cache held at their step
        torch.testing.assert_close(g.logits, masked_generation_logits(tiny_llama, g, kept), atol=2e-5, rtol=1e-5)
    _assert_well_formed(g.cache, t0 + 5)
    if at == "prefill":
        assert steps == [[G * min(budget, t0) if name not in PER_LAYER else s for s in steps[0]]] + \
            [[s + G * k for s in steps[0]] for k in range(1, 6)]
        assert sum(steps[0]) == G * budget * tiny_llama.info.n_layers
    else:
        assert steps[0] == [G * t0] * tiny_llama.info.n_layers  # no compression right after prefill
        assert all(sum(s) == G * budget * tiny_llama.info.n_layers for s in steps[1:])


def test_sequential_composes_and_realigns_state(tiny_llama):
    pol = Sequential(StreamingLLM(budget=40, at="both"), H2O(budget=20, window=4, at="both"))
    g = tiny_llama.generate(PROMPT, 5, stop_at_eos=False, cache_policy=pol)
    assert (g.cache.stats().tokens == 20).all() and "streaming_llm" in g.policy and "h2o" in g.policy
    _assert_well_formed(g.cache, len(g.prompt_tokens) + 4)


def test_random_is_seeded(tiny_llama):
    a = tiny_llama.prefill(PROMPT, cache_policy=RandomPolicy(ratio=0.5, seed=3))
    b = tiny_llama.prefill(PROMPT, cache_policy=RandomPolicy(ratio=0.5, seed=3))
    assert torch.equal(a.positions[0], b.positions[0])


# ---------------------------------------------------------------- registry and bad input
def test_registry():
    assert set(NAMES) >= {"streaming_llm", "h2o", "a2sf", "snapkv", "key_norm", "tova", "random", "pyramidkv"}
    assert isinstance(get_policy("h2o", ratio=0.5), H2O) and POLICIES["tova"] is TOVA
    with pytest.raises(InputError, match="Did you mean 'h2o'"):
        get_policy("h20", ratio=0.5)
    with pytest.raises(InputError, match="bad arguments"):
        get_policy("h2o", ratio=0.5, colour="red")
    with pytest.raises(InputError, match="already taken"):
        register("h2o")(type("Other", (), {}))


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, r"\[0, 1\)"), ({"ratio": -0.1}, r"\[0, 1\)"), ({"ratio": "0.5"}, r"\[0, 1\)"),
    ({}, "exactly one"), ({"ratio": 0.5, "budget": 10}, "exactly one"),
    ({"budget": 5, "sinks": 4, "window": 4}, "smaller than sinks"), ({"budget": 0}, "positive integer"),
    ({"ratio": 0.5, "at": "sometimes"}, "at must be"), ({"ratio": 0.5, "window": -1}, "non-negative"),
    ({"ratio": 0.5, "head_reduce": "median"}, "head_reduce"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(InputError, match=match):
        H2O(**{"window": 4, **kwargs})


def test_bad_policy_specific_inputs():
    with pytest.raises(InputError, match="kernel"):
        SnapKV(ratio=0.5, kernel=4)
    with pytest.raises(InputError, match="forgetting"):
        A2SF(ratio=0.5, forgetting=1.5)
    with pytest.raises(InputError, match="at least one"):
        Sequential()
    with pytest.raises(InputError, match="apply"):
        Sequential(object())


def test_attention_policy_without_observed_attention_is_refused(tiny_llama):
    cache = tiny_llama.prefill(PROMPT)  # no policy: no attention was observed
    with pytest.raises(InputError, match="no attention pattern was observed"):
        H2O(ratio=0.5).apply(cache, StepContext(0, cache.next_position))
    KeyNorm(ratio=0.5).apply(cache, StepContext(0, cache.next_position))  # needs no attention: fine
    assert cache.seq_len(0) == cache.next_position - int(0.5 * cache.next_position)


# ---------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def passkey(smollm2):
    from workbench.texts.tasks import passkey_prompts

    return passkey_prompts(smollm2, 1, n_tokens=200, depth=0.5, seed=1)[0]


@pytest.mark.smollm2
def test_smollm2_streaming_llm_half_cache_is_well_formed(smollm2, passkey):
    n_new = len(passkey.answer_token_ids)
    g = smollm2.generate(passkey.prompt, n_new, stop_at_eos=False,
                         cache_policy=StreamingLLM(sinks=4, window=16, ratio=0.5))
    _assert_well_formed(g.cache, passkey.n_tokens + n_new - 1)
    assert len(g.new_tokens) == n_new and g.text.strip() and torch.isfinite(g.logits).all()
    assert g.cache.stats().compression < 0.55
    assert g.cache.positions[5][0, 0, :4].tolist() == [0, 1, 2, 3]  # the sink survives


@pytest.mark.smollm2
def test_smollm2_passkey_retrieval_report(smollm2, passkey):
    """Which policies still retrieve the passkey at 50% and 75% compression (printed; run with -s)."""
    n_new = len(passkey.answer_token_ids)
    full = smollm2.generate(passkey.prompt, n_new, stop_at_eos=False)
    report = {"full": passkey.key in full.text}
    for ratio in (0.5, 0.75):
        for name in NAMES:
            kw = {"window": 8} if name in ("snapkv", "pyramidkv", "h2o", "a2sf") else {}
            out = smollm2.generate(passkey.prompt, n_new, stop_at_eos=False,
                                   cache_policy=get_policy(name, ratio=ratio, **kw))
            report[f"{name}@{ratio}"] = passkey.key in out.text
    print(f"\npasskey retrieved (key {passkey.key}, {passkey.n_tokens} tokens):", report)
    # measured (196 tokens, key at depth 0.5): the query-aware policies keep the key at both ratios
    assert report["full"] and all(report[f"{n}@{r}"] for n in ("snapkv", "pyramidkv", "adakv", "zigzagkv")
                                  for r in (0.5, 0.75))
    # known answer: at 0.75 StreamingLLM keeps 4 sinks and the last quarter, which the key is not in
    kept = passkey.n_tokens - int(0.75 * passkey.n_tokens)
    assert passkey.needle_position + 12 < passkey.n_tokens - (kept - 4) and not report["streaming_llm@0.75"]


@pytest.mark.parametrize("name", ["h2o", "snapkv", "streaming_llm"])
def test_policies_run_on_gpt2(tiny_gpt2, name):
    full = tiny_gpt2.generate(PROMPT, 3, stop_at_eos=False)
    same = tiny_gpt2.generate(PROMPT, 3, stop_at_eos=False, cache_policy=get_policy(name, ratio=0.0))
    assert torch.equal(same.logits, full.logits)
    kept = []
    g = tiny_gpt2.generate(PROMPT, 4, stop_at_eos=False, cache_policy=get_policy(name, budget=16, window=4, at="both"),
                           on_step=lambda c, _: kept.append(kept_sets(c)))
    assert (g.cache.stats().tokens == 16).all()
    torch.testing.assert_close(g.logits, masked_generation_logits(tiny_gpt2, g, kept), atol=2e-5, rtol=1e-5)
    _assert_well_formed(g.cache, len(g.prompt_tokens) + 3)
