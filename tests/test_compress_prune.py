"""Magnitude, 2:4 and structured pruning; SVD low-rank factorisation."""
import numpy as np
import pytest

from tinyllm.compress.lowrank import (
    LowRankLinear,
    break_even_rank,
    choose_rank,
    plan_ranks,
    spectrum,
    svd_factorize,
)
from tinyllm.compress.prune import (
    head_importance,
    keep_indices,
    magnitude_prune,
    neuron_importance,
    prune_2_4,
    prune_heads,
    prune_mlp_neurons,
    select_heads,
    sparsity,
)


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_magnitude_prune_exact_count_and_smallest(xp, s):
    rng = np.random.default_rng(0)
    w = xp.asarray(rng.standard_normal((20, 30)).astype(np.float32))
    pruned, mask = magnitude_prune(w, s)
    assert int((~mask).sum()) == round(s * w.size)
    assert abs(sparsity(pruned) - s) < 1e-9
    if 0 < s < 1:
        assert float(xp.abs(w[~mask]).max()) <= float(xp.abs(w[mask]).min())
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(w, 1.5)


def test_2_4_pattern_keeps_two_largest_of_four(xp):
    rng = np.random.default_rng(1)
    w = xp.asarray(rng.standard_normal((16, 6)).astype(np.float32))   # (IN, OUT), groups along IN
    pruned, mask = prune_2_4(w)
    groups = mask.T.reshape(6, 4, 4)                                   # (OUT, G, 4)
    assert bool((groups.sum(axis=-1) == 2).all())
    # compare with a loop over groups
    wn = np.asarray(w.get() if hasattr(w, "get") else w)
    for o in range(6):
        for g in range(4):
            vals = np.abs(wn[4 * g:4 * g + 4, o])
            expect = np.zeros(4, bool)
            expect[np.argsort(vals)[2:]] = True
            got = np.asarray(groups[o, g].get() if hasattr(groups, "get") else groups[o, g])
            np.testing.assert_array_equal(got, expect)
    assert sparsity(pruned) == 0.5
    with pytest.raises(ValueError, match="multiple of m=4"):
        prune_2_4(w[:10])


def test_mlp_neuron_pruning_removes_least_important_exactly():
    rng = np.random.default_rng(2)
    C, F = 8, 12
    w_up = rng.standard_normal((C, F)).astype(np.float32)
    w_down = rng.standard_normal((F, C)).astype(np.float32)
    w_down[[3, 7]] *= 1e-4                                              # two nearly dead neurons
    x = rng.standard_normal((50, C)).astype(np.float32)
    h = np.maximum(x @ w_up, 0)                                          # (N, F)
    score = neuron_importance(w_up, w_down, activations=h)
    keep = keep_indices(score, F - 2)
    assert 3 not in keep and 7 not in keep and list(keep) == sorted(keep)
    (w_up2,), w_down2, _ = prune_mlp_neurons([w_up], w_down, keep)
    assert w_up2.shape == (C, F - 2) and w_down2.shape == (F - 2, C)
    y_full = h @ w_down
    y_small = np.maximum(x @ w_up2, 0) @ w_down2
    np.testing.assert_allclose(y_small, y_full, atol=1e-2)
    assert neuron_importance([w_up, w_up], w_down).shape == (F,)


def test_head_pruning_mha_equals_masking_heads():
    rng = np.random.default_rng(3)
    C, H = 16, 4
    D = C // H
    wq, wk, wv, wo = (rng.standard_normal((C, C)).astype(np.float32) for _ in range(4))
    keep = np.array([0, 2])
    small = prune_heads(wq, wo, H, keep, wk=wk, wv=wv)
    assert small["wq"].shape == (C, 2 * D) and small["wo"].shape == (2 * D, C) and small["n_heads"] == 2
    x = rng.standard_normal((5, C)).astype(np.float32)

    def attn(x, wq, wk, wv, wo, h):
        q, k, v = (x @ m for m in (wq, wk, wv))
        q, k, v = (a.reshape(5, h, D).transpose(1, 0, 2) for a in (q, k, v))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(D)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (p @ v).transpose(1, 0, 2).reshape(5, h * D) @ wo

    wo_masked = wo.copy()
    for h in (1, 3):
        wo_masked[h * D:(h + 1) * D] = 0
    np.testing.assert_allclose(attn(x, small["wq"], small["wk"], small["wv"], small["wo"], 2),
                               attn(x, wq, wk, wv, wo_masked, H), rtol=1e-4, atol=1e-4)


