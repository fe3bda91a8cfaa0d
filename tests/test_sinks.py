"""Attention-sink detection: exact checks on synthetic patterns, bridge versus HF eager
attentions, the report API and bad input; SmolLM2 integration (numbers in docs/sinks.md)."""
import math

import numpy as np
import pytest
import torch

from probes.sinks.report import SinkReport, sink_report
from workbench.capture import summarize_pattern
from workbench.errors import InputError
from workbench.intervention import Intervention
from conftest import SMOL_PROMPTS

PROMPTS = ["the cat sat on the mat. the dog sat too.", "a b, c d; e f."]


def causal_uniform(t: int) -> torch.Tensor:
    tri = torch.tril(torch.ones(t, t))
    return tri / tri.sum(-1, keepdim=True)


def random_causal(b: int, h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, h, t, t, generator=g) * 2
    s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    return s.softmax(-1)


def brute_force(p: torch.Tensor, skip: int, lengths):
    """Loop-level reference of the AttentionSummary statistics (double precision)."""
    b, h, t, _ = p.shape
    p = p.double()
    rec = torch.full((b, h, t), float("nan"), dtype=torch.float64)
    col = torch.full((b, h, t), float("nan"), dtype=torch.float64)
    row = torch.full((b, h, t), float("nan"), dtype=torch.float64)
    for i in range(b):
        n = lengths[i]
        for hh in range(h):
            for q in range(1, n):
                a = p[i, hh, q, : q + 1]
                ent = -sum(float(x) * math.log(float(x)) for x in a if x > 0)
                row[i, hh, q] = ent / math.log(q + 1)
            for k in range(n):
                qs = [q for q in range(max(k, skip), n)]
                if not qs:
                    continue
                c = torch.stack([p[i, hh, q, k] for q in qs])
                rec[i, hh, k] = c.mean()
                if len(qs) >= 2 and c.sum() > 0:
                    w = c / c.sum()
                    ent = -sum(float(x) * math.log(float(x)) for x in w if x > 0)
                    col[i, hh, k] = ent / math.log(len(qs))
    return rec, row, col


def close_nan(a, b, atol=1e-5):
    a, b = a.double(), b.double()
    assert torch.equal(a.isnan(), b.isnan())
    assert torch.allclose(torch.nan_to_num(a), torch.nan_to_num(b), atol=atol)


# ------------------------------------------------------------------------- synthetic patterns
def test_one_hot_on_key0_gives_mass_one_and_zero_row_entropy():
    b, h, t = 2, 3, 7
    p = torch.zeros(b, h, t, t)
    p[..., 0] = 1.0
    s = summarize_pattern(p, layer=0, skip_queries=4, n_last=1)
    assert torch.allclose(s.received[..., 0], torch.ones(b, h))
    assert torch.all(s.received[..., 1:4] == 0)  # keys 1..3: counted queries 4..6 give them nothing
    assert torch.allclose(s.row_entropy[..., 1:], torch.zeros(b, h, t - 1), atol=1e-6)
    assert s.row_entropy[..., 0].isnan().all()  # one visible key: undefined
    # key 0 receives 1 from every counted query: an even column, normalized entropy 1
    assert torch.allclose(s.column_entropy[..., 0], torch.ones(b, h), atol=1e-6)


def test_uniform_rows_give_normalized_row_entropy_one():
    t = 9
    p = causal_uniform(t)[None, None].repeat(2, 2, 1, 1)
    s = summarize_pattern(p, layer=0, skip_queries=0, n_last=1)
    assert torch.allclose(s.row_entropy[..., 1:], torch.ones(2, 2, t - 1), atol=1e-5)


def test_column_entropy_normalized_by_queries_that_see_the_key():
    # one head, 4 tokens; key 0's column over queries 0..3 is (1, .5, .5, .25)
    p = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0.25, 0.25, 0], [0.25, 0.25, 0.25, 0.25]])[None, None]
    s = summarize_pattern(p, 0, skip_queries=0, n_last=1)
    col0 = torch.tensor([1.0, 0.5, 0.5, 0.25])
    w = col0 / col0.sum()
    assert s.column_entropy[0, 0, 0].item() == pytest.approx(float(-(w * w.log()).sum() / math.log(4)), rel=1e-5)
    # key 1 is seen by queries 1..3: (0.5, 0.25, 0.25) normalized by log 3, not log 4
    w1 = torch.tensor([0.5, 0.25, 0.25])
    assert s.column_entropy[0, 0, 1].item() == pytest.approx(float(-(w1 * w1.log()).sum() / math.log(3)), rel=1e-5)
    # key 2: (0.25, 0.25) from queries 2, 3: even, so exactly 1; key 3 has one query: undefined
    assert s.column_entropy[0, 0, 2].item() == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(s.column_entropy[0, 0, 3].item())
    assert s.counts[0].tolist() == [4, 3, 2, 1]
    # skipping 2 queries: key 0 is counted over queries 2, 3 only, (.5, .25) normalized by log 2
    s2 = summarize_pattern(p, 0, skip_queries=2, n_last=1)
    w2 = torch.tensor([0.5, 0.25]) / 0.75
    assert s2.column_entropy[0, 0, 0].item() == pytest.approx(float(-(w2 * w2.log()).sum() / math.log(2)), rel=1e-5)
    assert s2.received[0, 0, 0].item() == pytest.approx(0.375)
    assert s2.counts[0].tolist() == [2, 2, 2, 1]


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_summary_matches_brute_force_with_padding(skip):
    p = random_causal(3, 2, 8, seed=skip)
    lengths = [8, 5, 6]
    s = summarize_pattern(p, 0, skip_queries=skip, n_last=2, lengths=lengths)
    rec, row, col = brute_force(p, skip, lengths)
    close_nan(s.received, rec)
    close_nan(s.row_entropy, row)
    close_nan(s.column_entropy, col, atol=1e-4)
    assert s.counts.tolist() == [[max(0, n - max(k, skip)) if k < n else 0 for k in range(8)] for n in lengths]
    assert s.nbytes == sum(x.numel() * x.element_size() for x in
                           (s.received, s.entropy, s.last_rows, s.row_entropy, s.column_entropy, s.counts))


