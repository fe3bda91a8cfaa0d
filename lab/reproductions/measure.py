"""Slower measurements for claims that no benchmark covers (minutes each on SmolLM2 on a CPU).

``run_measure(model, sections)`` returns {section: numbers}; ``scripts/reproductions.py --measure``
merges it into ``benchmarks/results/reproductions.json``.

- ``factual``: over bundled fact prompts, DLA of every prompt, head classes and the additive
  motif (top-1 rate of the answer under the sum of the groups vs the best single group, and the
  share where only the sum ranks it first); the suppressive heads of the last 3 layers zeroed
  (the SAT probe has its own section, ``sat``).
- ``active_dormant``: sink mass and zero-ablation ΔCE of random heads on the bundled prose and
  code texts; Spearman(sink mass, |ΔCE|) per domain with a 95% bootstrap interval over heads.
- ``lre``: linear relational embeddings under the paper's protocol (``probes.factual.lre_study``):
  few-shot Jacobians on 8 training subjects, layer and β chosen on validation subjects, rank of
  the inverse on validation edits; test faithfulness and causality (95% bootstrap intervals) per
  relation, with the swap and random-edit controls.
- ``sat``: the SAT probe as in the paper: 15-token greedy completions judged by verifiers (the whole
  answer), attention to every constraint, on fact prompts (first-token and full-answer labels), Words
  and countries with one and two constraints; out-of-fold probe AUROC vs the completion's mean
  log-probability and the top-1 probability, 95% bootstrap intervals.
- ``frames``: single-word concept guidance (top-k guided vs greedy decoding over prompts): the rate
  of the concept's own words in the continuations and a one-sided paired permutation test.
"""
from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from workbench.errors import InputError


@dataclass(frozen=True)
class MeasureSizes:
    """Sizes of the slower measurements (defaults: a few minutes each on SmolLM2, 2 CPU cores)."""

    facts_per_relation: int = 12
    sat_prompts_per_relation: int = 24
    sat_words_1: int = 48  # one-constraint Words prompts (48 = every feasible first and last letter)
    sat_words_2: int = 200  # two-constraint Words prompts (a seeded sample of feasible letter pairs)
    sat_countries_1: int = 58  # one-constraint country prompts (58 = all)
    sat_countries_2: int = 200  # two-constraint country prompts (a seeded sample)
    sat_max_new_tokens: int = 15
    sat_min_per_class: int = 5  # fewer correct (or wrong) answers than this: the probe is skipped, not fitted
    ad_heads: int = 90
    frames_prompts: int = 8
    frames_tokens: int = 10
    frames_k: int = 3
    frames_concepts: tuple = ("dog.n.01", "water.n.01")
    lre_relations: tuple = ("capital", "demonym", "antonym")
    lre_candidates: int = 60
    lre_train: int = 8
    lre_shots: int = 3
    lre_layers: tuple = (4, 8, 12, 16)
    n_boot: int = 2000
    n_perm: int = 10000
    seed: int = 0


# ------------------------------------------------------------------------------------------ statistics
def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``stat(idx)`` over ``n_boot`` resamples of ``range(n)`` with replacement
    (resamples where the statistic is undefined are dropped)."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(n_boot)]
    vals = np.array([v for v in vals if np.isfinite(v)])
    if not len(vals):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def paired_permutation_p(diff: Sequence[float], n_perm: int = 10000, seed: int = 0) -> float:
    """One-sided p-value that the mean paired difference is > 0 (random sign flips; exact when few pairs)."""
    d = np.asarray(diff, dtype=float)
    if d.ndim != 1 or not len(d):
        raise InputError("paired_permutation_p needs a non-empty 1-D list of differences.")
    obs = d.mean()
    if len(d) <= 16:  # all 2^n sign patterns
        signs = np.array(np.meshgrid(*[[-1, 1]] * len(d))).reshape(len(d), -1).T
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(d)))
    null = (signs * d).mean(1)
    return float((np.sum(null >= obs - 1e-12) + (0 if len(d) <= 16 else 1)) / (len(null) + (0 if len(d) <= 16 else 1)))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


