"""``rotate``: the rotation alone, with no quantization: the float model in a rotated residual basis.

Gives the same logits as the original (computational invariance, ``efficiency.quant.rotation``); used to
see how a rotation spreads the massive activation before any grid is applied, and as the reference
("float twin") of a rotated quantized model. Saves nothing: a tied embedding is untied (one more
embedding-sized matrix) and the online Hadamard adds its small factors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .base import QuantEdit
from .rotation import ROTATIONS, check_rotatable, residual_rotation, rotate, rotation_extra_bytes


@register_method("rotate")
@dataclass
class Rotate(EfficiencyMethod):
    """Residual rotation (randomized Hadamard "rh" or random orthogonal "ro"), per-head V/O Hadamard, and
    optionally the online Hadamard before down_proj; float weights, same logits."""

    rotation: str = "rh"
    head_rotation: bool = True
    online_had: bool = False
    seed: int = 0

    family: ClassVar[str] = "rotation"
    knobs: ClassVar[dict[str, Knob]] = {
        "rotation": Knob("choice", choices=ROTATIONS, doc="rh: randomized Hadamard; ro: random orthogonal."),
        "head_rotation": Knob("bool", doc="Hadamard per value head, undone in o_proj (SpinQuant's R2)."),
        "online_had": Knob("bool", doc="Hadamard on down_proj's input at run time (QuaRot)."),
        "seed": Knob("int", 0, 2**31 - 1),
    }

    def check_model(self, model) -> None:
        check_rotatable(model)

    def matrix(self, model):
        """The residual rotation (``efficiency.quant.rotation.Rotation``) this method applies to ``model``."""
        return residual_rotation(model.info.d_model, self.rotation, self.seed)

    def intervention(self, model) -> QuantEdit:
        self.check_model(model)

        def apply(m, ed, iv):
            rotate(m, ed, self.matrix(m), self.head_rotation, self.online_had, note=f"rotated by {self.label}")

        # a rotation is not a quantization: it may sit under one, so it skips the double-quantization check
        return _RotationEdit(self.label, apply)

    def float_twin(self, model):
        """The rotation itself (it quantizes nothing): compared against it, every error is zero."""
        return self.intervention(model)

    @property
    def saving(self) -> str:
        return "real"

    def cost(self, model, n_tokens: int) -> Cost:
        base = model.parameter_bytes()
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, base + rotation_extra_bytes(model, self.online_had), kv, base, kv, "real",
                    "no saving: the rotated model holds an untied embedding copy (tied models) and the online Hadamard factors")


class _RotationEdit(QuantEdit):
    def edit(self, model, editor) -> None:
        self.packed = {}
        self._apply(model, editor, self)