# ------------------------------------------------------------------------- on a model
class _PatternOnKey0(Intervention):
    """Test-only: every head's pattern becomes one-hot on key 0."""

    def hooks(self, model):
        def fn(x, _name):
            y = torch.zeros_like(x)
            y[..., 0] = 1.0
            return y

        return [(f"blocks.{l}.attn.hook_pattern", fn) for l in range(model.info.n_layers)]


def test_report_on_forced_sink_pattern(tiny_llama):
    with tiny_llama.intervene(_PatternOnKey0()):
        r = sink_report(tiny_llama, PROMPTS, skip_queries=2)
    assert torch.allclose(r.mass0, torch.ones(2, 4))
    assert torch.allclose(r.row_entropy, torch.zeros_like(r.row_entropy), atol=1e-6)
    assert torch.allclose(r.col_entropy0, torch.ones_like(r.col_entropy0), atol=1e-5)
    assert r.sink_by_mass.all() and r.sink_by_entropy.all()
    assert len(r.sink_heads("both")) == 8 and r.sink_head_ids("mass")[0] == (0, 0)
    assert (r.max_key == 0).all()
    assert r.top_tokens(1).token[0].endswith("@0")


def plain_hf(model):
    """A never-wrapped HF copy of ``model`` (the bridge's wrappers stop HF from collecting
    ``output_attentions`` on the wrapped model itself)."""
    if model.info.name in ("tiny-llama", "tiny-gpt2"):
        from workbench.loading.tiny import build_tiny

        return build_tiny(model.info.name)[0]
    from workbench.loading.smollm2 import load_smollm2

    return load_smollm2()[0]


def _hf_summaries(model, prompts, skip, hf=None):
    ids, lengths = model.tokenize(prompts)
    with torch.no_grad():
        att = (hf or plain_hf(model))(ids, output_attentions=True).attentions  # L × (B, H, T, T), eager
    assert len(att) == model.info.n_layers
    return [summarize_pattern(a, l, skip, 1, lengths) for l, a in enumerate(att)], lengths


@pytest.mark.parametrize("skip", [0, 4])
def test_bridge_statistics_equal_hf_eager_attentions(tiny, skip):
    r = sink_report(tiny, PROMPTS, skip_queries=skip)
    sums, lengths = _hf_summaries(tiny, PROMPTS, skip)
    assert r.lengths == lengths
    for li, s in enumerate(sums):
        close_nan(r.received[:, li], s.received)
        filled = torch.nan_to_num(s.column_entropy, nan=-1.0).max(-1).values
        assert torch.allclose(r.col_entropy[:, li], filled, atol=1e-5)
        close_nan(r.col_entropy0[:, li], s.column_entropy[..., 0])
        # mean over queries >= max(skip, 1) of the normalized row entropy, per prompt
        for b, n in enumerate(lengths):
            ref = s.row_entropy[b, :, max(skip, 1):n].mean(-1)
            assert torch.allclose(r.row_entropy[b, li], ref, atol=1e-5)


def test_report_api(tiny_llama):
    r = sink_report(tiny_llama, PROMPTS, top_k=3)
    assert isinstance(r, SinkReport)
    assert r.received.shape == (2, 2, 4, max(r.lengths))
    assert r.received[1, :, :, r.lengths[1]:].isnan().all()  # padding
    df = r.to_frame()
    assert len(df) == 8 and {"layer", "head", "mass0", "row_entropy", "col_entropy", "top_sinks",
                             "sink_by_mass", "sink_by_entropy"} <= set(df.columns)
    assert all(len(t) == 3 for t in df.top_sinks)
    d1 = r.to_frame(prompt=1)
    assert d1.max_key.max() < r.lengths[1]
    assert all(tok == r.str_tokens[1][p] for p, tok in zip(d1.max_key, d1.max_key_token))
    fig = r.figure()
    # the heatmap shows the mass on position 0, mean over prompts (NaN-aware), layer × head
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float),
                               torch.nanmean(r.received[..., 0], 0).numpy(), atol=1e-6)
    assert "SinkReport(" in repr(r) and "<pre>" in r._repr_html_()
    assert set(r.sink_heads("mass").layer) <= {0, 1}
    with pytest.raises(InputError, match="by must be"):
        r.sink_heads("nope")


