"""Top-k concept-guided decoding: k = 1 is greedy, the cached batch path is exact, no hooks leak."""
import pytest
import torch

import workbench as wb
from probes.frames.guidance import GuidedDecoding, _decode, guided_generate
from probes.frames import Concept, concept, concept_scores, procrustes, windows
from probes.frames.correlation import frame_correlation
from probes.frames.wordnet import wordnet_available

requires_wordnet = pytest.mark.skipif(
    not wordnet_available(), reason="WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`")


def random_concept(model, k=3, seed=0) -> Concept:
    g = torch.Generator().manual_seed(seed)
    return Concept(f"random{seed}", procrustes(torch.randn(model.info.d_model, k, generator=g)))


def test_k1_equals_greedy_token_for_token(tiny):
    c = random_concept(tiny)
    for prompt in ("The cat", "Once upon a time"):
        g = guided_generate(tiny, prompt, c, k=1, max_new_tokens=8, stop_at_eos=False)
        ref = tiny.generate(prompt, 8, stop_at_eos=False)
        assert g.guided_tokens == ref.new_tokens.tolist() == g.greedy_tokens
        assert g.n_deviations == 0 and g.guided_text == g.greedy_text


def test_guided_steps_are_exact_against_an_uncached_forward(tiny):
    """The batch-k cached step reproduces an uncached run: same hidden states, candidates = its top-k."""
    c = random_concept(tiny, seed=3)
    ids, _ = tiny.tokenize("Hello there, friend")
    d = _decode(tiny, ids, c.frame, 3, 10, False)
    assert len(d.tokens) == 10 and any(r != 0 for r in d.chosen_rank)  # guidance did something
    full = torch.cat([ids[0], torch.tensor(d.tokens)])
    run = tiny.run(full[None], capture=["final_resid"], logits="all")
    t0 = ids.shape[1]
    assert torch.allclose(torch.stack(d.hidden), run["final_resid"][0, t0:].float(), atol=1e-4)
    for s in range(10):
        top = torch.topk(run.logits[0, t0 - 1 + s].float(), 3).indices.tolist()
        assert sorted(top) == sorted(d.candidates[s]) and d.tokens[s] == d.candidates[s][d.chosen_rank[s]]


def test_guided_choice_maximises_the_window_score(tiny_llama):
    """At every step the kept candidate maximises the cumulative windowed concept score of the
    continuation so far (recomputed from scratch, uncached, for every candidate)."""
    c = random_concept(tiny_llama, k=2, seed=5)
    ids, _ = tiny_llama.tokenize("abc")
    t0 = ids.shape[1]
    d = _decode(tiny_llama, ids, c.frame, 3, 5, False)
    assert any(r != 0 for r in d.chosen_rank)
    for s in range(5):
        totals = []
        for cand in d.candidates[s]:
            seq = torch.cat([ids[0], torch.tensor(d.tokens[:s] + [cand])])
            h = tiny_llama.run(seq[None], capture=["final_resid"], logits=None)["final_resid"][0, t0:].float()
            totals.append(float(frame_correlation(windows(h, 2), c.frame[None]).sum()))
        assert max(range(len(totals)), key=totals.__getitem__) == d.chosen_rank[s]


def test_away_is_toward_the_negated_concept(tiny_gpt2):
    c = random_concept(tiny_gpt2, seed=7)
    neg = Concept("neg", -c.frame)
    a = guided_generate(tiny_gpt2, "Some text", c, k=3, max_new_tokens=8, direction="away", greedy=False)
    b = guided_generate(tiny_gpt2, "Some text", neg, k=3, max_new_tokens=8, direction="toward", greedy=False)
    assert a.guided_tokens == b.guided_tokens and a.greedy_tokens == []


def test_guided_result_api(tiny_llama):
    g = guided_generate(tiny_llama, "The dog", random_concept(tiny_llama), k=2, max_new_tokens=6, stop_at_eos=False)
    assert isinstance(g, GuidedDecoding) and len(g.guided_tokens) == 6 == len(g.candidates)
    df = g.to_frame()
    assert list(df.columns) == ["step", "guided", "greedy", "candidates", "chosen_rank"] and len(df) == 6
    assert g.figure().data and "<table>" in g._repr_html_() and "greedy" in repr(g)
    assert g.tokens_per_s > 0


def test_interventions_apply_and_no_hooks_leak(tiny_llama):
    from interventions import HeadAblation

    c = random_concept(tiny_llama)
    iv = HeadAblation(0, [0, 1, 2, 3])
    g = guided_generate(tiny_llama, "The dog", c, k=1, max_new_tokens=5, interventions=[iv], stop_at_eos=False)
    ref = tiny_llama.generate("The dog", 5, interventions=[iv], stop_at_eos=False)
    assert g.guided_tokens == ref.new_tokens.tolist()
    assert tiny_llama.leftover_hooks() == []


def test_guided_bad_input(tiny_llama):
    c = random_concept(tiny_llama)
    with pytest.raises(wb.InputError, match="prompt is empty"):
        guided_generate(tiny_llama, "", c)
    with pytest.raises(wb.InputError, match="positive integer"):
        guided_generate(tiny_llama, "a", c, k=0)
    with pytest.raises(wb.InputError, match="direction"):
        guided_generate(tiny_llama, "a", c, direction="sideways")
    with pytest.raises(wb.InputError, match="d_model"):
        guided_generate(tiny_llama, "a", Concept("wide", torch.zeros(10, 3)))
    with pytest.raises(wb.InputError, match="no chat template"):
        guided_generate(tiny_llama, "a", c, chat=True)
    with pytest.raises(wb.InputError, match="text is empty"):
        concept_scores(tiny_llama, "   ", c)
    assert tiny_llama.leftover_hooks() == []


@requires_wordnet
def test_concept_by_name_on_tiny(tiny_llama):
    g = guided_generate(tiny_llama, "The dog", "woman.n.01 - man.n.01", k=2, max_new_tokens=4, frame_k=8)
    assert g.concept == "woman.n.01 − man.n.01"
    with pytest.raises(wb.InputError, match="Unknown WordNet synset"):
        guided_generate(tiny_llama, "The dog", "wman.n.01", frame_k=8)


@pytest.mark.smollm2
@requires_wordnet
def test_smollm2_k1_is_greedy_and_k2_guides(smollm2):
    prompt = "The nurse finished the night shift and"
    wm = concept(smollm2, "woman.n.01 - man.n.01")
    g1 = guided_generate(smollm2, prompt, wm, k=1, max_new_tokens=8, greedy=False)
    assert g1.guided_tokens == smollm2.generate(prompt, 8).new_tokens.tolist()
    g2 = guided_generate(smollm2, prompt, wm, k=2, max_new_tokens=8)  # speed: benchmarks/bench_frames.py
    assert g2.greedy_tokens == g1.guided_tokens
    assert g2.guided_score >= g2.greedy_score - 1e-6 or g2.n_deviations > 0
    s = concept_scores(smollm2, "She is a mother and a queen.", ["woman.n.01", "man.n.01"])
    assert s.scores.shape == (2, 8)
