"""A cached fp32 copy of a model in the user cache directory, rebuilt when missing or corrupt.

Layout of one entry (``<cache>/<name>/``): the HF ``save_pretrained`` files of model and tokenizer,
plus ``workbench_cache.json`` written last, holding the key the entry was built for. An entry
without that marker, with another key, or that fails to load, is rebuilt (never crashed on).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..paths import atomic_dir, cache_dir

log = logging.getLogger(__name__)
MARKER = "workbench_cache.json"
FORMAT_VERSION = 1

Builder = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


def _load_entry(path: Path, key: dict) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        if json.loads(marker.read_text()) != key:
            return None
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
        return hf.eval(), tok
    except Exception as exc:  # corrupt or truncated files: rebuild instead of crashing
        warnings.warn(f"workbench: cached model at {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it.")
        return None


def load_cached(name: str, key: dict, build: Builder, root: Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, bool]:
    """Return ``(hf_model, tokenizer, from_cache)``, building and caching the fp32 copy if needed.

    ``key`` describes the source (file size, version...); a change invalidates the entry.
    The entry is written atomically: a crash mid-write leaves the old state, never a half entry.
    """
    path = (root or cache_dir()) / name
    key = {"format": FORMAT_VERSION, **key}
    hit = _load_entry(path, key)
    if hit is not None:
        return hit[0], hit[1], True
    hf, tok = build()
    try:
        with atomic_dir(path) as tmp:
            hf.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps(key))
    except OSError as exc:  # a read-only or full disk must not stop the user from working
        warnings.warn(f"workbench: could not write the model cache at {path} ({exc}); continuing without it.")
    return hf, tok, False
