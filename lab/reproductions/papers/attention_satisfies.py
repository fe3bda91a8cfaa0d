"""Yuksekgonul et al., ICLR 2024, "Attention Satisfies": attention to constraints predicts factual errors."""
from ..claim import NOT_AT_135M, AllOf, AtLeast, Claim, Derived, num

PAPER = "Yuksekgonul et al. 2024 (Attention Satisfies)"
SETTING = ("Llama-2 7B/13B/70B; 10 datasets, > 40,000 prompts, single-constraint (e.g. CounterFact, Movies) and "
           "multi-constraint (Words, Books, Movies, Nobel winners); label from a greedy completion checked by a "
           "verifier; L1 logistic probe on attention to every constraint")
COMMAND = "python scripts/reproductions.py --measure sat"


def _sat(prefix: str, dataset: str):
    """probe AUROC, its CI low end, confidence AUROC, n and the gap, for one dataset of the "sat" section."""
    path = f"sat/{dataset}"
    return (num(f"{prefix}probe", ("reproductions", f"{path}/auroc_probe")),
            num(f"{prefix}probe_lo", ("reproductions", f"{path}/auroc_probe_ci/0")),
            num(f"{prefix}conf", ("reproductions", f"{path}/auroc_confidence")),
            num(f"{prefix}n", ("reproductions", f"{path}/n_prompts")),
            num(f"{prefix}acc", ("reproductions", f"{path}/accuracy")),
            Derived(f"{prefix}gap", (f"{prefix}probe", f"{prefix}conf"), lambda a, b: a - b))


def _rule(prefix: str):
    return AtLeast(f"{prefix}probe_lo", 0.5), AtLeast(f"{prefix}gap", -0.05, -0.15)


CLAIMS = (
    Claim(
        key="factual.sat_probe", paper=PAPER,
        claim="A linear probe on attention to the constraint (subject) tokens predicts whether the answer is correct "
              "about as well as the model's confidence.",
        paper_setting=SETTING,
        paper_number="SAT probe AUROC comparable to confidence on single-constraint data (per-dataset figures)",
        our_setting="SmolLM2, 120 bundled fact prompts, one constraint (the subject); label: the 15-token greedy "
                    "completion starts with the answer; out-of-fold probe AUROC vs confidence (mean log-probability "
                    "of the completion), 95% bootstrap intervals; one-constraint Words and country prompts shown too",
        numbers=(*_sat("", "facts_full"), *_sat("w_", "words_1"), *_sat("c_", "countries_1")),
        rule=AllOf(_rule(""), fail=NOT_AT_135M),
        ours="facts: probe AUROC {probe:.2f} (CI low {probe_lo:.2f}) vs confidence {conf:.2f}, {n} prompts, accuracy "
             "{acc:.2f}; Words: {w_probe:.2f} vs {w_conf:.2f} ({w_n}, acc {w_acc:.2f}); countries: {c_probe:.2f} vs "
             "{c_conf:.2f} ({c_n}, acc {c_acc:.2f})",
        command=COMMAND,
        note="verdict from the fact prompts only; small sets (48 and 58 one-constraint Words and country prompts) "
             "instead of thousands; first-token labels are in reproductions.json (sat/facts_first_token).",
    ),
    Claim(
        key="factual.sat_probe_two_constraints", paper=PAPER,
        claim="With two constraints, a probe on the attention to both constraints predicts whether the whole answer "
              "satisfies them about as well as the model's confidence.",
        paper_setting=SETTING,
        paper_number="SAT probe AUROC comparable to confidence on multi-constraint data (per-dataset figures)",
        our_setting="SmolLM2, Words (a word with a given first and last letter, checked against WordNet) and "
                    "countries (a region plus an official language or a capital's first letter, checked against "
                    "countryinfo), 200 prompts each; label: the verifier accepts the 15-token greedy completion; "
                    "features: attention to each constraint, concatenated; out-of-fold AUROC vs confidence",
        numbers=(*_sat("w_", "words_2"), *_sat("c_", "countries_2")),
        rule=AllOf((*_rule("w_"), *_rule("c_")), fail=NOT_AT_135M),
        ours="Words: probe AUROC {w_probe:.2f} (CI low {w_probe_lo:.2f}) vs confidence {w_conf:.2f}, {w_n} prompts, "
             "accuracy {w_acc:.2f}; countries: {c_probe:.2f} (CI low {c_probe_lo:.2f}) vs {c_conf:.2f}, {c_n} "
             "prompts, accuracy {c_acc:.2f}",
        command=COMMAND,
        note="our own two-constraint sets built offline (no Books, Movies or Nobel data); hundreds of prompts, not "
             "thousands, so intervals are wide; SmolLM2 rarely finds a word with both letters, so on Words neither "
             "the probe nor confidence is better than chance.",
    ),
)
