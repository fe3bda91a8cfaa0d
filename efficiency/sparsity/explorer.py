"""``sparsity_explorer``: pick TEAL's allocation and a target sparsity, see what the thresholds do."""
from __future__ import annotations

from ..explorer_common import method_explorer
from .calibration import calibrate_teal
from .teal import TEAL

DEFAULT_SPARSITIES = (0.25, 0.4, 0.5, 0.65)


def sparsity_explorer(model, prompt: str, texts, sparsities=DEFAULT_SPARSITIES, allocations=("uniform", "greedy"),
                      calibration=None, greedy_step: float = 0.1):
    """Allocation dropdown ("uniform", "greedy") and sparsity slider. Thresholds are calibrated once on
    ``texts`` (or pass ``calibration=``); the greedy allocation is computed on first view. The per-layer
    panel shows the sparsity measured on the prompt (mean over the seven projections)."""
    calib = calibration if calibration is not None else calibrate_teal(model, texts)
    state: dict = {}

    def method(alloc, s):
        m = TEAL(sparsity=s, allocation=alloc, calibration=calib)
        if alloc == "greedy":
            if "greedy" not in state:
                from .greedy import greedy_allocation

                state["greedy"] = greedy_allocation(model, texts, calib, max_sparsity=max(sparsities) + 0.05,
                                                    step=greedy_step)
            m.greedy = state["greedy"]
        return m

    def detail(model_, alloc, s, iv):
        m = method(alloc, s)
        edit = m.intervention(model_)
        with model_.without_interventions(), model_.intervene(edit):
            for mod in edit.modules.values():
                mod.count = True
            model_.run(prompt, logits=None)
            per = {}
            for (l, _k), mod in edit.modules.items():
                per.setdefault(l, []).append(1 - mod.kept_fraction)
        return [sum(per.get(l, [0.0])) / max(len(per.get(l, [])), 1) for l in range(model_.info.n_layers)], \
            "measured sparsity on the prompt (mean over projections)"

    box = method_explorer(model, prompt, lambda a, s: method(a, s).intervention(model), allocations, sparsities, detail,
                          strength_name="sparsity")
    box.calibration = calib
    return box
