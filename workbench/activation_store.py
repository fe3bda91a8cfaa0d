"""An on-disk activation store: safetensors shards plus a JSON index, streamed back in shuffled batches.

Layout of a store folder::

    index.json                  what the store holds (written first, never changed afterwards):
                                  format, model fingerprint, tensor names (hook names) and widths,
                                  dtype, rows per shard, number of shards, the harvest arguments
    shard-000000.safetensors    one tensor per name, each (rows_per_shard, width), in ``dtype``
    shard-000000.done.json      the completion mark of that shard: rows, bytes, sha256 of the file

A shard is written to a temporary file and renamed into place, and only then is its completion
mark written (also atomically), so a shard with a mark is always whole. A harvest that stops
halfway leaves some shards without marks; rerunning it skips the marked shards (``missing()``).
Several processes (ranks) can fill disjoint shards of one store at the same time: nothing but the
index is shared, and the index is written once, before any shard.

Reading memory-maps each shard (``safetensors.safe_open`` on CPU) and materialises only the
shards of the current shuffle group, so a store larger than RAM streams into training with
memory bounded by ``shards_in_memory × rows_per_shard`` rows.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .errors import InputError, WorkbenchError
from .paths import atomic_write_bytes, atomic_write_json

FORMAT = "workbench-activation-store/1"
INDEX = "index.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class StoreError(WorkbenchError, OSError):
    """A store on disk is incomplete, missing a shard, or corrupt."""


def shard_file(i: int) -> str:
    return f"shard-{i:06d}.safetensors"


def mark_file(i: int) -> str:
    return f"shard-{i:06d}.done.json"


def dtype_name(dtype: torch.dtype) -> str:
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    raise InputError(f"The activation store keeps float16, bfloat16 or float32 rows, got {dtype}.")


@dataclass
class StoreIndex:
    """The contents of ``index.json``.

    names: tensor names in every shard (e.g. hook names) with their widths (columns).
    rows_per_shard: rows of every shard (the same for all). meta: free-form description of how
    the rows were made (harvest arguments), compared on resume so a rerun never mixes harvests.
    """

    model_fingerprint: str
    names: dict[str, int]
    dtype: str
    rows_per_shard: int
    n_shards: int
    meta: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def n_rows(self) -> int:
        return self.rows_per_shard * self.n_shards

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "model_fingerprint": self.model_fingerprint, "names": dict(self.names),
                "dtype": self.dtype, "rows_per_shard": self.rows_per_shard, "n_shards": self.n_shards,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreIndex":
        return cls(d["model_fingerprint"], {k: int(v) for k, v in d["names"].items()}, d["dtype"],
                   int(d["rows_per_shard"]), int(d["n_shards"]), d.get("meta", {}), d.get("format", FORMAT))


def create_store(folder, index: StoreIndex) -> "ActivationStore":
    """Create the store's folder and index, or reopen an existing store with the same index.

    An existing index that differs (other model, names, dtype, shard size or harvest arguments)
    is refused, so a resumed harvest never mixes rows of two different harvests.
    """
    if index.dtype not in DTYPES:
        raise InputError(f"dtype must be one of {list(DTYPES)}, got {index.dtype!r}.")
    if index.rows_per_shard <= 0 or index.n_shards <= 0 or not index.names:
        raise InputError(f"A store needs rows_per_shard > 0, n_shards > 0 and at least one name; got "
                         f"{index.rows_per_shard}, {index.n_shards}, {list(index.names)}.")
    folder = Path(folder)
    path = folder / INDEX
    want = json.loads(json.dumps(index.to_dict()))  # normalise tuples etc. as JSON would
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            diff = {k: (have.get(k), want[k]) for k in want if have.get(k) != want[k]}
            raise InputError(f"{folder} already holds a different activation store {diff} (on disk, requested); "
                             "use another folder, or delete it to start over.")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, want)
    return ActivationStore(folder, require_complete=False)


def write_shard(folder, index: StoreIndex, i: int, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write shard ``i`` (tensors {name: (rows_per_shard, width)}) atomically, then its completion mark."""
    from safetensors.torch import save

    if not 0 <= i < index.n_shards:
        raise InputError(f"Shard {i} is out of range: the store has {index.n_shards} shards.")
    if set(tensors) != set(index.names):
        raise InputError(f"Shard {i} must hold exactly the tensors {sorted(index.names)}, got {sorted(tensors)}.")
    dt = DTYPES[index.dtype]
    out = {}
    for name, t in tensors.items():
        want = (index.rows_per_shard, index.names[name])
        if tuple(t.shape) != want:
            raise InputError(f"Shard {i}: {name} has shape {tuple(t.shape)}, expected {want}.")
        t = t.detach().to("cpu", dt).contiguous()
        if not torch.isfinite(t).all():
            raise InputError(f"Shard {i}: {name} has non-finite values in {index.dtype} (overflow?); "
                             "store float32 rows instead.")
        out[name] = t
    # one metadata key: safetensors orders several keys arbitrarily, and the bytes (and sha256) of
    # a shard should not depend on the process that wrote it
    data = save(out, metadata={"workbench": json.dumps({"shard": i, "model_fingerprint": index.model_fingerprint},
                                                        sort_keys=True)})
    folder = Path(folder)
    atomic_write_bytes(folder / shard_file(i), data)
    mark = {"shard": i, "rows": index.rows_per_shard, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_json(folder / mark_file(i), mark)
    return mark


class ActivationStore:
    """Read access to a store folder: ``index``, ``complete()``, ``missing()``, ``shard(i)``, ``batches(...)``.

    require_complete: refuse (``StoreError``) a store with a shard that is missing or unmarked.
    """

    def __init__(self, folder, require_complete: bool = True):
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.exists():
            raise StoreError(f"No activation store at {self.folder} ({INDEX} is missing); harvest one first.")
        try:
            self.index = StoreIndex.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"The store index {path} is unreadable ({e}); delete the folder and harvest again.") from None
        if self.index.format != FORMAT:
            raise StoreError(f"{path} has format {self.index.format!r}; this workbench reads {FORMAT!r}.")
        if require_complete:
            self.check_complete()

    # ------------------------------------------------------------------ status
    @property
    def names(self) -> list[str]:
        return list(self.index.names)

    @property
    def n_rows(self) -> int:
        return self.index.n_rows

    def mark(self, i: int) -> dict[str, Any] | None:
        """The completion mark of shard ``i`` (None when the shard is not complete)."""
        p = self.folder / mark_file(i)
        if not p.exists() or not (self.folder / shard_file(i)).exists():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError:
            return None

    def missing(self) -> list[int]:
        """Shards not yet complete (no file or no completion mark)."""
        return [i for i in range(self.index.n_shards) if self.mark(i) is None]

    def complete(self) -> bool:
        return not self.missing()

    def check_complete(self, owner=None) -> None:
        """Raise ``StoreError`` naming the missing shards (and, with ``owner(i)``, who should have written them)."""
        miss = self.missing()
        if miss:
            who = "" if owner is None else " (" + ", ".join(f"shard {i}: {owner(i)}" for i in miss[:8]) + ")"
            raise StoreError(f"The activation store {self.folder} is incomplete: {len(miss)} of {self.index.n_shards} "
                             f"shards missing, first {miss[:8]}{who}. Rerun the harvest with the same arguments: "
                             "it writes only the missing shards.")

    def verify(self) -> None:
        """Check every shard's size and sha256 against its completion mark (reads every byte)."""
        for i in range(self.index.n_shards):
            m = self._mark_or_raise(i)
            data = (self.folder / shard_file(i)).read_bytes()
            if len(data) != m["bytes"] or hashlib.sha256(data).hexdigest() != m["sha256"]:
                raise StoreError(f"Shard {i} of {self.folder} is corrupt (its bytes differ from its completion mark); "
                                 f"delete {shard_file(i)} and {mark_file(i)} and rerun the harvest to rewrite it.")

    def _mark_or_raise(self, i: int) -> dict[str, Any]:
        m = self.mark(i)
        if m is None:
            raise StoreError(f"Shard {i} of {self.folder} is missing or incomplete; rerun the harvest "
                             "with the same arguments to write it.")
        return m

    # ------------------------------------------------------------------ reading
    def shard(self, i: int, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Shard ``i`` as {name: (rows_per_shard, width)} tensors in the stored dtype (memory-mapped read)."""
        from safetensors import safe_open

        if not 0 <= i < self.index.n_shards:
            raise InputError(f"Shard {i} is out of range: the store has {self.index.n_shards} shards.")
        m = self._mark_or_raise(i)
        path = self.folder / shard_file(i)
        names = self.names if names is None else list(names)
        unknown = [n for n in names if n not in self.index.names]
        if unknown:
            raise InputError(f"The store holds {self.names}, not {unknown}.")
        size = path.stat().st_size
        if size != m["bytes"]:
            raise StoreError(f"Shard {i} of {self.folder} is corrupt: {size} bytes on disk, {m['bytes']} when written; "
                             f"delete {shard_file(i)} and {mark_file(i)} and rerun the harvest to rewrite it.")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                out = {n: f.get_tensor(n) for n in names}
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise StoreError(f"Shard {i} of {self.folder} is unreadable ({type(e).__name__}: {e}); delete "
                             f"{shard_file(i)} and {mark_file(i)} and rerun the harvest to rewrite it.") from None
        for n, t in out.items():
            want = (self.index.rows_per_shard, self.index.names[n])
            if tuple(t.shape) != want:
                raise StoreError(f"Shard {i} of {self.folder}: {n} has shape {tuple(t.shape)}, the index says {want}.")
        return out

    def batches(self, batch_size: int, *, seed: int = 0, names: Sequence[str] | None = None,
                shards_in_memory: int = 4, epochs: int | None = None, rank: int = 0, world_size: int = 1,
                dtype: torch.dtype = torch.float32) -> Iterator[dict[str, torch.Tensor]]:
        """Shuffled batches {name: (batch_size // world_size, width)}, reproducible from ``seed``.

        Every epoch visits the shards in a seeded random order, ``shards_in_memory`` at a time; the
        rows of each group (plus the rows left over from the previous group) are permuted with a
        seeded generator and cut into global batches of ``batch_size`` rows. With ``world_size`` W,
        rank r receives rows [r·B/W, (r+1)·B/W) of each global batch, so the W ranks together see
        exactly the batches a single process would see. ``epochs=None`` streams forever.
        Memory: about (shards_in_memory + 1) × rows_per_shard rows.
        """
        names = self.names if names is None else list(names)
        if batch_size <= 0 or shards_in_memory <= 0:
            raise InputError(f"batch_size and shards_in_memory must be positive, got {batch_size}, {shards_in_memory}.")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size}).")
        if batch_size % world_size:
            raise InputError(f"The global batch ({batch_size} rows) is not divisible by the world size ({world_size}): "
                             f"pick a batch size that is a multiple of {world_size}, e.g. "
                             f"{max(world_size, batch_size - batch_size % world_size)}.")
        if batch_size > self.n_rows:
            raise InputError(f"The store holds {self.n_rows} rows, fewer than one batch of {batch_size}.")
        self.check_complete()
        local = batch_size // world_size
        lo, hi = rank * local, (rank + 1) * local
        epoch = 0
        left: dict[str, torch.Tensor] | None = None
        while epochs is None or epoch < epochs:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(self.index.n_shards, generator=gen).tolist()
            for g in range(0, len(order), shards_in_memory):
                parts = [self.shard(i, names) for i in order[g:g + shards_in_memory]]
                rows = {n: torch.cat(([left[n]] if left else []) + [p[n] for p in parts]) for n in names}
                m = rows[names[0]].shape[0]
                perm = torch.randperm(m, generator=gen)
                full = m - m % batch_size
                for j in range(0, full, batch_size):
                    idx = perm[j + lo:j + hi]
                    yield {n: rows[n][idx].to(dtype) for n in names}
                left = {n: rows[n][perm[full:]] for n in names} if full < m else None
            epoch += 1
