"""Analysis modules built on ``workbench.Model`` (attention sinks, factual recall, transcoders, frames, probes)."""
from .sinks import SinkReport, sink_report  # noqa: E402
from .value_drains import ValueDrainReport, value_drain  # noqa: E402
from .massive_activations import MassiveActivationReport, massive_activations  # noqa: E402
from .qk_massive import QKConcentrationReport, qk_concentration  # noqa: E402
from .extreme_tokens import ExtremeTokenReport, extreme_token_report  # noqa: E402
from .active_dormant import ActiveDormantReport, active_dormant, label_head
from .domains import DOMAINS, load_domain
from .passkey_disruption import FACTUAL_PROMPTS, QKDisruptionReport, qk_disruption_effect
from .sink_explorer import sink_explorer
