"""What every layer-dropping method shares: the chosen layers, the edit, the cost model, the checks.

A dropping method picks blocks (or attention / MLP sublayers) in ``prepare(model, texts)`` (or takes
them as a knob) and installs ``DropLayers`` as its intervention. Cost model (checked against measured
bytes in the tests):

- KV cache: only layers whose attention runs hold keys and values, so for ``n_tokens`` of context
  kv_bytes = n_tokens x (L - dropped attentions) x G x d_head x 2 x bytes per value; a dropped block
  drops its attention too.
- weights: unchanged while the edit holds (the dropped weights stay in memory so the edit can be
  undone exactly); ``pruned_copy(model, method)`` builds a model that really holds fewer blocks, whose
  ``parameter_bytes()`` equals ``copy_weight_bytes``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from workbench.errors import InputError

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from .skip import DropLayers, check_drop

RATIO = Knob("float", 0.0, 1.0, high_open=True, doc="The fraction of the layers removed (0 removes none).")
WINDOW = Knob("int", 8, 8192, doc="Tokens per calibration window.")
N_WINDOWS = Knob("int", 1, 100000, doc="Calibration windows used.")


def n_to_remove(ratio: float, n_layers: int) -> int:
    """round(ratio x n_layers), refused when it would remove every layer."""
    k = int(round(ratio * n_layers))
    if k >= n_layers:
        raise InputError(f"ratio={ratio} would remove all {n_layers} layers; use a smaller ratio.")
    return k


@dataclass
class LayerDropMethod(EfficiencyMethod):
    """Base of the dropping methods: ``dropped_blocks`` / ``dropped_attn`` / ``dropped_mlp`` are filled by
    ``prepare`` (or by the knobs of the explicit methods)."""

    family: ClassVar[str] = "pruning"
    dropped_blocks: list = field(default_factory=list, init=False, repr=False, compare=False)
    dropped_attn: list = field(default_factory=list, init=False, repr=False, compare=False)
    dropped_mlp: list = field(default_factory=list, init=False, repr=False, compare=False)
    prepared: bool = field(default=False, init=False, repr=False, compare=False)

    def _require_prepared(self) -> None:
        if not self.prepared:
            raise InputError(f"{self.name}: call prepare(model, texts) first (it chooses the layers to drop).")

    def edit(self, model):
        """The ``DropLayers`` edit (or the method's own subclass of it)."""
        return DropLayers(self.dropped_blocks, self.dropped_attn, self.dropped_mlp)

    def intervention(self, model):
        self._require_prepared()
        self.check_model(model)
        return self.edit(model)

    def check_model(self, model) -> None:
        check_drop(model, self.dropped_blocks, self.name)
        check_drop(model, self.dropped_attn, self.name, allow_all=True)
        check_drop(model, self.dropped_mlp, self.name, allow_all=True)

    @property
    def attention_free_layers(self) -> list[int]:
        """Layers that hold no KV cache (their block or attention is dropped)."""
        return sorted(set(self.dropped_blocks) | set(self.dropped_attn))

    def cost(self, model, n_tokens: int) -> Cost:
        self._require_prepared()
        i = model.info
        w = model.parameter_bytes()
        full = kv_bytes_full(model, n_tokens)
        kv = full * (i.n_layers - len(self.attention_free_layers)) // i.n_layers
        return Cost(n_tokens, w, kv, w, full, "real",
                    f"skips {len(self.dropped_blocks)} blocks, {len(set(self.dropped_attn) - set(self.dropped_blocks))} "
                    f"attentions, {len(set(self.dropped_mlp) - set(self.dropped_blocks))} MLPs (compute and KV really "
                    "saved); weights stay in memory while the edit holds (pruned_copy frees them)")

    def copy_weight_bytes(self, model) -> int:
        """Bytes a ``pruned_copy`` of this method holds: the model's minus the dropped blocks' parameters."""
        self._require_prepared()
        per_block = block_parameter_bytes(model)
        return model.parameter_bytes() - sum(per_block[l] for l in self.dropped_blocks)


def block_parameter_bytes(model) -> list[int]:
    """Bytes of every block's parameters (norms, attention, MLP), read from ``model.weights()``."""
    out = []
    for lw in model.weights().layers:
        total = 0
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_gate", "W_out", "b_in", "b_out"):
            t = getattr(lw, name)
            if t is not None:
                total += t.numel() * t.element_size()
        for norm in (lw.ln1, lw.ln2):
            for t in (norm.w, norm.b):
                if t is not None:
                    total += t.numel() * t.element_size()
        out.append(total)
    return out
