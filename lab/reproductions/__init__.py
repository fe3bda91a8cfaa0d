"""Paper claims next to our numbers: the registry behind REPRODUCTIONS.md.

Each paper the workbench implements has a module in ``lab/reproductions/papers`` with its claims
(``Claim``: the paper's setting and number, ours, where our number lives in a results JSON, the
verdict rule and the command that regenerates it). ``reproduction_table()`` evaluates them against
``benchmarks/results/*.json``; ``scripts/reproductions.py`` writes REPRODUCTIONS.md; ``run_quick``
re-measures the cheap rows live; ``run_measure`` runs the slower measurements no benchmark covers.
Verdict rules: ``docs/reproductions.md``.
"""
from .claim import (FAILURES, NOT_AT_135M, NOT_MEASURED, PARTLY, REFUTED, REPRODUCED, VERDICTS, AllOf, AtLeast,
                    AtMost, Claim, Decision, Derived, FirstOf, Missing, Number, Row, Rule, lookup, num)
from .sources import COMMANDS, QUICK as QUICK_STEM
from .table import RESULTS_DIR, ReproductionTable, claims, load_results, reproduction_table

__all__ = [
    "Claim", "Number", "Derived", "num", "Rule", "AtLeast", "AtMost", "AllOf", "FirstOf", "Decision", "Row", "Missing",
    "lookup", "VERDICTS", "FAILURES", "REPRODUCED", "PARTLY", "NOT_AT_135M", "REFUTED", "NOT_MEASURED",
    "ReproductionTable", "reproduction_table", "QUICK_STEM", "COMMANDS", "claims", "load_results", "RESULTS_DIR",
]
