"""Activation patching between a clean and a corrupted prompt of equal token length.

A ``PatchingPair`` holds a clean prompt ("The capital city of France is" -> " Paris") and a
corrupted one with the subject swapped for another subject of the same token length ("... of
Brazil is" -> the model's own answer there). The metric is the logit difference at the last
position, LD = logit[answer] - logit[corrupted answer], normalised so the clean run scores 1 and
the corrupted run 0:

    metric = (LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)

Two directions (``direction``):

- ``"denoise"`` (default, causal tracing / TransformerLens ``get_act_patch_*``): run the
  corrupted prompt and copy in one clean activation; a value near 1 means that activation alone
  restores the clean answer.
- ``"noise"``: run the clean prompt and copy in one corrupted activation; a value near 0 means
  the clean answer needs that activation.

Grids, all through ``model.run(..., interventions=[...])`` hooks (never left on the model), with
the patched runs batched: one batch row per patched cell, ``batch_size`` rows per forward.

- ``patch_residual``: per layer x position of ``resid_pre`` (default: the residual stream
  *entering* block l, so layer 0 is the embedding) or another (B, T, d_model) site
  (``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``). One cell = one position of one layer.
- ``patch_heads``: per layer x head of the head output ``z`` (B, T, H, d_head, before the output
  projection), at every position by default (``positions="all"``) or only the last one
  (``positions="last"``) or a given list.

``ActivationPatch`` is the single-site intervention (any per-layer site, optional heads) for use
in your own ``model.run``.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from interventions.activation_patch import ActivationPatch, patch_positions, patch_site_spec
from workbench.capture import resolve_layers
from workbench.errors import InputError
from workbench.progress import progress
from workbench.intervention import Intervention

DIRECTIONS = ("denoise", "noise")
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
_EPS = 1e-6  # smallest |LD_clean - LD_corrupted| that can be normalised


# ---------------------------------------------------------------------------------- the pair
@dataclass(frozen=True)
class PatchingPair:
    """A clean and a corrupted prompt of the same token length T, and the two answer tokens.

    clean_ids, corrupted_ids: (T,) token ids. answer / corrupted_answer: token ids whose logit
    difference is the metric (multi-token answers: their first token). diff_positions: the
    positions where the two prompts' tokens differ (the swapped subject).
    """

    clean: str
    corrupted: str
    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    answer: int
    corrupted_answer: int
    answer_str: str
    corrupted_answer_str: str
    subject: str | None = None
    corrupted_subject: str | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def diff_positions(self) -> list[int]:
        return torch.nonzero(self.clean_ids != self.corrupted_ids).flatten().tolist()

    def position_labels(self) -> list[str]:
        """One label per position: "i: token", or "i: clean/corrupted" where they differ."""
        out = []
        for i, (a, b) in enumerate(zip(self.clean_tokens, self.corrupted_tokens)):
            out.append(f"{i}: {a!r}" if a == b else f"{i}: {a!r}/{b!r}")
        return out

    def describe(self) -> str:
        return (f"{self.clean!r} -> {self.answer_str!r} vs {self.corrupted!r} -> {self.corrupted_answer_str!r} "
                f"({self.n_tokens} tokens, differing at {self.diff_positions})")


def _text(x, what: str) -> str:
    s = getattr(x, "prompt", x)
    if not isinstance(s, str) or not s:
        raise InputError(f"The {what} prompt must be a non-empty string (or an object with a .prompt string), "
                         f"got {type(x).__name__}.")
    return s


def corrupt_subject(model, prompt: str, subject: str, substitutes: Sequence) -> tuple[str, object]:
    """Swap every occurrence of ``subject`` in ``prompt`` for the first substitute of equal token length.

    substitutes: strings, or objects with a ``.subject`` string (FactPrompt-like). A substitute
    qualifies when the corrupted prompt has exactly as many tokens as the clean one (so positions
    align for patching) and it differs from ``subject``. Returns (corrupted prompt, the chosen
    substitute as given). Raises InputError when the subject is not in the prompt or no substitute
    has the right length.
    """
    prompt = _text(prompt, "clean")
    if not isinstance(subject, str) or not subject:
        raise InputError(f"subject must be a non-empty string, got {subject!r}.")
    if subject not in prompt:
        raise InputError(f"Subject {subject!r} does not occur in the prompt {prompt!r}. Pass the subject exactly as "
                         "it is written in the prompt (case and spaces included).")
    subs = list(substitutes or [])
    if not subs:
        raise InputError("No substitutes given: pass other subjects to swap in (e.g. other countries), or pass "
                         "corrupted=... yourself.")
    n = model.tokenize(prompt)[1][0]
    tried = []
    for s in subs:
        name = getattr(s, "subject", s)
        if not isinstance(name, str) or not name:
            raise InputError(f"Substitute {s!r} is not a non-empty string (nor has a .subject string).")
        if name == subject:
            continue
        cand = prompt.replace(subject, name)
        m = model.tokenize(cand)[1][0]
        if m == n:
            return cand, s
        tried.append(f"{name!r}: {m}")
    raise InputError(f"No substitute gives a prompt of the same token length as the clean one ({n} tokens); "
                     f"tried {', '.join(tried[:8]) or 'nothing (all equal the subject)'}. Pass subjects that "
                     "tokenize like the original (same number of tokens), or a corrupted prompt of your own.")


def _answer_id(model, answer, what: str) -> int:
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        a = int(answer)
        if not 0 <= a < model.info.d_vocab:
            raise InputError(f"The {what} token id {a} is outside the vocabulary (0..{model.info.d_vocab - 1}).")
        return a
    if not isinstance(answer, str) or not answer:
        raise InputError(f"The {what} must be a non-empty string or a token id, got {answer!r}.")
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"The {what} {answer!r} tokenizes to nothing.")
    return int(ids[0])  # multi-token answers: the first token decides the next-token prediction


def patching_pair(model, clean, corrupted=None, *, subject: str | None = None, substitutes: Sequence = (),
                  answer=None, corrupted_answer=None) -> PatchingPair:
    """Build a ``PatchingPair`` from plain inputs or FactPrompt-like objects.

    clean: a prompt string, or an object with ``.prompt`` (and optionally ``.subject``, ``.answer``).
    corrupted: a prompt string (or object with ``.prompt`` and optionally ``.answer``) with the
        same number of tokens; or None to build it with ``corrupt_subject(model, clean, subject,
        substitutes)`` (every occurrence of the subject is swapped).
    answer, corrupted_answer: strings (first token used, e.g. " Paris") or token ids. Default: the
        object's ``.answer`` if any, else the model's top-1 next token on that prompt.
    Raises InputError on unequal token lengths, a missing subject, or identical answer tokens.
    """
    clean_text = _text(clean, "clean")
    subject = subject if subject is not None else getattr(clean, "subject", None)
    answer = answer if answer is not None else getattr(clean, "answer", None)
    chosen = None
    if corrupted is None:
        if subject is None:
            raise InputError("Pass either corrupted=<prompt> or subject=<the subject in the prompt> with "
                             "substitutes=[other subjects].")
        corrupted_text, chosen = corrupt_subject(model, clean_text, subject, substitutes)
        if corrupted_answer is None:
            corrupted_answer = getattr(chosen, "answer", None)
    else:
        corrupted_text = _text(corrupted, "corrupted")
        if corrupted_answer is None:
            corrupted_answer = getattr(corrupted, "answer", None)
    ids, lengths = model.tokenize([clean_text, corrupted_text])
    if lengths[0] != lengths[1]:
        ct = model.str_tokens(ids[0, :lengths[0]].tolist())
        rt = model.str_tokens(ids[1, :lengths[1]].tolist())
        raise InputError(f"The clean and corrupted prompts must have the same number of tokens for position-wise "
                         f"patching: clean has {lengths[0]} {ct}, corrupted has {lengths[1]} {rt}. Swap in a "
                         "subject of the same token length (corrupt_subject does this for you).")
    if answer is None or corrupted_answer is None:
        with torch.no_grad():
            top = model.run(ids, logits="last").last_logits.argmax(-1).tolist()
        answer = top[0] if answer is None else answer
        corrupted_answer = top[1] if corrupted_answer is None else corrupted_answer
    a, ca = _answer_id(model, answer, "answer"), _answer_id(model, corrupted_answer, "corrupted answer")
    if a == ca:
        raise InputError(f"The answer and the corrupted answer are the same token ({model.to_string([a])!r}), so "
                         "their logit difference is zero by construction. Use a corrupted subject whose answer "
                         "differs, or pass corrupted_answer= explicitly.")
    t = lengths[0]
    return PatchingPair(clean_text, corrupted_text, ids[0, :t].cpu(), ids[1, :t].cpu(),
                        model.str_tokens(ids[0, :t].tolist()), model.str_tokens(ids[1, :t].tolist()), a, ca,
                        model.to_string([a]), model.to_string([ca]), subject,
                        getattr(chosen, "subject", chosen) if chosen is not None else None)


# ---------------------------------------------------------------------------------- interventions

    def __repr__(self):
        h = "" if self.heads is None else f" heads {self.heads}"
        p = "all positions" if self.positions is None else f"positions {self.positions}"
        return f"ActivationPatch({self.site} L{self.layer}{h}, {p})"


@dataclass(frozen=True)
class _Cell:
    layer: int
    positions: torch.Tensor  # (P,)
    heads: tuple[int, ...] | None = None


class _RowPatch(Intervention):
    """Batch row i gets its own patch ``cells[i]`` from ``source[layer]`` (T, ...); one hook per layer."""

    def __init__(self, site: str, source: dict[int, torch.Tensor], cells: list[_Cell]):
        self.spec, self.source, self.cells = patch_site_spec(site), source, cells

    def hooks(self, model):
        by_layer: dict[int, list[tuple[int, _Cell]]] = {}
        for i, c in enumerate(self.cells):
            by_layer.setdefault(c.layer, []).append((i, c))
        out = []
        for layer, rows in by_layer.items():
            def fn(x: torch.Tensor, _name: str, rows=rows, src=self.source[layer]) -> torch.Tensor:
                x = x.clone()
                src = src.to(x)
                for i, c in rows:
                    pos = c.positions.to(x.device)
                    if c.heads is None:
                        x[i, pos] = src[pos]
                    else:
                        hd = torch.tensor(c.heads, device=x.device)
                        x[i, pos[:, None], hd[None, :]] = src[pos[:, None], hd[None, :]]
                return x
            out.append((self.spec.full_name(layer), fn))
        return out


# ---------------------------------------------------------------------------------- core runs
def _ld(logits: torch.Tensor, pair: PatchingPair) -> torch.Tensor:
    """(B, vocab) last-position logits -> (B,) logit differences."""
    return logits[:, pair.answer] - logits[:, pair.corrupted_answer]


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be 'denoise' (clean activations into the corrupted run) or 'noise' "
                         f"(corrupted activations into the clean run), got {direction!r}.")


def _source_target(pair: PatchingPair, direction: str):
    _check_direction(direction)
    return (pair.clean_ids, pair.corrupted_ids) if direction == "denoise" else (pair.corrupted_ids, pair.clean_ids)


def _baselines(model, pair: PatchingPair, site: str, layers: list[int]):
    """One forward of [clean, corrupted]: (LD_clean, LD_corrupted, {layer: (2, T, ...) site activation})."""
    ids = torch.stack([pair.clean_ids, pair.corrupted_ids]).to(model.device)
    with torch.no_grad():
        run = model.run(ids, capture=[site], layers=layers, logits="last")
    ld = _ld(run.last_logits, pair)
    return float(ld[0]), float(ld[1]), {l: run[site, l] for l in layers}


def _normaliser(ld_clean: float, ld_corrupted: float) -> float:
    d = ld_clean - ld_corrupted
    if abs(d) < _EPS:
        raise InputError(f"The clean and corrupted runs give the same logit difference ({ld_clean:.4g}), so the "
                         "metric cannot be normalised. Pick a corruption that changes the answer.")
    return d


def patched_logit_diffs(model, pair: PatchingPair, site: str, target_ids: torch.Tensor,
                        source: dict[int, torch.Tensor], cells: list[_Cell], batch_size: int) -> torch.Tensor:
    """Raw logit difference of ``target_ids`` (T,) with each cell patched from ``source``: (n_cells,).

    Runs ceil(n_cells / batch_size) forwards of batch_size copies of the target.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    out = []
    with torch.no_grad():
        for i in progress(range(0, len(cells), batch_size), desc=f"patch {len(cells)} cells", unit="batch"):
            chunk = cells[i:i + batch_size]
            ids = target_ids.to(model.device)[None].expand(len(chunk), -1)
            run = model.run(ids, logits="last", interventions=[_RowPatch(site, source, chunk)])
            out.append(_ld(run.last_logits, pair).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------- results
def _heat_html(obj) -> str:
    return f"<pre>{html.escape(repr(obj))}</pre>"


@dataclass
class ResidualPatchingResult:
    """Normalised metric after patching one (layer, position) of ``site``: values (L, P).

    values[i, j] = metric with layer layers[i], position positions[j] patched (clean = 1,
    corrupted = 0). ld: the raw patched logit differences, same shape.
    """

    model_name: str
    pair: PatchingPair
    site: str
    direction: str
    layers: list[int]
    positions: list[int]
    values: torch.Tensor
    ld: torch.Tensor
    ld_clean: float
    ld_corrupted: float
    n_forward: int
    n_patched_runs: int
    seconds: float

    @property
    def baseline(self) -> float:
        """Metric of the unpatched target run: 0 when denoising, 1 when noising."""
        return 0.0 if self.direction == "denoise" else 1.0

    def to_frame(self) -> pd.DataFrame:
        labels = self.pair.position_labels()
        rows = [{"layer": l, "position": p, "token": labels[p], "metric": float(self.values[i, j]),
                 "logit_diff": float(self.ld[i, j])}
                for i, l in enumerate(self.layers) for j, p in enumerate(self.positions)]
        return pd.DataFrame(rows, columns=["layer", "position", "token", "metric", "logit_diff"])

    def figure(self, title: str | None = None):
        """Heatmap layer (rows) x position (columns, token labels) of the normalised metric."""
        import plotly.graph_objects as go

        labels = self.pair.position_labels()
        x = [labels[p] for p in self.positions]
        z = self.values.numpy()
        lim = max(1.0, float(np.abs(z - self.baseline).max()))
        fig = go.Figure(go.Heatmap(
            z=z, x=x, y=[str(l) for l in self.layers], colorscale="RdBu", zmid=self.baseline,
            zmin=self.baseline - lim, zmax=self.baseline + lim, colorbar=dict(title="metric"),
            customdata=self.ld.numpy(),
            hovertemplate="layer %{y}<br>%{x}<br>metric %{z:.3f}<br>logit diff %{customdata:.3f}<extra></extra>"))
        verb = "clean into corrupted" if self.direction == "denoise" else "corrupted into clean"
        fig.update_layout(
            title=title or (f"Patching {self.site}, one (layer, position) at a time<br><sup>{verb}; "
                            f"{self.pair.answer_str!r} vs {self.pair.corrupted_answer_str!r}; metric: clean = 1, "
                            "corrupted = 0</sup>"),
            xaxis_title="position", yaxis=dict(title="layer", autorange="reversed"), template="plotly_white",
            width=max(500, 160 + 48 * len(x)), height=max(360, 120 + 16 * len(self.layers)),
            margin=dict(l=10, r=10, t=60, b=10))
        return fig

    def __repr__(self) -> str:
        v = self.values
        i, j = divmod(int((v - self.baseline).abs().argmax()), v.shape[1])
        return (f"ResidualPatchingResult({self.model_name}, {self.site}, {self.direction}, {len(self.layers)} layers x "
                f"{len(self.positions)} positions)\n  {self.pair.describe()}\n  LD clean {self.ld_clean:.3f}, "
                f"corrupted {self.ld_corrupted:.3f}; largest effect: layer {self.layers[i]}, position "
                f"{self.positions[j]} -> {float(v[i, j]):.3f}\n  {self.n_patched_runs} patched runs in "
                f"{self.n_forward} batched forwards, {self.seconds:.1f} s")

    def _repr_html_(self) -> str:
        return _heat_html(self)


@dataclass
class HeadPatchingResult:
    """Normalised metric after patching one head's output z: values (L, H).

    positions: the patched positions (all of them by default, or the last one).
    """

    model_name: str
    pair: PatchingPair
    direction: str
    layers: list[int]
    heads: list[int]
    positions: list[int]
    values: torch.Tensor
    ld: torch.Tensor
    ld_clean: float
    ld_corrupted: float
    n_forward: int
    n_patched_runs: int
    seconds: float

    @property
    def baseline(self) -> float:
        return 0.0 if self.direction == "denoise" else 1.0

    @property
    def effect(self) -> torch.Tensor:
        """(L, H) change of the metric from the unpatched target run."""
        return self.values - self.baseline

    def top(self, k: int = 10) -> pd.DataFrame:
        """The k heads with the largest |effect|."""
        df = self.to_frame()
        return df.reindex(df["effect"].abs().sort_values(ascending=False).index).head(k).reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        e = self.effect
        rows = [{"layer": l, "head": h, "metric": float(self.values[i, j]), "effect": float(e[i, j]),
                 "logit_diff": float(self.ld[i, j])}
                for i, l in enumerate(self.layers) for j, h in enumerate(self.heads)]
        return pd.DataFrame(rows, columns=["layer", "head", "metric", "effect", "logit_diff"])

    def figure(self, title: str | None = None):
        """Heatmap layer x head of the normalised metric (centred on the unpatched baseline)."""
        return _head_heatmap(self.values.numpy(), self.layers, self.heads, self.baseline,
                             title or (f"Per-head patching of z<br><sup>{self.direction}, "
                                       f"{_pos_desc(self.positions, self.pair.n_tokens)}; "
                                       f"{self.pair.answer_str!r} vs {self.pair.corrupted_answer_str!r}; "
                                       "clean = 1, corrupted = 0</sup>"), "metric")

    def __repr__(self) -> str:
        t = self.top(3)
        best = ", ".join(f"L{r.layer}H{r.head} {r.metric:.3f}" for r in t.itertuples())
        return (f"HeadPatchingResult({self.model_name}, {self.direction}, {len(self.layers)} layers x "
                f"{len(self.heads)} heads, {_pos_desc(self.positions, self.pair.n_tokens)})\n  "
                f"{self.pair.describe()}\n  LD clean {self.ld_clean:.3f}, corrupted {self.ld_corrupted:.3f}; "
                f"largest effects: {best}\n  {self.n_patched_runs} patched runs in {self.n_forward} batched "
                f"forwards, {self.seconds:.1f} s")

    def _repr_html_(self) -> str:
        return _heat_html(self) + self.top(10).round(4).to_html(index=False)


def _pos_desc(positions: list[int], n: int) -> str:
    if positions == list(range(n)):
        return "all positions"
    if positions == [n - 1]:
        return "last position"
    return f"positions {positions}"


def _head_heatmap(z: np.ndarray, layers, heads, centre: float, title: str, label: str):
    import plotly.graph_objects as go

    lim = float(np.abs(z - centre).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(h) for h in heads], y=[str(l) for l in layers], colorscale="RdBu", zmid=centre,
        zmin=centre - lim, zmax=centre + lim, colorbar=dict(title=label),
        hovertemplate="L%{y}H%{x}<br>" + label + " %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="head", yaxis=dict(title="layer", autorange="reversed"),
                      template="plotly_white", width=520, height=max(360, 120 + 16 * len(layers)),
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


# ---------------------------------------------------------------------------------- public grids
def _run_cells(model, pair, site, tgt_ids, acts, k, cells, batch_size, ld_target):
    """Patch each cell from acts[l][k] into the target (acts[l][1 - k]); cells whose source and target
    activations are identical (e.g. positions before the subject: causal attention) are no-ops and
    keep the target's logit difference without a run. Returns ((n_cells,) LD, number of runs made).
    """
    def same(c: _Cell) -> bool:
        a, b = acts[c.layer][k][c.positions], acts[c.layer][1 - k][c.positions]
        if c.heads is not None:
            a, b = a[:, list(c.heads)], b[:, list(c.heads)]
        return torch.equal(a, b)

    source = {l: a[k] for l, a in acts.items()}
    todo = [i for i, c in enumerate(cells) if not same(c)]
    ld = torch.full((len(cells),), float(ld_target))
    if todo:
        ld[todo] = patched_logit_diffs(model, pair, site, tgt_ids, source, [cells[i] for i in todo], batch_size)
    return ld, len(todo)


def patch_residual(model, pair: PatchingPair, site: str = "resid_pre", layers=None, positions=None,
                   direction: str = "denoise", batch_size: int = 32) -> ResidualPatchingResult:
    """Patch one (layer, position) of ``site`` at a time: (L, P) normalised metric.

    site: "resid_pre" (default: the residual entering block l) or "resid_mid", "resid_post",
    "attn_out", "mlp_out". layers: None for all. positions: None for all, else ints.
    Cost: one forward of the two prompts plus ceil(n / batch_size) batched forwards, n = the
    L * P cells minus those where clean and corrupted activations are identical (with causal
    attention, every position before the first swapped token), which are no-ops and not run.
    """
    if site not in RESID_SITES:
        raise InputError(f"patch_residual patches one of {', '.join(RESID_SITES)}, got {site!r}; use patch_heads "
                         "for per-head outputs.")
    t0 = time.perf_counter()
    layer_list = resolve_layers(layers, model.info.n_layers)
    pos = patch_positions(positions, pair.n_tokens).tolist()
    _, tgt_ids = _source_target(pair, direction)
    ld_clean, ld_corr, acts = _baselines(model, pair, site, layer_list)
    norm = _normaliser(ld_clean, ld_corr)
    k = 0 if direction == "denoise" else 1
    cells = [_Cell(l, torch.tensor([p])) for l in layer_list for p in pos]
    ld, n_run = _run_cells(model, pair, site, tgt_ids, acts, k, cells, batch_size, (ld_clean, ld_corr)[1 - k])
    ld = ld.reshape(len(layer_list), len(pos))
    return ResidualPatchingResult(model.info.name, pair, site, direction, layer_list, pos, (ld - ld_corr) / norm, ld,
                                  ld_clean, ld_corr, 1 + -(-n_run // batch_size), n_run, time.perf_counter() - t0)


def patch_heads(model, pair: PatchingPair, layers=None, heads=None, positions="all", direction: str = "denoise",
                batch_size: int = 64) -> HeadPatchingResult:
    """Patch one head's output z (before the output projection) at a time: (L, H) normalised metric.

    positions: "all" (default: the head's output at every position), "last" (only the final
    position, where the answer is read) or a list of ints. layers/heads: None for all.
    Cost: one forward of the two prompts plus ceil(L * H / batch_size) batched forwards (heads whose
    clean and corrupted z agree at the patched positions are no-ops and not run); the "naive" count
    is L * H patched runs (270 on SmolLM2).
    """
    t0 = time.perf_counter()
    layer_list = resolve_layers(layers, model.info.n_layers)
    head_list = list(range(model.info.n_heads)) if heads is None else model.check_heads(heads)
    pos = patch_positions(positions, pair.n_tokens)
    _, tgt_ids = _source_target(pair, direction)
    ld_clean, ld_corr, acts = _baselines(model, pair, "z", layer_list)
    norm = _normaliser(ld_clean, ld_corr)
    k = 0 if direction == "denoise" else 1
    cells = [_Cell(l, pos, (h,)) for l in layer_list for h in head_list]
    ld, n_run = _run_cells(model, pair, "z", tgt_ids, acts, k, cells, batch_size, (ld_clean, ld_corr)[1 - k])
    ld = ld.reshape(len(layer_list), len(head_list))
    return HeadPatchingResult(model.info.name, pair, direction, layer_list, head_list, pos.tolist(),
                              (ld - ld_corr) / norm, ld, ld_clean, ld_corr, 1 + -(-n_run // batch_size), n_run,
                              time.perf_counter() - t0)


__all__ = ["PatchingPair", "patching_pair", "corrupt_subject", "ActivationPatch", "patch_residual", "patch_heads",
           "ResidualPatchingResult", "HeadPatchingResult", "patched_logit_diffs", "DIRECTIONS", "RESID_SITES"]
