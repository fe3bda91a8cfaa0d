"""workbench: look inside language models and watch what efficiency tricks do to those insides."""
from .capture import AttentionSummary, CaptureEstimate, settings
from .errors import (CaptureBudgetError, DecompositionError, ExportError, HookError, InputError, ModelLoadError,
                     WorkbenchError)
from .edits import WeightEdit, WeightEditor, silenced_hooks
from .export import pruned_copy
from .hook_names import SPECS as HOOK_SPECS
from .hook_names import hook_name
from .figures import attention_pattern_figure, export_figures, residual_norms_figure, save_figure
from .generation import Generation
from .intervention import Compose, Intervention
from .kv_cache import CachePolicy, CacheStats, KVCache, PolicyBase, StepContext
from .loading import load, wrap
from .model import Model, ModelInfo, ParityReport
from .questions import Answer, CompressedContext, compress_context
from .result import Result
from .run import Run
from .session import AttentionFanout, ForwardSession
from .weights import LayerWeights, NormWeights, Weights

__all__ = [
    "load", "wrap", "Model", "ModelInfo", "ParityReport", "Run", "Intervention", "Compose", "settings",
    "AttentionSummary", "CaptureEstimate", "HOOK_SPECS", "WorkbenchError", "ModelLoadError", "InputError",
    "DecompositionError", "HookError", "CaptureBudgetError", "ExportError", "Generation", "KVCache", "CachePolicy", "CacheStats",
    "StepContext", "save_figure", "export_figures", "attention_pattern_figure", "residual_norms_figure",
    "hook_name", "PolicyBase", "Result", "ForwardSession", "AttentionFanout", "Weights", "LayerWeights",
    "NormWeights", "WeightEdit", "WeightEditor", "compress_context", "CompressedContext", "Answer", "silenced_hooks", "pruned_copy",
]
