"""Optional fused kernels behind one interface: a NumPy reference, a CuPy kernel on the GPU.

Why fuse? On a GPU every NumPy-style operation is a separate *kernel launch*
that reads its inputs from GPU memory and writes its result back. RMSNorm written
as ``x * (1 / sqrt(mean(x*x) + eps)) * w`` is five or six launches and as many
round trips through memory; at batch 1 a 135M model makes ~30 of these per layer,
and each launch costs a few microseconds whatever the size of the array. A fused
kernel does the whole formula in one launch, reading ``x`` once and writing ``y``
once (Dao et al. 2022 make the same argument for attention, "FlashAttention").

Every function here takes its array module from its inputs
(:func:`tinyllm.backend.get_array_module`):

- NumPy input -> the *reference*: plain array code, the definition the kernel is
  tested against (and the same maths as :mod:`tinyllm.nn.functional`);
- CuPy float32 input -> a fused ``cupy.ElementwiseKernel`` / ``cupy.RawKernel``,
  compiled lazily on first use (CuPy is never imported at module level);
- CuPy input of another dtype, or with fusion switched off (:func:`set_fused`,
  or ``TINYLLM_FUSED=0`` in the environment) -> the reference, run by CuPy.

The functions:

=========================  =================================================  ==========================
function                   maths                                              shapes
=========================  =================================================  ==========================
``rms_norm(x, w, eps)``    ``x / sqrt(mean(x^2) + eps) * w``                  (..., C), (C,) -> (..., C)
``rope(x, cos, sin)``      rotate halves ``(a, b) -> (a c - b s, b c + a s)``  (B, T, n, D), (B, T, 1, D/2)
``swiglu(gate, up)``       ``silu(gate) * up``                                (..., F), (..., F) -> (..., F)
``softmax(x)``             ``exp(x - max) / sum exp(x - max)``, last axis     (..., V) -> (..., V)
``q_matvec(x, blocks, t)`` ``x @ dequantise(blocks).T`` for Q8_0 / Q4_1       (..., IN), (OUT, G*bytes) -> (..., OUT)
=========================  =================================================  ==========================

``rope`` uses the half-split (HF) layout of :func:`tinyllm.models.llama.apply_rope`.

Quantised blocks are GGML's (:mod:`tinyllm.io.ggml`, the codec: layouts, type names,
quantiser and the reference dequantiser): 32 weights per block, ``Q8_0`` 34 bytes
(``w_j = d * q_j``), ``Q4_1`` 20 bytes (``w_j = d * q_j + m``). A weight matrix (OUT, IN)
is stored row by row, each row IN/32 blocks, which is ``blocks`` of shape
(OUT, IN/32 * bytes_per_block) uint8. The fused GPU kernel never materialises the
float32 matrix: each thread block reads one row's bytes, dequantises them in registers
and accumulates the dot product with ``x``, so a Q4_1 matvec reads 0.625 bytes per
weight instead of 4.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module, is_gpu_array
from tinyllm.errors import QuantizationError
from tinyllm.io import ggml
from tinyllm.io.ggml import GGMLType
from tinyllm.nn import functional as F

#: The block types :func:`q_matvec` has fused kernels for.
QUANT_TYPES = (GGMLType.Q8_0, GGMLType.Q4_1)

_fused = os.environ.get("TINYLLM_FUSED", "1").strip() not in ("0", "false", "no", "off")


def set_fused(enabled: bool) -> bool:
    """Switch the GPU kernels on or off (off: CuPy runs the reference). Returns the previous setting."""
    global _fused
    previous, _fused = _fused, bool(enabled)
    return previous


def fused_enabled() -> bool:
    return _fused


def _use_kernel(*arrays: Any) -> bool:
    """True when the fused CuPy kernel applies: fusion on, every array on the GPU and float32."""
    if not _fused:
        return False
    for a in arrays:                       # a loop, not all(...): this runs several times per layer
        if not (is_gpu_array(a) and a.dtype == np.float32):
            return False
    return True


def _check_float(name: str, a: Any) -> None:
    if getattr(getattr(a, "dtype", None), "kind", None) != "f":          # float16/32/64 (cheap: runs per layer)
        raise TypeError(f"{name} must be a floating-point array, got {getattr(a, 'dtype', type(a).__name__)}")


# ---------------------------------------------------------------------------
# CUDA source, compiled lazily (one compile per process, cached by CuPy on disk)
# ---------------------------------------------------------------------------
_ROW_REDUCE = r"""
#define NEG_INF __int_as_float(0xff800000)   // -inf without relying on math headers under NVRTC
// Sum (or max) of one value per thread over the thread block, via warp shuffles and shared memory.
// Works for any blockDim.x that is a multiple of 32, up to 1024.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}
__device__ float block_sum(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();                       // shared may still be read by a previous reduction
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = ((int)threadIdx.x < n_warps) ? shared[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}
__device__ float block_max(float v, float* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = ((int)threadIdx.x < n_warps) ? shared[threadIdx.x] : NEG_INF;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) shared[0] = v;
    __syncthreads();
    return shared[0];
}
// IEEE float16 bits -> float32 (no cuda_fp16.h needed; handles subnormals, inf and NaN).
__device__ __forceinline__ float half_bits_to_float(unsigned int h) {
    unsigned int sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0) {                        // zero or subnormal: man * 2^-24
        float f = (float)man * 5.9604644775390625e-8f;
        return sign ? -f : f;
    }
    unsigned int bits = (exp == 31) ? (sign | 0x7f800000u | (man << 13))
                                    : (sign | ((exp + 112u) << 23) | (man << 13));
    return __uint_as_float(bits);
}
"""

_THREADS = 256  # threads per block of the row kernels (a multiple of 32)


@functools.lru_cache(maxsize=None)
def _raw_kernel(name: str):
    import cupy  # noqa: PLC0415 - lazy on purpose

    sources = {
        "rms_norm": r"""
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int C, float eps) {
    __shared__ float shared[32];
    const float* xr = x + (long long)blockIdx.x * C;       // one block per row
    float* yr = y + (long long)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += xr[i] * xr[i];
    float inv = rsqrtf(block_sum(s, shared) / (float)C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}""",
        "softmax": r"""
extern "C" __global__ void softmax(const float* x, float* y, int V) {
    __shared__ float shared[32];
    const float* xr = x + (long long)blockIdx.x * V;       // one block per row
    float* yr = y + (long long)blockIdx.x * V;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m, shared);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) { float e = __expf(xr[i] - m); yr[i] = e; s += e; }
    float inv = 1.0f / block_sum(s, shared);
    for (int i = threadIdx.x; i < V; i += blockDim.x) yr[i] *= inv;
}""",
        # grid (OUT, N): block (o, n) computes y[n, o] = sum_g sum_j w[o, 32g + j] x[n, 32g + j]
        "q8_0_matvec": r"""
