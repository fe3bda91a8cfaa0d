"""The SAT probe on constraint prompts: greedy completions, verifier labels, attention to every constraint.

``run_constraints(model, items)`` decodes each ``ConstraintPrompt`` (``probes.factual.constraints``)
greedily for up to 15 new tokens (stopping at the end-of-turn token), labels it with the prompt's
verifier (1 = the whole answer satisfies every constraint, as in the paper), and records, per prompt,
the attention from the last prompt token to each constraint's tokens (K·L·H features) and two
label-free confidences: the mean log-probability of the greedy completion (the paper's baseline) and
the probability of the first generated token (top-1 probability).

``sat_probe_constraints(model, items)`` = ``run_constraints`` then ``fit_sat_probe`` (out-of-fold L1
logistic probe against both confidences).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from workbench.capture import resolve_layers
from workbench.errors import InputError

from .constraints import ConstraintPrompt
from .lre import subject_token_positions
from .sat_probe import DEFAULT_CS, SATProbeResult, constraint_attention_features, fit_sat_probe

MAX_NEW_TOKENS = 15


@dataclass
class Completions:
    """Greedy completions of N prompts.

    texts: decoded new text without the end-of-turn token; first_token: (N,) the first generated id;
    first_prob: (N,) its probability (the top-1 probability); mean_logprob: (N,) mean log-probability
    of all generated tokens (end-of-turn included); n_tokens: (N,) how many were generated.
    """

    texts: list[str]
    first_token: np.ndarray
    first_prob: np.ndarray
    mean_logprob: np.ndarray
    n_tokens: np.ndarray


def greedy_completions(model, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> Completions:
    """Greedy decoding of each prompt (``model.generate``, one prompt at a time) for up to ``max_new_tokens``."""
    if not prompts:
        raise InputError("greedy_completions needs at least one prompt.")
    eos = model.tokenizer.eos_token_id
    texts, first, fprob, mlp, lens = [], [], [], [], []
    for p in prompts:
        g = model.generate(p, max_new_tokens)
        ids = g.new_tokens.tolist()
        lp = torch.log_softmax(g.logits.float(), -1)[torch.arange(len(ids)), g.new_tokens]  # (n,)
        keep = ids[:-1] if ids and ids[-1] == eos else ids
        texts.append(model.to_string(keep) if keep else "")
        first.append(ids[0])
        fprob.append(float(lp[0].exp()))
        mlp.append(float(lp.mean()))
        lens.append(len(ids))
    return Completions(texts, np.array(first), np.array(fprob), np.array(mlp), np.array(lens))


@dataclass
class ConstraintRun:
    """Everything the probe needs from N constraint prompts with K constraints each.

    features: (N, K·L·H) attention to each constraint (constraint-major); labels: (N,) 0/1 verifier
    verdicts on the completions; completions: the ``Completions``; layers: the layers used.
    """

    items: list[ConstraintPrompt] = field(repr=False)
    features: np.ndarray = field(repr=False)
    labels: np.ndarray
    completions: Completions = field(repr=False)
    layers: list[int]
    n_heads: int
    n_constraints: int

    @property
    def accuracy(self) -> float:
        return float(self.labels.mean())


def constraint_positions(model, item: ConstraintPrompt) -> list[list[int]]:
    """Per constraint, the token positions of ``item.prompt`` that overlap its character span."""
    return [subject_token_positions(model, item.prompt, c.text, c.span) for c in item.constraints]


def run_constraints(model, items, layers=None, reduce: str = "sum", max_new_tokens: int = MAX_NEW_TOKENS,
                    batch_size: int = 16) -> ConstraintRun:
    """Complete, verify and featurize constraint prompts (all with the same number of constraints)."""
    items = list(items or [])
    if not items:
        raise InputError("run_constraints needs constraint prompts (probes.factual.constraints); got none.")
    bad = [i for i, it in enumerate(items) if not isinstance(it, ConstraintPrompt)]
    if bad:
        raise InputError(f"Items {bad[:5]} are not ConstraintPrompt objects (see probes.factual.constraints).")
    ks = sorted({len(it.constraints) for it in items})
    if len(ks) > 1:
        raise InputError(f"All prompts must have the same number of constraints for one probe; got {ks}.")
    layer_list = resolve_layers(layers, model.info.n_layers)
    prompts = [it.prompt for it in items]
    pos = [constraint_positions(model, it) for it in items]
    feats, _ = constraint_attention_features(model, prompts, pos, layer_list, reduce, batch_size)
    comp = greedy_completions(model, prompts, max_new_tokens)
    labels = np.array([int(it.check(t)) for it, t in zip(items, comp.texts)])
    return ConstraintRun(items, feats, labels, comp, layer_list, model.info.n_heads, ks[0])


def fit_constraint_run(run: ConstraintRun, labels=None, n_folds: int = 5, inner_folds: int = 3, Cs=DEFAULT_CS,
                       seed: int = 0, model_name: str = "", reduce: str = "sum") -> SATProbeResult:
    """The out-of-fold probe on a run's features; ``labels`` default to the run's verifier labels.
    Baselines: "confidence" = mean log-probability of the completion, "top1_prob" = first-token probability."""
    y = run.labels if labels is None else np.asarray(labels)
    return fit_sat_probe(run.features, y, run.completions.mean_logprob, run.layers, run.n_heads, n_folds, inner_folds,
                         Cs, seed, model_name, [it.prompt for it in run.items], reduce, run.n_constraints,
                         {"top1_prob": run.completions.first_prob}, run.completions.texts)


def sat_probe_constraints(model, items, layers=None, reduce: str = "sum", n_folds: int = 5, inner_folds: int = 3,
                          Cs=DEFAULT_CS, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
                          batch_size: int = 16) -> SATProbeResult:
    """The SAT probe with full-answer labels on one- or multi-constraint prompts (module docstring)."""
    run = run_constraints(model, items, layers, reduce, max_new_tokens, batch_size)
    return fit_constraint_run(run, None, n_folds, inner_folds, Cs, seed, model.info.name, reduce)


__all__ = ["Completions", "ConstraintRun", "greedy_completions", "constraint_positions", "run_constraints",
           "fit_constraint_run", "sat_probe_constraints", "MAX_NEW_TOKENS"]
