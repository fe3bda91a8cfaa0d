"""The LRE paper's protocol: few-shot prompts, the low-rank inverse, causal edits, the study on SmolLM2."""
import pytest
import torch

from probes.factual.lre import RelationSample
from probes.factual.lre_causality import (causal_pairs, edit_success, edited_top1, low_rank_pinv, subject_states,
                                          subject_states_at)
from probes.factual.lre_relations import FEW_SHOT_TEMPLATES, few_shot_prompt, few_shot_samples, relation_pairs
from probes.factual.lre_study import lre_study
from workbench.errors import InputError

PAIRS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chad", "N'Djamena")]


def test_few_shot_prompts_never_show_their_own_subject_and_are_stable():
    t = FEW_SHOT_TEMPLATES["capital"]
    a = few_shot_samples(PAIRS, t, n_shots=3, seed=1)
    b = few_shot_samples(PAIRS, t, n_shots=3, seed=1)
    assert [x.prompt for x in a] == [x.prompt for x in b]
    for (subject, obj), smp in zip(PAIRS, a):
        lines = smp.prompt.split("\n")
        assert len(lines) == 4 and lines[-1] == t.format(s=subject)
        assert all(subject not in line for line in lines[:-1])
        assert smp.answer == " " + obj and smp.subject == subject
    # a demonstration is "<filled template> <object>." and an object ending in "." gets no second one
    assert few_shot_prompt(t, "Peru", [("United States", "Washington D.C.")]).startswith(
        "The capital city of United States is Washington D.C.\n")
    # the demonstrations come from the pool only
    pool = PAIRS[:3]
    for smp in few_shot_samples(PAIRS[3:], t, n_shots=2, pool=pool):
        assert all(any(line.startswith(t.format(s=s)) for s, _ in pool) for line in smp.prompt.split("\n")[:-1])
    with pytest.raises(InputError, match="pool has only"):
        few_shot_samples(PAIRS, t, n_shots=5)
    with pytest.raises(InputError, match="slot"):
        few_shot_prompt("no slot here", "Peru", [])


def test_built_in_relations_are_offline_and_well_formed(wordnet):
    for rel in FEW_SHOT_TEMPLATES:
        pairs = relation_pairs(rel, 20)
        assert len(pairs) == 20 and len({s for s, _ in pairs}) == 20
        assert all(s and o and s.lower() != o.lower() for s, o in pairs)
    assert ("China", "Beijing") in relation_pairs("capital", 5)
    assert dict(relation_pairs("antonym"))["hot"] == "cold"
    with pytest.raises(InputError, match="Unknown built-in relation"):
        relation_pairs("currency")


def test_low_rank_pinv_is_the_pseudo_inverse_restricted_to_the_top_directions():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(low_rank_pinv(w, 6), torch.linalg.pinv(w), atol=1e-10)
    assert torch.allclose(low_rank_pinv(w, 100), torch.linalg.pinv(w), atol=1e-10)  # rank capped
    p = low_rank_pinv(w, 3) @ w  # projection onto the top-3 right singular directions
    assert torch.allclose(p @ p, p, atol=1e-10) and abs(float(torch.trace(p)) - 3) < 1e-8
    _, _, vh = torch.linalg.svd(w)
    assert torch.allclose(p, vh[:3].T @ vh[:3], atol=1e-10)
    with pytest.raises(InputError, match="rank"):
        low_rank_pinv(w, 0)


def test_causal_edit_is_exact_when_the_subject_state_is_the_output(tiny):
    """Subject at the last token and ℓ = L-1: o = s, so W = I and Δs = z' − z moves the output exactly onto
    the target's; every LRE edit succeeds at full rank, and swapping in the target's state does too."""
    L, d = tiny.info.n_layers, tiny.info.d_model
    samples = [RelationSample(p, p.split()[-1]) for p in
               ("the cat is big", "a dog runs far", "my fish swims", "two owls hoot", "red apples fall",
                "the sun is hot", "we sing songs", "old men laugh")]
    states = subject_states(tiny, samples, L - 1)
    for st in states:  # the "object" is what the model predicts
        st.object_id = st.top1
        assert st.known and torch.allclose(st.h, st.z)
    pairs = causal_pairs(states)
    assert pairs and all(states[i].object_id != states[j].object_id for i, j in pairs)
    eye = torch.eye(d)
    assert all(edit_success(tiny, states, pairs, L - 1, eye, "lre"))
    assert all(edit_success(tiny, states, pairs, L - 1, None, "swap"))
    # an edit that changes nothing leaves the prediction alone
    assert edited_top1(tiny, states[0], L - 1, states[0].h) == states[0].top1
    with pytest.raises(InputError, match="pseudo-inverse"):
        edit_success(tiny, states, pairs, L - 1, None, "lre")


def test_states_at_several_layers_equal_single_layer_runs(tiny_llama):
    samples = [RelationSample("the cat is big", "cat", " big"), RelationSample("a dog runs far", "dog")]
    both = subject_states_at(tiny_llama, samples, [0, 1])
    for layer in (0, 1):
        for a, b in zip(both[layer], subject_states(tiny_llama, samples, layer)):
            assert a.position == b.position and a.top1 == b.top1 and a.object_id == b.object_id
            assert torch.equal(a.resid, b.resid) and torch.equal(a.z, b.z)
    assert both[0][1].object_id is None and both[0][0].object_id is not None


def test_study_says_when_the_model_knows_too_few_facts(tiny):
    with pytest.raises(InputError, match=r"knows \d+ of 20 facts"):
        lre_study(tiny, "capital", n_candidates=20, n_train=2, layers=[0])
    with pytest.raises(InputError, match="at least one β"):
        lre_study(tiny, "capital", n_candidates=20, n_train=2, layers=[0], betas=())


@pytest.mark.smollm2
def test_lre_study_on_smollm2_is_faithful_and_causal(smollm2):
    """Country capitals, one layer: the few-shot LRE beats chance by far on test subjects and its inverse
    edits the prediction far more often than a random edit of the same size."""
    r = lre_study(smollm2, "capital", n_candidates=40, n_train=4, layers=[12], betas=(1.0, 2.0), ranks=(32, 64))
    assert r.n_test >= 5 and r.layer == 12 and r.rank in (32, 64)
    assert r.faithfulness >= 0.3
    assert r.causality >= r.random_causality + 0.2 and r.swap_causality >= 0.8
    assert set(r.to_frame()["kind"]) == {"faithfulness", "causality"}
    assert r.figure().data and "faithfulness" in repr(r)
