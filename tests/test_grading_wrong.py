"""Typical wrong implementations lose points and get the feedback meant for them.

Each file in tests/wrong_impls/ is graded in one sandbox process (no kernel): the
function ``<exercise>__<mistake>`` is graded as ``<exercise>``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tinyllm.grading.runner import grade_source, lessons, load_exercises

HERE = Path(__file__).parent / "wrong_impls"

# function in wrong_impls -> a piece of the feedback it must get
EXPECTED = {
    "count_parameters__weights_only": "counts only the weights",
    "normal_init__var_as_std": "sqrt(0.1) = 0.316",
    "normal_init__global_rng": "draw from the rng argument",
    "kaiming_normal__no_gain": "gain of 2 for ReLU is missing",
    "kaiming_normal__float64": "dtype float64, expected float32",
    "xavier_uniform__positive_only": "symmetric around 0",
    "to_bfloat16_bits__truncate": "truncated (x >> 16)",
    "to_bfloat16_bits__ties_up": "ties go to the even result",
    "parse_safetensors_header__offset_without_length": "after the 8 length bytes AND the header",
    "dequantize_q4_0__interleaved": "nibbles are interleaved",
    "read_gguf_string__big_endian": "little-endian uint64",
    "gd_step__uphill": "goes uphill",
    "mse_loss__sum": "the sum of squared errors",
    "mse_grad__no_factor_two": "keep the factor 2",
    "sgd_momentum_step__ema": "exponential average",
    "adam_step__no_bias_correction": "apply bias correction",
    "adam_step__eps_inside": "add eps to sqrt(v_hat)",
    "linear_backward__dW_transposed": "dW = x.T @ dy",
    "linear_backward__db_not_summed": "sum dy over the batch axis",
    "relu_backward__mask_only": "returned the mask itself",
    "softmax__no_max": "softmax overflows for inputs near 1000: subtract the row maximum first",
    "softmax__axis_zero": "row sums",
    "cross_entropy__log_of_softmax": "log-sum-exp",
    "cross_entropy__sum": "return the mean",
    "cross_entropy_backward__no_mean": "divide by the batch size N",
    "text_to_bytes__code_points": "code points",
    "get_pair_counts__once_each": "count every occurrence",
    "merge__overlapping": "[5, 5, 5] -> [7, 5]",
    "causal_mask__no_diagonal": "attend to itself",
    "causal_attention__mask_off_by_one": "attention lets position 4 see position 5: check the causal mask",
    "causal_attention__no_scale": "sqrt(D)",
    "causal_attention__float64": "float64 crept in",
    "layer_norm__unbiased_variance": "ddof=1",
    "top_p_filter__drops_crossing_token": "drops the token that crosses the threshold",
    "kv_cache_update__concatenate": "instead of concatenating",
    "kv_cache_update__next_slot": "position pos + 1",
    "apply_rope__interleaved": "interleaved pairs",
    "rms_norm__subtracts_mean": "that is LayerNorm",
    "rms_norm__eps_outside": "outside the square root",
    "quantize_q8_0__signed_max": "largest magnitude",
    "quantize_q8_0__float32_scales": "one float16 scale per block",
    "dequantize_q8_0__not_flattened": "flatten it back",
    "prune_2_4__signed": "by magnitude |w|",
    "distillation_loss__no_t_squared": "not multiplied by T^2",
    "distillation_loss__reversed_kl": "KL divergence is reversed",
    "smooth_scales__exponents_swapped": "exponents are swapped",
    "smooth_scales__weight_max_of_whole_matrix": "not of the whole matrix",
    "smooth_scales__zero_channels_unguarded": "must get s_j = 1",
    "allreduce_mean__sum": "divide by the number of ranks",
    "attainable_flops__always_peak": "memory bandwidth limits",
    "attainable_flops__no_cap": "exceeds the compute peak",
    "latency_percentiles__mean_as_p50": "p50 is the mean",
    "latency_percentiles__fractions": "q from 0 to 100",
    "decode_ceiling__gibibytes": "1e9 bytes per second",
    "decode_ceiling__seconds_per_token": "that is seconds per token",
}


def _wrong_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and "__" in n.name]


def test_every_wrong_impl_has_an_expectation_and_every_lesson_has_one():
    names = [n for p in HERE.glob("*.py") for n in _wrong_functions(p)]
    assert sorted(names) == sorted(EXPECTED)
    assert sorted(p.stem for p in HERE.glob("[0-9][0-9]_*.py")) == lessons()
    covered = {n.split("__")[0] for n in names}
    graded = {e.function for lesson in lessons() for e in load_exercises(lesson)}
    assert covered == graded, f"exercises without a wrong implementation: {sorted(graded - covered)}"


@pytest.mark.parametrize("lesson", lessons())
def test_wrong_implementations_lose_points_with_the_intended_feedback(lesson):
    path = HERE / f"{lesson}.py"
    names = _wrong_functions(path)
    report = grade_source(lesson, path.read_text(), implementations={n: n.split("__")[0] for n in names}, time_limit=20)
    assert report.error is None
    by_name = {e.function.split("@")[1]: e for e in report.exercises}
    problems = []
    for name in names:
        ex = by_name[name]
        text = " ".join([ex.message] + [t.feedback for t in ex.tests])
        if ex.score >= ex.max_score:
            problems.append(f"{name}: full marks")
        elif EXPECTED[name] not in text:
            problems.append(f"{name}: expected {EXPECTED[name]!r} in the feedback, got {text!r}")
    assert not problems, "\n".join(problems)
