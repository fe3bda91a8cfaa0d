"""Save and load transcoders (SAELens format) and training checkpoints.

A transcoder folder holds exactly what SAELens writes and reads (``cfg.json`` and
``sae_weights.safetensors``), so ``sae_lens.saes.transcoder.Transcoder.load_from_disk(folder)``
loads it (after ``import probes.transcoders`` for the TopK kinds). The workbench's facts live in
``cfg.json``'s ``metadata``: ``model_fingerprint``, ``model_name``, ``hook_name`` (input),
``hook_name_out``, ``hook_layer``, ``training_step``, ``training_config``; JumpReLU-only training
state is folded into SAELens's ``threshold``.

A training checkpoint adds ``training_state.safetensors`` (Adam moments, feature-fire counters,
the frozen loss scale, JumpReLU log-thresholds) and ``training_state.json`` (step, config).
Writes are atomic: a folder is replaced in one rename, so an interrupted save leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sae_lens.saes.transcoder import Transcoder

from workbench.errors import InputError
from workbench.paths import _usual_mode, atomic_dir

from .architectures import CLASSES

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
STATE = "training_state.safetensors"
STATE_JSON = "training_state.json"
KNOWN_ARCHITECTURES = sorted(c[1].architecture() for c in CLASSES.values())  # importing registers TopK kinds


def save_transcoder(tc: Transcoder, path: str | Path, extra_state: dict[str, torch.Tensor] | None = None,
                    extra_json: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write ``tc`` in SAELens format to the folder ``path`` (atomically); returns the folder.

    half=True stores the weights as float16 (the config keeps float32, so loading upcasts).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        sd = {k: v.detach().cpu().contiguous().clone() for k, v in tc.state_dict().items()}  # from any device
        if half:
            sd = {k: v.half() for k, v in sd.items()}
        save_file(sd, str(tmp / WEIGHTS))
        (tmp / CFG).write_text(json.dumps(tc.cfg.to_dict(), indent=2, sort_keys=True))
        if extra_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_state.items()}, str(tmp / STATE))
        if extra_json is not None:
            (tmp / STATE_JSON).write_text(json.dumps(extra_json, indent=2, sort_keys=True))
        for f in tmp.iterdir():
            _usual_mode(f, 0o666)  # safetensors writes 0600; make it like any saved file
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``cfg.json`` dict of a saved transcoder folder."""
    path = Path(path)
    if not (path / CFG).exists() or not (path / WEIGHTS).exists():
        raise InputError(f"{path} is not a saved transcoder: it needs {CFG} and {WEIGHTS}.")
    return json.loads((path / CFG).read_text())


def check_compatible(meta: dict[str, Any], model=None, layer: int | None = None, where: str = "") -> None:
    """Raise InputError when a saved transcoder does not fit ``model`` / ``layer``.

    Checks the model fingerprint, the layer, and d_in / d_out against d_model.
    """
    md = meta.get("metadata", {})
    if model is not None:
        fp = md.get("model_fingerprint")
        if fp is not None and fp != model.fingerprint:
            raise InputError(f"Transcoder {where} was trained on another model (fingerprint {fp}, "
                             f"model name {md.get('model_name')!r}); this model's fingerprint is "
                             f"{model.fingerprint}. Train one for this model with train_transcoder().")
        d = model.info.d_model
        if meta.get("d_in") != d or meta.get("d_out", meta.get("d_in")) != d:  # an SAE has no d_out
            raise InputError(f"Transcoder {where} maps d_in={meta.get('d_in')} -> d_out={meta.get('d_out', meta.get('d_in'))}, "
                             f"but this model's MLP input and output have d_model={d}.")
        hl = md.get("hook_layer")
        if hl is not None and not 0 <= int(hl) < model.info.n_layers:
            raise InputError(f"Transcoder {where} is for layer {hl}, which this {model.info.n_layers}-layer "
                             "model does not have.")
    if layer is not None:
        hl = md.get("hook_layer")
        if hl is not None and int(hl) != int(layer):
            hook = f" (hook {md['hook_name']!r})" if md.get("hook_name") else ""
            raise InputError(f"Transcoder {where} was trained on layer {hl}{hook}, not layer {layer}. Load the one for layer {layer} or pass layer={hl}.")


def load_transcoder(path: str | Path, model=None, layer: int | None = None) -> Transcoder:
    """Load a saved transcoder with SAELens (``Transcoder.load_from_disk``), checked against
    ``model`` (fingerprint, d_model) and ``layer`` when given. Returns it in eval mode, fp32."""
    meta = read_metadata(path)
    check_compatible(meta, model, layer, where=str(path))
    tc = Transcoder.load_from_disk(str(path), device="cpu", dtype="float32")
    return tc.eval()


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensor state, json state) of a training checkpoint folder."""
    path = Path(path)
    if not (path / STATE).exists() or not (path / STATE_JSON).exists():
        raise InputError(f"{path} holds no training state ({STATE}, {STATE_JSON}): it cannot be resumed. "
                         "Only checkpoints written by train_transcoder(checkpoint_dir=...) can.")
    return load_file(str(path / STATE)), json.loads((path / STATE_JSON).read_text())
