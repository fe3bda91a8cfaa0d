"""Attention sinks and extreme tokens: where attention piles up, why, and what happens when it is disturbed.

- ``sink_report``: per layer × head attention mass on each key, top sink tokens, entropy detectors;
- ``value_drain``: value norms of the sink against the rest (sinks as no-op attention);
- ``massive_activations``: the residual peak, its dimensions, where it appears and is removed;
- ``qk_concentration``: massive Q/K values in low-frequency RoPE dimensions;
- ``extreme_token_report``: all four from one forward pass;
- ``active_dormant``: sink mass against ablation importance per head and text domain;
- ``qk_disruption_effect``: disrupting massive Q/K dims, passkey retrieval against factual recall;
- ``sink_explorer``: the interactive view.

Method, formulas and expected numbers on SmolLM2: ``docs/sinks.md``.
"""
from .active_dormant import ActiveDormantReport, active_dormant, label_head, token_cross_entropy
from .explorer import sink_explorer
from .extreme_tokens import ExtremeTokenReport, extreme_token_report
from .massive_activations import MassiveActivationReport, massive_activations
from .passkey_disruption import FACTUAL_PROMPTS, QKDisruptionReport, qk_disruption_effect
from .qk_massive import QKConcentrationReport, qk_concentration
from .report import SinkReport, sink_report
from .value_drains import ValueDrainReport, value_drain

__all__ = [
    "sink_report", "SinkReport", "value_drain", "ValueDrainReport", "massive_activations", "MassiveActivationReport",
    "qk_concentration", "QKConcentrationReport", "extreme_token_report", "ExtremeTokenReport", "active_dormant",
    "ActiveDormantReport", "label_head", "token_cross_entropy", "qk_disruption_effect", "QKDisruptionReport",
    "FACTUAL_PROMPTS", "sink_explorer",
]
