"""Exact direct logit attribution (probes.factual.dla): sums, per-source split, GQA, biases, errors."""
import numpy as np
import pytest
import torch

from probes.factual.dla import DLAResult, direct_logit_attribution, direct_logit_attribution_many, head_outputs
from workbench.errors import InputError

PROMPT = "the cat sat on the mat"


@pytest.fixture
def gpt2_with_biases(tiny_gpt2):
    """tiny-gpt2 with random non-zero biases everywhere (norms, attention, MLP, unembedding), restored after."""
    saved = {n: p.detach().clone() for n, p in tiny_gpt2.hf.named_parameters() if n.endswith("bias")}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in tiny_gpt2.hf.named_parameters():
            if n in saved:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    yield tiny_gpt2
    with torch.no_grad():
        for n, p in tiny_gpt2.hf.named_parameters():
            if n in saved:
                p.copy_(saved[n])


def check_exact(r: DLAResult, tol: float = 2e-5):
    scale = max(1.0, float(np.abs(r.logits).max()))
    assert np.abs(r.total - r.logits).max() <= tol * scale
    # per-source sums equal the head DLA (two independent paths: pattern·v versus z W_O)
    for i, m in enumerate(("logit", "diff")):
        np.testing.assert_allclose(r.sources[i].sum(-1), r.metric(r.heads, m), atol=1e-6 * scale)
        np.testing.assert_allclose(r.source_groups(m).sum(-1), r.metric(r.heads, m), atol=1e-6 * scale)
        np.testing.assert_allclose(r.metric(np.moveaxis(r.groups, 2, -2), m), r.source_groups(m), atol=1e-6 * scale)
    np.testing.assert_allclose(r.groups.sum(2), r.heads, atol=1e-6 * scale)  # every target, per group


def test_components_sum_to_logit(tiny):
    r = direct_logit_attribution(tiny, PROMPT, answer=70, alternatives=[71, 72], subject_positions=[4, 5, 6],
                                 relation_positions=[8, 9])
    check_exact(r)
    assert r.targets == [70, 71, 72] and r.heads.shape == (tiny.info.n_layers, tiny.info.n_heads, 3)
    assert r.sources.shape == (2, tiny.info.n_layers, tiny.info.n_heads, len(r.str_tokens))
    # the diff metric is the answer minus the mean of the alternatives, exactly
    assert abs(r.metric(r.total, "diff") - (r.logits[0] - r.logits[1:].mean())) < 1e-4
    np.testing.assert_allclose(r.attn_rows.sum(-1), 1.0, atol=1e-5)


def test_layernorm_with_biases_is_exact(gpt2_with_biases):
    r = direct_logit_attribution(gpt2_with_biases, PROMPT, answer=70, alternatives=[71])
    check_exact(r)
    # the bias components are really there and really needed
    assert np.abs(r.attn_bias).sum() > 1e-3 and np.abs(r.norm_bias).max() > 1e-3 and np.abs(r.unembed_bias).max() > 1e-3
    without = r.total - r.norm_bias - r.unembed_bias - r.attn_bias.sum(0)
    assert np.abs(without - r.logits).max() > 1e-3


def test_dla_is_the_logit_change_of_removing_a_component_with_frozen_norm(tiny_llama):
    """Independent check: rebuild x_final from captured parts, remove one MLP, recompute the logit by hand."""
    m = tiny_llama
    r = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71])
    run = m.run(PROMPT, capture=["resid_post", "mlp_out", "final_norm_scale"], layers=[0, 1])
    x = run["resid_post", 1][0, -1].double()
    scale = run["final_norm_scale"][0, -1, 0].double()
    g = m.bridge.ln_final._original_component.weight.detach().double()
    wu = m.bridge.W_U.detach().double()[:, 70]
    for l in range(m.info.n_layers):
        x_minus = x - run["mlp_out", l][0, -1].double()
        change = float((g * x / scale) @ wu - (g * x_minus / scale) @ wu)
        assert abs(change - r.mlps[l, 0]) < 1e-5


