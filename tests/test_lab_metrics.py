"""The lab's metric functions against hand computations on small tensors."""
import math

import numpy as np
import pytest
import torch

from lab.metrics import js_divergence, kl_from_logprobs, map_rows, pearson, residual_drift, topk_kept, total_variation
from lab.report import wilson


def test_residual_drift_by_hand():
    base = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # (L=1, N=2, d=2)
    new = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])
    rel, cos = residual_drift(base, new)
    # token 0 unchanged: 0 and 1; token 1: |(-1, 2)| / 1 = sqrt(5), cos = 0
    assert rel.item() == pytest.approx((0 + math.sqrt(5)) / 2)
    assert cos.item() == pytest.approx((1 + 0) / 2)
    rel0, cos0 = residual_drift(base, base.clone())
    assert rel0.item() == 0 and cos0.item() == pytest.approx(1.0)


def test_tv_js_kl_by_hand():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.25, 0.5])
    assert total_variation(p, q).item() == pytest.approx(0.5)
    m = np.array([0.375, 0.375, 0.25])
    kl = lambda a: sum(x * math.log(x / y) for x, y in zip(a, m) if x > 0)  # noqa: E731
    assert js_divergence(p, q).item() == pytest.approx(0.5 * kl([0.5, 0.5, 0]) + 0.5 * kl([0.25, 0.25, 0.5]))
    assert js_divergence(p, p).item() == 0
    assert js_divergence(torch.tensor([1.0, 0]), torch.tensor([0.0, 1])).item() == pytest.approx(math.log(2))
    lp, lq = torch.log(torch.tensor([0.5, 0.5])), torch.log(torch.tensor([0.9, 0.1]))
    assert kl_from_logprobs(lp, lq).item() == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))


def test_topk_kept_and_pearson_by_hand():
    base = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    new = torch.tensor([[3.0, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    kept = topk_kept(base, new, 2)
    # token 0: top-2 {0, 1} vs {0, 2} -> 1/2; token 1: nothing active at baseline -> NaN; token 2: {1} vs {} -> 0
    assert kept[0].item() == 0.5 and math.isnan(kept[1].item()) and kept[2].item() == 0.0
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.numpy(), b.numpy())[0, 1])
    assert math.isnan(pearson(a, torch.ones(3)))


def test_map_rows_gqa_and_padding():
    rows = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])  # (H=4, K=3)
    pos = torch.tensor([[0, 2, 5], [-1, 1, 4]])  # (G=2, K): KV head 1 has a padding slot
    out = map_rows(rows, pos, 6)
    assert out[0].tolist() == pytest.approx([0.2, 0, 0.3, 0, 0, 0.5])
    assert out[2].tolist() == pytest.approx([0, 0.1, 0, 0, 0.8, 0])  # the padding slot's 0.1 is dropped
    assert out[3].tolist() == pytest.approx([0, 0, 0, 0, 0, 0])


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert all(math.isnan(x) for x in wilson(0, 0))
