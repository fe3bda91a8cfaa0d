"""Layer pruning: ShortGPT, SLEB, LaCo (``benchmarks/bench_sparsity_pruning.py --sections pruning drop_speed``)."""
from ..claim import NOT_AT_135M, REFUTED, AtLeast, Claim, Derived, num
from ..sources import command

CMD = command("sparsity_pruning", sections=["pruning"])
SETTING = "SmolLM2, 30 blocks, calibration on corpus text; held-out fact accuracy and out-of-domain perplexity"


def _rows(method: str, ratio: float, key: str) -> tuple[str, str]:
    return ("sparsity_pruning", f"pruning/rows/[method={method}&ratio={ratio}]/{key}")


BASE_ACC = _rows("unmodified", 0.0, "fact_acc")
BASE_PPL = _rows("unmodified", 0.0, "ppl_ood")


def _kept(a, b):
    return a / b


CLAIMS = (
    Claim(
        key="pruning.shortgpt", paper="Men et al. 2024 (ShortGPT)",
        claim="Removing the blocks with the lowest Block Influence (about 25% of layers) keeps about 90% of task "
              "performance.",
        paper_setting="Llama-2 7B/13B, Baichuan2; MMLU, CMMLU and others",
        paper_number="~25% of layers removed, ~90% of performance kept",
        our_setting=SETTING + "; 20% of blocks (6) removed",
        numbers=(num("base", BASE_ACC), num("acc", _rows("shortgpt", 0.2, "fact_acc")),
                 Derived("kept", ("acc", "base"), _kept)),
        rule=AtLeast("kept", 0.9, 0.5, fail=NOT_AT_135M),
        ours="fact accuracy {base:.0%} → {acc:.0%} ({kept:.0%} kept)",
        command=CMD,
    ),
    Claim(
        key="pruning.sleb", paper="Song et al. 2024 (SLEB)",
        claim="Greedy removal by calibration loss (re-scoring after each removal) beats one-shot similarity "
              "scores at the same number of blocks.",
        paper_setting="OPT, Llama-2 7B-70B; C4/WikiText perplexity at 20% of blocks",
        paper_number="lower perplexity than prior block-pruning at 20%",
        our_setting=SETTING + "; 20% of blocks, perplexity SLEB vs ShortGPT",
        numbers=(num("sleb", _rows("sleb", 0.2, "ppl_ood")), num("sg", _rows("shortgpt", 0.2, "ppl_ood")),
                 Derived("gain", ("sg", "sleb"), lambda a, b: a / b - 1)),
        rule=AtLeast("gain", 0.05, 0.0, fail=REFUTED),
        ours="perplexity SLEB {sleb:.1f} vs ShortGPT {sg:.1f}",
        command=CMD,
    ),
    Claim(
        key="pruning.laco", paper="Yang et al. 2024 (LaCo)",
        claim="Merging rear layers into earlier ones keeps over 80% of performance at 25-30% pruning.",
        paper_setting="Llama-2 7B/13B, Baichuan2; multiple benchmarks",
        paper_number="> 80% of average performance at 25-30% pruning",
        our_setting=SETTING + "; 30% of blocks merged away",
        numbers=(num("base", BASE_ACC), num("acc", _rows("laco", 0.3, "fact_acc")),
                 Derived("kept", ("acc", "base"), _kept)),
        rule=AtLeast("kept", 0.8, 0.4, fail=NOT_AT_135M),
        ours="fact accuracy {base:.0%} → {acc:.0%} ({kept:.0%} kept)",
        command=CMD,
    ),
    Claim(
        key="pruning.speed", paper="Song et al. 2024 (SLEB)",
        claim="Dropping whole blocks speeds decoding roughly in proportion to the blocks removed.",
        paper_setting="Llama-2-70B on GPUs, 20% of blocks",
        paper_number="about 1.2-1.25× at 20%",
        our_setting="SmolLM2 on CPU, 20% of blocks, a pruned copy of the model, ms per decoded token side by side",
        numbers=(num("x", ("sparsity_pruning", "drop_speed/decode_speedup/pruned_copy")),),
        rule=AtLeast("x", 1.2, 1.1, fail=REFUTED),
        ours="{x:.2f}× decode",
        command=command("sparsity_pruning", sections=["drop_speed"]),
    ),
)
