"""What eviction does inside the model: retention, sink survival, attention and output divergence.

``compare_cache(model, prompt, policy)`` prefills the prompt twice, once into a full cache and
once with ``policy`` applied after prefill (exactly as ``workbench.prefill`` does), then feeds the
same probe token(s) to both caches: the greedy continuation of the *full* cache, one token at a
time (``n_probe`` tokens). During each probe forward it captures every layer's attention row of
the probe query (``blocks.{l}.attn.hook_pattern``, (1, H, 1, N_l + 1): attention over the retained
keys plus the probe itself) and the next-token logits. The policy is not applied again during the
probes, so every probe sees the cache as the policy left it after prefill.

Shapes (L layers, H query heads, G KV heads, T prompt tokens, P = n_probe, S = T + P):

- ``retention`` (L, G, T) bool: original prompt position t survives in layer l, KV head g.
- ``sink_kept`` (L, G) bool: position 0 (the attention sink) survives.
- ``full_pattern`` / ``compressed_pattern`` (P, L, H, S): each probe's attention over original
  positions; the compressed row is mapped back through ``KVCache.positions`` (query head h reads
  KV head ``h // (H // G)``), evicted positions get 0, so every row sums to 1 over kept positions.
  Positions after the probe (future probes) are 0 in both.
- ``tv`` (L, H): total variation ``0.5 * sum |p - q|``; ``kl`` (L, H): ``sum p (log(p + eps) -
  log(q + eps))`` with p the full and q the compressed row (0 when they are equal); both are means
  over the P probes.
- ``evicted_mass`` (L, H): attention mass the full cache put on the positions this head's KV group
  lost (mean over probes).
- ``sink_mass_full`` / ``sink_mass_compressed`` (L, H): attention on position 0 (mean over probes).
- ``full_logits`` / ``compressed_logits`` (P, V): next-token logits after each probe;
  ``output_kl`` (P,): KL(full || compressed) of the next-token distributions; ``top1_same`` (P,).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.errors import InputError
from workbench.generation import prefill
from workbench.hook_names import hook_name
from workbench.kv_cache import CachePolicy, KVCache, check_policy
from workbench.result import Result

from .registry import get_policy

EPS = 1e-10
KINDS = ("retention", "divergence", "output")


@dataclass
class FullReference:
    """The full cache's side of a comparison (shared by many policies on one prompt)."""

    prompt: str
    ids: torch.Tensor  # (1, T)
    probe_tokens: list[int]
    patterns: torch.Tensor  # (P, L, H, S)
    logits: torch.Tensor  # (P, V)


