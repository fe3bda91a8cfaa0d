"""A smaller copy of a model that physically holds only some of its blocks.

``pruned_copy(model, layers)`` builds a fresh HF model of the same class whose config has
``len(layers)`` blocks, copies the current weights into it (weight edits in force included: what
``model`` computes with now), and wraps it with ``workbench.wrap``. The copy's blocks are renumbered
0..k-1; its KV cache has k layers; its weights and compute are really gone, unlike a skipped block
(``replace_component``), which keeps the weights in memory and the layer index in place.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .model import Model

_WRAPPER_SEGMENT = "_original_component."


def _clean_state_dict(model: "Model") -> dict[str, torch.Tensor]:
    """The HF state dict of the wrapped model with the bridge's wrapper segments and hook points removed."""
    out = {}
    for k, v in model.hf.state_dict().items():
        out[k.replace(_WRAPPER_SEGMENT, "")] = v
    return out


def _layers_prefix(hf) -> str:
    for name, mod in hf.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == hf.config.num_hidden_layers:
            return name.replace(_WRAPPER_SEGMENT, "").replace("._original_component", "") + "."
    raise InputError(f"pruned_copy(): cannot find the list of blocks of {type(hf).__name__}.")


def pruned_copy(model: "Model", layers: Sequence[int], name: str | None = None, check_parity: bool = True) -> "Model":
    """A new ``Model`` holding only ``layers`` (kept in the given increasing order), renumbered 0..k-1.

    Weights are copied from ``model`` as it computes now, so weight edits in force (set_linear, set_norm,
    e.g. a merge of later layers into an earlier one) are part of the copy; replaced modules
    (replace_linear/replace_component) are refused, since a plain HF model cannot hold them.
    The original model is untouched. Memory: the copy holds its own weights (the kept blocks, the
    embeddings and the final norm).
    """
    n = model.info.n_layers
    layers = list(layers)
    if not layers:
        raise InputError("pruned_copy(): keep at least one layer.")
    for l in layers:
        if not isinstance(l, int) or isinstance(l, bool) or not 0 <= l < n:
            raise InputError(f"pruned_copy(): layer {l!r} is out of range 0..{n - 1}.")
    if sorted(set(layers)) != layers:
        raise InputError(f"pruned_copy(): layers must be distinct and increasing, got {layers}.")
    replaced = [t for t, what in model.active_edits() if what.startswith("replaced")]
    kept = {f"L{l}." for l in layers}
    blocking = [t for t in replaced if any(t.startswith(k) for k in kept)]
    if blocking:
        raise InputError(f"pruned_copy(): {', '.join(blocking)} {'is' if len(blocking) == 1 else 'are'} replaced by "
                         "modules a plain HF model cannot hold; copy without those edits (or drop those layers).")
    hf = model.hf
    prefix = _layers_prefix(hf)
    config = copy.deepcopy(hf.config)
    config.num_hidden_layers = len(layers)
    for attr in ("layer_types",):  # per-layer config lists follow the kept layers
        vals = getattr(config, attr, None)
        if isinstance(vals, (list, tuple)) and len(vals) == n:
            setattr(config, attr, [vals[l] for l in layers])
    state = _clean_state_dict(model)
    new_state = {}
    for k, v in state.items():
        if k.startswith(prefix):
            idx, rest = k[len(prefix):].split(".", 1)
            if int(idx) in layers:
                new_state[f"{prefix}{layers.index(int(idx))}.{rest}"] = v.detach().clone()
        else:
            new_state[k] = v.detach().clone()
    small = type(hf)(config).to(dtype=next(hf.parameters()).dtype)
    expected = small.state_dict()
    # the bridge registers some modules under two paths (HF's and its own aliases): keep HF's
    missing = [k for k in expected if k not in new_state]
    if missing:
        raise InputError(f"pruned_copy(): the weights do not fit a {len(layers)}-layer {type(hf).__name__} "
                         f"(missing {missing[:3]}).")
    small.load_state_dict({k: new_state[k] for k in expected}, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        small.tie_weights()
    from .loading import wrap

    label = name or f"{model.info.name} ({len(layers)} of {n} layers)"
    return wrap(small.to(model.device).eval(), model.tokenizer, label, model.device, check_parity)

