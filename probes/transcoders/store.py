"""Harvest (mlp_in, mlp_out) rows into a sharded on-disk activation store, on one or many processes.

The store (``workbench.activation_store``) holds, per shard, one (rows, d_model) tensor per hook
name: ``blocks.{l}.ln2.hook_normalized`` (transcoder input) and ``blocks.{l}.hook_mlp_out``
(target) for every harvested layer. Shard ``i`` is the activations of a fixed slice of the seeded
window order (window batches ``[i·B, (i+1)·B)`` with B = ``batches_per_shard``), so the store's
contents do not depend on how many processes harvested it: with W ranks, rank r writes the
shards i with i mod W = r, and a 1-process harvest writes the same bytes.

Resumable: a shard with a completion mark is never recomputed; rerunning the same harvest (with
any number of processes) writes only the missing shards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch

from workbench.activation_store import ActivationStore, StoreIndex, create_store, dtype_name, write_shard
from workbench.distributed import DistContext
from workbench.errors import InputError
from workbench.texts import load_corpus, tokenize_stream

from .harvest import HarvestStats, _check_layers, harvest_windows, hook_names


def store_layout(model, layers) -> dict[str, int]:
    """{hook name: width} of the tensors a store of these transcoder layers holds."""
    d = model.info.d_model
    return {h: d for l in _check_layers(model, layers) for h in hook_names(l)}


def shard_owner(i: int, world_size: int) -> int:
    """The rank that harvests shard ``i`` when ``world_size`` processes share the harvest."""
    return i % world_size


def _windows(model, texts, context: int, seed: int) -> torch.Tensor:
    """(n, context) windows of the joined token stream, in the seeded order ``token_windows`` uses."""
    stream = tokenize_stream(model.tokenizer, texts)
    n = stream.numel() // context
    if n == 0:
        raise InputError(f"The corpus has {stream.numel()} tokens, fewer than one window of {context}.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return stream[: n * context].view(n, context)[order]


def harvest_store(model, layers, folder, n_shards: int, texts: Sequence[str] | None = None, *, context: int = 128,
                  batch_prompts: int = 8, batches_per_shard: int = 4, seed: int = 0, exclude_first: bool = True,
                  dtype: torch.dtype = torch.float16, ctx: DistContext | None = None,
                  stats: HarvestStats | None = None, log=None) -> ActivationStore:
    """Harvest ``n_shards`` shards of (mlp_in, mlp_out) rows at ``layers`` into the store at ``folder``.

    Rows per shard: ``batches_per_shard × batch_prompts × (context − 1)`` (position 0 dropped with
    ``exclude_first``). ``ctx`` (from ``workbench.distributed.init_distributed``): this process
    harvests only its shards; every rank returns after all shards are written (a barrier).
    dtype: float16 (2 bytes per value; overflow is refused), bfloat16 or float32.
    Returns the complete ``ActivationStore``.
    """
    ctx = ctx or DistContext()
    layers = _check_layers(model, layers)
    if not isinstance(n_shards, int) or n_shards <= 0:
        raise InputError(f"n_shards must be a positive integer, got {n_shards!r}.")
    if batches_per_shard <= 0 or batch_prompts <= 0:
        raise InputError(f"batches_per_shard and batch_prompts must be positive, got {batches_per_shard}, {batch_prompts}.")
    if texts is None:
        texts = load_corpus("train")
    texts = [t for t in texts if isinstance(t, str)]
    windows = _windows(model, texts, context, seed)
    per_shard = batches_per_shard * batch_prompts
    if windows.shape[0] < n_shards * per_shard:
        raise InputError(f"The corpus gives {windows.shape[0]} windows of {context} tokens, fewer than the "
                         f"{n_shards * per_shard} that {n_shards} shards of {per_shard} windows need; lower n_shards "
                         f"(at most {windows.shape[0] // per_shard}) or pass more text.")
    rows = per_shard * (context - 1 if exclude_first else context)
    meta = {"kind": "transcoder pairs (mlp_in, mlp_out)", "model": model.info.name, "layers": layers,
            "context": context, "batch_prompts": batch_prompts, "batches_per_shard": batches_per_shard, "seed": seed,
            "exclude_first": exclude_first, "n_texts": len(texts), "text_chars": sum(len(t) for t in texts)}
    index = StoreIndex(model.fingerprint, store_layout(model, layers), dtype_name(dtype), rows, n_shards, meta)
    if ctx.is_main:
        create_store(folder, index)
    ctx.barrier()
    store = create_store(folder, index)  # every rank checks it reads the same index
    mine = [i for i in store.missing() if shard_owner(i, ctx.world_size) == ctx.rank]
    for n_done, i in enumerate(mine, 1):
        batches = (windows[(i * batches_per_shard + j) * batch_prompts:(i * batches_per_shard + j + 1) * batch_prompts]
                   for j in range(batches_per_shard))
        parts = {name: [] for name in index.names}
        for chunk in harvest_windows(model, _on_device(batches, model.device), layers, exclude_first=exclude_first,
                                     stats=stats):
            for l in layers:
                hi, ho = hook_names(l)
                parts[hi].append(chunk[l][0])
                parts[ho].append(chunk[l][1])
        write_shard(folder, index, i, {k: torch.cat(v) for k, v in parts.items()})
        if log is not None:
            log(f"shard {i} written ({n_done}/{len(mine)} of this rank's missing shards)")
    ctx.barrier()
    store = ActivationStore(folder, require_complete=False)
    store.check_complete(owner=lambda i: f"rank {shard_owner(i, ctx.world_size)} of {ctx.world_size}")
    return store


def _on_device(batches: Iterator[torch.Tensor], device) -> Iterator[torch.Tensor]:
    for b in batches:
        yield b.to(device)


def store_pairs(store: ActivationStore, layers, batch_size: int, *, seed: int = 0, shards_in_memory: int = 4,
                ctx: DistContext | None = None, epochs: int | None = None,
                device=None) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Shuffled fp32 batches {layer: (x, y)} from a transcoder store; with ``ctx`` each rank gets its
    slice (batch_size // world_size rows) of the same global batch. See ``ActivationStore.batches``."""
    ctx = ctx or DistContext()
    layers = [layers] if isinstance(layers, int) else list(layers)
    names = [h for l in layers for h in hook_names(l)]
    missing = [n for n in names if n not in store.index.names]
    if missing:
        raise InputError(f"The store at {store.folder} has no rows for {missing}; it holds layers "
                         f"{store.index.meta.get('layers')}.")
    for b in store.batches(batch_size, seed=seed, names=names, shards_in_memory=shards_in_memory, epochs=epochs,
                           rank=ctx.rank, world_size=ctx.world_size):
        out = {}
        for l in layers:
            hi, ho = hook_names(l)
            x, y = b[hi], b[ho]
            out[l] = (x, y) if device is None else (x.to(device), y.to(device))
        yield out


def store_folder(root, layers, n_shards: int, seed: int) -> Path:
    """A conventional folder name for a store under ``root``."""
    return Path(root) / f"layers{'-'.join(map(str, layers))}-shards{n_shards}-seed{seed}"
