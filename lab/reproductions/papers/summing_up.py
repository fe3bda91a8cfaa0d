"""Chughtai, Cooney & Nanda, ICML 2024, "Summing Up the Facts": additive mechanisms of factual recall."""
from ..claim import NOT_AT_135M, AllOf, AtLeast, Claim, Derived, num

PAPER = "Chughtai et al. 2024 (Summing Up the Facts)"
CMD = "python scripts/reproductions.py --measure factual"
SETTING = ("SmolLM2, bundled fact prompts (several relations, candidates per relation); DLA through the frozen "
           "final norm, heads classed by where their DLA comes from")

CLAIMS = (
    Claim(
        key="factual.additive", paper=PAPER,
        claim="Several mechanisms (subject heads, relation heads, MLPs) each push many candidates; only their sum "
              "singles out the answer (constructive interference).",
        paper_setting="Pythia-2.8B (also GPT-J, GPT2-XL, Pythia 160M-12B); CounterFact-style prompts",
        paper_number="additive motif: no single mechanism suffices (qualitative)",
        our_setting=SETTING + "; top-1 rate of the answer under the sum vs the best single group, and the share of "
                    "prompts where only the sum ranks it first",
        numbers=(num("sum", ("reproductions", "factual/motif/top1_sum")),
                 num("best", ("reproductions", "factual/motif/top1_best_group")),
                 num("only_sum", ("reproductions", "factual/motif/interference_rate")),
                 Derived("gain", ("sum", "best"), lambda a, b: a - b)),
        rule=AllOf((AtLeast("only_sum", 0.2, 0.02), AtLeast("gain", 0.1, 0.0)), fail=NOT_AT_135M),
        ours="top-1: sum {sum:.0%} vs best group {best:.0%}; only the sum {only_sum:.0%}",
        command=CMD,
        note="head classes use our thresholds (share of DLA from subject vs relation tokens), not the paper's.",
    ),
    Claim(
        key="factual.suppression", paper=PAPER + "; Lv et al. 2024",
        claim="Heads in the last layers suppress the correct answer; removing them raises its probability.",
        paper_setting="Pythia-2.8B / GPT-2 family, Llama-2-7B",
        paper_number="negative DLA from late heads (anti-overconfidence)",
        our_setting=SETTING + "; heads of the last 3 layers with mean DLA < −0.1 zeroed, mean answer probability",
        numbers=(num("n_heads", ("reproductions", "factual/suppression/n_heads")),
                 num("p_clean", ("reproductions", "factual/suppression/p_clean")),
                 num("p_zeroed", ("reproductions", "factual/suppression/p_zeroed")),
                 Derived("rise", ("p_zeroed", "p_clean"), lambda a, b: a / b - 1)),
        rule=AllOf((AtLeast("n_heads", 1), AtLeast("rise", 0.05, 0.0))),
        ours="{n_heads} head(s); answer probability {p_clean:.3f} → {p_zeroed:.3f} zeroed",
        command=CMD,
    ),
)
