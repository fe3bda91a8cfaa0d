"""SmolLM2: TEAL thresholds hit their target on the inputs they were calibrated on; gather = mask decoding."""
import pytest
import torch

from efficiency.sparsity import TEAL, calibrate_teal, measured_sparsity

TEXTS = ["The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door. " * 6,
         "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n" * 4]


@pytest.mark.smollm2
def test_teal_on_smollm2(smollm2):
    m = smollm2
    calib = calibrate_teal(m, TEXTS, window=96, n_windows=2)
    meth = TEAL(sparsity=0.5, calibration=calib)
    f = measured_sparsity(m, meth, TEXTS, window=96, n_windows=2).frame
    first = f[(f.layer == 0) & f.kind.isin(["q", "gate"])]  # inputs that see exactly the calibration data
    assert (first.measured - 0.5).abs().max() < 0.01
    outs = []
    for mode in ("gather", "mask"):
        with m.intervene(TEAL(sparsity=0.5, mode=mode, calibration=calib).intervention(m)):
            outs.append(m.generate("The capital of France is", 3, stop_at_eos=False))
    assert torch.equal(outs[0].new_tokens, outs[1].new_tokens)
    assert (outs[0].logits - outs[1].logits).abs().max() < 1e-3
