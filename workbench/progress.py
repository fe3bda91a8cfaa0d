"""Progress bars for long steps (harvesting, training, sweeps, benchmark suites).

``progress(iterable, desc=..., total=...)`` wraps ``tqdm.auto``: a widget bar in a notebook, a
text bar in a terminal. It is silent when ``TQDM_DISABLE=1`` (the tests, ``make test`` and the
headless notebook runs set it, so no bar ends up in a saved notebook), when ``disable=True``,
and for short loops (fewer than ``min_total`` known steps), where a bar is only noise.

    for batch in progress(batches, desc="harvest", total=n_batches, unit="batch"):
        ...

    with progress(total=n_tokens, desc="train", unit="tok") as bar:   # manual updates
        bar.update(batch_tokens)
"""
from __future__ import annotations

import os

MIN_TOTAL = 2  # a loop of fewer known steps shows no bar


def progress_disabled() -> bool:
    """True when ``TQDM_DISABLE`` asks for silence (any value but "", "0", "false")."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def progress(iterable=None, desc: str | None = None, total: int | None = None, unit: str = "it",
             leave: bool = False, disable: bool = False, min_total: int = MIN_TOTAL, **kwargs):
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one when ``iterable`` is None).

    total: the number of steps when ``len(iterable)`` is unknown. leave: keep the finished bar
    (default: it disappears). Returns the tqdm object; when disabled it still iterates and
    accepts ``update()``/``set_postfix()``, doing nothing visible.
    """
    from tqdm.auto import tqdm

    if total is None and iterable is not None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    off = disable or progress_disabled() or (total is not None and total < min_total)
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=off, dynamic_ncols=True,
                **kwargs)


__all__ = ["progress", "progress_disabled"]
