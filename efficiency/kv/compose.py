"""Composable wrappers: run several cache policies as one."""
from __future__ import annotations

from workbench.errors import InputError
from workbench.kv_cache import CachePolicy


class Sequential:
    """Apply ``policies`` in order after every forward pass, e.g. ``Sequential(H2O(ratio=.5), KeyNorm(budget=64))``.

    Every policy first updates its running state (``prepare``) from what the forward pass produced,
    then each applies in turn to the cache left by the previous one. Attention is observed
    (``observe_attention``) only when one of them needs it.
    """

    def __init__(self, *policies):
        if len(policies) == 1 and isinstance(policies[0], (list, tuple)):
            policies = tuple(policies[0])
        if not policies:
            raise InputError("Sequential() needs at least one policy.")
        for p in policies:
            if not isinstance(p, CachePolicy):
                raise InputError(f"Sequential(): {type(p).__name__} has no apply(cache, ctx) method.")
        self.policies = tuple(policies)

    @property
    def name(self) -> str:
        return " → ".join(getattr(p, "name", type(p).__name__) for p in self.policies)

    @property
    def observe_attention(self):
        observers = [p.observe_attention for p in self.policies if getattr(p, "observe_attention", None)]
        if not observers:
            return None

        def observe(layer, pattern):
            for o in observers:
                o(layer, pattern)

        return observe

    def apply(self, cache, ctx) -> None:
        for p in self.policies:
            prepare = getattr(p, "prepare", None)
            if prepare is not None:
                prepare(cache, ctx)
        for p in self.policies:
            p.apply(cache, ctx)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(map(repr, self.policies))})"
