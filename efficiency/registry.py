"""Efficiency methods by name: ``METHODS``, ``get_method(name, **knobs)``, ``list_methods()``, ``@register_method``.

Every KV-cache policy of ``efficiency.kv`` is also an efficiency method under its own name
(``get_method("snapkv", ratio=0.5)``, ``get_method("kivi", bits=4)``), through the adapters in
``efficiency/kv/methods.py``; the other families register their own classes here.

How to add an efficiency method
-------------------------------
1. One file in the family's folder (``efficiency/quant/``, ``efficiency/sparsity/``, ...) holding one
   ``@dataclass`` subclass of ``efficiency.EfficiencyMethod``: its fields are the knobs, ``knobs`` gives
   each field's range (``Knob``), ``family`` one of ``efficiency.method.FAMILIES``.
2. Implement what it installs (``intervention(model)``, usually a ``workbench.WeightEdit``, and/or
   ``cache_policy(model)``), ``prepare(model, texts)`` if it calibrates, ``cost(model, n_tokens)`` (its
   physical bytes) and ``saving`` ("real" / "simulated" / "mixed": say so honestly).
3. Decorate it with ``@register_method("short_name")`` and add its module to ``BUILTIN_MODULES`` below.
4. Tests: restore is bit-exact (weights equal after the ``with`` block, also after an error), its
   no-op setting reproduces the model exactly, its cost model equals the measured bytes, bad knobs fail
   with a clear error, plus a known-answer test of the method itself on a tiny model.
5. Docs: a section in ``docs/`` (method, formulas, defaults, what to expect on SmolLM2, the paper).
"""
from __future__ import annotations

import importlib

from workbench.errors import InputError
from workbench.hook_names import suggest

from .method import FAMILIES, EfficiencyMethod

# Modules that register efficiency methods; imported on first use of the registry.
BUILTIN_MODULES: list[str] = ["efficiency.kv.methods", "efficiency.quant", "efficiency.pruning", "efficiency.sparsity",
                              "efficiency.lowrank", "efficiency.mla"]

METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: make an ``EfficiencyMethod`` subclass available as ``get_method(name)``."""
    if not isinstance(name, str) or not name:
        raise InputError(f"register_method(): the name must be a non-empty string, got {name!r}.")

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, EfficiencyMethod)):
            raise InputError(f"register_method({name!r}): {cls!r} is not an EfficiencyMethod subclass.")
        if cls.family not in FAMILIES:
            raise InputError(f"register_method({name!r}): family {cls.family!r} is not one of {FAMILIES}.")
        old = METHODS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise InputError(f"register_method(): the name {name!r} is already taken by {old.__name__}.")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def load_builtins() -> dict[str, type]:
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    return METHODS


def get_method(name: str, **knobs) -> EfficiencyMethod:
    """Build the method registered as ``name`` with its knobs; unknown names and knobs fail clearly."""
    load_builtins()
    from .kv.methods import kv_method

    if name not in METHODS:
        kv = kv_method(name, knobs)
        if kv is not None:
            return kv
        everything = sorted(set(METHODS) | set(list_methods()["name"]))
        raise InputError(f"Unknown efficiency method {name!r}.{suggest(str(name), everything)} "
                         f"Available: {', '.join(everything)}.")
    cls = METHODS[name]
    unknown = sorted(set(knobs) - set(cls.knobs))
    if unknown:
        raise InputError(f"{name}: unknown knob(s) {unknown}; its knobs are "
                         f"{', '.join(f'{k} ({kn.range_text()})' for k, kn in cls.knobs.items()) or 'none'}.")
    return cls(**knobs)


def list_methods(family: str | None = None):
    """A table of every method (KV policies included): name, family, knobs and their ranges."""
    import pandas as pd

    load_builtins()
    from .kv.methods import kv_method_rows

    if family is not None and family not in FAMILIES:
        raise InputError(f"Unknown family {family!r}; choose one of {FAMILIES}.")
    rows = [{"name": n, "family": c.family, "knobs": ", ".join(f"{k}: {kn.range_text()}" for k, kn in c.knobs.items()),
             "calibrates": c.needs_calibration} for n, c in sorted(METHODS.items())]
    rows += [r for r in kv_method_rows() if r["name"] not in METHODS]
    df = pd.DataFrame(rows, columns=["name", "family", "knobs", "calibrates"])
    return df if family is None else df[df.family == family].reset_index(drop=True)
