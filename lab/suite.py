"""What ``lab.effects`` measures on: a ``Suite`` gives the sizes, ``materialize`` turns it into token ids for a model.

Two suites ship: ``QUICK`` (notebooks and tests) and ``FULL`` (benchmarks); ``Suite(...)`` or
``QUICK.replace(...)`` make others. Texts:

- evaluation: the bundled corpus's held-out split (``evaluation_texts``): perplexity windows, the
  neutral preamble before each fact, nothing else;
- calibration (methods with ``needs_calibration``): the corpus's training split (``calibration_texts``), which
  shares no document with the evaluation split;
- facts: the bundled facts (``probes.factual.load_facts``), ``facts_per_relation`` of each relation, or
  the suite's own ``facts``;
- passkey: ``workbench.texts.tasks.passkey_prompts`` at depths spread over [0.1, 0.9].

Every sequence is split into a *prefix*, prefilled and then handed to the method's cache policy
(step 0), and a *tail* fed against that cache; with no cache policy this is one forward pass
(``docs/efficiency_lab.md``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from workbench.errors import InputError


# ---------------------------------------------------------------------------------------------- texts
def _corpus(split: str) -> list[str]:
    """The bundled corpus's documents of one split ("train", or "eval" for the held-out groups)."""
    from workbench.texts import load_corpus

    return load_corpus({"eval": "heldout"}.get(split, split))


def evaluation_texts() -> list[str]:
    """Held-out documents of the bundled corpus (never used for training or calibration)."""
    return _corpus("eval")


def calibration_texts() -> list[str]:
    """Training documents of the bundled corpus (calibration of methods; no document in common with evaluation)."""
    return _corpus("train")


