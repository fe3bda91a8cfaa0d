"""A model that really holds fewer blocks: the pruned layers removed, the rest renumbered.

``pruned_copy(model, method)`` applies the method's edit (merged weights for LaCo) and copies the kept
blocks into a fresh model (``workbench.pruned_copy``). Weights and compute of the removed blocks are
gone from the copy; its KV cache has fewer layers; its layer indices are renumbered 0..k-1 (so per-layer
results of the copy do not line up with the original's: use the in-place edit for that). Attention-only
or MLP-only drops cannot be copied (a plain HF block always has both): their in-place edit already
saves the compute and, for attention, the KV cache.
"""
from __future__ import annotations

import workbench
from workbench.errors import InputError

from .base import LayerDropMethod


def pruned_copy(model, method: LayerDropMethod, check_parity: bool = True):
    """A new ``workbench.Model`` without ``method``'s dropped blocks (see the module docstring)."""
    if not isinstance(method, LayerDropMethod):
        raise InputError(f"pruned_copy() takes a layer-dropping method, got {type(method).__name__}.")
    method._require_prepared()
    if set(method.dropped_attn) - set(method.dropped_blocks) or set(method.dropped_mlp) - set(method.dropped_blocks):
        raise InputError(f"pruned_copy(): {method.name} drops attention or MLP sublayers only; a plain model cannot "
                         "hold a block without them. Use the in-place edit (model.intervene(method.intervention(model))).")
    keep = [l for l in range(model.info.n_layers) if l not in set(method.dropped_blocks)]
    with model.without_interventions(), model.intervene(method.intervention(model)):
        return workbench.pruned_copy(model, keep, name=f"{model.info.name} - {method.label}", check_parity=check_parity)
