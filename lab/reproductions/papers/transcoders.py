"""Transcoders against SAEs at matched L0.

Dunefsky, Chlenski & Nanda, NeurIPS 2024, "Transcoders Find Interpretable LLM Feature Circuits"
(plain transcoders), and Paulo, Shabalin & Belrose 2025, "Transcoders Beat Sparse Autoencoders for
Interpretability" (skip transcoders: a linear skip connection added to the transcoder).
"""
from ..claim import REFUTED, AllOf, AtLeast, AtMost, Claim, Derived, num
from ..sources import COMMANDS

PAPER = "Dunefsky et al. 2024 (Transcoders)"
SKIP_PAPER = "Paulo et al. 2025 (Skip transcoders)"
COMMAND = COMMANDS["transcoders"]
WHERE = {"ood": "out-of-domain text", "heldout": "held-out in-domain text"}


def _row(name: str, eval_set: str) -> str:
    return f"fidelity/[name={name}&eval_set={eval_set}]"


def _plain(layer: int) -> str:
    return f"plain transcoder L{layer}"


def _sae(layer: int) -> str:
    return f"SAE mlp_out L{layer}"


def _claim(layer: int, eval_set: str) -> Claim:
    tc, sae = _row(_plain(layer), eval_set), _row(_sae(layer), eval_set)
    where = WHERE[eval_set]
    return Claim(
        key=f"transcoders.matched_l0.L{layer}.{eval_set}", paper=PAPER,
        claim="At matched sparsity (L0), a transcoder replacing the MLP keeps as much of the model's loss as an SAE "
              "on the MLP output.",
        paper_setting="GPT-2 small, Pythia-410M/1.4B; CE loss recovered vs L0",
        paper_number="transcoders on par with or better than SAEs on the loss/L0 frontier",
        our_setting=f"SmolLM2 layer {layer}, shipped plain TopK transcoder and SAE (same trainer, batches, k, width), "
                    f"{where}; loss recovered vs zero-ablation",
        numbers=(num("tc", ("transcoders", f"{tc}/loss recovered")), num("sae", ("transcoders", f"{sae}/loss recovered")),
                 num("l0_tc", ("transcoders", f"{tc}/L0")), num("l0_sae", ("transcoders", f"{sae}/L0")),
                 Derived("gap", ("tc", "sae"), lambda a, b: a - b),
                 Derived("l0_mismatch", ("l0_tc", "l0_sae"), lambda a, b: abs(a - b) / max(a, b))),
        rule=AllOf((AtMost("l0_mismatch", 0.1), AtLeast("gap", -0.01, -0.05)), fail=REFUTED),
        ours=f"layer {layer}, {where}: " + "loss recovered {tc:.3f} (transcoder, L0 {l0_tc:.0f}) vs {sae:.3f} "
             "(SAE, L0 {l0_sae:.0f})",
        command=COMMAND,
    )


def _skip_claim(layer: int, eval_set: str) -> Claim:
    skip, tc = _row(f"transcoder L{layer}", eval_set), _row(_plain(layer), eval_set)
    sae = _row(_sae(layer), eval_set)
    where = WHERE[eval_set]
    return Claim(
        key=f"transcoders.skip.L{layer}.{eval_set}", paper=SKIP_PAPER,
        claim="An affine skip connection lowers a transcoder's reconstruction loss at the same sparsity, "
              "to where it matches or beats an SAE.",
        paper_setting="Pythia, Llama-3.2, Gemma-2 MLPs; FVU and CE loss vs L0, SAEBench",
        paper_number="skip transcoders: lower reconstruction loss than transcoders, Pareto-dominating SAEs",
        our_setting=f"SmolLM2 layer {layer}, shipped TopK skip transcoder vs the plain one and the SAE (same "
                    f"trainer, batches, k, width), {where}; FVU of mlp_out and loss recovered vs zero-ablation",
        numbers=(num("fvu_skip", ("transcoders", f"{skip}/FVU")), num("fvu_tc", ("transcoders", f"{tc}/FVU")),
                 num("skip", ("transcoders", f"{skip}/loss recovered")),
                 num("sae", ("transcoders", f"{sae}/loss recovered")),
                 num("l0_skip", ("transcoders", f"{skip}/L0")), num("l0_tc", ("transcoders", f"{tc}/L0")),
                 Derived("fvu_drop", ("fvu_tc", "fvu_skip"), lambda a, b: a - b),
                 Derived("gap_sae", ("skip", "sae"), lambda a, b: a - b),
                 Derived("l0_mismatch", ("l0_skip", "l0_tc"), lambda a, b: abs(a - b) / max(a, b))),
        rule=AllOf((AtMost("l0_mismatch", 0.1), AtLeast("fvu_drop", 0.0), AtLeast("gap_sae", -0.01, -0.05)),
                   fail=REFUTED),
        ours=f"layer {layer}, {where}: " + "FVU {fvu_skip:.3f} with the skip vs {fvu_tc:.3f} without; loss recovered "
             "{skip:.3f} vs the SAE's {sae:.3f}",
        command=COMMAND,
    )


CLAIMS = tuple(_claim(l, s) for l in (8, 15) for s in ("ood", "heldout")) + \
    tuple(_skip_claim(l, s) for l in (8, 15) for s in ("ood", "heldout"))
