"""The LRE paper's protocol on one relation: few-shot Jacobians, hyperparameters on validation, test.

``lre_study(model, relation)`` follows Hernandez et al. (ICLR 2024):

1. Every prompt is an in-context prompt (``few_shot_samples``) whose demonstrations come from the
   training subjects (never the prompt's own subject).
2. Only facts the model knows are used (its top-1 next token is the object's first token), as in
   the paper, which evaluates LREs on what the LM itself gets right.
3. The known subjects are split (seeded) into ``n_train`` training subjects (the LRE is their
   mean Jacobian and bias), a validation split and a test split.
4. The subject layer ℓ and the slope β are chosen by faithfulness on the *validation* subjects,
   the inverse's rank ρ by causality on validation pairs.
5. Faithfulness and causality are reported on the *test* subjects with 95% bootstrap intervals,
   next to the causality controls (swap in the target subject's state; a random edit of the same
   norm).

Cost: ``len(layers) × n_train × d_model / chunk`` batched forward+backward passes of the prompt's
suffix (the prefix before the subject runs once per subject), plus one forward per edit.
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.errors import InputError
from workbench.result import Result

from .lenses import logits_from_resid
from .lre import DEFAULT_BETAS, estimate_lre, lre_predict, subject_map
from .lre_causality import causal_pairs, edit_success, low_rank_pinv, subject_states_at
from .lre_relations import FEW_SHOT_TEMPLATES, few_shot_samples, relation_pairs

DEFAULT_RANKS = (8, 16, 32, 64, 128, 256)


def _mean_ci(x, seed: int = 0) -> tuple[float, float]:
    from probes.frames.bias_probe import bootstrap_ci
    return bootstrap_ci(np.asarray(x, dtype=float), seed=seed)


@dataclass(repr=False)
class LREStudy(Result):
    """One relation's LRE under the paper's protocol.

    validation: rows (layer, beta, faithfulness) over the grid; causality_by_rank: rank -> validation
    causality at the chosen layer; test_rows: one row per test subject (faithful) and per test edit.
    """

    model_name: str
    relation: str
    n_shots: int
    layer: int
    beta: float
    rank: int
    train_subjects: list[str]
    n_candidates: int
    n_known: int
    validation: pd.DataFrame
    causality_by_rank: dict[int, float]
    faithfulness: float
    faithfulness_ci: tuple[float, float]
    causality: float
    causality_ci: tuple[float, float]
    swap_causality: float
    random_causality: float
    n_test: int
    n_test_pairs: int
    test_rows: pd.DataFrame = field(repr=False)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"LREStudy({self.model_name}, {self.relation!r}, {self.n_shots}-shot, layer {self.layer}, "
                f"β={self.beta:g}, rank {self.rank}: test faithfulness {self.faithfulness:.2f} "
                f"[{self.faithfulness_ci[0]:.2f}, {self.faithfulness_ci[1]:.2f}] on {self.n_test} subjects, "
                f"causality {self.causality:.2f} [{self.causality_ci[0]:.2f}, {self.causality_ci[1]:.2f}] on "
                f"{self.n_test_pairs} edits (swap {self.swap_causality:.2f}, random {self.random_causality:.2f}); "
                f"{self.n_known}/{self.n_candidates} facts known; {self.seconds:.0f} s)")

    def to_frame(self) -> pd.DataFrame:
        return self.test_rows.copy()

    def html_table(self) -> pd.DataFrame:
        return self.validation

    def figure(self, title: str | None = None):
        """Left: validation faithfulness by layer (best β per layer). Right: validation causality by rank.
        The chosen hyperparameters are marked; the test numbers are in the title."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        best = self.validation.sort_values("faithfulness").groupby("layer").tail(1).sort_values("layer")
        ranks = sorted(self.causality_by_rank)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("validation faithfulness (best β per layer)",
                                                            f"validation causality at layer {self.layer}"))
        fig.add_trace(go.Scatter(x=best["layer"], y=best["faithfulness"], mode="lines+markers", name="faithfulness",
                                 customdata=best["beta"],
                                 hovertemplate="layer %{x}<br>β %{customdata}<br>%{y:.2f}<extra></extra>"), 1, 1)
        fig.add_trace(go.Scatter(x=ranks, y=[self.causality_by_rank[r] for r in ranks], mode="lines+markers",
                                 name="causality", hovertemplate="rank %{x}<br>%{y:.2f}<extra></extra>"), 1, 2)
        fig.add_vline(x=self.layer, line=dict(dash="dot", color="gray"), row=1, col=1)
        fig.add_vline(x=self.rank, line=dict(dash="dot", color="gray"), row=1, col=2)
        fig.update_xaxes(title="subject layer ℓ", row=1, col=1)
        fig.update_xaxes(title="rank ρ of the inverse", type="log", row=1, col=2)
        fig.update_yaxes(range=[0, 1.02])
        fig.update_layout(title=title or (f"LRE {self.relation!r} ({self.model_name}, {self.n_shots}-shot)<br>test: "
                                          f"faithfulness {self.faithfulness:.2f}, causality {self.causality:.2f} "
                                          f"(swap {self.swap_causality:.2f}, random {self.random_causality:.2f})"),
                          template="plotly_white", width=900, height=420, showlegend=False)
        return fig


def _faithful(model, w, b, states, beta: float) -> list[bool]:
    if not states:
        return []
    s = torch.stack([st.h for st in states])
    with torch.no_grad():
        top = logits_from_resid(model, lre_predict(w, b, s, beta)).argmax(-1).tolist()
    return [t == st.object_id for t, st in zip(top, states)]


