"""Captures agree with Hugging Face, with each other and with the memory guard's arithmetic."""
import math

import pytest
import torch

import workbench as wb
from workbench.capture import summarize_pattern
from workbench.hook_names import SPECS

PROMPTS = ["Hello world, this is a test.", "short"]


def _hf_hidden(model, prompt):
    ids, _ = model.tokenize(prompt)
    with torch.no_grad():
        out = model.hf(ids, output_hidden_states=True)
    return ids, out


def _check_hidden_states(model, prompt, atol):
    ids, out = _hf_hidden(model, prompt)
    r = model.run(prompt, capture=["resid_pre"])
    n = model.info.n_layers
    assert len(out.hidden_states) == n + 1
    for i in range(n):
        assert torch.allclose(r["resid_pre", i], out.hidden_states[i], atol=atol), f"layer {i}"
        assert torch.allclose(r["resid_pre", i].norm(dim=-1), out.hidden_states[i].norm(dim=-1), atol=atol * 10)


def test_resid_pre_equals_hf_hidden_states(tiny):
    _check_hidden_states(tiny, PROMPTS[0], 1e-5)


@pytest.mark.smollm2
def test_smollm2_resid_pre_equals_hf_hidden_states(smollm2):
    _check_hidden_states(smollm2, "The capital of France is Paris.", 1e-4)


def test_head_out_sums_to_attn_out(tiny):
    """Per-head outputs (GQA query heads mapped to their KV heads) sum to attn_out minus the bias."""
    r = tiny.run(PROMPTS, capture=["head_out", "attn_out", "z"], layers=[0, 1])
    for l in (0, 1):
        ho = r["head_out", l]
        assert ho.shape[-2:] == (tiny.info.n_heads, tiny.info.d_model)
        b_o = tiny.bridge.blocks[l].attn.b_O
        bias = 0 if b_o is None else b_o.detach()
        assert torch.allclose(ho.sum(-2), r["attn_out", l] - bias, atol=1e-5)


def test_positions_equal_slicing(tiny_llama):
    names = ["resid_post", "z", "pattern", "k", "head_out"]
    full = tiny_llama.run(PROMPTS, capture=names, layers=[1])
    pos = [0, 2, -1]
    part = tiny_llama.run(PROMPTS, capture=names, layers=[1], positions=pos)
    idx = torch.tensor([0, 2, full.tokens.shape[1] - 1])
    assert torch.equal(part.positions, idx)
    for name, axis in [("resid_post", 1), ("z", 1), ("pattern", 2), ("k", 1), ("head_out", 1)]:
        assert torch.equal(part[name, 1], full[name, 1].index_select(axis, idx)), name
    assert part["pattern", 1].shape[-1] == full.tokens.shape[1]  # keys are never sliced


def test_summary_one_hot_on_key0():
    b, h, t = 2, 3, 5
    p = torch.zeros(b, h, t, t)
    p[..., 0] = 1.0
    s = summarize_pattern(p, layer=0, skip_queries=0, n_last=2)
    assert torch.allclose(s.received[..., 0], torch.ones(b, h))
    assert torch.all(s.received[..., 1:] == 0)
    assert torch.allclose(s.entropy, torch.zeros(b, h, t), atol=1e-6)
    assert s.last_rows.shape == (b, h, 2, t)


def test_summary_uniform_rows_have_max_entropy():
    t = 6
    tri = torch.tril(torch.ones(t, t))
    p = (tri / tri.sum(-1, keepdim=True))[None, None]  # (1, 1, T, T): uniform over visible keys
    s = summarize_pattern(p, layer=0, skip_queries=0, n_last=1)
    n_visible = torch.arange(1, t + 1, dtype=torch.float32)
    assert torch.allclose(s.entropy[0, 0], torch.log(n_visible), atol=1e-5)
    assert torch.allclose(s.entropy[0, 0, 1:] / torch.log(n_visible[1:]), torch.ones(t - 1), atol=1e-5)
    # key k receives the mean of 1/(q+1) over queries q >= k
    k = 3
    expected = sum(1 / (q + 1) for q in range(k, t)) / (t - k)
    assert s.received[0, 0, k].item() == pytest.approx(expected, rel=1e-5)


