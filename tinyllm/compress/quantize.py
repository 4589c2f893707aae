"""Integer quantisation with round-to-nearest (RTN), from scratch.

A float weight ``w`` is stored as a small integer code ``q`` and a float scale
``s`` (and, for the asymmetric scheme, an integer zero point ``z``):

* symmetric (``q`` signed, ``b`` bits, ``qmax = 2^(b-1) - 1``)::

      s = max|w| / qmax          q = clip(round(w / s), -qmax - 1, qmax)          w ~ s * q

* asymmetric / affine (``q`` unsigned, ``qmax = 2^b - 1``; Jacob et al. 2018,
  "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
  Inference", eq. 1)::

      lo = min(w, 0), hi = max(w, 0)       (the range always holds 0, so 0 is exact)
      s = (hi - lo) / qmax      z = round(-lo / s)      q = clip(round(w / s) + z, 0, qmax)
      w ~ s * (q - z)

One scale is shared by a *granularity* of weights:

* ``"tensor"``  - one scale for the whole tensor;
* ``"channel"`` - one scale per row (every index but the last): per output channel
  when a Linear weight is passed as ``(OUT, IN)``;
* ``"group"``   - one scale per ``group_size`` consecutive entries of the last axis
  (GPTQ/AWQ and the GGML block formats use groups of 32-128).

The groups always run along the **last axis**. A tinyllm ``Linear`` stores
``W`` as ``(IN, OUT)``, so pass ``W.T`` (``(OUT, IN)``) to group along the input
features, as :class:`QuantizedLinear` does.

Padding rule (group-wise only): when the last axis ``L`` is not a multiple of
``group_size`` the call raises :class:`~tinyllm.errors.QuantizationError` unless
``pad=True``. With ``pad=True`` the last group is filled up by repeating its final
element ("edge" padding). Repeating an element changes neither the group's
minimum, maximum nor absolute maximum, so every real weight gets exactly the code
it would get in a group of its true size; :func:`dequantize` drops the padding.

NaN/inf weights and empty tensors raise ``QuantizationError``: a scale computed
from them would silently turn the whole group into NaN or zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.errors import QuantizationError
from tinyllm.nn.module import Module, Parameter

GRANULARITIES = ("tensor", "channel", "group")


@dataclass
class QuantizedTensor:
    """Integer codes plus what is needed to dequantise them.

    ``codes`` has shape ``(..., G, group)`` (G groups of ``group`` entries along the
    original last axis, after padding); ``scale`` and ``zero`` broadcast against it
    with shape ``(..., G, 1)`` (``(1, 1)``-like for per-tensor). ``shape`` is the
    original shape, ``pad`` the number of entries added to the last axis.
    """

    codes: Any            # int8 (symmetric) or uint8 (asymmetric)  (..., G, group)
    scale: Any            # float32                                  (..., G, 1)
    zero: Any | None      # uint8 zero points, None when symmetric   (..., G, 1)
    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None
    shape: tuple[int, ...]
    pad: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes to store it: codes at ``bits`` bits each (packed), float16 scales, 1-byte zeros.

        This is the storage size a real format would use (two 4-bit codes a byte,
        fp16 scales as in GGML); the arrays in memory may be wider.
        """
        n_codes = int(np.prod(self.codes.shape))
        n_scales = int(np.prod(self.scale.shape))
        zero_bytes = 0 if self.zero is None else int(np.prod(self.zero.shape))
        return (n_codes * self.bits + 7) // 8 + 2 * n_scales + zero_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(int(np.prod(self.shape)), 1)


