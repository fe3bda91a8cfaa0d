"""Public forward sessions: several forward passes under one set of hooks and interventions.

``Model.run``/``generate``/``prefill`` each open a session internally. Code that needs its own
loop (a decoding loop over a compressed cache, a probe that feeds one token against a cache, a
prefix prefill reused for many suffixes) opens one with ``Model.session``::

    with model.session(interventions=[iv], hooks=[(hook_name("pattern", 3), fn)],
                       observe_attention=policy.observe_attention) as s:
        logits = s.forward(ids)                        # (B, T, V), plain forward
        logits = s.forward_cached(cache, ids[:, :1])   # (1, n, V) against a workbench KVCache

Hooks are attached when the block starts and removed when it ends (also on errors); hooks given
with ``required=True`` (the default) must fire at least once, else the block raises.
``observe_attention(layer, pattern)`` receives every layer's attention rows of the tokens being
processed, pattern (B, H, n_new, N_l + n_new) (how attention-scored cache policies learn).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .hook_names import hook_name

if TYPE_CHECKING:
    from .hooks import HookSession
    from .kv_cache import KVCache
    from .model import Model


class ForwardSession:
    """Forward passes of one model under the hooks of an open ``Model.session`` block."""

    def __init__(self, model: "Model", hooks: "HookSession"):
        self.model = model
        self._hooks = hooks

    @property
    def fired(self) -> set[str]:
        """Hook names that fired so far in this session."""
        return set(self._hooks.fired)

    def forward(self, ids: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor | None:
        """(B, T) token ids -> (B, T, V) logits (None with ``stop_at_layer``, a truncated forward)."""
        return self.model.forward_tokens(ids, stop_at_layer=stop_at_layer)

    def forward_cached(self, cache: "KVCache", ids: torch.Tensor) -> torch.Tensor:
        """Feed (B, n) new tokens against ``cache`` at their true positions; returns (B, n, V) logits.

        The cache grows by n entries per layer and KV head (see ``workbench.generation.cached_forward``)."""
        from .generation import cached_forward

        return cached_forward(self.model, cache, ids)


def attention_observer_hooks(model: "Model", observe: Callable | None) -> list[tuple[str, Callable]]:
    """(hook name, fn) pairs feeding every layer's attention pattern to ``observe(layer, pattern)``."""
    if observe is None:
        return []
    if not callable(observe):
        from .errors import InputError

        raise InputError(f"observe_attention must be a callable (layer, pattern) or None, got {type(observe).__name__}.")
    from .edits import silenced_hooks

    # a layer whose attention is skipped or replaced computes no pattern (and holds no KV to score)
    silenced = silenced_hooks(model)
    return [(hook_name("pattern", l), (lambda l: lambda x, _n: observe(l, x.detach()))(l))
            for l in range(model.info.n_layers) if hook_name("pattern", l) not in silenced]


class AttentionFanout:
    """Feed one attention pass to several observers (several cache policies scored from one prefill).

    Pass an instance as ``observe_attention``; ``None`` entries are skipped."""

    def __init__(self, observers: Sequence[Callable | None]):
        self.observers = [o for o in observers if o is not None]

    def __call__(self, layer: int, pattern: torch.Tensor) -> None:
        for o in self.observers:
            o(layer, pattern)

    def __bool__(self) -> bool:
        return bool(self.observers)


def query_observer_hooks(model: "Model", observe: Callable | None) -> list[tuple[str, Callable]]:
    """(hook name, fn) pairs feeding every layer's queries after RoPE to ``observe(layer, q)``,
    q (B, n_heads, n_new, d_head) (the ``q_rot`` capture, transposed to the attention's layout; ``q`` on
    models without RoPE)."""
    if observe is None:
        return []
    if not callable(observe):
        from .errors import InputError

        raise InputError(f"observe_queries must be a callable (layer, q) or None, got {type(observe).__name__}.")
    short = "q_rot" if model.info.positional == "rotary" else "q"  # no RoPE: the plain queries
    return [(hook_name(short, l), (lambda l: lambda x, _n: observe(l, x.detach().transpose(1, 2)))(l))
            for l in range(model.info.n_layers)]
