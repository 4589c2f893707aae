# Right answers written another way: they must keep full marks.
import time

import numpy as np


def perplexity_windows__for_loop(n_tokens, window, stride):
    windows, done = [], 1
    for begin in range(0, max(n_tokens, 1), stride):
        if done >= n_tokens:
            break
        end = min(n_tokens, begin + window)
        windows.append([begin, end, max(done, begin + 1)])
        done = end
    return np.array(windows)


def time_calls__list(fn, repeat=5, warmup=1, *, clock=time.perf_counter, sync=lambda r: r):
    [sync(fn()) for _ in range(warmup)]
    out = []
    while len(out) < repeat:
        start = clock()
        sync(fn())
        out.append(clock() - start)
    return np.asarray(out, dtype=np.float64)


def _timer_ok(fn, n, warm, clock, sync):
    for _ in range(warm):
        sync(fn())
    t = []
    for _ in range(n):
        a = clock()
        sync(fn())
        t.append(clock() - a)
    return np.array(t)


def measure_speed__quantile(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1,
                            clock=time.perf_counter, sync=lambda r: r):
    res = {"prefill_tok_s": float(n_prompt / np.quantile(_timer_ok(prefill_fn, repeat, warmup, clock, sync), 0.5))}
    if decode_fn is None:
        return res
    d = _timer_ok(decode_fn, decode_steps, warmup, clock, sync)
    p50, p90, p99 = np.quantile(d, [0.5, 0.9, 0.99])
    res.update(decode_tok_s=float(1 / p50), decode_p50_ms=float(p50 * 1000), decode_p90_ms=float(p90 * 1000),
               decode_p99_ms=float(p99 * 1000))
    return res
