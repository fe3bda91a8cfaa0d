"""Progress bars for long steps (``tqdm.auto``: a widget in a notebook, text in a terminal; silent with
``TQDM_DISABLE=1`` or ``progress=False``)."""
from __future__ import annotations

import os


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, enabled: bool = True):
    """A progress bar of ``total`` steps (a silent one when disabled)."""
    if not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


__all__ = ["bar"]
