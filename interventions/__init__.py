"""Interventions on ``workbench.Model``: ablation, patching, steering, splicing, guided decoding."""
from .ablation import HeadAblation, MLPAblation
from .attention_edits import AttentionToSink, ZeroAttention
from .comparison import AblationComparison, compare
from .qk_dims import DisruptQKDims
from .transcoder_splice import FeatureAblate, FeatureClamp, SpliceTranscoder

__all__ = [
    "HeadAblation", "MLPAblation", "AblationComparison", "compare", "AttentionToSink", "ZeroAttention",
    "DisruptQKDims", "SpliceTranscoder", "FeatureClamp", "FeatureAblate",
]
