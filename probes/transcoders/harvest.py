"""Streaming harvest of (MLP input, MLP output) pairs for transcoder training.

Convention (shared by every transcoder in the workbench): the transcoder input is ``mlp_in`` =
``blocks.{l}.ln2.hook_normalized`` (the normalised MLP input, before the norm's gain) and the
target is ``mlp_out`` = ``blocks.{l}.hook_mlp_out``; both (d_model,) per token.

The forward pass is truncated after the last requested layer (``stop_at_layer``), position 0
(the attention sink, with massive activations) is dropped by default, and pairs go through a
fixed-size shuffling buffer so memory stays bounded whatever the corpus size.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

import torch

from workbench.hook_names import hook_name
from workbench.errors import InputError
from workbench.progress import progress
from workbench.texts import load_corpus, token_windows



def hook_names(layer: int) -> tuple[str, str]:
    """(input hook, output hook) full TransformerLens names of the transcoder at ``layer``."""
    return hook_name("mlp_in", layer), hook_name("mlp_out", layer)


@dataclass
class HarvestStats:
    """Running counters of a harvest: tokens kept, forward seconds, windows run."""
    tokens: int = 0
    windows: int = 0
    forward_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def tokens_per_s(self) -> float:
        """Tokens harvested per second of forward pass (excludes shuffling and training)."""
        return self.tokens / self.forward_s if self.forward_s else 0.0


def _check_layers(model, layers) -> list[int]:
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise InputError("No layers given: pass the layer(s) whose MLP the transcoder replaces, e.g. layers=[8].")
    return sorted({model.check_layer(int(l)) for l in layers})


def harvest_windows(model, windows: Iterator[torch.Tensor], layers: Sequence[int], exclude_first: bool = True,
                    stats: HarvestStats | None = None) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """For each (B, T) window batch: {layer: (x (N, d), y (N, d))} with N = B·(T−1) (or B·T).

    One truncated forward pass per batch, stopping after the last layer in ``layers``.
    """
    layers = _check_layers(model, layers)
    stop = max(layers) + 1
    caps = [h for l in layers for h in hook_names(l)]
    for ids in windows:
        t0 = time.perf_counter()
        run = model.run(ids, capture=caps, stop_at_layer=stop if stop < model.info.n_layers else None,
                        logits=None)
        out = {}
        for l in layers:
            hi, ho = hook_names(l)
            x, y = run.captures[hi], run.captures[ho]
            if exclude_first:
                x, y = x[:, 1:], y[:, 1:]
            out[l] = (x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))
        if stats is not None:
            stats.forward_s += time.perf_counter() - t0
            stats.windows += ids.shape[0]
            stats.tokens += out[layers[0]][0].shape[0]
        yield out


class ShuffleBuffer:
    """Fixed-capacity buffer of rows; yields shuffled batches once half full.

    Holds at most ``capacity`` rows per tensor in preallocated storage (``dtype``, fp32 by
    default); when it is full, a random half is emitted as batches and refilled.
    """

    def __init__(self, capacity: int, batch_size: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        if batch_size <= 0 or capacity < 2 * batch_size:
            raise InputError(f"buffer capacity ({capacity}) must be at least twice the batch size ({batch_size}).")
        self.capacity, self.batch_size, self.dtype = capacity, batch_size, dtype
        self.gen = torch.Generator().manual_seed(seed)
        self.store: list[torch.Tensor] | None = None
        self.n = 0

    def _alloc(self, rows: Sequence[torch.Tensor]) -> None:
        self.store = [torch.empty(self.capacity, r.shape[-1], dtype=self.dtype) for r in rows]

    def add(self, rows: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
        """Add aligned row tensors (each (N, d_i)); yield the batches that became ready."""
        if self.store is None:
            self._alloc(rows)
        n, i = rows[0].shape[0], 0
        while i < n:
            take = min(n - i, self.capacity - self.n)
            for s, r in zip(self.store, rows):
                s[self.n:self.n + take] = r[i:i + take]
            self.n += take
            i += take
            if self.n == self.capacity:
                yield from self._emit(self.capacity // 2)

    def _emit(self, n_out: int) -> Iterator[tuple[torch.Tensor, ...]]:
        perm = torch.randperm(self.n, generator=self.gen)
        self.store = [s[perm] for s in self.store]  # shuffle in place of order; same memory
        n_out -= n_out % self.batch_size
        for j in range(self.n - n_out, self.n, self.batch_size):
            yield tuple(s[j:j + self.batch_size].clone() for s in self.store)
        self.n -= n_out

    def drain(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Emit every full batch still held (end of the stream)."""
        if self.n >= self.batch_size:
            yield from self._emit(self.n)


