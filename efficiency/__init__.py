"""Efficiency methods built on ``workbench.Model`` (KV-cache policies, quantization, sparsity, pruning, ...).

Every method follows one protocol (``EfficiencyMethod``: knobs with ranges, what it installs, its cost
model, whether its saving is real or simulated) and is listed by one registry (``list_methods()``,
``get_method(name, **knobs)``), KV-cache policies included.

KV cache (``efficiency.kv``): eviction policies and a registry by name (query-agnostic ones among
them: KVzip, HashEvict, EMS), evict-then-merge, KIVI quantization with packed storage, Lexico
(sparse codes over learned dictionaries), per-head budgets stored ragged (AdaKV), per-layer budgets from
layer uncertainty (ZigZagKV), the measurement harness (sweeps, compressed-prefix
perplexity), and the internals view (retention, sink survival, attention divergence).

Quantization (``efficiency.quant``): RTN and GPTQ weights, the real int8 path (fbgemm), activation
quantization (W8A8/W4A8/W4A4) with rotations (QuaRot, DFRot), packed storage with exact bytes, and the
analyses of where it breaks (per token and layer, the attention sink against the rest).
Activation sparsity (``efficiency.sparsity``): TEAL with a gather-GEMV decode path. Layer pruning
(``efficiency.pruning``): ShortGPT, SLEB, attention/MLP dropping, LaCo, TrimLLM (training-free), explicit
drops, ``pruned_copy``. Low rank (``efficiency.lowrank``): LASER with its fact sweep, SVD-LLM. Latent
attention (``efficiency.mla``): training-free MHA2MLA with a latent KV cache.
"""
from .kv import (
    A2SF, EMS, H2O, POLICIES, TOVA, AdaKV, AdaptiveHeadBudgets, AttentionScorePolicy, HashEvict, KeyNorm, KVzip,
    LexicoCompression, LexicoDictionary, PyramidBudgets, PyramidKV, RaggedLayer, RandomPolicy, ScorePolicy,
    Sequential, SnapKV, StreamingLLM, UncertaintyBudgets, ZigZagKV, get_policy, lexico_bytes_formula,
    ragged_attention, ragged_bytes_formula, register,
)
from .kv.explorer import kv_compare_explorer
from .kv.methods import KVEviction, KVLexico, KVQuantization
from .kv.harness import PerplexityResult, SweepResult, perplexity, sweep
from .kv.internals import CacheComparison, compare_cache
from .kv.merge import MergeEvicted, merge_layer
from .kv.packing import dequantize_groups, pack, quantize_groups, unpack
from .kv.quantized import KIVILayer, KIVIQuantization
from .kv.quantized import bytes_formula as kivi_bytes_formula
from .method import FAMILIES, Combined, Cost, EfficiencyMethod, Knob, kv_bytes_full
from .quant import (
    DFRot, GPTQ, RTN, Int8Dynamic, QuaRot, QuantErrorResult, Rotate, RotationSpreadResult, WAQuant, quantization_error,
    quantization_explorer, rotation_spread,
)
from .registry import METHODS, get_method, list_methods, register_method
from .lowrank import LASER, SVDLLM, LowRankLinear, laser_sweep
from .mla import MHA2MLA, LatentLayer, MLAAttention
from .pruning import (SLEB, AttentionDrop, DropAttention, DropBlocks, DropLayers, LaCo, ShortGPT, TrimLLM,
                      layer_scores, massive_activation_effect, pruned_copy)
from .sparsity import TEAL, SparseInputLinear, calibrate_teal, measured_sparsity

__all__ = [
    "POLICIES", "get_policy", "register", "ScorePolicy", "AttentionScorePolicy", "Sequential", "StreamingLLM",
    "H2O", "A2SF", "SnapKV", "KeyNorm", "TOVA", "RandomPolicy", "PyramidKV", "PyramidBudgets",
    "MergeEvicted", "merge_layer", "KIVIQuantization", "KIVILayer", "kivi_bytes_formula", "pack", "unpack",
    "quantize_groups", "dequantize_groups", "sweep", "SweepResult", "perplexity", "PerplexityResult",
    "compare_cache", "CacheComparison", "kv_compare_explorer", "AdaKV", "AdaptiveHeadBudgets", "ZigZagKV",
    "UncertaintyBudgets", "RaggedLayer", "ragged_attention", "ragged_bytes_formula",
    "EfficiencyMethod", "Knob", "Cost", "Combined", "FAMILIES", "METHODS", "get_method", "list_methods",
    "register_method", "KVEviction", "KVQuantization", "kv_bytes_full", "KVzip", "HashEvict", "EMS",
    "LexicoCompression", "LexicoDictionary", "lexico_bytes_formula", "KVLexico",
    "RTN", "GPTQ", "Int8Dynamic", "Rotate",
    "WAQuant", "QuaRot", "DFRot", "quantization_error", "QuantErrorResult", "rotation_spread", "RotationSpreadResult",
    "quantization_explorer",
    "TEAL", "SparseInputLinear", "calibrate_teal", "measured_sparsity", "DropLayers", "DropBlocks", "DropAttention",
    "ShortGPT", "SLEB", "AttentionDrop", "LaCo", "TrimLLM", "layer_scores", "massive_activation_effect", "pruned_copy",
    "LASER", "SVDLLM", "LowRankLinear", "laser_sweep", "MHA2MLA", "MLAAttention", "LatentLayer",
]
