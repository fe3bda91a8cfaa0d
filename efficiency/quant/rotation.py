"""Rotating the residual stream by computational invariance (QuaRot), and the per-head V/O rotation.

For an RMSNorm model, with x the residual stream and Q (d, d) orthogonal:

1. **Fold the norm gains** into what reads the normalized stream: ``W_{q,k,v} ← W diag(γ_ln1)``,
   ``W_{gate,up} ← W diag(γ_ln2)``, ``W_U ← diag(γ_final) W_U``; the gains become 1.
2. **Rotate**: the stream becomes x Q. Readers take ``W ← W Q`` (q, k, v, gate, up: weights (out, d));
   writers ``W ← Qᵀ W`` (o, down: weights (d, in)) and their biases ``b ← b Q``; the embedding
   ``W_E ← W_E Q``; the unembedding ``W_U ← Qᵀ W_U``. Since ``RMSNorm(x Q) = RMSNorm(x) Q`` for a
   gain-free RMSNorm (Q keeps norms), every logit is unchanged. Tied embeddings are untied (the
   embedding and the unembedding get different rotations of the same matrix).
3. **Per-head rotation of V and O** (SpinQuant's R2; QuaRot's online head-wise Hadamard needs a Hadamard
   matrix of the head count, and 9 has none): each value head's output is multiplied by the Hadamard
   H_e (e = d_head): ``W_v[g] ← H_eᵀ W_v[g]``, and each head's slice of o_proj's input by the same
   ``W_o[:, h] ← W_o[:, h] H_e``. Attention mixes value vectors linearly, so z_h becomes z_h H_e and o_proj
   undoes it: exact, no online operation, query heads of one KV group share the rotation.
4. **Online Hadamard before down_proj** (optional): down_proj becomes ``QuantLinear(W_down H_f,
   transform=KroneckerHadamard(f))``, so its input (the SwiGLU output) is rotated at run time (f = 1536 =
   12 · 128 on SmolLM2, applied as H_12 ⊗ H_128), which spreads outliers of that input too.

Residual rotations (``Rotation`` objects, applied to rows as X ↦ X Q): ``"rh"``, a randomized Hadamard
diag(±1) H_d (H_576 = H_36 ⊗ H_16 / 24 on SmolLM2), applied in Kronecker form; ``"ro"``, a Haar-random
orthogonal matrix; or any given orthogonal matrix (DFRot's refined one). All products are computed in
float64 and stored in the model's dtype; the rotated float32 model gives the same logits up to float32
rounding (about 1e-4 on SmolLM2's logits, whose size is ~20; 1e-5 on the tiny models).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from workbench.edits import WeightEditor
from workbench.errors import InputError

from .base import LLAMA_KINDS
from .hadamard import KroneckerHadamard, check_orthogonal, hadamard, random_orthogonal, random_signs
from .modules import QuantLinear

if TYPE_CHECKING:
    from workbench.model import Model

ROTATIONS = ("rh", "ro")


def check_rotatable(model: "Model") -> None:
    """Rotations need an RMSNorm, rotary, Llama-shaped model (q, k, v, o, gate, up, down)."""
    i = model.info
    if i.normalization != "RMS":
        raise InputError(f"Rotating {i.name} is not supported: it uses LayerNorm, whose mean subtraction breaks the "
                         "invariance RMSNorm(xQ) = RMSNorm(x)Q unless it is folded first. Rotations need an RMSNorm model "
                         "(Llama family, e.g. the bundled SmolLM2 or 'tiny-llama').")
    if i.positional != "rotary":
        raise InputError(f"Rotating {i.name} is not supported: it has learned position embeddings.")
    missing = [k for k in LLAMA_KINDS if k not in model.linear_kinds]
    if missing:
        raise InputError(f"Rotating {i.name} needs the linears {LLAMA_KINDS}; it lacks {missing}.")


class Rotation:
    """An orthogonal (d, d) matrix Q, applied to rows as ``right(X) = X Q`` (X (..., d))."""

    d: int

    def right(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """(d, d) float64."""
        return self.right(torch.eye(self.d, dtype=torch.float64))


class DenseRotation(Rotation):
    """Any orthogonal matrix (random orthogonal, DFRot's refined one), checked in float64."""

    def __init__(self, Q: torch.Tensor, what: str = "the residual rotation"):
        if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
            raise InputError(f"{what} must be a square matrix, got shape {tuple(Q.shape)}.")
        self.Q = check_orthogonal(Q.detach().double().cpu(), what, 1e-8)
        self.d = self.Q.shape[0]

    def right(self, X):
        return X @ self.Q.to(X.device, X.dtype)

    def matrix(self):
        return self.Q.clone()


class SignedHadamard(Rotation):
    """QuaRot's randomized Hadamard diag(s) H, applied in Kronecker form: X Q = ((X ⊙ s) (A ⊗ B))."""

    def __init__(self, d: int, seed: int = 0):
        self.d = d
        self.signs = random_signs(d, seed)
        self.T = KroneckerHadamard(d, dtype=torch.float64)

    def right(self, X):
        T = self.T.to(X.device, X.dtype) if (X.dtype, X.device) != (torch.float64, torch.device("cpu")) else self.T
        return T(X * self.signs.to(X.device, X.dtype))


def as_rotation(Q) -> Rotation:
    return Q if isinstance(Q, Rotation) else DenseRotation(torch.as_tensor(Q))


def residual_rotation(d: int, kind: str, seed: int = 0) -> Rotation:
    """The residual rotation: "rh" randomized Hadamard (structured), "ro" random orthogonal (dense)."""
    if kind == "rh":
        return SignedHadamard(d, seed)
    if kind == "ro":
        return DenseRotation(random_orthogonal(d, seed))
    raise InputError(f"rotation must be one of {ROTATIONS}, got {kind!r}.")


def _gain(norm, d: int, device) -> torch.Tensor:
    return torch.ones(d, dtype=torch.float64, device=device) if norm.w is None else norm.w.double()


def rotate(model: "Model", editor: WeightEditor, Q, head_rotation: bool = True,
           online_had: bool = False, install_online: bool = True, note: str = "rotated") -> dict:
    """Fold the norms and rotate the residual stream of ``model`` by Q (a ``Rotation`` or a (d, d) orthogonal
    matrix) through ``editor`` (module docstring). Products are computed in float64.

    online_had: fold a Hadamard into down_proj's input side; with ``install_online`` down_proj becomes a
    ``QuantLinear`` applying it at run time, else only the weight is changed (the caller installs the module).
    Returns {layer: KroneckerHadamard} of the online transforms (empty without online_had)."""
    check_rotatable(model)
    i = model.info
    d, e = i.d_model, i.d_head
    rot = as_rotation(Q)
    if rot.d != d:
        raise InputError(f"The residual rotation must be ({d}, {d}), got ({rot.d}, {rot.d}).")
    W = model.weights()
    dev, dt = W.W_E.device, W.W_E.dtype
    He = hadamard(e).to(dev) if head_rotation else None

    def right(X):  # X Q in float64
        return rot.right(X.double())

    online = {}
    for l, lw in enumerate(W.layers):
        g1, g2 = _gain(lw.ln1, d, dev), _gain(lw.ln2, d, dev)
        for kind, g in (("q", g1), ("k", g1), ("v", g1), ("gate", g2), ("up", g2)):
            w = right(model.linear_weight(l, kind).double() * g[None, :])
            b = model.linear_bias(l, kind)
            if kind == "v" and He is not None:  # W_v[g] <- H_eᵀ W_v[g], b_v[g] <- b_v[g] H_e
                w = torch.einsum("fi,gfd->gid", He, w.reshape(-1, e, d)).reshape(-1, d)
                b = None if b is None else (b.double().reshape(-1, e) @ He).reshape(-1).to(dt)
            editor.set_linear(l, kind, weight=w.to(dt), bias=b, note=note)
        editor.set_norm(l, "ln1", weight=torch.ones(d, dtype=dt, device=dev))  # one tensor each, as in a real model
        editor.set_norm(l, "ln2", weight=torch.ones(d, dtype=dt, device=dev))
        wo = model.linear_weight(l, "o").double()  # (d, H e)
        if He is not None:
            wo = (wo.reshape(d, -1, e) @ He).reshape(d, -1)
        bo = model.linear_bias(l, "o")
        editor.set_linear(l, "o", weight=right(wo.t()).t().to(dt), bias=None if bo is None else right(bo).to(dt),
                          note=note)
        wd = right(model.linear_weight(l, "down").double().t()).t()  # Qᵀ W_down
        bd = model.linear_bias(l, "down")
        bd = None if bd is None else right(bd).to(dt)
        if online_had:
            T = KroneckerHadamard(wd.shape[1], dtype=dt, device=dev)
            wd = KroneckerHadamard(wd.shape[1], dtype=torch.float64, device=dev)(wd)  # W_down H
            online[l] = T
            if install_online:
                editor.replace_linear(l, "down", QuantLinear(wd.to(dt), bd, transform=T), note=note)
                continue
        editor.set_linear(l, "down", weight=wd.to(dt), bias=bd, note=note)
    editor.set_embedding(right(W.W_E).to(dt))
    gf = _gain(W.final_norm, d, dev)
    editor.set_unembedding(right((gf[:, None] * W.W_U.double()).t()).t().to(dt))
    editor.set_norm(None, weight=torch.ones(d, dtype=dt, device=dev))
    return online


def rotation_extra_bytes(model: "Model", online_had: bool) -> int:
    """Bytes a rotation adds to the model: the untied copy of a tied embedding (the embedding and the
    unembedding now differ) and the online Hadamard factors of every down_proj."""
    i = model.info
    el = model.weights().W_E.element_size()
    extra = 0
    tied = model.is_shared_parameter(model.embedding_module().weight)
    if tied:
        extra += i.d_vocab * i.d_model * el
    if online_had:
        T = KroneckerHadamard(i.d_mlp)
        extra += i.n_layers * (T.m * T.m + T.p * T.p) * el
    return extra