extern "C" __global__ void q8_0_matvec(const float* x, const unsigned char* blocks, float* y,
                                       int G, int OUT) {
    __shared__ float shared[32];
    const int o = blockIdx.x, n = blockIdx.y;
    const unsigned char* row = blocks + (long long)o * G * 34;
    const float* xr = x + (long long)n * G * 32;
    float acc = 0.0f;
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        const unsigned char* b = row + g * 34;
        float d = half_bits_to_float(b[0] | (b[1] << 8));
        const signed char* q = (const signed char*)(b + 2);
        const float* xg = xr + g * 32;
        float dot = 0.0f;
        #pragma unroll
        for (int j = 0; j < 32; ++j) dot += (float)q[j] * xg[j];
        acc += d * dot;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) y[(long long)n * OUT + o] = acc;
}""",
        "q4_1_matvec": r"""
extern "C" __global__ void q4_1_matvec(const float* x, const unsigned char* blocks, float* y,
                                       int G, int OUT) {
    __shared__ float shared[32];
    const int o = blockIdx.x, n = blockIdx.y;
    const unsigned char* row = blocks + (long long)o * G * 20;
    const float* xr = x + (long long)n * G * 32;
    float acc = 0.0f;
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        const unsigned char* b = row + g * 20;
        float d = half_bits_to_float(b[0] | (b[1] << 8));
        float m = half_bits_to_float(b[2] | (b[3] << 8));
        const unsigned char* qs = b + 4;
        const float* xg = xr + g * 32;
        float dot = 0.0f, xsum = 0.0f;
        #pragma unroll
        for (int i = 0; i < 16; ++i) {
            float lo = xg[i], hi = xg[i + 16];
            dot += (float)(qs[i] & 0x0f) * lo + (float)(qs[i] >> 4) * hi;
            xsum += lo + hi;
        }
        acc += d * dot + m * xsum;                // sum_j (d q_j + m) x_j
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) y[(long long)n * OUT + o] = acc;
}""",
    }
    return cupy.RawKernel(_ROW_REDUCE + sources[name], name)


@functools.lru_cache(maxsize=None)
def _elementwise_kernel(name: str):
    import cupy  # noqa: PLC0415 - lazy on purpose

    if name == "swiglu":
        return cupy.ElementwiseKernel(
            "float32 g, float32 u", "float32 y",
            "y = g / (1.0f + __expf(-fminf(fmaxf(g, -80.0f), 80.0f))) * u",
            "tinyllm_swiglu")
    if name == "rope":
        # x, y: (R, D) rows with R = B*T*n; cs, sn: (R, D/2) broadcast per row. i runs over y's elements.
        return cupy.ElementwiseKernel(
            "raw float32 x, raw float32 cs, raw float32 sn, int32 D", "float32 y",
            """
            const int hd = D / 2;                       // not "half": that is a CUDA type name
            const long long r = i / D;
            const int d = i % D;
            const int k = d < hd ? d : d - hd;
            const float c = cs[r * hd + k], s = sn[r * hd + k];
            const float a = x[r * D + k], b = x[r * D + k + hd];
            y = d < hd ? a * c - b * s : b * c + a * s;
            """,
            "tinyllm_rope")
    raise KeyError(name)


# ---------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------
@plug.point("rms_norm")
def rms_norm(x: Any, w: Any, eps: float = 1e-5):
    """RMSNorm over the last axis (Zhang & Sennrich 2019): ``x / sqrt(mean(x^2) + eps) * w``.  (..., C), (C,) -> (..., C)"""
    _check_float("x", x)
    _check_float("w", w)
    if w.ndim != 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(f"w must have shape ({x.shape[-1]},) (the last axis of x), got {tuple(w.shape)}")
    if not _use_kernel(x, w):
        return rms_norm_reference(x, w, eps)
    import cupy  # noqa: PLC0415

    C = x.shape[-1]
    xc = cupy.ascontiguousarray(x)
    y = cupy.empty_like(xc)                                             # (..., C)
    rows = xc.size // C if C else 0
    if rows:
        _raw_kernel("rms_norm")((rows,), (_THREADS,), (xc, cupy.ascontiguousarray(w), y, np.int32(C), np.float32(eps)))
    return y


def softmax(x: Any, *, out: Any = None):
    """Softmax over the last axis: ``exp(x - max x) / sum exp(x - max x)``.  (..., V) -> (..., V)

    ``out`` (NumPy): the array to write into, which may be ``x`` (in place)."""
    _check_float("x", x)
    if not _use_kernel(x):
        return F.softmax(x, out=out)                                    # the definition (one home)
    import cupy  # noqa: PLC0415

    V = x.shape[-1]
    xc = cupy.ascontiguousarray(x)
    y = cupy.empty_like(xc)                                             # (..., V)
    rows = xc.size // V if V else 0
    if rows:
        _raw_kernel("softmax")((rows,), (_THREADS,), (xc, y, np.int32(V)))
    if out is not None:
        out[...] = y
        return out
    return y


def swiglu(gate: Any, up: Any):
    """The SwiGLU gate (Shazeer 2020): ``silu(gate) * up`` with ``silu(z) = z / (1 + exp(-z))``.  (..., F) x2 -> (..., F)"""
    _check_float("gate", gate)
    _check_float("up", up)
    if tuple(gate.shape) != tuple(up.shape):
        raise ValueError(f"gate and up must have the same shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    if not _use_kernel(gate, up):
        return swiglu_reference(gate, up)
    return _elementwise_kernel("swiglu")(gate, up)


def rope(x: Any, cos: Any, sin: Any):
    """Rotary embedding (Su et al. 2021), half-split layout as in ``tinyllm.models.llama.apply_rope``.

    ``x`` (B, T, n, D); ``cos``, ``sin`` broadcastable to (B, T, n, D/2), usually (B, T, 1, D/2).
    Coordinates ``a = x[..., i]`` and ``b = x[..., i + D/2]`` become ``(a cos_i - b sin_i, b cos_i + a sin_i)``.
    """
    for name, a in (("x", x), ("cos", cos), ("sin", sin)):
        _check_float(name, a)
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"the last axis of x (head dim) must be even, got {D}")
    half = D // 2
    table_shape = tuple(x.shape[:-1]) + (half,)
    for name, a in (("cos", cos), ("sin", sin)) if cos.shape != sin.shape else (("cos", cos),):
        if not _broadcasts_to(tuple(a.shape), table_shape):
            raise ValueError(f"{name} must broadcast to {table_shape} (x's shape with D/2 last), got {tuple(a.shape)}")
    if not _use_kernel(x, cos, sin):
        return rope_reference(x, cos, sin)
    xp = get_array_module(x)
    cs = xp.ascontiguousarray(xp.broadcast_to(cos, table_shape))         # (B, T, n, D/2)
    sn = xp.ascontiguousarray(xp.broadcast_to(sin, table_shape))
    y = xp.empty(tuple(x.shape), dtype=np.float32)                      # (B, T, n, D)
    _elementwise_kernel("rope")(xp.ascontiguousarray(x), cs, sn, np.int32(D), y)
    return y


# ---------------------------------------------------------------------------
# the references without the checks: what the functions above run on NumPy (and on CuPy without
# the fused kernel). ``Llama._forward`` calls them directly on the CPU: its arrays are float by
# construction, so it checks once per forward instead of once per kernel and layer (at batch-1
# decode sizes the checks cost about as much as the arithmetic). Each writes into one output
# array with ``out=`` (no temporaries beyond one) and computes exactly what the plain formula does.
# ---------------------------------------------------------------------------
def rms_norm_reference(x: Any, w: Any, eps: float = 1e-5):
    """:func:`rms_norm` without checks: ``x * (1 / sqrt(sum(x^2) / C + eps)) * w``.  (..., C), (C,) -> (..., C)"""
    xp = np if isinstance(x, np.ndarray) else get_array_module(x)
    sq = x * x                                                          # (..., C)
    if sq.dtype == np.float16:                                          # mean() sums float16 in float32
        ms = sq.mean(axis=-1, keepdims=True)                            # (..., 1)
    else:                                                               # mean()'s sum and division, not its wrapper
        ms = np.add.reduce(sq, axis=-1, keepdims=True) if xp is np else sq.sum(axis=-1, keepdims=True)
        ms /= x.shape[-1]                                               # (..., 1) float32: rounds as mean() does
    ms += eps                                                           # float eps keeps the dtype
    xp.sqrt(ms, out=ms)
    xp.divide(1.0, ms, out=ms)                                          # 1 / sqrt(mean + eps)
    y = xp.multiply(x, ms, out=sq)
    return xp.multiply(y, w, out=y) if w.dtype == y.dtype else y * w


def swiglu_reference(gate: Any, up: Any):
    """:func:`swiglu` without checks: ``gate / (1 + exp(-max(gate, -80))) * up`` (max: no overflow warning;
    clipping above too would change nothing, ``1 + exp(-80)`` is already 1)."""
    xp = np if isinstance(gate, np.ndarray) else get_array_module(gate)
    d = xp.maximum(gate, -80.0)                                         # a ufunc: np.clip's Python wrapper
    xp.negative(d, out=d)                                               # costs more than the arithmetic
    xp.exp(d, out=d)
    xp.add(1.0, d, out=d)
    xp.divide(gate, d, out=d)
    return xp.multiply(d, up, out=d) if up.dtype == d.dtype else d * up


def rope_reference(x: Any, cos: Any, sin: Any):
    """:func:`rope` without checks: ``(a, b) -> (a cos - b sin, b cos + a sin)`` written into one (B, T, n, D) array."""
    xp = np if isinstance(x, np.ndarray) else get_array_module(x)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]                                 # (B, T, n, D/2) views
    y = xp.empty(x.shape, dtype=xp.result_type(x, cos, sin))            # (B, T, n, D)
    y1, y2 = y[..., :half], y[..., half:]
    xp.multiply(a, cos, out=y1)
    t = b * sin
    y1 -= t
    xp.multiply(b, cos, out=y2)
    xp.multiply(a, sin, out=t)
    y2 += t
    return y


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether an array of ``shape`` broadcasts to ``target`` without growing it (a plain loop:
    ``np.broadcast_shapes`` costs more than the rotation itself at batch-1 decode sizes)."""
    if len(shape) > len(target):
        return False
    for s, t in zip(reversed(shape), reversed(target)):
        if s != 1 and s != t:
            return False
    return True


