"""``lowrank_explorer``: SVD-LLM (uniform or loss-allocated ranks) or LASER on one matrix, by strength."""
from __future__ import annotations

from ..explorer_common import method_explorer
from ..registry import get_method

DEFAULT_RATIOS = (0.1, 0.2, 0.4, 0.6)


def lowrank_explorer(model, prompt: str, texts, ratios=DEFAULT_RATIOS, laser_layer: int | None = None,
                     laser_kind: str = "down", knobs: dict | None = None):
    """Method dropdown ("svd_llm", "svd_llm (loss)", "laser L<l>.<kind>") and a compression slider: for
    SVD-LLM the fraction of parameters removed per matrix, for LASER the fraction of the matrix's rank
    removed (rho = 1 - ratio). The per-layer panel shows the fraction of each layer's projection
    parameters kept."""
    knobs = dict(knobs or {})
    layer = model.info.n_layers - 2 if laser_layer is None else model.check_layer(laser_layer)
    laser_name = f"laser L{layer}.{laser_kind}"
    names = ["svd_llm", "svd_llm (loss)", laser_name]
    built: dict = {}

    def method(name, ratio):
        if (name, ratio) not in built:
            if name == laser_name:
                m = get_method("laser", layer=layer, kind=laser_kind, rho=1 - ratio)
            else:
                m = get_method("svd_llm", ratio=ratio, allocation="loss" if "loss" in name else "uniform",
                               **knobs.get("svd_llm", {}))
                m.prepare(model, texts)
            built[name, ratio] = m
        return built[name, ratio]

    def detail(model_, name, ratio, _iv):
        m = method(name, ratio)
        ranks = m.ranks if name != laser_name else {(layer, laser_kind): m.resolved_rank(model_)}
        kept = []
        for l in range(model_.info.n_layers):
            tot = new = 0
            for k in model_.linear_kinds:
                o, i = model_.linear_weight(l, k).shape
                tot += o * i
                r = ranks.get((l, k))
                new += o * i if r is None else min(o * i, r * (o + i))
            kept.append(new / tot)
        return kept, "projection parameters kept per layer"

    box = method_explorer(model, prompt, lambda n, r: method(n, r).intervention(model), names, ratios, detail,
                          strength_name="ratio")
    box.method = method
    return box
