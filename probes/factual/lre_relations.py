"""Relations for LRE studies, built offline, and the few-shot prompts the LRE paper estimates on.

A relation is a list of (subject, object) pairs and a plain-text template (no chat format), e.g.
``"The capital city of {s} is"`` with ("France", "Paris"). Hernandez et al. estimate every
Jacobian on an *in-context* prompt: a few demonstrations of the same relation, one per line,
then the query::

    The capital city of Japan is Tokyo.
    The capital city of Kenya is Nairobi.
    The capital city of France is

``few_shot_samples`` builds such prompts; the demonstrations of a prompt never include its own
subject, and are drawn (seeded) from a pool the caller chooses (the paper: the training subjects).

Built-in relations (offline): ``capital`` and ``demonym`` from the ``countryinfo`` package,
``antonym`` (adjective antonyms) from the system WordNet.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from workbench.errors import InputError

from .lre import RelationSample, country_pairs

FEW_SHOT_TEMPLATES = {
    "capital": "The capital city of {s} is",
    "demonym": "A person from {s} is called",
    "antonym": "The opposite of {s} is",
}


def _antonym_pairs() -> list[tuple[str, str]]:
    """Adjectives with a direct WordNet antonym, both single lowercase words, one pair per subject, in the
    order of the lemmas' WordNet frequency counts (common words first)."""
    from probes.frames.wordnet import get_wordnet
    wn = get_wordnet()
    rows, seen = [], set()
    for syn in wn.all_synsets("a"):
        for lem in syn.lemmas():
            word = lem.name()
            for ant in lem.antonyms():
                other = ant.name()
                if word in seen or not (word.isalpha() and other.isalpha() and word.islower() and other.islower()):
                    continue
                seen.add(word)
                rows.append((-(lem.count() + ant.count()), word, other))
    rows.sort()
    return [(w, o) for _, w, o in rows]


def relation_pairs(relation: str, n: int | None = None, min_population: int = 1_000_000) -> list[tuple[str, str]]:
    """(subject, object) pairs of a built-in relation, best-known subjects first; the first ``n``."""
    if relation not in FEW_SHOT_TEMPLATES:
        raise InputError(f"Unknown built-in relation {relation!r}; available: {', '.join(FEW_SHOT_TEMPLATES)}.")
    if relation == "antonym":
        pairs = _antonym_pairs()
    else:
        pairs = [(s, o) for s, o in country_pairs(relation, min_population) if o.lower() != s.lower()]
    return pairs[:n] if n is not None else pairs


def few_shot_prompt(template: str, subject: str, demonstrations: Sequence[tuple[str, str]]) -> str:
    """Demonstrations one per line ("<template filled> <object>."), then the query template for ``subject``."""
    if "{s}" not in template:
        raise InputError(f"A relation template needs a '{{s}}' slot for the subject, got {template!r}.")
    lines = [f"{template.format(s=s)} {o}" + ("" if o.endswith(".") else ".") for s, o in demonstrations]
    return "\n".join(lines + [template.format(s=subject)])


def few_shot_samples(pairs: Sequence[tuple[str, str]], template: str, n_shots: int = 3,
                     pool: Sequence[tuple[str, str]] | None = None, seed: int = 0,
                     relation: str = "") -> list[RelationSample]:
    """One in-context prompt per pair; its ``n_shots`` demonstrations come from ``pool`` (default:
    ``pairs``) without the pair's own subject, chosen with a per-subject seed (stable across calls).

    The answer of each sample is " <object>" (leading space: the token the model predicts next).
    """
    pool = list(pool if pool is not None else pairs)
    if not isinstance(n_shots, int) or n_shots < 0:
        raise InputError(f"n_shots must be a non-negative integer, got {n_shots!r}.")
    out = []
    for subject, obj in pairs:
        others = [p for p in pool if p[0] != subject]
        if len(others) < n_shots:
            raise InputError(f"{n_shots} demonstrations were asked for, but the pool has only {len(others)} other "
                             f"subjects besides {subject!r}; give a larger pool or fewer shots.")
        demos = random.Random(f"{seed}:{subject}").sample(others, n_shots)
        out.append(RelationSample(few_shot_prompt(template, subject, demos), subject, " " + obj, relation))
    return out
