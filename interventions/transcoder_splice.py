"""Transcoder splicing: replace an MLP by its transcoder, or clamp / ablate one transcoder feature.

A transcoder for layer l (SAELens ``Transcoder``, ``SkipTranscoder``, ``JumpReLUTranscoder`` or a
subclass) reads ``mlp_in`` = ``blocks.{l}.ln2.hook_normalized`` (B, T, d_model), the normalized MLP
input before the norm's gain, and predicts ``mlp_out`` = ``blocks.{l}.hook_mlp_out`` (B, T, d_model).

- ``SpliceTranscoder({l: tc, ...})`` sets mlp_out^l := TC_l(mlp_in^l). With ``with_error=True`` it
  adds the (detached) error term mlp_out − TC(mlp_in), so the forward value is unchanged while
  gradients flow through the transcoder only (the "replacement model with error nodes").
- ``FeatureClamp(layer, tc, feature, value)`` sets feature i to ``value`` by adding
  (value − z_i) · W_dec[i] to mlp_out at the chosen positions, z = tc.encode(mlp_in); the rest of the
  MLP output (including the transcoder's error) is kept. ``FeatureAblate`` is the clamp to 0.

The hooks keep the latest ``mlp_in`` of the forward in a closure; both hooks fire in the same
forward (mlp_in before mlp_out), so this also works step by step during generation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch

from workbench.hook_names import hook_name, layer_of_hook
from workbench.errors import InputError
from workbench.intervention import Intervention

if TYPE_CHECKING:
    from workbench.model import Model



def _hook_layer(tc) -> int | None:
    """Layer named by the transcoder's SAELens metadata hook name (``blocks.{l}.…``), if any."""
    md = getattr(getattr(tc, "cfg", None), "metadata", None)
    if md is None or not hasattr(md, "get"):
        return None
    hl = md.get("hook_layer")
    if isinstance(hl, int) and not isinstance(hl, bool):
        return hl
    name = md.get("hook_name")
    return layer_of_hook(name) if isinstance(name, str) else None


def _fingerprint(tc) -> str | None:
    md = getattr(getattr(tc, "cfg", None), "metadata", None)
    if md is None or not hasattr(md, "get"):
        return None
    return md.get("model_fingerprint") or md.get("fingerprint")


def check_transcoder(model: "Model", layer, tc) -> int:
    """Check that ``tc`` fits ``model`` at ``layer``; returns the normalized layer index.

    Raises InputError for a non-transcoder, d_in/d_out other than d_model, a SAELens hook name of
    another layer, a model fingerprint recorded in the metadata that is not this model's, or an
    input normalization other than "none" (the attribution needs the encoder to be linear).
    """
    layer = model.check_layer(layer)
    need = ("W_enc", "b_enc", "W_dec", "b_dec")
    if not all(hasattr(tc, a) for a in need) or not hasattr(tc, "encode"):
        raise InputError(f"Expected a transcoder for layer {layer} (an SAELens Transcoder with W_enc, b_enc, "
                         f"W_dec, b_dec and encode()), got {type(tc).__name__}.")
    d = model.info.d_model
    d_in, d_sae = tc.W_enc.shape
    if d_in != d or tc.W_dec.shape[1] != d or tc.W_dec.shape[0] != d_sae:
        raise InputError(f"Transcoder for layer {layer} has W_enc {tuple(tc.W_enc.shape)} and W_dec "
                         f"{tuple(tc.W_dec.shape)}, but this model's mlp_in and mlp_out have d_model={d}. "
                         "Was it trained on another model?")
    hl = _hook_layer(tc)
    if hl is not None and hl != layer:
        raise InputError(f"This transcoder was trained on layer {hl} (hook {tc.cfg.metadata.get('hook_name')!r}), "
                         f"not layer {layer}. Pass it under its own layer.")
    fp = _fingerprint(tc)
    if fp is not None and fp != model.fingerprint:
        raise InputError(f"This transcoder was trained on a model with fingerprint {fp!r}, not on this model "
                         f"({model.fingerprint!r}). Load or train a transcoder for this model.")
    norm = getattr(getattr(tc, "cfg", None), "normalize_activations", "none")
    if norm not in (None, "none"):
        raise InputError(f"Transcoder for layer {layer} uses normalize_activations={norm!r}; only 'none' is "
                         "supported (fold the normalization into the weights first).")
    return layer


def check_transcoders(model: "Model", transcoders) -> dict[int, object]:
    """{layer: transcoder} checked with ``check_transcoder``; layers normalized, sorted."""
    if not isinstance(transcoders, Mapping) or not transcoders:
        raise InputError("Pass transcoders as a non-empty dict {layer: transcoder}.")
    out = {}
    for l, tc in transcoders.items():
        out[check_transcoder(model, l, tc)] = tc
    return dict(sorted(out.items()))


