"""SAELens transcoder classes, plus the TopK transcoders SAELens lacks (registered with SAELens).

Every transcoder here is an ``sae_lens.saes.transcoder.Transcoder``: ``encode(x (..., d_in)) ->
z (..., d_sae)``, ``decode(z) -> (..., d_out)``, ``forward(x)``; ``W_enc`` (d_in, d_sae), ``b_enc``
(d_sae), ``W_dec`` (d_sae, d_out), ``b_dec`` (d_out), plus ``W_skip`` (d_out, d_in) for skip
variants and ``threshold`` (d_sae) for JumpReLU.

Registration with SAELens: SAELens keeps its architectures in a module-level dict filled by
``sae_lens.registry.register_sae_class`` and has no plugin or entry-point mechanism (checked in
6.54), so the TopK kinds exist for SAELens only once this module has been imported. Importing it
registers them, after which ``Transcoder.load_from_disk`` and ``SAE.load_from_disk`` load them like
the built-in architectures. Their architecture names carry the module to import,
``"probes.transcoders:topk_transcoder"`` and ``"probes.transcoders:topk_skip_transcoder"``, so the
error plain SAELens raises without the import (``KeyError: 'probes.transcoders:topk_transcoder'``)
says what is missing. Folders saved under the earlier names ``"topk_transcoder"`` /
``"topk_skip_transcoder"`` still load (both names are registered).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.transcoder import (
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.util import filter_valid_dataclass_fields

from workbench.errors import InputError

ACTIVATIONS = ("relu", "topk", "jumprelu")
# SAELens architecture names: "<module to import>:<kind>", so a KeyError names the import.
TOPK_ARCH = "probes.transcoders:topk_transcoder"
TOPK_SKIP_ARCH = "probes.transcoders:topk_skip_transcoder"
LEGACY_NAMES = {"topk_transcoder": TOPK_ARCH, "topk_skip_transcoder": TOPK_SKIP_ARCH}  # saved before the rename


@dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """Transcoder keeping the ``k`` largest (ReLU'd) pre-activations per token."""
    k: int = 32

    @classmethod
    def architecture(cls) -> str:
        return TOPK_ARCH

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> "TopKTranscoderConfig":
        res = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
        return res

    def to_dict(self) -> dict[str, Any]:
        res = super().to_dict()
        res["k"] = self.k
        return res


class TopKTranscoder(Transcoder):
    """SAELens ``Transcoder`` with a TopK activation (SAELens's own ``TopK`` module)."""
    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    def __init__(self, cfg: TopKTranscoderConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.topk = TopK(cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.topk(hidden_pre))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> "TopKTranscoder":
        return cls(TopKTranscoderConfig.from_dict(config_dict))


@dataclass
class TopKSkipTranscoderConfig(TopKTranscoderConfig):
    @classmethod
    def architecture(cls) -> str:
        return TOPK_SKIP_ARCH

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> "TopKSkipTranscoderConfig":
        res = cls(**filter_valid_dataclass_fields(config_dict, cls))
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
        return res


class TopKSkipTranscoder(TopKTranscoder, SkipTranscoder):
    """TopK transcoder with SAELens's skip connection ``x @ W_skip.T`` added to the output."""
    cfg: TopKSkipTranscoderConfig  # type: ignore[assignment]

    def __init__(self, cfg: TopKSkipTranscoderConfig):
        super().__init__(cfg)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> "TopKSkipTranscoder":
        return cls(TopKSkipTranscoderConfig.from_dict(config_dict))


for _arch, _cls, _cfg in ((TOPK_ARCH, TopKTranscoder, TopKTranscoderConfig),
                          (TOPK_SKIP_ARCH, TopKSkipTranscoder, TopKSkipTranscoderConfig),
                          ("topk_transcoder", TopKTranscoder, TopKTranscoderConfig),
                          ("topk_skip_transcoder", TopKSkipTranscoder, TopKSkipTranscoderConfig)):
    if _arch not in SAE_CLASS_REGISTRY:  # module reloads (notebooks) must not register twice
        register_sae_class(_arch, _cls, _cfg)

# (activation, skip) -> (class, config class)
CLASSES: dict[tuple[str, bool], tuple[type[Transcoder], type[TranscoderConfig]]] = {
    ("relu", False): (Transcoder, TranscoderConfig),
    ("relu", True): (SkipTranscoder, SkipTranscoderConfig),
    ("topk", False): (TopKTranscoder, TopKTranscoderConfig),
    ("topk", True): (TopKSkipTranscoder, TopKSkipTranscoderConfig),
    ("jumprelu", False): (JumpReLUTranscoder, JumpReLUTranscoderConfig),
    ("jumprelu", True): (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
}


def activation_of(tc: Transcoder) -> str:
    """"relu", "topk" or "jumprelu" for a transcoder object."""
    if isinstance(tc, TopKTranscoder):
        return "topk"
    if isinstance(tc, JumpReLUTranscoder):
        return "jumprelu"
    return "relu"


def has_skip(tc: Transcoder) -> bool:
    return isinstance(tc, SkipTranscoder)


def build_transcoder(d_in: int, d_sae: int, d_out: int, activation: str = "relu", skip: bool = False,
                     k: int = 32, metadata: dict[str, Any] | None = None, dtype: str = "float32") -> Transcoder:
    """A freshly initialised SAELens transcoder of the requested kind (SAELens's Kaiming init)."""
    if activation not in ACTIVATIONS:
        raise InputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
    for name, v in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
        if not isinstance(v, int) or v <= 0:
            raise InputError(f"{name} must be a positive integer, got {v!r}.")
    if activation == "topk" and not 0 < k <= d_sae:
        raise InputError(f"k must be in 1..d_sae={d_sae} for a TopK transcoder, got {k}.")
    cls, cfg_cls = CLASSES[(activation, bool(skip))]
    kw: dict[str, Any] = dict(d_in=d_in, d_sae=d_sae, d_out=d_out, dtype=dtype, device="cpu",
                              apply_b_dec_to_input=False)
    if activation == "topk":
        kw["k"] = k
    cfg = cfg_cls(**kw)
    if metadata:
        cfg.metadata = SAEMetadata(**metadata)
    return cls(cfg)


def from_relu_mlp(W_in: torch.Tensor, b_in: torch.Tensor, W_out: torch.Tensor, b_out: torch.Tensor,
                  metadata: dict[str, Any] | None = None) -> Transcoder:
    """The exact transcoder of a ReLU MLP ``y = ReLU(x W_in + b_in) W_out + b_out``.

    W_in (d_in, d_mlp), W_out (d_mlp, d_out). Decoder rows are *not* unit norm here: the norms
    are kept in W_dec so that the transcoder reproduces the MLP exactly.
    """
    d_in, d_mlp = W_in.shape
    if W_out.shape[0] != d_mlp or b_in.shape != (d_mlp,) or b_out.shape != (W_out.shape[1],):
        raise InputError(f"Shapes do not form an MLP: W_in {tuple(W_in.shape)}, b_in {tuple(b_in.shape)}, "
                         f"W_out {tuple(W_out.shape)}, b_out {tuple(b_out.shape)}.")
    tc = build_transcoder(d_in, d_mlp, W_out.shape[1], "relu", metadata=metadata)
    with torch.no_grad():
        tc.W_enc.copy_(W_in)
        tc.b_enc.copy_(b_in)
        tc.W_dec.copy_(W_out)
        tc.b_dec.copy_(b_out)
    return tc
