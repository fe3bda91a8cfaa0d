"""Composable wrappers: run several cache policies as one."""
from __future__ import annotations

from workbench.errors import InputError
from workbench.kv_cache import CachePolicy, PolicyBase
from workbench.session import AttentionFanout


class Sequential(PolicyBase):
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
                raise InputError(f"Sequential(): {type(p).__name__} is not a cache policy (workbench.CachePolicy: name, "
                                 "observe_attention, prepare, apply).")
        self.policies = tuple(policies)

    @property
    def name(self) -> str:
        return " → ".join(p.name for p in self.policies)

    @property
    def observe_attention(self):
        fan = AttentionFanout([p.observe_attention for p in self.policies])
        return fan if fan else None

    @property
    def observe_queries(self):
        fan = AttentionFanout([getattr(p, "observe_queries", None) for p in self.policies])
        return fan if fan else None

    def bind(self, model) -> None:
        """Give the model to every policy that asks for it."""
        for p in self.policies:
            bind = getattr(p, "bind", None)
            if callable(bind):
                bind(model)

    def prepare(self, cache, ctx) -> None:
        for p in self.policies:
            p.prepare(cache, ctx)

    def apply(self, cache, ctx) -> None:
        self.prepare(cache, ctx)
        for p in self.policies:
            p.apply(cache, ctx)

    def __repr__(self) -> str:
        return f"Sequential({', '.join(map(repr, self.policies))})"
