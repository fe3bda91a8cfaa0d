"""Synthetic long-context tasks generated offline, and answer scoring through the wrapper.

``passkey_prompts`` builds passkey-retrieval prompts (Mohtashami & Jaggi 2023; used by Jin et al.
2025): an instruction, repetitive filler text, one sentence "The pass key is 57321. Remember it."
at a chosen depth, more filler, and the question "What is the pass key? The pass key is". The
answer is the key with its leading space (" 57321"). Everything is deterministic given the seed.

``score_answers`` / ``score_passkey`` score a model (optionally under interventions) on
prompt/answer pairs: exact match of the greedy continuation (``model.generate``, as many new
tokens as the answer has) and the mean log-probability of the answer's tokens given the prompt
(one teacher-forced forward per prompt).
"""
from __future__ import annotations

import html
import random
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from .errors import InputError

INTRO = ("There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the pass key.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
NEEDLE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeySample:
    """One passkey prompt.

    prompt: the full text; answer: the key with its leading space (" 57321"), the text that should
    follow the prompt; answer_token_ids: the answer's tokens as a continuation of the prompt;
    depth: requested relative depth of the key sentence in the filler (0 = start, 1 = end);
    n_tokens: the prompt's real token count; needle_position: token index where the key
    sentence starts.
    """

    prompt: str
    answer: str
    answer_token_ids: tuple[int, ...]
    depth: float
    n_tokens: int
    needle_position: int

    @property
    def key(self) -> str:
        return self.answer.strip()


def _tokenizer(model_or_tokenizer):
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if not callable(tok) or not hasattr(tok, "decode"):
        raise InputError(f"Expected a workbench Model or a HF tokenizer, got {type(model_or_tokenizer).__name__}.")
    return tok


def _ids(tok, text: str) -> list[int]:
    """Token ids the way ``Model.tokenize`` makes them (special tokens as the tokenizer adds them)."""
    return list(tok(text, add_special_tokens=True)["input_ids"])


def continuation_ids(tok, prompt: str, answer: str) -> list[int]:
    """Tokens of ``answer`` as a continuation of ``prompt`` (falls back to the answer alone)."""
    p, full = _ids(tok, prompt), _ids(tok, prompt + answer)
    if full[: len(p)] == p and len(full) > len(p):
        return full[len(p):]
    return list(tok(answer, add_special_tokens=False)["input_ids"])


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def passkey_prompts(model_or_tokenizer, n: int, n_tokens: int = 128, depth: float = 0.5, seed: int = 0,
                    digits: int = 5) -> list[PasskeySample]:
    """``n`` passkey prompts of about ``n_tokens`` tokens, key sentence at ``depth`` of the filler.

    The seed picks each key (``digits`` digits, no leading zero) and where the filler cycle
    starts. The prompt's real length is within one filler sentence (about 6 tokens) of
    ``n_tokens``; ``PasskeySample.n_tokens`` gives the exact count.
    """
    tok = _tokenizer(model_or_tokenizer)
    for name, v in (("n", n), ("n_tokens", n_tokens), ("digits", digits), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InputError(f"passkey_prompts: {name} must be an integer, got {v!r}.")
    if n < 1:
        raise InputError(f"passkey_prompts: n must be at least 1, got {n}.")
    if not 1 <= digits <= 12:
        raise InputError(f"passkey_prompts: digits must lie in 1..12, got {digits}.")
    if not isinstance(depth, (int, float)) or isinstance(depth, bool) or not 0.0 <= depth <= 1.0:
        raise InputError(f"passkey_prompts: depth must be a number in [0, 1], got {depth!r}.")
    n_ctx = getattr(getattr(model_or_tokenizer, "info", None), "n_ctx", None)
    if n_ctx is not None and n_tokens > n_ctx:
        raise InputError(f"passkey_prompts: n_tokens={n_tokens} exceeds the model's context of {n_ctx}.")
    minimal = len(_ids(tok, _join(INTRO, NEEDLE.format(key="9" * digits), QUESTION)))
    if n_tokens < minimal:
        raise InputError(f"passkey_prompts: n_tokens={n_tokens} is too short; the instruction, key sentence and "
                         f"question alone take {minimal} tokens with this tokenizer.")
    sent_len = [len(tok(" " + s, add_special_tokens=False)["input_ids"]) for s in FILLER]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        start = rng.randrange(len(FILLER))
        filler, total, i = [], minimal, start
        while total + sent_len[i % len(FILLER)] <= n_tokens:
            filler.append(FILLER[i % len(FILLER)])
            total += sent_len[i % len(FILLER)]
            i += 1
        k = round(depth * len(filler))
        before = _join(INTRO, " ".join(filler[:k]))
        prompt = _join(before, NEEDLE.format(key=key), " ".join(filler[k:]), QUESTION)
        answer = " " + key
        out.append(PasskeySample(
            prompt=prompt, answer=answer, answer_token_ids=tuple(continuation_ids(tok, prompt, answer)),
            depth=float(depth), n_tokens=len(_ids(tok, prompt)), needle_position=len(_ids(tok, before)),
        ))
    return out


@dataclass
class AnswerScore:
    """Scores of prompt/answer pairs; N pairs.

    correct: (N,) bool, greedy continuation starts with the answer (whitespace-stripped).
    answer_logprob: (N,) mean log-probability per answer token, teacher-forced, in nats.
    generated: (N,) the greedy continuations (as many tokens as the answer).
    """

    prompts: list[str]
    answers: list[str]
    correct: torch.Tensor
    answer_logprob: torch.Tensor
    generated: list[str]
    interventions: str = ""

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    @property
    def mean_logprob(self) -> float:
        return float(self.answer_logprob.mean())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "prompt": [p[-60:] for p in self.prompts], "answer": self.answers, "generated": self.generated,
            "correct": self.correct.tolist(), "answer_logprob": self.answer_logprob.tolist(),
        })

    def __repr__(self) -> str:
        iv = f", {self.interventions}" if self.interventions else ""
        return (f"AnswerScore({len(self.prompts)} prompt(s){iv}: accuracy {self.accuracy:.3f}, "
                f"mean answer log-prob {self.mean_logprob:.3f})")

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(repr(self))}</b>" + self.to_frame().to_html(index=False)


