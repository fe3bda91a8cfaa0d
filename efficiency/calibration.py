"""Calibration helpers shared by the sparsity, pruning, low-rank and latent-attention methods.

- ``token_windows(model, texts, window, n_windows)``: the calibration texts joined and cut into
  (N, window) token windows (what ShortGPT, SLEB and SVD-LLM score on); an empty corpus is refused.
- ``window_nll(model, windows)``: summed next-token negative log-likelihood of the windows under the
  interventions in force (SLEB's loss).
- ``record_linear_inputs(model, windows, sites, on_input)``: one pass over the windows that hands the
  input of chosen linears to ``on_input(layer, kind, x (n, in))`` (TEAL histograms, SVD-LLM
  covariances), through temporary ``replace_linear`` recorders that compute exactly what the linear
  computes. Only one kind per shared input needs recording: q/k/v read the same input, so do gate/up.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from workbench.errors import InputError

#: linears that read the same input (the first of each group is recorded for the group)
SHARED_INPUTS: dict[str, str] = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate", "down": "down"}


def check_texts(texts, what: str = "calibration") -> list[str]:
    """A non-empty list of non-empty strings, or a clear error."""
    if isinstance(texts, str):
        texts = [texts]
    if texts is None:
        raise InputError(f"No {what} texts given: pass a non-empty list of strings (e.g. the bundled corpus).")
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError(f"The {what} corpus is empty: pass a non-empty list of non-empty strings "
                         "(e.g. the bundled corpus, workbench.texts.load_corpus()).")
    return texts


def token_windows(model, texts: Sequence[str], window: int = 256, n_windows: int | None = None) -> torch.Tensor:
    """(N, window) token ids: ``texts`` joined with blank lines, tokenized once, cut into consecutive windows.

    Each window starts a fresh context (its position 0 is an ordinary token that becomes the attention
    sink, as in any forward). ``n_windows`` caps N (the first windows are kept); fewer tokens than one
    window give a single shorter window.
    """
    texts = check_texts(texts)
    if not isinstance(window, int) or isinstance(window, bool) or not 2 <= window <= model.info.n_ctx:
        raise InputError(f"window must be an integer in [2, {model.info.n_ctx}], got {window!r}.")
    if n_windows is not None and (not isinstance(n_windows, int) or isinstance(n_windows, bool) or n_windows < 1):
        raise InputError(f"n_windows must be a positive integer or None, got {n_windows!r}.")
    if n_windows is not None:  # tokenize only what the windows need (about 4 characters per token; 3x margin)
        need, kept = 12 * window * n_windows, []
        for t in texts:
            kept.append(t)
            need -= len(t)
            if need <= 0:
                break
        texts = kept
    ids = model.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise InputError("The calibration corpus has fewer than 2 tokens.")
    n = max(1, len(ids) // window)
    if n_windows is not None:
        n = min(n, n_windows)
    if len(ids) < window:
        return torch.tensor([ids], dtype=torch.long, device=model.device)
    return torch.tensor(ids[: n * window], dtype=torch.long, device=model.device).view(n, window)


def window_nll(model, windows: torch.Tensor, batch_size: int = 4, skip_first: int = 0) -> tuple[float, int]:
    """(summed next-token NLL in nats, number of scored tokens) of (N, T) ``windows`` under the
    interventions in force. ``skip_first`` leaves the first predictions of each window unscored."""
    total, count = 0.0, 0
    with model.session() as s:
        for i in range(0, windows.shape[0], batch_size):
            ids = windows[i: i + batch_size]
            logits = s.forward(ids)
            lp = torch.log_softmax(logits[:, skip_first:-1].double(), -1)
            tgt = ids[:, skip_first + 1:]
            total += float(-lp.gather(-1, tgt[..., None]).sum())
            count += tgt.numel()
    return total, count


def window_perplexity(model, windows: torch.Tensor, batch_size: int = 4) -> float:
    nll, n = window_nll(model, windows, batch_size)
    return math.exp(nll / max(n, 1))


class InputRecorder(nn.Module):
    """Computes exactly what ``inner`` computes and hands its input, flattened to (n, in), to ``callback``."""

    def __init__(self, inner: nn.Module, callback: Callable[[torch.Tensor], None]):
        super().__init__()
        self.inner = inner
        self._callback = callback

    @property
    def weight(self):
        return self.inner.weight

    @property
    def bias(self):
        return self.inner.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._callback(x.detach().reshape(-1, x.shape[-1]))
        return self.inner(x)


@contextmanager
def recording_inputs(model, sites: Iterable[tuple[int, str]], on_input: Callable[[int, str, torch.Tensor], None]):
    """Inside the block, every forward hands the input of each (layer, kind) linear to ``on_input``."""
    with model.edit_weights(label="record linear inputs") as ed:
        for layer, kind in sites:
            inner = model.linear_module(layer, kind)
            ed.replace_linear(layer, kind, InputRecorder(inner, lambda x, l=layer, k=kind: on_input(l, k, x)))
        yield


def record_linear_inputs(model, windows: torch.Tensor, sites: Iterable[tuple[int, str]],
                         on_input: Callable[[int, str, torch.Tensor], None], batch_size: int = 4,
                         skip_first: int = 0) -> int:
    """Run ``windows`` (N, T) once, feeding each (layer, kind) linear's input (n, in) to ``on_input``;
    ``skip_first`` drops the first positions of every window (e.g. 1: leave the attention-sink token out).
    Returns the number of tokens seen per linear."""
    sites = list(sites)
    if not sites:
        raise InputError("record_linear_inputs(): no (layer, kind) sites given.")
    t = windows.shape[1]

    def cb(layer, kind, x):
        if skip_first:
            x = x.view(-1, t, x.shape[-1])[:, skip_first:].reshape(-1, x.shape[-1])
        on_input(layer, kind, x)

    with recording_inputs(model, sites, cb), model.session() as s:
        for i in range(0, windows.shape[0], batch_size):
            s.forward(windows[i: i + batch_size])
    return windows.shape[0] * (t - skip_first)
