"""``lab.effects``: what one efficiency method (or a combination) saves and changes inside the model."""
from __future__ import annotations

from .build import build_report
from .engine import Baseline, check_clean, get_baseline, method_pass
from .methods import resolve_method
from .report import EffectReport
from .suite import get_suite
from workbench.errors import InputError


def baseline(model, suite="quick", transcoders="auto", progress: bool = True) -> Baseline:
    """The clean model's pass over ``suite`` (computed once, then reused by every ``effects`` call with the same
    model, weights, suite and transcoders)."""
    return get_baseline(model, get_suite(suite), transcoders, progress)[0]


def effects(model, method, suite="quick", baseline: Baseline | None = None, transcoders="auto",
            progress: bool = True) -> EffectReport:
    """Run ``method`` and the unmodified model side by side over ``suite`` and compare them.

    method: an ``efficiency.EfficiencyMethod``, a registered name, (name, {knob: value}), or a list of these
        (combined in order; ``m1 + m2`` works too).
    suite: "quick", "full" or a ``lab.Suite``. baseline: a ``lab.baseline(...)`` to compare with (default: the
        cached one, computed on first use). transcoders: "auto" (the shipped ones when they fit the model),
        "shipped", None, or {layer: Transcoder} (refused when made for another model).

    Methods that calibrate get ``prepare(model, calibration texts)`` first (the corpus's training split; the
    evaluation uses its held-out split). Call it outside ``model.intervene`` blocks.
    """
    method = resolve_method(method)
    suite = get_suite(suite)
    check_clean(model)
    method.check_model(model)
    if baseline is None:
        b, n_base = get_baseline(model, suite, transcoders, progress)
    else:
        if not isinstance(baseline, Baseline):
            raise InputError(f"baseline must come from lab.baseline(model, suite), got {type(baseline).__name__}.")
        if not baseline.matches(model):
            raise InputError("This baseline was computed for another model or other weights; compute a new one with "
                             "lab.baseline(model, suite).")
        if suite is not baseline.suite and suite != baseline.suite:
            raise InputError(f"The baseline was computed for suite {baseline.suite.name!r}, not {suite.name!r}.")
        b, n_base = baseline, 0
    rec, extra = method_pass(model, method, b, progress)
    return build_report(model, method, b, rec, extra, n_base)


__all__ = ["effects", "baseline"]
