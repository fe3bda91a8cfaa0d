"""Quantization grids, bit packing and Hadamard matrices: exact round trips, exact bytes, orthogonality."""
import math

import pytest
import torch

from efficiency.quant.grids import (
    QuantizedWeight, dequantize_codes, quantize_tokens, quantize_weight, token_error,
)
from efficiency.quant.hadamard import (
    KroneckerHadamard, factor, hadamard, hadamard_factors, paley, random_hadamard, random_orthogonal, sylvester,
)
from efficiency.quant.packing import PackedWeight, pack_rows, packed_bytes, unpack_rows
from workbench import InputError


def _on_grid(out, n, bits, group, sym, seed=0):
    """A weight matrix whose every group lies exactly on an fp16 grid and touches both ends of its range."""
    g = torch.Generator().manual_seed(seed)
    gs = group or n
    ng = n // gs
    levels = (1 << bits) - 1
    codes = torch.randint(0, levels + 1, (out, ng, gs), generator=g)
    if sym:
        half = 1 << (bits - 1)
        codes = torch.randint(1, 2 * half, (out, ng, gs), generator=g)  # q - half in [-(half-1), half-1]
        codes[..., 0] = 1  # -qmax
        codes[..., 1] = 2 * half - 1  # +qmax
    else:
        codes[..., 0], codes[..., 1] = 0, levels
    scale = (torch.rand(out, ng, generator=g) * 0.05 + 0.001).half()
    zero = None if sym else ((torch.rand(out, ng, generator=g) - 0.5) * 0.2).half()
    w = dequantize_codes(codes.to(torch.uint8), scale, zero, bits, sym).reshape(out, n)
    return w, codes.reshape(out, n).to(torch.uint8), scale, zero


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_round_trips_exactly_on_grid_values(bits, group, sym):
    w, codes, scale, zero = _on_grid(12, 64, bits, group, sym)
    q = quantize_weight(w, bits, group, sym)
    assert torch.equal(q.codes, codes)
    assert torch.equal(q.scale, scale) and (zero is None or torch.equal(q.zero, zero))
    assert torch.equal(q.dequantize(), w)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_error_is_at_most_half_a_step(bits, sym):
    w = torch.randn(16, 96) * 0.1
    q = quantize_weight(w, bits, 32, sym)
    step = q.scale.float().repeat_interleave(32, dim=1)
    err = (q.dequantize() - w).abs()
    # half a step, plus the float16 rounding of the grid parameters (at most a few ulps times the code)
    assert bool((err <= step / 2 + (1 << bits) * step * 2 ** -11 + 1e-7).all())
    assert float(err.max()) > 0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group,sym", [(None, False), (32, False), (16, True), (None, True)])
def test_packed_bytes_equal_the_formula_and_unpack_is_exact(bits, group, sym):
    out, n = 10, 96
    q = quantize_weight(torch.randn(out, n), bits, group, sym)
    p = PackedWeight.from_quantized(q)
    n_groups = n // (group or n)
    formula = out * math.ceil(n * bits / 8) + out * n_groups * 2 * (1 if sym else 2)
    assert p.nbytes == packed_bytes(out, n, bits, group, sym) == formula
    assert torch.equal(p.unpack().codes, q.codes)
    assert torch.equal(p.dequantize(), q.dequantize())


def test_pack_rows_bit_layout():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]], dtype=torch.uint8)
    packed = pack_rows(codes, 3)  # 24 bits -> 3 bytes, least significant bit first
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes[0]))
    assert packed.tolist() == [[stream & 255, (stream >> 8) & 255, stream >> 16]]
    assert torch.equal(unpack_rows(packed, 3, 8), codes)
    assert pack_rows(torch.tensor([[1, 15]], dtype=torch.uint8), 4).tolist() == [[0xF1]]
    with pytest.raises(InputError, match="does not fit"):
        pack_rows(torch.tensor([[4]], dtype=torch.uint8), 2)


def test_bad_bits_and_groups_fail_clearly():
    w = torch.randn(4, 96)
    with pytest.raises(InputError, match="Weight bits must be one of"):
        quantize_weight(w, 5)
    with pytest.raises(InputError, match="group=64 does not divide the input dimension 96"):
        quantize_weight(w, 4, 64)
    with pytest.raises(InputError, match="group must be None"):
        quantize_weight(w, 4, 48)
    with pytest.raises(InputError, match="clip"):
        quantize_tokens(w, 4, clip=1.5)


