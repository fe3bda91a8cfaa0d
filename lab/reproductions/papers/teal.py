"""Liu et al. 2024, "Training-Free Activation Sparsity in LLMs" (TEAL)."""
from ..claim import NOT_AT_135M, AtMost, Claim, Derived, num
from ..sources import command, rel_change

CLAIMS = (
    Claim(
        key="sparsity.teal", paper="Liu et al. 2024 (TEAL)",
        claim="Zeroing the smallest 40-50% of every projection's input activations costs little quality.",
        paper_setting="Llama-2/3, Mistral 7B-70B; WikiText perplexity and downstream tasks",
        paper_number="40-50% model-wide sparsity with minimal degradation",
        our_setting="SmolLM2, per-layer thresholds calibrated on corpus text, 50% sparsity, out-of-domain perplexity",
        numbers=(num("base", ("sparsity_pruning", "teal/base/ppl_ood")),
                 num("sparse", ("sparsity_pruning", "teal/rows/[sparsity=0.5]/ppl_ood")),
                 Derived("rise", ("sparse", "base"), rel_change)),
        rule=AtMost("rise", 0.05, 0.2, fail=NOT_AT_135M),
        ours="perplexity {base:.2f} → {sparse:.2f} ({rise:+.1%}) at 50%",
        command=command("sparsity_pruning", sections=["teal"]),
        note="the masks are simulated (the paper's speedups need GPU kernels).",
    ),
)