# ---------------------------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class Suite:
    """Sizes of one measurement (see the module docstring). Counts of 0 switch a part off.

    ppl_windows × ppl_tokens: perplexity windows cut from the evaluation texts (evenly spread), each scored on
        its tail (the last ``1 - prefix`` of its tokens) after a prefix of ``prefix``;
    kl_positions: scored positions per window where the next-token distribution is compared with the
        baseline's (evenly spread);
    internals_windows: the first windows whose tail is also read for the internals (residuals, attention
        summaries, transcoder features, concept scores); probe_rows: tail queries per window whose whole
        attention row is kept for the attention divergence (the last query included);
    facts_per_relation (or facts: explicit ``FactPrompt`` objects), fact_context: tokens of neutral
        evaluation text before each fact (0: the bare prompt);
    passkey_n × passkey_tokens: passkey prompts;
    timing_tokens, decode_tokens, timing_repeats: the prompt prefilled and the tokens decoded for ms/token,
        baseline and method interleaved ``timing_repeats`` times (0: no timing);
    calibration_n × calibration_tokens: calibration windows (training texts) for methods that calibrate;
    feature_top_k: a token's top features compared between baseline and method; concept: the WordNet
        synset whose frame scores the first internals window's text (None: no concept panel);
    seed: picks facts and passkeys.
    """

    name: str = "custom"
    ppl_windows: int = 2
    ppl_tokens: int = 256
    prefix: float = 0.5
    kl_positions: int = 32
    internals_windows: int = 1
    probe_rows: int = 8
    facts_per_relation: int = 2
    facts: tuple = ()
    fact_context: int = 32
    passkey_n: int = 2
    passkey_tokens: int = 192
    timing_tokens: int = 128
    decode_tokens: int = 4
    timing_repeats: int = 2
    calibration_n: int = 4
    calibration_tokens: int = 128
    feature_top_k: int = 16
    concept: str | None = "computer.n.01"
    seed: int = 0

    def __post_init__(self):
        ints = ("ppl_windows", "ppl_tokens", "kl_positions", "internals_windows", "probe_rows", "facts_per_relation",
                "fact_context", "passkey_n", "passkey_tokens", "timing_tokens", "decode_tokens", "timing_repeats",
                "calibration_n", "calibration_tokens", "feature_top_k", "seed")
        for f in ints:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"Suite {self.name!r}: {f} must be a non-negative integer, got {v!r}.")
        if self.ppl_windows < 1 or self.ppl_tokens < 8:
            raise InputError(f"Suite {self.name!r}: needs at least one perplexity window of at least 8 tokens "
                             f"(got {self.ppl_windows} × {self.ppl_tokens}).")
        if not isinstance(self.prefix, (int, float)) or isinstance(self.prefix, bool) or not 0 < self.prefix < 1:
            raise InputError(f"Suite {self.name!r}: prefix must be a fraction in (0, 1), got {self.prefix!r}.")
        if self.internals_windows < 1:
            raise InputError(f"Suite {self.name!r}: internals_windows must be at least 1 (the internals are read there).")
        if self.internals_windows > self.ppl_windows:
            raise InputError(f"Suite {self.name!r}: internals_windows={self.internals_windows} exceeds "
                             f"ppl_windows={self.ppl_windows} (internals are read on the first perplexity windows).")
        if self.timing_repeats and (self.timing_tokens < 2 or self.decode_tokens < 1):
            raise InputError(f"Suite {self.name!r}: timing needs timing_tokens >= 2 and decode_tokens >= 1.")
        if self.feature_top_k < 1:
            raise InputError(f"Suite {self.name!r}: feature_top_k must be at least 1.")
        if not isinstance(self.facts, tuple):
            object.__setattr__(self, "facts", tuple(self.facts))
        if self.concept is not None and (not isinstance(self.concept, str) or not self.concept):
            raise InputError(f"Suite {self.name!r}: concept must be a synset name like 'computer.n.01' or None.")

    def replace(self, **changes) -> "Suite":
        """A copy with some sizes changed (named ``<name>*`` unless ``name=`` is given)."""
        changes.setdefault("name", self.name if self.name.endswith("*") else self.name + "*")
        bad = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if bad:
            raise InputError(f"Suite has no field(s) {bad}; fields: {', '.join(f.name for f in dataclasses.fields(self))}.")
        return dataclasses.replace(self, **changes)

    @property
    def prefix_tokens(self) -> int:
        return max(1, min(int(self.prefix * self.ppl_tokens), self.ppl_tokens - 1))

    def describe(self) -> str:
        """The sizes in one line (for reports and docs)."""
        parts = [f"perplexity {self.ppl_windows} × {self.ppl_tokens} tokens (prefix {self.prefix_tokens})",
                 f"internals on {self.internals_windows} window(s)"]
        nf = len(self.facts) if self.facts else f"{self.facts_per_relation}/relation"
        parts.append(f"facts {nf} after {self.fact_context} tokens")
        if self.passkey_n:
            parts.append(f"passkey {self.passkey_n} × {self.passkey_tokens} tokens")
        if self.timing_repeats:
            parts.append(f"timing {self.timing_tokens} + {self.decode_tokens} tokens × {self.timing_repeats}")
        return f"{self.name}: " + ", ".join(parts)

    def longest(self) -> tuple[int, str]:
        """(tokens, what) of the longest sequence the suite runs (facts are checked when materialized)."""
        need = [(self.ppl_tokens, f"perplexity windows of {self.ppl_tokens} tokens")]
        if self.passkey_n:
            need.append((self.passkey_tokens + 16, f"passkey prompts of {self.passkey_tokens} tokens (+ the answer)"))
        if self.timing_repeats:
            need.append((self.timing_tokens + self.decode_tokens,
                         f"a timing prompt of {self.timing_tokens} + {self.decode_tokens} decoded tokens"))
        return max(need)

    def check(self, model) -> None:
        """Raise InputError when the model cannot run this suite (a sequence longer than its context)."""
        n, what = self.longest()
        if n > model.info.n_ctx:
            raise InputError(f"Suite {self.name!r} needs {what}, but {model.info.name} has a context of "
                             f"{model.info.n_ctx} tokens. Use a smaller suite, e.g. lab.QUICK.replace(ppl_tokens=..., "
                             f"passkey_tokens=..., timing_tokens=...) with every length below {model.info.n_ctx}.")


QUICK = Suite("quick", ppl_windows=2, ppl_tokens=256, kl_positions=32, internals_windows=1, probe_rows=8,
              facts_per_relation=2, fact_context=32, passkey_n=2, passkey_tokens=192, timing_tokens=128,
              decode_tokens=4, timing_repeats=2, calibration_n=4, calibration_tokens=128)
FULL = Suite("full", ppl_windows=6, ppl_tokens=2048, kl_positions=64, internals_windows=2, probe_rows=16,
             facts_per_relation=8, fact_context=256, passkey_n=4, passkey_tokens=2000, timing_tokens=1024,
             decode_tokens=16, timing_repeats=2, calibration_n=32, calibration_tokens=512)
SUITES = {"quick": QUICK, "full": FULL}


