"""Efficiency interventions built on ``workbench.Model`` (KV-cache policies, quantization, sparsity, pruning)."""
from .kv import (
    A2SF, H2O, POLICIES, TOVA, AttentionScorePolicy, KeyNorm, PyramidBudgets, PyramidKV, RandomPolicy, ScorePolicy,
    Sequential, SnapKV, StreamingLLM, get_policy, register,
)

__all__ = [
    "POLICIES", "get_policy", "register", "ScorePolicy", "AttentionScorePolicy", "Sequential", "StreamingLLM",
    "H2O", "A2SF", "SnapKV", "KeyNorm", "TOVA", "RandomPolicy", "PyramidKV", "PyramidBudgets",
]

# KV quantization (KIVI, packed storage) and evict-then-merge
from .kv.merge import MergeEvicted, merge_layer  # noqa: E402
from .kv.packing import dequantize_groups, pack, quantize_groups, unpack  # noqa: E402
from .kv.quantized import KIVILayer, KIVIQuantization  # noqa: E402
from .kv.quantized import bytes_formula as kivi_bytes_formula  # noqa: E402

__all__ += [
    "MergeEvicted", "merge_layer", "KIVIQuantization", "KIVILayer", "kivi_bytes_formula", "pack", "unpack",
    "quantize_groups", "dequantize_groups",
]
