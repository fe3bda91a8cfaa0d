"""Every KV-cache policy as an efficiency method (``efficiency.EfficiencyMethod``).

``KVEviction(policy="snapkv", ratio=0.5)`` installs the registered eviction policy of that name;
``KVQuantization(bits=4)`` installs KIVI; ``KVLexico(sparsity=14)`` installs Lexico (sparse codes over
the model's learned dictionary). ``efficiency.get_method(name, **knobs)`` builds them from a
policy's name, so the method registry lists every policy without a file per policy.

Cost model: an eviction policy with ratio r keeps ``n - floor(r n)`` of n tokens per layer and KV head
(never fewer than its protected sinks + window), so the predicted KV bytes are that count times
layers × KV heads × (d_head × 2 (K and V) × bytes per value + 8 for the int64 position); KIVI's
packed bytes follow ``kivi_bytes_formula`` and Lexico's ``lexico_bytes_formula``. All savings are
real: the evicted, quantized or sparse-coded entries are freed. One term is data-dependent and not
predicted: a policy that stores layers ragged (per-head budgets: AdaKV, KVzip's pair level) keeps
each ragged layer's position index padded to its longest head (8 bytes × G × (N_max - mean) more).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import InputError

from ..method import Cost, EfficiencyMethod, Knob, kv_bytes_full
from .lexico import POLICY_NAME as LEXICO_NAME
from .lexico import LexicoCompression
from .quantized import POLICY_NAME as KIVI_NAME
from .quantized import KIVIQuantization
from .registry import POLICIES, get_policy, load_builtins

NOT_EVICTION = (KIVI_NAME, LEXICO_NAME)

RATIO = Knob("float", 0.0, 1.0, high_open=True, doc="The fraction of the cache removed (0 keeps everything).")


@dataclass
class KVEviction(EfficiencyMethod):
    """A registered eviction policy (``efficiency.kv.POLICIES``) at compression ``ratio``."""

    policy: str = "snapkv"
    ratio: float = 0.5

    family: ClassVar[str] = "kv-eviction"
    knobs: ClassVar[dict[str, Knob]] = {"ratio": RATIO}

    def __post_init__(self) -> None:
        load_builtins()
        names = sorted(n for n in POLICIES if n not in NOT_EVICTION)
        if self.policy not in names:
            raise InputError(f"KVEviction: unknown policy {self.policy!r}; choose one of {', '.join(names)}.")
        self.name = self.policy  # this instance is listed and labelled under its policy's name
        super().__post_init__()

    def cache_policy(self, model):
        """A fresh policy instance (policies keep per-sequence state), given the model when it needs it."""
        pol = get_policy(self.policy, ratio=self.ratio)
        bind = getattr(pol, "bind", None)
        if callable(bind):
            bind(model)
        return pol

    def kv_tokens_kept(self, model, n_tokens: int) -> int:
        return min(self.cache_policy(model).target(n_tokens), n_tokens) if self.ratio else int(n_tokens)

    def cost(self, model, n_tokens: int) -> Cost:
        full = kv_bytes_full(model, n_tokens)
        keep = self.kv_tokens_kept(model, n_tokens)
        w = model.parameter_bytes()
        return Cost(n_tokens, w, full * keep // max(n_tokens, 1), w, full, "real",
                    f"{keep} of {n_tokens} tokens kept per layer and KV head")


@dataclass
class KVQuantization(EfficiencyMethod):
    """KIVI quantization of the KV cache (keys per channel, values per token, a full-precision recent window)."""

    bits: int = 4
    group_size: int = 32
    residual: int = 32

    name: ClassVar[str] = KIVI_NAME
    family: ClassVar[str] = "kv-quantization"
    knobs: ClassVar[dict[str, Knob]] = {
        "bits": Knob("choice", choices=(2, 4, 8)),
        "group_size": Knob("int", 1, 4096, doc="Tokens per key group."),
        "residual": Knob("int", 0, 1 << 20, doc="Newest tokens kept in full precision."),
    }

    def cache_policy(self, model):
        return KIVIQuantization(bits=self.bits, group_size=self.group_size, residual=self.residual)

    def cost(self, model, n_tokens: int) -> Cost:
        i = model.info
        pol = self.cache_policy(model)
        from .quantized import bytes_formula

        kv = bytes_formula(n_tokens, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads, d_head=i.d_head, bits=self.bits,
                           group_size=self.group_size, residual=self.residual, value_group_size=pol.value_group_size,
                           dtype_bytes=model.weights().W_E.element_size())
        w = model.parameter_bytes()
        return Cost(n_tokens, w, kv, w, kv_bytes_full(model, n_tokens), "real",
                    "packed at rest; dequantized for attention at every step (memory, not time)")


@dataclass
class KVLexico(EfficiencyMethod):
    """Lexico: keys and values older than a full-precision buffer stored as ``sparsity``-term sparse codes
    over the model's learned per-layer dictionaries (``efficiency.kv.lexico``)."""

    sparsity: int = 14
    buffer: int = 128
    block: int = 32

    name: ClassVar[str] = LEXICO_NAME
    family: ClassVar[str] = "kv-sparse-coding"
    knobs: ClassVar[dict[str, Knob]] = {
        "sparsity": Knob("int", 1, 1024, doc="Atoms per key/value vector."),
        "buffer": Knob("int", 0, 1 << 20, doc="Newest tokens kept in full precision."),
        "block": Knob("int", 1, 1 << 16, doc="Tokens encoded at a time."),
    }

    def check_model(self, model) -> None:
        from .lexico_dictionary import LexicoDictionary

        LexicoDictionary.for_model(model)

    def cache_policy(self, model):
        pol = LexicoCompression(sparsity=self.sparsity, buffer=self.buffer, block=self.block)
        pol.bind(model)
        return pol

    def cost(self, model, n_tokens: int) -> Cost:
        from .lexico import bytes_formula
        from .lexico_dictionary import LexicoDictionary

        i = model.info
        kv = bytes_formula(n_tokens, n_layers=i.n_layers, n_kv_heads=i.n_kv_heads, d_head=i.d_head,
                           sparsity=self.sparsity, buffer=self.buffer, block=self.block,
                           dtype_bytes=model.weights().W_E.element_size())
        d = LexicoDictionary.for_model(model)
        extra = 2 * i.n_layers * (i.d_head * d.n_atoms + d.n_atoms ** 2) * 4  # dictionaries + Gram matrices, fp32
        w = model.parameter_bytes()
        return Cost(n_tokens, w + extra, kv, w, kv_bytes_full(model, n_tokens), "real",
                    f"sparse codes at rest, rebuilt dense at every step (memory, not time); the dictionaries and "
                    f"their Gram matrices add a fixed {extra / 2**20:.1f} MiB (counted with the weights)")