def test_head_outputs_reassemble_attention_output_gqa(tiny):
    m = tiny
    run = m.run(PROMPT, capture=["pattern", "v", "attn_out", "head_out"])
    g = m.info.group_size
    for l in range(m.info.n_layers):
        w_o = m.W_O(l).detach().double()
        bo = m.bridge.blocks[l].attn.b_O
        bias = 0.0 if bo is None else bo.detach().double()
        v = run["v", l][0].double()
        for q in range(len(run.str_tokens[0])):
            heads = head_outputs(run["pattern", l][0, :, q].double(), v, w_o)
            np.testing.assert_allclose((heads.sum(0) + bias).numpy(), run["attn_out", l][0, q].double().numpy(),
                                       atol=1e-5)
            np.testing.assert_allclose(heads.numpy(), run["head_out", l][0, q].double().numpy(), atol=1e-5)
        if g > 1:  # the wrong KV mapping (h % n_kv instead of h // group_size) does not reassemble
            h = m.info.n_heads
            wrong = v[:, [hh % m.info.n_kv_heads for hh in range(h)]]
            row = run["pattern", l][0, :, -1].double()
            bad = torch.einsum("hs,she,hed->hd", row, wrong, w_o)
            assert (bad - head_outputs(row, v, w_o)).abs().max() > 1e-4


def test_batched_equals_single_with_padding(tiny_llama):
    prompts = [PROMPT, "hello", "a much longer prompt than the others here"]
    many = direct_logit_attribution_many(tiny_llama, prompts, batch_size=3, answer=70, alternatives=[71, 72])
    for p, r in zip(prompts, many):
        one = direct_logit_attribution(tiny_llama, p, answer=70, alternatives=[71, 72])
        np.testing.assert_allclose(r.heads, one.heads, atol=1e-5)
        np.testing.assert_allclose(r.mlps, one.mlps, atol=1e-5)
        np.testing.assert_allclose(r.logits, one.logits, atol=1e-5)
        assert r.sources.shape[-1] == len(one.str_tokens)
        check_exact(r)


def test_per_prompt_answers_equal_single_calls(tiny_llama):
    prompts = [PROMPT, "hello", "a b c d"]
    many = direct_logit_attribution_many(tiny_llama, prompts, answer=[70, "b", 72], alternatives=[73])
    assert [r.targets[0] for r in many] == [70, tiny_llama.tokenizer("b")["input_ids"][0], 72]
    for p, a, r in zip(prompts, [70, "b", 72], many):
        one = direct_logit_attribution(tiny_llama, p, answer=a, alternatives=[73])
        assert r.targets == one.targets
        np.testing.assert_allclose(r.heads, one.heads, atol=1e-5)
        check_exact(r)
    as_tensor = direct_logit_attribution_many(tiny_llama, prompts, answer=torch.tensor([70, 71, 72]),
                                              alternatives=[73])
    assert [r.targets[0] for r in as_tensor] == [70, 71, 72]
    same = direct_logit_attribution_many(tiny_llama, prompts, answer=70, alternatives=[73])  # one for all
    assert [r.targets[0] for r in same] == [70, 70, 70]
    with pytest.raises(InputError, match="2 entries for 3 prompt"):
        direct_logit_attribution_many(tiny_llama, prompts, answer=[70, 71])
    with pytest.raises(InputError, match="one answer per prompt"):
        direct_logit_attribution(tiny_llama, PROMPT, answer=[70, 71])
    with pytest.raises(InputError, match="answer must be"):
        direct_logit_attribution_many(tiny_llama, prompts, answer={70})


