"""GPTQ: error-aware weight quantisation from calibration activations.

Frantar, Ashkboos, Hoefler, Alistarh (2023), "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323).

Round-to-nearest (RTN) rounds every weight on its own. What matters is the layer's
*output* on real inputs. For one output row ``w`` (a row of ``W``, shape ``(OUT, IN)``)
and calibration inputs ``X`` (``(N, IN)``), GPTQ minimises

    || X w - X q ||^2 = (w - q)^T H (w - q),     H = 2/N X^T X      (IN, IN)

one input column at a time (Optimal Brain Quantization, Frantar & Alistarh 2022):
after quantising column ``j`` to ``q_j`` with error ``e = (w_j - q_j) / [H^-1]_jj``,
the columns not yet quantised absorb it,

    w_{j+1:} <- w_{j+1:} - e * [H^-1]_{j, j+1:}                        (paper eq. 3)

so correlated inputs compensate each other's rounding. GPTQ makes this fast and
stable with three tricks, all used here:

1. every row uses the same column order, so one ``H^-1`` serves all rows and the
   update is vectorised over the ``OUT`` rows;
2. the rows of ``H^-1`` that the updates need are those of its upper Cholesky factor
   ``U`` (``H^-1 = U^T U``), computed once and numerically stable (with dampening
   ``H + lambda * mean(diag H) * I``);
3. lazy batch updates: columns are processed in blocks of ``block_size``; inside a
   block the updates are rank-1, and the rest of the matrix is updated once per
   block with one matrix product (``W[:, end:] -= E @ U[block, end:]``).

Group-wise scales are computed when a group's first column is reached, from the
weights *as updated so far*, as in the paper's reference code. The scheme and codes
are those of :mod:`tinyllm.compress.quantize`, so the result dequantises with it.

``channel_damp`` adds ``channel_damp * H_jj`` to each diagonal entry: ``H + c diag(H)``,
which is ``(1 + c)`` times ``diag(H) + (H - diag(H)) / (1 + c)``, the correlations between
input channels shrunk towards zero while each channel keeps its own energy (shrinkage of a
covariance estimated from few samples towards its diagonal, as in Ledoit & Wolf 2004).
``c = 0`` is plain GPTQ; as ``c`` grows the compensation fades and GPTQ becomes
round-to-nearest. The correlations are what GPTQ exploits and what a small calibration
set of one kind of text estimates worst; each channel's energy carries over better.

``act_order=True`` quantises the columns in order of decreasing ``H_jj`` (the inputs
with the most energy first, while the most columns remain to absorb their error),
the "act-order" heuristic of the authors' later code. The groups stay the contiguous
groups of the original layout; their scales are then fixed up front from the
weights before any update ("static groups"), since a group's columns are no longer
reached together.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tinyllm import plug
from tinyllm.backend import get_array_module
from tinyllm.compress.quantize import (
    QuantizedTensor,
    check_finite_nonempty,
    quant_params,
)
from tinyllm.models.llama import BLOCK_MATRICES


def hessian(x: Any) -> Any:
    """``H = 2/N X^T X`` (float64) from calibration inputs ``x`` of shape ``(..., IN)``."""
    xp = get_array_module(x)
    x2 = x.reshape(-1, x.shape[-1]).astype(xp.float64)                     # (N, IN)
    if x2.shape[0] == 0:
        raise ValueError("hessian needs at least one calibration row, got an empty x")
    return (2.0 / x2.shape[0]) * (x2.T @ x2)                               # (IN, IN)


def gptq_quantize(
    w: Any,
    h: Any,
    bits: int = 4,
    *,
    group_size: int | None = 128,
    symmetric: bool = True,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    channel_damp: float = 0.0,
) -> tuple[QuantizedTensor, Any]:
    """Quantise ``w`` (``(OUT, IN)``: rows are output channels) with GPTQ.

    ``h`` is the ``(IN, IN)`` Hessian from :func:`hessian`. ``group_size=None``
    means one scale per output row. Returns ``(QuantizedTensor, w_hat)`` where
    ``w_hat`` (float32, ``(OUT, IN)``) is the dequantised result.
    """
    xp = get_array_module(w)
    check_finite_nonempty(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (OUT, IN), got shape {tuple(w.shape)}")
    n_out, n_in = w.shape
    if tuple(h.shape) != (n_in, n_in):
        raise ValueError(f"h must have shape ({n_in}, {n_in}) to match w {tuple(w.shape)}, got {tuple(h.shape)}")
    if group_size is not None and (group_size <= 0 or n_in % group_size):
        raise ValueError(f"group_size={group_size} must divide the input width {n_in}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be from 2 to 8, got {bits}")
    if not (damp >= 0 and channel_damp >= 0):
        raise ValueError(f"damp and channel_damp must be >= 0, got damp={damp}, channel_damp={channel_damp}")
    gs = group_size or n_in
    if group_size and not act_order:
        block_size = max(gs, (block_size // gs) * gs)   # a block holds whole groups

    W = w.astype(xp.float32).copy()                                        # (OUT, IN)
    H = h.astype(xp.float64).copy()
    dead = xp.diag(H) == 0                                                  # inputs never active
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * float(xp.mean(xp.diag(H))) * xp.eye(n_in) + channel_damp * xp.diag(xp.diag(H))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    G = n_in // gs
    # Per-row scales, and act-order's groups, are fixed up front from W as given;
    # plain groups take theirs when their first column is reached (below).
    static = group_size is None or act_order
    if static:
        s_all, z_all = quant_params(W.reshape(n_out, G, gs), bits, symmetric)   # (OUT, G, 1) each
        scale_tab = xp.ascontiguousarray(s_all[..., 0].T)                        # (G, OUT)
        inv_tab, zf_tab = _inv_and_zero(scale_tab, None if z_all is None else z_all[..., 0].T)  # (G, OUT)
    order = xp.argsort(-xp.diag(H), kind="stable") if act_order else xp.arange(n_in)  # (IN,) largest H_jj first
    if act_order:
        W, H = W[:, order], H[order][:, order]
    group_of = (order // gs).tolist()                                       # group of each (permuted) column
    U = xp.linalg.cholesky(xp.linalg.inv(H)).T.astype(xp.float32)          # (IN, IN) upper, H^-1 = U^T U

    # Work on W^T (IN, OUT): column j of W is then the contiguous row j, so each
    # step of the loop below touches contiguous memory (the maths is unchanged).
    Wt = xp.ascontiguousarray(W.T)                                         # (IN, OUT)
    Qt = xp.zeros_like(Wt)                                                 # (IN, OUT) dequantised
    codes_t = xp.zeros((n_in, n_out), dtype=xp.int8 if symmetric else xp.uint8)
    scales, zeros = [], []                                                  # plain groups, in order
    for start in range(0, n_in, block_size):
        end = min(start + block_size, n_in)
        W1 = Wt[start:end].copy()                                           # (b, OUT)
        E1 = xp.zeros_like(W1)
        U1 = U[start:end, start:end]                                        # (b, b)
        for i in range(end - start):
            col = start + i
            if static:
                g = group_of[col]
                scale, inv, zf = scale_tab[g], inv_tab[g], zf_tab[g]        # (OUT,) each
            elif col % gs == 0:
                scale, zero = quant_params(W1[i:i + gs].T[:, None, :], bits, symmetric)  # (OUT, 1, 1)
                scales.append(scale[:, 0])
                zeros.append(None if zero is None else zero[:, 0])
                scale = scale[:, 0, 0]                                      # (OUT,)
                inv, zf = _inv_and_zero(scale, None if zero is None else zero[:, 0, 0])
            c = xp.clip(xp.rint(W1[i] * inv) + zf, lo, hi)                  # (OUT,) codes as floats
            q = (c - zf) * scale                                            # (OUT,) dequantised
            codes_t[col] = c
            Qt[col] = q
            err = (W1[i] - q) / U1[i, i]                                    # (OUT,)
            W1[i:] -= U1[i, i:, None] * err                                 # rank-1 update of the block
            E1[i] = err
        Wt[end:] -= U[start:end, end:].T @ E1                               # lazy update of the rest
    Q, codes = xp.ascontiguousarray(Qt.T), codes_t.T                        # (OUT, IN)

    if act_order:                                                           # back to the original column order
        inv_order = xp.argsort(order)
        Q, codes = Q[:, inv_order], codes[:, inv_order]
    if static:
        scale_arr, zero_arr = s_all, z_all                                  # (OUT, G, 1); zero None if symmetric
    else:
        scale_arr = xp.stack(scales, axis=1)                                # (OUT, G, 1)
        zero_arr = None if symmetric else xp.stack(zeros, axis=1)           # (OUT, G, 1)
    qt = QuantizedTensor(codes.reshape(n_out, G, n_in // G), scale_arr, zero_arr, int(bits), bool(symmetric),
                         "group" if group_size else "channel", group_size, (n_out, n_in), 0)
    return qt, Q


@plug.point("gptq_layer")
def gptq_layer(w: Any, h: Any, bits: int = 4, group_size: int | None = 128, symmetric: bool = True,
               damp: float = 0.01) -> Any:
    """GPTQ of one ``(OUT, IN)`` weight in column order: the dequantised weight ``(OUT, IN)`` float32.

    The piece :func:`gptq_model` runs for every weight when ``act_order=False`` (see :func:`gptq_quantize`).
    """
    return gptq_quantize(w, h, bits, group_size=group_size, symmetric=symmetric, damp=damp)[1]


def _inv_and_zero(scale: Any, zero: Any | None) -> tuple[Any, Any]:
    """``1/scale`` (0 where the scale is 0) and the zero point as float32 (0 when symmetric)."""
    xp = get_array_module(scale)
    inv = xp.where(scale > 0, 1.0 / xp.where(scale > 0, scale, 1.0), 0.0).astype(xp.float32)
    return inv, (xp.zeros_like(scale) if zero is None else zero.astype(xp.float32))


def output_error(x: Any, w: Any, w_hat: Any) -> float:
    """Relative output error ``||x W^T - x W_hat^T|| / ||x W^T||`` for ``(OUT, IN)`` weights."""
    xp = get_array_module(x)
    x2 = x.reshape(-1, x.shape[-1])
    ref = x2 @ w.T
    return float(xp.linalg.norm(ref - x2 @ w_hat.T) / xp.linalg.norm(ref))


def gptq_model(model: Any, calib: Any, bits: int = 4, *, group_size: int | None = 64, symmetric: bool = False,
               damp: float = 0.01, act_order: bool = True, sequential: bool = True, batch: int = 8,
               channel_damp: float = 0.0) -> list[Any]:
    """GPTQ every block weight of a Llama-like ``model`` from calibration token ids ``calib`` ``(N, T)``.

    ``sequential=False``: one forward pass of the float model records every Hessian, and
    each weight is fitted to the inputs it sees in the *float* model. ``sequential=True``
    (the paper's procedure, sec. 4 "Full algorithm"): block ``i`` is calibrated on the output of
    blocks ``0..i-1`` *already quantised*, so each block learns to correct the errors
    of those before it, as it will have to at inference. The residual stream is carried
    from block to block (:func:`tinyllm.compress.calibrate.block_output`), so each block
    runs twice (record, then produce its quantised output) and the whole costs about two
    forward passes.

    With ``act_order=False`` every weight goes through :func:`gptq_layer` (a plug point, so a learner's GPTQ can
    quantise the whole model). Returns the dequantised weights in :func:`~tinyllm.compress.patch.linear_weights` order,
    each ``(IN, OUT)`` float32 C-contiguous. The model is left unchanged. NumPy only (as the recorders are).
    """
    from tinyllm.compress.calibrate import block_output, record_inputs, run_block
    from tinyllm.compress.patch import InputRecorder, linear_weights, replace_weights, restore_weights

    calib = np.asarray(calib)
    if calib.ndim != 2 or calib.size == 0:
        raise ValueError(f"calib must be token ids of shape (N, T), got shape {calib.shape}")

    def quantise(w, rec):                                                   # (IN, OUT) float, recorder -> (IN, OUT)
        wt = np.ascontiguousarray(w.T)                                      # (OUT, IN)
        if act_order or channel_damp:
            _, q = gptq_quantize(wt, rec.hessian(), bits, group_size=group_size, symmetric=symmetric, damp=damp,
                                 act_order=act_order, channel_damp=channel_damp)
        else:                                                               # the plug point of exercise 11
            q = gptq_layer(wt, rec.hessian(), bits, group_size, symmetric, damp)
        return np.ascontiguousarray(q.T)

    targets = linear_weights(model)
    if not sequential:
        recs = record_inputs(model, calib, targets, batch=batch)
        return [quantise(getattr(b, k).data, r) for (b, k), r in zip(targets, recs)]

    out: list[Any] = []
    x = model.tok_embd.data[calib].astype(np.float32)                       # (N, T, C) the embeddings
    originals = []
    try:
        for i, blk in enumerate(model.blocks):
            mine = [(blk, k) for k in BLOCK_MATRICES]
            fp = replace_weights(mine, lambda w: InputRecorder(w, keep_inputs=False))   # the float weights
            try:
                run_block(model, i, x, batch=batch)
                recs = [getattr(b, k).data for b, k in mine]
            finally:
                restore_weights(mine, fp)
            q = [quantise(w, r) for w, r in zip(fp, recs)]
            out += q
            originals.append(replace_weights(mine, lambda w, it=iter(q): next(it)))
            if i + 1 < len(model.blocks):
                x = block_output(model, i, x, batch=batch)                 # through the quantised block
    finally:
        for blk, old in zip(model.blocks, originals):
            restore_weights([(blk, k) for k in BLOCK_MATRICES], old)
    return out


def damp_errors(w: Any, h_fit: Any, h_val: Any, damps: Any, **kwargs: Any) -> list[float]:
    """Relative output error on held-out inputs of GPTQ fitted with each dampening.

    ``w`` is ``(OUT, IN)``; ``h_fit`` and ``h_val`` are Hessians of two disjoint parts of
    the calibration set. The error ``sqrt(tr(D H_val D^T) / tr(W H_val W^T))`` with
    ``D = W - W_hat`` measures how well the rounding fitted on one part carries to inputs
    it never saw: too little dampening overfits ``h_fit``, too much ignores it.
    """
    xp = get_array_module(w)
    ref = float(((w @ h_val) * w).sum())
    errs = []
    for d in damps:
        _, q = gptq_quantize(w, h_fit, damp=float(d), **kwargs)
        diff = (w - q).astype(xp.float64)
        errs.append(float(np.sqrt(((diff @ h_val) * diff).sum() / ref)))
    return errs


def cross_domain_damp(model: Any, sets: Any, damps: Any, probe: Any, **kwargs: Any) -> tuple[float, Any]:
    """The dampening whose GPTQ carries best from one kind of text to another: ``(damp, mean_errors)``.

    ``sets`` are calibration sets of different kinds of text (token ids ``(N_i, T)``, e.g. the
    documentation and :func:`~tinyllm.compress.calibrate.chat_calibration`'s replies); ``probe``
    indexes the weights of :func:`~tinyllm.compress.patch.linear_weights` to measure. For every
    ordered pair of sets, GPTQ is fitted on the inputs of one and its relative output error
    (:func:`damp_errors`) measured on the inputs of the other; ``mean_errors`` (one per damp)
    is the mean over pairs and probe weights. Validating on rows of the *same* text rewards
    fitting that text's quirks; another kind of text rewards what generalises.
    ``kwargs`` go to :func:`gptq_quantize` (bits, group_size, symmetric, act_order).
    """
    from tinyllm.compress.calibrate import record_inputs
    from tinyllm.compress.patch import linear_weights

    if len(sets) < 2:
        raise ValueError(f"cross_domain_damp needs at least two calibration sets, got {len(sets)}")
    if len(damps) == 0 or len(probe) == 0:
        raise ValueError("give at least one damp and one probe weight")
    targets = [linear_weights(model)[j] for j in probe]
    hs = [[r.hessian() for r in record_inputs(model, s, targets)] for s in sets]   # per set, per weight (IN, IN)
    errs = [damp_errors(np.ascontiguousarray(getattr(b, k).data.T), hs[a][j], hs[v][j], damps, **kwargs)
            for a in range(len(sets)) for v in range(len(sets)) if a != v for j, (b, k) in enumerate(targets)]
    mean = np.asarray(errs).mean(axis=0)                                    # (len(damps),)
    return float(damps[int(np.argmin(mean))]), mean
