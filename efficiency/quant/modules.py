"""Replacement modules for linears: simulated activation quantization (with an optional online Hadamard),
and the real int8 path through fbgemm.

``QuantLinear`` computes ``y = F.linear(A(T(x)), W, b)``: T an optional input transform (the online
Hadamard before ``down_proj``), A the optional per-token fake quantizer of the input, W the (possibly
fake-quantized) weight. ``weight`` is a Parameter holding W, the matrix applied to T(x): with an online
Hadamard it is W_orig · H, so analyses that read ``weight`` see the Hadamard basis; ``effective_weight()``
gives the matrix applied to the raw input x (W Tᵀ). The module holds no packed codes itself: the
weight-quantizing intervention holds them (``QuantEdit.packed``).

``Int8DynamicLinear`` wraps ``torch.ao.nn.quantized.dynamic.Linear`` (``quantized::linear_dynamic`` on the
fbgemm/x86 engine): int8 weights per output channel, the input quantized to 8 bits per call with one
range for the whole input tensor. With ``per_token`` (default), a multi-token input (prefill, a
teacher-forced pass) runs one token per call, so each token gets its own range and the attention sink's
massive activation cannot set the range of a whole prompt; decoding feeds one token per step anyway. ``weight`` / ``bias`` are read-only properties returning the dequantized
float32 weight (computed on access) so analyses keep working; the packed int8 weight is what the model
holds (``Model.parameter_bytes()`` counts it).
"""
from __future__ import annotations

import functools

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from workbench.errors import InputError

from .grids import check_act_bits, quantize_tokens


class ActQuantizer(nn.Module):
    """Per-token fake quantization of the last dim (``grids.quantize_tokens``)."""

    def __init__(self, bits: int, sym: bool = True, clip: float = 1.0):
        super().__init__()
        self.bits, self.sym, self.clip = check_act_bits(bits), bool(sym), float(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_tokens(x, self.bits, self.sym, self.clip)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, sym={self.sym}, clip={self.clip}"


class QuantLinear(nn.Module):
    """``y = F.linear(act(transform(x)), weight, bias)`` (see the module docstring).

    weight (out, in) and bias (out,) are copied into frozen Parameters; transform: a module mapping
    (..., in) -> (..., in) or None; act: an ``ActQuantizer`` or None."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, transform: nn.Module | None = None,
                 act: ActQuantizer | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.transform = transform
        self.act = act
        self.out_features, self.in_features = self.weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight, self.bias)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """T(x): what ``weight`` is applied to, before activation quantization (for calibration)."""
        return x if self.transform is None else self.transform(x)

    def effective_weight(self) -> torch.Tensor:
        """(out, in) the matrix applied to the raw input x (``weight`` times the transform's transpose)."""
        w = self.weight.detach()
        if self.transform is None:
            return w
        eye = torch.eye(self.in_features, dtype=w.dtype, device=w.device)
        return w @ self.transform(eye).t()

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}"


def supported_engines() -> list[str]:
    """PyTorch's quantized engines on this build (``torch.backends.quantized.supported_engines``)."""
    return list(torch.backends.quantized.supported_engines)


def fbgemm_available() -> bool:
    engines = supported_engines()
    return "fbgemm" in engines or "x86" in engines


def check_fbgemm() -> None:
    if not fbgemm_available():
        raise InputError("int8 dynamic quantization needs PyTorch's fbgemm (x86) quantized engine, which this PyTorch "
                         f"build does not have (supported engines: {supported_engines()}). "
                         "Use an x86 CPU build of PyTorch, or a simulated method (get_method('rtn', bits=8)).")


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool | None:
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI (Linux ``/proc/cpuinfo``); None when it cannot be read.

    With VNNI, fbgemm's int8 kernels multiply and accumulate in 32 bits, so the full 8-bit input range is
    exact; without it (AVX2 only) pairs of u8 x s8 products are summed in saturating 16-bit registers, which
    is why fbgemm quantizes inputs to 7 bits by default (``reduce_range``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_vnni", "avx_vnni"} & flags)
    except OSError:
        return None
    return None


def check_int8_act_bits(act_bits: int) -> None:
    if act_bits not in (7, 8):
        raise InputError(f"int8 dynamic: act_bits must be 7 (fbgemm's default) or 8, got {act_bits!r}.")
    if act_bits == 8 and not cpu_has_vnni():
        raise InputError("int8 dynamic: act_bits=8 (the full 8-bit input range) is exact only on CPUs with VNNI "
                         "(avx512_vnni or avx_vnni), which this CPU does not report; without it fbgemm's 16-bit "
                         "intermediate sums can saturate. Use act_bits=7.")


class Int8DynamicLinear(nn.Module):
    """A linear run by fbgemm's dynamic int8 kernel (see the module docstring).

    Weight quantization: symmetric int8 per output channel, ``scale = max|w_row| / 127`` (zero point 0).
    per_token: True runs a multi-token input one token per kernel call, so every token gets its own input range
    (a single token, as in decoding, is always one call); False hands the whole input to one call (fbgemm's
    own behaviour: one range for all tokens, fastest prefill, but the attention sink's massive activation then
    sets the range of the whole prompt). act_bits: 7 quantizes each input to 7 bits of range (fbgemm's default,
    safe on every x86 CPU), 8 to the full 8 bits (half the rounding error; needs VNNI, ``cpu_has_vnni``).
    transform: an optional module applied to the float input before it is quantized (QuaRot's online Hadamard
    before down_proj; ``weight`` is then already W·Hᵀ, and reads back in that basis, as ``QuantLinear``'s does)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, per_token: bool = True,
                 transform: nn.Module | None = None, act_bits: int = 7):
        super().__init__()
        check_fbgemm()
        check_int8_act_bits(act_bits)
        self.act_bits = act_bits
        self.per_token = bool(per_token)
        self.transform = transform  # e.g. QuaRot's online Hadamard: y = W_q · T(x), weight given as W·Tᵀ
        w = weight.detach().float().cpu()
        out, n = w.shape
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # torch marks quantized tensor creation deprecated; fbgemm still needs it
            warnings.simplefilter("ignore", UserWarning)
            qw = torch.quantize_per_channel(w, scale, torch.zeros(out, dtype=torch.long), 0, torch.qint8)
        self.inner = torch.ao.nn.quantized.dynamic.Linear(n, out, bias_=bias is not None, dtype=torch.qint8)
        self.inner.set_weight_bias(qw, None if bias is None else bias.detach().float().cpu())
        self.out_features, self.in_features = out, n
        # the kernel is called directly (what ``inner.forward`` does for qint8, version >= 4, with 7-bit input
        # ranges, or the full 8 bits with act_bits=8): one module call fewer per linear, ~1 ms per decoded token
        self._packed = self.inner._packed_params._packed_params

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=self.act_bits == 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        n = x.shape[-1]
        if not self.per_token or x.numel() == n:
            return self._kernel(x)
        rows = x.reshape(-1, n)
        out = torch.cat([self._kernel(rows[i:i + 1]) for i in range(rows.shape[0])])
        return out.reshape(*x.shape[:-1], self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) dequantized float32 weight (a new tensor on every access; read-only)."""
        return self.inner.weight().dequantize()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int8 per channel (fbgemm dynamic), "
                f"{self.act_bits}-bit input ranges per {'token' if self.per_token else 'call'}"
                + (", online input transform" if self.transform is not None else ""))
