"""lab.effects on tiny-llama: every internals metric against a hand computation from a plain forward pass, the
no-op method, baseline reuse (counted forward passes), and bad input."""
import numpy as np
import pytest
import torch

import lab
from probes.factual import direct_logit_attribution
from transcoder_helpers import random_tc
from test_lab_support import TINY, DropSink, ScaleLinear, ScaleUnembedding, window
from workbench import InputError, hook_name

P = TINY.prefix_tokens  # 24 of 48: the tail is the last 24 tokens of each window


@pytest.fixture(scope="module")
def tc_tiny(tiny_llama):
    return {1: random_tc(tiny_llama.info.d_model, 24, seed=3,
                         metadata={"model_fingerprint": tiny_llama.fingerprint, "hook_layer": 1})}


@pytest.fixture(scope="module")
def plain(tiny_llama):
    """A plain forward over window 0 capturing everything the hand computations need."""
    ids = window(tiny_llama)
    return ids, tiny_llama.run(ids[None], capture=["pattern", "resid_post", "mlp_out", "mlp_in",
                                                   hook_name("resid_pre", 0)], logits="all")


def test_noop_methods_change_nothing(tiny_llama, tc_tiny):
    for noop in (ScaleLinear(0, "down", 1.0), lab.resolve_method(("snapkv", {"ratio": 0.0}))):
        r = lab.effects(tiny_llama, noop, TINY, transcoders=tc_tiny, progress=False)
        assert np.all(r.drift_rel == 0) and np.all(r.drift_cos == pytest.approx(1.0, abs=1e-12))
        assert np.all(r.attention_tv == 0) and np.all(r.attention_js == 0)
        assert np.array_equal(r.sink_base, r.sink_method)
        assert np.all(r.dla["heads_delta"] == 0) and np.all(r.dla["mlps_delta"] == 0) and r.dla["embed_delta"] == 0
        f = r.features[1]
        assert f["kept"] == 1.0 and f["correlation"] == pytest.approx(1.0) and f["n_dead"] == 0
        assert r.quality["kl"] == 0 and r.quality["perplexity"] == r.quality["perplexity_base"]
        assert r.quality["top1_agreement"] == 1.0
        assert np.array_equal(r.massive["norm_base"], r.massive["norm_method"])


def test_perplexity_massive_and_sink_mass_by_hand(tiny_llama, plain):
    ids, run = plain
    r = lab.effects(tiny_llama, DropSink(), TINY, progress=False)
    lp = torch.log_softmax(run.logits[0].double(), -1)
    nll = -sum(float(lp[t - 1, ids[t]]) for t in range(P, len(ids)))
    b = lab.baseline(tiny_llama, TINY)
    assert b.record.windows[0].nll == pytest.approx(nll, rel=1e-5)
    # the peak token's residual norm per stage (embedding, then every block's output)
    p = r.massive["peak_position"]
    stages = [run[hook_name("resid_pre", 0)]] + [run["resid_post", l] for l in range(tiny_llama.info.n_layers)]
    assert r.massive["norm_base"] == pytest.approx([float(x[0, p].norm()) for x in stages], rel=1e-5)
    # sink mass: attention on position 0 averaged over the tail queries; evicting position 0 leaves none
    pat = run.stack("pattern")[:, 0]  # (L, H, T, T)
    assert r.sink_base == pytest.approx(pat[:, :, P:, 0].mean(-1).double().numpy(), abs=1e-6)
    assert np.all(r.sink_method == 0)
    assert r.measured["kv_bytes"] == r.cost.kv_bytes < r.measured["baseline_kv_bytes"]