def _fit(model, train_states, layer: int, chunk: int):
    fns = [subject_map(model, st.sample.prompt, st.position, layer) for st in train_states]
    with model.frozen_parameters():
        w, b, _ = estimate_lre(fns, torch.stack([st.h for st in train_states]), chunk)
    return w, b


def lre_study(model, relation: str, pairs: Sequence[tuple[str, str]] | None = None, template: str | None = None,
              n_candidates: int = 60, n_train: int = 8, n_shots: int = 3, layers: Sequence[int] | None = None,
              betas: Sequence[float] = DEFAULT_BETAS, ranks: Sequence[int] = DEFAULT_RANKS,
              val_fraction: float = 0.4, seed: int = 0, chunk: int = 64) -> LREStudy:
    """Run the protocol of the module docstring on one relation.

    relation: a built-in name (``FEW_SHOT_TEMPLATES``) or any label when ``pairs`` and ``template``
    are given. pairs: (subject, object) strings. layers: subject layers to try (default: every
    fourth layer from 2 to two thirds of the depth).
    """
    t0 = time.perf_counter()
    template = template or FEW_SHOT_TEMPLATES.get(relation)
    if template is None:
        raise InputError(f"Relation {relation!r} has no built-in template; pass template='... {{s}} ...' and pairs.")
    pairs = list(pairs) if pairs is not None else relation_pairs(relation)
    pairs = pairs[:n_candidates]
    if n_train < 1 or n_shots < 0 or not 0 < val_fraction < 1:
        raise InputError(f"Need n_train >= 1, n_shots >= 0 and 0 < val_fraction < 1; got {n_train}, {n_shots}, "
                         f"{val_fraction}.")
    if not len(betas) or not len(ranks):
        raise InputError("lre_study needs at least one β (betas) and one rank of the inverse (ranks) to choose from.")
    L = model.info.n_layers
    layers = sorted({model.check_layer(x) for x in (layers if layers is not None else range(2, max(3, 2 * L // 3), 4))})
    order = random.Random(seed).sample(range(len(pairs)), len(pairs))
    shuffled = [pairs[i] for i in order]
    # training candidates first (twice what is needed, in case some are unknown); their pairs are the ICL pool
    pool = shuffled[:2 * n_train]
    samples = few_shot_samples(shuffled, template, n_shots, pool=pool, seed=seed, relation=relation)
    states = subject_states_at(model, samples, layers)  # one clean run per prompt serves every layer
    known = [i for i, st in enumerate(states[layers[0]]) if st.known]
    train_idx = [i for i in known if i < len(pool)][:n_train]
    rest = [i for i in known if i >= len(pool)]
    n_val = int(round(val_fraction * len(rest)))
    val_idx, test_idx = rest[:n_val], rest[n_val:]
    if len(train_idx) < n_train or len(val_idx) < 2 or len(test_idx) < 2:
        raise InputError(f"Relation {relation!r}: the model knows {len(known)} of {len(pairs)} facts ({len(train_idx)} "
                         f"training, {len(val_idx)} validation, {len(test_idx)} test); need {n_train} training and at "
                         "least 2 each for validation and test. Give more pairs (n_candidates) or fewer n_train.")
    rows, fitted = [], {}
    for layer in layers:
        tr, va = [states[layer][i] for i in train_idx], [states[layer][i] for i in val_idx]
        w, b = _fit(model, tr, layer, chunk)
        fitted[layer] = (w, b, va)
        for beta in betas:
            rows.append({"layer": layer, "beta": float(beta), "faithfulness": float(np.mean(_faithful(model, w, b, va,
                                                                                                      beta)))})
    validation = pd.DataFrame(rows)
    best = validation.sort_values(["faithfulness", "layer", "beta"], ascending=[False, True, True]).iloc[0]
    layer, beta = int(best["layer"]), float(best["beta"])
    w, b, va = fitted[layer]
    val_pairs = causal_pairs(va)
    by_rank = {int(r): float(np.mean(edit_success(model, va, val_pairs, layer, low_rank_pinv(w, int(r)))))
               for r in ranks}
    rank = max(sorted(by_rank), key=lambda r: by_rank[r])
    te = [states[layer][i] for i in test_idx]
    faithful = _faithful(model, w, b, te, beta)
    te_pairs = causal_pairs(te)
    pinv = low_rank_pinv(w, rank)
    lre_ok = edit_success(model, te, te_pairs, layer, pinv, "lre")
    swap_ok = edit_success(model, te, te_pairs, layer, None, "swap")
    rand_ok = edit_success(model, te, te_pairs, layer, pinv, "random", seed=seed)
    test_rows = pd.DataFrame(
        [{"kind": "faithfulness", "subject": st.sample.subject, "target": "", "object": st.sample.answer,
          "success": ok} for st, ok in zip(te, faithful)] +
        [{"kind": "causality", "subject": te[i].sample.subject, "target": te[j].sample.subject,
          "object": te[j].sample.answer, "success": ok, "swap": sw, "random": rd}
         for (i, j), ok, sw, rd in zip(te_pairs, lre_ok, swap_ok, rand_ok)])
    nan2 = (float("nan"), float("nan"))
    return LREStudy(model.info.name, relation, n_shots, layer, beta, rank, [samples[i].subject for i in train_idx],
                    len(pairs), len(known), validation, by_rank, float(np.mean(faithful)), _mean_ci(faithful, seed),
                    float(np.mean(lre_ok)) if lre_ok else float("nan"), _mean_ci(lre_ok, seed) if lre_ok else nan2,
                    float(np.mean(swap_ok)) if swap_ok else float("nan"),
                    float(np.mean(rand_ok)) if rand_ok else float("nan"), len(te), len(te_pairs), test_rows,
                    time.perf_counter() - t0)
