"""Micro-benchmark: one layer's decode attention over ragged per-head KV storage, by candidate kernel.

    python benchmarks/bench_ragged_attention.py [--threads 2] [--calls 2000]

SmolLM2's shape (9 query heads, 3 KV heads, head dim 64), one query token. The uniform baseline is
torch's SDPA over a dense (1, 3, C, 64) cache; the ragged candidates read packed storage whose
three head segments hold 0.6 / 1.0 / 1.4 × C entries (the same total, AdaKV-like skew):

- ``addmm``: what ``workbench.kv_cache.RaggedLayer.attend`` does: every query head against all
  segments with an additive bias (0 on its own head's slots, -inf elsewhere), softmax, product;
- ``sdpa float mask`` / ``sdpa bool mask``: one SDPA call, the packed storage as a single KV head
  broadcast to all query heads (``enable_gqa``), the bias as ``attn_mask``.

Every candidate is checked against ``addmm`` before timing. Prints mean microseconds per call.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

H, G, D = 9, 3, 64


def _time(f, calls: int) -> float:
    for _ in range(50):
        f()
    t = time.perf_counter()
    for _ in range(calls):
        f()
    return (time.perf_counter() - t) / calls * 1e6


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024], help="entries per head (mean)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    r, scale, out = H // G, D ** -0.5, {}
    for c in args.sizes:
        lens = [int(c * 0.6), c, c * 3 - int(c * 0.6) - c]
        total = sum(lens)
        q = torch.randn(1, H, 1, D)
        ku, vu = torch.randn(1, G, c, D), torch.randn(1, G, c, D)
        kp, vp = torch.randn(total, D), torch.randn(total, D)
        bias = torch.full((H, total), float("-inf"))
        o = 0
        for g, n in enumerate(lens):
            bias[g * r:(g + 1) * r, o:o + n] = 0.0
            o += n
        k1, v1 = kp.view(1, 1, total, D), vp.view(1, 1, total, D)
        fmask, bmask = bias.view(1, H, 1, total), (bias == 0).view(1, H, 1, total)

        def addmm():
            s = torch.addmm(bias, q[0, :, 0], kp.t(), alpha=scale)
            return torch.mm(torch.softmax(s, -1), vp).view(1, H, 1, D)

        cands = {
            "uniform (dense SDPA)": lambda: F.scaled_dot_product_attention(q, ku, vu, scale=scale, enable_gqa=True),
            "addmm": addmm,
            "sdpa float mask": lambda: F.scaled_dot_product_attention(q, k1, v1, attn_mask=fmask, scale=scale,
                                                                      enable_gqa=True),
            "sdpa bool mask": lambda: F.scaled_dot_product_attention(q, k1, v1, attn_mask=bmask, scale=scale,
                                                                     enable_gqa=True),
        }
        ref = addmm()
        for name in ("sdpa float mask", "sdpa bool mask"):
            err = (cands[name]() - ref).abs().max().item()
            if err > 1e-5:
                raise AssertionError(f"{name} disagrees with addmm by {err:.2e}")
        out[c] = {name: round(_time(f, args.calls), 1) for name, f in cands.items()}
        print(c, out[c], flush=True)
    return out


if __name__ == "__main__":
    main()
