"""The bundled factual-recall prompts: loading, token positions, answer tokens and accuracy.

Dataset ``probes/data/facts/facts_v1.jsonl`` (one JSON object per line, built offline by
``scripts/build_facts.py`` from the ``countryinfo`` package plus hand-written tables; its
``facts_v1.meta.json`` records the build rules, counts and SmolLM2's accuracy). Each prompt uses
the SmolLM2-Instruct format that works on this model (see ``docs/factual.md``)::

    User: What is the capital city of France?
    Assistant: The capital city of France is

and the answer is the next word, with its leading space (``" Paris"``).

**Spans.** ``subject_span`` / ``relation_span`` are character spans of the mention in the
sentence being completed (the last line). The question repeats both, so ``token_positions``
returns, by default, the tokens of *every* whole-word occurrence of the subject text and of the
relation text (``all_mentions=False`` keeps only the spans). A token belongs to a group when its
character offsets overlap the group's text; subject wins over relation if a token overlaps both.
The prompt's **last token** (END, where the late heads read from) is never in either group: the
DLA gives it its own source group ``"last"``, whatever the spans cover.

Mentions are matched as whole words: the subject ``"a"`` is found in ``"a b"`` but not inside
``"capital"``. Checked when a fact is built: both spans non-empty and inside the prompt, the
subject text at its span, the relation span distinct from (and not inside) the subject span, and
not starting at character 0 (token 0 is the attention sink of a model without BOS, so its DLA
would be counted as "relation").

**Answer tokens (multi-token answers).** The answer's token is the *first* token of
``tokenizer(answer)``; the candidate tokens of a relation are the first tokens of its candidate
values. The build keeps only values whose first token (SmolLM2 tokenizer) is shared by no other
value of the same relation, so "first token correct" means "this candidate"; ``answer_token``
raises ``InputError`` when, under another tokenizer, the first token is whitespace or collides
with another candidate's first token (then pass token ids to the analyses directly).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from workbench.errors import InputError

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "facts"
DEFAULT_VERSION = "v1"
DEFAULT_PATH = DATA_DIR / f"facts_{DEFAULT_VERSION}.jsonl"


@dataclass(frozen=True)
class FactPrompt:
    """One factual prompt (see the module docstring for the conventions)."""

    id: str                         # "capital/France"
    relation: str                   # "capital"
    subject: str                    # "France"
    prompt: str                     # full text fed to the model; ends right before the answer
    answer: str                     # " Paris" (leading space included)
    candidates: tuple[str, ...]     # every candidate value of the relation (answer included)
    subject_span: tuple[int, int]   # char span of the subject in the completed sentence
    relation_span: tuple[int, int]  # char span of the relation words in the completed sentence

    def __post_init__(self):
        check_fact(self)

    def to_json(self) -> dict:
        d = asdict(self)
        d["candidates"] = list(self.candidates)
        d["subject_span"], d["relation_span"] = list(self.subject_span), list(self.relation_span)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FactPrompt":
        try:
            return cls(id=d["id"], relation=d["relation"], subject=d["subject"], prompt=d["prompt"],
                       answer=d["answer"], candidates=tuple(d["candidates"]),
                       subject_span=tuple(d["subject_span"]), relation_span=tuple(d["relation_span"]))
        except KeyError as e:
            raise InputError(f"Fact record is missing the field {e.args[0]!r}: {str(d)[:120]}") from None


def check_fact(f) -> None:
    """Raise InputError if a FactPrompt(-like) is inconsistent: spans, answer, candidates."""
    if not isinstance(f.prompt, str) or not f.prompt:
        raise InputError(f"Fact {f.id!r}: the prompt is empty.")
    for what, span, text in (("subject", f.subject_span, f.subject), ("relation", f.relation_span, None)):
        if len(span) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in span):
            raise InputError(f"Fact {f.id!r}: the {what} span must be two integers (start, end), got {span!r}.")
        a, b = span
        if a == b:
            raise InputError(f"Fact {f.id!r}: the {what} span {tuple(span)} is empty (start == end). Give the "
                             f"character span of the {what} words, end excluded, e.g. with make_fact().")
        if not (0 <= a < b <= len(f.prompt)):
            raise InputError(f"Fact {f.id!r}: {what} span {tuple(span)} lies outside the prompt "
                             f"({len(f.prompt)} chars).")
        if text is not None and f.prompt[a:b] != text:
            raise InputError(f"Fact {f.id!r}: the subject {text!r} is not found at {span} in the prompt "
                             f"(found {f.prompt[a:b]!r}). Use make_fact(), which locates it.")
    (sa, sb), (ra, rb) = f.subject_span, f.relation_span
    if (ra, rb) == (sa, sb):
        raise InputError(f"Fact {f.id!r}: the relation span {(ra, rb)} is the subject span; the relation span must "
                         "cover the relation words (e.g. 'capital city'), not the subject.")
    if sa <= ra and rb <= sb:
        raise InputError(f"Fact {f.id!r}: the relation span {(ra, rb)} lies inside the subject span {(sa, sb)}, so "
                         "no token would count as relation (subject wins). Point it at the relation words.")
    if ra == 0:
        raise InputError(f"Fact {f.id!r}: the relation span starts at character 0, so it covers token 0, the "
                         "attention sink of a model without BOS: every head parking attention there would look like "
                         "a relation head. Start the prompt with other text (e.g. a 'User: ...' question line).")
    if not f.answer.strip():
        raise InputError(f"Fact {f.id!r}: the answer is empty.")
    if f.answer not in f.candidates:
        raise InputError(f"Fact {f.id!r}: the answer {f.answer!r} is not among its relation's candidates.")
    if len(set(f.candidates)) < 2:
        raise InputError(f"Fact {f.id!r}: relation {f.relation!r} has only one candidate ({f.candidates}); "
                         "answer-versus-alternatives attribution needs at least two distinct candidates.")


def _whole_word(text: str, needle: str, what: str) -> tuple[int, int]:
    """Span of the last whole-word occurrence of ``needle`` in ``text``; InputError naming the problem."""
    if not isinstance(needle, str) or not needle.strip():
        raise InputError(f"The {what} text is empty ({needle!r}); give the words as they appear in the prompt.")
    found = _occurrences(text, needle)
    if found:
        return found[-1]
    if needle in text:
        i = text.index(needle)
        word = re.search(r"\w*" + re.escape(needle) + r"\w*", text[max(0, i - 40):i + len(needle) + 40]).group(0)
        raise InputError(f"The {what} {needle!r} occurs in the prompt only inside other words (e.g. {word!r}), never "
                         f"as a whole word. Give the whole word(s) as they appear in the prompt.")
    raise InputError(f"The {what} {needle!r} is not found in the prompt {text!r}. It must occur verbatim (same case "
                     "and spelling) in the prompt.")


def make_fact(relation: str, subject: str, prompt: str, answer: str, candidates: Sequence[str],
              relation_text: str, id: str | None = None) -> FactPrompt:
    """Build a FactPrompt, locating the subject and relation text (last whole-word occurrence) in ``prompt``.

    Raises InputError if the subject or the relation text does not occur in the prompt as whole
    words (``"a"`` inside ``"capital"`` does not count), or if the spans are unusable (see
    ``check_fact``).
    """
    if not isinstance(prompt, str) or not prompt:
        raise InputError("The prompt is empty.")
    s = _whole_word(prompt, subject, "subject")
    r = _whole_word(prompt, relation_text, "relation text")
    return FactPrompt(id or f"{relation}/{subject}", relation, subject, prompt, answer, tuple(candidates), s, r)


class FactSet(Sequence):
    """An immutable sequence of FactPrompts with relation helpers."""

    def __init__(self, facts, meta: dict | None = None):
        self._facts = list(facts)
        self.meta = dict(meta or {})
        if not self._facts:
            raise InputError("The fact set is empty: pass at least one FactPrompt (or check your filter).")
        for f in self._facts:
            if not isinstance(f, FactPrompt):
                raise InputError(f"FactSet holds FactPrompt objects, got {type(f).__name__}.")

    def __len__(self) -> int:
        return len(self._facts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return FactSet(self._facts[i], self.meta)
        return self._facts[i]

    def __iter__(self) -> Iterator[FactPrompt]:
        return iter(self._facts)

    def relations(self) -> list[str]:
        """Relation names in order of first appearance."""
        return list(dict.fromkeys(f.relation for f in self._facts))

    def by_relation(self, name: str) -> "FactSet":
        if name not in self.relations():
            raise InputError(f"Unknown relation {name!r}; this set has {', '.join(self.relations())}.")
        return FactSet([f for f in self._facts if f.relation == name], self.meta)

    def filter(self, fn: Callable[[FactPrompt], bool] | None = None, *, relation=None, ids=None) -> "FactSet":
        """Keep facts passing ``fn`` and, if given, of these relation(s) / ids."""
        rel = None if relation is None else ({relation} if isinstance(relation, str) else set(relation))
        idset = None if ids is None else set(ids)
        out = [f for f in self._facts if (fn is None or fn(f)) and (rel is None or f.relation in rel)
               and (idset is None or f.id in idset)]
        return FactSet(out, self.meta)

    def sample(self, n_per_relation: int, seed: int = 0) -> "FactSet":
        """Up to ``n_per_relation`` facts of each relation, drawn without replacement (seeded)."""
        rng = np.random.default_rng(seed)
        out = []
        for r in self.relations():
            group = [f for f in self._facts if f.relation == r]
            idx = sorted(rng.choice(len(group), size=min(n_per_relation, len(group)), replace=False).tolist())
            out += [group[i] for i in idx]
        return FactSet(out, self.meta)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"id": f.id, "relation": f.relation, "subject": f.subject, "answer": f.answer,
                              "n_candidates": len(f.candidates), "prompt": f.prompt} for f in self._facts])

    def __repr__(self) -> str:
        counts = ", ".join(f"{r}: {sum(f.relation == r for f in self._facts)}" for r in self.relations())
        return f"FactSet({len(self)} prompts; {counts})"

    def _repr_html_(self) -> str:
        import html

        return f"<b>{html.escape(repr(self))}</b>" + self.to_frame().head(10).to_html(index=False)


def load_facts(path=None) -> FactSet:
    """Load a facts jsonl (default: the bundled ``facts_v1.jsonl``) and its ``.meta.json`` if present."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise InputError(f"No facts file at {p}. Build it with `python scripts/build_facts.py`.")
    facts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                facts.append(FactPrompt.from_json(json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n} is not valid JSON ({e}).") from None
    meta_path = p.with_name(p.name.replace(".jsonl", ".meta.json"))
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not facts:
        raise InputError(f"The facts file {p} holds no prompts.")
    return FactSet(facts, meta)


# ------------------------------------------------------------------ tokens
def _offsets(model, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    """Char spans of the whole-word occurrences of ``needle``: a match may not continue a word, i.e.
    a word character of the needle at its edge must not touch another word character of ``text``."""
    def touches(i: int, edge: str) -> bool:
        return 0 <= i < len(text) and bool(re.match(r"\w", edge)) and bool(re.match(r"\w", text[i]))

    out, i = [], text.find(needle) if needle else -1
    while i >= 0:
        j = i + len(needle)
        if not touches(i - 1, needle[0]) and not touches(j, needle[-1]):
            out.append((i, j))
        i = text.find(needle, i + 1)
    return out


def span_positions(model, prompt: str, spans) -> list[int]:
    """Token positions (with the model's tokenizer) whose char offsets overlap any of ``spans``."""
    _, offs = _offsets(model, prompt)
    return [i for i, (a, b) in enumerate(offs) if b > a and any(a < e and s < b for s, e in spans)]


def token_positions(model, fact, all_mentions: bool = True) -> tuple[list[int], list[int]]:
    """(subject positions, relation positions) of a FactPrompt(-like) under ``model``'s tokenizer.

    all_mentions: also count the other whole-word occurrences of the subject / relation text (the
    question line); otherwise only ``subject_span`` / ``relation_span``. A token overlapping both
    groups counts as subject. The last token is in neither group (it is the DLA's own ``"last"``
    group). Raises InputError if the subject is not found in the prompt, covers no token but the
    last, or if a relation token is token 0 (the attention sink).
    """
    check_fact(fact)
    p = fact.prompt
    s_span, r_span = tuple(fact.subject_span), tuple(fact.relation_span)
    rel_text = p[r_span[0]:r_span[1]]
    s_spans = sorted(set(_occurrences(p, fact.subject)) | {s_span}) if all_mentions else [s_span]
    r_spans = sorted(set(_occurrences(p, rel_text)) | {r_span}) if all_mentions else [r_span]
    last = len(_offsets(model, p)[0]) - 1
    subj = [i for i in span_positions(model, p, s_spans) if i != last]
    rel = [i for i in span_positions(model, p, r_spans) if i not in set(subj) and i != last]
    if not subj:
        raise InputError(f"Subject {fact.subject!r} covers no token of the prompt {p!r} other than the last one "
                         "(the last token is its own group). End the prompt after the subject, e.g. with 'is'.")
    if 0 in rel:
        raise InputError(f"The relation text {rel_text!r} covers token 0 of the prompt {p!r}: token 0 is the "
                         "attention sink of a model without BOS, so its DLA would be counted as relation. Start the "
                         "prompt with other text, or pass all_mentions=False to use only relation_span.")
    return subj, rel


def first_token(model, text: str) -> int:
    """First token id of ``text`` (no special tokens); InputError if ``text`` has no token."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"{text!r} has no token under this tokenizer.")
    return int(ids[0])


def candidate_tokens(model, fact) -> tuple[int, list[int]]:
    """(answer token, first tokens of the *other* candidates), using the documented first-token rule.

    Raises InputError when the answer's first token is whitespace only (uninformative, e.g. a
    byte-level tokenizer) or is also the first token of another candidate value, and when fewer
    than one alternative remains.
    """
    ans = first_token(model, fact.answer)
    if not model.tokenizer.decode([ans]).strip():
        raise InputError(f"The first token of the answer {fact.answer!r} is whitespace under this tokenizer, so it "
                         "does not identify the answer. Pass answer token ids to the analysis directly.")
    others = []
    for c in fact.candidates:
        if c == fact.answer:
            continue
        t = first_token(model, c)
        if t == ans:
            raise InputError(f"Answer {fact.answer!r} and candidate {c!r} start with the same token "
                             f"{model.tokenizer.decode([ans])!r}: the first-token rule cannot tell them apart. "
                             "Drop one of them from the candidates.")
        if t not in others:
            others.append(t)
    if not others:
        raise InputError(f"Relation {fact.relation!r} of {fact.id!r} has no alternative candidate token.")
    return ans, others


def answer_token(model, fact) -> int:
    """First token of the answer (see ``candidate_tokens`` for the checks)."""
    return candidate_tokens(model, fact)[0]


# ------------------------------------------------------------------ accuracy
def evaluate_facts(model, facts, batch_size: int = 32) -> pd.DataFrame:
    """The model's accuracy on each prompt: one forward per batch, last-position logits only.

    Columns: id, relation, subject, answer, top1 (argmax token string), correct (argmax == answer
    token), p_answer (softmax probability of the answer token), rank_vocab (0 = argmax),
    rank_candidates (rank of the answer among its relation's candidate first tokens, 0 = best),
    n_candidates.
    """
    facts = list(facts)
    if not facts:
        raise InputError("evaluate_facts got no facts.")
    rows = []
    for i in range(0, len(facts), batch_size):
        chunk = facts[i:i + batch_size]
        with torch.no_grad():
            logits = model.run([f.prompt for f in chunk], logits="last").last_logits.float()
        for f, lg in zip(chunk, logits):
            ans, others = candidate_tokens(model, f)
            top = int(lg.argmax())
            cand = lg[torch.tensor([ans] + others)]
            rows.append({"id": f.id, "relation": f.relation, "subject": f.subject, "answer": f.answer,
                         "top1": model.tokenizer.decode([top]), "correct": top == ans,
                         "p_answer": float(torch.softmax(lg, -1)[ans]),
                         "rank_vocab": int((lg > lg[ans]).sum()), "rank_candidates": int((cand[1:] > cand[0]).sum()),
                         "n_candidates": len(others) + 1})
    return pd.DataFrame(rows)


def accuracy_table(evals: pd.DataFrame) -> pd.DataFrame:
    """Per relation (and overall): n, top-1 accuracy, top-1 among candidates, mean candidate rank."""
    def agg(g):
        return pd.Series({"n": len(g), "acc_vocab_top1": g["correct"].mean(),
                          "acc_candidates_top1": (g["rank_candidates"] == 0).mean(),
                          "mean_rank_candidates": g["rank_candidates"].mean(),
                          "median_p_answer": g["p_answer"].median(), "n_candidates": int(g["n_candidates"].max())})
    table = evals.groupby("relation", sort=False).apply(agg, include_groups=False)
    table.loc["all"] = agg(evals)
    table["n"] = table["n"].astype(int)
    table["n_candidates"] = table["n_candidates"].astype(int)
    return table
