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

from ..errors import InputError

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
    sentence starts; context / question: the prompt split in two (``prompt == context + question``,
    the question with its leading space), for the query-agnostic setting where the context is
    compressed before the question is known (``split_ids``).
    """

    prompt: str
    answer: str
    answer_token_ids: tuple[int, ...]
    depth: float
    n_tokens: int
    needle_position: int
    context: str = ""
    question: str = ""

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
        context = _join(before, NEEDLE.format(key=key), " ".join(filler[k:]))
        prompt = _join(context, QUESTION)
        answer = " " + key
        out.append(PasskeySample(
            prompt=prompt, answer=answer, answer_token_ids=tuple(continuation_ids(tok, prompt, answer)),
            depth=float(depth), n_tokens=len(_ids(tok, prompt)), needle_position=len(_ids(tok, before)),
            context=context, question=" " + QUESTION,
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
    setting: str = ""  # with a cache policy: "query-aware" or "query-agnostic" and the policy's name

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
        iv += f", {self.setting}" if self.setting else ""
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


def score_passkey(model, samples: Sequence[PasskeySample], interventions=(), *, cache_policy=None,
                  query_aware: bool = True) -> AnswerScore:
    """``score_answers`` on passkey samples (accuracy and mean answer log-prob).

    With a ``cache_policy`` the answers come from a compressed cache: ``query_aware=True`` compresses
    prompt and question together (``model.generate(prompt, cache_policy=...)``; the first answer token
    is predicted from the prefill, as in ``generate``), ``query_aware=False`` compresses the context
    alone and then asks the question (``workbench.questions``; every answer token comes from the
    compressed cache). The log-prob is teacher-forced the same way. The policy object is reused for
    every sample (policies reset their per-sequence state at each new prompt)."""
    samples = list(samples)
    if not samples or not all(isinstance(s, PasskeySample) for s in samples):
        raise InputError("score_passkey needs a non-empty list of PasskeySample (from passkey_prompts()).")
    if cache_policy is None and query_aware:
        return score_answers(model, [s.prompt for s in samples], [s.answer for s in samples], interventions,
                             answer_token_ids=[s.answer_token_ids for s in samples])
    return score_compressed(model, samples, cache_policy, query_aware, interventions)


def score_compressed(model, samples: Sequence, cache_policy, query_aware: bool, interventions=()) -> AnswerScore:
    """Greedy exact match and teacher-forced answer log-prob of PasskeySample/TaskSample answers from a cache
    compressed by ``cache_policy`` (None: the full cache) in the query-aware or query-agnostic setting
    (see ``score_passkey``)."""
    from ..generation import prefill
    from ..questions import compress_context

    correct, logprob, generated = [], [], []
    for s in samples:
        ans_ids = list(s.answer_token_ids)
        if query_aware:
            cache, first = prefill(model, s.prompt, cache_policy, interventions, return_logits=True)
            rest = torch.tensor([ans_ids[:-1]], device=first.device)
            with model.session(interventions=interventions) as sess:
                later = sess.forward_cached(cache.copy(), rest)[0] if len(ans_ids) > 1 else first[None][:0]
            logits = torch.cat([first[None], later])
            gen = model.generate(s.prompt, max_new_tokens=len(ans_ids), cache_policy=cache_policy,
                                 interventions=interventions).text
        else:
            ctx_ids, q_ids = split_ids(model, s)
            ctx = compress_context(model, ctx_ids, cache_policy, interventions=interventions)
            feed = torch.cat([q_ids, torch.tensor([ans_ids[:-1]], device=q_ids.device, dtype=q_ids.dtype)], 1)
            with model.session(interventions=interventions) as sess:
                logits = sess.forward_cached(ctx.cache.copy(), feed)[0, q_ids.shape[1] - 1:]
            gen = ctx.ask(q_ids, max_new_tokens=len(ans_ids), interventions=interventions).text
        lp = torch.log_softmax(logits.double(), -1)
        logprob.append(float(lp[torch.arange(len(ans_ids)), torch.tensor(ans_ids, device=lp.device)].mean()))
        generated.append(gen)
        correct.append(score_text(s, gen) == 1.0)
    name = "full cache" if cache_policy is None else str(cache_policy.name)
    return AnswerScore([s.prompt for s in samples], [s.answer for s in samples], torch.tensor(correct),
                       torch.tensor(logprob, dtype=torch.float64), generated,
                       model.describe_interventions(interventions),
                       f"{'query-aware' if query_aware else 'query-agnostic'}, {name}")


# ---------------------------------------------------------------------------------------------- RULER-style tasks
# Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language Models?" (2024):
# needle-in-a-haystack (single, multi-key, multi-value) and variable tracking, generated here
# offline from fixed word lists and the passkey filler, deterministic given the seed.

NEEDLE_KINDS = ("single", "multikey", "multivalue")
NIAH_INTRO = "Some magic numbers are hidden in the text below. Memorize them."
NIAH_NEEDLE = "The magic number for {key} is {value}."
NIAH_QUESTION = "What is the magic number for {key}? The magic number for {key} is"
NIAH_QUESTION_ALL = "What are all the magic numbers for {key}? The magic numbers for {key} are"
VT_INTRO = "Memorize and track the chain of variable assignments hidden in the text below."
VT_QUESTION = ("Find all variables that are assigned the value {value} in the text above. Answer: "
               "{n} variables are assigned the value {value}, they are:")
NIAH_KEYS = ("apple", "river", "candle", "falcon", "garden", "harbor", "island", "jacket", "kettle", "lantern",
             "meadow", "needle", "orange", "pepper", "quartz", "rabbit", "saddle", "tomato", "violin", "walnut",
             "yellow", "zebra", "anchor", "button", "copper", "dragon", "engine", "forest", "glacier", "hammer")


@dataclass(frozen=True)
class TaskSample:
    """One RULER-style prompt.

    kind: "single" | "multikey" | "multivalue" | "variable_tracking"; prompt: the full text;
    answers: every value the continuation must produce (one for single/multikey); answer: the
    reference continuation (the answers joined, with a leading space); answer_token_ids: its
    tokens as a continuation of the prompt; n_tokens: the prompt's real token count;
    needle_positions: token index where each inserted sentence (needle or assignment) starts;
    context / question: the prompt split in two (``prompt == context + question``), for the
    query-agnostic setting (``split_ids``); other_questions: for multi-key prompts, (question,
    answer) for every *other* key of the same context, so one compressed context can be asked about
    each of them (compress once, ask many).
    Score a continuation with ``score_text``: exact match for single/multikey, fraction of the
    answers produced for multivalue and variable tracking.
    """

    kind: str
    prompt: str
    answers: tuple[str, ...]
    answer: str
    answer_token_ids: tuple[int, ...]
    n_tokens: int
    needle_positions: tuple[int, ...]
    query: str = ""
    context: str = ""
    question: str = ""
    other_questions: tuple[tuple[str, str], ...] = ()

    @property
    def all_required(self) -> bool:
        return self.kind in ("multivalue", "variable_tracking")


def score_text(sample, text: str) -> float:
    """Score a greedy continuation ``text`` for ``sample`` (a PasskeySample or TaskSample).

    Single answers: 1.0 when the stripped continuation starts with the stripped answer (exact match),
    else 0.0. Multi-value and variable tracking: the fraction of ``answers`` that occur in the
    continuation as whole words, in any order.
    """
    if not isinstance(text, str):
        raise InputError(f"score_text: the continuation must be a string, got {type(text).__name__}.")
    if isinstance(sample, TaskSample) and sample.all_required:
        import re

        found = [re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text) is not None for a in sample.answers]
        return sum(found) / len(found)
    if isinstance(sample, (TaskSample, PasskeySample)):
        return float(text.strip().startswith(sample.answer.strip()))
    raise InputError(f"score_text: expected a PasskeySample or TaskSample, got {type(sample).__name__}.")


def _check_common(fn: str, model_or_tokenizer, n, n_tokens, seed):
    tok = _tokenizer(model_or_tokenizer)
    for name, v in (("n", n), ("n_tokens", n_tokens), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise InputError(f"{fn}: {name} must be an integer, got {v!r}.")
    if n < 1:
        raise InputError(f"{fn}: n must be at least 1, got {n}.")
    n_ctx = getattr(getattr(model_or_tokenizer, "info", None), "n_ctx", None)
    if n_ctx is not None and n_tokens > n_ctx:
        raise InputError(f"{fn}: n_tokens={n_tokens} exceeds the model's context of {n_ctx}.")
    return tok


def _haystack(tok, fn: str, intro: str, needles: list[str], question: str, n_tokens: int,
              rng: random.Random) -> tuple[str, str, tuple[int, ...]]:
    """Intro, filler with ``needles`` inserted in order at random depths, question; about n_tokens tokens.
    Returns (prompt, context = the prompt without the question, needle start positions)."""
    minimal = len(_ids(tok, _join(intro, *needles, question)))
    if n_tokens < minimal:
        raise InputError(f"{fn}: n_tokens={n_tokens} is too short; the instruction, inserted sentences and question "
                         f"alone take {minimal} tokens with this tokenizer.")
    sent_len = [len(tok(" " + s, add_special_tokens=False)["input_ids"]) for s in FILLER]
    filler, total, i = [], minimal, rng.randrange(len(FILLER))
    while total + sent_len[i % len(FILLER)] <= n_tokens:
        filler.append(FILLER[i % len(FILLER)])
        total += sent_len[i % len(FILLER)]
        i += 1
    slots = sorted(rng.randint(0, len(filler)) for _ in needles)  # insertion points, needles keep their order
    parts, befores, last = [intro], [], 0
    for slot, needle in zip(slots, needles):
        parts.extend(filler[last:slot])
        befores.append(" ".join(p for p in parts if p))
        parts.append(needle)
        last = slot
    parts.extend(filler[last:])
    context = " ".join(p for p in parts if p)
    prompt = _join(context, question)
    return prompt, context, tuple(len(_ids(tok, b)) for b in befores)


def needle_prompts(model_or_tokenizer, n: int, n_tokens: int = 256, kind: str = "single", seed: int = 0, *,
                   n_keys: int = 4, n_values: int = 3, digits: int = 7) -> list[TaskSample]:
    """``n`` RULER-style needle-in-a-haystack prompts of about ``n_tokens`` tokens.

    kind="single": one needle "The magic number for KEY is VALUE." in the filler; the question asks
    for it. "multikey": ``n_keys`` needles with different keys (distractors), one of them queried.
    "multivalue": one key with ``n_values`` needles, every value must be answered (order of
    appearance in the answer; any order scores). Keys come from a fixed word list, values are
    ``digits``-digit numbers (no leading zero), all distinct; needles sit at random depths.
    The prompt's real length is within one filler sentence of ``n_tokens`` (see ``n_tokens``).
    """
    fn = "needle_prompts"
    tok = _check_common(fn, model_or_tokenizer, n, n_tokens, seed)
    if kind not in NEEDLE_KINDS:
        raise InputError(f"{fn}: kind must be one of {NEEDLE_KINDS}, got {kind!r}.")
    for name, v, hi in (("n_keys", n_keys, len(NIAH_KEYS)), ("n_values", n_values, 20), ("digits", digits, 12)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            raise InputError(f"{fn}: {name} must be an integer in 1..{hi}, got {v!r}.")
    if digits < 3:
        raise InputError(f"{fn}: digits must be at least 3 so values stay distinct, got {digits}.")
    rng = random.Random(f"{seed}-{kind}")
    out = []
    for _ in range(n):
        n_k = n_keys if kind == "multikey" else 1
        n_v = n_values if kind == "multivalue" else n_k
        keys = rng.sample(NIAH_KEYS, n_k)
        values = [str(v) for v in rng.sample(range(10 ** (digits - 1), 10 ** digits), n_v)]
        query = keys[0] if kind != "multikey" else rng.choice(keys)
        if kind == "multivalue":
            needles = [NIAH_NEEDLE.format(key=query, value=v) for v in values]
            answers = tuple(values)
            question = NIAH_QUESTION_ALL.format(key=query)
        else:
            pairs = list(zip(keys, values))
            rng.shuffle(pairs)
            needles = [NIAH_NEEDLE.format(key=k, value=v) for k, v in pairs]
            answers = (dict(pairs)[query],)
            question = NIAH_QUESTION.format(key=query)
        prompt, context, positions = _haystack(tok, fn, NIAH_INTRO, needles, question, n_tokens, rng)
        answer = " " + ", ".join(answers)
        others = tuple((" " + NIAH_QUESTION.format(key=k), " " + v) for k, v in zip(keys, values) if k != query) \
            if kind == "multikey" else ()
        out.append(TaskSample(kind, prompt, answers, answer, tuple(continuation_ids(tok, prompt, answer)),
                              len(_ids(tok, prompt)), positions, query, context, " " + question, others))
    return out


def variable_tracking_prompts(model_or_tokenizer, n: int, n_tokens: int = 256, seed: int = 0, *,
                              n_hops: int = 4, n_chains: int = 1, digits: int = 5) -> list[TaskSample]:
    """``n`` RULER variable-tracking prompts of about ``n_tokens`` tokens.

    Each chain starts "VAR ABCDE = 12345." and continues with ``n_hops`` assignments
    "VAR FGHIJ = VAR ABCDE." (each new variable copies the previous one), the statements spread
    through the filler in order. With ``n_chains`` > 1 the other chains (different values) are
    distractors, interleaved. The question asks which variables hold the first chain's value;
    answers: its ``n_hops + 1`` variable names (5 random capital letters, all distinct), the reference
    answer lists them in chain order; ``score_text`` gives the fraction named.
    """
    fn = "variable_tracking_prompts"
    tok = _check_common(fn, model_or_tokenizer, n, n_tokens, seed)
    for name, v, lo, hi in (("n_hops", n_hops, 1, 20), ("n_chains", n_chains, 1, 10), ("digits", digits, 3, 12)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise InputError(f"{fn}: {name} must be an integer in {lo}..{hi}, got {v!r}.")
    rng = random.Random(f"{seed}-vt")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(n):
        names: set[str] = set()
        while len(names) < n_chains * (n_hops + 1):
            names.add("".join(rng.choice(letters) for _ in range(5)))
        names_l = sorted(names)
        rng.shuffle(names_l)
        values = [str(v) for v in rng.sample(range(10 ** (digits - 1), 10 ** digits), n_chains)]
        chains = []
        for c in range(n_chains):
            vs = names_l[c * (n_hops + 1):(c + 1) * (n_hops + 1)]
            stmts = [f"VAR {vs[0]} = {values[c]}."] + [f"VAR {vs[i]} = VAR {vs[i - 1]}." for i in range(1, len(vs))]
            chains.append((vs, stmts))
        # interleave the chains' statements, keeping each chain's order
        queues = [list(s) for _, s in chains]
        needles = []
        while any(queues):
            q = rng.choice([q for q in queues if q])
            needles.append(q.pop(0))
        answers = tuple(chains[0][0])
        question = VT_QUESTION.format(value=values[0], n=len(answers))
        prompt, context, positions = _haystack(tok, fn, VT_INTRO, needles, question, n_tokens, rng)
        answer = " " + " ".join(answers)
        out.append(TaskSample("variable_tracking", prompt, answers, answer,
                              tuple(continuation_ids(tok, prompt, answer)), len(_ids(tok, prompt)), positions,
                              values[0], context, " " + question))
    return out


def split_ids(model, sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(context ids (1, Tc), question ids (1, Tq)) of a PasskeySample or TaskSample, on the model's device.

    The split is of the prompt's own tokens: ``cat(context, question)`` equals the prompt's ids, so the
    query-aware and query-agnostic settings see exactly the same tokens. (If the tokenizer merged
    tokens across the boundary, which does not happen with the space-led questions here, the
    question is tokenized on its own.)
    """
    if not isinstance(sample, (PasskeySample, TaskSample)):
        raise InputError(f"split_ids: expected a PasskeySample or TaskSample, got {type(sample).__name__}.")
    if not sample.context or not sample.question:
        raise InputError("split_ids: this sample has no context/question split (made by an older version?); "
                         "regenerate it with passkey_prompts / needle_prompts / variable_tracking_prompts.")
    full, _ = model.tokenize(sample.prompt)
    ctx, _ = model.tokenize(sample.context)
    n = ctx.shape[1]
    if n < full.shape[1] and torch.equal(full[:, :n], ctx):
        return ctx, full[:, n:]
    q = model.tokenizer(sample.question, add_special_tokens=False)["input_ids"]
    return ctx, torch.tensor([q], device=ctx.device)