def transcoder_out(tc, x: torch.Tensor) -> torch.Tensor:
    """TC(x) in x's dtype: decode(encode(x)) plus the skip connection if any. x: (..., d_model)."""
    return tc(x.to(tc.W_enc.dtype)).to(x.dtype)


def _positions(positions) -> list[int] | None:
    if positions is None:
        return None
    pos = [positions] if isinstance(positions, int) else list(positions)
    if not pos or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos):
        raise InputError(f"positions must be None, an int or a list of ints, got {positions!r}.")
    return pos


class SpliceTranscoder(Intervention):
    """Replace mlp_out at each layer of ``transcoders`` ({layer: tc}) by TC(mlp_in).

    with_error=True keeps the error term: mlp_out = TC(mlp_in) + (mlp_out − TC(mlp_in)).detach(),
    the same value as the clean run up to rounding, with gradients only through the transcoder.
    """

    def __init__(self, transcoders, with_error: bool = False):
        if not isinstance(transcoders, Mapping) or not transcoders:
            raise InputError("SpliceTranscoder takes a non-empty dict {layer: transcoder}.")
        self.transcoders = dict(transcoders)
        self.with_error = bool(with_error)

    def validate(self, model):
        check_transcoders(model, self.transcoders)

    def hooks(self, model):
        out = []
        for layer, tc in check_transcoders(model, self.transcoders).items():
            store: dict[str, torch.Tensor] = {}

            def keep(x, _name, store=store):
                store["x"] = x
                return None

            def replace(y, _name, store=store, tc=tc):
                recon = transcoder_out(tc, store.pop("x"))
                return recon + (y - recon).detach() if self.with_error else recon

            out += [(hook_name("mlp_in", layer), keep), (hook_name("mlp_out", layer), replace)]
        return out

    def __repr__(self):
        return f"SpliceTranscoder(layers {sorted(self.transcoders)}{', with error' if self.with_error else ''})"


class FeatureClamp(Intervention):
    """Set transcoder feature(s) of ``layer`` to ``value`` by editing mlp_out along their decoder rows.

    mlp_out += Σ_i (value − z_i) · W_dec[i] at ``positions`` (None: all), z = tc.encode(mlp_in).
    ``feature``: an index or a list of indices; ``value``: a float (the same for all of them).
    ``positions`` index each forward pass's tokens: during cached generation every decode step is a
    one-token forward, so ``positions=[-1]`` clamps the prompt's last token and every new token.
    """

    def __init__(self, layer: int, transcoder, feature, value: float, positions=None):
        self.layer, self.transcoder = layer, transcoder
        feats = [feature] if isinstance(feature, int) else list(feature)
        if not feats or not all(isinstance(f, int) and not isinstance(f, bool) for f in feats):
            raise InputError(f"feature must be an int or a list of ints, got {feature!r}.")
        self.features = feats
        try:
            self.value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"value must be a number, got {value!r}.") from None
        self.positions = _positions(positions)

    def validate(self, model):
        check_transcoder(model, self.layer, self.transcoder)
        n = self.transcoder.W_dec.shape[0]
        bad = [f for f in self.features if not 0 <= f < n]
        if bad:
            raise InputError(f"Feature {bad[0]} is out of range: this transcoder has {n} features (0..{n - 1}).")

    def hooks(self, model):
        layer = check_transcoder(model, self.layer, self.transcoder)
        tc, feats = self.transcoder, torch.tensor(self.features)
        store: dict[str, torch.Tensor] = {}

        def keep(x, _name):
            store["x"] = x
            return None

        def edit(y, _name):
            x = store.pop("x")
            z = tc.encode(x.to(tc.W_enc.dtype))[..., feats]  # (B, T, F)
            delta = ((self.value - z) @ tc.W_dec[feats]).to(y.dtype)  # (B, T, d)
            if self.positions is not None:
                t = y.shape[1]
                bad = [p for p in self.positions if not -t <= p < t]
                if bad:
                    raise InputError(f"Position {bad[0]} is out of range for a {t}-token input.")
                mask = torch.zeros(t, 1, dtype=y.dtype, device=y.device)
                mask[self.positions] = 1
                delta = delta * mask
            return y + delta

        return [(hook_name("mlp_in", layer), keep), (hook_name("mlp_out", layer), edit)]

    def __repr__(self):
        where = "" if self.positions is None else f" at positions {self.positions}"
        return f"FeatureClamp(L{self.layer} features {self.features} = {self.value:g}{where})"


class FeatureAblate(FeatureClamp):
    """Zero-ablate transcoder feature(s): ``FeatureClamp`` with value 0."""

    def __init__(self, layer: int, transcoder, feature, positions=None):
        super().__init__(layer, transcoder, feature, 0.0, positions)

    def __repr__(self):
        where = "" if self.positions is None else f" at positions {self.positions}"
        return f"FeatureAblate(L{self.layer} features {self.features}{where})"


__all__ = ["SpliceTranscoder", "FeatureClamp", "FeatureAblate", "check_transcoder", "check_transcoders",
           "transcoder_out"]