def get_suite(suite) -> Suite:
    """A ``Suite`` from "quick", "full" or a Suite."""
    if isinstance(suite, Suite):
        return suite
    if isinstance(suite, str) and suite in SUITES:
        return SUITES[suite]
    raise InputError(f"Unknown suite {suite!r}: use 'quick', 'full' or a lab.Suite(...).")


# ---------------------------------------------------------------------------------------------- materialized
@dataclass(frozen=True)
class FactItem:
    """One fact as the lab runs it: ``prefix`` ids (preamble + prompt without its last token), ``last`` token,
    ``targets`` (answer first, then the other candidates' first tokens)."""

    fact: object
    prefix: torch.Tensor
    last: int
    targets: tuple[int, ...]


@dataclass
class SuiteData:
    """A suite turned into token ids for one model (tokenizer)."""

    suite: Suite
    windows: list[torch.Tensor]            # (ppl_tokens,) each
    facts: list[FactItem]
    passkeys: list                          # PasskeySample
    timing_ids: torch.Tensor | None         # (timing_tokens,)
    calibration: list[str]
    window_texts: list[str]

    @property
    def prefix_tokens(self) -> int:
        return self.suite.prefix_tokens


def _stream(model, texts: Sequence[str], need: int, what: str) -> list[int]:
    ids = model.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if len(ids) < need:
        raise InputError(f"The {what} texts hold {len(ids)} tokens, fewer than the {need} the suite needs.")
    return ids


def _windows(ids: list[int], n: int, size: int) -> list[list[int]]:
    step = (len(ids) - size) // max(n - 1, 1)
    return [ids[i * step: i * step + size] for i in range(n)]


def _facts(model, suite: Suite, preamble: list[int]) -> list[FactItem]:
    from probes.factual import candidate_tokens, load_facts

    if suite.facts:
        facts = list(suite.facts)
    elif suite.facts_per_relation:
        facts = list(load_facts().sample(suite.facts_per_relation, seed=suite.seed))
    else:
        return []
    out = []
    for f in facts:
        ans, others = candidate_tokens(model, f)
        ids, _ = model.tokenize(f.prompt)
        ids = ids[0].cpu()
        full = torch.cat([torch.tensor(preamble, dtype=torch.long), ids])
        if full.shape[0] > model.info.n_ctx:
            raise InputError(f"Fact {f.id!r} after a preamble of {len(preamble)} tokens has {full.shape[0]} tokens, "
                             f"more than the context of {model.info.n_ctx}; lower fact_context.")
        out.append(FactItem(f, full[:-1], int(full[-1]), tuple([ans] + others)))
    return out


def materialize(model, suite: Suite) -> SuiteData:
    """Token ids of every part of ``suite`` for ``model`` (checked against its context first)."""
    from workbench.texts.tasks import passkey_prompts

    suite.check(model)
    ev = evaluation_texts()
    stream = _stream(model, ev, suite.ppl_windows * suite.ppl_tokens + suite.fact_context, "evaluation")
    wins = _windows(stream, suite.ppl_windows, suite.ppl_tokens)
    windows = [torch.tensor(w, dtype=torch.long) for w in wins]
    # the facts' preamble: the end of the evaluation stream, ending at a paragraph break
    preamble = stream[len(stream) - suite.fact_context:] if suite.fact_context else []
    if preamble:
        preamble = preamble + model.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    facts = _facts(model, suite, preamble)
    passkeys = []
    if suite.passkey_n:
        depths = [0.5] if suite.passkey_n == 1 else [0.1 + 0.8 * i / (suite.passkey_n - 1) for i in range(suite.passkey_n)]
        for i, d in enumerate(depths):
            passkeys += passkey_prompts(model, 1, n_tokens=suite.passkey_tokens, depth=d, seed=suite.seed + i)
    timing = windows[0][: suite.timing_tokens] if suite.timing_repeats else None
    if timing is not None and timing.shape[0] < suite.timing_tokens:
        timing = torch.tensor(stream[: suite.timing_tokens], dtype=torch.long)
    calib = []
    if suite.calibration_n:
        cs = _stream(model, calibration_texts(), suite.calibration_n * suite.calibration_tokens, "calibration")
        calib = [model.tokenizer.decode(w) for w in _windows(cs, suite.calibration_n, suite.calibration_tokens)]
    return SuiteData(suite, windows, facts, passkeys, timing, calib, [model.tokenizer.decode(w.tolist()) for w in windows])


__all__ = ["Suite", "QUICK", "FULL", "SUITES", "get_suite", "SuiteData", "FactItem", "materialize", "evaluation_texts",
           "calibration_texts"]