def test_aggregation_by_token_string(tiny_llama):
    r = sink_report(tiny_llama, PROMPTS, skip_queries=0, min_queries=1)
    labels, mass, lift, occ = r.token_mass()
    lab = "·"  # every space token after position 0, in both prompts
    occurrences = [(b, j) for b, toks in enumerate(r.str_tokens) for j, t in enumerate(toks) if t == " " and j > 0]
    i = labels.index(lab)
    assert occ[i] == len(occurrences)
    manual = torch.stack([r.received[b, :, :, j] for b, j in occurrences]).mean(0)
    assert torch.allclose(mass[i], manual, atol=1e-6)
    u = r.uniform_mass()
    manual_lift = torch.stack([r.received[b, :, :, j] / u[b, j] for b, j in occurrences]).mean(0)
    assert torch.allclose(lift[i], manual_lift, atol=1e-5)
    # position 0 keeps its own label per distinct first token
    assert sum(l.endswith("@0") for l in labels) == len({r.str_tokens[b][0] for b in range(2)})
    tt = r.top_tokens(4)
    assert list(tt.columns) == ["token", "occurrences", "mean_mass", "lift", "peak_mass", "peak_head"] and len(tt) == 4


def test_uniform_mass_formula(tiny_llama):
    r = sink_report(tiny_llama, ["abcdefgh"], skip_queries=2, min_queries=1)
    u = r.uniform_mass()[0]
    for k in range(8):
        qs = range(max(k, 2), 8)
        assert u[k].item() == pytest.approx(sum(1 / (q + 1) for q in qs) / len(qs), rel=1e-6)


def test_bad_input(tiny_llama):
    with pytest.raises(InputError, match=r"prompt 1 \('abc'\) has 3 tokens"):
        sink_report(tiny_llama, ["a long enough prompt", "abc"], skip_queries=4)
    with pytest.raises(InputError, match="has 4 tokens"):
        sink_report(tiny_llama, "abcd", skip_queries=4)
    with pytest.raises(InputError, match="empty"):
        sink_report(tiny_llama, [])
    with pytest.raises(InputError, match="out of range"):
        sink_report(tiny_llama, PROMPTS, layers=[2])
    with pytest.raises(InputError, match="skip_queries"):
        sink_report(tiny_llama, PROMPTS, skip_queries=-1)
    r = sink_report(tiny_llama, PROMPTS, layers=[1])
    assert r.layers == [1] and r.received.shape[1] == 1
    with pytest.raises(InputError, match="not analysed"):
        r.top_tokens(layers=[0])
    with pytest.raises(InputError, match="prompt must be"):
        r.to_frame(prompt=5)


# ------------------------------------------------------------------------- SmolLM2


@pytest.mark.smollm2
def test_smollm2_most_heads_sink_on_position0(smollm2):
    r = sink_report(smollm2, SMOL_PROMPTS)
    assert r.fraction_above(1 / 3, min_layer=2) > 0.7, r  # 0.78 on the 9 prompts of docs/sinks.md
    assert r.layer_mass0[:2].max() < 0.15  # layers 0-1 do not sink
    assert r.layer_mass0[11] < 0.2  # layer 11 does not sink either
    assert r.top_tokens(3).token.str.endswith("@0").all()  # the first token, whatever it is
    # bridge statistics equal HF eager attentions on the real model too
    sums, _ = _hf_summaries(smollm2, SMOL_PROMPTS, 4)
    for li in (0, 5, 20):
        close_nan(r.received[:, li], sums[li].received, atol=1e-4)


@pytest.mark.smollm2
def test_smollm2_2k_prompt_within_memory_guard(smollm2):
    text = " ".join(SMOL_PROMPTS) + " "
    ids = smollm2.tokenize(text * 60)[0][0, :2048]
    est = smollm2.estimate_capture(ids, capture=["pattern"], attention="summary", logits=None, last_rows=1)
    full = smollm2.estimate_capture(ids, capture=["pattern"], attention="full", logits=None)
    assert est.total < 64 * 2**20 < 4 * 2**30 < full.total  # full patterns would not fit the guard
    r = sink_report(smollm2, ids)
    assert r.lengths == [2048] and r.received.shape == (1, 30, 9, 2048)
    # a text repeated 2k tokens long brings copying heads, so fewer heads sink than on short
    # prompts, but position 0 stays the top sink key
    assert r.top_tokens(1).token[0].endswith("@0")
    assert r.fraction_above(1 / 3, min_layer=2) > 0.25


def test_summary_estimate_equals_held_bytes(tiny_llama):
    for last_rows in (1, 3):
        run = tiny_llama.run(PROMPTS, capture=["pattern"], attention="summary", last_rows=last_rows, logits=None)
        for l, s in run.summaries.items():
            assert run.estimate.per_item[f"blocks.{l}.attn.hook_pattern"] == s.nbytes
