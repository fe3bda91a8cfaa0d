"""Constraint prompts with one or two constraints, and verifiers of full answers, built offline.

For the SAT probe (Yuksekgonul et al., ICLR 2024, "Attention Satisfies"): a ``ConstraintPrompt``
holds a prompt in the SmolLM2-Instruct "User: … / Assistant: …" format that ends where the answer
starts, its constraints (each a string and that string's character span in the prompt, in a fixed
order), and a verifier that says whether a completion satisfies every constraint.

Datasets (no downloads):

- ``word_prompts(n_constraints)``: the paper's "Words" data. One constraint: "Tell me a word that
  starts with the letter 'e'." (or "ends with"); two: "... starts with the letter 'e' and ends with
  the letter 'g'." Correct = the completion's first word has the letters, at least 3 of them, and is a
  WordNet 3.0 lemma (or an inflection of one, by WordNet's morphy). Letter pairs are drawn
  (seeded) among those with at least ``min_words`` WordNet words.
- ``country_prompts(n_constraints)``: from the ``countryinfo`` package. One constraint: "Name a
  country in {region}." / "... whose capital starts with the letter 'T'." / "... whose official
  language is French."; two: a region (or subregion) and a language, or a region and the capital's
  first letter. Correct = the completion names (at its start) a country in the set of valid answers
  (every countryinfo entry that meets the constraints, territories included).
- ``fact_constraint_prompts(facts)``: bundled fact prompts as one-constraint prompts (the subject);
  correct = the completion starts with the answer.
"""
from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

from workbench.errors import InputError

WORD_TEMPLATE = "User: Tell me a word that {c}.\nAssistant: The word is"
COUNTRY_TEMPLATE = "User: Name a country{c}.\nAssistant: The country is"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# ISO 639-1 codes (countryinfo's "languages") of languages official in several countries.
LANGUAGE_NAMES = {"en": "English", "fr": "French", "ar": "Arabic", "es": "Spanish", "pt": "Portuguese",
                  "ru": "Russian", "de": "German", "zh": "Chinese", "it": "Italian", "nl": "Dutch", "sw": "Swahili"}
REGION_PHRASES = {"Americas": "the Americas"}  # region names that need an article in a sentence


@dataclass(frozen=True)
class Constraint:
    """One constraint: its text and the (start, end) character span of that text in the prompt."""

    text: str
    span: tuple[int, int]


@dataclass(frozen=True)
class ConstraintPrompt:
    """A prompt, its constraints (fixed order) and a verifier ``completion -> bool`` (all satisfied).

    valid: the set of accepted answers when it is finite (countries, a fact's answer), else None.
    """

    prompt: str
    constraints: tuple[Constraint, ...]
    verifier: Callable[[str], bool] = field(repr=False, compare=False)
    dataset: str = ""
    valid: frozenset[str] | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.constraints:
            raise InputError(f"A constraint prompt needs at least one constraint: {self.prompt!r}.")
        for c in self.constraints:
            a, b = c.span
            if not 0 <= a < b <= len(self.prompt) or self.prompt[a:b] != c.text:
                raise InputError(f"Constraint {c.text!r} has span {c.span}, which reads "
                                 f"{self.prompt[max(a, 0):max(b, 0)]!r} in the prompt {self.prompt!r}.")

    def check(self, completion: str) -> bool:
        """True when ``completion`` (the text generated after the prompt) satisfies every constraint."""
        return bool(self.verifier(completion))


def _build(template: str, parts: Sequence[str], constraint_texts: Sequence[str]) -> tuple[str, tuple[Constraint, ...]]:
    """Fill ``template``'s {c} with the joined ``parts``; locate each constraint text (in order) in the prompt."""
    prompt = template.format(c="".join(parts))
    out, start = [], 0
    for t in constraint_texts:
        a = prompt.find(t, start)
        if a < 0:
            raise InputError(f"Constraint {t!r} is not in the prompt {prompt!r}.")
        out.append(Constraint(t, (a, a + len(t))))
        start = a + len(t)
    return prompt, tuple(out)


# ------------------------------------------------------------------------------------------ words
def first_word(completion: str) -> str:
    """The first run of letters in ``completion``, lower-cased ('' when none): ' "Echo".' -> 'echo'."""
    m = re.search(r"[^\W\d_]+", completion)
    return m.group(0).lower() if m else ""


@lru_cache(maxsize=1)
def wordnet_words() -> frozenset[str]:
    """Lower-case single-word WordNet 3.0 lemmas made of ASCII letters (the offline Debian copy)."""
    from probes.frames.wordnet import get_wordnet

    return frozenset(w.lower() for w in get_wordnet().all_lemma_names() if w.isascii() and w.isalpha())


def is_english_word(word: str) -> bool:
    """A WordNet lemma or an inflection of one (WordNet's morphy), at least 2 letters."""
    from probes.frames.wordnet import get_wordnet

    w = word.lower()
    if len(w) < 2 or not w.isalpha():
        return False
    return w in wordnet_words() or get_wordnet().morphy(w) is not None


