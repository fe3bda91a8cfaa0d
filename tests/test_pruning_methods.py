"""Layer-selection methods on a 6-layer tiny Llama: scores, ShortGPT, SLEB, attention drop, LaCo, TrimLLM."""
import pytest
import torch

import efficiency as ef
from efficiency.pruning import LaCo, LacoEdit, layer_scores, massive_activation_effect, merge_rdsc
from efficiency.calibration import token_windows, window_nll
from efficiency_helpers import HELD_OUT, TEXTS, deep_tiny_llama, same_params, snapshot
from workbench import InputError

PROMPT = HELD_OUT[0][:90]


@pytest.fixture(scope="module")
def m6():
    return deep_tiny_llama()


def test_layer_scores_known_answers(m6):
    w = token_windows(m6, TEXTS, 32, 3)
    s = layer_scores(m6, w)
    f = s.frame
    assert len(f) == 6 and (f.bi >= 0).all() and (f.bi <= 2).all()
    # BI is 1 - mean cos(resid_pre, resid_post): recompute layer 2 by hand
    run = m6.run(w, capture=["resid_pre", "resid_post"], layers=[2], logits=None)
    cos = torch.nn.functional.cosine_similarity(run["resid_pre", 2].double(), run["resid_post", 2].double(), dim=-1)
    assert f.bi[2] == pytest.approx(1 - float(cos.mean()), abs=1e-9)
    assert f.bi_no_first[2] == pytest.approx(1 - float(cos[:, 1:].mean()), abs=1e-9)
    with m6.intervene(ef.DropLayers(blocks=[3])):
        g = layer_scores(m6, w).frame
    assert g.bi[3] == pytest.approx(0, abs=1e-12) and g.attn_sim[3] == pytest.approx(1) and g.mlp_sim[3] == pytest.approx(1)
    assert s.order("bi")[0] == int(f.bi.idxmin())
    assert s.figure() is not None and "lowest Block Influence" in s.summary()


def test_shortgpt_drops_lowest_bi_and_cost_matches(m6):
    meth = ef.get_method("shortgpt", ratio=0.34, window=32, n_windows=3)
    with pytest.raises(InputError, match="prepare"):
        meth.intervention(m6)
    meth.prepare(m6, TEXTS)
    assert meth.dropped_blocks == sorted(meth.scores.order("bi")[:2])
    with m6.intervene(meth.intervention(m6)):
        cache = m6.prefill(PROMPT)
    st = cache.stats()
    c = meth.cost(m6, st.full_tokens)
    assert c.kv_bytes == st.physical_bytes and c.kv_ratio == pytest.approx(4 / 6)
    assert c.weight_bytes == m6.parameter_bytes() and c.saving == "real"
    with pytest.raises(InputError, match="remove all"):
        ef.get_method("shortgpt", ratio=0.95).prepare(m6, TEXTS)
    with pytest.raises(InputError, match="empty"):
        ef.get_method("shortgpt", ratio=0.3).prepare(m6, [])
    with pytest.raises(InputError, match=r"ratio=1.0 is out of range"):
        ef.get_method("shortgpt", ratio=1.0)


def test_sleb_greedy_choice_is_the_loss_argmin_and_nested(m6):
    meth = ef.get_method("sleb", ratio=0.34, window=32, n_windows=3, protect_first=0, protect_last=0)
    meth.prepare(m6, TEXTS)
    w = token_windows(m6, TEXTS, 32, 3)
    first = meth.removal_order[0]
    losses = {}
    for j in range(6):
        with m6.intervene(ef.DropLayers(blocks=[j])):
            losses[j] = window_nll(m6, w)[0]
    assert first == min(losses, key=losses.get)
    half = meth.at_ratio(0.17)
    assert half.dropped_blocks == [first]
    assert meth.curve.steps[1]["removed"] == first and len(meth.curve.candidates()) == 2
    assert meth.curve.figure() is not None
    prot = ef.get_method("sleb", ratio=0.34, window=32, n_windows=2, protect_first=1, protect_last=1)
    prot.prepare(m6, TEXTS)
    assert not {0, 5} & set(prot.dropped_blocks)


def test_attention_drop_removes_kv_and_picks_most_similar(m6):
    meth = ef.get_method("attn_drop", ratio=0.5, window=32, n_windows=3)
    meth.prepare(m6, TEXTS)
    f = meth.scores.frame
    assert meth.dropped_attn == sorted(f.sort_values("attn_sim", ascending=False).layer[:3].tolist())
    assert meth.dropped_blocks == [] and meth.dropped_mlp == []
    with m6.intervene(meth.intervention(m6)):
        st = m6.prefill(PROMPT).stats()
    assert st.physical_bytes == meth.cost(m6, st.full_tokens).kv_bytes
    joint = ef.get_method("attn_drop", ratio=0.25, part="joint", iterative=True, window=32, n_windows=2)
    joint.prepare(m6, TEXTS)
    assert len(joint.dropped_attn) + len(joint.dropped_mlp) == 3


