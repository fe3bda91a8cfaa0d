"""The efficiency-method protocol: one shape for every way of making the model cheaper.

An efficiency method is a small dataclass (one per file, registered by name, like KV policies) whose
fields are its knobs. It says:

- ``name`` (registry name) and ``family`` (one of ``FAMILIES``);
- ``knobs``: the range of every field (``Knob``), checked when the method is built, so a bad
  setting fails at once with a message naming the knob and its range;
- what it installs: ``intervention(model)`` (weight edits or hooks, an ``Intervention``) and/or
  ``cache_policy(model)`` (a ``CachePolicy`` for the KV cache); either may be None;
- ``prepare(model, texts)``: calibration (thresholds, Hessians, scores) on texts, done once before
  use; methods that need none leave it empty. ``needs_calibration`` says which do;
- ``cost(model, n_tokens)``: its cost model, the physical bytes of weights and KV cache it predicts
  for a context of ``n_tokens`` (``Cost``), next to the unmodified model's;
- ``saving``: "real" when this machine really holds fewer bytes or runs faster with it, "simulated"
  when the numbers are computed in full precision and only the packed size is reported (sub-8-bit
  weights, fake-quantized activations), "mixed" when part is real.

Measured bytes come from what the model and its cache really hold (``Model.parameter_bytes()``,
``KVCache.stats().physical_bytes``), so tests check that each cost model is right.

Adding a method: see ``efficiency/registry.py`` (checklist) and ``docs/architecture.md``.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from workbench.errors import InputError
from workbench.intervention import Compose, Intervention

FAMILIES = ("kv-eviction", "kv-quantization", "kv-sparse-coding", "weight-quantization", "activation-quantization", "rotation",
            "sparsity", "pruning", "low-rank", "latent-attention", "combined")
SAVINGS = ("real", "simulated", "mixed")


@dataclass(frozen=True)
class Knob:
    """The range of one setting. kind: "int", "float", "bool", "choice" or "layers" (a list of layer indices).

    Numbers must lie in [low, high] (``high_open`` makes the upper end exclusive, e.g. a ratio in [0, 1));
    a choice must be one of ``choices``; layers must be valid layer indices of the model (checked later).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    high_open: bool = False
    optional: bool = False  # None is allowed (meaning "the method's default behaviour")
    doc: str = ""

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind in ("int", "float"):
            hi = ")" if self.high_open else "]"
            return f"{self.kind} in [{self.low}, {self.high}{hi}"
        if self.kind == "layers":
            return "a list of layer indices"
        return self.kind

    def check(self, owner: str, name: str, value: Any) -> None:
        if value is None and self.optional:
            return
        bad = InputError(f"{owner}: {name}={value!r} is out of range; expected {self.range_text()}"
                         f"{' or None' if self.optional else ''}.{(' ' + self.doc) if self.doc else ''}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
        elif self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            if self.kind == "int" and not float(value).is_integer():
                raise bad
            if self.low is not None and value < self.low:
                raise bad
            if self.high is not None and (value >= self.high if self.high_open else value > self.high):
                raise bad
        elif self.kind == "choice":
            if value not in self.choices:
                raise bad
        elif self.kind == "layers":
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise bad
        else:
            raise InputError(f"{owner}: knob {name!r} has an unknown kind {self.kind!r}.")


@dataclass(frozen=True)
class Cost:
    """Physical bytes with the method and without it.

    weight_bytes: bytes the weights occupy with the method (in its packed format where it has one);
    kv_bytes: bytes of the KV cache for ``n_tokens`` of context; baseline_*: the same for the
    unmodified model; saving: "real" | "simulated" | "mixed"; note: what is and is not real.
    """

    n_tokens: int
    weight_bytes: int
    kv_bytes: int
    baseline_weight_bytes: int
    baseline_kv_bytes: int
    saving: str
    note: str = ""

    @property
    def weight_ratio(self) -> float:
        return self.weight_bytes / max(self.baseline_weight_bytes, 1)

    @property
    def kv_ratio(self) -> float:
        return self.kv_bytes / max(self.baseline_kv_bytes, 1)

    @property
    def total_ratio(self) -> float:
        return (self.weight_bytes + self.kv_bytes) / max(self.baseline_weight_bytes + self.baseline_kv_bytes, 1)


POSITION_BYTES = 8  # the workbench cache holds each entry's original position as int64


def kv_bytes_full(model, n_tokens: int, dtype_bytes: int | None = None) -> int:
    """Bytes of an uncompressed KV cache of ``n_tokens``: K and V of every layer and KV head, plus the int64
    position of every entry (``KVCache.positions``), as ``KVCache.stats().physical_bytes`` counts them."""
    i = model.info
    if dtype_bytes is None:
        dtype_bytes = model.weights().W_E.element_size()
    return n_tokens * i.n_layers * i.n_kv_heads * (i.d_head * 2 * dtype_bytes + POSITION_BYTES)


@dataclass
class EfficiencyMethod:
    """Base of efficiency methods (see the module docstring). Subclasses are dataclasses whose fields are
    the knobs, with ``knobs`` giving each field's range."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    knobs: ClassVar[dict[str, Knob]] = {}
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        owner = self.name or type(self).__name__
        fields = {f.name for f in dataclasses.fields(self)}
        for key, knob in self.knobs.items():
            if key not in fields:
                raise InputError(f"{owner}: knob {key!r} is not a field of {type(self).__name__}.")
            knob.check(owner, key, getattr(self, key))
        self.validate()

    # ------------------------------------------------------------------ what subclasses provide
    def validate(self) -> None:
        """Checks across knobs (e.g. a group size that must divide another setting)."""

    def check_model(self, model) -> None:
        """Raise InputError if the method cannot run on ``model`` (unsupported architecture, layer out of range)."""

    def prepare(self, model, texts: Sequence[str] | None = None) -> None:
        """Calibrate on ``texts`` (methods with ``needs_calibration``); others need nothing."""

    def intervention(self, model) -> Intervention | None:
        return None

    def cache_policy(self, model):
        return None

    @property
    def saving(self) -> str:
        return "real"

    def cost(self, model, n_tokens: int) -> Cost:
        """Predicted physical bytes for a context of ``n_tokens``; default: the method changes neither."""
        w = model.parameter_bytes()
        kv = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, kv, w, kv, self.saving)

    # ------------------------------------------------------------------ measured bytes
    def kv_tokens_kept(self, model, n_tokens: int) -> int:
        """Entries per layer and KV head its cache policy leaves of ``n_tokens`` (eviction keeps fewer; default all).
        ``Combined.cost`` chains it: a KV method after an eviction sees the kept count."""
        return int(n_tokens)

    def measured_weight_bytes(self, model, intervention) -> int:
        """Physical bytes of the weights as this method holds them, measured from the tensors really held.

        Called while ``intervention`` (what ``intervention(model)`` returned, or None) is in force. Default:
        ``model.parameter_bytes()``, right for methods that store their weights in their final form
        (int8 modules, pruned or low-rank linears). A simulated method, whose model computes with
        full-precision stand-ins while it holds the packed form aside, overrides this to count what a
        deployment holds: ``model.parameter_bytes()`` minus the stand-ins' bytes plus the packed tensors held.
        """
        return model.parameter_bytes()

    def measured_kv_bytes(self, model, cache) -> int:
        """Physical bytes of a KV cache produced with this method's cache policy (``KVCache.stats()``)."""
        return int(cache.stats().physical_bytes)

    def measure(self, model, prompt) -> Cost:
        """The bytes measured on this machine with the method in force, for ``prompt`` (a text or (T,)/(1, T)
        ids) as the context: ``cost(model, T)`` predicts exactly these numbers.

        weight_bytes: ``measured_weight_bytes`` inside the method's intervention; kv_bytes: the physical
        bytes of the cache after prefilling ``prompt`` with its cache policy (under its intervention);
        baseline_*: the clean model's ``parameter_bytes()`` and full cache, measured the same way. Runs
        two prefills. Call ``prepare`` first for methods that calibrate.
        """
        from workbench.generation import prefill

        self.check_model(model)
        with model.without_interventions():
            base_w = model.parameter_bytes()
            base_cache = prefill(model, prompt)
            base_kv = int(base_cache.stats().physical_bytes)
            n = int(base_cache.next_position)
            del base_cache
            iv = self.intervention(model)
            with (model.intervene(iv) if iv is not None else nullcontext()):
                w = int(self.measured_weight_bytes(model, iv))
                cache = prefill(model, prompt, cache_policy=self.cache_policy(model))
                kv = int(self.measured_kv_bytes(model, cache))
        return Cost(n, w, kv, base_w, base_kv, self.saving, "measured")

    # ------------------------------------------------------------------ shared
    @property
    def label(self) -> str:
        """The name with every knob, e.g. ``rtn(bits=4, group=32)``; two settings never share a label."""
        parts = [f"{k}={getattr(self, k)}" for k in self.knobs]
        return f"{self.name or type(self).__name__}({', '.join(parts)})"

    def describe_knobs(self) -> dict[str, str]:
        return {k: kn.range_text() for k, kn in self.knobs.items()}

    def __add__(self, other: "EfficiencyMethod") -> "Combined":
        return Combined([self, other])


@dataclass
class Combined(EfficiencyMethod):
    """Several methods at once (e.g. int8 weights + 4x KV eviction): interventions composed in order, cache
    policies applied in sequence, costs combined (weights from the weight methods, KV from the cache ones)."""

    methods: list = dataclasses.field(default_factory=list)

    name: ClassVar[str] = "combined"
    family: ClassVar[str] = "combined"

    def validate(self) -> None:
        flat = []
        for m in self.methods:
            if not isinstance(m, EfficiencyMethod):
                raise InputError(f"Combined takes efficiency methods, got {type(m).__name__}.")
            flat.extend(m.methods if isinstance(m, Combined) else [m])
        if not flat:
            raise InputError("Combined needs at least one method.")
        self.methods = flat

    def check_model(self, model) -> None:
        for m in self.methods:
            m.check_model(model)

    def prepare(self, model, texts=None) -> None:
        for m in self.methods:
            m.prepare(model, texts)

    def intervention(self, model):
        pairs = [(m, iv) for m in self.methods if (iv := m.intervention(model)) is not None]
        return CombinedIntervention(pairs) if pairs else None

    def measured_weight_bytes(self, model, intervention) -> int:
        """The sum of each part's change: ``parameter_bytes() + Σ_i (measured_i − parameter_bytes())``, each part
        measured against its own sub-intervention (so each simulated part swaps its own stand-ins for its packed
        form)."""
        total = model.parameter_bytes()
        if intervention is None:
            return total
        if not isinstance(intervention, CombinedIntervention):
            raise InputError("Combined.measured_weight_bytes needs the intervention that Combined.intervention made.")
        return total + sum(int(m.measured_weight_bytes(model, iv)) - total for m, iv in intervention.pairs)

    def measured_kv_bytes(self, model, cache) -> int:
        kv = [m for m in self.methods if type(m).measured_kv_bytes is not EfficiencyMethod.measured_kv_bytes]
        if len(kv) > 1:
            raise InputError("Combined: more than one part measures its KV cache its own way; measure them apart.")
        return int(kv[0].measured_kv_bytes(model, cache)) if kv else int(cache.stats().physical_bytes)

    def cache_policy(self, model):
        pols = [p for m in self.methods if (p := m.cache_policy(model)) is not None]
        if not pols:
            return None
        if len(pols) == 1:
            return pols[0]
        from .kv.compose import Sequential

        return Sequential(*pols)

    @property
    def saving(self) -> str:
        kinds = {m.saving for m in self.methods}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def cost(self, model, n_tokens: int) -> Cost:
        """Weights: the baseline plus each part's change. KV: the cache policies run in order after prefill, so the
        cache holds what the *last* KV part makes of the entries the earlier ones left (e.g. eviction to 90 of 180
        tokens, then KIVI packs those 90: KIVI's bytes at 90 tokens)."""
        costs = [m.cost(model, n_tokens) for m in self.methods]
        base_w, base_kv = costs[0].baseline_weight_bytes, costs[0].baseline_kv_bytes
        w = base_w + sum(c.weight_bytes - c.baseline_weight_bytes for c in costs)
        kv, n_kept = base_kv, int(n_tokens)
        for m in self.methods:
            if m.cache_policy(model) is not None:
                kv = m.cost(model, n_kept).kv_bytes
                n_kept = m.kv_tokens_kept(model, n_kept)
        return Cost(n_tokens, int(w), int(kv), base_w, base_kv, self.saving,
                    "; ".join(c.note for c in costs if c.note))

    @property
    def label(self) -> str:
        return " + ".join(m.label for m in self.methods)


class CombinedIntervention(Compose):
    """The interventions of a ``Combined`` method, composed in order, remembering which method made which
    (``pairs``: (method, intervention)), so each part can measure its own bytes."""

    def __init__(self, pairs):
        self.pairs = list(pairs)
        super().__init__([iv for _, iv in self.pairs])
