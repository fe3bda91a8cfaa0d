"""Edits of attention patterns: zero a head's attention, or move it all onto the sink.

Both edit the heads' rows of ``blocks.{l}.attn.hook_pattern``, shape (B, H, T_q, T_k), after the
softmax and before the pattern multiplies the values, so the head's output z = A v changes and
nothing else in the layer does.

``ZeroAttention`` sets the rows to 0: z = 0, the same as zero-ablating the head's slice of
``hook_z`` (``HeadAblation``), written the way Guo et al. (2024) write it.
``AttentionToSink`` replaces every row by one-hot on key ``sink`` ("move to BOS"): every query
then reads the sink's value, z[q] = v[sink] of the head's KV head. On a dormant head, whose
sink value is near zero, that is close to a no-op; on an active head it removes the head's
content-dependent reads while keeping its output scale.

Query positions are absolute: during cached decoding the pattern is (B, H, n_new, T_k) and the
query rows are the last n_new positions of the key axis. Queries that cannot see the sink
(absolute position < ``sink``) keep their rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from workbench.hook_names import hook_name
from workbench.errors import InputError
from workbench.intervention import Intervention

if TYPE_CHECKING:
    from workbench.model import Model


def _heads_repr(heads) -> list[int]:
    return [heads] if isinstance(heads, int) else list(heads)


@dataclass(repr=False)
class _PatternEdit(Intervention):
    """Shared validation and hook name; subclasses define ``_edit(pattern, heads)``."""

    layer: int
    heads: int | Sequence[int]

    def hook_name(self, model: "Model") -> str:
        return hook_name("pattern", model.check_layer(self.layer))

    def validate(self, model):
        model.check_layer(self.layer)
        model.check_heads(self.heads)

    def hooks(self, model):
        heads = model.check_heads(self.heads)

        def fn(pattern: torch.Tensor, _name: str) -> torch.Tensor:  # (B, H, T_q, T_k)
            return self._edit(pattern.clone(), heads)

        return [(self.hook_name(model), fn)]

    def _edit(self, pattern: torch.Tensor, heads: list[int]) -> torch.Tensor:
        raise NotImplementedError


@dataclass(repr=False)
class ZeroAttention(_PatternEdit):
    """Zero the attention rows of query heads ``heads`` of ``layer``: their z becomes 0."""

    def _edit(self, pattern, heads):
        pattern[:, heads] = 0
        return pattern

    def __repr__(self):
        return f"ZeroAttention(L{self.layer} H{_heads_repr(self.heads)})"


@dataclass(repr=False)
class AttentionToSink(_PatternEdit):
    """Replace the attention rows of ``heads`` by one-hot on key ``sink`` (default 0, the first token).

    Every query at absolute position >= ``sink`` then attends only to the sink: the head's
    z[b, q] = v[b, sink, kv_head(h)] for all those queries.
    """

    sink: int = 0

    def __post_init__(self):
        if not isinstance(self.sink, int) or isinstance(self.sink, bool) or self.sink < 0:
            raise InputError(f"AttentionToSink: sink must be a non-negative token position, got {self.sink!r}.")

    def _edit(self, pattern, heads):
        _, _, tq, tk = pattern.shape
        if self.sink >= tk:
            raise InputError(f"AttentionToSink: sink position {self.sink} is past the end of a {tk}-token sequence.")
        q_abs = torch.arange(tk - tq, tk, device=pattern.device)  # (T_q,) absolute query positions
        rows = q_abs >= self.sink  # (T_q,) queries that can see the sink
        one_hot = torch.zeros(tk, dtype=pattern.dtype, device=pattern.device)
        one_hot[self.sink] = 1
        sub = pattern[:, heads]  # (B, h, T_q, T_k) copy
        sub[:, :, rows] = one_hot
        pattern[:, heads] = sub
        return pattern

    def __repr__(self):
        return f"AttentionToSink(L{self.layer} H{_heads_repr(self.heads)} -> key {self.sink})"
