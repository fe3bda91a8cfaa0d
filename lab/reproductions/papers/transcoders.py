"""Dunefsky, Chlenski & Nanda, NeurIPS 2024, "Transcoders Find Interpretable LLM Feature Circuits"."""
from ..claim import REFUTED, AllOf, AtLeast, AtMost, Claim, Derived, num

PAPER = "Dunefsky et al. 2024 (Transcoders)"


def _claim(layer: int, eval_set: str) -> Claim:
    tc = f"fidelity/[name=transcoder L{layer}&eval_set={eval_set}]"
    sae = f"fidelity/[name=SAE mlp_out L{layer}&eval_set={eval_set}]"
    where = {"ood": "out-of-domain text", "heldout": "held-out in-domain text"}[eval_set]
    return Claim(
        key=f"transcoders.matched_l0.L{layer}.{eval_set}", paper=PAPER,
        claim="At matched sparsity (L0), a transcoder replacing the MLP keeps as much of the model's loss as an SAE "
              "on the MLP output.",
        paper_setting="GPT-2 small, Pythia-410M/1.4B; CE loss recovered vs L0",
        paper_number="transcoders on par with or better than SAEs on the loss/L0 frontier",
        our_setting=f"SmolLM2 layer {layer}, shipped TopK transcoder and SAE (same trainer, data, k), {where}; "
                    "loss recovered vs zero-ablation",
        numbers=(num("tc", ("transcoders", f"{tc}/loss recovered")), num("sae", ("transcoders", f"{sae}/loss recovered")),
                 num("l0_tc", ("transcoders", f"{tc}/L0")), num("l0_sae", ("transcoders", f"{sae}/L0")),
                 Derived("gap", ("tc", "sae"), lambda a, b: a - b),
                 Derived("l0_mismatch", ("l0_tc", "l0_sae"), lambda a, b: abs(a - b) / max(a, b))),
        rule=AllOf((AtMost("l0_mismatch", 0.1), AtLeast("gap", -0.01, -0.05)), fail=REFUTED),
        ours=f"layer {layer}, {where}: " + "loss recovered {tc:.3f} (transcoder, L0 {l0_tc:.0f}) vs {sae:.3f} "
             "(SAE, L0 {l0_sae:.0f})",
        command="python benchmarks/bench_transcoders.py --skip-harvest",
    )


CLAIMS = (_claim(8, "ood"), _claim(8, "heldout"))