def test_last_token_is_its_own_group_whatever_the_relation_span(tiny_llama):
    """A relation span that reaches the end does not make the last token "relation": it has its own group,
    so the relation group is the same as with a span stopping before it."""
    import dataclasses

    from probes.factual.data import make_fact, token_positions

    prompt = "User: Where?\nAssistant: Rome is the capital of"
    wide = make_fact("capital_of", "Rome", prompt, "Italy", ("Italy", "France"), "capital of")
    narrow = dataclasses.replace(wide, relation_span=(wide.relation_span[0], len(prompt) - 1))  # stops before END
    last = len(prompt) - 1  # byte tokenizer: one token per character
    s_w, r_w = token_positions(tiny_llama, wide)
    assert last not in r_w and r_w == token_positions(tiny_llama, narrow)[1]
    rw, rn = direct_logit_attribution_many(tiny_llama, [wide, narrow])
    check_exact(rw)
    assert rw.relation_positions == rn.relation_positions == r_w and rw.last_position == last
    np.testing.assert_allclose(rw.source_groups("diff"), rn.source_groups("diff"), atol=1e-9)
    for i, m in enumerate(("logit", "diff")):
        g = rw.source_groups(m)
        np.testing.assert_allclose(g[..., 2], rw.sources[i][..., last], atol=1e-12)  # "last" = END's own DLA
        np.testing.assert_allclose(g[..., 1], rw.sources[i][..., r_w].sum(-1), atol=1e-12)
    # positions given by hand: a listed last position is moved to its own group too
    r = direct_logit_attribution(tiny_llama, PROMPT, answer=70, subject_positions=[1, 2],
                                 relation_positions=[4, len(PROMPT) - 1])
    assert r.relation_positions == [4] and r.subject_positions == [1, 2]
    check_exact(r)


def test_default_alternative_is_top_wrong_token(tiny_llama):
    r = direct_logit_attribution(tiny_llama, PROMPT, answer=70)
    logits = tiny_llama.run(PROMPT, logits="last").last_logits[0]
    order = [int(i) for i in torch.argsort(logits, descending=True)[:2]]
    assert r.targets[1] == (order[0] if order[0] != 70 else order[1])


def test_figures_and_tables(tiny_llama):
    r = direct_logit_attribution(tiny_llama, PROMPT, answer=70, alternatives=[71], subject_positions=[4, 5, 6])
    df = r.to_frame()
    heads = df[df.kind == "head"]
    assert len(heads) == tiny_llama.info.n_layers * tiny_llama.info.n_heads
    assert abs(df["logit"].sum() - r.logits[0]) < 1e-4
    parts = heads[["logit_subject", "logit_relation", "logit_last", "logit_other"]]
    np.testing.assert_allclose(parts.sum(1), heads["logit"], atol=1e-6)
    np.testing.assert_allclose(heads["logit_last"], r.sources[0][..., -1].ravel(), atol=1e-9)
    fig = r.figure()
    assert sum(sum(t.y) for t in fig.data) == pytest.approx(r.logits[0], abs=1e-4)  # stacked bars sum to the logit
    assert len(r.source_figure("diff").data) == 4
    assert len(r.token_figure(4).data[0].y) == 4
    assert "DLAResult" in r._repr_html_() and "L0H0" in r._repr_html_()
    assert len(r.top_heads(3)) == 3


def test_bad_input(tiny_llama):
    m = tiny_llama
    with pytest.raises(InputError, match="not one"):
        direct_logit_attribution(m, PROMPT, answer=" Paris")  # 6 byte tokens
    with pytest.raises(InputError, match="answer="):
        direct_logit_attribution(m, PROMPT)
    with pytest.raises(InputError, match="outside the vocabulary"):
        direct_logit_attribution(m, PROMPT, answer=10**6)
    with pytest.raises(InputError, match="at least one token other"):
        direct_logit_attribution(m, PROMPT, answer=70, alternatives=[70])
    with pytest.raises(InputError, match="out of range"):
        direct_logit_attribution(m, PROMPT, answer=70, subject_positions=[99])
    with pytest.raises(InputError, match="No prompts"):
        direct_logit_attribution_many(m, [], answer=70)
    with pytest.raises(InputError, match="metric"):
        direct_logit_attribution(m, PROMPT, answer=70).source_groups("prob")


