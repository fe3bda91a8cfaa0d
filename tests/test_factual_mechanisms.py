"""Factual-recall mechanisms (probes.factual.mechanisms): head classes, additive motif, suppression."""
import numpy as np
import pytest
import torch

from interventions import HeadAblation
from probes.factual.dla import DLAResult
from probes.factual.mechanisms import (HeadScale, additive_motif, classify_heads, suppression_effect,
                                       suppressive_heads)
from workbench.errors import InputError

L, H, T = 3, 3, 6
SUBJ, REL, LAST = [1, 2], [3], T - 1  # positions 0 and 4 are "other"


def fake(sources_logit: np.ndarray, k: int = 3, heads=None, mlps=None, groups=None) -> DLAResult:
    """A DLAResult with the given per-source answer-logit DLA (L, H, T); alternatives get zero."""
    src = np.zeros((2, L, H, T))
    src[0] = src[1] = sources_logit
    if heads is None:
        heads = np.zeros((L, H, k))
        heads[..., 0] = sources_logit.sum(-1)
    if groups is None:
        groups = np.zeros((L, H, 4, k))
        groups[:, :, 0, 0] = sources_logit[..., SUBJ].sum(-1)
        groups[:, :, 1, 0] = sources_logit[..., REL].sum(-1)
        groups[:, :, 2, 0] = sources_logit[..., LAST]
        groups[:, :, 3, 0] = heads[..., 0] - groups[:, :, :3, 0].sum(-1)
    mlps = np.zeros((L, k)) if mlps is None else mlps
    total = heads.sum((0, 1)) + mlps.sum(0)
    z = np.zeros(k)
    return DLAResult("fake", "p", [f"t{i}" for i in range(T)], list(range(k)), [f"c{i}" for i in range(k)], total, z,
                     heads, groups, np.zeros((L, k)), mlps, z, z, src, np.zeros((L, H, T)), SUBJ, REL, 1.0,
                     fact_id="f", relation="r")


def designed() -> np.ndarray:
    s = np.zeros((L, H, T))
    s[0, 0, SUBJ] = [0.6, 0.4]       # subject head
    s[0, 1, REL] = -0.5              # relation head (negative: a class is about where, not the sign)
    s[0, 2, SUBJ] = 0.25             # mixed: 0.5 from subject, 0.5 from relation
    s[0, 2, REL] = 0.5
    s[1, 0, LAST] = 0.8              # reads the last token: last
    s[1, 1, 0] = 0.01                # minor
    s[1, 2, SUBJ] = 0.4              # subject share 0.8
    s[1, 2, REL] = 0.2
    s[2, 0, 4] = 0.5                 # reads another token: other
    s[2, 1, 0] = -0.3                # reads position 0 (the sink): other, and counted as from position 0
    s[2, 1, LAST] = 0.1
    s[2, 2, REL] = 0.3               # reads the relation more than the last token: still a relation head
    s[2, 2, LAST] = 0.2
    return s


def test_classify_known_heads():
    c = classify_heads([fake(designed()), fake(designed())], metric="logit", min_effect=0.1, share=0.7)
    assert c.labels.tolist() == [["subject", "relation", "mixed"], ["last", "minor", "subject"],
                                 ["other", "other", "relation"]]
    assert c.heads_of("subject") == [(0, 0), (1, 2)]
    np.testing.assert_allclose(c.subject[0, 0], 1.0)
    np.testing.assert_allclose(c.relation[0, 1], -0.5)
    strict = classify_heads([fake(designed())], metric="logit", share=0.9)
    assert strict.labels[1, 2] == "mixed"  # 0.8 subject share is below 0.9
    assert classify_heads([fake(designed())], metric="logit", min_effect=2.0).counts()["minor"] == L * H
    np.testing.assert_allclose(c.last[1, 0], 0.8)  # head L1H0 reads the last token (position 5)
    np.testing.assert_allclose(c.last[2, 2], 0.2)
    np.testing.assert_allclose(c.relation[2, 2], 0.3)
    np.testing.assert_allclose(c.first[1, 1], 0.01)
    np.testing.assert_allclose(c.first[2, 1], -0.3)
    np.testing.assert_allclose(c.other[2, 0], 0.5)
    df = c.to_frame()
    assert len(df) == L * H and df.iloc[0]["head"] in ("L0H0", "L0H2")
    assert {"subject", "relation", "last", "other", "other_from_position_0"} <= set(df.columns)
    assert len(c.figure().data) == 6 and "subject" in c._repr_html_()
    assert c.heads_of("last") == [(1, 0)]


def test_additive_motif_constructive_interference():
    s = designed()
    k = 3
    heads = np.zeros((L, H, k))
    heads[0, 0] = [1.0, 1.0, 0.0]  # subject heads: answer ties with candidate 1 -> rank 1
    heads[1, 2] = [0.0, 0.0, 0.0]
    mlps = np.zeros((L, k))
    mlps[1] = [1.0, 0.0, 1.0]      # MLPs: answer ties with candidate 2 -> rank 1
    groups = np.zeros((L, H, 4, k))
    groups[0, 0, 0] = heads[0, 0]
    r = fake(s, k, heads=heads, mlps=mlps, groups=groups)
    c = classify_heads([fake(s)], metric="logit")
    t = additive_motif([r], c)
    row = t.per_prompt.iloc[0]
    assert row["rank[subject heads]"] == 1 and row["rank[MLPs]"] == 1 and row["rank[sum]"] == 0
    assert bool(row["interference"]) and t.interference_rate == 1.0
    # no constructive interference when one group alone already ranks the answer first
    mlps2 = mlps.copy()
    mlps2[1] = [2.0, 0.0, 1.0]
    t2 = additive_motif([fake(s, k, heads=heads, mlps=mlps2, groups=groups)], c)
    assert t2.interference_rate == 0.0 and t2.per_prompt.iloc[0]["rank[MLPs]"] == 0
    frame = t.to_frame()
    assert list(frame["group"])[-1] == "only the sum is top-1"
    assert len(t.figure().data[0].x) == len(frame) and "MotifTable" in repr(t)
    assert "only the sum" in t.by_relation().columns


