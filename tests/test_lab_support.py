"""Shared pieces of the lab tests: a tiny suite, letter facts for the byte-level tiny model, and test-only methods
(a weight edit on one linear, a KV policy that evicts the sink). Nothing here is a product method."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

import lab
from efficiency import EfficiencyMethod, Knob
from probes.factual import make_fact
from workbench import PolicyBase, WeightEdit

LETTER_FACTS = tuple(
    make_fact("letter", s, f"The letter {s} is followed by the letter", a, ["b", "d", "f", "h"], "followed by")
    for s, a in (("a", "b"), ("c", "d"), ("e", "f")))

# every length well inside tiny-llama's 256-token context; no timing (tests never time)
TINY = lab.Suite("tiny", ppl_windows=2, ppl_tokens=48, kl_positions=6, internals_windows=1, probe_rows=4,
                 facts=LETTER_FACTS, fact_context=8, passkey_n=0, timing_repeats=0, calibration_n=2,
                 calibration_tokens=32, feature_top_k=4, concept=None)


class _LinearScale(WeightEdit):
    def __init__(self, layer: int, kind: str, factor: float):
        self.layer, self.kind, self.factor = layer, kind, factor

    def edit(self, model, editor) -> None:
        editor.set_linear(self.layer, self.kind, weight=model.linear_weight(self.layer, self.kind) * self.factor)

    def describe(self) -> str:
        return f"scale L{self.layer}.{self.kind} x{self.factor}"


@dataclass
class ScaleLinear(EfficiencyMethod):
    """Test-only weight method: multiply one linear's weight by ``factor`` (1.0 changes nothing)."""

    layer: int = 0
    kind: str = "down"
    factor: float = 0.5

    name: ClassVar[str] = "scale_linear_test"
    family: ClassVar[str] = "pruning"
    knobs: ClassVar[dict] = {"layer": Knob("int", 0, 64), "factor": Knob("float", 0.0, 4.0),
                             "kind": Knob("choice", choices=("q", "k", "v", "o", "gate", "up", "down"))}

    def intervention(self, model):
        return _LinearScale(self.layer, self.kind, self.factor)


class _UnembedScale(WeightEdit):
    def __init__(self, factor: float):
        self.factor = factor

    def edit(self, model, editor) -> None:
        editor.set_unembedding(model.weights().W_U * self.factor)


@dataclass
class ScaleUnembedding(EfficiencyMethod):
    """Test-only: logits multiplied by ``factor`` (W_U scaled; the tiny model has no unembedding bias)."""

    factor: float = 2.0

    name: ClassVar[str] = "scale_unembedding_test"
    family: ClassVar[str] = "pruning"
    knobs: ClassVar[dict] = {"factor": Knob("float", 0.0, 8.0)}

    def intervention(self, model):
        return _UnembedScale(self.factor)


class _DropSink(PolicyBase):
    name = "drop position 0"

    def apply(self, cache, ctx) -> None:
        if ctx.step != 0:
            return
        for l in range(cache.n_layers):
            n = cache.seq_len(l)
            cache.keep(l, torch.arange(1, n))


@dataclass
class DropSink(EfficiencyMethod):
    """Test-only KV method: evict position 0 (the attention sink) after prefill."""

    name: ClassVar[str] = "drop_sink_test"
    family: ClassVar[str] = "kv-eviction"

    def cache_policy(self, model):
        return _DropSink()

    def kv_tokens_kept(self, model, n_tokens):
        return n_tokens - 1

    def cost(self, model, n_tokens):
        from efficiency import Cost, kv_bytes_full

        w = model.parameter_bytes()
        full = kv_bytes_full(model, n_tokens)
        return Cost(n_tokens, w, full * (n_tokens - 1) // n_tokens, w, full, "real")


def window(model, suite=TINY, i: int = 0) -> torch.Tensor:
    """The (T,) ids of perplexity window ``i`` of ``suite``."""
    return lab.suite.materialize(model, suite).windows[i]


def test_scale_linear_restores_exactly(tiny_llama):
    m = tiny_llama
    before = m.linear_weight(0, "down").clone()
    with m.intervene(ScaleLinear(0, "down", 0.5).intervention(m)):
        assert torch.equal(m.linear_weight(0, "down"), before * 0.5)
    assert torch.equal(m.linear_weight(0, "down"), before)
