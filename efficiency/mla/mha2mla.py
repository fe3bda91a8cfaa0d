"""MHA2MLA, training-free part (Ji et al. 2025): GQA attention converted to latent attention with partial RoPE.

1. Partial RoPE: each layer's KV head keeps ``rope_dims`` rotated dimensions (``rope_dims``/2 frequency
   pairs) chosen by ``rope_select`` ("2-norm": the paper's contribution criterion on calibration text);
   the others are no longer rotated.
2. Joint low rank: the non-rotated key dimensions and the values of each KV head share a latent of
   ``d_kv`` numbers per token (``convert.convert_layer``; ``svd="plain"`` as in the paper, or
   ``"whitened"`` by the attention input's covariance on calibration text).
3. A latent cache (``cache.LatentLayer``) that physically holds d_kv + rope_dims numbers per token and
   KV head instead of 2 x d_head, and an attention that decodes from it (``attention.MLAAttention``,
   absorbed or decompressing).

KV bytes per token and layer: G x ((d_kv + rope_dims) x bytes + 8), against G x (2 x d_head x bytes + 8);
the 8 is the int64 position every cached entry keeps (``KVCache.positions``). K/V numbers alone fall by
87.5% / 81.25% / 68.75% on SmolLM2 at rope_dims 8 and d_kv 8 / 16 / 32; with the position index the
physical fp32 bytes fall by 86.2% / 80.0% / 67.7%. Without the paper's fine-tuning the
conversion loses much quality on a 135M model (measured in the benchmark); at rope_dims = d_head and
d_kv = d_head the conversion is exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from workbench.edits import WeightEdit
from workbench.errors import InputError

from ..method import POSITION_BYTES, Cost, EfficiencyMethod, Knob, kv_bytes_full
from ..registry import register_method
from .attention import MODES, MLAAttention
from .convert import convert_layer
from .rope_select import SELECTIONS, pair_norm_scores, select_pairs


class MLAEdit(WeightEdit):
    """Every converted layer's attention replaced by its ``MLAAttention``."""

    def __init__(self, factors: dict, mode: str):
        self.factors, self.mode = factors, mode
        self.modules: dict = {}

    def edit(self, model, editor) -> None:
        self.modules = {}
        for layer, f in sorted(self.factors.items()):
            mod = MLAAttention(layer, f, self.mode)
            editor.replace_component(layer, "attn", mod)
            self.modules[layer] = mod

    def describe(self) -> str:
        f = next(iter(self.factors.values()))
        return f"MHA2MLA({len(self.factors)} layers, d_kv={f.d_kv}, rope_dims={f.rope_idx.shape[-1]}, {self.mode})"

    __repr__ = describe


def kv_bytes_mla(model, n_tokens: int, d_kv: int, rope_dims: int, layers, dtype_bytes: int | None = None) -> int:
    """Physical KV bytes for ``n_tokens`` with ``layers`` converted (the others hold full K and V), as
    ``KVCache.stats().physical_bytes`` counts them: per token, layer and KV head, (d_kv + rope_dims) numbers in
    a converted layer or 2 x d_head in a full one, plus the entry's int64 position (``POSITION_BYTES``), which
    every layer holding entries keeps."""
    i = model.info
    if dtype_bytes is None:
        dtype_bytes = model.weights().W_E.element_size()
    conv = len(set(layers))
    per_conv = i.n_kv_heads * ((d_kv + rope_dims) * dtype_bytes + POSITION_BYTES)
    per_full = i.n_kv_heads * (2 * i.d_head * dtype_bytes + POSITION_BYTES)
    return n_tokens * (conv * per_conv + (i.n_layers - conv) * per_full)