def test_select_heads_keeps_gqa_groups_even():
    scores = np.array([5, 1, 3, 0, 9, 8, 2, 7, 1.0])                    # 9 heads, 3 KV groups of 3
    keep = select_heads(scores, n_kv_heads=3, keep_per_group=2)
    np.testing.assert_array_equal(keep, [0, 2, 4, 5, 6, 7])
    wo = np.ones((9 * 4, 6), np.float32)
    wo[4:8] = 0                                                          # head 1 writes nothing
    assert np.argmin(head_importance(wo, 9)) == 1
    o = np.ones((10, 9, 4), np.float32)
    assert head_importance(wo, 9, head_outputs=o)[1] == 0
    with pytest.raises(ValueError, match="keep_per_group"):
        select_heads(scores, 3, 4)


def test_svd_rank_choice_and_reconstruction():
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((64, 5)) @ rng.standard_normal((5, 48))).astype(np.float32)
    w += 1e-3 * rng.standard_normal(w.shape).astype(np.float32)
    s = spectrum(w)
    assert choose_rank(s, 0.999) == 5
    assert choose_rank(s, 1.0) <= 48
    A, B = svd_factorize(w, energy=0.999)
    assert A.shape == (64, 5) and B.shape == (5, 48) and A.dtype == np.float32
    assert np.linalg.norm(A @ B - w) / np.linalg.norm(w) < 1e-2
    layer = LowRankLinear.from_weight(w, np.zeros(48, np.float32), rank=3)
    assert layer.rank == 3 and layer.forward(np.ones((2, 64), np.float32)).shape == (2, 48)
    # Eckart-Young: the rank-r error equals the discarded singular values
    A3, B3 = svd_factorize(w, rank=3)
    np.testing.assert_allclose(np.linalg.norm(A3 @ B3 - w), np.sqrt((s[3:] ** 2).sum()), rtol=1e-3)
    with pytest.raises(ValueError, match="energy"):
        choose_rank(s, 0.0)


def test_plan_ranks_leaves_full_rank_dense():
    rng = np.random.default_rng(5)
    low = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 32))).astype(np.float32)
    full = rng.standard_normal((32, 32)).astype(np.float32)
    rows = {r["name"]: r for r in plan_ranks({"low": low, "full": full}, 0.95)}
    assert rows["low"]["factor"] and rows["low"]["rank"] <= 2 and rows["low"]["saved"] == 32 * 32 - 2 * 64
    assert not rows["full"]["factor"] and rows["full"]["saved"] == 0
    assert break_even_rank(32, 32) == 15


def test_head_importance_from_second_moments_is_rms_contribution():
    rng = np.random.default_rng(5)
    H, D, C = 6, 4, 10
    wo = rng.standard_normal((H * D, C))
    o = rng.standard_normal((50, H, D)) * np.arange(1, H + 1)[None, :, None]   # (N, H, D)
    flat = o.reshape(50, H * D)
    got = head_importance(wo, H, xtx=flat.T @ flat, n_rows=50)
    contrib = np.einsum("nhd,hdc->nhc", o, wo.reshape(H, D, C))                 # (N, H, C)
    want = np.sqrt((np.linalg.norm(contrib, axis=-1) ** 2).mean(axis=0))
    np.testing.assert_allclose(got, want, rtol=1e-10)
    with pytest.raises(ValueError, match="xtx must have shape"):
        head_importance(wo, H, xtx=np.eye(5), n_rows=50)
