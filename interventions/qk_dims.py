"""Disrupt the massive dimensions of Q and K after RoPE (Jin et al., ICML 2025).

Per head, the concentration of dimension i is M[i] = ||x[:, i]||_2 over the tokens of the
sequence, where x is the head's query (``blocks.{l}.attn.hook_rot_q``, (B, T, H, d_head)) or key
(``blocks.{l}.attn.hook_rot_k``, (B, T, G, d_head), one slice per KV head) after RoPE. The
disruption sets the top-n dimensions by M to their mean over the tokens, per sequence and head;
``control=True`` picks the n lowest-M dimensions instead (the paper's control). Explicit
``dims={layer: {head: [dims]}}`` skips the selection and edits those dimensions.
``skip_first=True`` leaves position 0 out of the statistics and the edit: on models without a
BOS token it is the attention sink, whose keys carry their own massive values.

Prefill only, as in the reference code: a forward over a single new token (cached decoding) is
left as it is; keys disrupted at prefill stay disrupted in the KV cache. Statistics use every
position of the tensor: in a right-padded batch the padding counts, so run prompts of different
lengths one at a time (``workbench.texts.tasks.score_answers`` does).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from workbench.hook_names import hook_name
from workbench.errors import InputError
from workbench.intervention import Intervention

if TYPE_CHECKING:
    from workbench.model import Model

TARGETS = ("q", "k", "both")


def concentration(x: torch.Tensor) -> torch.Tensor:
    """(B, T, heads, d_head) -> (B, heads, d_head): L2 norm of each dimension over the tokens."""
    return x.detach().double().norm(dim=1)


def pick_dims(x: torch.Tensor, n: int, largest: bool = True) -> torch.Tensor:
    """(B, T, heads, d_head) -> (B, heads, n) indices of the n highest- (or lowest-) concentration dims."""
    return concentration(x).topk(n, dim=-1, largest=largest).indices


def set_dims_to_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace x[b, :, h, i] by its mean over tokens wherever mask[b, h, i] is True.

    x: (B, T, heads, d_head); mask: (B, heads, d_head) or (heads, d_head) bool. Returns a new
    tensor. The mean is taken in float64, so an already-constant dimension comes back unchanged.
    """
    mean = x.double().mean(dim=1, keepdim=True).to(x.dtype)  # (B, 1, heads, d_head)
    m = mask if mask.ndim == 3 else mask[None]
    return torch.where(m[:, None].to(x.device), mean.expand_as(x), x)


