"""``wa_quant``: weights and activations quantized together (W8A8, W4A8, W4A4, ...), optionally on a rotated
model, with the KV cache through KIVI.

What it installs (one ``QuantEdit``, undone exactly):

1. the residual rotation when ``rotation`` is "rh" (randomized Hadamard) or "ro" (random orthogonal),
   with the norm gains folded, the per-head V/O Hadamard (``head_rotation``), and the online Hadamard before
   down_proj (``online_had``) (``efficiency.quant.rotation``);
2. weights on a ``w_bits`` grid (``group``, ``w_sym``) by round-to-nearest (``weights="rtn"``) or GPTQ
   (``weights="gptq"``, calibrated by ``prepare(model, texts)`` on the rotated model, with the online
   Hadamard applied to down_proj's inputs);
3. the input of every linear (q, k, v, o, gate, up, down) fake-quantized per token to ``a_bits``
   (``a_sym``, ``a_clip``): each linear is replaced by a ``QuantLinear`` that quantizes its own input, so
   o_proj and down_proj, whose inputs have no norm in front, are covered too. The residual stream, norms,
   attention scores and softmax stay float (as in QuaRot and MobileQuant);
4. ``kv_bits``: the KV cache quantized by KIVI (``cache_policy``; keys per channel, values per token, the
   newest tokens kept float). It acts where a cache is used (generation, ``efficiency.kv.perplexity``
   after the prefix), not in a plain ``model.run``. QuaRot instead quantizes K after RoPE and a per-head
   Hadamard; KIVI's per-channel keys handle the outlier channels of K differently.

Everything below 8 bits, and the activation quantizer, is simulated (fake quantization in float32):
``saving == "simulated"`` ("mixed" with KV quantization, whose memory saving is real). ``cost`` reports
the packed weight bytes and KIVI's KV bytes.

The float twin (``float_twin(model)``): the same rotation without any quantization, i.e. the same logits as
the original model in the rotated basis; analyses compare the quantized model against it token by token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch

from workbench.errors import InputError

from ..kv.methods import KVQuantization
from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .base import (GROUP_KNOB, QuantEdit, check_groups_fit, check_not_quantized, fp_bytes, held_weight_bytes,
                   linear_sites, packed_total)
from .calibration import calibration_windows
from .gptq import GPTQ
from .grids import WEIGHT_BITS, quantize_weight
from .hadamard import KroneckerHadamard, factor
from .modules import ActQuantizer, QuantLinear
from .rotate import _RotationEdit
from .rotation import check_rotatable, residual_rotation, rotate, rotation_extra_bytes


@register_method("wa_quant")
@dataclass
class WAQuant(EfficiencyMethod):
    """Weights, activations (per token) and KV cache quantized, optionally after a rotation (module docstring)."""

    w_bits: int | None = 4
    a_bits: int | None = 4
    kv_bits: int | None = None
    group: int | None = None
    w_sym: bool = True
    a_sym: bool = True
    a_clip: float = 1.0
    weights: str = "rtn"
    rotation: str = "none"
    head_rotation: bool = True
    online_had: bool = False
    seed: int = 0
    n_samples: int = 16
    seq_len: int | None = None

    family: ClassVar[str] = "activation-quantization"
    knobs: ClassVar[dict[str, Knob]] = {
        "w_bits": Knob("choice", choices=(None,) + WEIGHT_BITS, doc="Weight bits (None: float weights)."),
        "a_bits": Knob("choice", choices=(None, 4, 8), doc="Activation bits, per token (None: float inputs)."),
        "kv_bits": Knob("choice", choices=(None, 2, 4, 8), doc="KV-cache bits through KIVI (None: float cache)."),
        "group": GROUP_KNOB,
        "w_sym": Knob("bool", doc="Symmetric weight grid."),
        "a_sym": Knob("bool", doc="Symmetric activation grid (else asymmetric with an integer zero point)."),
        "a_clip": Knob("float", 0.5, 1.0, doc="Activation range kept (1.0: the token's full range)."),
        "weights": Knob("choice", choices=("rtn", "gptq"), doc="Weight quantizer (gptq needs prepare())."),
        "rotation": Knob("choice", choices=("none", "rh", "ro"), doc="Residual rotation before quantizing."),
        "head_rotation": Knob("bool", doc="Per-head Hadamard on V, undone in o_proj (with a rotation)."),
        "online_had": Knob("bool", doc="Online Hadamard on down_proj's input."),
        "seed": Knob("int", 0, 2**31 - 1, doc="Seed of the random rotation."),
        "n_samples": Knob("int", 1, 4096, doc="GPTQ calibration windows."),
        "seq_len": Knob("int", 2, 8192, optional=True,
                        doc="Tokens per GPTQ calibration window (None: 512, fitted to the model's context and the texts)."),
    }
    needs_calibration: ClassVar[bool] = False  # only with weights="gptq" (and dfrot): prepare() says so
    state: dict | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if self.w_bits is None and self.a_bits is None and self.kv_bits is None:
            raise InputError(f"{self.name}: nothing to quantize (w_bits, a_bits and kv_bits are all None); for a rotation "
                             "alone use get_method('rotate').")
        if self.weights == "gptq" and self.w_bits is None:
            raise InputError(f"{self.name}: weights='gptq' needs w_bits.")

    @property
    def rotated(self) -> bool:
        return self.rotation != "none"

    def check_model(self, model) -> None:
        if self.rotated:
            check_rotatable(model)
            if self.rotation == "rh":
                factor(model.info.d_model)  # raises when no Hadamard matrix of that size can be built
            if self.head_rotation:
                factor(model.info.d_head)
        if self.online_had:
            if "down" not in model.linear_kinds:
                raise InputError(f"{self.name}: online_had needs a down projection.")
            factor(model.info.d_mlp)
        if self.w_bits is not None:
            check_groups_fit(model, self.group)

    @property
    def calibrates(self) -> bool:
        return self.weights == "gptq"

    # ------------------------------------------------------------------ rotation
    def residual_matrix(self, model) -> torch.Tensor | None:
        """The residual rotation (a ``Rotation`` or a (d, d) orthogonal matrix), or None."""
        if not self.rotated:
            return None
        return residual_rotation(model.info.d_model, self.rotation, self.seed)

    def _rotate(self, model, editor, install_online: bool, note: str) -> dict:
        """Apply the rotation (if any) and the online Hadamard; returns {layer: transform} of the online ones."""
        Q = self.residual_matrix(model)
        if Q is not None:
            return rotate(model, editor, Q, self.head_rotation, self.online_had, install_online, note=note)
        online = {}
        if self.online_had:
            for l in range(model.info.n_layers):
                W = model.linear_weight(l, "down")
                T = KroneckerHadamard(W.shape[1], dtype=W.dtype, device=W.device)
                wd = KroneckerHadamard(W.shape[1], dtype=torch.float64, device=W.device)(W.double()).to(W.dtype)
                online[l] = T
                if install_online:
                    editor.replace_linear(l, "down", QuantLinear(wd, model.linear_bias(l, "down"), transform=T), note=note)
                else:
                    editor.set_linear(l, "down", weight=wd, note=note)
        return online

    def float_twin(self, model):
        """The rotation of this method without quantization (an Intervention), or None without rotation."""
        if not self.rotated and not self.online_had:
            return None

        def apply(m, ed, iv):
            self._rotate(m, ed, install_online=True, note=f"rotated as in {self.label}")

        return _RotationEdit(f"float twin of {self.label}", apply)

    # ------------------------------------------------------------------ calibration
    def prepare(self, model, texts: Sequence[str] | None = None) -> None:
        """GPTQ calibration (weights="gptq") on ``texts``, on the rotated model; nothing for RTN."""
        if not self.calibrates:
            return
        self.check_model(model)
        check_not_quantized(model, self.label)
        ids = calibration_windows(model, texts, self.n_samples, self.seq_len, who=self.label)
        gptq = self._gptq()
        with model.edit_weights(label=f"calibrating {self.label}") as ed:
            online = self._rotate(model, ed, install_online=True, note="calibration")
            gptq.state = gptq.calibrate(model, ed, ids, transforms=online)
        self.state = {**(self.state or {}), "gptq": gptq}

    def _gptq(self) -> GPTQ:
        return GPTQ(bits=self.w_bits, group=self.group, sym=self.w_sym, n_samples=self.n_samples, seq_len=self.seq_len)

    @property
    def report(self):
        """GPTQ's per-linear proxy losses against RTN (weights="gptq", after prepare)."""
        if not self.state or "gptq" not in self.state:
            raise InputError(f"{self.label} has no GPTQ report: it uses weights='gptq' only after prepare().")
        return self.state["gptq"].report

    # ------------------------------------------------------------------ install
    def _quantize(self, model, layer, kind, W):
        if self.weights == "gptq":
            if not self.state or "gptq" not in self.state:
                raise InputError(f"{self.label} uses GPTQ weights: call method.prepare(model, texts) first.")
            return self.state["gptq"].quantize_site(model, layer, kind, W)
        return quantize_weight(W, self.w_bits, self.group, self.w_sym)

    def intervention(self, model):
        if self.w_bits is None and self.a_bits is None and not self.rotated and not self.online_had:
            return None  # KV only: everything is in the cache policy
        self.check_model(model)

        def apply(m, ed, iv):
            online = self._rotate(m, ed, install_online=False, note=iv.note())
            act = None if self.a_bits is None else ActQuantizer(self.a_bits, self.a_sym, self.a_clip)
            for layer, kind in linear_sites(m):
                W = m.linear_weight(layer, kind)
                if self.w_bits is not None:
                    W = iv.hold(layer, kind, self._quantize(m, layer, kind, W)).to(W.dtype)
                T = online.get(layer) if kind == "down" else None
                if act is not None or T is not None:
                    ed.replace_linear(layer, kind, QuantLinear(W, m.linear_bias(layer, kind), transform=T, act=act),
                                      note=iv.note())
                else:
                    ed.set_linear(layer, kind, weight=W, note=iv.note())

        return QuantEdit(self.label, apply)

    def cache_policy(self, model):
        return None if self.kv_bits is None else self._kv().cache_policy(model)

    def _kv(self) -> KVQuantization:
        return KVQuantization(bits=self.kv_bits)

    # ------------------------------------------------------------------ cost
    @property
    def saving(self) -> str:
        if self.w_bits is None and self.a_bits is None:
            return "real"
        return "mixed" if self.kv_bits is not None else "simulated"

    def measured_weight_bytes(self, model, intervention) -> int:
        """With w_bits: the packed weights held in place of their float32 stand-ins (``held_weight_bytes``);
        rotation extras (untied embedding, online Hadamard factors) are counted as the model holds them."""
        return held_weight_bytes(model, intervention)

    def cost(self, model, n_tokens: int) -> Cost:
        base = model.parameter_bytes()
        w = base
        if self.rotated or self.online_had:
            w += rotation_extra_bytes(model, self.online_had) if self.rotated else (
                rotation_extra_bytes(model, True) - rotation_extra_bytes(model, False))
        notes = []
        if self.w_bits is not None:
            sites = linear_sites(model)
            w += packed_total(model, sites, self.w_bits, self.group, self.w_sym) - fp_bytes(model, sites)
            notes.append(f"W{self.w_bits} packed (simulated)")
        if self.a_bits is not None:
            notes.append(f"A{self.a_bits} per token (simulated, no bytes saved)")
        full = kv_bytes_full(model, n_tokens)
        kv = full
        if self.kv_bits is not None:
            kv = self._kv().cost(model, n_tokens).kv_bytes
            notes.append(f"KV{self.kv_bits} by KIVI (real memory)")
        if self.rotated:
            notes.append("rotation: untied embedding copy on tied models")
        return Cost(n_tokens, int(w), int(kv), base, full, self.saving, "; ".join(notes))
