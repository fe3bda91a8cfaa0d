"""Interventions on ``workbench.Model``: ablation, patching, steering, splicing, guided decoding."""
from .ablation import HeadAblation, MLPAblation
from .comparison import AblationComparison, compare

__all__ = ["HeadAblation", "MLPAblation", "AblationComparison", "compare"]
from .attention_edits import AttentionToSink, ZeroAttention
from .qk_dims import DisruptQKDims

__all__ += ["AttentionToSink", "ZeroAttention", "DisruptQKDims"]
