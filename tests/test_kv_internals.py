"""compare_cache and kv_compare_explorer: retention, sink survival, attention and output divergence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from efficiency import get_policy
from efficiency.kv.explorer import eviction_policies, kv_compare_explorer
from efficiency.kv.internals import CacheComparison, compare_cache
from workbench.errors import InputError
from workbench.generation import cached_forward, prefill

PROMPT = ("The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door. "
          "Meanwhile, in the kitchen, the kettle began to whistle.")


@pytest.fixture(scope="module")
def snap(tiny_llama):
    return compare_cache(tiny_llama, PROMPT, "snapkv", ratio=0.5)


@pytest.mark.parametrize("name", ["streaming_llm", "h2o", "snapkv", "random", "tova", "kvzip", "hashevict", "ems"])
def test_ratio_zero_is_the_full_cache(tiny_llama, name):
    c = compare_cache(tiny_llama, PROMPT, name, ratio=0.0, n_probe=2)
    assert c.retention.all() and c.sink_kept.all()
    assert float(c.tv.abs().max()) < 1e-6 and float(c.kl.abs().max()) < 1e-6
    assert float(c.evicted_mass.max()) == 0.0
    assert float(c.output_kl.max()) < 1e-6 and bool(c.top1_same.all())
    assert c.top5_full == c.top5_compressed
    assert tiny_llama.leftover_hooks() == []


@pytest.fixture(scope="module")
def reference(tiny_llama):
    from efficiency.kv.internals import full_reference

    return full_reference(tiny_llama, PROMPT)


@pytest.mark.parametrize("name", eviction_policies())
def test_every_policy_at_a_real_ratio_matches_a_direct_prefill(tiny_llama, reference, name):
    """At ratio 0.5 (the policy scores and evicts): retention is exactly what the same policy keeps in a
    plain prefill, the sink flag is position 0's retention, the evicted mass is the full rows' mass on
    the evicted positions, and the compressed logits are those of the probe fed to that cache."""
    m = tiny_llama
    c = compare_cache(m, PROMPT, name, ratio=0.5, reference=reference)
    cache = prefill(m, PROMPT, cache_policy=get_policy(name, ratio=0.5))
    t = c.n_tokens
    expect = torch.zeros_like(c.retention)
    for l in range(cache.n_layers):
        for g in range(cache.n_kv_heads):
            p = cache.positions[l][0, g]
            expect[l, g, p[p >= 0]] = True
    assert torch.equal(c.retention, expect)
    assert int(c.retention.sum()) == int(cache.stats().tokens.sum()) < c.retention.numel()
    kept, k = c.retention.sum(-1), t - int(0.5 * t)  # (L, G) per layer and KV head; a uniform budget
    if name == "adakv":  # per-head budgets: each layer keeps G * k in all
        assert (kept.sum(1) == k * cache.n_kv_heads).all()
    elif name == "kvzip":  # one ranking over every (layer, KV head) pair: only the total is uniform
        assert int(kept.sum()) == k * cache.n_layers * cache.n_kv_heads
    elif name in ("pyramidkv", "zigzagkv"):  # per-layer budgets: L * k in all, the same in a layer's heads
        assert (kept.sum(0) == k * cache.n_layers).all() and (kept == kept[:, :1]).all()
    else:
        assert (kept == k).all()
    assert torch.equal(c.sink_kept, c.retention[..., 0])
    h = c.full_pattern.shape[2]
    lost = ~c.retention.repeat_interleave(h // cache.n_kv_heads, dim=1)
    torch.testing.assert_close(c.evicted_mass, (c.full_pattern[0, ..., :t] * lost).sum(-1), atol=1e-6, rtol=0)
    with torch.no_grad():
        direct = cached_forward(m, cache, torch.tensor([[c.probe_tokens[0]]]))[0, -1].float()
    torch.testing.assert_close(c.compressed_logits[0].float(), direct, atol=1e-5, rtol=1e-5)
    lf, lc = torch.log_softmax(c.full_logits[0].double(), -1), torch.log_softmax(direct.double(), -1)
    assert float(c.output_kl[0]) == pytest.approx(max(0.0, float((lf.exp() * (lf - lc)).sum())), abs=1e-5)
    assert float(c.tv.max()) > 0 and bool((c.tv >= c.evicted_mass - 1e-6).all())


def test_streaming_llm_keeps_sinks_plus_window_exactly(tiny_llama):
    t = tiny_llama.tokenize(PROMPT)[1][0]
    c = compare_cache(tiny_llama, PROMPT, get_policy("streaming_llm", sinks=2, window=8))
    expect = torch.zeros(t, dtype=torch.bool)
    expect[:2] = True
    expect[t - 8:] = True
    assert torch.equal(c.retention, expect.expand_as(c.retention))
    # with a ratio: the sinks plus the most recent tokens up to the budget
    c = compare_cache(tiny_llama, PROMPT, "streaming_llm", ratio=0.5)
    keep = t - int(np.floor(0.5 * t + 1e-9))
    expect = torch.zeros(t, dtype=torch.bool)
    expect[:4] = True
    expect[t - (keep - 4):] = True
    assert torch.equal(c.retention, expect.expand_as(c.retention))
    assert c.sink_kept.all() and c.sink_kept_heads.shape == c.tv.shape


def test_mapped_back_pattern_sums_to_one_over_kept(snap: CacheComparison):
    p, l, h, s = snap.compressed_pattern.shape
    t = snap.n_tokens
    g = snap.retention.shape[1]
    kept = torch.ones(l, h, s, dtype=torch.bool)
    kept[..., :t] = snap.retention.repeat_interleave(h // g, dim=1)
    assert not snap.retention.all()  # something was evicted
    on_kept = (snap.compressed_pattern * kept).sum(-1)
    assert torch.allclose(on_kept, torch.ones_like(on_kept), atol=1e-5)
    assert float((snap.compressed_pattern * ~kept).abs().max()) == 0.0  # evicted positions get 0
    assert torch.allclose(snap.full_pattern.sum(-1), torch.ones(p, l, h), atol=1e-5)


def _independent_rows(model, prompt, policy, token):
    """Prefill with the public prefill(), feed ``token``, capture each layer's probe row, map back by a loop."""
    cache = prefill(model, prompt, cache_policy=policy)
    rows = {}
    with model._session() as session:
        for l in range(model.info.n_layers):
            session.add(f"blocks.{l}.attn.hook_pattern", (lambda l: lambda x, _n: rows.__setitem__(l, x.clone()))(l))
        with session, torch.no_grad():
            cached_forward(model, cache, torch.tensor([[token]]))
    n_heads, g = model.info.n_heads, model.info.n_kv_heads
    size = cache.next_position
    out = np.zeros((model.info.n_layers, n_heads, size))
    for l in range(model.info.n_layers):
        row = rows[l][0, :, -1].double().numpy()  # (H, N_l + 1)
        pos = cache.positions[l][0].numpy()  # (G, N_l + 1)
        for h in range(n_heads):
            for j, p in enumerate(pos[h // (n_heads // g)]):
                out[l, h, p] = row[h, j]
    return out


def test_divergence_matches_independent_computation(tiny_llama, snap):
    tok = snap.probe_tokens[0]
    full = _independent_rows(tiny_llama, PROMPT, None, tok)
    comp = _independent_rows(tiny_llama, PROMPT, get_policy("snapkv", ratio=0.5), tok)
    np.testing.assert_allclose(snap.full_pattern[0].numpy(), full, atol=1e-6)
    np.testing.assert_allclose(snap.compressed_pattern[0].numpy(), comp, atol=1e-6)
    tv = 0.5 * np.abs(full - comp).sum(-1)
    eps = 1e-10
    kl = (full * (np.log(full + eps) - np.log(comp + eps))).sum(-1)
    np.testing.assert_allclose(snap.tv.numpy(), tv, atol=1e-5)
    np.testing.assert_allclose(snap.kl.numpy(), kl, rtol=1e-4, atol=1e-4)
    assert float(snap.tv.min()) > 0


def test_mass_on_evicted_equals_full_pattern_over_evicted(snap):
    full = snap.full_pattern[0].numpy()
    l, h, _ = full.shape
    g = snap.retention.shape[1]
    for layer in range(l):
        for head in range(h):
            evicted = np.flatnonzero(~snap.retention[layer, head // (h // g)].numpy())
            assert snap.evicted_mass[layer, head] == pytest.approx(full[layer, head, evicted].sum(), abs=1e-6)
    # TV is at least the mass the compressed cache cannot place where the full one did
    assert bool((snap.tv >= snap.evicted_mass - 1e-6).all())


def test_output_difference_and_figures(tiny_llama, snap):
    lf = torch.log_softmax(snap.full_logits[0], -1)
    lc = torch.log_softmax(snap.compressed_logits[0], -1)
    assert float(snap.output_kl[0]) == pytest.approx(float((lf.exp() * (lf - lc)).sum()), abs=1e-5)
    assert len(snap.top5_full[0]) == 5 and len(snap.top5_compressed[0]) == 5
    assert snap.top5_full[0][0] == tiny_llama.tokenizer.decode([int(snap.full_logits[0].argmax())])
    ret = snap.figure("retention")
    np.testing.assert_allclose(np.asarray(ret.data[0].z), snap.retention.float().mean(1).numpy())
    assert np.asarray(ret.data[0].z).shape == (snap.n_layers, snap.n_tokens)
    div = snap.figure("divergence")
    np.testing.assert_allclose(np.asarray(div.data[0].z), snap.tv.numpy())
    out = snap.figure("output")
    assert len(out.data) == 2 and len(out.data[0].x) >= 5
    df = snap.to_frame()
    assert len(df) == snap.n_layers * snap.n_heads and {"tv", "kl", "evicted_mass", "sink_kept"} <= set(df.columns)
    assert "CacheComparison(" in repr(snap) and "<table>" in snap._repr_html_()
    with pytest.raises(InputError):
        snap.figure("nope")


def test_widget_show_puts_the_right_arrays(tiny_llama):
    box = kv_compare_explorer(tiny_llama, PROMPT, policies=["streaming_llm", "random"], ratios=(0.25, 0.5))
    assert box.computed() == [("streaming_llm", 0.25)]  # lazily: only the first view
    c = box.show("random", 0.5)
    assert box.computed() == [("random", 0.5), ("streaming_llm", 0.25)]
    assert (box.policy_dropdown.value, box.ratio_slider.value) == ("random", 0.5)
    np.testing.assert_allclose(np.asarray(box.retention_figure.data[0].z), c.retention.float().mean(1).numpy())
    np.testing.assert_allclose(np.asarray(box.divergence_figure.data[0].z), c.tv.numpy())
    labels, pf, pc = c.output_bars(0)
    assert list(box.output_figure.data[0].x) == labels
    np.testing.assert_allclose(np.asarray(box.output_figure.data[1].y), pc)
    # same result object on a second view (cached), and the controls drive the figures too
    assert box.show("random", 0.5) is c
    box.policy_dropdown.value = "streaming_llm"
    s = box.comparison("streaming_llm", 0.5)
    np.testing.assert_allclose(np.asarray(box.divergence_figure.data[0].z), s.tv.numpy())
    assert box.current() == ("streaming_llm", 0.5)
    # every eviction policy by default
    assert "snapkv" in eviction_policies() and "kivi" not in eviction_policies()


def test_bad_input(tiny_llama):
    with pytest.raises(InputError, match="Unknown cache policy"):
        compare_cache(tiny_llama, PROMPT, "no_such_policy")
    with pytest.raises(InputError):
        compare_cache(tiny_llama, PROMPT, "snapkv", ratio=1.5)
    with pytest.raises(InputError):
        compare_cache(tiny_llama, PROMPT, object())
    with pytest.raises(InputError):
        compare_cache(tiny_llama, "", "snapkv")
    with pytest.raises(InputError):
        compare_cache(tiny_llama, PROMPT, "snapkv", n_probe=0)
    with pytest.raises(InputError, match="max_tokens"):
        kv_compare_explorer(tiny_llama, PROMPT, max_tokens=8)
    with pytest.raises(InputError, match="Unknown cache policy"):
        kv_compare_explorer(tiny_llama, PROMPT, policies=["no_such_policy"])
    with pytest.raises(InputError):
        kv_compare_explorer(tiny_llama, PROMPT, ratios=(0.5, 1.0))
    box = kv_compare_explorer(tiny_llama, PROMPT, policies=["streaming_llm"], ratios=(0.5,))
    with pytest.raises(InputError):
        box.show("streaming_llm", 0.3)
    with pytest.raises(InputError):
        box.show("h2o", 0.5)
    assert tiny_llama.leftover_hooks() == []


@pytest.mark.smollm2
def test_smollm2_sink_survives_and_snapkv_beats_random(smollm2):
    from workbench.texts.tasks import passkey_prompts

    sample = passkey_prompts(smollm2, n=1, n_tokens=128, seed=0)[0]
    stream = compare_cache(smollm2, sample.prompt, "streaming_llm", ratio=0.5)
    assert bool(stream.sink_kept.all())
    snapkv = compare_cache(smollm2, sample.prompt, "snapkv", ratio=0.5)
    rand = compare_cache(smollm2, sample.prompt, "random", ratio=0.5)
    print({c.policy: (round(float(c.tv.mean()), 4), round(float(c.output_kl[0]), 4)) for c in (stream, snapkv, rand)})
    assert float(snapkv.tv.mean()) < float(rand.tv.mean())


def test_reference_must_match(tiny_llama):
    from efficiency.kv.internals import full_reference

    ref = full_reference(tiny_llama, PROMPT)
    with pytest.raises(InputError, match="different prompt"):
        compare_cache(tiny_llama, PROMPT + " more", "snapkv", ratio=0.5, reference=ref)
    with pytest.raises(InputError, match="probe"):
        compare_cache(tiny_llama, PROMPT, "snapkv", n_probe=2, ratio=0.5, reference=ref)
    a = compare_cache(tiny_llama, PROMPT, "snapkv", ratio=0.5, reference=ref)
    b = compare_cache(tiny_llama, PROMPT, "snapkv", ratio=0.5)
    assert torch.equal(a.tv, b.tv) and torch.equal(a.compressed_logits, b.compressed_logits)


@pytest.mark.parametrize("name", ["kvzip", "hashevict", "ems"])
def test_new_policies_in_the_internals_view(tiny_llama, name):
    c = compare_cache(tiny_llama, PROMPT, name, ratio=0.5, n_probe=2)
    t = c.n_tokens
    kept = c.retention.sum(-1)  # (L, G)
    if name == "kvzip":  # one threshold over all layers and heads: the total is that of a uniform budget
        assert int(kept.sum()) == (t - int(0.5 * t)) * kept.numel()
    else:
        assert (kept == t - int(0.5 * t)).all()
    assert c.sink_kept.all()  # all three protect the first positions
    p, l, h, s = c.compressed_pattern.shape
    assert torch.allclose(c.compressed_pattern.sum(-1), torch.ones(p, l, h), atol=1e-5)
    assert float(c.evicted_mass.max()) > 0 and "CacheComparison(" in repr(c) and isinstance(c.metrics(), dict)


def test_lexico_in_the_internals_view(tiny_llama):
    """Sparse coding keeps every position; the divergence measures the reconstruction error's effect."""
    from efficiency.kv.lexico import LexicoCompression
    from efficiency.kv.lexico_dictionary import LexicoDictionary

    i = tiny_llama.info
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2, i.n_layers, i.d_head, 48, generator=g)
    d = d / d.norm(dim=2, keepdim=True)
    dic = LexicoDictionary(d[0], d[1], i.name, tiny_llama.fingerprint)
    coarse = compare_cache(tiny_llama, PROMPT, LexicoCompression(sparsity=2, buffer=8, block=8, dictionary=dic))
    fine = compare_cache(tiny_llama, PROMPT, LexicoCompression(sparsity=12, buffer=8, block=8, dictionary=dic))
    assert coarse.retention.all() and fine.retention.all() and float(coarse.evicted_mass.max()) == 0.0
    assert 0 < float(fine.tv.mean()) < float(coarse.tv.mean())
