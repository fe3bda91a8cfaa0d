"""Bundled text domains for per-domain analyses (active/dormant heads, sink maps).

Each domain is a folder of short hand-written ``.txt`` files under ``probes/data/domains/<name>/``
(written for this project, no external source): ``prose`` holds six English paragraphs,
``code`` six Python snippets, each about 60-150 SmolLM2 tokens. Files load in name order.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError

DATA_DIR = Path(__file__).parent / "data" / "domains"
DOMAINS: tuple[str, ...] = tuple(sorted(p.name for p in DATA_DIR.iterdir() if p.is_dir())) if DATA_DIR.is_dir() else ()


def load_domain(name: str) -> list[str]:
    """The texts of a bundled domain, in file-name order (trailing newlines removed)."""
    if name not in DOMAINS:
        raise InputError(f"Unknown domain {name!r}. Bundled domains: {', '.join(DOMAINS) or '(none)'}.")
    files = sorted((DATA_DIR / name).glob("*.txt"))
    return [f.read_text(encoding="utf-8").rstrip("\n") for f in files]


def load_domains(names=None) -> dict[str, list[str]]:
    """{name: texts} for the given bundled domain names (all of them by default)."""
    names = DOMAINS if names is None else ([names] if isinstance(names, str) else list(names))
    return {n: load_domain(n) for n in names}
