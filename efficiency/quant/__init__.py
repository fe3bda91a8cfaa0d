"""Weight and activation quantization, rotations, and what they do to the model's internals.

Methods (registered by name in ``efficiency.METHODS``; one file each):

- ``rtn``: round-to-nearest weights, 8/4/3/2 bits, per channel or per group, symmetric or not;
- ``gptq``: GPTQ weights, calibrated on text (``prepare(model, texts)``), act-order optional;
- ``int8_dynamic``: fbgemm dynamic int8 on every linear and the output projection: the real CPU speed path;
- ``rotate``: the residual rotation alone (randomized Hadamard or random orthogonal), same logits;
- ``wa_quant``: weights + per-token activations (W8A8, W4A8, W4A4) + KV (KIVI), with or without rotation;
- ``quarot``: ``wa_quant`` with the randomized Hadamard rotation and the online Hadamard (QuaRot);
- ``dfrot``: QuaRot with the rotation refined on one calibration sample (DFRot).

Helpers: ``grids`` (weight and activation grids), ``packing`` (bit-packed storage, exact bytes),
``hadamard`` (Sylvester and Paley Hadamard matrices, random rotations, online Kronecker Hadamard),
``rotation`` (computational invariance), ``calibration`` (windows, one-pass sequential harvest), ``modules``
(``QuantLinear``, ``Int8DynamicLinear``). Analyses: ``quantization_error`` (per token and layer, the sink
against the rest), ``rotation_spread`` (how a rotation spreads the outlier), ``quantization_explorer``.
"""
from .analysis import QuantErrorResult, RotationSpreadResult, quantization_error, rotation_spread
from .base import QuantEdit, WeightQuantMethod, check_not_quantized, quantized_edits
from .dfrot import DFRot, refine_rotation
from .explorer import quantization_explorer
from .gptq import GPTQ, quantize_gptq
from .grids import QuantizedWeight, fake_quantize_weight, quantize_tokens, quantize_weight, token_error
from .hadamard import KroneckerHadamard, hadamard, random_hadamard, random_orthogonal
from .int8_dynamic import Int8Dynamic
from .modules import ActQuantizer, Int8DynamicLinear, QuantLinear
from .packing import PackedWeight, pack_rows, packed_bytes, unpack_rows
from .quarot import QuaRot
from .rotate import Rotate
from .rotation import rotate
from .rtn import RTN
from .wa_quant import WAQuant

__all__ = [
    "RTN", "GPTQ", "Int8Dynamic", "Rotate", "WAQuant", "QuaRot", "DFRot", "QuantEdit", "WeightQuantMethod",
    "check_not_quantized", "quantized_edits", "quantize_gptq", "refine_rotation", "QuantizedWeight", "quantize_weight",
    "fake_quantize_weight", "quantize_tokens", "token_error", "PackedWeight", "pack_rows", "unpack_rows",
    "packed_bytes", "hadamard", "random_hadamard", "random_orthogonal", "KroneckerHadamard", "rotate", "QuantLinear",
    "ActQuantizer", "Int8DynamicLinear", "quantization_error", "QuantErrorResult", "rotation_spread",
    "RotationSpreadResult", "quantization_explorer",
]