def test_laco_merge_rule_known_answers(m6):
    a, b, c = (torch.randn(4, 3) for _ in range(3))
    assert torch.equal(merge_rdsc(a, [b]), a + (b - a))
    assert torch.allclose(merge_rdsc(a, [b]), b, atol=1e-6)  # m = 1: the next layer's weights
    assert torch.allclose(merge_rdsc(a, [b, c]), b + c - a, atol=1e-6)
    snap = snapshot(m6)
    w4, w5 = m6.linear_weight(4, "up").clone(), m6.linear_weight(5, "up").clone()
    with m6.intervene(LacoEdit({4: {"up": merge_rdsc(w4, [w5])}}, [5])):
        assert torch.allclose(m6.linear_weight(4, "up"), w5, atol=1e-6)
        assert ("L5.block", "replaced by SkipBlock") in m6.active_edits()
    assert same_params(m6, snap)


@pytest.mark.parametrize("rule", ["rdsc", "replace"])
def test_laco_reaches_the_target_depth(m6, rule):
    meth = LaCo(ratio=0.34, merge_layers=3, threshold=0.5, rule=rule, window=16, n_fragments=3)
    meth.prepare(m6, TEXTS)
    assert len(meth.dropped_blocks) == 2
    assert set(meth.merged).isdisjoint(meth.dropped_blocks)
    snap = snapshot(m6)
    with m6.intervene(meth.intervention(m6)):
        run = m6.run(PROMPT)
    assert torch.isfinite(run.logits).all() and same_params(m6, snap)
    assert meth.forced >= 0 and len(meth.history) >= 1
    if rule == "rdsc":  # the copy holds the merged weights and fewer blocks
        small = ef.pruned_copy(m6, meth, check_parity=False)
        assert small.info.n_layers == 4 and torch.allclose(small.run(PROMPT).logits, run.logits, atol=1e-5)


def test_trimllm_uses_the_score_and_breaks_ties_by_norm(m6):
    calls = []

    def score(model):  # prefers dropping block 4 (constant otherwise): a domain score
        dropped = {int(t[1:].split(".")[0]) for t, _ in model.active_edits()}
        calls.append(dropped)
        return 1.0 if dropped == {4} else 0.0

    meth = ef.get_method("trimllm", ratio=0.17, window=32, n_windows=2, protect_first=0, protect_last=0)
    meth.prepare(m6, TEXTS, score=score)
    assert meth.dropped_blocks == [4]
    tie = ef.get_method("trimllm", ratio=0.17, window=32, n_windows=2, tie=10.0)
    tie.prepare(m6, TEXTS, score=lambda model: 0.0)  # all tied: smallest update norm goes
    norms = layer_scores(m6, token_windows(m6, TEXTS, 32, 2)).frame.set_index("layer").update_norm
    assert tie.dropped_blocks == [int(norms.loc[1:4].idxmin())]
    with pytest.raises(InputError, match="callable"):
        ef.get_method("trimllm", ratio=0.17).prepare(m6, TEXTS, score=3)


def test_massive_activation_effect_finds_the_writer(m6):
    res = massive_activation_effect(m6, PROMPT, {"drop_0": ef.DropLayers(blocks=[0])})
    f = res.to_frame()
    assert set(f.variant) == {"base", "drop_0"} and len(f) == 12
    base = res.norms["base"][:, res.peak_position]
    jumps = torch.cat([base[:1], base[1:] - base[:-1]])
    assert res.writer_layer == int(jumps.argmax())
    assert res.figure() is not None and "written by block" in res.summary()
    with pytest.raises(InputError, match="reserved"):
        massive_activation_effect(m6, PROMPT, {"base": None})


def test_pruning_explorer_switches_method_and_ratio(m6):
    from efficiency.pruning import pruning_explorer

    box = pruning_explorer(m6, PROMPT[:60], TEXTS, methods=("shortgpt", "attn_drop"), ratios=(0.17, 0.34),
                           knobs={"shortgpt": {"window": 32, "n_windows": 2}, "attn_drop": {"window": 32, "n_windows": 2}})
    e = box.show("attn_drop", 0.34)
    assert box.current() == ("attn_drop", 0.34) and box.strength_slider.value == 0.34
    assert sorted(e.detail).count(0.5) == 2 and len(e.rel_err) == 6 and e.kl >= 0
    assert list(box.detail_figure.data[0].y) == e.detail
    assert box.effect("shortgpt", 0.17).detail.count(1.0) == 1
    with pytest.raises(InputError, match="not in this explorer"):
        box.show("laco", 0.17)
    assert m6.active_edits() == []
