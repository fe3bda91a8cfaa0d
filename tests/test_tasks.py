"""Synthetic passkey prompts and answer scoring (workbench.texts.tasks)."""
import pytest
import torch

import workbench as wb
from workbench.texts.tasks import QUESTION, PasskeySample, passkey_prompts, score_answers, score_passkey

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
    assert s.correct.shape == (2,)
    for i, smp in enumerate(samples):  # known values: a manual teacher-forced forward and a greedy decode
        ids, _ = tiny_llama.tokenize(smp.prompt)
        n = len(smp.answer_token_ids)
        full = torch.cat([ids[0], torch.tensor(smp.answer_token_ids)])[None]
        lp = torch.log_softmax(tiny_llama.run(full, logits="all").logits[0].double(), -1)
        rows = lp[ids.shape[1] - 1: ids.shape[1] - 1 + n]
        assert float(s.answer_logprob[i]) == pytest.approx(float(rows[torch.arange(n), smp.answer_token_ids].mean()),
                                                          abs=1e-6)
        greedy = tiny_llama.generate(smp.prompt, max_new_tokens=n).text
        assert s.generated[i] == greedy and bool(s.correct[i]) == greedy.strip().startswith(smp.answer.strip())


@pytest.mark.smollm2
def test_passkey_baseline_on_smollm2(smollm2):
    samples = passkey_prompts(smollm2, 3, 128, seed=0)
    assert all(120 <= s.n_tokens <= 128 for s in samples)
    assert all(len(s.answer_token_ids) == 6 for s in samples)  # " " then one token per digit
    score = score_passkey(smollm2, samples)
    assert score.accuracy == 1.0  # measured: 10/10 at 64, 128 and 256 tokens, depths 0.2-0.8
    assert score.mean_logprob > -0.5


# ------------------------------------------------------------------ RULER-style tasks
import re  # noqa: E402

from workbench.texts.tasks import (  # noqa: E402
    NEEDLE_KINDS, TaskSample, needle_prompts, score_text, variable_tracking_prompts,
)

N_RULER = 600  # byte-level tiny tokenizer: ~1 token per character


@pytest.mark.parametrize("kind", NEEDLE_KINDS)
def test_needles_deterministic_and_well_formed(tiny_llama, kind):
    tok = tiny_llama.tokenizer  # the tokenizer alone: no context limit
    a = needle_prompts(tok, 3, N_RULER, kind=kind, seed=3)
    assert a == needle_prompts(tok, 3, N_RULER, kind=kind, seed=3)
    assert [s.prompt for s in a] != [s.prompt for s in needle_prompts(tok, 3, N_RULER, kind=kind, seed=4)]
    for s in a:
        assert isinstance(s, TaskSample) and s.kind == kind
        assert N_RULER - 25 <= s.n_tokens <= N_RULER
        assert len(tok(s.prompt)["input_ids"]) == s.n_tokens
        assert tiny_llama.to_string(s.answer_token_ids) == s.answer
        n_needles = {"single": 1, "multikey": 4, "multivalue": 3}[kind]
        assert len(re.findall(r"The magic number for \w+ is \d+\.", s.prompt)) == n_needles
        assert len(s.needle_positions) == n_needles
        assert len(s.answers) == (3 if kind == "multivalue" else 1)
        for v in s.answers:
            assert s.prompt.count(v) == 1  # every value once, in its needle
            assert f"The magic number for {s.query} is {v}." in s.prompt
        for p in s.needle_positions:
            assert tiny_llama.to_string(tok(s.prompt)["input_ids"][p:]).startswith(" The magic number for ")
        assert s.prompt.endswith(f"{s.query}? The magic number{'s' if kind == 'multivalue' else ''} for {s.query} "
                                 f"{'are' if kind == 'multivalue' else 'is'}")
    mk = needle_prompts(tok, 1, N_RULER, kind="multikey", seed=0, n_keys=5)[0]
    assert len(set(re.findall(r"The magic number for (\w+) is", mk.prompt))) == 5  # distinct distractor keys