def _check_blocks(blocks: Any, qtype: Any) -> tuple[GGMLType, int, int]:
    """Validate quantised blocks and return (type, OUT, IN)."""
    gt = ggml.to_ggml_type(qtype)
    if gt not in QUANT_TYPES:
        raise QuantizationError(f"type must be one of {', '.join(t.name for t in QUANT_TYPES)}, got {qtype!r}")
    block, nbytes = ggml.BLOCK_SIZES[gt]
    if not hasattr(blocks, "dtype") or blocks.dtype != np.uint8 or blocks.ndim != 2:
        raise TypeError(f"blocks must be a uint8 array of shape (OUT, IN/{block} * {nbytes}) "
                        f"(one weight row per array row), got {getattr(blocks, 'dtype', type(blocks).__name__)} "
                        f"{tuple(getattr(blocks, 'shape', ()))}")
    if blocks.shape[1] % nbytes:
        raise QuantizationError(f"each row of {gt.name} blocks must be a multiple of {nbytes} bytes, got {blocks.shape[1]}")
    return gt, blocks.shape[0], blocks.shape[1] // nbytes * block


def q_matvec(x: Any, blocks: Any, qtype: Any):
    """``x @ W.T`` for a quantised weight ``W`` (OUT, IN) stored as GGML ``blocks`` of type ``qtype``
    (a :class:`~tinyllm.io.ggml.GGMLType` or its name).  (..., IN) -> (..., OUT)

    Reference: dequantise to float32 (:func:`tinyllm.io.ggml.dequantize`, on the blocks' device),
    then one matrix product. GPU: one fused kernel that dequantises in registers while it
    multiplies (see the module docstring).
    """
    gt, OUT, IN = _check_blocks(blocks, qtype)
    _check_float("x", x)
    if x.shape[-1] != IN:
        raise ValueError(f"x must have shape (..., {IN}) to multiply {gt.name} weights of shape ({OUT}, {IN}), "
                         f"got {tuple(x.shape)}")
    if get_array_module(x) is not get_array_module(blocks):
        raise ValueError("x and blocks must be on the same device (both NumPy or both CuPy)")
    if not (_fused and is_gpu_array(x) and x.dtype == np.float32):
        w = ggml.dequantize(blocks, gt, (OUT, IN))                       # (OUT, IN) float32
        return x @ w.T.astype(x.dtype, copy=False)                       # (..., OUT)
    import cupy  # noqa: PLC0415

    lead = tuple(x.shape[:-1])
    xr = cupy.ascontiguousarray(x.reshape(-1, IN))                       # (N, IN)
    N = xr.shape[0]
    y = cupy.empty((N, OUT), dtype=np.float32)                           # (N, OUT)
    if N and OUT:
        kernel = _raw_kernel("q8_0_matvec" if gt == GGMLType.Q8_0 else "q4_1_matvec")
        G = IN // ggml.BLOCK_SIZES[gt][0]                                # blocks per row
        threads = 32 * min(4, (G + 31) // 32)      # one thread per block of 32 weights, whole warps, at most 128
        kernel((OUT, N), (threads,), (xr, cupy.ascontiguousarray(blocks), y, np.int32(G), np.int32(OUT)))
    return y.reshape(lead + (OUT,))


class QuantizedMatrix:
    """A weight ``W`` (IN, OUT) kept as GGML blocks, usable wherever model code writes ``x @ W``.

    ``blocks`` (OUT, IN/32 * bytes) uint8 hold the rows of ``W.T``: the layout of a GGUF
    file and of :func:`q_matvec`, so ``x @ qm == q_matvec(x, blocks, qtype)``. On the GPU
    that is the fused dequantise-and-multiply kernel, which reads 0.625 (Q4_1) or 1.06
    (Q8_0) bytes per weight instead of 4; on NumPy it is the reference (dequantise,
    then one matrix product). With more than ``MATVEC_ROWS`` rows (a prompt being
    prefilled) the GPU also dequantises once and runs one matrix product, since the
    matvec kernel would read the blocks again for every row.

    How ``h @ qm`` gets here without a branch in the model: the class sets
    ``__array_ufunc__ = None``. NumPy's ``ndarray.__matmul__`` and CuPy's both treat
    that as "this operand handles the operator itself" (NEP 13) and return
    ``NotImplemented``, so Python calls ``qm.__rmatmul__(h)``.
    """

    __array_ufunc__ = None       # NumPy and CuPy: defer ``h @ self`` to ``self.__rmatmul__``
    __array_priority__ = 1000.0  # older CuPy decides by priority instead
    MATVEC_ROWS = 8
    ndim = 2

    def __init__(self, blocks: Any, qtype: Any):
        gt, OUT, IN = _check_blocks(blocks, qtype)
        self.blocks, self.qtype = blocks, gt                             # (OUT, IN/32 * bytes) uint8, GGMLType
        self.shape = (IN, OUT)
        self.dtype = np.dtype(np.float32)

    @classmethod
    def quantize(cls, w: Any, qtype: Any = GGMLType.Q4_1) -> "QuantizedMatrix":
        """Round-to-nearest GGML quantisation (:func:`tinyllm.io.ggml.quantize`) of ``w`` (IN, OUT), kept on w's device."""
        gt = ggml.to_ggml_type(qtype)
        if gt not in QUANT_TYPES:
            raise QuantizationError(f"type must be one of {', '.join(t.name for t in QUANT_TYPES)}, got {qtype!r}")
        xp = get_array_module(w)
        return cls(ggml.quantize(xp.ascontiguousarray(w.T), gt), gt)    # (OUT, IN/32 * bytes)

    @property
    def nbytes(self) -> int:
        return int(self.blocks.nbytes)

    def dequantize(self):
        """The float32 matrix ``W`` (IN, OUT) (a transposed view of the (OUT, IN) rows)."""
        OUT, IN = self.shape[1], self.shape[0]
        return ggml.dequantize(self.blocks, self.qtype, (OUT, IN)).T

    def to(self, device: str) -> "QuantizedMatrix":
        from tinyllm.backend import to_device

        return QuantizedMatrix(to_device(self.blocks, device), self.qtype)

    def __rmatmul__(self, x: Any):
        """``x @ W``.  (..., IN) -> (..., OUT)"""
        if is_gpu_array(x) and x.size > self.MATVEC_ROWS * x.shape[-1]:
            return x @ self.dequantize().astype(x.dtype, copy=False)     # prefill: one GEMM
        return q_matvec(x, self.blocks, self.qtype)

    def __repr__(self) -> str:
        return f"QuantizedMatrix({self.qtype.name}, shape={self.shape}, {self.nbytes:,} bytes)"
