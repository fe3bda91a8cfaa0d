"""Analysis modules built on ``workbench.Model`` (attention sinks, factual recall, transcoders, frames, probes)."""
from .active_dormant import ActiveDormantReport, active_dormant, label_head
from .domains import DOMAINS, load_domain
from .extreme_tokens import ExtremeTokenReport, extreme_token_report
from .massive_activations import MassiveActivationReport, massive_activations
from .passkey_disruption import FACTUAL_PROMPTS, QKDisruptionReport, qk_disruption_effect
from .qk_massive import QKConcentrationReport, qk_concentration
from .sink_explorer import sink_explorer
from .sinks import SinkReport, sink_report
from .value_drains import ValueDrainReport, value_drain

__all__ = [
    "sink_report", "SinkReport", "value_drain", "ValueDrainReport", "massive_activations", "MassiveActivationReport",
    "qk_concentration", "QKConcentrationReport", "extreme_token_report", "ExtremeTokenReport", "active_dormant",
    "ActiveDormantReport", "label_head", "DOMAINS", "load_domain", "qk_disruption_effect", "QKDisruptionReport",
    "FACTUAL_PROMPTS", "sink_explorer",
]