@pytest.mark.smollm2
def test_smollm2_fact_exact_and_subject_heads(smollm2):
    from probes.factual.data import load_facts, token_positions

    fact = load_facts().filter(ids=["capital/France"])[0]
    r = direct_logit_attribution(smollm2, fact)
    check_exact(r, tol=2e-5)
    assert r.target_strs[0] == " Paris" and len(r.targets) == len(fact.candidates)
    subj, rel = token_positions(smollm2, fact)
    assert r.subject_positions == subj and r.relation_positions == rel
    assert "".join(r.str_tokens[p] for p in subj).split() == ["France", "France"]
    gt = r.group_totals()
    assert gt["mlp"] > gt["attention"] > 0  # MLPs dominate (docs/factual.md)
    # GQA reassembly on the real model (3 KV heads, group size 3) at the last position
    run = smollm2.run(fact.prompt, capture=["pattern", "v", "attn_out"], layers=[23, 29])
    for l in (23, 29):
        heads = head_outputs(run["pattern", l][0, :, -1].double(), run["v", l][0].double(), smollm2.W_O(l).detach().double())
        np.testing.assert_allclose(heads.sum(0).numpy(), run["attn_out", l][0, -1].double().numpy(), atol=1e-4)


def test_w_o_cache_follows_in_place_weight_edits(tiny_llama):
    m = tiny_llama
    before = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71])
    w = m.bridge.blocks[1].attn.W_O  # a view of o_proj's weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(2.0)
        after = direct_logit_attribution(m, PROMPT, answer=70, alternatives=[71])
        check_exact(after)  # a stale cached W_O would break the sum
        assert np.abs(after.heads[1] - before.heads[1]).max() > 1e-4
    finally:
        with torch.no_grad():
            w.copy_(saved)


def test_explorer_headless(tiny_llama):
    from probes.factual.explorer import fact_explorer

    prompts = [PROMPT, "a b c d e f g"]
    box = fact_explorer(tiny_llama, prompts, answers=[70, 71], alternatives=[72, 73], n_top=3)
    assert box.computed() == [0] and box.current()[0] == 0
    r0 = box.result(0)
    np.testing.assert_allclose(sum(np.asarray(t.y, dtype=float) for t in box.bars_figure.data).sum(), r0.logits[0],
                               atol=1e-4)
    top = r0.top_heads(3)
    np.testing.assert_allclose(np.asarray(box.rows_figure.data[0].z), np.stack([r0.attn_rows[l, h] for l, h in top]))
    z_before = np.asarray(box.pattern_figure.data[0].z).copy()
    run = tiny_llama.run(PROMPT, capture=["pattern"])
    np.testing.assert_allclose(z_before, run["pattern", top[0][0]][0, top[0][1]].numpy(), atol=1e-6)
    # change the prompt through the control: everything follows
    box.prompt_dropdown.value = 1
    r1 = box.result(1)
    assert box.current()[0] == 1 and box.computed() == [0, 1]
    assert len(box.rows_figure.data[0].x) == len(r1.str_tokens)
    np.testing.assert_allclose(sum(np.asarray(t.y, dtype=float) for t in box.bars_figure.data).sum(), r1.logits[0],
                               atol=1e-4)
    # metric and head controls
    box.metric_buttons.value = "diff"
    assert box.current()[1] == "diff" and "diff" in box.rows_figure.layout.title.text
    second = r1.top_heads(3, "diff")[1]
    box.head_dropdown.value = second
    assert box.current()[2] == second and f"L{second[0]}H{second[1]}" in box.pattern_figure.layout.title.text
    assert "answer" in box.summary.value
    with pytest.raises(InputError, match="out of range"):
        box.show(5)
    with pytest.raises(InputError, match="not among the top"):
        box.show(0, head=(0, 99))
    with pytest.raises(InputError, match="answers"):
        fact_explorer(tiny_llama, prompts)
    assert tiny_llama.leftover_hooks() == []
