"""Jin et al., ICML 2025, "Massive Values in Self-Attention Modules are the Key to Contextual Knowledge"."""
import statistics

from ..claim import REFUTED, AllOf, AtLeast, Claim, Derived, FirstOf, num
from ..sources import QUICK, command

PAPER = "Jin et al. 2025 (Massive Values in Q/K)"


def _qk_over_v(q, k, v):
    """min(mean Q, mean K concentration) / mean V concentration over layers ≥ 5."""
    return min(statistics.fmean(q[5:]), statistics.fmean(k[5:])) / statistics.fmean(v[5:])


def _late_share(q, k):
    """Mean of the Q and K energy share in the lowest-frequency quarter of RoPE pairs, layers ≥ L/2."""
    h = len(q) // 2
    return (statistics.fmean(q[h:]) + statistics.fmean(k[h:])) / 2


CLAIMS = (
    Claim(
        key="massive.qk_not_v", paper=PAPER,
        claim="Massive values concentrate in a few dims of Q and K, not of V.",
        paper_setting="Llama-2/3, Qwen, Gemma; per-head dim norms after RoPE",
        paper_number="concentrated Q/K maps, flat V maps (figures)",
        our_setting="SmolLM2, 256-token prompt, position 0 left out; per-head max-dim / mean-dim norm, mean over "
                    "layers ≥ 5; ratio of the smaller of Q, K to V",
        numbers=(num("q", (QUICK, "sinks/numbers/q_concentration"), ("sinks", "timing/numbers/q_concentration")),
                 num("k", (QUICK, "sinks/numbers/k_concentration"), ("sinks", "timing/numbers/k_concentration")),
                 num("v", (QUICK, "sinks/numbers/v_concentration"), ("sinks", "timing/numbers/v_concentration")),
                 Derived("qk_v", ("q", "k", "v"), _qk_over_v)),
        rule=AtLeast("qk_v", 2.0, 1.3, fail=REFUTED),
        ours="Q/K concentration {qk_v:.1f}× V's",
        command=command(QUICK),
    ),
    Claim(
        key="massive.low_frequency", paper=PAPER,
        claim="The massive Q/K dims are the low-frequency RoPE dims.",
        paper_setting="Llama-2-7B (dims 64-127 of 128 light up)",
        paper_number="energy in the low-frequency half (figures)",
        our_setting="SmolLM2 (θ = 1e5, d_head 64); share of Σ‖·‖² in the lowest-frequency quarter of pairs "
                    "(0.25 if flat), Q and K, layers ≥ 15",
        numbers=(num("q_low", (QUICK, "sinks/numbers/q_low_share")),
                 num("k_low", (QUICK, "sinks/numbers/k_low_share")),
                 Derived("share", ("q_low", "k_low"), _late_share)),
        rule=AtLeast("share", 0.4, 0.3, fail=REFUTED),
        ours="{share:.2f} of Q/K energy in the lowest-frequency quarter (flat: 0.25)",
        command=command(QUICK),
    ),
    Claim(
        key="massive.disruption", paper=PAPER,
        claim="Disrupting the massive Q/K dims breaks contextual retrieval (passkey) far more than parametric "
              "recall (facts).",
        paper_setting="Llama-2/3 etc.; top dim per head set to its mean, all layers; passkey (128 tokens) vs "
                      "city/celebrity QA",
        paper_number="contextual tasks collapse, parametric largely survive (third-party Llama-2-7B: −94% vs −25%)",
        our_setting="SmolLM2; 6 passkey prompts of ~128 tokens vs 10 short facts; top-1 dim per head; paper protocol "
                    "(all positions, accuracy), fallback with position 0 left clean (answer log-prob per token)",
        numbers=(num("pk_drop", (QUICK, "qk_disruption/all_positions/passkey_drop")),
                 num("fa_drop", (QUICK, "qk_disruption/all_positions/factual_drop")),
                 num("pk_lp0", (QUICK, "qk_disruption/skip_first/passkey_logprob_drop")),
                 num("fa_lp0", (QUICK, "qk_disruption/skip_first/factual_logprob_drop")),
                 Derived("gap", ("pk_drop", "fa_drop"), lambda a, b: a - b),
                 Derived("lp_gap0", ("pk_lp0", "fa_lp0"), lambda a, b: a - b)),
        # the paper's protocol on accuracy first; the fallback (position 0 clean, answer log-prob) caps at partly
        rule=FirstOf((AllOf((AtLeast("pk_drop", 0.5), AtLeast("gap", 0.25))), AtLeast("lp_gap0", 0.5, 0.1))),
        ours="accuracy drop passkey {pk_drop:.2f} vs facts {fa_drop:.2f}; with position 0 kept clean, answer "
             "log-prob drop passkey {pk_lp0:.2f} vs facts {fa_lp0:.2f} nats",
        command=command(QUICK),
        note="SmolLM2 has no BOS token: disrupting position 0 also rewrites the sink's own massive key dim.",
    ),
)
