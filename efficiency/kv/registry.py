"""Cache policies by name: ``POLICIES``, ``get_policy(name, **kwargs)``, ``@register(name)``.

How to add a policy
-------------------
1. One file in ``efficiency/kv/`` holding one small ``@dataclass``. Score-based eviction:
   subclass ``ScorePolicy`` (or ``AttentionScorePolicy`` when it scores from attention) and
   implement ``score(cache, layer, ctx) -> (B, G, N)``; anything else: any object with
   ``apply(cache, ctx)`` (the ``workbench.CachePolicy`` protocol) and a ``name``.
2. Decorate the class with ``@register("short_name")`` (import ``register`` from this module;
   this module imports no policy, so there is no import cycle).
3. Add the module's name to ``BUILTIN_MODULES`` below so ``POLICIES`` lists it.
4. Docstring: the method, the paper, and its scores with shapes.
5. The shared tests (``tests/test_kv_policies.py``) run over every registered policy: with
   ratio=0 (or its no-op setting) it must reproduce the full cache exactly; at ratios 0.5 and 0.75
   it must keep exactly its budget, the sinks and the window, and the top of its scores, which the
   test recomputes independently: add the policy's reference scores to ``_reference_scores``
   there. Decoding with it is checked against a dense forward masked to what the cache held.
6. Export it from ``efficiency/kv/__init__.py`` (and ``efficiency/__init__.py``).

Budgets compose: ``layer_budgets=`` (per layer: ``PyramidBudgets``, ``UncertaintyBudgets``) and
``head_budgets=`` (per KV head inside a layer, stored ragged: ``AdaptiveHeadBudgets``) work with
every ``ScorePolicy``.
"""
from __future__ import annotations

import importlib

from workbench.errors import InputError
from workbench.hook_names import suggest

# Modules under efficiency.kv that register policies; imported on first use of the registry.
BUILTIN_MODULES = ("streaming_llm", "h2o", "a2sf", "snapkv", "key_norm", "tova", "random_policy", "pyramid",
                   "merge", "quantized",  # evict-then-merge; KIVI quantization
                   "adakv", "zigzag",  # per-head budgets stored ragged; per-layer budgets from uncertainty
                   "kvzip", "hashevict", "ems",  # context reconstruction; SimHash; global-local evict-then-merge
                   "lexico")  # sparse codes over a universal dictionary

POLICIES: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a policy available as ``get_policy(name)``."""
    if not isinstance(name, str) or not name:
        raise InputError(f"register(): the name must be a non-empty string, got {name!r}.")

    def deco(cls):
        old = POLICIES.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise InputError(f"register(): the name {name!r} is already taken by {old.__name__}.")
        cls.registry_name = name
        POLICIES[name] = cls
        return cls

    return deco


def load_builtins() -> dict[str, type]:
    """Import every module of ``BUILTIN_MODULES`` (idempotent) and return ``POLICIES``."""
    for mod in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    return POLICIES


def get_policy(name: str, **kwargs):
    """Build the policy registered as ``name`` with its keyword arguments (ratio=, budget=, ...)."""
    load_builtins()
    if name not in POLICIES:
        raise InputError(f"Unknown cache policy {name!r}.{suggest(str(name), POLICIES)} "
                         f"Available: {', '.join(sorted(POLICIES))}.")
    cls = POLICIES[name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(f"{name}: bad arguments {sorted(kwargs)} ({e}).") from None
