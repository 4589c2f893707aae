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
    "layer_stats__pre_activation": "before the activation",
    "layer_stats__includes_input": "report the output of each layer, not the input x",
    "layer_stats__ddof1": "ddof=1",
    "choose_gain__last_layer_only": "not every layer's",
    "choose_gain__largest": "return the smallest",
    "choose_gain__theory": "pick one of the candidate gains",
    "linear_weight__variance_as_std": "the variance passed as the standard deviation",
    "linear_weight__no_gain": "the gain sqrt(2) for ReLU is missing",
    "linear_weight__global_rng": "draw every number from the rng argument",
    "linear_weight__float64": "dtype float64, expected float32",
    "mse_loss_and_grad__sum": "the sum of squared errors",
    "mse_loss_and_grad__no_factor_two": "keep the factor 2",
    "mse_loss_and_grad__grad_sum": "N times too large",
    "sgd_momentum_step__step_before_update": "steps along the old velocity",
    "fit_linear__loss_after_step": "recorded after its step's update",
    "fit_linear__adam_no_bias_correction": "Adam without bias correction",
    "fit_linear__bias_frozen": "b never changes",
    "sgd_momentum_step__ema": "exponential average",
    "adam_step__no_bias_correction": "apply bias correction",
    "adam_step__eps_inside": "eps is missing",
    "Linear__dW_mean": "dW is divided by the batch size N",
    "Linear__db_mean": "db is the mean of dy over the batch",
    "Linear__uphill": "moved W along the gradient (uphill)",
    "ReLU__at_zero": "lets the gradient pass where x == 0",
    "ReLU__mask_only": "returned the mask itself",
    "SoftmaxCrossEntropy__no_max": "exp(1000) overflows",
    "SoftmaxCrossEntropy__sum": "summed over the batch: return the mean",
    "SoftmaxCrossEntropy__no_mean": "N times too large",
    "MLP__relu_on_logits": "gets no ReLU",
    "MLP__forward_order": "raised",
    "MLP__first_layer_only": "below 97%",
    "attention_forward__no_scale": "multiply q @ k^T by 1 / sqrt(D)",
    "attention_forward__heads_reshaped": "plain reshape to (B, H, T, D)",
    "attention_forward__float64": "float64 crept in",
    "attention_backward__no_rowsum": "misses the row-sum term",
    "attention_backward__dk_not_transposed": "dk = dS^T q",
    "block_forward__mlp_reads_x": "MLP's LayerNorm reads the block input x",
    "block_forward__relu": "use the given gelu",
    "block_backward__no_residual": "residual connections are missing from the backward pass",
    "block_backward__ln_no_mean_term": "the gradient through the mean",
    "sample_next__temperature_multiplies": "multiplied by the temperature",
    "sample_next__global_random": "take every random number from the rng argument",
    "cached_attention__all_slots": "attend over all S_max slots",
    "cached_attention__copy_not_in_place": "was not written",
    "generate__reseed": "the generator is made anew at every step",
    "generate__no_crop": "crop the context to the last block_size tokens",
    "safetensors_bytes__no_padding": "pad the header with spaces",
    "safetensors_bytes__insertion_order": "largest item size first",
    "load_safetensors__offsets_from_file_start": "data_offsets count from the start of the data section",
    "load_safetensors__trusts_the_header": "expected ValueError",
    "save_safetensors__swallows_errors": "must raise ValueError",
    "save_safetensors__returns_the_bytes": "it writes a file and returns None",
    "read_gguf_metadata__bool_as_int": "return a Python bool",
    "read_gguf_metadata__offset_before_last_pair": "return the position just after the last key/value pair",
    "dequantize_row_q8_0__unsigned_codes": "Q8_0 codes are int8",
    "dequantize_row_q8_0__not_flattened": "flatten it back",
    "dequantize_row_q4_1__interleaved": "the nibbles are interleaved",
    "dequantize_row_q4_1__no_min": "the minimum m is missing",
    "bpe_merge__overlapping": "[5, 5, 5] -> [7, 5]",
    "bpe_merge__first_only": "only the first occurrence was merged",
    "train_bpe__largest_pair_wins_ties": "take the smallest pair (a, b)",
    "train_bpe__no_pre_tokenization": "merges cross the pieces of the pre-tokenizer",
    "bpe_encode__last_learned_first": "take the pair of LOWEST rank",
    "bpe_encode__leftmost_first": "the leftmost mergeable pair is merged first",
    "bpe_decode__token_by_token": "join the bytes of all tokens first",
    "bpe_decode__ignores_errors": "invalid bytes are dropped",
    "apply_rope__interleaved": "interleaved pairs",
    "apply_rope__ignores_base": "the base argument is ignored",
    "apply_rope__positions_from_zero": "ignore the positions argument",
    "apply_rope__writes_into_views": "already-rotated first half",
    "apply_rope__hardcoded_example": "is off by",
    "rms_norm__layer_norm": "that is LayerNorm",
    "rms_norm__eps_outside_sqrt": "outside the square root",
    "rms_norm__ignores_eps": "the eps argument is ignored",
    "rms_norm__in_place": "changes x in place",
    "rms_norm__float64": "float64 crept in",
    "swiglu_mlp__silu_on_up": "SiLU goes on the gate projection",
    "swiglu_mlp__sigmoid_gate": "SiLU(z) = z * sigmoid(z)",
    "swiglu_mlp__silu_after_product": "applied after the product",
    "gqa_attention__tiled_heads": "np.repeat, not np.tile",
    "gqa_attention__no_mask": "apply the causal mask",
    "gqa_attention__no_scale": "divide q . k by sqrt(D)",
    "gqa_attention__scales_q_in_place": "changes an input in place",
    "llama_block__no_residual": "input is not added back",
    "llama_block__mlp_reads_input": "MLP's RMSNorm reads the block input x",
    "llama_block__rope_on_v": "not the values",
    "llama_block__drops_base": "does not reach apply_rope",
    "llama_forward__no_final_norm": "the final RMSNorm is missing",
    "llama_forward__first_block_only": "weights['blocks'][i]",
    "quantize_q4_1__interleaved": "the nibbles are interleaved",
    "quantize_q4_1__np_round": "codes use np.round (ties to even)",
    "gptq_layer__no_error_feedback": "the rounding error is never passed on",
    "gptq_layer__inverse_rows": "the rows of the upper Cholesky factor U",
    "prune_2_4__signed": "by magnitude |w|",
    "prune_2_4__last_axis_always": "the groups of 4 run along the last axis",
    "distillation_loss__no_t_squared": "not multiplied by T^2",
    "distillation_loss__reversed_kl": "KL divergence is reversed",
    "distillation_loss__gradient_without_t": "gradient lacks its factor T",
    "smooth_scales__exponents_swapped": "exponents are swapped",
    "smooth_scales__weight_max_of_whole_matrix": "not of the whole matrix",
    "smooth_scales__zero_channels_unguarded": "must get s_j = 1",
    "ring_allreduce__mean": "every rank holds the MEAN",
    "ring_allreduce__numbers_not_bytes": "those are numbers, not bytes",
    "perplexity_windows__disjoint": "the stride is ignored",
    "perplexity_windows__scores_overlap_twice": "scored twice",
    "time_calls__no_warmup": "the warm-up calls are missing",
    "time_calls__no_sync": "without waiting for fn's work",
    "measure_speed__mean": "report the median",
    "measure_speed__seconds": "the percentiles are in seconds",
    "logit_lens__no_final_norm": "the final RMSNorm was skipped",
    "logit_lens__eps_outside": "eps is outside the square root",
    "logit_lens__rank_from_one": "rank is 1-based",
    "logit_lens__unstable_softmax": "subtract each row's maximum before np.exp",
    "induction_score__previous_token_itself": "attends to the token AFTER it",
    "induction_score__two_halves": "assumed to be two equal halves",
    "induction_score__mean_over_all_positions": "average only over the positions whose token occurred before",
    "direct_logit_attribution__own_rms": "divided by its own rms",
    "direct_logit_attribution__no_norm_weight": "the norm weight is missing",
    "direct_logit_attribution__ignores_eps": "the eps argument is not used",
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
