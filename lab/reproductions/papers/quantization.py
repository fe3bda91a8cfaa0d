"""Rotation-based W4A4 quantization (QuaRot, DFRot) and GPTQ, from ``benchmarks/bench_quant.py``."""
from ..claim import NOT_AT_135M, REFUTED, AllOf, AtLeast, AtMost, Claim, Derived, num

CMD = "python benchmarks/bench_quant.py --sections quality"
SETTING = ("SmolLM2, fake-quantized weights and activations (simulated), perplexity on held-out Python-docs windows "
           "(calibration on WordNet glosses)")


def _row(label: str, key: str = "perplexity") -> tuple[str, str]:
    return ("quant", f"quality/rows/[label={label}]/{key}")


def _closed(norot, rot, fp):
    """Share of the W4A4 perplexity gap that the rotation closes."""
    return (norot - rot) / (norot - fp)


CLAIMS = (
    Claim(
        key="quant.quarot", paper="Ashkboos et al. 2024 (QuaRot)",
        claim="Hadamard rotations remove activation outliers, so 4-bit weights and activations (W4A4) lose little "
              "perplexity.",
        paper_setting="Llama-2 7B-70B, WikiText-2, W4A4 (+ KV4), GPTQ weights",
        paper_number="Llama-2-70B W4A4KV4: ≤ 0.29 perplexity loss",
        our_setting=SETTING + "; W4A4 with RTN weights, no rotation vs randomized Hadamard (RH)",
        numbers=(num("fp", _row("fp32")), num("norot", _row("W4A4 (no rotation)")), num("rh", _row("W4A4 RH (QuaRot)")),
                 Derived("closed", ("norot", "rh", "fp"), _closed),
                 Derived("rise", ("rh", "fp"), lambda a, b: a / b - 1)),
        rule=AllOf((AtLeast("closed", 0.5, 0.1), AtMost("rise", 0.1, 1.0)), fail=NOT_AT_135M),
        ours="perplexity fp32 {fp:.2f}, W4A4 {norot:.2f}, W4A4 + RH {rh:.2f} ({closed:.0%} of the gap closed)",
        command=CMD,
        note="no fine-tuning and RTN weights (the paper's best numbers use GPTQ); a 135M model has little redundancy.",
    ),
    Claim(
        key="quant.dfrot.rh_vs_ro", paper="Xiang & Zhang 2024 (DFRot)",
        claim="A randomized Hadamard rotation beats a random orthogonal one at W4A4 (because of the massive "
              "activations of a few tokens).",
        paper_setting="Llama-2/3, Mistral; WikiText-2 at W4A4KV4",
        paper_number="Llama-3-8B W4A4KV4: RO 10.54 vs RH 8.20 perplexity",
        our_setting=SETTING + "; RH vs RO, same seed and RTN weights",
        numbers=(num("rh", _row("W4A4 RH (QuaRot)")), num("ro", _row("W4A4 RO (QuaRot, random orthogonal)")),
                 Derived("adv", ("ro", "rh"), lambda a, b: a / b - 1)),
        rule=AtLeast("adv", 0.02, 0.0, fail=REFUTED),
        ours="perplexity RH {rh:.2f} vs RO {ro:.2f}",
        command=CMD,
    ),
    Claim(
        key="quant.dfrot.refined", paper="Xiang & Zhang 2024 (DFRot)",
        claim="Refining the rotation for the massive-activation tokens lowers W4A4 perplexity further than QuaRot's RH.",
        paper_setting="Llama-3-8B, WikiText-2, W4A4KV4 / W4A4KV16",
        paper_number="−0.25 / −0.21 perplexity vs QuaRot",
        our_setting=SETTING + "; DFRot vs RH",
        numbers=(num("rh", _row("W4A4 RH (QuaRot)")), num("df", _row("W4A4 DFRot")),
                 Derived("gain", ("rh", "df"), lambda a, b: a / b - 1)),
        rule=AtLeast("gain", 0.01, -0.01, fail=NOT_AT_135M),
        ours="perplexity DFRot {df:.2f} vs RH {rh:.2f}",
        command=CMD,
    ),
    Claim(
        key="quant.gptq", paper="Frantar et al. 2023 (GPTQ)",
        claim="Second-order error compensation (GPTQ) beats round-to-nearest at 3-4 bits.",
        paper_setting="OPT, BLOOM up to 175B; WikiText-2 at 3-4 bits",
        paper_number="far lower perplexity than RTN at 3 bits",
        our_setting=SETTING + "; W3 per-channel, GPTQ vs RTN",
        numbers=(num("gptq", _row("GPTQ W3 per-channel")), num("rtn", _row("RTN W3 per-channel")),
                 Derived("gain", ("rtn", "gptq"), lambda a, b: a / b - 1)),
        rule=AtLeast("gain", 0.1, 0.0, fail=REFUTED),
        ours="perplexity GPTQ {gptq:.2f} vs RTN {rtn:.2f}",
        command=CMD,
    ),
)