# ------------------------------------------------------------------------------------------ sections
def measure_factual(model, sizes: MeasureSizes) -> dict:
    from probes.factual import (additive_motif, classify_heads, direct_logit_attribution_many, load_facts,
                                suppression_effect, suppressive_heads)

    facts = load_facts()
    mech = facts.sample(sizes.facts_per_relation, seed=1)
    results = direct_logit_attribution_many(model, mech, batch_size=16)
    right = [x for x in results if (x.logits[1:] < x.logits[0]).all()]
    used = right if len(right) >= 3 else results
    classes = classify_heads(used, metric="diff")
    motif = additive_motif(results, classes)
    t = motif.to_frame().set_index("group")
    groups = [g for g in t.index if g not in ("sum", "model", "only the sum is top-1")]
    single = t.loc[groups, "top1_rate"].dropna()
    out = {"n_prompts": len(results), "n_answer_first": len(right), "relations": sorted({x.relation for x in results}),
           "motif": {"top1_sum": float(t.loc["sum", "top1_rate"]), "top1_model": float(t.loc["model", "top1_rate"]),
                     "top1_best_group": float(single.max()) if len(single) else float("nan"),
                     "best_group": str(single.idxmax()) if len(single) else None,
                     "top1_by_group": {g: float(v) for g, v in single.items()},
                     "interference_rate": motif.interference_rate, "head_classes": classes.counts()}}
    heads = suppressive_heads(results, last_layers=3, threshold=-0.1, max_heads=3)
    sup = {"n_heads": len(heads), "heads": [f"L{l}H{h}" for l, h in heads]}
    if heads:
        r = suppression_effect(model, mech, [x.targets[0] for x in results], heads, alphas=(0.0, 1.0))
        f = r.to_frame().set_index("alpha")
        sup.update(p_clean=float(f.loc[1.0, "mean_p_answer"]), p_zeroed=float(f.loc[0.0, "mean_p_answer"]),
                   acc_clean=float(f.loc[1.0, "accuracy"]), acc_zeroed=float(f.loc[0.0, "accuracy"]))
    out["suppression"] = sup
    return out


def _sat_numbers(run, y: np.ndarray, label: str, model_name: str, sizes: MeasureSizes) -> dict:
    """Accuracy, probe and baseline AUROCs with 95% bootstrap intervals for one labelling of a constraint run."""
    from probes.factual.sat_constraints import fit_constraint_run

    y = np.asarray(y).astype(int)
    n_pos = int(y.sum())
    out = {"n_prompts": len(y), "n_correct": n_pos, "accuracy": float(y.mean()), "n_constraints": run.n_constraints,
           "label": label, "examples": [{"prompt": it.prompt, "completion": t, "correct": bool(v)} for it, t, v
                                        in list(zip(run.items, run.completions.texts, y))[:4]]}
    if min(n_pos, len(y) - n_pos) < sizes.sat_min_per_class:
        out["skipped"] = (f"{n_pos} correct and {len(y) - n_pos} wrong answers: the probe needs at least "
                          f"{sizes.sat_min_per_class} of each")
        return out
    res = fit_constraint_run(run, y, model_name=model_name, seed=sizes.seed)
    probe, conf, top1 = res.scores["probe"], res.scores["confidence"], res.scores["top1_prob"]

    def ci(s):  # a list, as it reads back from JSON
        return list(bootstrap_ci(lambda i: auroc(y[i], s[i]), len(y), sizes.n_boot, sizes.seed))

    out.update(C=res.C, n_nonzero=int((res.coef != 0).sum()), auroc_probe=auroc(y, probe), auroc_probe_ci=ci(probe),
               auroc_confidence=auroc(y, conf), auroc_confidence_ci=ci(conf), auroc_top1_prob=auroc(y, top1),
               auroc_top1_prob_ci=ci(top1), auroc_mean_attention=auroc(y, res.scores["mean_attention"]),
               gap_ci=list(bootstrap_ci(lambda i: auroc(y[i], probe[i]) - auroc(y[i], conf[i]), len(y),
                                        sizes.n_boot, sizes.seed)),
               top_heads=[{k: float(v) if k == "weight" else int(v) for k, v in r.items()}
                          for r in res.top_heads(5).to_dict("records")])
    return out


