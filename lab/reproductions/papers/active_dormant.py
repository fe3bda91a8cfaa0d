"""Guo et al. 2024, "Active-Dormant Attention Heads": sinks, value drains, residual peaks, dormant heads."""
from ..claim import NOT_AT_135M, REFUTED, AtLeast, AtMost, Claim, Derived, num
from ..sources import QUICK, command, median_from

PAPER = "Guo et al. 2024 (Active-Dormant Attention Heads)"
SMOL = "SmolLM2-135M-Instruct, one 256-token English prompt, position 0 is the sink (no BOS)"

CLAIMS = (
    Claim(
        key="sinks.attention_sink", paper=PAPER,
        claim="Beyond the first layers most heads put a large share of their attention on the first token.",
        paper_setting="Llama-2/3, OLMo; attention mass on key 0 per head",
        paper_number="most heads after the first layers are sink heads (figures; no single scalar)",
        our_setting=SMOL + "; share of heads in layers ≥ 2 whose mean attention to position 0 exceeds 1/3",
        numbers=(num("share", (QUICK, "sinks/numbers/fraction_heads_mass0_gt_third_layers_ge2"),
                     ("sinks", "timing/numbers/fraction_heads_mass0_gt_third_layers_ge2")),),
        rule=AtLeast("share", 0.5, 0.25, fail=REFUTED),
        ours="{share:.0%} of heads in layers ≥ 2",
        command=command(QUICK),
    ),
    Claim(
        key="sinks.value_drain", paper=PAPER,
        claim="The sink token's value states are small: heads that sink write almost nothing (value-state drain).",
        paper_setting="Llama-2/3, OLMo; ‖v_0 W_O‖ of the sink vs other tokens",
        paper_number="sink value norms far below the other tokens' (figures)",
        our_setting=SMOL + "; median over layers ≥ 2 of ‖v_0 W_O‖ / mean over other tokens",
        numbers=(num("drain", (QUICK, "sinks/numbers/value_drain_ratio_per_layer"),
                     ("sinks", "timing/numbers/value_drain_ratio_per_layer")),
                 Derived("median_ratio", ("drain",), median_from(2))),
        rule=AtMost("median_ratio", 0.5, 1.0, fail=REFUTED),
        ours="median ratio {median_ratio:.2f} in layers ≥ 2",
        command=command(QUICK),
    ),
    Claim(
        key="sinks.residual_peak", paper=PAPER,
        claim="The sink token carries a residual-stream norm far above every other token's (residual peak).",
        paper_setting="Llama-3.1-8B and OLMo; ‖x_0‖ per layer vs other tokens",
        paper_number="hundreds vs tens (Llama-3.1-8B plot)",
        our_setting=SMOL + "; peak-token norm / median norm of the other tokens, largest over block outputs",
        numbers=(num("peak", (QUICK, "sinks/numbers/massive/max_ratio"), ("sinks", "timing/numbers/massive/max_ratio")),
                 num("pos", (QUICK, "sinks/numbers/massive/peak_position"),
                     ("sinks", "timing/numbers/massive/peak_position"))),
        rule=AtLeast("peak", 10.0, 3.0, fail=REFUTED),
        ours="{peak:.0f}× the median token, at position {pos}",
        command=command(QUICK),
    ),
    Claim(
        key="sinks.active_dormant", paper=PAPER,
        claim="Heads that sink more on a domain matter less there (dormant); sink mass and ablation importance "
              "are negatively correlated.",
        paper_setting="Llama-2-7B (L16H25 active on code, dormant on Wikipedia); toy Bigram-Backcopy",
        paper_number="negative relation between sink mass and ablation effect (qualitative)",
        our_setting="SmolLM2, random heads, bundled prose and code texts; Spearman(sink mass, |ΔCE| of zero-ablation) "
                    "per domain, upper end of the 95% bootstrap interval",
        numbers=(num("rho_prose", ("reproductions", "active_dormant/prose/spearman")),
                 num("hi_prose", ("reproductions", "active_dormant/prose/ci_high")),
                 num("rho_code", ("reproductions", "active_dormant/code/spearman")),
                 num("hi_code", ("reproductions", "active_dormant/code/ci_high")),
                 Derived("worst_hi", ("hi_prose", "hi_code"), max)),
        rule=AtMost("worst_hi", 0.0, 0.2, fail=NOT_AT_135M),
        ours="Spearman prose {rho_prose:+.2f} (CI high {hi_prose:+.2f}), code {rho_code:+.2f} (CI high {hi_code:+.2f})",
        command="python scripts/reproductions.py --measure active_dormant",
        note="reproduced needs a negative correlation whose 95% interval excludes 0 on both domains.",
    ),
)
