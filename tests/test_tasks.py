"""Synthetic passkey prompts and answer scoring (workbench.tasks)."""
import pytest
import torch

import workbench as wb
from workbench.tasks import QUESTION, PasskeySample, passkey_prompts, score_answers, score_passkey

N_TINY = 230  # the byte-level tiny tokenizer needs about 200 tokens for the fixed text


def test_deterministic_by_seed(tiny_llama):
    a = passkey_prompts(tiny_llama, 3, N_TINY, seed=7)
    b = passkey_prompts(tiny_llama, 3, N_TINY, seed=7)
    c = passkey_prompts(tiny_llama, 3, N_TINY, seed=8)
    assert a == b
    assert [s.key for s in a] != [s.key for s in c]
    assert len({s.key for s in a}) > 1  # keys vary within a set too


def test_prompt_structure(tiny_llama):
    for s in passkey_prompts(tiny_llama, 4, N_TINY, seed=1, digits=6):
        assert isinstance(s, PasskeySample)
        assert len(s.key) == 6 and s.key.isdigit() and s.key[0] != "0"
        assert s.answer == " " + s.key
        assert s.prompt.count(s.key) == 1
        assert s.prompt.endswith(QUESTION)
        assert tiny_llama.to_string(s.answer_token_ids) == s.answer
        ids, lengths = tiny_llama.tokenize(s.prompt)
        assert lengths[0] == s.n_tokens
        assert N_TINY - 25 <= s.n_tokens <= N_TINY  # within one filler sentence of the target
        needle = tiny_llama.to_string(ids[0, s.needle_position:].tolist())
        assert needle.startswith(" The pass key is " + s.key)


def test_depth_moves_the_key(tiny_llama):
    pos = [passkey_prompts(tiny_llama, 1, N_TINY, depth=d, seed=0)[0].needle_position for d in (0.0, 0.5, 1.0)]
    assert pos[0] < pos[1] < pos[2]


def test_bad_arguments(tiny_llama):
    with pytest.raises(wb.InputError, match="n must"):
        passkey_prompts(tiny_llama, 0)
    with pytest.raises(wb.InputError, match="depth"):
        passkey_prompts(tiny_llama, 1, N_TINY, depth=1.5)
    with pytest.raises(wb.InputError, match="too short"):
        passkey_prompts(tiny_llama, 1, 50)
    with pytest.raises(wb.InputError, match="context"):
        passkey_prompts(tiny_llama, 1, 10_000)
    with pytest.raises(wb.InputError, match="digits"):
        passkey_prompts(tiny_llama, 1, N_TINY, digits=0)
    with pytest.raises(wb.InputError, match="Model or a HF tokenizer"):
        passkey_prompts(42, 1)
    with pytest.raises(wb.InputError, match="answers"):
        score_answers(tiny_llama, ["a", "b"], [" c"])
    with pytest.raises(wb.InputError, match="non-empty"):
        score_answers(tiny_llama, ["a"], [" "])
    with pytest.raises(wb.InputError, match="PasskeySample"):
        score_passkey(tiny_llama, [])


def test_scoring_agrees_with_the_model(tiny_llama):
    """An answer equal to the model's own greedy continuation scores 1; log-probs match a manual forward."""
    prompts = ["Hello there", "The pass key is"]
    gens = tiny_llama.generate(prompts, max_new_tokens=3, stop_at_eos=False)
    answers = [g.text for g in gens]
    ids = [g.new_tokens.tolist() for g in gens]
    score = score_answers(tiny_llama, prompts, answers, answer_token_ids=ids)
    assert score.accuracy == 1.0 and score.correct.all()
    for i, (p, g) in enumerate(zip(prompts, gens)):
        lp = torch.log_softmax(g.logits.double(), -1)  # (3, V) logits each greedy token was chosen from
        assert score.answer_logprob[i] == pytest.approx(float(lp[torch.arange(3), g.new_tokens].mean()), abs=1e-4)
    wrong = score_answers(tiny_llama, prompts, [" zzzz", " qqqq"])
    assert wrong.accuracy == 0.0 and torch.isfinite(wrong.answer_logprob).all()
    assert set(wrong.to_frame().columns) >= {"answer", "generated", "correct", "answer_logprob"}
    assert "accuracy 0.000" in repr(wrong)


def test_score_passkey_on_tiny(tiny_llama):
    samples = passkey_prompts(tiny_llama, 2, N_TINY, seed=3)
    s = score_passkey(tiny_llama, samples)
    assert s.correct.shape == (2,) and torch.isfinite(s.answer_logprob).all()
    assert all(len(g) > 0 for g in s.generated)


@pytest.mark.smollm2
def test_passkey_baseline_on_smollm2(smollm2):
    samples = passkey_prompts(smollm2, 3, 128, seed=0)
    assert all(120 <= s.n_tokens <= 128 for s in samples)
    assert all(len(s.answer_token_ids) == 6 for s in samples)  # " " then one token per digit
    score = score_passkey(smollm2, samples)
    assert score.accuracy == 1.0  # measured: 10/10 at 64, 128 and 256 tokens, depths 0.2-0.8
    assert score.mean_logprob > -0.5
