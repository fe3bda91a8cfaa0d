"""The efficiency lab: what any efficiency method saves, and what it changes inside the model.

``effects(model, method, suite)`` runs the unmodified model (once per model, weights and suite; cached)
and the method over one suite and returns an ``EffectReport``: quality (perplexity, next-token KL,
facts, passkey), cost (bytes of weights and KV cache predicted and measured, real or simulated, ms per
token measured side by side with the baseline) and internals (residual drift, attention divergence,
sink mass, massive activations, DLA of the facts, transcoder features, concept scores).
``compare_effects`` puts several methods (and combinations against their parts) side by side,
``frontier`` draws the quality/cost Pareto figure, ``lab_explorer`` is the interactive lab.
Method, protocol and formulas: ``docs/efficiency_lab.md``.
"""
from .compare import EffectComparison, compare_effects
from .effects import baseline, effects
from .engine import Baseline, clear_baselines
from .explorer import lab_explorer
from .frontier import Frontier, frontier
from .methods import resolve_method
from .report import PANELS, EffectReport
from .suite import FULL, QUICK, Suite, calibration_texts, evaluation_texts, get_suite

__all__ = [
    "effects", "baseline", "EffectReport", "PANELS", "compare_effects", "EffectComparison", "frontier", "Frontier",
    "lab_explorer", "Suite", "QUICK", "FULL", "get_suite", "Baseline", "clear_baselines", "resolve_method",
    "evaluation_texts", "calibration_texts",
]
