"""Error types. Every message names what was wrong and what to do about it."""


class WorkbenchError(Exception):
    """Base class for errors raised by the workbench."""


class ModelLoadError(WorkbenchError):
    """A model could not be found, built or loaded."""


class InputError(WorkbenchError, ValueError):
    """A prompt, token batch, layer, head or position is not acceptable."""


class HookError(WorkbenchError, KeyError):
    """A hook name does not exist, is not available on this architecture, or never fired."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class CaptureBudgetError(WorkbenchError, MemoryError):
    """A capture would exceed the configured memory budget."""


class ExportError(WorkbenchError, RuntimeError):
    """A figure could not be exported."""


class DecompositionError(WorkbenchError, ArithmeticError):
    """An exact decomposition (e.g. direct logit attribution) does not add up to its target within the
    stated tolerance, so its numbers would be wrong."""
