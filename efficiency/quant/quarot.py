"""``quarot``: QuaRot (Ashkboos et al., 2024) as a setting of ``wa_quant``: randomized-Hadamard rotation of the
residual stream, per-head Hadamard on V/O, the online Hadamard before down_proj, then W4A4 (and KV4
through KIVI when ``kv_bits=4``). ``rotation="ro"`` gives the random-orthogonal variant DFRot compares
against. Differences from the paper: the per-head rotation is folded (SpinQuant's R2; 9 heads have no
Hadamard matrix), Q/K are not rotated online, and the KV cache is quantized by KIVI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..method import Knob
from ..registry import register_method
from .wa_quant import WAQuant


@register_method("quarot")
@dataclass
class QuaRot(WAQuant):
    """``wa_quant`` with rotation="rh" and online_had=True by default (module docstring)."""

    rotation: str = "rh"
    online_had: bool = True

    knobs: ClassVar[dict[str, Knob]] = {
        **WAQuant.knobs,
        "rotation": Knob("choice", choices=("rh", "ro"), doc="rh: randomized Hadamard; ro: random orthogonal."),
    }