def pair_batches(model, layers, texts: Sequence[str] | None = None, *, batch_size: int = 1024,
                 buffer_tokens: int = 32768, context: int = 128, batch_prompts: int = 8, seed: int = 0,
                 exclude_first: bool = True, repeat: bool = False, max_tokens: int | None = None,
                 stats: HarvestStats | None = None) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Shuffled training batches {layer: (x (batch_size, d_model), y (batch_size, d_model))}.

    texts: documents (default: the bundled corpus, training split). The same token rows are used
    for every layer, so several transcoders can train from one forward pass. Memory: one buffer
    of ``buffer_tokens`` rows per layer and per side (x, y), fp32. ``max_tokens`` stops the
    harvest after that many tokens; ``repeat`` cycles the corpus for multi-epoch training.
    """
    layers = _check_layers(model, layers)
    if texts is None:
        texts = load_corpus("train")
    buf = ShuffleBuffer(buffer_tokens, batch_size, seed=seed)
    windows = token_windows(model.tokenizer, texts, context=context, batch_prompts=batch_prompts, seed=seed,
                            repeat=repeat)
    seen = 0
    for chunk in harvest_windows(model, windows, layers, exclude_first=exclude_first, stats=stats):
        rows = [t for l in layers for t in chunk[l]]
        for b in buf.add(rows):
            yield {l: (b[2 * i], b[2 * i + 1]) for i, l in enumerate(layers)}
        seen += rows[0].shape[0]
        if max_tokens is not None and seen >= max_tokens:
            break
    for b in buf.drain():
        yield {l: (b[2 * i], b[2 * i + 1]) for i, l in enumerate(layers)}


def layer_pairs(model, layer: int, texts: Sequence[str] | None = None, **kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (x, y) batches for one layer: the trainer's data provider. See ``pair_batches``."""
    layer = model.check_layer(layer)
    for d in pair_batches(model, [layer], texts, **kwargs):
        yield d[layer]


def measure_harvest(model, layer: int, n_windows: int = 32, context: int = 128, batch_prompts: int = 8) -> HarvestStats:
    """Harvest ``n_windows`` corpus windows at ``layer`` and return the timing (tokens/s of forward)."""
    stats = HarvestStats()
    texts = load_corpus("train")[:400]
    windows = token_windows(model.tokenizer, texts, context=context, batch_prompts=batch_prompts, seed=0)
    done = 0
    for _ in harvest_windows(model, windows, [layer], stats=stats):
        done += batch_prompts
        if done >= n_windows:
            break
    return stats