def kv_method(name: str, knobs: dict) -> EfficiencyMethod | None:
    """The efficiency method of KV policy ``name`` with ``knobs``, or None when no policy has that name."""
    load_builtins()
    if name == KIVI_NAME:
        _check_knobs(name, knobs, KVQuantization.knobs)
        return KVQuantization(**knobs)
    if name == LEXICO_NAME:
        _check_knobs(name, knobs, KVLexico.knobs)
        return KVLexico(**knobs)
    if name in POLICIES:
        _check_knobs(name, knobs, KVEviction.knobs)
        return KVEviction(policy=name, **knobs)
    return None


def _check_knobs(name, knobs, allowed) -> None:
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise InputError(f"{name}: unknown knob(s) {unknown}; its knobs are "
                         f"{', '.join(f'{k} ({kn.range_text()})' for k, kn in allowed.items())}.")


def kv_method_rows() -> list[dict]:
    load_builtins()
    rows = []
    for n in sorted(POLICIES):
        cls = {KIVI_NAME: KVQuantization, LEXICO_NAME: KVLexico}.get(n, KVEviction)
        rows.append({"name": n, "family": cls.family, "calibrates": False,
                     "knobs": ", ".join(f"{k}: {kn.range_text()}" for k, kn in cls.knobs.items())})
    return rows
