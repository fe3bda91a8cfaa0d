"""All four extreme-token analyses from one forward pass.

``extreme_token_report(model, prompts)`` runs the prompts once, capturing the attention
summaries, ``v``, Q/K after RoPE (``q_rot``/``k_rot``; plain ``q``/``k`` without RoPE), the
embedding-stage residual and every ``resid_post``, and builds the same reports as
``sink_report``, ``value_drain``, ``massive_activations`` and ``qk_concentration`` (equal numbers:
the builders are shared). One pass instead of four; on SmolLM2 the forward dominates the cost.
"""
from __future__ import annotations

from dataclasses import dataclass

from workbench.result import Result
from workbench.hook_names import hook_name
from workbench.capture import resolve_layers
from workbench.errors import InputError

from .massive_activations import MassiveActivationReport, massive_activations_from_run
from .qk_massive import QKConcentrationReport, qk_concentration_from_run, qk_names
from .report import COL_ENTROPY_MIN, ROW_ENTROPY_MAX, SinkReport, check_prompt_lengths, sink_report_from_run
from .value_drains import ValueDrainReport, value_drain_from_run


@dataclass
class ExtremeTokenReport(Result):
    """The four reports of one pass: ``sinks``, ``values``, ``massive``, ``qk``."""

    sinks: SinkReport
    values: ValueDrainReport
    massive: MassiveActivationReport
    qk: QKConcentrationReport

    def figures(self, qk_layer: int | None = None) -> dict:
        """{name: plotly figure} for all four (the Q/K map at ``qk_layer``, default the middle layer)."""
        layers = self.qk.layers
        layer = layers[len(layers) // 2] if qk_layer is None else qk_layer
        return {"sink_mass": self.sinks.figure(), "value_drain": self.values.figure(),
                "residual_norms": self.massive.figure(), f"qk_dims_L{layer}": self.qk.figure(layer)}

    def figure(self, panel: str = "sink_mass", qk_layer: int | None = None):
        """One of ``figures()`` by name: "sink_mass", "value_drain", "residual_norms" or "qk_dims"."""
        figs = self.figures(qk_layer)
        key = next((k for k in figs if k == panel or k.startswith(panel + "_L")), None)
        if key is None:
            raise InputError(f"panel must be one of sink_mass, value_drain, residual_norms, qk_dims; got {panel!r}.")
        return figs[key]

    def to_frame(self, panel: str = "sinks"):
        """The table of one of the four reports: "sinks", "values", "massive" or "qk"."""
        if panel not in ("sinks", "values", "massive", "qk"):
            raise InputError(f"panel must be one of sinks, values, massive, qk; got {panel!r}.")
        return getattr(self, panel).to_frame()

    def __repr__(self) -> str:
        return "\n".join(repr(r) for r in (self.sinks, self.values, self.massive, self.qk))

    def html_table(self):
        return None


def extreme_token_report(model, prompts, skip_queries: int = 4, threshold: float = 0.3, top_k: int = 5,
                         row_entropy_max: float = ROW_ENTROPY_MAX, col_entropy_min: float = COL_ENTROPY_MIN,
                         factor: float = 10.0, exclude_first: bool = True, layers=None,
                         max_bytes: int | None = None) -> ExtremeTokenReport:
    """Sink statistics, value drains, residual peaks and Q/K/V concentration from one forward.

    Arguments as in the four single functions; every prompt needs more than ``skip_queries``
    tokens (and at least 2). The memory guard counts every capture (about 80 MiB per 1k tokens
    on SmolLM2, all layers).
    """
    if not isinstance(skip_queries, int) or isinstance(skip_queries, bool) or skip_queries < 0:
        raise InputError(f"skip_queries must be a non-negative integer, got {skip_queries!r}.")
    if not factor > 1:
        raise InputError(f"factor must be > 1, got {factor!r}.")
    layer_list = resolve_layers(layers, model.info.n_layers)
    texts, _ = check_prompt_lengths(model, prompts, max(skip_queries, 1), f"extreme_token_report(skip_queries="
                                    f"{skip_queries})", "Use longer prompts or a smaller skip_queries.")
    qn, kn = qk_names(model)
    capture = ["pattern", "v", qn, kn, hook_name("resid_pre", 0), "resid_post"]
    run = model.run(prompts, capture=capture, layers=layer_list, attention="summary", skip_queries=skip_queries,
                    last_rows=1, logits=None, stop_at_layer=max(layer_list) + 1, max_bytes=max_bytes)
    return ExtremeTokenReport(
        sinks=sink_report_from_run(model, run, layer_list, texts, threshold=threshold, top_k=top_k,
                                   row_entropy_max=row_entropy_max, col_entropy_min=col_entropy_min),
        values=value_drain_from_run(model, run, layer_list, texts),
        massive=massive_activations_from_run(model, run, layer_list, texts, factor=factor),
        qk=qk_concentration_from_run(model, run, layer_list, exclude_first),
    )
