"""``rtn``: round-to-nearest weight quantization of every linear, per output channel or per group.

Each weight lands on the nearest level of its row's (or group's) grid (``efficiency.quant.grids``): no
calibration, no error compensation; the baseline every other method is measured against. The packed codes
and float16 grid parameters are held while the intervention is in force (``QuantEdit.packed``); the model
computes with the dequantized float32 weights (a simulation: ``saving == "simulated"``).

On the bundled SmolLM2 the float weights are themselves dequantized from a 4-bit asymmetric format with
groups of 32 (GGUF Q4_1), so ``rtn(bits=4, group=32, sym=False)`` returns them unchanged: that setting
is not a representative experiment on this model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import register_method
from .base import WeightQuantMethod
from .grids import QuantizedWeight, quantize_weight


@register_method("rtn")
@dataclass
class RTN(WeightQuantMethod):
    """Round-to-nearest weights: ``bits`` in (2, 3, 4, 8), ``group`` None (per channel) or a group size, ``sym``."""

    def quantize_site(self, model, layer: int, kind: str, W: torch.Tensor) -> QuantizedWeight:
        return quantize_weight(W, self.bits, self.group, self.sym)
