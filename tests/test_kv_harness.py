"""efficiency.kv.harness: policy × ratio sweeps with one prefill per sample, and compressed-prefix perplexity."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from efficiency import H2O, SnapKV, StreamingLLM, get_policy, perplexity, sweep
from workbench.questions import compress_context
from workbench.texts import load_domain
from workbench.texts.tasks import needle_prompts, passkey_prompts, split_ids

from kv_helpers import Recorder, masked_perplexity

N_TINY = 200


@pytest.fixture(scope="module")
def samples(tiny_llama):
    return passkey_prompts(tiny_llama, 2, N_TINY, seed=0) + needle_prompts(tiny_llama, 1, 240, seed=1)


def _count_forwards(model, monkeypatch):
    """Token counts of every forward pass the model runs (hooked or hook-free path)."""
    calls = []
    orig = model._forward

    def counting(inp, *a, **kw):
        calls.append(int(inp.shape[1]))
        return orig(inp, *a, **kw)

    monkeypatch.setattr(model, "_forward", counting)
    return calls


def test_kvcache_copy_is_independent(tiny_llama):
    cache = tiny_llama.prefill("The cat sat on the mat.")
    keys0, pos0 = cache.keys(0).clone(), cache.positions[0].clone()
    c = cache.copy()
    assert c.next_position == cache.next_position and torch.equal(c.keys(1), cache.keys(1))
    assert c.keys(0).data_ptr() != cache.keys(0).data_ptr()
    c.keep(0, torch.tensor([0, 2]))
    get_policy("streaming_llm", budget=3, sinks=1).apply(c, wb.kv_cache.StepContext(0, 1))
    assert torch.equal(cache.keys(0), keys0) and torch.equal(cache.positions[0], pos0)
    assert cache.stats().physical_bytes > c.stats().physical_bytes


def test_sweep_prefills_once_per_sample(tiny_llama, samples, monkeypatch):
    calls = _count_forwards(tiny_llama, monkeypatch)
    res = sweep(tiny_llama, samples, ["streaming_llm", "snapkv", "h2o"], ratios=(0.25, 0.5), max_new_tokens=3)
    assert sum(n > 1 for n in calls) == len(samples)  # one multi-token forward (the prefill) per sample
    # decoding: 2 new-token forwards per (policy, ratio) and for the full cache, per sample
    assert sum(n == 1 for n in calls) == len(samples) * (1 + 3 * 2) * 2
    df = res.to_frame()
    assert len(df) == len(samples) * (1 + 3 * 2)
    assert {"policy", "ratio", "sample", "score", "correct", "kept_fraction", "logical_bytes",
            "physical_bytes", "generated"} <= set(df.columns)
    assert set(df.policy) == {"full cache", "streaming_llm", "snapkv", "h2o"}
    ev = df[df.policy != "full cache"]
    assert (ev.kept_fraction < 1).all() and (df[df.policy == "full cache"].kept_fraction == 1).all()
    assert (ev[ev.ratio == 0.5].physical_bytes.values < ev[ev.ratio == 0.25].physical_bytes.values).all()
    s = res.table()
    assert len(s) == 1 + 3 * 2 and set(s.setting) == {"query-aware"}
    fig = res.figure()
    assert len(fig.data) == 3 and "full cache" in str(fig.layout.annotations)
    assert "SweepResult(3 sample(s) × 3 policies × 2 ratio(s)" in repr(res)
    assert "<table" in res._repr_html_()


def test_sweep_matches_generate(tiny_llama, samples):
    """Each row equals model.generate with the same policy (attention replayed from the shared prefill)."""
    sub = samples[1:]
    names = ["snapkv", "h2o", "tova", "streaming_llm", "adakv"]
    res = sweep(tiny_llama, sub, names, ratios=(0.5, 0.875), max_new_tokens=4).to_frame()
    i = tiny_llama.info
    per_token = i.n_layers * i.n_kv_heads * i.d_head * 2 * 4  # K and V (fp32) of one position in every layer and head
    for _, row in res.iterrows():
        policy = None if row.policy == "full cache" else get_policy(row.policy, ratio=row.ratio)
        g = tiny_llama.generate(sub[row["sample"]].prompt, max_new_tokens=4, cache_policy=policy)
        assert g.text == row.generated, (row.policy, row.ratio)
        assert g.cache_stats[0].physical_bytes == row.physical_bytes
        n = len(g.prompt_tokens)  # known value: a uniform budget's bytes (per-layer / per-head ones keep the total)
        kept = n if policy is None else n - math.floor(row.ratio * n)
        tokens = g.cache_stats[0].tokens  # (L, G) entries kept per layer and KV head
        assert int(tokens.sum()) == kept * i.n_layers * i.n_kv_heads
        # the int64 position index: per layer G x its longest head (a ragged layer's index is padded to it)
        index = 8 * i.n_kv_heads * int(tokens.max(dim=1).values.sum())
        if row.policy != "adakv":  # uniform budgets: every head keeps the same count, no padding
            assert index == 8 * kept * i.n_layers * i.n_kv_heads
        assert row.physical_bytes == kept * per_token + index and row.kept_fraction == pytest.approx(kept / n)


def test_ratio_zero_reproduces_full_cache(tiny_llama, samples):
    res = sweep(tiny_llama, samples, ["streaming_llm", "snapkv", SnapKV(ratio=0.5, window=4), H2O(ratio=0.3)],
                ratios=(0.0,), max_new_tokens=3)
    df = res.to_frame()
    full = df[df.policy == "full cache"].set_index("sample")
    for _, row in df.iterrows():
        assert row.generated == full.loc[row["sample"], "generated"]
        assert row.physical_bytes == full.loc[row["sample"], "physical_bytes"] and row.kept_fraction == 1.0


def test_sweep_policy_objects_and_fixed_policies(tiny_llama, samples):
    res = sweep(tiny_llama, samples[:1], [SnapKV(ratio=0.1, window=4), get_policy("kivi", bits=4)],
                ratios=(0.5,), max_new_tokens=2).to_frame()
    assert list(res.policy) == ["full cache", "snapkv(window=4)", "KIVI 4-bit (g32, r32)"]
    assert res.ratio.iloc[1] == 0.5 and math.isnan(res.ratio.iloc[2])


def test_a_policy_named_by_what_binding_loads_keeps_one_label(tiny_llama, samples):
    """A policy object whose name depends on what ``bind`` loads (Lexico's dictionary size) is bound before the
    first sample, so every sample's rows carry the same label."""
    class Loads(wb.PolicyBase):
        loaded = None

        @property
        def name(self):
            return "loads" + ("" if self.loaded is None else f" (N={self.loaded})")

        def bind(self, model):
            self.loaded = model.info.d_model

        def apply(self, cache, ctx):
            pass

    df = sweep(tiny_llama, samples[:2], [Loads()], max_new_tokens=2).to_frame()
    labels = set(df[df.policy != "full cache"].policy)
    assert labels == {f"loads (N={tiny_llama.info.d_model})"}


def test_sweep_bad_input(tiny_llama, samples):
    with pytest.raises(wb.InputError, match="Unknown cache policy"):
        sweep(tiny_llama, samples, ["nope"])
    with pytest.raises(wb.InputError, match="ratios"):
        sweep(tiny_llama, samples, ["snapkv"], ratios=(1.0,))
    with pytest.raises(wb.InputError, match="PasskeySample"):
        sweep(tiny_llama, ["a prompt"], ["snapkv"])
    with pytest.raises(wb.InputError, match="max_new_tokens"):
        sweep(tiny_llama, samples, ["snapkv"], max_new_tokens=0)


def _direct_ppl(model, texts, prefix=0.5):
    nll, n_scored = 0.0, 0
    for t in texts:
        ids, _ = model.tokenize(t)
        n = ids.shape[1]
        p = min(max(1, math.floor(prefix * n)), n - 1)
        logits = model.run(ids, logits="all").logits[0].double()
        lp = torch.log_softmax(logits[p - 1: n - 1], -1)
        nll -= float(lp[torch.arange(n - p), ids[0, p:]].sum())
        n_scored += n - p
    return math.exp(nll / n_scored)


def test_perplexity_full_equals_direct(tiny_llama):
    texts = [t[:200] for t in load_domain("prose")[:2]]  # tiny: byte tokens, 256 context
    direct = _direct_ppl(tiny_llama, texts)
    full = perplexity(tiny_llama, texts)
    assert full.perplexity == pytest.approx(direct, rel=1e-5)
    assert perplexity(tiny_llama, texts, chunk=7).perplexity == pytest.approx(direct, rel=1e-5)
    assert float(perplexity(tiny_llama, texts, prefix=0.25)) == pytest.approx(_direct_ppl(tiny_llama, texts, 0.25),
                                                                              rel=1e-5)
    assert isinstance(full.to_frame(), pd.DataFrame) and "perplexity" in repr(full)
    # streaming_llm at ratio 0 evicts nothing: the full-cache value
    assert perplexity(tiny_llama, texts, get_policy("streaming_llm", ratio=0.0)).perplexity == pytest.approx(
        direct, rel=1e-6)


def test_masked_reference_is_the_full_forward_without_eviction(tiny_llama):
    """The reference used below: with nothing evicted (every row sees all earlier rows) it is the plain
    full-forward perplexity, so it only differs from it through the masks."""
    texts = [t[:200] for t in load_domain("code")[:2]]  # byte tokens: 200 each, prefix 100, chunks of 8
    i = tiny_llama.info
    everything = [[{l: [set(range(100 + 8 * c))] * i.n_kv_heads for l in range(i.n_layers)} for c in range(13)]
                  for _ in texts]
    assert masked_perplexity(tiny_llama, texts, 0.5, 8, everything) == pytest.approx(_direct_ppl(tiny_llama, texts),
                                                                                     rel=1e-6)


@pytest.mark.parametrize("name, chunk, at", [("streaming_llm", None, "prefill"), ("h2o", 8, "both"),
                                             ("adakv", 5, "prefill")])
def test_perplexity_compressed_equals_masked_full_forward(tiny_llama, name, chunk, at):
    """Known value: the compressed-prefix perplexity equals a dense forward in which each scored row
    only sees what the cache held when it was fed (compression after the prefix, and after each chunk
    with at="both")."""
    texts = [t[:200] for t in load_domain("code")[:2]]
    rec = Recorder(get_policy(name, ratio=0.5, at=at, **({"window": 2} if name in ("snapkv", "h2o", "adakv") else {})))
    r = perplexity(tiny_llama, texts, rec, chunk=chunk)
    assert len(rec.snapshots) == len(texts)
    expected = masked_perplexity(tiny_llama, texts, 0.5, chunk, rec.snapshots)
    assert r.perplexity == pytest.approx(expected, rel=1e-5)
    direct = _direct_ppl(tiny_llama, texts)
    assert abs(r.perplexity / direct - 1) > 1e-3  # eviction changed the value, and the reference followed it
    n_prefix = r.per_text.n_prefix.to_numpy()  # kept after the prefix: a uniform budget's share (AdaKV: in total)
    np.testing.assert_allclose(r.per_text.kept_fraction.to_numpy(), (n_prefix - np.floor(0.5 * n_prefix)) / n_prefix,
                               atol=1e-9)


def test_perplexity_bad_input(tiny_llama):
    texts = ["some text to score here"]
    with pytest.raises(wb.InputError, match="prefix"):
        perplexity(tiny_llama, texts, prefix=1.0)
    with pytest.raises(wb.InputError, match="chunk"):
        perplexity(tiny_llama, texts, chunk=0)
    with pytest.raises(wb.InputError, match="non-empty"):
        perplexity(tiny_llama, [])


@pytest.mark.smollm2
def test_sweep_on_smollm2(smollm2):
    samples = passkey_prompts(smollm2, 2, 128, seed=0)
    res = sweep(smollm2, samples, ["streaming_llm", "snapkv"], ratios=(0.5,))
    df = res.to_frame()
    print(res.table().to_string())
    assert len(df) == 2 * 3
    assert res.full_score == 1.0  # SmolLM2 retrieves a 128-token passkey with the full cache
    assert (df[df.policy != "full cache"].kept_fraction.between(0.45, 0.55)).all()


def test_labels_carry_the_settings_that_differ(tiny_llama, samples):
    """Two settings of one policy are two rows, each counted once (the labels used to collide)."""
    res = sweep(tiny_llama, samples[:2], ["snapkv", SnapKV(ratio=0.1), SnapKV(ratio=0.1, window=4, kernel=5),
                                          StreamingLLM(ratio=0.1, sinks=2), SnapKV(ratio=0.1)],
                ratios=(0.5,), max_new_tokens=2)
    s = res.table()
    assert list(s.policy) == ["full cache", "snapkv", "snapkv #2", "snapkv(window=4, kernel=5)",
                              "streaming_llm(sinks=2)", "snapkv #3"]
    assert (s.n == 2).all()


def test_query_agnostic_sweep_equals_compress_then_ask(tiny_llama, samples):
    """Each query-agnostic row is the answer of compress_context(context) + ask(question)."""
    res = sweep(tiny_llama, samples[1:], ["snapkv", "streaming_llm", "tova"], ratios=(0.5,), max_new_tokens=3,
                query_aware="both")
    df = res.to_frame()
    assert set(df.setting) == {"query-aware", "query-agnostic"} and len(df) == 2 * 2 * 4
    assert set(res.full_scores) == {"query-aware", "query-agnostic"}
    for _, row in df[df.setting == "query-agnostic"].iterrows():
        s = samples[1:][row["sample"]]
        ctx_ids, q_ids = split_ids(tiny_llama, s)
        pol = None if row.policy == "full cache" else get_policy(row.policy, ratio=row.ratio)
        ctx = compress_context(tiny_llama, ctx_ids, pol)
        assert ctx.stats.physical_bytes == row.physical_bytes
        assert ctx.ask(q_ids, max_new_tokens=3).text == row.generated, row.policy
    assert "query-aware + query-agnostic" in repr(res) and len(res.figure().data) == 6


def test_query_agnostic_prefills_the_context_once(tiny_llama, samples, monkeypatch):
    calls = _count_forwards(tiny_llama, monkeypatch)
    sweep(tiny_llama, samples[:1], ["snapkv", "h2o"], ratios=(0.5,), max_new_tokens=2, query_aware=False)
    ctx_ids, q_ids = split_ids(tiny_llama, samples[0])
    assert calls.count(ctx_ids.shape[1]) == 1  # the context: once for every policy
    assert calls.count(q_ids.shape[1]) == 3  # the question: full cache + 2 policies
    with pytest.raises(wb.InputError, match="query_aware"):
        sweep(tiny_llama, samples[:1], ["snapkv"], query_aware="yes")
