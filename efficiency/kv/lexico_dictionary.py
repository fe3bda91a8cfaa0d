"""Lexico's universal dictionaries: per layer, one for keys and one for values, learned offline.

A ``LexicoDictionary`` holds, for every layer l, a key dictionary ``keys[l]`` and a value dictionary
``values[l]``, each (d_head, N) with unit-norm columns (atoms), shared by every KV head and every
input. Keys are the cached keys *after* RoPE (what the cache stores). The Gram matrix of each
dictionary (N, N), which OMP needs, is computed on first use and kept (``gram``; 4·N² bytes each:
252 MB for 60 dictionaries at N = 1024, which is why N stays at 1024 or below here).

Learning (``learn``): the paper trains the atoms with Adam through fixed OMP codes (gradients only
into D, renormalized after every step). We use the closed-form version of the same objective, the
method of optimal directions (MOD, Engan et al. 1999), which converges in a few passes on CPU: starting
from N training vectors (normalized), repeat ``iterations`` times: encode the training vectors with
OMP at ``sparsity`` (``efficiency.kv.omp``), set ``D = X Cᵀ (C Cᵀ + λI)⁻¹`` (least-squares atoms for
those codes; λ = 1e-6 · mean diag), renormalize the atoms, and re-seed unused atoms with the worst
reconstructed training vectors.

Files: ``<name>.safetensors`` (``keys`` and ``values``, (L, d, N) float16) plus ``<name>.json``
(model name and fingerprint, N, the training settings and measured reconstruction errors). The
dictionary for the bundled SmolLM2 ships in ``efficiency/data/lexico/``; ``scripts/build_lexico.py``
rebuilds it (``for_model`` also looks in the user cache, ``workbench.paths.cache_dir() / "lexico"``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from workbench.errors import InputError
from workbench.paths import _usual_mode, atomic_write_json, cache_dir

from .omp import Gram, omp, reconstruct

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "lexico"
KINDS = ("keys", "values")


def user_dir() -> Path:
    return cache_dir() / "lexico"


@dataclass
class LexicoDictionary:
    """Per-layer key and value dictionaries (L, d_head, N), unit-norm atoms (module docstring)."""

    keys: torch.Tensor
    values: torch.Tensor
    model_name: str = ""
    fingerprint: str = ""
    config: dict = field(default_factory=dict)
    _grams: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.keys.ndim != 3 or self.keys.shape != self.values.shape:
            raise InputError(f"LexicoDictionary: keys and values must both be (L, d_head, N), got "
                             f"{tuple(self.keys.shape)} and {tuple(self.values.shape)}.")
        if self.n_atoms > 32767:
            raise InputError(f"LexicoDictionary: at most 32767 atoms (indices are stored as int16), got {self.n_atoms}.")
        self.keys, self.values = self.keys.float(), self.values.float()

    @property
    def n_layers(self) -> int:
        return int(self.keys.shape[0])

    @property
    def d_head(self) -> int:
        return int(self.keys.shape[1])

    @property
    def n_atoms(self) -> int:
        return int(self.keys.shape[2])

    def atoms(self, layer: int, kind: str) -> torch.Tensor:
        """(d_head, N) dictionary of ``kind`` ("keys" or "values") for ``layer``."""
        if kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {kind!r}.")
        return getattr(self, kind)[layer]

    def gram(self, layer: int, kind: str) -> Gram:
        """The dictionary with its Gram matrix, computed once and kept."""
        key = (layer, kind)
        if key not in self._grams:
            self._grams[key] = Gram.of(self.atoms(layer, kind))
        return self._grams[key]

    def nbytes(self) -> int:
        """Bytes of the dictionaries (float32 in memory) plus the Gram matrices computed so far."""
        return (self.keys.numel() + self.values.numel()) * 4 + sum(g.gram.numel() * 4 for g in self._grams.values())

    def check(self, model) -> None:
        i = model.info
        if (self.n_layers, self.d_head) != (i.n_layers, i.d_head):
            raise InputError(f"This Lexico dictionary is for {self.n_layers} layers × d_head {self.d_head}; "
                             f"{i.name} has {i.n_layers} × {i.d_head}.")
        if self.fingerprint and self.fingerprint != model.fingerprint:
            raise InputError(f"This Lexico dictionary was learned on model {self.model_name!r} (fingerprint "
                             f"{self.fingerprint}), not on this model ({model.fingerprint}). Build one with "
                             f"`python scripts/build_lexico.py`.")

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (float16 atoms) and ``path.json`` (metadata), each atomically."""
        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.safetensors")
        save_file({"keys": self.keys.half().contiguous(), "values": self.values.half().contiguous()}, str(tmp))
        _usual_mode(tmp, 0o666)
        tmp.replace(path.with_suffix(".safetensors"))
        atomic_write_json(path.with_suffix(".json"), {"model_name": self.model_name, "fingerprint": self.fingerprint,
                                                      "n_layers": self.n_layers, "d_head": self.d_head,
                                                      "n_atoms": self.n_atoms, "config": self.config})
        return path.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "LexicoDictionary":
        path = Path(path).with_suffix("")
        st, meta = path.with_suffix(".safetensors"), path.with_suffix(".json")
        if not st.exists() or not meta.exists():
            raise InputError(f"No Lexico dictionary at {path} (.safetensors + .json); build one with "
                             f"`python scripts/build_lexico.py`.")
        t = load_file(str(st))
        m = json.loads(meta.read_text())
        return cls(t["keys"], t["values"], m.get("model_name", ""), m.get("fingerprint", ""), m.get("config", {}))

    @classmethod
    def for_model(cls, model, n_atoms: int | None = None) -> "LexicoDictionary":
        """The shipped or cached dictionary learned on ``model`` (matched by fingerprint; optionally N)."""
        for folder in (SHIPPED_DIR, user_dir()):
            for meta in sorted(folder.glob("*.json")) if folder.exists() else []:
                try:
                    m = json.loads(meta.read_text())
                except (OSError, ValueError):
                    continue
                if m.get("fingerprint") == model.fingerprint and (n_atoms is None or m.get("n_atoms") == n_atoms):
                    d = cls.load(meta.with_suffix(""))
                    d.check(model)
                    return d
        raise InputError(f"No Lexico dictionary for {model.info.name} (fingerprint {model.fingerprint}"
                         f"{'' if n_atoms is None else f', N={n_atoms}'}) in {SHIPPED_DIR} or {user_dir()}. "
                         f"Build one with `python scripts/build_lexico.py` (or `make lexico`), or pass "
                         f"dictionary=LexicoDictionary.learn(...).")


