"""Low-rank methods: LASER, SVD-LLM, MHA2MLA (``benchmarks/bench_sparsity_pruning.py``)."""
from ..claim import NOT_AT_135M, REFUTED, AllOf, AtLeast, AtMost, Claim, Derived, num
from ..sources import command, rel_change

SP = "sparsity_pruning"


def _mla(dkv, svd: str, sel: str, key: str) -> tuple[str, str]:
    return (SP, f"mla/rows/[d_kv={dkv}&svd={svd}&rope_select={sel}]/{key}")


CLAIMS = (
    Claim(
        key="lowrank.laser", paper="Sharma et al. 2024 (LASER)",
        claim="Replacing one late MLP weight by a low-rank approximation can improve factual accuracy.",
        paper_setting="GPT-J, Llama-2, RoBERTa; CounterFact and other QA; layer, matrix and rank chosen on a "
                      "validation split",
        paper_number="GPT-J CounterFact accuracy roughly 13% → 24%",
        our_setting="SmolLM2, bundled facts; (layer, matrix, rank) chosen on half of the facts, accuracy change on "
                    "the other half with a 95% paired bootstrap interval",
        numbers=(num("base", (SP, "laser/heldout/base_accuracy")), num("best", (SP, "laser/heldout/best_accuracy")),
                 num("lo", (SP, "laser/heldout/ci_low")), num("delta", (SP, "laser/heldout/delta"))),
        rule=AllOf((AtLeast("lo", 0.0), AtLeast("delta", 0.02, 0.0)), fail=NOT_AT_135M),
        ours="held-out accuracy {base:.0%} → {best:.0%} (Δ {delta:+.1%}, CI low {lo:+.1%})",
        command=command(SP, sections=["laser"]),
    ),
    Claim(
        key="lowrank.svd_llm", paper="Wang et al. 2025 (SVD-LLM)",
        claim="Truncation-aware whitening makes truncated SVD lose far less than plain SVD at the same ratio.",
        paper_setting="Llama, OPT, Mistral 7B+; WikiText-2/C4 perplexity at 20-80% compression",
        paper_number="much lower perplexity than plain SVD and ASVD at every ratio",
        our_setting="SmolLM2, 20% of the linear weights removed, uniform ranks, whitened vs plain SVD, "
                    "out-of-domain perplexity",
        numbers=(num("white", (SP, "svd_llm/rows/[ratio=0.2&allocation=uniform]/ppl_ood")),
                 num("plain", (SP, "svd_llm/rows/[ratio=0.2&allocation=uniform, plain SVD (no whitening)]/ppl_ood")),
                 Derived("gain", ("plain", "white"), lambda a, b: a / b - 1)),
        rule=AtLeast("gain", 0.2, 0.0, fail=REFUTED),
        ours="perplexity whitened {white:.1f} vs plain {plain:.1f}",
        command=command(SP, sections=["svd_llm"]),
    ),
    Claim(
        key="lowrank.mha2mla.latent", paper="Ji et al. 2025 (MHA2MLA)",
        claim="Partial RoPE plus a joint low-rank latent for K and V cuts the KV cache by ~90% with a small loss "
              "(after brief fine-tuning).",
        paper_setting="SmolLM 135M-1.7B, Llama-2 7B/13B; fine-tuned on 0.3-1% of pretraining data; LongBench",
        paper_number="Llama-2-7B: −92% KV for ~0.5-1% LongBench drop",
        our_setting="SmolLM2 without fine-tuning, d_kv 32 latent, 8 RoPE dims kept by 2-norm; out-of-domain perplexity",
        numbers=(num("base", (SP, "mla/base/ppl_ood")), num("ppl", _mla(32, "plain", "2-norm", "ppl_ood")),
                 num("cut", _mla(32, "plain", "2-norm", "kv_reduction")),
                 Derived("rise", ("ppl", "base"), rel_change)),
        rule=AtMost("rise", 0.05, 0.5, fail=NOT_AT_135M),
        ours="KV −{cut:.0%}, perplexity {base:.2f} → {ppl:.2f} ({rise:+.0%})",
        command=command(SP, sections=["mla"]),
        note="no fine-tuning: the paper's own premise is that the conversion degrades until fine-tuned.",
    ),
    Claim(
        key="lowrank.mha2mla.rope_select", paper="Ji et al. 2025 (MHA2MLA)",
        claim="Keeping the RoPE dims with the largest query-key 2-norm is the best partial-RoPE choice.",
        paper_setting="SmolLM 135M-1.7B; 2-norm vs high / low frequency vs uniform selection",
        paper_number="2-norm selection loses least",
        our_setting="SmolLM2, full joint rank (only the partial RoPE changes), 8 RoPE dims; perplexity of 2-norm vs "
                    "the best of high, low, uniform",
        numbers=(num("norm", _mla(120, "plain", "2-norm", "ppl_ood")),
                 num("high", _mla(120, "plain", "high", "ppl_ood")),
                 num("low", _mla(120, "plain", "low", "ppl_ood")),
                 num("uni", _mla(120, "plain", "uniform", "ppl_ood")),
                 Derived("margin", ("norm", "high", "low", "uni"), lambda n, h, lo, u: min(h, lo, u) / n - 1)),
        rule=AtLeast("margin", 0.0, -0.05, fail=REFUTED),
        ours="perplexity 2-norm {norm:.2f}; high {high:.2f}, low {low:.2f}, uniform {uni:.2f}",
        command=command(SP, sections=["mla"]),
    ),
)
