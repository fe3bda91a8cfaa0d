"""Training configuration for transcoders (and SAEs, which are transcoders with input = target)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from workbench.errors import InputError

from .architectures import ACTIVATIONS


@dataclass
class TranscoderTrainingConfig:
    """Hyperparameters of one transcoder.

    Loss per batch (scale-free, so coefficients transfer across layers):
        L = Σ_b ‖ŷ_b − y_b‖² / (B · v)                               (normalised MSE, v = mean ‖y − ȳ‖²
                                                                     on the first batch, frozen)
          + l1_coefficient · mean_b Σ_i z_bi / √v                   ("relu", decoder rows unit norm)
          + l0_coefficient · mean_b Σ_i 1[pre_bi > θ_i]             ("jumprelu", STE with bandwidth)
          + aux_coefficient · AuxK loss on dead features             ("topk")
    With ``autocast`` the encoder and decoder matmuls run in bfloat16 under ``torch.autocast``
    (mixed precision: parameters, optimizer state and the losses stay float32).
    Dead features: a feature is dead when it has not fired for ``dead_window`` steps. TopK uses
    the AuxK loss (the top ``aux_k`` dead pre-activations reconstruct the residual error);
    ReLU and JumpReLU resample dead features every ``resample_every`` steps (decoder row set to a
    normalised high-error target residual, encoder column to the matching input at 0.2 × the mean
    live encoder norm, their Adam moments reset) until ``resample_until``; 0 turns it off.
    """
    d_in: int
    d_out: int
    d_sae: int
    activation: str = "relu"          # "relu" (L1, paper recipe), "topk", "jumprelu"
    skip: bool = False                # SAELens skip connection W_skip (d_out, d_in), starts at 0
    k: int = 32                       # topk
    l1_coefficient: float = 3.0       # relu
    l1_warmup_steps: int = 0
    l0_coefficient: float = 0.02      # jumprelu
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.05
    aux_coefficient: float = 1 / 32   # topk AuxK
    aux_k: int = 256
    dead_window: int = 200
    resample_every: int = 250
    resample_until: int = 0           # 0: no resampling
    lr: float = 1e-3
    lr_warmup_steps: int = 20
    lr_decay_fraction: float = 0.2    # linear decay to 0 over this final fraction of total_steps
    adam_betas: tuple[float, float] = (0.9, 0.999)
    total_steps: int = 1000
    batch_size: int = 1024
    seed: int = 0
    checkpoint_every: int = 0         # steps; 0: only at the end (when a checkpoint dir is given)
    autocast: bool = False            # bfloat16 matmuls (float32 parameters, Adam and losses);
                                      # on CPUs with AMX several times faster
    log_every: int = 50

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        for name in ("d_in", "d_out", "d_sae", "total_steps", "batch_size", "dead_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{name} must be a positive integer, got {v!r}.")
        if self.activation == "topk" and not 0 < self.k <= self.d_sae:
            raise InputError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}.")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, got {self.lr}.")
        self.adam_betas = tuple(self.adam_betas)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TranscoderTrainingConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"Unknown training config fields {sorted(unknown)}.")
        return cls(**d)
