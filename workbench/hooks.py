"""Scoped forward hooks on TransformerLens HookPoints that can never outlive a public call.

Every public entry point opens one ``HookSession``; hooks are attached on entry and removed in
``finally`` (exceptions and KeyboardInterrupt included). Hooks marked ``required`` must fire at
least once, else the session raises: a hook that silently never runs is a wrong result.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import HookError
from .hook_names import unknown_name_error

# fn(tensor, hook_name) -> replacement tensor or None
HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookSession:
    """Attach hooks to HookPoints for the duration of a ``with`` block."""

    def __init__(self, hook_points: dict[str, nn.Module], dormant: set[str] = frozenset()):
        self._points = hook_points
        self._dormant = dormant
        self._pending: list[tuple[str, HookFn, bool]] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.fired: set[str] = set()
        self.check_fired = True

    def add(self, name: str, fn: HookFn, required: bool = True) -> None:
        if name not in self._points:
            raise unknown_name_error(name, self._points, self._dormant)
        silenced = self._points[name].__dict__.get("_workbench_silenced")  # see workbench.edits.replace_component
        if silenced is not None:
            raise HookError(f"Hook {name!r} cannot fire: {silenced}, and hooks inside a replaced or skipped "
                            "component never run. Capture it on the unmodified model (model.without_interventions()), "
                            "or choose layers whose component is intact (workbench.edits.silenced_hooks(model) lists "
                            "the silenced hooks).")
        self._pending.append((name, fn, required))

    def add_all(self, hooks, required: bool = False) -> None:
        """``add`` every (name, fn) pair; raises on the first unknown or dormant name."""
        for name, fn in hooks:
            self.add(name, fn, required)

    def __enter__(self) -> "HookSession":
        try:
            for name, fn, _ in self._pending:
                self._handles.append(self._points[name].register_forward_hook(self._wrap(name, fn)))
        except BaseException:
            self._remove()
            raise
        return self

    def _wrap(self, name: str, fn: HookFn):
        # TransformerLens may store some activations flattened (z as (B, T, H*e)); its
        # hook_conversion gives hooks the canonical shape and maps edits back.
        conv = getattr(self._points[name], "hook_conversion", None)

        def hook(_module, _inputs, output):
            self.fired.add(name)
            x = conv.convert(output) if conv is not None else output
            y = fn(x, name)
            if y is None:
                return None
            return conv.revert(y) if conv is not None else y

        hook.__workbench_hook__ = True  # lets leftover checks tell our hooks from HF's own
        return hook

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()
        if exc_type is None and self.check_fired:
            missing = sorted({n for n, _, req in self._pending if req} - self.fired)
            if missing:
                raise HookError(
                    f"Requested hook(s) never fired: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}. The forward pass did not reach them "
                    "(stop_at_layer too early?) or this architecture does not compute them."
                )


def workbench_hooks_on(module: nn.Module) -> list[str]:
    """Names of submodules still carrying a hook attached by a ``HookSession`` (should be none).

    Only our hooks count: transformers attaches its own output-recording hooks lazily (for
    example on the first ``output_hidden_states=True`` call), and those are not leaks.
    """
    out = []
    for name, m in module.named_modules():
        hooks = list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values())
        if any(getattr(h, "__workbench_hook__", False) for h in hooks):
            out.append(name)
    return out
