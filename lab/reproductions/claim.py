"""A paper's claim, the numbers that test it on our model, and the rule that turns them into a verdict.

A ``Claim`` names the paper, says what it found and in which setting, says what we measure and
where our number lives (``Number``: a key path into a results JSON under ``benchmarks/results``),
and carries a ``Rule`` that decides the verdict from those numbers alone. Nothing in a row is
typed by hand: a number that is not in a results file leaves the row "not yet measured".

Key paths: segments joined by "/". A segment is a dict key, a list index (``0``, ``-1``) or a
selector ``[field=value&field2=value2]`` that picks the first list element whose fields match
(values compared as numbers when both sides are numeric, as text otherwise).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import InputError

REPRODUCED, PARTLY, NOT_AT_135M, REFUTED, NOT_MEASURED = (
    "reproduced", "partly", "not at 135M", "refuted", "not yet measured")
VERDICTS = (REPRODUCED, PARTLY, NOT_AT_135M, REFUTED, NOT_MEASURED)
FAILURES = (NOT_AT_135M, REFUTED)


class Missing(LookupError):
    """A results file or key path that is not there (the row stays "not yet measured")."""


# ------------------------------------------------------------------------------------------ key paths
def _same(a: Any, text: str) -> bool:
    try:
        return math.isclose(float(a), float(text), rel_tol=0, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(a) == text


def lookup(data: Any, path: str) -> Any:
    """The value at ``path`` (module docstring) inside ``data``; raises ``Missing`` naming the segment."""
    cur = data
    for seg in path.split("/"):
        if seg.startswith("[") and seg.endswith("]"):
            conds = [c.split("=", 1) for c in seg[1:-1].split("&")]
            if not isinstance(cur, list) or any(len(c) != 2 for c in conds):
                raise Missing(f"{seg!r} needs a list and field=value conditions (path {path!r})")
            hit = next((x for x in cur if isinstance(x, Mapping)
                        and all(k in x and _same(x[k], v) for k, v in conds)), None)
            if hit is None:
                raise Missing(f"no element matches {seg} (path {path!r})")
            cur = hit
        elif isinstance(cur, list):
            try:
                cur = cur[int(seg)]
            except (ValueError, IndexError):
                raise Missing(f"no index {seg!r} (path {path!r})") from None
        elif isinstance(cur, Mapping) and seg in cur:
            cur = cur[seg]
        else:
            raise Missing(f"no key {seg!r} (path {path!r})")
    if cur is None:
        raise Missing(f"{path!r} is null")
    return cur


# ------------------------------------------------------------------------------------------ numbers
@dataclass(frozen=True)
class Number:
    """One measured number: the first of ``sources`` (results file stem, key path) that exists.

    Several sources let a quick live measurement (``reproductions_quick``) stand in for a long
    benchmark (or the reverse); the row says which file gave the number.
    """

    name: str
    sources: tuple[tuple[str, str], ...]
    label: str = ""

    def resolve(self, results: Mapping[str, Any]) -> tuple[Any, str]:
        """(value, "file: path") from ``results`` ({file stem: parsed JSON}); raises Missing."""
        why = []
        for stem, path in self.sources:
            if stem not in results:
                why.append(f"{stem}.json missing")
                continue
            try:
                return lookup(results[stem], path), f"{stem}.json: {path}"
            except Missing as e:
                why.append(f"{stem}.json: {e}")
        raise Missing("; ".join(why))


@dataclass(frozen=True)
class Derived:
    """A number computed from others (a ratio, a mean over layers); missing when any input is."""

    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., Any]
    label: str = ""


def num(name: str, *sources: tuple[str, str], label: str = "") -> Number:
    if not sources:
        raise InputError(f"Number {name!r} needs at least one (file, path) source.")
    return Number(name, tuple(sources), label)


# ------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Decision:
    verdict: str
    reason: str


class Rule:
    """Decides a verdict from named numbers. ``needs``: the names it reads."""

    needs: tuple[str, ...] = ()

    def decide(self, v: Mapping[str, Any]) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError


def _check_fail(fail: str) -> None:
    if fail not in FAILURES:
        raise InputError(f"fail must be one of {FAILURES}, got {fail!r}.")


@dataclass(frozen=True)
class AtLeast(Rule):
    """reproduced when v[name] ≥ reproduced; partly when ≥ partly; else ``fail``."""

    name: str
    reproduced: float
    partly: float | None = None
    fail: str = REFUTED

    def __post_init__(self):
        _check_fail(self.fail)
        if self.partly is not None and self.partly > self.reproduced:
            raise InputError("AtLeast: partly must not exceed reproduced.")

    @property
    def needs(self):
        return (self.name,)

    def decide(self, v):
        x = float(v[self.name])
        if x >= self.reproduced:
            return Decision(REPRODUCED, f"{self.name} {x:.4g} ≥ {self.reproduced:g}")
        if self.partly is not None and x >= self.partly:
            return Decision(PARTLY, f"{self.name} {x:.4g} in [{self.partly:g}, {self.reproduced:g})")
        return Decision(self.fail, f"{self.name} {x:.4g} < {self.partly if self.partly is not None else self.reproduced:g}")


@dataclass(frozen=True)
class AtMost(Rule):
    """reproduced when v[name] ≤ reproduced; partly when ≤ partly; else ``fail``."""

    name: str
    reproduced: float
    partly: float | None = None
    fail: str = REFUTED

    def __post_init__(self):
        _check_fail(self.fail)
        if self.partly is not None and self.partly < self.reproduced:
            raise InputError("AtMost: partly must not be below reproduced.")

    @property
    def needs(self):
        return (self.name,)

    def decide(self, v):
        x = float(v[self.name])
        if x <= self.reproduced:
            return Decision(REPRODUCED, f"{self.name} {x:.4g} ≤ {self.reproduced:g}")
        if self.partly is not None and x <= self.partly:
            return Decision(PARTLY, f"{self.name} {x:.4g} in ({self.reproduced:g}, {self.partly:g}]")
        return Decision(self.fail, f"{self.name} {x:.4g} > {self.partly if self.partly is not None else self.reproduced:g}")


@dataclass(frozen=True)
class AllOf(Rule):
    """reproduced when every part is; ``fail`` when none is reproduced or partly; partly otherwise."""

    parts: tuple[Rule, ...]
    fail: str = REFUTED

    def __post_init__(self):
        _check_fail(self.fail)
        if not self.parts:
            raise InputError("AllOf needs at least one rule.")

    @property
    def needs(self):
        return tuple(n for p in self.parts for n in p.needs)

    def decide(self, v):
        ds = [p.decide(v) for p in self.parts]
        reason = "; ".join(d.reason for d in ds)
        if all(d.verdict == REPRODUCED for d in ds):
            return Decision(REPRODUCED, reason)
        if all(d.verdict in FAILURES for d in ds):
            return Decision(self.fail, reason)
        return Decision(PARTLY, reason)


@dataclass(frozen=True)
class FirstOf(Rule):
    """The first part's verdict if it is reproduced; else the second part's, capped at "partly"
    (a fallback setting that is weaker than the paper's own protocol), and so on."""

    parts: tuple[Rule, ...]

    @property
    def needs(self):
        return tuple(n for p in self.parts for n in p.needs)

    def decide(self, v):
        first = self.parts[0].decide(v)
        if first.verdict == REPRODUCED:
            return first
        for p in self.parts[1:]:
            d = p.decide(v)
            if d.verdict in (REPRODUCED, PARTLY):
                return Decision(PARTLY, f"{first.reason}; fallback: {d.reason}")
        return first


# ------------------------------------------------------------------------------------------ claims
@dataclass(frozen=True)
class Claim:
    """One row of REPRODUCTIONS.md.

    key: stable id ("kv.snapkv"). paper: short citation. claim: what the paper found (our words).
    paper_setting / paper_number: the paper's models and data, and its number. our_setting: what
    we run. numbers: the measured inputs. rule: the verdict rule. ours: a format string over the
    numbers (``"{ppl:.2f}"``) for the "ours" column. command: what regenerates our numbers.
    note: where our setting or implementation departs from the paper.
    """

    key: str
    paper: str
    claim: str
    paper_setting: str
    paper_number: str
    our_setting: str
    numbers: tuple[Number | Derived, ...]
    rule: Rule
    ours: str
    command: str
    note: str = ""

    def __post_init__(self):
        names = [n.name for n in self.numbers]
        if len(set(names)) != len(names):
            raise InputError(f"Claim {self.key}: duplicate number names {names}.")
        unknown = [n for n in self.rule.needs if n not in names]
        for d in self.numbers:
            if isinstance(d, Derived):
                unknown += [i for i in d.inputs if i not in names]
        if unknown:
            raise InputError(f"Claim {self.key}: rule or derived numbers read unknown names {unknown}.")

    def evaluate(self, results: Mapping[str, Any]) -> Row:
        """The row for ``results`` ({file stem: parsed JSON}). A verdict needs every number."""
        values: dict[str, Any] = {}
        sources: list[str] = []
        missing: list[str] = []
        for n in self.numbers:
            if isinstance(n, Derived):
                if all(i in values for i in n.inputs):
                    try:
                        values[n.name] = n.fn(*(values[i] for i in n.inputs))
                    except (ArithmeticError, ValueError, TypeError, KeyError, IndexError) as e:
                        missing.append(f"{n.name}: cannot compute ({e})")
                continue
            try:
                values[n.name], src = n.resolve(results)
                sources.append(src)
            except Missing as e:
                missing.append(f"{n.name}: {e}")
        if missing or any(n.name not in values for n in self.numbers):
            return Row(self, NOT_MEASURED, "not yet measured", "missing " + "; ".join(missing) if missing else
                       "missing inputs", {}, tuple(sources))
        bad = [k for k, x in values.items() if isinstance(x, float) and not math.isfinite(x)]
        if bad:  # e.g. a ratio to a zero baseline: no verdict from a number that is not one
            return Row(self, NOT_MEASURED, "not yet measured", f"not finite: {', '.join(bad)}", values,
                       tuple(sources))
        try:
            ours = self.ours.format(**values)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise InputError(f"Claim {self.key}: cannot format ours={self.ours!r}: {e}") from e
        d = self.rule.decide(values)
        return Row(self, d.verdict, ours, d.reason, values, tuple(sources))


@dataclass(frozen=True)
class Row:
    claim: Claim
    verdict: str
    ours: str
    reason: str
    values: Mapping[str, Any] = field(default_factory=dict)
    sources: Sequence[str] = ()

    @property
    def measured(self) -> bool:
        return self.verdict != NOT_MEASURED
