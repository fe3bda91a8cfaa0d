"""Activation sparsity (TEAL): magnitude thresholds on projection inputs, a gather-GEMV decode path.

``teal`` (registered method): calibrate with ``prepare(model, texts)`` (magnitude histograms of every
projection input, ``calibrate_teal``), uniform or greedy per-block allocation, ``SparseInputLinear``
modules whose single-token path reads only the kept weight columns. ``measured_sparsity`` checks the
thresholds on held-out text; ``TealCalibration`` shows what TEAL's signed-histogram threshold would give.
"""
from .analysis import MeasuredSparsity, measured_sparsity
from .block import block_forward, rope_tables
from .calibration import TealCalibration, calibrate_teal
from .gather_linear import SparseInputLinear
from .gather_mlp import SparseGatedMLP
from .greedy import GreedyAllocation, greedy_allocation
from .histogram import MagnitudeHistogram
from .teal import TEAL, TealEdit
from .explorer import sparsity_explorer

__all__ = [
    "SparseGatedMLP",
    "sparsity_explorer", "TEAL", "TealEdit", "SparseInputLinear", "TealCalibration", "calibrate_teal",
    "MagnitudeHistogram", "GreedyAllocation", "greedy_allocation", "MeasuredSparsity", "measured_sparsity",
    "block_forward", "rope_tables",
]
