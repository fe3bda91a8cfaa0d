"""Head and MLP ablation, their composition, and compare()."""
import math

import pytest
import torch

import workbench as wb
from interventions import AblationComparison, HeadAblation, MLPAblation, compare

PROMPTS = ["Hello world, this is a test.", "abc"]


def test_zero_head_equals_manual_o_proj(tiny):
    layer, heads = 1, [0, 2]
    clean = tiny.run(PROMPTS, capture=["z"], layers=[layer])
    ablated = tiny.run(PROMPTS, capture=["z", "attn_out"], layers=[layer], interventions=[HeadAblation(layer, heads)])
    z = clean["z", layer].clone()  # (B, T, H, e): ablation of layer 1 does not change layer-1 z
    assert torch.allclose(z[:, :, [1, 3]], ablated["z", layer][:, :, [1, 3]], atol=1e-6)
    assert ablated["z", layer][:, :, heads].abs().max() == 0
    z[:, :, heads] = 0
    manual = torch.einsum("bthe,hed->btd", z, tiny.W_O(layer).detach())
    b_o = tiny.bridge.blocks[layer].attn.b_O
    if b_o is not None:
        manual = manual + b_o.detach()
    assert torch.allclose(manual, ablated["attn_out", layer], atol=1e-5)
    assert (ablated.logits - tiny.run(PROMPTS).logits).abs().max() > 1e-4  # the edit reached the output


def test_zero_all_heads_leaves_only_bias(tiny):
    n = tiny.info.n_heads
    r = tiny.run(PROMPTS, capture=["attn_out"], layers=[0], interventions=[HeadAblation(0, list(range(n)))])
    b_o = tiny.bridge.blocks[0].attn.b_O
    expected = torch.zeros(tiny.info.d_model) if b_o is None else b_o.detach()
    assert torch.allclose(r["attn_out", 0], expected.expand_as(r["attn_out", 0]), atol=1e-6)


def test_mean_ablation_over_own_positions(tiny):
    """Mean over the prompt's own positions: the head's z becomes that mean at every position."""
    prompt = "The quick brown fox"
    clean = tiny.run(prompt, capture=["z"], layers=[1])
    mean = clean["z", 1][0].mean(0)  # (H, e)
    iv = HeadAblation(1, [1, 3], mode="mean", mean_over=[prompt])
    r = tiny.run(prompt, capture=["z"], layers=[1], interventions=[iv])
    z = r["z", 1][0]  # (T, H, e)
    for h in (1, 3):
        assert torch.allclose(z[:, h], mean[h].expand_as(z[:, h]), atol=1e-5)
    assert torch.allclose(z[:, [0, 2]], clean["z", 1][0][:, [0, 2]], atol=1e-6)
    assert len(iv._means) == 1  # cached per model fingerprint; a second run reuses it
    tiny.run(prompt, interventions=[iv])
    assert len(iv._means) == 1


def test_mean_ablation_ignores_padding(tiny_llama):
    """The reference mean uses real positions only, not the right padding of shorter prompts."""
    refs = ["a much longer reference prompt", "hi"]
    iv = MLPAblation(0, mode="mean", mean_over=refs)
    clean = [tiny_llama.run(p, capture=["mlp_out"], layers=[0])["mlp_out", 0][0] for p in refs]
    expected = torch.cat(clean).mean(0)  # (d_model,) over all real positions
    r = tiny_llama.run("xyz", capture=["mlp_out"], layers=[0], interventions=[iv])
    assert torch.allclose(r["mlp_out", 0][0], expected.expand(3, -1), atol=1e-5)


def test_mean_mode_needs_reference_prompts():
    with pytest.raises(wb.InputError, match="mean_over"):
        HeadAblation(0, [0], mode="mean")
    with pytest.raises(wb.InputError, match="mean_over"):
        MLPAblation(0, mode="mean", mean_over=[])
    with pytest.raises(wb.InputError, match="mode"):
        MLPAblation(0, mode="resample")


