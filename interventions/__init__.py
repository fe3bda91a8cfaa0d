"""Interventions on ``workbench.Model``: ablation, patching, steering, splicing, guided decoding."""
from .ablation import HeadAblation, MLPAblation
from .comparison import AblationComparison, compare

__all__ = ["HeadAblation", "MLPAblation", "AblationComparison", "compare"]