def verify_word(completion: str, start: str | None = None, end: str | None = None, min_len: int = 3) -> bool:
    """The completion's first word starts with ``start``, ends with ``end``, has at least ``min_len``
    letters and is an English word. (WordNet lists chemical symbols such as 'bh' and 'ce': without the
    length floor, answering with the two letters themselves would count.)"""
    w = first_word(completion)
    return (len(w) >= min_len and (start is None or w.startswith(start)) and (end is None or w.endswith(end))
            and is_english_word(w))


def letter_pairs(min_words: int = 20, min_len: int = 3) -> dict[tuple[str, str], int]:
    """(first letter, last letter) -> number of WordNet words (≥ ``min_len`` letters) with them, for
    pairs with at least ``min_words`` words."""
    counts: dict[tuple[str, str], int] = {}
    for w in wordnet_words():
        if len(w) >= min_len:
            counts[w[0], w[-1]] = counts.get((w[0], w[-1]), 0) + 1
    return {k: v for k, v in sorted(counts.items()) if v >= min_words}


def _start(x: str) -> str:
    return f"starts with the letter '{x}'"


def _end(x: str) -> str:
    return f"ends with the letter '{x}'"


def word_prompts(n_constraints: int = 2, n: int | None = None, seed: int = 0,
                 min_words: int = 20) -> list[ConstraintPrompt]:
    """The Words dataset: one constraint (each feasible first letter, then each feasible last letter)
    or two (a first and a last letter; constraints in that order). ``n``: a seeded sample (default all)."""
    if n_constraints not in (1, 2):
        raise InputError(f"word_prompts builds one- or two-constraint prompts, got n_constraints={n_constraints}.")
    pairs = letter_pairs(min_words)
    if n_constraints == 1:
        firsts = sorted({a for a, _ in pairs})
        lasts = sorted({b for _, b in pairs})
        specs = [((_start(a),), dict(start=a)) for a in firsts] + [((_end(b),), dict(end=b)) for b in lasts]
    else:
        specs = [((_start(a), _end(b)), dict(start=a, end=b)) for a, b in pairs]
    if n is not None:
        if n < 1:
            raise InputError(f"n must be at least 1, got {n}.")
        specs = [specs[i] for i in sorted(random.Random(seed).sample(range(len(specs)), min(n, len(specs))))]
    out = []
    for texts, kw in specs:
        prompt, cons = _build(WORD_TEMPLATE, [" and ".join(texts)], texts)
        out.append(ConstraintPrompt(prompt, cons, partial(verify_word, **kw), f"words_{n_constraints}"))
    return out