def test_mlp_zero_ablation(tiny):
    clean = tiny.run(PROMPTS)
    r = tiny.run(PROMPTS, capture=["mlp_out"], layers=[1], interventions=[MLPAblation(1)])
    assert r["mlp_out", 1].abs().max() == 0
    assert (r.logits - clean.logits).abs().max() > 1e-4


def test_composition_applies_both(tiny_llama):
    a, b = HeadAblation(0, [1]), MLPAblation(1)
    both = a + b
    assert isinstance(both, wb.Compose) and "HeadAblation" in repr(both) and "MLPAblation" in repr(both)
    r = tiny_llama.run(PROMPTS, capture=["z", "mlp_out"], interventions=[both])
    assert r["z", 0][:, :, 1].abs().max() == 0
    assert r["mlp_out", 1].abs().max() == 0
    only_a = tiny_llama.run(PROMPTS, interventions=[a])
    assert (r.logits - only_a.logits).abs().max() > 1e-4
    with tiny_llama.intervene(a, b):
        scoped = tiny_llama.run(PROMPTS)
    assert torch.allclose(scoped.logits, r.logits, atol=1e-6)


def test_compare_rejects_empty_ablation(tiny_llama):
    with pytest.raises(wb.InputError, match="No heads"):
        compare(tiny_llama, PROMPTS, HeadAblation(0, []))
    with pytest.raises(wb.InputError, match="nothing to ablate"):
        compare(tiny_llama, PROMPTS, wb.Compose([]))
    with pytest.raises(wb.InputError, match="Intervention"):
        compare(tiny_llama, PROMPTS, None)


def test_compare_real_ablation(tiny):
    iv = HeadAblation(0, [0, 1, 2, 3])
    c = compare(tiny, PROMPTS, iv, top_k=3)
    assert isinstance(c, AblationComparison)
    assert c.before_ids.shape == c.after_probs.shape == (2, 3)
    assert torch.isfinite(c.kl).all() and (c.kl > 0).all()
    assert torch.isfinite(c.top1_logprob_change).all()
    # clean top-1 matches an unablated run
    assert torch.equal(c.before_ids[:, 0], tiny.run(PROMPTS, logits="last").logits.argmax(-1))
    assert (c.before_probs[:, :-1] >= c.before_probs[:, 1:]).all()
    df = c.to_frame()
    assert list(df["prompt"]) == PROMPTS and {"kl", "top1_logprob_change"} <= set(df.columns)
    fig = c.figure()
    assert len(fig.data) == 2 and "HeadAblation" in fig.layout.title.text
    assert list(fig.data[0].y) == pytest.approx(c.before_probs[0].tolist())
    assert "HeadAblation" in repr(c) and "<table" in c._repr_html_()


def test_compare_identity_edit_has_zero_kl(tiny_llama):
    """An intervention whose hook changes nothing gives KL 0 and no log-prob change."""

    class Noop(wb.Intervention):
        def hooks(self, model):
            return [("blocks.0.hook_mlp_out", lambda x, _n: x)]

    c = compare(tiny_llama, PROMPTS, Noop())
    assert c.kl.abs().max() < 1e-9 and c.top1_logprob_change.abs().max() < 1e-6


def test_out_of_range(tiny_llama):
    with pytest.raises(wb.InputError, match="Head 17"):
        tiny_llama.run("hi", interventions=[HeadAblation(0, [17])])
    with pytest.raises(wb.InputError, match="Layer 5"):
        tiny_llama.run("hi", interventions=[MLPAblation(5)])


@pytest.mark.smollm2
def test_smollm2_layer0_ablation_hurts_paris(smollm2):
    prompt = "The capital of France is"
    paris = smollm2.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(paris) == 1
    whole = compare(smollm2, prompt, HeadAblation(0, list(range(smollm2.info.n_heads))))
    assert whole.before_ids[0, 0] == paris[0]  # the clean model answers " Paris"
    assert whole.after_ids[0, 0] != paris[0] or whole.top1_logprob_change[0] < -0.1
    one = compare(smollm2, prompt, HeadAblation(15, [4]))
    assert 0 < one.kl[0] < whole.kl[0]
    assert math.isfinite(float(whole.kl[0]))