def _as_layers(layers, model: "Model") -> list[int]:
    if layers is None:
        return list(range(model.info.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InputError("DisruptQKDims: layers is empty; pass None for all layers.")
    return sorted({model.check_layer(l) for l in layers})


@dataclass(repr=False)
class DisruptQKDims(Intervention):
    """Set massive Q/K dims (after RoPE) to their token mean, per head, at prefill.

    target: "q", "k" or "both". dims: None (pick the ``top_n`` dims per head on the run's own
    tokens) or explicit ``{layer: {head: [dims]}}``; for target="both" give
    ``{"q": {...}, "k": {...}}`` (K heads are KV heads). control: pick the lowest-concentration
    dims instead of the highest. layers: layers to edit in the automatic mode (None = all).
    skip_first: exclude position 0 from the statistics and keep it unedited.

    After a run, ``chosen[(kind, layer)]`` holds the dims edited in the last prefill,
    (B, heads, top_n) long, with kind "q" or "k".
    """

    target: str = "both"
    dims: Mapping | None = None
    top_n: int = 1
    control: bool = False
    layers: int | Sequence[int] | None = None
    skip_first: bool = False
    chosen: dict = field(default_factory=dict, init=False, compare=False)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"DisruptQKDims: target must be 'q', 'k' or 'both', got {self.target!r}.")
        if not isinstance(self.top_n, int) or isinstance(self.top_n, bool) or self.top_n < 1:
            raise InputError(f"DisruptQKDims: top_n must be a positive integer, got {self.top_n!r}.")
        if self.dims is not None and self.layers is not None:
            raise InputError("DisruptQKDims: give either explicit dims or layers, not both (dims names its layers).")

    @property
    def kinds(self) -> list[str]:
        return ["q", "k"] if self.target == "both" else [self.target]

    def _explicit(self) -> dict[str, Mapping]:
        """{kind: {layer: {head: [dims]}}} from ``dims``."""
        d = self.dims
        if not isinstance(d, Mapping) or not d:
            raise InputError(f"DisruptQKDims: dims must be a non-empty mapping {{layer: {{head: [dims]}}}}, got {d!r}.")
        if set(d) <= {"q", "k"}:
            missing = [k for k in self.kinds if k not in d]
            if missing:
                raise InputError(f"DisruptQKDims: target={self.target!r} but dims has no {missing[0]!r} entry.")
            return {k: d[k] for k in self.kinds}
        if self.target == "both":
            raise InputError("DisruptQKDims: with target='both', give dims as {'q': {layer: {head: [dims]}}, "
                             "'k': {layer: {kv_head: [dims]}}} (query and KV heads differ under GQA).")
        return {self.target: d}

    def _masks(self, model: "Model") -> dict[tuple[str, int], torch.Tensor]:
        """{(kind, layer): (heads, d_head) bool} for explicit dims, validated against the model."""
        info = model.info
        out = {}
        for kind, per_layer in self._explicit().items():
            n_heads = info.n_heads if kind == "q" else info.n_kv_heads
            what = "query heads" if kind == "q" else "KV heads"
            for layer, per_head in per_layer.items():
                l = model.check_layer(layer)
                if not isinstance(per_head, Mapping) or not per_head:
                    raise InputError(f"DisruptQKDims: dims[{layer!r}] must be a non-empty {{head: [dims]}} mapping.")
                mask = torch.zeros(n_heads, info.d_head, dtype=torch.bool)
                for h, ds in per_head.items():
                    if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h < n_heads:
                        raise InputError(f"DisruptQKDims: {kind.upper()} head {h!r} is out of range: this model has "
                                         f"{n_heads} {what} per layer (0..{n_heads - 1}).")
                    ds = [ds] if isinstance(ds, int) else list(ds)
                    for i in ds:
                        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < info.d_head:
                            raise InputError(f"DisruptQKDims: dim {i!r} is out of range 0..{info.d_head - 1}.")
                    mask[h, ds] = True
                out[(kind, l)] = mask
        return out

    def validate(self, model):
        if model.info.positional != "rotary" or hook_name("q_rot", 0) not in model.hook_names():
            raise InputError(f"DisruptQKDims needs rotary position embeddings (it edits Q and K after RoPE), but "
                             f"{model.info.name} uses {model.info.positional!r} positions and has no hook_rot_q/hook_rot_k.")
        if self.top_n > model.info.d_head:
            raise InputError(f"DisruptQKDims: top_n={self.top_n} is more than d_head={model.info.d_head}.")
        if self.dims is not None:
            self._masks(model)
        else:
            _as_layers(self.layers, model)

    def hooks(self, model):
        self.validate(model)
        if self.dims is not None:
            return [self._hook(kind, l, mask) for (kind, l), mask in self._masks(model).items()]
        return [self._hook(kind, l, None) for l in _as_layers(self.layers, model) for kind in self.kinds]

    def _hook(self, kind: str, layer: int, mask: torch.Tensor | None):
        name = hook_name(f"{kind}_rot", layer)

        def fn(x: torch.Tensor, _name: str):  # (B, T, heads, d_head)
            if x.shape[1] == 1:  # a decoding step: prefill only
                return None
            first, x = (x[:, :1], x[:, 1:]) if self.skip_first else (None, x)
            m = mask
            if m is None:
                idx = pick_dims(x, self.top_n, largest=not self.control)  # (B, heads, n)
                self.chosen[(kind, layer)] = idx.cpu()
                m = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=torch.bool, device=x.device)
                m.scatter_(-1, idx.to(x.device), True)
            y = set_dims_to_mean(x, m)
            return y if first is None else torch.cat([first, y], dim=1)

        return name, fn

    def __repr__(self):
        which = "control (lowest-norm)" if self.control else "top"
        if self.dims is not None:
            return f"DisruptQKDims({self.target}, explicit dims{', position 0 kept' if self.skip_first else ''})"
        layers = "all layers" if self.layers is None else f"layers {self.layers}"
        first = ", position 0 kept" if self.skip_first else ""
        return f"DisruptQKDims({self.target}, {which} {self.top_n} dim(s) per head, {layers}{first})"
