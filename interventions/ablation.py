"""Ablations: replace a head's output (``hook_z``) or an MLP's output (``hook_mlp_out``).

``HeadAblation`` edits the heads' slice of ``blocks.{l}.attn.hook_z``, shape (B, T, H, d_head),
before the output projection, so the head contributes nothing (zero) or a fixed average vector
(mean) to ``attn_out``. ``MLPAblation`` edits ``blocks.{l}.hook_mlp_out``, shape (B, T, d_model).

Mean mode needs reference prompts (``mean_over``). The mean is taken over the batch and the real
(unpadded) positions of a clean run (no active interventions), computed lazily on first use and
cached per model fingerprint: (H, d_head) for heads, (d_model,) for the MLP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from workbench.hook_names import hook_name
from workbench.errors import InputError
from workbench.intervention import Intervention

if TYPE_CHECKING:
    from workbench.model import Model

MODES = ("zero", "mean")


def _check_mode(kind: str, mode: str, mean_over) -> list[str] | None:
    if mode not in MODES:
        raise InputError(f"{kind}: mode must be 'zero' or 'mean', got {mode!r}.")
    if mode == "zero":
        return None
    if mean_over is None:
        raise InputError(f"{kind}: mode='mean' needs reference prompts to average over: pass "
                         "mean_over=['a prompt', ...] (or use mode='zero').")
    refs = [mean_over] if isinstance(mean_over, str) else list(mean_over)
    if not refs or not all(isinstance(p, str) and p for p in refs):
        raise InputError(f"{kind}: mean_over must be a non-empty list of non-empty strings, got {mean_over!r}.")
    return refs


def reference_mean(model: "Model", prompts: list[str], hook: str, layer: int) -> torch.Tensor:
    """Mean of ``hook`` over batch and real positions of a clean run: shape of one position's slice.

    ``hook`` is a full hook name with layout (B, T, ...); returns (...), e.g. (H, d_head) for z.
    """
    with model.without_interventions():  # the reference is the clean model (no hooks, no weight edits)
        run = model.run(prompts, capture=[hook], logits=None)
    x = run.captures[hook]  # (B, T, ...)
    mask = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)  # (B, T): 1 on real tokens
    for i, n in enumerate(run.lengths):
        mask[i, :n] = 1
    w = mask.reshape(*mask.shape, *([1] * (x.ndim - 2)))
    return (x * w).sum((0, 1)) / mask.sum()


@dataclass(repr=False)
class _Ablation(Intervention):
    """Shared mean-cache logic; subclasses define ``hook_name`` and ``_edit``."""

    _means: dict = field(default_factory=dict, init=False, compare=False)

    def _mean(self, model: "Model") -> torch.Tensor:
        key = (model.fingerprint, self.hook_name(model))
        if key not in self._means:
            refs = _check_mode(type(self).__name__, self.mode, self.mean_over)
            self._means[key] = reference_mean(model, refs, key[1], model.check_layer(self.layer)).detach()
        return self._means[key]

    def hook_name(self, model: "Model") -> str:
        raise NotImplementedError

    def _mode_repr(self) -> str:
        if self.mode == "zero":
            return "zero"
        n = 1 if isinstance(self.mean_over, str) else len(self.mean_over)
        return f"mean over {n} prompt(s)"


@dataclass(repr=False)
class HeadAblation(_Ablation):
    """Zero or mean-ablate query heads ``heads`` of ``layer`` at ``blocks.{l}.attn.hook_z``.

    With GQA, a query head's z is its own (B, T, d_head) slice, so ablating one query head leaves
    the other heads of its KV group untouched.
    """

    layer: int
    heads: int | Sequence[int]
    mode: str = "zero"
    mean_over: Sequence[str] | None = None

    def __post_init__(self):
        _check_mode("HeadAblation", self.mode, self.mean_over)

    def hook_name(self, model):
        return hook_name("z", model.check_layer(self.layer))

    def validate(self, model):
        model.check_layer(self.layer)
        model.check_heads(self.heads)

    def hooks(self, model):
        heads = model.check_heads(self.heads)
        mean = self._mean(model) if self.mode == "mean" else None  # (H, d_head)

        def fn(z: torch.Tensor, _name: str) -> torch.Tensor:  # z: (B, T, H, d_head)
            z = z.clone()
            z[:, :, heads] = 0 if mean is None else mean[heads].to(z)
            return z

        return [(self.hook_name(model), fn)]

    def __repr__(self):
        heads = [self.heads] if isinstance(self.heads, int) else list(self.heads)
        return f"HeadAblation(L{self.layer} H{heads}, {self._mode_repr()})"


@dataclass(repr=False)
class MLPAblation(_Ablation):
    """Zero or mean-ablate the MLP output of ``layer`` at ``blocks.{l}.hook_mlp_out`` (B, T, d_model)."""

    layer: int
    mode: str = "zero"
    mean_over: Sequence[str] | None = None

    def __post_init__(self):
        _check_mode("MLPAblation", self.mode, self.mean_over)

    def hook_name(self, model):
        return hook_name("mlp_out", model.check_layer(self.layer))

    def validate(self, model):
        model.check_layer(self.layer)

    def hooks(self, model):
        mean = self._mean(model) if self.mode == "mean" else None  # (d_model,)

        def fn(x: torch.Tensor, _name: str) -> torch.Tensor:  # x: (B, T, d_model)
            return torch.zeros_like(x) if mean is None else mean.to(x).expand_as(x).clone()

        return [(self.hook_name(model), fn)]

    def __repr__(self):
        return f"MLPAblation(L{self.layer}, {self._mode_repr()})"