def test_motif_group_with_no_head_has_no_rank():
    s = np.zeros((L, H, T))
    s[0, 0, SUBJ] = 1.0  # only a subject head
    c = classify_heads([fake(s)], metric="logit")
    t = additive_motif([fake(s)], c)
    assert np.isnan(t.per_prompt.iloc[0]["rank[relation heads]"])
    assert np.isnan(t.to_frame().set_index("group").loc["relation heads", "top1_rate"])


def test_suppressive_heads_pick_negative_late_heads():
    s = np.zeros((L, H, T))
    s[2, 1, 0] = -0.5
    s[2, 2, 0] = -0.2
    s[0, 0, 0] = -3.0  # early: outside last_layers=1
    assert suppressive_heads([fake(s)], last_layers=1, threshold=-0.1) == [(2, 1), (2, 2)]
    assert suppressive_heads([fake(s)], last_layers=1, threshold=-0.3) == [(2, 1)]
    assert suppressive_heads([fake(s)], last_layers=3, max_heads=1) == [(0, 0)]


def test_head_scale_is_exactly_linear_in_alpha(tiny_llama):
    m = tiny_llama
    last = m.info.n_layers - 1
    prompt = "the cat sat on the mat"
    clean = m.run(prompt, capture=["resid_mid", "head_out"], layers=[last])
    same = m.run(prompt, logits="last", interventions=[HeadScale([(last, 1)], 1.0)])
    torch.testing.assert_close(same.last_logits, clean.last_logits)
    zero = m.run(prompt, logits="last", interventions=[HeadScale([(last, 1)], 0.0)])
    abl = m.run(prompt, logits="last", interventions=[HeadAblation(last, 1)])
    torch.testing.assert_close(zero.last_logits, abl.last_logits)
    for alpha in (0.0, 0.5, 2.0):
        # the attention output (hence resid_mid, before the MLP reads it) moves by exactly (α - 1)·head
        run = m.run(prompt, capture=["resid_mid"], layers=[last], interventions=[HeadScale([(last, 1)], alpha)])
        expect = clean["resid_mid", last] + (alpha - 1) * clean["head_out", last][:, :, 1]
        torch.testing.assert_close(run["resid_mid", last], expect, atol=1e-5, rtol=1e-5)
    assert m.leftover_hooks() == []


def test_suppression_effect_on_tiny(tiny_llama):
    prompts = ["the cat sat on the mat", "hello world"]
    res = suppression_effect(tiny_llama, prompts, [70, 71], [(1, 0), (1, 2)], alphas=(0.0, 1.0))
    clean = tiny_llama.run(prompts, logits="last").last_logits.float()
    p = torch.softmax(clean, -1)[torch.arange(2), torch.tensor([70, 71])].numpy()
    np.testing.assert_allclose(res.p_answer[1], p, rtol=1e-5)
    assert not np.allclose(res.p_answer[0], p)
    df = res.to_frame()
    assert list(df["alpha"]) == [0.0, 1.0] and "frac_prompts_p_up" in df
    assert len(res.figure().data) == 2 and "HeadScale" not in repr(res)


def test_bad_input(tiny_llama):
    with pytest.raises(InputError, match="No DLA results"):
        classify_heads([])
    with pytest.raises(InputError, match="share"):
        classify_heads([fake(designed())], share=0.4)
    with pytest.raises(InputError, match="Unknown head class"):
        classify_heads([fake(designed())]).heads_of("movers")
    with pytest.raises(InputError, match="answers"):
        suppression_effect(tiny_llama, ["a b"], [1, 2], [(0, 0)])
    with pytest.raises(InputError, match="at least one"):
        HeadScale([], 0.5)
    with pytest.raises(InputError, match="out of range"):
        tiny_llama.run("a b", interventions=[HeadScale([(9, 0)], 0.5)])
    with pytest.raises(InputError, match="last_layers"):
        suppressive_heads([fake(designed())], last_layers=0)


@pytest.mark.smollm2
def test_smollm2_subject_heads_and_suppression(smollm2):
    from probes.factual.data import load_facts
    from probes.factual.dla import direct_logit_attribution_many

    facts = load_facts().by_relation("capital").filter(
        ids=["capital/France", "capital/Germany", "capital/Japan", "capital/Italy", "capital/Spain", "capital/Egypt"])
    rs = direct_logit_attribution_many(smollm2, facts)
    c = classify_heads(rs)
    assert c.labels[23, 4] == "subject" and c.subject[23, 4] > 0.5  # docs/factual.md: L23H4 reads the subject
    t = additive_motif(rs, c)
    assert t.to_frame().set_index("group").loc["model", "top1_rate"] >= 0.8
    sup = suppressive_heads(rs)
    assert (29, 0) in sup  # the consistently negative L29H0
    res = suppression_effect(smollm2, facts, [r.targets[0] for r in rs], [(29, 0)], alphas=(0.0, 1.0))
    base = smollm2.run([f.prompt for f in facts], logits="last").last_logits.float()
    np.testing.assert_allclose(res.logit_answer[1], base[torch.arange(len(rs)), [r.targets[0] for r in rs]].numpy(),
                               rtol=1e-4)
