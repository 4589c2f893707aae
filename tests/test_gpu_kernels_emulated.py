"""The CUDA source of tinyllm.kernels, run on the CPU: one std::thread per CUDA thread.

CI has no GPU, so the real kernels only run under ``scripts/gpu_check.sh``. This test
still checks their *logic* everywhere a C++20 compiler exists: it captures the CUDA
source that kernels.py would hand to CuPy, compiles it with g++ next to a tiny
emulation of the CUDA execution model (``threadIdx``/``blockIdx``, ``__syncthreads``
as a barrier over the block, ``__shfl_xor_sync`` as an exchange within a warp of 32
threads, blocks run one after another), and compares the results with the NumPy
references. It says nothing about speed, NVRTC or CuPy's argument passing; the
tests on a real GPU (``test_kernels.py`` with the ``xp`` fixture on CuPy) cover those.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tinyllm import kernels
from tinyllm.io import ggml

EMULATION = r'''
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3_ { unsigned x = 0, y = 0, z = 0; };
static thread_local dim3_ threadIdx;
static dim3_ blockIdx, blockDim;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static float shuffle[1024];
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    auto& warp = *warp_barriers[threadIdx.x / 32];
    shuffle[threadIdx.x] = v; warp.arrive_and_wait();
    float other = shuffle[threadIdx.x ^ lane_mask]; warp.arrive_and_wait();
    return other;
}
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
static void launch(unsigned gx, unsigned gy, unsigned threads, std::function<void()> body) {
    blockDim.x = threads;
    for (unsigned by = 0; by < gy; ++by) for (unsigned bx = 0; bx < gx; ++bx) {
        blockIdx.x = bx; blockIdx.y = by;
        std::barrier<> bar(threads); block_barrier = &bar;
        warp_barriers.clear();
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t) pool.emplace_back([t, &body] { threadIdx.x = t; body(); });
        for (auto& t : pool) t.join();
    }
}
'''

ENTRY_POINTS = r'''
extern "C" {
void run_rms_norm(const float* x, const float* w, float* y, int rows, int C, float eps, int th) {
    launch(rows, 1, th, [=] { rms_norm(x, w, y, C, eps); }); }
void run_softmax(const float* x, float* y, int rows, int V, int th) { launch(rows, 1, th, [=] { softmax(x, y, V); }); }
void run_q8_0(const float* x, const unsigned char* b, float* y, int G, int OUT, int N, int th) {
    launch(OUT, N, th, [=] { q8_0_matvec(x, b, y, G, OUT); }); }
void run_q4_1(const float* x, const unsigned char* b, float* y, int G, int OUT, int N, int th) {
    launch(OUT, N, th, [=] { q4_1_matvec(x, b, y, G, OUT); }); }
void run_rope(const float* x, const float* cs, const float* sn, int D, float* y, long long n) {
    for (long long i = 0; i < n; ++i) rope_body(x, cs, sn, D, y[i], i); }
void run_swiglu(const float* g, const float* u, float* y, long long n) {
    for (long long i = 0; i < n; ++i) swiglu_body(g[i], u[i], y[i]); }
}
'''


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++ to compile the emulated kernels")
    captured = {}
    fake = types.ModuleType("cupy")                        # records the sources instead of compiling them
    fake.RawKernel = lambda src, name: captured.setdefault(name, src)
    fake.ElementwiseKernel = lambda inp, out, body, name: captured.setdefault(name, body)
    saved = sys.modules.get("cupy")
    sys.modules["cupy"] = fake
    try:
        for name in ("rms_norm", "softmax", "q8_0_matvec", "q4_1_matvec"):
            kernels._raw_kernel(name)
        for name in ("swiglu", "rope"):
            kernels._elementwise_kernel(name)
    finally:
        kernels._raw_kernel.cache_clear()                   # the real CuPy must compile its own later
        kernels._elementwise_kernel.cache_clear()
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    src = EMULATION + captured["rms_norm"].replace('extern "C"', "")
    for name in ("softmax", "q8_0_matvec", "q4_1_matvec"):      # each source repeats the shared helpers
        src += captured[name][captured[name].index('extern "C"'):].replace('extern "C"', "")
    src += ("static void rope_body(const float* x, const float* cs, const float* sn, int D, float& y, long long i) {"
            + captured["tinyllm_rope"] + "}\n")
    src += "static void swiglu_body(float g, float u, float& y) {" + captured["tinyllm_swiglu"] + ";}\n"
    src += ENTRY_POINTS
    tmp = tmp_path_factory.mktemp("cuda_emulation")
    (tmp / "kernels.cpp").write_text(src)
    out = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror",
                          "-Wno-unknown-pragmas", "-o", str(tmp / "kernels.so"), str(tmp / "kernels.cpp")],
                         capture_output=True, text=True)
    if out.returncode and "barrier" in out.stderr and "No such file" in out.stderr:
        pytest.skip("the C++ compiler has no C++20 <barrier>")
    assert out.returncode == 0, out.stderr
    so = ctypes.CDLL(str(tmp / "kernels.so"))
    for f in ("run_rms_norm", "run_softmax", "run_q8_0", "run_q4_1", "run_rope", "run_swiglu"):
        getattr(so, f).restype = None
    return so


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("threads", [32, 256])
@pytest.mark.parametrize("C", [7, 576, 1000])
def test_row_kernels(lib, threads, C):
    rng = np.random.default_rng(C)
    x = rng.standard_normal((3, C), dtype=np.float32) * 10
    w = rng.standard_normal(C, dtype=np.float32)
    y = np.empty_like(x)
    lib.run_rms_norm(_p(x), _p(w), _p(y), 3, C, ctypes.c_float(1e-5), threads)
    np.testing.assert_allclose(y, kernels.rms_norm(x, w, 1e-5), rtol=2e-5, atol=2e-6)
    lib.run_softmax(_p(x), _p(y), 3, C, threads)
    np.testing.assert_allclose(y, kernels.softmax(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threads", [32, 128])                 # q_matvec launches 32 per 1024 inputs, up to 128
@pytest.mark.parametrize("qtype", kernels.QUANT_TYPES)
@pytest.mark.parametrize("OUT,IN,N", [(5, 64, 1), (7, 320, 3), (3, 1536, 2)])
def test_quantised_matvec(lib, qtype, OUT, IN, N, threads):
    rng = np.random.default_rng(OUT)
    w = rng.standard_normal((OUT, IN), dtype=np.float32) * 0.05
    x = rng.standard_normal((N, IN), dtype=np.float32)
    blocks = np.ascontiguousarray(ggml.quantize(w, qtype))
    y = np.empty((N, OUT), dtype=np.float32)
    getattr(lib, f"run_{qtype.name.lower()}")(_p(x), _p(blocks), _p(y), IN // 32, OUT, N, threads)
    np.testing.assert_allclose(y, kernels.q_matvec(x, blocks, qtype), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qtype", kernels.QUANT_TYPES)
def test_quantised_matvec_decodes_blocks_like_the_codec(lib, qtype):
    """With one-hot inputs the kernel returns single weights: its in-register decoding of the blocks (fp16
    bits by hand, nibbles) equals the NumPy codec's ``dequantize``, here on random bytes with finite scales."""
    rng = np.random.default_rng(13)
    OUT, IN = 6, 96
    nbytes = ggml.BLOCK_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (OUT, IN // 32 * nbytes), dtype=np.uint8)
    scales = (rng.standard_normal((OUT * IN // 32, 2)) * 10.0 ** rng.integers(-7, 3, (OUT * IN // 32, 2)))
    n_scales = 2 if qtype == ggml.GGMLType.Q4_1 else 1                   # d (and m): finite, subnormal ones included
    view = blocks.reshape(-1, nbytes)
    view[:, :2 * n_scales] = scales.astype(np.float16)[:, :n_scales].copy().view(np.uint8)
    x = np.eye(IN, dtype=np.float32)                                     # (N = IN, IN) one-hot rows
    y = np.empty((IN, OUT), dtype=np.float32)
    getattr(lib, f"run_{qtype.name.lower()}")(_p(x), _p(blocks), _p(y), IN // 32, OUT, IN, 32)
    want = ggml.dequantize(blocks, qtype, (OUT, IN)).T                   # (IN, OUT)
    if qtype == ggml.GGMLType.Q8_0:
        np.testing.assert_array_equal(y, want)                           # d * q, one rounding either way
    else:                                                                # d * q + m * 1: a compiler may fuse it
        np.testing.assert_array_max_ulp(y, want, maxulp=1)               # into one fma, one rounding fewer


def test_elementwise_kernels(lib):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 64), dtype=np.float32)
    cos = rng.standard_normal((2, 3, 1, 32), dtype=np.float32)
    sin = rng.standard_normal((2, 3, 1, 32), dtype=np.float32)
    cs = np.ascontiguousarray(np.broadcast_to(cos, (2, 3, 4, 32)))
    sn = np.ascontiguousarray(np.broadcast_to(sin, (2, 3, 4, 32)))
    y = np.empty_like(x)
    lib.run_rope(_p(x), _p(cs), _p(sn), 64, _p(y), ctypes.c_longlong(x.size))
    np.testing.assert_allclose(y, kernels.rope(x, cos, sin), rtol=1e-6, atol=1e-6)
    g = rng.standard_normal(1000, dtype=np.float32) * 5
    g[0] = -200.0
    u = rng.standard_normal(1000, dtype=np.float32)
    y = np.empty_like(g)
    lib.run_swiglu(_p(g), _p(u), _p(y), ctypes.c_longlong(g.size))
    np.testing.assert_allclose(y, kernels.swiglu(g, u), rtol=1e-5, atol=1e-6)
