"""Results files the claims read (``benchmarks/results/<stem>.json``) and the command that writes each."""
from __future__ import annotations

import statistics
from collections.abc import Sequence

QUICK = "reproductions_quick"

COMMANDS = {
    QUICK: "python scripts/reproductions.py --quick",
    "sinks": "python benchmarks/bench_sinks.py --no-memory",
    "kv": "python benchmarks/bench_kv.py --sections latency quality",
    "quant": "python benchmarks/bench_quant.py --sections quality",
    "sparsity_pruning": "python benchmarks/bench_sparsity_pruning.py",
    "transcoders": "python benchmarks/bench_transcoders.py --skip-harvest",
    "frames": "python benchmarks/bench_frames.py --threads 1",
}


def command(*stems: str, sections: Sequence[str] = ()) -> str:
    """The commands that write ``stems`` (joined with "; ") with ``--sections`` for the benchmark ones."""
    out = []
    for s in stems:
        c = COMMANDS[s]
        if sections and s == "sparsity_pruning":
            c += " --sections " + " ".join(sections)
        out.append(c)
    return "; ".join(out)


def mean_from(start: int):
    """A Derived fn: the mean of a per-layer list from layer ``start`` on."""
    def f(xs):
        return statistics.fmean(xs[start:])
    return f


def median_from(start: int):
    def f(xs):
        return statistics.median(xs[start:])
    return f


def rel_change(new: float, base: float) -> float:
    """new / base - 1."""
    return new / base - 1


def ratio(a: float, b: float) -> float:
    return a / b