def test_drift_by_hand(tiny_llama, plain):
    ids, run = plain
    last = tiny_llama.info.n_layers - 1
    r = lab.effects(tiny_llama, ScaleLinear(last, "down", 0.5), TINY, progress=False)
    # only the last MLP is halved: x' = x - 0.5 * mlp_out at the last layer, nothing before it moves
    x, mo = run["resid_post", last][0, P:].double(), run["mlp_out", last][0, P:].double()
    d = 0.5 * mo
    assert r.drift_rel[:last] == pytest.approx(0, abs=1e-12)
    assert r.drift_rel[last] == pytest.approx(float((d.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-4)
    xn = x - d
    cos = (x * xn).sum(-1) / (x.norm(dim=-1) * xn.norm(dim=-1))
    assert r.drift_cos[last] == pytest.approx(float(cos.mean()), rel=1e-6)


def test_attention_divergence_by_hand(tiny_llama, plain):
    ids, run = plain
    T = len(ids)
    # W_Q = 0 in layer 0: every score is 0, so every row is uniform over the keys the query sees
    r = lab.effects(tiny_llama, ScaleLinear(0, "q", 0.0), TINY, progress=False)
    probe = lab.baseline(tiny_llama, TINY).record.windows[0].internals.probe_queries
    pat = run["pattern", 0][0].double()  # (H, T, T)
    tv, rec_b, rec_u = [], torch.zeros(pat.shape[0], T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    for i in range(T - P):
        q = P + i
        uni = torch.zeros(T, dtype=torch.float64)
        uni[: q + 1] = 1 / (q + 1)
        rec_b += pat[:, q]
        rec_u += uni
        if i in probe:
            tv.append(0.5 * (pat[:, q] - uni).abs().sum(-1))
    assert r.attention_tv[0] == pytest.approx(torch.stack(tv).mean(0).numpy(), abs=1e-5)
    pb, pu = (rec_b / (T - P)).numpy(), (rec_u / (T - P)).numpy()
    m = 0.5 * (pb + pu)
    kl = lambda a: np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / m), 0).sum(-1)  # noqa: E731
    assert r.attention_js[0] == pytest.approx(0.5 * kl(pb) + 0.5 * kl(pu[None]), abs=1e-6)


def test_kl_by_hand(tiny_llama, plain):
    ids, run = plain
    r = lab.effects(tiny_llama, ScaleUnembedding(2.0), TINY, progress=False)
    idx = lab.baseline(tiny_llama, TINY).record.windows[0].kl_index
    logits = run.logits[0].double()[P - 1:-1][idx]  # rows predicting the scored tokens
    lp, lq = torch.log_softmax(logits, -1), torch.log_softmax(2 * logits, -1)
    kl0 = (lp.exp() * (lp - lq)).sum(-1)
    b = lab.baseline(tiny_llama, TINY)
    run1 = tiny_llama.run(window(tiny_llama, TINY, 1)[None], logits="all").logits[0].double()[P - 1:-1][idx]
    lp1, lq1 = torch.log_softmax(run1, -1), torch.log_softmax(2 * run1, -1)
    kl1 = (lp1.exp() * (lp1 - lq1)).sum(-1)
    assert r.quality["kl"] == pytest.approx(float(torch.cat([kl0, kl1]).mean()), rel=1e-4)
    assert b.record.perplexity == pytest.approx(r.quality["perplexity_base"])


def test_dla_matches_probes_factual(tiny_llama):
    s = TINY.replace(fact_context=0)
    b = lab.baseline(tiny_llama, s)
    for item, rec in zip(b.data.facts, b.record.facts):
        ref = direct_logit_attribution(tiny_llama, item.fact)
        d = rec.dla
        assert d.targets == ref.targets
        assert d.heads == pytest.approx(ref.heads, abs=1e-5)
        assert d.mlps == pytest.approx(ref.mlps, abs=1e-5)
        assert d.embed == pytest.approx(ref.embed, abs=1e-5)
        assert d.error < 1e-4 and d.logits == pytest.approx(ref.logits, abs=1e-5)


def test_features_by_hand(tiny_llama, plain, tc_tiny):
    ids, run = plain
    r = lab.effects(tiny_llama, ScaleLinear(0, "down", 0.25), TINY, transcoders=tc_tiny, progress=False)
    tc = tc_tiny[1]
    with torch.no_grad():
        base = tc.encode(run["mlp_in", 1][0, P:]).double()
        with tiny_llama.intervene(ScaleLinear(0, "down", 0.25).intervention(tiny_llama)):
            x = tiny_llama.run(ids[None], capture=["mlp_in"], layers=[1], logits=None)["mlp_in", 1][0, P:]
        new = tc.encode(x).double()
    k, shares = TINY.feature_top_k, []
    for a, c in zip(base, new):
        top_a = {int(i) for i in torch.topk(a, k).indices if a[i] > 0}
        top_c = {int(i) for i in torch.topk(c, k).indices if c[i] > 0}
        if top_a:
            shares.append(len(top_a & top_c) / len(top_a))
    f = r.features[1]
    assert f["kept"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert f["correlation"] == pytest.approx(np.corrcoef(base.flatten(), new.flatten())[0, 1], abs=1e-5)
    per = f["per_feature"]
    assert per.freq_base.to_numpy() == pytest.approx((base > 0).double().mean(0).numpy())
    assert r.dying_features(5).shape[0] <= 5


def test_baseline_is_computed_once_and_reused(tiny_llama):
    m = tiny_llama
    s = TINY.replace(name="reuse", timing_repeats=2, timing_tokens=16, decode_tokens=2)
    lab.clear_baselines()
    n0 = m.forward_count
    r1 = lab.effects(m, ("streaming_llm", {"ratio": 0.5}), s, progress=False)
    n1 = m.forward_count
    fp = r1.forward_passes
    assert fp["baseline"] > 0 and n1 - n0 == fp["baseline"] + fp["method"] + fp["timing"]
    assert fp["baseline"] == fp["method"]  # the same protocol on both sides
    assert fp["timing"] == 2 * 2 * (1 + s.decode_tokens)  # ABBA: both sides per repeat, prefill + decode steps
    r2 = lab.effects(m, ScaleLinear(0, "up", 0.9), s, progress=False)
    assert r2.forward_passes["baseline"] == 0
    assert m.forward_count - n1 == r2.forward_passes["method"] + r2.forward_passes["timing"]
    t = r2.timing
    assert len(t["raw"]["baseline_decode"]) == 2 and t["threads"] >= 1 and t["method_decode_ms"] > 0
    # another suite gets its own baseline; the first is still cached
    assert lab.effects(m, ScaleLinear(0, "up", 0.9), TINY, progress=False).forward_passes["baseline"] > 0
    assert lab.effects(m, ScaleLinear(1, "up", 0.9), s, progress=False).forward_passes["baseline"] == 0


def test_report_tables_and_panels(tiny_llama):
    r = lab.effects(tiny_llama, [("snapkv", {"ratio": 0.5}), ScaleLinear(1, "down", 0.5)], TINY, progress=False)
    assert r.method == "snapkv(ratio=0.5) + scale_linear_test(layer=1, factor=0.5, kind=down)"
    assert r.measured["kv_bytes"] == r.cost.kv_bytes and r.measured["weight_bytes"] == r.cost.weight_bytes
    df = r.to_frame()
    assert {"cost", "quality", "drift", "attention", "sinks", "massive", "dla"} <= set(df.panel)
    for p in r.panels():
        fig = r.figure(p)
        assert fig.data, p
    assert "saving" in r.figure("cost").layout.annotations[0].text
    assert "EffectReport(" in repr(r) and "<b>" in r._repr_html_()
    top = r.top_changed(5)
    assert len(top) == 5 and top.delta.abs().is_monotonic_decreasing
    with pytest.raises(InputError, match="Unknown panel"):
        r.figure("sink")


def test_bad_input(tiny_llama, tc_tiny):
    m = tiny_llama
    with pytest.raises(InputError, match="Did you mean 'snapkv'"):
        lab.effects(m, "snpkv", TINY)
    with pytest.raises(InputError, match="unknown knob"):
        lab.effects(m, ("snapkv", {"bits": 2}), TINY)
    with pytest.raises(InputError, match="out of range"):
        lab.effects(m, ("snapkv", {"ratio": 1.5}), TINY)
    with pytest.raises(InputError, match="context of 256 tokens"):
        lab.effects(m, "snapkv", "full")
    with pytest.raises(InputError, match="Unknown suite"):
        lab.effects(m, "snapkv", "medium")
    other = {1: random_tc(m.info.d_model, 8, metadata={"model_fingerprint": "0123456789abcdef", "hook_layer": 1})}
    with pytest.raises(InputError, match="trained on another model"):
        lab.effects(m, "snapkv", TINY, transcoders=other)
    with pytest.raises(InputError, match="trained on layer 1"):
        lab.effects(m, "snapkv", TINY, transcoders={0: tc_tiny[1]})
    with pytest.raises(InputError, match="d_model=64"):
        lab.effects(m, "snapkv", TINY, transcoders={1: random_tc(32, 8)})
    with pytest.raises(InputError, match="another model"):
        lab.effects(m, "snapkv", TINY, transcoders="shipped")
    with m.intervene(ScaleLinear(0, "down", 0.5).intervention(m)):
        with pytest.raises(InputError, match="outside `with model.intervene"):
            lab.effects(m, "snapkv", TINY)
    with pytest.raises(InputError, match="at least one perplexity window"):
        lab.Suite(ppl_tokens=4)
    with pytest.raises(InputError, match="prefix"):
        lab.Suite(prefix=1.5)
    with pytest.raises(InputError, match="no field"):
        TINY.replace(windows=3)
    with pytest.raises(InputError, match="computed for suite"):
        lab.effects(m, "snapkv", TINY.replace(name="other"), baseline=lab.baseline(m, TINY))
    with pytest.raises(InputError, match="Cannot use"):
        lab.effects(m, 42, TINY)
    assert m.leftover_hooks() == []


def test_concept_scores_by_hand(tiny_llama, monkeypatch):
    from probes.frames import concept_scores
    from probes.frames.wordnet import wordnet_available

    if not wordnet_available():
        pytest.skip("WordNet 3.0 is not installed (make system)")
    s = TINY.replace(name="concept", concept="pc.n.01")
    r0 = lab.effects(tiny_llama, ScaleLinear(0, "down", 1.0), s, progress=False)
    assert r0.concept["correlation"] == pytest.approx(1.0) and r0.concept["mean_abs_change"] == 0
    r = lab.effects(tiny_llama, ScaleLinear(1, "down", 0.5), s, progress=False)
    text = tiny_llama.to_string(window(tiny_llama, s).tolist())
    ref = concept_scores(tiny_llama, text, "pc.n.01").scores[0]
    assert r.concept["base"] == pytest.approx(ref, abs=1e-4)
    with tiny_llama.intervene(ScaleLinear(1, "down", 0.5).intervention(tiny_llama)):
        ref_m = concept_scores(tiny_llama, text, "pc.n.01").scores[0]
    assert r.concept["method"] == pytest.approx(ref_m, abs=1e-4)
    assert r.figure("concepts").data


def test_missing_wordnet_leaves_only_the_concept_panel_out(tiny_llama, monkeypatch):
    import probes.frames.wordnet as wn

    monkeypatch.setattr(wn, "wordnet_available", lambda: False)
    s = TINY.replace(name="no-wordnet", concept="pc.n.01")
    r = lab.effects(tiny_llama, ScaleLinear(1, "down", 0.5), s, progress=False)
    assert r.concept is None and any("WordNet 3.0 is not installed" in n for n in r.notes)
    assert "concepts" not in r.panels() and r.drift_rel[-1] > 0
    assert "not measured" in r.figure("concepts").layout.title.text