# ------------------------------------------------------------------------------------------ countries
def _fold(text: str) -> str:
    """Lower-case, accents removed ('Curaçao' -> 'curacao')."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


@dataclass(frozen=True)
class CountryRecord:
    """One countryinfo entry: canonical name, region, subregion, language names, capital, aliases."""

    name: str
    region: str
    subregion: str
    languages: tuple[str, ...]
    capital: str
    aliases: tuple[str, ...]


@lru_cache(maxsize=1)
def country_table() -> tuple[CountryRecord, ...]:
    """Every countryinfo entry with a name and a region (territories included), sorted by name."""
    from countryinfo import all_countries

    out = {}
    for c in all_countries():
        d = c.info()
        name, region = d.get("name"), d.get("region")
        if not isinstance(name, str) or not name or not isinstance(region, str) or not region:
            continue
        name = name[0].upper() + name[1:]
        sub = (d.get("subregion") or "").replace("South-Eastern", "South-eastern")
        langs = tuple(LANGUAGE_NAMES[x] for x in d.get("languages") or () if x in LANGUAGE_NAMES)
        alts = [a.strip() for a in d.get("altSpellings") or () if isinstance(a, str) and a.strip()]
        aliases = {name, *(a for a in alts if not (a.isupper() and len(a) <= 3)),  # drop ISO codes ...
                   *(a for a in alts if a in ("USA", "UK"))}  # ... except the two used as names
        if name.startswith("The "):
            aliases.add(name[4:])
        out[name] = CountryRecord(name, region, sub, langs, d.get("capital") or "", tuple(sorted(aliases)))
    return tuple(out[k] for k in sorted(out))


@lru_cache(maxsize=1)
def _alias_index() -> tuple[tuple[str, str], ...]:
    """(folded alias, canonical name), longest alias first (so 'Guinea-Bissau' wins over 'Guinea')."""
    pairs = {(_fold(a), r.name) for r in country_table() for a in r.aliases}
    return tuple(sorted(pairs, key=lambda p: (-len(p[0]), p)))


def answer_country(completion: str) -> str | None:
    """The country the completion names at its start (after spaces, quotes, 'the '), or None."""
    text = _fold(completion).lstrip(" \t\n\"'*")
    text = text[4:] if text.startswith("the ") else text
    for alias, name in _alias_index():
        if text.startswith(alias) and not text[len(alias):len(alias) + 1].isalnum():
            return name
    return None


def verify_country(completion: str, valid: frozenset[str]) -> bool:
    """The completion names a country in ``valid`` (canonical countryinfo names)."""
    return answer_country(completion) in valid


def _place(region: str) -> str:
    return REGION_PHRASES.get(region, region)


def country_prompts(n_constraints: int = 2, n: int | None = None, seed: int = 0,
                    places: str = "both") -> list[ConstraintPrompt]:
    """Country prompts with a finite set of valid answers (each set non-empty).

    One constraint: a region or subregion; a capital's first letter; an official language. Two: a
    region or subregion first, then a language or a capital's first letter. places: "region",
    "subregion" or "both". ``n``: a seeded sample (default all).
    """
    if n_constraints not in (1, 2):
        raise InputError(f"country_prompts builds one- or two-constraint prompts, got n_constraints={n_constraints}.")
    if places not in ("region", "subregion", "both"):
        raise InputError(f"places must be 'region', 'subregion' or 'both', got {places!r}.")
    table = country_table()
    by_place: dict[str, set[str]] = {}
    for r in table:
        for p, use in ((r.region, places != "subregion"), (r.subregion, places != "region")):
            if use and p:
                by_place.setdefault(_place(p), set()).add(r.name)
    by_lang = {lang: {r.name for r in table if lang in r.languages} for lang in LANGUAGE_NAMES.values()}
    by_letter: dict[str, set[str]] = {}
    for r in table:
        if r.capital and _fold(r.capital[0]).isalpha():
            by_letter.setdefault(_fold(r.capital[0]).upper(), set()).add(r.name)

    def lang(x):
        return f"whose official language is {x}"

    def cap(x):
        return f"whose capital starts with the letter '{x}'"

    specs: list[tuple[list[str], list[str], set[str]]] = []  # (prompt parts, constraint texts, valid)
    if n_constraints == 1:
        specs += [([f" in {p}"], [p], v) for p, v in sorted(by_place.items())]
        specs += [([" " + cap(x)], [cap(x)], v) for x, v in sorted(by_letter.items())]
        specs += [([" " + lang(x)], [lang(x)], v) for x, v in sorted(by_lang.items()) if v]
    else:
        for p, pv in sorted(by_place.items()):
            specs += [([f" in {p} ", lang(x)], [p, lang(x)], pv & v) for x, v in sorted(by_lang.items()) if pv & v]
            specs += [([f" in {p} ", cap(x)], [p, cap(x)], pv & v) for x, v in sorted(by_letter.items()) if pv & v]
    if n is not None:
        if n < 1:
            raise InputError(f"n must be at least 1, got {n}.")
        specs = [specs[i] for i in sorted(random.Random(seed).sample(range(len(specs)), min(n, len(specs))))]
    out = []
    for parts, texts, valid in specs:
        prompt, cons = _build(COUNTRY_TEMPLATE, parts, texts)
        v = frozenset(valid)
        out.append(ConstraintPrompt(prompt, cons, partial(verify_country, valid=v), f"countries_{n_constraints}", v))
    return out


# ------------------------------------------------------------------------------------------ facts
def verify_answer(completion: str, answer: str) -> bool:
    """The completion starts with ``answer`` (spaces stripped, case-insensitive, accents folded) and the
    answer ends there (no letter or digit follows)."""
    text, ans = _fold(completion).lstrip(), _fold(answer).strip()
    return bool(ans) and text.startswith(ans) and not text[len(ans):len(ans) + 1].isalnum()


def fact_constraint_prompts(facts) -> list[ConstraintPrompt]:
    """Fact prompts (``.prompt``, ``.subject``, ``.answer``, optional ``.subject_span``) as one-constraint
    prompts: the constraint is the subject; correct = the completion starts with the answer."""
    out = []
    for i, f in enumerate(facts):
        prompt, subject, answer = getattr(f, "prompt", None), getattr(f, "subject", None), getattr(f, "answer", None)
        if not all(isinstance(x, str) and x for x in (prompt, subject, answer)):
            raise InputError(f"Fact {i} needs a prompt, a subject and an answer (strings), got {f!r}.")
        span = getattr(f, "subject_span", None)
        span = tuple(span) if span is not None else (prompt.rfind(subject), prompt.rfind(subject) + len(subject))
        out.append(ConstraintPrompt(prompt, (Constraint(subject, span),), partial(verify_answer, answer=answer),
                                    "facts", frozenset({answer.strip()})))
    return out


__all__ = ["Constraint", "ConstraintPrompt", "CountryRecord", "word_prompts", "country_prompts",
           "fact_constraint_prompts", "verify_word", "verify_country", "verify_answer", "answer_country",
           "first_word", "is_english_word", "wordnet_words", "letter_pairs", "country_table", "LANGUAGE_NAMES"]