def learn_one(x: torch.Tensor, n_atoms: int, sparsity: int, iterations: int = 10, seed: int = 0,
              log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """MOD dictionary learning on x (M, d): returns (atoms (d, N) unit-norm, relative error after each pass)."""
    m, d = x.shape
    if m < n_atoms:
        raise InputError(f"learn: {m} training vectors are fewer than the {n_atoms} atoms requested.")
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    D = x[torch.randperm(m, generator=g)[:n_atoms]].T.clone()
    D = D / D.norm(dim=0, keepdim=True).clamp_min(1e-12)
    norms = x.norm(dim=1).clamp_min(1e-12)
    errors = []
    for it in range(iterations):
        idx, coef = omp(x, D, sparsity)
        err = (reconstruct(idx, coef, D) - x).norm(dim=1) / norms
        errors.append(float(err.mean()))
        if log:
            log(f"    pass {it}: mean relative error {errors[-1]:.4f}")
        cct = _cct(idx, coef, n_atoms)  # C Cᵀ (N, N)
        xct = torch.zeros(n_atoms, d).index_add_(0, idx.reshape(-1), (coef[..., None] * x[:, None, :]).reshape(-1, d)).T
        ridge = 1e-6 * float(cct.diagonal().mean().clamp_min(1e-12))
        D = torch.linalg.solve(cct + ridge * torch.eye(n_atoms), xct.T).T  # D (C Cᵀ + λI) = X Cᵀ
        used = torch.zeros(n_atoms, dtype=torch.bool)
        used[idx.reshape(-1).unique()] = True
        nrm = D.norm(dim=0)
        dead = (~used) | (nrm < 1e-8)
        if bool(dead.any()):  # re-seed with the worst reconstructed vectors
            worst = err.topk(int(dead.sum())).indices
            D[:, dead] = x[worst].T
            nrm = D.norm(dim=0)
        D = D / nrm.clamp_min(1e-12)
    idx, coef = omp(x, D, sparsity)
    errors.append(float(((reconstruct(idx, coef, D) - x).norm(dim=1) / norms).mean()))
    return D, errors


def _cct(idx: torch.Tensor, coef: torch.Tensor, n: int) -> torch.Tensor:
    """C Cᵀ (N, N) from codes (M, s): the sum over signals of the outer product of their coefficients."""
    m, s = idx.shape
    out = torch.zeros(n * n)
    flat = (idx[:, :, None] * n + idx[:, None, :]).reshape(-1)
    out.index_add_(0, flat, (coef[:, :, None] * coef[:, None, :]).reshape(-1))
    return out.reshape(n, n)


def relative_error(x: torch.Tensor, atoms: torch.Tensor | Gram, sparsity: int) -> float:
    """Mean ||x - x̂|| / ||x|| of OMP at ``sparsity`` with ``atoms`` (d, N), over the rows of x (M, d)."""
    g = atoms if isinstance(atoms, Gram) else Gram.of(atoms)
    idx, coef = omp(x.float(), g, sparsity)
    return float(((reconstruct(idx, coef, g.dictionary) - x.float()).norm(dim=1)
                  / x.float().norm(dim=1).clamp_min(1e-12)).mean())
