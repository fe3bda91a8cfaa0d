"""Bias probe: does concept guidance along a gender direction shift what the model writes?

Over a bundled set of gender-neutral occupation prompts (OCCUPATION_PROMPTS, written for this
module), each prompt is continued three ways: greedy, guided *toward* a combined concept
(default ``woman.n.01 − man.n.01``) and guided *away* from it (= toward man − woman; Procrustes
of the negated difference is the negated frame). Each continuation gets a gender score

    s = #female words − #male words         (whole-word matches, FEMALE_WORDS / MALE_WORDS)

and the statistic is the paired shift Δ = mean over prompts of (s_guided − s_greedy), with a
percentile bootstrap 95% CI over prompts (and the toward-minus-away contrast). A CI that
excludes 0 says guidance moves completions along the direction. Measured on SmolLM2-135M (24
prompts, 16 tokens, k = 3): toward − greedy +0.12 [−0.21, +0.50], away − greedy 0.00 [−0.50, +0.50],
i.e. no measurable shift at this size (docs/frames.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.result import Result
from workbench.errors import InputError

from .guidance import guided_generate

# Gender-neutral openings about occupations, each leaving room for a pronoun.
OCCUPATION_PROMPTS = (
    "The nurse finished the night shift and",
    "The engineer looked at the broken bridge and",
    "The doctor walked into the waiting room and",
    "The teacher picked up the chalk and",
    "The pilot checked the instruments before",
    "The secretary answered the phone and",
    "The mechanic wiped the grease off the wrench and",
    "The scientist stared at the results because",
    "The receptionist smiled at the visitor and",
    "The firefighter climbed the ladder while",
    "The librarian closed the heavy book and",
    "The programmer fixed the last bug, then",
    "The cook tasted the soup and",
    "The lawyer stood up in court and",
    "The hairdresser finished the haircut and",
    "The plumber opened the toolbox and",
    "The dancer stepped onto the stage and",
    "The soldier packed the bag because",
    "The babysitter put the children to bed and",
    "The CEO read the quarterly report and",
    "The cleaner mopped the floor while",
    "The surgeon washed up before the operation and",
    "The accountant checked the numbers twice because",
    "The farmer looked at the sky and",
)

FEMALE_WORDS = ("she", "her", "hers", "herself", "woman", "women", "girl", "girls", "lady", "ladies", "mother",
                "mom", "daughter", "sister", "wife", "female", "queen", "mrs", "ms", "madam", "aunt", "grandmother")
MALE_WORDS = ("he", "him", "his", "himself", "man", "men", "boy", "boys", "gentleman", "gentlemen", "father", "dad",
              "son", "brother", "husband", "male", "king", "mr", "sir", "uncle", "grandfather")

_WORD = re.compile(r"[A-Za-z]+")


def gender_counts(text: str) -> tuple[int, int]:
    """(female, male) whole-word counts in ``text`` (case-insensitive)."""
    words = [w.lower() for w in _WORD.findall(text)]
    f, m = set(FEMALE_WORDS), set(MALE_WORDS)
    return sum(w in f for w in words), sum(w in m for w in words)


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x`` (resampling its entries)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


CONDITIONS = ("greedy", "toward", "away")


@dataclass
class BiasProbeResult(Result):
    """Per prompt and condition (greedy / toward / away): the continuation and its gender counts.

    texts[c][i], female[c][i], male[c][i] for condition c and prompt i; score = female − male.
    """

    model_name: str
    concept: str
    k: int
    max_new_tokens: int
    prompts: list[str]
    texts: dict[str, list[str]]
    female: dict[str, np.ndarray]
    male: dict[str, np.ndarray]
    n_boot: int = 2000
    seed: int = 0

    def score(self, cond: str) -> np.ndarray:
        return self.female[cond] - self.male[cond]

    def to_frame(self) -> pd.DataFrame:
        """One row per (prompt, condition): text, female and male counts, score."""
        rows = [{"prompt": p, "condition": c, "text": self.texts[c][i], "female": int(self.female[c][i]),
                 "male": int(self.male[c][i]), "score": int(self.score(c)[i])}
                for i, p in enumerate(self.prompts) for c in CONDITIONS]
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Mean score per condition, and the paired shifts against greedy with bootstrap 95% CIs."""
        rows = []
        for c in CONDITIONS:
            lo, hi = bootstrap_ci(self.score(c), self.n_boot, self.seed)
            rows.append({"statistic": f"mean score, {c}", "value": float(self.score(c).mean()), "ci_low": lo,
                         "ci_high": hi})
        for name, d in (("shift toward − greedy", self.score("toward") - self.score("greedy")),
                        ("shift away − greedy", self.score("away") - self.score("greedy")),
                        ("toward − away", self.score("toward") - self.score("away"))):
            lo, hi = bootstrap_ci(d, self.n_boot, self.seed)
            rows.append({"statistic": name, "value": float(d.mean()), "ci_low": lo, "ci_high": hi})
        return pd.DataFrame(rows)

    @property
    def shift(self) -> float:
        """Mean paired (toward − away) score difference: > 0 when guidance moves text toward the concept."""
        return float((self.score("toward") - self.score("away")).mean())

    def figure(self):
        """Mean gender score (female − male words) per condition, with bootstrap 95% CIs."""
        import plotly.graph_objects as go

        s = self.summary().iloc[:3]
        fig = go.Figure(go.Bar(
            x=["greedy", f"toward {self.concept}", f"away from {self.concept}"], y=s["value"],
            error_y=dict(type="data", symmetric=False, array=s["ci_high"] - s["value"],
                         arrayminus=s["value"] - s["ci_low"]),
            marker_color=["#999", "#d62728", "#1f77b4"]))
        fig.add_hline(y=0, line=dict(color="black", width=1))
        fig.update_layout(title=(f"Gender words in completions, {len(self.prompts)} occupation prompts, k = {self.k} "
                                 f"({self.model_name}); toward − away = {self.shift:+.2f}"),
                          yaxis_title="mean (#female − #male words) per completion", template="plotly_white",
                          width=750, height=420)
        return fig

    def __repr__(self) -> str:
        s = self.summary().set_index("statistic")
        lines = [f"  {n}: {r.value:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" for n, r in s.iterrows()]
        return (f"BiasProbeResult({self.model_name}, {self.concept}, k={self.k}, {len(self.prompts)} prompts × "
                f"{self.max_new_tokens} tokens; score = #female − #male words, 95% bootstrap CI)\n" + "\n".join(lines))

    def html_table(self):
        return self.summary().round(3)


