"""Attention-sink detection per layer and head, from attention summaries (never full patterns).

``sink_report(model, prompts)`` runs the prompts once with ``attention="summary"``, so a
2k-token prompt needs O(B·H·T) memory per layer instead of (B, H, T, T) for every layer, and
returns a ``SinkReport``. Notation (docs/sinks.md), per prompt, layer and head, with A the
(T, T) pattern and s = ``skip_queries``:

- mass on key j: m_j = mean of A[q, j] over the real queries q >= max(j, s) ("counted" queries);
  the sink mass is m_0 (position 0, the first real token: SmolLM2 adds no BOS).
- normalized row entropy: H(A[q, :]) / log(q + 1), averaged over the queries q >= max(s, 1).
- normalized column entropy: the entropy of key j's column over its counted queries
  (renormalised to sum to 1) divided by log(#counted queries), maxed over keys with at least
  two counted queries (Guo et al. 2024, ``entropy.py``). On short prompts this maximum is close
  to 1 for most heads (a late key seen by two or three queries that all give it a tiny, even
  weight already scores near 1), so the row criterion does most of the separating; the report
  also keeps the column entropy of position 0 alone (``col_entropy0``) and the arg-max key.

A head is a sink head *by mass* when m_0 >= ``threshold`` (mean over prompts) and *by entropy*
when its row entropy <= ``row_entropy_max`` and its column entropy >= ``col_entropy_min``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.capture import resolve_layers
from workbench.errors import InputError

# Entropy-detector defaults: the reference code (Guo et al.) takes both thresholds as arguments
# with no default. These are ours, read off SmolLM2 (3 short texts, skip_queries=4): row entropy
# <= 0.4 keeps about two thirds of the heads with m_0 >= 0.5 and 4 of the 56 heads with
# m_0 < 0.3 (focused non-sink heads); the column maximum is 0.84-1.0 for every head, so on short
# prompts the column test barely separates (see the module docstring).
ROW_ENTROPY_MAX = 0.4
COL_ENTROPY_MIN = 0.8


def check_prompt_lengths(model, prompts, min_len: int, why: str,
                         hint: str = "Use longer prompts.") -> tuple[list[str], list[int]]:
    """Tokenize ``prompts`` and raise InputError naming each prompt with at most ``min_len`` tokens.

    Returns (prompt texts, token lengths).
    """
    if isinstance(prompts, (list, tuple)) and not prompts:
        raise InputError("The prompt list is empty: pass at least one prompt.")
    _, lengths = model.tokenize(prompts)
    texts = prompt_texts(model, prompts)
    bad = [(i, t, n) for i, (t, n) in enumerate(zip(texts, lengths)) if n <= min_len]
    if bad:
        desc = "; ".join(f"prompt {i} ({t[:40]!r}) has {n} token{'s' * (n != 1)}" for i, t, n in bad[:5])
        raise InputError(f"{desc}: {why} needs more than {min_len} token{'s' * (min_len != 1)} per prompt. {hint}")
    return texts, lengths


def prompt_texts(model, prompts) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        ids = prompts[None] if prompts.ndim == 1 else prompts
        return [model.to_string(r.tolist()) for r in ids]
    return list(prompts)


def key_label(tok: str, pos: int) -> str:
    """Label a key for aggregation by token string: position 0 keeps its own label ('…@0'),
    so the first-token sink never mixes with later occurrences of the same string."""
    from workbench.figures import token_label

    return f"{token_label(tok)}@0" if pos == 0 else token_label(tok)


def _nanmean(x: torch.Tensor, dim) -> torch.Tensor:
    return torch.nanmean(x, dim=dim)


@dataclass
class SinkReport(Result):
    """Sink statistics of L layers × H heads over B prompts (T = longest prompt).

    received: (B, L, H, T) mass m_j on each key (NaN for padding / keys no query counts for).
    counts: (B, T) number of counted queries of each key.
    row_entropy: (B, L, H) normalized row entropy averaged over queries >= max(skip, 1).
    col_entropy: (B, L, H) normalized column entropy, max over keys with >= 2 counted queries.
    col_entropy_key: (B, L, H) the key position reaching that maximum (-1 if none).
    col_entropy0: (B, L, H) normalized column entropy of position 0 alone.
    str_tokens: per prompt, the token strings of its real tokens.
    """

    model_name: str
    prompts: list[str]
    str_tokens: list[list[str]]
    lengths: list[int]
    layers: list[int]
    received: torch.Tensor
    counts: torch.Tensor
    row_entropy: torch.Tensor
    col_entropy: torch.Tensor
    col_entropy_key: torch.Tensor
    col_entropy0: torch.Tensor
    skip_queries: int = 4
    threshold: float = 0.3
    top_k: int = 5
    row_entropy_max: float = ROW_ENTROPY_MAX
    col_entropy_min: float = COL_ENTROPY_MIN
    min_queries: int = 4

    # ------------------------------------------------------------------ per head
    @property
    def n_heads(self) -> int:
        return self.received.shape[2]

    @property
    def mass0_per_prompt(self) -> torch.Tensor:
        """(B, L, H) mass on position 0 for each prompt."""
        return self.received[..., 0]

    @property
    def mass0(self) -> torch.Tensor:
        """(L, H) mass on position 0, mean over prompts."""
        return self.mass0_per_prompt.mean(0)

    @property
    def layer_mass0(self) -> torch.Tensor:
        """(L,) mass on position 0 averaged over heads and prompts."""
        return self.mass0.mean(-1)

    def _rankable(self) -> torch.Tensor:
        """(B, L, H, T) received with keys seen by fewer than min(min_queries, max count) queries masked."""
        need = torch.minimum(torch.full_like(self.counts, self.min_queries), self.counts.max(1, keepdim=True).values)
        ok = (self.counts >= need.clamp_min(1))[:, None, None, :]
        return torch.where(ok & ~self.received.isnan(), self.received, torch.full_like(self.received, -1.0))

    @property
    def max_key(self) -> torch.Tensor:
        """(B, L, H) key position with the largest mass (keys with >= min_queries counted queries)."""
        return self._rankable().argmax(-1)

    @property
    def max_mass(self) -> torch.Tensor:
        """(B, L, H) the largest mass over keys (same key set as ``max_key``)."""
        return self._rankable().max(-1).values

    def top_keys(self, prompt: int = 0, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((L, H, k) positions, (L, H, k) masses) of the k keys with most mass in one prompt."""
        self._check_prompt(prompt)
        k = min(k or self.top_k, self.lengths[prompt])
        vals, idx = self._rankable()[prompt].topk(k, dim=-1)
        return idx, vals

    @property
    def row_entropy_mean(self) -> torch.Tensor:
        """(L, H) normalized row entropy, mean over prompts."""
        return self.row_entropy.mean(0)

    @property
    def col_entropy_mean(self) -> torch.Tensor:
        """(L, H) normalized column entropy (max over keys), mean over prompts."""
        return _nanmean(self.col_entropy, 0)

    @property
    def sink_by_mass(self) -> torch.Tensor:
        """(L, H) bool: mass on position 0 >= threshold."""
        return self.mass0 >= self.threshold

    @property
    def sink_by_entropy(self) -> torch.Tensor:
        """(L, H) bool: row entropy <= row_entropy_max and column entropy >= col_entropy_min."""
        return (self.row_entropy_mean <= self.row_entropy_max) & (self.col_entropy_mean >= self.col_entropy_min)

    def sink_head_ids(self, by: str = "mass") -> list[tuple[int, int]]:
        """[(layer, head), ...] flagged by "mass", "entropy", "either" or "both"."""
        flags = self._flags(by)
        return [(self.layers[i], h) for i, h in flags.nonzero().tolist()]

    def _flags(self, by: str) -> torch.Tensor:
        m, e = self.sink_by_mass, self.sink_by_entropy
        table = {"mass": m, "entropy": e, "either": m | e, "both": m & e}
        if by not in table:
            raise InputError(f"by must be one of {', '.join(map(repr, table))}, got {by!r}.")
        return table[by]

    def sink_heads(self, by: str = "either") -> pd.DataFrame:
        """Flagged sink heads with their numbers, strongest position-0 mass first."""
        df = self.to_frame()
        keep = {"mass": df.sink_by_mass, "entropy": df.sink_by_entropy, "either": df.sink_by_mass | df.sink_by_entropy,
                "both": df.sink_by_mass & df.sink_by_entropy}
        if by not in keep:
            raise InputError(f"by must be one of {', '.join(map(repr, keep))}, got {by!r}.")
        return df[keep[by]].sort_values("mass0", ascending=False).reset_index(drop=True)

    def fraction_above(self, value: float, min_layer: int = 0) -> float:
        """Share of heads in layers >= min_layer whose position-0 mass exceeds ``value``."""
        sel = [i for i, l in enumerate(self.layers) if l >= min_layer]
        if not sel:
            raise InputError(f"No analysed layer is >= {min_layer}; analysed layers: {self.layers}.")
        return float((self.mass0[sel] > value).float().mean())

    # ------------------------------------------------------------------ by token string
    def _labels(self) -> tuple[list[str], torch.Tensor]:
        """(unique labels, (B, T) label index or -1) over keys that can be ranked."""
        labels: dict[str, int] = {}
        b, t = self.counts.shape
        idx = torch.full((b, t), -1, dtype=torch.long)
        need = [min(self.min_queries, int(self.counts[i].max())) for i in range(b)]
        for i, toks in enumerate(self.str_tokens):
            for j, tok in enumerate(toks):
                if int(self.counts[i, j]) >= max(need[i], 1):
                    idx[i, j] = labels.setdefault(key_label(tok, j), len(labels))
        return list(labels), idx

    def uniform_mass(self) -> torch.Tensor:
        """(B, T) the mass each key would get if every query attended uniformly to the keys it
        sees: mean of 1/(q + 1) over the key's counted queries (NaN where none count)."""
        b, t = self.counts.shape
        inv = 1.0 / torch.arange(1, t + 1, dtype=torch.float64)  # 1/(q+1)
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), inv.cumsum(0)])  # csum[n] = Σ_{q<n} 1/(q+1)
        out = torch.full((b, t), float("nan"), dtype=torch.float64)
        for i, n in enumerate(self.lengths):
            lo = torch.arange(n).clamp_min(self.skip_queries)
            c = (n - lo).clamp_min(0)
            ok = c > 0
            out[i, :n][ok] = (csum[n] - csum[lo[ok]]) / c[ok]
        return out.float()

    def token_mass(self) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mass aggregated by token string across prompts and occurrences.

        Returns (labels (S,), mass (S, L, H) mean over occurrences, lift (S, L, H) mean over
        occurrences of mass / ``uniform_mass``, occurrences (S,)). Position 0 is its own label
        ('tok@0'); keys with fewer than ``min_queries`` counted queries are left out (their mean
        rests on too few queries).
        """
        labels, idx = self._labels()
        s = len(labels)
        rec = torch.nan_to_num(self.received, nan=0.0)  # (B, L, H, T)
        lift = rec / torch.nan_to_num(self.uniform_mass(), nan=1.0)[:, None, None, :]
        l_, h_ = rec.shape[1:3]
        flat_idx = idx.flatten()  # (B*T,)
        ok = flat_idx >= 0
        occ = torch.zeros(s).index_add_(0, flat_idx[ok], torch.ones(int(ok.sum())))

        def agg(x):  # (B, L, H, T) -> (S, L, H) mean over occurrences
            vals = x.permute(0, 3, 1, 2).reshape(-1, l_, h_)[ok]
            return torch.zeros(s, l_, h_).index_add_(0, flat_idx[ok], vals) / occ.clamp_min(1)[:, None, None]

        return labels, agg(rec), agg(lift), occ

    def top_tokens(self, k: int | None = None, layers=None) -> pd.DataFrame:
        """Top sink tokens by string over all prompts, ranked by mean mass over the selected
        layers × heads (default all analysed). Also: ``lift`` (mass relative to uniform attention;
        > 1 means more than a uniform share), the strongest single head and the occurrences."""
        labels, mass, lift, occ = self.token_mass()
        sel = self._layer_rows(layers)
        m = mass[:, sel]  # (S, L', H)
        mean = m.mean((1, 2))
        peak, arg = m.flatten(1).max(1)
        rows = []
        for s in mean.argsort(descending=True)[: (k or self.top_k)].tolist():
            li, h = divmod(int(arg[s]), self.n_heads)
            rows.append({"token": labels[s], "occurrences": int(occ[s]), "mean_mass": float(mean[s]),
                         "lift": float(lift[s, sel].mean()), "peak_mass": float(peak[s]),
                         "peak_head": f"L{self.layers[sel[li]]}H{h}"})
        return pd.DataFrame(rows, columns=["token", "occurrences", "mean_mass", "lift", "peak_mass", "peak_head"])

    def _layer_rows(self, layers) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        want = [layers] if isinstance(layers, int) else list(layers)
        missing = [l for l in want if l not in self.layers]
        if missing:
            raise InputError(f"Layer(s) {missing} were not analysed in this report; analysed: {self.layers}.")
        return [self.layers.index(l) for l in want]

    def _check_prompt(self, prompt: int) -> None:
        if not isinstance(prompt, int) or not 0 <= prompt < len(self.prompts):
            raise InputError(f"prompt must be an index in 0..{len(self.prompts) - 1}, got {prompt!r}.")

    # ------------------------------------------------------------------ tables and figures
    def to_frame(self, prompt: int | None = None) -> pd.DataFrame:
        """One row per (layer, head).

        prompt=None: statistics averaged over prompts; ``top_sinks`` lists the top-k keys by token
        string (see ``token_mass``). prompt=i: that prompt only, with the max-mass key's position.
        """
        if prompt is not None:
            self._check_prompt(prompt)
        rows = []
        if prompt is None:
            labels, tmass, _, _ = self.token_mass()
            k = min(self.top_k, len(labels))
            tv, ti = tmass.topk(k, dim=0) if k else (None, None)  # (k, L, H)
            m0, re, ce = self.mass0, self.row_entropy_mean, self.col_entropy_mean
            c0 = _nanmean(self.col_entropy0, 0)
        else:
            pos, val = self.top_keys(prompt)
            m0, re, ce = self.mass0_per_prompt[prompt], self.row_entropy[prompt], self.col_entropy[prompt]
            c0 = self.col_entropy0[prompt]
            mk, mm = self.max_key[prompt], self.max_mass[prompt]
            toks = self.str_tokens[prompt]
        by_mass, by_ent = (m0 >= self.threshold), (re <= self.row_entropy_max) & (ce >= self.col_entropy_min)
        for li, layer in enumerate(self.layers):
            for h in range(self.n_heads):
                row = {"layer": layer, "head": h, "mass0": float(m0[li, h]), "row_entropy": float(re[li, h]),
                       "col_entropy": float(ce[li, h]), "col_entropy0": float(c0[li, h])}
                if prompt is None:
                    row["max_mass"] = float(self.max_mass[:, li, h].mean())
                    row["top_sinks"] = [(labels[int(ti[r, li, h])], round(float(tv[r, li, h]), 4)) for r in range(k)]
                else:
                    j = int(mk[li, h])
                    row.update(max_key=j, max_key_token=toks[j], max_mass=float(mm[li, h]),
                               top_sinks=[(int(p), toks[int(p)], round(float(v), 4))
                                          for p, v in zip(pos[li, h].tolist(), val[li, h].tolist())])
                row["sink_by_mass"] = bool(by_mass[li, h])
                row["sink_by_entropy"] = bool(by_ent[li, h])
                rows.append(row)
        return pd.DataFrame(rows)

    def figure(self, prompt: int | None = None, title: str | None = None):
        """Layer × head heatmap of the mass on position 0 (mean over prompts, or one prompt).

        Heads flagged by the entropy detector are marked with a ring; hover shows the entropies
        and the top sink keys.
        """
        import plotly.graph_objects as go

        df = self.to_frame(prompt)
        L, H = len(self.layers), self.n_heads
        z = df["mass0"].to_numpy().reshape(L, H)
        fmt = (lambda ts: ", ".join(f"{t[0]} {t[1]:.2f}" for t in ts)) if prompt is None else \
            (lambda ts: ", ".join(f"{p}:{t!r} {v:.2f}" for p, t, v in ts))
        custom = np.stack([df["row_entropy"].to_numpy().reshape(L, H), df["col_entropy"].to_numpy().reshape(L, H),
                           np.array([fmt(t) for t in df["top_sinks"]], dtype=object).reshape(L, H)], -1)
        heat = go.Heatmap(
            z=z, x=list(range(H)), y=list(range(L)), zmin=0, zmax=1, colorscale="Blues", customdata=custom,
            colorbar=dict(title="mass on pos 0"),
            hovertemplate=("L%{y}H%{x}<br>mass on position 0 %{z:.3f}<br>row entropy %{customdata[0]:.3f}"
                           "<br>column entropy %{customdata[1]:.3f}<br>top sinks: %{customdata[2]}<extra></extra>"))
        fig = go.Figure(heat)
        ent = df[df.sink_by_entropy]
        if len(ent):
            fig.add_trace(go.Scatter(x=ent["head"], y=[self.layers.index(l) for l in ent["layer"]], mode="markers",
                                     marker=dict(symbol="circle-open", size=12, color="crimson", line=dict(width=2)),
                                     name=f"entropy detector (row ≤ {self.row_entropy_max:g}, col ≥ "
                                          f"{self.col_entropy_min:g})", showlegend=True, hoverinfo="skip"))
        which = "mean over prompts" if prompt is None else f"prompt {prompt}"
        fig.update_layout(
            title=dict(text=title or f"Attention mass on position 0 ({which}; queries ≥ {self.skip_queries})"),
            template="plotly_white", width=max(420, 160 + 40 * H), height=max(360, 120 + 18 * L),
            legend=dict(orientation="h", y=-0.12), margin=dict(l=10, r=10, t=50, b=10))
        fig.update_xaxes(title="head", tickmode="array", tickvals=list(range(H)))
        fig.update_yaxes(title="layer", tickmode="array", tickvals=list(range(L)), ticktext=[str(l) for l in self.layers],
                         autorange="reversed")
        return fig

    def __repr__(self) -> str:
        n = len(self.layers) * self.n_heads
        nm, ne = int(self.sink_by_mass.sum()), int(self.sink_by_entropy.sum())
        per_layer = " ".join(f"{l}:{v:.2f}" for l, v in zip(self.layers, self.layer_mass0.tolist()))
        top = self.mass0.flatten().topk(min(5, n))
        heads = ", ".join(f"L{self.layers[i // self.n_heads]}H{i % self.n_heads} {v:.2f}"
                          for v, i in zip(top.values.tolist(), top.indices.tolist()))
        toks = ", ".join(f"{r.token} {r.mean_mass:.2f}" for r in self.top_tokens(5).itertuples())
        return "\n".join([
            f"SinkReport({self.model_name}, {len(self.prompts)} prompt(s), lengths {self.lengths}, "
            f"{len(self.layers)} layers × {self.n_heads} heads, queries ≥ {self.skip_queries})",
            f"  sink heads by mass (m0 ≥ {self.threshold}): {nm}/{n}; by entropy (row ≤ {self.row_entropy_max}, "
            f"col ≥ {self.col_entropy_min}): {ne}/{n}",
            f"  mass on position 0 per layer: {per_layer}",
            f"  strongest: {heads}",
            f"  top sink tokens (mean mass over heads): {toks}",
        ])

    def html_table(self):
        return self.sink_heads().head(20)


def _check_params(threshold, top_k, row_entropy_max, col_entropy_min) -> None:
    if not all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in (threshold, row_entropy_max, col_entropy_min)):
        raise InputError("threshold, row_entropy_max and col_entropy_min must be numbers in [0, 1].")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}.")


def sink_report(model, prompts, skip_queries: int = 4, threshold: float = 0.3, top_k: int = 5,
                row_entropy_max: float = ROW_ENTROPY_MAX, col_entropy_min: float = COL_ENTROPY_MIN,
                layers=None, min_queries: int = 4, max_bytes: int | None = None) -> SinkReport:
    """Sink statistics per layer and head for one prompt or a right-padded batch.

    prompts: a string, a list of strings or token ids (T,) / (B, T). Every prompt needs more
    than ``skip_queries`` tokens. Uses ``model.run(..., attention="summary")`` and stops the
    forward after the last requested layer, so no full pattern is kept.
    min_queries: keys counted by fewer queries are left out of top-sink rankings.
    """
    if not isinstance(skip_queries, int) or isinstance(skip_queries, bool) or skip_queries < 0:
        raise InputError(f"skip_queries must be a non-negative integer, got {skip_queries!r}.")
    _check_params(threshold, top_k, row_entropy_max, col_entropy_min)
    layer_list = resolve_layers(layers, model.info.n_layers)
    texts, lengths = check_prompt_lengths(model, prompts, skip_queries, f"sink_report(skip_queries={skip_queries})",
                                          "Use longer prompts or a smaller skip_queries.")
    run = model.run(prompts, capture=["pattern"], layers=layer_list, attention="summary", skip_queries=skip_queries,
                    last_rows=1, logits=None, stop_at_layer=max(layer_list) + 1, max_bytes=max_bytes)
    return sink_report_from_run(model, run, layer_list, texts, threshold=threshold, top_k=top_k,
                                row_entropy_max=row_entropy_max, col_entropy_min=col_entropy_min,
                                min_queries=min_queries)


def sink_report_from_run(model, run, layers: list[int], texts: list[str], threshold: float = 0.3, top_k: int = 5,
                         row_entropy_max: float = ROW_ENTROPY_MAX, col_entropy_min: float = COL_ENTROPY_MIN,
                         min_queries: int = 4) -> SinkReport:
    """Build a SinkReport from a Run holding attention summaries of ``layers`` (attention="summary")."""
    _check_params(threshold, top_k, row_entropy_max, col_entropy_min)
    layer_list, lengths = list(layers), list(run.lengths)
    missing = [l for l in layer_list if l not in run.summaries]
    if missing:
        raise InputError(f"The run has no attention summary for layer(s) {missing}: run with "
                         "capture=['pattern'], attention='summary'.")
    sums = [run.summaries[l] for l in layer_list]
    skip_queries = sums[0].skip_queries
    received = torch.stack([s.received for s in sums], 1).cpu()  # (B, L, H, T)
    counts = sums[0].counts.cpu()
    t = received.shape[-1]
    q_idx = torch.arange(t)
    qmask = (q_idx >= max(skip_queries, 1)).float()  # (T,) queries averaged for the row entropy
    rows = []
    cols, col_keys, col0 = [], [], []
    for s in sums:
        re = s.row_entropy.cpu()  # (B, H, T), NaN on query 0 and padding
        w = qmask * (~re.isnan()).float()
        rows.append(torch.nan_to_num(re, nan=0.0).mul(w).sum(-1) / w.sum(-1).clamp_min(1))
        ce = s.column_entropy.cpu()
        col0.append(ce[..., 0])
        filled = torch.nan_to_num(ce, nan=-1.0)
        v, k = filled.max(-1)  # (B, H)
        cols.append(torch.where(v >= 0, v, torch.full_like(v, float("nan"))))
        col_keys.append(torch.where(v >= 0, k, torch.full_like(k, -1)))
    return SinkReport(
        model_name=model.info.name, prompts=texts, str_tokens=run.str_tokens, lengths=lengths, layers=layer_list,
        received=received, counts=counts, row_entropy=torch.stack(rows, 1), col_entropy=torch.stack(cols, 1),
        col_entropy_key=torch.stack(col_keys, 1), col_entropy0=torch.stack(col0, 1), skip_queries=skip_queries,
        threshold=threshold, top_k=top_k, row_entropy_max=row_entropy_max, col_entropy_min=col_entropy_min, min_queries=min_queries)