def score_answers(model, prompts: Sequence[str], answers: Sequence[str], interventions=(),
                  answer_token_ids: Sequence[Sequence[int]] | None = None) -> AnswerScore:
    """Greedy exact match and teacher-forced answer log-prob for each (prompt, answer) pair.

    Prompts run one at a time (no padding, so per-sequence interventions such as
    ``DisruptQKDims`` see only real tokens). The log-prob forward covers prompt + answer.
    """
    if isinstance(prompts, str) or isinstance(answers, str):
        raise InputError("score_answers takes lists of prompts and answers, not single strings.")
    prompts, answers = list(prompts), list(answers)
    if not prompts:
        raise InputError("score_answers: no prompts given.")
    if len(prompts) != len(answers):
        raise InputError(f"score_answers: {len(prompts)} prompts but {len(answers)} answers.")
    for i, (p, a) in enumerate(zip(prompts, answers)):
        if not isinstance(p, str) or not p or not isinstance(a, str) or not a.strip():
            raise InputError(f"score_answers: pair {i} needs a non-empty prompt and answer, got {p!r} -> {a!r}.")
    tok = model.tokenizer
    ans_ids = ([list(a) for a in answer_token_ids] if answer_token_ids is not None
               else [continuation_ids(tok, p, a) for p, a in zip(prompts, answers)])
    correct, logprob, generated = [], [], []
    for p, a, ids in zip(prompts, answers, ans_ids):
        prompt_ids, _ = model.tokenize(p)  # (1, P)
        full = torch.cat([prompt_ids, torch.tensor([ids], device=prompt_ids.device)], dim=1)  # (1, P + n)
        run = model.run(full, logits="all", interventions=interventions)
        start = prompt_ids.shape[1] - 1
        lp = torch.log_softmax(run.logits[0, start: start + len(ids)].double(), -1)  # (n, V)
        logprob.append(float(lp[torch.arange(len(ids)), torch.tensor(ids)].mean()))
        gen = model.generate(p, max_new_tokens=len(ids), interventions=interventions, stop_at_eos=True)
        generated.append(gen.text)
        correct.append(gen.text.strip().startswith(a.strip()))
    return AnswerScore(prompts, answers, torch.tensor(correct), torch.tensor(logprob, dtype=torch.float64),
                       generated, model.describe_interventions(interventions))


def score_passkey(model, samples: Sequence[PasskeySample], interventions=()) -> AnswerScore:
    """``score_answers`` on passkey samples (accuracy and mean answer log-prob)."""
    samples = list(samples)
    if not samples or not all(isinstance(s, PasskeySample) for s in samples):
        raise InputError("score_passkey needs a non-empty list of PasskeySample (from passkey_prompts()).")
    return score_answers(model, [s.prompt for s in samples], [s.answer for s in samples], interventions,
                         answer_token_ids=[s.answer_token_ids for s in samples])
