"""Which transcoders the lab reads features with, checked against the model.

``transcoders="auto"`` (the default) uses the shipped SmolLM2 transcoders when the model is the one they
were trained on and otherwise leaves the features panel out with a note; "shipped" insists on them
(an error on another model); a dict {layer: SAELens Transcoder} is checked (model fingerprint in its
metadata, layer, d_in/d_out) and refused when it was made for another model; None leaves the panel out.
"""
from __future__ import annotations

from workbench.errors import InputError

_SHIPPED: dict[str, dict] = {}


def check_transcoder(model, tc, layer: int) -> None:
    """InputError when ``tc`` was not made for ``model`` at ``layer`` (fingerprint, layer, dimensions)."""
    cfg = getattr(tc, "cfg", None)
    if cfg is None or not callable(getattr(tc, "encode", None)):
        raise InputError(f"Transcoder for layer {layer}: expected an SAELens Transcoder, got {type(tc).__name__}.")
    d = model.info.d_model
    d_out = getattr(cfg, "d_out", cfg.d_in)
    if cfg.d_in != d or d_out != d:
        raise InputError(f"Transcoder for layer {layer} maps {cfg.d_in} -> {d_out} dimensions, but {model.info.name}'s "
                         f"MLP input and output have d_model={d}: it was made for another model.")
    md = getattr(cfg, "metadata", None)
    get = (lambda k: md.get(k)) if md is not None and hasattr(md, "get") else (lambda k: getattr(md, k, None))  # noqa: E731
    fp = get("model_fingerprint") if md is not None else None
    if fp is not None and fp != model.fingerprint:
        raise InputError(f"Transcoder for layer {layer} was trained on another model (fingerprint {fp}, model "
                         f"{get('model_name')!r}); {model.info.name}'s fingerprint is {model.fingerprint}. Train one for "
                         "this model (probes.transcoders.train_transcoder) or pass transcoders=None.")
    hl = get("hook_layer") if md is not None else None
    if hl is not None and int(hl) != int(layer):
        raise InputError(f"Transcoder given for layer {layer} was trained on layer {hl}.")
    model.check_layer(layer)


def resolve_transcoders(model, transcoders) -> tuple[dict, str]:
    """({layer: transcoder}, note) for ``transcoders`` ("auto", "shipped", None or a dict); see the module docstring."""
    if transcoders is None:
        return {}, "features panel off (transcoders=None)"
    if isinstance(transcoders, str):
        if transcoders not in ("auto", "shipped"):
            raise InputError(f"transcoders must be 'auto', 'shipped', None or {{layer: Transcoder}}, got {transcoders!r}.")
        from probes.transcoders import load_pretrained

        if model.fingerprint not in _SHIPPED:
            try:
                _SHIPPED[model.fingerprint] = load_pretrained(model)
            except InputError as e:
                if transcoders == "shipped":
                    raise
                return {}, f"no features panel: the shipped transcoders do not fit this model ({e})"
        return dict(_SHIPPED[model.fingerprint]), "shipped transcoders"
    if not isinstance(transcoders, dict) or not transcoders:
        raise InputError("transcoders must be 'auto', 'shipped', None or a non-empty dict {layer: Transcoder}.")
    for layer, tc in transcoders.items():
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InputError(f"transcoders: keys must be layer indices, got {layer!r}.")
        check_transcoder(model, tc, layer)
    return dict(sorted(transcoders.items())), "user transcoders"


def n_features(tcs: dict) -> int:
    return sum(int(tc.cfg.d_sae) for tc in tcs.values())


__all__ = ["resolve_transcoders", "check_transcoder"]