@dataclass(repr=False)
class CacheComparison(Result):
    """One policy's cache versus the full cache on one prompt (see the module docstring for shapes).

    ``metrics()`` gives the headline numbers as a dict, ``summary()`` as one line."""

    policy: str
    prompt: str
    str_tokens: list[str]
    probe_tokens: list[int]
    probe_str: list[str]
    retention: torch.Tensor
    full_pattern: torch.Tensor
    compressed_pattern: torch.Tensor
    tv: torch.Tensor
    kl: torch.Tensor
    evicted_mass: torch.Tensor
    sink_mass_full: torch.Tensor
    sink_mass_compressed: torch.Tensor
    full_logits: torch.Tensor
    compressed_logits: torch.Tensor
    output_kl: torch.Tensor
    top1_same: torch.Tensor
    top5_full: list[list[str]] = field(default_factory=list)
    top5_compressed: list[list[str]] = field(default_factory=list)
    kept_tokens: torch.Tensor | None = None  # (L, G) entries the compressed cache holds after prefill

    @property
    def n_layers(self) -> int:
        return int(self.retention.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.tv.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.retention.shape[-1])

    @property
    def sink_kept(self) -> torch.Tensor:
        """(L, G) bool: the attention sink (position 0) survives in layer l, KV head g."""
        return self.retention[:, :, 0]

    @property
    def sink_kept_heads(self) -> torch.Tensor:
        """(L, H) bool: the sink survives for query head h (through its KV head)."""
        g = self.retention.shape[1]
        return self.sink_kept.repeat_interleave(self.n_heads // g, dim=1)

    @property
    def kept_fraction(self) -> float:
        return float(self.retention.float().mean())

    def metrics(self) -> dict:
        """Headline numbers: kept fraction, sink survival, mean/max TV, mean KL, evicted mass, output KL, top-1."""
        return {"policy": self.policy, "tokens": self.n_tokens, "kept fraction": self.kept_fraction,
                "sink kept (layers)": int(self.sink_kept.all(1).sum()), "layers": self.n_layers,
                "mean TV": float(self.tv.mean()), "max TV": float(self.tv.max()), "mean KL": float(self.kl.mean()),
                "evicted mass": float(self.evicted_mass.mean()), "output KL": float(self.output_kl[0]),
                "top-1 same": bool(self.top1_same[0])}

    def to_frame(self) -> pd.DataFrame:
        """One row per layer and query head."""
        g = self.retention.shape[1]
        group = self.n_heads // g
        rows = []
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                rows.append({"policy": self.policy, "layer": l, "head": h, "kv_head": h // group,
                             "kept": int(self.retention[l, h // group].sum()),
                             "sink_kept": bool(self.sink_kept[l, h // group]),
                             "tv": float(self.tv[l, h]), "kl": float(self.kl[l, h]),
                             "evicted_mass": float(self.evicted_mass[l, h]),
                             "sink_mass_full": float(self.sink_mass_full[l, h]),
                             "sink_mass_compressed": float(self.sink_mass_compressed[l, h])})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ figures
    def retention_z(self) -> np.ndarray:
        """(L, T) fraction of KV heads of each layer that kept each prompt position."""
        return self.retention.float().mean(1).numpy()

    def output_bars(self, probe: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The union of both top-5 lists: labels, full and compressed probabilities."""
        pf = torch.softmax(self.full_logits[probe].float(), -1)
        pc = torch.softmax(self.compressed_logits[probe].float(), -1)
        ids = list(dict.fromkeys(torch.topk(pf, 5).indices.tolist() + torch.topk(pc, 5).indices.tolist()))
        labels = [f"{i}:{self._decode(i)!r}" for i in ids]
        return labels, pf[ids].numpy(), pc[ids].numpy()

    _decode = staticmethod(lambda i: str(i))  # replaced per instance by compare_cache

    def figure(self, kind: str = "retention", metric: str = "tv", probe: int = 0) -> go.Figure:
        """``kind``: "retention" (layer x position), "divergence" (layer x head, ``metric`` "tv",
        "kl" or "evicted_mass") or "output" (top-5 next-token probabilities, both caches)."""
        if kind not in KINDS:
            raise InputError(f"figure(kind=...) must be one of {KINDS}, got {kind!r}.")
        if kind == "retention":
            return retention_figure(self)
        if kind == "divergence":
            return divergence_figure(self, metric)
        if not isinstance(probe, int) or not 0 <= probe < len(self.probe_tokens):
            raise InputError(f"probe must be an integer in [0, {len(self.probe_tokens)}), got {probe!r}.")
        return output_figure(self, probe)

    def summary(self) -> str:
        s = self.metrics()
        return (f"CacheComparison({self.policy}: {s['tokens']} tokens, kept {s['kept fraction']:.0%}, sink kept in "
                f"{s['sink kept (layers)']}/{s['layers']} layers, mean TV {s['mean TV']:.3f}, "
                f"output KL {s['output KL']:.4f}, top-1 {'same' if s['top-1 same'] else 'changed'})")

    def _repr_html_(self) -> str:
        s = self.metrics()
        cells = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
                        else f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in s.items())
        tops = (f"<tr><td>top-5 full</td><td>{html.escape(str(self.top5_full[0]))}</td></tr>"
                f"<tr><td>top-5 compressed</td><td>{html.escape(str(self.top5_compressed[0]))}</td></tr>")
        return f"<table><caption>CacheComparison</caption>{cells}{tops}</table>"


METRICS = {"tv": "total variation", "kl": "KL(full || compressed)", "evicted_mass": "full-cache mass on evicted"}


def retention_figure(c: CacheComparison) -> go.Figure:
    hover = np.array([[f"{t}: {tok!r}" for t, tok in enumerate(c.str_tokens)]] * c.n_layers)
    fig = go.Figure(go.Heatmap(z=c.retention_z(), text=hover, zmin=0, zmax=1, colorscale="Blues",
                               hovertemplate="layer %{y}<br>%{text}<br>kept by %{z:.0%} of KV heads<extra></extra>",
                               colorbar={"title": "kept"}))
    fig.update_layout(title=f"{c.policy}: retained positions", xaxis_title="prompt position", yaxis_title="layer",
                      template="plotly_white", height=400)
    return fig


def divergence_figure(c: CacheComparison, metric: str = "tv") -> go.Figure:
    if metric not in METRICS:
        raise InputError(f"metric must be one of {tuple(METRICS)}, got {metric!r}.")
    z = getattr(c, metric).numpy()
    fig = go.Figure(go.Heatmap(z=z, colorscale="Reds", zmin=0, zmax=1 if metric != "kl" else None,
                               hovertemplate="layer %{y}, head %{x}<br>%{z:.4f}<extra></extra>",
                               colorbar={"title": metric}))
    fig.update_layout(title=f"{c.policy}: attention {METRICS[metric]} vs full cache", xaxis_title="query head",
                      yaxis_title="layer", template="plotly_white", height=400)
    return fig


def output_figure(c: CacheComparison, probe: int = 0) -> go.Figure:
    labels, pf, pc = c.output_bars(probe)
    fig = go.Figure()
    fig.add_bar(x=labels, y=pf, name="full cache", marker_color="#888")
    fig.add_bar(x=labels, y=pc, name=c.policy, marker_color="#2a7" if bool(c.top1_same[probe]) else "#c33")
    fig.update_layout(title=f"next token after {c.probe_str[probe]!r}: KL {float(c.output_kl[probe]):.4f}",
                      yaxis_title="probability", barmode="group", template="plotly_white", height=400)
    return fig


# ---------------------------------------------------------------------- computation
def _probe(model, cache: KVCache, token: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Feed one token; returns per layer its attention row (H, N_l + 1), positions (G, N_l + 1), logits (V,)."""
    rows: dict[int, torch.Tensor] = {}
    hooks = [(hook_name("pattern", l), (lambda l: lambda x, _n: rows.__setitem__(l, x[0, :, -1].detach().float().cpu()))(l))
             for l in range(model.info.n_layers)]
    with model.session(hooks=hooks) as session:
        dev = cache.keys(0).device
        logits = session.forward_cached(cache, torch.tensor([[token]], device=dev))[0, -1]
    L = model.info.n_layers
    if sorted(rows) != list(range(L)):
        raise InputError("compare_cache needs hookable attention patterns in every layer (eager attention).")
    pos = [cache.positions[l][0].cpu() for l in range(L)]
    for l in range(L):
        if rows[l].shape[-1] != pos[l].shape[-1]:
            raise InputError(f"Layer {l}: the attention row covers {rows[l].shape[-1]} keys but the cache holds "
                             f"{pos[l].shape[-1]}; cannot map it back onto positions.")
    return [rows[l] for l in range(L)], pos, logits.detach().float().cpu()


def _map_back(row: torch.Tensor, pos: torch.Tensor, size: int) -> torch.Tensor:
    """row (H, N) over entries at positions pos (G, N) -> (H, size) over original positions."""
    h, g = row.shape[0], pos.shape[0]
    idx = pos.repeat_interleave(h // g, dim=0)
    pad = idx < 0  # padding slots of a ragged (per-head) layer: zero attention, no position
    return torch.zeros(h, size).scatter_add_(1, idx.clamp(min=0), row.masked_fill(pad, 0.0))


def _prefill(model, ids: torch.Tensor, policy: CachePolicy | None) -> tuple[KVCache, torch.Tensor]:
    cache, logits = prefill(model, ids, policy, return_logits=True)
    return cache, logits.detach().float().cpu()


def _probes(model, cache: KVCache, tokens: list[int], size: int):
    pats, logits = [], []
    for t in tokens:
        rows, pos, lg = _probe(model, cache, t)
        pats.append(torch.stack([_map_back(r, p, size) for r, p in zip(rows, pos)]))
        logits.append(lg)
    return torch.stack(pats), torch.stack(logits)


def _check_prompt(model, prompt, n_probe: int) -> torch.Tensor:
    if not isinstance(prompt, str) or not prompt:
        raise InputError("compare_cache takes one non-empty prompt string.")
    if not isinstance(n_probe, int) or isinstance(n_probe, bool) or n_probe < 1:
        raise InputError(f"n_probe must be a positive integer, got {n_probe!r}.")
    ids, _ = model.tokenize(prompt)
    if ids.shape[1] + n_probe > model.info.n_ctx:
        raise InputError(f"Prompt ({ids.shape[1]} tokens) + n_probe ({n_probe}) exceeds the context of "
                         f"{model.info.n_ctx}.")
    return ids


def full_reference(model, prompt: str, n_probe: int = 1) -> FullReference:
    """The full cache's probe tokens (greedy), attention rows and logits; reusable across policies."""
    ids = _check_prompt(model, prompt, n_probe)
    t = ids.shape[1]
    cache, logits = _prefill(model, ids, None)
    tokens, pats, lgs = [int(logits.argmax())], [], []
    for i in range(n_probe):
        p, lg = _probes(model, cache, [tokens[i]], t + n_probe)
        pats.append(p[0])
        lgs.append(lg[0])
        if i + 1 < n_probe:
            tokens.append(int(lg[0].argmax()))
    return FullReference(prompt, ids, tokens, torch.stack(pats), torch.stack(lgs))


def _resolve(policy, ratio):
    if isinstance(policy, str):
        return get_policy(policy, ratio=0.5 if ratio is None else ratio)
    if ratio is not None:
        raise InputError("ratio= is only used with a policy name; a policy object carries its own budget.")
    if not isinstance(policy, CachePolicy):
        raise InputError(f"policy must be a registered name or have an apply(cache, ctx) method, "
                         f"got {type(policy).__name__}.")
    return policy


def compare_cache(model, prompt: str, policy, n_probe: int = 1, *, ratio: float | None = None, eps: float = EPS,
                  reference: FullReference | None = None) -> CacheComparison:
    """Compare ``policy`` (an object, or a registered name built with ``ratio``, default 0.5) with
    the full cache on ``prompt``; see the module docstring for every field.

    ``reference`` (from ``full_reference(model, prompt, n_probe)``) skips recomputing the full side.
    """
    pol = _resolve(policy, ratio)
    check_policy(pol)
    if reference is None:
        reference = full_reference(model, prompt, n_probe)
    elif reference.prompt != prompt:
        raise InputError("The reference was computed for a different prompt.")
    elif reference.patterns.shape[0] != n_probe:
        raise InputError(f"The reference was computed with {reference.patterns.shape[0]} probe(s), not {n_probe}.")
    ids = reference.ids
    t = ids.shape[1]
    size = t + n_probe
    cache, _ = _prefill(model, ids, pol)
    kept = cache.stats().tokens
    L, G = cache.n_layers, cache.n_kv_heads
    retention = torch.zeros(L, G, t, dtype=torch.bool)
    for l in range(L):
        p = cache.positions[l][0].cpu()
        for g in range(G):
            retention[l, g, p[g][(p[g] >= 0) & (p[g] < t)]] = True
    comp_pat, comp_logits = _probes(model, cache, reference.probe_tokens, size)
    full_pat = reference.patterns
    H = full_pat.shape[2]
    # Evicted positions per query head (prompt positions only; probes are never evicted here).
    evicted = ~retention.repeat_interleave(H // G, dim=1)  # (L, H, T)
    tv = 0.5 * (full_pat - comp_pat).abs().sum(-1).mean(0)
    kl = (full_pat * ((full_pat + eps).log() - (comp_pat + eps).log())).sum(-1).mean(0)
    evicted_mass = (full_pat[..., :t] * evicted[None].float()).sum(-1).mean(0)
    lf = torch.log_softmax(reference.logits, -1)
    lc = torch.log_softmax(comp_logits, -1)
    out_kl = (lf.exp() * (lf - lc)).sum(-1).clamp(min=0)
    tok = model.tokenizer
    top5 = lambda lg: [[tok.decode([i]) for i in torch.topk(row, 5).indices.tolist()] for row in lg]  # noqa: E731
    name = pol.name
    c = CacheComparison(
        policy=str(name), prompt=prompt, str_tokens=[tok.decode([i]) for i in ids[0].tolist()],
        probe_tokens=reference.probe_tokens, probe_str=[tok.decode([i]) for i in reference.probe_tokens],
        retention=retention, full_pattern=full_pat, compressed_pattern=comp_pat, tv=tv, kl=kl,
        evicted_mass=evicted_mass, sink_mass_full=full_pat[..., 0].mean(0),
        sink_mass_compressed=comp_pat[..., 0].mean(0),
        full_logits=reference.logits, compressed_logits=comp_logits, output_kl=out_kl,
        top1_same=reference.logits.argmax(-1) == comp_logits.argmax(-1),
        top5_full=top5(reference.logits), top5_compressed=top5(comp_logits), kept_tokens=kept)
    c._decode = lambda i: tok.decode([i])
    return c


__all__ = ["compare_cache", "CacheComparison", "full_reference", "FullReference", "retention_figure", "divergence_figure",
           "output_figure"]
