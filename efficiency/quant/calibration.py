"""Calibration data and the one-pass, layer-sequential harvest of linear inputs.

``calibration_windows(model, texts, n_samples, seq_len)``: the texts are joined (blank line between
documents), tokenized once, and cut into ``n_samples`` windows of ``seq_len`` tokens at evenly spaced
offsets (deterministic; windows overlap only when the texts are shorter than n_samples · seq_len).
``seq_len=None`` (the methods' default) means ``DEFAULT_SEQ_LEN`` tokens, shortened to the model's context
when that is shorter, and to the tokens the texts hold when they hold fewer (with a warning); an explicit
``seq_len`` longer than either is an error.
Each window starts mid-text, so its first token becomes the attention sink, as in any prompt to SmolLM2.

``sequential_inputs(model, ids, handle)``: one forward pass of all windows (a single batch) with hooks on
the input of every linear, in execution order: ``attn_in`` (q, k, v; times the ln1 gain and plus its bias,
i.e. what the projections receive), ``z`` (o_proj, heads concatenated), ``mlp_in`` (gate, up) and
``mlp_hidden`` (down_proj, through the module's online transform when it has one). Each hook calls
``handle(layer, kinds, X)`` with X (tokens, in) *before* those linears run, so a handler that replaces
their weights through an open editor makes the rest of the pass (the same layer's later linears and every
later layer) see the edited weights: GPTQ's "true-sequential" order in one pass, with no block-by-block
re-execution. Memory is that of one forward on the whole batch (keep n_samples · seq_len modest).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from workbench.errors import InputError
from workbench.hook_names import hook_name

if TYPE_CHECKING:
    from workbench.model import Model

DEFAULT_SEQ_LEN = 512  # tokens per window when a method's seq_len is None (fitted to the model's context and the texts)

# hook short name -> the linears reading it, in the order they run
SITES: dict[str, tuple[str, ...]] = {"attn_in": ("q", "k", "v"), "z": ("o",), "mlp_in": ("gate", "up"),
                                     "mlp_hidden": ("down",)}


def check_texts(texts, who: str) -> list[str]:
    if texts is None:
        raise InputError(f"{who} calibrates on text: pass texts, e.g. the bundled corpus "
                         "(workbench.texts.load_corpus()).")
    if isinstance(texts, str):
        texts = [texts]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError(f"{who}: the calibration corpus is empty (no non-empty text). Pass a list of texts, e.g. "
                         "workbench.texts.load_corpus().")
    return texts


def calibration_windows(model: "Model", texts: Sequence[str], n_samples: int, seq_len: int | None,
                        who: str = "calibration") -> torch.Tensor:
    """(n_samples, seq_len) token ids on the model's device (module docstring); seq_len None: the default length,
    fitted to the model's context and to the texts."""
    texts = check_texts(texts, who)
    for name, v in (("n_samples", n_samples), ("seq_len", seq_len)):
        if v is None and name == "seq_len":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{who}: {name} must be a positive integer, got {v!r}.")
    if seq_len is not None and seq_len > model.info.n_ctx:
        raise InputError(f"{who}: seq_len={seq_len} exceeds the model's context of {model.info.n_ctx}; pass "
                         f"seq_len<={model.info.n_ctx} (or leave it None to fit the context).")
    ids = model.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, model.info.n_ctx)
        if 2 <= len(ids) < seq_len:
            warnings.warn(f"{who}: the calibration texts hold {len(ids)} tokens, fewer than the default window of "
                          f"{seq_len}; calibrating on windows of {len(ids)} tokens. Pass more text for full windows.",
                          stacklevel=3)
            seq_len = len(ids)
    if len(ids) < seq_len:
        raise InputError(f"{who}: the calibration texts hold {len(ids)} tokens, fewer than one window of "
                         f"seq_len={seq_len}. Pass more text or a shorter seq_len.")
    step = (len(ids) - seq_len) // max(n_samples - 1, 1)
    rows = [ids[i * step: i * step + seq_len] for i in range(n_samples)]
    return torch.tensor(rows, dtype=torch.long, device=model.device)


def sequential_inputs(model: "Model", ids: torch.Tensor, handle: Callable[[int, tuple[str, ...], torch.Tensor], None],
                      transforms: dict | None = None, exclude_first: bool = False) -> None:
    """Run ``ids`` (N, T) once, calling ``handle(layer, kinds, X (N·T', in) float32)`` at every linear input
    before the linears run (module docstring). transforms: {layer: module} applied to down_proj's input.
    exclude_first: leave each window's first token (the attention sink) out of X."""
    transforms = transforms or {}
    W = model.weights()
    kinds = set(model.linear_kinds)
    hooks = []
    for l in range(model.info.n_layers):
        lw = W.layers[l]
        for site, site_kinds in SITES.items():
            use = tuple(k for k in site_kinds if k in kinds)
            if not use:
                continue
            norm = lw.ln1 if site == "attn_in" else lw.ln2 if site == "mlp_in" else None

            def fn(x, _name, l=l, use=use, norm=norm, site=site):
                x = x.detach()
                if exclude_first:
                    x = x[:, 1:]
                if site == "z":
                    x = x.reshape(*x.shape[:2], -1)
                if norm is not None:
                    if norm.w is not None:
                        x = x * norm.w.to(x.dtype)
                    if norm.b is not None:
                        x = x + norm.b.to(x.dtype)
                if site == "mlp_hidden" and l in transforms:
                    x = transforms[l](x)
                handle(l, use, x.reshape(-1, x.shape[-1]).float())
                return None

            hooks.append((hook_name(site, l), fn))
    with torch.no_grad(), model.session(hooks=hooks) as s:
        s.forward(ids, stop_at_layer=model.info.n_layers)
