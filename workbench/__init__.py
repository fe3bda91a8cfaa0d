"""workbench: look inside language models and watch what efficiency tricks do to those insides."""
from .capture import AttentionSummary, CaptureEstimate, settings
from .errors import CaptureBudgetError, ExportError, HookError, InputError, ModelLoadError, WorkbenchError
from .hook_names import SPECS as HOOK_SPECS
from .intervention import Compose, Intervention
from .loading import load, wrap
from .model import Model, ModelInfo, ParityReport
from .run import Run

__all__ = [
    "load", "wrap", "Model", "ModelInfo", "ParityReport", "Run", "Intervention", "Compose", "settings",
    "AttentionSummary", "CaptureEstimate", "HOOK_SPECS", "WorkbenchError", "ModelLoadError", "InputError",
    "HookError", "CaptureBudgetError", "ExportError",
]
