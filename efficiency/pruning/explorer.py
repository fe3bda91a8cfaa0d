"""``pruning_explorer``: pick a layer-dropping method and a ratio, see which layers go and what changes."""
from __future__ import annotations

from ..explorer_common import method_explorer
from ..registry import get_method

DEFAULT_METHODS = ("shortgpt", "sleb", "laco", "attn_drop")
DEFAULT_RATIOS = (0.1, 0.2, 0.3)


def pruning_explorer(model, prompt: str, texts, methods=DEFAULT_METHODS, ratios=DEFAULT_RATIOS, knobs: dict | None = None):
    """Method dropdown and ratio slider (see ``efficiency.explorer_common.method_explorer``). Methods are
    calibrated on ``texts`` on first view (SLEB once at the largest ratio: its removal order is nested).
    The per-layer panel shows what is dropped: 1 = the block, 0.5 = its attention, 0.25 = its MLP.
    ``knobs``: {method name: extra knobs} (e.g. {"sleb": {"n_windows": 2}})."""
    knobs = dict(knobs or {})
    built: dict = {}

    def method(name, ratio):
        if (name, ratio) not in built:
            if name == "sleb":
                top = max(ratios)
                if ("sleb", top) not in built:
                    m = get_method("sleb", ratio=top, **knobs.get("sleb", {}))
                    m.prepare(model, texts)
                    built["sleb", top] = m
                built[name, ratio] = built["sleb", top].at_ratio(ratio)
            else:
                m = get_method(name, ratio=ratio, **knobs.get(name, {}))
                m.prepare(model, texts)
                built[name, ratio] = m
        return built[name, ratio]

    def detail(model_, name, ratio, _iv):
        m = method(name, ratio)
        vals = [0.0] * model_.info.n_layers
        for l in m.dropped_mlp:
            vals[l] = 0.25
        for l in m.dropped_attn:
            vals[l] = 0.5
        for l in m.dropped_blocks:
            vals[l] = 1.0
        return vals, "dropped (1 block, 0.5 attention, 0.25 MLP)"

    box = method_explorer(model, prompt, lambda n, r: method(n, r).intervention(model), methods, ratios, detail,
                          strength_name="ratio")
    box.method = method
    return box
