"""Attention-pattern edits (ZeroAttention, AttentionToSink) and Q/K massive-dim disruption."""
import pytest
import torch

import workbench as wb
from interventions import AttentionToSink, DisruptQKDims, HeadAblation, ZeroAttention
from interventions.qk_dims import concentration, set_dims_to_mean
from workbench.intervention import Intervention

PROMPTS = ["Hello world, this is a test.", "abcdef"]


class ZeroValueAt(Intervention):
    """Test helper: zero the value vector of token ``pos`` for KV head ``g`` (hook_v, (B, T, G, e))."""

    def __init__(self, layer, g, pos=0):
        self.layer, self.g, self.pos = layer, g, pos

    def hooks(self, model):
        def fn(v, _name):
            v = v.clone()
            v[:, self.pos, self.g] = 0
            return v

        return [(f"blocks.{self.layer}.attn.hook_v", fn)]


# ----------------------------------------------------------------------------------- pattern edits
def test_zero_attention_equals_head_ablation(tiny):
    layer, heads = 1, [0, 2]
    a = tiny.run(PROMPTS, capture=["z"], layers=[layer], interventions=[ZeroAttention(layer, heads)])
    b = tiny.run(PROMPTS, capture=["z"], layers=[layer], interventions=[HeadAblation(layer, heads)])
    assert a["z", layer][:, :, heads].abs().max() == 0
    assert torch.equal(a["z", layer], b["z", layer])
    assert torch.allclose(a.logits, b.logits, atol=1e-6, rtol=0)
    assert (a.logits - tiny.run(PROMPTS).logits).abs().max() > 1e-4  # the edit reached the output


@pytest.mark.parametrize("sink", [0, 2])
def test_attention_to_sink_reads_the_sink_value(tiny, sink):
    """Every query that sees the sink gets z = v[sink] of its KV head; earlier queries are untouched."""
    layer, heads = 0, [1, 3]
    clean = tiny.run(PROMPTS, capture=["z"], layers=[layer])
    r = tiny.run(PROMPTS, capture=["z", "v", "pattern"], layers=[layer], interventions=[AttentionToSink(layer, heads, sink)])
    z, v = r["z", layer], r["v", layer]  # (B, T, H, e), (B, T, G, e)
    g = tiny.info.group_size
    for h in heads:
        expected = v[:, sink, h // g][:, None].expand(-1, z.shape[1] - sink, -1)  # (B, T - sink, e)
        assert torch.allclose(z[:, sink:, h], expected, atol=1e-6)
        assert torch.equal(z[:, :sink, h], clean["z", layer][:, :sink, h])
        row = r["pattern", layer][:, h, sink:]  # (B, T - sink, T)
        assert torch.equal(row[..., sink], torch.ones_like(row[..., sink]))
        assert row.sum(-1).sub(1).abs().max() == 0
    others = [h for h in range(tiny.info.n_heads) if h not in heads]
    assert torch.allclose(z[:, :, others], clean["z", layer][:, :, others], atol=1e-6)


def test_attention_to_sink_equals_zero_ablation_when_sink_value_is_zero(tiny_llama):
    """'Move to BOS' with v_BOS = 0 is exactly zero-ablation (heads 0 and 1 share KV head 0)."""
    layer, heads = 1, [0, 1]
    zero_v = ZeroValueAt(layer, g=0)
    a = tiny_llama.run(PROMPTS, interventions=[zero_v, AttentionToSink(layer, heads)])
    b = tiny_llama.run(PROMPTS, interventions=[zero_v, HeadAblation(layer, heads)])
    assert torch.allclose(a.logits, b.logits, atol=1e-6, rtol=0)
    c = tiny_llama.run(PROMPTS, interventions=[AttentionToSink(layer, heads)])  # with the real v_BOS it differs
    assert (c.logits - b.logits).abs().max() > 1e-4


def test_attention_to_sink_during_cached_decoding(tiny_llama):
    """The edit uses absolute query positions, so cached and uncached generation agree."""
    iv = AttentionToSink(1, [0, 3], sink=1)
    a = tiny_llama.generate("The cat sat", max_new_tokens=5, interventions=[iv], stop_at_eos=False)
    b = tiny_llama.generate("The cat sat", max_new_tokens=5, interventions=[iv], stop_at_eos=False, use_cache=False)
    assert torch.equal(a.new_tokens, b.new_tokens)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)


