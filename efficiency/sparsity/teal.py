"""TEAL (Liu et al. 2024): training-free activation sparsity by magnitude thresholds on projection inputs.

Every projection's input x (q, k, v, o, gate, up, down) is thresholded, x <- x * 1[|x| > t], with t per
layer and projection calibrated so that a fraction ``sparsity`` of the inputs is zeroed on calibration
text (``calibrate_teal``: magnitude histograms, no symmetry assumed). ``allocation="uniform"`` gives every
projection that sparsity; ``"greedy"`` runs TEAL's per-block greedy allocation (``greedy_allocation``)
and gives each block the allocation whose parameter-weighted sparsity is closest to the target.

Real saving: ``mode="gather"`` installs ``SparseInputLinear`` modules whose single-token (decode) path is
a gather-GEMV reading only the kept weight columns; it pays where the matrix is large and the sparsity
high (the benchmark reports it per matrix, including where it is slower). Prefill and ``mode="mask"``
compute the masked dense product (same numbers, no speed-up). Sparsity 0 installs nothing: exactly the
dense model. Every token is sparsified (TEAL's evaluation leaves the first half of the prompt dense in
prefill; here prefill and decode see the same thresholds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from workbench.edits import WeightEdit
from workbench.errors import InputError

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .calibration import TealCalibration, calibrate_teal
from .gather_linear import SparseInputLinear
from .gather_mlp import FusedSiteView, SparseGatedMLP
from .greedy import KINDS, GreedyAllocation, greedy_allocation


class TealEdit(WeightEdit):
    """Replace each (layer, kind) linear with a ``SparseInputLinear`` at its threshold; with ``fuse_mlp``,
    each MLP whose gate and up share a threshold (and has a down threshold) becomes a ``SparseGatedMLP``."""

    def __init__(self, thresholds: dict, mode: str, fuse_mlp: bool = False):
        self.thresholds = thresholds  # {(layer, kind): t}, only t > 0
        self.mode = mode
        self.fuse_mlp = fuse_mlp
        self.modules: dict = {}

    def fused_layers(self) -> list[int]:
        th = self.thresholds
        return sorted(l for (l, k) in th if k == "gate" and self.fuse_mlp and self.mode == "gather"
                      and (l, "up") in th and (l, "down") in th and th[l, "up"] == th[l, "gate"])

    def edit(self, model, editor) -> None:
        self.modules = {}
        fused = set(self.fused_layers())
        for layer in sorted(fused):
            if any(model.linear_bias(layer, k) is not None for k in ("gate", "up", "down")):
                raise InputError("teal(fuse_mlp=True) supports MLPs without biases only.")
            mlp = SparseGatedMLP(model.linear_weight(layer, "gate"), model.linear_weight(layer, "up"),
                                 model.linear_weight(layer, "down"), self.thresholds[layer, "gate"],
                                 self.thresholds[layer, "down"])
            editor.replace_component(layer, "mlp", mlp)
            self.modules[layer, "gate"] = self.modules[layer, "up"] = FusedSiteView(mlp, "in")
            self.modules[layer, "down"] = FusedSiteView(mlp, "down")
        for (layer, kind), t in sorted(self.thresholds.items()):
            if layer in fused and kind in ("gate", "up", "down"):
                continue
            mod = SparseInputLinear(model.linear_weight(layer, kind), model.linear_bias(layer, kind), t, self.mode)
            editor.replace_linear(layer, kind, mod)
            self.modules[layer, kind] = mod

    def describe(self) -> str:
        return f"TEAL({len(self.thresholds)} linears, {self.mode})"

    __repr__ = describe


@register_method("teal")
@dataclass
class TEAL(EfficiencyMethod):
    """Magnitude-thresholded projection inputs at a target ``sparsity`` (module docstring)."""

    sparsity: float = 0.5
    allocation: str = "uniform"
    mode: str = "gather"
    kinds: tuple = KINDS
    window: int = 256
    n_windows: int = 8
    greedy_step: float = 0.05
    fuse_mlp: bool = False
    calibration: TealCalibration | None = field(default=None, repr=False, compare=False)
    greedy: GreedyAllocation | None = field(default=None, repr=False, compare=False)

    family: ClassVar[str] = "sparsity"
    needs_calibration: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {
        "sparsity": Knob("float", 0.0, 1.0, high_open=True, doc="Fraction of every projection input zeroed."),
        "allocation": Knob("choice", choices=("uniform", "greedy")),
        "mode": Knob("choice", choices=("gather", "mask"), doc="gather: real gather-GEMV at decode; mask: simulation."),
        "window": Knob("int", 8, 8192), "n_windows": Knob("int", 1, 100000),
        "greedy_step": Knob("float", 0.001, 0.5, doc="Parameter-weighted sparsity added per greedy step."),
        "fuse_mlp": Knob("bool", doc="One gather for gate and up (replaces the MLP; its inner hooks go quiet)."),
    }

    def validate(self) -> None:
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise InputError(f"teal: kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}.")

    def check_model(self, model) -> None:
        missing = [k for k in self.kinds if k not in model.linear_kinds]
        if missing:
            raise InputError(f"teal: this model has no {missing} linears; pass kinds= among {model.linear_kinds}.")
        if self.calibration is not None and self.calibration.n_layers != model.info.n_layers:
            raise InputError("teal: the calibration was made on another model; call prepare(model, texts) again.")

    def prepare(self, model, texts=None) -> None:
        """Histograms on ``texts`` (and the greedy allocation when ``allocation="greedy"``)."""
        self.check_model(model)
        if self.calibration is None:
            self.calibration = calibrate_teal(model, texts, self.window, self.n_windows)
        if self.allocation == "greedy" and self.greedy is None:
            self.greedy = greedy_allocation(model, texts, self.calibration, max_sparsity=max(0.7, self.sparsity + 0.05),
                                            step=self.greedy_step)

    def sparsities(self, model) -> dict:
        """{(layer, kind): target sparsity} of every linear this method sparsifies."""
        n = model.info.n_layers
        if self.allocation == "greedy":
            if self.greedy is None:
                raise InputError("teal: allocation='greedy' needs prepare(model, texts) first.")
            return {(l, k): s for l in range(n) for k, s in self.greedy.allocation(l, self.sparsity).items()
                    if k in self.kinds}
        return {(l, k): self.sparsity for l in range(n) for k in self.kinds}

    def thresholds(self, model) -> dict:
        """{(layer, kind): |x| threshold} for every linear with a sparsity above 0."""
        if self.sparsity == 0:
            return {}
        if self.calibration is None:
            raise InputError("teal: call prepare(model, texts) first (thresholds are calibrated on texts).")
        return {key: self.calibration.threshold(key[0], key[1], s) for key, s in self.sparsities(model).items() if s > 0}

    def intervention(self, model):
        self.check_model(model)
        return TealEdit(self.thresholds(model), self.mode, self.fuse_mlp)

    @property
    def saving(self) -> str:
        return "mixed" if self.mode == "gather" and self.sparsity > 0 else ("simulated" if self.sparsity > 0 else "real")

    def cost(self, model, n_tokens: int) -> Cost:
        base = model.parameter_bytes()
        kv = kv_bytes_full(model, n_tokens)
        w = base
        if self.fuse_mlp and self.sparsity > 0:  # the MLP's linears stay in the model next to the fused copy
            edit = TealEdit(self.thresholds(model), self.mode, True)
            for l in edit.fused_layers():
                w += sum(model.linear_weight(l, k).numel() * model.linear_weight(l, k).element_size()
                         for k in ("gate", "up", "down"))
        note = ("no bytes saved (the weights are stored transposed, same size); decode time falls where the "
                "gather-GEMV pays (large matrices, high sparsity), see the benchmark" if self.mode == "gather"
                else "simulated: masked dense products, no saving")
        return Cost(n_tokens, w, kv, base, kv, self.saving, note)
