"""Layer pruning: drop blocks, attention or MLP sublayers, or collapse blocks into earlier ones.

Methods (registered by name): ``drop_blocks`` and ``drop_attention`` (explicit layers), ``shortgpt``
(Block Influence, one shot), ``sleb`` (greedy by calibration perplexity), ``attn_drop`` (input/output
similarity of attention or MLP sublayers, "What Matters in Transformers"), ``laco`` (layer collapse by
parameter merging), ``trimllm`` (progressive domain-scored dropping, training-free variant). Skipped
components save compute and (for attention) the KV cache for real; ``pruned_copy`` builds a model that
really holds fewer blocks.
"""
from .analysis import MassiveEffect, RemovalCurve, massive_activation_effect
from .attn_drop import AttentionDrop
from .base import LayerDropMethod, block_parameter_bytes
from .copy import pruned_copy
from .drop_attention import DropAttention
from .drop_blocks import DropBlocks
from .laco import LaCo, LacoEdit, merge_rdsc
from .scores import LayerScores, layer_scores
from .shortgpt import ShortGPT
from .skip import DropLayers, SkipAttention, SkipBlock, SkipMLP
from .sleb import SLEB
from .trimllm import TrimLLM
from .explorer import pruning_explorer

__all__ = [
    "pruning_explorer", "DropLayers", "SkipBlock", "SkipAttention", "SkipMLP", "LayerDropMethod", "DropBlocks",
    "DropAttention", "ShortGPT", "SLEB", "AttentionDrop", "LaCo", "LacoEdit", "merge_rdsc", "TrimLLM",
    "LayerScores", "layer_scores", "RemovalCurve", "MassiveEffect", "massive_activation_effect", "pruned_copy",
    "block_parameter_bytes",
]
