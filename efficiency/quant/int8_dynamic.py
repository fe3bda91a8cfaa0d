"""``int8_dynamic``: every linear (and the output projection) run by fbgemm's dynamic int8 kernel: the real
speed path on CPU.

Each linear becomes an ``Int8DynamicLinear``: weights int8, symmetric per output channel; at every call the
input is quantized to 8 bits with one range for the whole input tensor (fbgemm's ``linear_dynamic``), the
product is computed in integers and rescaled to float32. With ``lm_head=True`` (default) the output
projection is replaced too (``WeightEditor.replace_unembedding``): on SmolLM2 it is 21% of the weight
bytes and the largest single matrix, so leaving it float caps the decode speed-up. The token embedding
stays float32 (a row lookup, nothing to speed up; a tied embedding keeps the shared matrix).

Saving: real. ``Model.parameter_bytes()`` counts the int8 weights (one byte each) and the float32 biases;
the per-channel scales live inside the quantized tensors and are not counted (8 + 8 bytes per output
channel, < 0.1%). The cost model predicts exactly what ``parameter_bytes`` measures.

Only on CPU, and only where PyTorch has the fbgemm/x86 quantized engine (``check_model`` says so
otherwise). Per-tensor dynamic input ranges meet SmolLM2's massive activation in prefill: the token at
position 0 sets the range of the whole prompt's input to some linears (worst in the block that writes the
massive value); decoding one token at a time is not affected. Hooks and captures keep working (the
modules are still called through the workbench's wrappers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import InputError

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .base import QuantEdit, linear_sites
from .modules import Int8DynamicLinear, check_fbgemm


@register_method("int8_dynamic")
@dataclass
class Int8Dynamic(EfficiencyMethod):
    """fbgemm dynamic int8 on every linear, and on the output projection when ``lm_head`` (module docstring)."""

    lm_head: bool = True

    family: ClassVar[str] = "weight-quantization"
    knobs: ClassVar[dict[str, Knob]] = {
        "lm_head": Knob("bool", doc="Also run the output projection (unembedding) in int8."),
    }

    def check_model(self, model) -> None:
        check_fbgemm()
        if model.device.type != "cpu":
            raise InputError(f"int8_dynamic runs on CPU only (fbgemm); the model is on {model.device}. Use a simulated "
                             "method (get_method('rtn', bits=8)) on GPU.")

    def intervention(self, model) -> QuantEdit:
        self.check_model(model)

        def apply(m, ed, iv):
            for layer, kind in linear_sites(m):
                mod = Int8DynamicLinear(m.linear_weight(layer, kind), m.linear_bias(layer, kind))
                ed.replace_linear(layer, kind, mod, note=iv.note())
            if self.lm_head:
                W = m.weights()
                ed.replace_unembedding(Int8DynamicLinear(W.W_U.t(), W.b_U), note=iv.note())

        return QuantEdit(self.label, apply)

    @property
    def saving(self) -> str:
        return "real"

    def cost(self, model, n_tokens: int) -> Cost:
        base = model.parameter_bytes()
        w = base
        for layer, kind in linear_sites(model):
            W = model.linear_weight(layer, kind)
            w += W.numel() * (1 - W.element_size())
        if self.lm_head:
            W_U = model.weights().W_U
            w += W_U.numel()  # the int8 copy
            if not model.is_shared_parameter(model.unembedding_module().weight):
                w -= W_U.numel() * W_U.element_size()  # an untied float lm_head goes away
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, kv, base, kv, "real",
                    "int8 weights (fbgemm, per-channel scales not counted); float32 embedding"
                    + (" kept for the tied input side" if self.lm_head else "; float32 lm_head"))
