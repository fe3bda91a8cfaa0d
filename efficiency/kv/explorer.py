"""Interactive policy comparison: choose a policy and a ratio, see what it keeps and what it changes.

``kv_compare_explorer(model, prompt)`` shows, side by side, the retention map (layer x prompt
position), the attention divergence from the full cache (layer x query head, total variation) and
the next-token output of both caches. The full cache's side is computed once; each
(policy, ratio) is computed on first view with ``compare_cache`` and cached. Moving the controls
only swaps data inside ``FigureWidget.batch_update``.
"""
from __future__ import annotations

import html

from workbench.errors import InputError
from workbench.view_layout import fit_figure, wrap_row

from .base import ScorePolicy
from .internals import CacheComparison, compare_cache, divergence_figure, full_reference, output_figure, \
    retention_figure
from .registry import POLICIES, load_builtins

DEFAULT_MAX_TOKENS = 256
DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.875)


def eviction_policies() -> list[str]:
    """Registered policies that evict entries (``ScorePolicy`` subclasses), sorted by name."""
    load_builtins()
    return sorted(n for n, c in POLICIES.items() if issubclass(c, ScorePolicy))


def _summary_html(c: CacheComparison) -> str:
    s = c.metrics()
    return (f"<b>{html.escape(c.policy)}</b>: kept {s['kept fraction']:.0%} of {s['tokens']} tokens; sink kept in "
            f"{s['sink kept (layers)']}/{s['layers']} layers; attention TV mean {s['mean TV']:.3f} "
            f"(max {s['max TV']:.3f}); full-cache mass on evicted {s['evicted mass']:.3f}; next-token KL "
            f"{s['output KL']:.4f}, top-1 {'same' if s['top-1 same'] else '<b>changed</b>'} "
            f"(full {html.escape(repr(c.top5_full[0][0]))}, compressed {html.escape(repr(c.top5_compressed[0][0]))})")


def kv_compare_explorer(model, prompt: str, policies=None, ratios=DEFAULT_RATIOS, max_tokens: int = DEFAULT_MAX_TOKENS,
                        n_probe: int = 1):
    """Policy dropdown and ratio slider over ``compare_cache`` results for one prompt.

    Returns an ``ipywidgets.VBox`` with ``.show(policy, ratio)``, ``.comparison(policy, ratio)``
    (the cached ``CacheComparison``), ``.computed()`` (the (policy, ratio) pairs computed so far),
    ``.retention_figure``, ``.divergence_figure``, ``.output_figure`` (``go.FigureWidget``),
    ``.summary`` (``widgets.HTML``), ``.policy_dropdown``, ``.ratio_slider``. ``policies=None``
    means every registered eviction policy. Prompts longer than ``max_tokens`` are refused.
    """
    import ipywidgets as widgets
    from workbench.figure_widget import FigureWidget, resync  # plotly.js loaded once per page

    if not isinstance(prompt, str) or not prompt:
        raise InputError("kv_compare_explorer takes one non-empty prompt string.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2:
        raise InputError(f"max_tokens must be an integer >= 2, got {max_tokens!r}.")
    names = eviction_policies() if policies is None else list(policies)
    if not names:
        raise InputError("kv_compare_explorer needs at least one policy name.")
    load_builtins()
    for n in names:
        if n not in POLICIES:
            raise InputError(f"Unknown cache policy {n!r}. Available: {', '.join(sorted(POLICIES))}.")
    ratios = tuple(ratios)
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for r in ratios):
        raise InputError(f"ratios must be a non-empty sequence of numbers in [0, 1), got {ratios!r}.")
    _, lengths = model.tokenize(prompt)
    if lengths[0] > max_tokens:
        raise InputError(f"The prompt has {lengths[0]} tokens, more than max_tokens={max_tokens} for the KV comparison "
                         "explorer (a retention map wider than a few hundred tokens is unreadable). Shorten the "
                         "prompt, raise max_tokens=, or call efficiency.kv.internals.compare_cache directly.")

    reference = full_reference(model, prompt, n_probe)
    results: dict[tuple[str, float], CacheComparison] = {}
    state = {"syncing": False, "current": None}

    def check(policy: str, ratio: float) -> tuple[str, float]:
        if policy not in names:
            raise InputError(f"Policy {policy!r} is not in this explorer: {', '.join(names)}.")
        if ratio not in ratios:
            raise InputError(f"Ratio {ratio!r} is not in this explorer: {ratios}.")
        return policy, ratio

    def comparison(policy: str, ratio: float) -> CacheComparison:
        key = check(policy, ratio)
        if key not in results:
            results[key] = compare_cache(model, prompt, policy, n_probe, ratio=ratio, reference=reference)
        return results[key]

    first = comparison(names[0], ratios[0])
    ret_fig = FigureWidget(retention_figure(first))
    div_fig = FigureWidget(divergence_figure(first, "tv"))
    out_fig = FigureWidget(output_figure(first, 0))
    for f in (ret_fig, div_fig, out_fig):  # two per row at an ordinary window; the row wraps
        fit_figure(f, width=415, height=380, margin={"l": 50, "r": 10, "b": 40})
    summary = widgets.HTML()
    dropdown = widgets.Dropdown(options=names, value=names[0], description="policy")
    slider = widgets.SelectionSlider(options=list(ratios), value=ratios[0], description="ratio",
                                     continuous_update=False)

    def render(policy: str, ratio: float) -> None:
        c = comparison(policy, ratio)
        labels, pf, pc = c.output_bars(0)
        with ret_fig.batch_update(), div_fig.batch_update(), out_fig.batch_update():
            ret_fig.data[0].z = c.retention_z()
            ret_fig.layout.title.text = f"{policy} @ {ratio}: retained positions"
            div_fig.data[0].z = c.tv.numpy()
            div_fig.layout.title.text = f"{policy} @ {ratio}: attention TV vs full"
            out_fig.data[0].x, out_fig.data[0].y = labels, pf
            out_fig.data[1].x, out_fig.data[1].y = labels, pc
            out_fig.data[1].name = policy
            out_fig.data[1].marker.color = "#2a7" if bool(c.top1_same[0]) else "#c33"
            out_fig.layout.title.text = f"next token: KL {float(c.output_kl[0]):.4f}"
        summary.value = _summary_html(c)
        state["current"] = (policy, ratio)

    def show(policy: str, ratio: float) -> CacheComparison:
        """Show ``policy`` at ``ratio`` (computed on first use) and move the controls there."""
        key = check(policy, ratio)
        render(*key)
        state["syncing"] = True
        try:
            dropdown.value, slider.value = key
        finally:
            state["syncing"] = False
        return results[key]

    def on_change(_change) -> None:
        if not state["syncing"]:
            render(dropdown.value, slider.value)

    dropdown.observe(on_change, names="value")
    slider.observe(on_change, names="value")
    render(names[0], ratios[0])

    resync(ret_fig, div_fig, out_fig)
    box = widgets.VBox([wrap_row([dropdown, slider]), wrap_row([ret_fig, div_fig, out_fig]), summary])
    box.show = show
    box.comparison = comparison
    box.computed = lambda: sorted(results)
    box.current = lambda: state["current"]
    box.retention_figure, box.divergence_figure, box.output_figure = ret_fig, div_fig, out_fig
    box.summary, box.policy_dropdown, box.ratio_slider = summary, dropdown, slider
    box.policies, box.ratios, box.reference = names, ratios, reference
    return box


__all__ = ["kv_compare_explorer", "eviction_policies", "DEFAULT_MAX_TOKENS", "DEFAULT_RATIOS"]
