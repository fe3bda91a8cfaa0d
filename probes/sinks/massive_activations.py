"""Residual-state peaks ("massive activations"): which token's residual explodes, in which
dimensions, from which layer on, and where it is removed.

Stages: s = 0 is the embedding (the residual entering block 0, ``blocks.0.hook_resid_pre``; it
includes learned positions on GPT-2-like models and Gemma's √d embedding scale) and s = l + 1 the
residual leaving block l (``resid_post``), so there are L + 1 stages. Per prompt:

- norms[s, j] = ‖x_j^s‖₂, the absolute residual norm (equal to HF ``output_hidden_states[s]`` for s < L).
- written[s, j] = ‖x_j^s − x_j^0‖₂: what the blocks up to s have written, the embedding removed.
  Detection uses this, so an embedding row that is large to begin with (Gemma's first-token
  embedding, multiplied by √d) is not mistaken for a massive activation made by a block: such a token
  looks like a peak "at block 0" by the plain ratio, while the real massive activation appears later.
- peak token p: the arg-max-written-norm token at the block-output stage s ≥ 1 where (max written
  norm / median written norm of the other tokens) is largest; the embedding stage is never the peak.
  written_ratio[s] = written[s, p] / median_{j ≠ p} written[s, j] (s ≥ 1; padding excluded).
  ratio[s] = ‖x_p^s‖ / median_{j ≠ p} ‖x_j^s‖ is the plain ratio of absolute norms, kept for display
  and comparison (at s = 0 it says whether p's embedding row is itself an outlier: ``embed_ratio``).
- **massive** stages: s ≥ 1 with written_ratio ≥ ``factor``. **appears**: the first stage of the run
  of massive stages that holds the largest written ratio (the block whose output first carries
  the peak is block appears − 1). **removed**: the first stage after that run, i.e. the first block
  output where the peak token's written norm is back below ``factor`` × the median of the others
  (None when the peak lasts to the last block; the final norm then removes it). first_massive: the
  first massive stage at all (a weaker, earlier peak can come and go before the main one).
- top dims of x_p^s by |value| (the absolute residual), with their signed values and the share of
  ‖x_p^s‖² they carry; ``peak_norm`` / ``peak_dims`` give the absolute norm and the dims at the stage
  with the largest written ratio.

Measured on SmolLM2 (fp32, CPU; 9 prompts of 21-116 tokens: the three integration-test prompts and
three prose and three code texts of ``workbench.texts.load_domain``; checked by ``tests/test_massive.py``):
p = 0 on every prompt, whatever its first token. ‖x_0‖ is about 130 after block 10 and jumps to
21.9k-24.9k after block 11 (22.7k when the first token is "The"), then stays within 2% of that
through block 27. Dim 507 carries 99.3% of it (22.55k of 22.71k for "The"); dims 247 (1.6k-1.8k)
and 14 (about 0.86k) follow. The ratio to the median of the other tokens is largest right after
block 11 (155-188) and then falls because the other tokens grow (median 137 after block 11, 625
after block 27): it drops below 100 after block 20 (19-21 across the prompts) and is 31-40 after
block 27. After block 28 the peak falls to 7.6k-10.5k (dims 507 and 17, ratio 10-15) and after
block 29 to 4.7k-6.0k (ratio 5-8), so with factor 10 the run is "removed" at block 29's output. A weaker
earlier bump (norm about 650 in dim 507 after blocks 2-8, ratio 4-8) crosses factor 10 on 2 of the
9 prompts (``first_massive``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.hook_names import hook_name
from workbench.capture import resolve_layers
from workbench.errors import InputError

from .report import check_prompt_lengths


@dataclass
class MassiveActivationReport(Result):
    """Residual norms over S = L + 1 stages (embedding, then each block's output) for B prompts.

    norms: (B, S, T) L2 norm per token; NaN at padded positions.
    peak_position: (B,) the peak token of each prompt.
    ratio: (B, S) peak-token norm / median norm of the other real tokens (absolute residual norms).
    written_ratio: (B, S) the same on ‖x^s − x^0‖ (what the blocks wrote), the detection ratio;
        NaN at the embedding stage s = 0.
    median_other, max_other: (B, S) median and max norm over the other real tokens.
    top_dims, top_values: (B, S, k) the peak token's largest dims by |x| and their signed values.
    top_share: (B, S) share of the peak token's squared norm carried by those k dims.
    appears, removed, first_massive: per prompt, a stage index (0 = embedding, l + 1 = after
        block l) or None; see the module docstring.
    """

    model_name: str
    prompts: list[str]
    str_tokens: list[list[str]]
    lengths: list[int]
    layers: list[int]
    norms: torch.Tensor
    peak_position: torch.Tensor
    ratio: torch.Tensor
    median_other: torch.Tensor
    max_other: torch.Tensor
    top_dims: torch.Tensor
    top_values: torch.Tensor
    top_share: torch.Tensor
    appears: list[int | None]
    removed: list[int | None]
    first_massive: list[int | None]
    factor: float = 10.0
    written_ratio: torch.Tensor | None = None

    @property
    def massive(self) -> torch.Tensor:
        """(B, S) bool: block-output stages where the peak token's written norm is >= ``factor`` × the median
        of the others (never the embedding stage)."""
        m = torch.nan_to_num(self.written_ratio, nan=0.0) >= self.factor
        m[:, 0] = False
        return m

    @property
    def peak_stage(self) -> list[int]:
        """Per prompt, the block-output stage (>= 1) with the largest written ratio."""
        wr = torch.nan_to_num(self.written_ratio[:, 1:], nan=-1.0)
        return [1 + int(wr[b].argmax()) for b in range(len(self.prompts))]

    @property
    def peak_norm(self) -> list[float]:
        """Per prompt, the absolute residual norm ‖x_p‖ of the peak token at ``peak_stage``."""
        return [float(self.norms[b, s, int(self.peak_position[b])]) for b, s in enumerate(self.peak_stage)]

    def peak_dims(self, prompt: int = 0) -> list[tuple[int, float]]:
        """(dim, signed value) of the peak token's largest residual dims at ``peak_stage``."""
        self._check_prompt(prompt)
        s = self.peak_stage[prompt]
        return [(int(d), float(v)) for d, v in zip(self.top_dims[prompt, s], self.top_values[prompt, s])]

    @property
    def embed_ratio(self) -> torch.Tensor:
        """(B,) plain ratio of the peak token's embedding norm to the median of the others (stage 0): large when the
        embedding row itself is an outlier (not a massive activation made by a block)."""
        return self.ratio[:, 0]

    @property
    def stage_labels(self) -> list[str]:
        """'embed' then 'L{l}' for each block output."""
        return ["embed"] + [f"L{l}" for l in self.layers]

    def stage_name(self, s: int | None) -> str:
        if s is None:
            return "none"
        return "the embedding" if s == 0 else f"block {self.layers[s - 1]}'s output"

    def massive_dims(self, prompt: int = 0, min_share: float = 0.05) -> list[int]:
        """Dims that carry at least ``min_share`` of the peak token's squared norm at some stage
        where the peak is massive (ratio >= factor), most frequent first; [] if never massive."""
        self._check_prompt(prompt)
        sel = self.massive[prompt].nonzero().flatten().tolist()
        counts: dict[int, float] = {}
        norms2 = self.norms[prompt, :, int(self.peak_position[prompt])] ** 2
        for s in sel:
            for d, v in zip(self.top_dims[prompt, s].tolist(), self.top_values[prompt, s].tolist()):
                if v * v >= min_share * float(norms2[s]):
                    counts[d] = counts.get(d, 0.0) + v * v
        return sorted(counts, key=lambda d: -counts[d])

    def _check_prompt(self, prompt: int) -> None:
        if not isinstance(prompt, int) or not 0 <= prompt < len(self.prompts):
            raise InputError(f"prompt must be an index in 0..{len(self.prompts) - 1}, got {prompt!r}.")

    def to_frame(self, prompt: int | None = None) -> pd.DataFrame:
        """One row per (prompt, stage): peak norm, median/max of the others, ratio, top dims."""
        prompts = range(len(self.prompts)) if prompt is None else [prompt]
        rows = []
        for b in prompts:
            self._check_prompt(b)
            p = int(self.peak_position[b])
            for s, lab in enumerate(self.stage_labels):
                rows.append({
                    "prompt": b, "stage": lab, "layer": None if s == 0 else self.layers[s - 1],
                    "peak_position": p, "peak_token": self.str_tokens[b][p], "peak_norm": float(self.norms[b, s, p]),
                    "median_other": float(self.median_other[b, s]), "max_other": float(self.max_other[b, s]),
                    "ratio": float(self.ratio[b, s]), "written_ratio": float(self.written_ratio[b, s]),
                    "massive": bool(self.massive[b, s]),
                    "top_dims": [(int(d), round(float(v), 2)) for d, v in zip(self.top_dims[b, s], self.top_values[b, s])],
                    "top_share": float(self.top_share[b, s]),
                })
        return pd.DataFrame(rows)

    def figure(self, prompt: int = 0, positions=None, title: str | None = None):
        """Residual norm per stage (log scale): the peak token, the median and max of the other
        tokens, and any extra ``positions``; the massive dims are named in the legend and at the
        stage where the peak norm is largest; shaded: stages where the peak is massive."""
        import plotly.graph_objects as go

        self._check_prompt(prompt)
        x = self.stage_labels
        p = int(self.peak_position[prompt])
        toks = self.str_tokens[prompt]
        dims = self.massive_dims(prompt)
        dim_txt = f" — dims {', '.join(map(str, dims[:3]))}" if dims else ""
        fig = go.Figure()
        for s in range(len(x)):
            if self.massive[prompt, s]:
                fig.add_vrect(x0=s - 0.5, x1=s + 0.5, fillcolor="rgba(214,39,40,0.08)", line_width=0)
        peak = self.norms[prompt, :, p].numpy()
        top = [", ".join(f"{d}: {v:.4g}" for d, v in zip(self.top_dims[prompt, s].tolist(), self.top_values[prompt, s].tolist()))
               for s in range(len(x))]
        fig.add_trace(go.Scatter(x=x, y=peak, mode="lines+markers", name=f"peak {toks[p]!r} @{p}{dim_txt}",
                                 line=dict(color="crimson", width=3), customdata=np.array(top, dtype=object),
                                 hovertemplate="%{x}: %{y:.4g}<br>top dims %{customdata}<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=self.median_other[prompt].numpy(), mode="lines", name="median of other tokens",
                                 line=dict(color="gray", width=2)))
        fig.add_trace(go.Scatter(x=x, y=self.max_other[prompt].numpy(), mode="lines", name="max of other tokens",
                                 line=dict(color="gray", dash="dot")))
        for q in ([] if positions is None else ([positions] if isinstance(positions, int) else list(positions))):
            if not isinstance(q, int) or not 0 <= q < self.lengths[prompt]:
                raise InputError(f"Position {q!r} is outside prompt {prompt} (0..{self.lengths[prompt] - 1}).")
            fig.add_trace(go.Scatter(x=x, y=self.norms[prompt, :, q].numpy(), mode="lines", name=f"{toks[q]!r} @{q}"))
        s_max = int(np.nanargmax(peak))
        fig.add_annotation(x=x[s_max], y=np.log10(peak[s_max]), text="<br>".join(
            f"dim {d}: {v:.3g}" for d, v in zip(self.top_dims[prompt, s_max].tolist(), self.top_values[prompt, s_max].tolist())),
            showarrow=True, arrowhead=2, ax=40, ay=40, align="left", bgcolor="rgba(255,255,255,0.8)")
        a, r = self.appears[prompt], self.removed[prompt]
        sub = (f"massive (written norm ≥{self.factor:g}× median) from {self.stage_name(a)}"
               + (f", gone at {self.stage_name(r)}" if r is not None else ", to the last block") if a is not None
               else f"no token reaches {self.factor:g}× the median")
        fig.update_layout(title=dict(text=title or f"Residual norm per layer ({self.model_name}): {sub}"),
                          template="plotly_white", width=1000, height=480, legend=dict(orientation="h", y=-0.2),
                          margin=dict(l=10, r=10, t=60, b=10))
        fig.update_yaxes(type="log", title="‖x‖₂")
        fig.update_xaxes(title="stage (residual after block)")
        return fig

    def __repr__(self) -> str:
        lines = [f"MassiveActivationReport({self.model_name}, {len(self.prompts)} prompt(s), {len(self.layers)} layers, "
                 f"factor {self.factor:g})"]
        for b in range(min(len(self.prompts), 5)):
            p = int(self.peak_position[b])
            s = self.peak_stage[b]
            dims = ", ".join(f"{d}: {v:.4g}" for d, v in zip(self.top_dims[b, s].tolist(), self.top_values[b, s].tolist()))
            a, r, first = self.appears[b], self.removed[b], self.first_massive[b]
            if a is None:
                where = f"never reaches {self.factor:g}× the median"
            else:
                where = f"appears at {self.stage_name(a)}, " + (
                    f"gone at {self.stage_name(r)}" if r is not None else "lasts to the last block")
                if first != a:
                    where += f" (first massive at {self.stage_name(first)})"
            emb = (f"; its embedding is already {float(self.ratio[b, 0]):.1f}× the median (not counted)"
                   if float(self.ratio[b, 0]) >= self.factor else "")
            lines.append(f"  prompt {b}: peak {self.str_tokens[b][p]!r} @{p}, max written ratio "
                         f"{float(self.written_ratio[b, s]):.1f} ({self.stage_labels[s]}, norm {float(self.norms[b, s, p]):.4g}; "
                         f"dims {dims}); {where}{emb}")
        return "\n".join(lines)

    def html_table(self):
        return None


def _median_max_other(norms: torch.Tensor, p: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, T) norms of one prompt -> (S,) median and max over real tokens other than p."""
    keep = [j for j in range(n) if j != p]
    if not keep:
        nan = torch.full((norms.shape[0],), float("nan"))
        return nan, nan
    o = norms[:, keep]
    return o.median(-1).values, o.max(-1).values


def _massive_run(ratio: torch.Tensor, factor: float) -> tuple[int | None, int | None, int | None]:
    """(S,) written ratios (stage 0 = the embedding, never massive) -> (start of the massive run holding the
    max ratio, first stage after it or None, first massive stage); all None when no stage reaches ``factor``."""
    ratio = torch.nan_to_num(ratio.clone(), nan=-1.0)
    ratio[0] = -1.0
    massive = (ratio >= factor).tolist()
    if not any(massive):
        return None, None, None
    top = int(ratio.argmax())
    a = top
    while a > 0 and massive[a - 1]:
        a -= 1
    r = next((s for s in range(top + 1, len(massive)) if not massive[s]), None)
    return a, r, massive.index(True)


def massive_activations(model, prompts, factor: float = 10.0, top_k: int = 3, layers=None,
                        max_bytes: int | None = None) -> MassiveActivationReport:
    """Residual norm per token and stage, the peak token, its carrying dims, where it appears
    and where it is removed. ``layers`` picks which block outputs to keep (default all; the
    embedding stage is always first). Each prompt needs at least 2 tokens (a peak needs others).
    """
    if not factor > 1:
        raise InputError(f"factor must be > 1, got {factor!r}.")
    if not isinstance(top_k, int) or not 1 <= top_k <= model.info.d_model:
        raise InputError(f"top_k must be an integer in 1..{model.info.d_model}, got {top_k!r}.")
    layer_list = resolve_layers(layers, model.info.n_layers)
    texts, lengths = check_prompt_lengths(model, prompts, 1, "massive_activations (a peak versus the other tokens)")
    run = model.run(prompts, capture=[hook_name("resid_pre", 0), "resid_post"], layers=layer_list, logits=None,
                    stop_at_layer=max(layer_list) + 1, max_bytes=max_bytes)
    return massive_activations_from_run(model, run, layer_list, texts, factor=factor, top_k=top_k)


def massive_activations_from_run(model, run, layers: list[int], texts: list[str], factor: float = 10.0,
                                 top_k: int = 3) -> MassiveActivationReport:
    """Build a MassiveActivationReport from a Run that captured ``blocks.0.hook_resid_pre`` and
    ``resid_post`` at ``layers`` (all positions)."""
    layer_list, lengths = list(layers), list(run.lengths)
    xs = [run[hook_name("resid_pre", 0)]] + [run["resid_post", l] for l in layer_list]  # S × (B, T, d)
    b, t = run.tokens.shape
    norms = torch.stack([x.detach().float().norm(dim=-1).cpu() for x in xs], 1)  # (B, S, T)
    pad = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]
    norms = norms.masked_fill(pad[:, None, :], float("nan"))
    x0 = xs[0].detach().float()
    written = torch.stack([(x.detach().float() - x0).norm(dim=-1).cpu() for x in xs], 1)  # (B, S, T); 0 at s = 0
    peak_pos, ratios, wratios, meds, maxs, tdims, tvals, tshare, appears, removed, firsts = ([] for _ in range(11))
    for i, n in enumerate(lengths):
        nm = norms[i, :, :n]  # (S, n)
        wn = written[i, 1:, :n]  # (S - 1, n) block-output stages only: the embedding is never the peak
        best_s = int((wn.max(-1).values / wn.median(-1).values.clamp_min(1e-30)).argmax())
        p = int(wn[best_s].argmax())
        med, mx = _median_max_other(nm, p, n)
        ratio = nm[:, p] / med
        wmed, _ = _median_max_other(written[i, :, :n], p, n)
        wratio = written[i, :, p] / wmed.clamp_min(1e-30)
        wratio[0] = float("nan")
        vec = torch.stack([x[i, p].detach().float().cpu() for x in xs])  # (S, d)
        v, d = vec.abs().topk(top_k, dim=-1)
        signed = vec.gather(1, d)
        share = (signed ** 2).sum(-1) / (vec ** 2).sum(-1).clamp_min(1e-30)
        a, r, first = _massive_run(wratio, factor)
        peak_pos.append(p), ratios.append(ratio), wratios.append(wratio), meds.append(med), maxs.append(mx)
        tdims.append(d), tvals.append(signed), tshare.append(share), appears.append(a), removed.append(r)
        firsts.append(first)
    return MassiveActivationReport(
        model.info.name, texts, run.str_tokens, lengths, layer_list, norms, torch.tensor(peak_pos), torch.stack(ratios),
        torch.stack(meds), torch.stack(maxs), torch.stack(tdims), torch.stack(tvals), torch.stack(tshare),
        appears, removed, firsts, factor, torch.stack(wratios))
