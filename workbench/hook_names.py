"""Canonical capture names and the TransformerLens hook each one reads.

Short names (``"resid_post"``, ``"pattern"``...) expand over layers; full TransformerLens names
(``"blocks.3.attn.hook_pattern"``) are accepted as they are. Each entry gives the tensor layout
as letters, used by the memory guard and by position selection:

    b batch   t position   q query position   k key position   d d_model   h query heads
    g KV heads   e d_head   f d_mlp   1 singleton

Positions are selected on the ``t`` or ``q`` axis; ``k`` always spans the whole prompt.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .errors import HookError


@dataclass(frozen=True)
class HookSpec:
    short: str
    template: str  # TransformerLens hook name, with {l} for the layer
    layout: str
    doc: str
    derived_from: str | None = None  # computed in the hook of another name (not a hook itself)

    @property
    def per_layer(self) -> bool:
        return "{l}" in self.template

    def full_name(self, layer: int | None) -> str:
        return self.template.format(l=layer)


_SPECS = [
    HookSpec("embed", "hook_embed", "btd", "token embeddings"),
    HookSpec("pos_embed", "hook_pos_embed", "btd", "learned position embeddings (GPT-2-like models only)"),
    HookSpec("resid_pre", "blocks.{l}.hook_resid_pre", "btd", "residual stream entering block l"),
    HookSpec("attn_norm_scale", "blocks.{l}.ln1.hook_scale", "bt1", "normalization scale before attention"),
    HookSpec("attn_in", "blocks.{l}.ln1.hook_normalized", "btd",
             "attention input divided by its norm scale, before the norm's gain (and bias)"),
    HookSpec("q", "blocks.{l}.attn.hook_q", "bthe", "queries before RoPE"),
    HookSpec("k", "blocks.{l}.attn.hook_k", "btge", "keys before RoPE (KV heads, GQA not expanded)"),
    HookSpec("v", "blocks.{l}.attn.hook_v", "btge", "values (KV heads, GQA not expanded)"),
    HookSpec("q_rot", "blocks.{l}.attn.hook_rot_q", "bthe", "queries after RoPE (rotary models only)"),
    HookSpec("k_rot", "blocks.{l}.attn.hook_rot_k", "btge", "keys after RoPE (rotary models only)"),
    HookSpec("scores", "blocks.{l}.attn.hook_attn_scores", "bhqk", "attention scores before softmax"),
    HookSpec("pattern", "blocks.{l}.attn.hook_pattern", "bhqk", "attention pattern per head"),
    HookSpec("z", "blocks.{l}.attn.hook_z", "bthe", "per-head attention output before the output projection"),
    HookSpec("head_out", "blocks.{l}.attn.hook_z", "bthd", "per-head output written to the residual (z_h W_O[h])",
             derived_from="z"),
    HookSpec("attn_out", "blocks.{l}.hook_attn_out", "btd",
             "attention output (sum over heads plus bias; after the post-attention norm where there is one)"),
    HookSpec("resid_mid", "blocks.{l}.hook_resid_mid", "btd", "residual stream between attention and MLP"),
    HookSpec("mlp_norm_scale", "blocks.{l}.ln2.hook_scale", "bt1", "normalization scale before the MLP"),
    HookSpec("mlp_in", "blocks.{l}.ln2.hook_normalized", "btd",
             "MLP input divided by its norm scale, before the norm's gain (and bias)"),
    HookSpec("mlp_pre", "blocks.{l}.mlp.hook_pre", "btf", "MLP pre-activation (the gate, for gated MLPs)"),
    HookSpec("mlp_hidden", "blocks.{l}.mlp.hook_post", "btf", "MLP hidden activation (act(gate)*up for SwiGLU)"),
    HookSpec("attn_post_norm_scale", "blocks.{l}.ln1_post.hook_scale", "bt1",
             "scale of the norm after attention (models with post norms only, e.g. Gemma 2/3)"),
    HookSpec("mlp_out", "blocks.{l}.hook_mlp_out", "btd", "MLP output (after the post-MLP norm where there is one)"),
    HookSpec("mlp_post_norm_scale", "blocks.{l}.ln2_post.hook_scale", "bt1",
             "scale of the norm after the MLP (models with post norms only, e.g. Gemma 2/3)"),
    HookSpec("resid_post", "blocks.{l}.hook_resid_post", "btd", "residual stream leaving block l"),
    HookSpec("final_norm_scale", "ln_final.hook_scale", "bt1", "final normalization scale"),
    HookSpec("final_resid", "ln_final.hook_normalized", "btd",
             "final residual divided by its norm scale, before the gain (and bias); the unembedding reads unembed_in"),
    HookSpec("unembed_in", "unembed.hook_in", "btd",
             "what the unembedding reads: the final norm's output, gain included (logits before any soft-cap = "
             "unembed_in · W_U + b_U)"),
]
SPECS: dict[str, HookSpec] = {s.short: s for s in _SPECS}
RESIDUAL = ("resid_pre", "resid_mid", "resid_post")
ATTENTION_MAPS = ("scores", "pattern")


def hook_name(short: str, layer: int | None = None) -> str:
    """The full TransformerLens hook name of a canonical short name: ``hook_name("resid_post", 3)`` ->
    ``"blocks.3.hook_resid_post"``; ``hook_name("final_resid")`` -> ``"ln_final.hook_normalized"``.

    The one source of hook names: code never spells ``f"blocks.{l}..."`` itself. ``head_out`` (a
    capture derived from ``z``) is not a hook of its own and is refused.
    """
    spec = SPECS.get(short)
    if spec is None:
        raise HookError(f"Unknown short hook name {short!r}.{suggest(str(short), SPECS)} Short names: {', '.join(SPECS)}.")
    if spec.derived_from:
        raise HookError(f"{short!r} is computed from {spec.derived_from!r}, not a hook of its own; "
                        f"use hook_name({spec.derived_from!r}, layer).")
    if spec.per_layer:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise HookError(f"{short!r} is per layer: give a non-negative layer index, got {layer!r}.")
        return spec.full_name(layer)
    if layer is not None:
        raise HookError(f"{short!r} is not per layer; call hook_name({short!r}) without a layer.")
    return spec.template


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def spec_for_full_name(full: str) -> tuple[HookSpec | None, int | None]:
    """Map a full TransformerLens hook name back to its spec and layer (``(None, None)`` if unknown)."""
    for spec in _SPECS:
        if spec.derived_from:
            continue
        if spec.per_layer:
            pre, post = spec.template.split("{l}")
            if full.startswith(pre) and full.endswith(post):
                mid = full[len(pre): len(full) - len(post)]
                if mid.isdigit():
                    return spec, int(mid)
        elif full == spec.template:
            return spec, None
    return None, None


def layer_of_hook(full: str) -> int | None:
    """The block index of a full per-block hook name (``"blocks.8.hook_mlp_out"`` -> 8), else None."""
    m = re.match(r"blocks\.(\d+)\.", full)
    return int(m.group(1)) if m else None


def unknown_name_error(name: str, available, dormant=frozenset()) -> HookError:
    if name in dormant:
        return HookError(f"Hook {name!r} exists in TransformerLens but never fires on this model (a "
                         "compatibility point this architecture does not compute). Pick a name from "
                         "model.hook_names().")
    return HookError(
        f"Unknown hook name {name!r}.{suggest(name, list(SPECS) + list(available))} "
        f"Short names: {', '.join(SPECS)}; or a full TransformerLens name from model.hook_names()."
    )