def test_pattern_edit_bad_input(tiny_llama):
    with pytest.raises(wb.InputError, match="Layer"):
        tiny_llama.run("abc", interventions=[ZeroAttention(7, 0)])
    with pytest.raises(wb.InputError, match="Head"):
        tiny_llama.run("abc", interventions=[AttentionToSink(0, [4])])
    with pytest.raises(wb.InputError, match="sink"):
        AttentionToSink(0, 0, sink=-1)
    with pytest.raises(wb.InputError, match="past the end"):
        tiny_llama.run("abc", interventions=[AttentionToSink(0, 0, sink=10)])
    assert "AttentionToSink(L0 H[1] -> key 0)" == repr(AttentionToSink(0, 1))


# ----------------------------------------------------------------------------------- Q/K disruption
def _clean_rot(model, kind, layer, prompt="The quick brown fox jumps"):
    name = "q_rot" if kind == "q" else "k_rot"
    return model.run(prompt, capture=[name], layers=[layer])[name, layer]  # (1, T, heads, e)


@pytest.mark.parametrize("kind", ["q", "k"])
@pytest.mark.parametrize("top_n,control", [(1, False), (2, False), (1, True)])
def test_chosen_dims_match_independent_norms(tiny_llama, kind, top_n, control):
    x = _clean_rot(tiny_llama, kind, 1)
    norms = torch.sqrt((x.double() ** 2).sum(1))  # (1, heads, e), computed independently of the module
    order = norms.argsort(-1, descending=not control)[..., :top_n]
    iv = DisruptQKDims(kind, top_n=top_n, control=control, layers=[1])
    tiny_llama.run("The quick brown fox jumps", interventions=[iv])
    chosen = iv.chosen[(kind, 1)]
    heads = tiny_llama.info.n_heads if kind == "q" else tiny_llama.info.n_kv_heads
    assert chosen.shape == (1, heads, top_n)
    assert torch.equal(chosen.sort(-1).values, order.sort(-1).values)
    if top_n == 1 and not control:
        assert torch.equal(chosen[..., 0], norms.argmax(-1))


@pytest.mark.parametrize("kind", ["q", "k"])
def test_disrupted_dim_equals_its_token_mean(tiny_llama, kind):
    x = _clean_rot(tiny_llama, kind, 1)  # (1, T, heads, e)
    iv = DisruptQKDims(kind, layers=[1])
    name = "q_rot" if kind == "q" else "k_rot"
    y = tiny_llama.run("The quick brown fox jumps", capture=[name], layers=[1], interventions=[iv])[name, 1]
    top = concentration(x).argmax(-1)[0]  # (heads,)
    for h, i in enumerate(top.tolist()):
        assert torch.allclose(y[0, :, h, i], x[0, :, h, i].mean().expand(x.shape[1]), atol=1e-6)
        rest = [j for j in range(x.shape[-1]) if j != i]
        assert torch.equal(y[0, :, h, rest], x[0, :, h, rest])


def test_disrupting_a_constant_dim_is_a_no_op(tiny_llama):
    x = torch.randn(2, 7, 3, 8)
    x[:, :, 1, 5] = 0.1  # constant over tokens
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[1, 5] = True
    assert torch.equal(set_dims_to_mean(x, mask), x)
    # In the model: a second disruption of the same dims (now constant) changes nothing.
    iv = DisruptQKDims("both", dims={"q": {0: {0: [3], 2: [1, 7]}, 1: {1: [15]}}, "k": {1: {0: [2]}}})
    once = tiny_llama.run(PROMPTS[0], interventions=[iv])
    twice = tiny_llama.run(PROMPTS[0], interventions=[iv, iv])
    assert torch.equal(once.logits, twice.logits)
    assert (once.logits - tiny_llama.run(PROMPTS[0]).logits).abs().max() > 1e-5