def test_identity_group_of_one_row_is_per_channel():
    w = torch.randn(6, 64)
    assert torch.equal(quantize_weight(w, 4, None).dequantize(), quantize_weight(w, 4, None).dequantize())
    q = quantize_weight(w, 4, None)
    assert q.scale.shape == (6, 1) and isinstance(q, QuantizedWeight)


# ------------------------------------------------------------------------------------------ activations
def test_per_token_grids():
    x = torch.randn(5, 64)
    for sym in (True, False):
        xq = quantize_tokens(x, 8, sym)
        assert xq.shape == x.shape and float(token_error(x, 8, sym).max()) < 0.02
        assert float(token_error(x, 4, sym).mean()) > float(token_error(x, 8, sym).mean())
    # each row has its own scale: scaling one row scales its quantized image (scale equivariance)
    y = x.clone()
    y[2] *= 1000.0
    assert torch.allclose(quantize_tokens(y, 4)[2], 1000.0 * quantize_tokens(x, 4)[2], rtol=1e-5)
    assert torch.equal(quantize_tokens(y, 4)[0], quantize_tokens(x, 4)[0])
    # a one-hot row is exact under the symmetric grid; a flat ±c row too
    onehot = torch.zeros(1, 64)
    onehot[0, 7] = 24.0
    assert torch.equal(quantize_tokens(onehot, 4), onehot)
    flat = torch.sign(torch.randn(1, 64)) * 3.0
    assert torch.equal(quantize_tokens(flat, 4), flat)
    # asymmetric: zero stays exactly representable
    z = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    assert float(quantize_tokens(z, 4, sym=False)[0, 0]) == 0.0


# ------------------------------------------------------------------------------------------ Hadamard
@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 44, 64, 576, 1536])
def test_hadamard_is_orthogonal_with_flat_entries(n):
    H = hadamard(n)
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(H.abs(), torch.full_like(H, n ** -0.5), atol=1e-15)


@pytest.mark.parametrize("m", [12, 20, 36, 44, 60])
def test_paley_constructions(m):
    P = paley(m)
    assert set(P.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(P @ P.T, m * torch.eye(m, dtype=torch.float64))


def test_hadamard_sizes_of_smollm2_and_unsupported_sizes():
    assert factor(576) == (36, 16) and factor(1536) == (12, 128) and factor(64) == (1, 64)
    a, b = hadamard_factors(576)
    assert torch.allclose(torch.kron(a, b), hadamard(576), atol=0)
    assert torch.equal(sylvester(4), torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1.0]],
                                                  dtype=torch.float64))
    for n in (9, 6, 18, 3):
        with pytest.raises(InputError, match="No Hadamard matrix of order"):
            hadamard(n)


def test_online_kronecker_hadamard_equals_the_dense_product():
    for n in (64, 576, 1536):
        T = KroneckerHadamard(n, dtype=torch.float64)
        x = torch.randn(3, 5, n, dtype=torch.float64)
        assert torch.allclose(T(x), x @ hadamard(n), atol=1e-12)
        assert torch.allclose(T.matrix(), hadamard(n), atol=0)


def test_random_rotations_are_orthogonal_seeded_and_spread_a_one_hot():
    d = 576
    for R in (random_hadamard(d, 3), random_orthogonal(d, 3)):
        assert torch.allclose(R @ R.T, torch.eye(d, dtype=torch.float64), atol=1e-10)
    assert torch.equal(random_hadamard(d, 3), random_hadamard(d, 3))
    assert not torch.equal(random_orthogonal(d, 3), random_orthogonal(d, 4))
    e = torch.zeros(1, d, dtype=torch.float64)
    e[0, 507] = 24.0
    rh, ro = e @ random_hadamard(d, 0), e @ random_orthogonal(d, 0)
    assert torch.allclose(rh.abs(), torch.ones_like(rh))  # 24 e_507 -> flat ±1
    # DFRot's mechanism: the flat vector is exact under a symmetric 4-bit grid, the Gaussian one is not
    assert float(token_error(rh, 4)) < 1e-12
    assert float(token_error(ro, 4)) > 0.05
    assert float(token_error(e, 4)) < 1e-12  # unrotated one-hot: exact too