def test_variable_tracking(tiny_llama):
    tok = tiny_llama.tokenizer
    a = variable_tracking_prompts(tok, 2, N_RULER, seed=1, n_hops=3, n_chains=2)
    assert a == variable_tracking_prompts(tok, 2, N_RULER, seed=1, n_hops=3, n_chains=2)
    for s in a:
        assert s.kind == "variable_tracking" and len(s.answers) == 4
        assert N_RULER - 25 <= s.n_tokens <= N_RULER
        assert s.prompt.count("VAR ") == 2 * (1 + 2 * 3)  # two chains: one value and three copies each
        assert s.prompt.count(f"= {s.query}.") == 1  # the queried value is assigned once
        first, *rest = s.answers
        assert f"VAR {first} = {s.query}." in s.prompt
        for prev, cur in zip(s.answers, rest):
            assert f"VAR {cur} = VAR {prev}." in s.prompt
            # assignments appear in chain order
            assert s.prompt.index(f"VAR {cur} =") > s.prompt.index(f"VAR {prev} =")
        assert all(s.prompt.count(v) == 2 for v in s.answers[:-1]) and s.prompt.count(s.answers[-1]) == 1


def test_score_text(tiny_llama):
    tok = tiny_llama.tokenizer
    single = needle_prompts(tok, 1, N_RULER, seed=0)[0]
    assert score_text(single, single.answer + " and more") == 1.0
    assert score_text(single, " 0" + single.answer) == 0.0
    mv = needle_prompts(tok, 1, N_RULER, kind="multivalue", seed=0)[0]
    assert score_text(mv, mv.answer) == 1.0
    assert score_text(mv, f" {mv.answers[2]} and {mv.answers[0]}") == pytest.approx(2 / 3)
    assert score_text(mv, f" {mv.answers[0]}9") == 0.0  # whole numbers only
    pk = passkey_prompts(tiny_llama, 1, N_TINY)[0]
    assert score_text(pk, pk.answer) == 1.0


def test_ruler_bad_arguments(tiny_llama):
    tok = tiny_llama.tokenizer
    with pytest.raises(wb.InputError, match="kind"):
        needle_prompts(tok, 1, N_RULER, kind="multi")
    with pytest.raises(wb.InputError, match="too short"):
        needle_prompts(tok, 1, 100, kind="multikey")
    with pytest.raises(wb.InputError, match="context"):
        needle_prompts(tiny_llama, 1, 10_000)
    with pytest.raises(wb.InputError, match="n must"):
        variable_tracking_prompts(tok, 0)
    with pytest.raises(wb.InputError, match="n_keys"):
        needle_prompts(tok, 1, N_RULER, kind="multikey", n_keys=0)
    with pytest.raises(wb.InputError, match="n_hops"):
        variable_tracking_prompts(tok, 1, N_RULER, n_hops=0)
    with pytest.raises(wb.InputError, match="seed"):
        needle_prompts(tok, 1, N_RULER, seed="a")
    with pytest.raises(wb.InputError, match="Model or a HF tokenizer"):
        needle_prompts(3, 1)
    with pytest.raises(wb.InputError, match="PasskeySample or TaskSample"):
        score_text("sample", "text")


def test_context_question_split(tiny_llama):
    """prompt == context + question, and split_ids gives exactly the prompt's tokens in two parts."""
    from workbench.texts.tasks import needle_prompts, passkey_prompts, split_ids, variable_tracking_prompts

    samples = (passkey_prompts(tiny_llama, 2, 250, seed=3) + needle_prompts(tiny_llama, 1, 250, kind="multikey", seed=4, n_keys=2, digits=3)
               + needle_prompts(tiny_llama, 1, 250, kind="multivalue", seed=5, n_values=2, digits=3)
               + variable_tracking_prompts(tiny_llama, 1, 250, seed=6, n_hops=1, digits=3))
    for s in samples:
        assert s.prompt == s.context + s.question and s.question.startswith(" ")
        ctx, q = split_ids(tiny_llama, s)
        full, _ = tiny_llama.tokenize(s.prompt)
        assert torch.equal(torch.cat([ctx, q], 1), full)
    mk = samples[2]
    assert len(mk.other_questions) == 1
    for question, answer in mk.other_questions:
        key = question.split("for ")[1].split("?")[0]
        assert f"The magic number for {key} is{answer}." in mk.context and key != mk.query