def check_finite_nonempty(w: Any, name: str = "w") -> None:
    """Raise QuantizationError for an empty tensor or one holding NaN/inf."""
    if not hasattr(w, "shape") or not hasattr(w, "dtype"):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(w).__name__}")
    if not np.issubdtype(np.dtype(w.dtype), np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {w.dtype}")
    if w.size == 0 or w.ndim == 0:
        raise QuantizationError(f"cannot quantise {name}: it is empty (shape {tuple(w.shape)})")
    xp = get_array_module(w)
    finite = xp.isfinite(w)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = tuple(int(i) for i in np.unravel_index(int(xp.argmin(finite.ravel())), w.shape))
        raise QuantizationError(
            f"cannot quantise {name}: {bad} NaN/inf value(s) (the first at index {first}); "
            "a scale computed from them would be NaN/inf for the whole group"
        )


def _check_args(bits: int, granularity: str, group_size: int | None) -> None:
    if not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "group":
        if not isinstance(group_size, (int, np.integer)) or group_size <= 0:
            raise ValueError(f"group_size must be a positive integer for granularity='group', got {group_size!r}")


def to_groups(w: Any, granularity: str, group_size: int | None = None, pad: bool = False):
    """Reshape ``w`` to ``(..., G, group)`` for the given granularity; returns (groups, n_pad).

    See the module docstring for the padding rule.
    """
    xp = get_array_module(w)
    if granularity == "tensor":
        return w.reshape(1, -1), 0                                  # (1, numel)
    if granularity == "channel":
        return w.reshape(*w.shape[:-1], 1, w.shape[-1]), 0          # (..., 1, L)
    L = w.shape[-1]
    n_pad = (-L) % group_size
    if n_pad and not pad:
        raise QuantizationError(
            f"the last axis of w has {L} entries, not a multiple of group_size={group_size}; "
            f"pass pad=True to pad the last group by repeating its final value, or pick a group size dividing {L}"
        )
    if n_pad:
        widths = [(0, 0)] * (w.ndim - 1) + [(0, n_pad)]
        w = xp.pad(w, widths, mode="edge")
    return w.reshape(*w.shape[:-1], -1, group_size), n_pad        # (..., G, group)


def quant_params(groups: Any, bits: int, symmetric: bool):
    """Scale (and zero point) of each group; reduction over the last axis. Returns (scale, zero)."""
    xp = get_array_module(groups)
    groups = groups.astype(xp.float32, copy=False)
    if symmetric:
        qmax = float(2 ** (bits - 1) - 1)
        scale = xp.abs(groups).max(axis=-1, keepdims=True) / xp.float32(qmax)  # (..., G, 1)
        return scale.astype(xp.float32), None
    qmax = float(2 ** bits - 1)
    lo = xp.minimum(groups.min(axis=-1, keepdims=True), 0)
    hi = xp.maximum(groups.max(axis=-1, keepdims=True), 0)
    scale = ((hi - lo) / xp.float32(qmax)).astype(xp.float32)                 # (..., G, 1)
    safe = xp.where(scale > 0, scale, xp.float32(1))
    zero = xp.clip(xp.rint(-lo / safe), 0, qmax).astype(xp.uint8)             # (..., G, 1)
    return scale, zero


def quantize_groups(groups: Any, scale: Any, zero: Any | None, bits: int):
    """Round-to-nearest codes for ``groups`` given scales/zero points (broadcast)."""
    xp = get_array_module(groups)
    inv = xp.where(scale > 0, xp.float32(1) / xp.where(scale > 0, scale, xp.float32(1)), xp.float32(0))
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return xp.clip(xp.rint(groups * inv), -qmax - 1, qmax).astype(xp.int8)
    qmax = 2 ** bits - 1
    return xp.clip(xp.rint(groups * inv) + zero.astype(xp.float32), 0, qmax).astype(xp.uint8)


def dequantize_groups(codes: Any, scale: Any, zero: Any | None):
    """``s * q`` or ``s * (q - z)`` as float32, same shape as ``codes``."""
    xp = get_array_module(codes)
    q = codes.astype(xp.float32)
    if zero is not None:
        q = q - zero.astype(xp.float32)
    return q * scale


def quantize(
    w: Any,
    bits: int = 8,
    *,
    symmetric: bool = True,
    granularity: str = "channel",
    group_size: int | None = None,
    pad: bool = False,
) -> QuantizedTensor:
    """Quantise ``w`` with round-to-nearest; see the module docstring for the formulas.

    ``granularity`` is ``"tensor"``, ``"channel"`` (one scale per row) or ``"group"``
    (``group_size`` entries of the last axis share a scale; ``pad`` as documented).
    """
    _check_args(bits, granularity, group_size)
    check_finite_nonempty(w, "w")
    groups, n_pad = to_groups(w, granularity, group_size, pad)
    scale, zero = quant_params(groups, bits, symmetric)
    codes = quantize_groups(groups.astype(scale.dtype, copy=False), scale, zero, bits)
    return QuantizedTensor(codes, scale, zero, int(bits), bool(symmetric), granularity,
                           int(group_size) if granularity == "group" else None, tuple(w.shape), n_pad)


def dequantize(qt: QuantizedTensor) -> Any:
    """Float32 weights of the original shape (padding removed)."""
    w = dequantize_groups(qt.codes, qt.scale, qt.zero)                       # (..., G, group)
    if qt.granularity == "tensor":
        return w.reshape(qt.shape)
    w = w.reshape(*qt.shape[:-1], -1)                                       # (..., L + pad)
    if qt.pad:
        w = w[..., : qt.shape[-1]]
    return w


def fake_quantize(w: Any, bits: int = 8, **kwargs: Any) -> Any:
    """``dequantize(quantize(w, ...))``: the float weights a quantised model really computes with."""
    return dequantize(quantize(w, bits, **kwargs))


# ---------------------------------------------------------------------------
# 4-bit packing: two codes a byte, so 4-bit weights really take half a byte.
# ---------------------------------------------------------------------------
def pack_int4(codes: Any) -> Any:
    """Pack 4-bit codes (int8 in [-8, 7] or uint8 in [0, 15]) two a byte along the last axis (even length)."""
    xp = get_array_module(codes)
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even last axis, got shape {tuple(codes.shape)}")
    u = (codes.astype(xp.int16) & 0xF).astype(xp.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Any, signed: bool) -> Any:
    """Inverse of :func:`pack_int4`: uint8 ``(..., L/2)`` -> codes ``(..., L)`` (int8 if ``signed``)."""
    xp = get_array_module(packed)
    lo = packed & 0xF
    hi = packed >> 4
    out = xp.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], -1)
    if signed:
        out = out.astype(xp.int8)
        out = xp.where(out > 7, out - 16, out).astype(xp.int8)
    return out