def measure_sat(model, sizes: MeasureSizes) -> dict:
    from probes.factual import load_facts
    from probes.factual.constraints import country_prompts, fact_constraint_prompts, word_prompts
    from probes.factual.lenses import token_id
    from probes.factual.sat_constraints import run_constraints

    facts = load_facts().sample(sizes.sat_prompts_per_relation, seed=2)
    datasets = {"facts": fact_constraint_prompts(facts),
                "words_1": word_prompts(1, sizes.sat_words_1, seed=sizes.seed),
                "words_2": word_prompts(2, sizes.sat_words_2, seed=sizes.seed),
                "countries_1": country_prompts(1, sizes.sat_countries_1, seed=sizes.seed),
                "countries_2": country_prompts(2, sizes.sat_countries_2, seed=sizes.seed)}
    full = "the verifier accepts the greedy completion (every constraint satisfied by the whole answer)"
    out = {"max_new_tokens": sizes.sat_max_new_tokens,
           "confidence": "mean log-probability of the greedy completion", "top1_prob": "first-token probability"}
    for name, items in datasets.items():
        run = run_constraints(model, items, max_new_tokens=sizes.sat_max_new_tokens)
        if name == "facts":
            first = np.array([token_id(model, f.answer) for f in facts])
            out["facts_first_token"] = _sat_numbers(run, run.completions.first_token == first,
                                                    "first answer token is the model's top-1 token", model.info.name,
                                                    sizes)
            out["facts_full"] = _sat_numbers(run, run.labels, "the completion starts with the answer",
                                             model.info.name, sizes)
        else:
            out[name] = _sat_numbers(run, run.labels, full, model.info.name, sizes)
    return out


def measure_active_dormant(model, sizes: MeasureSizes) -> dict:
    from probes.sinks import active_dormant

    L, H = model.info.n_layers, model.info.n_heads
    every = [(l, h) for l in range(L) for h in range(H)]
    heads = sorted(random.Random(sizes.seed).sample(every, min(sizes.ad_heads, len(every))))
    r = active_dormant(model, ("prose", "code"), heads=heads)
    out = {"n_heads": len(heads), "heads": [f"L{l}H{h}" for l, h in heads], "n_tokens": r.n_tokens.tolist()}
    for j, d in enumerate(r.domains):
        m, a = r.sink_mass[:, j], np.abs(r.dce[:, j])
        lo, hi = bootstrap_ci(lambda i, m=m, a=a: spearman(m[i], a[i]), len(heads), sizes.n_boot, sizes.seed)
        out[d] = {"spearman": spearman(m, a), "ci_low": lo, "ci_high": hi, "clean_ce": float(r.clean_ce[j])}
    return out


def _word_count(text: str, words: set[str]) -> int:
    return sum(1 for w in re.findall(r"[A-Za-z]+", text.lower()) if w in words)