def test_summary_padding_and_skip_queries():
    p = torch.zeros(2, 1, 4, 4)
    p[..., 0] = 1.0
    s = summarize_pattern(p, 0, skip_queries=0, n_last=1, lengths=[4, 2])
    assert math.isnan(s.received[1, 0, 3].item())  # a padded key is seen by no real query
    s2 = summarize_pattern(p, 0, skip_queries=3, n_last=1)
    assert s2.received[0, 0, 0].item() == 1.0


def test_estimate_equals_real_bytes(tiny):
    names = [n for n, spec in SPECS.items()
             if (spec.full_name(0) if spec.per_layer else spec.template) in tiny.hook_names()]
    assert "resid_post" in names and "head_out" in names
    r = tiny.run(PROMPTS, capture=names)
    real = sum(v.numel() * v.element_size() for v in r.captures.values()) + r.logits.numel() * r.logits.element_size()
    assert r.estimate.total == real
    assert set(r.estimate.per_item) == set(r.captures)
    for k, v in r.captures.items():
        assert r.estimate.per_item[k] == v.numel() * v.element_size(), k
    est = tiny.estimate_capture(PROMPTS, capture=names)
    assert est.total == real


def test_budget_refusal(tiny_llama):
    with pytest.raises(wb.CaptureBudgetError) as e:
        tiny_llama.run(PROMPTS, capture=["pattern", "resid_post"], max_bytes=1000)
    msg = str(e.value)
    assert "layers=" in msg and "attention='summary'" in msg and "MiB" in msg
    assert isinstance(e.value, MemoryError)


def test_full_and_short_names_agree(tiny):
    short = tiny.run(PROMPTS, capture=["resid_post", "z", "pattern"], layers=[1])
    full = tiny.run(PROMPTS, capture=["blocks.1.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"])
    assert set(short.captures) == set(full.captures)
    for k in short.captures:
        assert torch.equal(short.captures[k], full.captures[k]), k
    assert torch.equal(full["resid_post", 1], full["blocks.1.hook_resid_post"])


def test_logits_parity_with_hf(tiny):
    ids, lengths = tiny.tokenize(PROMPTS[0])
    with torch.no_grad():
        ref = tiny.hf(ids).logits
    r = tiny.run(PROMPTS[0])
    assert (r.logits - ref).abs().max().item() <= 1e-4
    assert torch.allclose(r.last_logits[0], ref[0, lengths[0] - 1], atol=1e-4)
    last = tiny.run(PROMPTS, logits="last")
    batched = tiny.run(PROMPTS)
    assert torch.allclose(last.logits, batched.last_logits, atol=1e-6)
    assert tiny.parity.ok()


@pytest.mark.smollm2
def test_smollm2_parity(smollm2):
    assert smollm2.parity.max_abs_logprob_diff <= 1e-4
    assert smollm2.parity.top1_agreement == 1.0


@pytest.mark.smollm2
def test_smollm2_no_bos(smollm2):
    ids, lengths = smollm2.tokenize("Hello")
    hello = smollm2.tokenizer.convert_tokens_to_ids("Hello")
    assert lengths == [1] and ids[0, 0].item() == hello
    assert ids[0, 0].item() != 1 and ids[0, 0].item() != smollm2.tokenizer.bos_token_id


@pytest.mark.smollm2
def test_smollm2_position0_is_attention_sink(smollm2):
    prompt = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door."
    r = smollm2.run(prompt, capture=["pattern"], layers=[5], attention="summary", logits=None)
    assert 5 in r.summaries and not r.captures
    received0 = r.summaries[5].received[0, :, 0]  # (H,) mean mass that key 0 receives
    assert (received0 > 1 / 3).float().mean().item() > 0.5, received0
