"""Capture plans: which hooks to read, what to keep of them, and what that will cost.

A plan is resolved before the forward pass, so the memory guard can refuse a capture that would
not fit, with a message saying how to narrow it, before any work is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .errors import CaptureBudgetError, InputError
from .hook_names import ATTENTION_MAPS, SPECS, HookSpec, spec_for_full_name, unknown_name_error

DEFAULT_BUDGET_BYTES = 4 * 2**30  # 4 GiB; change with workbench.settings.capture_budget_bytes


@dataclass
class Settings:
    """Process-wide defaults; per-call arguments override them.

    capture_budget_bytes: the memory guard's limit for one capture (4 GiB).
    threads: CPU threads torch may use for the model's work (``torch.set_num_threads``), applied when a
        model is loaded and before every forward pass; None (the default) leaves torch's own setting.
        On a machine shared with other processes, torch's default (one thread per core) oversubscribes
        the cores and a forward pass can become many times slower; set it to the cores you really have.
    fast_path: run forward passes that need no hook through the hook-free plain view of the model
        (``workbench.plain``); False always takes the hooked TransformerBridge path.
    """

    capture_budget_bytes: int = DEFAULT_BUDGET_BYTES
    threads: int | None = None
    fast_path: bool = True


settings = Settings()


def apply_threads() -> None:
    """Apply ``settings.threads`` to torch (no-op when None or already in force)."""
    n = settings.threads
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"workbench.settings.threads must be a positive integer or None, got {n!r}.")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class CaptureItem:
    name: str  # key in Run.captures: the full hook name, or "<z hook>:head_out" for derived captures
    hook: str  # the TransformerLens hook that is read
    spec: HookSpec | None
    layer: int | None
    summary: bool = False  # attention summary instead of the full pattern


@dataclass
class CaptureEstimate:
    """Bytes a capture will hold, per captured name, before anything runs."""

    per_item: dict[str, int]
    logits_bytes: int
    transient_bytes: int  # largest single tensor alive during the forward (e.g. one layer's pattern)
    budget: int

    @property
    def total(self) -> int:
        return sum(self.per_item.values()) + self.logits_bytes

    def __repr__(self) -> str:
        return (f"CaptureEstimate(total={self.total / 2**20:.1f} MiB, captures={len(self.per_item)}, "
                f"logits={self.logits_bytes / 2**20:.1f} MiB, budget={self.budget / 2**20:.0f} MiB)")


@dataclass
class AttentionSummary:
    """Per-layer attention statistics kept instead of the full (B, H, T, T) pattern.

    Memory is O(B·H·T) per layer (plus ``last_rows``); the full pattern only lives while the
    layer's hook runs. "Counted" queries of key k are the real queries q >= max(k, skip_queries);
    with right padding, queries and keys past a prompt's length never count.

    received: (B, H, T) mean attention each key receives over its counted queries; NaN where
        no query counts (padded keys, keys at or after the end).
    entropy: (B, H, T) Shannon entropy (nats) of each query's attention row.
    last_rows: (B, H, n_last, T) the attention rows of the last ``n_last`` queries.
    row_entropy: (B, H, T) ``entropy`` divided by log(#keys query q sees) = log(q + 1), so 1 for
        a uniform row and 0 for a one-hot row; NaN for query 0 (one visible key) and padding.
    column_entropy: (B, H, T) entropy of key k's received attention over its counted queries
        (the column renormalised to sum to 1), divided by log(#counted queries): 1 when every
        counted query gives k the same weight. NaN where fewer than 2 queries count or the
        column is all zero.
    counts: (B, T) number of counted queries of each key (the same for every head).
    """

    layer: int
    received: torch.Tensor
    entropy: torch.Tensor
    last_rows: torch.Tensor
    skip_queries: int
    row_entropy: torch.Tensor | None = None
    column_entropy: torch.Tensor | None = None
    counts: torch.Tensor | None = None

    def to(self, device) -> "AttentionSummary":
        """The same summary with every tensor on ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return AttentionSummary(self.layer, mv(self.received), mv(self.entropy), mv(self.last_rows), self.skip_queries,
                                mv(self.row_entropy), mv(self.column_entropy), mv(self.counts))

    @property
    def nbytes(self) -> int:
        """Bytes held by the summary's tensors."""
        ts = [self.received, self.entropy, self.last_rows, self.row_entropy, self.column_entropy, self.counts]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


def summary_bytes(batch: int, heads: int, seq: int, n_last: int) -> int:
    """Bytes of one layer's AttentionSummary: four (B, H, T) float32 tensors, the last rows and
    the (B, T) int64 counts."""
    return 4 * (4 * batch * heads * seq + batch * heads * min(n_last, seq) * seq) + 8 * batch * seq


def summarize_pattern(pattern: torch.Tensor, layer: int, skip_queries: int, n_last: int,
                      lengths: Sequence[int] | None = None) -> AttentionSummary:
    """Reduce a causal pattern (B, H, Tq, Tk) with Tq == Tk to an AttentionSummary.

    Holds at most one extra (B, H, T, T) temporary (p·log p) besides the pattern itself.
    Column statistics use, for key k, the queries q in [max(k, skip_queries), length): the
    causal mask zeroes q < k, so a per-prompt row slice gives the same sums as a full mask.
    """
    b, h, tq, tk = pattern.shape
    p = pattern.detach().float()
    lengths = [tq] * b if lengths is None else list(lengths)
    plogp = torch.special.xlogy(p, p)  # (B, H, Tq, Tk) p·log p, exactly 0 where p == 0
    entropy = -plogp.sum(-1)  # (B, H, Tq)
    col_sum = torch.zeros(b, h, tk, dtype=p.dtype, device=p.device)  # Σ_q A[q, k]
    col_plogp = torch.zeros_like(col_sum)  # Σ_q A log A
    k_idx = torch.arange(tk, device=p.device)
    counts = torch.zeros(b, tk, dtype=torch.long, device=p.device)
    for i, n in enumerate(lengths):
        lo = min(skip_queries, n)
        if n > lo:
            col_sum[i, :, :n] = p[i, :, lo:n, :n].sum(1)
            col_plogp[i, :, :n] = plogp[i, :, lo:n, :n].sum(1)
        counts[i, :n] = (n - k_idx[:n].clamp_min(skip_queries)).clamp_min(0)
    del plogp
    c = counts[:, None, :].to(p.dtype)  # (B, 1, Tk)
    nan = torch.full_like(col_sum, float("nan"))
    received = torch.where(c > 0, col_sum / c.clamp_min(1), nan)
    # Column renormalised to q_k = A[q, k] / S_k:  H = -Σ q log q = log S_k - (Σ A log A) / S_k
    s = col_sum.clamp_min(1e-30)
    col_h = s.log() - col_plogp / s
    column_entropy = torch.where((c >= 2) & (col_sum > 0), col_h / c.clamp_min(2).log(), nan)
    q_idx = torch.arange(tq, device=p.device)
    visible = torch.log((q_idx + 1).to(p.dtype))  # (Tq,) log(#keys query q sees)
    real_q = torch.stack([(q_idx < n) & (q_idx >= 1) for n in lengths])[:, None, :]  # (B, 1, Tq)
    row_entropy = torch.where(real_q, entropy / visible.clamp_min(1e-30), torch.full_like(entropy, float("nan")))
    return AttentionSummary(layer, received, entropy, p[:, :, -n_last:, :].clone(), skip_queries,
                            row_entropy, column_entropy, counts)


def _as_list(x) -> list:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


def resolve_layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for l in layers:
        if not isinstance(l, int) or isinstance(l, bool):
            raise InputError(f"Layer indices must be integers, got {l!r}.")
        if not -n_layers <= l < n_layers:
            raise InputError(f"Layer {l} is out of range: this model has {n_layers} layers (0..{n_layers - 1}).")
        out.append(l % n_layers)
    return sorted(set(out))


def resolve_positions(positions, seq_len: int) -> torch.Tensor | None:
    """Return sorted position indices (P,) or None for all positions."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        idx = list(range(seq_len))[positions]
    else:
        idx = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in idx:
        if not isinstance(p, int) or isinstance(p, bool):
            raise InputError(f"Positions must be integers or a slice, got {p!r}.")
        if not -seq_len <= p < seq_len:
            raise InputError(f"Position {p} is out of range for a sequence of {seq_len} tokens.")
        out.append(p % seq_len)
    if not out:
        raise InputError("The position selection is empty; pass None for all positions.")
    return torch.tensor(sorted(set(out)), dtype=torch.long)


def plan_capture(names, layers, available: set[str], n_layers: int, attention: str,
                 dormant: set[str] = frozenset()) -> list[CaptureItem]:
    """Expand requested names over layers into CaptureItems, checking every name exists and fires."""
    if attention not in ("full", "summary"):
        raise InputError(f"attention must be 'full' or 'summary', got {attention!r}.")
    layer_list = resolve_layers(layers, n_layers)
    items: list[CaptureItem] = []
    for name in _as_list(names):
        if not isinstance(name, str):
            raise InputError(f"Capture names must be strings, got {name!r}.")
        if name in SPECS:
            spec = SPECS[name]
            targets = [(spec.full_name(l), l) for l in layer_list] if spec.per_layer else [(spec.template, None)]
            for hook, l in targets:
                if hook not in available:
                    raise _unavailable(name, hook)
                summary = attention == "summary" and name == "pattern"
                key = f"{hook}:head_out" if spec.derived_from else hook
                items.append(CaptureItem(key, hook, spec, l, summary))
        elif name in available:
            spec, l = spec_for_full_name(name)
            summary = attention == "summary" and spec is not None and spec.short == "pattern"
            items.append(CaptureItem(name, name, spec, l, summary))
        else:
            raise unknown_name_error(name, available, dormant)
    seen, unique = set(), []
    for it in items:
        if it.name not in seen:
            seen.add(it.name)
            unique.append(it)
    return unique


def _unavailable(short: str, hook: str):
    from .errors import HookError

    return HookError(f"{short!r} is not available on this architecture: the hook {hook!r} does not exist "
                     "(e.g. q_rot/k_rot need rotary embeddings, pos_embed needs learned positions).")


def capture_shape(it: CaptureItem, dims: dict[str, int], batch: int, seq: int, n_pos: int | None) -> tuple[int, ...]:
    """Shape a (non-summary) capture will have, from its layout letters; full names without a
    canonical spec are assumed to be (B, T, d_model)."""
    sizes = {**dims, "b": batch, "t": n_pos or seq, "q": n_pos or seq, "k": seq, "1": 1}
    return tuple(sizes[ch] for ch in (it.spec.layout if it.spec else "btd"))


def estimate(items: Iterable[CaptureItem], dims: dict[str, int], batch: int, seq: int, n_pos: int | None,
             logits_positions: int, vocab: int, budget: int, n_last: int, bytes_per: int = 4) -> CaptureEstimate:
    """Bytes held by a capture. ``dims`` maps layout letters d/h/g/e/f to sizes."""
    per_item: dict[str, int] = {}
    transient = 0
    for it in items:
        if it.summary:
            per_item[it.name] = summary_bytes(batch, dims["h"], seq, n_last)
            transient = max(transient, batch * dims["h"] * seq * seq * bytes_per)
            continue
        n = 1
        for size in capture_shape(it, dims, batch, seq, n_pos):
            n *= size
        per_item[it.name] = n * bytes_per
        if it.spec is not None and it.spec.short in ATTENTION_MAPS:
            transient = max(transient, batch * dims["h"] * seq * seq * bytes_per)
    return CaptureEstimate(per_item, batch * logits_positions * vocab * bytes_per, transient, budget)


def device_free_bytes(device) -> int | None:
    """Free memory (bytes) of a CUDA device as the driver reports it (``torch.cuda.mem_get_info``,
    which counts other processes' use too); None for the CPU and other devices."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free)


def resolve_capture_device(capture_device, model_device: torch.device) -> torch.device:
    """Where captures are kept: None or "model" = the model's device, else "cpu" / "cuda[:i]"."""
    if capture_device is None or capture_device == "model":
        return torch.device(model_device)
    try:
        dev = torch.device(capture_device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"capture_device must be None, 'model', 'cpu' or 'cuda', got {capture_device!r} ({e}).") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"capture_device must be None, 'model', 'cpu' or 'cuda', got {capture_device!r}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"capture_device={capture_device!r} needs CUDA, which is not available on this machine; "
                         "use capture_device='cpu' (or None for the model's device).")
    return dev


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_device_memory(est: CaptureEstimate, model_device, capture_device) -> None:
    """Refuse a run whose device-resident bytes exceed the free memory of the model's CUDA device.

    On the device live the logits and the largest transient tensor (e.g. one layer's attention
    pattern), plus the captures unless they are offloaded (``capture_device`` not the model's
    device). No-op for a model on the CPU (the host budget of ``check_budget`` applies there).
    """
    free = device_free_bytes(model_device)
    if free is None:
        return
    on_device = _same_device(torch.device(capture_device), torch.device(model_device))
    captures = sum(est.per_item.values()) if on_device else 0
    need = captures + est.logits_bytes + est.transient_bytes
    if need <= free:
        return
    hint = ("pass capture_device='cpu' to keep the captures in host memory, " if on_device and captures else "")
    raise CaptureBudgetError(
        f"This run would need about {need / 2**20:.0f} MiB on {model_device} (captures "
        f"{captures / 2**20:.0f} MiB, logits {est.logits_bytes / 2**20:.0f} MiB, largest transient "
        f"{est.transient_bytes / 2**20:.0f} MiB), but only {free / 2**20:.0f} MiB of device memory is free. "
        f"Narrow it: {hint}logits='last' or None, fewer layers or positions, attention='summary', or a smaller batch.")


def check_budget(est: CaptureEstimate) -> None:
    if est.total <= est.budget:
        return
    top = sorted(est.per_item.items(), key=lambda kv: -kv[1])[:3]
    biggest = ", ".join(f"{k} ({v / 2**20:.0f} MiB)" for k, v in top)
    raise CaptureBudgetError(
        f"This capture would hold about {est.total / 2**20:.0f} MiB, over the budget of "
        f"{est.budget / 2**20:.0f} MiB. Largest items: {biggest}. Narrow it: capture fewer names or "
        "layers (layers=[...]), fewer positions (positions=[-1]), attention='summary' instead of full "
        "patterns, logits='last', a smaller batch; or raise max_bytes= (or "
        "workbench.settings.capture_budget_bytes) if the memory is really there."
    )
