"""Transcoders shipped with the repo (``probes/data/transcoders/``), trained on SmolLM2 by
``scripts/train_transcoders.py`` (``make transcoders``; ``summary.json`` there records the command,
the corpus hash, timings and final training metrics).

Per layer, three SAELens folders (``cfg.json`` + float16 ``sae_weights.safetensors``) trained on the
same batches at the same L0 and width:

- ``smollm2-layer{L}/``: a TopK *skip* transcoder (the default), TC(x) = TopK(x W_enc + b_enc) W_dec
  + b_dec + x W_skipᵀ; the skip term is a dense linear map, so part of the MLP's output is carried
  by no feature (attribution graphs show it as a node of its own);
- ``smollm2-layer{L}-plain/``: a plain TopK transcoder (everything through features and the error);
- ``smollm2-layer{L}-sae/``: an SAE on ``mlp_out`` (SAELens's built-in TopK SAE), for side-by-side
  comparisons.

The transcoder architectures are registered with SAELens when ``probes.transcoders`` is imported.
"""
from __future__ import annotations

import json
from pathlib import Path

from sae_lens.saes.sae import SAE
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError

from .checkpoint import check_compatible, load_transcoder, read_metadata

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "transcoders"


SUFFIXES = {"transcoder": "", "skip": "", "plain": "-plain", "sae": "-sae"}


def _suffix(kind: str) -> str:
    if kind not in SUFFIXES:
        raise InputError(f"Unknown shipped kind {kind!r}; use one of {sorted(SUFFIXES)} "
                         "('transcoder' and 'skip' both name the default skip transcoders).")
    return SUFFIXES[kind]


def shipped_layers(kind: str = "transcoder") -> list[int]:
    """Layers with a shipped skip transcoder (kind "transcoder" or "skip"), plain transcoder ("plain")
    or SAE on mlp_out ("sae")."""
    suffix = _suffix(kind)
    out = []
    for p in sorted(SHIPPED_DIR.glob(f"smollm2-layer*{suffix}")):
        tail = p.name[len("smollm2-layer"):]
        if (suffix and tail.endswith(suffix)) or (not suffix and tail.isdigit()):
            out.append(int(tail[: len(tail) - len(suffix)] if suffix else tail))
    return sorted(out)


def _folder(layer: int, kind: str) -> Path:
    p = SHIPPED_DIR / f"smollm2-layer{layer}{_suffix(kind)}"
    if not p.exists():
        raise InputError(f"No shipped {kind} for layer {layer}; shipped layers: {shipped_layers(kind)}. "
                         "Train one with scripts/train_transcoders.py or probes.transcoders.train_transcoder.")
    return p


def load_pretrained(model, layers=None, kind: str = "skip") -> dict[int, Transcoder]:
    """{layer: SAELens transcoder} for ``model`` (default: every shipped layer).

    kind: "skip" (default: the skip transcoders, the closest replacement of the MLP) or "plain"
    (plain TopK transcoders: every part of the output goes through a feature or the error term,
    which is what circuits through features want). Raises InputError when ``model`` is not the
    model they were trained on (fingerprint), a layer has none, or the kind is unknown.
    """
    if kind not in ("skip", "plain"):
        raise InputError(f"load_pretrained: kind must be 'skip' or 'plain', got {kind!r}; "
                         "the shipped SAEs load with load_pretrained_sae.")
    if layers is None:
        layers = shipped_layers(kind)
    layers = [layers] if isinstance(layers, int) else list(layers)
    return {int(l): load_transcoder(_folder(int(l), kind), model=model, layer=int(l)) for l in layers}


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
