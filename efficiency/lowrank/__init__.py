"""Low rank: LASER (one matrix at rank r, swept on facts) and SVD-LLM (whitened truncated SVD).

``LowRankLinear`` (two thin factors) is the real speed path below the break-even rank
out x in / (out + in); above it the rank-r product is stored dense (same bytes).
"""
from .factors import LowRankLinear, break_even_rank, svd64, truncated_svd
from .laser import LASER, LaserSweep, LowRankEdit, laser_sweep, low_rank_bytes
from .scoring import FactScore, FactScorer
from .svd_llm import SVDLLM, input_covariances, whitened_factors, whitened_svd
from .explorer import lowrank_explorer

__all__ = [
    "lowrank_explorer", "LowRankLinear", "break_even_rank", "svd64", "truncated_svd", "LASER", "LaserSweep",
    "LowRankEdit", "laser_sweep", "low_rank_bytes", "FactScore", "FactScorer", "SVDLLM", "input_covariances",
    "whitened_factors", "whitened_svd",
]
