"""The bundled text corpus and fixed-length token windows cut from it.

``probes/data/corpus/corpus.jsonl`` (built by ``scripts/build_corpus.py``; Python 3.11 docs prose
and WordNet 3.0 glosses, licenses in ``LICENSE.txt`` beside it). Documents are split once,
deterministically, into a training part and a held-out evaluation part (every ``EVAL_EVERY``-th
document), so evaluation never sees training text.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import torch

from workbench.errors import InputError

CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "corpus" / "corpus.jsonl"
EVAL_EVERY = 20  # document i is held out for evaluation when i % EVAL_EVERY == 0
SPLITS = ("train", "eval", "all")


def load_corpus(split: str = "train", path: str | Path | None = None, sources: Sequence[str] | None = None) -> list[str]:
    """Texts of the bundled corpus (or a ``.jsonl`` / ``.txt`` file at ``path``).

    split: "train" (19 of 20 documents), "eval" (the other one) or "all". sources: keep only these
    ``source`` values ("python-3.11-docs", "wordnet-3.0-glosses"). A ``.txt`` file is split into
    documents at blank lines.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}.")
    path = Path(path) if path is not None else CORPUS_PATH
    if not path.exists():
        raise InputError(f"Corpus file {path} does not exist. Rebuild the bundled one with "
                         "`python scripts/build_corpus.py`, or pass an existing .jsonl/.txt path.")
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if sources is not None:
            rows = [r for r in rows if r.get("source") in set(sources)]
        docs = [r["text"] for r in rows]
    else:
        docs = [d.strip() for d in raw.split("\n\n")]
    docs = [d for d in docs if d.strip()]
    if split != "all":
        docs = [d for i, d in enumerate(docs) if (i % EVAL_EVERY == 0) == (split == "eval")]
    if not docs:
        raise InputError(f"The corpus at {path} has no documents for split={split!r}"
                         f"{f' and sources={list(sources)}' if sources is not None else ''}: nothing to train on.")
    return docs


def tokenize_stream(tokenizer, texts: Sequence[str], separator: int = 0) -> torch.Tensor:
    """All texts tokenized and joined into one (N,) long tensor, ``separator`` between documents.

    The separator defaults to id 0 (``<|endoftext|>`` for SmolLM2, which has no BOS).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError("The corpus is empty: pass at least one non-empty text.")
    ids: list[int] = []
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(separator)
    return torch.tensor(ids, dtype=torch.long)


def token_windows(tokenizer, texts: Sequence[str], context: int = 128, batch_prompts: int = 8,
                  seed: int | None = 0, repeat: bool = False) -> Iterator[torch.Tensor]:
    """Yield (batch_prompts, context) id windows cut from the joined token stream.

    Windows are non-overlapping; their order is shuffled with ``seed`` (None keeps corpus order).
    The last partial batch is yielded too. With ``repeat=True`` the stream restarts (reshuffled)
    after the last window, for training longer than one pass.
    """
    if context < 2:
        raise InputError(f"context must be at least 2 tokens (position 0 is excluded), got {context}.")
    stream = tokenize_stream(tokenizer, texts)
    n = stream.numel() // context
    if n == 0:
        raise InputError(f"The corpus has {stream.numel()} tokens, fewer than one window of {context}.")
    windows = stream[: n * context].view(n, context)
    epoch = 0
    while True:
        order = torch.arange(n)
        if seed is not None:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, n, batch_prompts):
            yield windows[order[i:i + batch_prompts]]
        epoch += 1
        if not repeat:
            return
