"""Drop the attention sublayer of chosen layers (no calibration): its compute and its KV cache go."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..method import Knob
from ..registry import register_method
from .base import LayerDropMethod


@register_method("drop_attention")
@dataclass
class DropAttention(LayerDropMethod):
    """Skip the attention of the layers in ``layers`` (the MLPs stay); those layers hold no KV cache."""

    layers: list = field(default_factory=list)

    knobs: ClassVar[dict[str, Knob]] = {"layers": Knob("layers", doc="Layers whose attention is dropped.")}

    def validate(self) -> None:
        self.dropped_attn = sorted(set(self.layers))
        self.prepared = True
