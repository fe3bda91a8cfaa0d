"""``int8_dynamic``: every linear (and the output projection) run by fbgemm's dynamic int8 kernel: the real
speed path on CPU.

Each linear becomes an ``Int8DynamicLinear``: weights int8, symmetric per output channel; at every call the
input is quantized to 8 bits (fbgemm's ``linear_dynamic``: asymmetric, 7 bits of range on x86 to avoid
overflow), the product is computed in integers and rescaled to float32. With ``lm_head=True`` (default) the
output projection is replaced too (``WeightEditor.replace_unembedding``): on SmolLM2 it is 21% of the weight
bytes and the largest single matrix, so leaving it float caps the decode speed-up. The token embedding stays
float32 (a row lookup, nothing to speed up; a tied embedding keeps the shared matrix).

Input ranges (``act_ranges``): fbgemm takes one range per call. In decoding a call holds one token. In a
prefill or a teacher-forced pass it holds the whole prompt, and on SmolLM2 the attention sink's massive
activation (position 0; its down_proj input in block 11 is ~2000x the other tokens') then sets the range for
every token: next-token KL ≈ 1.4 nats on a short prose prompt. ``act_ranges="token"`` (default) runs
multi-token inputs one token per call, the same ranges decoding uses (KL ≈ 0.08); ``"tensor"`` is fbgemm's
behaviour as is (fastest prefill). ``rotation="rh"`` rotates the residual stream first (QuaRot's randomized
Hadamard with the norms folded, exact in float, free at run time), which spreads the outlier channels of the
q/k/v/gate/up inputs (KL ≈ 0.035 on the same prompt); ``online_had=True`` adds QuaRot's online Hadamard on
down_proj's input (the SwiGLU output, where the sink's massive activation is made), applied in Kronecker
form before the input is quantized (a small cost per call). ``act_bits=8`` quantizes inputs to the full 8-bit
range instead of fbgemm's 7 (exact on CPUs with VNNI, refused elsewhere). On SmolLM2 (BENCHMARKS.md) the
perplexity change is +5.9% as fbgemm ships it, +2.6% with 8-bit ranges, +1.7% with the rotation and the online
Hadamard, and +0.8% with both; int8 weights alone cost +0.4%.

Saving: real. ``Model.parameter_bytes()`` counts the int8 weights (one byte each) and the float32 biases;
the per-channel scales live inside the quantized tensors and are not counted (8 + 8 bytes per output
channel, < 0.1%). The cost model predicts exactly what ``parameter_bytes`` measures on Llama-family models
(separate q/k/v/gate/up/down linears).

Only on CPU, and only where PyTorch has the fbgemm/x86 quantized engine (``check_model`` says so otherwise).
Hooks and captures keep working: the modules are called through the workbench's wrappers. A decode path that
bypasses the wrappers must call the replaced modules (``Model.linear_module``) to keep the speed-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import InputError

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .base import QuantEdit, linear_sites
from .modules import Int8DynamicLinear, check_fbgemm, check_int8_act_bits
from .rotation import check_rotatable, residual_rotation, rotate, rotation_extra_bytes


@register_method("int8_dynamic")
@dataclass
class Int8Dynamic(EfficiencyMethod):
    """fbgemm dynamic int8 on every linear, and on the output projection when ``lm_head`` (module docstring)."""

    lm_head: bool = True
    act_ranges: str = "token"
    rotation: str = "none"
    online_had: bool = False
    act_bits: int = 7
    seed: int = 0

    family: ClassVar[str] = "weight-quantization"
    knobs: ClassVar[dict[str, Knob]] = {
        "lm_head": Knob("bool", doc="Also run the output projection (unembedding) in int8."),
        "act_ranges": Knob("choice", choices=("token", "tensor"),
                           doc="Input range per token (one kernel call per token of a prompt) or per call."),
        "rotation": Knob("choice", choices=("none", "rh"), doc="Randomized Hadamard rotation of the residual first."),
        "online_had": Knob("bool", doc="With rotation='rh': also a Hadamard on down_proj's input at run time (QuaRot)."),
        "act_bits": Knob("choice", choices=(7, 8), doc="Input range bits: 7 (fbgemm's default, any x86 CPU) or 8 "
                                                       "(half the rounding error; CPUs with VNNI)."),
        "seed": Knob("int", 0, 2**31 - 1, doc="Seed of the rotation."),
    }

    def check_model(self, model) -> None:
        check_fbgemm()
        check_int8_act_bits(self.act_bits)
        if model.device.type != "cpu":
            raise InputError(f"int8_dynamic runs on CPU only (fbgemm); the model is on {model.device}. Use a simulated "
                             "method (get_method('rtn', bits=8)) on GPU.")
        if self.online_had and self.rotation == "none":
            raise InputError("int8_dynamic: online_had=True needs rotation='rh' (the online Hadamard before down_proj "
                             "is part of QuaRot's rotation); set rotation='rh' or online_had=False.")
        if self.rotation != "none":
            check_rotatable(model)

    def intervention(self, model) -> QuantEdit:
        self.check_model(model)
        per_token = self.act_ranges == "token"

        def apply(m, ed, iv):
            online = {}
            if self.rotation != "none":
                online = rotate(m, ed, residual_rotation(m.info.d_model, self.rotation, self.seed),
                                online_had=self.online_had, install_online=False, note=f"rotated for {iv.label}")
            for layer, kind in linear_sites(m):
                mod = Int8DynamicLinear(m.linear_weight(layer, kind), m.linear_bias(layer, kind), per_token,
                                        transform=online.get(layer) if kind == "down" else None,
                                        act_bits=self.act_bits)
                ed.replace_linear(layer, kind, mod, note=iv.note())
            if self.lm_head:
                W = m.weights()
                ed.replace_unembedding(Int8DynamicLinear(W.W_U.t(), W.b_U, per_token, act_bits=self.act_bits),
                                       note=iv.note())

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
        tied = model.is_shared_parameter(model.unembedding_module().weight)
        W_U = model.weights().W_U
        if self.lm_head:
            w += W_U.numel()  # the int8 copy
            if not tied:
                w -= W_U.numel() * W_U.element_size()  # an untied float lm_head goes away
        elif self.rotation != "none":
            w += rotation_extra_bytes(model, False)  # rotated embedding and float lm_head differ
        if self.online_had:  # the Kronecker factors of every down_proj's online Hadamard
            w += rotation_extra_bytes(model, True) - rotation_extra_bytes(model, False)
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, kv, base, kv, "real",
                    "int8 weights (fbgemm, per-channel scales not counted); float32 embedding"
                    + ("" if self.lm_head else "; float32 lm_head"))