class QuantizedLinear(Module):
    """A Linear layer whose weight lives in memory as integer codes plus scales.

    ``y = x @ dequantize(W_q) + b``: every forward dequantises the weight (a
    ``(IN, OUT)`` float32 temporary) and then calls the ordinary float matmul.

    Why NumPy gains memory but not speed: BLAS has no int4/int8 matrix product that
    NumPy could call, so the integers must be turned back into floats before every
    product. That costs an extra pass over the weight and a temporary as large as the
    float weight, so this layer is *slower* than a float ``Linear`` on the CPU; what it
    saves is resident memory between calls (4-bit codes take 1/8 of fp32, plus
    scales). Speed from quantisation needs a kernel that reads the small codes and
    dequantises them in registers inside the product (llama.cpp's CPU kernels,
    Marlin/ExLlama on GPUs): decoding one token is bound by memory bandwidth, so
    reading 4.5 instead of 32 bits per weight is what makes it faster. On CuPy this
    class runs the same way (dequantise, then cuBLAS), which saves GPU memory; a
    fused CUDA kernel would be needed to gain the speed.

    Weights are grouped along the input features (the layer quantises ``W.T``,
    shape ``(OUT, IN)``), as GPTQ and GGML do. 4-bit codes are packed two a byte.
    Inference only: there is no backward.
    """

    def __init__(self, qt: QuantizedTensor, bias: Any | None = None):
        if len(qt.shape) != 2:
            raise ValueError(f"QuantizedLinear needs a 2-D quantised weight (OUT, IN), got shape {qt.shape}")
        self.qt = qt
        self.out_features, self.in_features = qt.shape
        self.packed = qt.bits <= 4 and qt.codes.shape[-1] % 2 == 0
        self.codes = pack_int4(qt.codes) if self.packed else qt.codes
        self.bias = Parameter(bias) if bias is not None else None

    @classmethod
    def from_weight(cls, weight: Any, bias: Any | None = None, bits: int = 4, *, symmetric: bool = True,
                    granularity: str = "group", group_size: int | None = 32, pad: bool = True) -> "QuantizedLinear":
        """Quantise a float ``weight`` of shape ``(IN, OUT)`` (tinyllm's layout) with RTN."""
        if getattr(weight, "ndim", None) != 2:
            raise ValueError(f"weight must be a 2-D (IN, OUT) array, got shape {getattr(weight, 'shape', None)}")
        qt = quantize(weight.T, bits, symmetric=symmetric, granularity=granularity, group_size=group_size, pad=pad)
        return cls(qt, bias)

    def weight(self) -> Any:
        """The dequantised float32 weight, ``(IN, OUT)``."""
        codes = unpack_int4(self.codes, signed=self.qt.symmetric) if self.packed else self.codes
        qt = self.qt
        w = dequantize(QuantizedTensor(codes, qt.scale, qt.zero, qt.bits, qt.symmetric, qt.granularity,
                                       qt.group_size, qt.shape, qt.pad))   # (OUT, IN)
        return w.T                                                          # (IN, OUT)

    def forward(self, x: Any) -> Any:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        y = x @ self.weight()                                               # (..., OUT)
        if self.bias is not None:
            y = y + self.bias.data
        return y

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: codes (packed when 4-bit), scales, zero points and bias."""
        n = int(self.codes.nbytes) + int(self.qt.scale.nbytes)
        n += 0 if self.qt.zero is None else int(self.qt.zero.nbytes)
        n += 0 if self.bias is None else int(self.bias.data.nbytes)
        return n
