"""What every quantization method shares: the double-quantization guard, the weight-editing intervention,
and the cost model of packed weights.

Every method edits weights through ``model.edit_weights()`` inside a ``workbench.WeightEdit`` (so the
edits hold inside ``model.intervene(...)`` and are undone bit-exactly afterwards, also after an error),
and marks each quantized linear with a note starting ``"quantized by "`` in ``Model.active_edits()``.
A second quantization on top of a quantized model is refused (``check_not_quantized``); a rotation is
not a quantization, so quantizing a rotated model is allowed.

Cost model (``packed_cost``): the weights a deployment would hold are the model's parameters with each
quantized linear's float32 weight replaced by its packed form (``packing.packed_bytes``), plus what the
method adds (an untied embedding copy after a rotation, online Hadamard factors). The simulation holds
the fake-quantized float32 weights *and* the packed codes (``QuantEdit.packed``); tests check that
``model.parameter_bytes() - float32 bytes of the quantized linears + packed bytes held`` equals the
predicted ``Cost.weight_bytes``: that is what ``measured_weight_bytes`` (``held_weight_bytes``) measures, while
``model.parameter_bytes()`` stays the bytes this process really holds.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import torch

from workbench.edits import WeightEdit, WeightEditor
from workbench.errors import InputError

from .grids import QuantizedWeight, check_group
from .packing import PackedWeight, packed_bytes

if TYPE_CHECKING:
    from workbench.model import Model

NOTE = "quantized by "
LLAMA_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def quantized_edits(model: "Model") -> list[tuple[str, str]]:
    """(target, note) of every quantization edit in force on ``model``."""
    return [(t, how) for t, how in model.active_edits() if how.startswith(NOTE)]


def check_not_quantized(model: "Model", label: str) -> None:
    done = quantized_edits(model)
    if done:
        targets = ", ".join(t for t, _ in done[:4]) + (" ..." if len(done) > 4 else "")
        raise InputError(f"{label}: the model is already quantized ({done[0][1]!r} on {targets}). Quantizing twice "
                         "compounds two grids; leave the first `with model.intervene(...)` block first, or run inside "
                         "`with model.without_interventions():` to start from the original weights.")


def linear_sites(model: "Model", kinds=None) -> list[tuple[int, str]]:
    kinds = model.linear_kinds if kinds is None else kinds
    return [(l, k) for l in range(model.info.n_layers) for k in kinds]


def check_groups_fit(model: "Model", group: int | None, kinds=None) -> None:
    """Every quantized linear's input dim must be a multiple of ``group``."""
    for k in (model.linear_kinds if kinds is None else kinds):
        n_in = model.linear_weight(0, k).shape[1]
        check_group(group, n_in, f"{k} projection ({k} linears take {n_in} inputs)")


def fp_bytes(model: "Model", sites) -> int:
    """Bytes of the current weights (not biases) of the given linears."""
    return sum(model.linear_weight(l, k).numel() * model.linear_weight(l, k).element_size() for l, k in sites)


def packed_total(model: "Model", sites, bits: int, group: int | None, sym: bool) -> int:
    total = 0
    for l, k in sites:
        out, n_in = model.linear_weight(l, k).shape
        total += packed_bytes(out, n_in, bits, group, sym)
    return total


def held_weight_bytes(model: "Model", intervention) -> int:
    """Physical bytes of the weights a deployment of a simulated quantization holds, measured while
    ``intervention`` (a ``QuantEdit``, or None) is in force: ``model.parameter_bytes()`` minus the bytes of the
    fake-quantized stand-in weights of the linears it quantized, plus the packed codes and grid parameters it
    really holds (``QuantEdit.packed``). Everything else (norms, embeddings, rotation extras, biases) is counted
    as the model holds it."""
    total = model.parameter_bytes()
    packed = getattr(intervention, "packed", None) or {}
    return total - fp_bytes(model, packed) + sum(p.nbytes for p in packed.values())


