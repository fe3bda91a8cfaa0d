"""Interventions on ``workbench.Model``: ablation, patching, head scaling, attention edits, Q/K disruption, splicing."""
from .ablation import HeadAblation, MLPAblation
from .activation_patch import ActivationPatch
from .attention_edits import AttentionToSink, ZeroAttention
from .comparison import AblationComparison, compare
from .head_scale import HeadScale
from .qk_dims import DisruptQKDims
from .transcoder_splice import FeatureAblate, FeatureClamp, SpliceTranscoder

__all__ = [
    "HeadAblation", "MLPAblation", "AblationComparison", "compare", "AttentionToSink", "ZeroAttention",
    "DisruptQKDims", "SpliceTranscoder", "FeatureClamp", "FeatureAblate", "ActivationPatch", "HeadScale",
]
