"""The conditions a benchmark ran under: threads, machine load, versions (recorded in every result).

``conditions()`` is called at the start and end of a run (and around long sections); the JSON keeps
both, and ``describe()`` gives the one line printed above each table. Timings on a loaded machine are
noisy: compare ratios measured side by side in one run, and read them together with the load.
"""
from __future__ import annotations

import os
import platform

import torch


def conditions() -> dict:
    """Threads torch uses now, ``workbench.settings.threads``, the 1/5/15-minute load average, CPU count."""
    import workbench as wb

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"torch_threads": torch.get_num_threads(), "settings_threads": wb.settings.threads,
            "loadavg": [round(x, 2) for x in load], "cpu_count": os.cpu_count()}


def machine() -> dict:
    import transformers

    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        import transformer_lens

        out["transformer_lens"] = getattr(transformer_lens, "__version__", "?")
    except ImportError:
        pass
    return out


def describe(c: dict) -> str:
    la = c["loadavg"]
    return (f"threads {c['torch_threads']} (workbench.settings.threads={c['settings_threads']}), "
            f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} on {c['cpu_count']} CPUs")


def set_threads(n: int | None) -> None:
    """Apply a thread count through the workbench setting (None: torch's default)."""
    import workbench as wb

    wb.settings.threads = n
    if n is not None:
        torch.set_num_threads(n)