class QuantEdit(WeightEdit):
    """The intervention of a quantization method: ``apply(model, editor, self)`` makes the edits.

    packed: {(layer, kind): PackedWeight} of the linears quantized in the current application (the
    packed form held while the intervention is in force; cleared when it ends)."""

    def __init__(self, label: str, apply: Callable[["Model", WeightEditor, "QuantEdit"], None]):
        self.label = label
        self._apply = apply
        self.packed: dict[tuple[int, str], PackedWeight] = {}

    def edit(self, model, editor) -> None:
        check_not_quantized(model, self.label)
        self.packed = {}
        self._apply(model, editor, self)

    @contextmanager
    def applied(self, model):
        try:
            with super().applied(model):
                yield
        finally:
            self.packed = {}

    def hold(self, layer: int, kind: str, q: QuantizedWeight) -> torch.Tensor:
        """Keep the packed form of ``q`` for (layer, kind) and return its dequantized weight (float32)."""
        p = PackedWeight.from_quantized(q)
        self.packed[(layer, kind)] = p
        return q.dequantize()

    def packed_bytes(self) -> int:
        """Bytes of the packed codes and grid parameters held now (0 outside the intervention)."""
        return sum(p.nbytes for p in self.packed.values())

    def note(self) -> str:
        return NOTE + self.label

    def describe(self) -> str:
        return self.label

    def __repr__(self) -> str:
        return f"QuantEdit({self.label})"


# ---------------------------------------------------------------------------------------------- weight methods
from dataclasses import dataclass  # noqa: E402
from typing import ClassVar  # noqa: E402

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full  # noqa: E402
from .grids import GROUPS, WEIGHT_BITS  # noqa: E402

BITS_KNOB = Knob("choice", choices=WEIGHT_BITS, doc="Bits per weight.")
GROUP_KNOB = Knob("choice", choices=GROUPS, doc="Input columns per grid (None: one grid per output channel); must "
                                                "divide every quantized linear's input dimension.")
SYM_KNOB = Knob("bool", doc="Symmetric grid (s·q, no zero) instead of asymmetric (s·q + m).")


@dataclass
class WeightQuantMethod(EfficiencyMethod):
    """Base of weight-only quantization of every layer-wise linear (q, k, v, o, gate, up, down): subclasses give
    ``quantize_site(model, layer, kind, W) -> QuantizedWeight``. The embedding and the unembedding stay float."""

    bits: int = 4
    group: int | None = None
    sym: bool = False

    family: ClassVar[str] = "weight-quantization"
    knobs: ClassVar[dict[str, Knob]] = {"bits": BITS_KNOB, "group": GROUP_KNOB, "sym": SYM_KNOB}

    def check_model(self, model) -> None:
        check_groups_fit(model, self.group)

    def quantize_site(self, model, layer: int, kind: str, W: torch.Tensor) -> QuantizedWeight:
        raise NotImplementedError

    def intervention(self, model) -> QuantEdit:
        self.check_model(model)

        def apply(m, ed, iv):
            for layer, kind in linear_sites(m):
                W = m.linear_weight(layer, kind)
                q = self.quantize_site(m, layer, kind, W)
                ed.set_linear(layer, kind, weight=iv.hold(layer, kind, q).to(W.dtype), note=iv.note())

        return QuantEdit(self.label, apply)

    @property
    def saving(self) -> str:
        return "simulated"

    def measured_weight_bytes(self, model, intervention) -> int:
        """The packed form held in place of the float32 stand-ins (``held_weight_bytes``); the process's own
        bytes stay ``model.parameter_bytes()``."""
        return held_weight_bytes(model, intervention)

    def cost(self, model, n_tokens: int) -> Cost:
        base = model.parameter_bytes()
        sites = linear_sites(model)
        w = base - fp_bytes(model, sites) + packed_total(model, sites, self.bits, self.group, self.sym)
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, kv, base, kv, "simulated",
                    f"{self.bits}-bit codes packed per row + float16 grid parameters (held next to the fake-quantized "
                    "float32 weights the simulation computes with); embeddings and norms unchanged")
