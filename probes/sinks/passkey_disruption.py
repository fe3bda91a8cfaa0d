"""Contextual versus parametric knowledge under Q/K massive-dim disruption (Jin et al., ICML 2025).

``qk_disruption_effect`` scores a model on passkey retrieval (the answer is in the context;
``workbench.texts.tasks.passkey_prompts``) and on short factual prompts (the answer is in the weights;
``FACTUAL_PROMPTS``) three times: clean, with ``DisruptQKDims`` (top-n concentration dims per
head set to their token mean, all layers, prefill) and with the control (the n lowest dims).
The paper's finding: disruption breaks contextual tasks far more than parametric recall, and the
control does little to either.

On SmolLM2 (no BOS token, position 0 is the sink) the top-1 disruption of all positions hurts the
short factual prompts *more* than passkey retrieval: it also rewrites the sink token's own
massive key dimension. With ``skip_first=True`` (position 0 left out) the paper's ordering
appears: passkey answers lose log-probability, factual answers do not. Measured numbers are in
the tests and the notebook.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from interventions.qk_dims import DisruptQKDims
from workbench.result import Result
from workbench.errors import InputError
from workbench.texts.tasks import AnswerScore, PasskeySample, passkey_prompts, score_answers, score_passkey

# Hand-written (prompt, answer) pairs that SmolLM2-135M-Instruct completes correctly by greedy decoding.
FACTUAL_PROMPTS: tuple[tuple[str, str], ...] = (
    ("The capital of France is", " Paris"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of England is", " London"),
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("The opposite of hot is", " cold"),
    ("The chemical symbol for gold is", " Au"),
    ("The author of Romeo and Juliet is William", " Shakespeare"),
    ("The first president of the United States was George", " Washington"),
    ("The currency of Japan is the", " yen"),
)
CONDITIONS = ("clean", "disrupt", "control")
TASKS = ("passkey", "factual")


@dataclass
class QKDisruptionReport(Result):
    """Scores per condition ("clean", "disrupt", "control") and task ("passkey", "factual").

    scores[(condition, task)]: the AnswerScore (per-prompt correctness and answer log-probs).
    """

    model_name: str
    disruption: str
    control: str
    scores: dict[tuple[str, str], AnswerScore]

    def accuracy(self, condition: str, task: str) -> float:
        return self.scores[(condition, task)].accuracy

    def logprob(self, condition: str, task: str) -> float:
        return self.scores[(condition, task)].mean_logprob

    def logprob_drop(self, condition: str, task: str) -> float:
        """Clean minus intervened mean answer log-prob (nats per token; positive = hurt)."""
        return self.logprob("clean", task) - self.logprob(condition, task)

    def to_frame(self) -> pd.DataFrame:
        """One row per condition and task: accuracy, mean answer log-prob and their drops from clean."""
        rows = []
        for c in CONDITIONS:
            for t in TASKS:
                rows.append({"condition": c, "task": t, "n": len(self.scores[(c, t)].prompts),
                             "accuracy": self.accuracy(c, t), "answer_logprob": self.logprob(c, t),
                             "accuracy_drop": self.accuracy("clean", t) - self.accuracy(c, t),
                             "logprob_drop": self.logprob_drop(c, t)})
        return pd.DataFrame(rows)

    def figure(self):
        """Grouped bars: accuracy and mean answer log-prob per task, one bar per condition."""
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("greedy exact-match accuracy",
                                                            "mean answer log-prob (nats/token)"))
        colours = {"clean": "#4c78a8", "disrupt": "#e45756", "control": "#72b7b2"}
        for c in CONDITIONS:
            for col, fn in ((1, self.accuracy), (2, self.logprob)):
                fig.add_bar(x=list(TASKS), y=[fn(c, t) for t in TASKS], name=c, legendgroup=c,
                            marker_color=colours[c], showlegend=col == 1, row=1, col=col)
        fig.update_layout(barmode="group", template="plotly_white",
                          title=f"Q/K massive-dim disruption on {self.model_name}: contextual (passkey) vs "
                                f"parametric (factual)<br><sup>{html.escape(self.disruption)}; control: "
                                f"{html.escape(self.control)}</sup>")
        return fig

    def __repr__(self) -> str:
        lines = [f"QKDisruptionReport({self.model_name}: {self.disruption})"]
        for c in CONDITIONS:
            parts = [f"{t} acc {self.accuracy(c, t):.2f}, logp {self.logprob(c, t):+.3f}" for t in TASKS]
            lines.append(f"  {c:8s} " + " | ".join(parts))
        return "\n".join(lines)


def qk_disruption_effect(model, passkey_samples: Sequence[PasskeySample] | None = None,
                         factual: Sequence[tuple[str, str]] = FACTUAL_PROMPTS, top_n: int = 1,
                         target: str = "both", layers=None, skip_first: bool = False) -> QKDisruptionReport:
    """Score passkey vs factual prompts clean, with ``DisruptQKDims`` and with its control.

    passkey_samples: default 8 prompts of about 128 tokens (``passkey_prompts(model, 8, 128)``).
    factual: (prompt, answer) pairs. top_n, target, layers, skip_first: passed to ``DisruptQKDims``.
    """
    disrupt = DisruptQKDims(target=target, top_n=top_n, layers=layers, skip_first=skip_first)
    control = DisruptQKDims(target=target, top_n=top_n, layers=layers, control=True, skip_first=skip_first)
    disrupt.validate(model)  # a clear error (no RoPE, bad layer) before any scoring
    samples = passkey_prompts(model, 8, 128) if passkey_samples is None else list(passkey_samples)
    factual = list(factual)
    if not factual or not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in factual):
        raise InputError("factual must be a non-empty list of (prompt, answer) pairs.")
    scores = {}
    for c, ivs in (("clean", ()), ("disrupt", [disrupt]), ("control", [control])):
        scores[(c, "passkey")] = score_passkey(model, samples, ivs)
        scores[(c, "factual")] = score_answers(model, [p for p, _ in factual], [a for _, a in factual], ivs)
    return QKDisruptionReport(model.info.name, repr(disrupt), repr(control), scores)
