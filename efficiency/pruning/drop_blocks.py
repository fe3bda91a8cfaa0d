"""Drop chosen blocks (no calibration): the building block of every selection method, and the control."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..method import Knob
from ..registry import register_method
from .base import LayerDropMethod


@register_method("drop_blocks")
@dataclass
class DropBlocks(LayerDropMethod):
    """Skip the blocks in ``layers`` (their residual update is removed; no KV for them)."""

    layers: list = field(default_factory=list)

    knobs: ClassVar[dict[str, Knob]] = {"layers": Knob("layers", doc="Blocks to drop.")}

    def validate(self) -> None:
        self.dropped_blocks = sorted(set(self.layers))
        self.prepared = True
