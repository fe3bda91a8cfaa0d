"""Turn what the user passes as "a method" into an ``efficiency.EfficiencyMethod``.

Accepted: an ``EfficiencyMethod`` (any family, ``Combined`` included); a registered name ("snapkv"); a
(name, {knob: value}) pair; a dict {"name": ..., **knobs}; a list or tuple of any of these, combined in
order (``Combined``: interventions composed, cache policies chained).
"""
from __future__ import annotations

from efficiency import Combined, EfficiencyMethod, get_method
from workbench.errors import InputError


def resolve_method(method) -> EfficiencyMethod:
    """An ``EfficiencyMethod`` from a method, a name, (name, knobs), {"name": ..., **knobs} or a list of them."""
    if isinstance(method, EfficiencyMethod):
        return method
    if isinstance(method, str):
        return get_method(method)
    if isinstance(method, dict):
        if "name" not in method:
            raise InputError(f"A method given as a dict needs a 'name' key, got {sorted(method)}.")
        knobs = {k: v for k, v in method.items() if k != "name"}
        return get_method(method["name"], **knobs)
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[0], str) and isinstance(method[1], dict):
        return get_method(method[0], **method[1])
    if isinstance(method, (list, tuple)):
        parts = [resolve_method(m) for m in method]
        if not parts:
            raise InputError("An empty list is not a method: give at least one.")
        return parts[0] if len(parts) == 1 else Combined(parts)
    raise InputError(f"Cannot use {type(method).__name__} as an efficiency method: pass an efficiency.EfficiencyMethod, "
                     "a registered name (see efficiency.list_methods()), (name, {knob: value}) or a list of these.")


def parts(method: EfficiencyMethod) -> list[EfficiencyMethod]:
    """The methods a combination is made of (the method itself when it is not a combination)."""
    return list(method.methods) if isinstance(method, Combined) else [method]


__all__ = ["resolve_method", "parts"]