def measure_frames(model, sizes: MeasureSizes) -> dict:
    from probes.frames import guided_generate
    from probes.frames.bias_probe import OCCUPATION_PROMPTS
    from probes.frames.wordnet import lookup_synset  # the system WordNet (make system), not nltk's download

    prompts = list(OCCUPATION_PROMPTS[:sizes.frames_prompts])
    guided, greedy, rows = [], [], []
    for name in sizes.frames_concepts:
        words = {w.lower() for lem in lookup_synset(name).lemma_names() for w in lem.split("_")}
        for p in prompts:
            g = guided_generate(model, p, name, k=sizes.frames_k, max_new_tokens=sizes.frames_tokens,
                                stop_at_eos=False)
            a, b = _word_count(g.guided_text, words), _word_count(g.greedy_text, words)
            guided.append(a)
            greedy.append(b)
            rows.append({"concept": name, "prompt": p, "guided": g.guided_text, "greedy": g.greedy_text,
                         "guided_hits": a, "greedy_hits": b})
    d = np.array(guided, float) - np.array(greedy, float)
    n = len(d)
    return {"guidance": {"concepts": list(sizes.frames_concepts), "n_pairs": n, "k": sizes.frames_k,
                         "tokens": sizes.frames_tokens, "rate_guided": float(np.mean(guided)),
                         "rate_greedy": float(np.mean(greedy)), "mean_diff": float(d.mean()),
                         "diff_ci": bootstrap_ci(lambda i: float(d[i].mean()), n, sizes.n_boot, sizes.seed),
                         "p_value": paired_permutation_p(d, sizes.n_perm, sizes.seed),
                         "test": "one-sided paired sign-flip permutation test, H1: guided > greedy",
                         "rows": rows}}


def measure_lre(model, sizes: MeasureSizes) -> dict:
    from probes.factual.lre_study import lre_study

    out: dict = {"relations": {}}
    for rel in sizes.lre_relations:
        r = lre_study(model, rel, n_candidates=sizes.lre_candidates, n_train=sizes.lre_train, n_shots=sizes.lre_shots,
                      layers=[min(x, model.info.n_layers - 1) for x in sizes.lre_layers], seed=sizes.seed)
        out["relations"][rel] = {
            "layer": r.layer, "beta": r.beta, "rank": r.rank, "n_candidates": r.n_candidates, "n_known": r.n_known,
            "n_test": r.n_test, "n_test_pairs": r.n_test_pairs, "faithfulness": r.faithfulness,
            "faithfulness_ci": list(r.faithfulness_ci), "causality": r.causality, "causality_ci": list(r.causality_ci),
            "swap_causality": r.swap_causality, "random_causality": r.random_causality,
            "validation_best_by_layer": {str(k): float(v) for k, v in
                                         r.validation.groupby("layer")["faithfulness"].max().items()},
            "validation_causality_by_rank": {str(k): v for k, v in r.causality_by_rank.items()},
            "train_subjects": r.train_subjects, "seconds": round(r.seconds, 1)}
    rels = out["relations"].values()
    out["max_faithfulness"] = max(x["faithfulness"] for x in rels)
    out["mean_faithfulness"] = float(np.mean([x["faithfulness"] for x in rels]))
    out["mean_causality"] = float(np.mean([x["causality"] for x in rels]))
    out["max_random_causality"] = max(x["random_causality"] for x in rels)
    out["n_relations"] = len(out["relations"])
    return out


MEASURE_SECTIONS: dict[str, Callable] = {"factual": measure_factual, "active_dormant": measure_active_dormant,
                                         "frames": measure_frames, "lre": measure_lre, "sat": measure_sat}


def run_measure(model, sections: Sequence[str], sizes: MeasureSizes | None = None,
                log: Callable[[str], None] | None = None) -> dict:
    """Run the named ``sections``; returns {section: numbers (with "seconds" and "sizes")}."""
    sizes = sizes or MeasureSizes()
    bad = [s for s in sections if s not in MEASURE_SECTIONS]
    if bad:
        raise InputError(f"Unknown measure sections {bad}; choose from {list(MEASURE_SECTIONS)}.")
    out = {}
    for s in sections:
        t = time.perf_counter()
        out[s] = {**MEASURE_SECTIONS[s](model, sizes), "seconds": round(time.perf_counter() - t, 1),
                  "sizes": asdict(sizes), "model": model.info.name}
        if log:
            log(f"measure {s}: {out[s]['seconds']:.0f} s")
    return out