def test_disruption_reaches_the_output_and_control_differs(tiny_llama):
    clean = tiny_llama.run(PROMPTS[0]).logits
    top = tiny_llama.run(PROMPTS[0], interventions=[DisruptQKDims("both")]).logits
    ctrl = tiny_llama.run(PROMPTS[0], interventions=[DisruptQKDims("both", control=True)]).logits
    assert (top - clean).abs().max() > 1e-4
    assert not torch.equal(top, ctrl)


def test_skip_first_keeps_position_zero(tiny_llama):
    x = _clean_rot(tiny_llama, "q", 1)
    iv = DisruptQKDims("q", layers=[1], skip_first=True)
    y = tiny_llama.run("The quick brown fox jumps", capture=["q_rot"], layers=[1], interventions=[iv])["q_rot", 1]
    assert torch.equal(y[:, 0], x[:, 0])
    top = concentration(x[:, 1:]).argmax(-1)  # statistics without position 0
    assert torch.equal(iv.chosen[("q", 1)][..., 0], top)
    for h, i in enumerate(top[0].tolist()):
        assert torch.allclose(y[0, 1:, h, i], x[0, 1:, h, i].mean().expand(x.shape[1] - 1), atol=1e-6)


def test_disruption_is_prefill_only(tiny_llama):
    iv = DisruptQKDims("q", layers=[0])
    [(name, fn)] = iv.hooks(tiny_llama)
    assert name == "blocks.0.attn.hook_rot_q"
    assert fn(torch.randn(1, 1, 4, 16), name) is None  # one new token: a decoding step is left alone
    cache = tiny_llama.prefill("The quick brown fox", interventions=[DisruptQKDims("k", layers=[1])])
    ref = tiny_llama.run("The quick brown fox", capture=["k_rot"], layers=[1],
                         interventions=[DisruptQKDims("k", layers=[1])])["k_rot", 1]
    assert torch.allclose(cache.keys(1).transpose(1, 2), ref, atol=1e-6)  # disrupted keys are what gets cached


def test_disruption_bad_input(tiny_llama, tiny_gpt2):
    with pytest.raises(wb.InputError, match="rotary"):
        tiny_gpt2.run("abc", interventions=[DisruptQKDims("q")])
    with pytest.raises(wb.InputError, match="target"):
        DisruptQKDims("v")
    with pytest.raises(wb.InputError, match="top_n"):
        DisruptQKDims("q", top_n=0)
    with pytest.raises(wb.InputError, match="d_head"):
        tiny_llama.run("abc", interventions=[DisruptQKDims("q", top_n=17)])
    with pytest.raises(wb.InputError, match="Layer"):
        tiny_llama.run("abc", interventions=[DisruptQKDims("q", layers=[2])])
    with pytest.raises(wb.InputError, match="head 4"):
        tiny_llama.run("abc", interventions=[DisruptQKDims("q", dims={0: {4: [0]}})])
    with pytest.raises(wb.InputError, match="head 2"):  # only 2 KV heads
        tiny_llama.run("abc", interventions=[DisruptQKDims("k", dims={0: {2: [0]}})])
    with pytest.raises(wb.InputError, match="dim 16"):
        tiny_llama.run("abc", interventions=[DisruptQKDims("q", dims={0: {0: [16]}})])
    with pytest.raises(wb.InputError, match="'both'"):
        tiny_llama.run("abc", interventions=[DisruptQKDims("both", dims={0: {0: [1]}})])
    with pytest.raises(wb.InputError, match="not both"):
        DisruptQKDims("q", dims={0: {0: [1]}}, layers=[0])
