"""Yuksekgonul et al., ICLR 2024, "Attention Satisfies": attention to constraints predicts factual errors."""
from ..claim import NOT_AT_135M, AllOf, AtLeast, Claim, Derived, num

PAPER = "Yuksekgonul et al. 2024 (Attention Satisfies)"

CLAIMS = (
    Claim(
        key="factual.sat_probe", paper=PAPER,
        claim="A linear probe on attention to the constraint (subject) tokens predicts whether the answer is correct "
              "about as well as the model's confidence.",
        paper_setting="Llama-2 7B/13B/70B, 10-11 datasets, > 40,000 prompts; L1 logistic probe on attention",
        paper_number="AUROC comparable to confidence (per-dataset figures)",
        our_setting="SmolLM2, bundled fact prompts, one constraint (the subject), first answer token; out-of-fold "
                    "probe AUROC vs confidence AUROC, 95% bootstrap intervals",
        numbers=(num("probe", ("reproductions", "factual/sat/auroc_probe")),
                 num("probe_lo", ("reproductions", "factual/sat/auroc_probe_ci/0")),
                 num("conf", ("reproductions", "factual/sat/auroc_confidence")),
                 num("n", ("reproductions", "factual/sat/n_prompts")),
                 Derived("gap", ("probe", "conf"), lambda a, b: a - b)),
        rule=AllOf((AtLeast("probe_lo", 0.5), AtLeast("gap", -0.05, -0.15)), fail=NOT_AT_135M),
        ours="probe AUROC {probe:.2f} (CI low {probe_lo:.2f}) vs confidence {conf:.2f}, {n} prompts",
        command="python scripts/reproductions.py --measure factual",
        note="one constraint and first-token correctness only; the paper also has two-constraint prompts and "
             "full-answer labels.",
    ),
)
