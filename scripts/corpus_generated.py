"""Model-generated part of the training corpus: a seeded grid of topics x genres x formats.

Every cell of the grid is one prompt; ``grid(seed)`` lists all cells in a seeded order, and the
first ``n`` are sampled (so a larger ``n`` extends a smaller build instead of replacing it).
Formats:

* ``chat``: the whole chat transcript (system, user request, assistant reply) in the model's
  chat template, i.e. text shaped like what the instruct model sees at inference;
* ``reply``: the assistant reply alone, as plain text;
* ``continuation``: a plain-text opening (no chat template) that the model continues.

Generations are cached per batch under ``<cache>/corpus-build/generated-<key>/`` so an interrupted
build resumes where it stopped; the key covers everything that changes the output.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

TOPICS = [
    "beekeeping", "a flooded subway station", "the history of paper money", "learning to swim as an adult",
    "a small-town bakery", "volcanoes", "a chess tournament", "moving to a new city", "solar panels on rooftops",
    "a lost dog", "the night sky in winter", "public libraries", "repairing an old bicycle", "coral reefs",
    "a job interview", "the invention of the printing press", "growing tomatoes", "a power outage",
    "train travel across Europe", "the human immune system", "a wedding that goes wrong", "recycling plastic",
    "a mountain rescue", "learning a second language", "the first day at a new school", "electric cars",
    "a street market", "the water cycle", "a family recipe", "a school science fair", "earthquakes",
    "running a marathon", "an old lighthouse", "the stock market", "a rainy afternoon in a cafe",
    "honeybees and pollination", "a city council meeting", "ancient Rome", "a broken smartphone",
    "camping in the desert", "the life of a nurse", "jazz music", "a neighborhood garden", "black holes",
    "saving money for a house", "a museum robbery", "the migration of birds", "remote work",
    "a football match", "making pottery", "a snowstorm", "the history of the bicycle", "a hospital night shift",
    "climate change and farming", "a birthday surprise", "writing a first novel", "the Moon landing",
    "a ferry crossing", "home cooking on a budget", "artificial intelligence in medicine", "a village festival",
    "the discovery of penicillin", "a hiking trip with friends", "an elderly neighbor",
]

CODE_LANGUAGES = ["Python", "JavaScript", "C", "SQL", "Bash", "Java", "Rust", "HTML and CSS"]

# genre -> (chat request, plain-text opening); {topic} and {language} are filled in.
GENRES: dict[str, tuple[str, str]] = {
    "narrative": ("Write a short story about {topic}.", "{Topic}: a short story\n\nIt began on a"),
    "dialogue": ("Write a dialogue between two friends talking about {topic}.",
                 "A conversation about {topic}.\n\nMaya: "),
    "news": ("Write a short news article about {topic}.", "LOCAL NEWS\n\n{Topic}\n\n"),
    "howto": ("Give step-by-step instructions for a beginner interested in {topic}.",
              "A beginner's guide to {topic}\n\nStep 1:"),
    "encyclopedic": ("Write an encyclopedia-style article explaining {topic}.", "{Topic}\n\nFrom the encyclopedia.\n\n"),
    "letter": ("Write a letter to a friend about {topic}.", "Dear Sam,\n\nI have been meaning to write to you about {topic}."),
    "essay": ("Write a short opinion essay about {topic}.", "Why {topic} matters more than we think\n\n"),
    "review": ("Write a review of a book, product or place connected to {topic}.", "Review: {topic}\n\nRating: "),
    "faq": ("Write a short FAQ with three questions and answers about {topic}.",
            "Frequently asked questions: {topic}\n\nQ: "),
    "code": ("Write a {language} program related to {topic}, with comments explaining it.",
             "// {language} example inspired by {topic}\n"),
}
FORMATS = ("chat", "reply", "continuation")


def grid(seed: int) -> list[dict]:
    """Every (topic, genre, format) cell, each with its prompt fields, in a seeded order."""
    cells = []
    for ti, topic in enumerate(TOPICS):
        for genre in GENRES:
            for fmt in FORMATS:
                lang_rng = random.Random(f"{seed}:{ti}:{genre}:{fmt}")
                cells.append({"topic": topic, "topic_id": ti, "genre": genre, "format": fmt,
                              "language": lang_rng.choice(CODE_LANGUAGES) if genre == "code" else None})
    random.Random(seed).shuffle(cells)
    return cells


def _fill(template: str, cell: dict) -> str:
    t = cell["topic"]
    return template.format(topic=t, Topic=t[:1].upper() + t[1:], language=cell["language"] or "")


def prompt_of(model, cell: dict) -> str:
    """The exact string fed to the model for this cell."""
    from workbench.sampling import chat_prompt
    request, opening = GENRES[cell["genre"]]
    if cell["format"] == "continuation":
        return _fill(opening, cell)
    return chat_prompt(model, _fill(request, cell))


def document_of(model, cell: dict, generated: str) -> str:
    """The corpus document for a cell: transcript, reply alone, or opening + continuation."""
    if cell["format"] == "chat":
        end = model.tokenizer.eos_token or ""
        return prompt_of(model, cell) + generated + end
    if cell["format"] == "reply":
        return generated.strip()
    return _fill(GENRES[cell["genre"]][1], cell) + generated


def cache_key(model, seed: int, max_new_tokens: int, batch_size: int, sampling: dict) -> str:
    blob = json.dumps({"model": model.fingerprint, "seed": seed, "max_new_tokens": max_new_tokens,
                       "batch_size": batch_size, "sampling": sampling, "topics": TOPICS, "genres": GENRES,
                       "languages": CODE_LANGUAGES}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def generate(model, n: int, seed: int, cache_root: Path, max_new_tokens: int = 200, batch_size: int = 32,
             sampling: dict | None = None, log=print) -> list[dict]:
    """Sample the first ``n`` cells of ``grid(seed)``; returns [{cell fields..., "text": document}].

    Batches already in the cache are reused (same key); the rest are sampled and written one
    file per batch, atomically.
    """
    from workbench.paths import atomic_write_bytes
    from workbench.sampling import sample_texts
    sampling = dict(sampling or {"temperature": 0.8, "top_p": 0.95, "repetition_penalty": 1.1})
    cells = grid(seed)
    if n > len(cells):
        raise SystemExit(f"--generated {n} exceeds the {len(cells)} cells of the topic x genre x format grid.")
    cells = cells[:n]
    folder = cache_root / f"generated-{cache_key(model, seed, max_new_tokens, batch_size, sampling)}"
    folder.mkdir(parents=True, exist_ok=True)
    out: list[dict] = []
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, batch_size)):
        chunk = cells[start:start + batch_size]
        f = folder / f"batch_{b:05d}.json"
        cached = json.loads(f.read_text()) if f.exists() else None
        if cached is not None and cached["cells"] == chunk:
            texts = cached["generated"]
        else:  # missing, or a shorter last batch of a smaller build
            texts = sample_texts(model, [prompt_of(model, c) for c in chunk], max_new_tokens, seed=seed,
                                 batch_size=batch_size, first_batch=b, **sampling)
            atomic_write_bytes(f, json.dumps({"cells": chunk, "generated": texts}, ensure_ascii=False).encode())
            log(f"generated batch {b + 1}/{-(-n // batch_size)} ({time.perf_counter() - t0:.0f} s)")
        out.extend({**c, "text": document_of(model, c, g), "generated": g} for c, g in zip(chunk, texts))
    return out