@register_method("mha2mla")
@dataclass
class MHA2MLA(EfficiencyMethod):
    """Training-free GQA -> MLA conversion with a latent KV cache (module docstring)."""

    d_kv: int = 32
    rope_dims: int = 8
    rope_select: str = "2-norm"
    svd: str = "plain"
    mode: str = "absorb"
    layers: list | None = None
    window: int = 256
    n_windows: int = 4

    family: ClassVar[str] = "latent-attention"
    needs_calibration: ClassVar[bool] = True
    knobs: ClassVar[dict[str, Knob]] = {
        "d_kv": Knob("int", 1, 1 << 16, doc="Latent numbers per token and KV head."),
        "rope_dims": Knob("int", 0, 1 << 16, doc="Rotated dimensions kept per KV head (even)."),
        "rope_select": Knob("choice", choices=SELECTIONS),
        "svd": Knob("choice", choices=("plain", "whitened")),
        "mode": Knob("choice", choices=MODES, doc="absorb: decode from the latent; decompress: rebuild K and V."),
        "layers": Knob("layers", optional=True, doc="Layers converted (None: all)."),
        "window": Knob("int", 8, 8192), "n_windows": Knob("int", 1, 100000),
    }
    factors: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    pair_scores: object = field(default=None, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.rope_dims % 2:
            raise InputError(f"mha2mla: rope_dims must be even (rotary dimensions come in pairs), got {self.rope_dims}.")

    def _layers(self, model) -> list[int]:
        return list(range(model.info.n_layers)) if self.layers is None else sorted({model.check_layer(l) for l in self.layers})

    def check_model(self, model) -> None:
        i = model.info
        if i.positional != "rotary" or model.weights().layers[0].W_gate is None:
            raise InputError(f"mha2mla needs a Llama-family model (RoPE, GQA); {i.name} is {i.architecture}.")
        if self.rope_dims > i.d_head:
            raise InputError(f"mha2mla: rope_dims={self.rope_dims} exceeds the head dimension {i.d_head}.")
        m = 2 * i.d_head - self.rope_dims
        if self.d_kv > min(i.d_model, m):
            raise InputError(f"mha2mla: d_kv={self.d_kv} is larger than the head dimensions allow: with {self.rope_dims} "
                             f"rotary dims kept, the joint [K_nope | V] matrix of a KV head has rank at most "
                             f"{min(i.d_model, m)} (2 x d_head - rope_dims).")
        self._layers(model)

    def prepare(self, model, texts=None) -> None:
        """Pair scores (for "2-norm") and the attention-input covariance (for "whitened") on ``texts``; then
        converts every layer."""
        self.check_model(model)
        layers = self._layers(model)
        e = model.info.d_head
        scores = None
        if self.rope_dims in (0, e):  # no pair or every pair: nothing to choose
            freqs = select_pairs(model, self.rope_dims, "high")
        elif self.rope_select == "2-norm":
            scores = pair_norm_scores(model, texts, self.window, self.n_windows)
            freqs = select_pairs(model, self.rope_dims, "2-norm", scores)
        else:
            freqs = select_pairs(model, self.rope_dims, self.rope_select)
        covs = {}
        if self.svd == "whitened":
            from ..lowrank.svd_llm import input_covariances

            covs, _ = input_covariances(model, texts, layers, ("q",), self.window, self.n_windows)
        with model.without_interventions():
            W = model.weights()
            self.factors = {l: convert_layer(W.layers[l], freqs[l], self.d_kv, self.svd, covs.get((l, "q")))
                            for l in layers}
        self.pair_scores = scores

    def intervention(self, model):
        if not self.factors:
            raise InputError("mha2mla: call prepare(model, texts) first (it converts the weights).")
        return MLAEdit(self.factors, self.mode)

    def added_weight_bytes(self) -> int:
        """Bytes of the converted attentions' weights (held in addition while the edit holds)."""
        total = 0
        for f in self.factors.values():
            d, h, r = f.Wq_rope.shape
            g, dkv, e = f.up_v.shape
            n = d * h * r + d * g * r + d * g * dkv + g * dkv * (e - r) + g * dkv * e
            n += d * h * dkv + h * dkv * d if self.mode == "absorb" else d * h * (e - r) + h * e * d
            total += n * f.up_v.element_size()
        return total

    def cost(self, model, n_tokens: int) -> Cost:
        if not self.factors:
            raise InputError("mha2mla: call prepare(model, texts) first.")
        kv = kv_bytes_mla(model, n_tokens, self.d_kv, self.rope_dims, self.factors)
        base = model.parameter_bytes()
        return Cost(n_tokens, base + self.added_weight_bytes(), kv, base, kv_bytes_full(model, n_tokens), "real",
                    "latent KV cache (physical); the converted attention's weights are added while the edit holds "
                    "(the original attention weights stay in memory so the edit can be undone)")
