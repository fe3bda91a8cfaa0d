"""Long offline texts for long-context measurements (perplexity with a compressed cache, speed at 2k-4k).

``pydoc_text()`` is CPython's own documentation of the language (``pydoc_data.topics``, 465k
characters, ships with every Python, so it is always available offline); ``long_texts`` cuts a long
text into windows of a given token length.
"""
from __future__ import annotations

from ..errors import InputError


def pydoc_text() -> str:
    """CPython's ``pydoc_data.topics``, every topic in key order, joined with blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def long_texts(model, n: int = 4, n_tokens: int = 2048, corpus: str | None = None) -> list[str]:
    """``n`` texts of about ``n_tokens`` tokens cut from ``pydoc_data.topics`` (see the module docstring),
    or from ``corpus`` when given (e.g. the bundled corpus joined: ``probes.transcoders.load_corpus``).

    The topics are joined in key order with blank lines, tokenized once, and cut into ``n`` windows
    starting at evenly spaced token offsets; each window is decoded back to text (re-tokenizing it
    gives ``n_tokens`` tokens up to a few at the edges).
    """
    for name, v in (("n", n), ("n_tokens", n_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"long_texts(): {name} must be a positive integer, got {v!r}.")
    if n_tokens > model.info.n_ctx:
        raise InputError(f"long_texts(): n_tokens={n_tokens} exceeds the model's context of {model.info.n_ctx}.")
    if corpus is None:
        corpus = pydoc_text()
    ids = model.tokenizer(corpus, add_special_tokens=False)["input_ids"]
    if n * n_tokens > len(ids):
        raise InputError(f"long_texts(): the corpus has {len(ids)} tokens, fewer than n * n_tokens.")
    step = (len(ids) - n_tokens) // max(n - 1, 1)
    return [model.tokenizer.decode(ids[i * step:i * step + n_tokens]) for i in range(n)]
