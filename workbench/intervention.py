"""The intervention protocol: anything that changes a run, composable and scoped.

An intervention contributes forward hooks (edits to activations or attention) and/or a context
manager that edits state for its duration (weights, the KV cache) and restores it on exit.
Interventions compose with ``+`` or ``Compose([...])``; ``model.intervene(iv)`` scopes them to a
``with`` block, and ``model.run(..., interventions=[iv])`` to a single call. Hooks are only ever
attached inside a public call, so none can remain on the model afterwards.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from .hooks import HookFn

if TYPE_CHECKING:
    from .model import Model


class Intervention:
    """Base class. Subclasses override ``hooks`` and/or ``applied``; both default to no-ops."""

    def hooks(self, model: "Model") -> list[tuple[str, HookFn]]:
        """(full hook name, fn) pairs to attach during each forward pass."""
        return []

    @contextmanager
    def applied(self, model: "Model") -> Iterator[None]:
        """State edits (weights, caches) for the duration of the block; must restore on exit."""
        yield

    def validate(self, model: "Model") -> None:
        """Raise InputError if this intervention does not fit the model (layer/head ranges...)."""

    def __add__(self, other: "Intervention") -> "Compose":
        return Compose([self, other])

    def describe(self) -> str:
        return repr(self)


class Compose(Intervention):
    """Several interventions applied together, in order (hooks on one point run in list order)."""

    def __init__(self, parts: Sequence[Intervention]):
        flat: list[Intervention] = []
        for p in parts:
            if not isinstance(p, Intervention):
                raise TypeError(f"Compose takes Intervention objects, got {type(p).__name__}.")
            flat.extend(p.parts if isinstance(p, Compose) else [p])
        self.parts = flat

    def hooks(self, model):
        return [h for p in self.parts for h in p.hooks(model)]

    @contextmanager
    def applied(self, model):
        with ExitStack() as stack:
            for p in self.parts:
                stack.enter_context(p.applied(model))
            yield

    def validate(self, model):
        for p in self.parts:
            p.validate(model)

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)