def harvest_cache(model, layers, n_tokens: int, texts: Sequence[str] | None = None, *, context: int = 128,
                  batch_prompts: int = 8, seed: int = 0, exclude_first: bool = True, dtype: torch.dtype = torch.float32,
                  stats: HarvestStats | None = None, log=None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Harvest exactly ``n_tokens`` (x, y) rows per layer into preallocated tensors.

    For multi-epoch training when the forward pass is the bottleneck: memory is fixed at
    ``n_tokens × 2 × d_model`` per layer (``dtype``). Returns {layer: (X (n_tokens, d), Y (n_tokens, d))}.
    """
    layers = _check_layers(model, layers)
    if n_tokens <= 0:
        raise InputError(f"n_tokens must be positive, got {n_tokens}.")
    if texts is None:
        texts = load_corpus("train")
    d = model.info.d_model
    out = {l: (torch.empty(n_tokens, d, dtype=dtype), torch.empty(n_tokens, d, dtype=dtype)) for l in layers}
    windows = token_windows(model.tokenizer, texts, context=context, batch_prompts=batch_prompts, seed=seed)
    n = 0
    with progress(total=n_tokens, desc=f"harvest layers {layers}", unit="tok") as bar:
        for chunk in harvest_windows(model, windows, layers, exclude_first=exclude_first, stats=stats):
            take = min(n_tokens - n, chunk[layers[0]][0].shape[0])
            for l in layers:
                out[l][0][n:n + take] = chunk[l][0][:take]
                out[l][1][n:n + take] = chunk[l][1][:take]
            n += take
            bar.update(take)
            if log is not None:
                log(f"harvested {n}/{n_tokens} tokens")
            if n >= n_tokens:
                return out
    raise InputError(f"The corpus gave only {n} tokens, fewer than the {n_tokens} requested; "
                     "lower n_tokens or pass more text.")


def cached_batches(cache: dict[int, tuple[torch.Tensor, torch.Tensor]], batch_size: int = 1024,
                   seed: int = 0) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Endless shuffled fp32 batches {layer: (x, y)} from ``harvest_cache`` output (reshuffled
    every epoch with a seeded generator, so the stream is reproducible)."""
    layers = list(cache)
    n = cache[layers[0]][0].shape[0]
    if n < batch_size:
        raise InputError(f"The activation cache holds {n} rows, fewer than one batch of {batch_size}.")
    epoch = 0
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            yield {l: (cache[l][0][idx].float(), cache[l][1][idx].float()) for l in layers}
        epoch += 1


def harvest_to_disk(model, layers, n_tokens: int, folder, texts: Sequence[str] | None = None, *, context: int = 128,
                    batch_prompts: int = 8, seed: int = 0, exclude_first: bool = True, log=None,
                    stats: HarvestStats | None = None, flush_every: int = 16) -> "DiskActivations":
    """Harvest ``n_tokens`` (x, y) rows per layer into float16 ``.npy`` files in ``folder``.

    For corpora whose activations do not fit in memory: rows go to memory-mapped files
    ``x{layer}.npy`` / ``y{layer}.npy`` (n_tokens, d_model), 2 bytes per value. Windows come in
    the seeded order of ``token_windows``; ``progress.json`` records how many batches are on disk,
    so an interrupted harvest resumes where it stopped (same arguments). Returns the
    ``DiskActivations`` view of the folder.
    """
    layers = _check_layers(model, layers)
    if n_tokens <= 0:
        raise InputError(f"n_tokens must be positive, got {n_tokens}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if texts is None:
        texts = load_corpus("train")
    d = model.info.d_model
    key = {"layers": layers, "n_tokens": n_tokens, "context": context, "batch_prompts": batch_prompts, "seed": seed,
           "exclude_first": exclude_first, "model_fingerprint": model.fingerprint, "n_texts": len(texts),
           "text_chars": sum(len(t) for t in texts)}
    prog_file = folder / "progress.json"
    prog = json.loads(prog_file.read_text()) if prog_file.exists() else None
    fresh = prog is None or prog.get("key") != key
    mode = "w+" if fresh else "r+"
    arrays = {(s, l): np.lib.format.open_memmap(folder / f"{s}{l}.npy", mode=mode, dtype=np.float16, shape=(n_tokens, d))
              for l in layers for s in ("x", "y")}
    done_batches, n = (0, 0) if fresh else (prog["batches"], prog["rows"])
    if n >= n_tokens:
        return DiskActivations(folder)
    windows = token_windows(model.tokenizer, texts, context=context, batch_prompts=batch_prompts, seed=seed)
    for _ in range(done_batches):
        next(windows)

    def flush():
        for a in arrays.values():
            a.flush()
        prog_file.write_text(json.dumps({"key": key, "batches": done_batches, "rows": n, "complete": n >= n_tokens}))

    for chunk in harvest_windows(model, windows, layers, exclude_first=exclude_first, stats=stats):
        take = min(n_tokens - n, chunk[layers[0]][0].shape[0])
        for l in layers:
            for s, t in (("x", chunk[l][0]), ("y", chunk[l][1])):
                half = t[:take].float().cpu().numpy().astype(np.float16)
                if not np.isfinite(half).all():
                    raise InputError(f"Layer {l} {s} activations overflow float16 (|value| > 65504) in batch "
                                     f"{done_batches}; harvest into memory with harvest_cache instead.")
                arrays[(s, l)][n:n + take] = half
        n += take
        done_batches += 1
        if done_batches % flush_every == 0 or n >= n_tokens:
            flush()
            if log is not None:
                log(f"harvested {n}/{n_tokens} tokens")
        if n >= n_tokens:
            return DiskActivations(folder)
    flush()
    raise InputError(f"The corpus gave only {n} tokens, fewer than the {n_tokens} requested; "
                     "lower n_tokens or pass more text.")


class DiskActivations:
    """The activations written by ``harvest_to_disk``: ``layers``, ``n_rows``, and ``batches``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        prog = json.loads((self.folder / "progress.json").read_text())
        if not prog.get("complete"):
            raise InputError(f"The harvest in {folder} is incomplete ({prog['rows']} rows); rerun harvest_to_disk.")
        self.layers = list(prog["key"]["layers"])
        self.n_rows = int(prog["rows"])
        self.arrays = {(s, l): np.load(self.folder / f"{s}{l}.npy", mmap_mode="r") for l in self.layers for s in "xy"}

    def batches(self, batch_size: int = 1024, seed: int = 0, layers=None,
                n_rows: int | None = None) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
        """Endless fp32 batches {layer: (x (B, d), y (B, d))} of rows drawn without replacement,
        reshuffled every epoch with a seeded generator (reproducible). ``n_rows`` uses only the
        first rows (a smaller corpus)."""
        layers = self.layers if layers is None else list(layers)
        n = self.n_rows if n_rows is None else min(n_rows, self.n_rows)
        if n < batch_size:
            raise InputError(f"{n} activation rows are fewer than one batch of {batch_size}.")
        epoch = 0
        while True:
            perm = np.random.default_rng(seed * 7919 + epoch).permutation(n)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = np.sort(perm[i:i + batch_size])  # sorted reads are kinder to the page cache
                yield {l: (torch.from_numpy(self.arrays[("x", l)][idx].astype(np.float32)),
                           torch.from_numpy(self.arrays[("y", l)][idx].astype(np.float32))) for l in layers}
            epoch += 1