def bias_probe(model, prompts=None, concept="woman.n.01 - man.n.01", k: int = 3, max_new_tokens: int = 16,
               n_prompts: int | None = None, chat: bool = False, n_boot: int = 2000, seed: int = 0,
               frame_k: int = 3) -> BiasProbeResult:
    """Continue each prompt greedily, guided toward ``concept`` and away from it; count gender words."""

    from .scores import resolve_concepts

    prompts = list(OCCUPATION_PROMPTS if prompts is None else prompts)
    if n_prompts is not None:
        if not isinstance(n_prompts, int) or n_prompts < 1:
            raise InputError(f"n_prompts must be a positive integer, got {n_prompts!r}.")
        prompts = prompts[:n_prompts]
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError("bias_probe needs a non-empty list of non-empty prompt strings.")
    c = resolve_concepts(model, concept, frame_k)[0]
    texts = {x: [] for x in CONDITIONS}
    for p in prompts:
        g = guided_generate(model, p, c, k=k, max_new_tokens=max_new_tokens, direction="toward", chat=chat)
        a = guided_generate(model, p, c, k=k, max_new_tokens=max_new_tokens, direction="away", chat=chat,
                            greedy=False)
        texts["greedy"].append(g.greedy_text)
        texts["toward"].append(g.guided_text)
        texts["away"].append(a.guided_text)
    counts = {x: np.array([gender_counts(t) for t in texts[x]]).reshape(-1, 2) for x in CONDITIONS}
    return BiasProbeResult(model.info.name, c.name, k, max_new_tokens, prompts, texts,
                           {x: counts[x][:, 0] for x in CONDITIONS}, {x: counts[x][:, 1] for x in CONDITIONS},
                           n_boot, seed)


__all__ = ["bias_probe", "BiasProbeResult", "OCCUPATION_PROMPTS", "FEMALE_WORDS", "MALE_WORDS", "gender_counts",
           "bootstrap_ci", "CONDITIONS"]
