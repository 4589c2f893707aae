import time

import numpy as np


def perplexity_windows__no_clip(n_tokens, window, stride):
    """a window ends past the text"""
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        end = begin + window
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to, begin = end, begin + stride
    return out


def perplexity_windows__drops_last(n_tokens, window, stride):
    """the last window is missing"""
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens and (begin + window <= n_tokens or not out):
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to, begin = end, begin + stride
    return out


def perplexity_windows__scores_token_zero(n_tokens, window, stride):
    """token 0 is scored"""
    out, scored_to, begin = [], 0, 0
    while scored_to < n_tokens:
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin)))
        scored_to, begin = end, begin + stride
    return out


def perplexity_windows__range_loop(n_tokens, window, stride):
    """windows go on after one has reached the end"""
    out, scored_to = [], 1
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to = max(scored_to, end)
    return out


def perplexity_windows__ignores_stride(n_tokens, window, stride):
    """the stride is ignored"""
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to, begin = end, begin + window
    return out


def time_calls__warmup_timed(fn, repeat=5, warmup=1, *, clock=time.perf_counter, sync=None):
    """the warm-up calls were timed too"""
    times = []
    for _ in range(warmup + repeat):
        t0 = clock()
        sync(fn())
        times.append(clock() - t0)
    return np.array(times)


def time_calls__sync_outside(fn, repeat=5, warmup=1, *, clock=time.perf_counter, sync=None):
    """sync is called after the clock is read"""
    for _ in range(warmup):
        sync(fn())
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = clock()
        r = fn()
        times[i] = clock() - t0
        sync(r)
    return times


def time_calls__cumulative(fn, repeat=5, warmup=1, *, clock=time.perf_counter, sync=None):
    """the times are cumulative"""
    for _ in range(warmup):
        sync(fn())
    start = clock()
    times = np.empty(repeat)
    for i in range(repeat):
        sync(fn())
        times[i] = clock() - start
    return times


def time_calls__real_clock(fn, repeat=5, warmup=1, *, clock=time.perf_counter, sync=None):
    """read the time with the `clock` argument"""
    for _ in range(warmup):
        sync(fn())
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        sync(fn())
        times[i] = time.perf_counter() - t0
    return times


def _timed(fn, repeat, warmup, clock, sync):
    for _ in range(warmup):
        sync(fn())
    out = np.empty(repeat)
    for i in range(repeat):
        t0 = clock()
        sync(fn())
        out[i] = clock() - t0
    return out


def measure_speed__calls_per_second(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1,
                                    clock=time.perf_counter, sync=None):
    """prefill_tok_s is calls per second"""
    pre = _timed(prefill_fn, repeat, warmup, clock, sync)
    out = {"prefill_tok_s": 1.0 / float(np.median(pre))}
    if decode_fn is not None:
        dec = _timed(decode_fn, decode_steps, warmup, clock, sync)
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_p{q}_ms": 1e3 * float(np.percentile(dec, q)) for q in (50, 90, 99)})
    return out


def measure_speed__nearest(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1,
                           clock=time.perf_counter, sync=None):
    """the percentiles are single samples"""
    pre = _timed(prefill_fn, repeat, warmup, clock, sync)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre))}
    if decode_fn is not None:
        dec = np.sort(_timed(decode_fn, decode_steps, warmup, clock, sync))
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_p{q}_ms": 1e3 * float(np.percentile(dec, q, method="nearest")) for q in (50, 90, 99)})
    return out


def measure_speed__warmup_lost(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1,
                               clock=time.perf_counter, sync=None):
    """the warmup argument does not reach time_calls"""
    pre = _timed(prefill_fn, repeat, 1, clock, sync)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre))}
    if decode_fn is not None:
        dec = _timed(decode_fn, decode_steps, 1, clock, sync)
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_p{q}_ms": 1e3 * float(np.percentile(dec, q)) for q in (50, 90, 99)})
    return out


def measure_speed__decode_keys_always(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1,
                                      clock=time.perf_counter, sync=None):
    """without decode_fn return only prefill_tok_s"""
    pre = _timed(prefill_fn, repeat, warmup, clock, sync)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre)), "decode_tok_s": None}
    if decode_fn is not None:
        dec = _timed(decode_fn, decode_steps, warmup, clock, sync)
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_p{q}_ms": 1e3 * float(np.percentile(dec, q)) for q in (50, 90, 99)})
    return out
