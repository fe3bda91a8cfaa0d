"""Transcoders shipped with the repo (``probes/data/transcoders/``), trained on SmolLM2 by
``scripts/train_transcoders.py`` (``make transcoders``; ``summary.json`` there records the command,
the corpus hash, timings and final training metrics).

Folder ``smollm2-layer{L}/`` holds a SAELens transcoder (``cfg.json`` + float16
``sae_weights.safetensors``; its TopK architecture is registered with SAELens when
``probes.transcoders`` is imported); ``smollm2-layer{L}-sae/`` an SAE on ``mlp_out`` (SAELens's
built-in TopK SAE) trained on the same batches, for side-by-side comparisons.
"""
from __future__ import annotations

import json
from pathlib import Path

from sae_lens.saes.sae import SAE
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError

from .checkpoint import check_compatible, load_transcoder, read_metadata

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "transcoders"


def shipped_layers(kind: str = "transcoder") -> list[int]:
    """Layers with a shipped transcoder (kind="transcoder") or SAE on mlp_out (kind="sae")."""
    suffix = "-sae" if kind == "sae" else ""
    out = []
    for p in sorted(SHIPPED_DIR.glob(f"smollm2-layer*{suffix}")):
        tail = p.name[len("smollm2-layer"):]
        if (suffix and tail.endswith(suffix)) or (not suffix and tail.isdigit()):
            out.append(int(tail[: len(tail) - len(suffix)] if suffix else tail))
    return sorted(out)


def _folder(layer: int, kind: str) -> Path:
    p = SHIPPED_DIR / f"smollm2-layer{layer}{'-sae' if kind == 'sae' else ''}"
    if not p.exists():
        raise InputError(f"No shipped {kind} for layer {layer}; shipped layers: {shipped_layers(kind)}. "
                         "Train one with scripts/train_transcoders.py or probes.transcoders.train_transcoder.")
    return p


def load_pretrained(model, layers=None) -> dict[int, Transcoder]:
    """{layer: SAELens transcoder} for ``model`` (default: every shipped layer).

    Raises InputError when ``model`` is not the model they were trained on (fingerprint) or a
    layer has none.
    """
    if layers is None:
        layers = shipped_layers()
    layers = [layers] if isinstance(layers, int) else list(layers)
    return {int(l): load_transcoder(_folder(int(l), "transcoder"), model=model, layer=int(l)) for l in layers}


def load_pretrained_sae(model, layer: int) -> SAE:
    """The shipped SAELens SAE on ``mlp_out`` at ``layer`` (checked against ``model``)."""
    p = _folder(int(layer), "sae")
    meta = read_metadata(p)
    check_compatible(meta, model, layer, where=str(p))
    return SAE.load_from_disk(str(p), device="cpu", dtype="float32").eval()


def training_summary() -> dict:
    """The ``summary.json`` written by the training script (command, timings, final metrics)."""
    p = SHIPPED_DIR / "summary.json"
    return json.loads(p.read_text()) if p.exists() else {}
