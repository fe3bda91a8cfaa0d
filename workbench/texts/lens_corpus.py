"""The default corpus for fitting lenses: short, varied, offline texts.

The bundled domain texts (prose and code, hand-written for this project) plus chunks of CPython's
``pydoc_data.topics``.
"""
from __future__ import annotations

from .domains import DOMAINS, load_domain


def lens_corpus(n_pydoc: int = 24, chunk_chars: int = 500) -> list[str]:
    """The bundled domain texts (prose, code) plus ``n_pydoc`` chunks of CPython's ``pydoc_data.topics``.

    Deterministic; everything ships offline (the topics come with CPython itself).
    """
    from pydoc_data.topics import topics

    texts = [t for d in DOMAINS for t in load_domain(d)]
    chunks = []
    for key in sorted(topics):
        body = " ".join(topics[key].split())
        if len(body) >= chunk_chars:
            cut = body[:chunk_chars]
            chunks.append(cut[: cut.rfind(" ")] if " " in cut else cut)
        if len(chunks) >= n_pydoc:
            break
    return texts + chunks
